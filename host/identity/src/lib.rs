//! halo-identity

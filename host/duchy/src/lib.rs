//! halo-duchy

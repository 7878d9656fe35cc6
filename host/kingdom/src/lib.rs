//! halo-kingdom

//! P-256 for the Liquid Legions protocols (spec mpc-crypto.md §2).
#![forbid(unsafe_code)]

pub mod backend;
pub mod field;
pub mod h2c;
pub mod mul;
pub mod ops;
pub mod point;
pub mod scalar;
pub mod vectors;

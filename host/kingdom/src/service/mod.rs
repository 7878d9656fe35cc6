//! gRPC service implementations.

pub(crate) mod admin;
pub(crate) mod computations;
pub(crate) mod log_entries;
pub(crate) mod participants;
pub(crate) mod requisitions;

//! Integration tests of the Kingdom: real gRPC over real mTLS on 127.0.0.1:0, temp data
//! directories and a generated dev PKI.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod authz;
mod bad_input;
mod common;
mod lifecycle;
mod pagination;
mod races;
mod recovery;
mod security;
mod stream;

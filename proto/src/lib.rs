//! Protobuf and gRPC types generated from `proto/`.
//!
//! * [`system::v1alpha`]: the Halo system API (`wfa.measurement.system.v1alpha`), wire-compatible
//!   with the reference implementation.
//! * [`api::v2alpha`]: the requisition fulfilment subset of the public API.
//! * [`halo::v1`]: halo-host's own admin API for the simulators.

#![allow(clippy::all, clippy::pedantic, missing_docs)]

pub mod wfa {
    pub mod measurement {
        pub mod system {
            pub mod v1alpha {
                tonic::include_proto!("wfa.measurement.system.v1alpha");
            }
        }
        pub mod api {
            pub mod v2alpha {
                tonic::include_proto!("wfa.measurement.api.v2alpha");
            }
        }
    }
}

pub mod halo {
    pub mod v1 {
        tonic::include_proto!("halo.v1");
    }
}

pub use prost;
pub use prost_types;
pub use wfa::measurement::{api, system};

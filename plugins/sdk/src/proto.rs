//! Protobuf messages generated from the host's `proto/` tree (messages only, no services).
//!
//! * [`system::v1alpha`]: `wfa.measurement.system.v1alpha` (`Computation`,
//!   `ComputationParticipant`, its `RequisitionParams`, the `*Stage` enums, ...).
//! * [`api::v2alpha`]: `wfa.measurement.api.v2alpha` (`FulfillRequisitionRequest.Header`, the
//!   bytes of an [`InputOrigin::Requisition`](crate::types::InputOrigin)).
//! * [`halo::v1`]: `halo.v1` (`MeasurementSpec`, carried in `Computation.measurement_spec`).

#![allow(clippy::all, clippy::pedantic, missing_docs)]

pub mod wfa {
    pub mod measurement {
        pub mod system {
            pub mod v1alpha {
                include!(concat!(
                    env!("OUT_DIR"),
                    "/wfa.measurement.system.v1alpha.rs"
                ));
            }
        }
        pub mod api {
            pub mod v2alpha {
                include!(concat!(env!("OUT_DIR"), "/wfa.measurement.api.v2alpha.rs"));
            }
        }
    }
}

pub mod halo {
    pub mod v1 {
        include!(concat!(env!("OUT_DIR"), "/halo.v1.rs"));
    }
}

pub use wfa::measurement::{api, system};

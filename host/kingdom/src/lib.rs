//! The Halo Kingdom server.
//!
//! Serves, over mutual TLS (identity from the caller's certificate, see `halo_identity`):
//!
//! * the system API for duchies (`wfa.measurement.system.v1alpha`): `Computations`,
//!   `ComputationParticipants`, `ComputationLogEntries`, `Requisitions`;
//! * halo-host's admin API (`halo.v1`): `Measurements` for measurement consumers,
//!   `DataProviderRequisitions` for data providers and `Certificates` for everyone.
//!
//! State lives in SQLite (`data_dir/kingdom.db`, WAL); every request is one transaction, so it
//! applies wholly or not at all, and a restart loses nothing. Computation update times are
//! strictly increasing across all computations (allocated inside the write transaction as
//! `max(now, last + 1)` from a persisted clock), which makes
//! `StreamActiveComputations` continuation tokens exact.
//!
//! Deliberate differences from the reference implementation (spec §1.3, §6.2, §10):
//!
//! * `GetComputation` is limited to participating duchies; others get NOT_FOUND. Errors are
//!   reported with their real codes (NOT_FOUND, FAILED_PRECONDITION, ...) instead of the
//!   reference's blanket UNKNOWN.
//! * `SetComputationResult` requires the computation's aggregator (PERMISSION_DENIED) and
//!   PENDING_COMPUTATION (FAILED_PRECONDITION); an identical retry succeeds idempotently.
//! * `FulfillRequisition` checks that the caller participates and, for HMSS, that it is the
//!   pre-assigned fulfilling duchy (PERMISSION_DENIED).
//! * `GetComputationParticipant` applies the same ownership check as the other participant
//!   RPCs.
//! * An identical repeat of `FulfillRequisition` by the duchy that fulfilled the requisition
//!   (same nonce and context: a retry whose answer was lost) succeeds without changing
//!   anything.
//! * Database overload (connection pool timeout, `SQLITE_BUSY` / `SQLITE_LOCKED`, I/O errors,
//!   a full disk) is UNAVAILABLE ("kingdom database busy, retry"), so clients retry with
//!   backoff; only real faults (corruption, constraint violations) are INTERNAL.
//! * A participant failure ends the measurement with a message naming the duchy, the stage
//!   (name and number), the attempt and the cause, and is stored as a permanent log entry.
//!
//! Kill points (`halo_crashpoint`, honoured only by builds with its `enabled` feature) follow
//! the commit of every state-changing call, before the reply: `kingdom.create_measurement`,
//! `kingdom.cancel_measurement`, `kingdom.set_participant_requisition_params`,
//! `kingdom.confirm_computation_participant`, `kingdom.fail_computation_participant`,
//! `kingdom.fulfill_requisition`, `kingdom.set_computation_result`,
//! `kingdom.create_computation_log_entry`; and `kingdom.stream_item` follows every item
//! `StreamActiveComputations` hands to its stream.
//!
//! ```no_run
//! # async fn run(config: halo_kingdom::KingdomConfig) -> anyhow::Result<()> {
//! let kingdom = halo_kingdom::RunningKingdom::start(config).await?;
//! println!("kingdom on {}", kingdom.addr);
//! kingdom.shutdown().await?;
//! # Ok(()) }
//! ```

mod config;
mod core;
pub mod names;
mod server;
mod service;
mod store;

use rand::Rng as _;
use sha2::{Digest as _, Sha256};

pub use config::{
    CertEntry, DEFAULT_STREAM_MAX_DURATION, DEFAULT_STREAM_POLL_INTERVAL, DefaultProtocolConfigs,
    DpParams, DuchyEntry, HmssDefaults, KingdomConfig, KingdomLimits, LiquidLegionsV2Defaults,
    NoiseMechanism,
};
pub use core::PUBLIC_API_VERSION;
pub use server::RunningKingdom;
pub use service::admin::RequisitionPageToken;
pub use service::computations::{STREAM_BATCH_SIZE, STREAMED_STATES, StreamPosition};
pub use store::DB_FILE;

/// The certificate id used in certificate resource names (`duchies/{id}/certificates/{cid}`,
/// `dataProviders/{id}/certificates/{cid}`): the first 8 bytes of SHA-256(DER), lowercase hex.
pub fn certificate_id(der: &[u8]) -> String {
    let digest = Sha256::digest(der);
    hex::encode(&digest[..8])
}

/// A random positive external id.
pub(crate) fn random_external_id() -> i64 {
    rand::rng().random_range(1..=i64::MAX)
}

#[cfg(test)]
mod tests {
    #[test]
    fn certificate_id_is_16_hex_chars() {
        let id = super::certificate_id(b"hello");
        assert_eq!(id, "2cf24dba5fb0a30e");
    }
}

//! The duchy host core: everything a duchy does that does not depend on the MPC protocol.
//!
//! * [`herald`]: follows the Kingdom's `StreamActiveComputations`, creates and updates local
//!   computations, persists the continuation token.
//! * [`mill`]: a pool of workers that claim queued stages with leases and run them through
//!   the pinned [`protocol::Protocol`], then deliver the effects.
//! * [`control`]: the `ComputationControl` server (duchy → duchy payloads).
//! * [`fulfillment`]: the `RequisitionFulfillment` server (data provider → duchy).
//! * [`store`]: SQLite + blob files.

pub mod blobs;
pub mod control;
mod core;
pub mod fulfillment;
pub mod herald;
pub mod identity;
mod keyed_lock;
pub mod kingdom;
pub mod metrics;
pub mod mill;
pub mod names;
pub mod outcome;
mod running;
pub use halo_protocol as protocol;
pub mod store;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;

pub use crate::core::Core;
use crate::protocol::ProtocolRegistry;

/// Which duchy plays which role, per protocol: the operator's roles file, shared with the
/// Kingdom (see [`halo_protocol::roles`]).
pub use halo_protocol::roles::RoleConfig;

/// Mill settings.
#[derive(Clone, Debug)]
pub struct MillConfig {
    /// Concurrent stage executions.
    pub workers: usize,
    /// How long a claim holds before another worker may take the stage over.
    pub lease: Duration,
    /// More claims than this for one stage fail the computation.
    pub max_attempts: u32,
    /// Idle poll interval (workers are also woken when work is queued).
    pub poll: Duration,
    /// Backoff after a transient failure: `retry_base * 2^(attempt-1)`, capped.
    pub retry_base: Duration,
    pub retry_max: Duration,
    /// Cap of the backoff while waiting for a peer or the Kingdom (each retry is one cheap
    /// call; short, so a restarted peer is noticed within seconds).
    pub wait_max: Duration,
    /// AdvanceComputation body chunk size (1–4 MiB).
    pub chunk_size: usize,
    /// Upper bound of everything one stage of a plugin sends (payloads to peers plus the
    /// result); more fails the computation naming the plugin.
    pub max_plugin_output_bytes: u64,
    /// Upper bound of the opaque plugin state carried between stages.
    pub max_plugin_state_bytes: u64,
    /// A computation not finished this long after it was created here fails: the bound on
    /// waiting (for peers, the Kingdom), which does not consume attempts.
    pub computation_deadline: Duration,
}

/// Default of [`MillConfig::max_plugin_output_bytes`]: 1 GiB.
pub const DEFAULT_MAX_PLUGIN_OUTPUT_BYTES: u64 = 1 << 30;
/// Default of [`MillConfig::max_plugin_state_bytes`]: 16 MiB.
pub const DEFAULT_MAX_PLUGIN_STATE_BYTES: u64 = 16 << 20;

impl MillConfig {
    /// The limits [`outcome::validate_outcome`] applies.
    pub fn outcome_limits(&self) -> outcome::OutcomeLimits {
        outcome::OutcomeLimits {
            max_output_bytes: self.max_plugin_output_bytes,
            max_state_bytes: self.max_plugin_state_bytes,
        }
    }
}

impl Default for MillConfig {
    fn default() -> Self {
        MillConfig {
            workers: 2,
            lease: Duration::from_secs(60),
            max_attempts: 10,
            poll: Duration::from_millis(500),
            retry_base: Duration::from_millis(200),
            retry_max: Duration::from_secs(60),
            wait_max: Duration::from_secs(5),
            chunk_size: 1 << 20,
            max_plugin_output_bytes: DEFAULT_MAX_PLUGIN_OUTPUT_BYTES,
            max_plugin_state_bytes: DEFAULT_MAX_PLUGIN_STATE_BYTES,
            computation_deadline: Duration::from_secs(12 * 3600),
        }
    }
}

/// Herald settings.
#[derive(Clone, Debug)]
pub struct HeraldConfig {
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
}

impl Default for HeraldConfig {
    fn default() -> Self {
        HeraldConfig {
            backoff_initial: Duration::from_millis(100),
            backoff_max: Duration::from_secs(10),
        }
    }
}

/// Addresses of the other duchies' ComputationControl servers; can change at run time.
#[derive(Clone, Default)]
pub struct PeerDirectory {
    inner: Arc<RwLock<HashMap<String, String>>>,
}

impl PeerDirectory {
    pub fn set(&self, duchy: &str, url: &str) {
        if let Ok(mut m) = self.inner.write() {
            m.insert(duchy.to_string(), url.to_string());
        }
    }

    pub fn get(&self, duchy: &str) -> Option<String> {
        self.inner.read().ok().and_then(|m| m.get(duchy).cloned())
    }
}

/// Everything a duchy needs to run.
#[derive(Clone)]
pub struct DuchyConfig {
    pub id: String,
    pub data_dir: PathBuf,
    pub listen: SocketAddr,
    pub identity: halo_identity::Identity,
    pub trust: halo_identity::TrustStore,
    pub kingdom_url: String,
    pub peers: PeerDirectory,
    pub roles: RoleConfig,
    pub mill: MillConfig,
    pub herald: HeraldConfig,
    pub protocols: Arc<dyn ProtocolRegistry>,
    /// Ceiling of one AdvanceComputation or fulfilment payload; the bound actually applied
    /// is derived from the computation's protocol config ([`protocol::payload_bound`]).
    pub max_payload_bytes: u64,
    /// TLS handshake timeout and concurrent handshakes of the server.
    pub tls_limits: halo_identity::TlsServerLimits,
    /// Connection and per-principal limits of the servers.
    pub limits: DuchyLimits,
}

/// Default of [`DuchyConfig::max_payload_bytes`]: 1 GiB.
pub const DEFAULT_MAX_PAYLOAD_BYTES: u64 = 1 << 30;

/// Resource limits of a duchy's servers (see README "Limits").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DuchyLimits {
    /// Message size, HTTP/2 streams per connection, idle timeout.
    pub server: halo_limits::ServerLimits,
    /// Largest frequency vector (HMSS `register_count`) a payload may carry.
    pub max_register_count: u64,
    /// Concurrent AdvanceComputation streams one peer duchy may have open here.
    pub max_advance_streams_per_peer: usize,
    /// Concurrent FulfillRequisition streams one data provider may have open here.
    pub max_fulfillment_streams_per_provider: usize,
}

impl Default for DuchyLimits {
    fn default() -> Self {
        DuchyLimits {
            server: halo_limits::ServerLimits::default(),
            max_register_count: 1 << 26,
            max_advance_streams_per_peer: 8,
            max_fulfillment_streams_per_provider: 8,
        }
    }
}

pub use running::{DEFAULT_SHUTDOWN_GRACE, DuchyReadiness, RunningDuchy};

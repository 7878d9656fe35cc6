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
pub use halo_protocol as protocol;
pub mod store;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use anyhow::{Context, Result};
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub use crate::core::Core;
use crate::protocol::ProtocolRegistry;

/// Which duchy plays which role, per protocol (static configuration, as in the reference's
/// `ProtocolsSetupConfig`).
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct RoleConfig {
    pub hmss_first_non_aggregator: String,
    pub hmss_second_non_aggregator: String,
    pub hmss_aggregator: String,
    /// Aggregator of Liquid Legions v2 and reach-only LLv2; every other duchy is a
    /// non-aggregator.
    pub llv2_aggregator: String,
}

impl Default for RoleConfig {
    fn default() -> Self {
        RoleConfig {
            hmss_first_non_aggregator: "worker1".into(),
            hmss_second_non_aggregator: "worker2".into(),
            hmss_aggregator: "aggregator".into(),
            llv2_aggregator: "aggregator".into(),
        }
    }
}

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

/// A running duchy: herald, mill pool and the two gRPC servers.
pub struct RunningDuchy {
    pub addr: SocketAddr,
    pub core: Arc<Core>,
    shutdown: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
    server: JoinHandle<Result<(), tonic::transport::Error>>,
}

impl RunningDuchy {
    pub async fn start(config: DuchyConfig) -> Result<RunningDuchy> {
        halo_identity::init_crypto();
        let (shutdown, shutdown_rx) = watch::channel(false);
        let core = Arc::new(Core::new(config.clone()).await?);
        // The data directory is locked: every lease in the store belongs to a dead incarnation
        // of this process. Free them now (not after the lease expires), then re-evaluate every
        // active computation from stored state (a transition interrupted by the crash).
        let freed = core.store.release_stale_leases().await?;
        if !freed.is_empty() {
            tracing::info!(duchy = %config.id, computations = freed.len(), "freed the leases of a previous process");
        }
        for gid in core.store.active_ids().await? {
            if let Err(e) = core.drive(&gid).await {
                tracing::warn!(duchy = %config.id, computation = %gid, "re-evaluating at start-up: {e:#}");
            }
        }
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .with_context(|| format!("binding {}", config.listen))?;
        let addr = listener.local_addr()?;
        let tls = config
            .identity
            .server_config(&config.trust)
            .context("server TLS config")?;
        let incoming =
            halo_identity::tls_incoming(listener, tls, config.trust.clone(), config.tls_limits);
        let (incoming, idle) =
            halo_limits::idle::track(incoming, config.limits.server.idle_timeout);
        let mut stop = shutdown_rx.clone();
        let server = config
            .limits
            .server
            .apply(tonic::transport::Server::builder())
            .layer(idle)
            .layer(halo_identity::AuthenticateLayer::new(config.trust.clone()))
            .add_service(control::server(core.clone()))
            .add_service(fulfillment::server(core.clone()))
            .serve_with_incoming_shutdown(incoming, async move {
                let _ = stop.wait_for(|v| *v).await;
            });
        let server = tokio::spawn(server);
        let mut tasks = Vec::new();
        tasks.push(tokio::spawn(herald::run(core.clone(), shutdown_rx.clone())));
        tasks.push(tokio::spawn(mill::run_supervisor(
            core.clone(),
            shutdown_rx.clone(),
        )));
        for i in 0..config.mill.workers.max(1) {
            tasks.push(tokio::spawn(mill::run_worker(
                core.clone(),
                i,
                shutdown_rx.clone(),
            )));
        }
        tracing::info!(duchy = %config.id, %addr, "duchy started");
        Ok(RunningDuchy {
            addr,
            core,
            shutdown,
            tasks,
            server,
        })
    }

    pub async fn shutdown(self) -> Result<()> {
        let _ = self.shutdown.send(true);
        for t in self.tasks {
            let _ = t.await;
        }
        match self.server.await {
            Ok(r) => r.context("duchy server")?,
            Err(e) => return Err(anyhow::anyhow!("duchy server task: {e}")),
        }
        self.core.store.close().await;
        Ok(())
    }
}

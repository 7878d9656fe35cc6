//! A running duchy: start-up, readiness, health and graceful shutdown.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use futures::future::BoxFuture;
use halo_ops::{Check, GrpcHealth, Readiness};
use halo_proto::api::v2alpha::requisition_fulfillment_server::SERVICE_NAME as FULFILLMENT;
use halo_proto::system::v1alpha::computation_control_server::SERVICE_NAME as CONTROL;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::protocol::SystemProtocol;
use crate::{Core, DuchyConfig, control, fulfillment, herald, metrics, mill};

/// Default grace period of [`RunningDuchy::shutdown_graceful`] (`shutdown_grace_secs`).
pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(30);

/// How long after the Kingdom last answered the duchy still counts it as reachable.
const KINGDOM_RECENT: Duration = Duration::from_secs(30);

/// How often the gRPC health status follows the readiness checks.
const HEALTH_EVERY: Duration = Duration::from_secs(2);

/// A running duchy: herald, mill pool and the two gRPC servers (plus `grpc.health.v1`).
pub struct RunningDuchy {
    pub addr: SocketAddr,
    pub core: Arc<Core>,
    /// Stop claiming, stop the herald and the supervisor, stop accepting calls.
    shutdown: watch::Sender<bool>,
    /// The grace period is over: abandon running stages and release their leases.
    abort: watch::Sender<bool>,
    /// Stop the operations endpoints (last, so `/healthz` answers during the grace period).
    ops_stop: watch::Sender<bool>,
    workers: Vec<JoinHandle<()>>,
    tasks: Vec<JoinHandle<()>>,
    ops: Vec<JoinHandle<()>>,
    server: JoinHandle<Result<(), tonic::transport::Error>>,
    health: GrpcHealth,
    readiness: Arc<DuchyReadiness>,
}

/// The duchy's readiness: store open, blob directory writable, at least one protocol plugin
/// loaded, the Kingdom reachable (the herald's stream open, or an answer within 30 s).
pub struct DuchyReadiness {
    core: Arc<Core>,
    herald: Arc<herald::HeraldStatus>,
}

impl Readiness for DuchyReadiness {
    fn checks(&self) -> BoxFuture<'_, Vec<Check>> {
        Box::pin(async move {
            let store = match self.core.store.ping().await {
                Ok(()) => Check::ok("store"),
                Err(e) => Check::failed("store", format!("{e:#}")),
            };
            let probe = self.core.store.blob_root().join(".ready-probe");
            let blobs = match tokio::fs::write(&probe, b"ready").await {
                Ok(()) => {
                    let _ = tokio::fs::remove_file(&probe).await;
                    Check::ok("blobs")
                }
                Err(e) => Check::failed("blobs", format!("{}: {e}", probe.display())),
            };
            let protocols = [
                SystemProtocol::HonestMajorityShareShuffle,
                SystemProtocol::LiquidLegionsV2,
                SystemProtocol::ReachOnlyLiquidLegionsV2,
            ];
            let loaded: Vec<String> = protocols
                .iter()
                .filter_map(|p| self.core.config.protocols.select(*p))
                .map(|p| p.pin().to_string())
                .collect();
            let plugins = if loaded.is_empty() {
                Check::failed("plugins", "no protocol plugin is loaded")
            } else {
                Check {
                    name: "plugins",
                    ok: true,
                    detail: loaded.join(", "),
                }
            };
            let kingdom = if self.herald.kingdom_reachable(KINGDOM_RECENT) {
                Check::ok("kingdom")
            } else {
                Check::failed(
                    "kingdom",
                    format!(
                        "no answer from {} in the last {}s",
                        self.core.config.kingdom_url,
                        KINGDOM_RECENT.as_secs()
                    ),
                )
            };
            vec![store, blobs, plugins, kingdom]
        })
    }
}

impl RunningDuchy {
    pub async fn start(config: DuchyConfig) -> Result<RunningDuchy> {
        halo_identity::init_crypto();
        // Test builds: hold start-up here (nothing opened yet), e.g. to signal the process.
        if let Some(pause) = halo_crashpoint::pause("duchy.start") {
            tokio::time::sleep(pause).await;
        }
        let (shutdown, shutdown_rx) = watch::channel(false);
        let (abort, abort_rx) = watch::channel(false);
        let (ops_stop, _) = watch::channel(false);
        let core = Arc::new(Core::new(config.clone()).await?);
        // The data directory is locked: every lease in the store belongs to a dead incarnation
        // of this process. Free them now (not after the lease expires), then re-evaluate every
        // active computation from stored state (a transition interrupted by the crash).
        let freed = core.store.release_stale_leases().await?;
        if !freed.is_empty() {
            tracing::info!(duchy = %config.id, computations = freed.len(), "freed the leases of a previous process");
            core.metrics
                .lease_takeover("previous_process", freed.len() as u64);
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
        let (health, health_service) = GrpcHealth::new(&[CONTROL, FULFILLMENT]).await;
        let mut stop = shutdown_rx.clone();
        let server = config
            .limits
            .server
            .apply(tonic::transport::Server::builder())
            .layer(idle)
            .layer(halo_identity::AuthenticateLayer::new(config.trust.clone()))
            .add_service(health_service)
            .add_service(control::server(core.clone()))
            .add_service(fulfillment::server(core.clone()))
            .serve_with_incoming_shutdown(incoming, async move {
                let _ = stop.wait_for(|v| *v).await;
            });
        let server = tokio::spawn(server);
        let herald_status = Arc::new(herald::HeraldStatus::default());
        let readiness = Arc::new(DuchyReadiness {
            core: core.clone(),
            herald: herald_status.clone(),
        });
        let tasks = vec![
            tokio::spawn(herald::run_reporting(
                core.clone(),
                shutdown_rx.clone(),
                herald_status,
            )),
            tokio::spawn(mill::run_supervisor(core.clone(), shutdown_rx.clone())),
            tokio::spawn(halo_ops::follow_readiness(
                readiness.clone(),
                health.clone(),
                HEALTH_EVERY,
                shutdown_rx.clone(),
            )),
        ];
        let workers = (0..config.mill.workers.max(1))
            .map(|i| {
                tokio::spawn(mill::run_worker(
                    core.clone(),
                    i,
                    shutdown_rx.clone(),
                    abort_rx.clone(),
                ))
            })
            .collect();
        tracing::info!(duchy = %config.id, %addr, "duchy started");
        Ok(RunningDuchy {
            addr,
            core,
            shutdown,
            abort,
            ops_stop,
            workers,
            tasks,
            ops: Vec::new(),
            server,
            health,
            readiness,
        })
    }

    /// The readiness checks (`/readyz`, and the gRPC health status follows them).
    pub fn readiness(&self) -> Arc<dyn Readiness> {
        self.readiness.clone()
    }

    /// Serves `/healthz`, `/readyz` and `/metrics` on `listener` until the duchy has shut
    /// down. `refresh` runs before each scrape (after the queue depths are read from the
    /// store), e.g. to report the loaded plugins.
    pub fn serve_ops(
        &mut self,
        listener: tokio::net::TcpListener,
        refresh: Arc<dyn Fn(&metrics::Metrics) + Send + Sync>,
    ) {
        let core = self.core.clone();
        let text: halo_ops::MetricsText = Arc::new(move || {
            let core = core.clone();
            let refresh = refresh.clone();
            Box::pin(async move {
                refresh_queue_depth(&core).await;
                refresh(&core.metrics);
                core.metrics.encode()
            })
        });
        let endpoints = halo_ops::Endpoints {
            readiness: self.readiness.clone(),
            metrics: Some(text),
            shutting_down: self.shutdown.subscribe(),
        };
        let mut stop = self.ops_stop.subscribe();
        self.ops.push(tokio::spawn(async move {
            let stopped = async move {
                let _ = stop.wait_for(|v| *v).await;
            };
            if let Err(e) = halo_ops::serve(listener, endpoints, stopped).await {
                tracing::error!("operations endpoints: {e}");
            }
        }));
    }

    /// Stops at once, waiting for running stages however long they take (tests, the
    /// in-process demo). See [`RunningDuchy::shutdown_graceful`].
    pub async fn shutdown(self) -> Result<()> {
        self.shutdown_graceful(Duration::MAX).await
    }

    /// Graceful shutdown: NOT_SERVING and not ready, stop claiming, stop the herald between
    /// two items, stop accepting calls (calls in flight finish); let running stages finish
    /// within `grace`, else abandon them and release their leases without counting an
    /// attempt (so the next process takes them at once); then close the store.
    pub async fn shutdown_graceful(self, grace: Duration) -> Result<()> {
        let started = Instant::now();
        let id = self.core.id().to_string();
        tracing::info!(duchy = %id, grace_secs = grace.as_secs_f64(), "shutting down");
        self.health.set_serving(false).await;
        let _ = self.shutdown.send(true);
        let mut workers = futures::future::join_all(self.workers);
        let finished = tokio::time::timeout(grace, &mut workers).await.is_ok();
        if !finished {
            tracing::warn!(duchy = %id, "stages still running after the grace period; releasing their leases");
            let _ = self.abort.send(true);
            // Releasing is one store write per worker.
            if tokio::time::timeout(Duration::from_secs(10), &mut workers)
                .await
                .is_err()
            {
                tracing::warn!(duchy = %id, "mill workers did not stop; the next start frees their leases");
            }
        }
        // The herald and the supervisor stop between two items, but an item may be a Kingdom
        // call (connect timeout 10 s): wait for them only within the grace period.
        let remaining = grace
            .saturating_sub(started.elapsed())
            .max(Duration::from_secs(1));
        let mut tasks = self.tasks;
        let all = futures::future::join_all(tasks.iter_mut());
        if tokio::time::timeout(remaining, all).await.is_err() {
            tracing::warn!(duchy = %id, "herald or supervisor still busy after the grace period; stopping them");
            for t in &tasks {
                t.abort();
            }
        }
        let remaining = grace
            .saturating_sub(started.elapsed())
            .max(Duration::from_secs(1));
        let mut server = self.server;
        let served = match tokio::time::timeout(remaining, &mut server).await {
            Ok(Ok(r)) => r.context("duchy server"),
            Ok(Err(e)) => Err(anyhow::anyhow!("duchy server task: {e}")),
            Err(_) => {
                tracing::warn!(duchy = %id, "calls still running after the grace period; closing them");
                server.abort();
                Ok(())
            }
        };
        let _ = self.ops_stop.send(true);
        for t in self.ops {
            let _ = t.await;
        }
        self.core.store.close().await;
        tracing::info!(
            duchy = %id,
            stages_finished = finished,
            seconds = started.elapsed().as_secs_f64(),
            "duchy stopped"
        );
        served
    }
}

/// Reads the queue depth per stage from the store into the gauge.
async fn refresh_queue_depth(core: &Arc<Core>) {
    match core.store.queue_depth().await {
        Ok(rows) => {
            let depths: Vec<_> = rows
                .into_iter()
                .map(|(pin, stage, n)| {
                    let name = match core.config.protocols.pinned(&pin) {
                        Some(p) => crate::core::stage_name(&p.stages(), stage),
                        None => stage.to_string(),
                    };
                    (pin.name, pin.version, name, n)
                })
                .collect();
            core.metrics.set_queue_depth(&depths);
        }
        Err(e) => tracing::warn!("reading the queue depth: {e:#}"),
    }
}

//! Binding, serving and shutting down.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use futures::future::BoxFuture;
use halo_ops::GrpcHealth;
use halo_proto::halo::v1::certificates_server::{self, CertificatesServer};
use halo_proto::halo::v1::data_provider_requisitions_server::{
    self, DataProviderRequisitionsServer,
};
use halo_proto::halo::v1::measurements_server::{self, MeasurementsServer};
use halo_proto::system::v1alpha::computation_log_entries_server::{
    self, ComputationLogEntriesServer,
};
use halo_proto::system::v1alpha::computation_participants_server::{
    self, ComputationParticipantsServer,
};
use halo_proto::system::v1alpha::computations_server::{self, ComputationsServer};
use halo_proto::system::v1alpha::requisitions_server::{self, RequisitionsServer};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tonic::transport::Server;

use crate::config::KingdomConfig;
use crate::core::{Core, Directory};
use crate::service::admin::{
    CertificatesService, DataProviderRequisitionsService, MeasurementsService,
};
use crate::service::computations::ComputationsService;
use crate::service::log_entries::ComputationLogEntriesService;
use crate::service::participants::ComputationParticipantsService;
use crate::service::requisitions::RequisitionsService;
use crate::store::Db;

/// How long [`RunningKingdom::shutdown`] waits for in-flight calls before aborting them.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// How often the gRPC health status follows the readiness checks.
const HEALTH_EVERY: Duration = Duration::from_secs(2);

/// The Kingdom's readiness: its database answers.
struct KingdomReadiness {
    db: Db,
}

impl halo_ops::Readiness for KingdomReadiness {
    fn checks(&self) -> BoxFuture<'_, Vec<halo_ops::Check>> {
        Box::pin(async move {
            let store = async {
                let mut tx = self.db.read().await.map_err(|s| s.message().to_string())?;
                sqlx::query("SELECT 1")
                    .fetch_one(&mut *tx)
                    .await
                    .map_err(|e| e.to_string())?;
                tx.commit().await.map_err(|e| e.to_string())
            };
            vec![match store.await {
                Ok(()) => halo_ops::Check::ok("store"),
                Err(e) => halo_ops::Check::failed("store", e),
            }]
        })
    }
}

/// A Kingdom serving on [`RunningKingdom::addr`].
///
/// Dropping it without calling [`RunningKingdom::shutdown`] still signals the server to stop,
/// but does not wait for it.
pub struct RunningKingdom {
    /// The bound address (useful with port 0).
    pub addr: SocketAddr,
    shutdown: watch::Sender<bool>,
    server: Option<JoinHandle<Result<(), tonic::transport::Error>>>,
    db: Db,
    health: GrpcHealth,
    readiness: Arc<KingdomReadiness>,
    /// Stops the operations endpoints (last: `/healthz` answers while shutting down).
    ops_stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl std::fmt::Debug for RunningKingdom {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunningKingdom")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl RunningKingdom {
    /// Opens the database, binds `config.listen` and serves every service over mTLS.
    /// Returns once the socket is listening.
    pub async fn start(config: KingdomConfig) -> anyhow::Result<RunningKingdom> {
        halo_identity::init_crypto();
        config.validate().context("invalid kingdom configuration")?;
        let db = Db::open(&config.data_dir).await?;
        let (shutdown, shutdown_rx) = watch::channel(false);
        let core = Arc::new(Core {
            db: db.clone(),
            directory: Directory::new(&config),
            trust: config.trust.clone(),
            stream_poll_interval: config.stream_poll_interval,
            stream_max_duration: config.stream_max_duration,
            shutdown: shutdown_rx.clone(),
            active_streams: halo_limits::PerKeyLimiter::new(
                "StreamActiveComputations calls",
                config.limits.max_active_streams_per_duchy,
            ),
            default_page_size: config.limits.default_page_size,
            max_page_size: config.limits.max_page_size,
        });
        let listener = match TcpListener::bind(config.listen).await {
            Ok(listener) => listener,
            Err(e) => {
                db.close().await;
                return Err(e).with_context(|| format!("binding {}", config.listen));
            }
        };
        let addr = listener.local_addr().context("local address")?;
        let tls = match config.identity.server_config(&config.trust) {
            Ok(tls) => tls,
            Err(e) => {
                db.close().await;
                return Err(e).context("server TLS configuration");
            }
        };
        let incoming =
            halo_identity::tls_incoming(listener, tls, config.trust.clone(), config.tls_limits);
        let limits = config.limits.server;
        let (incoming, idle) = halo_limits::idle::track(incoming, limits.idle_timeout);
        let max = limits.max_message_bytes;
        let (health, health_service) = GrpcHealth::new(&[
            computations_server::SERVICE_NAME,
            computation_participants_server::SERVICE_NAME,
            computation_log_entries_server::SERVICE_NAME,
            requisitions_server::SERVICE_NAME,
            measurements_server::SERVICE_NAME,
            data_provider_requisitions_server::SERVICE_NAME,
            certificates_server::SERVICE_NAME,
        ])
        .await;
        let mut builder = limits
            .apply(Server::builder())
            .layer(idle)
            .layer(halo_identity::AuthenticateLayer::new(config.trust.clone()));
        let router = builder
            .add_service(health_service)
            .add_service(
                ComputationsServer::new(ComputationsService { core: core.clone() })
                    .max_decoding_message_size(max)
                    .max_encoding_message_size(max),
            )
            .add_service(
                ComputationParticipantsServer::new(ComputationParticipantsService {
                    core: core.clone(),
                })
                .max_decoding_message_size(max)
                .max_encoding_message_size(max),
            )
            .add_service(
                ComputationLogEntriesServer::new(ComputationLogEntriesService {
                    core: core.clone(),
                })
                .max_decoding_message_size(max)
                .max_encoding_message_size(max),
            )
            .add_service(
                RequisitionsServer::new(RequisitionsService { core: core.clone() })
                    .max_decoding_message_size(max)
                    .max_encoding_message_size(max),
            )
            .add_service(
                MeasurementsServer::new(MeasurementsService { core: core.clone() })
                    .max_decoding_message_size(max)
                    .max_encoding_message_size(max),
            )
            .add_service(
                DataProviderRequisitionsServer::new(DataProviderRequisitionsService {
                    core: core.clone(),
                })
                .max_decoding_message_size(max)
                .max_encoding_message_size(max),
            )
            .add_service(
                CertificatesServer::new(CertificatesService { core })
                    .max_decoding_message_size(max)
                    .max_encoding_message_size(max),
            );
        let readiness = Arc::new(KingdomReadiness { db: db.clone() });
        let tasks = vec![tokio::spawn(halo_ops::follow_readiness(
            readiness.clone(),
            health.clone(),
            HEALTH_EVERY,
            shutdown_rx.clone(),
        ))];
        let mut signal = shutdown_rx;
        let server = tokio::spawn(router.serve_with_incoming_shutdown(incoming, async move {
            let _ = signal.wait_for(|stop| *stop).await;
        }));
        tracing::info!(%addr, data_dir = %config.data_dir.display(), "kingdom listening");
        let (ops_stop, _) = watch::channel(false);
        Ok(RunningKingdom {
            addr,
            shutdown,
            server: Some(server),
            db,
            health,
            readiness,
            ops_stop,
            tasks,
        })
    }

    /// The readiness checks (`/readyz`; the gRPC health status follows them).
    pub fn readiness(&self) -> Arc<dyn halo_ops::Readiness> {
        self.readiness.clone()
    }

    /// Serves `/healthz`, `/readyz` and `/metrics` on `listener` until the Kingdom has shut
    /// down. `metrics`: the OpenMetrics text of a scrape (`None`: `/metrics` is 404).
    pub fn serve_ops(&mut self, listener: TcpListener, metrics: Option<halo_ops::MetricsText>) {
        let endpoints = halo_ops::Endpoints {
            readiness: self.readiness.clone(),
            metrics,
            shutting_down: self.shutdown.subscribe(),
        };
        let mut stop = self.ops_stop.subscribe();
        self.tasks.push(tokio::spawn(async move {
            let stopped = async move {
                let _ = stop.wait_for(|v| *v).await;
            };
            if let Err(e) = halo_ops::serve(listener, endpoints, stopped).await {
                tracing::error!("operations endpoints: {e}");
            }
        }));
    }

    /// [`RunningKingdom::shutdown_graceful`] with a 10 s grace period.
    pub async fn shutdown(self) -> anyhow::Result<()> {
        self.shutdown_graceful(SHUTDOWN_GRACE).await
    }

    /// NOT_SERVING and not ready; stops accepting calls, ends open `StreamActiveComputations`
    /// streams with OK (a duchy's herald resumes from its continuation token, here after a
    /// restart or at another replica), waits for in-flight calls (aborting them after
    /// `grace`) and closes the database.
    pub async fn shutdown_graceful(mut self, grace: Duration) -> anyhow::Result<()> {
        self.health.set_serving(false).await;
        let _ = self.shutdown.send(true);
        let mut result = Ok(());
        if let Some(mut server) = self.server.take() {
            match tokio::time::timeout(grace, &mut server).await {
                Ok(Ok(Ok(()))) => {}
                Ok(Ok(Err(e))) => result = Err(anyhow::Error::new(e).context("kingdom server")),
                Ok(Err(e)) => result = Err(anyhow::Error::new(e).context("kingdom server task")),
                Err(_) => {
                    tracing::warn!("kingdom calls still running after the grace period; aborting");
                    server.abort();
                    let _ = server.await;
                }
            }
        }
        let _ = self.ops_stop.send(true);
        for t in std::mem::take(&mut self.tasks) {
            let _ = t.await;
        }
        self.db.close().await;
        tracing::info!(addr = %self.addr, "kingdom stopped");
        result
    }
}

impl Drop for RunningKingdom {
    fn drop(&mut self) {
        let _ = self.shutdown.send(true);
    }
}

//! Operations endpoints shared by the Kingdom and the duchy.
//!
//! * [`serve`]: an HTTP server (axum) for orchestrators and scrapers: `GET /healthz` (the
//!   process is alive: always 200), `GET /readyz` (200 when every [`Readiness`] check passes
//!   and the server is not shutting down, else 503; the body lists each check) and
//!   `GET /metrics` (OpenMetrics text).
//! * [`GrpcHealth`]: the standard gRPC health service (`grpc.health.v1.Health`) for the
//!   mTLS gRPC server, NOT_SERVING until [`GrpcHealth::set_serving`] and again while shutting
//!   down; [`follow_readiness`] keeps it in step with the readiness checks.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use futures::future::BoxFuture;
use tokio::sync::watch;
use tonic_health::ServingStatus;
use tonic_health::pb::health_server::{Health, HealthServer};
use tonic_health::server::HealthReporter;

/// The `grpc.health.v1` messages and client (for probes and tests).
pub mod pb {
    pub use tonic_health::pb::health_check_response::ServingStatus;
    pub use tonic_health::pb::health_client::HealthClient;
    pub use tonic_health::pb::{HealthCheckRequest, HealthCheckResponse};
}

/// One readiness condition and its current state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Check {
    pub name: &'static str,
    pub ok: bool,
    /// Why not (or a short confirmation).
    pub detail: String,
}

impl Check {
    pub fn ok(name: &'static str) -> Check {
        Check {
            name,
            ok: true,
            detail: "ok".into(),
        }
    }

    pub fn failed(name: &'static str, detail: impl Into<String>) -> Check {
        Check {
            name,
            ok: false,
            detail: detail.into(),
        }
    }
}

/// What a server reports as its readiness: the current state of each of its conditions.
pub trait Readiness: Send + Sync + 'static {
    fn checks(&self) -> BoxFuture<'_, Vec<Check>>;
}

/// True when every check passed (and there is at least one).
pub fn all_ok(checks: &[Check]) -> bool {
    !checks.is_empty() && checks.iter().all(|c| c.ok)
}

/// Produces the OpenMetrics text of a scrape (after refreshing gauges, e.g. from a store).
pub type MetricsText = Arc<dyn Fn() -> BoxFuture<'static, String> + Send + Sync>;

/// What [`serve`] answers with.
#[derive(Clone)]
pub struct Endpoints {
    pub readiness: Arc<dyn Readiness>,
    /// `None`: `/metrics` is 404.
    pub metrics: Option<MetricsText>,
    /// True once the server is shutting down: `/readyz` answers 503 from then on.
    pub shutting_down: watch::Receiver<bool>,
}

/// The content type of the OpenMetrics text exposition.
pub const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(e): State<Endpoints>) -> Response {
    let checks = e.readiness.checks().await;
    let stopping = *e.shutting_down.borrow();
    let mut body = String::new();
    if stopping {
        body.push_str("shutting down\n");
    }
    for c in &checks {
        body.push_str(&format!(
            "{} {}: {}\n",
            if c.ok { "ok" } else { "not ready" },
            c.name,
            c.detail
        ));
    }
    let status = if all_ok(&checks) && !stopping {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, body).into_response()
}

async fn metrics(State(e): State<Endpoints>) -> Response {
    match &e.metrics {
        Some(text) => ([(header::CONTENT_TYPE, OPENMETRICS)], text().await).into_response(),
        None => StatusCode::NOT_FOUND.into_response(),
    }
}

/// The router of [`serve`] (for tests and embedding).
pub fn router(endpoints: Endpoints) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(endpoints)
}

/// Serves `/healthz`, `/readyz` and `/metrics` on `listener` until `shutdown` resolves (then
/// finishes the requests in flight). Accept errors (e.g. too many open files) are waited out
/// by axum, not spun on.
pub async fn serve(
    listener: tokio::net::TcpListener,
    endpoints: Endpoints,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(endpoints))
        .with_graceful_shutdown(shutdown)
        .await
}

/// The gRPC health service of one server: the overall status (service `""`) and that of each
/// named service move together.
#[derive(Clone)]
pub struct GrpcHealth {
    reporter: HealthReporter,
    services: Arc<Vec<&'static str>>,
}

impl GrpcHealth {
    /// A reporter for `services` (their fully qualified names, e.g. from
    /// `tonic::server::NamedService::NAME`), all NOT_SERVING, and the service to add to the
    /// server.
    pub async fn new(services: &[&'static str]) -> (GrpcHealth, HealthServer<impl Health>) {
        let (reporter, server) = tonic_health::server::health_reporter();
        let h = GrpcHealth {
            reporter,
            services: Arc::new(services.to_vec()),
        };
        h.set_serving(false).await;
        (h, server)
    }

    /// SERVING (`true`) or NOT_SERVING, for the server and every service.
    pub async fn set_serving(&self, serving: bool) {
        let status = if serving {
            ServingStatus::Serving
        } else {
            ServingStatus::NotServing
        };
        self.reporter.set_service_status("", status).await;
        for s in self.services.iter() {
            self.reporter.set_service_status(*s, status).await;
        }
    }
}

/// Keeps `health` SERVING while `readiness` passes (checked every `every`) until `shutdown`
/// turns true; then NOT_SERVING for good.
pub async fn follow_readiness(
    readiness: Arc<dyn Readiness>,
    health: GrpcHealth,
    every: Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut last = None;
    loop {
        if *shutdown.borrow() {
            break;
        }
        let ready = all_ok(&readiness.checks().await);
        if last != Some(ready) {
            health.set_serving(ready).await;
            last = Some(ready);
        }
        tokio::select! {
            _ = shutdown.wait_for(|v| *v) => break,
            _ = tokio::time::sleep(every) => {}
        }
    }
    health.set_serving(false).await;
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    struct Flag(Arc<AtomicBool>);

    impl Readiness for Flag {
        fn checks(&self) -> BoxFuture<'_, Vec<Check>> {
            let ok = self.0.load(Ordering::SeqCst);
            Box::pin(async move {
                vec![
                    Check::ok("store"),
                    if ok {
                        Check::ok("registry")
                    } else {
                        Check::failed("registry", "not loaded")
                    },
                ]
            })
        }
    }

    async fn get(addr: std::net::SocketAddr, path: &str) -> String {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(
            format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .unwrap();
        let mut body = String::new();
        s.read_to_string(&mut body).await.unwrap();
        body
    }

    #[tokio::test]
    async fn readyz_follows_the_checks_and_shutdown() {
        let flag = Arc::new(AtomicBool::new(false));
        let (stop, stop_rx) = watch::channel(false);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let endpoints = Endpoints {
            readiness: Arc::new(Flag(flag.clone())),
            metrics: Some(Arc::new(|| Box::pin(async { "# EOF\n".to_string() }))),
            shutting_down: stop_rx.clone(),
        };
        let mut rx = stop_rx.clone();
        let server = tokio::spawn(serve(listener, endpoints, async move {
            let _ = rx.wait_for(|v| *v).await;
        }));
        let r = get(addr, "/healthz").await;
        assert!(r.starts_with("HTTP/1.1 200"), "{r}");
        let r = get(addr, "/readyz").await;
        assert!(r.starts_with("HTTP/1.1 503"), "{r}");
        assert!(r.contains("not ready registry: not loaded"), "{r}");
        flag.store(true, Ordering::SeqCst);
        let r = get(addr, "/readyz").await;
        assert!(r.starts_with("HTTP/1.1 200"), "{r}");
        let r = get(addr, "/metrics").await;
        assert!(r.starts_with("HTTP/1.1 200"), "{r}");
        assert!(r.contains(OPENMETRICS), "{r}");
        assert!(r.ends_with("# EOF\n"), "{r}");
        let r = get(addr, "/other").await;
        assert!(r.starts_with("HTTP/1.1 404"), "{r}");
        // Shutting down: not ready any more, though every check passes.
        let (stop2, rx2) = watch::channel(true);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr2 = listener.local_addr().unwrap();
        let e2 = Endpoints {
            readiness: Arc::new(Flag(flag.clone())),
            metrics: None,
            shutting_down: rx2,
        };
        tokio::spawn(serve(listener, e2, async {
            futures::future::pending::<()>().await
        }));
        let r = get(addr2, "/readyz").await;
        assert!(r.starts_with("HTTP/1.1 503"), "{r}");
        assert!(r.contains("shutting down"), "{r}");
        let r = get(addr2, "/metrics").await;
        assert!(r.starts_with("HTTP/1.1 404"), "{r}");
        drop(stop2);
        stop.send(true).unwrap();
        server.await.unwrap().unwrap();
    }

    #[test]
    fn no_checks_is_not_ready() {
        assert!(!all_ok(&[]));
        assert!(all_ok(&[Check::ok("a")]));
        assert!(!all_ok(&[Check::ok("a"), Check::failed("b", "x")]));
    }
}

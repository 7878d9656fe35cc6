//! Operations endpoints shared by the Kingdom and the duchy.
//!
//! * [`serve`]: an HTTP server (axum) for orchestrators and scrapers: `GET /healthz` (the
//!   process is alive: always 200), `GET /readyz` (200 when every [`Readiness`] check passes
//!   and the server is not shutting down, else 503; the body names each check and whether it
//!   passed, nothing more: the port is plain HTTP) and `GET /metrics` (OpenMetrics text).
//!   `/readyz` answers from a [`CachedReadiness`] (the checks run at most once per
//!   [`READYZ_MAX_AGE`], however many clients ask), and `/readyz` and `/metrics` together
//!   serve at most [`MAX_CONCURRENT`] requests at once (more are answered 503 at once).
//!   What a failing check found goes to the log ([`follow_readiness`] logs each change).
//! * [`GrpcHealth`]: the standard gRPC health service (`grpc.health.v1.Health`) for the
//!   mTLS gRPC server, NOT_SERVING until [`GrpcHealth::set_serving`] and again while shutting
//!   down; [`follow_readiness`] keeps it in step with the readiness checks.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use futures::future::BoxFuture;
use tokio::sync::{Semaphore, watch};
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

/// Readiness checks that run at most once per `max_age`: callers within that time get the
/// last result; when it is older, one caller runs the checks while the others keep getting
/// the previous result (they wait only if there is none yet).
pub struct CachedReadiness {
    inner: Arc<dyn Readiness>,
    max_age: Duration,
    last: Mutex<Option<(Instant, Vec<Check>)>>,
    refreshing: tokio::sync::Mutex<()>,
}

impl CachedReadiness {
    pub fn new(inner: Arc<dyn Readiness>, max_age: Duration) -> CachedReadiness {
        CachedReadiness {
            inner,
            max_age,
            last: Mutex::new(None),
            refreshing: tokio::sync::Mutex::new(()),
        }
    }

    /// The last result, if there is one (`fresh`: only if younger than `max_age`).
    fn last(&self, fresh: bool) -> Option<Vec<Check>> {
        let last = self.last.lock().unwrap_or_else(PoisonError::into_inner);
        last.as_ref()
            .filter(|(at, _)| !fresh || at.elapsed() < self.max_age)
            .map(|(_, checks)| checks.clone())
    }
}

impl Readiness for CachedReadiness {
    fn checks(&self) -> BoxFuture<'_, Vec<Check>> {
        Box::pin(async move {
            if let Some(checks) = self.last(true) {
                return checks;
            }
            let _refreshing = match self.refreshing.try_lock() {
                Ok(guard) => guard,
                Err(_) => {
                    if let Some(checks) = self.last(false) {
                        return checks;
                    }
                    self.refreshing.lock().await
                }
            };
            // Someone else may have refreshed while this caller waited.
            if let Some(checks) = self.last(true) {
                return checks;
            }
            let checks = self.inner.checks().await;
            *self.last.lock().unwrap_or_else(PoisonError::into_inner) =
                Some((Instant::now(), checks.clone()));
            checks
        })
    }
}

/// How old the readiness result `/readyz` answers with may be.
pub const READYZ_MAX_AGE: Duration = Duration::from_secs(1);

/// Requests `/readyz` and `/metrics` serve at once; more are answered 503 without work.
pub const MAX_CONCURRENT: usize = 16;

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
    // Names and states only: details (paths, URLs, store errors) are for the log.
    for c in &checks {
        body.push_str(if c.ok { "ok " } else { "not ready " });
        body.push_str(c.name);
        body.push('\n');
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

/// Answers 503 at once when `limit` has no permit left.
async fn shed_load(State(limit): State<Arc<Semaphore>>, request: Request, next: Next) -> Response {
    match limit.try_acquire() {
        Ok(_permit) => next.run(request).await,
        Err(_) => (StatusCode::SERVICE_UNAVAILABLE, "busy\n").into_response(),
    }
}

/// The router of [`serve`] (for tests and embedding), with [`READYZ_MAX_AGE`] and
/// [`MAX_CONCURRENT`].
pub fn router(endpoints: Endpoints) -> Router {
    router_with(endpoints, READYZ_MAX_AGE, MAX_CONCURRENT)
}

/// [`router`] with the readiness result cached for `max_age` and at most `concurrent`
/// requests to `/readyz` and `/metrics` at once. `/healthz` is not limited: it does no work,
/// and a liveness probe failing under a flood would have the process restarted for nothing.
pub fn router_with(mut endpoints: Endpoints, max_age: Duration, concurrent: usize) -> Router {
    endpoints.readiness = Arc::new(CachedReadiness::new(endpoints.readiness, max_age));
    let limit = Arc::new(Semaphore::new(concurrent.max(1)));
    let limited = Router::new()
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route_layer(axum::middleware::from_fn_with_state(limit, shed_load))
        .with_state(endpoints);
    Router::new().route("/healthz", get(healthz)).merge(limited)
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

/// Logs each check whose state changed since `seen` (a failure at warn, with what it found).
fn log_changes(seen: &mut HashMap<&'static str, bool>, checks: &[Check]) {
    for c in checks {
        let before = seen.insert(c.name, c.ok);
        if before == Some(c.ok) {
            continue;
        }
        if !c.ok {
            tracing::warn!(check = c.name, "not ready: {}", c.detail);
        } else if before.is_some() {
            tracing::info!(check = c.name, "ready again: {}", c.detail);
        }
    }
}

/// Keeps `health` SERVING while `readiness` passes (checked every `every`) until `shutdown`
/// turns true; then NOT_SERVING for good. Logs every change of a check's state.
pub async fn follow_readiness(
    readiness: Arc<dyn Readiness>,
    health: GrpcHealth,
    every: Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut last = None;
    let mut seen = HashMap::new();
    loop {
        if *shutdown.borrow() {
            break;
        }
        let checks = readiness.checks().await;
        log_changes(&mut seen, &checks);
        let ready = all_ok(&checks);
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
        // Not cached, so that the flag is seen at once.
        let server = tokio::spawn(
            axum::serve(listener, router_with(endpoints, Duration::ZERO, 4))
                .with_graceful_shutdown(async move {
                    let _ = rx.wait_for(|v| *v).await;
                })
                .into_future(),
        );
        let r = get(addr, "/healthz").await;
        assert!(r.starts_with("HTTP/1.1 200"), "{r}");
        let r = get(addr, "/readyz").await;
        assert!(r.starts_with("HTTP/1.1 503"), "{r}");
        assert!(r.ends_with("ok store\nnot ready registry\n"), "{r}");
        assert!(!r.contains("not loaded"), "details are for the log: {r}");
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

    /// Readiness whose checks count their runs and find something private.
    struct Counting {
        runs: Arc<std::sync::atomic::AtomicUsize>,
    }

    impl Readiness for Counting {
        fn checks(&self) -> BoxFuture<'_, Vec<Check>> {
            self.runs.fetch_add(1, Ordering::SeqCst);
            Box::pin(async move {
                vec![
                    Check::ok("store"),
                    Check::failed(
                        "kingdom",
                        "no answer from https://kingdom.internal:8443 (/var/lib/halo/blobs)",
                    ),
                ]
            })
        }
    }

    async fn spawn_router(router: Router) -> std::net::SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(axum::serve(listener, router).into_future());
        addr
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn many_readyz_clients_share_one_run_of_the_checks_and_see_no_details() {
        let runs = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (_stop, stop_rx) = watch::channel(false);
        let endpoints = Endpoints {
            readiness: Arc::new(Counting { runs: runs.clone() }),
            metrics: None,
            shutting_down: stop_rx,
        };
        // A result that never expires during the test, and no load shedding here.
        let addr = spawn_router(router_with(endpoints, Duration::from_secs(3600), 1000)).await;
        let clients: Vec<_> = (0..200)
            .map(|_| tokio::spawn(async move { get(addr, "/readyz").await }))
            .collect();
        for c in clients {
            let r = c.await.unwrap();
            assert!(r.starts_with("HTTP/1.1 503"), "{r}");
            assert!(r.ends_with("ok store\nnot ready kingdom\n"), "{r}");
            assert!(
                !r.contains("https://") && !r.contains("/var/lib"),
                "no URL or path on the plain-HTTP port: {r}"
            );
        }
        assert_eq!(runs.load(Ordering::SeqCst), 1, "the checks ran per request");
    }

    /// A `/metrics` scrape that waits until the test lets it go.
    fn blocking_metrics(entered: Arc<AtomicUsize>, gate: Arc<Semaphore>) -> MetricsText {
        Arc::new(move || {
            let (entered, gate) = (entered.clone(), gate.clone());
            Box::pin(async move {
                entered.fetch_add(1, Ordering::SeqCst);
                let _ = gate.acquire().await;
                "# EOF\n".to_string()
            })
        })
    }

    use std::sync::atomic::AtomicUsize;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn requests_over_the_limit_are_shed_and_healthz_still_answers() {
        let entered = Arc::new(AtomicUsize::new(0));
        let gate = Arc::new(Semaphore::new(0));
        let (_stop, stop_rx) = watch::channel(false);
        let endpoints = Endpoints {
            readiness: Arc::new(Flag(Arc::new(AtomicBool::new(true)))),
            metrics: Some(blocking_metrics(entered.clone(), gate.clone())),
            shutting_down: stop_rx,
        };
        let addr = spawn_router(router_with(endpoints, Duration::ZERO, 2)).await;
        let scrapes: Vec<_> = (0..2)
            .map(|_| tokio::spawn(async move { get(addr, "/metrics").await }))
            .collect();
        while entered.load(Ordering::SeqCst) < 2 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // Both permits are held by the scrapes: a third request is turned away at once.
        let r = get(addr, "/readyz").await;
        assert!(r.starts_with("HTTP/1.1 503"), "{r}");
        assert!(r.ends_with("busy\n"), "{r}");
        let r = get(addr, "/healthz").await;
        assert!(r.starts_with("HTTP/1.1 200"), "{r}");
        gate.add_permits(2);
        for s in scrapes {
            let r = s.await.unwrap();
            assert!(r.starts_with("HTTP/1.1 200"), "{r}");
        }
        // Permits are given back: ready again.
        let r = get(addr, "/readyz").await;
        assert!(r.starts_with("HTTP/1.1 200"), "{r}");
        assert_eq!(entered.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_cached_result_is_reused_until_it_expires() {
        let runs = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let cached = CachedReadiness::new(
            Arc::new(Counting { runs: runs.clone() }),
            Duration::from_secs(3600),
        );
        let a = cached.checks().await;
        let b = cached.checks().await;
        assert_eq!(a, b);
        assert_eq!(runs.load(Ordering::SeqCst), 1);
        let uncached =
            CachedReadiness::new(Arc::new(Counting { runs: runs.clone() }), Duration::ZERO);
        uncached.checks().await;
        uncached.checks().await;
        assert_eq!(runs.load(Ordering::SeqCst), 3);
    }

    #[test]
    fn state_changes_are_logged_once() {
        let mut seen = HashMap::new();
        log_changes(&mut seen, &[Check::failed("store", "locked")]);
        assert_eq!(seen.get("store"), Some(&false));
        log_changes(&mut seen, &[Check::ok("store")]);
        assert_eq!(seen.get("store"), Some(&true));
    }

    #[test]
    fn no_checks_is_not_ready() {
        assert!(!all_ok(&[]));
        assert!(all_ok(&[Check::ok("a")]));
        assert!(!all_ok(&[Check::ok("a"), Check::failed("b", "x")]));
    }
}

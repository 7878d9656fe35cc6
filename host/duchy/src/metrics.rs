//! Duchy metrics in the OpenMetrics text format, with bounded labels only (plugin, version,
//! stage, outcome — never computation ids or peer addresses).

use std::sync::Mutex;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StageLabels {
    pub plugin: String,
    pub version: String,
    pub stage: String,
    /// ok, transient, permanent, invalid_input, crashed
    pub outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StageTimeLabels {
    pub plugin: String,
    pub version: String,
    pub stage: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PluginLabels {
    pub plugin: String,
    pub version: String,
    pub wit: String,
    /// "true" when offered to new computations, "false" when only kept for pinned ones.
    pub offered: String,
}

pub struct Metrics {
    registry: Mutex<Registry>,
    pub stage_executions: Family<StageLabels, Counter>,
    pub stage_seconds: Family<StageTimeLabels, Histogram>,
    pub plugins_loaded: Family<PluginLabels, Gauge>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("halo_duchy");
        let stage_executions = Family::<StageLabels, Counter>::default();
        let stage_seconds = Family::<StageTimeLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.001, 4.0, 10))
        });
        let plugins_loaded = Family::<PluginLabels, Gauge>::default();
        registry.register(
            "stage_executions",
            "Stage executions by plugin, version, stage and outcome",
            stage_executions.clone(),
        );
        registry.register(
            "stage_seconds",
            "Wall time of stage executions",
            stage_seconds.clone(),
        );
        registry.register(
            "plugin_loaded",
            "Protocol plugin versions loaded in this duchy",
            plugins_loaded.clone(),
        );
        Metrics {
            registry: Mutex::new(registry),
            stage_executions,
            stage_seconds,
            plugins_loaded,
        }
    }

    pub fn record_stage(
        &self,
        plugin: &str,
        version: &str,
        stage: &str,
        outcome: &str,
        seconds: f64,
    ) {
        self.stage_executions
            .get_or_create(&StageLabels {
                plugin: plugin.into(),
                version: version.into(),
                stage: stage.into(),
                outcome: outcome.into(),
            })
            .inc();
        self.stage_seconds
            .get_or_create(&StageTimeLabels {
                plugin: plugin.into(),
                version: version.into(),
                stage: stage.into(),
            })
            .observe(seconds);
    }

    /// Replaces the loaded-plugin gauge with `plugins` (id, version, wit package, offered).
    pub fn set_plugins(&self, plugins: &[(String, String, String, bool)]) {
        self.plugins_loaded.clear();
        for (plugin, version, wit, offered) in plugins {
            self.plugins_loaded
                .get_or_create(&PluginLabels {
                    plugin: plugin.clone(),
                    version: version.clone(),
                    wit: wit.clone(),
                    offered: offered.to_string(),
                })
                .set(1);
        }
    }

    /// The OpenMetrics text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if let Ok(r) = self.registry.lock() {
            let _ = prometheus_client::encoding::text::encode(&mut out, &r);
        }
        out
    }
}

/// Serves `GET /metrics` on `listener` until `shutdown`. `refresh` runs before each scrape.
pub async fn serve(
    listener: tokio::net::TcpListener,
    metrics: std::sync::Arc<Metrics>,
    refresh: std::sync::Arc<dyn Fn(&Metrics) + Send + Sync>,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    loop {
        let (mut sock, _) = tokio::select! {
            _ = shutdown.wait_for(|v| *v) => return,
            r = listener.accept() => match r { Ok(s) => s, Err(_) => continue },
        };
        let metrics = metrics.clone();
        let refresh = refresh.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 8192];
            let mut len = 0;
            while len < buf.len() {
                match tokio::time::timeout(
                    std::time::Duration::from_secs(5),
                    sock.read(&mut buf[len..]),
                )
                .await
                {
                    Ok(Ok(0)) | Err(_) | Ok(Err(_)) => break,
                    Ok(Ok(n)) => {
                        len += n;
                        if buf[..len].windows(4).any(|w| w == b"\r\n\r\n") {
                            break;
                        }
                    }
                }
            }
            let request = String::from_utf8_lossy(&buf[..len]);
            let response = if request.starts_with("GET /metrics") {
                refresh(&metrics);
                let body = metrics.encode();
                format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: application/openmetrics-text; version=1.0.0; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                )
            } else {
                "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                    .to_string()
            };
            let _ = sock.write_all(response.as_bytes()).await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn serves_openmetrics_with_bounded_labels() {
        let m = Arc::new(Metrics::new());
        m.record_stage("hmss", "1.0.0", "SHUFFLE_PHASE", "ok", 0.25);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, rx) = tokio::sync::watch::channel(false);
        let refresh: Arc<dyn Fn(&Metrics) + Send + Sync> = Arc::new(|m| {
            m.set_plugins(&[("hmss".into(), "1.1.0".into(), "halo:mpc@1.0.0".into(), true)])
        });
        tokio::spawn(serve(listener, m.clone(), refresh, rx));
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut body = String::new();
        s.read_to_string(&mut body).await.unwrap();
        assert!(body.starts_with("HTTP/1.1 200 OK"), "{body}");
        assert!(body.contains(r#"halo_duchy_stage_executions_total{plugin="hmss",version="1.0.0",stage="SHUFFLE_PHASE",outcome="ok"} 1"#), "{body}");
        assert!(body.contains(r#"halo_duchy_plugin_loaded{plugin="hmss",version="1.1.0",wit="halo:mpc@1.0.0",offered="true"} 1"#), "{body}");
        let _ = stop.send(true);
    }
}

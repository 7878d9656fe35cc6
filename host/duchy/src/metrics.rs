//! Duchy metrics in the OpenMetrics text format, with bounded labels only (plugin, version,
//! stage, outcome, retry cause, peer duchy id — never computation ids or peer addresses).
//! Served with `/healthz` and `/readyz` by [`crate::RunningDuchy::serve_ops`] (`halo_ops`).

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

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct QueueLabels {
    pub plugin: String,
    pub version: String,
    pub stage: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TakeoverLabels {
    /// `expired`: another worker's lease ran out while it held the stage; `previous_process`:
    /// freed at start-up from a process that died holding it.
    pub from: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RetryLabels {
    /// See [`RetryCause`].
    pub cause: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PeerLabels {
    /// The other duchy's id (configured principals only: bounded).
    pub peer: String,
}

/// Why a claimed stage was given back to be tried again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RetryCause {
    /// A peer or the Kingdom is behind or unavailable (not an attempt).
    Wait,
    /// The disk is full (waited out, not an attempt).
    StorageFull,
    /// The plugin reported a transient error (its own, or the engine's: the stage deadline,
    /// no free instance slot).
    Plugin,
    /// The plugin's `start` crashed.
    Crashed,
    /// Delivering the effects (Kingdom calls, payloads) failed transiently.
    Delivery,
    /// A local store or disk error.
    Local,
    /// The process shut down before the stage finished (not an attempt).
    Shutdown,
}

impl RetryCause {
    pub fn label(self) -> &'static str {
        match self {
            RetryCause::Wait => "wait",
            RetryCause::StorageFull => "storage_full",
            RetryCause::Plugin => "plugin",
            RetryCause::Crashed => "crashed",
            RetryCause::Delivery => "delivery",
            RetryCause::Local => "local",
            RetryCause::Shutdown => "shutdown",
        }
    }
}

pub struct Metrics {
    registry: Mutex<Registry>,
    pub stage_executions: Family<StageLabels, Counter>,
    pub stage_seconds: Family<StageTimeLabels, Histogram>,
    pub plugins_loaded: Family<PluginLabels, Gauge>,
    pub queue_depth: Family<QueueLabels, Gauge>,
    pub lease_takeovers: Family<TakeoverLabels, Counter>,
    pub retries: Family<RetryLabels, Counter>,
    pub peer_bytes_sent: Family<PeerLabels, Counter>,
    pub peer_bytes_received: Family<PeerLabels, Counter>,
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
        let queue_depth = Family::<QueueLabels, Gauge>::default();
        registry.register(
            "queue_depth",
            "Queued stages of unfinished computations (claimable, waiting for a retry or running) by plugin, version and stage",
            queue_depth.clone(),
        );
        let lease_takeovers = Family::<TakeoverLabels, Counter>::default();
        registry.register(
            "lease_takeovers",
            "Claims of a stage whose lease another worker or process still held when it expired",
            lease_takeovers.clone(),
        );
        let retries = Family::<RetryLabels, Counter>::default();
        registry.register(
            "retries",
            "Claimed stages given back to be tried again, by cause",
            retries.clone(),
        );
        let peer_bytes_sent = Family::<PeerLabels, Counter>::default();
        registry.register(
            "peer_bytes_sent",
            "AdvanceComputation payload bytes delivered to each peer duchy",
            peer_bytes_sent.clone(),
        );
        let peer_bytes_received = Family::<PeerLabels, Counter>::default();
        registry.register(
            "peer_bytes_received",
            "AdvanceComputation payload bytes received from each peer duchy",
            peer_bytes_received.clone(),
        );
        Metrics {
            registry: Mutex::new(registry),
            stage_executions,
            stage_seconds,
            plugins_loaded,
            queue_depth,
            lease_takeovers,
            retries,
            peer_bytes_sent,
            peer_bytes_received,
        }
    }

    /// Replaces the queue-depth gauge with `depths` (plugin, version, stage name, count).
    pub fn set_queue_depth(&self, depths: &[(String, String, String, i64)]) {
        self.queue_depth.clear();
        for (plugin, version, stage, n) in depths {
            self.queue_depth
                .get_or_create(&QueueLabels {
                    plugin: plugin.clone(),
                    version: version.clone(),
                    stage: stage.clone(),
                })
                .set(*n);
        }
    }

    /// A lease taken over (`from`: `expired` or `previous_process`), `n` times.
    pub fn lease_takeover(&self, from: &str, n: u64) {
        self.lease_takeovers
            .get_or_create(&TakeoverLabels { from: from.into() })
            .inc_by(n);
    }

    pub fn retry(&self, cause: RetryCause) {
        self.retries
            .get_or_create(&RetryLabels {
                cause: cause.label().into(),
            })
            .inc();
    }

    pub fn bytes_sent(&self, peer: &str, n: u64) {
        self.peer_bytes_sent
            .get_or_create(&PeerLabels { peer: peer.into() })
            .inc_by(n);
    }

    pub fn bytes_received(&self, peer: &str, n: u64) {
        self.peer_bytes_received
            .get_or_create(&PeerLabels { peer: peer.into() })
            .inc_by(n);
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn stage_and_plugin_metrics_have_bounded_labels() {
        let m = Metrics::new();
        m.record_stage("hmss", "1.0.0", "SHUFFLE_PHASE", "ok", 0.25);
        m.set_plugins(&[("hmss".into(), "1.1.0".into(), "halo:mpc@1.0.0".into(), true)]);
        let body = m.encode();
        assert!(body.contains(r#"halo_duchy_stage_executions_total{plugin="hmss",version="1.0.0",stage="SHUFFLE_PHASE",outcome="ok"} 1"#), "{body}");
        assert!(body.contains(r#"halo_duchy_plugin_loaded{plugin="hmss",version="1.1.0",wit="halo:mpc@1.0.0",offered="true"} 1"#), "{body}");
        assert!(body.ends_with("# EOF\n"), "{body}");
    }

    #[test]
    fn queue_depth_is_replaced_not_accumulated() {
        let m = Metrics::new();
        m.set_queue_depth(&[
            ("hmss".into(), "1.0.0".into(), "SETUP_PHASE".into(), 3),
            ("hmss".into(), "1.0.0".into(), "SHUFFLE_PHASE".into(), 1),
        ]);
        m.set_queue_depth(&[("hmss".into(), "1.0.0".into(), "SHUFFLE_PHASE".into(), 2)]);
        let body = m.encode();
        assert!(
            body.contains(
                r#"halo_duchy_queue_depth{plugin="hmss",version="1.0.0",stage="SHUFFLE_PHASE"} 2"#
            ),
            "{body}"
        );
        assert!(
            !body.contains("SETUP_PHASE"),
            "a drained stage must disappear: {body}"
        );
    }

    #[test]
    fn takeovers_retries_and_peer_bytes_count() {
        let m = Metrics::new();
        m.lease_takeover("expired", 1);
        m.lease_takeover("previous_process", 2);
        m.lease_takeover("expired", 1);
        m.retry(RetryCause::Wait);
        m.retry(RetryCause::Wait);
        m.retry(RetryCause::Crashed);
        m.retry(RetryCause::Shutdown);
        m.bytes_sent("worker2", 100);
        m.bytes_sent("worker2", 28);
        m.bytes_received("aggregator", 7);
        let body = m.encode();
        for line in [
            r#"halo_duchy_lease_takeovers_total{from="expired"} 2"#,
            r#"halo_duchy_lease_takeovers_total{from="previous_process"} 2"#,
            r#"halo_duchy_retries_total{cause="wait"} 2"#,
            r#"halo_duchy_retries_total{cause="crashed"} 1"#,
            r#"halo_duchy_retries_total{cause="shutdown"} 1"#,
            r#"halo_duchy_peer_bytes_sent_total{peer="worker2"} 128"#,
            r#"halo_duchy_peer_bytes_received_total{peer="aggregator"} 7"#,
        ] {
            assert!(body.contains(line), "missing {line}: {body}");
        }
        assert!(!body.contains(r#"cause="plugin""#), "{body}");
    }
}

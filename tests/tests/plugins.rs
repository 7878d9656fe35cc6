#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Protocol plugins in a running deployment: three duchies run the test-sum protocol as a
//! real wasm component from their plugin directories; a new version dropped in mid-flight is
//! used by new computations while the running one finishes on the version it pinned.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use halo_proto::system::v1alpha::computation::State;
use halo_protocol::{ProtocolRegistry, SystemProtocol};
use halo_registry::{PluginRegistry, RegistryConfig};
use halo_testkit::WAIT_ON_AGGREGATION_INPUT;
use halo_tests::*;

fn copy(src: &str, dir: &Path) -> PathBuf {
    let src = PathBuf::from(src);
    let dest = dir.join(src.file_name().unwrap());
    std::fs::copy(&src, &dest).unwrap();
    dest
}

fn digest_of(path: &str) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(std::fs::read(path).unwrap()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hot_swap_mid_flight_keeps_pinned_versions() {
    init_logging();
    let dir = tempfile::tempdir().unwrap();
    // One process-wide engine; each duchy has its own plugin directory and registry.
    let runtime = halo_engine::Runtime::new(halo_engine::EngineConfig {
        cache_dir: Some(dir.path().join("plugin-cache")),
        ..halo_engine::EngineConfig::default()
    })
    .unwrap();
    let mut registries = std::collections::HashMap::new();
    let mut watches = Vec::new();
    for d in halo_sim::DUCHIES {
        let pdir = dir.path().join(format!("plugins-{d}"));
        std::fs::create_dir_all(&pdir).unwrap();
        copy(halo_plugin_build::TEST_SUM_V1_0, &pdir);
        let mut config = RegistryConfig::new(&pdir);
        config.debounce = Duration::from_millis(100);
        let reg = PluginRegistry::open(runtime.clone(), config).unwrap();
        watches.push(reg.watch().unwrap());
        registries.insert(d.to_string(), reg);
    }
    let regs = Arc::new(registries);
    let regs2 = regs.clone();
    let factory: halo_sim::RegistryFn =
        Arc::new(move |id: &str| regs2[id].clone() as Arc<dyn ProtocolRegistry>);
    let cluster = halo_sim::Cluster::start(halo_sim::ClusterOptions::new(
        &dir.path().join("cluster"),
        factory,
    ))
    .await
    .unwrap();

    // Computation A starts on 1.0.0 and parks waiting for data.
    let a = create(&cluster, spec(1.0)).await.unwrap();
    let a_id = a
        .measurement
        .computation
        .trim_start_matches("computations/")
        .to_string();
    let start = Instant::now();
    loop {
        let row = cluster.duchies["aggregator"]
            .core
            .store
            .get(&a_id)
            .await
            .unwrap();
        if row.is_some_and(|r| r.stage == WAIT_ON_AGGREGATION_INPUT) {
            break;
        }
        assert!(start.elapsed() < TIMEOUT);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Drop 1.1.0 into every directory, and remove 1.0.0 from worker1's: no restart.
    for d in halo_sim::DUCHIES {
        copy(halo_plugin_build::TEST_SUM_V1_1, regs[d].dir());
    }
    std::fs::remove_file(regs["worker1"].dir().join("test-sum-1.0.0.wasm")).unwrap();
    let start = Instant::now();
    for d in halo_sim::DUCHIES {
        while regs[d]
            .select(SystemProtocol::HonestMajorityShareShuffle)
            .map(|p| p.pin().version)
            .as_deref()
            != Some("1.1.0")
        {
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "{d} did not pick up 1.1.0"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let swap_seconds = start.elapsed().as_secs_f64();
    assert!(swap_seconds < 30.0);

    // Computation B is created after the swap.
    let b = create(&cluster, spec(1.0)).await.unwrap();
    let b_id = b
        .measurement
        .computation
        .trim_start_matches("computations/")
        .to_string();
    let va: Vec<Vec<u32>> = (0..3).map(|i| vector(i + 40, 3_000)).collect();
    let vb: Vec<Vec<u32>> = (0..3).map(|i| vector(i + 50, 3_000)).collect();
    fulfil_for(&cluster, &a.measurement.computation, &va)
        .await
        .unwrap();
    fulfil_for(&cluster, &b.measurement.computation, &vb)
        .await
        .unwrap();
    for (created, vectors) in [(&a, &va), (&b, &vb)] {
        let m = wait_for_result(&cluster, created).await.unwrap();
        assert_eq!(
            m.state,
            State::Succeeded as i32,
            "failure: {}",
            m.failure_message
        );
        let result: serde_json::Value = serde_json::from_slice(&m.encrypted_result).unwrap();
        assert_eq!(result["reach"].as_u64().unwrap(), truth(vectors).0);
    }
    let v10 = digest_of(halo_plugin_build::TEST_SUM_V1_0);
    let v11 = digest_of(halo_plugin_build::TEST_SUM_V1_1);
    for d in halo_sim::DUCHIES {
        let store = &cluster.duchies[d].core.store;
        let ra = store.get(&a_id).await.unwrap().unwrap();
        let rb = store.get(&b_id).await.unwrap().unwrap();
        assert_eq!(
            (ra.pin.version.as_str(), ra.pin.digest.as_str()),
            ("1.0.0", v10.as_str()),
            "{d}"
        );
        assert_eq!(
            (rb.pin.version.as_str(), rb.pin.digest.as_str()),
            ("1.1.0", v11.as_str()),
            "{d}"
        );
    }
    // Stage metrics carry the plugin version that ran.
    let text = cluster.duchies["aggregator"].core.metrics.encode();
    for v in ["1.0.0", "1.1.0"] {
        let needle = format!(
            r#"halo_duchy_stage_executions_total{{plugin="test-sum",version="{v}",stage="AGGREGATION_PHASE",outcome="ok"}} 1"#
        );
        assert!(text.contains(&needle), "{text}");
    }
    drop(watches);
    cluster.shutdown().await.unwrap();
}

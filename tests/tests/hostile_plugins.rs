#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Plugin outputs are untrusted input: three duchies load the `hostile` fixture (built from
//! plugins/fixtures/hostile, serving Liquid Legions v2) beside the honest `test-sum` plugin
//! (HMSS). Each attack runs in its own computation and must fail it cleanly — the Kingdom
//! computation FAILED with a message naming `hostile@1.0.0` and the cause — while a test-sum
//! computation on the same duchies succeeds meanwhile, and nothing is written outside the
//! cluster's data directories.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use halo_duchy::MillConfig;
use halo_duchy::blobs::is_safe_key;
use halo_proto::halo::v1 as admin;
use halo_proto::system::v1alpha::computation::State;
use halo_protocol::ProtocolRegistry;
use halo_sim::{Cluster, ClusterOptions, mc};
use halo_tests::*;

/// Output and state limit of the cluster's mills (the hostile `oversized*` modes return 2 MiB).
const LIMIT: u64 = 1 << 20;

/// Every attack of the fixture and a piece of the failure message it must cause.
const ATTACKS: &[(&str, &str)] = &[
    ("traversal", "which is not a duchy id"),
    ("traversal-shallow", "which is not a duchy id"),
    (
        "absolute",
        "\"/tmp/halo-hostile-absolute\", which is not a duchy id",
    ),
    ("backslash", "which is not a duchy id"),
    (
        "non-participant",
        "edp1, which is not a participant of this computation",
    ),
    ("self", "addressed to this duchy itself"),
    (
        "bad-description",
        "uses description 77, which no stage waits for",
    ),
    ("duplicate", "repeats a payload"),
    (
        "oversized",
        "outputs of 2097152 bytes exceed the limit of 1048576 bytes",
    ),
    (
        "oversized-state",
        "state of 2097152 bytes exceeds the limit of 1048576 bytes",
    ),
    (
        "garbage-params",
        "requisition params are not a RequisitionParams message",
    ),
    (
        "wrong-params",
        "requisition params are for protocol honest_majority_share_shuffle, the computation runs liquid_legions_v2",
    ),
    ("garbage-result", "the result's ciphertext is empty"),
    ("unknown-stage", "next stage 4242 is not in its stage table"),
    ("loop", "next stage 1 does not come after stage 1"),
    ("bad-start", "initial stage 4242 is not in its stage table"),
];

/// Names a hostile recipient would have produced as a file (relative to the blob tree or
/// absolute).
const ESCAPES: &[&str] = &[
    "/tmp/halo-hostile-escape",
    "/tmp/halo-hostile-escape.bin",
    "/tmp/halo-hostile-absolute",
    "/tmp/halo-hostile-absolute.bin",
];

fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        let p = e.path();
        out.push(p.clone());
        if e.file_type().unwrap().is_dir() {
            walk(&p, out);
        }
    }
}

async fn create_hostile(cluster: &Cluster, mode: &str) -> mc::CreatedMeasurement {
    let mut s = spec(1.0);
    s.measurement_public_key = format!("hostile-mode={mode};").into_bytes();
    let mc_id = cluster.options.measurement_consumer.clone();
    let ch = cluster
        .kingdom_channel(&halo_identity::Principal::MeasurementConsumer(
            mc_id.clone(),
        ))
        .unwrap();
    mc::create_measurement(
        ch,
        &mc_id,
        admin::Protocol::LiquidLegionsV2,
        s,
        &cluster.options.data_providers,
    )
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hostile_plugin_outputs_fail_their_own_computation_only() {
    init_logging();
    for p in ESCAPES {
        let _ = std::fs::remove_file(p);
    }
    // outer/ holds exactly the cluster's directories; its parent is the system temp dir.
    let outer = tempfile::tempdir().unwrap();
    let parent = outer.path().parent().unwrap().to_path_buf();
    let pdir = outer.path().join("plugins");
    std::fs::create_dir_all(&pdir).unwrap();
    std::fs::copy(halo_plugin_build::HOSTILE, pdir.join("hostile-1.0.0.wasm")).unwrap();
    std::fs::copy(
        halo_plugin_build::TEST_SUM_V1_1,
        pdir.join("test-sum-1.1.0.wasm"),
    )
    .unwrap();
    let runtime = halo_engine::Runtime::new(halo_engine::EngineConfig {
        cache_dir: Some(outer.path().join("cache")),
        ..halo_engine::EngineConfig::default()
    })
    .unwrap();
    let reg =
        halo_registry::PluginRegistry::open(runtime, halo_registry::RegistryConfig::new(&pdir))
            .unwrap();
    assert!(reg.refused().is_empty(), "refused: {:?}", reg.refused());
    let shared: Arc<dyn ProtocolRegistry> = reg;
    let factory: RegistryFn = Arc::new(move |_| shared.clone());
    let mut options = ClusterOptions::new(&outer.path().join("c"), factory);
    options.mill = MillConfig {
        poll: Duration::from_millis(100),
        max_plugin_output_bytes: LIMIT,
        max_plugin_state_bytes: LIMIT,
        ..MillConfig::default()
    };
    let cluster = Cluster::start(options).await.unwrap();

    // The honest computation is created first and completes while the attacks run.
    let honest = create(&cluster, spec(1.0)).await.unwrap();
    let mut hostile = Vec::new();
    for (mode, cause) in ATTACKS {
        hostile.push((*mode, *cause, create_hostile(&cluster, mode).await));
    }
    let vectors: Vec<Vec<u32>> = (0..3).map(|i| vector(i + 70, 2_000)).collect();
    fulfil_for(&cluster, &honest.measurement.computation, &vectors)
        .await
        .unwrap();
    let m = wait_for_result(&cluster, &honest).await.unwrap();
    assert_eq!(
        m.state,
        State::Succeeded as i32,
        "the honest computation failed: {}",
        m.failure_message
    );
    let result: serde_json::Value = serde_json::from_slice(&m.encrypted_result).unwrap();
    assert_eq!(result["reach"].as_u64().unwrap(), truth(&vectors).0);

    for (mode, cause, created) in &hostile {
        let m = wait_for_result(&cluster, created).await.unwrap();
        assert_eq!(
            m.state,
            State::Failed as i32,
            "{mode}: not failed: {}",
            m.failure_message
        );
        assert!(
            m.failure_message.contains("hostile@1.0.0"),
            "{mode}: the message does not name the plugin: {}",
            m.failure_message
        );
        assert!(
            m.failure_message.contains(cause),
            "{mode}: expected {cause:?} in {:?}",
            m.failure_message
        );
        // Every duchy that knows the computation ends it (itself or on the Kingdom's word);
        // a duchy may never see one that another duchy failed first.
        let gid = created
            .measurement
            .computation
            .trim_start_matches("computations/");
        for d in halo_sim::DUCHIES {
            if cluster.duchies[d]
                .core
                .store
                .get(gid)
                .await
                .unwrap()
                .is_some()
            {
                let t = wait_local_terminal(&cluster, d, gid).await.unwrap();
                assert_eq!(t, "FAILED", "{mode} at {d}");
            }
            // Refused outputs are never written, not even inside the blob tree.
            let outputs = cluster.duchies[d]
                .core
                .store
                .blob_root()
                .join("outputs")
                .join(gid);
            assert!(!outputs.exists(), "{mode} at {d}: {}", outputs.display());
        }
    }

    // The refusals are visible in the stage metrics.
    let needle =
        r#"plugin="hostile",version="1.0.0",stage="INITIALIZED",outcome="invalid_outcome""#;
    assert!(
        halo_sim::DUCHIES.iter().any(|d| cluster.duchies[*d]
            .core
            .metrics
            .encode()
            .contains(needle)),
        "no duchy counted an invalid outcome"
    );

    // Nothing outside the data directories: outer/ holds only what the test and the cluster
    // made, every blob key is a safe relative path, and no escape target exists anywhere.
    let mut files = Vec::new();
    walk(outer.path(), &mut files);
    let data_dirs: Vec<PathBuf> = ["plugins", "cache", "c/kingdom", "c/pki"]
        .iter()
        .map(|d| outer.path().join(d))
        .chain(
            halo_sim::DUCHIES
                .iter()
                .map(|d| outer.path().join("c").join(format!("duchy-{d}"))),
        )
        .collect();
    for f in &files {
        let inside = data_dirs.iter().any(|d| f.starts_with(d))
            || data_dirs.iter().any(|d| d.starts_with(f));
        assert!(inside, "{} is outside every data directory", f.display());
        let name = f.file_name().unwrap().to_string_lossy();
        assert!(!name.contains("halo-hostile"), "{}", f.display());
        assert!(!name.contains(".."), "{}", f.display());
    }
    for d in halo_sim::DUCHIES {
        let root = cluster.duchies[d].core.store.blob_root().to_path_buf();
        let mut blobs = Vec::new();
        walk(&root, &mut blobs);
        for b in blobs.iter().filter(|b| b.is_file()) {
            let key = b
                .strip_prefix(&root)
                .unwrap()
                .to_string_lossy()
                .into_owned();
            assert!(is_safe_key(&key), "{d}: blob {key:?}");
        }
    }
    for e in std::fs::read_dir(&parent).unwrap() {
        let name = e.unwrap().file_name().to_string_lossy().into_owned();
        assert!(
            !name.contains("halo-hostile"),
            "{name} appeared beside the test's directory"
        );
    }
    for p in ESCAPES {
        assert!(!Path::new(p).exists(), "{p} was written");
    }
    cluster.shutdown().await.unwrap();
}

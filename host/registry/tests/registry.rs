#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The registry over a real plugin directory with real components built from plugins/.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use halo_engine::{EngineConfig, Runtime};
use halo_protocol::{ProtocolRegistry, SystemProtocol};
use halo_registry::{PluginRegistry, RegistryConfig};
use halo_signing::{SignaturePolicy, SigningKey, TrustedKeys};

const HMSS: SystemProtocol = SystemProtocol::HonestMajorityShareShuffle;

fn copy(src: &str, dir: &Path) -> PathBuf {
    let src = PathBuf::from(src);
    let dest = dir.join(src.file_name().unwrap());
    std::fs::copy(&src, &dest).unwrap();
    dest
}

fn runtime(cache: &Path) -> Runtime {
    Runtime::new(EngineConfig {
        cache_dir: Some(cache.to_path_buf()),
        ..EngineConfig::default()
    })
    .unwrap()
}

fn selected_version(reg: &PluginRegistry) -> Option<String> {
    reg.select(HMSS).map(|p| p.pin().version)
}

#[test]
fn newest_version_is_offered_and_removed_versions_stay_pinnable() {
    let dir = tempfile::tempdir().unwrap();
    let cache = tempfile::tempdir().unwrap();
    let v1 = copy(halo_plugin_build::TEST_SUM_V1_0, dir.path());
    let reg = PluginRegistry::open(runtime(cache.path()), RegistryConfig::new(dir.path())).unwrap();
    assert_eq!(selected_version(&reg).as_deref(), Some("1.0.0"));
    let pin_v1 = reg.select(HMSS).unwrap().pin();

    copy(halo_plugin_build::TEST_SUM_V1_1, dir.path());
    let report = reg.rescan();
    assert_eq!(report.loaded.len(), 1, "{report:?}");
    assert_eq!(selected_version(&reg).as_deref(), Some("1.1.0"));

    std::fs::remove_file(&v1).unwrap();
    let report = reg.rescan();
    assert_eq!(report.withdrawn.len(), 1, "{report:?}");
    // Not offered any more, still served to computations that pinned it.
    assert!(
        reg.list()
            .iter()
            .any(|p| p.version == "1.0.0" && !p.offered)
    );
    let p = reg.pinned(&pin_v1).expect("removed version stays pinnable");
    assert_eq!(p.pin(), pin_v1);

    // A fresh process (new registry, same AOT cache) can still resume the pinned version.
    let reg2 =
        PluginRegistry::open(runtime(cache.path()), RegistryConfig::new(dir.path())).unwrap();
    assert_eq!(reg2.pinned(&pin_v1).map(|p| p.pin()), Some(pin_v1));
}

#[test]
fn broken_or_unsupported_components_are_reported_and_never_replace_a_working_one() {
    let dir = tempfile::tempdir().unwrap();
    let cache = tempfile::tempdir().unwrap();
    let v1 = copy(halo_plugin_build::TEST_SUM_V1_0, dir.path());
    copy(halo_plugin_build::WRONG_MAJOR, dir.path());
    std::fs::write(dir.path().join("junk-1.0.0.wasm"), b"not a component").unwrap();
    let reg = PluginRegistry::open(runtime(cache.path()), RegistryConfig::new(dir.path())).unwrap();
    let refused = reg.refused();
    assert_eq!(refused.len(), 2, "{refused:?}");
    let wrong = refused
        .iter()
        .find(|(p, _)| p.to_string_lossy().contains("wrong-major"))
        .unwrap();
    assert!(wrong.1.contains("halo:mpc@2.0.0"), "{}", wrong.1);
    assert!(
        wrong.1.contains("halo:mpc@1.0.0"),
        "names the supported versions: {}",
        wrong.1
    );

    // Overwrite the working file with garbage: still offered, refusal reported.
    std::thread::sleep(Duration::from_millis(20));
    std::fs::write(&v1, b"garbage").unwrap();
    let report = reg.rescan();
    assert_eq!(report.refused.len(), 1, "{report:?}");
    assert_eq!(selected_version(&reg).as_deref(), Some("1.0.0"));

    // A file name that lies about the version is refused.
    std::fs::copy(
        halo_plugin_build::TEST_SUM_V1_1,
        dir.path().join("test-sum-9.9.9.wasm"),
    )
    .unwrap();
    let report = reg.rescan();
    assert!(
        report
            .refused
            .iter()
            .any(|(_, why)| why.contains("file name")),
        "{report:?}"
    );
    assert_eq!(selected_version(&reg).as_deref(), Some("1.0.0"));
}

#[test]
fn signatures_are_enforced_when_required() {
    let dir = tempfile::tempdir().unwrap();
    let cache = tempfile::tempdir().unwrap();
    let keys = tempfile::tempdir().unwrap();
    let key = SigningKey::generate();
    key.write(&keys.path().join("dev.key"), &keys.path().join("dev.pem"))
        .unwrap();
    let trusted = TrustedKeys::load_dir(keys.path()).unwrap();

    // Signed v1.0: loads. Unsigned v1.1: refused. Tampered copy: refused.
    let v1 = copy(halo_plugin_build::TEST_SUM_V1_0, dir.path());
    halo_signing::sign(&key, &std::fs::read(&v1).unwrap())
        .write(&halo_signing::signature_path(&v1))
        .unwrap();
    copy(halo_plugin_build::TEST_SUM_V1_1, dir.path());
    let mut config = RegistryConfig::new(dir.path());
    config.policy = SignaturePolicy::Required;
    config.trusted = trusted;
    let reg = PluginRegistry::open(runtime(cache.path()), config).unwrap();
    assert_eq!(selected_version(&reg).as_deref(), Some("1.0.0"));
    let refused = reg.refused();
    assert_eq!(refused.len(), 1, "{refused:?}");
    assert!(refused[0].1.contains("not signed"), "{}", refused[0].1);

    let mut bytes = std::fs::read(&v1).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0x01;
    std::thread::sleep(Duration::from_millis(20));
    std::fs::write(&v1, &bytes).unwrap();
    let report = reg.rescan();
    assert!(
        report
            .refused
            .iter()
            .any(|(_, why)| why.contains("tampered")),
        "{report:?}"
    );
}

#[test]
fn the_watcher_picks_up_a_new_version_within_seconds() {
    let dir = tempfile::tempdir().unwrap();
    let cache = tempfile::tempdir().unwrap();
    copy(halo_plugin_build::TEST_SUM_V1_0, dir.path());
    let mut config = RegistryConfig::new(dir.path());
    config.debounce = Duration::from_millis(100);
    let reg = PluginRegistry::open(runtime(cache.path()), config).unwrap();
    let _watch = reg.watch().unwrap();
    copy(halo_plugin_build::TEST_SUM_V1_1, dir.path());
    let start = Instant::now();
    while selected_version(&reg).as_deref() != Some("1.1.0") {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "new version not picked up"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Waits (watcher, no explicit rescan) until `cond` holds; fails after a generous minute.
fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "the watcher never saw: {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn sign_file(key: &SigningKey, component: &Path) {
    halo_signing::sign(key, &std::fs::read(component).unwrap())
        .write(&halo_signing::signature_path(component))
        .unwrap();
}

fn trusted_key() -> (tempfile::TempDir, SigningKey, TrustedKeys) {
    let keys = tempfile::tempdir().unwrap();
    let key = SigningKey::generate();
    key.write(&keys.path().join("dev.key"), &keys.path().join("dev.pem"))
        .unwrap();
    let trusted = TrustedKeys::load_dir(keys.path()).unwrap();
    (keys, key, trusted)
}

#[test]
fn the_watcher_admits_a_plugin_when_its_signature_arrives_and_withdraws_it_when_removed() {
    let dir = tempfile::tempdir().unwrap();
    let cache = tempfile::tempdir().unwrap();
    let (_keys, key, trusted) = trusted_key();
    let v1 = copy(halo_plugin_build::TEST_SUM_V1_0, dir.path());
    sign_file(&key, &v1);
    let v11 = copy(halo_plugin_build::TEST_SUM_V1_1, dir.path());
    let mut config = RegistryConfig::new(dir.path());
    config.policy = SignaturePolicy::Required;
    config.trusted = trusted;
    config.debounce = Duration::from_millis(100);
    // Only native events: the periodic rescan must not be what notices the signatures.
    config.poll_interval = Duration::from_secs(3600);
    let reg = PluginRegistry::open(runtime(cache.path()), config).unwrap();
    let _watch = reg.watch().unwrap();
    assert_eq!(selected_version(&reg).as_deref(), Some("1.0.0"));
    assert!(reg.refused()[0].1.contains("not signed"));

    // The signature arrives: the refused version is admitted and is the newest.
    sign_file(&key, &v11);
    wait_for("v1.1's signature arriving", || {
        selected_version(&reg).as_deref() == Some("1.1.0")
    });
    assert!(reg.refused().is_empty(), "{:?}", reg.refused());
    let pin_v11 = reg.select(HMSS).unwrap().pin();

    // The signature is removed: withdrawn from new computations, refused as unsigned, but a
    // computation that pinned it keeps a usable pin.
    std::fs::remove_file(halo_signing::signature_path(&v11)).unwrap();
    wait_for("v1.1's signature removed", || {
        selected_version(&reg).as_deref() == Some("1.0.0")
    });
    let refused = reg.refused();
    assert_eq!(refused.len(), 1, "{refused:?}");
    assert_eq!(refused[0].0, v11);
    assert!(refused[0].1.contains("not signed"), "{}", refused[0].1);
    assert!(
        reg.list()
            .iter()
            .any(|p| p.version == "1.1.0" && !p.offered)
    );
    let pinned = reg.pinned(&pin_v11).expect("a pinned version stays usable");
    assert_eq!(pinned.pin(), pin_v11);
    assert!(!pinned.stages().is_empty());

    // v1.0's signature replaced by one from a key nobody trusts: nothing is offered.
    let stranger = SigningKey::generate();
    sign_file(&stranger, &v1);
    wait_for("v1.0's signature replaced by an untrusted one", || {
        reg.select(HMSS).is_none()
    });
    // And a good signature again brings it back.
    sign_file(&key, &v1);
    wait_for("v1.0's good signature restored", || {
        selected_version(&reg).as_deref() == Some("1.0.0")
    });
}

#[test]
fn a_signature_rewritten_within_the_same_instant_is_still_noticed() {
    let dir = tempfile::tempdir().unwrap();
    let cache = tempfile::tempdir().unwrap();
    let (_keys, key, trusted) = trusted_key();
    let v1 = copy(halo_plugin_build::TEST_SUM_V1_0, dir.path());
    let sig = halo_signing::signature_path(&v1);
    // A malformed signature first: refused.
    std::fs::write(&sig, b"not a signature").unwrap();
    let mut config = RegistryConfig::new(dir.path());
    config.policy = SignaturePolicy::Required;
    config.trusted = trusted;
    let reg = PluginRegistry::open(runtime(cache.path()), config).unwrap();
    assert_eq!(selected_version(&reg), None);
    assert!(
        reg.refused()[0].1.contains("malformed"),
        "{:?}",
        reg.refused()
    );
    // Rewritten at once (same size class, very likely the same mtime tick) with a good one,
    // then the mtime forced back to the old value: the contents decide, not the timestamp.
    let before = std::fs::metadata(&sig).unwrap().modified().unwrap();
    sign_file(&key, &v1);
    std::fs::File::options()
        .write(true)
        .open(&sig)
        .unwrap()
        .set_modified(before)
        .unwrap();
    let report = reg.rescan();
    assert_eq!(report.loaded.len(), 1, "{report:?}");
    assert_eq!(selected_version(&reg).as_deref(), Some("1.0.0"));
}

#[test]
fn with_optional_signatures_removing_one_keeps_the_plugin_but_a_wrong_one_withdraws_it() {
    let dir = tempfile::tempdir().unwrap();
    let cache = tempfile::tempdir().unwrap();
    let (_keys, key, trusted) = trusted_key();
    let v1 = copy(halo_plugin_build::TEST_SUM_V1_0, dir.path());
    sign_file(&key, &v1);
    let mut config = RegistryConfig::new(dir.path());
    config.trusted = trusted;
    let reg = PluginRegistry::open(runtime(cache.path()), config).unwrap();
    assert_eq!(selected_version(&reg).as_deref(), Some("1.0.0"));
    let pin = reg.select(HMSS).unwrap().pin();

    std::fs::remove_file(halo_signing::signature_path(&v1)).unwrap();
    let report = reg.rescan();
    assert!(report.withdrawn.is_empty(), "{report:?}");
    assert_eq!(selected_version(&reg).as_deref(), Some("1.0.0"));

    // A signature over other bytes is tampering evidence, refused under any policy.
    halo_signing::sign(&key, b"other bytes")
        .write(&halo_signing::signature_path(&v1))
        .unwrap();
    let report = reg.rescan();
    assert_eq!(report.withdrawn.len(), 1, "{report:?}");
    assert_eq!(selected_version(&reg), None);
    assert_eq!(reg.pinned(&pin).map(|p| p.pin()), Some(pin));
}

/// Opens the registry from a task on a runtime with one worker, while the one component's
/// bytes arrive through a FIFO that another task on that worker feeds. If loading (reading,
/// compiling, `describe`) ran on the worker, the feeder could never run and the open would
/// never finish.
fn open_while_the_only_worker_feeds_the_component(use_async: bool) {
    let dir = tempfile::tempdir().unwrap();
    let cache = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("test-sum-1.0.0.wasm");
    let status = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap();
    assert!(status.success());
    let bytes = std::fs::read(halo_plugin_build::TEST_SUM_V1_0).unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let runtime = runtime(cache.path());
    let config = RegistryConfig::new(dir.path());
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    rt.spawn(async move {
        let reg = if use_async {
            PluginRegistry::open_async(runtime, config).await
        } else {
            PluginRegistry::open(runtime, config)
        };
        let _ = done_tx.send(reg);
    });
    let feeder_fifo = fifo.clone();
    let feeder_bytes = bytes.clone();
    let feeder = rt.spawn(async move {
        use tokio::io::AsyncWriteExt as _;
        // Opening a FIFO for writing fails until its reader has opened it.
        let mut tx = loop {
            match tokio::net::unix::pipe::OpenOptions::new().open_sender(&feeder_fifo) {
                Ok(tx) => break tx,
                Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
            }
        };
        tx.write_all(&feeder_bytes).await.unwrap();
    });
    // Waited for on this (non-runtime) thread: a held-up worker cannot drive tokio's timers.
    let Ok(reg) = done_rx.recv_timeout(Duration::from_secs(120)) else {
        // Unblock the stuck worker (so the runtime can shut down), then fail.
        let _ = std::fs::write(&fifo, &bytes);
        panic!("opening the registry held up the only async worker");
    };
    let reg = reg.unwrap();
    rt.block_on(feeder).unwrap();
    assert_eq!(selected_version(&reg).as_deref(), Some("1.0.0"));
}

#[test]
fn open_async_loads_components_off_the_async_workers() {
    open_while_the_only_worker_feeds_the_component(true);
}

#[test]
fn open_called_from_async_code_does_not_hold_up_the_worker() {
    open_while_the_only_worker_feeds_the_component(false);
}

#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The registry over a real plugin directory with real components built from plugins/.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use halo_duchy::protocol::{ProtocolRegistry, SystemProtocol};
use halo_engine::{EngineConfig, Runtime};
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

//! `halo demo` from an installed layout: the binary copied to `<root>/bin/halo` and the
//! plugins to `<root>/lib/halo/plugins` (as the container image installs them) finds its
//! plugin there, not through the path of the source tree it was built in, and reads its stage
//! timings from the duchies' recorded stage runs.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::Command;

fn install(root: &Path) -> std::path::PathBuf {
    let bin = root.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let halo = bin.join("halo");
    std::fs::copy(env!("CARGO_BIN_EXE_halo"), &halo).unwrap();
    halo
}

#[test]
fn an_installed_halo_demo_uses_the_plugins_installed_beside_it() {
    let root = tempfile::tempdir().unwrap();
    let halo = install(root.path());
    let plugins = root.path().join("lib/halo/plugins");
    std::fs::create_dir_all(&plugins).unwrap();
    // The image installs several protocols side by side; test-sum must still be the one run.
    for src in [halo_plugin_build::TEST_SUM_V1_0, halo_plugin_build::HMSS] {
        let src = Path::new(src);
        std::fs::copy(src, plugins.join(src.file_name().unwrap())).unwrap();
    }
    let out = root.path().join("out");
    let run = Command::new(&halo)
        .args(["demo", "--protocol", "test-sum", "--providers", "2"])
        .args([
            "--registers",
            "64",
            "--max-frequency",
            "2",
            "--json",
            "--out",
        ])
        .arg(&out)
        .env_remove("HALO_PLUGINS")
        .current_dir(root.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "halo demo failed: {stderr}");
    let json: serde_json::Value = serde_json::from_slice(&run.stdout).unwrap();
    let plugin = json["plugin"].as_str().unwrap();
    assert_eq!(
        Path::new(plugin),
        root.path()
            .join("bin/../lib/halo/plugins/test-sum-1.0.0.wasm")
            .as_path(),
        "{json}"
    );
    // Copied into the demo's own plugin directory, alone.
    let names: Vec<String> = std::fs::read_dir(out.join("plugins"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(names, vec!["test-sum-1.0.0.wasm".to_string()]);
    assert_eq!(json["reach"], json["expected_reach"], "{json}");
    // Stage timings came from the stores' stage runs: every duchy ran at least one named
    // stage, each with a non-negative duration.
    let stages = json["stages"].as_object().unwrap();
    assert!(!stages.is_empty(), "{json}");
    for (duchy, per) in stages {
        let per = per.as_object().unwrap();
        assert!(!per.is_empty(), "{duchy} has no stage timings: {json}");
        for (stage, secs) in per {
            assert!(!stage.is_empty());
            assert!(secs.as_f64().unwrap() >= 0.0, "{duchy} {stage}: {secs}");
        }
    }
}

#[test]
fn an_explicit_plugin_directory_without_the_protocol_is_an_error_naming_it() {
    let root = tempfile::tempdir().unwrap();
    let halo = install(root.path());
    let empty = root.path().join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    let run = Command::new(&halo)
        .args(["demo", "--protocol", "test-sum", "--json"])
        .env("HALO_PLUGINS", &empty)
        .output()
        .unwrap();
    assert!(!run.status.success());
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(stderr.contains(&empty.display().to_string()), "{stderr}");
}

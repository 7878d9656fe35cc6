#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The crate boundaries of issue 10, read from the manifests: the plugin engine and registry
//! know the protocol contract (`halo-protocol`), never the duchy; the contract crate depends
//! on nothing of the host but the generated API types; no host crate links protocol math.

use std::path::Path;

fn deps(krate: &str) -> Vec<String> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(krate)
        .join("Cargo.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    let manifest: toml::Table = toml::from_str(&text).unwrap();
    let mut out = Vec::new();
    for section in ["dependencies", "dev-dependencies", "build-dependencies"] {
        if let Some(t) = manifest.get(section).and_then(|v| v.as_table()) {
            out.extend(t.keys().cloned());
        }
    }
    out
}

#[test]
fn engine_and_registry_do_not_depend_on_the_duchy() {
    for krate in [
        "host/engine",
        "host/registry",
        "host/testkit",
        "host/protocol",
    ] {
        let d = deps(krate);
        assert!(
            d.iter().any(|n| n == "halo-protocol") || krate == "host/protocol",
            "{krate}"
        );
        assert!(
            !d.iter().any(|n| n == "halo-duchy"),
            "{krate} depends on halo-duchy: {d:?}"
        );
    }
}

#[test]
fn the_contract_crate_stands_alone() {
    let host: Vec<String> = deps("host/protocol")
        .into_iter()
        .filter(|n| n.starts_with("halo-"))
        .collect();
    assert_eq!(
        host,
        ["halo-proto"],
        "halo-protocol may only use the generated API types"
    );
}

#[test]
fn no_host_crate_links_protocol_math() {
    for krate in [
        "host/duchy",
        "host/engine",
        "host/registry",
        "host/kingdom",
        "host/protocol",
        "host/ops",
        "host/cli",
    ] {
        let d = deps(krate);
        assert!(
            !d.iter()
                .any(|n| n.starts_with("hmss") || n.starts_with("llv2")),
            "{krate}: {d:?}"
        );
    }
}

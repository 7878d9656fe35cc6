//! Checks the built components: each is a valid component whose world imports only the
//! `halo:mpc` interfaces of its own package version and exports its `protocol`.

use std::collections::BTreeSet;
use std::path::Path;

use halo_plugin_build::{COMPONENTS, Component, PLUGIN_DIR};
use wit_component::DecodedWasm;

/// (imports, exports) of the component's world, as `ns:pkg/iface@version` names.
fn world_of(c: &Component) -> (BTreeSet<String>, BTreeSet<String>) {
    let bytes = std::fs::read(c.path).unwrap_or_else(|e| {
        panic!(
            "{} ({}): {e}; build it with `cargo build -p halo-plugin-build`",
            c.name, c.path
        )
    });
    let decoded =
        wit_component::decode(&bytes).unwrap_or_else(|e| panic!("decoding {}: {e:#}", c.path));
    let DecodedWasm::Component(resolve, world) = decoded else {
        panic!("{} is a WIT package, not a component", c.path);
    };
    let world = &resolve.worlds[world];
    let names = |items: Vec<_>| -> BTreeSet<String> {
        items
            .into_iter()
            .map(|k| resolve.name_world_key(k))
            .collect()
    };
    (
        names(world.imports.keys().collect()),
        names(world.exports.keys().collect()),
    )
}

#[test]
fn every_component_exists_under_plugin_dir() {
    assert_eq!(COMPONENTS.len(), 13);
    for c in COMPONENTS {
        let path = Path::new(c.path);
        assert!(path.is_absolute(), "{}", c.path);
        assert_eq!(path.parent(), Some(Path::new(PLUGIN_DIR)));
        assert_eq!(
            path.file_name().unwrap().to_str().unwrap(),
            format!("{}-{}.wasm", c.id, c.version)
        );
        assert!(path.is_file(), "{} is missing", c.path);
    }
    let consts = [
        halo_plugin_build::HMSS,
        halo_plugin_build::LLV2,
        halo_plugin_build::RO_LLV2,
        halo_plugin_build::TEST_SUM_V1_0,
        halo_plugin_build::TEST_SUM_V1_1,
        halo_plugin_build::RUNAWAY,
        halo_plugin_build::HOG,
        halo_plugin_build::PANICKER,
        halo_plugin_build::ECHO,
        halo_plugin_build::HOSTILE,
        halo_plugin_build::EC_BENCH,
        halo_plugin_build::EC_BENCH_V1_2,
        halo_plugin_build::WRONG_MAJOR,
    ];
    assert_eq!(
        consts.to_vec(),
        COMPONENTS.iter().map(|c| c.path).collect::<Vec<_>>()
    );
}

/// Every 1.x component imports only interfaces of its own WIT minor (1.0 has no `identity`)
/// and exports that minor's `protocol`.
#[test]
fn v1_components_import_only_their_halo_mpc_minor() {
    for (wit, interfaces) in [
        ("1.0.0", &["log", "random", "crypto", "types"][..]),
        (
            "1.1.0",
            &["log", "random", "crypto", "identity", "types"][..],
        ),
        (
            "1.2.0",
            &["log", "random", "crypto", "identity", "types"][..],
        ),
        (
            "1.3.0",
            &["log", "random", "crypto", "identity", "types"][..],
        ),
    ] {
        let allowed: BTreeSet<String> = interfaces
            .iter()
            .map(|i| format!("halo:mpc/{i}@{wit}"))
            .collect();
        let built: Vec<_> = COMPONENTS
            .iter()
            .filter(|c| c.wit == format!("halo:mpc@{wit}"))
            .collect();
        assert!(!built.is_empty(), "no component targets {wit}");
        for c in built {
            let (imports, exports) = world_of(c);
            eprintln!("{}: imports {imports:?}, exports {exports:?}", c.name);
            assert!(
                imports.is_subset(&allowed),
                "{} imports {imports:?}, only {allowed:?} allowed",
                c.name
            );
            assert!(
                imports.contains(&format!("halo:mpc/log@{wit}")),
                "{}: {imports:?}",
                c.name
            );
            assert_eq!(
                exports,
                BTreeSet::from([format!("halo:mpc/protocol@{wit}")]),
                "{}",
                c.name
            );
        }
    }
}

#[test]
fn wrong_major_targets_2_0_0() {
    let c = COMPONENTS.iter().find(|c| c.name == "WRONG_MAJOR").unwrap();
    let (imports, exports) = world_of(c);
    assert!(
        imports
            .iter()
            .all(|i| i.starts_with("halo:mpc/") && i.ends_with("@2.0.0")),
        "{imports:?}"
    );
    assert_eq!(
        exports,
        BTreeSet::from(["halo:mpc/protocol@2.0.0".to_string()])
    );
}

#[test]
fn test_sum_variants_differ() {
    let v10 = std::fs::read(halo_plugin_build::TEST_SUM_V1_0).unwrap();
    let v11 = std::fs::read(halo_plugin_build::TEST_SUM_V1_1).unwrap();
    assert_ne!(v10, v11);
    // The version string is in the data section of each.
    let has = |hay: &[u8], needle: &[u8]| hay.windows(needle.len()).any(|w| w == needle);
    assert!(has(&v11, b"1.1.0"));
    assert!(has(&v10, b"1.0.0"));
}

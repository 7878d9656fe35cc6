//! Property tests: `.sig` files and plugin file names round-trip, and signatures verify exactly
//! the bytes they were made over. The same decoders are fuzzed in tests/fuzz (`sig_file`,
//! `plugin_file_name`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use halo_signing::{
    Signature, SignatureStatus, SigningKey, TrustedKeys, check, component_file_name,
    parse_component_file_name, sign,
};
use proptest::prelude::*;

/// Protocol ids as plugins declare them: dash-separated words that start with a letter.
fn protocol_id() -> impl Strategy<Value = String> {
    "[a-z][a-z0-9_]{0,8}(-[a-z][a-z0-9_]{0,8}){0,3}"
}

/// Dot-separated semver identifiers (pre-release or build), `-` and digits included.
fn identifiers() -> impl Strategy<Value = String> {
    "[0-9A-Za-z-]{1,6}(\\.[0-9A-Za-z-]{1,6}){0,3}"
}

fn version() -> impl Strategy<Value = semver::Version> {
    (
        any::<u64>(),
        any::<u64>(),
        any::<u64>(),
        proptest::option::of(identifiers()),
        proptest::option::of(identifiers()),
    )
        .prop_map(|(major, minor, patch, pre, build)| {
            let mut v = semver::Version::new(major, minor, patch);
            // Identifiers semver refuses (e.g. a numeric one with a leading zero) are dropped.
            if let Some(pre) = pre.and_then(|p| semver::Prerelease::new(&p).ok()) {
                v.pre = pre;
            }
            if let Some(build) = build.and_then(|b| semver::BuildMetadata::new(&b).ok()) {
                v.build = build;
            }
            v
        })
}

/// RFC 3339 timestamps as `sign` writes them (whole seconds, UTC) and with offsets and
/// fractions as other tools may write them.
fn rfc3339() -> impl Strategy<Value = String> {
    (
        1970u32..=9999,
        1u32..=12,
        1u32..=28,
        0u32..24,
        0u32..60,
        0u32..60,
        proptest::option::of(0u32..1_000_000_000),
        prop_oneof![Just("Z".to_owned()), "[+-](0[0-9]|1[0-3]):[0-5][0-9]"],
    )
        .prop_map(|(y, mo, d, h, mi, s, frac, off)| {
            let frac = frac.map(|f| format!(".{f:09}")).unwrap_or_default();
            format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}{frac}{off}")
        })
}

proptest! {
    #[test]
    fn plugin_file_name_round_trips(protocol in protocol_id(), version in version()) {
        let name = component_file_name(&protocol, &version);
        prop_assert_eq!(parse_component_file_name(&name), Some((protocol, version)));
    }

    /// Whatever parses re-formats to the same file name (nothing is normalised away).
    #[test]
    fn parsed_plugin_file_name_reformats_to_itself(name in "[a-z0-9.+-]{0,24}(\\.wasm)?") {
        if let Some((protocol, version)) = parse_component_file_name(&name) {
            prop_assert!(!protocol.is_empty());
            prop_assert_eq!(component_file_name(&protocol, &version), name);
        }
    }

    /// Any field values, however odd (quotes, newlines, control characters, unicode), survive
    /// the TOML of a `.sig` file.
    #[test]
    fn signature_file_round_trips(
        algorithm in any::<String>(),
        key_id in any::<String>(),
        digest in any::<String>(),
        signature in any::<String>(),
        signed_at in proptest::option::of(rfc3339()),
    ) {
        let sig = Signature { algorithm, key_id, digest, signature, signed_at };
        let text = sig.to_toml().unwrap();
        prop_assert_eq!(Signature::from_toml(&text).unwrap(), sig);
    }

    /// A signature verifies for exactly the component it was made over: its `.sig` text parses
    /// back to a valid signature, and changing any byte of the component invalidates it.
    #[test]
    fn signature_covers_every_byte(
        component in proptest::collection::vec(any::<u8>(), 0..512),
        flip in any::<prop::sample::Index>(),
        mask in 1u8..,
    ) {
        let key = SigningKey::generate();
        let trusted = TrustedKeys::new(vec![key.public()]);
        let sig = Signature::from_toml(&sign(&key, &component).to_toml().unwrap()).unwrap();
        prop_assert_eq!(
            check(&component, Some(&sig), &trusted),
            SignatureStatus::Valid { key_id: key.public().key_id() }
        );
        let mut tampered = component.clone();
        if tampered.is_empty() {
            tampered.push(mask);
        } else {
            let i = flip.index(tampered.len());
            tampered[i] ^= mask;
        }
        let tampered_status = check(&tampered, Some(&sig), &trusted);
        prop_assert!(
            matches!(tampered_status, SignatureStatus::Invalid { .. }),
            "{:?}",
            tampered_status
        );
    }
}

#[test]
fn file_names_with_dashes_in_the_version() {
    // A pre-release or build part may contain `-<digit>`: the version starts at the first `-`
    // that leaves a valid semver version.
    for (name, protocol, version) in [
        ("sum-1.0.0-0.3.7.wasm", "sum", "1.0.0-0.3.7"),
        ("sum-1.0.0+build-5.wasm", "sum", "1.0.0+build-5"),
        ("ro-llv2-2.0.0-rc.1.wasm", "ro-llv2", "2.0.0-rc.1"),
        ("a-1-2.0.0.wasm", "a-1", "2.0.0"),
    ] {
        assert_eq!(
            parse_component_file_name(name),
            Some((
                protocol.to_owned(),
                semver::Version::parse(version).unwrap()
            )),
            "{name}"
        );
    }
    for bad in [
        "sum.wasm",
        "sum-x.wasm",
        "sum-1.0.wasm",
        "-1.0.0.wasm",
        "sum-1.0.0.wasm.sig",
        "sum-1.0.0wasm",
    ] {
        assert_eq!(parse_component_file_name(bad), None, "{bad}");
    }
}

//! The LLv2 ring order (`llv2_core::ring`, spec mpc-crypto §2.2 and errata §10 E1) on
//! arbitrary key bytes, duchy ids and computation ids.
//!
//! Invariants: `java_utf8_lossy` never panics, returns valid UTF-8 input unchanged, equals
//! `String::from_utf8_lossy` on input without an `ED [A0-BF]` prefix (in particular without
//! any 0xED byte), and in general equals an independent model: Rust's lossy decoding of the
//! stretches between encoded surrogates, each encoded surrogate (`ED [A0-BF] [80-BF]?`) being
//! one U+FFFD. `ring_order` is a permutation of its input, deterministic, independent of the
//! input order and sorted by the signed ordering key; `compare_signed` agrees with the
//! numeric order of `to_signed_decimal`.
#![no_main]

use std::cmp::Ordering;

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use llv2_core::ring::{
    compare_signed, java_utf8_lossy, ordering_key, ring_order, to_signed_decimal,
};

#[derive(Arbitrary, Debug)]
struct Input<'a> {
    bytes: &'a [u8],
    participants: Vec<(String, &'a [u8])>,
    computation: String,
    digests: ([u8; 20], [u8; 20]),
}

fn is_surrogate_prefix(bytes: &[u8], i: usize) -> bool {
    bytes.get(i) == Some(&0xED) && matches!(bytes.get(i + 1), Some(0xA0..=0xBF))
}

/// The errata E1 decoding, built from Rust's: stretches between encoded surrogates decode as
/// `from_utf8_lossy` (0xED is never a continuation byte, so a stretch decodes the same alone
/// as in context), every `ED [A0-BF]` (with its continuation byte, if any) is one U+FFFD.
fn model(bytes: &[u8]) -> String {
    let mut out = String::new();
    let (mut start, mut i) = (0, 0);
    while i < bytes.len() {
        if is_surrogate_prefix(bytes, i) {
            out.push_str(&String::from_utf8_lossy(&bytes[start..i]));
            out.push('\u{FFFD}');
            i += if matches!(bytes.get(i + 2), Some(0x80..=0xBF)) {
                3
            } else {
                2
            };
            start = i;
        } else {
            i += 1;
        }
    }
    out.push_str(&String::from_utf8_lossy(&bytes[start..]));
    out
}

/// Numeric order of two decimal strings with an optional leading '-'.
fn compare_decimal(a: &str, b: &str) -> Ordering {
    let (na, ma) = a.strip_prefix('-').map_or((false, a), |m| (true, m));
    let (nb, mb) = b.strip_prefix('-').map_or((false, b), |m| (true, m));
    let magnitude = ma.len().cmp(&mb.len()).then_with(|| ma.cmp(mb));
    match (na, nb) {
        (false, false) => magnitude,
        (true, true) => magnitude.reverse(),
        (true, false) => Ordering::Less,
        (false, true) => Ordering::Greater,
    }
}

fuzz_target!(|inp: Input<'_>| {
    let bytes = inp.bytes;
    let java = java_utf8_lossy(bytes);
    let rust = String::from_utf8_lossy(bytes);
    if let Ok(text) = std::str::from_utf8(bytes) {
        assert_eq!(java, text, "valid UTF-8 changed: {bytes:02x?}");
    }
    if !bytes.contains(&0xED) {
        assert_eq!(
            java, rust,
            "differs from from_utf8_lossy without 0xED: {bytes:02x?}"
        );
    }
    let surrogate = (0..bytes.len()).any(|i| is_surrogate_prefix(bytes, i));
    if surrogate {
        assert!(java.chars().count() < rust.chars().count(), "{bytes:02x?}");
    } else {
        assert_eq!(java, rust, "differs from from_utf8_lossy: {bytes:02x?}");
    }
    assert_eq!(java, model(bytes), "differs from the model: {bytes:02x?}");

    // Ring order.
    let participants: Vec<(&str, &[u8])> = inp
        .participants
        .iter()
        .take(8)
        .map(|(id, key)| (id.as_str(), *key))
        .collect();
    let gid = inp.computation.as_str();
    let order = ring_order(&participants, gid);
    assert_eq!(order, ring_order(&participants, gid), "not deterministic");
    let mut reversed = participants.clone();
    reversed.reverse();
    assert_eq!(
        order,
        ring_order(&reversed, gid),
        "depends on the input order"
    );
    let mut got = order.clone();
    got.sort_unstable();
    let mut want: Vec<&str> = participants.iter().map(|p| p.0).collect();
    want.sort_unstable();
    assert_eq!(got, want, "not a permutation");
    // Sorted by the signed key, ties by id (checked when the ids are unique, so that each
    // placed id names one key).
    if want.windows(2).all(|w| w[0] != w[1]) {
        let key_of = |id: &str| {
            participants
                .iter()
                .find(|p| p.0 == id)
                .map(|p| ordering_key(p.1, gid))
        };
        for w in order.windows(2) {
            let (ka, kb) = (key_of(w[0]), key_of(w[1]));
            let (Some(ka), Some(kb)) = (ka, kb) else {
                panic!("unknown id in the ring order");
            };
            let ord = compare_signed(&ka, &kb).then_with(|| w[0].cmp(w[1]));
            assert_eq!(ord, Ordering::Less, "{} before {}", w[0], w[1]);
        }
    }

    // Signed comparison against the decimal values.
    let (a, b) = inp.digests;
    let (da, db) = (to_signed_decimal(&a), to_signed_decimal(&b));
    assert_eq!(
        compare_signed(&a, &b),
        compare_decimal(&da, &db),
        "{da} vs {db}"
    );
    assert_eq!(compare_signed(&a, &a), Ordering::Equal);
    assert!(
        da == "0" || !da.trim_start_matches('-').starts_with('0'),
        "{da}"
    );
});

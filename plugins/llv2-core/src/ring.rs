//! Ring order of the LLv2 / RO-LLv2 participants (spec `mpc-crypto.md` §2.2, errata §10 E1).
//!
//! The non-aggregators are sorted by the **signed** big integer of
//! `SHA-1(UTF-8(new String(elGamalPublicKey, UTF_8) + globalComputationId))` (CMM
//! `LiquidLegionsV2Starter.kt` `orderByRoles`, `DuchyOrder.kt` `sha1Hash`); the aggregator comes
//! last. The key bytes are decoded the way Java 17 does, which differs from Rust's
//! [`String::from_utf8_lossy`] for surrogate encodings (`ED A0..BF`), see [`java_utf8_lossy`].

use std::cmp::Ordering;

use sha1::{Digest, Sha1};

/// Decodes `bytes` like Java 17's `new String(bytes, StandardCharsets.UTF_8)` (errata §10 E1):
/// well-formed UTF-8 as is, malformed input replaced by U+FFFD.
///
/// This is the "maximal subpart" replacement of [`String::from_utf8_lossy`] (one U+FFFD per
/// maximal prefix of a well-formed sequence, or per invalid byte) with the only two JDK 17
/// differences, both for encoded surrogates:
/// * `ED [A0-BF] [80-BF]` → ONE U+FFFD consuming 3 bytes (Rust: three);
/// * `ED [A0-BF]` followed by a non-continuation byte or the end → ONE U+FFFD consuming 2 bytes
///   (Rust: two).
pub fn java_utf8_lossy(bytes: &[u8]) -> String {
    const REPLACEMENT: char = '\u{FFFD}';
    let is_continuation = |b: Option<&u8>| matches!(b, Some(0x80..=0xBF));
    let mut out = String::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&lead) = bytes.get(i) {
        if lead < 0x80 {
            out.push(char::from(lead));
            i += 1;
            continue;
        }
        // Sequence length and the allowed range of the second byte (Unicode Table 3-7).
        let (len, second) = match lead {
            0xC2..=0xDF => (2, 0x80..=0xBF),
            0xE0 => (3, 0xA0..=0xBF),
            0xE1..=0xEC | 0xEE..=0xEF => (3, 0x80..=0xBF),
            0xED => (3, 0x80..=0x9F),
            0xF0 => (4, 0x90..=0xBF),
            0xF1..=0xF3 => (4, 0x80..=0xBF),
            0xF4 => (4, 0x80..=0x8F),
            // 80..C1 (continuation bytes, overlong leads) and F5..FF: one byte.
            _ => {
                out.push(REPLACEMENT);
                i += 1;
                continue;
            }
        };
        // Java: an encoded surrogate is malformed as a whole (3 bytes), or as a 2-byte prefix.
        if lead == 0xED && matches!(bytes.get(i + 1), Some(0xA0..=0xBF)) {
            out.push(REPLACEMENT);
            i += if is_continuation(bytes.get(i + 2)) {
                3
            } else {
                2
            };
            continue;
        }
        if !bytes.get(i + 1).is_some_and(|b| second.contains(b)) {
            out.push(REPLACEMENT);
            i += 1;
            continue;
        }
        // Bytes 3 and 4 only need to be continuation bytes; a failure ends the maximal subpart.
        let mut valid = 2;
        while valid < len && is_continuation(bytes.get(i + valid)) {
            valid += 1;
        }
        if valid < len {
            out.push(REPLACEMENT);
            i += valid;
            continue;
        }
        let scalar = bytes
            .get(i + 1..i + len)
            .unwrap_or_default()
            .iter()
            .fold(u32::from(lead) & (0x7F >> len), |acc, &b| {
                (acc << 6) | (u32::from(b) & 0x3F)
            });
        // The ranges above admit only scalar values; the fallback is unreachable.
        out.push(char::from_u32(scalar).unwrap_or(REPLACEMENT));
        i += len;
    }
    out
}

/// Ordering key of a participant (§2.2, errata §10 E1): SHA-1 of the UTF-8 encoding of
/// `java_utf8_lossy(el_gamal_public_key) + global_computation_id`, where the key is the stored
/// serialized `ElGamalPublicKey` message.
pub fn ordering_key(el_gamal_public_key: &[u8], global_computation_id: &str) -> [u8; 20] {
    let mut text = java_utf8_lossy(el_gamal_public_key);
    text.push_str(global_computation_id);
    Sha1::digest(text.as_bytes()).into()
}

/// Compares two digests as Java `BigInteger(byte[])` values: signed two's complement,
/// big-endian (§2.2). Flipping the sign bit turns this into an unsigned lexicographic compare.
pub fn compare_signed(a: &[u8; 20], b: &[u8; 20]) -> Ordering {
    let flip = |d: &[u8; 20]| {
        let mut d = *d;
        d[0] ^= 0x80;
        d
    };
    flip(a).cmp(&flip(b))
}

/// Ring order of the non-aggregators (§2.2): duchy ids sorted ascending by the signed
/// [`ordering_key`] of their `(id, el_gamal_public_key)`, ties broken by duchy id. The caller
/// appends the aggregator, which is always last; the next duchy of position `i` is
/// `(i + 1) mod D`.
pub fn ring_order<'a>(
    non_aggregators: &[(&'a str, &'a [u8])],
    global_computation_id: &str,
) -> Vec<&'a str> {
    let mut keyed: Vec<([u8; 20], &'a str)> = non_aggregators
        .iter()
        .map(|&(id, key)| (ordering_key(key, global_computation_id), id))
        .collect();
    keyed.sort_by(|(ka, ia), (kb, ib)| compare_signed(ka, kb).then_with(|| ia.cmp(ib)));
    keyed.into_iter().map(|(_, id)| id).collect()
}

/// The decimal string of a digest read as a Java `BigInteger(byte[])` (signed two's
/// complement, big-endian), e.g. for the §10 E1 KAT.
pub fn to_signed_decimal(digest: &[u8; 20]) -> String {
    let negative = digest[0] & 0x80 != 0;
    // Magnitude: the two's complement negation for negative values.
    let mut magnitude = *digest;
    if negative {
        let mut carry = true;
        for byte in magnitude.iter_mut().rev() {
            let (v, c) = (!*byte).overflowing_add(u8::from(carry));
            *byte = v;
            carry = c;
        }
    }
    // Repeated division by 10 of the big-endian magnitude.
    let mut digits = Vec::new();
    while magnitude.iter().any(|&b| b != 0) {
        let mut remainder = 0u16;
        for byte in magnitude.iter_mut() {
            let current = (remainder << 8) | u16::from(*byte);
            *byte = (current / 10) as u8;
            remainder = current % 10;
        }
        digits.push(char::from(b'0' + remainder as u8));
    }
    if digits.is_empty() {
        digits.push('0');
    }
    if negative {
        digits.push('-');
    }
    digits.into_iter().rev().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const R: &str = "\u{FFFD}";

    #[test]
    fn decoder_cases() {
        let cases: &[(&[u8], String)] = &[
            (b"", String::new()),
            (b"abc", "abc".into()),
            (&[0xED, 0xA0, 0x80, 0x41], format!("{R}A")),
            (&[0xED, 0xBF, 0xBF], R.into()),
            (&[0xED, 0xA0, 0x41], format!("{R}A")),
            (&[0xED, 0xA0], R.into()),
            (&[0xED, 0xA0, 0xED, 0xA0], format!("{R}{R}")),
            (&[0xED, 0x9F, 0xBF], "\u{D7FF}".into()),
            (&[0xED, 0x9F], R.into()),
            (&[0xED], R.into()),
            (&[0xED, 0x41], format!("{R}A")),
            (&[0xF0, 0x9F, 0x98, 0x80], "\u{1F600}".into()),
            (&[0xF4, 0x8F, 0xBF, 0xBF], "\u{10FFFF}".into()),
            (&[0xF4, 0x90, 0x80, 0x80], format!("{R}{R}{R}{R}")),
            (&[0xF0, 0x9F, 0x98], R.into()),
            (&[0xF0, 0x9F, 0x41], format!("{R}A")),
            (&[0xF0, 0x80, 0x80, 0x80], format!("{R}{R}{R}{R}")),
            (&[0xC0, 0x80], format!("{R}{R}")),
            (&[0xC1, 0xBF], format!("{R}{R}")),
            (&[0xE0, 0x80, 0x80], format!("{R}{R}{R}")),
            (&[0xE0, 0xA0, 0x80], "\u{800}".into()),
            (&[0xC3, 0xA9], "é".into()),
            (&[0x80, 0xBF, 0x41], format!("{R}{R}A")),
            (&[0xF8, 0x88, 0x80, 0x80, 0x80], format!("{R}{R}{R}{R}{R}")),
            (&[0xFF, 0xFE], format!("{R}{R}")),
            (&[0xEF, 0xBF, 0xBD], R.into()),
        ];
        for (bytes, want) in cases {
            assert_eq!(&java_utf8_lossy(bytes), want, "{bytes:02X?}");
        }
    }

    /// Without `ED [A0-BF]`, the decoder equals Rust's lossy decoding (every 1- and 2-byte
    /// input, and every 3-byte input whose lead byte is ≥ 0xC0, followed by 'A').
    #[test]
    fn equals_rust_lossy_elsewhere() {
        let check = |bytes: &[u8]| {
            let surrogate = bytes
                .windows(2)
                .any(|w| w[0] == 0xED && (0xA0..=0xBF).contains(&w[1]));
            let rust = String::from_utf8_lossy(bytes);
            if surrogate {
                assert_ne!(java_utf8_lossy(bytes), rust, "{bytes:02X?}");
            } else {
                assert_eq!(java_utf8_lossy(bytes), rust, "{bytes:02X?}");
            }
        };
        for a in 0..=255u8 {
            check(&[a]);
            for b in 0..=255u8 {
                check(&[a, b]);
                check(&[a, b, b'A']);
                if a >= 0xC0 {
                    for c in (0..=255u8).step_by(3) {
                        check(&[a, b, c]);
                        check(&[a, b, c, 0x80, b'A']);
                    }
                }
            }
        }
    }

    proptest::proptest! {
        /// Valid UTF-8 round-trips; arbitrary bytes without `ED [A0-BF]` decode like Rust.
        #[test]
        fn matches_rust_on_random_input(text in ".*", bytes in proptest::collection::vec(0u8..=255, 0..64)) {
            proptest::prop_assert_eq!(java_utf8_lossy(text.as_bytes()), text);
            let surrogate = bytes
                .windows(2)
                .any(|w| w[0] == 0xED && (0xA0..=0xBF).contains(&w[1]));
            if !surrogate {
                proptest::prop_assert_eq!(java_utf8_lossy(&bytes), String::from_utf8_lossy(&bytes));
            }
        }
    }

    #[test]
    fn signed_comparison_and_decimal() {
        let mut zero = [0u8; 20];
        let mut minus_one = [0xFFu8; 20];
        let mut min = [0u8; 20];
        min[0] = 0x80;
        let mut max = [0xFFu8; 20];
        max[0] = 0x7F;
        assert_eq!(to_signed_decimal(&zero), "0");
        assert_eq!(to_signed_decimal(&minus_one), "-1");
        assert_eq!(
            to_signed_decimal(&min),
            "-730750818665451459101842416358141509827966271488"
        );
        assert_eq!(
            to_signed_decimal(&max),
            "730750818665451459101842416358141509827966271487"
        );
        assert_eq!(compare_signed(&minus_one, &zero), Ordering::Less);
        assert_eq!(compare_signed(&min, &minus_one), Ordering::Less);
        assert_eq!(compare_signed(&zero, &max), Ordering::Less);
        assert_eq!(compare_signed(&max, &max), Ordering::Equal);
        zero[19] = 1;
        minus_one[19] = 0xFE;
        assert_eq!(to_signed_decimal(&zero), "1");
        assert_eq!(to_signed_decimal(&minus_one), "-2");
    }

    #[test]
    fn ring_order_sorts_by_signed_key() {
        let keys: [(&str, &[u8]); 4] = [
            ("worker1", b"key-one"),
            ("worker2", b"key-two"),
            ("worker3", &[0xED, 0xA0, 0x80, 0x41]),
            ("worker4", b"key-one"),
        ];
        let order = ring_order(&keys, "1234");
        assert_eq!(order.len(), 4);
        let sorted_keys: Vec<[u8; 20]> = order
            .iter()
            .map(|id| {
                let key = keys.iter().find(|(i, _)| i == id).map_or(&[][..], |k| k.1);
                ordering_key(key, "1234")
            })
            .collect();
        assert!(
            sorted_keys
                .windows(2)
                .all(|w| compare_signed(&w[0], &w[1]) != Ordering::Greater)
        );
        // Equal keys: ties broken by duchy id.
        let p1 = order.iter().position(|&d| d == "worker1");
        let p4 = order.iter().position(|&d| d == "worker4");
        assert_eq!(p1.map(|p| p + 1), p4);
        assert!(ring_order(&[], "1").is_empty());
    }
}

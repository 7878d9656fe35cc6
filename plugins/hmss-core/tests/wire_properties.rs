//! Property tests of the hand-written HMSS wire codecs (`hmss_core::wire`): round trips, and
//! agreement with the other encodings protobuf allows (unpacked values, values split over
//! several packed runs, unknown fields in between). Fuzzed too in tests/fuzz (`hmss_wire`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use hmss_core::wire::{
    decode_aggregation_input, decode_frequency_vector, decode_frequency_vector_as,
    encode_aggregation_input, encode_frequency_vector,
};
use proptest::prelude::*;

fn varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// How one run of values is written.
#[derive(Clone, Debug)]
enum Run {
    Packed(usize),
    Unpacked(usize),
    /// An unknown field (number 5..=15) of the given wire type, then nothing of ours.
    Unknown(u32, u8),
}

/// Writes `values` as field 1 in the runs given (leftover values packed at the end), with
/// unknown fields where asked: an encoding any protobuf writer may produce.
fn reference_encoding(values: &[u32], runs: &[Run]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut rest = values;
    let packed = |out: &mut Vec<u8>, vs: &[u32]| {
        let mut payload = Vec::new();
        for &v in vs {
            varint(&mut payload, u64::from(v));
        }
        varint(out, 1 << 3 | 2);
        varint(out, payload.len() as u64);
        out.extend(payload);
    };
    for run in runs {
        match *run {
            Run::Packed(n) => {
                let (now, later) = rest.split_at(n.min(rest.len()));
                packed(&mut out, now);
                rest = later;
            }
            Run::Unpacked(n) => {
                let (now, later) = rest.split_at(n.min(rest.len()));
                for &v in now {
                    varint(&mut out, 1 << 3);
                    varint(&mut out, u64::from(v));
                }
                rest = later;
            }
            Run::Unknown(field, wire) => {
                let field = u64::from(field);
                match wire % 4 {
                    0 => {
                        varint(&mut out, field << 3);
                        varint(&mut out, 300);
                    }
                    1 => {
                        varint(&mut out, field << 3 | 1);
                        out.extend([1; 8]);
                    }
                    2 => {
                        varint(&mut out, field << 3 | 2);
                        varint(&mut out, 3);
                        out.extend([0xff, 0x80, 0x01]);
                    }
                    _ => {
                        varint(&mut out, field << 3 | 5);
                        out.extend([2; 4]);
                    }
                }
            }
        }
    }
    if !rest.is_empty() {
        packed(&mut out, rest);
    }
    out
}

fn runs() -> impl Strategy<Value = Vec<Run>> {
    proptest::collection::vec(
        prop_oneof![
            (0usize..50).prop_map(Run::Packed),
            (0usize..10).prop_map(Run::Unpacked),
            (5u32..=15, any::<u8>()).prop_map(|(f, w)| Run::Unknown(f, w)),
        ],
        0..6,
    )
}

fn registers() -> impl Strategy<Value = Vec<u32>> {
    prop_oneof![
        proptest::collection::vec(0u32..127, 0..300),
        proptest::collection::vec(any::<u32>(), 0..100),
    ]
}

proptest! {
    #[test]
    fn frequency_vector_round_trips(v in registers()) {
        prop_assert_eq!(decode_frequency_vector(&encode_frequency_vector(&v)), Ok(v.clone()));
        if v.iter().all(|&x| x <= 0xff) {
            let bytes: Vec<u8> = v.iter().map(|&x| x as u8).collect();
            let enc = encode_frequency_vector(&bytes);
            prop_assert_eq!(&enc, &encode_frequency_vector(&v));
            prop_assert_eq!(decode_frequency_vector_as::<u8>(&enc), Ok(bytes));
        } else {
            prop_assert!(decode_frequency_vector_as::<u8>(&encode_frequency_vector(&v)).is_err());
        }
    }

    #[test]
    fn aggregation_input_round_trips(v in registers(), count in any::<i64>()) {
        let enc = encode_aggregation_input(&v, count);
        prop_assert_eq!(decode_aggregation_input::<u32>(&enc), Ok((v.clone(), count)));
    }

    /// Every encoding protobuf allows decodes to the same values.
    #[test]
    fn other_encodings_decode_the_same(v in registers(), runs in runs()) {
        let enc = reference_encoding(&v, &runs);
        prop_assert_eq!(decode_frequency_vector(&enc), Ok(v.clone()));
        prop_assert_eq!(decode_aggregation_input::<u32>(&enc).map(|(x, _)| x), Ok(v));
    }

    /// Arbitrary bytes: no panic, and what decodes re-encodes canonically to the same values.
    #[test]
    fn arbitrary_bytes_decode_or_fail_cleanly(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
        if let Ok(v) = decode_frequency_vector(&bytes) {
            prop_assert_eq!(decode_frequency_vector(&encode_frequency_vector(&v)), Ok(v));
        }
        if let Ok((v, count)) = decode_aggregation_input::<u8>(&bytes) {
            prop_assert_eq!(
                decode_aggregation_input::<u8>(&encode_aggregation_input(&v, count)),
                Ok((v, count))
            );
        }
    }

    /// A truncated encoding of a non-empty vector never decodes to the full vector.
    #[test]
    fn truncation_is_detected_or_shortens(v in proptest::collection::vec(0u32..127, 1..100), cut in any::<prop::sample::Index>()) {
        let enc = encode_frequency_vector(&v);
        let cut = cut.index(enc.len());
        prop_assert_ne!(decode_frequency_vector(&enc[..cut]), Ok(v));
    }
}

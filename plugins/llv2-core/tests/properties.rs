//! Property tests of `llv2-core` (spec `mpc-crypto.md` §1–4, §10): the estimator (monotone,
//! and inverting the expected active-register count), the sketch union (commutative,
//! associative, idempotent), the register index (monotone, in range), Java's lossy UTF-8
//! decoding (equal to Rust's where they must agree), the data provider's encryption on the
//! pure backend (each ciphertext decrypts to the point §1.3 prescribes; exact block sizes) and
//! the stage blobs' block counting.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::cell::Cell;

use halo_p256::backend::{CIPHERTEXT_LEN, Crypto, POINT_LEN, Pure, RandomSource};
use llv2_core::edp::encrypt_sketch;
use llv2_core::estimator::{estimate_cardinality, estimate_reach, expected_active_registers};
use llv2_core::protocol::{
    self as p, DESTROYED_REGISTER_KEY, MAX_ELEMENTS, REGISTER_LEN, RO_REGISTER_LEN, TUPLE_LEN,
    UNIT_POINT,
};
use llv2_core::ring::java_utf8_lossy;
use llv2_core::sketch::{
    DESTROYED, MAX_SKETCH_SIZE, PlainRegister, SketchParams, build_sketch, register_index, union,
};
use proptest::collection::vec;
use proptest::prelude::*;

thread_local! {
    static STATE: Cell<u64> = const { Cell::new(0x5851_f42d_4c95_7f2d) };
}

/// Deterministic random bytes for the pure backend (SplitMix64 over a thread-local state).
#[derive(Default)]
struct TestRandom;

impl RandomSource for TestRandom {
    fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let mut z = STATE.with(|s| {
                let v = s.get().wrapping_add(0x9e37_79b9_7f4a_7c15);
                s.set(v);
                v
            });
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^= z >> 31;
            chunk.copy_from_slice(&z.to_le_bytes()[..chunk.len()]);
        }
    }
}

type C = Pure<TestRandom>;

// ---------------------------------------------------------------- strategies

/// Valid sketch parameters with a small size, so that indexes collide and keys get destroyed.
fn small_params() -> impl Strategy<Value = SketchParams> {
    (1.5f64..20.0, 1u64..64, 1u64..1000).prop_map(|(decay_rate, size, s)| SketchParams {
        decay_rate,
        size,
        sampling_indicator_size: s,
    })
}

/// A built sketch over `params`: up to 40 events of VIDs in a small range (overlapping
/// between sketches).
fn sketch(params: SketchParams) -> impl Strategy<Value = Vec<PlainRegister>> {
    vec((0i64..200, 0u64..6), 0..40).prop_map(move |events| build_sketch(events, &params))
}

/// Arbitrary registers: any key (negative and zero = destroyed), any count, few indexes.
fn registers() -> impl Strategy<Value = Vec<PlainRegister>> {
    vec((0u64..16, -3i64..6, any::<u64>()), 0..24).prop_map(|v| {
        v.into_iter()
            .map(|(index, key, count)| PlainRegister { index, key, count })
            .collect()
    })
}

/// Bytes biased toward UTF-8 structure: ASCII, continuation bytes, every kind of lead byte
/// (valid, overlong, out of range) and 0xED.
fn utf8ish_bytes() -> impl Strategy<Value = Vec<u8>> {
    let byte = prop_oneof![
        0x00u8..0x80,
        0x80u8..0xC0,
        0xC0u8..0xE0,
        0xE0u8..0xF0,
        0xF0u8..=0xFF,
        Just(0xED),
        Just(0xA0),
    ];
    vec(byte, 0..48)
}

// ---------------------------------------------------------------- (1) estimator

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// The estimate never decreases with the active register count (and is at least 1).
    #[test]
    fn estimator_is_monotone_in_the_active_count(
        decay in 1.5f64..30.0,
        size in 10u64..=MAX_SKETCH_SIZE,
        a in any::<u64>(),
        b in any::<u64>(),
        width in prop_oneof![Just(1.0f32), Just(0.5f32), Just(0.1f32), 0.001f32..=1.0],
    ) {
        let (a, b) = ((a % size) as i64, (b % size) as i64);
        let (lo, hi) = (a.min(b), a.max(b));
        let c_lo = estimate_cardinality(decay, size, lo as u64);
        let c_hi = estimate_cardinality(decay, size, hi as u64);
        prop_assert!(c_lo <= c_hi, "a={decay} m={size}: {lo} → {c_lo}, {hi} → {c_hi}");
        prop_assert!(c_lo >= 1);
        let r_lo = estimate_reach(decay, size, lo, width);
        let r_hi = estimate_reach(decay, size, hi, width);
        prop_assert!(r_lo.is_ok() && r_hi.is_ok(), "{r_lo:?} {r_hi:?}");
        prop_assert!(r_lo <= r_hi);
        prop_assert!(r_lo.unwrap_or(0) >= 1);
    }

    /// Adjacent counts too (the binary search's edges).
    #[test]
    fn estimator_is_monotone_step_by_step(
        decay in 1.5f64..30.0,
        size in 10u64..2_000_000,
        start in any::<u64>(),
    ) {
        let start = start % (size - 8);
        let estimates: Vec<u64> =
            (start..start + 8).map(|a| estimate_cardinality(decay, size, a)).collect();
        prop_assert!(estimates.windows(2).all(|w| w[0] <= w[1]), "{estimates:?}");
    }

    /// `estimate_cardinality(⌊E[A](c)⌋)` recovers `c` within 5 % for `c ≥ 1000` (here up to
    /// `c = m`, where `E[A]` still grows by at least `e^{-1}` per item).
    #[test]
    fn estimator_inverts_the_expected_active_count(
        decay in 3.0f64..24.0,
        size in 10_000u64..2_000_000,
        fraction in 0.0f64..=1.0,
    ) {
        let c = 1000 + ((size - 1000) as f64 * fraction) as u64;
        let expected = expected_active_registers(decay, size as f64, c as f64);
        prop_assert!(expected > 0.0 && expected < size as f64);
        let estimate = estimate_cardinality(decay, size, expected.floor() as u64);
        let error = (estimate as f64 - c as f64).abs() / c as f64;
        prop_assert!(error <= 0.05, "a={decay} m={size} c={c}: E[A]={expected}, ĉ={estimate}");
    }
}

// ---------------------------------------------------------------- (2) union

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn union_is_commutative_associative_and_idempotent(
        (a, b, c) in small_params().prop_flat_map(|p| (sketch(p), sketch(p), sketch(p))),
        x in registers(),
    ) {
        let ab = union(&[&a, &b]);
        prop_assert_eq!(&ab, &union(&[&b, &a]));
        let abc = union(&[&a, &b, &c]);
        prop_assert_eq!(&union(&[&ab, &c]), &abc);
        prop_assert_eq!(&union(&[&a, &union(&[&b, &c])]), &abc);
        prop_assert_eq!(&union(&[&c, &x]), &union(&[&x, &c]));
        prop_assert_eq!(&union(&[&union(&[&a, &x]), &b]), &union(&[&a, &union(&[&x, &b])]));
        // Idempotent: a union is its own union, and a built sketch is already one.
        prop_assert_eq!(&union(&[&a]), &a);
        prop_assert_eq!(&union(&[&abc]), &abc);
        let ux = union(&[&x]);
        prop_assert_eq!(&union(&[&ux]), &ux);
        prop_assert!(ux.windows(2).all(|w| w[0].index < w[1].index));
        prop_assert!(ux.iter().all(|r| r.key >= DESTROYED));
        // With itself: the same registers and keys (equal keys are kept), counts doubled.
        let aa = union(&[&a, &a]);
        prop_assert_eq!(aa.len(), a.len());
        for (r2, r) in aa.iter().zip(&a) {
            prop_assert_eq!((r2.index, r2.key), (r.index, r.key));
            prop_assert_eq!(r2.count, r.count.saturating_mul(2));
        }
    }

    /// The union of separately built sketches is the sketch of all the events.
    #[test]
    fn union_of_sketches_is_the_sketch_of_the_union(
        params in small_params(),
        e1 in vec((0i64..200, 0u64..6), 0..40),
        e2 in vec((0i64..200, 0u64..6), 0..40),
    ) {
        let s1 = build_sketch(e1.iter().copied(), &params);
        let s2 = build_sketch(e2.iter().copied(), &params);
        prop_assert_eq!(union(&[&s1, &s2]), build_sketch(e1.into_iter().chain(e2), &params));
    }
}

// ---------------------------------------------------------------- (3) register index

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn register_index_is_monotone_and_in_range(
        decay in 1.0001f64..700.0,
        size in 1u64..=MAX_SKETCH_SIZE,
        f1 in any::<u64>(),
        f2 in any::<u64>(),
    ) {
        let (lo, hi) = (f1.min(f2), f1.max(f2));
        let (i_lo, i_hi) = (register_index(lo, decay, size), register_index(hi, decay, size));
        // `None` only for `u = 1` (rounded), which is above every index.
        let at = |i: Option<u64>| i.unwrap_or(size);
        prop_assert!(at(i_lo) <= at(i_hi), "a={decay} m={size}: {lo} → {i_lo:?}, {hi} → {i_hi:?}");
        for i in [i_lo, i_hi].into_iter().flatten() {
            prop_assert!(i < size);
        }
        if i_lo.is_none() {
            prop_assert!(lo as f64 == u64::MAX as f64, "{lo} has no index");
        }
        prop_assert_eq!(register_index(0, decay, size), Some(0));
    }

    /// Adjacent fingerprints around a random point, and the last fingerprints.
    #[test]
    fn register_index_is_monotone_locally(
        decay in 1.0001f64..60.0,
        size in 1u64..=MAX_SKETCH_SIZE,
        f in any::<u64>(),
    ) {
        let indexes: Vec<u64> = (0..16u64)
            .map(|d| register_index(f.saturating_add(d << 40), decay, size).unwrap_or(size))
            .collect();
        prop_assert!(indexes.windows(2).all(|w| w[0] <= w[1]), "{indexes:?}");
        prop_assert!(indexes.iter().all(|&i| i <= size));
    }
}

// ---------------------------------------------------------------- (4) Java's lossy UTF-8

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn java_decoding_keeps_valid_utf8(text in any::<String>()) {
        prop_assert_eq!(java_utf8_lossy(text.as_bytes()), text);
    }

    #[test]
    fn java_decoding_equals_rust_without_0xed(
        bytes in prop_oneof![utf8ish_bytes(), vec(any::<u8>(), 0..64)]
    ) {
        let without: Vec<u8> = bytes.iter().map(|&b| if b == 0xED { 0xEC } else { b }).collect();
        prop_assert_eq!(java_utf8_lossy(&without), String::from_utf8_lossy(&without));
        // Only an encoded surrogate (`ED [A0-BF]`) makes them differ.
        let surrogate = bytes.windows(2).any(|w| w[0] == 0xED && (0xA0..=0xBF).contains(&w[1]));
        if !surrogate {
            prop_assert_eq!(java_utf8_lossy(&bytes), String::from_utf8_lossy(&bytes));
        }
    }
}

// ---------------------------------------------------------------- (5) encryption

/// One duchy: `Y = x·G`.
fn key(c: &C, secret: u64) -> (Vec<u8>, <C as Crypto>::FixedBase) {
    let x = p::scalar_of(secret).to_vec();
    let y = c.fixed_mul(&c.generator(), &x).unwrap();
    (x, c.register(&y).unwrap())
}

fn h(c: &C, message: &str) -> Vec<u8> {
    c.hash_to_curve(&[message.as_bytes().to_vec()]).unwrap().0
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(16))]

    /// Every register encrypts `H(decimal(index))`, the key `H(decimal(proto key))` (or
    /// `H("destroyed_register_key")` twice when destroyed), and the count `min(count, MF+1)·P1`
    /// (§1.3); 198 bytes per register, 66 for reach only.
    #[test]
    fn encrypted_sketch_decrypts_to_the_hashed_registers(
        secret in 1u64..,
        mf in 1u32..12,
        registers in vec((any::<u64>(), -2i64..1_000_000, 1u64..20), 1..6),
    ) {
        let c = C::new();
        let (x, y) = key(&c, secret);
        let registers: Vec<PlainRegister> = registers
            .into_iter()
            .map(|(index, key, count)| PlainRegister { index, key, count })
            .collect();
        let n = registers.len();
        let blob = encrypt_sketch(&c, &y, &registers, mf, false).unwrap();
        prop_assert_eq!(blob.len(), n * REGISTER_LEN);
        prop_assert_eq!(p::blocks(&blob, REGISTER_LEN, "sketch"), Ok(n));
        let plain = c.decrypt(&x, &blob).unwrap();
        prop_assert_eq!(plain.len(), 3 * n * POINT_LEN);
        let p1 = h(&c, UNIT_POINT);
        let destroyed = h(&c, DESTROYED_REGISTER_KEY);
        for (r, points) in registers.iter().zip(plain.chunks_exact(3 * POINT_LEN)) {
            let (index, rest) = points.split_at(POINT_LEN);
            let (k, count) = rest.split_at(POINT_LEN);
            prop_assert_eq!(index.to_vec(), h(&c, &r.index.to_string()));
            if r.key > 0 {
                prop_assert_eq!(k.to_vec(), h(&c, &r.key.to_string()));
                let times = r.count.min(u64::from(mf) + 1);
                let want = c.mul(&p1, &p::scalar_of(times)).unwrap();
                prop_assert_eq!(count, want.as_slice());
            } else {
                prop_assert_eq!(k, destroyed.as_slice());
                prop_assert_eq!(count, destroyed.as_slice());
            }
        }
        // Reach only: the index ciphertexts alone.
        let ro = encrypt_sketch(&c, &y, &registers, mf, true).unwrap();
        prop_assert_eq!(ro.len(), n * RO_REGISTER_LEN);
        prop_assert_eq!(RO_REGISTER_LEN, CIPHERTEXT_LEN);
        let indexes = c.decrypt(&x, &ro).unwrap();
        for (r, index) in registers.iter().zip(indexes.chunks_exact(POINT_LEN)) {
            prop_assert_eq!(index.to_vec(), h(&c, &r.index.to_string()));
        }
    }
}

// ---------------------------------------------------------------- (6) block counting

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn blocks_accepts_exactly_whole_multiples(
        len in 0usize..4000,
        block in prop_oneof![
            Just(0usize),
            Just(CIPHERTEXT_LEN),
            Just(REGISTER_LEN),
            Just(TUPLE_LEN),
            1usize..300,
        ],
    ) {
        let data = vec![0u8; len];
        match p::blocks(&data, block, "data") {
            Ok(n) => {
                prop_assert!(block > 0);
                prop_assert_eq!(n * block, len);
                prop_assert!(n <= MAX_ELEMENTS);
            }
            Err(e) => {
                prop_assert!(block == 0 || len % block != 0, "{e:?}");
                prop_assert!(matches!(e, p::Error::Invalid(_)));
            }
        }
    }

    /// Reach-only blobs: registers followed by exactly one noise ciphertext.
    #[test]
    fn reach_only_split_needs_the_noise_ciphertext(len in 0usize..2000) {
        let data = vec![0u8; len];
        match p::ro_split(&data) {
            Ok((registers, noise)) => {
                prop_assert_eq!(noise.len(), CIPHERTEXT_LEN);
                prop_assert_eq!(registers.len() % RO_REGISTER_LEN, 0);
                prop_assert!(len >= CIPHERTEXT_LEN);
            }
            Err(e) => {
                prop_assert!(len < CIPHERTEXT_LEN || len % CIPHERTEXT_LEN != 0);
                prop_assert!(matches!(e, p::Error::Invalid(_)));
            }
        }
    }
}

//! The plaintext Liquid Legions sketch and estimator (`llv2_core::sketch`, `estimator`; spec
//! mpc-crypto §1) on arbitrary events, registers and parameters (valid and invalid).
//!
//! Invariants: no panic, no hang; a built sketch is sorted by index with unique indexes below
//! the size, positive counts adding up to the events' frequencies and keys that are destroyed
//! (0) or proto-encoded below the key space; `union` of one sketch is itself, is commutative,
//! and the union of two built sketches is the sketch of all their events; `register_index` is
//! below the size and monotone in the fingerprint (valid parameters); the VID sampler value is
//! in `[0, 1]`; `estimate_reach` succeeds exactly when its preconditions hold (in particular for
//! `0 ≤ active < size`, width in (0, 1]), is at least 1 and monotone in the active count;
//! `plaintext_reach` is `estimate_reach` of the register count; the frequency distribution is
//! over `1..=MF` and sums to 1 when non-empty.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use llv2_core::estimator::{estimate_reach, frequency_distribution, plaintext_reach};
use llv2_core::sketch::{
    DESTROYED, MAX_SKETCH_SIZE, PlainRegister, SketchParams, build_sketch, register_index, union,
    vid_sampled, vid_sampler_value,
};

#[derive(Arbitrary, Debug)]
enum Decay {
    Any(f64),
    /// `1 + v/100`: valid (1 < a ≤ 656.35).
    Valid(u16),
}

#[derive(Arbitrary, Debug)]
enum Size {
    Any(u64),
    /// `1 + v mod 2^31`: valid.
    Valid(u32),
    /// A few registers (collisions).
    Tiny(u8),
}

#[derive(Arbitrary, Debug)]
struct Input {
    decay: Decay,
    size: Size,
    sampling_indicator_size: u64,
    events: Vec<(i64, u32)>,
    more: Vec<(i64, u32)>,
    registers: Vec<(u8, i64, u64)>,
    fingerprints: (u64, u64),
    vid: i64,
    sampling: (f32, f32),
    active: i64,
    width: f32,
    maximum_frequency: u8,
}

fn decay(d: &Decay) -> f64 {
    match *d {
        Decay::Any(a) => a,
        Decay::Valid(v) => 1.0 + (f64::from(v) + 1.0) / 100.0,
    }
}

fn size(s: &Size) -> u64 {
    match *s {
        Size::Any(m) => m,
        Size::Valid(m) => 1 + u64::from(m) % MAX_SKETCH_SIZE,
        Size::Tiny(m) => 1 + u64::from(m % 16),
    }
}

fn check_sketch(s: &[PlainRegister], params: &SketchParams) {
    assert!(
        s.windows(2).all(|w| w[0].index < w[1].index),
        "indexes not sorted and unique"
    );
    let modulus = params.sampling_indicator_size.max(1);
    for r in s {
        assert!(
            r.index < params.size,
            "index {} ≥ size {}",
            r.index,
            params.size
        );
        assert!(r.count >= 1);
        assert!(r.key >= DESTROYED);
        if r.key != DESTROYED && modulus < i64::MAX as u64 {
            assert!(r.key as u64 <= modulus, "key {} above {modulus}", r.key);
        }
    }
}

fn check_distribution(regs: &[PlainRegister], mf: u32) {
    let d = frequency_distribution(regs, mf);
    let qualifying = regs.iter().any(|r| r.key > DESTROYED && r.count >= 1);
    assert_eq!(d.is_empty(), mf == 0 || !qualifying);
    if !d.is_empty() {
        assert!(d.keys().all(|&b| (1..=mf).contains(&b)), "{d:?}");
        assert!(d.values().all(|&v| v > 0.0 && v <= 1.0), "{d:?}");
        let total: f64 = d.values().sum();
        assert!((total - 1.0).abs() < 1e-9, "sums to {total}: {d:?}");
    }
}

fn valid_decay(a: f64) -> bool {
    a > 1.0 && a.exp().is_finite()
}

fn valid_width(w: f32) -> bool {
    w > 0.0 && w <= 1.0
}

fuzz_target!(|inp: Input| {
    let params = SketchParams {
        decay_rate: decay(&inp.decay),
        size: size(&inp.size),
        sampling_indicator_size: inp.sampling_indicator_size,
    };
    let valid = params.validate().is_ok();
    let events: Vec<(i64, u64)> = inp
        .events
        .iter()
        .take(64)
        .map(|&(v, f)| (v, u64::from(f)))
        .collect();
    let more: Vec<(i64, u64)> = inp
        .more
        .iter()
        .take(64)
        .map(|&(v, f)| (v, u64::from(f)))
        .collect();

    // Building.
    let s1 = build_sketch(events.iter().copied(), &params);
    let s2 = build_sketch(more.iter().copied(), &params);
    check_sketch(&s1, &params);
    check_sketch(&s2, &params);
    let index_of = |vid: i64| {
        let item = vid.to_string();
        register_index(
            llv2_core::sketch::item_fingerprint(&item, llv2_core::sketch::INDEX_DISTRIBUTION),
            params.decay_rate,
            params.size,
        )
    };
    let placed: u64 = events
        .iter()
        .filter(|&&(v, f)| f > 0 && index_of(v).is_some())
        .map(|&(_, f)| f)
        .sum();
    assert_eq!(s1.iter().map(|r| r.count).sum::<u64>(), placed);
    let mut indexes: Vec<u64> = events
        .iter()
        .filter(|&&(_, f)| f > 0)
        .filter_map(|&(v, _)| index_of(v))
        .collect();
    indexes.sort_unstable();
    indexes.dedup();
    assert_eq!(s1.iter().map(|r| r.index).collect::<Vec<_>>(), indexes);

    // Union.
    assert_eq!(union(&[&s1]), s1, "union of one sketch");
    let u12 = union(&[&s1, &s2]);
    assert_eq!(u12, union(&[&s2, &s1]), "union not commutative");
    assert_eq!(
        u12,
        build_sketch(events.iter().chain(more.iter()).copied(), &params),
        "union differs from the sketch of all events"
    );
    assert!(union(&[]).is_empty());
    let arbitrary: Vec<PlainRegister> = inp
        .registers
        .iter()
        .take(32)
        .map(|&(index, key, count)| PlainRegister {
            index: u64::from(index % 16),
            key,
            count,
        })
        .collect();
    let ua = union(&[&arbitrary]);
    assert!(ua.windows(2).all(|w| w[0].index < w[1].index));
    assert!(ua.iter().all(|r| r.key >= DESTROYED));
    assert_eq!(union(&[&ua]), ua, "union not idempotent on its output");
    assert_eq!(union(&[&ua, &s1]), union(&[&s1, &ua]));

    // Register index and VID sampling.
    let (f1, f2) = inp.fingerprints;
    let (lo, hi) = (f1.min(f2), f1.max(f2));
    let (i_lo, i_hi) = (
        register_index(lo, params.decay_rate, params.size),
        register_index(hi, params.decay_rate, params.size),
    );
    for i in [i_lo, i_hi].into_iter().flatten() {
        assert!(i < params.size);
    }
    if valid {
        assert_eq!(register_index(0, params.decay_rate, params.size), Some(0));
        let m = params.size;
        assert!(
            i_lo.unwrap_or(m) <= i_hi.unwrap_or(m),
            "{lo} → {i_lo:?}, {hi} → {i_hi:?}"
        );
    }
    let h = vid_sampler_value(inp.vid);
    assert!((0.0..=1.0).contains(&h), "{h}");
    assert_eq!(vid_sampled(inp.vid, 0.0, 1.0), h < 1.0);
    let _ = vid_sampled(inp.vid, inp.sampling.0, inp.sampling.1);

    // Estimator.
    let (a, m, w) = (params.decay_rate, params.size, inp.width);
    let active = inp.active;
    let preconditions =
        |active: i64| valid_decay(a) && active.max(0).unsigned_abs() < m && valid_width(w);
    let r = estimate_reach(a, m, active, w);
    assert_eq!(
        r.is_ok(),
        preconditions(active),
        "estimate_reach({a}, {m}, {active}, {w}) = {r:?}"
    );
    if let Ok(v) = r {
        assert!(v >= 1, "reach {v}");
        // Monotone in the active count (sizes the sketch validation accepts; above, the f64
        // error of E[A] exceeds 1 register).
        if m <= MAX_SKETCH_SIZE
            && let Some(next) = active.checked_add(1)
            && let Ok(v2) = estimate_reach(a, m, next, w)
        {
            assert!(
                v <= v2,
                "estimate_reach({a}, {m}, ·, {w}): {active} → {v}, {next} → {v2}"
            );
        }
    }
    let n = s1.len() as i64;
    let pr = plaintext_reach(&s1, &params, w);
    assert_eq!(pr.is_ok(), valid && preconditions(n), "{pr:?}");
    if valid {
        assert_eq!(pr, estimate_reach(a, m, n, w));
    }

    // Frequency distribution.
    let mf = u32::from(inp.maximum_frequency % 32);
    check_distribution(&s1, mf);
    check_distribution(&u12, mf);
    check_distribution(&arbitrary, mf);
});

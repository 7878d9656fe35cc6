//! The whole LLv2 and RO-LLv2 pipelines on the pure backend, three (or four) duchies: data
//! providers' sketches → encryption → setup → execution phases, compared with the plaintext
//! estimator on the union sketch (exact with noise off, and with noise whose draws all equal
//! their offsets, which the baselines remove exactly).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::cell::Cell;
use std::collections::BTreeMap;

use halo_p256::backend::{Crypto, Pure, RandomSource};
use hmss_core::noise::{DpParams, NoiseMechanism, NoiserOptions};
use llv2_core::edp::encrypt_sketch;
use llv2_core::estimator::{frequency_distribution, plaintext_reach};
use llv2_core::noise::{
    blind_histogram_noiser, frequency_noiser, global_reach_noiser, publisher_noiser,
};
use llv2_core::protocol::{
    self as p, Baselines, FrequencyNoise, Offsets, ReachNoise, RoAggregation, SetupParams,
};
use llv2_core::sketch::{PlainRegister, SketchParams, build_sketch, union};

thread_local! {
    static STATE: Cell<u64> = const { Cell::new(0x243f_6a88_85a3_08d3) };
}

/// Deterministic random bytes for the tests (SplitMix64 over a thread-local counter).
#[derive(Default)]
struct TestRandom;

impl RandomSource for TestRandom {
    fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let z = STATE.with(|s| {
                let v = s.get().wrapping_add(0x9e37_79b9_7f4a_7c15);
                s.set(v);
                v
            });
            let mut z = z;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^= z >> 31;
            chunk.copy_from_slice(&z.to_le_bytes()[..chunk.len()]);
        }
    }
}

type C = Pure<TestRandom>;

const SKETCH: SketchParams = SketchParams {
    decay_rate: 12.0,
    size: 100_000,
    sampling_indicator_size: 10_000_000,
};

struct Duchy {
    secret: Vec<u8>,
    public: Vec<u8>,
}

fn duchies(c: &C, n: usize) -> Vec<Duchy> {
    (0..n)
        .map(|_| {
            let secret = c.random_scalars(1).unwrap();
            let public = c.fixed_mul(&c.generator(), &secret).unwrap();
            Duchy { secret, public }
        })
        .collect()
}

fn sum(c: &C, points: &[&[u8]]) -> Vec<u8> {
    let mut acc = points[0].to_vec();
    for p in &points[1..] {
        acc = c.add(&acc, p).unwrap();
    }
    acc
}

/// A provider's sketch: `n` VIDs from `first`, frequency `1 + vid % max_f`.
fn provider(first: i64, n: i64, max_f: u64) -> Vec<PlainRegister> {
    build_sketch(
        (first..first + n).map(|v| (v, 1 + (v as u64) % max_f)),
        &SKETCH,
    )
}

struct Noise {
    reach: Option<ReachNoise>,
    frequency: Option<NoiserOptions>,
}

fn noise(d: u32, s: u32, mechanism: NoiseMechanism, eps: f64) -> Noise {
    let dp = DpParams {
        epsilon: eps,
        delta: 1e-6,
    };
    Noise {
        reach: Some(ReachNoise {
            blind_histogram: blind_histogram_noiser(&dp, d, mechanism).unwrap().unwrap(),
            publisher: publisher_noiser(&dp, s, d, mechanism).unwrap().unwrap(),
            global_reach: global_reach_noiser(&dp, d, mechanism).unwrap().unwrap(),
        }),
        frequency: Some(frequency_noiser(&dp, d, mechanism).unwrap().unwrap()),
    }
}

const NO_NOISE: Noise = Noise {
    reach: None,
    frequency: None,
};

/// Runs LLv2 over `d` duchies (the last is the aggregator); `sketches[i]` is fulfilled at
/// duchy `i % d`. Returns (reach, distribution).
fn run_llv2(
    sketches: &[Vec<PlainRegister>],
    d: usize,
    mf: u32,
    noise: &Noise,
    width: f32,
) -> (i64, BTreeMap<u32, f64>) {
    let c = C::new();
    let ds = duchies(&c, d);
    let publics: Vec<&[u8]> = ds.iter().map(|x| x.public.as_slice()).collect();
    let y_point = sum(&c, &publics);
    let y = c.register(&y_point).unwrap();
    let s = sketches.len() as u32;
    let mut requisitions = vec![Vec::new(); d];
    for (i, sk) in sketches.iter().enumerate() {
        requisitions[i % d].extend(encrypt_sketch(&c, &y, sk, mf, false).unwrap());
    }
    let mut rng = Offsets;
    let sp = SetupParams {
        sketches: s,
        maximum_frequency: mf,
        noise: noise.reach.as_ref(),
    };
    let mut others = Vec::new();
    for (j, req) in requisitions.iter().enumerate().take(d - 1) {
        let out = p::setup(&c, &y, req, &[], &sp, &mut rng).unwrap();
        assert!(p::blocks(&out, p::REGISTER_LEN, "x").is_ok(), "duchy {j}");
        others.extend(out);
    }
    let mut blob = p::setup(&c, &y, &requisitions[d - 1], &others, &sp, &mut rng).unwrap();
    let agg = &ds[d - 1];
    for dj in ds.iter().take(d - 1) {
        blob = p::execution_one(&c, &dj.secret, &y, &blob).unwrap();
        assert_sorted(&blob, p::REGISTER_LEN);
    }
    let fnoise = noise
        .frequency
        .as_ref()
        .map(|noiser| FrequencyNoise { noiser });
    blob = p::execution_one_at_aggregator(&c, &agg.secret, &y, &blob, s, mf, fnoise, &mut rng)
        .unwrap();
    assert_sorted(&blob, p::TUPLE_LEN);
    for (j, dj) in ds.iter().enumerate().take(d - 1) {
        let partial = c.register(&sum(&c, &publics[j + 1..])).unwrap();
        blob = p::execution_two(&c, &dj.secret, &partial, &y, &blob, mf, fnoise, &mut rng).unwrap();
        assert_sorted(&blob, p::TUPLE_LEN);
    }
    let dd = d as u64;
    let baselines = Baselines {
        reach: noise.reach.map(|n| dd * u64::from(n.global_reach.mu())),
        frequency_tuples: noise
            .frequency
            .filter(|_| mf > 1)
            .map(|f| dd * llv2_core::noise::total_frequency_noise(f.mu(), mf)),
        frequency_bucket: None,
    };
    let two = p::execution_two_at_aggregator(&c, &agg.secret, &y, &blob, mf, &baselines).unwrap();
    let reach = p::reach(SKETCH.decay_rate, SKETCH.size, two.active, width).unwrap();
    if mf == 1 {
        assert!(two.matrix.is_empty());
        return (reach, BTreeMap::new());
    }
    let mut matrix = two.matrix;
    assert_eq!(matrix.len() as u64, two.valid * u64::from(mf - 1) * 66);
    for dj in ds.iter().take(d - 1) {
        matrix = p::execution_three(&c, &dj.secret, &matrix).unwrap();
    }
    let bucket = noise.frequency.map(|f| dd * u64::from(f.mu()));
    let dist = p::execution_three_at_aggregator(&c, &agg.secret, &matrix, mf, bucket).unwrap();
    (reach, dist)
}

fn run_ro(sketches: &[Vec<PlainRegister>], d: usize, noise: &Noise, width: f32) -> i64 {
    let c = C::new();
    let ds = duchies(&c, d);
    let publics: Vec<&[u8]> = ds.iter().map(|x| x.public.as_slice()).collect();
    let y = c.register(&sum(&c, &publics)).unwrap();
    let s = sketches.len() as u32;
    let mut requisitions = vec![Vec::new(); d];
    for (i, sk) in sketches.iter().enumerate() {
        requisitions[i % d].extend(encrypt_sketch(&c, &y, sk, 1, true).unwrap());
    }
    let mut rng = Offsets;
    let (mut others, mut received) = (Vec::new(), Vec::new());
    for req in requisitions.iter().take(d - 1) {
        let out = p::ro_setup(&c, &y, req, &[], &[], s, noise.reach.as_ref(), &mut rng).unwrap();
        let (crv, n) = p::ro_split(&out).unwrap();
        assert_sorted(crv, p::RO_REGISTER_LEN);
        others.extend_from_slice(crv);
        received.extend_from_slice(n);
    }
    let mut blob = p::ro_setup(
        &c,
        &y,
        &requisitions[d - 1],
        &others,
        &received,
        s,
        noise.reach.as_ref(),
        &mut rng,
    )
    .unwrap();
    for dj in ds.iter().take(d - 1) {
        blob = p::ro_execution(&c, &dj.secret, &blob).unwrap();
        assert_sorted(p::ro_split(&blob).unwrap().0, p::RO_REGISTER_LEN);
    }
    let active = p::ro_execution_at_aggregator(
        &c,
        &ds[d - 1].secret,
        &blob,
        &RoAggregation {
            duchies: d as u32,
            sketches: s,
            noise: noise.reach.as_ref(),
        },
    )
    .unwrap();
    p::reach(SKETCH.decay_rate, SKETCH.size, active, width).unwrap()
}

fn assert_sorted(data: &[u8], block: usize) {
    let blocks: Vec<&[u8]> = data.chunks(block).collect();
    assert!(blocks.windows(2).all(|w| w[0] <= w[1]), "blocks not sorted");
}

fn expected(sketches: &[Vec<PlainRegister>], mf: u32, width: f32) -> (i64, BTreeMap<u32, f64>) {
    let refs: Vec<&[PlainRegister]> = sketches.iter().map(|s| s.as_slice()).collect();
    let u = union(&refs);
    let dist = if mf > 1 {
        frequency_distribution(&u, mf)
    } else {
        BTreeMap::new()
    };
    (plaintext_reach(&u, &SKETCH, width).unwrap(), dist)
}

fn assert_dist(got: &BTreeMap<u32, f64>, want: &BTreeMap<u32, f64>) {
    assert_eq!(
        got.keys().collect::<Vec<_>>(),
        want.keys().collect::<Vec<_>>()
    );
    for (k, v) in want {
        assert!((got[k] - v).abs() < 1e-12, "bucket {k}: {} vs {v}", got[k]);
    }
}

#[test]
fn reach_and_frequency_without_noise_equals_the_plaintext_union() {
    // Overlapping providers: VIDs 0..300, 200..450, 400..420.
    let sketches = vec![
        provider(0, 300, 5),
        provider(200, 250, 3),
        provider(400, 20, 7),
    ];
    for mf in [1, 2, 10] {
        let (reach, dist) = run_llv2(&sketches, 3, mf, &NO_NOISE, 1.0);
        let (want_reach, want_dist) = expected(&sketches, mf, 1.0);
        assert_eq!(reach, want_reach, "mf {mf}");
        assert_dist(&dist, &want_dist);
    }
}

#[test]
fn one_provider_four_duchies_and_sampling_width() {
    let sketches = vec![provider(1000, 120, 4)];
    let (reach, dist) = run_llv2(&sketches, 4, 20, &NO_NOISE, 0.25);
    let (want_reach, want_dist) = expected(&sketches, 20, 0.25);
    assert_eq!(reach, want_reach);
    assert_dist(&dist, &want_dist);
}

#[test]
fn offset_noise_is_removed_exactly() {
    let sketches = vec![provider(0, 150, 5), provider(100, 100, 3)];
    for mechanism in [NoiseMechanism::Geometric, NoiseMechanism::DiscreteGaussian] {
        let n = noise(3, 2, mechanism, 3.0);
        let (reach, dist) = run_llv2(&sketches, 3, 6, &n, 1.0);
        let (want_reach, want_dist) = expected(&sketches, 6, 1.0);
        assert_eq!(reach, want_reach, "{mechanism:?}");
        assert_dist(&dist, &want_dist);
        assert_eq!(run_ro(&sketches, 3, &n, 1.0), want_reach, "{mechanism:?}");
    }
}

#[test]
fn reach_only_without_noise_equals_the_plaintext_union() {
    let sketches = vec![
        provider(0, 300, 1),
        provider(250, 100, 1),
        provider(5000, 1, 1),
    ];
    let (want, _) = expected(&sketches, 1, 0.5);
    assert_eq!(run_ro(&sketches, 3, &NO_NOISE, 0.5), want);
}

#[test]
fn destroyed_registers_leave_the_frequency_but_count_for_reach() {
    // Two providers with the same VIDs have equal keys; a register where different VIDs
    // collide is destroyed. A tiny sketch forces collisions.
    const TINY: SketchParams = SketchParams {
        decay_rate: 12.0,
        size: 50,
        sampling_indicator_size: 10_000_000,
    };
    let a = build_sketch((0..30).map(|v| (v, 2)), &TINY);
    let b = build_sketch((20..40).map(|v| (v, 1)), &TINY);
    assert!(
        a.iter().any(|r| r.key == 0),
        "the tiny sketch has a destroyed register"
    );
    let sketches = vec![a, b];
    let (_, dist) = run_llv2(&sketches, 3, 5, &NO_NOISE, 1.0);
    let refs: Vec<&[PlainRegister]> = sketches.iter().map(|s| s.as_slice()).collect();
    assert_dist(&dist, &frequency_distribution(&union(&refs), 5));
}

#[test]
fn malformed_blobs_are_invalid_input() {
    let c = C::new();
    let ds = duchies(&c, 1);
    let y = c.register(&ds[0].public).unwrap();
    let sp = SetupParams {
        sketches: 1,
        maximum_frequency: 5,
        noise: None,
    };
    let bad_len = vec![2u8; 197];
    assert!(matches!(
        p::setup(&c, &y, &bad_len, &[], &sp, &mut Offsets),
        Err(p::Error::Invalid(_))
    ));
    let bad_point = vec![7u8; 198];
    assert!(matches!(
        p::setup(&c, &y, &bad_point, &[], &sp, &mut Offsets),
        Err(p::Error::Invalid(_))
    ));
    assert!(matches!(
        p::execution_one(&c, &ds[0].secret, &y, &bad_point),
        Err(p::Error::Invalid(_))
    ));
    assert!(matches!(p::ro_split(&[1u8; 10]), Err(p::Error::Invalid(_))));
    assert!(matches!(
        p::execution_three_at_aggregator(&c, &ds[0].secret, &[0u8; 66 * 5], 5, None),
        Err(p::Error::Invalid(_))
    ));
}

//! Known-answer tests of `mpc-crypto.md`: §1.1 (register index), §1.2 (fingerprints, sketch
//! registers, VID sampler), §1.4 (estimator, errata E6, traps 3–4), §5.2 (noise offsets and
//! sizing examples) and errata §10 E1 (ring order with Java's lossy UTF-8).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use hmss_core::noise::{DpParams, NoiseMechanism, NoiserOptions};
use llv2_core::estimator::{
    estimate_cardinality, estimate_reach, expected_active_registers, plaintext_reach,
};
use llv2_core::noise::{
    blind_histogram_noiser, frequency_noiser, global_reach_noiser, publisher_noiser,
    total_frequency_noise, total_reach_noise, total_ro_noise,
};
use llv2_core::ring::{ordering_key, to_signed_decimal};
use llv2_core::sketch::{
    INDEX_DISTRIBUTION, PlainRegister, SAMPLING_INDICATOR_DISTRIBUTION, SketchParams, build_sketch,
    fingerprint64, item_fingerprint, register_index, union, vid_sampler_value,
};

// ---------------------------------------------------------------- §1.1, §1.2

#[test]
fn fingerprint_of_empty_string() {
    assert_eq!(fingerprint64(b""), 0x9ae1_6a3b_2f90_404f);
}

#[test]
fn register_index_kat_1_1() {
    assert_eq!(
        register_index(5_000_000_000_000_000_000, 2.0, 10_000),
        Some(1335)
    );
    assert_eq!(register_index(50, 2.0, 10), Some(0));
}

/// §1.2 table: `a = 5.6, m = 10^6, sampling_indicator_size = 10^7`.
#[test]
fn sketch_table_1_2() {
    let params = SketchParams {
        decay_rate: 5.6,
        size: 1_000_000,
        sampling_indicator_size: 10_000_000,
    };
    // (vid, fp Index, index, raw key, proto key, VidSampler value)
    let rows: [(i64, u64, u64, u64, i64, f64); 3] = [
        (
            1,
            0x3749_63ba_36f9_35dc,
            43264,
            1_311_850,
            1_311_851,
            0.684_554_994,
        ),
        (
            2,
            0x851f_1770_3c13_e34c,
            130_354,
            1_528_384,
            1_528_385,
            0.869_370_699,
        ),
        (
            12345,
            0xa9bc_06a3_53d1_6c31,
            192_946,
            95385,
            95386,
            0.116_274_133,
        ),
    ];
    for (vid, fp, index, raw, proto, sampler) in rows {
        let item = vid.to_string();
        assert_eq!(item_fingerprint(&item, INDEX_DISTRIBUTION), fp, "vid {vid}");
        assert_eq!(
            fingerprint64(format!("AnySketchFingerprint:{vid}:Index").as_bytes()),
            fp
        );
        assert_eq!(register_index(fp, 5.6, 1_000_000), Some(index), "vid {vid}");
        assert_eq!(
            item_fingerprint(&item, SAMPLING_INDICATOR_DISTRIBUTION) % 10_000_000,
            raw,
            "vid {vid}"
        );
        let h = vid_sampler_value(vid);
        assert!((f64::from(h) - sampler).abs() < 1e-6, "vid {vid}: {h}");
        assert_eq!(
            build_sketch([(vid, 2)], &params),
            vec![PlainRegister {
                index,
                key: proto,
                count: 2
            }]
        );
    }
}

// ---------------------------------------------------------------- §1.4

/// §1.4 `(a, m, k, w) → reach`.
#[test]
fn estimator_kats() {
    let kats: [(f64, u64, i64, f32, i64); 7] = [
        (10.0, 100_000, 0, 1.0, 1),
        (12.0, 100_000, 30, 0.5, 64),
        (12.0, 100_000, 7, 0.5, 16),
        (10.0, 100_000, 1000, 1.0, 1026),
        (10.0, 100_000, 50_000, 1.0, 836_493),
        (5.6, 1_000_000, 123_456, 1.0, 150_106),
        (23.0, 330_000, 100_000, 1.0, 8_571_084),
    ];
    for (a, m, k, w, reach) in kats {
        assert_eq!(estimate_reach(a, m, k, w), Ok(reach), "{a} {m} {k} {w}");
    }
}

#[test]
fn estimator_intermediates() {
    for (c, want) in [(30.0, 29.973), (31.0, 30.971), (32.0, 31.969)] {
        let e = expected_active_registers(12.0, 1e5, c);
        assert!((e - want).abs() < 1e-3, "E[A]({c}) = {e}");
    }
    assert_eq!(expected_active_registers(10.0, 1e5, 1e6) as u64, 51778);
    // Errata E6: the closest intermediate to an integer boundary (5.6, 1e6, 123456) still
    // lands on the KAT above; E[A](ĉ) straddles 123456 within the search.
    assert_eq!(estimate_cardinality(5.6, 1_000_000, 123_456), 150_106);
}

/// Trap 3: the width is an f32 widened to f64.
#[test]
fn float32_width_trap() {
    let c = estimate_cardinality(10.0, 100_000, 1000);
    assert_eq!(c, 1026);
    let reach = estimate_reach(10.0, 100_000, 1000, 0.1).unwrap();
    assert_eq!(reach, (1026.0 / 0.100_000_001_490_116) as i64);
    assert_eq!(reach, 10259);
}

/// Trap 4: zero (or negative, clamped) active registers give `trunc(1/width)`, never 0.
#[test]
fn zero_active_trap() {
    for w in [1.0f32, 0.5, 0.3, 0.1, 0.01] {
        let want = (1.0 / f64::from(w)) as i64;
        assert_eq!(estimate_reach(12.0, 100_000, 0, w), Ok(want), "{w}");
        assert_eq!(estimate_reach(12.0, 100_000, -3, w), Ok(want), "{w}");
    }
    assert_eq!(estimate_reach(12.0, 100_000, 0, 0.3), Ok(3));
}

#[test]
fn estimator_errors() {
    assert!(estimate_reach(12.0, 100, 100, 1.0).is_err());
    assert!(estimate_reach(12.0, 100, 1000, 1.0).is_err());
    assert!(estimate_reach(12.0, 100_000, 10, 0.0).is_err());
    assert!(estimate_reach(1.0, 100_000, 10, 1.0).is_err());
    assert!(estimate_reach(0.5, 100_000, 10, 1.0).is_err());
}

/// The estimator inverts `E[A]`: `ĉ(⌊E[A](c)⌋)` is within 5 % of `c`.
#[test]
fn estimator_inverts_expectation() {
    for m in [330_000u64, 1_000_000] {
        for a in [5.0, 12.0, 23.0] {
            for c in (1000..1_000_000u64).step_by(50_000) {
                let k = expected_active_registers(a, m as f64, c as f64) as u64;
                let est = estimate_cardinality(a, m, k);
                let err = (est as f64 - c as f64).abs() / c as f64;
                assert!(err < 0.05, "a={a} m={m} c={c} k={k} est={est}");
            }
        }
    }
}

#[test]
fn plaintext_reach_of_union() {
    let params = SketchParams {
        decay_rate: 12.0,
        size: 100_000,
        sampling_indicator_size: 10_000_000,
    };
    let s1 = build_sketch((0..500).map(|v| (v, 1)), &params);
    let s2 = build_sketch((250..1000).map(|v| (v, 2)), &params);
    let u = union(&[&s1, &s2]);
    let reach = plaintext_reach(&u, &params, 1.0).unwrap();
    assert_eq!(
        reach,
        estimate_reach(12.0, 100_000, u.len() as i64, 1.0).unwrap()
    );
    assert!((reach - 1000).abs() < 100, "{reach}");
}

// ---------------------------------------------------------------- §5.2

fn dp(epsilon: f64, delta: f64) -> DpParams {
    DpParams { epsilon, delta }
}

fn mu(o: Result<Option<NoiserOptions>, String>) -> u32 {
    o.unwrap().unwrap().mu()
}

fn geometric_p(o: Result<Option<NoiserOptions>, String>) -> f64 {
    match o.unwrap().unwrap() {
        NoiserOptions::Geometric { p, .. } => p,
        other => panic!("{other:?}"),
    }
}

fn sigma(o: Result<Option<NoiserOptions>, String>) -> f64 {
    match o.unwrap().unwrap() {
        NoiserOptions::DiscreteGaussian {
            sigma_distributed, ..
        } => sigma_distributed,
        other => panic!("{other:?}"),
    }
}

#[test]
fn noise_kats_ln3_over_10() {
    let p = dp(3f64.ln() / 10.0, 2e-6);
    let (geo, gauss) = (NoiseMechanism::Geometric, NoiseMechanism::DiscreteGaussian);
    assert_eq!(mu(blind_histogram_noiser(&p, 2, geo)), 291);
    assert!((geometric_p(blind_histogram_noiser(&p, 2, geo)) - 0.94655).abs() < 5e-6);
    assert_eq!(mu(blind_histogram_noiser(&p, 2, gauss)), 189);
    assert!((sigma(blind_histogram_noiser(&p, 2, gauss)) - 34.105).abs() < 1e-3);
    assert_eq!(mu(publisher_noiser(&p, 3, 2, geo)), 447);
    assert!((geometric_p(publisher_noiser(&p, 3, 2, geo)) - 0.96404).abs() < 5e-6);
    assert_eq!(mu(publisher_noiser(&p, 3, 4, gauss)), 137);
}

#[test]
fn noise_kats_035_ln3() {
    let p = dp(0.35 * 3f64.ln(), 2e-6);
    let (geo, gauss) = (NoiseMechanism::Geometric, NoiseMechanism::DiscreteGaussian);
    assert_eq!(mu(global_reach_noiser(&p, 2, geo)), 41);
    assert_eq!(mu(global_reach_noiser(&p, 2, gauss)), 55);
    assert_eq!(mu(frequency_noiser(&p, 2, geo)), 84);
    assert_eq!(mu(frequency_noiser(&p, 3, gauss)), 45);
}

#[test]
fn noise_kats_deterministic() {
    let p = dp(40.0, (-80f64).exp());
    let geo = NoiseMechanism::Geometric;
    assert_eq!(mu(blind_histogram_noiser(&p, 3, geo)), 7);
    assert_eq!(mu(frequency_noiser(&p, 3, geo)), 7);
    assert_eq!(mu(global_reach_noiser(&p, 3, geo)), 4);
    assert!(geometric_p(frequency_noiser(&p, 3, geo)) < 3e-9);
}

/// §5.2 sizing examples (Gaussian, D = 3).
#[test]
fn noise_sizing_examples() {
    let gauss = NoiseMechanism::DiscreteGaussian;
    let mpc = dp(1.0, 1.0);
    let mu_bh = mu(blind_histogram_noiser(&mpc, 3, gauss));
    assert_eq!(mu_bh, 2);
    for s in [2, 6] {
        assert_eq!(mu(publisher_noiser(&mpc, s, 3, gauss)), 2);
    }
    let reach = dp(0.1, 1e-9);
    let mu_reach = mu(global_reach_noiser(&reach, 3, gauss));
    assert_eq!(mu_reach, 260);
    let mu_pub = mu(publisher_noiser(&mpc, 2, 3, gauss));
    assert_eq!(total_reach_noise(mu_pub, mu_reach, mu_bh, 2), 536);
    assert_eq!(total_reach_noise(mu_pub, mu_reach, mu_bh, 6), 608);
    assert_eq!(total_ro_noise(mu_pub, mu_reach, mu_bh, 2), 538);
    let mu_f = mu(frequency_noiser(&reach, 3, gauss));
    assert_eq!(total_frequency_noise(mu_f, 10), 5720);
}

// ---------------------------------------------------------------- §10 E1

#[test]
fn ring_order_kat_e1() {
    let key = [0xED, 0xA0, 0x80, 0x41];
    assert_eq!(
        to_signed_decimal(&ordering_key(&key, "1")),
        "-91735093950468842629589116479330705250965313294"
    );
    // Rust's lossy decoding (three U+FFFD instead of one) gives another key.
    use sha1::Digest;
    let naive = format!("{}1", String::from_utf8_lossy(&key));
    let naive: [u8; 20] = sha1::Sha1::digest(naive.as_bytes()).into();
    assert_eq!(
        to_signed_decimal(&naive),
        "-619572578753902820047404806573671251952198267430"
    );
}

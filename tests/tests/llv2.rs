#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Liquid Legions v2 and reach-only LLv2 end to end: three duchies (real mTLS, real
//! components built from `plugins/llv2` and `plugins/ro-llv2`), data providers that check the
//! duchies' signed ElGamal keys, build and encrypt their sketches, and a consumer that opens
//! the sealed result. Without noise the result is exactly the estimator on the plaintext union
//! of the providers' sketches (and its frequency distribution); with noise it is within a
//! bound derived below.

use std::collections::BTreeMap;
use std::time::Duration;

use halo_identity::Principal;
use halo_proto::system::v1alpha::computation::State;
use halo_proto::system::v1alpha::computation::mpc_protocol_config::NoiseMechanism;
use halo_sim::llv2::{Llv2Request, expected};
use halo_sim::mc;
use halo_tests::*;
use hmss_core::noise::{DpParams, NoiseMechanism as Mechanism, NoiserOptions};
use llv2_core::sketch::{PlainRegister, union};

/// Creates a measurement, lets every data provider fulfil with `vectors`, returns the
/// consumer's verified result.
async fn measure(
    cluster: &halo_sim::Cluster,
    request: &Llv2Request,
    vectors: &[Vec<u32>],
) -> anyhow::Result<halo_sim::hmss::HmssResult> {
    let mut rng = rand::rng();
    let mc_ch = cluster.kingdom_channel(&Principal::MeasurementConsumer("mc1".into()))?;
    // One requisition per vector, for the first `vectors.len()` data providers.
    let providers = &cluster.options.data_providers[..vectors.len()];
    let m =
        halo_sim::llv2::create_llv2_measurement(mc_ch.clone(), "mc1", providers, request, &mut rng)
            .await?;
    for (dp, vector) in providers.iter().zip(vectors) {
        let who = Principal::DataProvider(dp.clone());
        let done = halo_sim::llv2::fulfill_llv2_requisitions_until(
            cluster.kingdom_channel(&who)?,
            cluster.identity(&who)?,
            &cluster.trust,
            |duchy: &str| cluster.duchy_channel(&who, duchy),
            vector,
            true,
            std::time::Instant::now() + TIMEOUT,
        )
        .await?;
        assert_eq!(done.len(), 1, "{done:?}");
    }
    m.result(mc_ch, &cluster.trust, Duration::from_secs(180))
        .await
}

fn population(seed: u64, providers: usize, registers: usize, mf: u32) -> Vec<Vec<u32>> {
    halo_sim::hmss::population(seed, providers, registers, mf, 0.3)
}

fn request(reach_only_protocol: bool, mf: u32, sketch_size: i64, width: f32) -> Llv2Request {
    Llv2Request {
        reach_only_protocol,
        reach_only: mf == 1,
        max_frequency: mf,
        sketch_size,
        vid_sampling_width: width,
        ..Llv2Request::default()
    }
}

fn assert_distribution(got: &BTreeMap<String, f64>, want: &BTreeMap<String, f64>, what: &str) {
    assert_eq!(
        got.keys().collect::<Vec<_>>(),
        want.keys().collect::<Vec<_>>(),
        "{what}: buckets"
    );
    for (k, v) in want {
        assert!(
            (got[k] - v).abs() < 1e-9,
            "{what}: bucket {k}: {} vs {v}",
            got[k]
        );
    }
}

/// Noise off: reach equals the estimator on the plaintext union sketch, the distribution the
/// union's, for both protocols, over populations with 1, 3 and 5 providers, a VID sampling
/// width below 1 and maximum frequencies 1, 3 and 20.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn llv2_and_ro_llv2_without_noise_equal_the_plaintext_union() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = start_plugin_cluster(
        dir.path(),
        &[halo_plugin_build::LLV2, halo_plugin_build::RO_LLV2],
        5,
    )
    .await
    .unwrap();
    // (seed, providers, population, MF, sketch size, width)
    let cases: [(u64, usize, usize, u32, i64, f32); 5] = [
        (1, 3, 3000, 3, 20_000, 1.0),
        (2, 1, 2000, 20, 10_000, 1.0),
        (3, 5, 3000, 20, 20_000, 0.5),
        (4, 3, 2000, 1, 10_000, 1.0),
        (5, 5, 4000, 5, 3_000, 0.7),
    ];
    for (seed, providers, registers, mf, size, width) in cases {
        let all = population(seed, providers, registers, mf);
        for ro in [false, true] {
            if ro && mf > 1 && seed != 3 {
                continue;
            }
            let r = request(ro, if ro { 1 } else { mf }, size, width);
            let result = measure(&cluster, &r, &all).await.unwrap();
            let (want_reach, want_freq) = expected(&all, &r).unwrap();
            let what = format!("seed {seed} ro {ro}");
            eprintln!("{what}: reach {} (expected {want_reach})", result.reach);
            assert_eq!(result.reach, want_reach, "{what}");
            if r.effective_max_frequency() == 1 {
                assert!(result.frequency.is_empty(), "{what}");
            } else {
                assert_distribution(&result.frequency, &want_freq, &what);
            }
        }
    }
    cluster.shutdown().await.unwrap();
}

/// The number of non-destroyed registers of the union sketch (the frequency's denominator).
fn valid_registers(vectors: &[Vec<u32>], r: &Llv2Request) -> usize {
    let params = r.sketch_params();
    let sketches: Vec<Vec<PlainRegister>> = vectors
        .iter()
        .map(|v| halo_sim::llv2::sketch(v, &params, 0.0, r.vid_sampling_width))
        .collect();
    let refs: Vec<&[PlainRegister]> = sketches.iter().map(Vec::as_slice).collect();
    union(&refs).iter().filter(|x| x.key > 0).count()
}

/// The standard deviation of the sum of the duchies' centred draws: discrete Gaussian `σ`
/// (the per-duchy `σ_d = σ/√D`), two-sided geometric `√(2p)/(1 − p)`.
fn sigma(options: &NoiserOptions) -> f64 {
    match *options {
        NoiserOptions::DiscreteGaussian {
            contributors,
            sigma_distributed,
            ..
        } => sigma_distributed * f64::from(contributors).sqrt(),
        NoiserOptions::Geometric { p, .. } => (2.0 * p).sqrt() / (1.0 - p),
    }
}

/// Noise on (geometric and discrete Gaussian, ε = 1, δ = 1e-9 everywhere), several seeds.
/// Derived bound: blinded-histogram noise and the frequency tuples are removed exactly
/// (mpc-crypto §5.3), so the active-register count is off by the sum of the duchies' centred
/// reach-DP draws `Z` (σ above, |Z| ≤ 5σ) plus at most 2 registers from publisher / padding
/// groups no larger than S (errata E2); the reach is the estimator at that count, so it lies
/// in `[est(A − 5σ − 2), est(A + 5σ + 2)]`. Each frequency bucket's count is off by the sum of
/// the duchies' centred draws (5σ_f) plus 1 (E2, last bucket); the proportions by
/// `(e + p·MF·e)/(V − MF·e)` with `e = 5σ_f + 1` and `V` the union's non-destroyed registers.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn llv2_noise_stays_within_the_derived_bound() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = start_plugin_cluster(
        dir.path(),
        &[halo_plugin_build::LLV2, halo_plugin_build::RO_LLV2],
        3,
    )
    .await
    .unwrap();
    let (epsilon, delta, mf, size) = (1.0, 1e-9, 4u32, 20_000i64);
    let dp = DpParams { epsilon, delta };
    let mut noisy = false;
    for (seed, mechanism, ro) in [
        (11u64, NoiseMechanism::Geometric, false),
        (12, NoiseMechanism::DiscreteGaussian, false),
        (13, NoiseMechanism::DiscreteGaussian, true),
        (14, NoiseMechanism::Geometric, true),
    ] {
        let m = if mechanism == NoiseMechanism::Geometric {
            Mechanism::Geometric
        } else {
            Mechanism::DiscreteGaussian
        };
        let reach_noise = llv2_core::noise::global_reach_noiser(&dp, 3, m)
            .unwrap()
            .unwrap();
        let freq_noise = llv2_core::noise::frequency_noiser(&dp, 3, m)
            .unwrap()
            .unwrap();
        let mut r = request(ro, if ro { 1 } else { mf }, size, 1.0);
        r.noise = mechanism;
        r.epsilon = epsilon;
        r.delta = delta;
        let vectors = population(seed, 3, 3000, mf);
        let result = measure(&cluster, &r, &vectors).await.unwrap();
        let mut exact = r.clone();
        exact.noise = NoiseMechanism::None;
        let (want_reach, want_freq) = expected(&vectors, &exact).unwrap();
        // The active count behind the exact estimate, and the reach bounds around it.
        let active = (0..size)
            .find(|&a| {
                llv2_core::estimator::estimate_reach(12.0, size as u64, a, 1.0).unwrap()
                    == want_reach
            })
            .unwrap();
        let k = (5.0 * sigma(&reach_noise)).ceil() as i64 + 2;
        let lo = llv2_core::estimator::estimate_reach(12.0, size as u64, (active - k).max(0), 1.0)
            .unwrap();
        let hi = llv2_core::estimator::estimate_reach(12.0, size as u64, active + k, 1.0).unwrap();
        eprintln!(
            "seed {seed} {mechanism:?} ro {ro}: reach {} in [{lo}, {hi}] (exact {want_reach})",
            result.reach
        );
        assert!(
            (lo..=hi).contains(&result.reach),
            "seed {seed}: reach {} outside [{lo}, {hi}]",
            result.reach
        );
        noisy |= result.reach != want_reach;
        if ro {
            continue;
        }
        let total: f64 = result.frequency.values().sum();
        assert!((total - 1.0).abs() < 1e-9, "proportions sum to {total}");
        let e = 5.0 * sigma(&freq_noise) + 1.0;
        let v = valid_registers(&vectors, &r) as f64;
        let mfe = f64::from(mf) * e;
        for b in 1..=mf {
            let key = b.to_string();
            let p = want_freq.get(&key).copied().unwrap_or(0.0);
            let got = result.frequency.get(&key).copied().unwrap_or(0.0);
            let tolerance = (e + p * mfe) / (v - mfe);
            assert!(
                (got - p).abs() <= tolerance,
                "seed {seed}: bucket {b}: {got} vs {p} beyond {tolerance}"
            );
            noisy |= got != p;
        }
    }
    assert!(noisy, "noise changed nothing in any run");
    cluster.shutdown().await.unwrap();
}

/// Bad parameters fail the computation with a message naming them; no data provider is
/// asked for data.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn llv2_invalid_parameters_fail_with_a_clear_message() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = start_plugin_cluster(
        dir.path(),
        &[halo_plugin_build::LLV2, halo_plugin_build::RO_LLV2],
        3,
    )
    .await
    .unwrap();
    let mut rng = rand::rng();
    let mc_ch = cluster
        .kingdom_channel(&Principal::MeasurementConsumer("mc1".into()))
        .unwrap();
    let base = request(false, 3, 10_000, 1.0);
    let cases: Vec<(Llv2Request, &str)> = vec![
        (
            Llv2Request {
                noise: NoiseMechanism::DiscreteGaussian,
                epsilon: 1e-6,
                ..base.clone()
            },
            "epsilon 0.000001 must be at least 0.00001",
        ),
        (
            Llv2Request {
                noise: NoiseMechanism::ContinuousGaussian,
                ..base.clone()
            },
            "noise mechanism CONTINUOUS_GAUSSIAN is not supported",
        ),
        (
            Llv2Request {
                decay_rate: 1.0,
                ..base.clone()
            },
            "sketch decay_rate 1 must be in (1, 700]",
        ),
        (
            Llv2Request {
                noise: NoiseMechanism::Geometric,
                delta: 2.0,
                ..base.clone()
            },
            "delta 2 must be in (0, 1]",
        ),
        (
            Llv2Request {
                vid_sampling_width: 0.0,
                ..base.clone()
            },
            "vid_sampling_interval_width 0 must be in (0, 1]",
        ),
        (
            Llv2Request {
                max_frequency: 5000,
                ..base.clone()
            },
            "maximum_frequency 5000 must be in [1, 1000]",
        ),
    ];
    for (r, expected) in cases {
        let m = halo_sim::llv2::create_llv2_measurement(
            mc_ch.clone(),
            "mc1",
            &cluster.options.data_providers,
            &r,
            &mut rng,
        )
        .await
        .unwrap();
        let done = m.wait(mc_ch.clone(), TIMEOUT).await.unwrap();
        assert_eq!(
            done.state,
            State::Failed as i32,
            "{}",
            mc::state_name(done.state)
        );
        assert!(
            done.failure_message.contains(expected),
            "failure message {:?} does not say {expected:?}",
            done.failure_message
        );
        for dp in &cluster.options.data_providers {
            let who = Principal::DataProvider(dp.clone());
            let listed = halo_sim::edp::list(cluster.kingdom_channel(&who).unwrap(), dp)
                .await
                .unwrap();
            assert!(listed.is_empty(), "{dp}: {listed:?}");
        }
    }
    cluster.shutdown().await.unwrap();
}

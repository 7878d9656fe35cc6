#![allow(clippy::unwrap_used, clippy::expect_used)]
//! HMSS end to end: three duchies run the real `hmss` plugin, data providers secret-share
//! their frequency vectors (seeds HPKE-sealed to the peer), the consumer opens the result.

use std::time::Duration;

use halo_identity::Principal;
use halo_proto::system::v1alpha::computation::State;
use halo_proto::system::v1alpha::computation::mpc_protocol_config::NoiseMechanism;
use halo_sim::mc::HmssRequest;
use halo_sim::{edp, mc};
use halo_tests::*;

/// Creates a measurement, lets every data provider fulfil with `vectors` (signing as
/// `signers[i]`), and returns the consumer's verified result, or the error.
async fn measure(
    cluster: &halo_sim::Cluster,
    request: &HmssRequest,
    vectors: &[Vec<u32>],
    signers: &[halo_identity::Identity],
) -> anyhow::Result<halo_sim::hmss::HmssResult> {
    let mut rng = rand::rng();
    let mc_ch = cluster.kingdom_channel(&Principal::MeasurementConsumer("mc1".into()))?;
    let m = mc::create_hmss_measurement(
        mc_ch.clone(),
        "mc1",
        &cluster.options.data_providers,
        request,
        &mut rng,
    )
    .await?;
    for ((dp, vector), signer) in cluster
        .options
        .data_providers
        .iter()
        .zip(vectors)
        .zip(signers)
    {
        let who = Principal::DataProvider(dp.clone());
        let done = edp::fulfill_hmss_requisitions(
            cluster.kingdom_channel(&who)?,
            signer,
            |duchy: &str| cluster.duchy_channel(&who, duchy),
            vector,
            Some(TIMEOUT),
            &mut rng,
        )
        .await?;
        assert_eq!(done.len(), 1, "{done:?}");
        assert_eq!(done[0].computation, m.computation());
        assert_eq!(
            done[0].registers,
            halo_sim::hmss::sampled(
                vector,
                request.vid_sampling_start,
                request.vid_sampling_width
            )?
            .len()
        );
    }
    m.result(mc_ch, &cluster.trust, Duration::from_secs(120))
        .await
}

fn signers(cluster: &halo_sim::Cluster) -> Vec<halo_identity::Identity> {
    cluster
        .options
        .data_providers
        .iter()
        .map(|dp| {
            cluster
                .identity(&Principal::DataProvider(dp.clone()))
                .unwrap()
                .clone()
        })
        .collect()
}

/// With discrete Gaussian noise at ε = 1, δ = 1e-9 (reach and frequency), the result lies
/// within 5σ of the truth, over several populations (mpc-crypto §5, §6.5):
/// * reach: `NE = M − f0 − (Y_r1 + Y_r2)`, each worker's `Y` a discrete Gaussian of
///   `σ_d = σ/√2` → the reach error has standard deviation `σ` (6.58 here);
/// * bucket `i < MF`: the count is off by `Y_i1 + Y_i2` (σ), the last bucket by the sum of all
///   the others' errors (σ·√MF); a proportion is a count over `tot = reach`, so
///   `|p̂_i − p_i| ≤ (e_i + p_i·5σ)/(R − 5σ)` with `e_i` = 5σ (5σ·√MF for the last bucket).
///
/// Noise must also show: across the runs at least one figure differs from the truth.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hmss_discrete_gaussian_noise_stays_within_five_sigma() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = start_hmss_cluster(dir.path()).await.unwrap();
    let signers = signers(&cluster);
    let (epsilon, delta, mf) = (1.0, 1e-9, 4u32);
    let options = hmss_core::noise::gaussian_options(
        &hmss_core::noise::DpParams { epsilon, delta },
        hmss_core::noise::HMSS_CONTRIBUTORS,
    )
    .unwrap();
    let hmss_core::noise::NoiserOptions::DiscreteGaussian {
        sigma_distributed, ..
    } = options
    else {
        panic!("{options:?}");
    };
    let sigma = sigma_distributed * 2f64.sqrt();
    assert!((sigma - 6.58).abs() < 0.01, "σ = {sigma}");
    let mut noisy = false;
    for (seed, reach_only) in [(1u64, false), (2, false), (3, false), (4, true), (5, true)] {
        let request = HmssRequest {
            reach_only,
            max_frequency: mf,
            noise: NoiseMechanism::DiscreteGaussian,
            epsilon,
            delta,
            ..HmssRequest::default()
        };
        let vectors = halo_sim::hmss::population(seed, 3, 20_000, mf, 0.3);
        let result = measure(&cluster, &request, &vectors, &signers)
            .await
            .unwrap();
        let (reach, freq) = halo_sim::hmss::truth(&vectors, request.effective_max_frequency());
        let r = reach as f64;
        let error = (result.reach - reach) as f64;
        eprintln!(
            "seed {seed} reach-only {reach_only}: reach {} vs {reach}",
            result.reach
        );
        assert!(
            error.abs() <= 5.0 * sigma,
            "seed {seed}: reach {} is {error} from the truth {reach}, beyond 5σ = {}",
            result.reach,
            5.0 * sigma
        );
        noisy |= error != 0.0;
        if reach_only {
            assert!(result.frequency.is_empty());
            continue;
        }
        let total: f64 = result.frequency.values().sum();
        assert!((total - 1.0).abs() < 1e-9, "proportions sum to {total}");
        for i in 1..=mf {
            let k = i.to_string();
            let (got, want) = (
                result.frequency.get(&k).copied().unwrap_or(0.0),
                freq.get(&k).copied().unwrap_or(0.0),
            );
            let count_bound = if i == mf {
                5.0 * sigma * f64::from(mf).sqrt()
            } else {
                5.0 * sigma
            };
            let bound = (count_bound + want * 5.0 * sigma) / (r - 5.0 * sigma);
            eprintln!("  bucket {k}: {got:.6} vs {want:.6} (bound {bound:.6})");
            assert!(
                (got - want).abs() <= bound,
                "seed {seed}: bucket {k} is {got}, truth {want}, bound {bound}"
            );
            noisy |= got != want;
        }
    }
    assert!(
        noisy,
        "no run differed from the truth: was noise added at all?"
    );
    cluster.shutdown().await.unwrap();
}

/// A data provider whose seed signature does not match the certificate it names (here: its
/// own certificate, but another provider's key) makes the computation fail at the duchy that
/// checks the seed, with a message that says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hmss_seed_with_a_bad_signature_fails_the_computation() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = start_hmss_cluster(dir.path()).await.unwrap();
    let mut signers = signers(&cluster);
    signers[0].key_pem = signers[1].key_pem.clone();
    let vectors = halo_sim::hmss::population(9, 3, 5_000, 3, 0.3);
    let e = measure(&cluster, &HmssRequest::default(), &vectors, &signers)
        .await
        .unwrap_err();
    let e = format!("{e:#}");
    assert!(e.contains("ended FAILED"), "{e}");
    assert!(
        e.contains("signature") && e.contains("dataProviders/edp1/certificates/"),
        "{e}"
    );
    cluster.shutdown().await.unwrap();
}

async fn run(reach_only: bool) {
    let dir = tempfile::tempdir().unwrap();
    let cluster = start_hmss_cluster(dir.path()).await.unwrap();
    let request = HmssRequest {
        reach_only,
        max_frequency: 5,
        noise: NoiseMechanism::None,
        ..HmssRequest::default()
    };
    let vectors = halo_sim::hmss::population(7, 3, 20_000, 5, 0.3);
    let result = measure(&cluster, &request, &vectors, &signers(&cluster))
        .await
        .unwrap();
    let (reach, freq) = halo_sim::hmss::truth(&vectors, request.effective_max_frequency());
    assert_eq!(result.reach, reach);
    assert_eq!(result.frequency_vector_size, 20_000);
    if !reach_only {
        assert_eq!(result.frequency.len(), freq.len());
        for (k, v) in &freq {
            assert!(
                (result.frequency[k] - v).abs() < 1e-12,
                "bucket {k}: {} vs {v}",
                result.frequency[k]
            );
        }
    }
    cluster.shutdown().await.unwrap();
}

/// With a VID sampling interval the data providers send only the registers in
/// `[start, start + width)` (here a wrapped interval) and the aggregator scales the reach by
/// `1/width`: without noise the result is exactly that of the sampled truth.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hmss_vid_sampling_scales_the_reach_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = start_hmss_cluster(dir.path()).await.unwrap();
    let vectors = halo_sim::hmss::population(8, 3, 20_000, 3, 0.3);
    for reach_only in [false, true] {
        let request = HmssRequest {
            reach_only,
            vid_sampling_start: 0.75,
            vid_sampling_width: 0.5,
            ..HmssRequest::default()
        };
        let result = measure(&cluster, &request, &vectors, &signers(&cluster))
            .await
            .unwrap();
        let (reach, freq) =
            halo_sim::hmss::sampled_truth(&vectors, request.effective_max_frequency(), 0.75, 0.5)
                .unwrap();
        assert_eq!(result.reach, reach);
        assert_eq!(result.frequency_vector_size, 10_000);
        if !reach_only {
            for (k, v) in &freq {
                assert!((result.frequency[k] - v).abs() < 1e-12, "bucket {k}");
            }
        }
        // And it estimates the whole population's reach.
        let (full, _) = halo_sim::hmss::truth(&vectors, request.effective_max_frequency());
        assert!(
            (result.reach - full).abs() < full / 20,
            "{} vs {full}",
            result.reach
        );
    }
    cluster.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hmss_reach_and_frequency_without_noise_is_exact() {
    run(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hmss_reach_only_without_noise_is_exact() {
    run(true).await;
}

/// The Kingdom accepts any DP parameters; the hmss plugin rejects invalid ones when a duchy
/// starts the computation, so the measurement ends FAILED naming the bad parameter (before
/// any data provider is asked for data).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hmss_invalid_dp_parameters_fail_the_computation_with_a_clear_message() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = start_hmss_cluster(dir.path()).await.unwrap();
    let mut rng = rand::rng();
    let mc_ch = cluster
        .kingdom_channel(&Principal::MeasurementConsumer("mc1".into()))
        .unwrap();
    let cases = [
        (0.0, 1e-9, "reach DP params: epsilon 0 must be > 0"),
        (1.0, 0.0, "reach DP params: delta 0 must be > 0"),
    ];
    for (epsilon, delta, expected) in cases {
        let request = HmssRequest {
            noise: NoiseMechanism::DiscreteGaussian,
            epsilon,
            delta,
            ..HmssRequest::default()
        };
        let m = mc::create_hmss_measurement(
            mc_ch.clone(),
            "mc1",
            &cluster.options.data_providers,
            &request,
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
            "failure message {:?} does not name the bad parameter ({expected:?})",
            done.failure_message
        );
        assert!(done.encrypted_result.is_empty());
        // The consumer's view of it: an error naming the state and the reason.
        let e = format!(
            "{:#}",
            m.open(mc_ch.clone(), &cluster.trust, &done)
                .await
                .unwrap_err()
        );
        assert!(e.contains("ended FAILED") && e.contains(expected), "{e}");
        // Nobody was asked for data.
        for dp in &cluster.options.data_providers {
            let who = Principal::DataProvider(dp.clone());
            let listed = edp::list(cluster.kingdom_channel(&who).unwrap(), dp)
                .await
                .unwrap();
            assert!(listed.is_empty(), "{dp}: {listed:?}");
        }
    }
    cluster.shutdown().await.unwrap();
}

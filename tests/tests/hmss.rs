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

async fn run(reach_only: bool) {
    let dir = tempfile::tempdir().unwrap();
    let cluster = start_hmss_cluster(dir.path()).await.unwrap();
    let mut rng = rand::rng();
    let request = HmssRequest {
        reach_only,
        max_frequency: 5,
        noise: NoiseMechanism::None,
        ..HmssRequest::default()
    };
    let mc_ch = cluster
        .kingdom_channel(&Principal::MeasurementConsumer("mc1".into()))
        .unwrap();
    let m = mc::create_hmss_measurement(
        mc_ch.clone(),
        "mc1",
        &cluster.options.data_providers,
        &request,
        &mut rng,
    )
    .await
    .unwrap();
    let vectors = halo_sim::hmss::population(7, 3, 20_000, 5, 0.3);
    for (dp, vector) in cluster.options.data_providers.iter().zip(&vectors) {
        let who = Principal::DataProvider(dp.clone());
        let done = edp::fulfill_hmss_requisitions(
            cluster.kingdom_channel(&who).unwrap(),
            cluster.identity(&who).unwrap(),
            |duchy: &str| cluster.duchy_channel(&who, duchy),
            vector,
            Some(TIMEOUT),
            &mut rng,
        )
        .await
        .unwrap();
        assert_eq!(done.len(), 1, "{done:?}");
        assert_eq!(done[0].registers, 20_000);
        assert_eq!(done[0].computation, m.computation());
    }
    let result = m
        .result(mc_ch, &cluster.trust, Duration::from_secs(120))
        .await
        .unwrap();
    let (reach, freq) = halo_sim::hmss::truth(&vectors, if reach_only { 1 } else { 5 });
    assert_eq!(result.reach, reach);
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

#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The duchy host core end to end with the in-crate test protocol: Kingdom + three duchies
//! over real gRPC with mutual TLS on loopback, storage in temp dirs.

use std::time::Duration;

use halo_proto::system::v1alpha::computation::State;
use halo_tests::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn test_sum_measurement_matches_ground_truth() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = start_cluster(dir.path()).await.unwrap();
    let created = create(&cluster, spec(1.0)).await.unwrap();
    let vectors: Vec<Vec<u32>> = (0..3).map(|i| vector(i + 1, 5_000)).collect();
    fulfil_all(&cluster, &vectors).await.unwrap();
    let m = wait_for_result(&cluster, &created).await.unwrap();
    assert_eq!(
        m.state,
        State::Succeeded as i32,
        "failure: {}",
        m.failure_message
    );
    let result: serde_json::Value = serde_json::from_slice(&m.encrypted_result).unwrap();
    let (reach, hist) = truth(&vectors);
    assert_eq!(result["reach"].as_u64().unwrap(), reach);
    assert_eq!(result["registers"].as_u64().unwrap(), 5_000);
    let got: std::collections::BTreeMap<String, u64> =
        serde_json::from_value(result["frequency"].clone()).unwrap();
    assert_eq!(got, hist);
    assert!(
        reach > 1000,
        "the data should overlap only partly: reach {reach}"
    );

    // Every duchy pinned the same implementation and finished.
    let gid = created
        .measurement
        .computation
        .trim_start_matches("computations/")
        .to_string();
    for d in halo_sim::DUCHIES {
        let row = cluster.duchies[d]
            .core
            .store
            .get(&gid)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(row.pin.name, "test-sum");
        assert_eq!(
            wait_local_terminal(&cluster, d, &gid).await.unwrap(),
            "COMPLETE",
            "{d}"
        );
    }
    cluster.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn invalid_dp_params_fail_the_computation_with_a_clear_message() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = start_cluster(dir.path()).await.unwrap();
    let created = create(&cluster, spec(0.0)).await.unwrap();
    let m = wait_for_result(&cluster, &created).await.unwrap();
    assert_eq!(m.state, State::Failed as i32);
    assert!(
        m.failure_message.contains("epsilon"),
        "{}",
        m.failure_message
    );
    cluster.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_duchy_restart_mid_computation_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = start_cluster(dir.path()).await.unwrap();
    let created = create(&cluster, spec(1.0)).await.unwrap();
    // Once every duchy has published its params (requisitions become listable), stop worker2,
    // fulfil what is not assigned to it, bring it back (same data dir, same address: its
    // herald resumes from its persisted token) and fulfil the rest.
    wait_for_requisitions(&cluster).await.unwrap();
    cluster.stop_duchy("worker2").await.unwrap();
    let vectors: Vec<Vec<u32>> = (0..3).map(|i| vector(i + 7, 2_000)).collect();
    fulfil_where(&cluster, &vectors, |d| d != "worker2")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    cluster.start_duchy("worker2").await.unwrap();
    fulfil_where(&cluster, &vectors, |d| d == "worker2")
        .await
        .unwrap();
    let m = wait_for_result(&cluster, &created).await.unwrap();
    assert_eq!(
        m.state,
        State::Succeeded as i32,
        "failure: {}",
        m.failure_message
    );
    let result: serde_json::Value = serde_json::from_slice(&m.encrypted_result).unwrap();
    assert_eq!(result["reach"].as_u64().unwrap(), truth(&vectors).0);
    cluster.shutdown().await.unwrap();
}

fn registry_with(worker1: halo_testkit::TestSumProtocol) -> halo_tests::RegistryFn {
    let worker1 = std::sync::Arc::new(worker1);
    std::sync::Arc::new(move |id: &str| {
        let p: std::sync::Arc<dyn halo_protocol::Protocol> = if id == "worker1" {
            worker1.clone()
        } else {
            std::sync::Arc::new(halo_testkit::TestSumProtocol::new("1.0.0"))
        };
        std::sync::Arc::new(halo_protocol::StaticRegistry::new(vec![p]))
            as std::sync::Arc<dyn halo_protocol::ProtocolRegistry>
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn transient_failures_are_retried_and_too_many_attempts_fail_the_computation() {
    init_logging();
    // worker1 fails SHUFFLE_PHASE transiently twice, then succeeds.
    let dir = tempfile::tempdir().unwrap();
    let flaky = halo_testkit::TestSumProtocol::new("1.0.0");
    flaky
        .transient_failures
        .store(2, std::sync::atomic::Ordering::SeqCst);
    let mut opts = halo_sim::ClusterOptions::new(dir.path(), registry_with(flaky));
    opts.mill.retry_base = Duration::from_millis(20);
    let cluster = halo_sim::Cluster::start(opts).await.unwrap();
    let created = create(&cluster, spec(1.0)).await.unwrap();
    let vectors: Vec<Vec<u32>> = (0..3).map(|i| vector(i + 20, 1_000)).collect();
    fulfil_all(&cluster, &vectors).await.unwrap();
    let m = wait_for_result(&cluster, &created).await.unwrap();
    assert_eq!(
        m.state,
        State::Succeeded as i32,
        "failure: {}",
        m.failure_message
    );
    let gid = created
        .measurement
        .computation
        .trim_start_matches("computations/")
        .to_string();
    let log = cluster.duchies["worker1"]
        .core
        .store
        .audit_log(&gid)
        .await
        .unwrap();
    assert_eq!(log.iter().filter(|(_, e, _)| e == "transient").count(), 2);
    cluster.shutdown().await.unwrap();

    // worker1 always fails transiently: after max_attempts the computation fails.
    let dir = tempfile::tempdir().unwrap();
    let mut stuck = halo_testkit::TestSumProtocol::new("1.0.0");
    stuck.always_transient = true;
    let mut opts = halo_sim::ClusterOptions::new(dir.path(), registry_with(stuck));
    opts.mill.retry_base = Duration::from_millis(10);
    opts.mill.max_attempts = 3;
    let cluster = halo_sim::Cluster::start(opts).await.unwrap();
    let created = create(&cluster, spec(1.0)).await.unwrap();
    fulfil_all(&cluster, &vectors).await.unwrap();
    let m = wait_for_result(&cluster, &created).await.unwrap();
    assert_eq!(m.state, State::Failed as i32);
    assert!(
        m.failure_message.contains("maximum of 3 attempts"),
        "{}",
        m.failure_message
    );
    cluster.shutdown().await.unwrap();
}

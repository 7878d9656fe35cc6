#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Crash recovery (issue 9), in process: Kingdom + three duchies over real gRPC with mutual
//! TLS on loopback, storage in temp dirs, the in-crate test protocol. One test per gap the
//! code read found; each failed on the code before the fix (see the closing note).
//! Killing whole processes at every point is the kill-point harness's job
//! (host/cli/tests/kill_points.rs).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use halo_duchy::store::InputRow;
use halo_identity::Principal;
use halo_proto::system::v1alpha::computation::State;
use halo_proto::system::v1alpha::computation_control_client::ComputationControlClient;
use halo_protocol::{Protocol, ProtocolRegistry, StaticRegistry};
use halo_sim::{Cluster, ClusterOptions};
use halo_testkit::{
    AGGREGATION_PHASE_INPUT, SHUFFLE_PHASE, TestSumProtocol, WAIT_ON_AGGREGATION_INPUT,
};
use halo_tests::*;

/// Every duchy runs `TestSumProtocol::new`, except `special` which runs `p`.
fn registry_with(special: &'static str, p: TestSumProtocol) -> RegistryFn {
    let p = Arc::new(p);
    Arc::new(move |id: &str| {
        let chosen: Arc<dyn Protocol> = if id == special {
            p.clone()
        } else {
            Arc::new(TestSumProtocol::new("1.0.0"))
        };
        Arc::new(StaticRegistry::new(vec![chosen])) as Arc<dyn ProtocolRegistry>
    })
}

fn gid_of(created: &halo_sim::mc::CreatedMeasurement) -> String {
    created
        .measurement
        .computation
        .trim_start_matches("computations/")
        .to_string()
}

async fn wait_stage_past(cluster: &Cluster, duchy: &str, gid: &str, stage: i32) -> i32 {
    let start = std::time::Instant::now();
    loop {
        let row = cluster.duchies[duchy]
            .core
            .store
            .get(gid)
            .await
            .unwrap()
            .unwrap();
        if row.stage > stage || row.terminal.is_some() {
            return row.stage;
        }
        assert!(
            start.elapsed() < TIMEOUT,
            "{duchy} stayed in stage {} (terminal {:?})",
            row.stage,
            row.terminal
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Records both aggregation inputs in the aggregator's store directly, the way a delivery
/// leaves them when the process dies right after `record_input` committed (before the
/// computation moved on). Returns worker2's payload.
async fn record_inputs_without_moving_on(cluster: &Cluster, gid: &str) -> Vec<u8> {
    let agg = &cluster.duchies["aggregator"].core;
    let mut worker2_payload = Vec::new();
    for sender in ["worker1", "worker2"] {
        let payload = format!("payload from {sender}").into_bytes();
        let key = halo_duchy::blobs::input_key(gid, AGGREGATION_PHASE_INPUT, sender).unwrap();
        let (size, sha256) =
            halo_duchy::blobs::write_blob(&agg.store.blob_path(&key).unwrap(), &payload)
                .await
                .unwrap();
        let recorded = agg
            .store
            .record_input(
                gid,
                WAIT_ON_AGGREGATION_INPUT,
                &InputRow {
                    description: AGGREGATION_PHASE_INPUT,
                    sender: sender.into(),
                    blob: key,
                    size: size as i64,
                    sha256,
                },
            )
            .await
            .unwrap();
        assert!(recorded);
        if sender == "worker2" {
            worker2_payload = payload;
        }
    }
    // Nothing re-evaluates on its own: still waiting although every input is here.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let row = agg.store.get(gid).await.unwrap().unwrap();
    assert_eq!(row.stage, WAIT_ON_AGGREGATION_INPUT);
    worker2_payload
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_duplicate_delivery_moves_on_a_stage_whose_inputs_were_recorded_before_a_crash() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = start_cluster(dir.path()).await.unwrap();
    let gid = computation_waiting_at_aggregator(&cluster).await.unwrap();
    let payload = record_inputs_without_moving_on(&cluster, &gid).await;

    // worker2 retries its delivery (it never got the acknowledgement): same bytes.
    let ch = cluster
        .duchy_channel(&Principal::Duchy("worker2".into()), "aggregator")
        .unwrap();
    ComputationControlClient::new(ch)
        .advance_computation(tokio_stream::iter(advance_stream(
            &gid,
            AGGREGATION_PHASE_INPUT,
            &payload,
            1024,
        )))
        .await
        .unwrap();
    let stage = wait_stage_past(&cluster, "aggregator", &gid, WAIT_ON_AGGREGATION_INPUT).await;
    assert!(stage > WAIT_ON_AGGREGATION_INPUT);
    cluster.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_restart_moves_on_a_stage_whose_inputs_were_recorded_before_a_crash() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = start_cluster(dir.path()).await.unwrap();
    let gid = computation_waiting_at_aggregator(&cluster).await.unwrap();
    record_inputs_without_moving_on(&cluster, &gid).await;
    cluster.stop_duchy("aggregator").await.unwrap();
    cluster.start_duchy("aggregator").await.unwrap();
    let stage = wait_stage_past(&cluster, "aggregator", &gid, WAIT_ON_AGGREGATION_INPUT).await;
    assert!(stage > WAIT_ON_AGGREGATION_INPUT);
    cluster.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_transient_start_error_is_retried_not_fatal() {
    let dir = tempfile::tempdir().unwrap();
    let flaky = TestSumProtocol::new("1.0.0");
    flaky.start_transient_failures.store(2, Ordering::SeqCst);
    let mut opts = ClusterOptions::new(dir.path(), registry_with("worker1", flaky));
    opts.mill.retry_base = Duration::from_millis(20);
    let cluster = Cluster::start(opts).await.unwrap();
    let created = create(&cluster, spec(1.0)).await.unwrap();
    let vectors: Vec<Vec<u32>> = (0..3).map(|i| vector(i + 30, 1_000)).collect();
    fulfil_all(&cluster, &vectors).await.unwrap();
    let m = wait_for_result(&cluster, &created).await.unwrap();
    assert_exact_test_sum(&m, &vectors);
    let log = cluster.duchies["worker1"]
        .core
        .store
        .audit_log(&gid_of(&created))
        .await
        .unwrap();
    let transient = log
        .iter()
        .filter(|(_, e, d)| e == "transient" && d.contains("start"))
        .count();
    assert_eq!(transient, 2, "{log:#?}");
    cluster.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stage_that_outlives_its_lease_runs_once() {
    let dir = tempfile::tempdir().unwrap();
    let mut slow = TestSumProtocol::new("1.0.0");
    slow.shuffle_delay = Duration::from_millis(2_000);
    let mut opts = ClusterOptions::new(dir.path(), registry_with("worker2", slow));
    // Four leases long; two workers, so another one is free to take an expired lease over.
    opts.mill.lease = Duration::from_millis(500);
    opts.mill.workers = 2;
    let cluster = Cluster::start(opts).await.unwrap();
    let created = create(&cluster, spec(1.0)).await.unwrap();
    let vectors: Vec<Vec<u32>> = (0..3).map(|i| vector(i + 40, 1_000)).collect();
    fulfil_all(&cluster, &vectors).await.unwrap();
    let m = wait_for_result(&cluster, &created).await.unwrap();
    assert_exact_test_sum(&m, &vectors);
    let log = cluster.duchies["worker2"]
        .core
        .store
        .audit_log(&gid_of(&created))
        .await
        .unwrap();
    let runs = |event: &str| {
        log.iter()
            .filter(|(_, e, d)| e == event && d.starts_with("SHUFFLE_PHASE "))
            .count()
    };
    assert_eq!(runs("claim"), 1, "claimed once: {log:#?}");
    assert_eq!(runs("executed"), 1, "executed once: {log:#?}");
    let _ = SHUFFLE_PHASE;
    cluster.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_peer_down_longer_than_the_attempt_budget_does_not_fail_the_computation() {
    let dir = tempfile::tempdir().unwrap();
    let mut opts = ClusterOptions::new(dir.path(), test_sum_registry());
    // Before the fix, 2 attempts 20–100 ms apart were the whole budget for an absent peer.
    opts.mill.max_attempts = 2;
    opts.mill.retry_base = Duration::from_millis(20);
    opts.mill.retry_max = Duration::from_millis(100);
    init_logging();
    let mut cluster = Cluster::start(opts).await.unwrap();
    let created = create(&cluster, spec(1.0)).await.unwrap();
    let gid = gid_of(&created);
    wait_for_requisitions(&cluster).await.unwrap();
    cluster.stop_duchy("aggregator").await.unwrap();
    let vectors: Vec<Vec<u32>> = (0..3).map(|i| vector(i + 50, 1_000)).collect();
    fulfil_where(&cluster, &vectors, |d| d != "aggregator")
        .await
        .unwrap();
    // The workers finish their stages and wait to deliver to the aggregator: 40+ retries.
    tokio::time::sleep(Duration::from_secs(4)).await;
    for w in ["worker1", "worker2"] {
        let row = cluster.duchies[w]
            .core
            .store
            .get(&gid)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(row.terminal, None, "{w} gave up waiting");
        let waits = cluster.duchies[w]
            .core
            .store
            .audit_log(&gid)
            .await
            .unwrap()
            .iter()
            .filter(|(_, e, _)| e == "waiting")
            .count();
        assert!(waits > 2, "{w} waited {waits} times");
    }
    cluster.start_duchy("aggregator").await.unwrap();
    fulfil_where(&cluster, &vectors, |d| d == "aggregator")
        .await
        .unwrap();
    let m = wait_for_result(&cluster, &created).await.unwrap();
    assert_exact_test_sum(&m, &vectors);
    cluster.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_real_failure_still_fails_promptly_and_names_duchy_stage_and_attempt() {
    let dir = tempfile::tempdir().unwrap();
    let mut broken = TestSumProtocol::new("1.0.0");
    broken.always_transient = true;
    let mut opts = ClusterOptions::new(dir.path(), registry_with("worker1", broken));
    opts.mill.max_attempts = 3;
    opts.mill.retry_base = Duration::from_millis(20);
    let cluster = Cluster::start(opts).await.unwrap();
    let created = create(&cluster, spec(1.0)).await.unwrap();
    let vectors: Vec<Vec<u32>> = (0..3).map(|i| vector(i + 60, 500)).collect();
    fulfil_all(&cluster, &vectors).await.unwrap();
    let m = wait_for_result(&cluster, &created).await.unwrap();
    assert_eq!(m.state, State::Failed as i32);
    for needle in [
        "worker1",
        "SHUFFLE_PHASE",
        "attempt 4",
        "injected transient failure",
    ] {
        assert!(
            m.failure_message.contains(needle),
            "{needle:?} not in {:?}",
            m.failure_message
        );
    }
    assert_eq!(
        wait_local_terminal(&cluster, "worker1", &gid_of(&created))
            .await
            .unwrap(),
        "FAILED"
    );
    cluster.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failure_is_reported_until_the_kingdom_acknowledges_it() {
    let dir = tempfile::tempdir().unwrap();
    let mut opts = ClusterOptions::new(dir.path(), test_sum_registry());
    opts.mill.computation_deadline = Duration::from_secs(4);
    opts.mill.retry_base = Duration::from_millis(50);
    opts.mill.retry_max = Duration::from_millis(300);
    init_logging();
    let mut cluster = Cluster::start(opts).await.unwrap();
    // Nobody fulfils: the computation waits until its deadline, which passes while the
    // Kingdom is down.
    let created = create(&cluster, spec(1.0)).await.unwrap();
    let gid = gid_of(&created);
    wait_at_aggregator_input(&cluster, &gid).await.unwrap();
    cluster.kingdom.take().unwrap().shutdown().await.unwrap();
    let agg = cluster.duchies["aggregator"].core.clone();
    let start = std::time::Instant::now();
    loop {
        let row = agg.store.get(&gid).await.unwrap().unwrap();
        if row.terminal.is_some() {
            assert_eq!(row.terminal.as_deref(), Some("FAILING"));
            break;
        }
        assert!(start.elapsed() < TIMEOUT, "the deadline never failed it");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The Kingdom stays down for a while: the failure is kept, not dropped, and the
    // computation is not marked FAILED as if the Kingdom knew.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let row = agg.store.get(&gid).await.unwrap().unwrap();
    assert_eq!(row.terminal.as_deref(), Some("FAILING"));
    let (message, acked) = agg.store.failure(&gid).await.unwrap().unwrap();
    assert!(!acked);
    assert!(message.contains("deadline"), "{message}");

    cluster.restart_kingdom().await.unwrap();
    let start = std::time::Instant::now();
    loop {
        let row = agg.store.get(&gid).await.unwrap().unwrap();
        if row.terminal.as_deref() == Some("FAILED") {
            break;
        }
        assert!(start.elapsed() < TIMEOUT, "never acknowledged");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let m = wait_for_result(&cluster, &created).await.unwrap();
    assert_eq!(m.state, State::Failed as i32);
    assert!(
        m.failure_message.contains("deadline"),
        "{}",
        m.failure_message
    );
    cluster.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_restart_moves_on_a_stage_whose_kingdom_state_was_recorded_before_a_crash() {
    use halo_testkit::WAIT_TO_START;
    use prost::Message as _;
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = start_cluster(dir.path()).await.unwrap();
    let created = create(&cluster, spec(1.0)).await.unwrap();
    let gid = gid_of(&created);
    // worker1 (first non-aggregator) parks in WAIT_TO_START until PENDING_COMPUTATION.
    let start = std::time::Instant::now();
    loop {
        let row = cluster.duchies["worker1"]
            .core
            .store
            .get(&gid)
            .await
            .unwrap();
        if row.is_some_and(|r| r.stage == WAIT_TO_START) {
            break;
        }
        assert!(start.elapsed() < TIMEOUT);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    cluster.stop_duchy("worker1").await.unwrap();
    // The herald recorded the new Kingdom state, then the process died before moving on.
    let store = halo_duchy::store::Store::open(&dir.path().join("duchy-worker1"))
        .await
        .unwrap();
    let row = store.get(&gid).await.unwrap().unwrap();
    let mut c =
        halo_proto::system::v1alpha::Computation::decode(row.computation.as_slice()).unwrap();
    c.state = State::PendingComputation as i32;
    store
        .update_snapshot(&gid, &c.encode_to_vec(), c.state, &[])
        .await
        .unwrap();
    store.close().await;
    cluster.start_duchy("worker1").await.unwrap();
    let stage = wait_stage_past(&cluster, "worker1", &gid, WAIT_TO_START).await;
    assert!(stage > WAIT_TO_START);
    cluster.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_kingdom_restart_after_fulfilment_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = start_cluster(dir.path()).await.unwrap();
    let created = create(&cluster, spec(1.0)).await.unwrap();
    let vectors: Vec<Vec<u32>> = (0..3).map(|i| vector(i + 80, 2_000)).collect();
    fulfil_all(&cluster, &vectors).await.unwrap();
    // Down for 3 s right after the uploads (the duchies' heralds lose their streams, their
    // Kingdom calls wait without spending attempts), then back on the same address and data.
    // The kill-point harness kills the Kingdom at chosen points of a run.
    cluster.kingdom.take().unwrap().shutdown().await.unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let agg = cluster.duchies["aggregator"].core.clone();
    let gid = gid_of(&created);
    let row = agg.store.get(&gid).await.unwrap().unwrap();
    assert_eq!(row.terminal, None, "nothing finishes without the Kingdom");
    cluster.restart_kingdom().await.unwrap();
    let m = wait_for_result(&cluster, &created).await.unwrap();
    assert_exact_test_sum(&m, &vectors);
    cluster.shutdown().await.unwrap();
}

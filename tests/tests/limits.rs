#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Bounded resources over real gRPC + mTLS on loopback (issue 8, item 5): each limit is hit
//! and answered with the right status, nothing stays on disk from refused or aborted uploads
//! (nor after a restart), and a connection that never finishes its TLS handshake is closed.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use halo_duchy::mill::advance_header;
use halo_identity::Principal;
use halo_proto::api::v2alpha as api;
use halo_proto::system::v1alpha as sys;
use halo_protocol::SystemProtocol;
use halo_sim::{Cluster, ClusterOptions, edp};
use halo_testkit::AGGREGATION_PHASE_INPUT;
use halo_tests::*;
use sys::computation_control_client::ComputationControlClient;
use tokio::io::AsyncReadExt;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Code;

/// HMSS payload bound with `max_register_count` 1000 and three requisitions:
/// 1000 × 5 + 3 × 16 KiB + 64 KiB.
const BOUND: u64 = 1000 * 5 + 3 * (16 << 10) + (64 << 10);

async fn start(dir: &Path, tune: impl FnOnce(&mut ClusterOptions)) -> Cluster {
    init_logging();
    let mut options = ClusterOptions::new(dir, test_sum_registry());
    options.duchy_limits.max_register_count = 1000;
    options.duchy_limits.max_advance_streams_per_peer = 2;
    tune(&mut options);
    Cluster::start(options).await.unwrap()
}

/// Every file under `dir` (recursively).
fn files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(files(&p));
        } else {
            out.push(p);
        }
    }
    out
}

fn partial(dir: &Path) -> Vec<PathBuf> {
    files(dir)
        .into_iter()
        .filter(|p| p.to_string_lossy().contains(".tmp-"))
        .collect()
}

fn inputs_dir(cluster: &Cluster, gid: &str) -> PathBuf {
    cluster.duchies["aggregator"]
        .core
        .store
        .blob_root()
        .join("inputs")
        .join(gid)
}

async fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < TIMEOUT, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn oversized_delivery_is_resource_exhausted_and_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = start(dir.path(), |_| {}).await;
    let gid = computation_waiting_at_aggregator(&cluster).await.unwrap();
    let ch = cluster
        .duchy_channel(&Principal::Duchy("worker1".into()), "aggregator")
        .unwrap();
    let mut client = ComputationControlClient::new(ch);

    // 16 KiB chunks up to twice the bound derived from the protocol config.
    let chunk = vec![7u8; 16 << 10];
    let mut msgs = vec![advance_header(
        SystemProtocol::HonestMajorityShareShuffle,
        &gid,
        AGGREGATION_PHASE_INPUT,
    )];
    msgs.extend((0..(2 * BOUND as usize) / chunk.len()).map(|_| advance_chunk(&chunk)));
    let err = client
        .advance_computation(tokio_stream::iter(msgs))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    assert!(
        err.message().contains(&BOUND.to_string()),
        "the message names the bound: {}",
        err.message()
    );
    // Neither a blob nor a partial file remains, and nothing was recorded.
    assert_eq!(files(&inputs_dir(&cluster, &gid)), Vec::<PathBuf>::new());
    let agg = &cluster.duchies["aggregator"].core;
    assert!(
        agg.store
            .input(&gid, AGGREGATION_PHASE_INPUT, "worker1")
            .await
            .unwrap()
            .is_none()
    );

    // Exactly the bound is accepted: the limit is the bound, not less.
    let mut msgs = vec![advance_header(
        SystemProtocol::HonestMajorityShareShuffle,
        &gid,
        AGGREGATION_PHASE_INPUT,
    )];
    msgs.extend(
        vec![0u8; BOUND as usize]
            .chunks(16 << 10)
            .map(advance_chunk),
    );
    client
        .advance_computation(tokio_stream::iter(msgs))
        .await
        .unwrap();
    let input = agg
        .store
        .input(&gid, AGGREGATION_PHASE_INPUT, "worker1")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(input.size as u64, BOUND);
    cluster.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn message_above_the_message_limit_is_resource_exhausted() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = start(dir.path(), |o| {
        o.duchy_limits.server.max_message_bytes = 64 << 10;
    })
    .await;
    let gid = computation_waiting_at_aggregator(&cluster).await.unwrap();
    let ch = cluster
        .duchy_channel(&Principal::Duchy("worker1".into()), "aggregator")
        .unwrap();
    let mut client = ComputationControlClient::new(ch);
    let msgs = vec![
        advance_header(
            SystemProtocol::HonestMajorityShareShuffle,
            &gid,
            AGGREGATION_PHASE_INPUT,
        ),
        advance_chunk(&vec![1u8; 100 << 10]),
    ];
    let err = client
        .advance_computation(tokio_stream::iter(msgs))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    assert!(partial(&inputs_dir(&cluster, &gid)).is_empty());
    cluster.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_deliveries_per_peer_are_capped_and_aborted_uploads_leave_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = start(dir.path(), |_| {}).await;
    let gid = computation_waiting_at_aggregator(&cluster).await.unwrap();
    let ch = cluster
        .duchy_channel(&Principal::Duchy("worker1".into()), "aggregator")
        .unwrap();

    // Two uploads that send a header and one chunk, then hang.
    let mut held = Vec::new();
    for _ in 0..2 {
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        tx.send(advance_header(
            SystemProtocol::HonestMajorityShareShuffle,
            &gid,
            AGGREGATION_PHASE_INPUT,
        ))
        .await
        .unwrap();
        tx.send(advance_chunk(b"partial")).await.unwrap();
        let mut client = ComputationControlClient::new(ch.clone());
        let call =
            tokio::spawn(async move { client.advance_computation(ReceiverStream::new(rx)).await });
        held.push((tx, call));
    }
    let agg = cluster.duchies["aggregator"].core.clone();
    wait_until("both uploads are admitted", || {
        agg.advance_streams.in_use("duchies/worker1") == 2
    })
    .await;
    let inputs = inputs_dir(&cluster, &gid);
    // Both are for the same input, so the second waits for the first (deliveries of one
    // input are serialized) and only the first has a partial file.
    wait_until("the first upload has a partial file", || {
        partial(&inputs).len() == 1
    })
    .await;

    // A third concurrent delivery from the same peer is refused before anything is read.
    let mut client = ComputationControlClient::new(ch.clone());
    let err = client
        .advance_computation(tokio_stream::iter(vec![advance_header(
            SystemProtocol::HonestMajorityShareShuffle,
            &gid,
            AGGREGATION_PHASE_INPUT,
        )]))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    assert!(
        err.message().contains("duchies/worker1"),
        "{}",
        err.message()
    );

    // Another peer is not affected by worker1's budget (it is refused for other reasons).
    let ch2 = cluster
        .duchy_channel(&Principal::Duchy("worker2".into()), "aggregator")
        .unwrap();
    let err = ComputationControlClient::new(ch2)
        .advance_computation(tokio_stream::iter(Vec::new()))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");

    // Aborting the uploads (the client goes away mid-body) removes their partial files and
    // frees the slots.
    for (tx, call) in held {
        call.abort();
        let _ = call.await;
        drop(tx);
    }
    wait_until("aborted uploads' files are removed", || {
        partial(&inputs).is_empty()
    })
    .await;
    wait_until("slots are freed", || {
        agg.advance_streams.in_use("duchies/worker1") == 0
    })
    .await;
    assert!(
        agg.store
            .input(&gid, AGGREGATION_PHASE_INPUT, "worker1")
            .await
            .unwrap()
            .is_none()
    );

    // A partial file left by a crash (the process died mid-upload) is removed at start-up.
    let orphan = inputs.join("3-worker1.tmp-12345");
    std::fs::write(&orphan, b"half a payload").unwrap();
    let kept = agg.store.blob_root().join("keep.bin");
    std::fs::write(&kept, b"a finished blob").unwrap();
    drop(agg);
    cluster.stop_duchy("aggregator").await.unwrap();
    cluster.start_duchy("aggregator").await.unwrap();
    assert!(!orphan.exists(), "partial upload survived a restart");
    assert!(kept.exists(), "the start-up sweep removed a finished blob");
    cluster.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fulfilment_above_the_register_limit_is_resource_exhausted() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = start(dir.path(), |_| {}).await;
    create(&cluster, spec(1.0)).await.unwrap();
    wait_for_requisitions(&cluster).await.unwrap();
    let dp = "edp1";
    let who = Principal::DataProvider(dp.into());
    let reqs = edp::list(cluster.kingdom_channel(&who).unwrap(), dp)
        .await
        .unwrap();
    let r = &reqs[0];
    let hmss = |n: i64| {
        api::fulfill_requisition_request::header::Protocol::HonestMajorityShareShuffle(
            api::fulfill_requisition_request::header::HonestMajorityShareShuffle {
                secret_seed: None,
                register_count: n,
                data_provider_certificate: format!("dataProviders/{dp}/certificates/x"),
            },
        )
    };
    let duchy = || cluster.duchy_channel(&who, &r.fulfilling_duchy).unwrap();
    let blobs = cluster.duchies[&r.fulfilling_duchy]
        .core
        .store
        .blob_root()
        .join("requisitions");

    // A declared register count above the maximum: refused before the body is read.
    let err = edp::fulfill(duchy(), r, Some(hmss(1001)), &[0u8; 16], 16)
        .await
        .unwrap_err();
    let status = err.downcast_ref::<tonic::Status>().unwrap();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(status.message().contains("register_count"), "{status:?}");

    // A body larger than the declared register count allows (10 registers → at most
    // 50 bytes plus the allowances).
    let bound = 10 * 5 + 3 * (16 << 10) + (64 << 10);
    let err = edp::fulfill(duchy(), r, Some(hmss(10)), &vec![0u8; bound + 1], 4096)
        .await
        .unwrap_err();
    let status = err.downcast_ref::<tonic::Status>().unwrap();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert_eq!(files(&blobs), Vec::<PathBuf>::new());

    // Within the bound it is accepted.
    edp::fulfill(duchy(), r, Some(hmss(10)), &le(&[1u32; 10]), 4096)
        .await
        .unwrap();
    cluster.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn stream_active_computations_are_capped_per_duchy() {
    use sys::computations_client::ComputationsClient;
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = start(dir.path(), |o| {
        o.kingdom_limits.max_active_streams_per_duchy = 2;
    })
    .await;
    // worker1's own herald would hold one of its streams: stop it.
    cluster.stop_duchy("worker1").await.unwrap();
    let who = Principal::Duchy("worker1".into());
    let open = || {
        let mut c = ComputationsClient::new(cluster.kingdom_channel(&who).unwrap());
        async move {
            c.stream_active_computations(sys::StreamActiveComputationsRequest::default())
                .await
        }
    };
    // The herald's stream may take a moment to be noticed as gone.
    let first = {
        let start = Instant::now();
        loop {
            match open().await {
                Ok(s) => break s,
                Err(e) if e.code() == Code::ResourceExhausted && start.elapsed() < TIMEOUT => {
                    tokio::time::sleep(Duration::from_millis(50)).await
                }
                Err(e) => panic!("{e:?}"),
            }
        }
    };
    let second = open().await.unwrap();
    let err = open().await.unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    assert!(err.message().contains("worker1"), "{}", err.message());
    // Another duchy has its own budget.
    let other = Principal::Duchy("worker2".into());
    let third_party = ComputationsClient::new(cluster.kingdom_channel(&other).unwrap())
        .stream_active_computations(sys::StreamActiveComputationsRequest::default())
        .await;
    assert!(third_party.is_ok(), "{third_party:?}");

    // Ending one stream frees its slot.
    drop(first);
    let start = Instant::now();
    let again = loop {
        match open().await {
            Ok(s) => break s,
            Err(e) if e.code() == Code::ResourceExhausted && start.elapsed() < TIMEOUT => {
                tokio::time::sleep(Duration::from_millis(50)).await
            }
            Err(e) => panic!("{e:?}"),
        }
    };
    drop((second, again, third_party));
    cluster.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn connection_that_never_finishes_the_handshake_is_closed() {
    let dir = tempfile::tempdir().unwrap();
    let handshake = Duration::from_secs(1);
    let cluster = start(dir.path(), |o| {
        o.tls_limits.handshake_timeout = handshake;
    })
    .await;
    let kingdom = cluster.kingdom.as_ref().unwrap().addr;
    let duchy = cluster.duchies["worker1"].addr;
    for addr in [kingdom, duchy] {
        let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        // Send nothing; the server must close the connection on its own. The guard only
        // keeps a broken server from hanging the test.
        let mut buf = [0u8; 64];
        let read = tokio::time::timeout(TIMEOUT, tcp.read(&mut buf))
            .await
            .unwrap_or_else(|_| panic!("{addr}: silent connection still open after {TIMEOUT:?}"));
        match read {
            Ok(0) | Err(_) => {}
            Ok(n) => panic!("{addr}: server sent {n} bytes before any ClientHello"),
        }
    }
    // The servers still serve.
    wait_for_requisitions_or_ping(&cluster).await;
    cluster.shutdown().await.unwrap();
}

/// A cheap authenticated call to the Kingdom and to a duchy.
async fn wait_for_requisitions_or_ping(cluster: &Cluster) {
    let who = Principal::DataProvider("edp1".into());
    edp::list(cluster.kingdom_channel(&who).unwrap(), "edp1")
        .await
        .unwrap();
    let ch = cluster
        .duchy_channel(&Principal::Duchy("worker1".into()), "aggregator")
        .unwrap();
    let err = ComputationControlClient::new(ch)
        .get_computation_stage(sys::GetComputationStageRequest {
            name: "computations/nope/participants/aggregator/computationStage".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{err:?}");
}

/// A repeated delivery of an input already received is read against the same bound as the
/// first one: an endless duplicate is cut off with RESOURCE_EXHAUSTED once it passes the
/// bound (rather than read to its end), one just over the bound too, and the recorded input
/// is unchanged; an identical repeat is still acknowledged.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn duplicate_delivery_is_read_against_the_payload_bound() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = start(dir.path(), |_| {}).await;
    let gid = computation_waiting_at_aggregator(&cluster).await.unwrap();
    let ch = cluster
        .duchy_channel(&Principal::Duchy("worker1".into()), "aggregator")
        .unwrap();
    let mut client = ComputationControlClient::new(ch);
    let header = || {
        advance_header(
            SystemProtocol::HonestMajorityShareShuffle,
            &gid,
            AGGREGATION_PHASE_INPUT,
        )
    };
    let payload = vec![3u8; BOUND as usize];
    let delivery = |data: &[u8]| {
        let mut msgs = vec![header()];
        msgs.extend(data.chunks(16 << 10).map(advance_chunk));
        tokio_stream::iter(msgs)
    };

    // The first delivery, exactly at the bound.
    client
        .advance_computation(delivery(&payload))
        .await
        .unwrap();
    let agg = &cluster.duchies["aggregator"].core;
    let recorded = agg
        .store
        .input(&gid, AGGREGATION_PHASE_INPUT, "worker1")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(recorded.size as u64, BOUND);

    // A duplicate that never ends: refused once past the bound. Without a bound the server
    // would keep reading and this call would not return.
    let chunk = vec![9u8; 16 << 10];
    let endless = tokio_stream::iter(
        std::iter::once(header()).chain(std::iter::repeat_with(move || advance_chunk(&chunk))),
    );
    let err = tokio::time::timeout(TIMEOUT, client.advance_computation(endless))
        .await
        .expect("an endless duplicate delivery was read without a bound")
        .unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    assert!(
        err.message().contains(&BOUND.to_string()),
        "the message names the bound: {}",
        err.message()
    );

    // One byte over the bound: RESOURCE_EXHAUSTED too (not the "different body" answer).
    let mut over = payload.clone();
    over.push(3);
    let err = client
        .advance_computation(delivery(&over))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");

    // The record and its blob are unchanged, and an identical repeat is acknowledged.
    let after = agg
        .store
        .input(&gid, AGGREGATION_PHASE_INPUT, "worker1")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (after.size, &after.sha256),
        (recorded.size, &recorded.sha256)
    );
    assert!(partial(&inputs_dir(&cluster, &gid)).is_empty());
    client
        .advance_computation(delivery(&payload))
        .await
        .unwrap();
    cluster.shutdown().await.unwrap();
}

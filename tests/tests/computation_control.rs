#![allow(clippy::unwrap_used, clippy::expect_used)]
//! ComputationControl over real gRPC + mTLS: a 20 MiB payload in 1 MiB chunks arrives
//! byte-identical, a duplicate send is idempotent, and bad requests get the right status.

use halo_duchy::mill::{advance_header, stage_number};
use halo_identity::Principal;
use halo_proto::system::v1alpha as sys;
use halo_protocol::SystemProtocol;
use halo_testkit::{AGGREGATION_PHASE_INPUT, SHUFFLE_PHASE_INPUT_ONE, WAIT_ON_AGGREGATION_INPUT};
use halo_tests::*;
use sha2::{Digest, Sha256};
use sys::computation_control_client::ComputationControlClient;
use tonic::Code;

fn chunked(
    gid: &str,
    description: i32,
    data: &[u8],
    chunk: usize,
) -> Vec<sys::AdvanceComputationRequest> {
    advance_stream(gid, description, data, chunk)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn advance_computation_20_mib_is_byte_identical_and_idempotent() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = start_cluster(dir.path()).await.unwrap();
    let created = create(&cluster, spec(1.0)).await.unwrap();
    let gid = created
        .measurement
        .computation
        .trim_start_matches("computations/")
        .to_string();
    let agg = &cluster.duchies["aggregator"].core;

    // The aggregator parks in WAIT_ON_AGGREGATION_INPUT once it has published its params.
    wait_at_aggregator_input(&cluster, &gid).await.unwrap();

    let as_worker1 = cluster
        .duchy_channel(&Principal::Duchy("worker1".into()), "aggregator")
        .unwrap();
    let mut client = ComputationControlClient::new(as_worker1);

    // GetComputationStage reports the HMSS stage under its system enum.
    let stage = client
        .get_computation_stage(sys::GetComputationStageRequest {
            name: format!("computations/{gid}/participants/aggregator/computationStage"),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(matches!(
        stage.stage,
        Some(sys::computation_stage::Stage::HonestMajorityShareShuffleStage(_))
    ));
    assert_eq!(stage_number(&stage), Some(WAIT_ON_AGGREGATION_INPUT));
    assert!(!stage.etag.is_empty());

    let mut payload = vec![0u8; 20 << 20];
    let mut x: u64 = 0x1234_5678_9abc_def1;
    for b in payload.iter_mut() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = x as u8;
    }
    let digest = hex::encode(Sha256::digest(&payload));
    client
        .advance_computation(tokio_stream::iter(chunked(
            &gid,
            AGGREGATION_PHASE_INPUT,
            &payload,
            1 << 20,
        )))
        .await
        .unwrap();
    let input = agg
        .store
        .input(&gid, AGGREGATION_PHASE_INPUT, "worker1")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(input.size, 20 << 20);
    assert_eq!(input.sha256, digest);
    let stored = std::fs::read(agg.store.blob_path(&input.blob).unwrap()).unwrap();
    assert!(stored == payload, "stored blob differs from what was sent");

    // A duplicate delivery (e.g. a retry after a lost response) is acknowledged, changes nothing.
    client
        .advance_computation(tokio_stream::iter(chunked(
            &gid,
            AGGREGATION_PHASE_INPUT,
            &payload,
            3 << 20,
        )))
        .await
        .unwrap();
    let again = agg
        .store
        .input(&gid, AGGREGATION_PHASE_INPUT, "worker1")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(again.sha256, digest);
    assert_eq!(again.blob, input.blob);
    let row = agg.store.get(&gid).await.unwrap().unwrap();
    assert_eq!(
        row.stage, WAIT_ON_AGGREGATION_INPUT,
        "still waiting for worker2"
    );

    // Wrong stage for this description.
    let err = client
        .advance_computation(tokio_stream::iter(chunked(
            &gid,
            SHUFFLE_PHASE_INPUT_ONE,
            b"x",
            1,
        )))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    // Empty stream, header without body, body first, malformed and unknown names.
    let err = client
        .advance_computation(tokio_stream::iter(Vec::new()))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    let err = client
        .advance_computation(tokio_stream::iter(vec![advance_header(
            SystemProtocol::HonestMajorityShareShuffle,
            &gid,
            AGGREGATION_PHASE_INPUT,
        )]))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    let err = client
        .advance_computation(tokio_stream::iter(vec![advance_chunk(b"x")]))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    let err = client
        .advance_computation(tokio_stream::iter(chunked(
            "bad/name",
            AGGREGATION_PHASE_INPUT,
            b"x",
            1,
        )))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    let err = client
        .advance_computation(tokio_stream::iter(chunked(
            "AAAAAAAAAAA",
            AGGREGATION_PHASE_INPUT,
            b"x",
            1,
        )))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    let err = client
        .get_computation_stage(sys::GetComputationStageRequest {
            name: format!("computations/{gid}/participants/worker1/computationStage"),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);

    // A data provider may not act as a duchy; an impostor cannot even connect.
    let as_edp = cluster
        .duchy_channel(&Principal::DataProvider("edp1".into()), "aggregator")
        .unwrap();
    let err = ComputationControlClient::new(as_edp)
        .advance_computation(tokio_stream::iter(chunked(
            &gid,
            AGGREGATION_PHASE_INPUT,
            b"x",
            1,
        )))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    let impostor = halo_identity::impostor_identity(&Principal::Duchy("worker2".into())).unwrap();
    let ch = impostor
        .channel(
            &cluster.trust,
            &Principal::Duchy("aggregator".into()),
            &cluster.duchy_url("aggregator").unwrap(),
        )
        .unwrap();
    let err = ComputationControlClient::new(ch)
        .advance_computation(tokio_stream::iter(chunked(
            &gid,
            AGGREGATION_PHASE_INPUT,
            b"x",
            1,
        )))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");
    assert!(
        agg.store
            .input(&gid, AGGREGATION_PHASE_INPUT, "worker2")
            .await
            .unwrap()
            .is_none()
    );

    cluster.shutdown().await.unwrap();
}

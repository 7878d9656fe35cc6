#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The duchies' rows of the authorization matrix (`halo_authz::MATRIX`), one test per row,
//! over real gRPC + mTLS on a real cluster. `worker3` is a duchy with a valid identity (and
//! configured at the Kingdom) that takes no part in HMSS computations.

use halo_duchy::mill::stage_number;
use halo_identity::Principal;
use halo_proto::api::v2alpha as api;
use halo_proto::system::v1alpha as sys;
use halo_sim::{Cluster, ClusterOptions, edp, mc};
use halo_testkit::{AGGREGATION_PHASE_INPUT, WAIT_ON_AGGREGATION_INPUT};
use halo_tests::*;
use sys::computation_control_client::ComputationControlClient;
use tonic::Code;

const OUTSIDER: &str = "worker3";

fn duchy(id: &str) -> Principal {
    Principal::Duchy(id.into())
}

async fn cluster_with_outsider(dir: &std::path::Path) -> Cluster {
    init_logging();
    let mut options = ClusterOptions::new(dir, test_sum_registry());
    options.extra_duchies = vec![OUTSIDER.into()];
    Cluster::start(options).await.unwrap()
}

fn delivery(gid: &str, data: &[u8]) -> Vec<sys::AdvanceComputationRequest> {
    advance_stream(gid, AGGREGATION_PHASE_INPUT, data, data.len().max(1))
}

fn control(
    cluster: &Cluster,
    who: &Principal,
    at: &str,
) -> ComputationControlClient<tonic::transport::Channel> {
    ComputationControlClient::new(cluster.duchy_channel(who, at).unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn row_advance_computation_only_from_an_expected_participant() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = cluster_with_outsider(dir.path()).await;
    let gid = computation_waiting_at_aggregator(&cluster).await.unwrap();
    let agg = &cluster.duchies["aggregator"].core;
    let advance = |who: Principal| {
        let mut c = control(&cluster, &who, "aggregator");
        let msgs = delivery(&gid, b"payload");
        async move { c.advance_computation(tokio_stream::iter(msgs)).await }
    };

    // A duchy that does not take part in the computation.
    let err = advance(duchy(OUTSIDER)).await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    // A participant the waiting stage does not expect input from (the aggregator itself).
    let err = advance(duchy("aggregator")).await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    // Not a duchy at all.
    let err = advance(Principal::DataProvider("edp1".into()))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    for sender in [OUTSIDER, "aggregator"] {
        assert!(
            agg.store
                .input(&gid, AGGREGATION_PHASE_INPUT, sender)
                .await
                .unwrap()
                .is_none(),
            "{sender}'s delivery was recorded"
        );
    }
    // An expected sender's delivery is recorded under its authenticated identity only.
    advance(duchy("worker1")).await.unwrap();
    assert!(
        agg.store
            .input(&gid, AGGREGATION_PHASE_INPUT, "worker1")
            .await
            .unwrap()
            .is_some()
    );
    assert!(
        agg.store
            .input(&gid, AGGREGATION_PHASE_INPUT, "worker2")
            .await
            .unwrap()
            .is_none()
    );
    cluster.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn row_get_computation_stage_only_for_participants() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = cluster_with_outsider(dir.path()).await;
    let gid = computation_waiting_at_aggregator(&cluster).await.unwrap();
    let get = |who: Principal| {
        let mut c = control(&cluster, &who, "aggregator");
        let name = format!("computations/{gid}/participants/aggregator/computationStage");
        async move {
            c.get_computation_stage(sys::GetComputationStageRequest { name })
                .await
        }
    };
    let err = get(duchy(OUTSIDER)).await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    let err = get(Principal::MeasurementConsumer("mc1".into()))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    let stage = get(duchy("worker2")).await.unwrap().into_inner();
    assert_eq!(stage_number(&stage), Some(WAIT_ON_AGGREGATION_INPUT));
    cluster.shutdown().await.unwrap();
}

fn fulfil_requests(
    header: api::fulfill_requisition_request::Header,
    data: &[u8],
) -> Vec<api::FulfillRequisitionRequest> {
    use api::fulfill_requisition_request::{BodyChunk, Payload};
    vec![
        api::FulfillRequisitionRequest {
            payload: Some(Payload::Header(header)),
        },
        api::FulfillRequisitionRequest {
            payload: Some(Payload::BodyChunk(BodyChunk {
                data: data.to_vec(),
            })),
        },
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn row_fulfill_requisition_only_by_the_requisitions_data_provider() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = cluster_with_outsider(dir.path()).await;
    create(&cluster, spec(1.0)).await.unwrap();
    wait_for_requisitions(&cluster).await.unwrap();
    let edp1 = Principal::DataProvider("edp1".into());
    let edp2 = Principal::DataProvider("edp2".into());
    let r = edp::list(cluster.kingdom_channel(&edp1).unwrap(), "edp1")
        .await
        .unwrap()
        .remove(0);
    let rid = r.name.rsplit('/').next().unwrap().to_string();
    let at = r.fulfilling_duchy.clone();
    // Everything a thief could know: edp1's requisition id, fingerprint and even its nonce.
    let good = api::fulfill_requisition_request::Header {
        name: r.name.clone(),
        requisition_fingerprint: edp::fingerprint(&r),
        nonce: mc::nonce_of(&r.encrypted_requisition_spec).unwrap(),
        etag: r.etag.clone(),
        ..Default::default()
    };
    let data = le(&vector(3, 100));
    let fulfil = |who: &Principal, header: api::fulfill_requisition_request::Header| {
        let mut c = api::requisition_fulfillment_client::RequisitionFulfillmentClient::new(
            cluster.duchy_channel(who, &at).unwrap(),
        );
        let msgs = fulfil_requests(header, &data);
        async move { c.fulfill_requisition(tokio_stream::iter(msgs)).await }
    };

    // edp2 naming itself as the owner of edp1's requisition.
    let stolen = api::fulfill_requisition_request::Header {
        name: format!("dataProviders/edp2/requisitions/{rid}"),
        ..good.clone()
    };
    let err = fulfil(&edp2, stolen).await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    // edp2 naming edp1.
    let err = fulfil(&edp2, good.clone()).await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    // A duchy (even a participant) is no data provider.
    let err = fulfil(&duchy("aggregator"), good.clone())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    // edp1 vouching for its seed with edp2's certificate.
    let mut h = good.clone();
    h.protocol = Some(
        api::fulfill_requisition_request::header::Protocol::HonestMajorityShareShuffle(
            api::fulfill_requisition_request::header::HonestMajorityShareShuffle {
                data_provider_certificate: "dataProviders/edp2/certificates/0123".into(),
                register_count: 100,
                ..Default::default()
            },
        ),
    );
    let err = fulfil(&edp1, h).await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    let core = &cluster.duchies[at.as_str()].core;
    let stored = || async {
        core.store
            .find_requisition(&rid)
            .await
            .unwrap()
            .remove(0)
            .blob
    };
    assert!(stored().await.is_none(), "nothing stored so far");

    fulfil(&edp1, good).await.unwrap();
    assert!(stored().await.is_some());
    cluster.shutdown().await.unwrap();
}

#[test]
fn every_duchy_rpc_has_a_row() {
    use halo_authz::{MATRIX, Server};
    let rows: Vec<_> = MATRIX
        .iter()
        .filter(|r| {
            matches!(
                r.server,
                Server::DuchyComputationControl | Server::DuchyRequisitionFulfillment
            )
        })
        .map(|r| r.method)
        .collect();
    assert_eq!(
        rows,
        [
            "ComputationControl.AdvanceComputation",
            "ComputationControl.GetComputationStage",
            "RequisitionFulfillment.FulfillRequisition",
        ]
    );
}

#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Identity over real mTLS on loopback, tried as an attacker would (issue 8 items 1–2):
//! forged, expired, unknown-CA and CA-as-leaf client certificates are UNAUTHENTICATED at the
//! Kingdom, at a duchy's ComputationControl and at its RequisitionFulfillment; a server that
//! is not the principal a client meant to reach is refused by the duchy, the simulators and
//! the mill's delivery.

use std::time::Duration;

use halo_identity::{
    DevPki, Identity, Principal, ca_as_leaf_identity, expired_identity, forged_akid_identity,
    impostor_identity,
};
use halo_proto::api::v2alpha as api;
use halo_proto::halo::v1 as admin;
use halo_proto::system::v1alpha as sys;
use halo_proto::system::v1alpha::computation::State;
use halo_tests::*;
use tonic::Code;

fn duchy(id: &str) -> Principal {
    Principal::Duchy(id.into())
}

/// Every kind of client certificate that must not authenticate, with what it pretends to be.
fn bad_identities(pki: &DevPki) -> Vec<(&'static str, Identity)> {
    let edp1 = Principal::DataProvider("edp1".into());
    let mut v = Vec::new();
    for (target, what) in [
        (duchy("aggregator"), "forged AKID (aggregator)"),
        (duchy("worker1"), "forged AKID (worker1)"),
        (Principal::Kingdom, "forged AKID (kingdom)"),
    ] {
        v.push((
            what,
            forged_akid_identity(pki, &edp1, &target, false).unwrap(),
        ));
        v.push((
            what,
            forged_akid_identity(pki, &edp1, &target, true).unwrap(),
        ));
    }
    v.push(("expired", expired_identity(pki, &duchy("worker1")).unwrap()));
    v.push(("unknown CA", impostor_identity(&duchy("worker1")).unwrap()));
    v.push((
        "CA as leaf",
        ca_as_leaf_identity(pki, &duchy("worker1")).unwrap(),
    ));
    v.push(("CA as leaf (edp)", ca_as_leaf_identity(pki, &edp1).unwrap()));
    v
}

fn assert_unauthenticated<T: std::fmt::Debug>(what: &str, at: &str, r: Result<T, tonic::Status>) {
    let status = r.expect_err(what);
    assert_eq!(
        status.code(),
        Code::Unauthenticated,
        "{what} at {at}: {status:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_client_certificates_are_unauthenticated_everywhere() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = start_cluster(dir.path()).await.unwrap();
    let created = create(&cluster, spec(1.0)).await.unwrap();
    wait_for_requisitions(&cluster).await.unwrap();
    let computation = created.measurement.computation.clone();
    let gid = computation.trim_start_matches("computations/").to_string();
    let kingdom_url = cluster.kingdom_url();
    let agg_url = cluster.duchy_url("aggregator").unwrap();
    let w1_url = cluster.duchy_url("worker1").unwrap();
    // The real data provider's requisition, to make the fulfilment header realistic.
    let edp1 = Principal::DataProvider("edp1".into());
    let requisition = halo_sim::edp::list(cluster.kingdom_channel(&edp1).unwrap(), "edp1")
        .await
        .unwrap()
        .remove(0);

    for (what, id) in bad_identities(&cluster.pki) {
        // Kingdom system API.
        let ch = id
            .channel(&cluster.trust, &Principal::Kingdom, &kingdom_url)
            .unwrap();
        let r = sys::computations_client::ComputationsClient::new(ch.clone())
            .get_computation(sys::GetComputationRequest {
                name: computation.clone(),
            })
            .await;
        assert_unauthenticated(what, "Kingdom GetComputation", r);
        let r = sys::computations_client::ComputationsClient::new(ch.clone())
            .stream_active_computations(sys::StreamActiveComputationsRequest::default())
            .await;
        assert_unauthenticated(what, "Kingdom StreamActiveComputations", r);
        let r = admin::data_provider_requisitions_client::DataProviderRequisitionsClient::new(ch)
            .list_requisitions(admin::ListRequisitionsRequest {
                parent: "dataProviders/edp1".into(),
                ..Default::default()
            })
            .await;
        assert_unauthenticated(what, "Kingdom ListRequisitions", r);

        // A duchy's ComputationControl.
        let ch = id
            .channel(&cluster.trust, &duchy("aggregator"), &agg_url)
            .unwrap();
        let r = sys::computation_control_client::ComputationControlClient::new(ch.clone())
            .get_computation_stage(sys::GetComputationStageRequest {
                name: format!("computations/{gid}/participants/aggregator"),
            })
            .await;
        assert_unauthenticated(what, "ComputationControl.GetComputationStage", r);
        let header = sys::AdvanceComputationRequest {
            payload: Some(sys::advance_computation_request::Payload::Header(
                sys::advance_computation_request::Header {
                    name: computation.clone(),
                    ..Default::default()
                },
            )),
        };
        let r = sys::computation_control_client::ComputationControlClient::new(ch)
            .advance_computation(tokio_stream::iter(vec![header]))
            .await;
        assert_unauthenticated(what, "ComputationControl.AdvanceComputation", r);

        // A duchy's RequisitionFulfillment.
        let ch = id
            .channel(&cluster.trust, &duchy("worker1"), &w1_url)
            .unwrap();
        let header = api::FulfillRequisitionRequest {
            payload: Some(api::fulfill_requisition_request::Payload::Header(
                api::fulfill_requisition_request::Header {
                    name: requisition.name.clone(),
                    requisition_fingerprint: halo_sim::edp::fingerprint(&requisition),
                    nonce: 1,
                    ..Default::default()
                },
            )),
        };
        let r = api::requisition_fulfillment_client::RequisitionFulfillmentClient::new(ch)
            .fulfill_requisition(tokio_stream::iter(vec![header]))
            .await;
        assert_unauthenticated(what, "RequisitionFulfillment", r);
    }

    // The measurement is untouched by all of that and still completes.
    let vectors: Vec<Vec<u32>> = (0..3).map(|i| vector(i + 1, 2_000)).collect();
    fulfil_all(&cluster, &vectors).await.unwrap();
    let m = wait_for_result(&cluster, &created).await.unwrap();
    assert_eq!(m.state, State::Succeeded as i32, "{}", m.failure_message);
    cluster.shutdown().await.unwrap();
}

/// Clients of ours refuse a server presenting another principal's valid certificate.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn servers_are_checked_to_be_the_principal_meant() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = start_cluster(dir.path()).await.unwrap();
    let agg_url = cluster.duchy_url("aggregator").unwrap();
    let w1_url = cluster.duchy_url("worker1").unwrap();
    let kingdom_url = cluster.kingdom_url();

    // The simulators (`halo edp`, `halo mc` go through `Remote`): a duchy URL served by another
    // duchy, and a Kingdom URL served by a duchy.
    let remote = halo_sim::remote::Remote::load(
        &dir.path().join("pki"),
        &agg_url,
        [("worker1".to_string(), agg_url.clone())],
    )
    .unwrap();
    let edp1 = Principal::DataProvider("edp1".into());
    let r = admin::data_provider_requisitions_client::DataProviderRequisitionsClient::new(
        remote.kingdom_channel(&edp1).unwrap(),
    )
    .list_requisitions(admin::ListRequisitionsRequest {
        parent: "dataProviders/edp1".into(),
        ..Default::default()
    })
    .await;
    assert_eq!(r.unwrap_err().code(), Code::Unavailable);
    let r = sys::computation_control_client::ComputationControlClient::new(
        remote.duchy_channel(&edp1, "worker1").unwrap(),
    )
    .get_computation_stage(sys::GetComputationStageRequest {
        name: "computations/x/participants/worker1".into(),
    })
    .await;
    assert_eq!(r.unwrap_err().code(), Code::Unavailable);
    // The same channels to the right servers work (the refusal is about who serves).
    let remote = halo_sim::remote::Remote::load(
        &dir.path().join("pki"),
        &kingdom_url,
        [("worker1".to_string(), w1_url.clone())],
    )
    .unwrap();
    admin::data_provider_requisitions_client::DataProviderRequisitionsClient::new(
        remote.kingdom_channel(&edp1).unwrap(),
    )
    .list_requisitions(admin::ListRequisitionsRequest {
        parent: "dataProviders/edp1".into(),
        ..Default::default()
    })
    .await
    .map(|_| ())
    .or_else(|s| {
        // Reaching the Kingdom is what matters; any application-level answer will do.
        if s.code() == Code::Unavailable {
            Err(s)
        } else {
            Ok(())
        }
    })
    .unwrap();

    // A duchy whose Kingdom URL is served by another duchy cannot talk to it.
    let core = &cluster.duchies["worker1"].core;
    let wrong = core
        .config
        .identity
        .channel(&cluster.trust, &Principal::Kingdom, &agg_url)
        .unwrap();
    let r = sys::computations_client::ComputationsClient::new(wrong)
        .get_computation(sys::GetComputationRequest {
            name: "computations/x".into(),
        })
        .await;
    assert_eq!(r.unwrap_err().code(), Code::Unavailable);
    cluster.shutdown().await.unwrap();
}

/// The mill's delivery: while the aggregator's address points at worker2's server (a valid
/// certificate, but not the aggregator's), the workers' sends fail as delivery failures and
/// nothing advances; once the address is right again, the measurement completes exactly.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn mill_refuses_to_deliver_to_the_wrong_principal() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = start_cluster(dir.path()).await.unwrap();
    let agg_url = cluster.duchy_url("aggregator").unwrap();
    let w2_url = cluster.duchy_url("worker2").unwrap();
    cluster.peers.set("aggregator", &w2_url);
    let created = create(&cluster, spec(1.0)).await.unwrap();
    let vectors: Vec<Vec<u32>> = (0..3).map(|i| vector(i + 7, 3_000)).collect();
    fulfil_all(&cluster, &vectors).await.unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let gid = created
        .measurement
        .computation
        .trim_start_matches("computations/")
        .to_string();
    // Nothing reached the aggregator, and worker2 accepted nothing meant for it.
    let agg = cluster.duchies["aggregator"]
        .core
        .store
        .get(&gid)
        .await
        .unwrap()
        .unwrap();
    assert!(agg.terminal.is_none(), "{:?}", agg.terminal);
    let m = halo_proto::halo::v1::measurements_client::MeasurementsClient::new(
        cluster
            .kingdom_channel(&Principal::MeasurementConsumer("mc1".into()))
            .unwrap(),
    )
    .get_measurement(halo_proto::halo::v1::GetMeasurementRequest {
        name: created.measurement.name.clone(),
    })
    .await
    .unwrap()
    .into_inner();
    assert!(!halo_sim::mc::is_terminal(m.state), "{m:?}");

    cluster.peers.set("aggregator", &agg_url);
    let m = wait_for_result(&cluster, &created).await.unwrap();
    assert_eq!(m.state, State::Succeeded as i32, "{}", m.failure_message);
    let result: serde_json::Value = serde_json::from_slice(&m.encrypted_result).unwrap();
    let (reach, _) = truth(&vectors);
    assert_eq!(result["reach"].as_u64().unwrap(), reach);
    cluster.shutdown().await.unwrap();
}

#![allow(clippy::unwrap_used, clippy::expect_used)]
//! RequisitionFulfillment over real gRPC + mTLS: only the owning data provider, with the
//! right fingerprint and nonce, at the assigned duchy, may fulfil; a retry is idempotent.

use halo_identity::Principal;
use halo_proto::api::v2alpha as api;
use halo_sim::{edp, mc};
use halo_tests::*;
use tonic::Code;

fn requests(
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
async fn fulfilment_is_checked_stored_once_and_reported() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = start_cluster(dir.path()).await.unwrap();
    let created = create(&cluster, spec(1.0)).await.unwrap();
    let gid = created
        .measurement
        .computation
        .trim_start_matches("computations/")
        .to_string();
    wait_for_requisitions(&cluster).await.unwrap();
    let edp1 = Principal::DataProvider("edp1".into());
    let r = edp::list(cluster.kingdom_channel(&edp1).unwrap(), "edp1")
        .await
        .unwrap()
        .remove(0);
    let assigned = r.fulfilling_duchy.clone();
    let other = if assigned == "worker1" {
        "worker2"
    } else {
        "worker1"
    };
    let nonce = mc::nonce_of(&r.encrypted_requisition_spec).unwrap();
    let good = api::fulfill_requisition_request::Header {
        name: r.name.clone(),
        requisition_fingerprint: edp::fingerprint(&r),
        nonce,
        etag: r.etag.clone(),
        ..Default::default()
    };
    let data = le(&vector(5, 1000));
    let client = |who: &Principal, duchy: &str| {
        api::requisition_fulfillment_client::RequisitionFulfillmentClient::new(
            cluster.duchy_channel(who, duchy).unwrap(),
        )
    };

    // Another data provider may not fulfil edp1's requisition.
    let err = client(&Principal::DataProvider("edp2".into()), &assigned)
        .fulfill_requisition(tokio_stream::iter(requests(good.clone(), &data)))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    // Nor may edp1 name another data provider's certificate for its share seed.
    let mut h = good.clone();
    h.protocol = Some(
        api::fulfill_requisition_request::header::Protocol::HonestMajorityShareShuffle(
            api::fulfill_requisition_request::header::HonestMajorityShareShuffle {
                data_provider_certificate: "dataProviders/edp2/certificates/0123".into(),
                register_count: 1000,
                ..Default::default()
            },
        ),
    );
    let err = client(&edp1, &assigned)
        .fulfill_requisition(tokio_stream::iter(requests(h, &data)))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    assert!(err.message().contains("edp2"), "{}", err.message());
    // Wrong fingerprint, wrong nonce, zero nonce, malformed name, wrong duchy.
    let mut h = good.clone();
    h.requisition_fingerprint = vec![0; 32];
    let err = client(&edp1, &assigned)
        .fulfill_requisition(tokio_stream::iter(requests(h, &data)))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    let mut h = good.clone();
    h.nonce = nonce.wrapping_add(1).max(1);
    let err = client(&edp1, &assigned)
        .fulfill_requisition(tokio_stream::iter(requests(h, &data)))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    let mut h = good.clone();
    h.nonce = 0;
    let err = client(&edp1, &assigned)
        .fulfill_requisition(tokio_stream::iter(requests(h, &data)))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    let mut h = good.clone();
    h.name = "dataProviders/edp1/requisitions".into();
    let err = client(&edp1, &assigned)
        .fulfill_requisition(tokio_stream::iter(requests(h, &data)))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    let err = client(&edp1, other)
        .fulfill_requisition(tokio_stream::iter(requests(good.clone(), &data)))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);

    // The real thing, then a retry: both succeed, the data is stored once.
    let rid = r.name.rsplit('/').next().unwrap().to_string();
    client(&edp1, &assigned)
        .fulfill_requisition(tokio_stream::iter(requests(good.clone(), &data)))
        .await
        .unwrap();
    let core = &cluster.duchies[assigned.as_str()].core;
    let row = core
        .store
        .requisitions(&gid)
        .await
        .unwrap()
        .into_iter()
        .find(|x| x.requisition_id == rid)
        .unwrap();
    let stored =
        std::fs::read(core.store.blob_path(row.blob.as_deref().unwrap()).unwrap()).unwrap();
    assert!(stored == data);
    assert_eq!(row.nonce, Some(nonce));
    // An identical retry (e.g. after a lost response) succeeds; different data does not.
    client(&edp1, &assigned)
        .fulfill_requisition(tokio_stream::iter(requests(good.clone(), &data)))
        .await
        .unwrap();
    let err = client(&edp1, &assigned)
        .fulfill_requisition(tokio_stream::iter(requests(
            good.clone(),
            b"different bytes",
        )))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    let stored =
        std::fs::read(core.store.blob_path(row.blob.as_deref().unwrap()).unwrap()).unwrap();
    assert!(
        stored == data,
        "a retry must not overwrite the fulfilled data"
    );
    // The Kingdom knows: edp1 has nothing left to fulfil.
    assert!(
        edp::list(cluster.kingdom_channel(&edp1).unwrap(), "edp1")
            .await
            .unwrap()
            .is_empty()
    );
    cluster.shutdown().await.unwrap();
}

#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Races at a duchy's RequisitionFulfillment over real gRPC + mTLS:
//! (a) two concurrent fulfilments of one requisition with different bodies leave exactly one
//! consistent (header, body) pair, the other call is refused (an identical retry succeeds);
//! (b) FAILED_PRECONDITION from the Kingdom is taken for "already fulfilled" only when the
//! Kingdom's stored state says this duchy fulfilled it with this nonce.

use std::time::{Duration, Instant};

use halo_identity::Principal;
use halo_proto::api::v2alpha as api;
use halo_proto::halo::v1 as admin;
use halo_proto::system::v1alpha as sys;
use halo_sim::{Cluster, edp, mc};
use halo_tests::*;
use prost::Message;
use sha2::{Digest, Sha256};
use sys::computations_client::ComputationsClient;
use tonic::Code;

type Header = api::fulfill_requisition_request::Header;

/// Header then `data` in 4 KiB chunks (so two uploads interleave).
fn requests(header: Header, data: &[u8]) -> Vec<api::FulfillRequisitionRequest> {
    use api::fulfill_requisition_request::{BodyChunk, Payload};
    let mut v = vec![api::FulfillRequisitionRequest {
        payload: Some(Payload::Header(header)),
    }];
    v.extend(data.chunks(4096).map(|c| api::FulfillRequisitionRequest {
        payload: Some(Payload::BodyChunk(BodyChunk { data: c.to_vec() })),
    }));
    v
}

fn labelled(header: &Header, label: &str) -> Header {
    Header {
        fulfillment_context: Some(api::requisition::FulfillmentContext {
            build_label: label.into(),
            warnings: vec![],
        }),
        ..header.clone()
    }
}

async fn fulfil(
    cluster: &Cluster,
    dp: &str,
    at: &str,
    header: Header,
    data: &[u8],
) -> Result<(), tonic::Status> {
    let who = Principal::DataProvider(dp.into());
    let mut c = api::requisition_fulfillment_client::RequisitionFulfillmentClient::new(
        cluster.duchy_channel(&who, at).unwrap(),
    );
    c.fulfill_requisition(tokio_stream::iter(requests(header, data)))
        .await
        .map(|_| ())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_fulfilments_with_different_bodies_leave_one_consistent_pair() {
    const N: usize = 20;
    let dir = tempfile::tempdir().unwrap();
    let cluster = start_cluster(dir.path()).await.unwrap();
    for _ in 0..N {
        create(&cluster, spec(1.0)).await.unwrap();
    }
    let edp1 = Principal::DataProvider("edp1".into());
    let reqs =
        edp::wait_for_requisitions(cluster.kingdom_channel(&edp1).unwrap(), "edp1", N, TIMEOUT)
            .await
            .unwrap();
    assert_eq!(reqs.len(), N);
    let (mut a_won, mut b_won) = (0, 0);
    for (i, r) in reqs.iter().enumerate() {
        let at = r.fulfilling_duchy.clone();
        let base = Header {
            name: r.name.clone(),
            requisition_fingerprint: edp::fingerprint(r),
            nonce: mc::nonce_of(&r.encrypted_requisition_spec).unwrap(),
            ..Default::default()
        };
        let body_a = le(&vector(2 * i as u64 + 1, 16 << 10));
        let body_b = le(&vector(2 * i as u64 + 2, 16 << 10));
        assert_ne!(body_a, body_b);
        let (ha, hb) = (labelled(&base, "A"), labelled(&base, "B"));
        let (ra, rb) = tokio::join!(
            fulfil(&cluster, "edp1", &at, ha.clone(), &body_a),
            fulfil(&cluster, "edp1", &at, hb.clone(), &body_b)
        );
        let (winner_header, winner_body, loser) = match (ra, rb) {
            (Ok(()), Err(e)) => {
                a_won += 1;
                (ha, body_a, e)
            }
            (Err(e), Ok(())) => {
                b_won += 1;
                (hb, body_b, e)
            }
            other => panic!("iteration {i}: exactly one fulfilment must win: {other:?}"),
        };
        assert_eq!(loser.code(), Code::FailedPrecondition, "{loser:?}");

        // The stored header and body belong to the same (winning) call.
        let core = &cluster.duchies[at.as_str()].core;
        let rid = r.name.rsplit('/').next().unwrap();
        let row = core.store.find_requisition(rid).await.unwrap().remove(0);
        let stored_header = Header::decode(row.header.as_deref().unwrap()).unwrap();
        assert_eq!(
            stored_header.fulfillment_context, winner_header.fulfillment_context,
            "iteration {i}"
        );
        let stored_body =
            std::fs::read(core.store.blob_path(row.blob.as_deref().unwrap()).unwrap()).unwrap();
        assert!(
            Sha256::digest(&stored_body) == Sha256::digest(&winner_body),
            "iteration {i}: the stored body is not the winner's"
        );
        assert_eq!(row.nonce, Some(base.nonce));

        // The winner's identical retry is accepted and changes nothing.
        fulfil(&cluster, "edp1", &at, winner_header.clone(), &winner_body)
            .await
            .unwrap();
        let again =
            std::fs::read(core.store.blob_path(row.blob.as_deref().unwrap()).unwrap()).unwrap();
        assert!(again == stored_body);
    }
    assert_eq!(a_won + b_won, N);
    // The Kingdom recorded every fulfilment.
    assert!(
        edp::list(cluster.kingdom_channel(&edp1).unwrap(), "edp1")
            .await
            .unwrap()
            .is_empty()
    );
    cluster.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kingdom_failed_precondition_is_not_taken_for_already_fulfilled() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = start_cluster(dir.path()).await.unwrap();
    // Without the aggregator's params the computation stays PENDING_REQUISITION_PARAMS at the
    // Kingdom, where FulfillRequisition is FAILED_PRECONDITION; the workers already hold
    // the computation and its requisitions.
    cluster.stop_duchy("aggregator").await.unwrap();
    let created = create(&cluster, spec(1.0)).await.unwrap();
    let name = created.measurement.computation.clone();
    let as_worker = ComputationsClient::new(
        cluster
            .kingdom_channel(&Principal::Duchy("worker1".into()))
            .unwrap(),
    )
    .get_computation(sys::GetComputationRequest { name: name.clone() })
    .await
    .unwrap()
    .into_inner();
    assert_eq!(
        as_worker.state,
        sys::computation::State::PendingRequisitionParams as i32
    );
    let r = as_worker
        .requisitions
        .iter()
        .find(|r| r.data_provider == "dataProviders/edp1")
        .unwrap()
        .clone();
    let at = r
        .fulfilling_computation_participant
        .rsplit('/')
        .next()
        .unwrap()
        .to_string();
    let rid = r.name.rsplit('/').next().unwrap().to_string();
    let core = &cluster.duchies[at.as_str()].core;
    let start = Instant::now();
    while core.store.find_requisition(&rid).await.unwrap().is_empty() {
        assert!(
            start.elapsed() < TIMEOUT,
            "{at} never learnt the requisition"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let header = Header {
        name: format!("dataProviders/edp1/requisitions/{rid}"),
        requisition_fingerprint: Sha256::new()
            .chain_update(&as_worker.measurement_spec)
            .chain_update(&r.requisition_spec_hash)
            .finalize()
            .to_vec(),
        nonce: created.nonces["edp1"],
        ..Default::default()
    };
    let data = le(&vector(9, 1000));

    // First attempt: stored at the duchy, refused by the Kingdom.
    let err = fulfil(&cluster, "edp1", &at, header.clone(), &data)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    assert!(
        core.store.find_requisition(&rid).await.unwrap()[0]
            .blob
            .is_some()
    );
    // The retry finds the data stored locally; the Kingdom still refuses, and its state does
    // not say "fulfilled", so the data provider must not be told FULFILLED.
    let err = fulfil(&cluster, "edp1", &at, header.clone(), &data)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    let c = ComputationsClient::new(
        cluster
            .kingdom_channel(&Principal::Duchy(at.clone()))
            .unwrap(),
    )
    .get_computation(sys::GetComputationRequest { name: name.clone() })
    .await
    .unwrap()
    .into_inner();
    let now = c.requisitions.iter().find(|x| x.name == r.name).unwrap();
    assert_eq!(now.state, sys::requisition::State::Unfulfilled as i32);

    // Once the aggregator is back and the requisition becomes fulfillable, the same retry
    // goes through, and a further identical retry (the Kingdom now answers
    // FAILED_PRECONDITION: already FULFILLED, by this duchy, with this nonce) succeeds too.
    cluster.start_duchy("aggregator").await.unwrap();
    let edp1 = Principal::DataProvider("edp1".into());
    edp::wait_for_requisitions(cluster.kingdom_channel(&edp1).unwrap(), "edp1", 1, TIMEOUT)
        .await
        .unwrap();
    fulfil(&cluster, "edp1", &at, header.clone(), &data)
        .await
        .unwrap();
    fulfil(&cluster, "edp1", &at, header.clone(), &data)
        .await
        .unwrap();
    let listed: Vec<admin::DataProviderRequisition> =
        edp::list(cluster.kingdom_channel(&edp1).unwrap(), "edp1")
            .await
            .unwrap();
    assert!(listed.iter().all(|x| !x.name.ends_with(&rid)));
    cluster.shutdown().await.unwrap();
}

async fn advance(
    channel: tonic::transport::Channel,
    gid: &str,
    description: i32,
    data: &[u8],
) -> Result<(), tonic::Status> {
    sys::computation_control_client::ComputationControlClient::new(channel)
        .advance_computation(tokio_stream::iter(advance_stream(
            gid,
            description,
            data,
            4096,
        )))
        .await
        .map(|_| ())
}

/// Two concurrent AdvanceComputation deliveries from one sender (over two connections) for
/// the same input with different bodies: exactly one is accepted and recorded, with a record
/// (size, SHA-256) that matches the one file stored; the other is FAILED_PRECONDITION; the
/// winner's identical retry is acknowledged and the loser's retry is refused, changing nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_advance_deliveries_with_different_bodies_leave_one_consistent_input() {
    use halo_testkit::{AGGREGATION_PHASE_INPUT, WAIT_ON_AGGREGATION_INPUT};
    const N: usize = 20;
    let dir = tempfile::tempdir().unwrap();
    let cluster = start_cluster(dir.path()).await.unwrap();
    let mut gids = Vec::new();
    for _ in 0..N {
        let created = create(&cluster, spec(1.0)).await.unwrap();
        gids.push(
            created
                .measurement
                .computation
                .trim_start_matches("computations/")
                .to_string(),
        );
    }
    let agg = &cluster.duchies["aggregator"].core;
    // Without fulfilments the workers never deliver; the aggregator parks in
    // WAIT_ON_AGGREGATION_INPUT once it has published its params.
    for gid in &gids {
        wait_at_aggregator_input(&cluster, gid).await.unwrap();
    }
    let worker1 = Principal::Duchy("worker1".into());
    let (ch_a, ch_b) = (
        cluster.duchy_channel(&worker1, "aggregator").unwrap(),
        cluster.duchy_channel(&worker1, "aggregator").unwrap(),
    );
    let (mut a_won, mut b_won) = (0, 0);
    for (i, gid) in gids.iter().enumerate() {
        let body_a = le(&vector(2 * i as u64 + 101, 16 << 10));
        let body_b = le(&vector(2 * i as u64 + 102, 16 << 10));
        assert_ne!(body_a, body_b);
        let (ra, rb) = tokio::join!(
            advance(ch_a.clone(), gid, AGGREGATION_PHASE_INPUT, &body_a),
            advance(ch_b.clone(), gid, AGGREGATION_PHASE_INPUT, &body_b)
        );
        let (winner, loser_body, loser) = match (ra, rb) {
            (Ok(()), Err(e)) => {
                a_won += 1;
                (&body_a, &body_b, e)
            }
            (Err(e), Ok(())) => {
                b_won += 1;
                (&body_b, &body_a, e)
            }
            other => panic!("iteration {i}: exactly one delivery must be accepted: {other:?}"),
        };
        assert_eq!(
            loser.code(),
            Code::FailedPrecondition,
            "iteration {i}: {loser:?}"
        );

        let check = |what: &str| {
            let what = what.to_owned();
            async move {
                let input = agg
                    .store
                    .input(gid, AGGREGATION_PHASE_INPUT, "worker1")
                    .await
                    .unwrap()
                    .unwrap();
                let stored = std::fs::read(agg.store.blob_path(&input.blob).unwrap()).unwrap();
                assert!(
                    &stored == winner,
                    "iteration {i} ({what}): the stored input is not the accepted body"
                );
                assert_eq!(input.size, stored.len() as i64, "iteration {i} ({what})");
                assert_eq!(
                    input.sha256,
                    hex::encode(Sha256::digest(&stored)),
                    "iteration {i} ({what}): record and file disagree"
                );
                // Only the one blob for this computation: no second body, no partial file.
                let files: Vec<_> =
                    std::fs::read_dir(agg.store.blob_path(&input.blob).unwrap().parent().unwrap())
                        .unwrap()
                        .map(|e| e.unwrap().file_name())
                        .collect();
                assert_eq!(files.len(), 1, "iteration {i} ({what}): {files:?}");
            }
        };
        check("after the race").await;

        // The accepted body again (a retry after a lost response): acknowledged, no change.
        let ch = if winner == &body_a { &ch_a } else { &ch_b };
        advance(ch.clone(), gid, AGGREGATION_PHASE_INPUT, winner)
            .await
            .unwrap();
        // The refused body again: still refused, never overwrites what was recorded.
        let err = advance(ch.clone(), gid, AGGREGATION_PHASE_INPUT, loser_body)
            .await
            .unwrap_err();
        assert_eq!(
            err.code(),
            Code::FailedPrecondition,
            "iteration {i}: {err:?}"
        );
        // A prefix of the accepted body is a different body too.
        let err = advance(
            ch.clone(),
            gid,
            AGGREGATION_PHASE_INPUT,
            &winner[..winner.len() - 1],
        )
        .await
        .unwrap_err();
        assert_eq!(
            err.code(),
            Code::FailedPrecondition,
            "iteration {i}: {err:?}"
        );
        check("after the retries").await;
        let row = agg.store.get(gid).await.unwrap().unwrap();
        assert_eq!(
            row.stage, WAIT_ON_AGGREGATION_INPUT,
            "still waiting for worker2"
        );
    }
    assert_eq!(a_won + b_won, N);
    cluster.shutdown().await.unwrap();
}

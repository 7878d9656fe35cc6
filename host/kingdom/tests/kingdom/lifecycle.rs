//! (a) The full state machine, driven by the three duchies, two EDPs and a measurement consumer.

use halo_proto::halo::v1::{CancelMeasurementRequest, GetMeasurementRequest, Protocol};
use halo_proto::system::v1alpha::computation::State as C;
use halo_proto::system::v1alpha::computation::mpc_protocol_config::Protocol as MpcProtocol;
use halo_proto::system::v1alpha::computation_participant::{Failure, State as P};
use halo_proto::system::v1alpha::requisition::State as R;
use halo_proto::system::v1alpha::{
    ConfirmComputationParticipantRequest, FailComputationParticipantRequest,
    GetComputationParticipantRequest, SetComputationResultRequest,
};
use sha2::{Digest as _, Sha256};
use tonic::Code;

use crate::common::*;

fn result_request(name: &str, cert: &str) -> SetComputationResultRequest {
    SetComputationResultRequest {
        name: name.to_owned(),
        aggregator_certificate: cert.to_owned(),
        result_public_key: b"result public key".to_vec(),
        encrypted_result: b"encrypted result".to_vec(),
        public_api_version: "v2alpha".to_owned(),
    }
}

#[tokio::test]
async fn hmss_full_lifecycle() {
    let k = TestKingdom::start().await;
    let m = k.create(Protocol::HonestMajorityShareShuffle, "").await;
    assert_eq!(m.state, C::PendingRequisitionParams as i32);
    assert_eq!(m.protocol, Protocol::HonestMajorityShareShuffle as i32);
    let name = m.computation.clone();

    let c = k.computation(W1, &name).await;
    assert_eq!(c.state, C::PendingRequisitionParams as i32);
    assert_eq!(c.public_api_version, "v2alpha");
    assert_eq!(c.measurement_spec, spec_bytes());
    assert!(matches!(
        c.mpc_protocol_config.unwrap().protocol,
        Some(MpcProtocol::HonestMajorityShareShuffle(_))
    ));
    let names: Vec<_> = c
        .computation_participants
        .iter()
        .map(|p| p.name.clone())
        .collect();
    assert_eq!(
        names,
        [W1, W2, AGG].map(|d| format!("{name}/participants/{d}"))
    );
    assert!(
        c.computation_participants
            .iter()
            .all(|p| p.state == P::Created as i32)
    );
    assert_eq!(c.requisitions.len(), 2);
    for (r, dp) in c.requisitions.iter().zip([EDP1, EDP2]) {
        assert_eq!(r.state, R::Unfulfilled as i32);
        assert_eq!(
            r.requisition_spec_hash,
            Sha256::digest(encrypted_spec(dp)).to_vec()
        );
        assert_eq!(
            r.nonce_hash,
            Sha256::digest(nonce_for(dp).to_be_bytes()).to_vec()
        );
        // Pre-assigned to non_aggregators[external_requisition_id % 2].
        let api_id = r.name.rsplit('/').next().unwrap();
        let id = halo_kingdom::names::decode_api_id(api_id).unwrap();
        let expected = if id % 2 == 0 { W1 } else { W2 };
        assert_eq!(
            r.fulfilling_computation_participant,
            format!("{name}/participants/{expected}")
        );
    }
    // Nothing to list before all params are set.
    assert!(k.list(EDP1).await.is_empty());

    // HMSS participants go straight to READY.
    let p = k
        .set_params(W1, &name, Protocol::HonestMajorityShareShuffle)
        .await;
    assert_eq!(p.state, P::Ready as i32);
    let params = p.requisition_params.unwrap();
    assert_eq!(params.duchy_certificate, k.duchy_cert_name(W1));
    assert_eq!(params.duchy_certificate_der, k.duchy_cert_der(W1));
    k.set_params(W2, &name, Protocol::HonestMajorityShareShuffle)
        .await;
    assert_eq!(
        k.computation(AGG, &name).await.state,
        C::PendingRequisitionParams as i32
    );
    k.set_params(AGG, &name, Protocol::HonestMajorityShareShuffle)
        .await;
    let c = k.computation(AGG, &name).await;
    assert_eq!(c.state, C::PendingRequisitionFulfillment as i32);

    // Each EDP sees exactly its own requisition, with the full computation.
    let mut listed = Vec::new();
    for dp in [EDP1, EDP2] {
        let list = k.list(dp).await;
        assert_eq!(list.len(), 1, "{dp}");
        let r = list.into_iter().next().unwrap();
        assert!(
            r.name
                .starts_with(&format!("dataProviders/{dp}/requisitions/"))
        );
        assert_eq!(r.encrypted_requisition_spec, encrypted_spec(dp));
        assert!(r.etag.starts_with("W/\""));
        let comp = r.computation.as_ref().unwrap();
        assert_eq!(comp.name, name);
        assert_eq!(comp.state, C::PendingRequisitionFulfillment as i32);
        for p in &comp.computation_participants {
            let params = p.requisition_params.as_ref().unwrap();
            assert!(!params.duchy_certificate_der.is_empty());
            assert!(params.protocol.is_some());
        }
        let req = r.requisition.as_ref().unwrap();
        assert_eq!(
            req.fulfilling_computation_participant,
            format!("{name}/participants/{}", r.fulfilling_duchy)
        );
        assert!([W1, W2].contains(&r.fulfilling_duchy.as_str()));
        listed.push((dp, r));
    }

    // Fulfil: only the pre-assigned duchy may.
    for (i, (dp, r)) in listed.iter().enumerate() {
        let req_name = &r.requisition.as_ref().unwrap().name;
        let other = if r.fulfilling_duchy == W1 { W2 } else { W1 };
        assert_code(
            k.try_fulfill(other, req_name, nonce_for(dp), &r.etag).await,
            Code::PermissionDenied,
        );
        assert_code(
            k.try_fulfill(AGG, req_name, nonce_for(dp), &r.etag).await,
            Code::PermissionDenied,
        );
        let done = k
            .try_fulfill(&r.fulfilling_duchy, req_name, nonce_for(dp), &r.etag)
            .await
            .unwrap();
        assert_eq!(done.state, R::Fulfilled as i32);
        assert_eq!(done.nonce, nonce_for(dp));
        assert_eq!(
            done.fulfilling_computation_participant,
            format!("{name}/participants/{}", r.fulfilling_duchy)
        );
        let expected = if i == 0 {
            C::PendingRequisitionFulfillment
        } else {
            C::PendingComputation
        };
        assert_eq!(k.computation(W1, &name).await.state, expected as i32);
        // An identical repeat (a retry whose answer was lost) succeeds and changes nothing;
        // a different fulfilment is a precondition failure.
        let repeat = k
            .try_fulfill(&r.fulfilling_duchy, req_name, nonce_for(dp), &r.etag)
            .await
            .unwrap();
        assert_eq!(repeat, done);
        assert_eq!(k.computation(W1, &name).await.state, expected as i32);
        assert_code(
            k.try_fulfill(&r.fulfilling_duchy, req_name, nonce_for(dp) ^ 1, "")
                .await,
            Code::FailedPrecondition,
        );
    }
    assert!(k.list(EDP1).await.is_empty());

    // Only the aggregator, with its own certificate, may set the result.
    let mut w1 = k.computations(W1);
    assert_code(
        w1.set_computation_result(result_request(&name, &k.duchy_cert_name(W1)))
            .await,
        Code::PermissionDenied,
    );
    let mut agg = k.computations(AGG);
    assert_code(
        agg.set_computation_result(result_request(&name, &k.duchy_cert_name(W1)))
            .await,
        Code::PermissionDenied,
    );
    let c = agg
        .set_computation_result(result_request(&name, &k.duchy_cert_name(AGG)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(c.state, C::Succeeded as i32);
    assert_eq!(c.encrypted_result, b"encrypted result");
    assert_eq!(c.aggregator_certificate, k.duchy_cert_name(AGG));
    // An identical retry is accepted; a different result is not.
    agg.set_computation_result(result_request(&name, &k.duchy_cert_name(AGG)))
        .await
        .unwrap();
    let mut other = result_request(&name, &k.duchy_cert_name(AGG));
    other.encrypted_result = b"another result".to_vec();
    assert_code(
        agg.set_computation_result(other).await,
        Code::FailedPrecondition,
    );

    let m = k
        .measurements(MC1)
        .get_measurement(GetMeasurementRequest {
            name: m.name.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(m.state, C::Succeeded as i32);
    assert_eq!(m.encrypted_result, b"encrypted result");
    assert_eq!(m.result_public_key, b"result public key");
    assert_eq!(m.aggregator_certificate, k.duchy_cert_name(AGG));
    k.shutdown().await;
}

#[tokio::test]
async fn llv2_full_lifecycle() {
    let k = TestKingdom::start().await;
    let m = k.create(Protocol::LiquidLegionsV2, "llv2").await;
    let name = m.computation.clone();
    let c = k.computation(AGG, &name).await;
    // The LLv2 ring of the roles file participates, the aggregator last.
    let names: Vec<_> = c
        .computation_participants
        .iter()
        .map(|p| p.name.clone())
        .collect();
    assert_eq!(
        names,
        [W1, W2, AGG].map(|d| format!("{name}/participants/{d}"))
    );
    assert!(
        c.requisitions
            .iter()
            .all(|r| r.fulfilling_computation_participant.is_empty())
    );
    match c.mpc_protocol_config.unwrap().protocol {
        Some(MpcProtocol::LiquidLegionsV2(l)) => {
            assert_eq!(l.elliptic_curve_id, 415);
            assert!(l.sketch_params.is_some());
        }
        other => panic!("unexpected protocol config {other:?}"),
    }

    for d in DUCHIES {
        let p = k.set_params(d, &name, Protocol::LiquidLegionsV2).await;
        assert_eq!(p.state, P::RequisitionParamsSet as i32);
    }
    assert_eq!(
        k.computation(W1, &name).await.state,
        C::PendingRequisitionFulfillment as i32
    );
    // Confirmation is not possible yet.
    assert_code(
        k.participants(W1)
            .confirm_computation_participant(ConfirmComputationParticipantRequest {
                name: format!("{name}/participants/{W1}"),
                etag: String::new(),
            })
            .await,
        Code::FailedPrecondition,
    );

    // Any participant may fulfil an LLv2 requisition; it becomes the fulfilling participant.
    let r1 = k.list(EDP1).await.remove(0);
    assert!(r1.fulfilling_duchy.is_empty());
    let done = k
        .try_fulfill(W2, &r1.requisition.unwrap().name, nonce_for(EDP1), &r1.etag)
        .await
        .unwrap();
    assert_eq!(
        done.fulfilling_computation_participant,
        format!("{name}/participants/{W2}")
    );
    let r2 = k.list(EDP2).await.remove(0);
    k.try_fulfill(
        AGG,
        &r2.requisition.unwrap().name,
        nonce_for(EDP2),
        &r2.etag,
    )
    .await
    .unwrap();
    assert_eq!(
        k.computation(W1, &name).await.state,
        C::PendingParticipantConfirmation as i32
    );

    for (i, d) in DUCHIES.iter().enumerate() {
        let p = k
            .participants(d)
            .confirm_computation_participant(ConfirmComputationParticipantRequest {
                name: format!("{name}/participants/{d}"),
                etag: String::new(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(p.state, P::Ready as i32);
        let expected = if i + 1 < DUCHIES.len() {
            C::PendingParticipantConfirmation
        } else {
            C::PendingComputation
        };
        assert_eq!(k.computation(d, &name).await.state, expected as i32);
    }
    // A non-aggregator may not set the result.
    assert_code(
        k.computations(W2)
            .set_computation_result(result_request(&name, &k.duchy_cert_name(W2)))
            .await,
        Code::PermissionDenied,
    );
    let c = k
        .computations(AGG)
        .set_computation_result(result_request(&name, &k.duchy_cert_name(AGG)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(c.state, C::Succeeded as i32);
    assert!(
        c.computation_participants
            .iter()
            .all(|p| p.state == P::Ready as i32)
    );
    assert!(
        c.requisitions
            .iter()
            .all(|r| r.state == R::Fulfilled as i32)
    );
    k.shutdown().await;
}

#[tokio::test]
async fn reach_only_llv2_from_protocol_config() {
    let k = TestKingdom::start().await;
    let mut req = create_request(MC1, Protocol::Unspecified, "");
    req.protocol_config = Some(
        k.config
            .default_protocol_config
            .reach_only_liquid_legions_v2(),
    );
    let m = k
        .measurements(MC1)
        .create_measurement(req)
        .await
        .unwrap()
        .into_inner();
    assert_eq!(m.protocol, Protocol::ReachOnlyLiquidLegionsV2 as i32);
    // Params of another protocol are rejected.
    assert_code(
        k.try_set_params(W1, &m.computation, Protocol::LiquidLegionsV2, "")
            .await,
        Code::InvalidArgument,
    );
    for d in DUCHIES {
        k.set_params(d, &m.computation, Protocol::ReachOnlyLiquidLegionsV2)
            .await;
    }
    k.fulfill_all(&m.computation).await;
    assert_eq!(
        k.computation(AGG, &m.computation).await.state,
        C::PendingParticipantConfirmation as i32
    );
    k.shutdown().await;
}

#[tokio::test]
async fn participant_failure_fails_computation() {
    let k = TestKingdom::start().await;
    let m = k.create(Protocol::HonestMajorityShareShuffle, "").await;
    let name = m.computation.clone();
    k.set_params(W1, &name, Protocol::HonestMajorityShareShuffle)
        .await;

    let failure = Failure {
        participant_child_reference_id: "local-42".to_owned(),
        error_message: "boom".to_owned(),
        error_time: None,
        stage_attempt: None,
    };
    let p = k
        .participants(W2)
        .fail_computation_participant(FailComputationParticipantRequest {
            name: format!("{name}/participants/{W2}"),
            failure: Some(failure.clone()),
            etag: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(p.state, P::Failed as i32);
    assert_eq!(p.failure.as_ref().unwrap().error_message, "boom");

    let c = k.computation(AGG, &name).await;
    assert_eq!(c.state, C::Failed as i32);
    assert!(
        c.requisitions
            .iter()
            .all(|r| r.state == R::Withdrawn as i32)
    );
    let m = k
        .measurements(MC1)
        .get_measurement(GetMeasurementRequest {
            name: m.name.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(m.state, C::Failed as i32);
    assert_eq!(
        m.failure_message,
        "Computation Participant failed. Duchy worker2: boom"
    );

    // Terminal: failing again, setting params or cancelling are precondition failures.
    assert_code(
        k.participants(AGG)
            .fail_computation_participant(FailComputationParticipantRequest {
                name: format!("{name}/participants/{AGG}"),
                failure: Some(failure),
                etag: String::new(),
            })
            .await,
        Code::FailedPrecondition,
    );
    assert_code(
        k.try_set_params(AGG, &name, Protocol::HonestMajorityShareShuffle, "")
            .await,
        Code::FailedPrecondition,
    );
    assert_code(
        k.measurements(MC1)
            .cancel_measurement(CancelMeasurementRequest {
                name: m.name.clone(),
            })
            .await,
        Code::FailedPrecondition,
    );
    // The failed participant's record is readable by its owner.
    let p = k
        .participants(W2)
        .get_computation_participant(GetComputationParticipantRequest {
            name: format!("{name}/participants/{W2}"),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        p.failure.unwrap().participant_child_reference_id,
        "local-42"
    );
    k.shutdown().await;
}

#[tokio::test]
async fn failure_after_fulfilment_keeps_fulfilled_requisitions() {
    let k = TestKingdom::start().await;
    let m = k.create(Protocol::LiquidLegionsV2, "").await;
    let c = k.computation(AGG, &m.computation).await;
    k.set_all_params(&c, Protocol::LiquidLegionsV2).await;
    k.fulfill_all(&m.computation).await;
    k.participants(AGG)
        .fail_computation_participant(FailComputationParticipantRequest {
            name: format!("{}/participants/{AGG}", m.computation),
            failure: Some(Failure {
                error_message: "mill crashed".to_owned(),
                ..Default::default()
            }),
            etag: String::new(),
        })
        .await
        .unwrap();
    let c = k.computation(W1, &m.computation).await;
    assert_eq!(c.state, C::Failed as i32);
    assert!(
        c.requisitions
            .iter()
            .all(|r| r.state == R::Fulfilled as i32)
    );
    k.shutdown().await;
}

#[tokio::test]
async fn cancel_measurement() {
    let k = TestKingdom::start().await;
    let m = k.create(Protocol::LiquidLegionsV2, "").await;
    let c = k.computation(AGG, &m.computation).await;
    k.set_all_params(&c, Protocol::LiquidLegionsV2).await;
    assert_eq!(k.list(EDP1).await.len(), 1);

    // Only the owning measurement consumer may cancel.
    assert_code(
        k.measurements(MC2)
            .cancel_measurement(CancelMeasurementRequest {
                name: m.name.clone(),
            })
            .await,
        Code::PermissionDenied,
    );
    let cancelled = k
        .measurements(MC1)
        .cancel_measurement(CancelMeasurementRequest {
            name: m.name.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(cancelled.state, C::Cancelled as i32);
    let c = k.computation(W2, &m.computation).await;
    assert_eq!(c.state, C::Cancelled as i32);
    assert!(
        c.requisitions
            .iter()
            .all(|r| r.state == R::Withdrawn as i32)
    );
    assert!(k.list(EDP1).await.is_empty());
    assert_code(
        k.measurements(MC1)
            .cancel_measurement(CancelMeasurementRequest {
                name: m.name.clone(),
            })
            .await,
        Code::FailedPrecondition,
    );
    k.shutdown().await;
}

#[tokio::test]
async fn create_measurement_is_idempotent_by_request_id() {
    let k = TestKingdom::start().await;
    let a = k
        .create(Protocol::HonestMajorityShareShuffle, "req-1")
        .await;
    let b = k
        .create(Protocol::HonestMajorityShareShuffle, "req-1")
        .await;
    assert_eq!(a.name, b.name);
    assert_eq!(a.computation, b.computation);
    let c = k
        .create(Protocol::HonestMajorityShareShuffle, "req-2")
        .await;
    assert_ne!(a.name, c.name);
    let d = k.create(Protocol::HonestMajorityShareShuffle, "").await;
    let e = k.create(Protocol::HonestMajorityShareShuffle, "").await;
    assert_ne!(d.name, e.name);
    // The key is per measurement consumer.
    let other = k
        .measurements(MC2)
        .create_measurement(create_request(
            MC2,
            Protocol::HonestMajorityShareShuffle,
            "req-1",
        ))
        .await
        .unwrap()
        .into_inner();
    assert_ne!(other.name, a.name);
    assert!(
        other
            .name
            .starts_with("measurementConsumers/mc2/measurements/")
    );
    k.shutdown().await;
}

#[tokio::test]
async fn state_survives_restart() {
    let mut k = TestKingdom::start().await;
    let m = k.create(Protocol::HonestMajorityShareShuffle, "").await;
    let c = k.computation(AGG, &m.computation).await;
    k.set_all_params(&c, Protocol::HonestMajorityShareShuffle)
        .await;
    let before = k.computation(AGG, &m.computation).await;
    k.restart().await;
    let after = k.computation(AGG, &m.computation).await;
    assert_eq!(before, after);
    k.fulfill_all(&m.computation).await;
    assert_eq!(
        k.computation(AGG, &m.computation).await.state,
        C::PendingComputation as i32
    );
    k.shutdown().await;
}

#[tokio::test]
async fn concurrent_writes_apply_exactly_once() {
    let k = std::sync::Arc::new(TestKingdom::start().await);
    let mut computations = Vec::new();
    for _ in 0..5 {
        computations.push(k.create(Protocol::LiquidLegionsV2, "").await.computation);
    }
    // All duchies publish params for all computations at once.
    let mut tasks = Vec::new();
    for name in &computations {
        for d in DUCHIES {
            let k = k.clone();
            let name = name.clone();
            tasks.push(tokio::spawn(async move {
                k.set_params(d, &name, Protocol::LiquidLegionsV2).await
            }));
        }
    }
    for t in tasks {
        assert_eq!(t.await.unwrap().state, P::RequisitionParamsSet as i32);
    }
    // Two duchies race to fulfil the same requisition: exactly one wins.
    for name in &computations {
        assert_eq!(
            k.computation(AGG, name).await.state,
            C::PendingRequisitionFulfillment as i32
        );
        let r = k
            .list(EDP1)
            .await
            .into_iter()
            .find(|r| &r.computation.as_ref().unwrap().name == name)
            .unwrap();
        let req = r.requisition.unwrap().name;
        let (a, b) = tokio::join!(
            k.try_fulfill(W1, &req, 1, &r.etag),
            k.try_fulfill(W2, &req, 2, &r.etag)
        );
        assert!(
            a.is_ok() != b.is_ok(),
            "exactly one fulfilment must win: {a:?} {b:?}"
        );
        let loser = if a.is_ok() { b } else { a };
        assert!(matches!(
            loser.unwrap_err().code(),
            Code::FailedPrecondition | Code::Aborted
        ));
    }
    match std::sync::Arc::try_unwrap(k) {
        Ok(k) => k.shutdown().await,
        Err(_) => panic!("harness still shared"),
    }
}

#[tokio::test]
async fn a_protocol_without_roles_is_not_offered() {
    // Only HMSS has roles: an LLv2 measurement is refused before anything is stored.
    let k = TestKingdom::start_with(|c, _| c.roles.liquid_legions_v2 = None).await;
    let refused = k
        .measurements(MC1)
        .create_measurement(create_request(MC1, Protocol::LiquidLegionsV2, "llv2"))
        .await;
    assert_code(refused, tonic::Code::FailedPrecondition);
    let m = k.create(Protocol::HonestMajorityShareShuffle, "hmss").await;
    let c = k.computation(AGG, &m.computation).await;
    assert_eq!(c.computation_participants.len(), 3);
    k.shutdown().await;
}

#[tokio::test]
async fn a_kingdom_refuses_roles_naming_unknown_duchies() {
    halo_identity::init_crypto();
    let k = TestKingdom::start().await;
    let mut config = k.config.clone();
    k.shutdown().await;
    if let Some(ring) = config.roles.liquid_legions_v2.as_mut() {
        ring.non_aggregators.push("nowhere".into());
    }
    let err = config.validate().unwrap_err().to_string();
    assert!(
        err.contains("\"nowhere\" is not a configured duchy"),
        "{err}"
    );
}

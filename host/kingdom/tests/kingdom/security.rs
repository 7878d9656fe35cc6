//! (c) etag conflicts and (d) impersonation / authorization.

use halo_identity::{Principal, identity_with_two_cert_chain, impostor_identity};
use halo_proto::halo::v1::measurements_client::MeasurementsClient;
use halo_proto::halo::v1::{
    CreateMeasurementRequest, GetMeasurementRequest, ListRequisitionsRequest, Protocol,
};
use halo_proto::system::v1alpha::computation_log_entry::{ErrorDetails, error_details};
use halo_proto::system::v1alpha::computation_participant::Failure;
use halo_proto::system::v1alpha::computations_client::ComputationsClient;
use halo_proto::system::v1alpha::{
    ComputationLogEntry, ConfirmComputationParticipantRequest, CreateComputationLogEntryRequest,
    FailComputationParticipantRequest, GetComputationParticipantRequest, GetComputationRequest,
    SetParticipantRequisitionParamsRequest,
};
use tonic::Code;

use crate::common::*;

#[tokio::test]
async fn participant_etag_conflicts_are_aborted() {
    let k = TestKingdom::start().await;
    let m = k.create(Protocol::LiquidLegionsV2, "").await;
    let name = m.computation.clone();
    let pname = format!("{name}/participants/{W1}");
    let get = || async {
        k.participants(W1)
            .get_computation_participant(GetComputationParticipantRequest {
                name: pname.clone(),
            })
            .await
            .unwrap()
            .into_inner()
    };
    let p0 = get().await;
    assert!(p0.etag.starts_with("W/\""));
    // The participant view inside the computation carries the same etag.
    assert_eq!(
        participant(&k.computation(W1, &name).await, W1).etag,
        p0.etag
    );

    assert_code(
        k.try_set_params(W1, &name, Protocol::LiquidLegionsV2, "W/\"bogus\"")
            .await,
        Code::Aborted,
    );
    // Nothing changed.
    assert_eq!(get().await, p0);
    let p1 = k
        .try_set_params(W1, &name, Protocol::LiquidLegionsV2, &p0.etag)
        .await
        .unwrap();
    assert_ne!(p1.etag, p0.etag);
    assert_eq!(get().await.etag, p1.etag);

    // Stale etags on every participant write.
    let mut participants = k.participants(W1);
    assert_code(
        participants
            .confirm_computation_participant(ConfirmComputationParticipantRequest {
                name: pname.clone(),
                etag: p0.etag.clone(),
            })
            .await,
        Code::Aborted,
    );
    assert_code(
        participants
            .fail_computation_participant(FailComputationParticipantRequest {
                name: pname.clone(),
                failure: Some(Failure::default()),
                etag: p0.etag.clone(),
            })
            .await,
        Code::Aborted,
    );
    assert_eq!(get().await.state, p1.state);

    // Requisition etags.
    for d in [AGG, W2] {
        k.set_params(d, &name, Protocol::LiquidLegionsV2).await;
    }
    let r = k.list(EDP1).await.remove(0);
    let req_name = r.requisition.as_ref().unwrap().name.clone();
    assert_code(
        k.try_fulfill(W1, &req_name, 1, "W/\"0000000000000001\"")
            .await,
        Code::Aborted,
    );
    assert_eq!(k.list(EDP1).await[0].etag, r.etag);
    k.try_fulfill(W1, &req_name, 1, &r.etag).await.unwrap();
    k.shutdown().await;
}

#[tokio::test]
async fn duchy_cannot_act_on_another_duchys_participant() {
    let k = TestKingdom::start().await;
    let m = k.create(Protocol::LiquidLegionsV2, "").await;
    let name = m.computation.clone();
    let theirs = format!("{name}/participants/{W2}");
    let mut w1 = k.participants(W1);

    // worker1 presenting worker2's params for worker2's participant.
    assert_code(
        w1.set_participant_requisition_params(SetParticipantRequisitionParamsRequest {
            name: theirs.clone(),
            requisition_params: Some(params(
                &k.duchy_cert_name(W2),
                Protocol::LiquidLegionsV2,
                W2,
            )),
            etag: String::new(),
        })
        .await,
        Code::PermissionDenied,
    );
    assert_code(
        w1.get_computation_participant(GetComputationParticipantRequest {
            name: theirs.clone(),
        })
        .await,
        Code::PermissionDenied,
    );
    assert_code(
        w1.confirm_computation_participant(ConfirmComputationParticipantRequest {
            name: theirs.clone(),
            etag: String::new(),
        })
        .await,
        Code::PermissionDenied,
    );
    assert_code(
        w1.fail_computation_participant(FailComputationParticipantRequest {
            name: theirs.clone(),
            failure: Some(Failure::default()),
            etag: String::new(),
        })
        .await,
        Code::PermissionDenied,
    );
    assert_code(
        k.log_entries(W1)
            .create_computation_log_entry(CreateComputationLogEntryRequest {
                parent: theirs.clone(),
                computation_log_entry: Some(ComputationLogEntry {
                    log_message: "hi".to_owned(),
                    ..Default::default()
                }),
            })
            .await,
        Code::PermissionDenied,
    );
    // Own participant, but another duchy's certificate.
    assert_code(
        w1.set_participant_requisition_params(SetParticipantRequisitionParamsRequest {
            name: format!("{name}/participants/{W1}"),
            requisition_params: Some(params(
                &k.duchy_cert_name(W2),
                Protocol::LiquidLegionsV2,
                W1,
            )),
            etag: String::new(),
        })
        .await,
        Code::InvalidArgument,
    );
    // worker2's participant is untouched.
    let c = k.computation(W2, &name).await;
    assert_eq!(participant(&c, W2).state, 1);
    assert!(participant(&c, W2).requisition_params.is_none());
    k.shutdown().await;
}

#[tokio::test]
async fn impostor_certificate_is_rejected() {
    let k = TestKingdom::start().await;
    let m = k.create(Protocol::HonestMajorityShareShuffle, "").await;
    let impostor = impostor_identity(&duchy(AGG)).unwrap();
    let mut client = ComputationsClient::new(k.channel_for(&impostor));
    let result = client
        .get_computation(GetComputationRequest {
            name: m.computation.clone(),
        })
        .await;
    let status = result.expect_err("an impostor certificate must not be accepted");
    // Refused by the authenticating layer (its AKID names no trusted root).
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");

    // A chain of two certificates passes TLS but not identification.
    let chained = identity_with_two_cert_chain(&k.pki, &duchy(AGG)).unwrap();
    let mut client = ComputationsClient::new(k.channel_for(&chained));
    assert_code(
        client
            .get_computation(GetComputationRequest {
                name: m.computation.clone(),
            })
            .await,
        Code::Unauthenticated,
    );
    k.shutdown().await;
}

#[tokio::test]
async fn principals_are_confined_to_their_apis() {
    let k = TestKingdom::start().await;
    let m = k.create(Protocol::HonestMajorityShareShuffle, "").await;

    // An EDP listing another EDP's requisitions.
    assert_code(
        k.dp_requisitions(EDP1)
            .list_requisitions(ListRequisitionsRequest {
                parent: format!("dataProviders/{EDP2}"),
                ..Default::default()
            })
            .await,
        Code::PermissionDenied,
    );
    // A duchy listing requisitions of an EDP.
    assert_code(
        halo_proto::halo::v1::data_provider_requisitions_client::DataProviderRequisitionsClient::new(
            k.channel(&duchy(W1)),
        )
        .list_requisitions(ListRequisitionsRequest {
            parent: format!("dataProviders/{EDP1}"),
            ..Default::default()
        })
        .await,
        Code::PermissionDenied,
    );
    // A measurement consumer calling the system API.
    assert_code(
        ComputationsClient::new(k.channel(&mc(MC1)))
            .get_computation(GetComputationRequest {
                name: m.computation.clone(),
            })
            .await,
        Code::PermissionDenied,
    );
    // Another measurement consumer reading / creating under mc1.
    assert_code(
        k.measurements(MC2)
            .get_measurement(GetMeasurementRequest {
                name: m.name.clone(),
            })
            .await,
        Code::PermissionDenied,
    );
    assert_code(
        k.measurements(MC2)
            .create_measurement(create_request(
                MC1,
                Protocol::HonestMajorityShareShuffle,
                "",
            ))
            .await,
        Code::PermissionDenied,
    );
    // A duchy creating a measurement.
    assert_code(
        MeasurementsClient::new(k.channel(&duchy(AGG)))
            .create_measurement(CreateMeasurementRequest {
                parent: format!("measurementConsumers/{MC1}"),
                ..create_request(MC1, Protocol::HonestMajorityShareShuffle, "")
            })
            .await,
        Code::PermissionDenied,
    );
    // The kingdom's own identity is not a duchy either.
    assert_code(
        ComputationsClient::new(k.channel(&Principal::Kingdom))
            .get_computation(GetComputationRequest {
                name: m.computation.clone(),
            })
            .await,
        Code::PermissionDenied,
    );
    k.shutdown().await;
}

#[tokio::test]
async fn log_entries_are_stored_and_permanent_errors_rejected() {
    let k = TestKingdom::start().await;
    let m = k.create(Protocol::HonestMajorityShareShuffle, "").await;
    let parent = format!("{}/participants/{W1}", m.computation);
    let mut client = k.log_entries(W1);
    let entry = client
        .create_computation_log_entry(CreateComputationLogEntryRequest {
            parent: parent.clone(),
            computation_log_entry: Some(ComputationLogEntry {
                log_message: "retrying".to_owned(),
                error_details: Some(ErrorDetails {
                    r#type: error_details::Type::Transient as i32,
                    error_time: None,
                }),
                ..Default::default()
            }),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(entry.name.starts_with(&format!("{parent}/logEntries/")));
    assert_eq!(entry.log_message, "retrying");
    assert_code(
        client
            .create_computation_log_entry(CreateComputationLogEntryRequest {
                parent: parent.clone(),
                computation_log_entry: Some(ComputationLogEntry {
                    log_message: "fatal".to_owned(),
                    error_details: Some(ErrorDetails {
                        r#type: error_details::Type::Permanent as i32,
                        error_time: None,
                    }),
                    ..Default::default()
                }),
            })
            .await,
        Code::InvalidArgument,
    );
    assert_code(
        client
            .create_computation_log_entry(CreateComputationLogEntryRequest {
                parent: parent.clone(),
                computation_log_entry: None,
            })
            .await,
        Code::InvalidArgument,
    );
    // The aggregator is a participant; worker3 (unconfigured) is nobody.
    assert_code(
        k.log_entries(W3)
            .create_computation_log_entry(CreateComputationLogEntryRequest {
                parent: format!("{}/participants/{W3}", m.computation),
                computation_log_entry: Some(ComputationLogEntry {
                    log_message: "x".to_owned(),
                    ..Default::default()
                }),
            })
            .await,
        Code::PermissionDenied,
    );
    k.shutdown().await;
}

//! The Kingdom's rows of the authorization matrix (`halo_authz::MATRIX`), one test per row,
//! each trying to get past the row's requirements over real mTLS, plus the legitimate call
//! as a control. worker3 is a configured duchy that does not take part in HMSS computations
//! (HMSS runs on aggregator, worker1 and worker2).

use halo_proto::halo::v1::certificates_client::CertificatesClient;
use halo_proto::halo::v1::data_provider_requisitions_client::DataProviderRequisitionsClient;
use halo_proto::halo::v1::measurements_client::MeasurementsClient;
use halo_proto::halo::v1::{
    CancelMeasurementRequest, GetCertificateRequest, GetMeasurementRequest,
    ListRequisitionsRequest, Protocol,
};
use halo_proto::system::v1alpha::computation::State;
use halo_proto::system::v1alpha::computation_participant::Failure;
use halo_proto::system::v1alpha::computations_client::ComputationsClient;
use halo_proto::system::v1alpha::{
    ComputationLogEntry, ConfirmComputationParticipantRequest, CreateComputationLogEntryRequest,
    FailComputationParticipantRequest, GetComputationParticipantRequest, GetComputationRequest,
    SetComputationResultRequest, SetParticipantRequisitionParamsRequest,
    StreamActiveComputationsRequest,
};
use std::time::Duration;
use tonic::Code;

use crate::common::*;

async fn hmss_kingdom() -> (TestKingdom, String) {
    let k = TestKingdom::start_with(add_worker3).await;
    let m = k.create(Protocol::HonestMajorityShareShuffle, "").await;
    (k, m.computation)
}

fn result_request(k: &TestKingdom, name: &str, cert_of: &str) -> SetComputationResultRequest {
    SetComputationResultRequest {
        name: name.to_owned(),
        aggregator_certificate: k.duchy_cert_name(cert_of),
        result_public_key: b"pk".to_vec(),
        encrypted_result: format!("result by {cert_of}").into_bytes(),
        public_api_version: "v2alpha".to_owned(),
    }
}

#[tokio::test]
async fn row_get_computation_non_participant_is_not_found() {
    let (k, name) = hmss_kingdom().await;
    let get = |d: &str| {
        let mut c = k.computations(d);
        let name = name.clone();
        async move { c.get_computation(GetComputationRequest { name }).await }
    };
    assert_code(get(W3).await, Code::NotFound);
    // Same answer as for a computation that does not exist.
    assert_code(
        k.computations(W3)
            .get_computation(GetComputationRequest {
                name: halo_kingdom::names::computation_name(12345),
            })
            .await,
        Code::NotFound,
    );
    // Other kinds of principal are refused outright.
    assert_code(
        ComputationsClient::new(k.channel(&edp(EDP1)))
            .get_computation(GetComputationRequest { name: name.clone() })
            .await,
        Code::PermissionDenied,
    );
    for d in [AGG, W1, W2] {
        assert_eq!(get(d).await.unwrap().into_inner().name, name);
    }
    k.shutdown().await;
}

#[tokio::test]
async fn row_stream_active_computations_only_streams_own_computations() {
    let (k, name) = hmss_kingdom().await;
    let mut outsider = k.stream(W3, "").await;
    let mut insider = k.stream(W1, "").await;
    assert_eq!(
        next_item(&mut insider).await.computation.unwrap().name,
        name
    );
    assert_quiet(&mut outsider, Duration::from_millis(800)).await;
    assert_code(
        ComputationsClient::new(k.channel(&mc(MC1)))
            .stream_active_computations(StreamActiveComputationsRequest::default())
            .await,
        Code::PermissionDenied,
    );
    k.shutdown().await;
}

#[tokio::test]
async fn row_set_computation_result_only_by_the_aggregator_with_its_certificate() {
    let (k, name) = hmss_kingdom().await;
    let c = k.computation(AGG, &name).await;
    k.set_all_params(&c, Protocol::HonestMajorityShareShuffle)
        .await;
    k.fulfill_all(&name).await;
    assert_eq!(
        k.computation(AGG, &name).await.state,
        State::PendingComputation as i32
    );
    // A participant presenting another duchy's (the aggregator's) certificate.
    assert_code(
        k.computations(W1)
            .set_computation_result(result_request(&k, &name, AGG))
            .await,
        Code::PermissionDenied,
    );
    // A non-participant with its own certificate: the computation does not exist for it.
    assert_code(
        k.computations(W3)
            .set_computation_result(result_request(&k, &name, W3))
            .await,
        Code::NotFound,
    );
    // A participant that is not the aggregator.
    assert_code(
        k.computations(W2)
            .set_computation_result(result_request(&k, &name, W2))
            .await,
        Code::PermissionDenied,
    );
    assert_eq!(
        k.computation(AGG, &name).await.state,
        State::PendingComputation as i32
    );
    let done = k
        .computations(AGG)
        .set_computation_result(result_request(&k, &name, AGG))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(done.state, State::Succeeded as i32);
    assert_eq!(done.encrypted_result, b"result by aggregator");
    k.shutdown().await;
}

#[tokio::test]
async fn row_get_computation_participant_only_own() {
    let (k, name) = hmss_kingdom().await;
    let req = |d: &str| GetComputationParticipantRequest {
        name: format!("{name}/participants/{d}"),
    };
    assert_code(
        k.participants(W1)
            .get_computation_participant(req(W2))
            .await,
        Code::PermissionDenied,
    );
    assert_code(
        k.participants(W3)
            .get_computation_participant(req(W1))
            .await,
        Code::PermissionDenied,
    );
    // Its own name in a computation it does not take part in.
    assert_code(
        k.participants(W3)
            .get_computation_participant(req(W3))
            .await,
        Code::NotFound,
    );
    k.participants(W1)
        .get_computation_participant(req(W1))
        .await
        .unwrap();
    k.shutdown().await;
}

#[tokio::test]
async fn row_set_participant_requisition_params_only_own() {
    let (k, name) = hmss_kingdom().await;
    let req = |as_duchy: &str| SetParticipantRequisitionParamsRequest {
        name: format!("{name}/participants/{as_duchy}"),
        requisition_params: Some(params(
            &k.duchy_cert_name(as_duchy),
            Protocol::HonestMajorityShareShuffle,
            as_duchy,
        )),
        etag: String::new(),
    };
    // worker1 acting as worker2's participant (with worker2's certificate name).
    assert_code(
        k.participants(W1)
            .set_participant_requisition_params(req(W2))
            .await,
        Code::PermissionDenied,
    );
    assert_code(
        k.participants(W3)
            .set_participant_requisition_params(req(W2))
            .await,
        Code::PermissionDenied,
    );
    let c = k.computation(W2, &name).await;
    assert!(participant(&c, W2).requisition_params.is_none());
    k.participants(W2)
        .set_participant_requisition_params(req(W2))
        .await
        .unwrap();
    k.shutdown().await;
}

#[tokio::test]
async fn row_confirm_computation_participant_only_own() {
    let k = TestKingdom::start().await;
    let m = k.create(Protocol::LiquidLegionsV2, "").await;
    let name = m.computation;
    let c = k.computation(W1, &name).await;
    k.set_all_params(&c, Protocol::LiquidLegionsV2).await;
    k.fulfill_all(&name).await;
    assert_eq!(
        k.computation(W1, &name).await.state,
        State::PendingParticipantConfirmation as i32
    );
    let req = |d: &str| ConfirmComputationParticipantRequest {
        name: format!("{name}/participants/{d}"),
        etag: String::new(),
    };
    assert_code(
        k.participants(W1)
            .confirm_computation_participant(req(W2))
            .await,
        Code::PermissionDenied,
    );
    let c = k.computation(W2, &name).await;
    assert_eq!(participant(&c, W2).state, 2, "still REQUISITION_PARAMS_SET");
    k.participants(W2)
        .confirm_computation_participant(req(W2))
        .await
        .unwrap();
    k.shutdown().await;
}

#[tokio::test]
async fn row_fail_computation_participant_only_own() {
    let (k, name) = hmss_kingdom().await;
    let req = |d: &str| FailComputationParticipantRequest {
        name: format!("{name}/participants/{d}"),
        failure: Some(Failure {
            error_message: "sabotage".to_owned(),
            ..Default::default()
        }),
        etag: String::new(),
    };
    assert_code(
        k.participants(W1)
            .fail_computation_participant(req(W2))
            .await,
        Code::PermissionDenied,
    );
    assert_code(
        k.participants(W3)
            .fail_computation_participant(req(AGG))
            .await,
        Code::PermissionDenied,
    );
    assert_code(
        k.participants(W3)
            .fail_computation_participant(req(W3))
            .await,
        Code::NotFound,
    );
    let c = k.computation(AGG, &name).await;
    assert_eq!(c.state, State::PendingRequisitionParams as i32);
    k.participants(W2)
        .fail_computation_participant(req(W2))
        .await
        .unwrap();
    assert_eq!(k.computation(AGG, &name).await.state, State::Failed as i32);
    k.shutdown().await;
}

#[tokio::test]
async fn row_create_computation_log_entry_only_own() {
    let (k, name) = hmss_kingdom().await;
    let req = |d: &str| CreateComputationLogEntryRequest {
        parent: format!("{name}/participants/{d}"),
        computation_log_entry: Some(ComputationLogEntry {
            log_message: "note".to_owned(),
            ..Default::default()
        }),
    };
    assert_code(
        k.log_entries(W1)
            .create_computation_log_entry(req(W2))
            .await,
        Code::PermissionDenied,
    );
    assert_code(
        k.log_entries(W3)
            .create_computation_log_entry(req(W3))
            .await,
        Code::NotFound,
    );
    k.log_entries(W2)
        .create_computation_log_entry(req(W2))
        .await
        .unwrap();
    k.shutdown().await;
}

#[tokio::test]
async fn row_system_fulfill_requisition_only_the_assigned_participant() {
    let (k, name) = hmss_kingdom().await;
    let c = k.computation(AGG, &name).await;
    k.set_all_params(&c, Protocol::HonestMajorityShareShuffle)
        .await;
    let r = k.list(EDP1).await.remove(0);
    let req_name = r.requisition.as_ref().unwrap().name.clone();
    let assigned = r.fulfilling_duchy.clone();
    let other = if assigned == W1 { W2 } else { W1 };
    let nonce = nonce_for(EDP1);
    assert_code(
        k.try_fulfill(W3, &req_name, nonce, "").await,
        Code::PermissionDenied,
    );
    assert_code(
        k.try_fulfill(other, &req_name, nonce, "").await,
        Code::PermissionDenied,
    );
    assert_code(
        k.try_fulfill(AGG, &req_name, nonce, "").await,
        Code::PermissionDenied,
    );
    assert_eq!(k.list(EDP1).await.len(), 1, "still unfulfilled");
    let done = k
        .try_fulfill(&assigned, &req_name, nonce, "")
        .await
        .unwrap();
    assert!(done.fulfilling_computation_participant.ends_with(&assigned));
    k.shutdown().await;
}

#[tokio::test]
async fn row_create_measurement_only_under_own_consumer() {
    let k = TestKingdom::start().await;
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
    assert_code(
        MeasurementsClient::new(k.channel(&edp(EDP1)))
            .create_measurement(create_request(
                MC1,
                Protocol::HonestMajorityShareShuffle,
                "",
            ))
            .await,
        Code::PermissionDenied,
    );
    let m = k
        .measurements(MC2)
        .create_measurement(create_request(
            MC2,
            Protocol::HonestMajorityShareShuffle,
            "",
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(m.name.starts_with(&format!("measurementConsumers/{MC2}/")));
    k.shutdown().await;
}

/// `measurementConsumers/{mc}/measurements/{id}` of `name` with another consumer.
fn under(mc_id: &str, name: &str) -> String {
    let id = name.rsplit('/').next().unwrap();
    format!("measurementConsumers/{mc_id}/measurements/{id}")
}

#[tokio::test]
async fn row_get_measurement_consumer_cannot_read_another_consumers_measurement() {
    let k = TestKingdom::start().await;
    let m = k.create(Protocol::HonestMajorityShareShuffle, "").await;
    let get = |who: &str, name: String| {
        let mut c = k.measurements(who);
        async move { c.get_measurement(GetMeasurementRequest { name }).await }
    };
    assert_code(get(MC2, m.name.clone()).await, Code::PermissionDenied);
    // Its own collection with the other consumer's measurement id: not there.
    assert_code(get(MC2, under(MC2, &m.name)).await, Code::NotFound);
    assert_code(
        MeasurementsClient::new(k.channel(&duchy(AGG)))
            .get_measurement(GetMeasurementRequest {
                name: m.name.clone(),
            })
            .await,
        Code::PermissionDenied,
    );
    assert_eq!(get(MC1, m.name.clone()).await.unwrap().into_inner(), m);
    k.shutdown().await;
}

#[tokio::test]
async fn row_cancel_measurement_consumer_cannot_cancel_another_consumers_measurement() {
    let k = TestKingdom::start().await;
    let m = k.create(Protocol::HonestMajorityShareShuffle, "").await;
    let cancel = |who: &str, name: String| {
        let mut c = k.measurements(who);
        async move {
            c.cancel_measurement(CancelMeasurementRequest { name })
                .await
        }
    };
    assert_code(cancel(MC2, m.name.clone()).await, Code::PermissionDenied);
    assert_code(cancel(MC2, under(MC2, &m.name)).await, Code::NotFound);
    assert_code(
        MeasurementsClient::new(k.channel(&edp(EDP1)))
            .cancel_measurement(CancelMeasurementRequest {
                name: m.name.clone(),
            })
            .await,
        Code::PermissionDenied,
    );
    let c = k.computation(AGG, &m.computation).await;
    assert_eq!(c.state, State::PendingRequisitionParams as i32);
    let cancelled = cancel(MC1, m.name.clone()).await.unwrap().into_inner();
    assert_eq!(cancelled.state, State::Cancelled as i32);
    k.shutdown().await;
}

#[tokio::test]
async fn row_list_requisitions_only_own_data_provider() {
    let (k, name) = hmss_kingdom().await;
    let c = k.computation(AGG, &name).await;
    k.set_all_params(&c, Protocol::HonestMajorityShareShuffle)
        .await;
    assert_code(
        k.dp_requisitions(EDP1)
            .list_requisitions(ListRequisitionsRequest {
                parent: format!("dataProviders/{EDP2}"),
                ..Default::default()
            })
            .await,
        Code::PermissionDenied,
    );
    for who in [mc(MC1), duchy(W1)] {
        assert_code(
            DataProviderRequisitionsClient::new(k.channel(&who))
                .list_requisitions(ListRequisitionsRequest {
                    parent: format!("dataProviders/{EDP1}"),
                    ..Default::default()
                })
                .await,
            Code::PermissionDenied,
        );
    }
    let own = k.list(EDP1).await;
    assert_eq!(own.len(), 1);
    assert!(own[0].name.starts_with(&format!("dataProviders/{EDP1}/")));
    assert_eq!(own[0].encrypted_requisition_spec, encrypted_spec(EDP1));
    // The system view of each requisition names its data provider (the duchy binds
    // fulfilment to it).
    let c = k.computation(W1, &name).await;
    let mut owners: Vec<_> = c
        .requisitions
        .iter()
        .map(|r| r.data_provider.clone())
        .collect();
    owners.sort();
    assert_eq!(
        owners,
        [
            format!("dataProviders/{EDP1}"),
            format!("dataProviders/{EDP2}")
        ]
    );
    k.shutdown().await;
}

#[tokio::test]
async fn row_get_certificate_is_public_to_authenticated_principals() {
    let k = TestKingdom::start().await;
    let name = k.duchy_cert_name(W1);
    for who in [duchy(W2), edp(EDP1), mc(MC1)] {
        let cert = CertificatesClient::new(k.channel(&who))
            .get_certificate(GetCertificateRequest { name: name.clone() })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(cert.x509_der, k.duchy_cert_der(W1));
    }
    assert_code(
        k.certificates(&edp(EDP1))
            .get_certificate(GetCertificateRequest {
                name: format!("duchies/{W1}/certificates/0000000000000000"),
            })
            .await,
        Code::NotFound,
    );
    k.shutdown().await;
}

#[test]
fn every_kingdom_rpc_has_a_row() {
    use halo_authz::{MATRIX, Server};
    let kingdom: Vec<_> = MATRIX
        .iter()
        .filter(|r| matches!(r.server, Server::KingdomSystem | Server::KingdomAdmin))
        .map(|r| r.method)
        .collect();
    // The RPCs the Kingdom serves (server.rs); a new one needs a row and a test here.
    let served = [
        "Computations.GetComputation",
        "Computations.StreamActiveComputations",
        "Computations.SetComputationResult",
        "ComputationParticipants.GetComputationParticipant",
        "ComputationParticipants.SetParticipantRequisitionParams",
        "ComputationParticipants.ConfirmComputationParticipant",
        "ComputationParticipants.FailComputationParticipant",
        "ComputationLogEntries.CreateComputationLogEntry",
        "Requisitions.FulfillRequisition",
        "Measurements.CreateMeasurement",
        "Measurements.GetMeasurement",
        "Measurements.CancelMeasurement",
        "DataProviderRequisitions.ListRequisitions",
        "Certificates.GetCertificate",
    ];
    assert_eq!(kingdom, served);
}

//! (e) Malformed names → INVALID_ARGUMENT, unknown resources → NOT_FOUND, wrong state →
//! FAILED_PRECONDITION.

use halo_kingdom::names::encode_api_id;
use halo_proto::halo::v1::{
    CancelMeasurementRequest, GetCertificateRequest, GetMeasurementRequest,
    ListRequisitionsRequest, MeasurementSpec, Protocol,
};
use halo_proto::system::v1alpha::computation::MpcProtocolConfig;
use halo_proto::system::v1alpha::computation_participant::RequisitionParams;
use halo_proto::system::v1alpha::{
    ConfirmComputationParticipantRequest, GetComputationParticipantRequest, GetComputationRequest,
    SetComputationResultRequest, SetParticipantRequisitionParamsRequest,
};
use prost::Message as _;
use tonic::Code;

use crate::common::*;

const MALFORMED_COMPUTATIONS: [&str; 6] = [
    "",
    "computations",
    "computations/",
    "computations/!!!!!!!!!!!",
    "computations/AAAAAAAAAAA",
    "requisitions/AAAAAAAAAAE",
];

#[tokio::test]
async fn malformed_and_unknown_names() {
    let k = TestKingdom::start().await;
    let m = k.create(Protocol::HonestMajorityShareShuffle, "").await;
    let unknown = format!("computations/{}", encode_api_id(12345));
    let mut computations = k.computations(W1);
    for name in MALFORMED_COMPUTATIONS {
        assert_code(
            computations
                .get_computation(GetComputationRequest {
                    name: name.to_owned(),
                })
                .await,
            Code::InvalidArgument,
        );
    }
    assert_code(
        computations
            .get_computation(GetComputationRequest {
                name: unknown.clone(),
            })
            .await,
        Code::NotFound,
    );
    assert_code(
        computations
            .get_computation(GetComputationRequest {
                name: format!("{}/extra", m.computation),
            })
            .await,
        Code::InvalidArgument,
    );

    let mut participants = k.participants(W1);
    for name in [
        format!("{}/participants/", m.computation),
        format!("{}/participants/{W1}/x", m.computation),
        format!("{}/participant/{W1}", m.computation),
        "computations/x/participants/worker1".to_owned(),
    ] {
        assert_code(
            participants
                .get_computation_participant(GetComputationParticipantRequest { name })
                .await,
            Code::InvalidArgument,
        );
    }
    assert_code(
        participants
            .get_computation_participant(GetComputationParticipantRequest {
                name: format!("{unknown}/participants/{W1}"),
            })
            .await,
        Code::NotFound,
    );

    // Requisitions.
    for name in ["", "computations/AAAAAAAAAAE/requisitions/", "x/y/z/w"] {
        assert_code(k.try_fulfill(W1, name, 1, "").await, Code::InvalidArgument);
    }
    let c = k.computation(W1, &m.computation).await;
    let req = c.requisitions[0].name.clone();
    assert_code(k.try_fulfill(W1, &req, 0, "").await, Code::InvalidArgument);
    assert_code(
        k.try_fulfill(
            W1,
            &format!("{}/requisitions/{}", m.computation, encode_api_id(99)),
            1,
            "",
        )
        .await,
        Code::NotFound,
    );

    // Admin API.
    let mut measurements = k.measurements(MC1);
    for name in [
        "",
        "measurementConsumers/mc1",
        "measurementConsumers/mc1/measurements/?",
    ] {
        assert_code(
            measurements
                .get_measurement(GetMeasurementRequest {
                    name: name.to_owned(),
                })
                .await,
            Code::InvalidArgument,
        );
    }
    assert_code(
        measurements
            .get_measurement(GetMeasurementRequest {
                name: format!(
                    "measurementConsumers/{MC1}/measurements/{}",
                    encode_api_id(5)
                ),
            })
            .await,
        Code::NotFound,
    );
    assert_code(
        measurements
            .cancel_measurement(CancelMeasurementRequest {
                name: format!(
                    "measurementConsumers/{MC1}/measurements/{}",
                    encode_api_id(5)
                ),
            })
            .await,
        Code::NotFound,
    );
    assert_code(
        k.dp_requisitions(EDP1)
            .list_requisitions(ListRequisitionsRequest {
                parent: "dataProviders".to_owned(),
                ..Default::default()
            })
            .await,
        Code::InvalidArgument,
    );

    // Certificates: any authenticated caller.
    let mut certs = k.certificates(&edp(EDP1));
    let cert = certs
        .get_certificate(GetCertificateRequest {
            name: k.duchy_cert_name(W2),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(cert.x509_der, k.duchy_cert_der(W2));
    let edp_der = k.identity(&edp(EDP2)).certificate_der().unwrap();
    let edp_cert_name = format!(
        "dataProviders/{EDP2}/certificates/{}",
        halo_kingdom::certificate_id(&edp_der)
    );
    let cert = k
        .certificates(&duchy(AGG))
        .get_certificate(GetCertificateRequest {
            name: edp_cert_name,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(cert.x509_der, edp_der);
    assert_code(
        certs
            .get_certificate(GetCertificateRequest {
                name: "duchies/worker2/certificates/0000000000000000".to_owned(),
            })
            .await,
        Code::NotFound,
    );
    assert_code(
        certs
            .get_certificate(GetCertificateRequest {
                name: "duchies/worker2".to_owned(),
            })
            .await,
        Code::InvalidArgument,
    );
    k.shutdown().await;
}

#[tokio::test]
async fn invalid_requisition_params() {
    let k = TestKingdom::start().await;
    let m = k.create(Protocol::HonestMajorityShareShuffle, "").await;
    let name = format!("{}/participants/{W1}", m.computation);
    let mut client = k.participants(W1);
    let good = params(
        &k.duchy_cert_name(W1),
        Protocol::HonestMajorityShareShuffle,
        W1,
    );
    let cases: Vec<(Option<RequisitionParams>, Code)> = vec![
        (None, Code::InvalidArgument),
        (
            Some(RequisitionParams {
                protocol: None,
                ..good.clone()
            }),
            Code::InvalidArgument,
        ),
        (
            Some(RequisitionParams {
                duchy_certificate: "certificates/x".to_owned(),
                ..good.clone()
            }),
            Code::InvalidArgument,
        ),
        (
            Some(RequisitionParams {
                duchy_certificate: format!("dataProviders/{EDP1}/certificates/abc"),
                ..good.clone()
            }),
            Code::InvalidArgument,
        ),
        (
            Some(RequisitionParams {
                duchy_certificate: format!("duchies/{W1}/certificates/0000000000000000"),
                ..good.clone()
            }),
            Code::FailedPrecondition,
        ),
        (
            Some(params(
                &k.duchy_cert_name(W1),
                Protocol::LiquidLegionsV2,
                W1,
            )),
            Code::InvalidArgument,
        ),
    ];
    for (requisition_params, code) in cases {
        assert_code(
            client
                .set_participant_requisition_params(SetParticipantRequisitionParamsRequest {
                    name: name.clone(),
                    requisition_params,
                    etag: String::new(),
                })
                .await,
            code,
        );
    }
    // None of the rejected requests changed anything; the good one works once.
    assert_eq!(
        participant(&k.computation(W1, &m.computation).await, W1).state,
        1
    );
    k.set_params(W1, &m.computation, Protocol::HonestMajorityShareShuffle)
        .await;
    assert_code(
        k.try_set_params(W1, &m.computation, Protocol::HonestMajorityShareShuffle, "")
            .await,
        Code::FailedPrecondition,
    );
    k.shutdown().await;
}

#[tokio::test]
async fn wrong_state_is_failed_precondition() {
    let k = TestKingdom::start().await;
    let m = k.create(Protocol::LiquidLegionsV2, "").await;
    let name = m.computation.clone();
    let c = k.computation(W1, &name).await;

    // Fulfil before params are set (PENDING_REQUISITION_PARAMS).
    assert_code(
        k.try_fulfill(W1, &c.requisitions[0].name, 1, "").await,
        Code::FailedPrecondition,
    );
    // Confirm before PENDING_PARTICIPANT_CONFIRMATION.
    assert_code(
        k.participants(W1)
            .confirm_computation_participant(ConfirmComputationParticipantRequest {
                name: format!("{name}/participants/{W1}"),
                etag: String::new(),
            })
            .await,
        Code::FailedPrecondition,
    );
    // Result before PENDING_COMPUTATION.
    let mut agg = k.computations(AGG);
    let result = SetComputationResultRequest {
        name: name.clone(),
        aggregator_certificate: k.duchy_cert_name(AGG),
        result_public_key: vec![1],
        encrypted_result: vec![2],
        public_api_version: "v2alpha".to_owned(),
    };
    assert_code(
        agg.set_computation_result(result.clone()).await,
        Code::FailedPrecondition,
    );
    assert_code(
        agg.set_computation_result(SetComputationResultRequest {
            public_api_version: String::new(),
            ..result.clone()
        })
        .await,
        Code::InvalidArgument,
    );
    assert_code(
        agg.set_computation_result(SetComputationResultRequest {
            aggregator_certificate: "nonsense".to_owned(),
            ..result.clone()
        })
        .await,
        Code::InvalidArgument,
    );
    assert_code(
        agg.set_computation_result(SetComputationResultRequest {
            name: format!("computations/{}", encode_api_id(77)),
            ..result.clone()
        })
        .await,
        Code::NotFound,
    );
    assert_code(
        agg.set_computation_result(SetComputationResultRequest {
            aggregator_certificate: format!("duchies/{AGG}/certificates/0000000000000000"),
            ..result.clone()
        })
        .await,
        Code::FailedPrecondition,
    );
    assert_eq!(k.computation(AGG, &name).await.state, 1);
    k.shutdown().await;
}

#[tokio::test]
async fn invalid_create_measurement_requests() {
    let k = TestKingdom::start().await;
    let mut client = k.measurements(MC1);
    let base = create_request(MC1, Protocol::LiquidLegionsV2, "");

    let mut bad_parent = base.clone();
    bad_parent.parent = "measurementConsumers/".to_owned();
    assert_code(
        client.create_measurement(bad_parent).await,
        Code::InvalidArgument,
    );

    let mut no_protocol = base.clone();
    no_protocol.protocol = Protocol::Unspecified as i32;
    assert_code(
        client.create_measurement(no_protocol).await,
        Code::InvalidArgument,
    );

    let mut unknown_protocol = base.clone();
    unknown_protocol.protocol = 42;
    assert_code(
        client.create_measurement(unknown_protocol).await,
        Code::InvalidArgument,
    );

    let mut mismatched = base.clone();
    mismatched.protocol_config = Some(MpcProtocolConfig {
        ..k.config
            .default_protocol_config
            .honest_majority_share_shuffle()
    });
    assert_code(
        client.create_measurement(mismatched).await,
        Code::InvalidArgument,
    );

    let mut bad_spec = base.clone();
    bad_spec.measurement_spec = vec![0xff, 0xff, 0xff];
    assert_code(
        client.create_measurement(bad_spec).await,
        Code::InvalidArgument,
    );

    let mut empty_spec = base.clone();
    empty_spec.measurement_spec = MeasurementSpec::default().encode_to_vec();
    assert_code(
        client.create_measurement(empty_spec).await,
        Code::InvalidArgument,
    );

    let mut no_dps = base.clone();
    no_dps.data_providers.clear();
    assert_code(
        client.create_measurement(no_dps).await,
        Code::InvalidArgument,
    );

    let mut unknown_dp = base.clone();
    unknown_dp.data_providers[0].data_provider = "dataProviders/edp9".to_owned();
    assert_code(client.create_measurement(unknown_dp).await, Code::NotFound);

    let mut duplicate_dp = base.clone();
    duplicate_dp.data_providers[1].data_provider =
        duplicate_dp.data_providers[0].data_provider.clone();
    assert_code(
        client.create_measurement(duplicate_dp).await,
        Code::InvalidArgument,
    );

    // Nothing was created.
    assert!(k.list(EDP1).await.is_empty());
    let mut stream = k.stream(W1, "").await;
    assert_quiet(&mut stream, std::time::Duration::from_millis(200)).await;
    k.shutdown().await;
}

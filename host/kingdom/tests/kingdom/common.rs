//! Test harness: a real Kingdom on 127.0.0.1:0 over real mTLS with a generated dev PKI.

use std::time::Duration;

use halo_identity::{DevPki, Identity, Principal, TrustStore};
use halo_kingdom::{
    CertEntry, DefaultProtocolConfigs, DuchyEntry, KingdomConfig, RunningKingdom, certificate_id,
};
use halo_proto::halo::v1::certificates_client::CertificatesClient;
use halo_proto::halo::v1::create_measurement_request::DataProviderEntry;
use halo_proto::halo::v1::data_provider_requisitions_client::DataProviderRequisitionsClient;
use halo_proto::halo::v1::measurement_spec::Type as MeasurementType;
use halo_proto::halo::v1::measurements_client::MeasurementsClient;
use halo_proto::halo::v1::{
    CreateMeasurementRequest, DataProviderRequisition, ListRequisitionsRequest, Measurement,
    MeasurementSpec, Protocol,
};
use halo_proto::system::v1alpha::computation_log_entries_client::ComputationLogEntriesClient;
use halo_proto::system::v1alpha::computation_participant::RequisitionParams;
use halo_proto::system::v1alpha::computation_participant::requisition_params::{
    self as rp, Protocol as ParamsProtocol,
};
use halo_proto::system::v1alpha::computation_participants_client::ComputationParticipantsClient;
use halo_proto::system::v1alpha::computations_client::ComputationsClient;
use halo_proto::system::v1alpha::requisitions_client::RequisitionsClient;
use halo_proto::system::v1alpha::{
    Computation, ComputationParticipant, FulfillRequisitionRequest, GetComputationRequest,
    Requisition, SetParticipantRequisitionParamsRequest, StreamActiveComputationsRequest,
    StreamActiveComputationsResponse,
};
use halo_protocol::roles::{ProtocolDuchies, RoleConfig};
use prost::Message as _;
use sha2::{Digest as _, Sha256};
use tempfile::TempDir;
use tonic::transport::Channel;
use tonic::{Code, Status, Streaming};

pub const AGG: &str = "aggregator";
pub const W1: &str = "worker1";
pub const W2: &str = "worker2";
/// In the PKI but only configured by tests that ask for it.
pub const W3: &str = "worker3";
pub const EDP1: &str = "edp1";
pub const EDP2: &str = "edp2";
pub const MC1: &str = "mc1";
pub const MC2: &str = "mc2";

pub const DUCHIES: [&str; 3] = [AGG, W1, W2];

/// Adds worker3 to the configured duchies (it then takes part in LLv2, not in HMSS).
pub fn add_worker3(config: &mut KingdomConfig, pki: &DevPki) {
    config.duchies.push(DuchyEntry {
        id: W3.to_owned(),
        certificate_der: pki.identity(&duchy(W3)).unwrap().certificate_der().unwrap(),
    });
    // worker3 joins the LLv2 ring (a ring of any size >= 3 duchies), not HMSS.
    if let Some(ring) = config.roles.liquid_legions_v2.as_mut() {
        ring.non_aggregators.push(W3.to_owned());
    }
}

pub fn duchy(id: &str) -> Principal {
    Principal::Duchy(id.to_owned())
}

pub fn edp(id: &str) -> Principal {
    Principal::DataProvider(id.to_owned())
}

pub fn mc(id: &str) -> Principal {
    Principal::MeasurementConsumer(id.to_owned())
}

pub struct TestKingdom {
    pub pki: DevPki,
    pub trust: TrustStore,
    pub _dir: TempDir,
    pub config: KingdomConfig,
    pub kingdom: Option<RunningKingdom>,
    pub url: String,
}

impl TestKingdom {
    pub async fn start() -> TestKingdom {
        Self::start_with(|_, _| {}).await
    }

    pub async fn start_with(adjust: impl FnOnce(&mut KingdomConfig, &DevPki)) -> TestKingdom {
        halo_identity::init_crypto();
        let principals = vec![
            Principal::Kingdom,
            duchy(AGG),
            duchy(W1),
            duchy(W2),
            duchy(W3),
            edp(EDP1),
            edp(EDP2),
            mc(MC1),
            mc(MC2),
        ];
        let pki = DevPki::generate(&principals).unwrap();
        let trust = pki.trust_store().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let der = |p: Principal| pki.identity(&p).unwrap().certificate_der().unwrap();
        let mut config = KingdomConfig {
            data_dir: dir.path().join("kingdom"),
            listen: "127.0.0.1:0".parse().unwrap(),
            identity: pki.identity(&Principal::Kingdom).unwrap().clone(),
            trust: trust.clone(),
            duchies: DUCHIES
                .iter()
                .map(|d| DuchyEntry {
                    id: (*d).to_owned(),
                    certificate_der: der(duchy(d)),
                })
                .collect(),
            data_providers: [EDP1, EDP2]
                .iter()
                .map(|d| CertEntry {
                    id: (*d).to_owned(),
                    certificate_der: der(edp(d)),
                })
                .collect(),
            measurement_consumers: vec![MC1.to_owned(), MC2.to_owned()],
            roles: {
                let duchies = ProtocolDuchies {
                    aggregator: AGG.to_owned(),
                    non_aggregators: vec![W1.to_owned(), W2.to_owned()],
                };
                RoleConfig {
                    liquid_legions_v2: Some(duchies.clone()),
                    reach_only_liquid_legions_v2: None,
                    honest_majority_share_shuffle: Some(duchies),
                }
            },
            stream_poll_interval: Duration::from_millis(200),
            stream_max_duration: Duration::from_secs(60),
            default_protocol_config: DefaultProtocolConfigs::default(),
            tls_limits: Default::default(),
            limits: Default::default(),
        };
        adjust(&mut config, &pki);
        let kingdom = RunningKingdom::start(config.clone()).await.unwrap();
        let url = format!("https://{}", kingdom.addr);
        TestKingdom {
            pki,
            trust,
            _dir: dir,
            config,
            kingdom: Some(kingdom),
            url,
        }
    }

    /// Stops the kingdom and starts a new one on the same data directory (new port).
    pub async fn restart(&mut self) {
        if let Some(k) = self.kingdom.take() {
            k.shutdown().await.unwrap();
        }
        let kingdom = RunningKingdom::start(self.config.clone()).await.unwrap();
        self.url = format!("https://{}", kingdom.addr);
        self.kingdom = Some(kingdom);
    }

    pub async fn shutdown(mut self) {
        if let Some(k) = self.kingdom.take() {
            k.shutdown().await.unwrap();
        }
    }

    pub fn identity(&self, p: &Principal) -> &Identity {
        self.pki.identity(p).unwrap()
    }

    pub fn channel(&self, p: &Principal) -> Channel {
        self.identity(p)
            .channel(&self.trust, &Principal::Kingdom, &self.url)
            .unwrap()
    }

    pub fn channel_for(&self, identity: &Identity) -> Channel {
        identity
            .channel(&self.trust, &Principal::Kingdom, &self.url)
            .unwrap()
    }

    pub fn computations(&self, d: &str) -> ComputationsClient<Channel> {
        ComputationsClient::new(self.channel(&duchy(d)))
    }

    pub fn participants(&self, d: &str) -> ComputationParticipantsClient<Channel> {
        ComputationParticipantsClient::new(self.channel(&duchy(d)))
    }

    pub fn requisitions(&self, d: &str) -> RequisitionsClient<Channel> {
        RequisitionsClient::new(self.channel(&duchy(d)))
    }

    pub fn log_entries(&self, d: &str) -> ComputationLogEntriesClient<Channel> {
        ComputationLogEntriesClient::new(self.channel(&duchy(d)))
    }

    pub fn measurements(&self, m: &str) -> MeasurementsClient<Channel> {
        MeasurementsClient::new(self.channel(&mc(m)))
    }

    pub fn dp_requisitions(&self, d: &str) -> DataProviderRequisitionsClient<Channel> {
        DataProviderRequisitionsClient::new(self.channel(&edp(d)))
    }

    pub fn certificates(&self, p: &Principal) -> CertificatesClient<Channel> {
        CertificatesClient::new(self.channel(p))
    }

    pub fn duchy_cert_name(&self, d: &str) -> String {
        let der = self.identity(&duchy(d)).certificate_der().unwrap();
        format!("duchies/{d}/certificates/{}", certificate_id(&der))
    }

    pub fn duchy_cert_der(&self, d: &str) -> Vec<u8> {
        self.identity(&duchy(d)).certificate_der().unwrap()
    }

    // ---- flows -------------------------------------------------------------------------

    /// Creates a measurement as `mc1` with requisitions for edp1 and edp2.
    pub async fn create(&self, protocol: Protocol, request_id: &str) -> Measurement {
        self.measurements(MC1)
            .create_measurement(create_request(MC1, protocol, request_id))
            .await
            .unwrap()
            .into_inner()
    }

    pub async fn computation(&self, d: &str, name: &str) -> Computation {
        self.computations(d)
            .get_computation(GetComputationRequest {
                name: name.to_owned(),
            })
            .await
            .unwrap()
            .into_inner()
    }

    pub async fn try_set_params(
        &self,
        d: &str,
        computation: &str,
        protocol: Protocol,
        etag: &str,
    ) -> Result<ComputationParticipant, Status> {
        self.participants(d)
            .set_participant_requisition_params(SetParticipantRequisitionParamsRequest {
                name: format!("{computation}/participants/{d}"),
                requisition_params: Some(params(&self.duchy_cert_name(d), protocol, d)),
                etag: etag.to_owned(),
            })
            .await
            .map(tonic::Response::into_inner)
    }

    pub async fn set_params(
        &self,
        d: &str,
        computation: &str,
        protocol: Protocol,
    ) -> ComputationParticipant {
        self.try_set_params(d, computation, protocol, "")
            .await
            .unwrap()
    }

    /// Every page of `dp`'s fulfillable requisitions.
    pub async fn list(&self, dp: &str) -> Vec<DataProviderRequisition> {
        let mut client = self.dp_requisitions(dp);
        let mut all = Vec::new();
        let mut page_token = String::new();
        loop {
            let page = client
                .list_requisitions(ListRequisitionsRequest {
                    parent: format!("dataProviders/{dp}"),
                    page_size: 0,
                    page_token,
                })
                .await
                .unwrap()
                .into_inner();
            all.extend(page.requisitions);
            if page.next_page_token.is_empty() {
                return all;
            }
            page_token = page.next_page_token;
        }
    }

    pub async fn try_fulfill(
        &self,
        d: &str,
        requisition: &str,
        nonce: u64,
        etag: &str,
    ) -> Result<Requisition, Status> {
        self.requisitions(d)
            .fulfill_requisition(FulfillRequisitionRequest {
                name: requisition.to_owned(),
                nonce,
                fulfillment_context: None,
                etag: etag.to_owned(),
            })
            .await
            .map(tonic::Response::into_inner)
    }

    /// Sets params for every participant of `computation` (moves it to PRF).
    pub async fn set_all_params(&self, computation: &Computation, protocol: Protocol) {
        for p in &computation.computation_participants {
            let d = p.name.rsplit('/').next().unwrap();
            self.set_params(d, &computation.name, protocol).await;
        }
    }

    /// Fulfils every requisition of `computation` as listed to its EDP, from the assigned duchy
    /// (or the aggregator when none is assigned).
    pub async fn fulfill_all(&self, computation: &str) {
        for dp in [EDP1, EDP2] {
            for r in self.list(dp).await {
                if r.computation.as_ref().unwrap().name != computation {
                    continue;
                }
                let d = if r.fulfilling_duchy.is_empty() {
                    AGG.to_owned()
                } else {
                    r.fulfilling_duchy.clone()
                };
                let name = r.requisition.as_ref().unwrap().name.clone();
                self.try_fulfill(&d, &name, nonce_for(dp), &r.etag)
                    .await
                    .unwrap();
            }
        }
    }

    pub async fn stream(
        &self,
        d: &str,
        token: &str,
    ) -> Streaming<StreamActiveComputationsResponse> {
        self.computations(d)
            .stream_active_computations(StreamActiveComputationsRequest {
                continuation_token: token.to_owned(),
            })
            .await
            .unwrap()
            .into_inner()
    }
}

pub fn nonce_for(dp: &str) -> u64 {
    if dp == EDP1 {
        0x1111_2222_3333_4444
    } else {
        0x5555_6666_7777_8888
    }
}

pub fn spec_bytes() -> Vec<u8> {
    MeasurementSpec {
        measurement_public_key: b"mc-public-key".to_vec(),
        r#type: MeasurementType::ReachAndFrequency as i32,
        maximum_frequency: 10,
        ..Default::default()
    }
    .encode_to_vec()
}

pub fn encrypted_spec(dp: &str) -> Vec<u8> {
    format!("encrypted requisition spec for {dp}").into_bytes()
}

pub fn create_request(m: &str, protocol: Protocol, request_id: &str) -> CreateMeasurementRequest {
    CreateMeasurementRequest {
        parent: format!("measurementConsumers/{m}"),
        request_id: request_id.to_owned(),
        protocol: protocol as i32,
        measurement_spec: spec_bytes(),
        data_providers: [EDP1, EDP2]
            .iter()
            .map(|dp| DataProviderEntry {
                data_provider: format!("dataProviders/{dp}"),
                encrypted_requisition_spec: encrypted_spec(dp),
                nonce_hash: Sha256::digest(nonce_for(dp).to_be_bytes()).to_vec(),
            })
            .collect(),
        protocol_config: None,
    }
}

pub fn params(cert_name: &str, protocol: Protocol, d: &str) -> RequisitionParams {
    let key = format!("public key of {d}").into_bytes();
    let protocol = match protocol {
        Protocol::LiquidLegionsV2 => ParamsProtocol::LiquidLegionsV2(rp::LiquidLegionsV2 {
            el_gamal_public_key: key,
            el_gamal_public_key_signature: b"sig".to_vec(),
            el_gamal_public_key_signature_algorithm_oid: "1.2.840.10045.4.3.2".to_owned(),
        }),
        Protocol::ReachOnlyLiquidLegionsV2 => {
            ParamsProtocol::ReachOnlyLiquidLegionsV2(rp::LiquidLegionsV2 {
                el_gamal_public_key: key,
                el_gamal_public_key_signature: b"sig".to_vec(),
                el_gamal_public_key_signature_algorithm_oid: "1.2.840.10045.4.3.2".to_owned(),
            })
        }
        _ => ParamsProtocol::HonestMajorityShareShuffle(rp::HonestMajorityShareShuffle {
            // The aggregator publishes empty HMSS params.
            tink_public_key: if d == AGG { Vec::new() } else { key },
            tink_public_key_signature: Vec::new(),
            tink_public_key_signature_algorithm_oid: String::new(),
        }),
    };
    RequisitionParams {
        duchy_certificate: cert_name.to_owned(),
        duchy_certificate_der: Vec::new(),
        protocol: Some(protocol),
    }
}

pub fn participant<'a>(c: &'a Computation, d: &str) -> &'a ComputationParticipant {
    c.computation_participants
        .iter()
        .find(|p| p.name.ends_with(&format!("/participants/{d}")))
        .unwrap()
}

/// Asserts that `result` failed with `code`.
#[track_caller]
pub fn assert_code<T: std::fmt::Debug>(result: Result<T, Status>, code: Code) {
    match result {
        Ok(v) => panic!("expected {code:?}, got Ok({v:?})"),
        Err(s) => assert_eq!(s.code(), code, "unexpected status: {s:?}"),
    }
}

/// The next stream item (fails after 5 s).
pub async fn next_item(
    stream: &mut Streaming<StreamActiveComputationsResponse>,
) -> StreamActiveComputationsResponse {
    tokio::time::timeout(Duration::from_secs(5), stream.message())
        .await
        .expect("timed out waiting for a stream item")
        .unwrap()
        .expect("stream ended")
}

/// Asserts that nothing arrives within `wait`.
pub async fn assert_quiet(
    stream: &mut Streaming<StreamActiveComputationsResponse>,
    wait: Duration,
) {
    if let Ok(item) = tokio::time::timeout(wait, stream.message()).await {
        panic!("unexpected stream item: {item:?}");
    }
}

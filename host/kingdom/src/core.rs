//! State shared by all services: the database, the configured directory of principals and
//! certificates, and conversions from rows to API messages.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use halo_authz::{Facts, Rpc};
use halo_identity::{Principal, TrustStore};
use halo_proto::halo::v1 as admin;
use halo_proto::system::v1alpha::computation::{self, MpcProtocolConfig};
use halo_proto::system::v1alpha::computation_participant::{Failure, RequisitionParams};
use halo_proto::system::v1alpha::requisition::FulfillmentContext;
use halo_proto::system::v1alpha::{Computation, ComputationParticipant, Requisition};
use prost::Message as _;
use tokio::sync::watch;
use tonic::Status;

use crate::config::{DefaultProtocolConfigs, KingdomConfig};
use crate::names::{self, CertificateKey, CertificateOwner};
use crate::store::{self, ComputationData, Db, ParticipantRow, RequisitionRow};
use halo_protocol::SystemProtocol;
use halo_protocol::roles::RoleConfig;

/// The public API version reported on computations.
pub const PUBLIC_API_VERSION: &str = "v2alpha";

/// A configured certificate.
#[derive(Clone, Debug)]
pub(crate) struct CertInfo {
    pub certificate_id: String,
    pub der: Vec<u8>,
}

/// Configured principals and their certificates.
#[derive(Debug)]
pub(crate) struct Directory {
    duchies: HashMap<String, CertInfo>,
    data_providers: HashMap<String, CertInfo>,
    measurement_consumers: HashSet<String>,
    pub roles: RoleConfig,
    pub defaults: DefaultProtocolConfigs,
}

impl Directory {
    pub fn new(config: &KingdomConfig) -> Self {
        let cert = |der: &Vec<u8>| CertInfo {
            certificate_id: crate::certificate_id(der),
            der: der.clone(),
        };
        Self {
            duchies: config
                .duchies
                .iter()
                .map(|d| (d.id.clone(), cert(&d.certificate_der)))
                .collect(),
            data_providers: config
                .data_providers
                .iter()
                .map(|d| (d.id.clone(), cert(&d.certificate_der)))
                .collect(),
            measurement_consumers: config.measurement_consumers.iter().cloned().collect(),
            roles: config.roles.clone(),
            defaults: config.default_protocol_config.clone(),
        }
    }

    pub fn is_duchy(&self, id: &str) -> bool {
        self.duchies.contains_key(id)
    }

    pub fn is_data_provider(&self, id: &str) -> bool {
        self.data_providers.contains_key(id)
    }

    pub fn is_measurement_consumer(&self, id: &str) -> bool {
        self.measurement_consumers.contains(id)
    }

    /// The DER of a certificate, if configured.
    pub fn certificate(&self, key: &CertificateKey) -> Option<&[u8]> {
        let info = match &key.owner {
            CertificateOwner::Duchy(d) => self.duchies.get(d),
            CertificateOwner::DataProvider(d) => self.data_providers.get(d),
        }?;
        (info.certificate_id == key.certificate_id).then_some(info.der.as_slice())
    }

    pub fn duchy_certificate(&self, duchy_id: &str, certificate_id: &str) -> Option<&[u8]> {
        self.certificate(&CertificateKey {
            owner: CertificateOwner::Duchy(duchy_id.to_owned()),
            certificate_id: certificate_id.to_owned(),
        })
    }
}

/// Everything a service handler needs.
pub(crate) struct Core {
    pub db: Db,
    pub directory: Directory,
    pub trust: TrustStore,
    pub stream_poll_interval: Duration,
    pub stream_max_duration: Duration,
    /// Becomes `true` when the server shuts down (ends open streams).
    pub shutdown: watch::Receiver<bool>,
    /// Open `StreamActiveComputations` calls per duchy.
    pub active_streams: halo_limits::PerKeyLimiter,
    /// `page_size` of a `ListRequisitions` call that sets none.
    pub default_page_size: usize,
    /// Largest `page_size` of a `ListRequisitions` call (larger is clamped).
    pub max_page_size: usize,
}

impl Core {
    /// Authenticates the caller, admits it to `rpc` per the authorization matrix
    /// (`halo_authz::MATRIX`: system RPCs admit duchies only) and requires a duchy configured
    /// at this Kingdom. Returns the principal and its duchy id.
    pub fn caller_duchy<T>(
        &self,
        rpc: Rpc,
        req: &tonic::Request<T>,
    ) -> Result<(Principal, String), Status> {
        let caller = self.trust.authenticate(req)?;
        let id = rpc.admit(&caller)?.to_owned();
        if !self.directory.is_duchy(&id) {
            return Err(Status::permission_denied(format!(
                "duchy {id:?} is not known to this kingdom"
            )));
        }
        Ok((caller, id))
    }

    /// Authenticates the caller and checks `rpc`'s request-level rules for a resource that
    /// names the principal `named` (e.g. `measurementConsumers/{named}/...`).
    pub fn require_named<T>(
        &self,
        rpc: Rpc,
        req: &tonic::Request<T>,
        resource: &str,
        named: &str,
    ) -> Result<Principal, Status> {
        let caller = self.trust.authenticate(req)?;
        rpc.check_request(
            &caller,
            resource,
            &Facts {
                named: Some(named),
                ..Facts::default()
            },
        )?;
        Ok(caller)
    }

    // ---- views ----------------------------------------------------------------------------

    pub fn participant_view(&self, row: &ParticipantRow) -> Result<ComputationParticipant, Status> {
        let requisition_params = match &row.requisition_params {
            Some(bytes) => {
                let mut params = RequisitionParams::decode(bytes.as_slice())
                    .map_err(|e| store::corrupt("requisition params", e))?;
                if let Ok((duchy, cid)) = CertificateKey::parse_duchy(&params.duchy_certificate)
                    && let Some(der) = self.directory.duchy_certificate(&duchy, &cid)
                {
                    params.duchy_certificate_der = der.to_vec();
                }
                Some(params)
            }
            None => None,
        };
        let failure = match &row.failure {
            Some(bytes) => {
                Some(Failure::decode(bytes.as_slice()).map_err(|e| store::corrupt("failure", e))?)
            }
            None => None,
        };
        Ok(ComputationParticipant {
            name: names::participant_name(row.external_computation_id, &row.duchy_id),
            state: row.state,
            update_time: Some(store::timestamp(row.update_time)),
            requisition_params,
            failure,
            etag: store::etag(row.update_time),
        })
    }

    pub fn requisition_view(&self, row: &RequisitionRow) -> Result<Requisition, Status> {
        let fulfillment_context = match &row.fulfillment_context {
            Some(bytes) => Some(
                FulfillmentContext::decode(bytes.as_slice())
                    .map_err(|e| store::corrupt("fulfillment context", e))?,
            ),
            None => None,
        };
        Ok(Requisition {
            name: names::requisition_name(row.external_computation_id, row.external_requisition_id),
            requisition_spec_hash: row.requisition_spec_hash.clone(),
            nonce_hash: row.nonce_hash.clone(),
            state: row.state,
            fulfilling_computation_participant: row
                .fulfilling_duchy_id
                .as_deref()
                .map(|d| names::participant_name(row.external_computation_id, d))
                .unwrap_or_default(),
            // fixed64 stored bit-for-bit in a signed column.
            nonce: row.nonce.map(|n| n as u64).unwrap_or_default(),
            fulfillment_context,
            data_provider: format!("dataProviders/{}", row.data_provider_id),
        })
    }

    pub fn computation_view(&self, data: &ComputationData) -> Result<Computation, Status> {
        let m = &data.measurement;
        let mpc_protocol_config = MpcProtocolConfig::decode(m.protocol_config.as_slice())
            .map_err(|e| store::corrupt("protocol config", e))?;
        Ok(Computation {
            name: names::computation_name(m.external_computation_id),
            public_api_version: PUBLIC_API_VERSION.to_owned(),
            measurement_spec: m.measurement_spec.clone(),
            state: m.state,
            aggregator_certificate: m.aggregator_certificate.clone(),
            encrypted_result: m.encrypted_result.clone(),
            computation_participants: data
                .participants
                .iter()
                .map(|p| self.participant_view(p))
                .collect::<Result<_, _>>()?,
            requisitions: data
                .requisitions
                .iter()
                .map(|r| self.requisition_view(r))
                .collect::<Result<_, _>>()?,
            mpc_protocol_config: Some(mpc_protocol_config),
        })
    }

    pub fn measurement_view(&self, m: &store::MeasurementRow) -> admin::Measurement {
        admin::Measurement {
            name: names::measurement_name(&m.measurement_consumer_id, m.external_measurement_id),
            computation: names::computation_name(m.external_computation_id),
            state: m.state,
            measurement_spec: m.measurement_spec.clone(),
            protocol: m.protocol,
            aggregator_certificate: m.aggregator_certificate.clone(),
            encrypted_result: m.encrypted_result.clone(),
            result_public_key: m.result_public_key.clone(),
            failure_message: m.failure_message.clone(),
        }
    }
}

/// The protocol of a stored measurement.
pub(crate) fn protocol_of(m: &store::MeasurementRow) -> Result<SystemProtocol, Status> {
    admin::Protocol::try_from(m.protocol)
        .ok()
        .and_then(SystemProtocol::from_admin)
        .ok_or_else(|| store::corrupt("protocol", m.protocol))
}

/// The duchy ids of a computation's participants (authorization facts).
pub(crate) fn participant_ids(data: &ComputationData) -> Vec<String> {
    data.participants
        .iter()
        .map(|p| p.duchy_id.clone())
        .collect()
}

/// `true` for SUCCEEDED, FAILED and CANCELLED.
pub(crate) fn is_terminal(state: i32) -> bool {
    matches!(
        computation::State::try_from(state),
        Ok(computation::State::Succeeded
            | computation::State::Failed
            | computation::State::Cancelled)
    )
}

/// Human-readable name of a computation state number.
pub(crate) fn state_name(state: i32) -> &'static str {
    computation::State::try_from(state)
        .map(|s| s.as_str_name())
        .unwrap_or("UNKNOWN")
}

//! halo-host's admin API (`halo.v1`): Measurements for measurement consumers,
//! DataProviderRequisitions for data providers, Certificates for everyone.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use halo_proto::halo::v1::certificates_server::Certificates;
use halo_proto::halo::v1::data_provider_requisitions_server::DataProviderRequisitions;
use halo_proto::halo::v1::measurements_server::Measurements;
use halo_proto::halo::v1::{
    CancelMeasurementRequest, Certificate, CreateMeasurementRequest, DataProviderRequisition,
    GetCertificateRequest, GetMeasurementRequest, ListRequisitionsPageToken,
    ListRequisitionsRequest, ListRequisitionsResponse, Measurement, MeasurementSpec, Protocol,
};
use halo_proto::system::v1alpha::computation::MpcProtocolConfig;
use halo_proto::system::v1alpha::computation::State as ComputationState;
use halo_proto::system::v1alpha::computation_participant::State as ParticipantState;
use halo_proto::system::v1alpha::requisition::State as RequisitionState;
use prost::Message as _;
use sha2::{Digest as _, Sha256};
use sqlx::SqliteConnection;
use tonic::{Request, Response, Status};

use halo_authz::{Facts, Rpc};
use halo_protocol::SystemProtocol;

use crate::core::{Core, is_terminal, protocol_of, state_name};
use crate::names::{self, CertificateKey, MeasurementKey};
use crate::store::{self, db_error};

pub(crate) struct MeasurementsService {
    pub core: Arc<Core>,
}

pub(crate) struct DataProviderRequisitionsService {
    pub core: Arc<Core>,
}

pub(crate) struct CertificatesService {
    pub core: Arc<Core>,
}

/// The protocol of a new measurement, from the explicit field and/or the config override.
fn resolve_protocol(
    protocol: i32,
    config: Option<&MpcProtocolConfig>,
) -> Result<SystemProtocol, Status> {
    let requested = Protocol::try_from(protocol)
        .map_err(|_| Status::invalid_argument(format!("unknown protocol {protocol}")))?;
    let from_config = config
        .and_then(|c| c.protocol.as_ref())
        .map(SystemProtocol::of_mpc_config)
        .transpose()
        .map_err(|e| Status::invalid_argument(e.to_string()))?;
    match (SystemProtocol::from_admin(requested), from_config) {
        (None, None) => Err(Status::invalid_argument(
            "protocol is required (or a protocol_config naming one)",
        )),
        (Some(p), None) | (None, Some(p)) => Ok(p),
        (Some(p), Some(q)) if p == q => Ok(p),
        (Some(p), Some(q)) => Err(Status::invalid_argument(format!(
            "protocol {} does not match protocol_config ({})",
            p.admin().as_str_name(),
            q.admin().as_str_name()
        ))),
    }
}

/// A random positive id not yet used in `table.column`.
async fn fresh_id(conn: &mut SqliteConnection, table: &str, column: &str) -> Result<i64, Status> {
    loop {
        let id = crate::random_external_id();
        let exists: Option<i64> =
            sqlx::query_scalar(&format!("SELECT 1 FROM {table} WHERE {column} = ?1"))
                .bind(id)
                .fetch_optional(&mut *conn)
                .await
                .map_err(db_error)?;
        if exists.is_none() {
            return Ok(id);
        }
    }
}

struct NewRequisition {
    data_provider_id: String,
    encrypted_requisition_spec: Vec<u8>,
    nonce_hash: Vec<u8>,
}

#[tonic::async_trait]
impl Measurements for MeasurementsService {
    async fn create_measurement(
        &self,
        request: Request<CreateMeasurementRequest>,
    ) -> Result<Response<Measurement>, Status> {
        let parent = &request.get_ref().parent;
        let mc = names::parse_measurement_consumer(parent)?;
        self.core
            .require_named(Rpc::CreateMeasurement, &request, parent, &mc)?;
        let req = request.into_inner();
        let directory = &self.core.directory;
        if !directory.is_measurement_consumer(&mc) {
            return Err(Status::not_found(format!(
                "measurementConsumers/{mc} is not registered with this kingdom"
            )));
        }
        let protocol = resolve_protocol(req.protocol, req.protocol_config.as_ref())?;
        let protocol_config = match req.protocol_config {
            Some(c) if c.protocol.is_some() => c,
            _ => directory.defaults.for_protocol(protocol),
        };
        if req.measurement_spec.is_empty() {
            return Err(Status::invalid_argument("measurement_spec is required"));
        }
        MeasurementSpec::decode(req.measurement_spec.as_slice()).map_err(|e| {
            Status::invalid_argument(format!("measurement_spec is not a MeasurementSpec: {e}"))
        })?;
        if req.data_providers.is_empty() {
            return Err(Status::invalid_argument(
                "at least one data provider is required",
            ));
        }
        let mut new_requisitions: Vec<NewRequisition> = Vec::new();
        for entry in req.data_providers {
            let dp = names::parse_data_provider(&entry.data_provider)?;
            if new_requisitions.iter().any(|r| r.data_provider_id == dp) {
                return Err(Status::invalid_argument(format!(
                    "data provider {} listed twice",
                    entry.data_provider
                )));
            }
            if !directory.is_data_provider(&dp) {
                return Err(Status::not_found(format!(
                    "data provider {} not found",
                    entry.data_provider
                )));
            }
            new_requisitions.push(NewRequisition {
                data_provider_id: dp,
                encrypted_requisition_spec: entry.encrypted_requisition_spec,
                nonce_hash: entry.nonce_hash,
            });
        }
        let system = protocol;
        let Some(roles) = directory.roles.duchies(system) else {
            return Err(Status::failed_precondition(format!(
                "this kingdom has no duchies configured for {system} (roles file)"
            )));
        };
        let participants = roles.participants();
        let aggregator = roles.aggregator.clone();

        let mut tx = self.core.db.write().await?;
        if !req.request_id.is_empty()
            && let Some(existing) =
                store::measurement_by_request_id(tx.conn(), &mc, &req.request_id).await?
        {
            return Ok(Response::new(self.core.measurement_view(&existing)));
        }
        let now = tx.now().await?;
        let computation_id = fresh_id(tx.conn(), "measurements", "external_computation_id").await?;
        let measurement_id = fresh_id(tx.conn(), "measurements", "external_measurement_id").await?;
        sqlx::query(
            "INSERT INTO measurements (external_computation_id, external_measurement_id, \
             measurement_consumer_id, request_id, protocol, measurement_spec, protocol_config, \
             aggregator_duchy_id, state, create_time, update_time) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?10)",
        )
        .bind(computation_id)
        .bind(measurement_id)
        .bind(&mc)
        .bind(&req.request_id)
        .bind(protocol.admin() as i32)
        .bind(&req.measurement_spec)
        .bind(protocol_config.encode_to_vec())
        .bind(&aggregator)
        .bind(ComputationState::PendingRequisitionParams as i32)
        .bind(now)
        .execute(tx.conn())
        .await
        .map_err(db_error)?;
        for (ordinal, duchy) in participants.iter().enumerate() {
            sqlx::query(
                "INSERT INTO computation_participants \
                 (external_computation_id, duchy_id, ordinal, state, update_time) \
                 VALUES (?1, ?2, ?3, ?4, ?5)",
            )
            .bind(computation_id)
            .bind(duchy)
            .bind(i64::try_from(ordinal).unwrap_or(i64::MAX))
            .bind(ParticipantState::Created as i32)
            .bind(now)
            .execute(tx.conn())
            .await
            .map_err(db_error)?;
        }
        for (ordinal, r) in new_requisitions.iter().enumerate() {
            let requisition_id =
                fresh_id(tx.conn(), "requisitions", "external_requisition_id").await?;
            let fulfilling_duchy = match protocol.assigns_fulfilling_duchy() {
                true => {
                    // Spread requisitions over the non-aggregators by id.
                    let n = roles.non_aggregators.len().max(1) as i64;
                    let index = usize::try_from(requisition_id.rem_euclid(n)).unwrap_or(0);
                    roles.non_aggregators.get(index).cloned()
                }
                false => None,
            };
            sqlx::query(
                "INSERT INTO requisitions (external_requisition_id, external_computation_id, \
                 data_provider_id, ordinal, state, requisition_spec_hash, nonce_hash, \
                 encrypted_requisition_spec, fulfilling_duchy_id, update_time) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
            )
            .bind(requisition_id)
            .bind(computation_id)
            .bind(&r.data_provider_id)
            .bind(i64::try_from(ordinal).unwrap_or(i64::MAX))
            .bind(RequisitionState::Unfulfilled as i32)
            .bind(Sha256::digest(&r.encrypted_requisition_spec).to_vec())
            .bind(&r.nonce_hash)
            .bind(&r.encrypted_requisition_spec)
            .bind(fulfilling_duchy)
            .bind(now)
            .execute(tx.conn())
            .await
            .map_err(db_error)?;
        }
        tx.mark_computation_changed();
        let row = store::measurement_by_computation_id(tx.conn(), computation_id)
            .await?
            .ok_or_else(|| Status::internal("measurement vanished"))?;
        tx.commit().await?;
        halo_crashpoint::point("kingdom.create_measurement");
        tracing::info!(
            measurement = %names::measurement_name(&mc, measurement_id),
            computation = %names::computation_name(computation_id),
            protocol = protocol.admin().as_str_name(),
            "created measurement"
        );
        Ok(Response::new(self.core.measurement_view(&row)))
    }

    async fn get_measurement(
        &self,
        request: Request<GetMeasurementRequest>,
    ) -> Result<Response<Measurement>, Status> {
        let name = &request.get_ref().name;
        let key = MeasurementKey::parse(name)?;
        self.core.require_named(
            Rpc::GetMeasurement,
            &request,
            name,
            &key.measurement_consumer_id,
        )?;
        let mut tx = self.core.db.read().await?;
        let row = store::measurement_by_measurement_id(
            &mut tx,
            &key.measurement_consumer_id,
            key.external_measurement_id,
        )
        .await?;
        tx.commit().await.map_err(db_error)?;
        let row = row.ok_or_else(|| {
            Status::not_found(format!("measurement {} not found", request.get_ref().name))
        })?;
        Ok(Response::new(self.core.measurement_view(&row)))
    }

    async fn cancel_measurement(
        &self,
        request: Request<CancelMeasurementRequest>,
    ) -> Result<Response<Measurement>, Status> {
        let key = MeasurementKey::parse(&request.get_ref().name)?;
        self.core.require_named(
            Rpc::CancelMeasurement,
            &request,
            &request.get_ref().name,
            &key.measurement_consumer_id,
        )?;
        let name = request.into_inner().name;
        let mut tx = self.core.db.write().await?;
        let row = store::measurement_by_measurement_id(
            tx.conn(),
            &key.measurement_consumer_id,
            key.external_measurement_id,
        )
        .await?
        .ok_or_else(|| Status::not_found(format!("measurement {name} not found")))?;
        if is_terminal(row.state) {
            return Err(Status::failed_precondition(format!(
                "measurement {name} is already {}",
                state_name(row.state)
            )));
        }
        let id = row.external_computation_id;
        store::end_measurement(
            &mut tx,
            id,
            ComputationState::Cancelled as i32,
            "Cancelled by the measurement consumer",
        )
        .await?;
        let row = store::measurement_by_computation_id(tx.conn(), id)
            .await?
            .ok_or_else(|| Status::internal("measurement vanished"))?;
        tx.commit().await?;
        halo_crashpoint::point("kingdom.cancel_measurement");
        Ok(Response::new(self.core.measurement_view(&row)))
    }
}

/// Longest `page_token` accepted (a real one is well under 100 characters).
const MAX_PAGE_TOKEN_CHARS: usize = 512;

/// A decoded `ListRequisitions` page token: the parent it was issued for and the sort key of
/// the last requisition of the previous page (the next page starts strictly after it).
///
/// Encoded as base64url (no padding) of a serialized `halo.v1.ListRequisitionsPageToken`.
/// A token carries no secret and grants nothing: the listing is always filtered by the
/// authorized parent, so a made-up position only moves where that listing starts. A token is
/// refused (INVALID_ARGUMENT) for any parent other than its own, and when it is not a token
/// this Kingdom could have issued.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequisitionPageToken {
    /// `dataProviders/{data_provider}`.
    pub parent: String,
    pub create_time_micros: i64,
    pub external_computation_id: i64,
    pub ordinal: i64,
}

impl RequisitionPageToken {
    fn at(parent: &str, position: store::RequisitionPosition) -> RequisitionPageToken {
        RequisitionPageToken {
            parent: parent.to_owned(),
            create_time_micros: position.create_time_micros,
            external_computation_id: position.external_computation_id,
            ordinal: position.ordinal,
        }
    }

    fn position(&self) -> store::RequisitionPosition {
        store::RequisitionPosition {
            create_time_micros: self.create_time_micros,
            external_computation_id: self.external_computation_id,
            ordinal: self.ordinal,
        }
    }

    /// The opaque string form.
    pub fn encode(&self) -> String {
        let token = ListRequisitionsPageToken {
            parent: self.parent.clone(),
            last_create_time_micros: self.create_time_micros,
            last_external_computation_id: self.external_computation_id,
            last_ordinal: self.ordinal,
        };
        URL_SAFE_NO_PAD.encode(token.encode_to_vec())
    }

    /// Decodes a token presented with a request for `parent`. Every error is INVALID_ARGUMENT.
    pub fn decode(token: &str, parent: &str) -> Result<RequisitionPageToken, Status> {
        let bad = |why: &str| Status::invalid_argument(format!("invalid page_token: {why}"));
        if token.len() > MAX_PAGE_TOKEN_CHARS {
            return Err(bad("too long"));
        }
        let bytes = URL_SAFE_NO_PAD
            .decode(token.trim_end_matches('='))
            .map_err(|_| bad("not base64url"))?;
        let t = ListRequisitionsPageToken::decode(bytes.as_slice())
            .map_err(|_| bad("not a ListRequisitions page token"))?;
        if t.parent != parent {
            return Err(bad("it was issued for another parent"));
        }
        if t.last_create_time_micros < 0
            || t.last_external_computation_id <= 0
            || t.last_ordinal < 0
        {
            return Err(bad("position out of range"));
        }
        Ok(RequisitionPageToken {
            parent: t.parent,
            create_time_micros: t.last_create_time_micros,
            external_computation_id: t.last_external_computation_id,
            ordinal: t.last_ordinal,
        })
    }
}

/// The number of requisitions to return for a requested `page_size`.
fn page_size(requested: i32, default: usize, max: usize) -> Result<usize, Status> {
    let max = max.max(1);
    match usize::try_from(requested) {
        Err(_) => Err(Status::invalid_argument(format!(
            "page_size must not be negative (got {requested})"
        ))),
        Ok(0) => Ok(default.clamp(1, max)),
        Ok(n) => Ok(n.min(max)),
    }
}

#[tonic::async_trait]
impl DataProviderRequisitions for DataProviderRequisitionsService {
    async fn list_requisitions(
        &self,
        request: Request<ListRequisitionsRequest>,
    ) -> Result<Response<ListRequisitionsResponse>, Status> {
        let parent = &request.get_ref().parent;
        let dp = names::parse_data_provider(parent)?;
        self.core
            .require_named(Rpc::ListRequisitions, &request, parent, &dp)?;
        let size = page_size(
            request.get_ref().page_size,
            self.core.default_page_size,
            self.core.max_page_size,
        )?;
        let after = match request.get_ref().page_token.as_str() {
            "" => store::RequisitionPosition::START,
            token => RequisitionPageToken::decode(token, parent)?.position(),
        };
        let mut tx = self.core.db.read().await?;
        // One more than a page tells whether another page follows.
        let mut rows = store::fulfillable_requisitions(
            &mut tx,
            &dp,
            RequisitionState::Unfulfilled as i32,
            ComputationState::PendingRequisitionFulfillment as i32,
            after,
            i64::try_from(size.saturating_add(1)).unwrap_or(i64::MAX),
        )
        .await?;
        let next_page_token = if rows.len() > size {
            rows.truncate(size);
            rows.last()
                .map(|last| RequisitionPageToken::at(parent, last.position()).encode())
                .unwrap_or_default()
        } else {
            String::new()
        };
        let mut computations = HashMap::new();
        let mut out = Vec::with_capacity(rows.len());
        for row in rows {
            let row = row.requisition;
            let id = row.external_computation_id;
            let (computation, protocol) = match computations.entry(id) {
                Entry::Occupied(e) => e.into_mut(),
                Entry::Vacant(e) => {
                    let Some(data) = store::load_computation(&mut tx, id).await? else {
                        continue;
                    };
                    let protocol = protocol_of(&data.measurement)?;
                    e.insert((self.core.computation_view(&data)?, protocol))
                }
            };
            let fulfilling_duchy = match protocol.assigns_fulfilling_duchy() {
                true => row.fulfilling_duchy_id.clone().unwrap_or_default(),
                false => String::new(),
            };
            out.push(DataProviderRequisition {
                name: names::data_provider_requisition_name(&dp, row.external_requisition_id),
                requisition: Some(self.core.requisition_view(&row)?),
                computation: Some(computation.clone()),
                encrypted_requisition_spec: row.encrypted_requisition_spec.clone(),
                etag: store::etag(row.update_time),
                fulfilling_duchy,
            });
        }
        tx.commit().await.map_err(db_error)?;
        Ok(Response::new(ListRequisitionsResponse {
            requisitions: out,
            next_page_token,
        }))
    }
}

#[tonic::async_trait]
impl Certificates for CertificatesService {
    async fn get_certificate(
        &self,
        request: Request<GetCertificateRequest>,
    ) -> Result<Response<Certificate>, Status> {
        let caller = self.core.trust.authenticate(&request)?;
        let name = &request.get_ref().name;
        Rpc::GetCertificate.check_request(&caller, name, &Facts::default())?;
        let key = CertificateKey::parse(name)?;
        let der = self
            .core
            .directory
            .certificate(&key)
            .ok_or_else(|| Status::not_found(format!("certificate {name} not found")))?;
        Ok(Response::new(Certificate {
            name: key.name(),
            x509_der: der.to_vec(),
        }))
    }
}

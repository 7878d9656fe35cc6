//! The `RequisitionFulfillment` server: data providers stream their requisition data to the
//! duchy that must hold it. The duchy verifies the fingerprint and nonce, stores the data
//! once (a retried fulfilment does not write again) and reports the fulfilment to the
//! Kingdom.

use std::sync::Arc;

use api::requisition_fulfillment_server::{RequisitionFulfillment, RequisitionFulfillmentServer};
use halo_authz::{Facts, Rpc};
use halo_proto::api::v2alpha as api;
use halo_proto::halo::v1::MeasurementSpec;
use halo_proto::system::v1alpha as sys;
use prost::Message;
use sha2::{Digest, Sha256};
use tonic::{Request, Response, Status, Streaming};

use crate::blobs::receive_body;
use crate::core::Core;
use crate::keyed_lock::{KeyedLock, KeyedLocks};
use crate::names;
use halo_protocol::{DeclaredSizeError, SystemProtocol, requisition_payload_bound};

pub struct FulfillmentService {
    core: Arc<Core>,
    locks: Arc<LockMap>,
}

/// Concurrent fulfilments of the same requisition (global id, requisition id) are serialized
/// from "is anything recorded?" to "recorded" (the body goes to a fixed blob name, which must
/// never be overwritten once a header refers to it).
type LockMap = KeyedLocks<(String, String)>;

pub fn server(core: Arc<Core>) -> RequisitionFulfillmentServer<FulfillmentService> {
    let max_message = core.config.limits.server.max_message_bytes;
    RequisitionFulfillmentServer::new(FulfillmentService {
        core,
        locks: Arc::default(),
    })
    .max_decoding_message_size(max_message)
    .max_encoding_message_size(max_message)
}

/// The status a data provider gets when the duchy stored its upload but could not tell the
/// Kingdom: a Kingdom restarting, overloaded or unreachable (its client-side transport errors
/// arrive as UNKNOWN or CANCELLED, whose cause does not cross the wire) is UNAVAILABLE, so the
/// provider retries (the stored upload makes its retry cheap and exact); anything else as is.
pub fn kingdom_call_status(s: Status) -> Status {
    use tonic::Code;
    match s.code() {
        Code::Unavailable
        | Code::Unknown
        | Code::Cancelled
        | Code::DeadlineExceeded
        | Code::ResourceExhausted
        | Code::Aborted => Status::unavailable(format!(
            "the upload is stored; telling the Kingdom failed ({:?}: {}), retry",
            s.code(),
            s.message()
        )),
        _ => s,
    }
}

fn internal(e: anyhow::Error) -> Status {
    crate::blobs::storage_status(e)
}

/// What the first message of a `FulfillRequisition` stream says.
#[derive(Clone, Debug, PartialEq)]
pub struct FulfillHeader {
    pub header: api::fulfill_requisition_request::Header,
    /// `dp` of the header's `dataProviders/{dp}/requisitions/{r}`.
    pub data_provider: String,
    /// `r` of the header's `dataProviders/{dp}/requisitions/{r}`.
    pub requisition: String,
}

/// Decodes the first message of a `FulfillRequisition` stream (`None`: the stream was empty):
/// it must be a header naming `dataProviders/{dp}/requisitions/{r}` with a non-zero nonce.
pub fn parse_fulfill_header(
    first: Option<api::FulfillRequisitionRequest>,
) -> Result<FulfillHeader, Status> {
    use api::fulfill_requisition_request::Payload;
    let header = match first {
        None => return Err(Status::invalid_argument("empty FulfillRequisition stream")),
        Some(api::FulfillRequisitionRequest {
            payload: Some(Payload::Header(h)),
        }) => h,
        Some(_) => {
            return Err(Status::invalid_argument(
                "the first message must be the header",
            ));
        }
    };
    let (dp, rid) = names::parse_public_requisition(&header.name).ok_or_else(|| {
        Status::invalid_argument(format!("malformed requisition name {:?}", header.name))
    })?;
    if header.nonce == 0 {
        return Err(Status::invalid_argument("nonce must be set"));
    }
    Ok(FulfillHeader {
        data_provider: dp.to_owned(),
        requisition: rid.to_owned(),
        header,
    })
}

/// The payload of a message after the header: `Some(bytes)` for a body chunk, `None` for
/// anything else (which ends the upload with INVALID_ARGUMENT).
pub fn fulfill_body_chunk(m: api::FulfillRequisitionRequest) -> Option<Vec<u8>> {
    use api::fulfill_requisition_request::Payload;
    halo_crashpoint::point("fulfil.chunk");
    match m.payload {
        Some(Payload::BodyChunk(c)) => Some(c.data),
        _ => None,
    }
}

/// The most bytes the body of this fulfilment may have ([`requisition_payload_bound`]); a
/// declared register count above the configured maximum is RESOURCE_EXHAUSTED before any byte
/// of the body is read.
fn requisition_bound(
    core: &Core,
    computation: &sys::Computation,
    header: &api::fulfill_requisition_request::Header,
) -> Result<u64, Status> {
    requisition_payload_bound(
        computation,
        header.protocol.as_ref(),
        &core.payload_limits(),
    )
    .map_err(|e| match e {
        DeclaredSizeError::Negative(_) => Status::invalid_argument(e.to_string()),
        DeclaredSizeError::AboveMaximum { .. } => Status::resource_exhausted(e.to_string()),
    })
}

/// The data provider owning certificate `name` (`""` if it is not a data provider's).
fn certificate_data_provider(name: &str) -> &str {
    names::CertificateName::parse(name)
        .filter(|c| c.kind == names::OwnerKind::DataProvider)
        .map_or("", |c| c.owner)
}

/// The header as stored and compared: everything but the etag (a retry may carry a fresh
/// one).
fn canonical_header(header: &api::fulfill_requisition_request::Header) -> Vec<u8> {
    let mut h = header.clone();
    h.etag.clear();
    h.encode_to_vec()
}

/// Reads the rest of a fulfilment stream without storing it: (size, SHA-256).
async fn hash_body(
    stream: &mut Streaming<api::FulfillRequisitionRequest>,
    max: u64,
) -> Result<(u64, Vec<u8>), Status> {
    let mut hasher = Sha256::new();
    let mut size = 0u64;
    while let Some(m) = stream
        .message()
        .await
        .map_err(halo_limits::oversized_message_status)?
    {
        let data = fulfill_body_chunk(m)
            .ok_or_else(|| Status::invalid_argument("only body chunks may follow the header"))?;
        size += data.len() as u64;
        if size > max {
            return Err(Status::resource_exhausted(format!(
                "payload larger than {max} bytes"
            )));
        }
        hasher.update(&data);
    }
    Ok((size, hasher.finalize().to_vec()))
}

/// SHA-256 of a stored blob, read in chunks.
async fn hash_file(path: &std::path::Path) -> anyhow::Result<Vec<u8>> {
    use anyhow::Context as _;
    use tokio::io::AsyncReadExt as _;
    let mut file = tokio::fs::File::open(path)
        .await
        .with_context(|| format!("opening {}", path.display()))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = file.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hasher.finalize().to_vec())
}

impl FulfillmentService {
    /// Stores the body and header of a fulfilment exactly once. Concurrent calls for one
    /// requisition are serialized; the first records body and header together, later ones
    /// (retries) are accepted only if header (etag aside) and body are identical to what is
    /// stored, else FAILED_PRECONDITION. Never leaves one call's body with another's header.
    async fn store_once(
        &self,
        stream: &mut Streaming<api::FulfillRequisitionRequest>,
        global_id: &str,
        rid: &str,
        dp: &str,
        header: &api::fulfill_requisition_request::Header,
        max: u64,
    ) -> Result<(), Status> {
        let core = &self.core;
        let _lock = KeyedLock::acquire(&self.locks, (global_id.to_owned(), rid.to_owned())).await;
        let stored = core
            .store
            .requisitions(global_id)
            .await
            .map_err(internal)?
            .into_iter()
            .find(|r| r.requisition_id == rid)
            .ok_or_else(|| Status::internal(format!("requisition {rid} vanished")))?;
        let wanted = canonical_header(header);
        if let Some(blob) = &stored.blob {
            let (_, body_hash) = hash_body(stream, max).await?;
            let stored_header = stored
                .header
                .as_deref()
                .and_then(|b| api::fulfill_requisition_request::Header::decode(b).ok())
                .map(|h| canonical_header(&h));
            let path = core.store.blob_path(blob).map_err(internal)?;
            let stored_hash = hash_file(&path).await.map_err(internal)?;
            if stored_header.as_deref() != Some(wanted.as_slice()) || stored_hash != body_hash {
                return Err(Status::failed_precondition(format!(
                    "requisition {rid} was already fulfilled with different data"
                )));
            }
            return Ok(());
        }
        let key = crate::blobs::requisition_key(global_id, rid)
            .map_err(|e| Status::invalid_argument(format!("{e:#}")))?;
        let path = core.store.blob_path(&key).map_err(internal)?;
        let (size, _) = receive_body(stream, &path, max, false, fulfill_body_chunk).await?;
        let recorded = core
            .store
            .record_requisition(global_id, rid, &key, &wanted, header.nonce, core.id())
            .await
            .map_err(internal)?;
        if !recorded {
            // Cannot happen while the lock is held (only this server records); refuse
            // rather than guess which body the stored header belongs to.
            return Err(Status::aborted(format!(
                "requisition {rid} was recorded concurrently; retry"
            )));
        }
        halo_crashpoint::point("fulfil.recorded");
        core.store
            .audit(
                global_id,
                "requisition",
                &format!("{rid}: {size} bytes from {dp}"),
            )
            .await
            .map_err(internal)?;
        Ok(())
    }

    /// Whether the Kingdom's stored state says this duchy already fulfilled `name` with
    /// `nonce` (so a FAILED_PRECONDITION from a repeated FulfillRequisition is a success).
    async fn fulfilled_at_kingdom(&self, global_id: &str, name: &str, nonce: u64) -> bool {
        let core = &self.core;
        let computation = match core
            .computations_client()
            .get_computation(sys::GetComputationRequest {
                name: names::computation_name(global_id),
            })
            .await
        {
            Ok(c) => c.into_inner(),
            Err(s) => {
                tracing::warn!(computation = %global_id, "cannot re-read the computation: {s}");
                return false;
            }
        };
        let me = names::participant_name(global_id, core.id());
        computation.requisitions.iter().any(|r| {
            r.name == name
                && r.state == sys::requisition::State::Fulfilled as i32
                && r.nonce == nonce
                && r.fulfilling_computation_participant == me
        })
    }
}

#[tonic::async_trait]
impl RequisitionFulfillment for FulfillmentService {
    async fn fulfill_requisition(
        &self,
        request: Request<Streaming<api::FulfillRequisitionRequest>>,
    ) -> Result<Response<api::FulfillRequisitionResponse>, Status> {
        let core = &self.core;
        let caller = core.config.trust.authenticate(&request)?;
        // Bounded before anything is read: at most N concurrent uploads per caller.
        let _permit = core
            .fulfillment_streams
            .try_acquire(&caller.resource_name())?;
        let mut stream = request.into_inner();
        let FulfillHeader {
            header,
            data_provider,
            requisition,
        } = parse_fulfill_header(
            stream
                .message()
                .await
                .map_err(halo_limits::oversized_message_status)?,
        )?;
        let (dp, rid) = (data_provider.as_str(), requisition.as_str());
        let rpc = Rpc::FulfillRequisition;
        // A certificate the header names to vouch for the data must be the caller's own (the
        // protocol checks what it signs, and that it is the requisition's data provider's).
        let certificate = header
            .protocol
            .as_ref()
            .and_then(SystemProtocol::vouching_certificate);
        let resource = match certificate {
            Some(c) => format!("{} (certificate {c:?})", header.name),
            None => header.name.clone(),
        };
        rpc.check_request(
            &caller,
            &resource,
            &Facts {
                named: Some(dp),
                certificate_owner: Some(certificate.map(certificate_data_provider)),
                ..Facts::default()
            },
        )?;
        let rows = core.store.find_requisition(rid).await.map_err(internal)?;
        let mut found = None;
        for r in rows {
            let Some(c) = core.store.get(&r.global_id).await.map_err(internal)? else {
                continue;
            };
            let comp = sys::Computation::decode(c.computation.as_slice())
                .map_err(|e| Status::internal(format!("stored computation: {e}")))?;
            let fingerprint = Sha256::new()
                .chain_update(&comp.measurement_spec)
                .chain_update(&r.requisition_spec_hash)
                .finalize();
            if fingerprint.as_slice() == header.requisition_fingerprint.as_slice() {
                found = Some((r, c, comp));
                break;
            }
        }
        let Some((req, row, comp)) = found else {
            return Err(Status::not_found(format!(
                "no computation at duchy {} is expecting requisition {rid} with this fingerprint",
                core.id()
            )));
        };
        // Fulfilment is tied to the requisition's own data provider (as the Kingdom recorded
        // it), not only to whoever knows its nonce and names itself in the request.
        let system_name = format!("computations/{}/requisitions/{rid}", row.global_id);
        let owner = comp
            .requisitions
            .iter()
            .find(|r| r.name == system_name)
            .and_then(|r| names::parse_data_provider(&r.data_provider))
            .unwrap_or("");
        rpc.check_resource(
            &caller,
            &header.name,
            &Facts {
                requisition_owner: Some(owner),
                ..Facts::default()
            },
        )?;
        let nonce_hash = Sha256::digest(header.nonce.to_be_bytes());
        if nonce_hash.as_slice() != req.nonce_hash.as_slice() {
            return Err(Status::failed_precondition(
                "nonce does not match the requisition's nonce hash",
            ));
        }
        let spec = MeasurementSpec::decode(comp.measurement_spec.as_slice())
            .map_err(|e| Status::failed_precondition(format!("measurement spec: {e}")))?;
        if !spec
            .nonce_hashes
            .iter()
            .any(|h| h.as_slice() == nonce_hash.as_slice())
        {
            return Err(Status::failed_precondition(
                "nonce hash is not listed in the measurement spec",
            ));
        }
        if !req.fulfilling_duchy.is_empty() && req.fulfilling_duchy != core.id() {
            return Err(Status::failed_precondition(format!(
                "requisition {rid} must be fulfilled at duchy {}, not {}",
                req.fulfilling_duchy,
                core.id()
            )));
        }
        if row.terminal.is_some() {
            return Err(Status::failed_precondition(format!(
                "computation {} has finished",
                row.global_id
            )));
        }

        let max = requisition_bound(core, &comp, &header)?;
        self.store_once(&mut stream, &row.global_id, rid, dp, &header, max)
            .await?;

        let res = core
            .requisitions_client()
            .fulfill_requisition(sys::FulfillRequisitionRequest {
                name: system_name.clone(),
                nonce: header.nonce,
                fulfillment_context: header.fulfillment_context.map(|c| {
                    sys::requisition::FulfillmentContext {
                        build_label: c.build_label,
                        warnings: c.warnings,
                    }
                }),
                etag: header.etag,
            })
            .await;
        match res {
            Ok(_) => {}
            Err(s) if s.code() == tonic::Code::FailedPrecondition => {
                // Only "already fulfilled by us with this nonce" (an earlier attempt whose
                // response was lost) counts as success; any other precondition failure
                // (cancelled computation, requisition withdrawn, ...) is reported as is.
                if !self
                    .fulfilled_at_kingdom(&row.global_id, &system_name, header.nonce)
                    .await
                {
                    return Err(s);
                }
            }
            Err(s) => return Err(kingdom_call_status(s)),
        }
        Ok(Response::new(api::FulfillRequisitionResponse {
            state: api::requisition::State::Fulfilled as i32,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::kingdom_call_status;
    use tonic::{Code, Status};

    #[test]
    fn a_kingdom_that_cannot_be_reached_makes_the_provider_retry() {
        for code in [
            Code::Unavailable,
            Code::Unknown,
            Code::Cancelled,
            Code::DeadlineExceeded,
            Code::ResourceExhausted,
            Code::Aborted,
        ] {
            let s = kingdom_call_status(Status::new(code, "transport error"));
            assert_eq!(s.code(), Code::Unavailable, "{code:?}");
            assert!(s.message().contains("stored"), "{}", s.message());
        }
        for code in [
            Code::PermissionDenied,
            Code::InvalidArgument,
            Code::NotFound,
            Code::FailedPrecondition,
        ] {
            assert_eq!(kingdom_call_status(Status::new(code, "x")).code(), code);
        }
    }
}

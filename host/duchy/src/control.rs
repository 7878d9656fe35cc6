//! The `ComputationControl` server: other duchies deliver stage payloads
//! (`AdvanceComputation`, client-streaming) and ask for this duchy's stage
//! (`GetComputationStage`). Deliveries are idempotent: a payload already received from the
//! same sender under the same description is acknowledged without change when the body is
//! identical, and refused with FAILED_PRECONDITION when it differs (the recorded body is never
//! replaced). Concurrent deliveries of one input are serialized ([`InputLocks`]), so a
//! second one waits for the first and then gets that answer (rather than ABORTED): exactly one
//! body is stored and recorded, with its size and SHA-256.

use std::sync::Arc;

use halo_authz::{Facts, Rpc};
use halo_identity::Principal;
use halo_proto::system::v1alpha as sys;
use prost::Message;
use sys::computation_control_server::{ComputationControl, ComputationControlServer};
use tonic::{Request, Response, Status, Streaming};

use crate::blobs::receive_body;
use crate::core::Core;
use crate::keyed_lock::{KeyedLock, KeyedLocks};
use crate::names;
use crate::protocol::{PayloadKind, StageKind, SystemProtocol, find_stage, payload_bound};
use crate::store::InputRow;

pub struct ControlService {
    core: Arc<Core>,
    locks: Arc<InputLocks>,
}

/// An input of a computation: (global id, description, sender duchy id).
type InputId = (String, i32, String);

/// Concurrent deliveries of the same input are serialized from "is anything recorded?" to
/// "recorded" (or refused): the body goes to a fixed blob name, which must never be
/// overwritten once a record refers to it, nor paired with another delivery's size and digest.
/// Keyed by sender, so a peer only ever waits for its own deliveries.
type InputLocks = KeyedLocks<InputId>;

pub fn server(core: Arc<Core>) -> ComputationControlServer<ControlService> {
    let max_message = core.config.limits.server.max_message_bytes;
    ComputationControlServer::new(ControlService {
        core,
        locks: Arc::default(),
    })
    .max_decoding_message_size(max_message)
    .max_encoding_message_size(max_message)
}

/// The payload is recorded but the next step could not be taken now: the sender retries
/// (its retry takes the duplicate path, which re-evaluates).
fn unavailable(e: anyhow::Error) -> Status {
    tracing::warn!("ComputationControl: re-evaluating the stage failed: {e:#}");
    Status::unavailable(format!("payload recorded; moving on failed, retry: {e:#}"))
}

fn internal(e: anyhow::Error) -> Status {
    crate::blobs::storage_status(e)
}

/// Authenticates the caller and admits it to `rpc` (duchies only, per `halo_authz::MATRIX`).
fn caller_duchy<T>(core: &Core, rpc: Rpc, req: &Request<T>) -> Result<(Principal, String), Status> {
    let caller = core.config.trust.authenticate(req)?;
    let id = rpc.admit(&caller)?.to_owned();
    Ok((caller, id))
}

fn header_protocol(
    h: &sys::advance_computation_request::Header,
) -> Result<(SystemProtocol, i32), Status> {
    h.protocol
        .as_ref()
        .map(SystemProtocol::of_advance_header)
        .ok_or_else(|| Status::invalid_argument("header has no protocol"))
}

/// What the first message of an `AdvanceComputation` stream says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AdvanceHeader {
    /// The computation's global id (from `computations/{id}`).
    pub gid: String,
    pub protocol: SystemProtocol,
    /// The payload description (positive).
    pub description: i32,
}

/// Decodes the first message of an `AdvanceComputation` stream (`None`: the stream was empty):
/// it must be a header naming a computation, a protocol and a positive description.
pub fn parse_advance_header(
    first: Option<sys::AdvanceComputationRequest>,
) -> Result<AdvanceHeader, Status> {
    use sys::advance_computation_request::Payload;
    let header = match first {
        None => return Err(Status::invalid_argument("empty AdvanceComputation stream")),
        Some(sys::AdvanceComputationRequest {
            payload: Some(Payload::Header(h)),
        }) => h,
        Some(_) => {
            return Err(Status::invalid_argument(
                "the first message must be the header",
            ));
        }
    };
    let gid = names::parse_computation(&header.name)
        .ok_or_else(|| {
            Status::invalid_argument(format!("malformed computation name {:?}", header.name))
        })?
        .to_string();
    let (protocol, description) = header_protocol(&header)?;
    if description <= 0 {
        return Err(Status::invalid_argument(
            "header description is unspecified",
        ));
    }
    Ok(AdvanceHeader {
        gid,
        protocol,
        description,
    })
}

/// The payload of a message after the header: `Some(bytes)` for a body chunk, `None` for
/// anything else (which ends the upload with INVALID_ARGUMENT).
pub fn advance_body_chunk(m: sys::AdvanceComputationRequest) -> Option<Vec<u8>> {
    use sys::advance_computation_request::Payload;
    halo_crashpoint::point("recv.chunk");
    match m.payload {
        Some(Payload::BodyChunk(c)) => Some(c.partial_data),
        _ => None,
    }
}

/// The duchy ids of the participants of a stored computation snapshot (none if it does not
/// decode, so every participant check fails closed).
fn participant_ids(computation: &[u8]) -> Vec<String> {
    sys::Computation::decode(computation)
        .map(|c| {
            c.computation_participants
                .iter()
                .filter_map(|p| names::parse_participant(&p.name).map(|(_, d)| d.to_owned()))
                .collect()
        })
        .unwrap_or_default()
}

/// Reads the rest of a delivery of an input that was already received, without storing it,
/// still enforcing the message shape (body chunks only, at least one) and the byte bound
/// `max` (RESOURCE_EXHAUSTED beyond it). Returns (size, hex SHA-256) of the body, to compare
/// with the recorded input.
async fn drain(
    stream: &mut Streaming<sys::AdvanceComputationRequest>,
    max: u64,
) -> Result<(u64, String), Status> {
    use sha2::Digest;
    let mut hasher = sha2::Sha256::new();
    let mut size = 0u64;
    let mut chunks = 0usize;
    while let Some(m) = stream
        .message()
        .await
        .map_err(halo_limits::oversized_message_status)?
    {
        let data = advance_body_chunk(m)
            .ok_or_else(|| Status::invalid_argument("only body chunks may follow the header"))?;
        chunks += 1;
        size = size.saturating_add(data.len() as u64);
        if size > max {
            return Err(Status::resource_exhausted(format!(
                "payload larger than {max} bytes"
            )));
        }
        hasher.update(&data);
    }
    if chunks == 0 {
        return Err(Status::invalid_argument("header without body"));
    }
    Ok((size, hex::encode(hasher.finalize())))
}

#[tonic::async_trait]
impl ComputationControl for ControlService {
    async fn advance_computation(
        &self,
        request: Request<Streaming<sys::AdvanceComputationRequest>>,
    ) -> Result<Response<sys::AdvanceComputationResponse>, Status> {
        let core = &self.core;
        let rpc = Rpc::AdvanceComputation;
        let (caller, sender) = caller_duchy(core, rpc, &request)?;
        // Bounded before anything is read: at most N concurrent deliveries per peer.
        let _permit = core.advance_streams.try_acquire(&caller.resource_name())?;
        let mut stream = request.into_inner();
        let AdvanceHeader {
            gid,
            protocol,
            description,
        } = parse_advance_header(
            stream
                .message()
                .await
                .map_err(halo_limits::oversized_message_status)?,
        )?;
        let row = core
            .store
            .get(&gid)
            .await
            .map_err(internal)?
            .ok_or_else(|| Status::not_found(format!("computation {gid} is unknown here")))?;
        let resource = names::computation_name(&gid);
        let participants = participant_ids(&row.computation);
        // Before the waiting stage is known: the sender must take part at all.
        rpc.check_resource(
            &caller,
            &resource,
            &Facts {
                participants: Some(&participants),
                expected_senders: Some(None),
                ..Facts::default()
            },
        )?;
        if row.protocol != protocol {
            return Err(Status::invalid_argument(format!(
                "computation {gid} runs {}, the header says {protocol}",
                row.protocol
            )));
        }
        // The bound follows the computation's protocol config (register count, sketch size,
        // requisitions), so an oversized delivery stops at the bound, before more is read or
        // written.
        let computation = sys::Computation::decode(row.computation.as_slice())
            .map_err(|e| Status::internal(format!("stored computation: {e}")))?;
        let max = payload_bound(
            &computation,
            PayloadKind::StageInput,
            &core.payload_limits(),
        );
        // Held until this delivery is recorded or refused (see `InputLocks`).
        let _lock =
            KeyedLock::acquire(&self.locks, (gid.clone(), description, sender.clone())).await;
        if let Some(stored) = core
            .store
            .input(&gid, description, &sender)
            .await
            .map_err(internal)?
        {
            let (size, sha256) = drain(&mut stream, max).await?;
            core.metrics.bytes_received(&sender, size);
            if u64::try_from(stored.size).ok() != Some(size) || stored.sha256 != sha256 {
                return Err(Status::failed_precondition(format!(
                    "description {description} of computation {gid} was already received from \
                     {sender} with a different body ({} bytes, SHA-256 {}); this one has {size} \
                     bytes, SHA-256 {sha256}",
                    stored.size, stored.sha256
                )));
            }
            // A retry of a delivery that was recorded but whose effect (the next stage) may not
            // have happened (crash, error): re-evaluate before acknowledging.
            core.drive(&gid).await.map_err(unavailable)?;
            return Ok(Response::new(sys::AdvanceComputationResponse {}));
        }
        if row.terminal.is_some() {
            return Err(Status::failed_precondition(format!(
                "computation {gid} has finished here"
            )));
        }
        let plugin = core.protocol_for(&row).map_err(internal)?;
        let stages = plugin.stages();
        if row.stage == crate::store::START_STAGE {
            return Err(Status::unavailable(format!(
                "computation {gid} is not started here yet; retry"
            )));
        }
        let info = find_stage(&stages, row.stage)
            .ok_or_else(|| Status::internal(format!("stage {} not in stage table", row.stage)))?;
        let from = match &info.kind {
            StageKind::WaitInputs {
                description: d,
                from,
                next,
            } if *d == description => from.clone(),
            _ => {
                return Err(Status::failed_precondition(format!(
                    "computation {gid} is in stage {} and does not wait for description {description}",
                    info.name
                )));
            }
        };
        let expected = core.expected_senders(&row, &from).map_err(internal)?;
        rpc.check_resource(
            &caller,
            &resource,
            &Facts {
                participants: Some(&participants),
                expected_senders: Some(expected.as_deref()),
                ..Facts::default()
            },
        )?;

        let key = crate::blobs::input_key(&gid, description, &sender)
            .map_err(|e| Status::invalid_argument(format!("{e:#}")))?;
        let path = core.store.blob_path(&key).map_err(internal)?;
        // Under the lock with nothing recorded for this input: no record refers to `path`, so
        // writing it cannot change a recorded input.
        let (size, sha256) =
            receive_body(&mut stream, &path, max, true, advance_body_chunk).await?;
        core.metrics.bytes_received(&sender, size);
        let input = InputRow {
            description,
            sender: sender.clone(),
            blob: key,
            size: size as i64,
            sha256,
        };
        if !core
            .store
            .record_input(&gid, row.stage, &input)
            .await
            .map_err(internal)?
        {
            // The computation moved on meanwhile; nothing refers to the blob just written (only
            // a delivery holding this input's lock records it).
            if let Err(e) = tokio::fs::remove_file(&path).await {
                tracing::warn!(computation = %gid, "removing unrecorded input blob: {e}");
            }
            return Err(Status::failed_precondition(format!(
                "computation {gid} left stage {}",
                info.name
            )));
        }
        halo_crashpoint::point("recv.recorded");
        // The one place that decides what happens next: moves on if every input is here.
        core.drive(&gid).await.map_err(unavailable)?;
        Ok(Response::new(sys::AdvanceComputationResponse {}))
    }

    async fn get_computation_stage(
        &self,
        request: Request<sys::GetComputationStageRequest>,
    ) -> Result<Response<sys::ComputationStage>, Status> {
        let core = &self.core;
        let rpc = Rpc::GetComputationStage;
        let (caller, _) = caller_duchy(core, rpc, &request)?;
        let name = request.into_inner().name;
        let (gid, duchy) = names::parse_computation_stage(&name).ok_or_else(|| {
            Status::invalid_argument(format!("malformed ComputationStage name {name:?}"))
        })?;
        if duchy != core.id() {
            return Err(Status::invalid_argument(format!(
                "this is duchy {}, not {duchy}",
                core.id()
            )));
        }
        let row = core
            .store
            .get(gid)
            .await
            .map_err(internal)?
            .ok_or_else(|| Status::not_found(format!("computation {gid} is unknown here")))?;
        let participants = participant_ids(&row.computation);
        rpc.check_resource(
            &caller,
            &name,
            &Facts {
                participants: Some(&participants),
                ..Facts::default()
            },
        )?;
        // The creation pseudo-stage is not a protocol stage: report STAGE_UNSPECIFIED (0),
        // which is before every stage a peer waits for.
        let number = row.stage.max(0);
        let stage = row.protocol.computation_stage(number);
        use sha2::Digest;
        let etag = format!(
            "W/\"{}\"",
            hex::encode(&sha2::Sha256::digest(row.version.to_be_bytes())[..8])
        );
        Ok(Response::new(sys::ComputationStage {
            name,
            stage: Some(stage),
            etag,
        }))
    }
}

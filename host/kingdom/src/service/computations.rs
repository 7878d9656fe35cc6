//! system `Computations`: GetComputation, StreamActiveComputations, SetComputationResult.

use std::pin::Pin;
use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use halo_proto::system::v1alpha::computation::State;
use halo_proto::system::v1alpha::computations_server::Computations;
use halo_proto::system::v1alpha::{
    Computation, GetComputationRequest, SetComputationResultRequest,
    StreamActiveComputationsContinuationToken, StreamActiveComputationsRequest,
    StreamActiveComputationsResponse,
};
use prost::Message as _;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use halo_authz::{Facts, Rpc};
use halo_identity::Principal;

use crate::core::{Core, participant_ids, state_name};
use crate::names::{CertificateKey, ComputationKey};
use crate::store::{self, db_error};

/// Computations per database read of `StreamActiveComputations` (as the reference).
pub const STREAM_BATCH_SIZE: i64 = 50;

/// States streamed by `StreamActiveComputations`. Like the reference implementation (and unlike
/// its proto comment) terminal states are included so heralds can clean up, and
/// PENDING_REQUISITION_FULFILLMENT is skipped (duchies have nothing to do in it).
pub const STREAMED_STATES: [State; 6] = [
    State::PendingRequisitionParams,
    State::PendingParticipantConfirmation,
    State::PendingComputation,
    State::Succeeded,
    State::Failed,
    State::Cancelled,
];

/// A resume position: the stream continues strictly after `(update_time, external_computation_id)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct StreamPosition {
    pub update_time_micros: i64,
    pub external_computation_id: i64,
}

impl StreamPosition {
    /// Before everything.
    pub const START: StreamPosition = StreamPosition {
        update_time_micros: i64::MIN,
        external_computation_id: i64::MIN,
    };

    /// Encodes as a continuation token: base64url (no padding) of a serialized
    /// `StreamActiveComputationsContinuationToken`.
    pub fn to_token(self) -> String {
        let token = StreamActiveComputationsContinuationToken {
            last_seen_update_time: Some(store::timestamp(self.update_time_micros)),
            // Positive ids only reach here.
            last_seen_external_computation_id: u64::try_from(self.external_computation_id)
                .unwrap_or_default(),
        };
        URL_SAFE_NO_PAD.encode(token.encode_to_vec())
    }

    /// Decodes a continuation token; the empty token means [`StreamPosition::START`].
    ///
    /// Tokens with sub-microsecond times (e.g. from another implementation) are handled
    /// exactly: no stored time equals such an instant, so the position becomes "after every
    /// computation at the preceding microsecond".
    pub fn from_token(token: &str) -> Result<StreamPosition, Status> {
        if token.is_empty() {
            return Ok(Self::START);
        }
        let bad =
            |why: &str| Status::invalid_argument(format!("malformed continuation token: {why}"));
        let bytes = URL_SAFE_NO_PAD
            .decode(token.trim_end_matches('='))
            .map_err(|_| bad("not base64url"))?;
        let token = StreamActiveComputationsContinuationToken::decode(bytes.as_slice())
            .map_err(|_| bad("not a StreamActiveComputationsContinuationToken"))?;
        let time = token.last_seen_update_time.unwrap_or_default();
        if !(0..1_000_000_000).contains(&time.nanos) {
            return Err(bad("timestamp nanos out of range"));
        }
        let micros = time
            .seconds
            .checked_mul(1_000_000)
            .and_then(|s| s.checked_add(i64::from(time.nanos / 1_000)))
            .ok_or_else(|| bad("timestamp out of range"))?;
        let id = if time.nanos % 1_000 != 0 {
            i64::MAX
        } else {
            i64::try_from(token.last_seen_external_computation_id).unwrap_or(i64::MAX)
        };
        Ok(StreamPosition {
            update_time_micros: micros,
            external_computation_id: id,
        })
    }
}

pub(crate) struct ComputationsService {
    pub core: Arc<Core>,
}

type StreamItem = Result<StreamActiveComputationsResponse, Status>;

/// One batch of the caller's streamed computations strictly after `after`, read on one snapshot.
async fn stream_batch(
    core: &Core,
    caller: &Principal,
    duchy_id: &str,
    after: StreamPosition,
) -> Result<Vec<(StreamPosition, Computation)>, Status> {
    let states = STREAMED_STATES
        .iter()
        .map(|s| (*s as i32).to_string())
        .collect::<Vec<_>>()
        .join(", ");
    let mut tx = core.db.read().await?;
    let rows: Vec<(i64, i64)> = sqlx::query_as(&format!(
        "SELECT m.external_computation_id, m.update_time FROM measurements m \
         JOIN computation_participants p \
           ON p.external_computation_id = m.external_computation_id AND p.duchy_id = ?1 \
         WHERE m.state IN ({states}) \
           AND (m.update_time > ?2 OR (m.update_time = ?2 AND m.external_computation_id > ?3)) \
         ORDER BY m.update_time, m.external_computation_id \
         LIMIT ?4"
    ))
    .bind(duchy_id)
    .bind(after.update_time_micros)
    .bind(after.external_computation_id)
    .bind(STREAM_BATCH_SIZE)
    .fetch_all(&mut *tx)
    .await
    .map_err(db_error)?;
    let mut out = Vec::with_capacity(rows.len());
    for (id, update_time) in rows {
        let Some(data) = store::load_computation(&mut tx, id).await? else {
            continue;
        };
        // The query already filters by participant; the matrix decides all the same.
        let participants = participant_ids(&data);
        let facts = Facts {
            participants: Some(&participants),
            ..Facts::default()
        };
        if Rpc::StreamActiveComputations
            .check_resource(caller, "", &facts)
            .is_err()
        {
            continue;
        }
        let computation = core.computation_view(&data)?;
        out.push((
            StreamPosition {
                update_time_micros: update_time,
                external_computation_id: id,
            },
            computation,
        ));
    }
    tx.commit().await.map_err(db_error)?;
    Ok(out)
}

/// Runs one `StreamActiveComputations` call until the client goes away, the maximum duration
/// elapses, or the server shuts down.
async fn run_stream(
    core: Arc<Core>,
    caller: Principal,
    duchy_id: String,
    mut after: StreamPosition,
    tx: mpsc::Sender<StreamItem>,
) {
    let deadline = tokio::time::Instant::now() + core.stream_max_duration;
    let mut changes = core.db.subscribe();
    let mut shutdown = core.shutdown.clone();
    loop {
        if *shutdown.borrow() || tokio::time::Instant::now() >= deadline {
            return;
        }
        // Mark the current commit generation as seen *before* reading, so a commit that
        // lands after the read wakes us up.
        changes.borrow_and_update();
        let batch = match stream_batch(&core, &caller, &duchy_id, after).await {
            Ok(batch) => batch,
            Err(status) => {
                let _ = tx.send(Err(status)).await;
                return;
            }
        };
        let full = i64::try_from(batch.len()).unwrap_or(i64::MAX) >= STREAM_BATCH_SIZE;
        for (position, computation) in batch {
            let item = StreamActiveComputationsResponse {
                computation: Some(computation),
                continuation_token: position.to_token(),
            };
            tokio::select! {
                sent = tx.send(Ok(item)) => {
                    if sent.is_err() {
                        return;
                    }
                    halo_crashpoint::point("kingdom.stream_item");
                }
                _ = shutdown.wait_for(|stop| *stop) => return,
                _ = tokio::time::sleep_until(deadline) => return,
            }
            after = position;
        }
        if full {
            continue;
        }
        tokio::select! {
            changed = changes.changed() => if changed.is_err() { return },
            _ = tokio::time::sleep(core.stream_poll_interval) => {}
            _ = tokio::time::sleep_until(deadline) => return,
            _ = tx.closed() => return,
            _ = shutdown.wait_for(|stop| *stop) => return,
        }
    }
}

#[tonic::async_trait]
impl Computations for ComputationsService {
    async fn get_computation(
        &self,
        request: Request<GetComputationRequest>,
    ) -> Result<Response<Computation>, Status> {
        let (caller, _) = self.core.caller_duchy(Rpc::GetComputation, &request)?;
        let name = &request.get_ref().name;
        let key = ComputationKey::parse(name)?;
        let mut tx = self.core.db.read().await?;
        let data = store::load_computation(&mut tx, key.external_computation_id).await?;
        tx.commit().await.map_err(db_error)?;
        let data = data.ok_or_else(|| Status::not_found(format!("{name} not found")))?;
        let participants = participant_ids(&data);
        Rpc::GetComputation.check_resource(
            &caller,
            name,
            &Facts {
                participants: Some(&participants),
                ..Facts::default()
            },
        )?;
        Ok(Response::new(self.core.computation_view(&data)?))
    }

    type StreamActiveComputationsStream =
        Pin<Box<dyn futures::Stream<Item = StreamItem> + Send + 'static>>;

    async fn stream_active_computations(
        &self,
        request: Request<StreamActiveComputationsRequest>,
    ) -> Result<Response<Self::StreamActiveComputationsStream>, Status> {
        let (caller, duchy) = self
            .core
            .caller_duchy(Rpc::StreamActiveComputations, &request)?;
        let after = StreamPosition::from_token(&request.get_ref().continuation_token)?;
        // At most N open streams per duchy; the slot is held until the stream ends.
        let permit = self.core.active_streams.try_acquire(&duchy)?;
        let (tx, rx) = mpsc::channel(STREAM_BATCH_SIZE as usize);
        let core = self.core.clone();
        tokio::spawn(async move {
            let _permit = permit;
            run_stream(core, caller, duchy, after, tx).await;
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    /// Records the result and moves the computation to SUCCEEDED.
    ///
    /// Stricter than the reference implementation (which has no state check and does not verify
    /// that the caller is the aggregator): the caller must be the computation's aggregator
    /// (PERMISSION_DENIED) and the computation must be PENDING_COMPUTATION
    /// (FAILED_PRECONDITION). A retry that repeats an already-recorded result from the same
    /// aggregator certificate succeeds without changing anything.
    async fn set_computation_result(
        &self,
        request: Request<SetComputationResultRequest>,
    ) -> Result<Response<Computation>, Status> {
        let rpc = Rpc::SetComputationResult;
        let (caller, duchy) = self.core.caller_duchy(rpc, &request)?;
        let req = request.into_inner();
        let key = ComputationKey::parse(&req.name)?;
        if req.public_api_version.is_empty() {
            return Err(Status::invalid_argument("public_api_version is required"));
        }
        let (cert_duchy, cert_id) = CertificateKey::parse_duchy(&req.aggregator_certificate)?;
        rpc.check_request(
            &caller,
            &req.name,
            &Facts {
                certificate_owner: Some(Some(&cert_duchy)),
                ..Facts::default()
            },
        )?;
        let id = key.external_computation_id;
        let mut tx = self.core.db.write().await?;
        let data = store::load_computation(tx.conn(), id)
            .await?
            .ok_or_else(|| Status::not_found(format!("{} not found", req.name)))?;
        let participants = participant_ids(&data);
        rpc.check_resource(
            &caller,
            &req.name,
            &Facts {
                participants: Some(&participants),
                aggregator: Some(&data.measurement.aggregator_duchy_id),
                ..Facts::default()
            },
        )?;
        let m = &data.measurement;
        if self
            .core
            .directory
            .duchy_certificate(&duchy, &cert_id)
            .is_none()
        {
            return Err(Status::failed_precondition(format!(
                "certificate {} not found",
                req.aggregator_certificate
            )));
        }
        if m.state == State::Succeeded as i32
            && m.aggregator_certificate == req.aggregator_certificate
            && m.encrypted_result == req.encrypted_result
            && m.result_public_key == req.result_public_key
        {
            return Ok(Response::new(self.core.computation_view(&data)?));
        }
        if m.state != State::PendingComputation as i32 {
            return Err(Status::failed_precondition(format!(
                "computation {} is {}, not PENDING_COMPUTATION",
                req.name,
                state_name(m.state)
            )));
        }
        store::set_measurement_state(&mut tx, id, State::Succeeded as i32).await?;
        sqlx::query(
            "UPDATE measurements SET aggregator_certificate = ?1, encrypted_result = ?2, \
             result_public_key = ?3, result_api_version = ?4 WHERE external_computation_id = ?5",
        )
        .bind(&req.aggregator_certificate)
        .bind(&req.encrypted_result)
        .bind(&req.result_public_key)
        .bind(&req.public_api_version)
        .bind(id)
        .execute(tx.conn())
        .await
        .map_err(db_error)?;
        let data = store::load_computation(tx.conn(), id)
            .await?
            .ok_or_else(|| Status::internal("computation vanished"))?;
        tx.commit().await?;
        halo_crashpoint::point("kingdom.set_computation_result");
        Ok(Response::new(self.core.computation_view(&data)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_round_trip() {
        for pos in [
            StreamPosition {
                update_time_micros: 1_700_000_000_123_456,
                external_computation_id: 42,
            },
            StreamPosition {
                update_time_micros: 1,
                external_computation_id: i64::MAX,
            },
        ] {
            assert_eq!(StreamPosition::from_token(&pos.to_token()).unwrap(), pos);
        }
        assert_eq!(
            StreamPosition::from_token("").unwrap(),
            StreamPosition::START
        );
    }

    #[test]
    fn token_rejects_garbage() {
        for bad in ["!!!", "a b", "AAAA*"] {
            let err = StreamPosition::from_token(bad).unwrap_err();
            assert_eq!(err.code(), tonic::Code::InvalidArgument, "{bad}");
        }
        // Valid base64 but not a token message (field 1 with wire type 7).
        let err = StreamPosition::from_token(&URL_SAFE_NO_PAD.encode([0x0f, 0xff])).unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument);
        // Out-of-range nanos.
        let token = StreamActiveComputationsContinuationToken {
            last_seen_update_time: Some(prost_types::Timestamp {
                seconds: 1,
                nanos: 2_000_000_000,
            }),
            last_seen_external_computation_id: 1,
        };
        let err =
            StreamPosition::from_token(&URL_SAFE_NO_PAD.encode(token.encode_to_vec())).unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument);
    }

    #[test]
    fn token_with_nanosecond_precision_resumes_after_the_microsecond() {
        let token = StreamActiveComputationsContinuationToken {
            last_seen_update_time: Some(prost_types::Timestamp {
                seconds: 10,
                nanos: 1_500,
            }),
            last_seen_external_computation_id: 7,
        };
        let pos =
            StreamPosition::from_token(&URL_SAFE_NO_PAD.encode(token.encode_to_vec())).unwrap();
        assert_eq!(pos.update_time_micros, 10_000_001);
        assert_eq!(pos.external_computation_id, i64::MAX);
    }
}

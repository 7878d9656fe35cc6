//! Calls from the duchy to the Kingdom's system API. Every call that changes state is
//! idempotent: it re-reads the participant (fresh etag) and skips work already done.

use halo_proto::system::v1alpha as sys;
use sys::computation_log_entries_client::ComputationLogEntriesClient;
use sys::computation_participant::{RequisitionParams, State as ParticipantState};
use sys::computation_participants_client::ComputationParticipantsClient;
use sys::computations_client::ComputationsClient;
use sys::requisitions_client::RequisitionsClient;
use tonic::transport::Channel;
use tonic::{Code, Status};

use crate::core::Core;
use crate::names;
use crate::protocol::ComputationResult;

/// Codes that mean "not ready yet": the callee is restarting, overloaded or slow. The
/// stage is retried later without counting an attempt (bounded by the computation deadline).
pub fn is_transient(code: Code) -> bool {
    matches!(
        code,
        Code::Unavailable | Code::DeadlineExceeded | Code::Aborted | Code::ResourceExhausted
    )
}

/// How a failed effect is handled (see [`crate::mill`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// Not ready yet: retry later, not an attempt.
    Wait,
    /// Retry with backoff, counting an attempt.
    Transient,
    /// Fails the computation.
    Permanent,
}

/// A failed effect.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct EffectError {
    pub kind: ErrorKind,
    pub message: String,
}

impl EffectError {
    pub fn wait(message: impl Into<String>) -> Self {
        EffectError {
            kind: ErrorKind::Wait,
            message: message.into(),
        }
    }
    pub fn transient(message: impl Into<String>) -> Self {
        EffectError {
            kind: ErrorKind::Transient,
            message: message.into(),
        }
    }
    pub fn permanent(message: impl Into<String>) -> Self {
        EffectError {
            kind: ErrorKind::Permanent,
            message: message.into(),
        }
    }
    /// UNAVAILABLE, DEADLINE_EXCEEDED, ABORTED, RESOURCE_EXHAUSTED: wait. INTERNAL and
    /// UNKNOWN (a server bug or an overloaded server that says so badly): transient, bounded
    /// by the attempts. Everything else: permanent.
    ///
    /// CANCELLED, and UNKNOWN made by our own client (the status has a source: a connection
    /// reset or closed mid-call, as when the callee is killed), are the callee going away:
    /// wait too.
    pub fn from_status(what: &str, s: &Status) -> Self {
        let gone = s.code() == Code::Cancelled
            || (s.code() == Code::Unknown && std::error::Error::source(s).is_some());
        let kind = if is_transient(s.code()) || gone {
            ErrorKind::Wait
        } else if matches!(s.code(), Code::Internal | Code::Unknown) {
            ErrorKind::Transient
        } else {
            ErrorKind::Permanent
        };
        EffectError {
            kind,
            message: format!("{what}: {:?}: {}", s.code(), s.message()),
        }
    }
}

/// Runs an effect with a time limit: no answer in `limit` is "not ready yet" (wait).
pub async fn within<T>(
    what: &str,
    limit: std::time::Duration,
    call: impl std::future::Future<Output = Result<T, EffectError>>,
) -> Result<T, EffectError> {
    match tokio::time::timeout(limit, call).await {
        Ok(r) => r,
        Err(_) => Err(EffectError::wait(format!("{what}: no answer in {limit:?}"))),
    }
}

pub(crate) fn timestamp_now() -> prost_types::Timestamp {
    prost_types::Timestamp::from(std::time::SystemTime::now())
}

impl Core {
    fn max_message(&self) -> usize {
        self.config.limits.server.max_message_bytes
    }

    pub fn computations_client(&self) -> ComputationsClient<Channel> {
        ComputationsClient::new(self.kingdom_channel())
            .max_decoding_message_size(self.max_message())
            .max_encoding_message_size(self.max_message())
    }

    pub fn participants_client(&self) -> ComputationParticipantsClient<Channel> {
        ComputationParticipantsClient::new(self.kingdom_channel())
            .max_decoding_message_size(self.max_message())
            .max_encoding_message_size(self.max_message())
    }

    pub fn requisitions_client(&self) -> RequisitionsClient<Channel> {
        RequisitionsClient::new(self.kingdom_channel())
            .max_decoding_message_size(self.max_message())
            .max_encoding_message_size(self.max_message())
    }

    async fn my_participant(
        &self,
        global_id: &str,
    ) -> Result<sys::ComputationParticipant, EffectError> {
        self.participants_client()
            .get_computation_participant(sys::GetComputationParticipantRequest {
                name: names::participant_name(global_id, self.id()),
            })
            .await
            .map(|r| r.into_inner())
            .map_err(|s| EffectError::from_status("GetComputationParticipant", &s))
    }

    /// SetParticipantRequisitionParams (skipped if already set).
    pub async fn publish_requisition_params(
        &self,
        global_id: &str,
        params: &[u8],
    ) -> Result<(), EffectError> {
        let mut params = <RequisitionParams as prost::Message>::decode(params).map_err(|e| {
            EffectError::permanent(format!("plugin produced invalid requisition params: {e}"))
        })?;
        params.duchy_certificate = self.certificate_name().to_string();
        params.duchy_certificate_der = Vec::new();
        let p = self.my_participant(global_id).await?;
        if p.state != ParticipantState::Created as i32 {
            return Ok(());
        }
        self.participants_client()
            .set_participant_requisition_params(sys::SetParticipantRequisitionParamsRequest {
                name: p.name,
                requisition_params: Some(params),
                etag: p.etag,
            })
            .await
            .map_err(|s| EffectError::from_status("SetParticipantRequisitionParams", &s))?;
        Ok(())
    }

    /// ConfirmComputationParticipant (skipped if already READY).
    pub async fn confirm_participation(&self, global_id: &str) -> Result<(), EffectError> {
        let p = self.my_participant(global_id).await?;
        if p.state == ParticipantState::Ready as i32 {
            return Ok(());
        }
        self.participants_client()
            .confirm_computation_participant(sys::ConfirmComputationParticipantRequest {
                name: p.name,
                etag: p.etag,
            })
            .await
            .map_err(|s| EffectError::from_status("ConfirmComputationParticipant", &s))?;
        Ok(())
    }

    /// SetComputationResult (skipped if the computation already SUCCEEDED).
    pub async fn send_result(
        &self,
        global_id: &str,
        result: &ComputationResult,
    ) -> Result<(), EffectError> {
        let name = names::computation_name(global_id);
        let c = self
            .computations_client()
            .get_computation(sys::GetComputationRequest { name: name.clone() })
            .await
            .map_err(|s| EffectError::from_status("GetComputation", &s))?
            .into_inner();
        if c.state == sys::computation::State::Succeeded as i32 {
            return Ok(());
        }
        self.computations_client()
            .set_computation_result(sys::SetComputationResultRequest {
                name,
                aggregator_certificate: self.certificate_name().to_string(),
                result_public_key: result.result_public_key.clone(),
                encrypted_result: result.encrypted_result.clone(),
                public_api_version: "v2alpha".into(),
            })
            .await
            .map_err(|s| EffectError::from_status("SetComputationResult", &s))?;
        Ok(())
    }

    /// FailComputationParticipant. `Ok` says how the Kingdom settled it: recorded now, the
    /// participant had already failed, or the computation is already terminal or unknown there
    /// (nothing left to tell). Any other error is returned, and the caller retries.
    pub async fn fail_at_kingdom(
        &self,
        global_id: &str,
        message: &str,
        stage_attempt: Option<sys::StageAttempt>,
    ) -> Result<&'static str, EffectError> {
        let p = match self
            .participants_client()
            .get_computation_participant(sys::GetComputationParticipantRequest {
                name: names::participant_name(global_id, self.id()),
            })
            .await
        {
            Ok(r) => r.into_inner(),
            Err(s) if s.code() == Code::NotFound => return Ok("unknown at the Kingdom"),
            Err(s) => return Err(EffectError::from_status("GetComputationParticipant", &s)),
        };
        if p.state == ParticipantState::Failed as i32 {
            return Ok("participant already failed at the Kingdom");
        }
        let res = self
            .participants_client()
            .fail_computation_participant(sys::FailComputationParticipantRequest {
                name: p.name,
                failure: Some(sys::computation_participant::Failure {
                    participant_child_reference_id: format!("{}-host", self.id()),
                    error_message: message.to_string(),
                    error_time: Some(timestamp_now()),
                    stage_attempt,
                }),
                etag: p.etag,
            })
            .await;
        match res {
            Ok(_) => Ok("recorded by the Kingdom"),
            Err(s) if s.code() == Code::Aborted => Err(EffectError::from_status(
                "FailComputationParticipant (stale etag)",
                &s,
            )),
            Err(s) if s.code() == Code::FailedPrecondition => {
                // Either terminal there (nothing to tell) or a state the Kingdom refuses for
                // another reason: re-read to tell them apart.
                let c = self
                    .computations_client()
                    .get_computation(sys::GetComputationRequest {
                        name: names::computation_name(global_id),
                    })
                    .await
                    .map_err(|s| EffectError::from_status("GetComputation", &s))?
                    .into_inner();
                let terminal = [
                    sys::computation::State::Succeeded as i32,
                    sys::computation::State::Failed as i32,
                    sys::computation::State::Cancelled as i32,
                ];
                if terminal.contains(&c.state) {
                    Ok("computation already terminal at the Kingdom")
                } else {
                    Err(EffectError::from_status("FailComputationParticipant", &s))
                }
            }
            Err(s) => Err(EffectError::from_status("FailComputationParticipant", &s)),
        }
    }

    /// Best-effort log entry (transient errors and progress); failures are only logged.
    pub async fn log_to_kingdom(
        &self,
        global_id: &str,
        message: &str,
        transient_error: bool,
        stage_attempt: Option<sys::StageAttempt>,
    ) {
        let entry = sys::ComputationLogEntry {
            name: String::new(),
            participant_child_reference_id: format!("{}-mill", self.id()),
            log_message: message.to_string(),
            stage_attempt,
            error_details: transient_error.then(|| sys::computation_log_entry::ErrorDetails {
                r#type: sys::computation_log_entry::error_details::Type::Transient as i32,
                error_time: Some(timestamp_now()),
            }),
        };
        let mut client = ComputationLogEntriesClient::new(self.kingdom_channel());
        let call = client.create_computation_log_entry(sys::CreateComputationLogEntryRequest {
            parent: names::participant_name(global_id, self.id()),
            computation_log_entry: Some(entry),
        });
        let res = match tokio::time::timeout(std::time::Duration::from_secs(30), call).await {
            Ok(r) => r,
            Err(_) => Err(Status::deadline_exceeded("no answer in 30 s")),
        };
        if let Err(s) = res {
            tracing::warn!(computation = %global_id, code = ?s.code(), "log entry not recorded: {}", s.message());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_callee_going_away_is_waited_for_and_real_errors_are_not() {
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionReset, "reset");
        let reset = Status::from_error(Box::new(io));
        assert_eq!(reset.code(), Code::Unknown);
        assert_eq!(EffectError::from_status("x", &reset).kind, ErrorKind::Wait);
        for code in [
            Code::Unavailable,
            Code::DeadlineExceeded,
            Code::Aborted,
            Code::ResourceExhausted,
            Code::Cancelled,
        ] {
            let e = EffectError::from_status("x", &Status::new(code, "m"));
            assert_eq!(e.kind, ErrorKind::Wait, "{code:?}");
        }
        for code in [Code::Internal, Code::Unknown] {
            let e = EffectError::from_status("x", &Status::new(code, "m"));
            assert_eq!(e.kind, ErrorKind::Transient, "{code:?} from the server");
        }
        for code in [
            Code::InvalidArgument,
            Code::PermissionDenied,
            Code::FailedPrecondition,
            Code::NotFound,
            Code::Unauthenticated,
        ] {
            let e = EffectError::from_status("x", &Status::new(code, "m"));
            assert_eq!(e.kind, ErrorKind::Permanent, "{code:?}");
        }
    }
}

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

/// Codes worth retrying (the reference mills treat these as transient).
pub fn is_transient(code: Code) -> bool {
    matches!(
        code,
        Code::Unavailable | Code::DeadlineExceeded | Code::Aborted | Code::ResourceExhausted
    )
}

/// A failed effect: transient ones are retried with backoff, others fail the computation.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct EffectError {
    pub transient: bool,
    pub message: String,
}

impl EffectError {
    pub fn transient(message: impl Into<String>) -> Self {
        EffectError {
            transient: true,
            message: message.into(),
        }
    }
    pub fn permanent(message: impl Into<String>) -> Self {
        EffectError {
            transient: false,
            message: message.into(),
        }
    }
    pub fn from_status(what: &str, s: &Status) -> Self {
        EffectError {
            transient: is_transient(s.code()),
            message: format!("{what}: {:?}: {}", s.code(), s.message()),
        }
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

    /// FailComputationParticipant; a participant already failed (or a computation already
    /// terminal) counts as done.
    pub async fn fail_at_kingdom(
        &self,
        global_id: &str,
        message: &str,
        stage_attempt: Option<sys::StageAttempt>,
    ) -> Result<(), EffectError> {
        let p = self.my_participant(global_id).await?;
        if p.state == ParticipantState::Failed as i32 {
            return Ok(());
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
            Ok(_) => Ok(()),
            Err(s) if s.code() == Code::FailedPrecondition => Ok(()),
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
        let res = ComputationLogEntriesClient::new(self.kingdom_channel())
            .create_computation_log_entry(sys::CreateComputationLogEntryRequest {
                parent: names::participant_name(global_id, self.id()),
                computation_log_entry: Some(entry),
            })
            .await;
        if let Err(s) = res {
            tracing::warn!(computation = %global_id, code = ?s.code(), "log entry not recorded: {}", s.message());
        }
    }
}

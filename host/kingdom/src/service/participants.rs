//! system `ComputationParticipants` (spec §1.3.2, §1.5, §2.4).

use std::sync::Arc;

use halo_authz::{Facts, Rpc};
use halo_identity::Principal;
use halo_proto::system::v1alpha::computation::State as ComputationState;
use halo_proto::system::v1alpha::computation_log_entry::{ErrorDetails, error_details};
use halo_proto::system::v1alpha::computation_participant::Failure;
use halo_proto::system::v1alpha::computation_participant::State as ParticipantState;
use halo_proto::system::v1alpha::computation_participant::requisition_params::Protocol as ParamsProtocol;
use halo_proto::system::v1alpha::computation_participants_server::ComputationParticipants;
use halo_proto::system::v1alpha::{
    ComputationLogEntry, ComputationParticipant, ConfirmComputationParticipantRequest,
    FailComputationParticipantRequest, GetComputationParticipantRequest,
    SetParticipantRequisitionParamsRequest,
};
use halo_protocol::SystemProtocol;
use prost::Message as _;
use tonic::{Request, Response, Status};

use crate::core::{Core, is_terminal, protocol_of, state_name};
use crate::names::{CertificateKey, ParticipantKey};
use crate::store::{self, ComputationData, WriteTx, db_error};

pub(crate) struct ComputationParticipantsService {
    pub core: Arc<Core>,
}

/// Parses the participant name and checks `rpc`'s rules (the caller must own it).
pub(crate) fn owned_participant(
    rpc: Rpc,
    caller: &Principal,
    name: &str,
) -> Result<ParticipantKey, Status> {
    let key = ParticipantKey::parse(name)?;
    rpc.check_request(
        caller,
        name,
        &Facts {
            named: Some(&key.duchy_id),
            ..Facts::default()
        },
    )?;
    Ok(key)
}

fn not_found(name: &str) -> Status {
    Status::not_found(format!("computation participant {name} not found"))
}

/// Loads the computation and checks that the participant exists and the etag matches.
async fn load_for_update(
    tx: &mut WriteTx,
    key: &ParticipantKey,
    name: &str,
    etag: &str,
) -> Result<ComputationData, Status> {
    let data = store::load_computation(tx.conn(), key.external_computation_id)
        .await?
        .ok_or_else(|| not_found(name))?;
    let participant = data
        .participant(&key.duchy_id)
        .ok_or_else(|| not_found(name))?;
    if !etag.is_empty() && etag != store::etag(participant.update_time) {
        return Err(Status::aborted(format!(
            "etag mismatch for {name}: request has {etag}, current is {}",
            store::etag(participant.update_time)
        )));
    }
    Ok(data)
}

fn require_computation_state(
    data: &ComputationData,
    expected: ComputationState,
) -> Result<(), Status> {
    if data.measurement.state != expected as i32 {
        return Err(Status::failed_precondition(format!(
            "computation is {}, expected {}",
            state_name(data.measurement.state),
            expected.as_str_name()
        )));
    }
    Ok(())
}

fn require_participant_state(
    data: &ComputationData,
    duchy: &str,
    expected: ParticipantState,
) -> Result<(), Status> {
    let state = data.participant(duchy).map(|p| p.state).unwrap_or_default();
    if state != expected as i32 {
        return Err(Status::failed_precondition(format!(
            "participant {duchy} is {}, expected {}",
            ParticipantState::try_from(state)
                .map(|s| s.as_str_name())
                .unwrap_or("UNKNOWN"),
            expected.as_str_name()
        )));
    }
    Ok(())
}

/// Re-reads the participant after a write, commits, and passes kill point `kill_point`.
async fn finish(
    core: &Core,
    mut tx: WriteTx,
    key: &ParticipantKey,
    kill_point: &str,
) -> Result<Response<ComputationParticipant>, Status> {
    let rows = store::participants(tx.conn(), key.external_computation_id).await?;
    let row = rows
        .iter()
        .find(|p| p.duchy_id == key.duchy_id)
        .ok_or_else(|| Status::internal("participant vanished"))?;
    let view = core.participant_view(row)?;
    tx.commit().await?;
    halo_crashpoint::point(kill_point);
    Ok(Response::new(view))
}

/// Whether a `RequisitionParams` oneof is of the computation's protocol.
fn params_match(protocol: SystemProtocol, params: &ParamsProtocol) -> bool {
    SystemProtocol::of_requisition_params(params) == Ok(protocol)
}

/// The measurement's failure message (what the consumer reads): which duchy failed, at which
/// stage (name and number) and attempt, and why, e.g. `Computation Participant failed. Duchy
/// worker1, stage SETUP_PHASE (1), attempt 3: plugin trapped`.
pub(crate) fn failure_message(duchy: &str, failure: &Failure) -> String {
    let cause = if failure.error_message.is_empty() {
        "(no error message)"
    } else {
        failure.error_message.as_str()
    };
    match &failure.stage_attempt {
        Some(a) => {
            let stage = if a.stage_name.is_empty() {
                format!("stage {}", a.stage)
            } else {
                format!("stage {} ({})", a.stage_name, a.stage)
            };
            format!(
                "Computation Participant failed. Duchy {duchy}, {stage}, attempt {}: {cause}",
                a.attempt_number
            )
        }
        None => format!("Computation Participant failed. Duchy {duchy}: {cause}"),
    }
}

#[tonic::async_trait]
impl ComputationParticipants for ComputationParticipantsService {
    async fn get_computation_participant(
        &self,
        request: Request<GetComputationParticipantRequest>,
    ) -> Result<Response<ComputationParticipant>, Status> {
        let (caller, _) = self
            .core
            .caller_duchy(Rpc::GetComputationParticipant, &request)?;
        let name = &request.get_ref().name;
        let key = owned_participant(Rpc::GetComputationParticipant, &caller, name)?;
        let mut tx = self.core.db.read().await?;
        let rows = store::participants(&mut tx, key.external_computation_id).await?;
        tx.commit().await.map_err(db_error)?;
        let row = rows
            .iter()
            .find(|p| p.duchy_id == key.duchy_id)
            .ok_or_else(|| not_found(name))?;
        Ok(Response::new(self.core.participant_view(row)?))
    }

    async fn set_participant_requisition_params(
        &self,
        request: Request<SetParticipantRequisitionParamsRequest>,
    ) -> Result<Response<ComputationParticipant>, Status> {
        let (caller, duchy) = self
            .core
            .caller_duchy(Rpc::SetParticipantRequisitionParams, &request)?;
        let req = request.into_inner();
        let key = owned_participant(Rpc::SetParticipantRequisitionParams, &caller, &req.name)?;
        let mut params = req
            .requisition_params
            .ok_or_else(|| Status::invalid_argument("requisition_params is required"))?;
        let (cert_duchy, cert_id) = CertificateKey::parse_duchy(&params.duchy_certificate)?;
        if cert_duchy != key.duchy_id {
            return Err(Status::invalid_argument(format!(
                "duchy_certificate {} does not belong to duchy {}",
                params.duchy_certificate, key.duchy_id
            )));
        }
        let Some(params_protocol) = params.protocol.as_ref() else {
            return Err(Status::invalid_argument(
                "requisition_params.protocol is not set",
            ));
        };
        if self
            .core
            .directory
            .duchy_certificate(&cert_duchy, &cert_id)
            .is_none()
        {
            return Err(Status::failed_precondition(format!(
                "certificate {} not found",
                params.duchy_certificate
            )));
        }

        let id = key.external_computation_id;
        let mut tx = self.core.db.write().await?;
        let data = load_for_update(&mut tx, &key, &req.name, &req.etag).await?;
        let protocol = protocol_of(&data.measurement)?;
        if !params_match(protocol, params_protocol) {
            return Err(Status::invalid_argument(format!(
                "requisition_params.protocol does not match the computation's protocol {}",
                protocol.admin().as_str_name()
            )));
        }
        require_computation_state(&data, ComputationState::PendingRequisitionParams)?;
        require_participant_state(&data, &duchy, ParticipantState::Created)?;

        let next = protocol.participant_state_after_params();
        // Output-only field; derived from the configured certificate on read.
        params.duchy_certificate_der.clear();
        store::set_participant_state(&mut tx, id, &duchy, next as i32).await?;
        sqlx::query(
            "UPDATE computation_participants SET requisition_params = ?1 \
             WHERE external_computation_id = ?2 AND duchy_id = ?3",
        )
        .bind(params.encode_to_vec())
        .bind(id)
        .bind(&duchy)
        .execute(tx.conn())
        .await
        .map_err(db_error)?;

        let all_set = data
            .participants
            .iter()
            .all(|p| p.duchy_id == duchy || p.state == next as i32);
        if all_set {
            store::set_measurement_state(
                &mut tx,
                id,
                ComputationState::PendingRequisitionFulfillment as i32,
            )
            .await?;
            // The requisitions become visible to data providers: new public etags.
            store::touch_requisitions(&mut tx, id).await?;
        }
        finish(
            &self.core,
            tx,
            &key,
            "kingdom.set_participant_requisition_params",
        )
        .await
    }

    async fn fail_computation_participant(
        &self,
        request: Request<FailComputationParticipantRequest>,
    ) -> Result<Response<ComputationParticipant>, Status> {
        let (caller, duchy) = self
            .core
            .caller_duchy(Rpc::FailComputationParticipant, &request)?;
        let req = request.into_inner();
        let key = owned_participant(Rpc::FailComputationParticipant, &caller, &req.name)?;
        let failure = req
            .failure
            .ok_or_else(|| Status::invalid_argument("failure is required"))?;

        let id = key.external_computation_id;
        let mut tx = self.core.db.write().await?;
        let data = load_for_update(&mut tx, &key, &req.name, &req.etag).await?;
        if is_terminal(data.measurement.state) {
            return Err(Status::failed_precondition(format!(
                "computation is already {}",
                state_name(data.measurement.state)
            )));
        }
        store::set_participant_state(&mut tx, id, &duchy, ParticipantState::Failed as i32).await?;
        sqlx::query(
            "UPDATE computation_participants SET failure = ?1 \
             WHERE external_computation_id = ?2 AND duchy_id = ?3",
        )
        .bind(failure.encode_to_vec())
        .bind(id)
        .bind(&duchy)
        .execute(tx.conn())
        .await
        .map_err(db_error)?;
        store::end_measurement(
            &mut tx,
            id,
            ComputationState::Failed as i32,
            &failure_message(&duchy, &failure),
        )
        .await?;
        // The permanent error record (the reference writes a DuchyMeasurementLogEntry).
        let entry = ComputationLogEntry {
            name: String::new(),
            participant_child_reference_id: failure.participant_child_reference_id.clone(),
            log_message: failure.error_message.clone(),
            stage_attempt: failure.stage_attempt.clone(),
            error_details: Some(ErrorDetails {
                r#type: error_details::Type::Permanent as i32,
                error_time: failure.error_time,
            }),
        };
        store::insert_log_entry(&mut tx, id, &duchy, &entry.encode_to_vec()).await?;
        finish(&self.core, tx, &key, "kingdom.fail_computation_participant").await
    }

    async fn confirm_computation_participant(
        &self,
        request: Request<ConfirmComputationParticipantRequest>,
    ) -> Result<Response<ComputationParticipant>, Status> {
        let (caller, duchy) = self
            .core
            .caller_duchy(Rpc::ConfirmComputationParticipant, &request)?;
        let req = request.into_inner();
        let key = owned_participant(Rpc::ConfirmComputationParticipant, &caller, &req.name)?;

        let id = key.external_computation_id;
        let mut tx = self.core.db.write().await?;
        let data = load_for_update(&mut tx, &key, &req.name, &req.etag).await?;
        require_computation_state(&data, ComputationState::PendingParticipantConfirmation)?;
        require_participant_state(&data, &duchy, ParticipantState::RequisitionParamsSet)?;
        store::set_participant_state(&mut tx, id, &duchy, ParticipantState::Ready as i32).await?;
        let all_ready = data
            .participants
            .iter()
            .all(|p| p.duchy_id == duchy || p.state == ParticipantState::Ready as i32);
        if all_ready {
            store::set_measurement_state(&mut tx, id, ComputationState::PendingComputation as i32)
                .await?;
        }
        finish(
            &self.core,
            tx,
            &key,
            "kingdom.confirm_computation_participant",
        )
        .await
    }
}

//! system `ComputationLogEntries` (spec §1.3.3).

use std::sync::Arc;

use halo_proto::system::v1alpha::computation_log_entries_server::ComputationLogEntries;
use halo_proto::system::v1alpha::computation_log_entry::error_details::Type as ErrorType;
use halo_proto::system::v1alpha::{ComputationLogEntry, CreateComputationLogEntryRequest};
use prost::Message as _;
use tonic::{Request, Response, Status};

use crate::core::Core;
use crate::names;
use crate::service::participants::owned_participant;
use crate::store;
use halo_authz::Rpc;

pub(crate) struct ComputationLogEntriesService {
    pub core: Arc<Core>,
}

#[tonic::async_trait]
impl ComputationLogEntries for ComputationLogEntriesService {
    async fn create_computation_log_entry(
        &self,
        request: Request<CreateComputationLogEntryRequest>,
    ) -> Result<Response<ComputationLogEntry>, Status> {
        let rpc = Rpc::CreateComputationLogEntry;
        let (caller, duchy) = self.core.caller_duchy(rpc, &request)?;
        let req = request.into_inner();
        let key = owned_participant(rpc, &caller, &req.parent)?;
        let mut entry = req
            .computation_log_entry
            .ok_or_else(|| Status::invalid_argument("computation_log_entry is required"))?;
        if entry.log_message.is_empty() {
            return Err(Status::invalid_argument(
                "computation_log_entry.log_message is required",
            ));
        }
        if let Some(details) = &entry.error_details {
            if details.r#type == ErrorType::Permanent as i32 {
                return Err(Status::invalid_argument(
                    "permanent errors must be reported with FailComputationParticipant",
                ));
            }
            if ErrorType::try_from(details.r#type).is_err() {
                return Err(Status::invalid_argument("unknown error_details.type"));
            }
        }
        entry.name.clear();

        let id = key.external_computation_id;
        let mut tx = self.core.db.write().await?;
        let participants = store::participants(tx.conn(), id).await?;
        if !participants.iter().any(|p| p.duchy_id == duchy) {
            return Err(Status::not_found(format!(
                "computation participant {} not found",
                req.parent
            )));
        }
        let log_id = store::insert_log_entry(&mut tx, id, &duchy, &entry.encode_to_vec()).await?;
        tx.commit().await?;
        halo_crashpoint::point("kingdom.create_computation_log_entry");
        entry.name = names::log_entry_name(id, &duchy, log_id);
        Ok(Response::new(entry))
    }
}

//! system `Requisitions.FulfillRequisition` (spec §1.3.4).

use std::sync::Arc;

use halo_proto::system::v1alpha::computation::State as ComputationState;
use halo_proto::system::v1alpha::requisition::State as RequisitionState;
use halo_proto::system::v1alpha::requisitions_server::Requisitions;
use halo_proto::system::v1alpha::{FulfillRequisitionRequest, Requisition};
use prost::Message as _;
use tonic::{Request, Response, Status};

use halo_authz::{Facts, Rpc};

use crate::core::{Core, participant_ids, protocol_of, state_name};
use crate::names::RequisitionKey;
use crate::store::{self, db_error};

pub(crate) struct RequisitionsService {
    pub core: Arc<Core>,
}

#[tonic::async_trait]
impl Requisitions for RequisitionsService {
    /// Marks a requisition FULFILLED by the calling duchy; the last one moves the computation
    /// on (LLv2 / RoLLv2 → PENDING_PARTICIPANT_CONFIRMATION, HMSS → PENDING_COMPUTATION).
    ///
    /// Unlike the reference, the Kingdom itself checks that the caller participates and, for
    /// HMSS, that it is the pre-assigned fulfilling duchy (PERMISSION_DENIED); and an identical
    /// repeat by the duchy that fulfilled it (same nonce and context) succeeds idempotently,
    /// where any other fulfilment of a fulfilled requisition is FAILED_PRECONDITION.
    async fn fulfill_requisition(
        &self,
        request: Request<FulfillRequisitionRequest>,
    ) -> Result<Response<Requisition>, Status> {
        let rpc = Rpc::SystemFulfillRequisition;
        let (caller, duchy) = self.core.caller_duchy(rpc, &request)?;
        let req = request.into_inner();
        let key = RequisitionKey::parse(&req.name)?;
        if req.nonce == 0 {
            return Err(Status::invalid_argument("nonce is required (non-zero)"));
        }
        let id = key.external_computation_id;
        let not_found = || Status::not_found(format!("requisition {} not found", req.name));

        let mut tx = self.core.db.write().await?;
        let data = store::load_computation(tx.conn(), id)
            .await?
            .ok_or_else(not_found)?;
        let requisition = data
            .requisitions
            .iter()
            .find(|r| r.external_requisition_id == key.external_requisition_id)
            .ok_or_else(not_found)?;
        let protocol = protocol_of(&data.measurement)?;
        let participants = participant_ids(&data);
        // Requisitions of a protocol that assigns them (HMSS) belong to one duchy (an
        // unassigned one matches no duchy); those of the others (LLv2 / RoLLv2) to none.
        let assigned = protocol
            .assigns_fulfilling_duchy()
            .then(|| requisition.fulfilling_duchy_id.as_deref().unwrap_or(""));
        rpc.check_resource(
            &caller,
            &req.name,
            &Facts {
                participants: Some(&participants),
                assigned_fulfiller: Some(assigned),
                ..Facts::default()
            },
        )?;
        let context = req.fulfillment_context.unwrap_or_default().encode_to_vec();
        // A repeat of the fulfilment already recorded (same duchy, nonce and context: a retry
        // whose answer was lost) succeeds without changing anything, whatever the etag (the
        // fulfilment itself changed it) and the computation's state.
        if requisition.state == RequisitionState::Fulfilled as i32
            && requisition.fulfilling_duchy_id.as_deref() == Some(duchy.as_str())
            // fixed64 stored bit-for-bit in a signed column.
            && requisition.nonce == Some(req.nonce as i64)
            && requisition.fulfillment_context.as_deref().unwrap_or_default() == context.as_slice()
        {
            let view = self.core.requisition_view(requisition)?;
            drop(tx);
            return Ok(Response::new(view));
        }
        if requisition.state != RequisitionState::Unfulfilled as i32 {
            return Err(Status::failed_precondition(format!(
                "requisition {} is {}, not UNFULFILLED",
                req.name,
                RequisitionState::try_from(requisition.state)
                    .map(|s| s.as_str_name())
                    .unwrap_or("UNKNOWN")
            )));
        }
        if data.measurement.state != ComputationState::PendingRequisitionFulfillment as i32 {
            return Err(Status::failed_precondition(format!(
                "computation is {}, not PENDING_REQUISITION_FULFILLMENT",
                state_name(data.measurement.state)
            )));
        }
        if !req.etag.is_empty() && req.etag != store::etag(requisition.update_time) {
            return Err(Status::aborted(format!(
                "etag mismatch for requisition {}: request has {}, current is {}",
                req.name,
                req.etag,
                store::etag(requisition.update_time)
            )));
        }

        let now = tx.now().await?;
        sqlx::query(
            "UPDATE requisitions SET state = ?1, nonce = ?2, fulfilling_duchy_id = ?3, \
             fulfillment_context = ?4, update_time = ?5 WHERE external_requisition_id = ?6",
        )
        .bind(RequisitionState::Fulfilled as i32)
        // fixed64 stored bit-for-bit in a signed column.
        .bind(req.nonce as i64)
        .bind(&duchy)
        .bind(context)
        .bind(now)
        .bind(key.external_requisition_id)
        .execute(tx.conn())
        .await
        .map_err(db_error)?;
        let all_fulfilled = data.requisitions.iter().all(|r| {
            r.external_requisition_id == key.external_requisition_id
                || r.state == RequisitionState::Fulfilled as i32
        });
        if all_fulfilled {
            let next = protocol.state_after_fulfillment();
            store::set_measurement_state(&mut tx, id, next as i32).await?;
        }
        let rows = store::requisitions(tx.conn(), id).await?;
        let row = rows
            .iter()
            .find(|r| r.external_requisition_id == key.external_requisition_id)
            .ok_or_else(|| Status::internal("requisition vanished"))?;
        let view = self.core.requisition_view(row)?;
        tx.commit().await?;
        halo_crashpoint::point("kingdom.fulfill_requisition");
        Ok(Response::new(view))
    }
}

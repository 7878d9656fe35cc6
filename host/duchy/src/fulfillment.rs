//! The `RequisitionFulfillment` server: data providers stream their requisition data to the
//! duchy that must hold it. The duchy verifies the fingerprint and nonce, stores the data
//! once (a retried fulfilment does not write again) and reports the fulfilment to the
//! Kingdom.

use std::sync::Arc;

use api::requisition_fulfillment_server::{RequisitionFulfillment, RequisitionFulfillmentServer};
use halo_identity::Principal;
use halo_proto::api::v2alpha as api;
use halo_proto::halo::v1::MeasurementSpec;
use halo_proto::system::v1alpha as sys;
use prost::Message;
use sha2::{Digest, Sha256};
use tonic::{Request, Response, Status, Streaming};

use crate::blobs::receive_body;
use crate::core::Core;
use crate::names;

pub struct FulfillmentService {
    core: Arc<Core>,
}

pub fn server(core: Arc<Core>) -> RequisitionFulfillmentServer<FulfillmentService> {
    RequisitionFulfillmentServer::new(FulfillmentService { core })
        .max_decoding_message_size(8 << 20)
}

fn internal(e: anyhow::Error) -> Status {
    tracing::error!("RequisitionFulfillment internal error: {e:#}");
    Status::internal(format!("{e:#}"))
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
    match m.payload {
        Some(Payload::BodyChunk(c)) => Some(c.data),
        _ => None,
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
        let mut stream = request.into_inner();
        let FulfillHeader {
            header,
            data_provider,
            requisition,
        } = parse_fulfill_header(stream.message().await?)?;
        let (dp, rid) = (data_provider.as_str(), requisition.as_str());
        if caller != Principal::DataProvider(dp.to_string()) {
            return Err(Status::permission_denied(format!(
                "{} may not fulfil requisitions of dataProviders/{dp}",
                caller.resource_name()
            )));
        }
        // The certificate that will vouch for the data provider's share seed must be its own
        // (the peer duchy checks the seed's signature against it, halo-system §8.2).
        if let Some(
            api::fulfill_requisition_request::header::Protocol::HonestMajorityShareShuffle(h),
        ) = &header.protocol
        {
            let own = format!("dataProviders/{dp}/certificates/");
            if !h.data_provider_certificate.is_empty()
                && !h.data_provider_certificate.starts_with(&own)
            {
                return Err(Status::permission_denied(format!(
                    "{} may not name certificate {:?} for its requisition",
                    caller.resource_name(),
                    h.data_provider_certificate
                )));
            }
        }
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

        if req.blob.is_none() {
            let key = crate::blobs::requisition_key(&row.global_id, rid)
                .map_err(|e| Status::invalid_argument(format!("{e:#}")))?;
            let path = core.store.blob_path(&key).map_err(internal)?;
            let (size, _) = receive_body(
                &mut stream,
                &path,
                core.config.max_payload_bytes,
                false,
                fulfill_body_chunk,
            )
            .await?;
            let recorded = core
                .store
                .record_requisition(
                    &row.global_id,
                    rid,
                    &key,
                    &header.encode_to_vec(),
                    header.nonce,
                    core.id(),
                )
                .await
                .map_err(internal)?;
            if recorded {
                core.store
                    .audit(
                        &row.global_id,
                        "requisition",
                        &format!("{rid}: {size} bytes from {dp}"),
                    )
                    .await
                    .map_err(internal)?;
            }
        } else {
            while stream.message().await?.is_some() {}
        }

        let res = core
            .requisitions_client()
            .fulfill_requisition(sys::FulfillRequisitionRequest {
                name: format!("computations/{}/requisitions/{rid}", row.global_id),
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
            Err(s) if s.code() == tonic::Code::FailedPrecondition && req.blob.is_some() => {
                // Already fulfilled at the Kingdom by an earlier attempt of this call.
            }
            Err(s) => return Err(s),
        }
        Ok(Response::new(api::FulfillRequisitionResponse {
            state: api::requisition::State::Fulfilled as i32,
        }))
    }
}

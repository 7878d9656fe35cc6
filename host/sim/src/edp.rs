//! Data-provider simulator: lists its requisitions at the Kingdom and fulfils them at the
//! assigned duchy over mutual TLS.

use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use halo_proto::api::v2alpha as api;
use halo_proto::halo::v1 as admin;
use sha2::{Digest, Sha256};
use tonic::transport::Channel;

use crate::mc::nonce_of;

/// Lists this data provider's requisitions that can be fulfilled now.
pub async fn list(kingdom: Channel, edp: &str) -> Result<Vec<admin::DataProviderRequisition>> {
    Ok(
        admin::data_provider_requisitions_client::DataProviderRequisitionsClient::new(kingdom)
            .list_requisitions(admin::ListRequisitionsRequest {
                parent: format!("dataProviders/{edp}"),
            })
            .await?
            .into_inner()
            .requisitions,
    )
}

/// Waits until `count` requisitions are listed.
pub async fn wait_for_requisitions(
    kingdom: Channel,
    edp: &str,
    count: usize,
    timeout: Duration,
) -> Result<Vec<admin::DataProviderRequisition>> {
    let start = Instant::now();
    loop {
        let reqs = list(kingdom.clone(), edp).await?;
        if reqs.len() >= count {
            return Ok(reqs);
        }
        if start.elapsed() > timeout {
            bail!(
                "{edp}: {} of {count} requisitions after {timeout:?}",
                reqs.len()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The requisition fingerprint: SHA-256(measurement_spec ‖ SHA-256(encrypted_requisition_spec)).
pub fn fingerprint(r: &admin::DataProviderRequisition) -> Vec<u8> {
    let spec = r
        .computation
        .as_ref()
        .map(|c| c.measurement_spec.as_slice())
        .unwrap_or_default();
    Sha256::new()
        .chain_update(spec)
        .chain_update(Sha256::digest(&r.encrypted_requisition_spec))
        .finalize()
        .to_vec()
}

/// Sends `data` for requisition `r` to `duchy` (a channel to the fulfilling duchy).
pub async fn fulfill(
    duchy: Channel,
    r: &admin::DataProviderRequisition,
    protocol: Option<api::fulfill_requisition_request::header::Protocol>,
    data: &[u8],
    chunk_size: usize,
) -> Result<()> {
    use api::fulfill_requisition_request::{BodyChunk, Header, Payload};
    let nonce = nonce_of(&r.encrypted_requisition_spec)?;
    let mut msgs = vec![api::FulfillRequisitionRequest {
        payload: Some(Payload::Header(Header {
            name: r.name.clone(),
            requisition_fingerprint: fingerprint(r),
            nonce,
            protocol_config: None,
            protocol,
            fulfillment_context: None,
            etag: r.etag.clone(),
        })),
    }];
    for c in data.chunks(chunk_size.max(1)) {
        msgs.push(api::FulfillRequisitionRequest {
            payload: Some(Payload::BodyChunk(BodyChunk { data: c.to_vec() })),
        });
    }
    api::requisition_fulfillment_client::RequisitionFulfillmentClient::new(duchy)
        .fulfill_requisition(tokio_stream::iter(msgs))
        .await?;
    Ok(())
}

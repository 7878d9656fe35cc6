//! Data-provider simulator: lists its requisitions at the Kingdom and fulfils them at the
//! assigned duchy over mutual TLS. [`fulfill_hmss_requisitions`] is the whole HMSS data
//! provider (used by `halo edp`, `halo demo` and the tests).

use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use halo_identity::{Identity, Principal};
use halo_proto::api::v2alpha as api;
use halo_proto::halo::v1 as admin;
use halo_proto::system::v1alpha::computation::mpc_protocol_config::Protocol as MpcProtocol;
use halo_protocol::SystemProtocol;
use prost::Message;
use rand::CryptoRng;
use sha2::{Digest, Sha256};
use tonic::transport::Channel;

use crate::mc::nonce_of;
use crate::retry;

/// Most pages [`list`] follows before giving up (the Kingdom's pages hold up to 1000).
const MAX_LIST_PAGES: usize = 10_000;

/// Lists this data provider's requisitions that can be fulfilled now (every page). One
/// attempt per page: an error is returned as is (see [`list_until`]).
pub async fn list(kingdom: Channel, edp: &str) -> Result<Vec<admin::DataProviderRequisition>> {
    list_pages(kingdom, edp, None).await
}

/// [`list`], retrying each page's transient failures until `deadline` (a page token stays
/// valid across a Kingdom restart).
pub async fn list_until(
    kingdom: Channel,
    edp: &str,
    deadline: Instant,
) -> Result<Vec<admin::DataProviderRequisition>> {
    list_pages(kingdom, edp, Some(deadline)).await
}

async fn list_pages(
    kingdom: Channel,
    edp: &str,
    deadline: Option<Instant>,
) -> Result<Vec<admin::DataProviderRequisition>> {
    let client =
        admin::data_provider_requisitions_client::DataProviderRequisitionsClient::new(kingdom);
    let mut all = Vec::new();
    let mut page_token = String::new();
    for _ in 0..MAX_LIST_PAGES {
        let call = || {
            let mut client = client.clone();
            let request = admin::ListRequisitionsRequest {
                parent: format!("dataProviders/{edp}"),
                page_size: 0,
                page_token: page_token.clone(),
            };
            async move { client.list_requisitions(request).await }
        };
        let page = match deadline {
            Some(deadline) => retry::retry("ListRequisitions", deadline.into(), call).await?,
            None => call().await?,
        }
        .into_inner();
        all.extend(page.requisitions);
        if page.next_page_token.is_empty() {
            return Ok(all);
        }
        page_token = page.next_page_token;
    }
    bail!("{edp}: ListRequisitions returned more than {MAX_LIST_PAGES} pages")
}

/// Waits until `count` requisitions are listed, riding out Kingdom restarts (transient
/// failures are retried until `timeout` has passed).
pub async fn wait_for_requisitions(
    kingdom: Channel,
    edp: &str,
    count: usize,
    timeout: Duration,
) -> Result<Vec<admin::DataProviderRequisition>> {
    let start = Instant::now();
    loop {
        let reqs = list_until(kingdom.clone(), edp, start + timeout).await?;
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

/// Sends `data` for requisition `r` to `duchy` (a channel to the fulfilling duchy), once: an
/// error is returned as is (see [`fulfill_until`]).
pub async fn fulfill(
    duchy: Channel,
    r: &admin::DataProviderRequisition,
    protocol: Option<api::fulfill_requisition_request::header::Protocol>,
    data: &[u8],
    chunk_size: usize,
) -> Result<()> {
    let nonce = nonce_of(&r.encrypted_requisition_spec)?;
    send_fulfilment(duchy, r, nonce, protocol, data, chunk_size).await?;
    Ok(())
}

/// [`fulfill`], resending the same header and body after transient failures until
/// `deadline`. Safe: the duchy accepts an identical re-upload of a requisition it already
/// stored, and the Kingdom an identical FulfillRequisition.
pub async fn fulfill_until(
    duchy: Channel,
    r: &admin::DataProviderRequisition,
    protocol: Option<api::fulfill_requisition_request::header::Protocol>,
    data: &[u8],
    chunk_size: usize,
    deadline: Instant,
) -> Result<()> {
    let nonce = nonce_of(&r.encrypted_requisition_spec)?;
    retry::retry("FulfillRequisition", deadline.into(), || {
        send_fulfilment(duchy.clone(), r, nonce, protocol.clone(), data, chunk_size)
    })
    .await?;
    Ok(())
}

async fn send_fulfilment(
    duchy: Channel,
    r: &admin::DataProviderRequisition,
    nonce: u64,
    protocol: Option<api::fulfill_requisition_request::header::Protocol>,
    data: &[u8],
    chunk_size: usize,
) -> Result<(), tonic::Status> {
    use api::fulfill_requisition_request::{BodyChunk, Header, Payload};
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

/// Body chunk size of an HMSS fulfilment.
pub const HMSS_CHUNK_SIZE: usize = 1 << 20;

/// One HMSS requisition a data provider fulfilled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HmssFulfilment {
    /// `dataProviders/{dp}/requisitions/{r}`.
    pub requisition: String,
    /// `computations/{c}`.
    pub computation: String,
    /// The duchy the share was sent to.
    pub duchy: String,
    /// Registers in the frequency vector (`register_count`).
    pub registers: usize,
    /// Bytes of the body (the serialized share vector).
    pub bytes: usize,
}

/// What an HMSS requisition asks for: the measurement spec and the ring modulus.
#[derive(Debug, Clone)]
pub struct HmssRequisition {
    pub spec: admin::MeasurementSpec,
    pub ring_modulus: u32,
    /// Largest value an entry of the frequency vector may have (1 for reach-only).
    pub max_frequency: u32,
}

fn protocol_name(p: Option<&MpcProtocol>) -> &'static str {
    match p.map(SystemProtocol::of_mpc_config) {
        Some(Ok(p)) => p.display_name(),
        Some(Err(halo_protocol::UnsupportedProtocol(name))) => name,
        None => "no protocol",
    }
}

/// Checks that `r` is an HMSS requisition this simulator can fulfil and reads its parameters.
pub fn hmss_requisition(r: &admin::DataProviderRequisition) -> Result<HmssRequisition> {
    let c = r
        .computation
        .as_ref()
        .ok_or_else(|| anyhow!("requisition {} carries no computation", r.name))?;
    let protocol = c
        .mpc_protocol_config
        .as_ref()
        .and_then(|m| m.protocol.as_ref());
    if protocol.map(SystemProtocol::of_mpc_config)
        != Some(Ok(SystemProtocol::HonestMajorityShareShuffle))
    {
        bail!(
            "requisition {} ({}) uses {}; this data-provider simulator fulfils only \
             Honest Majority Share Shuffle requisitions",
            r.name,
            c.name,
            protocol_name(protocol)
        );
    }
    let spec = admin::MeasurementSpec::decode(c.measurement_spec.as_slice())
        .with_context(|| format!("requisition {}: measurement spec", r.name))?;
    let ring_modulus =
        crate::hmss::ring_modulus(c, &spec).with_context(|| format!("requisition {}", r.name))?;
    let max_frequency = match spec.r#type() {
        admin::measurement_spec::Type::ReachAndFrequency => u32::try_from(spec.maximum_frequency)
            .ok()
            .filter(|&f| f >= 1)
            .ok_or_else(|| {
                anyhow!(
                    "requisition {}: maximum_frequency {} must be at least 1",
                    r.name,
                    spec.maximum_frequency
                )
            })?,
        _ => 1,
    };
    Ok(HmssRequisition {
        spec,
        ring_modulus,
        max_frequency,
    })
}

/// The HMSS data provider `signer` (its identity signs the share seeds): lists its
/// requisitions at the Kingdom (`kingdom` is a channel authenticated as `edp`) and, for each,
/// takes the measurement's VID sampling interval of `vector` (the whole population's vector,
/// see [`crate::hmss::sampled`]), caps it at the measurement's maximum frequency (1 for
/// reach-only), secret-shares it modulo the computation's ring modulus, seals the seed to the
/// peer non-aggregator's key and streams the share to the fulfilling duchy (`duchy(id)` gives
/// a channel to it, authenticated as `edp`).
///
/// With `wait = Some(t)` it polls until at least one requisition is listed and fails after
/// `t`; with `None` it lists once (and may fulfil nothing). Every listed requisition is
/// checked before anything is sent: one that is not HMSS is an error. Restarts of the Kingdom
/// and the duchies are ridden out: transient failures are retried until `t` has passed (for
/// [`retry::DEFAULT_BUDGET`] with `None`).
pub async fn fulfill_hmss_requisitions<R, D>(
    kingdom: Channel,
    signer: &Identity,
    duchy: D,
    vector: &[u32],
    wait: Option<Duration>,
    rng: &mut R,
) -> Result<Vec<HmssFulfilment>>
where
    R: CryptoRng,
    D: Fn(&str) -> Result<Channel>,
{
    let deadline = Instant::now() + wait.unwrap_or(retry::DEFAULT_BUDGET);
    fulfill_hmss_requisitions_until(
        kingdom,
        signer,
        duchy,
        vector,
        wait.is_some(),
        deadline,
        rng,
    )
    .await
}

/// [`fulfill_hmss_requisitions`] with an explicit deadline: with `poll` it lists until at
/// least one requisition is listed and fails at `deadline`; without, it lists once. Either way
/// transient failures are retried until `deadline`.
pub async fn fulfill_hmss_requisitions_until<R, D>(
    kingdom: Channel,
    signer: &Identity,
    duchy: D,
    vector: &[u32],
    poll: bool,
    deadline: Instant,
    rng: &mut R,
) -> Result<Vec<HmssFulfilment>>
where
    R: CryptoRng,
    D: Fn(&str) -> Result<Channel>,
{
    let Principal::DataProvider(edp) = &signer.principal else {
        bail!("{} is not a data provider", signer.principal);
    };
    let edp = edp.as_str();
    if vector.is_empty() {
        bail!("{edp}: the frequency vector is empty");
    }
    let start = Instant::now();
    let reqs = loop {
        let reqs = list_until(kingdom.clone(), edp, deadline)
            .await
            .with_context(|| format!("{edp}: listing requisitions at the Kingdom"))?;
        if !reqs.is_empty() {
            break reqs;
        }
        if !poll {
            return Ok(Vec::new());
        }
        if Instant::now() >= deadline {
            bail!(
                "{edp}: no requisition to fulfil after {:.0}s",
                start.elapsed().as_secs_f64()
            )
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let checked = reqs
        .iter()
        .map(hmss_requisition)
        .collect::<Result<Vec<_>>>()?;
    let mut done = Vec::with_capacity(reqs.len());
    for (r, h) in reqs.iter().zip(checked) {
        let sampled = crate::hmss::sampled(
            vector,
            h.spec.vid_sampling_interval_start,
            h.spec.vid_sampling_interval_width,
        )
        .with_context(|| format!("requisition {}", r.name))?;
        let capped: Vec<u32> = sampled.iter().map(|&x| x.min(h.max_frequency)).collect();
        let peer = crate::hmss::peer_public_key(r)?;
        let f = crate::hmss::share_frequency_vector(&capped, h.ring_modulus, &peer, signer, rng)
            .with_context(|| format!("requisition {}", r.name))?;
        let channel = duchy(&r.fulfilling_duchy)?;
        fulfill_until(
            channel,
            r,
            Some(f.header_protocol),
            &f.body,
            HMSS_CHUNK_SIZE,
            deadline,
        )
        .await
        .with_context(|| {
            format!(
                "{edp}: fulfilling {} at duchy {}",
                r.name, r.fulfilling_duchy
            )
        })?;
        done.push(HmssFulfilment {
            requisition: r.name.clone(),
            computation: r
                .computation
                .as_ref()
                .map(|c| c.name.clone())
                .unwrap_or_default(),
            duchy: r.fulfilling_duchy.clone(),
            registers: capped.len(),
            bytes: f.body.len(),
        });
    }
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;
    use halo_proto::system::v1alpha::Computation;
    use halo_proto::system::v1alpha::computation::MpcProtocolConfig;
    use halo_proto::system::v1alpha::computation::mpc_protocol_config::{
        HonestMajorityShareShuffle, LiquidLegionsV2,
    };

    fn requisition(
        protocol: Option<MpcProtocol>,
        spec: admin::MeasurementSpec,
    ) -> admin::DataProviderRequisition {
        admin::DataProviderRequisition {
            name: "dataProviders/edp1/requisitions/r1".into(),
            computation: Some(Computation {
                name: "computations/c1".into(),
                measurement_spec: spec.encode_to_vec(),
                mpc_protocol_config: Some(MpcProtocolConfig { protocol }),
                ..Default::default()
            }),
            fulfilling_duchy: "worker1".into(),
            ..Default::default()
        }
    }

    fn hmss(q: i32) -> Option<MpcProtocol> {
        Some(MpcProtocol::HonestMajorityShareShuffle(
            HonestMajorityShareShuffle {
                reach_and_frequency_ring_modulus: q,
                reach_ring_modulus: q,
                ..Default::default()
            },
        ))
    }

    #[test]
    fn hmss_requisition_reads_parameters() {
        let mut spec = admin::MeasurementSpec {
            maximum_frequency: 5,
            ..Default::default()
        };
        spec.set_type(admin::measurement_spec::Type::ReachAndFrequency);
        let h = hmss_requisition(&requisition(hmss(127), spec.clone())).unwrap();
        assert_eq!((h.ring_modulus, h.max_frequency), (127, 5));
        spec.set_type(admin::measurement_spec::Type::Reach);
        let h = hmss_requisition(&requisition(hmss(131), spec.clone())).unwrap();
        assert_eq!((h.ring_modulus, h.max_frequency), (131, 1));
        spec.set_type(admin::measurement_spec::Type::ReachAndFrequency);
        spec.maximum_frequency = 0;
        let e = hmss_requisition(&requisition(hmss(127), spec)).unwrap_err();
        assert!(format!("{e:#}").contains("maximum_frequency 0"), "{e:#}");
    }

    #[test]
    fn unsupported_protocol_is_a_clear_error() {
        let mut spec = admin::MeasurementSpec::default();
        spec.set_type(admin::measurement_spec::Type::Reach);
        let r = requisition(
            Some(MpcProtocol::LiquidLegionsV2(LiquidLegionsV2::default())),
            spec.clone(),
        );
        let e = format!("{:#}", hmss_requisition(&r).unwrap_err());
        assert!(e.contains("dataProviders/edp1/requisitions/r1"), "{e}");
        assert!(e.contains("uses Liquid Legions v2"), "{e}");
        assert!(
            e.contains("fulfils only Honest Majority Share Shuffle"),
            "{e}"
        );
        let e = format!(
            "{:#}",
            hmss_requisition(&requisition(None, spec)).unwrap_err()
        );
        assert!(e.contains("uses no protocol"), "{e}");
        let e = format!(
            "{:#}",
            hmss_requisition(&admin::DataProviderRequisition::default()).unwrap_err()
        );
        assert!(e.contains("carries no computation"), "{e}");
    }
}

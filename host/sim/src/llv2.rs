//! Liquid Legions v2 (reach and frequency, and reach-only) for the simulators
//! (halo-system §8.1, mpc-crypto §1): the consumer's request, the data provider's sketch from
//! the synthetic population, its encryption under the duchies' combined ElGamal key after
//! checking each duchy's signature on its key, and the plaintext answer the MPC reproduces.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail, ensure};
use halo_identity::{Identity, Principal, TrustStore};
use halo_p256::backend::{Crypto, Pure, RandomSource};
use halo_proto::halo::v1 as admin;
use halo_proto::system::v1alpha::DifferentialPrivacyParams;
use halo_proto::system::v1alpha::computation::MpcProtocolConfig;
use halo_proto::system::v1alpha::computation::mpc_protocol_config::{
    LiquidLegionsV2, NoiseMechanism, Protocol as MpcProtocol, liquid_legions_v2,
};
use halo_proto::system::v1alpha::computation_participant::requisition_params::Protocol as ParamsProtocol;
use halo_protocol::SystemProtocol;
use llv2_core::estimator::{frequency_distribution, plaintext_reach};
use llv2_core::sketch::{PlainRegister, SketchParams, build_sketch, union, vid_sampled};
use prost::Message;
use rand::{CryptoRng, RngCore};
use tonic::transport::Channel;

use crate::edp::{fulfill_until, list_until};
use crate::mc::{
    CreatedMeasurement, HmssMeasurement, fetch_certificate_until, new_measurement, send_create,
};
use crate::retry;

/// The sampling-indicator size data providers use (production value, mpc-crypto §1.1).
pub const SAMPLING_INDICATOR_SIZE: u64 = 10_000_000;
/// Curve of the duchies' keys (OpenSSL NID of prime256v1).
pub const P256_CURVE_ID: i32 = 415;
/// Chunk size of the sketch upload.
const CHUNK_SIZE: usize = 1 << 20;

/// What a Liquid Legions v2 measurement asks for.
#[derive(Debug, Clone, PartialEq)]
pub struct Llv2Request {
    /// Run reach-only LLv2 (a REACH measurement) instead of LLv2.
    pub reach_only_protocol: bool,
    /// REACH instead of REACH_AND_FREQUENCY (LLv2 with `MF = 1`).
    pub reach_only: bool,
    /// Largest frequency bucket (R&F).
    pub max_frequency: u32,
    /// `NONE` measures exactly (what the estimator gives on the union sketch); otherwise
    /// `epsilon`/`delta` are the reach and frequency DP parameters and also the duchies'
    /// blinded-histogram and publisher noise parameters.
    pub noise: NoiseMechanism,
    pub epsilon: f64,
    pub delta: f64,
    /// Sketch parameters (decay rate `a`, size `m`).
    pub decay_rate: f64,
    pub sketch_size: i64,
    /// VID sampling interval.
    pub vid_sampling_start: f32,
    pub vid_sampling_width: f32,
}

impl Default for Llv2Request {
    fn default() -> Self {
        Llv2Request {
            reach_only_protocol: false,
            reach_only: false,
            max_frequency: 3,
            noise: NoiseMechanism::None,
            epsilon: 1.0,
            delta: 1e-9,
            decay_rate: 12.0,
            sketch_size: 100_000,
            vid_sampling_start: 0.0,
            vid_sampling_width: 1.0,
        }
    }
}

impl Llv2Request {
    /// The maximum frequency the measurement reports (1 for reach).
    pub fn effective_max_frequency(&self) -> u32 {
        if self.reach_only || self.reach_only_protocol {
            1
        } else {
            self.max_frequency
        }
    }

    /// The system protocol.
    pub fn protocol(&self) -> SystemProtocol {
        if self.reach_only_protocol {
            SystemProtocol::ReachOnlyLiquidLegionsV2
        } else {
            SystemProtocol::LiquidLegionsV2
        }
    }

    /// The sketch parameters data providers use.
    pub fn sketch_params(&self) -> SketchParams {
        SketchParams {
            decay_rate: self.decay_rate,
            size: u64::try_from(self.sketch_size).unwrap_or(0),
            sampling_indicator_size: SAMPLING_INDICATOR_SIZE,
        }
    }

    /// The measurement spec, with the consumer's X25519 `public_key`.
    pub fn spec(&self, public_key: &[u8]) -> Result<admin::MeasurementSpec> {
        use admin::measurement_spec::Type;
        let dp = (self.noise != NoiseMechanism::None).then_some(DifferentialPrivacyParams {
            epsilon: self.epsilon,
            delta: self.delta,
        });
        let reach = self.reach_only || self.reach_only_protocol;
        Ok(admin::MeasurementSpec {
            measurement_public_key: public_key.to_vec(),
            r#type: if reach {
                Type::Reach as i32
            } else {
                Type::ReachAndFrequency as i32
            },
            maximum_frequency: i32::try_from(self.effective_max_frequency())
                .context("maximum frequency out of range")?,
            reach_privacy_params: dp,
            frequency_privacy_params: if reach { None } else { dp },
            vid_sampling_interval_start: self.vid_sampling_start,
            vid_sampling_interval_width: self.vid_sampling_width,
            nonce_hashes: vec![],
            simulation: Default::default(),
        })
    }

    /// The protocol configuration (sketch, duchies' noise, curve, mechanism).
    pub fn protocol_config(&self) -> MpcProtocolConfig {
        let dp = Some(DifferentialPrivacyParams {
            epsilon: self.epsilon,
            delta: self.delta,
        });
        let config = LiquidLegionsV2 {
            sketch_params: Some(liquid_legions_v2::LiquidLegionsSketchParams {
                decay_rate: self.decay_rate,
                max_size: self.sketch_size,
            }),
            mpc_noise: (self.noise != NoiseMechanism::None).then_some(
                liquid_legions_v2::MpcNoise {
                    blinded_histogram_noise: dp,
                    publisher_noise: dp,
                },
            ),
            elliptic_curve_id: P256_CURVE_ID,
            noise_mechanism: self.noise as i32,
            ..Default::default()
        };
        MpcProtocolConfig {
            protocol: Some(if self.reach_only_protocol {
                MpcProtocol::ReachOnlyLiquidLegionsV2(config)
            } else {
                MpcProtocol::LiquidLegionsV2(config)
            }),
        }
    }
}

/// Creates a Liquid Legions v2 measurement as consumer `mc` with a fresh X25519 result key
/// pair (the result is opened like HMSS's: same format, same sealing).
pub async fn create_llv2_measurement<R: CryptoRng>(
    kingdom: Channel,
    mc: &str,
    data_providers: &[String],
    request: &Llv2Request,
    rng: &mut R,
) -> Result<HmssMeasurement> {
    let deadline = Instant::now() + retry::DEFAULT_BUDGET;
    create_llv2_measurement_until(kingdom, mc, data_providers, request, deadline, rng).await
}

/// [`create_llv2_measurement`], retrying transient failures until `deadline`.
pub async fn create_llv2_measurement_until<R: CryptoRng>(
    kingdom: Channel,
    mc: &str,
    data_providers: &[String],
    request: &Llv2Request,
    deadline: Instant,
    rng: &mut R,
) -> Result<HmssMeasurement> {
    ensure!(
        !data_providers.is_empty(),
        "at least one data provider is required"
    );
    let (secret_key, public_key) = crate::hmss::measurement_keypair(rng);
    let spec = request.spec(&public_key)?;
    let new = new_measurement(
        mc,
        request.protocol().admin(),
        spec.clone(),
        data_providers,
        Some(request.protocol_config()),
    );
    let measurement = send_create(kingdom, &new.request, deadline)
        .await
        .with_context(|| format!("{mc}: creating the measurement at the Kingdom"))?;
    Ok(HmssMeasurement::new(
        CreatedMeasurement {
            measurement,
            nonces: new.nonces,
        },
        spec,
        secret_key,
    ))
}

/// The population's events for one provider: `(vid, frequency)` for every VID (the vector's
/// index) it reaches that the VID sampler keeps (mpc-crypto §1.2.1).
pub fn events(vector: &[u32], start: f32, width: f32) -> Vec<(i64, u64)> {
    vector
        .iter()
        .enumerate()
        .filter(|(_, f)| **f > 0)
        .map(|(vid, f)| (vid as i64, u64::from(*f)))
        .filter(|(vid, _)| vid_sampled(*vid, start, width))
        .collect()
}

/// The provider's plaintext sketch.
pub fn sketch(vector: &[u32], params: &SketchParams, start: f32, width: f32) -> Vec<PlainRegister> {
    build_sketch(events(vector, start, width), params)
}

/// What the MPC reproduces exactly with noise off: the estimator on the union of the
/// providers' sketches, and the frequency distribution of its non-destroyed registers
/// (decimal keys `1..=MF`, `MF` meaning "MF or more"; empty for reach).
pub fn expected(
    vectors: &[Vec<u32>],
    request: &Llv2Request,
) -> Result<(i64, BTreeMap<String, f64>)> {
    let params = request.sketch_params();
    let sketches: Vec<Vec<PlainRegister>> = vectors
        .iter()
        .map(|v| {
            sketch(
                v,
                &params,
                request.vid_sampling_start,
                request.vid_sampling_width,
            )
        })
        .collect();
    let refs: Vec<&[PlainRegister]> = sketches.iter().map(Vec::as_slice).collect();
    let u = union(&refs);
    let reach = plaintext_reach(&u, &params, request.vid_sampling_width).map_err(|e| anyhow!(e))?;
    let mf = request.effective_max_frequency();
    let freq = if mf > 1 {
        frequency_distribution(&u, mf)
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect()
    } else {
        BTreeMap::new()
    };
    Ok((reach, freq))
}

/// Random bytes for the encryption: the thread's CSPRNG.
#[derive(Default)]
struct OsRandom;

impl RandomSource for OsRandom {
    fn fill(&mut self, buf: &mut [u8]) {
        rand::rng().fill_bytes(buf);
    }
}

/// What an LLv2 requisition asks for, with the duchies' combined key checked.
#[derive(Debug, Clone)]
pub struct Llv2Requisition {
    pub spec: admin::MeasurementSpec,
    pub sketch: SketchParams,
    pub reach_only_protocol: bool,
    pub max_frequency: u32,
    /// `Y = Σ y_d` over every participant (33 bytes).
    pub combined_key: Vec<u8>,
}

/// Reads an LLv2 / RO-LLv2 requisition: its parameters and every participant's ElGamal key,
/// each verified against the signature the duchy made with its own certificate (fetched from
/// the Kingdom and checked against `trust`), combined into one key.
pub async fn llv2_requisition(
    kingdom: Channel,
    trust: &TrustStore,
    r: &admin::DataProviderRequisition,
    deadline: Instant,
) -> Result<Llv2Requisition> {
    let c = r
        .computation
        .as_ref()
        .ok_or_else(|| anyhow!("requisition {} carries no computation", r.name))?;
    let (config, reach_only_protocol) = match c
        .mpc_protocol_config
        .as_ref()
        .and_then(|m| m.protocol.as_ref())
    {
        Some(MpcProtocol::LiquidLegionsV2(l)) => (l, false),
        Some(MpcProtocol::ReachOnlyLiquidLegionsV2(l)) => (l, true),
        _ => bail!(
            "requisition {} is not a Liquid Legions v2 requisition",
            r.name
        ),
    };
    let spec = admin::MeasurementSpec::decode(c.measurement_spec.as_slice())
        .with_context(|| format!("requisition {}: measurement spec", r.name))?;
    let sp = config
        .sketch_params
        .as_ref()
        .ok_or_else(|| anyhow!("requisition {}: no sketch parameters", r.name))?;
    let sketch = SketchParams {
        decay_rate: sp.decay_rate,
        size: u64::try_from(sp.max_size).unwrap_or(0),
        sampling_indicator_size: SAMPLING_INDICATOR_SIZE,
    };
    sketch
        .validate()
        .map_err(|e| anyhow!("requisition {}: sketch parameters: {e}", r.name))?;
    let max_frequency = match spec.r#type() {
        admin::measurement_spec::Type::ReachAndFrequency if !reach_only_protocol => {
            u32::try_from(spec.maximum_frequency)
                .ok()
                .filter(|f| (1..=1000).contains(f))
                .ok_or_else(|| anyhow!("requisition {}: bad maximum_frequency", r.name))?
        }
        admin::measurement_spec::Type::Reach => 1,
        other => bail!(
            "requisition {}: measurement type {other:?} is not for Liquid Legions",
            r.name
        ),
    };
    ensure!(
        config.elliptic_curve_id == P256_CURVE_ID,
        "requisition {}: elliptic curve {} is not P-256 ({P256_CURVE_ID})",
        r.name,
        config.elliptic_curve_id
    );
    let pure = Pure::<OsRandom>::new();
    let generator = pure.fixed_point(&pure.generator());
    let mut combined: Option<Vec<u8>> = None;
    ensure!(
        !c.computation_participants.is_empty(),
        "requisition {}: the computation has no participants",
        r.name
    );
    for p in &c.computation_participants {
        let duchy = p.name.rsplit('/').next().unwrap_or_default();
        let params = p
            .requisition_params
            .as_ref()
            .ok_or_else(|| anyhow!("participant {duchy} has published no key yet"))?;
        let key = match params.protocol.as_ref() {
            Some(ParamsProtocol::LiquidLegionsV2(k))
            | Some(ParamsProtocol::ReachOnlyLiquidLegionsV2(k)) => k,
            _ => bail!("participant {duchy} has published no Liquid Legions v2 key"),
        };
        let certificate = &params.duchy_certificate;
        let owner = halo_duchy::identity::certificate_owner(certificate)
            .map_err(|e| anyhow!(e))?
            .0;
        ensure!(
            owner == Principal::Duchy(duchy.to_string()),
            "participant {duchy}: key signed with certificate {certificate:?}, not one of {duchy}'s"
        );
        let der = fetch_certificate_until(kingdom.clone(), certificate, deadline).await?;
        trust
            .verify_signature(
                &owner,
                &der,
                &key.el_gamal_public_key,
                &key.el_gamal_public_key_signature,
                &key.el_gamal_public_key_signature_algorithm_oid,
            )
            .map_err(|e| anyhow!("participant {duchy}: ElGamal key signature: {e}"))?;
        let k = admin::ElGamalPublicKey::decode(key.el_gamal_public_key.as_slice())
            .with_context(|| format!("participant {duchy}: ElGamal key"))?;
        let g = pure
            .compress(&k.generator)
            .map_err(|e| anyhow!("participant {duchy}: generator: {e:?}"))?;
        ensure!(
            g == generator,
            "participant {duchy}: the generator is not P-256's"
        );
        let y = pure
            .compress(&k.element)
            .map_err(|e| anyhow!("participant {duchy}: key: {e:?}"))?;
        combined = Some(match combined {
            None => y,
            Some(acc) => pure
                .add(&acc, &y)
                .map_err(|e| anyhow!("combining keys: {e:?}"))?,
        });
    }
    Ok(Llv2Requisition {
        spec,
        sketch,
        reach_only_protocol,
        max_frequency,
        combined_key: combined.ok_or_else(|| anyhow!("no keys"))?,
    })
}

/// The participant a Liquid Legions requisition is sent to when the Kingdom names none: one
/// of the computation's participants, chosen by a hash of the requisition's name (so the
/// providers of one computation spread over the ring, and a retry picks the same duchy).
pub fn fulfilling_duchy(r: &admin::DataProviderRequisition) -> Result<String> {
    let c = r
        .computation
        .as_ref()
        .ok_or_else(|| anyhow!("requisition {} carries no computation", r.name))?;
    let mut duchies: Vec<&str> = c
        .computation_participants
        .iter()
        .map(|p| p.name.rsplit('/').next().unwrap_or_default())
        .collect();
    duchies.sort_unstable();
    ensure!(
        !duchies.is_empty(),
        "requisition {}: no participants",
        r.name
    );
    let h = llv2_core::sketch::fingerprint64(r.name.as_bytes());
    Ok(duchies[(h % duchies.len() as u64) as usize].to_string())
}

/// One fulfilled LLv2 requisition.
#[derive(Debug, Clone)]
pub struct Llv2Fulfilment {
    pub requisition: String,
    /// `computations/{c}`.
    pub computation: String,
    pub duchy: String,
    /// Registers of the sketch.
    pub registers: usize,
    pub bytes: usize,
}

/// The LLv2 data provider `signer`: lists its requisitions at the Kingdom, and for each
/// checks the duchies' keys, builds its sketch of `vector` (VID sampled), encrypts it under
/// the combined key and streams it to the duchy the Kingdom names. With `poll` it lists
/// until a requisition appears (failing at `deadline`).
pub async fn fulfill_llv2_requisitions_until<D>(
    kingdom: Channel,
    signer: &Identity,
    trust: &TrustStore,
    duchy: D,
    vector: &[u32],
    poll: bool,
    deadline: Instant,
) -> Result<Vec<Llv2Fulfilment>>
where
    D: Fn(&str) -> Result<Channel>,
{
    let Principal::DataProvider(edp) = &signer.principal else {
        bail!("{} is not a data provider", signer.principal);
    };
    let edp = edp.as_str();
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
    let mut done = Vec::with_capacity(reqs.len());
    for r in &reqs {
        let q = llv2_requisition(kingdom.clone(), trust, r, deadline).await?;
        // The reference lets a Liquid Legions data provider fulfil at any participant
        // (halo-system §8.1); the Kingdom names none. Spread by requisition name.
        let target = match r.fulfilling_duchy.as_str() {
            "" => fulfilling_duchy(r)?,
            named => named.to_string(),
        };
        let plain = sketch(
            vector,
            &q.sketch,
            q.spec.vid_sampling_interval_start,
            q.spec.vid_sampling_interval_width,
        );
        let registers = plain.len();
        let body = tokio::task::spawn_blocking(move || -> Result<Vec<u8>> {
            let c = Pure::<OsRandom>::new();
            let y = c
                .register(&q.combined_key)
                .map_err(|e| anyhow!("combined key: {e:?}"))?;
            llv2_core::edp::encrypt_sketch(&c, &y, &plain, q.max_frequency, q.reach_only_protocol)
                .map_err(|e| anyhow!("encrypting the sketch: {e}"))
        })
        .await
        .context("the encryption task")??;
        let channel = duchy(&target)?;
        fulfill_until(channel, r, None, &body, CHUNK_SIZE, deadline)
            .await
            .with_context(|| format!("{edp}: fulfilling {} at duchy {target}", r.name))?;
        done.push(Llv2Fulfilment {
            requisition: r.name.clone(),
            computation: r
                .computation
                .as_ref()
                .map(|c| c.name.clone())
                .unwrap_or_default(),
            duchy: target,
            registers,
            bytes: body.len(),
        });
    }
    Ok(done)
}

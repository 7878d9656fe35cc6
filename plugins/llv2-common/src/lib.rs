//! Stage glue shared by the `llv2` (reach and frequency) and `ro-llv2` (reach-only) plugins
//! (halo-system §4.1–4.2, §5; mpc-crypto §2.2, §3–5, §10): parameters and their checks, the
//! duchy's ElGamal key, the initialization and confirmation phases, the ring, the plugin
//! state and the result. The math is in `llv2-core`.

use std::collections::{BTreeMap, BTreeSet};

use halo_plugin_result::identity_err;
use halo_plugin_sdk::identity;
use halo_plugin_sdk::p256::{Crypto, Host, POINT_LEN};
use halo_plugin_sdk::prelude::*;
use halo_plugin_sdk::proto::halo::v1::measurement_spec::Type as MeasurementType;
use halo_plugin_sdk::proto::halo::v1::{ElGamalPublicKey, MeasurementSpec};
use halo_plugin_sdk::proto::system::v1alpha::DifferentialPrivacyParams;
use halo_plugin_sdk::proto::system::v1alpha::computation::mpc_protocol_config::{
    LiquidLegionsV2 as Llv2Config, NoiseMechanism as SysNoise, Protocol as MpcProtocol,
};
use halo_plugin_sdk::proto::system::v1alpha::computation_participant::{
    RequisitionParams, requisition_params,
};
use halo_plugin_sdk::{random, state};
use hmss_core::noise::{DpParams, NoiseMechanism, NoiserOptions};
use llv2_core::noise::{
    MIN_EPSILON, blind_histogram_noiser, frequency_noiser, global_reach_noiser, publisher_noiser,
};
use llv2_core::protocol::{Error as CoreError, ReachNoise};
use sha2::{Digest, Sha256};

pub use halo_plugin_result::{result_json, sealed_result};

/// The curve every key lives on: OpenSSL NID 415, `prime256v1` (mpc-crypto §2.1).
pub const P256_CURVE_ID: i32 = 415;
/// Largest maximum frequency accepted (the SKA matrix has `MF − 1` rows per register).
pub const MAX_MAXIMUM_FREQUENCY: u32 = 1000;
/// Largest decay rate accepted (the estimator needs `e^a` finite).
pub const MAX_DECAY_RATE: f64 = 700.0;
/// Largest sketch accepted (registers).
pub const MAX_SKETCH_SIZE: i64 = 1 << 24;
/// Most participants in a ring.
pub const MAX_PARTICIPANTS: usize = 64;

/// Which of the two protocols a plugin runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Variant {
    /// Liquid Legions v2, reach and frequency (three rounds).
    ReachAndFrequency,
    /// Reach-only Liquid Legions v2 (one round).
    ReachOnly,
}

impl Variant {
    fn config_name(self) -> &'static str {
        match self {
            Variant::ReachAndFrequency => "liquid_legions_v2",
            Variant::ReachOnly => "reach_only_liquid_legions_v2",
        }
    }
}

/// A core error as a stage error.
pub fn core_err(e: CoreError) -> StageError {
    match e {
        CoreError::Invalid(m) => StageError::InvalidInput(m),
        CoreError::Internal(m) => StageError::Permanent(m),
    }
}

/// Validated parameters of a computation.
#[derive(Debug, Clone)]
pub struct Params {
    /// The measurement spec.
    pub spec: MeasurementSpec,
    /// `MF` (1 for a reach measurement).
    pub maximum_frequency: u32,
    /// Decay rate `a` of the sketches.
    pub decay_rate: f64,
    /// Sketch size `m`.
    pub sketch_size: u64,
    /// `D`, the number of participants.
    pub duchies: u32,
    /// `S`, the number of requisitions (sketches).
    pub sketches: u32,
    /// Reach noisers, when noise is on.
    pub reach_noise: Option<ReachNoise>,
    /// The frequency noiser, when noise is on and `MF > 1` (reach and frequency only).
    pub frequency_noise: Option<NoiserOptions>,
    /// VID sampling width (float32, as the reference passes it).
    pub width: f32,
}

impl Params {
    /// The global reach DP baseline `D·μ_reach`, when noise is on.
    pub fn reach_baseline(&self) -> Option<u64> {
        self.reach_noise
            .map(|n| u64::from(self.duchies) * u64::from(n.global_reach.mu()))
    }

    /// The frequency tuples' baseline `D·2μ_f·(MF + 1)`, when frequency noise is on.
    pub fn frequency_tuples_baseline(&self) -> Option<u64> {
        self.frequency_noise.map(|f| {
            u64::from(self.duchies)
                * llv2_core::noise::total_frequency_noise(f.mu(), self.maximum_frequency)
        })
    }

    /// The per-bucket frequency baseline `D·μ_f`, when frequency noise is on.
    pub fn frequency_bucket_baseline(&self) -> Option<u64> {
        self.frequency_noise
            .map(|f| u64::from(self.duchies) * u64::from(f.mu()))
    }
}

fn dp(p: &Option<DifferentialPrivacyParams>, what: &str) -> Result<DpParams, StageError> {
    let p = p.as_ref().ok_or_else(|| {
        StageError::invalid_input(format!("{what} DP params (epsilon, delta) missing"))
    })?;
    if !(p.epsilon >= MIN_EPSILON && p.epsilon.is_finite()) {
        return Err(StageError::invalid_input(format!(
            "{what} DP params: epsilon {} must be at least {MIN_EPSILON}",
            p.epsilon
        )));
    }
    if !(p.delta > 0.0 && p.delta <= 1.0) {
        return Err(StageError::invalid_input(format!(
            "{what} DP params: delta {} must be in (0, 1]",
            p.delta
        )));
    }
    Ok(DpParams {
        epsilon: p.epsilon,
        delta: p.delta,
    })
}

fn noiser(
    r: Result<Option<NoiserOptions>, String>,
    what: &str,
) -> Result<NoiserOptions, StageError> {
    r.map_err(|e| StageError::invalid_input(format!("{what} noise: {e}")))?
        .ok_or_else(|| StageError::permanent(format!("{what} noise: no noiser")))
}

/// Decodes and validates the computation's parameters (halo-system §5, mpc-crypto §10).
pub fn params(ctx: &ComputationContext, variant: Variant) -> Result<Params, StageError> {
    let computation = ctx.computation()?;
    let spec = ctx.measurement_spec()?;
    let config: Llv2Config = match (
        variant,
        computation.mpc_protocol_config.and_then(|c| c.protocol),
    ) {
        (Variant::ReachAndFrequency, Some(MpcProtocol::LiquidLegionsV2(c)))
        | (Variant::ReachOnly, Some(MpcProtocol::ReachOnlyLiquidLegionsV2(c))) => c,
        _ => {
            return Err(StageError::invalid_input(format!(
                "mpc_protocol_config is not {}",
                variant.config_name()
            )));
        }
    };
    if config.elliptic_curve_id != P256_CURVE_ID && config.elliptic_curve_id != 0 {
        return Err(StageError::invalid_input(format!(
            "elliptic_curve_id {} is not supported (only {P256_CURVE_ID}, prime256v1)",
            config.elliptic_curve_id
        )));
    }
    let sketch = config
        .sketch_params
        .ok_or_else(|| StageError::invalid_input("sketch_params missing"))?;
    // e^a must be finite for the estimator (a ≤ 709.78).
    if !(sketch.decay_rate > 1.0 && sketch.decay_rate <= MAX_DECAY_RATE) {
        return Err(StageError::invalid_input(format!(
            "sketch decay_rate {} must be in (1, {MAX_DECAY_RATE}]",
            sketch.decay_rate
        )));
    }
    if !(1..=MAX_SKETCH_SIZE).contains(&sketch.max_size) {
        return Err(StageError::invalid_input(format!(
            "sketch max_size {} must be in [1, {MAX_SKETCH_SIZE}]",
            sketch.max_size
        )));
    }
    let measurement_type = MeasurementType::try_from(spec.r#type).ok();
    let maximum_frequency = match (variant, measurement_type) {
        (Variant::ReachOnly, Some(MeasurementType::Reach)) => 1,
        (Variant::ReachOnly, _) => {
            return Err(StageError::invalid_input(
                "reach-only Liquid Legions v2 serves REACH measurements only",
            ));
        }
        (Variant::ReachAndFrequency, Some(MeasurementType::Reach)) => 1,
        (Variant::ReachAndFrequency, Some(MeasurementType::ReachAndFrequency)) => {
            u32::try_from(spec.maximum_frequency)
                .ok()
                .filter(|f| (1..=MAX_MAXIMUM_FREQUENCY).contains(f))
                .ok_or_else(|| {
                    StageError::invalid_input(format!(
                        "maximum_frequency {} must be in [1, {MAX_MAXIMUM_FREQUENCY}]",
                        spec.maximum_frequency
                    ))
                })?
        }
        (Variant::ReachAndFrequency, _) => {
            return Err(StageError::invalid_input(format!(
                "measurement type {} is not REACH or REACH_AND_FREQUENCY",
                spec.r#type
            )));
        }
    };
    let width = spec.vid_sampling_interval_width;
    if !(width > 0.0 && width <= 1.0) {
        return Err(StageError::invalid_input(format!(
            "vid_sampling_interval_width {width} must be in (0, 1]"
        )));
    }
    let duchies = u32::try_from(ctx.participants.len())
        .ok()
        .filter(|&d| (2..=MAX_PARTICIPANTS as u32).contains(&d))
        .ok_or_else(|| {
            StageError::invalid_input(format!(
                "{} participants: Liquid Legions v2 needs 2 to {MAX_PARTICIPANTS}",
                ctx.participants.len()
            ))
        })?;
    let sketches = u32::try_from(computation.requisitions.len())
        .ok()
        .filter(|&s| (1..=10_000).contains(&s))
        .ok_or_else(|| {
            StageError::invalid_input(format!(
                "{} requisitions: need 1 to 10000",
                computation.requisitions.len()
            ))
        })?;
    // Noise mechanisms (errata trap 1): the reference aborts on anything but geometric and
    // discrete Gaussian; here that is a clear permanent error. UNSPECIFIED is what legacy
    // configurations carry and the Kingdom reports as GEOMETRIC (halo-system §5.1).
    let mechanism = match SysNoise::try_from(config.noise_mechanism) {
        Ok(SysNoise::None) => NoiseMechanism::None,
        Ok(SysNoise::Geometric) | Ok(SysNoise::Unspecified) => NoiseMechanism::Geometric,
        Ok(SysNoise::DiscreteGaussian) => NoiseMechanism::DiscreteGaussian,
        Ok(other) => {
            return Err(StageError::invalid_input(format!(
                "noise mechanism {} is not supported by Liquid Legions v2 (GEOMETRIC, \
                 DISCRETE_GAUSSIAN or NONE)",
                other.as_str_name()
            )));
        }
        Err(_) => {
            return Err(StageError::invalid_input(format!(
                "noise mechanism {} is unknown",
                config.noise_mechanism
            )));
        }
    };
    let (reach_noise, frequency_noise) = if mechanism == NoiseMechanism::None {
        (None, None)
    } else {
        let mpc = config.mpc_noise.ok_or_else(|| {
            StageError::invalid_input(
                "noise is on but mpc_noise (blinded histogram, publisher) is missing",
            )
        })?;
        let bh = dp(&mpc.blinded_histogram_noise, "blinded histogram")?;
        let publisher = dp(&mpc.publisher_noise, "publisher")?;
        let reach = dp(&spec.reach_privacy_params, "reach")?;
        let reach_noise = ReachNoise {
            blind_histogram: noiser(
                blind_histogram_noiser(&bh, duchies, mechanism),
                "blinded histogram",
            )?,
            publisher: noiser(
                publisher_noiser(&publisher, sketches, duchies, mechanism),
                "publisher",
            )?,
            global_reach: noiser(
                global_reach_noiser(&reach, duchies, mechanism),
                "global reach",
            )?,
        };
        let frequency = if maximum_frequency > 1 {
            let f = dp(&spec.frequency_privacy_params, "frequency")?;
            Some(noiser(
                frequency_noiser(&f, duchies, mechanism),
                "frequency",
            )?)
        } else {
            None
        };
        (Some(reach_noise), frequency)
    };
    // Noise sizes must stay reasonable: every duchy adds T_reach registers.
    if let Some(n) = &reach_noise {
        let t = n.total_reach_only(sketches);
        if t > llv2_core::protocol::MAX_ELEMENTS as u64 {
            return Err(StageError::invalid_input(format!(
                "the DP parameters need {t} noise registers per duchy, more than {}",
                llv2_core::protocol::MAX_ELEMENTS
            )));
        }
    }
    if let Some(f) = &frequency_noise {
        let t = llv2_core::noise::total_frequency_noise(f.mu(), maximum_frequency);
        if t > llv2_core::protocol::MAX_ELEMENTS as u64 {
            return Err(StageError::invalid_input(format!(
                "the frequency DP parameters need {t} noise tuples per duchy, more than {}",
                llv2_core::protocol::MAX_ELEMENTS
            )));
        }
    }
    if spec.measurement_public_key.len() != 32 {
        return Err(StageError::invalid_input(
            "measurement_public_key must be a raw 32-byte X25519 key",
        ));
    }
    Ok(Params {
        spec,
        maximum_frequency,
        decay_rate: sketch.decay_rate,
        sketch_size: sketch.max_size as u64,
        duchies,
        sketches,
        reach_noise,
        frequency_noise,
        width,
    })
}

/// Plugin state of one computation at one duchy.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Llv2State {
    /// This duchy's ElGamal secret key, 32 bytes big-endian.
    #[prost(bytes = "vec", tag = "1")]
    pub secret_key: Vec<u8>,
    /// The serialized `ElGamalPublicKey` this duchy publishes.
    #[prost(bytes = "vec", tag = "2")]
    pub public_key: Vec<u8>,
    /// Duchy ids in ring order, the aggregator last (set at confirmation).
    #[prost(string, repeated, tag = "3")]
    pub ring: Vec<String>,
    /// `Y`, the sum of every participant's key (33 bytes).
    #[prost(bytes = "vec", tag = "4")]
    pub combined_key: Vec<u8>,
    /// `Y_{>j}`, the keys of the duchies after this one (the aggregator: `Y`).
    #[prost(bytes = "vec", tag = "5")]
    pub partial_key: Vec<u8>,
    /// The reach estimate (aggregator, after execution phase two of LLv2).
    #[prost(int64, optional, tag = "6")]
    pub reach: Option<i64>,
    /// [`parameters_digest`] at confirmation: later stages refuse a computation whose
    /// parameters the Kingdom changed since.
    #[prost(bytes = "vec", tag = "7")]
    pub parameters_digest: Vec<u8>,
}

/// SHA-256 over what fixes the computation's parameters: the measurement spec, the protocol
/// configuration and the requisitions' names.
pub fn parameters_digest(ctx: &ComputationContext) -> Result<Vec<u8>, StageError> {
    let c = ctx.computation()?;
    let mut h = Sha256::new();
    h.update((c.measurement_spec.len() as u64).to_be_bytes());
    h.update(&c.measurement_spec);
    let config = c
        .mpc_protocol_config
        .map(|m| m.encode_to_vec())
        .unwrap_or_default();
    h.update((config.len() as u64).to_be_bytes());
    h.update(&config);
    let mut names: Vec<&str> = c.requisitions.iter().map(|r| r.name.as_str()).collect();
    names.sort_unstable();
    for n in names {
        h.update((n.len() as u64).to_be_bytes());
        h.update(n.as_bytes());
    }
    Ok(h.finalize().to_vec())
}

/// The state of this computation (undecodable: permanent).
pub fn load(ctx: &ComputationContext) -> Result<Llv2State, StageError> {
    let st: Llv2State = state::decode(&ctx.state)?;
    if st.secret_key.len() != 32 {
        return Err(StageError::permanent("state: no ElGamal key"));
    }
    Ok(st)
}

/// [`load`], after confirmation (ring and keys present).
pub fn load_confirmed(ctx: &ComputationContext) -> Result<Llv2State, StageError> {
    let st = load(ctx)?;
    if st.ring.is_empty() || st.combined_key.len() != POINT_LEN || st.partial_key.len() != POINT_LEN
    {
        return Err(StageError::permanent(
            "state: the computation was not confirmed",
        ));
    }
    // (A computation confirmed by an earlier version of this plugin has no digest.)
    if !st.parameters_digest.is_empty() && parameters_digest(ctx)? != st.parameters_digest {
        return Err(StageError::invalid_input(
            "the computation's measurement spec, protocol configuration or requisitions changed \
             after confirmation",
        ));
    }
    Ok(st)
}

/// `start`: a fresh ElGamal key pair `(x, x·G)` for this computation (mpc-crypto §2.2).
pub fn start(
    ctx: &ComputationContext,
    variant: Variant,
    initial_stage: i32,
) -> Result<StartOutcome, StageError> {
    params(ctx, variant)?;
    let c = Host;
    let secret = c
        .random_scalars(1)
        .map_err(|e| StageError::permanent(format!("random key: {e:?}")))?;
    let element = c
        .fixed_mul(&c.generator(), &secret)
        .map_err(|e| StageError::permanent(format!("public key: {e:?}")))?;
    let public_key = ElGamalPublicKey {
        generator: c.fixed_point(&c.generator()),
        element,
    }
    .encode_to_vec();
    Ok(StartOutcome {
        initial_stage,
        state: state::encode(&Llv2State {
            secret_key: secret,
            public_key,
            ..Default::default()
        }),
    })
}

/// INITIALIZATION_PHASE: sign the ElGamal public key with the duchy's consent-signaling key
/// and publish it as requisition params.
pub fn initialization(
    ctx: &ComputationContext,
    variant: Variant,
    next: i32,
) -> Result<StageOutcome, StageError> {
    let st = load(ctx)?;
    let signature = identity::sign(&st.public_key)
        .map_err(identity_err("signing the ElGamal public key".into()))?;
    let llv2 = requisition_params::LiquidLegionsV2 {
        el_gamal_public_key: st.public_key.clone(),
        el_gamal_public_key_signature: signature.signature,
        el_gamal_public_key_signature_algorithm_oid: signature.algorithm_oid,
    };
    let protocol = match variant {
        Variant::ReachAndFrequency => requisition_params::Protocol::LiquidLegionsV2(llv2),
        Variant::ReachOnly => requisition_params::Protocol::ReachOnlyLiquidLegionsV2(llv2),
    };
    Ok(StageOutcome {
        next_stage: next,
        requisition_params: Some(
            RequisitionParams {
                protocol: Some(protocol),
                ..Default::default()
            }
            .encode_to_vec(),
        ),
        ..Default::default()
    })
}

/// SHA-256 of a nonce as 8 big-endian bytes (the `MeasurementSpec.nonce_hashes` entries).
pub fn nonce_hash(nonce: u64) -> Vec<u8> {
    Sha256::digest(nonce.to_be_bytes()).to_vec()
}

/// A participant's verified ElGamal key: `(duchy id, serialized key, public point)`.
struct ParticipantKey {
    duchy: String,
    role: Role,
    serialized: Vec<u8>,
    element: Vec<u8>,
}

fn participant_key(
    p: &Participant,
    variant: Variant,
    generator: &[u8],
) -> Result<ParticipantKey, StageError> {
    let who = &p.duchy_id;
    let params = RequisitionParams::decode(p.requisition_params.as_slice()).map_err(|e| {
        StageError::invalid_input(format!("participant {who}: requisition params: {e}"))
    })?;
    let llv2 = match (variant, params.protocol) {
        (Variant::ReachAndFrequency, Some(requisition_params::Protocol::LiquidLegionsV2(k)))
        | (Variant::ReachOnly, Some(requisition_params::Protocol::ReachOnlyLiquidLegionsV2(k))) => {
            k
        }
        _ => {
            return Err(StageError::invalid_input(format!(
                "participant {who} published no {} ElGamal key",
                variant.config_name()
            )));
        }
    };
    // The certificate must be the participant's own (the host's verify checks that it chains
    // to that principal's trusted root).
    let owns = params
        .duchy_certificate
        .strip_prefix("duchies/")
        .and_then(|rest| rest.strip_prefix(who.as_str()))
        .is_some_and(|rest| rest.starts_with("/certificates/"));
    if !owns {
        return Err(StageError::invalid_input(format!(
            "participant {who}: duchy_certificate {:?} is not a certificate of {who}",
            params.duchy_certificate
        )));
    }
    identity::verify(
        &params.duchy_certificate,
        &llv2.el_gamal_public_key,
        &llv2.el_gamal_public_key_signature,
        &llv2.el_gamal_public_key_signature_algorithm_oid,
    )
    .map_err(identity_err(format!(
        "participant {who}: ElGamal key signature"
    )))?;
    let key = ElGamalPublicKey::decode(llv2.el_gamal_public_key.as_slice()).map_err(|e| {
        StageError::invalid_input(format!("participant {who}: ElGamalPublicKey: {e}"))
    })?;
    let c = Host;
    let compress = |what: &str, p: &[u8]| {
        c.compress(p).map_err(|e| {
            StageError::invalid_input(format!("participant {who}: ElGamal {what}: {e:?}"))
        })
    };
    if compress("generator", &key.generator)? != generator {
        return Err(StageError::invalid_input(format!(
            "participant {who}: the ElGamal generator is not the P-256 base point"
        )));
    }
    Ok(ParticipantKey {
        duchy: who.clone(),
        role: p.role,
        serialized: llv2.el_gamal_public_key,
        element: compress("element", &key.element)?,
    })
}

/// CONFIRMATION_PHASE (halo-system §4.1): checks the requisitions' nonces against the
/// measurement spec and every participant's signed ElGamal key, orders the ring (errata E1),
/// computes `Y` and `Y_{>j}` and confirms.
pub fn confirmation(
    ctx: &ComputationContext,
    variant: Variant,
    next_aggregator: i32,
    next_non_aggregator: i32,
) -> Result<StageOutcome, StageError> {
    params(ctx, variant)?;
    let mut st = load(ctx)?;
    let computation = ctx.computation()?;
    let spec = ctx.measurement_spec()?;
    // (a) The requisitions' nonces hash to the spec's nonce hashes, as a set.
    let expected: BTreeSet<Vec<u8>> = spec.nonce_hashes.iter().cloned().collect();
    let got: BTreeSet<Vec<u8>> = computation
        .requisitions
        .iter()
        .map(|r| nonce_hash(r.nonce))
        .collect();
    if expected != got || spec.nonce_hashes.len() != computation.requisitions.len() {
        return Err(StageError::invalid_input(
            "the requisitions' nonces do not match the measurement spec's nonce hashes",
        ));
    }
    // (c) Every participant's key, signed by that participant.
    let c = Host;
    let generator = c.fixed_point(&c.generator());
    let mut keys = Vec::with_capacity(ctx.participants.len());
    for p in &ctx.participants {
        keys.push(participant_key(p, variant, &generator)?);
    }
    let own = keys
        .iter()
        .find(|k| k.duchy == ctx.duchy_id)
        .ok_or_else(|| StageError::permanent("this duchy is not among the participants"))?;
    if own.serialized != st.public_key {
        return Err(StageError::invalid_input(
            "the Kingdom lists a different ElGamal key for this duchy",
        ));
    }
    let aggregators: Vec<&ParticipantKey> =
        keys.iter().filter(|k| k.role == Role::Aggregator).collect();
    let [aggregator] = aggregators.as_slice() else {
        return Err(StageError::invalid_input(format!(
            "{} aggregators among the participants; Liquid Legions v2 needs one",
            aggregators.len()
        )));
    };
    if keys
        .iter()
        .any(|k| k.role != Role::Aggregator && k.role != Role::NonAggregator)
    {
        return Err(StageError::invalid_input(
            "a participant has a role Liquid Legions v2 does not use",
        ));
    }
    let non_aggregators: Vec<(&str, &[u8])> = keys
        .iter()
        .filter(|k| k.role == Role::NonAggregator)
        .map(|k| (k.duchy.as_str(), k.serialized.as_slice()))
        .collect();
    let mut ring: Vec<String> = llv2_core::ring::ring_order(&non_aggregators, &ctx.global_id)
        .into_iter()
        .map(str::to_string)
        .collect();
    ring.push(aggregator.duchy.clone());
    let by_duchy: BTreeMap<&str, &[u8]> = keys
        .iter()
        .map(|k| (k.duchy.as_str(), k.element.as_slice()))
        .collect();
    let position = ring
        .iter()
        .position(|d| *d == ctx.duchy_id)
        .ok_or_else(|| StageError::permanent("this duchy is not in the ring"))?;
    let sum = |from: usize| -> Result<Vec<u8>, StageError> {
        let mut acc: Option<Vec<u8>> = None;
        for d in &ring[from..] {
            let y = by_duchy
                .get(d.as_str())
                .ok_or_else(|| StageError::permanent("ring member without a key"))?;
            acc = Some(match acc {
                None => y.to_vec(),
                Some(a) => c.add(&a, y).map_err(|e| {
                    StageError::invalid_input(format!("combining ElGamal keys: {e:?}"))
                })?,
            });
        }
        acc.ok_or_else(|| StageError::permanent("empty ring"))
    };
    st.combined_key = sum(0)?;
    st.partial_key = if ctx.role == Role::Aggregator {
        st.combined_key.clone()
    } else {
        sum(position + 1)?
    };
    st.ring = ring;
    st.parameters_digest = parameters_digest(ctx)?;
    Ok(StageOutcome {
        next_stage: if ctx.role == Role::Aggregator {
            next_aggregator
        } else {
            next_non_aggregator
        },
        state: Some(state::encode(&st)),
        confirm: true,
        ..Default::default()
    })
}

/// Stage numbers both Liquid Legions protocols share (halo-system §4.1–4.2: the same values
/// in `LiquidLegionsV2Stage` and `ReachOnlyLiquidLegionsV2Stage`), and the description of
/// the setup input.
pub mod stage {
    pub const INITIALIZATION_PHASE: i32 = 1;
    pub const WAIT_REQUISITIONS_AND_KEY_SET: i32 = 2;
    pub const CONFIRMATION_PHASE: i32 = 3;
    pub const WAIT_TO_START: i32 = 4;
    pub const WAIT_SETUP_PHASE_INPUTS: i32 = 5;
    pub const SETUP_PHASE: i32 = 6;
    /// `SETUP_PHASE_INPUT` of both `Description` enums.
    pub const SETUP_PHASE_INPUT: i32 = 1;
}

/// The stages up to and including SETUP_PHASE, common to both protocols: initialization,
/// waiting for the keys and requisitions, confirmation, then the aggregator waits for every
/// non-aggregator's setup output while the non-aggregators wait for the computation to
/// start; SETUP_PHASE reads the requisitions fulfilled here (and, at the aggregator, the
/// setup inputs).
pub fn setup_stages() -> StageTable {
    use stage::*;
    StageTable::new()
        .queued(INITIALIZATION_PHASE, "INITIALIZATION_PHASE", &[], false)
        .wait_kingdom(
            WAIT_REQUISITIONS_AND_KEY_SET,
            "WAIT_REQUISITIONS_AND_KEY_SET",
            KingdomState::PendingParticipantConfirmation,
            CONFIRMATION_PHASE,
        )
        .queued(CONFIRMATION_PHASE, "CONFIRMATION_PHASE", &[], false)
        .wait_kingdom(
            WAIT_TO_START,
            "WAIT_TO_START",
            KingdomState::PendingComputation,
            SETUP_PHASE,
        )
        .wait_inputs(
            WAIT_SETUP_PHASE_INPUTS,
            "WAIT_SETUP_PHASE_INPUTS",
            SETUP_PHASE_INPUT,
            InputSource::Roles(vec![Role::NonAggregator]),
            SETUP_PHASE,
        )
        .queued(SETUP_PHASE, "SETUP_PHASE", &[SETUP_PHASE_INPUT], true)
}

/// Where this duchy sits in the ring.
pub struct RingPosition {
    /// Index in the ring.
    pub index: usize,
    /// The duchy this one sends to.
    pub next: String,
    /// The duchy this one receives from.
    pub previous: String,
    /// The first non-aggregator (`ring[0]`).
    pub first: String,
    /// The aggregator.
    pub aggregator: String,
}

/// This duchy's [`RingPosition`].
pub fn ring_position(ctx: &ComputationContext, st: &Llv2State) -> Result<RingPosition, StageError> {
    let n = st.ring.len();
    let index = st
        .ring
        .iter()
        .position(|d| *d == ctx.duchy_id)
        .ok_or_else(|| StageError::permanent("this duchy is not in the ring"))?;
    let at = |i: usize| st.ring[i % n].clone();
    Ok(RingPosition {
        index,
        next: at(index + 1),
        previous: at(index + n - 1),
        first: at(0),
        aggregator: at(n - 1),
    })
}

/// The payload of exactly one peer input, which must come from `from` (the ring
/// predecessor) under `description`.
pub fn single_peer_input<'a>(
    inputs: &'a [StageInput],
    from: &str,
    description: i32,
) -> Result<&'a [u8], StageError> {
    let mut found = None;
    for i in inputs {
        if let InputOrigin::Peer((duchy, d)) = &i.origin {
            if *d != description {
                continue;
            }
            if duchy != from {
                return Err(StageError::invalid_input(format!(
                    "input {description} came from {duchy}, not from {from}, the duchy before \
                     this one in the ring"
                )));
            }
            if found.is_some() {
                return Err(StageError::invalid_input(format!(
                    "more than one input {description} from {from}"
                )));
            }
            found = Some(i.data.as_slice());
        }
    }
    found.ok_or_else(|| StageError::invalid_input(format!("no input {description} from {from}")))
}

/// The data of every requisition fulfilled at this duchy, concatenated in requisition-id
/// order (LLv2 requisitions carry no protocol header fields). Each requisition must be a whole
/// number of `register_len`-byte registers on its own (two malformed ones could otherwise
/// shift an honest one's registers), and the requisitions present must be exactly those the
/// Kingdom records as fulfilled here (halo-system §4.1 confirmation (b)): one that is missing
/// would silently drop out of the result.
pub fn requisition_data(
    ctx: &ComputationContext,
    inputs: &[StageInput],
    register_len: usize,
) -> Result<Vec<u8>, StageError> {
    let mut reqs: Vec<(&str, &[u8])> = inputs
        .iter()
        .filter_map(|i| match &i.origin {
            InputOrigin::Requisition((id, _)) => Some((id.as_str(), i.data.as_slice())),
            InputOrigin::Peer(_) => None,
        })
        .collect();
    reqs.sort_by(|a, b| a.0.cmp(b.0));
    for (id, data) in &reqs {
        if !data.len().is_multiple_of(register_len) {
            return Err(StageError::invalid_input(format!(
                "requisition {id}: {} bytes is not a whole number of {register_len}-byte \
                 registers",
                data.len()
            )));
        }
    }
    let computation = ctx.computation()?;
    let prefix = format!("computations/{}/requisitions/", ctx.global_id);
    let here = format!("/participants/{}", ctx.duchy_id);
    let mut expected: Vec<&str> = computation
        .requisitions
        .iter()
        .filter(|r| r.fulfilling_computation_participant.ends_with(&here))
        .filter_map(|r| r.name.strip_prefix(&prefix))
        .collect();
    expected.sort_unstable();
    let got: Vec<&str> = reqs.iter().map(|r| r.0).collect();
    if got != expected {
        return Err(StageError::invalid_input(format!(
            "the requisitions fulfilled here are {got:?}, but the Kingdom records {expected:?}"
        )));
    }
    Ok(reqs.into_iter().flat_map(|r| r.1.to_vec()).collect())
}

/// The setup inputs the aggregator received from the non-aggregators under `description`,
/// in ring order; every non-aggregator exactly once.
pub fn setup_inputs<'a>(
    inputs: &'a [StageInput],
    st: &Llv2State,
    description: i32,
) -> Result<Vec<&'a [u8]>, StageError> {
    let non_aggregators = &st.ring[..st.ring.len().saturating_sub(1)];
    let mut out = Vec::with_capacity(non_aggregators.len());
    for d in non_aggregators {
        let mut from_d = inputs.iter().filter(|i| {
            matches!(&i.origin, InputOrigin::Peer((duchy, desc)) if duchy == d && *desc == description)
        });
        let first = from_d
            .next()
            .ok_or_else(|| StageError::invalid_input(format!("no setup input from {d}")))?;
        if from_d.next().is_some() {
            return Err(StageError::invalid_input(format!(
                "more than one setup input from {d}"
            )));
        }
        out.push(first.data.as_slice());
    }
    let known = inputs.iter().all(|i| match &i.origin {
        InputOrigin::Peer((duchy, _)) => non_aggregators.contains(duchy),
        InputOrigin::Requisition(_) => true,
    });
    if !known {
        return Err(StageError::invalid_input(
            "a setup input came from a duchy outside the ring",
        ));
    }
    Ok(out)
}

/// The host's table of a key kept in the state (a key the host refuses is a broken state:
/// permanent).
pub fn register_key(c: &Host, point: &[u8]) -> Result<<Host as Crypto>::FixedBase, StageError> {
    c.register(point)
        .map_err(|e| StageError::permanent(format!("state: key: {e:?}")))
}

/// An outcome that moves to `next_stage` and sends `payload` to one duchy.
pub fn forward(next_stage: i32, to: String, description: i32, payload: Vec<u8>) -> StageOutcome {
    StageOutcome {
        next_stage,
        sends: vec![Outgoing {
            to,
            description,
            payload,
        }],
        ..Default::default()
    }
}

/// The stages both variants share before setup ([`initialization`], [`confirmation`]), or
/// `None` for a variant's own stage; an unknown stage number is a permanent error.
pub fn shared_stage(
    ctx: &ComputationContext,
    variant: Variant,
    stage: i32,
) -> Option<Result<StageOutcome, StageError>> {
    match stage {
        stage::INITIALIZATION_PHASE => Some(initialization(
            ctx,
            variant,
            stage::WAIT_REQUISITIONS_AND_KEY_SET,
        )),
        stage::CONFIRMATION_PHASE => Some(confirmation(
            ctx,
            variant,
            stage::WAIT_SETUP_PHASE_INPUTS,
            stage::WAIT_TO_START,
        )),
        _ => None,
    }
}

/// The error for a stage number that is not one of the plugin's queued stages.
pub fn not_queued(stage: i32) -> StageError {
    StageError::permanent(format!("stage {stage} is not a queued stage"))
}

/// A PRNG for local noise draws, seeded from the host's CSPRNG (noise is local and
/// non-deterministic, mpc-crypto §9 item 11).
pub fn noise_rng() -> hmss_core::Prng<hmss_core::CtrKeystream> {
    let key = random::random_array::<32>();
    let iv = random::random_array::<16>();
    hmss_core::Prng::new(hmss_core::CtrKeystream::new(&key, &iv))
}

/// The sealed result `{"reach":n,"frequency":{...}}` for the Kingdom.
pub fn result(
    p: &Params,
    reach: i64,
    distribution: &BTreeMap<u32, f64>,
) -> Result<ComputationResult, StageError> {
    sealed_result(
        result_json(reach, distribution, None),
        &p.spec.measurement_public_key,
    )
}

/// The reach estimate of `active` registers (mpc-crypto §1.4).
pub fn estimate(p: &Params, active: i64) -> Result<i64, StageError> {
    llv2_core::protocol::reach(p.decay_rate, p.sketch_size, active, p.width).map_err(core_err)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use halo_plugin_sdk::proto::system::v1alpha::{Computation, Requisition};

    fn ctx(fulfilled_here: &[&str], elsewhere: &[&str]) -> ComputationContext {
        let req = |id: &str, duchy: &str| Requisition {
            name: format!("computations/g/requisitions/{id}"),
            fulfilling_computation_participant: format!("computations/g/participants/{duchy}"),
            ..Default::default()
        };
        let mut requisitions: Vec<Requisition> =
            fulfilled_here.iter().map(|id| req(id, "w1")).collect();
        requisitions.extend(elsewhere.iter().map(|id| req(id, "w2")));
        ComputationContext {
            global_id: "g".into(),
            duchy_id: "w1".into(),
            role: Role::NonAggregator,
            protocol: SystemProtocol::LiquidLegionsV2,
            computation: Computation {
                requisitions,
                ..Default::default()
            }
            .encode_to_vec(),
            participants: vec![],
            state: vec![],
            attempt: 1,
        }
    }

    fn input(id: &str, len: usize) -> StageInput {
        StageInput {
            origin: InputOrigin::Requisition((id.into(), vec![])),
            data: vec![7; len],
        }
    }

    #[test]
    fn parameters_changed_after_confirmation_are_refused() {
        let mut c = ctx(&["a"], &[]);
        let st = Llv2State {
            secret_key: vec![1; 32],
            ring: vec!["w1".into(), "agg".into()],
            combined_key: vec![2; POINT_LEN],
            partial_key: vec![2; POINT_LEN],
            parameters_digest: parameters_digest(&c).unwrap(),
            ..Default::default()
        };
        c.state = state::encode(&st);
        assert!(load_confirmed(&c).is_ok());
        let mut computation = c.computation().unwrap();
        computation.measurement_spec = b"another spec".to_vec();
        c.computation = computation.encode_to_vec();
        let e = load_confirmed(&c).unwrap_err();
        assert!(e.message().contains("changed after confirmation"), "{e:?}");
        // A requisition added or renamed.
        let mut c2 = ctx(&["a", "b"], &[]);
        c2.state = state::encode(&st);
        assert!(load_confirmed(&c2).is_err());
    }

    #[test]
    fn requisitions_are_checked_one_by_one_and_against_the_kingdom() {
        let c = ctx(&["a", "b"], &["c"]);
        let ok = requisition_data(&c, &[input("b", 198), input("a", 396)], 198).unwrap();
        assert_eq!(ok.len(), 594);
        // Two malformed blobs whose total is whole registers: refused, naming one.
        let e = requisition_data(&c, &[input("a", 198 + 66), input("b", 132)], 198).unwrap_err();
        assert!(e.message().contains("requisition a"), "{e:?}");
        // A requisition the Kingdom records here but that is missing, or one from elsewhere.
        let e = requisition_data(&c, &[input("a", 198)], 198).unwrap_err();
        assert!(e.message().contains("the Kingdom records"), "{e:?}");
        let e = requisition_data(&c, &[input("a", 198), input("b", 0), input("c", 198)], 198)
            .unwrap_err();
        assert!(e.message().contains("the Kingdom records"), "{e:?}");
        assert!(
            requisition_data(&ctx(&[], &["c"]), &[], 198)
                .unwrap()
                .is_empty()
        );
    }
}

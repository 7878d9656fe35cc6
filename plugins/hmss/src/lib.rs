//! `hmss`: the Honest Majority Share Shuffle protocol (halo-system §4.3, mpc-crypto §5–6) as a
//! duchy plugin. The math lives in `hmss-core`; this crate is the stage glue: parameters,
//! key exchange (HPKE, X25519), wire messages and the result.

use std::collections::BTreeMap;

use halo_plugin_sdk::proto::api::v2alpha::fulfill_requisition_request::{Header, header};
use halo_plugin_sdk::proto::halo::v1::MeasurementSpec;
use halo_plugin_sdk::proto::halo::v1::measurement_spec::Type as MeasurementType;
use halo_plugin_sdk::proto::system::v1alpha::computation::mpc_protocol_config::{
    HonestMajorityShareShuffle as HmssConfig, NoiseMechanism as SysNoise, Protocol as MpcProtocol,
};
use halo_plugin_sdk::proto::system::v1alpha::computation_participant::{
    RequisitionParams, requisition_params,
};
use halo_plugin_sdk::{prelude::*, random, state};
use hmss_core::noise::{
    DpParams, NoiseMechanism, NoiserOptions, blind_histogram_noiser, rf_noise_registers,
    ro_noise_registers,
};
use hmss_core::phase::{
    AggregationParams, NoiseBaseline, NonAggregatorRole, rf_aggregate, rf_shuffle_phase,
    ro_aggregate, ro_shuffle_phase, sum_shares,
};
use hmss_core::share::share_from_seed;
use hmss_core::wire::decode_frequency_vector;
use hmss_core::{CtrKeystream, HmssError, Prng, SEED_LEN, Seed};
use hpke::kem::X25519HkdfSha256;
use hpke::{Deserializable, Kem as _, OpModeR, OpModeS, Serializable};
use rand_core::SeedableRng;

/// Protocol id.
pub const ID: &str = "hmss";
/// Plugin version.
pub const VERSION: &str = "1.0.0";

pub const INITIALIZED: i32 = 1;
pub const WAIT_TO_START: i32 = 2;
pub const WAIT_ON_SHUFFLE_INPUT_PHASE_ONE: i32 = 3;
pub const SETUP_PHASE: i32 = 4;
pub const WAIT_ON_SHUFFLE_INPUT_PHASE_TWO: i32 = 5;
pub const WAIT_ON_AGGREGATION_INPUT: i32 = 6;
pub const SHUFFLE_PHASE: i32 = 7;
pub const AGGREGATION_PHASE: i32 = 8;
pub const COMPLETE: i32 = 9;

/// AdvanceComputation descriptions.
pub const SHUFFLE_PHASE_INPUT_ONE: i32 = 1;
pub const SHUFFLE_PHASE_INPUT_TWO: i32 = 2;
pub const AGGREGATION_PHASE_INPUT: i32 = 3;

/// HPKE `info` for the EDP's seed.
pub const SEED_INFO: &[u8] = b"halo-hmss-seed";
/// HPKE `info` for the result.
pub const RESULT_INFO: &[u8] = b"halo-hmss-result";

type Kem = X25519HkdfSha256;
type Kdf = hpke::kdf::HkdfSha256;
type Aead = hpke::aead::AesGcm256;
const ENC_LEN: usize = 32;

/// Seed sent between the non-aggregators (halo-system §4.3).
#[derive(Clone, PartialEq, prost::Message)]
pub struct SecretSeed {
    #[prost(string, tag = "1")]
    pub requisition_id: String,
    #[prost(bytes = "vec", tag = "2")]
    pub secret_seed_ciphertext: Vec<u8>,
    #[prost(int64, tag = "3")]
    pub register_count: i64,
    #[prost(string, tag = "4")]
    pub data_provider_certificate: String,
}

/// Payload of descriptions 1 and 2.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ShufflePhaseInput {
    #[prost(bytes = "vec", tag = "1")]
    pub peer_random_seed: Vec<u8>,
    #[prost(message, repeated, tag = "2")]
    pub secret_seeds: Vec<SecretSeed>,
}

/// Payload of description 3.
#[derive(Clone, PartialEq, prost::Message)]
pub struct AggregationPhaseInput {
    #[prost(uint32, repeated, packed = "true", tag = "1")]
    pub combined_frequency_vectors: Vec<u32>,
    #[prost(int64, tag = "2")]
    pub register_count: i64,
}

/// Plugin state of a non-aggregator (empty for the aggregator).
#[derive(Clone, PartialEq, prost::Message)]
pub struct HmssState {
    #[prost(bytes = "vec", tag = "1")]
    pub seed: Vec<u8>,
    #[prost(bytes = "vec", tag = "2")]
    pub secret_key: Vec<u8>,
}

/// There is no OS randomness in a component: every draw goes through the host's `random`
/// import. getrandom (a transitive dependency of hpke) is given a backend that always fails.
#[cfg(target_arch = "wasm32")]
fn no_getrandom(_: &mut [u8]) -> Result<(), getrandom::Error> {
    Err(getrandom::Error::UNSUPPORTED)
}

#[cfg(target_arch = "wasm32")]
getrandom::register_custom_getrandom!(no_getrandom);

/// The HMSS protocol plugin.
pub struct Hmss;

halo_plugin_sdk::export!(Hmss);

/// The stage table of halo-system §4.3.
pub fn stages() -> Vec<StageInfo> {
    StageTable::new()
        .queued(INITIALIZED, "INITIALIZED", &[], false)
        .wait_kingdom(
            WAIT_TO_START,
            "WAIT_TO_START",
            KingdomState::PendingComputation,
            SETUP_PHASE,
        )
        .wait_inputs(
            WAIT_ON_SHUFFLE_INPUT_PHASE_ONE,
            "WAIT_ON_SHUFFLE_INPUT_PHASE_ONE",
            SHUFFLE_PHASE_INPUT_ONE,
            InputSource::Roles(vec![Role::FirstNonAggregator]),
            SETUP_PHASE,
        )
        .queued(SETUP_PHASE, "SETUP_PHASE", &[], true)
        .wait_inputs(
            WAIT_ON_SHUFFLE_INPUT_PHASE_TWO,
            "WAIT_ON_SHUFFLE_INPUT_PHASE_TWO",
            SHUFFLE_PHASE_INPUT_TWO,
            InputSource::Roles(vec![Role::SecondNonAggregator]),
            SHUFFLE_PHASE,
        )
        .wait_inputs(
            WAIT_ON_AGGREGATION_INPUT,
            "WAIT_ON_AGGREGATION_INPUT",
            AGGREGATION_PHASE_INPUT,
            InputSource::Roles(vec![Role::FirstNonAggregator, Role::SecondNonAggregator]),
            AGGREGATION_PHASE,
        )
        .queued(
            SHUFFLE_PHASE,
            "SHUFFLE_PHASE",
            &[SHUFFLE_PHASE_INPUT_ONE, SHUFFLE_PHASE_INPUT_TWO],
            true,
        )
        .queued(
            AGGREGATION_PHASE,
            "AGGREGATION_PHASE",
            &[AGGREGATION_PHASE_INPUT],
            false,
        )
        .terminal(COMPLETE, "COMPLETE")
        .build()
}

fn core_err(e: HmssError) -> StageError {
    match e {
        HmssError::Internal(m) => StageError::Permanent(m),
        other => StageError::InvalidInput(format!("{other:?}")),
    }
}

/// Validated parameters of a computation.
#[derive(Debug, Clone)]
pub struct Params {
    pub spec: MeasurementSpec,
    pub reach_only: bool,
    pub q: u32,
    pub maximum_frequency: u32,
    pub requisitions: u32,
    /// (reach, frequency) noisers; None for mechanism NONE.
    pub noise: Option<(NoiserOptions, Option<NoiserOptions>)>,
}

impl Params {
    fn max_combined_frequency(&self) -> u32 {
        self.maximum_frequency.saturating_mul(self.requisitions)
    }

    fn baseline(&self) -> Option<NoiseBaseline> {
        self.noise.map(|(r, f)| NoiseBaseline {
            mu_reach: r.mu(),
            mu_freq: f.map(|f| f.mu()).unwrap_or(0),
        })
    }
}

fn dp(
    p: &Option<halo_plugin_sdk::proto::system::v1alpha::DifferentialPrivacyParams>,
    what: &str,
) -> Result<DpParams, StageError> {
    let p = p.as_ref().ok_or_else(|| {
        StageError::invalid_input(format!("{what} DP params (epsilon, delta) missing"))
    })?;
    if !(p.epsilon > 0.0 && p.epsilon.is_finite()) {
        return Err(StageError::invalid_input(format!(
            "{what} DP params: epsilon {} must be > 0",
            p.epsilon
        )));
    }
    if !(p.delta > 0.0 && p.delta.is_finite()) {
        return Err(StageError::invalid_input(format!(
            "{what} DP params: delta {} must be > 0",
            p.delta
        )));
    }
    Ok(DpParams {
        epsilon: p.epsilon,
        delta: p.delta,
    })
}

/// Decodes and validates the computation's parameters.
pub fn params(ctx: &ComputationContext) -> Result<Params, StageError> {
    let computation = ctx.computation()?;
    let spec = ctx.measurement_spec()?;
    let config: HmssConfig = match computation.mpc_protocol_config.and_then(|c| c.protocol) {
        Some(MpcProtocol::HonestMajorityShareShuffle(c)) => c,
        _ => {
            return Err(StageError::invalid_input(
                "mpc_protocol_config is not honest_majority_share_shuffle",
            ));
        }
    };
    let reach_only = match MeasurementType::try_from(spec.r#type) {
        Ok(MeasurementType::Reach) => true,
        Ok(MeasurementType::ReachAndFrequency) => false,
        _ => {
            return Err(StageError::invalid_input(format!(
                "measurement type {} is not REACH or REACH_AND_FREQUENCY",
                spec.r#type
            )));
        }
    };
    let maximum_frequency = if reach_only {
        1
    } else {
        u32::try_from(spec.maximum_frequency)
            .ok()
            .filter(|&f| f >= 1)
            .ok_or_else(|| {
                StageError::invalid_input(format!(
                    "maximum_frequency {} must be at least 1",
                    spec.maximum_frequency
                ))
            })?
    };
    let q_raw = if reach_only {
        config.reach_ring_modulus
    } else {
        config.reach_and_frequency_ring_modulus
    };
    let q = u32::try_from(q_raw)
        .ok()
        .filter(|&q| q >= 2)
        .ok_or_else(|| StageError::invalid_input(format!("ring modulus {q_raw} is invalid")))?;
    let requisitions = u32::try_from(computation.requisitions.len().max(1)).unwrap_or(u32::MAX);
    if u64::from(q) <= 1 + u64::from(maximum_frequency) * u64::from(requisitions) {
        return Err(StageError::invalid_input(format!(
            "ring modulus {q} must exceed 1 + maximum_frequency {maximum_frequency} × {requisitions} requisitions"
        )));
    }
    if !(spec.vid_sampling_interval_width > 0.0 && spec.vid_sampling_interval_width <= 1.0) {
        return Err(StageError::invalid_input(format!(
            "vid_sampling_interval_width {} must be in (0, 1]",
            spec.vid_sampling_interval_width
        )));
    }
    let mechanism = match SysNoise::try_from(config.noise_mechanism) {
        Ok(SysNoise::None) => NoiseMechanism::None,
        Ok(SysNoise::Geometric) => NoiseMechanism::Geometric,
        Ok(SysNoise::DiscreteGaussian) => NoiseMechanism::DiscreteGaussian,
        _ => {
            return Err(StageError::invalid_input(format!(
                "noise mechanism {} is not supported (NONE, GEOMETRIC, DISCRETE_GAUSSIAN)",
                config.noise_mechanism
            )));
        }
    };
    let noise = if mechanism == NoiseMechanism::None {
        None
    } else {
        let reach = dp(&spec.reach_privacy_params, "reach")?;
        let r = blind_histogram_noiser(&reach, 2, mechanism).map_err(core_err)?;
        let f = if reach_only {
            None
        } else {
            let freq = dp(&spec.frequency_privacy_params, "frequency")?;
            blind_histogram_noiser(&freq, 2, mechanism).map_err(core_err)?
        };
        r.map(|r| (r, f))
    };
    if !reach_only && let Some((_, None)) = noise {
        return Err(StageError::permanent("frequency noiser missing"));
    }
    Ok(Params {
        spec,
        reach_only,
        q,
        maximum_frequency,
        requisitions,
        noise,
    })
}

fn load_state(
    ctx: &ComputationContext,
) -> Result<(Seed, <Kem as hpke::Kem>::PrivateKey), StageError> {
    let st: HmssState = state::decode(&ctx.state)?;
    let seed: Seed = st
        .seed
        .as_slice()
        .try_into()
        .map_err(|_| StageError::permanent("state: seed is not 48 bytes"))?;
    let sk = <Kem as hpke::Kem>::PrivateKey::from_bytes(&st.secret_key)
        .map_err(|e| StageError::permanent(format!("state: secret key: {e:?}")))?;
    Ok((seed, sk))
}

/// The raw X25519 public key for a 32-byte secret.
pub fn public_key(secret: &[u8]) -> Result<Vec<u8>, StageError> {
    let sk = <Kem as hpke::Kem>::PrivateKey::from_bytes(secret)
        .map_err(|e| StageError::permanent(format!("secret key: {e:?}")))?;
    Ok(Kem::sk_to_pk(&sk).to_bytes().to_vec())
}

/// HPKE base-mode seal to a raw X25519 public key: `enc ‖ ciphertext`. The ephemeral key
/// comes from a ChaCha20 RNG seeded with `rng_seed`.
pub fn seal(
    recipient: &[u8],
    info: &[u8],
    plaintext: &[u8],
    rng_seed: [u8; 32],
) -> Result<Vec<u8>, StageError> {
    let pk = <Kem as hpke::Kem>::PublicKey::from_bytes(recipient)
        .map_err(|e| StageError::invalid_input(format!("public key: {e:?}")))?;
    let mut rng = rand_chacha::ChaCha20Rng::from_seed(rng_seed);
    let (enc, ct) = hpke::single_shot_seal::<Aead, Kdf, Kem, _>(
        &OpModeS::Base,
        &pk,
        info,
        plaintext,
        &[],
        &mut rng,
    )
    .map_err(|e| StageError::permanent(format!("hpke seal: {e:?}")))?;
    let mut out = enc.to_bytes().to_vec();
    out.extend(ct);
    Ok(out)
}

/// Opens `enc ‖ ciphertext` with a raw X25519 secret key.
pub fn open(
    sk: &<Kem as hpke::Kem>::PrivateKey,
    info: &[u8],
    sealed: &[u8],
) -> Result<Vec<u8>, StageError> {
    if sealed.len() < ENC_LEN {
        return Err(StageError::invalid_input("sealed message too short"));
    }
    let (enc, ct) = sealed.split_at(ENC_LEN);
    let enc = <Kem as hpke::Kem>::EncappedKey::from_bytes(enc)
        .map_err(|e| StageError::invalid_input(format!("hpke enc: {e:?}")))?;
    hpke::single_shot_open::<Aead, Kdf, Kem>(&OpModeR::Base, sk, &enc, info, ct, &[])
        .map_err(|e| StageError::invalid_input(format!("hpke open: {e:?}")))
}

fn non_aggregator(role: Role) -> Result<NonAggregatorRole, StageError> {
    match role {
        Role::FirstNonAggregator => Ok(NonAggregatorRole::First),
        Role::SecondNonAggregator => Ok(NonAggregatorRole::Second),
        r => Err(StageError::permanent(format!(
            "role {r:?} is not a non-aggregator"
        ))),
    }
}

fn ks(seed: &Seed) -> CtrKeystream {
    CtrKeystream::from_seed(seed)
}

fn random_seed() -> Seed {
    random::random_array::<SEED_LEN>()
}

fn hmss_header(header: &[u8], id: &str) -> Result<header::HonestMajorityShareShuffle, StageError> {
    let h = Header::decode(header)
        .map_err(|e| StageError::invalid_input(format!("requisition {id}: header: {e}")))?;
    match h.protocol {
        Some(header::Protocol::HonestMajorityShareShuffle(p)) => Ok(p),
        _ => Err(StageError::invalid_input(format!(
            "requisition {id}: header has no honest_majority_share_shuffle"
        ))),
    }
}

fn initialized(ctx: &ComputationContext) -> Result<StageOutcome, StageError> {
    let hmss = match ctx.role {
        Role::Aggregator => requisition_params::HonestMajorityShareShuffle::default(),
        _ => {
            let st: HmssState = state::decode(&ctx.state)?;
            requisition_params::HonestMajorityShareShuffle {
                tink_public_key: public_key(&st.secret_key)?,
                tink_public_key_signature: vec![],
                tink_public_key_signature_algorithm_oid: String::new(),
            }
        }
    };
    let params = RequisitionParams {
        protocol: Some(requisition_params::Protocol::HonestMajorityShareShuffle(
            hmss,
        )),
        ..Default::default()
    };
    let next = match ctx.role {
        Role::FirstNonAggregator => WAIT_TO_START,
        Role::SecondNonAggregator => WAIT_ON_SHUFFLE_INPUT_PHASE_ONE,
        _ => WAIT_ON_AGGREGATION_INPUT,
    };
    Ok(StageOutcome {
        next_stage: next,
        requisition_params: Some(params.encode_to_vec()),
        ..Default::default()
    })
}

fn setup_phase(
    ctx: &ComputationContext,
    inputs: &[StageInput],
) -> Result<StageOutcome, StageError> {
    let (seed, _) = load_state(ctx)?;
    let mut secret_seeds = Vec::new();
    for i in inputs {
        if let InputOrigin::Requisition((id, header)) = &i.origin {
            let h = hmss_header(header, id)?;
            secret_seeds.push(SecretSeed {
                requisition_id: id.clone(),
                secret_seed_ciphertext: h.secret_seed.map(|s| s.ciphertext).unwrap_or_default(),
                register_count: h.register_count,
                data_provider_certificate: h.data_provider_certificate,
            });
        }
    }
    let (to, description, next) = match ctx.role {
        Role::FirstNonAggregator => (
            ctx.peer(Role::SecondNonAggregator)?,
            SHUFFLE_PHASE_INPUT_ONE,
            WAIT_ON_SHUFFLE_INPUT_PHASE_TWO,
        ),
        Role::SecondNonAggregator => (
            ctx.peer(Role::FirstNonAggregator)?,
            SHUFFLE_PHASE_INPUT_TWO,
            SHUFFLE_PHASE,
        ),
        r => {
            return Err(StageError::permanent(format!(
                "role {r:?} has no SETUP_PHASE"
            )));
        }
    };
    let payload = ShufflePhaseInput {
        peer_random_seed: seed.to_vec(),
        secret_seeds,
    };
    Ok(StageOutcome {
        next_stage: next,
        sends: vec![Outgoing {
            to,
            description,
            payload: payload.encode_to_vec(),
        }],
        ..Default::default()
    })
}

fn check_count(count: &mut Option<usize>, n: usize, what: &str) -> Result<(), StageError> {
    match *count {
        None => {
            *count = Some(n);
            Ok(())
        }
        Some(m) if m == n => Ok(()),
        Some(m) => Err(StageError::invalid_input(format!(
            "{what}: register count {n} differs from {m}"
        ))),
    }
}

fn shuffle_phase(
    ctx: &ComputationContext,
    inputs: &[StageInput],
) -> Result<StageOutcome, StageError> {
    let p = params(ctx)?;
    let role = non_aggregator(ctx.role)?;
    let (own_seed, sk) = load_state(ctx)?;
    let mut shares: Vec<Vec<u32>> = Vec::new();
    let mut peer: Option<ShufflePhaseInput> = None;
    let mut count: Option<usize> = None;
    for i in inputs {
        match &i.origin {
            InputOrigin::Requisition((id, header)) => {
                let h = hmss_header(header, id)?;
                let v = decode_frequency_vector(&i.data).map_err(core_err)?;
                if usize::try_from(h.register_count).ok() != Some(v.len()) {
                    return Err(StageError::invalid_input(format!(
                        "requisition {id}: register_count {} but {} registers",
                        h.register_count,
                        v.len()
                    )));
                }
                check_count(&mut count, v.len(), id)?;
                shares.push(v);
            }
            InputOrigin::Peer((duchy, _)) => {
                if peer.is_some() {
                    return Err(StageError::invalid_input(
                        "more than one shuffle-phase input",
                    ));
                }
                peer = Some(ShufflePhaseInput::decode(i.data.as_slice()).map_err(|e| {
                    StageError::invalid_input(format!("shuffle input from {duchy}: {e}"))
                })?);
            }
        }
    }
    let peer =
        peer.ok_or_else(|| StageError::invalid_input("no shuffle-phase input from the peer"))?;
    let peer_seed: Seed = peer
        .peer_random_seed
        .as_slice()
        .try_into()
        .map_err(|_| StageError::invalid_input("peer random seed is not 48 bytes"))?;
    for s in &peer.secret_seeds {
        let n = usize::try_from(s.register_count).map_err(|_| {
            StageError::invalid_input(format!(
                "requisition {}: bad register count",
                s.requisition_id
            ))
        })?;
        check_count(&mut count, n, &s.requisition_id)?;
        let seed = open(&sk, SEED_INFO, &s.secret_seed_ciphertext)?;
        let seed: Seed = seed.as_slice().try_into().map_err(|_| {
            StageError::invalid_input(format!(
                "requisition {}: seed is not 48 bytes",
                s.requisition_id
            ))
        })?;
        shares.push(share_from_seed(&seed, n, p.q).map_err(core_err)?);
    }
    let m = count.ok_or_else(|| StageError::invalid_input("no requisition data"))?;
    let refs: Vec<&[u32]> = shares.iter().map(Vec::as_slice).collect();
    let x = sum_shares(&refs, m, p.q).map_err(core_err)?;
    let mut common_seed = own_seed;
    for (c, b) in common_seed.iter_mut().zip(peer_seed) {
        *c ^= b;
    }
    let mut common = Prng::new(ks(&common_seed));
    let mut local = Prng::new(ks(&random_seed()));
    let out = if p.reach_only {
        let noise = match p.noise {
            Some((r, _)) => {
                let mut nonzero = Prng::new(ks(&random_seed()));
                Some(ro_noise_registers(&mut local, &mut nonzero, &r, p.q).map_err(core_err)?)
            }
            None => None,
        };
        ro_shuffle_phase(x, &mut common, noise.as_deref(), role, p.q, ks).map_err(core_err)?
    } else {
        let noise = match p.noise {
            Some((r, Some(f))) => Some(
                rf_noise_registers(&mut local, &r, &f, p.max_combined_frequency(), p.q)
                    .map_err(core_err)?,
            ),
            _ => None,
        };
        rf_shuffle_phase(x, &mut common, noise.as_deref(), role, p.q, ks).map_err(core_err)?
    };
    let payload = AggregationPhaseInput {
        combined_frequency_vectors: out,
        register_count: m as i64,
    };
    Ok(StageOutcome {
        next_stage: COMPLETE,
        sends: vec![Outgoing {
            to: ctx.peer(Role::Aggregator)?,
            description: AGGREGATION_PHASE_INPUT,
            payload: payload.encode_to_vec(),
        }],
        ..Default::default()
    })
}

/// The result plaintext: `{"reach":n,"frequency":{"1":p1,...},"frequency_vector_size":m}`.
pub fn result_json(reach: i64, distribution: &BTreeMap<u32, f64>, register_count: i64) -> String {
    let freq = distribution
        .iter()
        .map(|(k, v)| format!("\"{k}\":{v:?}"))
        .collect::<Vec<_>>()
        .join(",");
    format!(
        "{{\"reach\":{reach},\"frequency\":{{{freq}}},\"frequency_vector_size\":{register_count}}}"
    )
}

fn aggregation_phase(
    ctx: &ComputationContext,
    inputs: &[StageInput],
) -> Result<StageOutcome, StageError> {
    if inputs.len() != 2 {
        return Err(StageError::invalid_input(format!(
            "expected 2 aggregation inputs, got {}",
            inputs.len()
        )));
    }
    let p = params(ctx)?;
    let a = AggregationPhaseInput::decode(inputs[0].data.as_slice())
        .map_err(|e| StageError::invalid_input(format!("aggregation input: {e}")))?;
    let b = AggregationPhaseInput::decode(inputs[1].data.as_slice())
        .map_err(|e| StageError::invalid_input(format!("aggregation input: {e}")))?;
    if a.register_count != b.register_count
        || a.combined_frequency_vectors.len() != b.combined_frequency_vectors.len()
        || a.register_count < 0
    {
        return Err(StageError::invalid_input("aggregation inputs do not match"));
    }
    let z = hmss_core::share::combine(
        &[&a.combined_frequency_vectors, &b.combined_frequency_vectors],
        p.q,
    )
    .map_err(core_err)?;
    let width = p.spec.vid_sampling_interval_width;
    let (reach, distribution) = if p.reach_only {
        let reach =
            ro_aggregate(&z, a.register_count as u64, width, p.baseline()).map_err(core_err)?;
        (reach, BTreeMap::new())
    } else {
        let r = rf_aggregate(
            &z,
            &AggregationParams {
                register_count: a.register_count as u64,
                max_combined_frequency: p.max_combined_frequency(),
                maximum_frequency: p.maximum_frequency,
                q: p.q,
                vid_sampling_width: width,
                noise: p.baseline(),
            },
        )
        .map_err(core_err)?;
        (r.reach, r.distribution)
    };
    let json = result_json(reach, &distribution, a.register_count);
    let key = p.spec.measurement_public_key.clone();
    let encrypted = seal(
        &key,
        RESULT_INFO,
        json.as_bytes(),
        random::random_array::<32>(),
    )?;
    Ok(StageOutcome {
        next_stage: COMPLETE,
        result: Some(ComputationResult {
            encrypted_result: encrypted,
            result_public_key: key,
        }),
        ..Default::default()
    })
}

impl Protocol for Hmss {
    fn describe() -> Description {
        Description {
            id: ID.into(),
            version: VERSION.into(),
            serves: SystemProtocol::HonestMajorityShareShuffle,
            stages: stages(),
        }
    }

    fn start(ctx: ComputationContext) -> Result<StartOutcome, StageError> {
        let p = params(&ctx)?;
        if p.spec.measurement_public_key.len() != 32 {
            return Err(StageError::invalid_input(
                "measurement_public_key must be a raw 32-byte X25519 key",
            ));
        }
        let state = match ctx.role {
            Role::Aggregator => Vec::new(),
            _ => state::encode(&HmssState {
                seed: random_seed().to_vec(),
                secret_key: random::random_bytes(32),
            }),
        };
        Ok(StartOutcome {
            initial_stage: INITIALIZED,
            state,
        })
    }

    fn execute(
        ctx: ComputationContext,
        stage: i32,
        inputs: Vec<StageInput>,
    ) -> Result<StageOutcome, StageError> {
        match stage {
            INITIALIZED => initialized(&ctx),
            SETUP_PHASE => setup_phase(&ctx, &inputs),
            SHUFFLE_PHASE => shuffle_phase(&ctx, &inputs),
            AGGREGATION_PHASE => aggregation_phase(&ctx, &inputs),
            other => Err(StageError::permanent(format!(
                "stage {other} is not a queued stage"
            ))),
        }
    }
}

#[cfg(test)]
mod tests;

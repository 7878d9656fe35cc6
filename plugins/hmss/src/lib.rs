//! `hmss`: the Honest Majority Share Shuffle protocol (halo-system §4.3, mpc-crypto §5–6) as a
//! duchy plugin. The math lives in `hmss-core`; this crate is the stage glue: parameters,
//! key exchange (HPKE, X25519), wire messages and the result.

use std::collections::BTreeMap;

use halo_plugin_sdk::identity;
use halo_plugin_sdk::proto::api::v2alpha::fulfill_requisition_request::{Header, header};
use halo_plugin_sdk::proto::halo::v1::measurement_spec::Type as MeasurementType;
use halo_plugin_sdk::proto::halo::v1::{MeasurementSpec, RandomSeed, SignedMessage};
use halo_plugin_sdk::proto::system::v1alpha::computation::mpc_protocol_config::{
    HonestMajorityShareShuffle as HmssConfig, NoiseMechanism as SysNoise, Protocol as MpcProtocol,
};
use halo_plugin_sdk::proto::system::v1alpha::computation_participant::{
    RequisitionParams, requisition_params,
};
use halo_plugin_sdk::{prelude::*, random, state};
use hmss_core::keystream::split_seed;
use hmss_core::noise::{
    DpParams, NoiseMechanism, NoiserOptions, blind_histogram_noiser, rf_noise_registers,
    ro_noise_registers,
};
use hmss_core::phase::{
    AggregationParams, NoiseBaseline, NonAggregatorRole, combine_and_count, rf_aggregate_counts,
    rf_shuffle_phase, ro_aggregate_counts, ro_shuffle_phase,
};
use hmss_core::share::add_share_from_keystream;
use hmss_core::wire::{
    decode_aggregation_input, decode_frequency_vector_as, encode_aggregation_input,
};
use hmss_core::{HmssError, Modulus, OffsetKeystream, Prng, Register, SEED_LEN, Seed};
use hpke::Deserializable;

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
use halo_plugin_result::identity_err;
pub use halo_plugin_result::{RESULT_INFO, open, public_key, result_json, seal};

type Kem = halo_plugin_result::Kem;

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

// Payload of description 3: `AggregationPhaseInput { repeated uint32
// combined_frequency_vectors = 1; int64 register_count = 2; }`, encoded and decoded by
// `hmss_core::wire` (millions of one-byte varints: a byte copy each way).

/// Plugin state of a non-aggregator (empty for the aggregator).
#[derive(Clone, PartialEq, prost::Message)]
pub struct HmssState {
    #[prost(bytes = "vec", tag = "1")]
    pub seed: Vec<u8>,
    #[prost(bytes = "vec", tag = "2")]
    pub secret_key: Vec<u8>,
}

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

fn non_aggregator(role: Role) -> Result<NonAggregatorRole, StageError> {
    match role {
        Role::FirstNonAggregator => Ok(NonAggregatorRole::First),
        Role::SecondNonAggregator => Ok(NonAggregatorRole::Second),
        r => Err(StageError::permanent(format!(
            "role {r:?} is not a non-aggregator"
        ))),
    }
}

/// Keystream bytes fetched per host call for small reads (the samplers and the shuffle read
/// 64 KiB or more at a time, which go to the host directly).
const KEYSTREAM_BLOCK: usize = 4 << 10;

/// Where a host keystream records a failure ([`hmss_core::Keystream::fill`] cannot fail).
type KeystreamError = std::rc::Rc<std::cell::RefCell<Option<String>>>;

/// The PRNG keystream `AES-256-CTR(key = seed[0..32], iv = seed[32..48])` (spec §6.2, §6.3),
/// computed by the host's native `crypto` import (AES-NI) and read by offset. A host failure
/// is recorded in `error` (and the stream yields zeros); callers check it with [`checked`].
fn keystream(
    seed: &Seed,
    error: &KeystreamError,
) -> OffsetKeystream<impl FnMut(u64, usize) -> Result<Vec<u8>, String> + use<>, String> {
    let (key, iv) = split_seed(seed);
    let error = error.clone();
    OffsetKeystream::new(
        move |offset, len: usize| {
            let bytes =
                halo_plugin_sdk::crypto::aes256_ctr_keystream(&key, &iv, offset, len as u64)
                    .and_then(|b| {
                        if b.len() == len {
                            Ok(b)
                        } else {
                            Err(format!(
                                "the host returned {} keystream bytes, not {len}",
                                b.len()
                            ))
                        }
                    });
            if let Err(e) = &bytes {
                error.borrow_mut().get_or_insert_with(|| e.clone());
            }
            bytes
        },
        KEYSTREAM_BLOCK,
    )
}

/// `Ok(value)` unless a keystream recorded a failure.
fn checked<T>(value: T, error: &KeystreamError) -> Result<T, StageError> {
    match error.borrow_mut().take() {
        Some(e) => Err(StageError::permanent(format!("host keystream: {e}"))),
        None => Ok(value),
    }
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
            let ciphertext = h
                .secret_seed
                .map(|s| s.ciphertext)
                .filter(|c| !c.is_empty())
                .ok_or_else(|| {
                    StageError::invalid_input(format!(
                        "requisition {id}: the data provider sent no secret seed"
                    ))
                })?;
            if h.data_provider_certificate.is_empty() {
                return Err(StageError::invalid_input(format!(
                    "requisition {id}: the data provider named no certificate"
                )));
            }
            secret_seeds.push(SecretSeed {
                requisition_id: id.clone(),
                secret_seed_ciphertext: ciphertext,
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

fn shuffle_phase(
    ctx: &ComputationContext,
    inputs: &[StageInput],
) -> Result<StageOutcome, StageError> {
    let p = params(ctx)?;
    // q ≤ 128 (production: 127): one byte per register in memory and on the wire.
    let payload = if u8::serves(p.q) {
        shuffle_phase_with::<u8>(ctx, &p, inputs)?
    } else {
        shuffle_phase_with::<u32>(ctx, &p, inputs)?
    };
    Ok(StageOutcome {
        next_stage: COMPLETE,
        sends: vec![Outgoing {
            to: ctx.peer(Role::Aggregator)?,
            description: AGGREGATION_PHASE_INPUT,
            payload,
        }],
        ..Default::default()
    })
}

/// The shuffle phase (spec §6.4) over `R` registers; returns the serialized
/// `AggregationPhaseInput`.
fn shuffle_phase_with<R: Register>(
    ctx: &ComputationContext,
    p: &Params,
    inputs: &[StageInput],
) -> Result<Vec<u8>, StageError> {
    let role = non_aggregator(ctx.role)?;
    let (own_seed, sk) = load_state(ctx)?;
    let m = Modulus::new(p.q).map_err(core_err)?;
    // X = Σ shares (step 2): data shares are added as they are decoded, seed shares are
    // expanded by the host's keystream straight into the sum.
    let mut x: Option<Vec<R>> = None;
    let mut peer: Option<ShufflePhaseInput> = None;
    for i in inputs {
        match &i.origin {
            InputOrigin::Requisition((id, header)) => {
                let h = hmss_header(header, id)?;
                let v: Vec<R> = decode_frequency_vector_as(&i.data)
                    .map_err(|e| StageError::invalid_input(format!("requisition {id}: {e}")))?;
                if usize::try_from(h.register_count).ok() != Some(v.len()) {
                    return Err(StageError::invalid_input(format!(
                        "requisition {id}: register_count {} but {} registers",
                        h.register_count,
                        v.len()
                    )));
                }
                m.check_below(&v)
                    .map_err(|e| StageError::invalid_input(format!("requisition {id}: {e}")))?;
                match &mut x {
                    None => x = Some(v),
                    Some(acc) => {
                        check_len(acc.len(), v.len(), id)?;
                        R::add_assign_slice(acc, &v, &m);
                    }
                }
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
    let error = KeystreamError::default();
    for s in &peer.secret_seeds {
        let n = usize::try_from(s.register_count).map_err(|_| {
            StageError::invalid_input(format!(
                "requisition {}: bad register count",
                s.requisition_id
            ))
        })?;
        let owner = requisition_owner(ctx, &s.requisition_id)?;
        let seed = verified_seed(s, &owner, &open(&sk, SEED_INFO, &s.secret_seed_ciphertext)?)?;
        let acc = x.get_or_insert_with(|| vec![R::default(); n]);
        check_len(acc.len(), n, &s.requisition_id)?;
        add_share_from_keystream(acc, keystream(&seed, &error), p.q).map_err(core_err)?;
    }
    let x = checked(x, &error)?.ok_or_else(|| StageError::invalid_input("no requisition data"))?;
    let register_count = x.len() as i64;
    let mut common_seed = own_seed;
    for (c, b) in common_seed.iter_mut().zip(peer_seed) {
        *c ^= b;
    }
    let mut common = Prng::new(keystream(&common_seed, &error));
    // Noise draws are local (spec §9 item 11): a PRNG seeded by the host's CSPRNG.
    let mut local = Prng::new(keystream(&random_seed(), &error));
    let shuffle_ks = |seed: &Seed| keystream(seed, &error);
    let out = if p.reach_only {
        let noise = match p.noise {
            Some((r, _)) => {
                let mut nonzero = Prng::new(keystream(&random_seed(), &error));
                Some(ro_noise_registers(&mut local, &mut nonzero, &r, p.q).map_err(core_err)?)
            }
            None => None,
        };
        ro_shuffle_phase(x, &mut common, noise.as_deref(), role, p.q, shuffle_ks)
            .map_err(core_err)?
    } else {
        let noise = match p.noise {
            Some((r, Some(f))) => Some(
                rf_noise_registers(&mut local, &r, &f, p.max_combined_frequency(), p.q)
                    .map_err(core_err)?,
            ),
            _ => None,
        };
        rf_shuffle_phase(x, &mut common, noise.as_deref(), role, p.q, shuffle_ks)
            .map_err(core_err)?
    };
    let out = checked(out, &error)?;
    Ok(encode_aggregation_input(&out, register_count))
}

/// The data provider (`dataProviders/{dp}`) the Kingdom recorded for requisition `id` of this
/// computation.
fn requisition_owner(ctx: &ComputationContext, id: &str) -> Result<String, StageError> {
    let name = format!("computations/{}/requisitions/{id}", ctx.global_id);
    ctx.computation()?
        .requisitions
        .into_iter()
        .find(|r| r.name == name)
        .map(|r| r.data_provider)
        .filter(|dp| !dp.is_empty())
        .ok_or_else(|| {
            StageError::invalid_input(format!(
                "requisition {id} is not a requisition of this computation"
            ))
        })
}

/// The share seed of a peer-relayed requisition (halo-system §8.2): the opened plaintext is a
/// `SignedMessage` whose message is a `RandomSeed`, signed with the certificate the data
/// provider named. The certificate must be the requisition's own data provider's
/// (`{owner}/certificates/...`: the host's `verify` checks it chains to that owner's trusted
/// root, so a seed signed by any other principal is refused, whoever relayed it).
fn verified_seed(s: &SecretSeed, owner: &str, plaintext: &[u8]) -> Result<Seed, StageError> {
    let id = &s.requisition_id;
    let signed = SignedMessage::decode(plaintext).map_err(|e| {
        StageError::invalid_input(format!(
            "requisition {id}: the sealed seed is not a SignedMessage: {e}"
        ))
    })?;
    let owns = owner.starts_with("dataProviders/")
        && s.data_provider_certificate
            .strip_prefix(owner)
            .is_some_and(|rest| rest.starts_with("/certificates/"));
    if !owns {
        return Err(StageError::invalid_input(format!(
            "requisition {id}: data_provider_certificate {:?} is not a certificate of the \
             requisition's data provider {owner}",
            s.data_provider_certificate
        )));
    }
    identity::verify(
        &s.data_provider_certificate,
        &signed.message,
        &signed.signature,
        &signed.signature_algorithm_oid,
    )
    .map_err(identity_err(format!(
        "requisition {id}: the seed's signature"
    )))?;
    let seed = RandomSeed::decode(signed.message.as_slice())
        .map_err(|e| StageError::invalid_input(format!("requisition {id}: RandomSeed: {e}")))?;
    seed.data.as_slice().try_into().map_err(|_| {
        StageError::invalid_input(format!(
            "requisition {id}: the seed is {} bytes, not 48",
            seed.data.len()
        ))
    })
}

fn check_len(have: usize, got: usize, what: &str) -> Result<(), StageError> {
    if have == got {
        Ok(())
    } else {
        Err(StageError::invalid_input(format!(
            "{what}: register count {got} differs from {have}"
        )))
    }
}

fn aggregation_phase(
    ctx: &ComputationContext,
    inputs: &[StageInput],
) -> Result<StageOutcome, StageError> {
    let p = params(ctx)?;
    let (reach, distribution, register_count) = if u8::serves(p.q) {
        aggregate_with::<u8>(&p, inputs)?
    } else {
        aggregate_with::<u32>(&p, inputs)?
    };
    let json = result_json(reach, &distribution, Some(register_count));
    Ok(StageOutcome {
        next_stage: COMPLETE,
        result: Some(halo_plugin_result::sealed_result(
            json,
            &p.spec.measurement_public_key,
        )?),
        ..Default::default()
    })
}

/// The aggregation phase (spec §6.5) over `R` registers: `(reach, distribution,
/// register_count)`.
fn aggregate_with<R: Register>(
    p: &Params,
    inputs: &[StageInput],
) -> Result<(i64, BTreeMap<u32, f64>, i64), StageError> {
    let [a, b] = inputs else {
        return Err(StageError::invalid_input(format!(
            "expected 2 aggregation inputs, got {}",
            inputs.len()
        )));
    };
    let decode = |i: &StageInput| -> Result<(Vec<R>, i64), StageError> {
        decode_aggregation_input(&i.data)
            .map_err(|e| StageError::invalid_input(format!("aggregation input: {e}")))
    };
    let ((za, ma), (zb, mb)) = (decode(a)?, decode(b)?);
    if ma != mb || za.len() != zb.len() || ma < 0 || ma as u64 > za.len() as u64 {
        return Err(StageError::invalid_input(format!(
            "aggregation inputs do not match: register counts {ma} and {mb}, lengths {} and {}",
            za.len(),
            zb.len()
        )));
    }
    let width = p.spec.vid_sampling_interval_width;
    if p.reach_only {
        let counts = combine_and_count(&za, &zb, p.q, 1).map_err(core_err)?;
        let reach =
            ro_aggregate_counts(&counts, ma as u64, width, p.baseline()).map_err(core_err)?;
        Ok((reach, BTreeMap::new(), ma))
    } else {
        let mcf = p.max_combined_frequency();
        let counts = combine_and_count(&za, &zb, p.q, mcf as usize + 1).map_err(core_err)?;
        let r = rf_aggregate_counts(
            &counts,
            &AggregationParams {
                register_count: ma as u64,
                max_combined_frequency: mcf,
                maximum_frequency: p.maximum_frequency,
                q: p.q,
                vid_sampling_width: width,
                noise: p.baseline(),
            },
        )
        .map_err(core_err)?;
        Ok((r.reach, r.distribution, ma))
    }
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

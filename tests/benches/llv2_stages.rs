//! Liquid Legions v2 through the real component boundary: every queued stage of the `llv2`
//! (reach and frequency) and `ro-llv2` (reach-only) plugins, run by the host's wasm runtime on
//! generated inputs, once with one crypto thread and once with two. Beside the measured times,
//! in the same run, the EC-operation model of spec mpc-crypto §3.7 (scalar multiplications per
//! stage, counted for the generated inputs) priced with this machine's measured cost of one
//! scalar multiplication (variable and fixed base, `halo-p256` natively), and the reference
//! C++ implementation's figures on this kind of machine.
//!
//! `cargo bench -p halo-tests --bench llv2_stages` (R = 10 000 and 100 000: minutes);
//! `-- --quick` (R = 2 000 only), `-- --registers 10000,50000` (any list).
//!
//! Inputs: 3 duchies (`worker1`, `worker2`, `aggregator`, ring in that order), ElGamal keys
//! drawn here, the plugin state built directly (as confirmation would leave it), the system
//! `Computation` with sketch decay 12 and size 100 000, maximum frequency 10, noise off. `R`
//! encrypted registers in all, split over 3 data providers (one requisition per duchy): 1% of
//! the indexes appear in two providers' sketches (same key: a group of two for same-key
//! aggregation), 0.5% of the single ones are destroyed, counts 1..10. The chain's result is
//! opened (HPKE) and its reach and frequency distribution compared with the plaintext
//! estimator on the union sketch. The identity import signs with a placeholder (the benchmark
//! checks no signature; one ECDSA signature per chain is negligible).
//!
//! The goal: 2× faster than the reference at the same parallelism.

#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use halo_engine::{EngineConfig, LoadedPlugin, Runtime};
use halo_p256::backend::{Crypto, Pure, RandomSource};
use halo_p256::mul::FixedTable;
use halo_p256::ops;
use halo_p256::point::Affine;
use halo_proto::halo::v1::measurement_spec::Type as SpecType;
use halo_proto::halo::v1::{ElGamalPublicKey, MeasurementSpec, SignedMessage};
use halo_proto::system::v1alpha::computation::MpcProtocolConfig;
use halo_proto::system::v1alpha::computation::mpc_protocol_config::liquid_legions_v2::LiquidLegionsSketchParams;
use halo_proto::system::v1alpha::computation::mpc_protocol_config::{
    LiquidLegionsV2, NoiseMechanism, Protocol as MpcProtocol,
};
use halo_proto::system::v1alpha::{Computation, Requisition};
use halo_protocol::{
    ComputationContext, ComputationResult, IdentityFailure, InputOrigin, Participant, Protocol,
    Role, StageIdentity, StageInput, StageSignature, SystemProtocol,
};
use hpke::{Deserializable, Kem as _, Serializable};
use llv2_core::edp::encrypt_sketch;
use llv2_core::estimator::{estimate_reach, frequency_distribution};
use llv2_core::sketch::{PlainRegister, union};
use prost::Message;
use rayon::prelude::*;

const DUCHIES: [&str; 3] = ["worker1", "worker2", "aggregator"];
const AGGREGATOR: usize = 2;
const DECAY_RATE: f64 = 12.0;
const SKETCH_SIZE: u64 = 100_000;
const MAX_FREQUENCY: u32 = 10;
const CURVE_ID: i32 = 415;
const RESULT_INFO: &[u8] = b"halo-hmss-result";

// Stage numbers (the system enums; halo-system §4.1, §4.2).
const SETUP: i32 = 6;
const EXEC_ONE: i32 = 8;
const EXEC_TWO: i32 = 10;
const EXEC_THREE: i32 = 12;

type Kem = hpke::kem::X25519HkdfSha256;

/// Random bytes for the native backend (the thread's CSPRNG).
#[derive(Default)]
struct ThreadRandom;

impl RandomSource for ThreadRandom {
    fn fill(&mut self, buf: &mut [u8]) {
        rand::RngCore::fill_bytes(&mut rand::rng(), buf);
    }
}

type C = Pure<ThreadRandom>;

/// The plugin state (`llv2_common::Llv2State`): same tags.
#[derive(Clone, PartialEq, prost::Message)]
struct Llv2State {
    #[prost(bytes = "vec", tag = "1")]
    secret_key: Vec<u8>,
    #[prost(bytes = "vec", tag = "2")]
    public_key: Vec<u8>,
    #[prost(string, repeated, tag = "3")]
    ring: Vec<String>,
    #[prost(bytes = "vec", tag = "4")]
    combined_key: Vec<u8>,
    #[prost(bytes = "vec", tag = "5")]
    partial_key: Vec<u8>,
    #[prost(int64, optional, tag = "6")]
    reach: Option<i64>,
}

/// Signs with a placeholder: nothing in the benchmark checks it.
#[derive(Debug)]
struct BenchIdentity {
    duchy: String,
}

impl StageIdentity for BenchIdentity {
    fn sign(&self, message: &[u8]) -> Result<StageSignature, IdentityFailure> {
        use sha2::Digest;
        Ok(StageSignature {
            certificate: format!("duchies/{}/certificates/bench", self.duchy),
            signature: sha2::Sha256::digest(message).to_vec(),
            algorithm_oid: "1.2.840.10045.4.3.2".into(),
        })
    }

    fn verify(&self, _: &str, _: &[u8], _: &[u8], _: &str) -> Result<(), IdentityFailure> {
        Err(IdentityFailure::Invalid(
            "the benchmark verifies no signature".into(),
        ))
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    ReachAndFrequency,
    ReachOnly,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::ReachAndFrequency => "LLv2 reach & frequency",
            Kind::ReachOnly => "reach-only LLv2",
        }
    }

    fn system(self) -> SystemProtocol {
        match self {
            Kind::ReachAndFrequency => SystemProtocol::LiquidLegionsV2,
            Kind::ReachOnly => SystemProtocol::ReachOnlyLiquidLegionsV2,
        }
    }

    fn steps(self) -> Vec<(usize, i32)> {
        let stages: &[i32] = match self {
            Kind::ReachAndFrequency => &[SETUP, EXEC_ONE, EXEC_TWO, EXEC_THREE],
            Kind::ReachOnly => &[SETUP, EXEC_ONE],
        };
        stages
            .iter()
            .flat_map(|&s| (0..3).map(move |d| (d, s)))
            .collect()
    }

    fn stage_name(self, stage: i32) -> &'static str {
        match (self, stage) {
            (_, SETUP) => "setup",
            (Kind::ReachOnly, EXEC_ONE) => "execution",
            (_, EXEC_ONE) => "execution one",
            (_, EXEC_TWO) => "execution two",
            (_, EXEC_THREE) => "execution three",
            _ => "?",
        }
    }

    /// The reference's chain seconds at parallelism 1 and 2, for `r` registers: measured at
    /// 10 000 and 100 000, otherwise scaled linearly from the nearer one (`false`).
    fn reference_chain(self, r: usize) -> (f64, f64, bool) {
        let (ten, hundred) = match self {
            Kind::ReachAndFrequency => ((77.3, 54.3), (791.0, 523.0)),
            Kind::ReachOnly => ((5.9, 3.3), (60.0, 28.5)),
        };
        match r {
            10_000 => (ten.0, ten.1, true),
            100_000 => (hundred.0, hundred.1, true),
            _ => {
                let (base, at) = if r < 31_623 {
                    (ten, 10_000.0)
                } else {
                    (hundred, 100_000.0)
                };
                let f = r as f64 / at;
                (base.0 * f, base.1 * f, false)
            }
        }
    }

    /// The reference's per-stage throughput at parallelism 1 (units per second, a range).
    fn reference_stage(self, stage: i32) -> Option<(f64, f64)> {
        match (self, stage) {
            (Kind::ReachAndFrequency, EXEC_ONE) => Some((1_350.0, 1_560.0)),
            (Kind::ReachAndFrequency, EXEC_TWO) => Some((960.0, 960.0)),
            (Kind::ReachAndFrequency, EXEC_THREE) => Some((11_400.0, 11_400.0)),
            _ => None,
        }
    }
}

// ---- inputs ---------------------------------------------------------------------------------

/// The generated sketches and what the §3.7 model needs to know about them.
struct Dataset {
    registers: usize,
    size: u64,
    /// Per data provider (= per duchy), sorted by index.
    sketches: Vec<Vec<PlainRegister>>,
    /// Distinct indexes (groups at the aggregator's execution phase one).
    groups: usize,
    /// Groups of two registers.
    pairs: usize,
    /// Destroyed registers.
    destroyed: usize,
    /// Groups that make an SKA column (one key, not destroyed).
    valid: usize,
    /// Zero tests of the aggregator's phase three: Σ over columns of min(count, MF − 1).
    phase_three_tests: usize,
}

fn dataset(r: usize) -> Dataset {
    let pairs = r / 100;
    let groups = r - pairs;
    let size = SKETCH_SIZE.max(groups as u64 + 1);
    let mut sketches = vec![Vec::new(); 3];
    let (mut destroyed, mut valid, mut tests) = (0, 0, 0);
    let cap = u64::from(MAX_FREQUENCY) + 1;
    for i in 0..groups {
        let index = i as u64;
        let provider = i % 3;
        let pair = i < pairs;
        let is_destroyed = !pair && i % 200 == 199;
        let key = if is_destroyed {
            0
        } else {
            1 + (i as i64).wrapping_mul(2_654_435_761).rem_euclid(9_999_991)
        };
        let first = 1 + (index * 7 + 3) % u64::from(MAX_FREQUENCY);
        sketches[provider].push(PlainRegister {
            index,
            key,
            count: first,
        });
        let mut count = first.min(cap);
        if pair {
            let second = 1 + (index * 3 + 1) % u64::from(MAX_FREQUENCY);
            sketches[(provider + 1) % 3].push(PlainRegister {
                index,
                key,
                count: second,
            });
            count += second.min(cap);
        }
        if is_destroyed {
            destroyed += 1;
        } else {
            valid += 1;
            tests += count.min(u64::from(MAX_FREQUENCY) - 1) as usize;
        }
    }
    for s in &mut sketches {
        s.sort_unstable();
    }
    Dataset {
        registers: r,
        size,
        sketches,
        groups,
        pairs,
        destroyed,
        valid,
        phase_three_tests: tests,
    }
}

struct Keys {
    secrets: Vec<Vec<u8>>,
    publics: Vec<Vec<u8>>,
    combined: Vec<u8>,
    partial: Vec<Vec<u8>>,
}

fn keys(c: &C) -> Keys {
    let secrets: Vec<Vec<u8>> = (0..3).map(|_| c.random_scalars(1).unwrap()).collect();
    let publics: Vec<Vec<u8>> = secrets
        .iter()
        .map(|s| c.fixed_mul(&c.generator(), s).unwrap())
        .collect();
    let sum = |from: usize| {
        publics[from + 1..]
            .iter()
            .fold(publics[from].clone(), |acc, y| c.add(&acc, y).unwrap())
    };
    let combined = sum(0);
    let partial = (0..3)
        .map(|j| {
            if j == AGGREGATOR {
                combined.clone()
            } else {
                sum(j + 1)
            }
        })
        .collect();
    Keys {
        secrets,
        publics,
        combined,
        partial,
    }
}

/// Every provider's sketch encrypted under `Y` (198-byte registers, or 66 for reach only).
fn encrypt(c: &C, y: &<C as Crypto>::FixedBase, d: &Dataset, reach_only: bool) -> Vec<Vec<u8>> {
    d.sketches
        .iter()
        .map(|s| {
            s.par_chunks(1024)
                .map(|chunk| encrypt_sketch(c, y, chunk, MAX_FREQUENCY, reach_only).unwrap())
                .collect::<Vec<_>>()
                .concat()
        })
        .collect()
}

/// The system `Computation` of `global_id`: requisition `dp{p}` is fulfilled at duchy `p`.
fn computation(kind: Kind, global_id: &str, size: u64, consumer_key: &[u8]) -> Vec<u8> {
    let (spec_type, maximum_frequency) = match kind {
        Kind::ReachAndFrequency => (SpecType::ReachAndFrequency, MAX_FREQUENCY as i32),
        Kind::ReachOnly => (SpecType::Reach, 0),
    };
    let spec = MeasurementSpec {
        measurement_public_key: consumer_key.to_vec(),
        r#type: spec_type as i32,
        maximum_frequency,
        vid_sampling_interval_start: 0.0,
        vid_sampling_interval_width: 1.0,
        ..Default::default()
    };
    let config = LiquidLegionsV2 {
        sketch_params: Some(LiquidLegionsSketchParams {
            decay_rate: DECAY_RATE,
            max_size: size as i64,
        }),
        mpc_noise: None,
        elliptic_curve_id: CURVE_ID,
        noise_mechanism: NoiseMechanism::None as i32,
        ..Default::default()
    };
    let protocol = match kind {
        Kind::ReachAndFrequency => MpcProtocol::LiquidLegionsV2(config),
        Kind::ReachOnly => MpcProtocol::ReachOnlyLiquidLegionsV2(config),
    };
    Computation {
        name: format!("computations/{global_id}"),
        measurement_spec: spec.encode_to_vec(),
        requisitions: (0..3)
            .map(|p| Requisition {
                name: format!("computations/{global_id}/requisitions/dp{p}"),
                fulfilling_computation_participant: format!(
                    "computations/{global_id}/participants/{}",
                    DUCHIES[p]
                ),
                ..Default::default()
            })
            .collect(),
        mpc_protocol_config: Some(MpcProtocolConfig {
            protocol: Some(protocol),
        }),
        ..Default::default()
    }
    .encode_to_vec()
}

fn state(k: &Keys, duchy: usize) -> Vec<u8> {
    Llv2State {
        secret_key: k.secrets[duchy].clone(),
        public_key: ElGamalPublicKey {
            generator: Affine::generator().encode().to_vec(),
            element: k.publics[duchy].clone(),
        }
        .encode_to_vec(),
        ring: DUCHIES.iter().map(|d| d.to_string()).collect(),
        combined_key: k.combined.clone(),
        partial_key: k.partial[duchy].clone(),
        reach: None,
    }
    .encode_to_vec()
}

// ---- the chain ------------------------------------------------------------------------------

struct Step {
    duchy: usize,
    stage: i32,
    elapsed: Duration,
    /// Process CPU time (user + system, all threads) during the call.
    cpu: f64,
    /// Bytes of the peer inputs (not the requisitions).
    peer_bytes: usize,
}

struct ChainRun {
    steps: Vec<Step>,
    result: ComputationResult,
    /// The aggregator's reach estimate kept in its state after execution phase two (LLv2).
    state_reach: Option<i64>,
}

struct Mail {
    to: String,
    from: String,
    description: i32,
    payload: Vec<u8>,
}

fn run_chain(
    plugin: &LoadedPlugin,
    kind: Kind,
    id: &str,
    computation: &[u8],
    k: &Keys,
    requisitions: &[Vec<u8>],
) -> Result<ChainRun, String> {
    let participants: Vec<Participant> = DUCHIES
        .iter()
        .enumerate()
        .map(|(j, d)| Participant {
            duchy_id: d.to_string(),
            role: if j == AGGREGATOR {
                Role::Aggregator
            } else {
                Role::NonAggregator
            },
            requisition_params: Vec::new(),
        })
        .collect();
    let mut ctxs: Vec<ComputationContext> = (0..3)
        .map(|j| ComputationContext {
            global_id: id.into(),
            duchy_id: DUCHIES[j].into(),
            role: participants[j].role,
            protocol: kind.system(),
            computation: computation.to_vec(),
            participants: participants.clone(),
            state: state(k, j),
            attempt: 1,
            identity: Some(Arc::new(BenchIdentity {
                duchy: DUCHIES[j].into(),
            }) as Arc<dyn StageIdentity>),
        })
        .collect();
    let mut mail: Vec<Mail> = Vec::new();
    let mut steps = Vec::new();
    let mut result = None;
    let mut state_reach = None;
    let all = kind.steps();
    for (n, &(j, stage)) in all.iter().enumerate() {
        let what = format!("{} at {}", kind.stage_name(stage), DUCHIES[j]);
        let mut inputs = Vec::new();
        if stage == SETUP {
            inputs.push(StageInput {
                origin: InputOrigin::Requisition {
                    requisition_id: format!("dp{j}"),
                    header: Vec::new(),
                },
                data: requisitions[j].clone(),
            });
        }
        let (mine, rest): (Vec<Mail>, Vec<Mail>) =
            mail.into_iter().partition(|m| m.to == DUCHIES[j]);
        mail = rest;
        inputs.extend(mine.into_iter().map(|m| StageInput {
            origin: InputOrigin::Peer {
                duchy_id: m.from,
                description: m.description,
            },
            data: m.payload,
        }));
        let peer_bytes = inputs
            .iter()
            .filter(|i| matches!(i.origin, InputOrigin::Peer { .. }))
            .map(|i| i.data.len())
            .sum();
        let cpu = cpu_seconds();
        let started = Instant::now();
        let out = plugin.execute(&ctxs[j], stage, inputs);
        let elapsed = started.elapsed();
        let cpu = cpu_seconds() - cpu;
        let out = out.map_err(|e| format!("{what}: {e}"))?;
        eprintln!("    {what}: {:.3} s", elapsed.as_secs_f64());
        steps.push(Step {
            duchy: j,
            stage,
            elapsed,
            cpu,
            peer_bytes,
        });
        if let Some(s) = out.state {
            if j == AGGREGATOR && stage == EXEC_TWO {
                state_reach = Llv2State::decode(s.as_slice())
                    .map_err(|e| format!("{what}: state: {e}"))?
                    .reach;
            }
            ctxs[j].state = s;
        }
        for s in out.sends {
            if !DUCHIES.contains(&s.to.as_str()) {
                return Err(format!("{what}: sent to unknown duchy {:?}", s.to));
            }
            mail.push(Mail {
                to: s.to,
                from: DUCHIES[j].into(),
                description: s.description,
                payload: s.payload,
            });
        }
        if let Some(r) = out.result {
            if n + 1 != all.len() {
                return Err(format!("{what}: a result before the last stage"));
            }
            result = Some(r);
        }
    }
    plugin.computation_ended(id);
    if let Some(m) = mail.first() {
        return Err(format!(
            "{} undelivered payload(s) left, e.g. {} → {} ({})",
            mail.len(),
            m.from,
            m.to,
            m.description
        ));
    }
    let result = result.ok_or("the chain ended without a result")?;
    Ok(ChainRun {
        steps,
        result,
        state_reach,
    })
}

/// Opens the sealed result and compares it with the plaintext estimator on the union sketch.
fn check(
    kind: Kind,
    d: &Dataset,
    run: &ChainRun,
    consumer: &<Kem as hpke::Kem>::PrivateKey,
) -> Result<String, String> {
    let sealed = &run.result.encrypted_result;
    if sealed.len() < 32 {
        return Err("sealed result too short".into());
    }
    let (enc, ct) = sealed.split_at(32);
    let enc = <Kem as hpke::Kem>::EncappedKey::from_bytes(enc).map_err(|e| format!("{e:?}"))?;
    let plain = hpke::single_shot_open::<hpke::aead::AesGcm256, hpke::kdf::HkdfSha256, Kem>(
        &hpke::OpModeR::Base,
        consumer,
        &enc,
        RESULT_INFO,
        ct,
        &[],
    )
    .map_err(|e| format!("opening the result: {e:?}"))?;
    let signed = SignedMessage::decode(plain.as_slice()).map_err(|e| e.to_string())?;
    let json: serde_json::Value =
        serde_json::from_slice(&signed.message).map_err(|e| e.to_string())?;
    let reach = json["reach"].as_i64().ok_or("no reach in the result")?;
    let sketches: Vec<&[PlainRegister]> = d.sketches.iter().map(|s| s.as_slice()).collect();
    let all = union(&sketches);
    let expected = estimate_reach(DECAY_RATE, d.size, all.len() as i64, 1.0)?;
    if reach != expected {
        return Err(format!("reach {reach}, expected {expected}"));
    }
    if let Some(r) = run.state_reach
        && r != expected
    {
        return Err(format!("reach in the state {r}, expected {expected}"));
    }
    if kind == Kind::ReachOnly {
        return Ok(format!("reach {reach} = plaintext estimate"));
    }
    let expected = frequency_distribution(&all, MAX_FREQUENCY);
    let got: BTreeMap<u32, f64> = json["frequency"]
        .as_object()
        .ok_or("no frequency in the result")?
        .iter()
        .map(|(k, v)| (k.parse().unwrap_or(0), v.as_f64().unwrap_or(f64::NAN)))
        .collect();
    let same = got.len() == expected.len()
        && got
            .iter()
            .zip(&expected)
            .all(|(a, b)| a.0 == b.0 && (a.1 - b.1).abs() < 1e-12);
    if !same {
        return Err(format!("frequency {got:?}, expected {expected:?}"));
    }
    Ok(format!(
        "reach {reach} and the frequency distribution = plaintext ({} buckets)",
        got.len()
    ))
}

// ---- the §3.7 model --------------------------------------------------------------------------

/// Scalar multiplications of one stage: with one scalar over the batch (decryption, blinding
/// keys), with a fresh scalar each (destructors), and fixed-base (encryption and
/// re-randomization: `r·G`, `r·Y`).
#[derive(Clone, Copy, Default)]
struct Sm {
    shared: f64,
    each: f64,
    fixed: f64,
    /// Elements of the same-key matrix (`scale_random_shifted`, two SM each in §3.7).
    matrix: f64,
    /// The §3.7 count (the reference algorithm's), where it differs from ours.
    reference: f64,
}

impl Sm {
    /// The §3.7 count.
    fn total(&self) -> f64 {
        self.reference
    }
    /// Reference algorithm: every SM variable-base.
    fn all_variable(&self, c: &Costs) -> f64 {
        self.total() * c.each
    }
    /// As the host computes them: batched one-scalar, per-element scalars, fixed base.
    fn split(&self, c: &Costs) -> f64 {
        self.shared * c.shared + self.each * c.each + self.fixed * c.fixed + self.matrix * c.matrix
    }
    fn add(&mut self, o: Sm) {
        self.shared += o.shared;
        self.each += o.each;
        self.fixed += o.fixed;
        self.matrix += o.matrix;
        self.reference += o.reference;
    }
}

/// The work unit of a stage and its scalar multiplications: as this implementation makes them
/// (one-scalar, per-element, fixed-base) and as §3.7 counts them.
fn model(kind: Kind, d: &Dataset, duchy: usize, stage: i32) -> (usize, &'static str, Sm) {
    let r = d.registers as f64;
    let g = d.groups as f64;
    let v = d.valid as f64;
    let rows = f64::from(MAX_FREQUENCY - 1);
    let agg = duchy == AGGREGATOR;
    let own = d.sketches[duchy].len();
    let sm = |shared: f64, each: f64, fixed: f64| Sm {
        shared,
        each,
        fixed,
        matrix: 0.0,
        reference: shared + each + fixed,
    };
    match (kind, stage, agg) {
        // MF > 1 and noise off: no SM (sort only).
        (Kind::ReachAndFrequency, SETUP, false) => (own, "registers", Sm::default()),
        (Kind::ReachAndFrequency, SETUP, true) => (d.registers, "registers", Sm::default()),
        // Blind 3 + 2 × ReRandomize 2.
        (Kind::ReachAndFrequency, EXEC_ONE, false) => {
            (d.registers, "registers", sm(3.0 * r, 0.0, 4.0 * r))
        }
        // DecryptLocal 1 / register; per group Enc(0) 2 + fb, fc, r·fa destructors 6 +
        // 2 per member beyond the first.
        // Ours: a single-register group re-randomizes its count (2 fixed-base) instead of
        // adding r·fa (2 variable-base); a larger group does both.
        (Kind::ReachAndFrequency, EXEC_ONE, true) => {
            let pairs = d.pairs as f64;
            let ours = sm(r, 4.0 * g + 4.0 * pairs, 4.0 * g);
            (
                d.registers,
                "registers",
                Sm {
                    reference: r + 8.0 * g + 2.0 * pairs,
                    ..ours
                },
            )
        }
        // 3 × PartialDecryptAndReRandomize (1 + 2) + ReRandomize 2.
        (Kind::ReachAndFrequency, EXEC_TWO, false) => {
            (d.groups, "tuples", sm(3.0 * g, 0.0, 8.0 * g))
        }
        // 3 IsZero / tuple + 2(MF − 1) destructors / valid tuple; ours: MF − 1 elements of
        // the shifted destructor per valid tuple.
        (Kind::ReachAndFrequency, EXEC_TWO, true) => (
            d.groups,
            "tuples",
            Sm {
                matrix: rows * v,
                reference: 3.0 * g + 2.0 * rows * v,
                ..sm(3.0 * g, 0.0, 0.0)
            },
        ),
        (Kind::ReachAndFrequency, EXEC_THREE, false) => (
            d.valid * (MAX_FREQUENCY as usize - 1),
            "ciphertexts",
            sm(rows * v, 0.0, 0.0),
        ),
        // A column stops at its first zero: min(count, MF − 1) tests.
        (Kind::ReachAndFrequency, EXEC_THREE, true) => (
            d.valid * (MAX_FREQUENCY as usize - 1),
            "ciphertexts",
            sm(d.phase_three_tests as f64, 0.0, 0.0),
        ),
        // Noise off: the excessive-noise ciphertext Enc(0), 2 SM.
        (Kind::ReachOnly, SETUP, false) => (own, "registers", sm(0.0, 0.0, 2.0)),
        (Kind::ReachOnly, SETUP, true) => (d.registers, "registers", sm(0.0, 0.0, 2.0)),
        // Blind 3 / register + PartialDecrypt of the noise ciphertext.
        (Kind::ReachOnly, EXEC_ONE, false) => {
            (d.registers, "registers", sm(3.0 * r + 1.0, 0.0, 0.0))
        }
        // Decrypt 1 / register + the noise ciphertext's zero test.
        (Kind::ReachOnly, EXEC_ONE, true) => (d.registers, "registers", sm(r + 1.0, 0.0, 0.0)),
        _ => (0, "?", Sm::default()),
    }
}

/// Seconds per scalar multiplication on this machine (`halo-p256` natively, one core, batches
/// of 1000).
struct Costs {
    /// `k·Pᵢ`, one scalar (`ops::mul`).
    shared: f64,
    /// `kᵢ·Pᵢ` (`ops::mul_each`).
    each: f64,
    /// `kᵢ·Y`, a registered point's table (`ops::mul_fixed`).
    fixed: f64,
    /// `kᵢ·G` (`ops::mul_fixed` with the generator's table).
    generator: f64,
    /// One `k·P` alone (`mul_var`, then affine).
    single: f64,
    /// One element of `ops::scale_random_shifted` with MF − 1 multipliers (a ciphertext's
    /// m results share its tables).
    matrix: f64,
}

/// Seconds per call of `f`: enough calls for ~0.1 s, best of three such runs (other work on
/// the machine only ever slows a run down).
fn measure<F: FnMut()>(mut f: F) -> f64 {
    let mut run = |n: u32| {
        let t = Instant::now();
        for _ in 0..n {
            f();
        }
        t.elapsed().as_secs_f64() / f64::from(n)
    };
    let mut n = 1u32;
    while run(n) * f64::from(n) < 0.1 {
        n *= 2;
    }
    (0..3).map(|_| run(n)).fold(f64::MAX, f64::min)
}

fn costs(c: &C, y: &[u8]) -> Costs {
    let n = 1000;
    let scalars = c.random_scalars(n as u32).unwrap();
    let points = c
        .fixed_mul(&c.generator(), &c.random_scalars(n as u32).unwrap())
        .unwrap();
    let one = c.random_scalars(1).unwrap();
    let g = FixedTable::new(&Affine::generator());
    let t = FixedTable::new(&Affine::decode(y).unwrap());
    let p = Affine::decode(&points[..33]).unwrap();
    let k = halo_p256::scalar::Scalar::from_be_bytes(&one[..].try_into().unwrap()).unwrap();
    let per = |s: f64| s / n as f64;
    Costs {
        shared: per(measure(|| {
            std::hint::black_box(ops::mul(&points, &one).unwrap());
        })),
        each: per(measure(|| {
            std::hint::black_box(ops::mul_each(&points, &scalars).unwrap());
        })),
        fixed: per(measure(|| {
            std::hint::black_box(ops::mul_fixed(&t, &scalars).unwrap());
        })),
        generator: per(measure(|| {
            std::hint::black_box(ops::mul_fixed(&g, &scalars).unwrap());
        })),
        single: measure(|| {
            std::hint::black_box(halo_p256::mul::mul_var(&p, &k).to_affine());
        }),
        matrix: {
            let key = ops::ElGamalKey {
                generator: &g,
                key: &t,
            };
            let mut rng = halo_p256::vectors::lcg(5);
            let rows = (MAX_FREQUENCY - 1) as usize;
            let columns = n / rows;
            let counts = ops::encrypt(&key, &points[..columns * 33], &mut rng).unwrap();
            let shift = ops::encrypt(&key, &points[n * 33 - 33..], &mut rng).unwrap();
            let mult: Vec<u8> = (1..=rows as u64)
                .flat_map(|j| halo_p256::scalar::Scalar::from_u64(j).neg().to_be_bytes())
                .collect();
            measure(|| {
                std::hint::black_box(
                    ops::scale_random_shifted(&counts, &shift, &mult, &mut rng).unwrap(),
                );
            }) / (columns * rows) as f64
        },
    }
}

// ---- output ---------------------------------------------------------------------------------

fn thousands(v: f64) -> String {
    if !v.is_finite() {
        return "–".into();
    }
    let n = v.round() as u64;
    let s = n.to_string();
    let mut out = String::new();
    for (i, ch) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(ch);
    }
    out
}

fn secs(s: f64) -> String {
    if s >= 100.0 {
        format!("{s:.0}")
    } else if s >= 10.0 {
        format!("{s:.1}")
    } else if s >= 0.1 {
        format!("{s:.2}")
    } else {
        format!("{s:.3}")
    }
}

/// `measured / model`, when the model is worth comparing (at least one SM per unit of work).
fn ratio(measured: f64, model: f64, meaningful: bool) -> String {
    if meaningful && model > 0.0 {
        format!("{:.2}", measured / model)
    } else {
        "–".into()
    }
}

/// CPU seconds this process used so far (user + system, every thread; Linux
/// `/proc/self/stat`, 100 ticks per second), 0 where unavailable.
fn cpu_seconds() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return 0.0;
    };
    let Some(rest) = stat.rsplit_once(')').map(|r| r.1) else {
        return 0.0;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let tick = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (tick(11) + tick(12)) / 100.0
}

/// The load average (other work on the machine skews the numbers, the 2-thread ones most).
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().map(str::to_owned))
        .unwrap_or_else(|| "?".into())
}

fn range(r: (f64, f64)) -> String {
    if r.0 == r.1 {
        thousands(r.0)
    } else {
        format!("{}–{}", thousands(r.0), thousands(r.1))
    }
}

struct Outcome {
    kind: Kind,
    r: usize,
    one: f64,
    two: f64,
    /// CPU seconds of the 1-thread chain: its wall time on an idle machine.
    one_cpu: f64,
    model_var: f64,
    model_split: f64,
}

fn report(kind: Kind, d: &Dataset, one: &ChainRun, two: &ChainRun, c: &Costs) -> Outcome {
    println!(
        "\n## {} — R = {} encrypted registers\n",
        kind.name(),
        thousands(d.registers as f64)
    );
    println!(
        "{} distinct indexes ({} in two sketches, {} destroyed), {} valid tuples; sketch size {}{}, decay {DECAY_RATE}, \
         maximum frequency {}, noise off, 3 duchies.\n",
        thousands(d.groups as f64),
        thousands(d.pairs as f64),
        thousands(d.destroyed as f64),
        thousands(d.valid as f64),
        thousands(d.size as f64),
        if d.size != SKETCH_SIZE {
            format!(
                " (not {}: the estimator needs more registers than active ones)",
                thousands(SKETCH_SIZE as f64)
            )
        } else {
            String::new()
        },
        if kind == Kind::ReachOnly {
            1
        } else {
            MAX_FREQUENCY
        },
    );
    println!(
        "| stage | at | units | 1 thread s | units/s | 2 threads s | units/s | 2t/1t | SM (§3.7) | model s, all var | model s, var+fixed | 1t / model | reference p=1 units/s | 1t / ref |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    let mut total = Sm::default();
    let (mut t1, mut t2) = (0.0, 0.0);
    let mut mismatches = Vec::new();
    for (a, b) in one.steps.iter().zip(&two.steps) {
        let (units, unit, sm) = model(kind, d, a.duchy, a.stage);
        // The execution phases' inputs must hold exactly the units the model counts.
        let expected = match (kind, a.stage) {
            (Kind::ReachAndFrequency, EXEC_ONE) => Some(units * 198),
            (Kind::ReachAndFrequency, EXEC_TWO) => Some(units * 264),
            (Kind::ReachAndFrequency, EXEC_THREE) => Some(units * 66),
            (Kind::ReachOnly, EXEC_ONE) => Some(units * 66 + 66),
            _ => None,
        };
        if let Some(e) = expected
            && e != a.peer_bytes
        {
            mismatches.push(format!(
                "{} at {}: {} input bytes, the model expects {e}",
                kind.stage_name(a.stage),
                DUCHIES[a.duchy],
                a.peer_bytes
            ));
        }
        total.add(sm);
        let (s1, s2) = (a.elapsed.as_secs_f64(), b.elapsed.as_secs_f64());
        t1 += s1;
        t2 += s2;
        let u = units as f64;
        let split = sm.split(c);
        let (reference, vs) = match kind.reference_stage(a.stage) {
            Some(r) => (range(r), format!("{:.1}×", u / s1 / r.1)),
            None => ("–".into(), "".into()),
        };
        println!(
            "| {} | {} | {} {unit} | {} | {} | {} | {} | {:.2}× | {} | {} | {} | {} | {reference} | {vs} |",
            kind.stage_name(a.stage),
            DUCHIES[a.duchy],
            thousands(u),
            secs(s1),
            thousands(u / s1),
            secs(s2),
            thousands(u / s2),
            s1 / s2,
            thousands(sm.total()),
            secs(sm.all_variable(c)),
            secs(split),
            ratio(s1, split, sm.total() >= 0.1 * u),
        );
    }
    let (r1, r2, exact) = kind.reference_chain(d.registers);
    let mark = if exact { "" } else { "~" };
    let cpu = |run: &ChainRun| run.steps.iter().map(|s| s.cpu).sum::<f64>();
    let (c1, c2) = (cpu(one), cpu(two));
    println!(
        "| **chain** | | {} registers | **{}** | {} | **{}** | {} | {:.2}× | {} | {} | {} | {} | {mark}{} s (p=1), {mark}{} s (p=2) | {:.1}× |",
        thousands(d.registers as f64),
        secs(t1),
        thousands(d.registers as f64 / t1),
        secs(t2),
        thousands(d.registers as f64 / t2),
        t1 / t2,
        thousands(total.total()),
        secs(total.all_variable(c)),
        secs(total.split(c)),
        ratio(t1, total.split(c), true),
        secs(r1),
        secs(r2),
        r1 / t1,
    );
    for m in &mismatches {
        println!("\n**Unit count mismatch**: {m}.");
    }
    println!(
        "\nCPU time of the process during the chain: {} s with 1 crypto thread ({:.2} cores busy on \
         average), {} s with 2 ({:.2} cores).",
        secs(c1),
        c1 / t1,
        secs(c2),
        c2 / t2
    );
    Outcome {
        kind,
        r: d.registers,
        one: t1,
        two: t2,
        one_cpu: c1,
        model_var: total.all_variable(c),
        model_split: total.split(c),
    }
}

fn summary(outcomes: &[Outcome]) {
    println!("\n## Whole chains against the reference (goal: 2× faster at the same parallelism)\n");
    println!(
        "| protocol | R | ours p=1 s | ref p=1 s | speed-up | ours p=1 CPU s | speed-up (CPU) | ours p=2 s | ref p=2 s | speed-up | goal 2× | model s, all var (1 core) | model s, var+fixed (1 core) |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    for o in outcomes {
        let (r1, r2, exact) = o.kind.reference_chain(o.r);
        let mark = if exact { "" } else { "~" };
        let met = |ours: f64, reference: f64| {
            if reference / ours >= 2.0 {
                "met"
            } else {
                "not met"
            }
        };
        let goal = format!("p=1 {}, p=2 {}", met(o.one, r1), met(o.two, r2));
        println!(
            "| {} | {} | {} | {mark}{} | {:.2}× | {} | {:.2}× | {} | {mark}{} | {:.2}× | {} | {} | {} |",
            o.kind.name(),
            thousands(o.r as f64),
            secs(o.one),
            secs(r1),
            r1 / o.one,
            secs(o.one_cpu),
            r1 / o.one_cpu,
            secs(o.two),
            secs(r2),
            r2 / o.two,
            goal,
            secs(o.model_var),
            secs(o.model_split),
        );
    }
    println!(
        "\nThe CPU column is the 1-thread chain's process CPU time: what its wall time would be on an \
         idle machine. When other work shares the machine (load average above the CPU count, cores \
         busy well below 1 and 2 in the per-chain lines), the wall times, the 2-thread ones most, \
         overstate the cost."
    );
    if outcomes.iter().any(|o| !o.kind.reference_chain(o.r).2) {
        println!("\n~ reference scaled linearly from its 10 000 (or 100 000) register figure.");
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let quick = args.iter().any(|a| a == "--quick");
    let mut sizes: Vec<usize> = if quick {
        vec![2_000]
    } else {
        vec![10_000, 100_000]
    };
    if let Some(i) = args.iter().position(|a| a == "--registers") {
        let list = args
            .get(i + 1)
            .expect("--registers needs a list, e.g. 10000,100000");
        sizes = list
            .split(',')
            .map(|s| {
                s.trim()
                    .replace('_', "")
                    .parse()
                    .expect("--registers: numbers")
            })
            .collect();
        assert!(sizes.iter().all(|&r| r >= 100), "--registers: at least 100");
    }

    let cache = Path::new(env!("CARGO_TARGET_TMPDIR")).join("halo-engine-aot");
    let load = |threads: usize| {
        let rt = Runtime::new(EngineConfig {
            cache_dir: Some(cache.clone()),
            crypto_threads: threads,
            ..EngineConfig::default()
        })
        .expect("runtime");
        let rf = rt
            .load_file(Path::new(halo_plugin_build::LLV2))
            .expect("load llv2");
        let ro = rt
            .load_file(Path::new(halo_plugin_build::RO_LLV2))
            .expect("load ro-llv2");
        (rf, ro)
    };
    let plugins = [(1usize, load(1)), (2usize, load(2))];

    let c = C::new();
    let k = keys(&c);
    let y = c.register(&k.combined).unwrap();
    let (consumer_sk, consumer_pk) =
        Kem::derive_keypair(b"halo llv2 benchmark measurement consumer");
    let consumer_pk = consumer_pk.to_bytes().to_vec();
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());

    eprintln!("measuring scalar multiplication costs…");
    let costs = costs(&c, &k.combined);
    println!("# Liquid Legions v2 stages through the component boundary ({cpus} CPUs)\n");
    println!(
        "This machine, `halo-p256` natively, one core, batches of 1 000: variable-base k·Pᵢ (one scalar) {:.1} µs, \
         kᵢ·Pᵢ {:.1} µs, one k·P alone {:.1} µs; fixed-base kᵢ·Y {:.1} µs, kᵢ·G {:.1} µs; one element of the \
         shifted destructor (MF − 1 = {} per ciphertext, i.e. 2 of §3.7's SM) {:.1} µs.",
        costs.shared * 1e6,
        costs.each * 1e6,
        costs.single * 1e6,
        costs.fixed * 1e6,
        costs.generator * 1e6,
        MAX_FREQUENCY - 1,
        costs.matrix * 1e6,
    );
    println!(
        "Model: scalar multiplications per stage for these inputs × those costs — \"SM (§3.7)\" and \"all var\": \
         spec §3.7's count, every SM priced as kᵢ·Pᵢ (the reference's algorithm); \"var+fixed\": the ones this \
         implementation makes (§3.7's, except that execution one at the aggregator re-randomizes a \
         single-register group's count instead of adding r·fa), encryption and re-randomization (r·G, r·Y) at the \
         fixed-base cost, decryption and blinding at the one-scalar cost, destructors at kᵢ·Pᵢ, the same-key \
         matrix (execution two at the aggregator) at the shifted destructor's cost per element. \
         Reference: the C++ implementation on this kind of machine (per-stage figures at parallelism 1, \
         as given in the issue, shown beside every duchy's row; \"1t / ref\" against the upper end of \
         a range)."
    );

    println!("\nLoad average (1 min) at the start: {}.", load_average());

    let mut outcomes = Vec::new();
    let mut failures = Vec::new();
    for &r in &sizes {
        let t = Instant::now();
        let d = dataset(r);
        let rf_inputs = encrypt(&c, &y, &d, false);
        let ro_inputs = encrypt(&c, &y, &d, true);
        eprintln!(
            "R = {r}: inputs generated and encrypted natively in {:.1} s",
            t.elapsed().as_secs_f64()
        );
        for kind in [Kind::ReachAndFrequency, Kind::ReachOnly] {
            let inputs = match kind {
                Kind::ReachAndFrequency => &rf_inputs,
                Kind::ReachOnly => &ro_inputs,
            };
            let mut runs = Vec::new();
            for (threads, (rf, ro)) in &plugins {
                let plugin = match kind {
                    Kind::ReachAndFrequency => rf,
                    Kind::ReachOnly => ro,
                };
                eprintln!("  {} R = {r}, {threads} crypto thread(s):", kind.name());
                let id = format!("bench-{}-{r}-{threads}", plugin.info().id);
                let comp = computation(kind, &id, d.size, &consumer_pk);
                match run_chain(plugin, kind, &id, &comp, &k, inputs) {
                    Ok(run) => match check(kind, &d, &run, &consumer_sk) {
                        Ok(m) => {
                            eprintln!("    result checked: {m}");
                            runs.push(run);
                        }
                        Err(e) => failures.push(format!(
                            "{} R = {r}, {threads} thread(s): wrong result: {e}",
                            kind.name()
                        )),
                    },
                    Err(e) => {
                        failures.push(format!("{} R = {r}, {threads} thread(s): {e}", kind.name()))
                    }
                }
            }
            if let [one, two] = runs.as_slice() {
                outcomes.push(report(kind, &d, one, two, &costs));
            }
        }
    }
    summary(&outcomes);
    println!("\nLoad average (1 min) at the end: {}.", load_average());
    if !failures.is_empty() {
        println!("\n## Failures\n");
        for f in &failures {
            println!("* {f}");
        }
        std::process::exit(1);
    }
}

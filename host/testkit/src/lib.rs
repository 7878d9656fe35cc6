//! A native test protocol that exercises every host feature without cryptography (tests only:
//! production hosts run wasm plugins).
//!
//! `test-sum` runs under the Honest Majority Share Shuffle system config and stage numbers:
//! the two non-aggregators exchange random seeds (SHUFFLE_PHASE_INPUT_ONE / _TWO), each
//! sends the element-wise sum of its local requisition vectors (little-endian u32) plus the
//! XOR of both seeds to the aggregator (AGGREGATION_PHASE_INPUT), and the aggregator adds the
//! two vectors, checks both reported the same combined seed, and publishes reach and the
//! frequency histogram as the (unencrypted, test-only) result: a JSON object
//! `{"reach": n, "frequency": {"1": c1, ...}, "registers": m}`.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU32, Ordering};

use halo_proto::halo::v1::MeasurementSpec;
use halo_proto::system::v1alpha::computation::State as ComputationState;
use halo_proto::system::v1alpha::computation_participant::RequisitionParams;
use halo_proto::system::v1alpha::computation_participant::requisition_params;
use prost::Message;

use halo_protocol::*;

pub const INITIALIZED: i32 = 1;
pub const WAIT_TO_START: i32 = 2;
pub const WAIT_ON_SHUFFLE_INPUT_PHASE_ONE: i32 = 3;
pub const SETUP_PHASE: i32 = 4;
pub const WAIT_ON_SHUFFLE_INPUT_PHASE_TWO: i32 = 5;
pub const WAIT_ON_AGGREGATION_INPUT: i32 = 6;
pub const SHUFFLE_PHASE: i32 = 7;
pub const AGGREGATION_PHASE: i32 = 8;
pub const COMPLETE: i32 = 9;

pub const SHUFFLE_PHASE_INPUT_ONE: i32 = 1;
pub const SHUFFLE_PHASE_INPUT_TWO: i32 = 2;
pub const AGGREGATION_PHASE_INPUT: i32 = 3;

/// The test protocol. `transient_failures` makes the first N executions of SHUFFLE_PHASE
/// fail transiently (per instance), to exercise retries.
pub struct TestSumProtocol {
    pub version: String,
    pub transient_failures: AtomicU32,
    /// Fail every SHUFFLE_PHASE transiently (exercises the attempt limit).
    pub always_transient: bool,
    /// The first N calls of `start` fail transiently (a deadline, a full instance pool).
    pub start_transient_failures: AtomicU32,
    /// SHUFFLE_PHASE takes at least this long (a stage that outlives a lease).
    pub shuffle_delay: std::time::Duration,
}

impl TestSumProtocol {
    pub fn new(version: &str) -> Self {
        TestSumProtocol {
            version: version.into(),
            transient_failures: AtomicU32::new(0),
            always_transient: false,
            start_transient_failures: AtomicU32::new(0),
            shuffle_delay: std::time::Duration::ZERO,
        }
    }
}

fn le_u32s(data: &[u8]) -> Result<Vec<u32>, StageError> {
    if !data.len().is_multiple_of(4) {
        return Err(StageError::InvalidInput(format!(
            "vector of {} bytes is not a multiple of 4",
            data.len()
        )));
    }
    Ok(data
        .chunks_exact(4)
        .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect())
}

fn to_le(v: &[u32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn add_into(acc: &mut Vec<u32>, v: &[u32]) -> Result<(), StageError> {
    if acc.is_empty() {
        acc.resize(v.len(), 0);
    }
    if acc.len() != v.len() {
        return Err(StageError::InvalidInput(format!(
            "vector lengths differ: {} vs {}",
            acc.len(),
            v.len()
        )));
    }
    for (a, b) in acc.iter_mut().zip(v) {
        *a = a.wrapping_add(*b);
    }
    Ok(())
}

fn peer(ctx: &ComputationContext, role: Role) -> Result<String, StageError> {
    ctx.participants
        .iter()
        .find(|p| p.role == role)
        .map(|p| p.duchy_id.clone())
        .ok_or_else(|| StageError::Permanent(format!("no participant with role {role:?}")))
}

fn seed_of(state: &[u8]) -> Result<u64, StageError> {
    state
        .get(..8)
        .and_then(|b| <[u8; 8]>::try_from(b).ok())
        .map(u64::from_le_bytes)
        .ok_or_else(|| StageError::Permanent("missing seed in plugin state".into()))
}

impl Protocol for TestSumProtocol {
    fn pin(&self) -> PluginPin {
        PluginPin {
            name: "test-sum".into(),
            version: self.version.clone(),
            digest: format!("test-sum-{}", self.version),
        }
    }

    fn system_protocol(&self) -> SystemProtocol {
        SystemProtocol::HonestMajorityShareShuffle
    }

    fn stages(&self) -> Vec<StageInfo> {
        let s = |number, name: &str, kind| StageInfo {
            number,
            name: name.into(),
            kind,
        };
        vec![
            s(
                INITIALIZED,
                "INITIALIZED",
                StageKind::Queued {
                    inputs: vec![],
                    requisitions: false,
                },
            ),
            s(
                WAIT_TO_START,
                "WAIT_TO_START",
                StageKind::WaitKingdom {
                    state: ComputationState::PendingComputation,
                    next: SETUP_PHASE,
                },
            ),
            s(
                WAIT_ON_SHUFFLE_INPUT_PHASE_ONE,
                "WAIT_ON_SHUFFLE_INPUT_PHASE_ONE",
                StageKind::WaitInputs {
                    description: SHUFFLE_PHASE_INPUT_ONE,
                    from: InputSource::Roles(vec![Role::FirstNonAggregator]),
                    next: SETUP_PHASE,
                },
            ),
            s(
                SETUP_PHASE,
                "SETUP_PHASE",
                StageKind::Queued {
                    inputs: vec![],
                    requisitions: false,
                },
            ),
            s(
                WAIT_ON_SHUFFLE_INPUT_PHASE_TWO,
                "WAIT_ON_SHUFFLE_INPUT_PHASE_TWO",
                StageKind::WaitInputs {
                    description: SHUFFLE_PHASE_INPUT_TWO,
                    from: InputSource::Roles(vec![Role::SecondNonAggregator]),
                    next: SHUFFLE_PHASE,
                },
            ),
            s(
                WAIT_ON_AGGREGATION_INPUT,
                "WAIT_ON_AGGREGATION_INPUT",
                StageKind::WaitInputs {
                    description: AGGREGATION_PHASE_INPUT,
                    from: InputSource::Roles(vec![
                        Role::FirstNonAggregator,
                        Role::SecondNonAggregator,
                    ]),
                    next: AGGREGATION_PHASE,
                },
            ),
            s(
                SHUFFLE_PHASE,
                "SHUFFLE_PHASE",
                StageKind::Queued {
                    inputs: vec![SHUFFLE_PHASE_INPUT_ONE, SHUFFLE_PHASE_INPUT_TWO],
                    requisitions: true,
                },
            ),
            s(
                AGGREGATION_PHASE,
                "AGGREGATION_PHASE",
                StageKind::Queued {
                    inputs: vec![AGGREGATION_PHASE_INPUT],
                    requisitions: false,
                },
            ),
            s(COMPLETE, "COMPLETE", StageKind::Terminal),
        ]
    }

    fn start(&self, ctx: &ComputationContext) -> Result<StartOutcome, StageError> {
        if self
            .start_transient_failures
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
        {
            return Err(StageError::Transient(
                "injected transient start failure".into(),
            ));
        }
        let c = halo_proto::system::v1alpha::Computation::decode(ctx.computation.as_slice())
            .map_err(|e| StageError::InvalidInput(format!("computation: {e}")))?;
        let spec = MeasurementSpec::decode(c.measurement_spec.as_slice())
            .map_err(|e| StageError::InvalidInput(format!("measurement spec: {e}")))?;
        for (what, p) in [
            ("reach", &spec.reach_privacy_params),
            ("frequency", &spec.frequency_privacy_params),
        ] {
            if let Some(p) = p
                && (p.epsilon <= 0.0 || p.delta <= 0.0)
            {
                return Err(StageError::InvalidInput(format!(
                    "invalid {what} DP params: epsilon {} and delta {} must be positive",
                    p.epsilon, p.delta
                )));
            }
        }
        let seed: u64 = rand::random();
        Ok(StartOutcome {
            initial_stage: INITIALIZED,
            state: seed.to_le_bytes().to_vec(),
        })
    }

    fn execute(
        &self,
        ctx: &ComputationContext,
        stage: i32,
        inputs: Vec<StageInput>,
    ) -> Result<StageOutcome, StageError> {
        match stage {
            INITIALIZED => {
                let hmss = match ctx.role {
                    Role::Aggregator => requisition_params::HonestMajorityShareShuffle::default(),
                    _ => requisition_params::HonestMajorityShareShuffle {
                        tink_public_key: format!("test-key-{}", ctx.duchy_id).into_bytes(),
                        tink_public_key_signature: b"test-signature".to_vec(),
                        tink_public_key_signature_algorithm_oid: "1.2.840.10045.4.3.2".into(),
                    },
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
            SETUP_PHASE => {
                let seed = seed_of(&ctx.state)?;
                let (to, description, next) = match ctx.role {
                    Role::FirstNonAggregator => (
                        peer(ctx, Role::SecondNonAggregator)?,
                        SHUFFLE_PHASE_INPUT_ONE,
                        WAIT_ON_SHUFFLE_INPUT_PHASE_TWO,
                    ),
                    Role::SecondNonAggregator => (
                        peer(ctx, Role::FirstNonAggregator)?,
                        SHUFFLE_PHASE_INPUT_TWO,
                        SHUFFLE_PHASE,
                    ),
                    r => {
                        return Err(StageError::Permanent(format!(
                            "role {r:?} has no SETUP_PHASE"
                        )));
                    }
                };
                Ok(StageOutcome {
                    next_stage: next,
                    sends: vec![Outgoing {
                        to,
                        description,
                        payload: seed.to_le_bytes().to_vec(),
                    }],
                    ..Default::default()
                })
            }
            SHUFFLE_PHASE => {
                std::thread::sleep(self.shuffle_delay);
                if self.always_transient {
                    return Err(StageError::Transient("injected transient failure".into()));
                }
                if self
                    .transient_failures
                    .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                    .is_ok()
                {
                    return Err(StageError::Transient("injected transient failure".into()));
                }
                let own = seed_of(&ctx.state)?;
                let mut peer_seed = None;
                let mut sum = Vec::new();
                for i in &inputs {
                    match &i.origin {
                        InputOrigin::Peer { .. } => peer_seed = Some(seed_of(&i.data)?),
                        InputOrigin::Requisition { .. } => add_into(&mut sum, &le_u32s(&i.data)?)?,
                    }
                }
                let peer_seed = peer_seed
                    .ok_or_else(|| StageError::Permanent("no seed from the peer".into()))?;
                let mut payload = (own ^ peer_seed).to_le_bytes().to_vec();
                payload.extend(to_le(&sum));
                Ok(StageOutcome {
                    next_stage: COMPLETE,
                    sends: vec![Outgoing {
                        to: peer(ctx, Role::Aggregator)?,
                        description: AGGREGATION_PHASE_INPUT,
                        payload,
                    }],
                    ..Default::default()
                })
            }
            AGGREGATION_PHASE => {
                if inputs.len() != 2 {
                    return Err(StageError::Permanent(format!(
                        "expected 2 inputs, got {}",
                        inputs.len()
                    )));
                }
                let mut seeds = Vec::new();
                let mut total = Vec::new();
                for i in &inputs {
                    let seed = seed_of(&i.data)?;
                    seeds.push(seed);
                    let v = le_u32s(i.data.get(8..).unwrap_or_default())?;
                    if !v.is_empty() {
                        add_into(&mut total, &v)?;
                    }
                }
                if seeds[0] != seeds[1] {
                    return Err(StageError::Permanent(
                        "non-aggregators disagree on the combined seed".into(),
                    ));
                }
                let mut freq: BTreeMap<String, u64> = BTreeMap::new();
                let mut reach = 0u64;
                for f in total.iter().filter(|f| **f > 0) {
                    reach += 1;
                    *freq.entry(f.to_string()).or_default() += 1;
                }
                let result = format!(
                    "{{\"reach\":{reach},\"registers\":{},\"frequency\":{{{}}}}}",
                    total.len(),
                    freq.iter()
                        .map(|(k, v)| format!("\"{k}\":{v}"))
                        .collect::<Vec<_>>()
                        .join(",")
                );
                Ok(StageOutcome {
                    next_stage: COMPLETE,
                    result: Some(ComputationResult {
                        encrypted_result: result.into_bytes(),
                        result_public_key: b"test".to_vec(),
                    }),
                    ..Default::default()
                })
            }
            other => Err(StageError::Permanent(format!(
                "stage {other} is not a queued stage"
            ))),
        }
    }
}

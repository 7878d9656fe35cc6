//! `test-sum` as a wasm plugin: the same protocol as the host's in-crate
//! `halo_duchy::testing::TestSumProtocol`, written against the plugin SDK.
//!
//! It runs under the Honest Majority Share Shuffle system config and stage numbers: the two
//! non-aggregators exchange random seeds (SHUFFLE_PHASE_INPUT_ONE / _TWO), each sends the
//! element-wise sum of its local requisition vectors (little-endian u32) plus the XOR of both
//! seeds to the aggregator (AGGREGATION_PHASE_INPUT), and the aggregator adds the two vectors,
//! checks both reported the same combined seed, and publishes reach and the frequency
//! histogram as the (unencrypted, test-only) result: a JSON object
//! `{"reach":n,"registers":m,"frequency":{"1":c1,...}}`.
//!
//! Version 1.0.0 by default, 1.1.0 with the cargo feature `v1_1` (which only adds a log line).
//! Unlike the in-crate protocol it has no transient-failure injection: each call runs in a
//! fresh instance, so there is no per-instance counter to keep.

use std::collections::BTreeMap;

use halo_plugin_sdk::proto::system::v1alpha::computation_participant::{
    RequisitionParams, requisition_params,
};
use halo_plugin_sdk::{prelude::*, state};

pub const VERSION: &str = if cfg!(feature = "v1_1") {
    "1.1.0"
} else {
    "1.0.0"
};

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

pub struct TestSum;

halo_plugin_sdk::export!(TestSum);

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

fn seed_of(bytes: &[u8]) -> Result<u64, StageError> {
    state::u64_le(bytes, 0, "seed in plugin state")
}

/// The stage table (same as the in-crate protocol's).
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
        .queued(SETUP_PHASE, "SETUP_PHASE", &[], false)
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

impl Protocol for TestSum {
    fn describe() -> Description {
        Description {
            id: "test-sum".into(),
            version: VERSION.into(),
            serves: SystemProtocol::HonestMajorityShareShuffle,
            stages: stages(),
        }
    }

    fn start(ctx: ComputationContext) -> Result<StartOutcome, StageError> {
        let spec = ctx.measurement_spec()?;
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
        if cfg!(feature = "v1_1") {
            halo_plugin_sdk::info!("test-sum {VERSION} starting {}", ctx.global_id);
        }
        let seed = random_u64();
        Ok(StartOutcome {
            initial_stage: INITIALIZED,
            state: seed.to_le_bytes().to_vec(),
        })
    }

    fn execute(
        ctx: ComputationContext,
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
                let own = seed_of(&ctx.state)?;
                let mut peer_seed = None;
                let mut sum = Vec::new();
                for i in &inputs {
                    match &i.origin {
                        InputOrigin::Peer(_) => peer_seed = Some(seed_of(&i.data)?),
                        InputOrigin::Requisition(_) => add_into(&mut sum, &le_u32s(&i.data)?)?,
                    }
                }
                let peer_seed = peer_seed
                    .ok_or_else(|| StageError::Permanent("no seed from the peer".into()))?;
                let mut payload = (own ^ peer_seed).to_le_bytes().to_vec();
                payload.extend(to_le(&sum));
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
                    seeds.push(seed_of(&i.data)?);
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
                Ok(StageOutcome {
                    next_stage: COMPLETE,
                    result: Some(ComputationResult {
                        encrypted_result: result_json(&total).into_bytes(),
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

/// `{"reach":n,"registers":m,"frequency":{"1":c1,...}}` (keys in string order, as the
/// in-crate protocol writes them).
fn result_json(total: &[u32]) -> String {
    let mut freq: BTreeMap<String, u64> = BTreeMap::new();
    let mut reach = 0u64;
    for f in total.iter().filter(|f| **f > 0) {
        reach += 1;
        *freq.entry(f.to_string()).or_default() += 1;
    }
    format!(
        "{{\"reach\":{reach},\"registers\":{},\"frequency\":{{{}}}}}",
        total.len(),
        freq.iter()
            .map(|(k, v)| format!("\"{k}\":{v}"))
            .collect::<Vec<_>>()
            .join(",")
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use halo_plugin_sdk::proto::halo::v1::MeasurementSpec;
    use halo_plugin_sdk::proto::system::v1alpha::{Computation, DifferentialPrivacyParams};

    fn ctx(role: Role, duchy: &str, state: Vec<u8>, spec: MeasurementSpec) -> ComputationContext {
        let computation = Computation {
            measurement_spec: spec.encode_to_vec(),
            ..Default::default()
        };
        let p = |d: &str, r| Participant {
            duchy_id: d.into(),
            role: r,
            requisition_params: vec![],
        };
        ComputationContext {
            global_id: "c1".into(),
            duchy_id: duchy.into(),
            role,
            protocol: SystemProtocol::HonestMajorityShareShuffle,
            computation: computation.encode_to_vec(),
            participants: vec![
                p("agg", Role::Aggregator),
                p("w1", Role::FirstNonAggregator),
                p("w2", Role::SecondNonAggregator),
            ],
            state,
            attempt: 1,
        }
    }

    fn spec(epsilon: f64, delta: f64) -> MeasurementSpec {
        MeasurementSpec {
            reach_privacy_params: Some(DifferentialPrivacyParams { epsilon, delta }),
            ..Default::default()
        }
    }

    fn req(data: &[u32]) -> StageInput {
        StageInput {
            origin: InputOrigin::Requisition(("r".into(), vec![])),
            data: to_le(data),
        }
    }

    #[test]
    fn description_is_valid() {
        let d = TestSum::describe();
        halo_plugin_sdk::stages::validate(&d).unwrap();
        assert_eq!(d.id, "test-sum");
        assert_eq!(d.version, VERSION);
        assert_eq!(d.stages.len(), 9);
        let shuffle = d.stages.iter().find(|s| s.number == SHUFFLE_PHASE).unwrap();
        assert!(
            matches!(&shuffle.kind, StageKind::Queued(q) if q.inputs == [1, 2] && q.requisitions)
        );
    }

    #[test]
    fn start_rejects_bad_dp_params() {
        let e = TestSum::start(ctx(Role::Aggregator, "agg", vec![], spec(0.0, 1e-9)));
        match e {
            Err(StageError::InvalidInput(m)) => assert!(m.contains("epsilon"), "{m}"),
            other => panic!("{other:?}"),
        }
        assert!(TestSum::start(ctx(Role::Aggregator, "agg", vec![], spec(1.0, -1.0))).is_err());
        let ok = TestSum::start(ctx(Role::Aggregator, "agg", vec![], spec(1.0, 1e-9))).unwrap();
        assert_eq!(ok.initial_stage, INITIALIZED);
        assert_eq!(ok.state.len(), 8);
    }

    #[test]
    fn full_run() {
        let s = spec(1.0, 1e-9);
        let (seed1, seed2) = (11u64.to_le_bytes().to_vec(), 22u64.to_le_bytes().to_vec());
        let w1 = ctx(Role::FirstNonAggregator, "w1", seed1.clone(), s.clone());
        let w2 = ctx(Role::SecondNonAggregator, "w2", seed2.clone(), s.clone());
        let init = TestSum::execute(w1.clone(), INITIALIZED, vec![]).unwrap();
        assert_eq!(init.next_stage, WAIT_TO_START);
        assert!(init.requisition_params.is_some());

        let o1 = TestSum::execute(w1.clone(), SETUP_PHASE, vec![]).unwrap();
        assert_eq!(o1.sends[0].to, "w2");
        let o2 = TestSum::execute(w2.clone(), SETUP_PHASE, vec![]).unwrap();
        assert_eq!(o2.next_stage, SHUFFLE_PHASE);

        let from = |o: &StageOutcome, d: &str| StageInput {
            origin: InputOrigin::Peer((d.into(), o.sends[0].description)),
            data: o.sends[0].payload.clone(),
        };
        let a1 = TestSum::execute(
            w1,
            SHUFFLE_PHASE,
            vec![from(&o2, "w2"), req(&[1, 0, 2, 0]), req(&[0, 0, 1, 10])],
        )
        .unwrap();
        let a2 =
            TestSum::execute(w2, SHUFFLE_PHASE, vec![from(&o1, "w1"), req(&[1, 0, 0, 0])]).unwrap();
        assert_eq!(a1.sends[0].to, "agg");

        let agg = ctx(Role::Aggregator, "agg", seed1, s);
        let r = TestSum::execute(
            agg.clone(),
            AGGREGATION_PHASE,
            vec![from(&a1, "w1"), from(&a2, "w2")],
        )
        .unwrap();
        let json = String::from_utf8(r.result.unwrap().encrypted_result).unwrap();
        assert_eq!(
            json,
            r#"{"reach":3,"registers":4,"frequency":{"10":1,"2":1,"3":1}}"#
        );
        assert!(TestSum::execute(agg, WAIT_TO_START, vec![]).is_err());
    }
}

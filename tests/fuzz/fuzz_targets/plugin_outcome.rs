//! Stage outcomes as the host validates them before acting on them
//! (`halo_duchy::outcome::validate_outcome`): a hostile plugin controls every field. The
//! stage table is a real one (the test-sum protocol's); participants, this duchy, its role
//! and the limits vary. Invariant: an accepted outcome satisfies every rule, checked again here
//! independently — sends only to other participants with well-formed ids (never a path),
//! under awaited descriptions, once per (recipient, description); the next stage exists and
//! comes later; state and outputs within their limits; a result only from the aggregator,
//! non-empty, with a move to a terminal stage; requisition params that decode.
#![no_main]

use std::collections::HashSet;
use std::sync::OnceLock;

use arbitrary::Arbitrary;
use halo_duchy::outcome::{OutcomeCheck, OutcomeLimits, validate_outcome};
use halo_protocol::{
    ComputationResult, Outgoing, PluginPin, Protocol as _, Role, StageInfo, StageKind,
    StageOutcome, SystemProtocol,
};
use halo_testkit::TestSumProtocol;
use halo_proto::system::v1alpha::computation_participant::RequisitionParams;
use libfuzzer_sys::fuzz_target;
use prost::Message as _;

const PARTICIPANTS: [&str; 3] = ["aggregator", "worker1", "worker2"];

#[derive(Arbitrary, Debug)]
enum Pick {
    /// Index into a known list.
    Known(u8),
    Other(String),
}

#[derive(Arbitrary, Debug)]
enum Desc {
    Known(u8),
    Other(i32),
}

#[derive(Arbitrary, Debug)]
struct Send {
    to: Pick,
    description: Desc,
    payload: Vec<u8>,
}

#[derive(Arbitrary, Debug)]
struct Input {
    stage: u8,
    duchy: u8,
    role: u8,
    protocol: u8,
    max_output_bytes: u16,
    max_state_bytes: u8,
    next_stage: Desc,
    state: Option<Vec<u8>>,
    requisition_params: Option<Vec<u8>>,
    confirm: bool,
    result: Option<(Vec<u8>, Vec<u8>)>,
    sends: Vec<Send>,
}

fn stages() -> &'static [StageInfo] {
    static STAGES: OnceLock<Vec<StageInfo>> = OnceLock::new();
    STAGES.get_or_init(|| TestSumProtocol::new("1.0.0").stages())
}

fn awaited(stages: &[StageInfo]) -> Vec<i32> {
    stages
        .iter()
        .filter_map(|s| match s.kind {
            StageKind::WaitInputs { description, .. } => Some(description),
            _ => None,
        })
        .collect()
}

fn pick<T: Copy>(list: &[T], i: u8) -> T {
    list[usize::from(i) % list.len()]
}

fuzz_target!(|input: Input| {
    let stages = stages();
    let numbers: Vec<i32> = stages.iter().map(|s| s.number).collect();
    let descriptions = awaited(stages);
    let participants: Vec<String> = PARTICIPANTS.iter().map(|s| s.to_string()).collect();
    let duchy_id = pick(&PARTICIPANTS, input.duchy);
    let role = pick(
        &[
            Role::Aggregator,
            Role::NonAggregator,
            Role::FirstNonAggregator,
            Role::SecondNonAggregator,
        ],
        input.role,
    );
    let protocol = pick(
        &[
            SystemProtocol::LiquidLegionsV2,
            SystemProtocol::ReachOnlyLiquidLegionsV2,
            SystemProtocol::HonestMajorityShareShuffle,
        ],
        input.protocol,
    );
    let pin = PluginPin {
        name: "fuzzed".into(),
        version: "1.0.0".into(),
        digest: "00".repeat(32),
    };
    let limits = OutcomeLimits {
        max_output_bytes: u64::from(input.max_output_bytes),
        max_state_bytes: u64::from(input.max_state_bytes),
    };
    let stage = pick(&numbers, input.stage);
    let check = OutcomeCheck {
        plugin: &pin,
        stages,
        stage,
        duchy_id,
        role,
        protocol,
        participants: &participants,
        limits,
    };
    let desc = |d: Desc, known: &[i32]| match d {
        Desc::Known(i) => pick(known, i),
        Desc::Other(v) => v,
    };
    let outcome = StageOutcome {
        next_stage: desc(input.next_stage, &numbers),
        state: input.state,
        requisition_params: input.requisition_params,
        confirm: input.confirm,
        result: input
            .result
            .map(|(encrypted_result, result_public_key)| ComputationResult {
                encrypted_result,
                result_public_key,
            }),
        sends: input
            .sends
            .into_iter()
            .map(|s| Outgoing {
                to: match s.to {
                    Pick::Known(i) => pick(&PARTICIPANTS, i).to_owned(),
                    Pick::Other(s) => s,
                },
                description: desc(s.description, &descriptions),
                payload: s.payload,
            })
            .collect(),
        ..Default::default()
    };

    let verdict = validate_outcome(&check, &outcome);
    let Err(e) = &verdict else {
        // Accepted: every rule holds.
        let next = stages
            .iter()
            .find(|s| s.number == outcome.next_stage)
            .unwrap_or_else(|| panic!("next stage {} not in the table", outcome.next_stage));
        assert!(outcome.next_stage > stage);
        if let Some(state) = &outcome.state {
            assert!(state.len() as u64 <= limits.max_state_bytes);
        }
        let mut seen = HashSet::new();
        let mut total = 0u64;
        for s in &outcome.sends {
            assert!(
                participants.contains(&s.to) && s.to != duchy_id,
                "send to {:?}",
                s.to
            );
            assert!(!s.to.contains(['/', '\\', '\0']) && s.to != "." && s.to != "..");
            assert!(descriptions.contains(&s.description));
            assert!(seen.insert((s.to.clone(), s.description)), "repeated send");
            total += s.payload.len() as u64;
        }
        if let Some(p) = &outcome.requisition_params {
            assert!(RequisitionParams::decode(p.as_slice()).is_ok());
        }
        if let Some(r) = &outcome.result {
            assert_eq!(role, Role::Aggregator);
            assert!(!r.encrypted_result.is_empty());
            assert_eq!(next.kind, StageKind::Terminal);
            total += (r.encrypted_result.len() + r.result_public_key.len()) as u64;
        }
        assert!(
            total <= limits.max_output_bytes,
            "outputs of {total} bytes accepted"
        );
        return;
    };
    // Refused: the message names the plugin.
    assert!(e.to_string().contains("fuzzed@1.0.0"), "{e}");
});

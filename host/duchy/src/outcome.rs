//! Plugin outputs are untrusted input. Everything a protocol implementation returns from a
//! stage (or from `start`) is checked here before the host acts on it: where payloads go,
//! which stage comes next, how big the outputs are, and whether the bytes the host forwards
//! to the Kingdom decode as what the system API expects.
//!
//! [`validate_outcome`] and [`validate_start`] are pure functions of their arguments (no I/O,
//! no clock, no configuration lookups), so fuzz targets and property tests can call them.
//! Any violation fails the stage permanently with a message naming the plugin
//! (`id@version`) and the cause.

use std::collections::HashSet;
use std::fmt;

use halo_proto::system::v1alpha::computation_participant::RequisitionParams;
use prost::Message;

use crate::names;
use crate::protocol::{
    PluginPin, Role, StageInfo, StageKind, StageOutcome, StartOutcome, SystemProtocol, find_stage,
};

/// Upper bound of serialized requisition params (a public key and its signature).
pub const MAX_REQUISITION_PARAMS_BYTES: usize = 64 << 10;
/// Upper bound of a result's public key.
pub const MAX_RESULT_PUBLIC_KEY_BYTES: usize = 64 << 10;

/// Size limits of what one stage may return (from [`crate::MillConfig`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OutcomeLimits {
    /// Sum of all send payloads and the result's bytes of one stage.
    pub max_output_bytes: u64,
    /// Opaque plugin state carried to the next stage.
    pub max_state_bytes: u64,
}

impl Default for OutcomeLimits {
    fn default() -> Self {
        OutcomeLimits {
            max_output_bytes: crate::DEFAULT_MAX_PLUGIN_OUTPUT_BYTES,
            max_state_bytes: crate::DEFAULT_MAX_PLUGIN_STATE_BYTES,
        }
    }
}

/// What the host knows when it checks an outcome: all of it comes from the host (its
/// configuration, the Kingdom's participant list, the pinned stage table), none from the
/// plugin being checked.
#[derive(Clone, Copy, Debug)]
pub struct OutcomeCheck<'a> {
    /// The implementation that produced the outcome (named in every error).
    pub plugin: &'a PluginPin,
    /// The pinned implementation's stage table.
    pub stages: &'a [StageInfo],
    /// The stage that ran.
    pub stage: i32,
    /// This duchy.
    pub duchy_id: &'a str,
    /// This duchy's role in the computation.
    pub role: Role,
    pub protocol: SystemProtocol,
    /// Duchy ids of the computation's participants (this duchy included).
    pub participants: &'a [String],
    pub limits: OutcomeLimits,
}

/// Why an outcome was refused. `Display` names the plugin and the cause.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InvalidOutcome {
    /// `id@version` of the plugin.
    pub plugin: String,
    /// What was wrong.
    pub cause: String,
}

impl fmt::Display for InvalidOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "plugin {} returned an invalid outcome: {}",
            self.plugin, self.cause
        )
    }
}

impl std::error::Error for InvalidOutcome {}

fn invalid(pin: &PluginPin, cause: String) -> InvalidOutcome {
    InvalidOutcome {
        plugin: format!("{}@{}", pin.name, pin.version),
        cause,
    }
}

/// Quotes an untrusted string for an error message, cut to a readable length.
fn quoted(s: &str) -> String {
    let cut: String = s.chars().take(80).collect();
    if cut.len() < s.len() {
        format!("{cut:?}…")
    } else {
        format!("{cut:?}")
    }
}

/// Checks the result of `Protocol::start`: the initial stage exists and the state is
/// within bounds.
pub fn validate_start(
    plugin: &PluginPin,
    stages: &[StageInfo],
    limits: OutcomeLimits,
    outcome: &StartOutcome,
) -> Result<(), InvalidOutcome> {
    if find_stage(stages, outcome.initial_stage).is_none() {
        return Err(invalid(
            plugin,
            format!(
                "initial stage {} is not in its stage table",
                outcome.initial_stage
            ),
        ));
    }
    if outcome.state.len() as u64 > limits.max_state_bytes {
        return Err(invalid(
            plugin,
            format!(
                "state of {} bytes exceeds the limit of {} bytes",
                outcome.state.len(),
                limits.max_state_bytes
            ),
        ));
    }
    Ok(())
}

/// Checks a stage outcome before the host caches or acts on any of it:
///
/// * `next_stage` is in the stage table and later than the stage that ran (numbers increase
///   along every path, so a plugin cannot loop a computation forever);
/// * the new state is at most `limits.max_state_bytes`;
/// * every send goes to a participant of this computation other than this duchy, named by a
///   well-formed duchy id, under a description some stage of the table waits for, at most
///   once per (recipient, description);
/// * requisition params decode as `ComputationParticipant.RequisitionParams` with the
///   protocol oneof of this computation's protocol, and are at most
///   [`MAX_REQUISITION_PARAMS_BYTES`];
/// * a result comes only from the aggregator, only with a move to a terminal stage, with a
///   non-empty ciphertext;
/// * all payloads plus the result are at most `limits.max_output_bytes`.
pub fn validate_outcome(
    check: &OutcomeCheck<'_>,
    outcome: &StageOutcome,
) -> Result<(), InvalidOutcome> {
    let pin = check.plugin;
    let Some(next) = find_stage(check.stages, outcome.next_stage) else {
        return Err(invalid(
            pin,
            format!(
                "next stage {} is not in its stage table",
                outcome.next_stage
            ),
        ));
    };
    if outcome.next_stage <= check.stage {
        return Err(invalid(
            pin,
            format!(
                "next stage {} does not come after stage {}",
                outcome.next_stage, check.stage
            ),
        ));
    }
    if let Some(state) = &outcome.state
        && state.len() as u64 > check.limits.max_state_bytes
    {
        return Err(invalid(
            pin,
            format!(
                "state of {} bytes exceeds the limit of {} bytes",
                state.len(),
                check.limits.max_state_bytes
            ),
        ));
    }

    let mut total: u64 = 0;
    let mut seen = HashSet::new();
    for (i, s) in outcome.sends.iter().enumerate() {
        if !names::valid_id(&s.to) {
            return Err(invalid(
                pin,
                format!(
                    "send #{i} is addressed to {}, which is not a duchy id",
                    quoted(&s.to)
                ),
            ));
        }
        if s.to == check.duchy_id {
            return Err(invalid(
                pin,
                format!("send #{i} is addressed to this duchy itself ({})", s.to),
            ));
        }
        if !check.participants.contains(&s.to) {
            return Err(invalid(
                pin,
                format!(
                    "send #{i} is addressed to {}, which is not a participant of this computation",
                    s.to
                ),
            ));
        }
        let awaited = check.stages.iter().any(|st| {
            matches!(st.kind, StageKind::WaitInputs { description, .. } if description == s.description)
        });
        if !awaited {
            return Err(invalid(
                pin,
                format!(
                    "send #{i} to {} uses description {}, which no stage waits for",
                    s.to, s.description
                ),
            ));
        }
        if !seen.insert((s.to.as_str(), s.description)) {
            return Err(invalid(
                pin,
                format!(
                    "send #{i} repeats a payload to {} under description {}",
                    s.to, s.description
                ),
            ));
        }
        total = total.saturating_add(s.payload.len() as u64);
    }

    if let Some(params) = &outcome.requisition_params {
        check_requisition_params(pin, check.protocol, params)?;
    }

    if let Some(r) = &outcome.result {
        if r.encrypted_result.is_empty() {
            return Err(invalid(pin, "the result's ciphertext is empty".into()));
        }
        if check.role != Role::Aggregator {
            return Err(invalid(
                pin,
                format!("a result from a {:?}, not the aggregator", check.role),
            ));
        }
        if !matches!(next.kind, StageKind::Terminal) {
            return Err(invalid(
                pin,
                format!(
                    "a result with a move to stage {} ({}), which is not terminal",
                    next.number, next.name
                ),
            ));
        }
        if r.result_public_key.len() > MAX_RESULT_PUBLIC_KEY_BYTES {
            return Err(invalid(
                pin,
                format!(
                    "the result's public key of {} bytes exceeds {MAX_RESULT_PUBLIC_KEY_BYTES} bytes",
                    r.result_public_key.len()
                ),
            ));
        }
        total = total
            .saturating_add(r.encrypted_result.len() as u64)
            .saturating_add(r.result_public_key.len() as u64);
    }

    if total > check.limits.max_output_bytes {
        return Err(invalid(
            pin,
            format!(
                "outputs of {total} bytes exceed the limit of {} bytes",
                check.limits.max_output_bytes
            ),
        ));
    }
    Ok(())
}

fn check_requisition_params(
    pin: &PluginPin,
    protocol: SystemProtocol,
    bytes: &[u8],
) -> Result<(), InvalidOutcome> {
    if bytes.len() > MAX_REQUISITION_PARAMS_BYTES {
        return Err(invalid(
            pin,
            format!(
                "requisition params of {} bytes exceed {MAX_REQUISITION_PARAMS_BYTES} bytes",
                bytes.len()
            ),
        ));
    }
    let params = RequisitionParams::decode(bytes).map_err(|e| {
        invalid(
            pin,
            format!("requisition params are not a RequisitionParams message: {e}"),
        )
    })?;
    let ours = params
        .protocol
        .as_ref()
        .map(SystemProtocol::of_requisition_params);
    if ours != Some(Ok(protocol)) {
        let found = SystemProtocol::requisition_params_name(params.protocol.as_ref());
        return Err(invalid(
            pin,
            format!("requisition params are for protocol {found}, the computation runs {protocol}"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::Protocol as _;
    use crate::protocol::{ComputationResult, Outgoing, StageKind};
    use halo_testkit::TestSumProtocol;

    fn pin() -> PluginPin {
        PluginPin {
            name: "evil".into(),
            version: "6.6.6".into(),
            digest: "00".repeat(32),
        }
    }

    fn parts() -> Vec<String> {
        vec!["aggregator".into(), "worker1".into(), "worker2".into()]
    }

    struct Fixture {
        pin: PluginPin,
        stages: Vec<StageInfo>,
        parts: Vec<String>,
    }

    impl Fixture {
        fn new() -> Self {
            Fixture {
                pin: pin(),
                stages: TestSumProtocol::new("1.0.0").stages(),
                parts: parts(),
            }
        }
        fn check(&self, role: Role, duchy: &'static str) -> OutcomeCheck<'_> {
            OutcomeCheck {
                plugin: &self.pin,
                stages: &self.stages,
                stage: halo_testkit::INITIALIZED,
                duchy_id: duchy,
                role,
                protocol: SystemProtocol::HonestMajorityShareShuffle,
                participants: &self.parts,
                limits: OutcomeLimits {
                    max_output_bytes: 1000,
                    max_state_bytes: 100,
                },
            }
        }
        /// A description some stage of the test-sum table waits for.
        fn description(&self) -> i32 {
            self.stages
                .iter()
                .find_map(|s| match s.kind {
                    StageKind::WaitInputs { description, .. } => Some(description),
                    _ => None,
                })
                .unwrap()
        }
        fn terminal(&self) -> i32 {
            self.stages
                .iter()
                .find(|s| s.kind == StageKind::Terminal)
                .unwrap()
                .number
        }
    }

    fn send(to: &str, description: i32, len: usize) -> Outgoing {
        Outgoing {
            to: to.into(),
            description,
            payload: vec![7; len],
        }
    }

    fn outcome_with(sends: Vec<Outgoing>) -> StageOutcome {
        StageOutcome {
            next_stage: halo_testkit::WAIT_TO_START,
            sends,
            ..Default::default()
        }
    }

    fn cause(r: Result<(), InvalidOutcome>) -> String {
        let e = r.unwrap_err();
        assert_eq!(e.plugin, "evil@6.6.6");
        assert!(e.to_string().contains("plugin evil@6.6.6"), "{e}");
        e.cause
    }

    #[test]
    fn a_well_formed_outcome_passes() {
        let f = Fixture::new();
        let d = f.description();
        let o = outcome_with(vec![send("worker2", d, 500), send("aggregator", d, 500)]);
        validate_outcome(&f.check(Role::FirstNonAggregator, "worker1"), &o).unwrap();
    }

    #[test]
    fn recipients_must_be_other_participants_named_by_valid_ids() {
        let f = Fixture::new();
        let d = f.description();
        let c = f.check(Role::FirstNonAggregator, "worker1");
        for to in [
            "../../etc",
            "../x",
            "..",
            ".",
            "/tmp/x",
            "/",
            "",
            "a/b",
            "a\\b",
            "worker2\0",
            "wörker",
            "worker2 ",
            &"w".repeat(65),
        ] {
            let why = cause(validate_outcome(&c, &outcome_with(vec![send(to, d, 1)])));
            assert!(why.contains("not a duchy id"), "{to:?}: {why}");
        }
        let why = cause(validate_outcome(
            &c,
            &outcome_with(vec![send("worker1", d, 1)]),
        ));
        assert!(why.contains("this duchy itself"), "{why}");
        for to in ["edp1", "mallory", "Worker2"] {
            let why = cause(validate_outcome(&c, &outcome_with(vec![send(to, d, 1)])));
            assert!(why.contains("not a participant"), "{to}: {why}");
        }
    }

    #[test]
    fn descriptions_must_be_awaited_and_sends_unique() {
        let f = Fixture::new();
        let d = f.description();
        let c = f.check(Role::FirstNonAggregator, "worker1");
        let why = cause(validate_outcome(
            &c,
            &outcome_with(vec![send("worker2", 4242, 1)]),
        ));
        assert!(why.contains("no stage waits for"), "{why}");
        let why = cause(validate_outcome(
            &c,
            &outcome_with(vec![send("worker2", d, 1), send("worker2", d, 1)]),
        ));
        assert!(why.contains("repeats"), "{why}");
    }

    #[test]
    fn sizes_are_bounded() {
        let f = Fixture::new();
        let d = f.description();
        let c = f.check(Role::FirstNonAggregator, "worker1");
        let why = cause(validate_outcome(
            &c,
            &outcome_with(vec![send("worker2", d, 600), send("aggregator", d, 401)]),
        ));
        assert!(why.contains("1001 bytes exceed the limit of 1000"), "{why}");
        let mut o = outcome_with(vec![]);
        o.state = Some(vec![0; 101]);
        let why = cause(validate_outcome(&c, &o));
        assert!(why.contains("state of 101 bytes"), "{why}");
        o.state = Some(vec![0; 100]);
        validate_outcome(&c, &o).unwrap();
        let mut o = outcome_with(vec![]);
        o.requisition_params = Some(vec![0; MAX_REQUISITION_PARAMS_BYTES + 1]);
        let why = cause(validate_outcome(&c, &o));
        assert!(why.contains("requisition params of"), "{why}");
    }

    #[test]
    fn next_stage_must_exist_and_come_later() {
        let f = Fixture::new();
        let c = f.check(Role::FirstNonAggregator, "worker1");
        for next in [0, -1, 4242, i32::MAX, i32::MIN] {
            let mut o = outcome_with(vec![]);
            o.next_stage = next;
            let why = cause(validate_outcome(&c, &o));
            assert!(why.contains("not in its stage table"), "{next}: {why}");
        }
        let mut o = outcome_with(vec![]);
        o.next_stage = halo_testkit::INITIALIZED;
        let why = cause(validate_outcome(&c, &o));
        assert!(why.contains("does not come after"), "{why}");
    }

    #[test]
    fn requisition_params_must_decode_for_this_protocol() {
        let f = Fixture::new();
        let c = f.check(Role::FirstNonAggregator, "worker1");
        let mut o = outcome_with(vec![]);
        o.requisition_params = Some(vec![0xff, 0xff, 0xff, 0xff]);
        let why = cause(validate_outcome(&c, &o));
        assert!(why.contains("not a RequisitionParams message"), "{why}");
        let llv2 = RequisitionParams {
            protocol: Some(halo_proto::system::v1alpha::computation_participant::requisition_params::Protocol::LiquidLegionsV2(
                Default::default(),
            )),
            ..Default::default()
        };
        o.requisition_params = Some(llv2.encode_to_vec());
        let why = cause(validate_outcome(&c, &o));
        assert!(why.contains("liquid_legions_v2"), "{why}");
        o.requisition_params = Some(Vec::new());
        let why = cause(validate_outcome(&c, &o));
        assert!(why.contains("protocol none"), "{why}");
        let hmss = RequisitionParams {
            protocol: Some(halo_proto::system::v1alpha::computation_participant::requisition_params::Protocol::HonestMajorityShareShuffle(
                Default::default(),
            )),
            ..Default::default()
        };
        o.requisition_params = Some(hmss.encode_to_vec());
        validate_outcome(&c, &o).unwrap();
    }

    #[test]
    fn results_come_only_from_the_aggregator_at_the_end() {
        let f = Fixture::new();
        let result = ComputationResult {
            encrypted_result: b"sealed".to_vec(),
            result_public_key: b"pk".to_vec(),
        };
        let done = StageOutcome {
            next_stage: f.terminal(),
            result: Some(result.clone()),
            ..Default::default()
        };
        let agg = f.check(Role::Aggregator, "aggregator");
        validate_outcome(&agg, &done).unwrap();
        let why = cause(validate_outcome(
            &f.check(Role::FirstNonAggregator, "worker1"),
            &done,
        ));
        assert!(why.contains("not the aggregator"), "{why}");
        let mut empty = done.clone();
        empty.result = Some(ComputationResult {
            encrypted_result: Vec::new(),
            result_public_key: Vec::new(),
        });
        let why = cause(validate_outcome(&agg, &empty));
        assert!(why.contains("ciphertext is empty"), "{why}");
        let early = StageOutcome {
            next_stage: halo_testkit::WAIT_TO_START,
            result: Some(result),
            ..Default::default()
        };
        let why = cause(validate_outcome(&agg, &early));
        assert!(why.contains("not terminal"), "{why}");
        let mut big = done.clone();
        big.result = Some(ComputationResult {
            encrypted_result: vec![1; 1001],
            result_public_key: Vec::new(),
        });
        let why = cause(validate_outcome(&agg, &big));
        assert!(why.contains("exceed the limit"), "{why}");
    }

    #[test]
    fn start_outcomes_are_checked() {
        let f = Fixture::new();
        let limits = OutcomeLimits {
            max_output_bytes: 10,
            max_state_bytes: 10,
        };
        let ok = StartOutcome {
            initial_stage: halo_testkit::INITIALIZED,
            state: vec![0; 10],
        };
        validate_start(&f.pin, &f.stages, limits, &ok).unwrap();
        let e = validate_start(
            &f.pin,
            &f.stages,
            limits,
            &StartOutcome {
                initial_stage: 4242,
                state: Vec::new(),
            },
        )
        .unwrap_err();
        assert!(e.cause.contains("initial stage 4242"), "{e}");
        let e = validate_start(
            &f.pin,
            &f.stages,
            limits,
            &StartOutcome {
                initial_stage: halo_testkit::INITIALIZED,
                state: vec![0; 11],
            },
        )
        .unwrap_err();
        assert!(e.cause.contains("state of 11 bytes"), "{e}");
    }
}

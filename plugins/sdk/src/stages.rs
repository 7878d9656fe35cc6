//! Building and checking a stage table.
//!
//! Stage numbers are the values of the system `ComputationStage` enum of the protocol the
//! plugin serves (e.g. `HonestMajorityShareShuffleStage.Stage`), so `GetComputationStage`
//! stays wire-compatible, and they must increase along every role's path: the host compares
//! them to tell "before" from "past".

use std::collections::BTreeSet;

use crate::types::{
    Description, InputSource, KingdomState, QueuedStage, StageInfo, StageKind, WaitInputs,
    WaitKingdom,
};

/// A builder for a stage table:
///
/// ```
/// use halo_plugin_sdk::stages::StageTable;
/// use halo_plugin_sdk::types::{InputSource, KingdomState, Role};
///
/// let stages = StageTable::new()
///     .queued(1, "INITIALIZED", &[], false)
///     .wait_kingdom(2, "WAIT_TO_START", KingdomState::PendingComputation, 4)
///     .wait_inputs(3, "WAIT_INPUT", 1, InputSource::Roles(vec![Role::FirstNonAggregator]), 4)
///     .queued(4, "SETUP_PHASE", &[1], true)
///     .terminal(9, "COMPLETE")
///     .build();
/// assert_eq!(stages.len(), 5);
/// ```
#[derive(Clone, Debug, Default)]
pub struct StageTable {
    stages: Vec<StageInfo>,
}

impl StageTable {
    pub fn new() -> Self {
        Self::default()
    }

    /// A stage the host claims and runs with `execute`. It reads the payloads received under
    /// the AdvanceComputation descriptions `inputs` and, if `requisitions`, the requisition
    /// data fulfilled at this duchy.
    pub fn queued(self, number: i32, name: &str, inputs: &[i32], requisitions: bool) -> Self {
        self.push(
            number,
            name,
            StageKind::Queued(QueuedStage {
                inputs: inputs.to_vec(),
                requisitions,
            }),
        )
    }

    /// A stage parked until a payload under `description` arrived from every sender in
    /// `from`; the host then moves to `next`.
    pub fn wait_inputs(
        self,
        number: i32,
        name: &str,
        description: i32,
        from: InputSource,
        next: i32,
    ) -> Self {
        self.push(
            number,
            name,
            StageKind::WaitInputs(WaitInputs {
                description,
                from,
                next,
            }),
        )
    }

    /// A stage parked until the Kingdom reports `state` (or a later non-terminal state); the
    /// host then moves to `next`.
    pub fn wait_kingdom(self, number: i32, name: &str, state: KingdomState, next: i32) -> Self {
        self.push(
            number,
            name,
            StageKind::WaitKingdom(WaitKingdom { state, next }),
        )
    }

    /// The computation is done at this duchy.
    pub fn terminal(self, number: i32, name: &str) -> Self {
        self.push(number, name, StageKind::Terminal)
    }

    pub fn build(self) -> Vec<StageInfo> {
        self.stages
    }

    fn push(mut self, number: i32, name: &str, kind: StageKind) -> Self {
        self.stages.push(StageInfo {
            number,
            name: name.into(),
            kind,
        });
        self
    }
}

impl From<StageTable> for Vec<StageInfo> {
    fn from(t: StageTable) -> Self {
        t.build()
    }
}

/// Checks a description the way the host will: a non-empty id, a `MAJOR.MINOR.PATCH`
/// version, unique positive stage numbers and names, at least one queued and one terminal
/// stage, and every `next` naming a later stage of the table. Call it from a unit test.
pub fn validate(d: &Description) -> Result<(), String> {
    if d.id.is_empty() {
        return Err("empty protocol id".into());
    }
    let parts: Vec<&str> = d.version.split('.').collect();
    if parts.len() != 3
        || parts
            .iter()
            .any(|p| p.is_empty() || p.parse::<u64>().is_err())
    {
        return Err(format!("version {:?} is not MAJOR.MINOR.PATCH", d.version));
    }
    let mut numbers = BTreeSet::new();
    let mut names = BTreeSet::new();
    for s in &d.stages {
        if s.number <= 0 {
            return Err(format!("stage {} ({}) must be positive", s.number, s.name));
        }
        if !numbers.insert(s.number) {
            return Err(format!("stage number {} appears twice", s.number));
        }
        if s.name.is_empty() || !names.insert(s.name.as_str()) {
            return Err(format!("stage name {:?} is empty or appears twice", s.name));
        }
    }
    if !d
        .stages
        .iter()
        .any(|s| matches!(s.kind, StageKind::Queued(_)))
    {
        return Err("no queued stage".into());
    }
    if !d
        .stages
        .iter()
        .any(|s| matches!(s.kind, StageKind::Terminal))
    {
        return Err("no terminal stage".into());
    }
    for s in &d.stages {
        let next = match &s.kind {
            StageKind::WaitInputs(w) => w.next,
            StageKind::WaitKingdom(w) => w.next,
            StageKind::Queued(_) | StageKind::Terminal => continue,
        };
        if !numbers.contains(&next) {
            return Err(format!(
                "stage {} ({}) goes to unknown stage {next}",
                s.number, s.name
            ));
        }
        if next <= s.number {
            return Err(format!(
                "stage {} ({}) goes back to stage {next}; numbers must increase",
                s.number, s.name
            ));
        }
    }
    Ok(())
}

/// The smallest valid protocol: one queued stage (1, `INITIALIZED`) then a terminal stage
/// (9, `COMPLETE`), serving HMSS. For test fixtures and first experiments.
pub fn single_stage(id: &str, version: &str) -> Description {
    Description {
        id: id.into(),
        version: version.into(),
        serves: crate::types::SystemProtocol::HonestMajorityShareShuffle,
        stages: StageTable::new()
            .queued(1, "INITIALIZED", &[], false)
            .terminal(9, "COMPLETE")
            .build(),
    }
}

/// The start outcome matching [`single_stage`]: begin at stage 1 with empty state.
pub fn single_stage_start() -> crate::types::StartOutcome {
    crate::types::StartOutcome {
        initial_stage: 1,
        state: Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::{Role, SystemProtocol};

    fn desc(stages: StageTable) -> Description {
        Description {
            id: "t".into(),
            version: "1.0.0".into(),
            serves: SystemProtocol::HonestMajorityShareShuffle,
            stages: stages.build(),
        }
    }

    #[test]
    fn valid_table() {
        let d = desc(
            StageTable::new()
                .queued(1, "A", &[], false)
                .wait_inputs(2, "B", 1, InputSource::Roles(vec![Role::Aggregator]), 3)
                .wait_kingdom(3, "C", KingdomState::PendingComputation, 4)
                .terminal(4, "D"),
        );
        validate(&d).unwrap();
    }

    #[test]
    fn invalid_tables() {
        let base = || StageTable::new().queued(1, "A", &[], false);
        assert!(validate(&desc(base())).unwrap_err().contains("terminal"));
        assert!(
            validate(&desc(base().terminal(1, "B")))
                .unwrap_err()
                .contains("twice")
        );
        assert!(
            validate(&desc(base().terminal(2, "A")))
                .unwrap_err()
                .contains("twice")
        );
        let back = base()
            .wait_kingdom(3, "W", KingdomState::PendingComputation, 1)
            .terminal(9, "Z");
        assert!(validate(&desc(back)).unwrap_err().contains("increase"));
        let unknown = base()
            .wait_kingdom(3, "W", KingdomState::PendingComputation, 7)
            .terminal(9, "Z");
        assert!(validate(&desc(unknown)).unwrap_err().contains("unknown"));
        let mut d = desc(base().terminal(9, "Z"));
        d.version = "1.0".into();
        assert!(validate(&d).unwrap_err().contains("version"));
    }
}

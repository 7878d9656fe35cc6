//! Conveniences on the generated WIT types.

use crate::proto::halo::v1::MeasurementSpec;
use crate::proto::system::v1alpha::Computation;
use crate::types::{ComputationContext, Participant, Role, StageError, StageOutcome};

impl StageError {
    /// Worth retrying later (peer not ready, resource busy, ...).
    pub fn transient(message: impl Into<String>) -> Self {
        StageError::Transient(message.into())
    }

    /// The computation cannot succeed.
    pub fn permanent(message: impl Into<String>) -> Self {
        StageError::Permanent(message.into())
    }

    /// The inputs or parameters are invalid; the computation fails.
    pub fn invalid_input(message: impl Into<String>) -> Self {
        StageError::InvalidInput(message.into())
    }

    pub fn is_transient(&self) -> bool {
        matches!(self, StageError::Transient(_))
    }

    pub fn message(&self) -> &str {
        match self {
            StageError::Transient(m) | StageError::Permanent(m) | StageError::InvalidInput(m) => m,
        }
    }
}

/// An outcome that moves to stage 0 and does nothing else; write
/// `StageOutcome { next_stage: N, sends: .., ..Default::default() }`.
impl Default for StageOutcome {
    fn default() -> Self {
        StageOutcome {
            next_stage: 0,
            state: None,
            requisition_params: None,
            confirm: false,
            result: None,
            sends: Vec::new(),
        }
    }
}

impl StageOutcome {
    /// Moves to `next_stage` with no effects.
    pub fn to(next_stage: i32) -> Self {
        StageOutcome {
            next_stage,
            ..Default::default()
        }
    }
}

impl ComputationContext {
    /// The first participant with `role`.
    pub fn participant(&self, role: Role) -> Option<&Participant> {
        self.participants.iter().find(|p| p.role == role)
    }

    /// The duchy id of the first participant with `role`, or a permanent error.
    pub fn peer(&self, role: Role) -> Result<String, StageError> {
        self.participant(role)
            .map(|p| p.duchy_id.clone())
            .ok_or_else(|| StageError::Permanent(format!("no participant with role {role:?}")))
    }

    /// The system `Computation` as last seen from the Kingdom (undecodable: invalid input).
    pub fn computation(&self) -> Result<Computation, StageError> {
        prost::Message::decode(self.computation.as_slice())
            .map_err(|e| StageError::InvalidInput(format!("computation: {e}")))
    }

    /// The `MeasurementSpec` carried in the computation (undecodable: invalid input).
    pub fn measurement_spec(&self) -> Result<MeasurementSpec, StageError> {
        let c = self.computation()?;
        prost::Message::decode(c.measurement_spec.as_slice())
            .map_err(|e| StageError::InvalidInput(format!("measurement spec: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::SystemProtocol;
    use prost::Message;

    fn ctx(computation: Vec<u8>) -> ComputationContext {
        ComputationContext {
            global_id: "g".into(),
            duchy_id: "d1".into(),
            role: Role::Aggregator,
            protocol: SystemProtocol::HonestMajorityShareShuffle,
            computation,
            participants: vec![Participant {
                duchy_id: "d2".into(),
                role: Role::FirstNonAggregator,
                requisition_params: vec![],
            }],
            state: vec![],
            attempt: 1,
        }
    }

    #[test]
    fn context_helpers() {
        let spec = MeasurementSpec {
            maximum_frequency: 5,
            ..Default::default()
        };
        let c = Computation {
            measurement_spec: spec.encode_to_vec(),
            ..Default::default()
        };
        let ctx = ctx(c.encode_to_vec());
        assert_eq!(ctx.measurement_spec().unwrap(), spec);
        assert_eq!(ctx.peer(Role::FirstNonAggregator).unwrap(), "d2");
        assert!(ctx.peer(Role::SecondNonAggregator).is_err());
        let bad = super::tests::ctx(vec![0xff]);
        assert!(matches!(
            bad.computation(),
            Err(StageError::InvalidInput(_))
        ));
        assert_eq!(StageOutcome::to(3).next_stage, 3);
        assert!(StageError::transient("x").is_transient());
        assert_eq!(
            StageError::invalid_input("bad epsilon").message(),
            "bad epsilon"
        );
    }
}

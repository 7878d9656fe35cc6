//! Errors of the HMSS math (spec §6.1 constraints, §6.4 / §6.5 validation, §5.1 sampler limits).

use core::fmt;

/// Every failure the HMSS math can report (spec §6.4, §6.5 validation; §5.1 sampler limits).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HmssError {
    /// A parameter is out of range (e.g. `q < 2`, `width ∉ (0, 1]`, mismatched lengths); the
    /// reference reports these as `InvalidArgument` (§6.1, §6.4 step 1, §6.5).
    InvalidArgument(String),
    /// A value that the protocol guarantees cannot occur (e.g. a combined register above
    /// `max_combined_frequency` other than the sentinel, §6.5 step 1); `Internal` in the reference.
    Internal(String),
    /// Malformed wire bytes (§6.2 `FrequencyVector`).
    Decode(String),
}

impl fmt::Display for HmssError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HmssError::InvalidArgument(m) => write!(f, "invalid argument: {m}"),
            HmssError::Internal(m) => write!(f, "internal: {m}"),
            HmssError::Decode(m) => write!(f, "decode: {m}"),
        }
    }
}

impl std::error::Error for HmssError {}

pub(crate) fn invalid(msg: impl Into<String>) -> HmssError {
    HmssError::InvalidArgument(msg.into())
}

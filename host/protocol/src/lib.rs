//! The protocol contract: everything the host needs to know about an MPC protocol.
//!
//! The host knows no protocol. A protocol implementation (a sandboxed wasm plugin, or the
//! native test protocol of `halo-testkit`) describes its stage table and computes each queued
//! stage; the host drives any protocol generically from that description: it claims queued
//! stages, parks waiting stages until their inputs or the Kingdom state arrive, delivers
//! effects (Kingdom calls, sends to peers) and persists opaque plugin state.

pub mod names;
pub mod roles;
mod system_api;

pub use system_api::UnsupportedProtocol;

use std::fmt;
use std::sync::Arc;

use halo_proto::system::v1alpha::computation::State as ComputationState;
use serde::{Deserialize, Serialize};

/// Which system protocol a computation runs (the `MpcProtocolConfig` oneof).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum SystemProtocol {
    LiquidLegionsV2,
    ReachOnlyLiquidLegionsV2,
    HonestMajorityShareShuffle,
}

impl SystemProtocol {
    pub fn as_i64(self) -> i64 {
        match self {
            SystemProtocol::LiquidLegionsV2 => 1,
            SystemProtocol::ReachOnlyLiquidLegionsV2 => 2,
            SystemProtocol::HonestMajorityShareShuffle => 3,
        }
    }

    pub fn from_i64(v: i64) -> Option<Self> {
        match v {
            1 => Some(SystemProtocol::LiquidLegionsV2),
            2 => Some(SystemProtocol::ReachOnlyLiquidLegionsV2),
            3 => Some(SystemProtocol::HonestMajorityShareShuffle),
            _ => None,
        }
    }

    /// The config name used by the reference (`liquid_legions_v2`, ...).
    pub fn config_name(self) -> &'static str {
        match self {
            SystemProtocol::LiquidLegionsV2 => "liquid_legions_v2",
            SystemProtocol::ReachOnlyLiquidLegionsV2 => "reach_only_liquid_legions_v2",
            SystemProtocol::HonestMajorityShareShuffle => "honest_majority_share_shuffle",
        }
    }
}

impl fmt::Display for SystemProtocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.config_name())
    }
}

/// A duchy's role in a computation (static per duchy and protocol).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Role {
    Aggregator,
    NonAggregator,
    FirstNonAggregator,
    SecondNonAggregator,
}

impl Role {
    pub fn as_i64(self) -> i64 {
        match self {
            Role::Aggregator => 1,
            Role::NonAggregator => 2,
            Role::FirstNonAggregator => 3,
            Role::SecondNonAggregator => 4,
        }
    }

    pub fn from_i64(v: i64) -> Option<Self> {
        match v {
            1 => Some(Role::Aggregator),
            2 => Some(Role::NonAggregator),
            3 => Some(Role::FirstNonAggregator),
            4 => Some(Role::SecondNonAggregator),
            _ => None,
        }
    }
}

/// Where a waiting stage's inputs come from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum InputSource {
    /// One payload from every participant that has one of these roles.
    Roles(Vec<Role>),
    /// Exactly one payload from any other participant.
    AnyOne,
}

/// How the host treats a stage.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StageKind {
    /// The host claims it and calls [`Protocol::execute`]. `inputs` lists the
    /// AdvanceComputation descriptions whose received payloads the stage reads;
    /// `requisitions` says whether it reads the locally fulfilled requisition data.
    Queued {
        inputs: Vec<i32>,
        requisitions: bool,
    },
    /// Parked until a payload under `description` arrived from every expected sender.
    WaitInputs {
        description: i32,
        from: InputSource,
        next: i32,
    },
    /// Parked until the Kingdom reports the computation in `state` (or a later
    /// non-terminal state).
    WaitKingdom { state: ComputationState, next: i32 },
    /// The computation is done at this duchy.
    Terminal,
}

/// One row of a protocol's stage table. Stage numbers are those of the system
/// `ComputationStage` enums, so `GetComputationStage` is wire-compatible, and they
/// increase along every role's path (the host compares them to tell "before" from "past").
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StageInfo {
    pub number: i32,
    pub name: String,
    pub kind: StageKind,
}

/// Identity of the exact protocol implementation a computation is pinned to.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct PluginPin {
    pub name: String,
    pub version: String,
    /// Hex SHA-256 of the implementation (component bytes for plugins).
    pub digest: String,
}

impl fmt::Display for PluginPin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}@{} ({})",
            self.name,
            self.version,
            short(&self.digest)
        )
    }
}

fn short(s: &str) -> &str {
    s.get(..12).unwrap_or(s)
}

/// A participant of the computation as the plugin sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Participant {
    pub duchy_id: String,
    pub role: Role,
    /// Serialized `ComputationParticipant.RequisitionParams` (empty until published).
    pub requisition_params: Vec<u8>,
}

/// A signature made with the duchy's key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StageSignature {
    /// Resource name of the certificate that verifies it.
    pub certificate: String,
    /// ECDSA P-256 / SHA-256 signature, ASN.1 DER.
    pub signature: Vec<u8>,
    /// Object identifier of the signature algorithm.
    pub algorithm_oid: String,
}

/// Why an identity call failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum IdentityFailure {
    /// The signature or its certificate is not valid, or there is no signing key.
    #[error("{0}")]
    Invalid(String),
    /// The check could not be made now (certificate fetch failed); worth retrying.
    #[error("{0}")]
    Unavailable(String),
}

/// The identity services a stage may use (the plugins' `identity` import): signing with the
/// duchy's key, and checking other principals' signatures against certificates the host
/// resolves and checks. Calls may block (certificate fetches); stages run on blocking threads.
pub trait StageIdentity: Send + Sync + fmt::Debug {
    /// Signs `message` with the duchy's key.
    fn sign(&self, message: &[u8]) -> Result<StageSignature, IdentityFailure>;
    /// Checks that `signature` over `message` was made with the key of the certificate
    /// named `certificate`, issued by the trusted root of the principal that owns it.
    fn verify(
        &self,
        certificate: &str,
        message: &[u8],
        signature: &[u8],
        algorithm_oid: &str,
    ) -> Result<(), IdentityFailure>;
}

/// What a stage execution knows about its computation.
#[derive(Clone, Debug)]
pub struct ComputationContext {
    pub global_id: String,
    pub duchy_id: String,
    pub role: Role,
    pub protocol: SystemProtocol,
    /// Serialized system `Computation` as last seen from the Kingdom.
    pub computation: Vec<u8>,
    pub participants: Vec<Participant>,
    /// Opaque plugin-private state from earlier stages.
    pub state: Vec<u8>,
    /// 1-based attempt number of this stage.
    pub attempt: u32,
    /// The duchy's identity services (None: the host offers none, e.g. a benchmark).
    pub identity: Option<Arc<dyn StageIdentity>>,
}

/// Where an input payload came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum InputOrigin {
    /// AdvanceComputation payload from a peer duchy.
    Peer { duchy_id: String, description: i32 },
    /// A requisition fulfilled at this duchy: `header` is the serialized
    /// `FulfillRequisitionRequest.Header` the data provider sent.
    Requisition {
        requisition_id: String,
        header: Vec<u8>,
    },
}

#[derive(Clone, Debug)]
pub struct StageInput {
    pub origin: InputOrigin,
    pub data: Vec<u8>,
}

/// A payload to deliver to a peer duchy with AdvanceComputation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Outgoing {
    pub to: String,
    pub description: i32,
    pub payload: Vec<u8>,
}

/// The encrypted result for the Kingdom (aggregator only).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ComputationResult {
    pub encrypted_result: Vec<u8>,
    pub result_public_key: Vec<u8>,
}

/// What a queued stage produced.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StageOutcome {
    pub next_stage: i32,
    /// New plugin state (None = unchanged).
    pub state: Option<Vec<u8>>,
    /// Serialized `ComputationParticipant.RequisitionParams` to publish; the host fills in
    /// `duchy_certificate`.
    pub requisition_params: Option<Vec<u8>>,
    /// Confirm participation (`ConfirmComputationParticipant`).
    pub confirm: bool,
    pub result: Option<ComputationResult>,
    pub sends: Vec<Outgoing>,
}

/// Result of [`Protocol::start`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StartOutcome {
    pub initial_stage: i32,
    pub state: Vec<u8>,
}

/// A stage failure reported by the protocol (data, not a crash).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum StageError {
    /// Worth retrying later (peer not ready, resource busy, ...).
    #[error("transient: {0}")]
    Transient(String),
    /// The computation cannot succeed.
    #[error("permanent: {0}")]
    Permanent(String),
    /// The inputs or parameters are invalid; the computation fails.
    #[error("invalid input: {0}")]
    InvalidInput(String),
}

impl StageError {
    pub fn is_transient(&self) -> bool {
        matches!(self, StageError::Transient(_))
    }
}

/// One protocol implementation (one version). Calls may block: the host runs them on
/// blocking threads.
pub trait Protocol: Send + Sync {
    fn pin(&self) -> PluginPin;
    fn system_protocol(&self) -> SystemProtocol;
    fn stages(&self) -> Vec<StageInfo>;
    /// Called once when the duchy first learns of a computation.
    fn start(&self, ctx: &ComputationContext) -> Result<StartOutcome, StageError>;
    /// Runs one queued stage.
    fn execute(
        &self,
        ctx: &ComputationContext,
        stage: i32,
        inputs: Vec<StageInput>,
    ) -> Result<StageOutcome, StageError>;
    /// The computation ended here (completed or failed): drop anything kept for it between
    /// stages (e.g. the wasm runtime's fixed-base tables). Called at most once per ending;
    /// a computation that is never reported is forgotten anyway when caches fill up.
    fn computation_ended(&self, _global_id: &str) {}
}

/// Where the host finds protocol implementations.
pub trait ProtocolRegistry: Send + Sync {
    /// The implementation new computations of `protocol` should pin (newest compatible).
    fn select(&self, protocol: SystemProtocol) -> Option<Arc<dyn Protocol>>;
    /// The exact implementation a running computation pinned.
    fn pinned(&self, pin: &PluginPin) -> Option<Arc<dyn Protocol>>;
}

/// A fixed set of implementations (tests, and hosts without a plugin directory).
#[derive(Default, Clone)]
pub struct StaticRegistry {
    protocols: Vec<Arc<dyn Protocol>>,
}

impl StaticRegistry {
    pub fn new(protocols: Vec<Arc<dyn Protocol>>) -> Self {
        Self { protocols }
    }
}

impl ProtocolRegistry for StaticRegistry {
    fn select(&self, protocol: SystemProtocol) -> Option<Arc<dyn Protocol>> {
        self.protocols
            .iter()
            .rev()
            .find(|p| p.system_protocol() == protocol)
            .cloned()
    }

    fn pinned(&self, pin: &PluginPin) -> Option<Arc<dyn Protocol>> {
        self.protocols.iter().find(|p| &p.pin() == pin).cloned()
    }
}

/// Finds a stage in a table.
pub fn find_stage(stages: &[StageInfo], number: i32) -> Option<&StageInfo> {
    stages.iter().find(|s| s.number == number)
}

// ---- payload bounds -----------------------------------------------------------------------

/// Bytes one encoded register may take on the wire: a `uint32` varint needs at most 5 (and a
/// fixed-width little-endian `u32`, as the test protocol sends, 4).
pub const MAX_REGISTER_BYTES: u64 = 5;
/// Liquid Legions v2: bytes of one sketch register (three ElGamal ciphertexts, each two
/// compressed P-256 points of 33 bytes).
pub const LLV2_REGISTER_BYTES: u64 = 3 * 2 * 33;
/// Liquid Legions v2: bytes of one ElGamal ciphertext.
pub const LLV2_CIPHERTEXT_BYTES: u64 = 2 * 33;
/// Liquid Legions v2: bytes of one flag-count tuple (four ciphertexts).
pub const LLV2_TUPLE_BYTES: u64 = 4 * 2 * 33;
/// Allowance per requisition for what travels beside the registers (sealed seeds, certificate
/// names, signatures).
pub const PER_REQUISITION_ALLOWANCE: u64 = 16 << 10;
/// Fixed allowance for protobuf framing and small fields.
pub const PAYLOAD_ALLOWANCE: u64 = 64 << 10;

/// The configured limits a payload bound is derived under.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PayloadLimits {
    /// Largest frequency vector (HMSS `register_count`) a data provider may send, and so the
    /// largest vector any stage carries.
    pub max_register_count: u64,
    /// Ceiling of any one payload, whatever the protocol config says.
    pub ceiling: u64,
}

/// What a bound is asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PayloadKind {
    /// One AdvanceComputation payload (one sender, one description) of any stage.
    StageInput,
    /// The body of one requisition; `register_count` is what the fulfilment header declares
    /// (HMSS), if anything.
    Requisition { register_count: Option<u64> },
}

/// The most bytes one payload of computation `c` may carry, derived from the protocol's
/// expected sizes (never above `limits.ceiling`):
///
/// * Honest Majority Share Shuffle: a payload is at most one frequency vector —
///   `register_count` registers (the header's for a requisition, else the configured
///   maximum) of at most [`MAX_REGISTER_BYTES`] each — plus a seed allowance per requisition.
/// * Liquid Legions v2 (and reach-only): per register of the sketch (`max_size`), the largest
///   of what a stage carries — every requisition's register plus each duchy's noise (setup,
///   phase one), a flag-count tuple plus each duchy's noise tuples (phase two), `MF − 1`
///   matrix ciphertexts with the same allowance (phase three); one requisition is one sketch
///   of [`LLV2_REGISTER_BYTES`] per register.
/// * Anything else (unknown protocol): the ceiling.
pub fn payload_bound(
    c: &halo_proto::system::v1alpha::Computation,
    kind: PayloadKind,
    limits: &PayloadLimits,
) -> u64 {
    use halo_proto::prost::Message as _;
    use halo_proto::system::v1alpha::computation::mpc_protocol_config::Protocol as P;
    let requisitions = c.requisitions.len() as u64;
    let protocol = c
        .mpc_protocol_config
        .as_ref()
        .and_then(|m| m.protocol.as_ref());
    let bound = match protocol {
        Some(P::HonestMajorityShareShuffle(_)) => {
            let registers = match kind {
                PayloadKind::Requisition {
                    register_count: Some(n),
                } => n.min(limits.max_register_count),
                _ => limits.max_register_count,
            };
            registers
                .saturating_mul(MAX_REGISTER_BYTES)
                .saturating_add(requisitions.saturating_mul(PER_REQUISITION_ALLOWANCE))
                .saturating_add(PAYLOAD_ALLOWANCE)
        }
        Some(P::LiquidLegionsV2(p)) | Some(P::ReachOnlyLiquidLegionsV2(p)) => {
            let max_size = p
                .sketch_params
                .as_ref()
                .and_then(|s| u64::try_from(s.max_size).ok())
                .filter(|n| *n > 0)
                .unwrap_or(limits.max_register_count);
            let per_register = match kind {
                PayloadKind::Requisition { .. } => LLV2_REGISTER_BYTES,
                PayloadKind::StageInput => {
                    // Stage payloads carry, per sketch register: the sketches of every
                    // requisition plus each duchy's noise registers (setup, phase one), a
                    // 264-byte flag-count tuple plus each duchy's noise tuples (phase two),
                    // or `MF − 1` 66-byte matrix elements (phase three).
                    let duchies = (c.computation_participants.len() as u64).max(1);
                    let maximum_frequency = halo_proto::halo::v1::MeasurementSpec::decode(
                        c.measurement_spec.as_slice(),
                    )
                    .ok()
                    .and_then(|s| u64::try_from(s.maximum_frequency).ok())
                    .unwrap_or(1)
                    .max(1);
                    let setup = LLV2_REGISTER_BYTES
                        .saturating_mul(requisitions.max(1).saturating_add(duchies + 1));
                    let tuples = LLV2_TUPLE_BYTES.saturating_mul(duchies + 2);
                    let matrix = LLV2_CIPHERTEXT_BYTES
                        .saturating_mul(maximum_frequency - 1)
                        .saturating_mul(duchies + 2);
                    setup.max(tuples).max(matrix)
                }
            };
            max_size
                .saturating_mul(per_register)
                .saturating_add(PAYLOAD_ALLOWANCE)
        }
        Some(P::TrusTee(_)) | None => limits.ceiling,
    };
    bound.min(limits.ceiling)
}

/// Why a fulfilment header's declared size is refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DeclaredSizeError {
    #[error("negative register_count {0}")]
    Negative(i64),
    #[error("register_count {declared} is above this duchy's maximum of {max}")]
    AboveMaximum { declared: u64, max: u64 },
}

/// The most bytes the body of one requisition fulfilment may carry: [`payload_bound`] under
/// the register count the header declares (if its protocol declares one), refused before any
/// byte of the body is read when the declaration is negative or above the configured maximum.
pub fn requisition_payload_bound(
    c: &halo_proto::system::v1alpha::Computation,
    header: Option<&halo_proto::api::v2alpha::fulfill_requisition_request::header::Protocol>,
    limits: &PayloadLimits,
) -> Result<u64, DeclaredSizeError> {
    let register_count = match header.map(SystemProtocol::declared_register_count) {
        None | Some(0) => None,
        Some(n) => {
            let n = u64::try_from(n).map_err(|_| DeclaredSizeError::Negative(n))?;
            if n > limits.max_register_count {
                return Err(DeclaredSizeError::AboveMaximum {
                    declared: n,
                    max: limits.max_register_count,
                });
            }
            Some(n)
        }
    };
    Ok(payload_bound(
        c,
        PayloadKind::Requisition { register_count },
        limits,
    ))
}

#[cfg(test)]
mod payload_bound_tests {
    use super::*;
    use halo_proto::prost::Message as _;
    use halo_proto::system::v1alpha::computation::MpcProtocolConfig;
    use halo_proto::system::v1alpha::computation::mpc_protocol_config::{
        self as mpc, Protocol as P, liquid_legions_v2 as llv2,
    };
    use halo_proto::system::v1alpha::{Computation, Requisition};

    fn computation(p: P, requisitions: usize) -> Computation {
        Computation {
            mpc_protocol_config: Some(MpcProtocolConfig { protocol: Some(p) }),
            requisitions: vec![Requisition::default(); requisitions],
            ..Default::default()
        }
    }

    const LIMITS: PayloadLimits = PayloadLimits {
        max_register_count: 1 << 20,
        ceiling: 1 << 30,
    };

    #[test]
    fn hmss_follows_register_count_and_requisitions() {
        let c = computation(P::HonestMajorityShareShuffle(Default::default()), 3);
        let stage = payload_bound(&c, PayloadKind::StageInput, &LIMITS);
        assert_eq!(stage, (1 << 20) * 5 + 3 * (16 << 10) + (64 << 10));
        // A declared register count narrows a requisition's bound...
        let small = payload_bound(
            &c,
            PayloadKind::Requisition {
                register_count: Some(1000),
            },
            &LIMITS,
        );
        assert_eq!(small, 5000 + 3 * (16 << 10) + (64 << 10));
        // ...but never widens it past the configured maximum.
        let huge = payload_bound(
            &c,
            PayloadKind::Requisition {
                register_count: Some(u64::MAX),
            },
            &LIMITS,
        );
        assert_eq!(huge, stage);
    }

    #[test]
    fn llv2_follows_sketch_size() {
        let p = mpc::LiquidLegionsV2 {
            sketch_params: Some(llv2::LiquidLegionsSketchParams {
                decay_rate: 12.0,
                max_size: 1000,
            }),
            ..Default::default()
        };
        // 2 requisitions, no participants listed (1 duchy), MF 1: the setup payload.
        let c = computation(P::LiquidLegionsV2(p), 2);
        assert_eq!(
            payload_bound(&c, PayloadKind::StageInput, &LIMITS),
            1000 * 198 * 4 + (64 << 10)
        );
        // Three duchies and MF 20: the phase-three matrix, 19 elements per register.
        let mut c = computation(P::LiquidLegionsV2(p), 2);
        c.computation_participants = vec![Default::default(); 3];
        c.measurement_spec = halo_proto::halo::v1::MeasurementSpec {
            maximum_frequency: 20,
            ..Default::default()
        }
        .encode_to_vec();
        assert_eq!(
            payload_bound(&c, PayloadKind::StageInput, &LIMITS),
            1000 * 66 * 19 * 5 + (64 << 10)
        );
        let c = computation(P::ReachOnlyLiquidLegionsV2(p), 2);
        assert_eq!(
            payload_bound(
                &c,
                PayloadKind::Requisition {
                    register_count: None
                },
                &LIMITS
            ),
            1000 * 198 + (64 << 10)
        );
    }

    #[test]
    fn declared_register_count_is_checked() {
        use halo_proto::api::v2alpha::fulfill_requisition_request::header::{
            HonestMajorityShareShuffle as H, Protocol as HP,
        };
        let c = computation(P::HonestMajorityShareShuffle(Default::default()), 1);
        let h = |n| {
            HP::HonestMajorityShareShuffle(H {
                register_count: n,
                ..Default::default()
            })
        };
        assert_eq!(
            requisition_payload_bound(&c, Some(&h(1000)), &LIMITS),
            Ok(5000 + (16 << 10) + (64 << 10))
        );
        assert_eq!(
            requisition_payload_bound(&c, Some(&h(0)), &LIMITS),
            requisition_payload_bound(&c, None, &LIMITS)
        );
        assert_eq!(
            requisition_payload_bound(&c, Some(&h(-1)), &LIMITS),
            Err(DeclaredSizeError::Negative(-1))
        );
        assert_eq!(
            requisition_payload_bound(&c, Some(&h((1 << 20) + 1)), &LIMITS),
            Err(DeclaredSizeError::AboveMaximum {
                declared: (1 << 20) + 1,
                max: 1 << 20
            })
        );
    }

    #[test]
    fn ceiling_caps_everything() {
        let limits = PayloadLimits {
            max_register_count: u64::MAX,
            ceiling: 12345,
        };
        let c = computation(P::HonestMajorityShareShuffle(Default::default()), 1000);
        assert_eq!(payload_bound(&c, PayloadKind::StageInput, &limits), 12345);
        assert_eq!(
            payload_bound(&Computation::default(), PayloadKind::StageInput, &limits),
            12345
        );
    }
}

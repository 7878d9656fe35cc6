//! Bindings for the `halo:mpc@1.x` world `protocol-plugin`, the host side of its imports, and
//! the conversions between the WIT types and [`halo_protocol`].
//!
//! One module per WIT major (STYLE 6): a future `halo:mpc@2.0.0` gets its own `v2` module
//! beside this one, and [`crate::plugin::Bindings`] holds one variant per major. Newer minors
//! of 1.x are served by the Linker's semver fallback, as long as every function a component
//! imports exists here.

use halo_proto::system::v1alpha::computation::State as ComputationState;
use halo_protocol as host;
use semver::Version;
use wasmtime::component::{HasSelf, Linker};

use crate::host::HostState;

wasmtime::component::bindgen!({
    path: "../../wit/halo-mpc@1.3.0",
    world: "protocol-plugin",
    imports: {
        // Asking for more randomness than the host hands out is a plugin bug: trap.
        "halo:mpc/random.fill": trappable,
        // A crypto call that outlives the stage deadline ends the call like a guest timeout.
        "halo:mpc/crypto": trappable,
    },
    with: {
        "halo:mpc/crypto.fixed-base": crate::p256::FixedBaseHandle,
    },
});

use halo::mpc::types as wit;

/// The WIT package this module serves.
pub const PACKAGE: &str = "halo:mpc";
/// The major version this module serves.
pub const MAJOR: u64 = 1;
/// Oldest version served (inclusive).
pub const MIN_VERSION: Version = Version::new(1, 0, 0);
/// Newest version whose every function this host implements. Components built against a
/// newer 1.x minor load as long as they only use functions this version has.
pub const MAX_VERSION: Version = Version::new(1, 3, 0);

pub(crate) use self::ProtocolPlugin as Plugin;
pub(crate) use self::ProtocolPluginPre as PluginPre;

/// Adds the `halo:mpc@1.x` host imports to `linker`.
pub(crate) fn add_to_linker(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    ProtocolPlugin::add_to_linker::<HostState, HasSelf<HostState>>(linker, |state| state)
}

// ---------------------------------------------------------------------------------------------
// Host imports: thin adapters over the version-independent implementations in `crate::host`.

impl wit::Host for HostState {}

impl halo::mpc::log::Host for HostState {
    fn log(&mut self, level: halo::mpc::log::Level, message: String) {
        use crate::host::LogLevel;
        use halo::mpc::log::Level;
        let level = match level {
            Level::Trace => LogLevel::Trace,
            Level::Debug => LogLevel::Debug,
            Level::Info => LogLevel::Info,
            Level::Warn => LogLevel::Warn,
            Level::Error => LogLevel::Error,
        };
        HostState::log(self, level, &message);
    }
}

impl halo::mpc::random::Host for HostState {
    fn fill(&mut self, len: u32) -> wasmtime::Result<Vec<u8>> {
        HostState::random_fill(self, len)
    }
}

impl halo::mpc::crypto::Host for HostState {
    fn aes256_ctr_keystream(
        &mut self,
        key: Vec<u8>,
        iv: Vec<u8>,
        offset: u64,
        len: u64,
    ) -> wasmtime::Result<Result<Vec<u8>, String>> {
        Ok(HostState::aes256_ctr_keystream(
            self, &key, &iv, offset, len,
        ))
    }

    fn p256_validate(&mut self, points: Vec<u8>) -> wasmtime::Result<Result<(), CryptoError>> {
        guest(HostState::p256_validate(self, &points))
    }

    fn p256_compress(&mut self, point: Vec<u8>) -> wasmtime::Result<Result<Vec<u8>, CryptoError>> {
        guest(HostState::p256_compress(self, &point))
    }

    fn p256_mul(
        &mut self,
        points: Vec<u8>,
        scalar: Vec<u8>,
    ) -> wasmtime::Result<Result<Vec<u8>, CryptoError>> {
        guest(HostState::p256_mul(self, &points, &scalar))
    }

    fn p256_mul_each(
        &mut self,
        points: Vec<u8>,
        scalars: Vec<u8>,
    ) -> wasmtime::Result<Result<Vec<u8>, CryptoError>> {
        guest(HostState::p256_mul_each(self, &points, &scalars))
    }

    fn p256_add(
        &mut self,
        a: Vec<u8>,
        b: Vec<u8>,
    ) -> wasmtime::Result<Result<Vec<u8>, CryptoError>> {
        guest(HostState::p256_add_sub(self, &a, &b, false))
    }

    fn p256_sub(
        &mut self,
        a: Vec<u8>,
        b: Vec<u8>,
    ) -> wasmtime::Result<Result<Vec<u8>, CryptoError>> {
        guest(HostState::p256_add_sub(self, &a, &b, true))
    }

    fn p256_negate(&mut self, points: Vec<u8>) -> wasmtime::Result<Result<Vec<u8>, CryptoError>> {
        guest(HostState::p256_negate(self, &points))
    }

    fn p256_multiples(
        &mut self,
        point: Vec<u8>,
        count: u32,
    ) -> wasmtime::Result<Result<Vec<u8>, CryptoError>> {
        guest(HostState::p256_multiples(self, &point, count))
    }

    fn p256_hash_to_curve(
        &mut self,
        messages: Vec<Vec<u8>>,
    ) -> wasmtime::Result<Result<Hashed, CryptoError>> {
        let r = HostState::p256_hash_to_curve(self, &messages)?;
        Ok(r.map(|(points, tries)| Hashed { points, tries })
            .map_err(crypto_error_to_wit))
    }

    fn p256_random_scalars(
        &mut self,
        count: u32,
    ) -> wasmtime::Result<Result<Vec<u8>, CryptoError>> {
        guest(HostState::p256_random_scalars(self, count))
    }

    fn elgamal_encrypt(
        &mut self,
        key: Resource<FixedBaseHandle>,
        plaintexts: Vec<u8>,
    ) -> wasmtime::Result<Result<Vec<u8>, CryptoError>> {
        Ok(HostState::elgamal_encrypt(self, &key, &plaintexts)?.map_err(crypto_error_to_wit))
    }

    fn elgamal_encrypt_zero(
        &mut self,
        key: Resource<FixedBaseHandle>,
        count: u32,
    ) -> wasmtime::Result<Result<Vec<u8>, CryptoError>> {
        Ok(HostState::elgamal_encrypt_zero(self, &key, count)?.map_err(crypto_error_to_wit))
    }

    fn elgamal_rerandomize(
        &mut self,
        key: Resource<FixedBaseHandle>,
        ciphertexts: Vec<u8>,
    ) -> wasmtime::Result<Result<Vec<u8>, CryptoError>> {
        Ok(HostState::elgamal_rerandomize(self, &key, &ciphertexts)?.map_err(crypto_error_to_wit))
    }

    fn elgamal_decrypt(
        &mut self,
        secret: Vec<u8>,
        ciphertexts: Vec<u8>,
    ) -> wasmtime::Result<Result<Vec<u8>, CryptoError>> {
        guest(HostState::elgamal_with_scalar(
            self,
            "secret",
            &secret,
            &ciphertexts,
            halo_p256::ops::decrypt,
        ))
    }

    fn elgamal_is_zero(
        &mut self,
        secret: Vec<u8>,
        ciphertexts: Vec<u8>,
    ) -> wasmtime::Result<Result<Vec<bool>, CryptoError>> {
        guest(HostState::elgamal_is_zero(self, &secret, &ciphertexts))
    }

    fn elgamal_partial_decrypt(
        &mut self,
        secret: Vec<u8>,
        ciphertexts: Vec<u8>,
    ) -> wasmtime::Result<Result<Vec<u8>, CryptoError>> {
        guest(HostState::elgamal_with_scalar(
            self,
            "secret",
            &secret,
            &ciphertexts,
            halo_p256::ops::partial_decrypt,
        ))
    }

    fn elgamal_partial_decrypt_rerandomize(
        &mut self,
        secret: Vec<u8>,
        key: Resource<FixedBaseHandle>,
        ciphertexts: Vec<u8>,
    ) -> wasmtime::Result<Result<Vec<u8>, CryptoError>> {
        Ok(
            HostState::elgamal_partial_decrypt_rerandomize(self, &secret, &key, &ciphertexts)?
                .map_err(crypto_error_to_wit),
        )
    }

    fn elgamal_blind(
        &mut self,
        secret: Vec<u8>,
        blinding_key: Vec<u8>,
        ciphertexts: Vec<u8>,
    ) -> wasmtime::Result<Result<Vec<u8>, CryptoError>> {
        guest(HostState::elgamal_blind(
            self,
            &secret,
            &blinding_key,
            &ciphertexts,
        ))
    }

    fn elgamal_scale(
        &mut self,
        ciphertexts: Vec<u8>,
        scalar: Vec<u8>,
    ) -> wasmtime::Result<Result<Vec<u8>, CryptoError>> {
        // `scale` takes (ciphertexts, scalar); the shared helper takes the scalar first.
        guest(HostState::elgamal_with_scalar(
            self,
            "scalar",
            &scalar,
            &ciphertexts,
            |k, c| halo_p256::ops::scale(c, k),
        ))
    }

    fn elgamal_scale_random(
        &mut self,
        ciphertexts: Vec<u8>,
    ) -> wasmtime::Result<Result<Vec<u8>, CryptoError>> {
        guest(HostState::elgamal_scale_random(self, &ciphertexts))
    }

    fn elgamal_scale_random_shifted(
        &mut self,
        ciphertexts: Vec<u8>,
        shift: Vec<u8>,
        multipliers: Vec<u8>,
    ) -> wasmtime::Result<Result<Vec<u8>, CryptoError>> {
        guest(HostState::elgamal_scale_random_shifted(
            self,
            &ciphertexts,
            &shift,
            &multipliers,
        ))
    }

    fn elgamal_add(
        &mut self,
        a: Vec<u8>,
        b: Vec<u8>,
    ) -> wasmtime::Result<Result<Vec<u8>, CryptoError>> {
        guest(HostState::elgamal_add_sub(self, &a, &b, false))
    }

    fn elgamal_sub(
        &mut self,
        a: Vec<u8>,
        b: Vec<u8>,
    ) -> wasmtime::Result<Result<Vec<u8>, CryptoError>> {
        guest(HostState::elgamal_add_sub(self, &a, &b, true))
    }

    fn sort_blocks(
        &mut self,
        data: Vec<u8>,
        block_size: u32,
    ) -> wasmtime::Result<Result<Vec<u8>, CryptoError>> {
        guest(HostState::sort_blocks(self, &data, block_size))
    }
}

impl halo::mpc::crypto::HostFixedBase for HostState {
    fn generator(&mut self) -> wasmtime::Result<Resource<FixedBaseHandle>> {
        match HostState::fixed_base_generator(self)? {
            Ok(r) => Ok(r),
            Err(e) => Err(wasmtime::format_err!("fixed-base.generator: {e}")),
        }
    }

    fn register(
        &mut self,
        point: Vec<u8>,
    ) -> wasmtime::Result<Result<Resource<FixedBaseHandle>, CryptoError>> {
        Ok(HostState::fixed_base_register(self, &point)?.map_err(crypto_error_to_wit))
    }

    fn point(&mut self, this: Resource<FixedBaseHandle>) -> wasmtime::Result<Vec<u8>> {
        HostState::fixed_base_point(self, &this)
    }

    fn mul(
        &mut self,
        this: Resource<FixedBaseHandle>,
        scalars: Vec<u8>,
    ) -> wasmtime::Result<Result<Vec<u8>, CryptoError>> {
        Ok(HostState::fixed_base_mul(self, &this, &scalars)?.map_err(crypto_error_to_wit))
    }

    fn drop(&mut self, rep: Resource<FixedBaseHandle>) -> wasmtime::Result<()> {
        HostState::fixed_base_drop(self, rep)
    }
}

use crate::p256::FixedBaseHandle;
use halo::mpc::crypto::{CryptoError, Element, Hashed};
use wasmtime::component::Resource;

/// A crypto result for the guest: a deadline becomes a trap, a refused input the WIT error.
fn guest<T>(r: crate::p256::CallResult<T>) -> wasmtime::Result<Result<T, CryptoError>> {
    Ok(r?.map_err(crypto_error_to_wit))
}

fn crypto_error_to_wit(e: halo_p256::ops::CryptoError) -> CryptoError {
    use halo_p256::ops::CryptoError as E;
    match e {
        E::BadLength(m) => CryptoError::BadLength(m),
        E::InvalidPoint { argument, index } => {
            CryptoError::InvalidPoint(Element { argument, index })
        }
        E::InvalidScalar { argument, index } => {
            CryptoError::InvalidScalar(Element { argument, index })
        }
        E::Identity { index } => CryptoError::Identity(index),
        E::Limit(m) => CryptoError::Limit(m),
    }
}

impl halo::mpc::identity::Host for HostState {
    fn sign(
        &mut self,
        message: Vec<u8>,
    ) -> Result<halo::mpc::identity::Signature, halo::mpc::identity::IdentityError> {
        HostState::sign(self, &message)
            .map(|s| halo::mpc::identity::Signature {
                certificate: s.certificate,
                signature: s.signature,
                algorithm_oid: s.algorithm_oid,
            })
            .map_err(identity_error_to_wit)
    }

    fn verify(
        &mut self,
        certificate: String,
        message: Vec<u8>,
        signature: Vec<u8>,
        algorithm_oid: String,
    ) -> Result<(), halo::mpc::identity::IdentityError> {
        HostState::verify(self, &certificate, &message, &signature, &algorithm_oid)
            .map_err(identity_error_to_wit)
    }
}

fn identity_error_to_wit(e: host::IdentityFailure) -> halo::mpc::identity::IdentityError {
    use halo::mpc::identity::IdentityError;
    match e {
        host::IdentityFailure::Invalid(m) => IdentityError::Invalid(m),
        host::IdentityFailure::Unavailable(m) => IdentityError::Unavailable(m),
    }
}

// ---------------------------------------------------------------------------------------------
// Calls into the guest. Each returns the guest's own result (data) inside the wasmtime result
// (traps and host errors).

pub(crate) fn describe(
    plugin: &Plugin,
    store: &mut wasmtime::Store<HostState>,
) -> wasmtime::Result<Description> {
    let d = plugin.halo_mpc_protocol().call_describe(store)?;
    Ok(Description {
        id: d.id,
        version: d.version,
        serves: system_protocol_from_wit(d.serves),
        stages: d.stages.into_iter().map(stage_from_wit).collect(),
    })
}

pub(crate) fn start(
    plugin: &Plugin,
    store: &mut wasmtime::Store<HostState>,
    ctx: &host::ComputationContext,
) -> wasmtime::Result<Result<host::StartOutcome, host::StageError>> {
    let ctx = context_to_wit(ctx);
    let r = plugin.halo_mpc_protocol().call_start(store, &ctx)?;
    Ok(r.map(|o| host::StartOutcome {
        initial_stage: o.initial_stage,
        state: o.state,
    })
    .map_err(stage_error_from_wit))
}

pub(crate) fn execute(
    plugin: &Plugin,
    store: &mut wasmtime::Store<HostState>,
    ctx: &host::ComputationContext,
    stage: i32,
    inputs: Vec<host::StageInput>,
) -> wasmtime::Result<Result<host::StageOutcome, host::StageError>> {
    let ctx = context_to_wit(ctx);
    let inputs: Vec<wit::StageInput> = inputs.into_iter().map(input_to_wit).collect();
    let r = plugin
        .halo_mpc_protocol()
        .call_execute(store, &ctx, stage, &inputs)?;
    Ok(r.map(outcome_from_wit).map_err(stage_error_from_wit))
}

/// What `describe()` returned, in host types.
pub(crate) struct Description {
    pub id: String,
    pub version: String,
    pub serves: host::SystemProtocol,
    pub stages: Vec<host::StageInfo>,
}

// ---------------------------------------------------------------------------------------------
// Conversions.

/// The one table between the WIT `system-protocol` enum and the contract's [`host::SystemProtocol`]
/// (every other mapping of a protocol lives in `halo_protocol`).
const SYSTEM_PROTOCOLS: [(wit::SystemProtocol, host::SystemProtocol); 3] = [
    (
        wit::SystemProtocol::LiquidLegionsV2,
        host::SystemProtocol::LiquidLegionsV2,
    ),
    (
        wit::SystemProtocol::ReachOnlyLiquidLegionsV2,
        host::SystemProtocol::ReachOnlyLiquidLegionsV2,
    ),
    (
        wit::SystemProtocol::HonestMajorityShareShuffle,
        host::SystemProtocol::HonestMajorityShareShuffle,
    ),
];

fn system_protocol_from_wit(p: wit::SystemProtocol) -> host::SystemProtocol {
    match SYSTEM_PROTOCOLS.iter().find(|(w, _)| *w == p) {
        Some((_, h)) => *h,
        // Unreachable: the table lists every WIT value (see the test below).
        None => host::SystemProtocol::HonestMajorityShareShuffle,
    }
}

fn system_protocol_to_wit(p: host::SystemProtocol) -> wit::SystemProtocol {
    match SYSTEM_PROTOCOLS.iter().find(|(_, h)| *h == p) {
        Some((w, _)) => *w,
        // Unreachable: the table lists every contract value (see the test below).
        None => wit::SystemProtocol::HonestMajorityShareShuffle,
    }
}

#[cfg(test)]
#[test]
fn the_wit_table_covers_every_protocol_once() {
    for p in host::SystemProtocol::ALL {
        assert_eq!(
            SYSTEM_PROTOCOLS.iter().filter(|(_, h)| *h == p).count(),
            1,
            "{p}"
        );
        assert_eq!(system_protocol_from_wit(system_protocol_to_wit(p)), p);
    }
    // Every WIT value (a new one must be added here and to the table).
    for w in [
        wit::SystemProtocol::LiquidLegionsV2,
        wit::SystemProtocol::ReachOnlyLiquidLegionsV2,
        wit::SystemProtocol::HonestMajorityShareShuffle,
    ] {
        assert_eq!(SYSTEM_PROTOCOLS.iter().filter(|(x, _)| *x == w).count(), 1);
        assert_eq!(system_protocol_to_wit(system_protocol_from_wit(w)), w);
    }
}

fn role_from_wit(r: wit::Role) -> host::Role {
    match r {
        wit::Role::Aggregator => host::Role::Aggregator,
        wit::Role::NonAggregator => host::Role::NonAggregator,
        wit::Role::FirstNonAggregator => host::Role::FirstNonAggregator,
        wit::Role::SecondNonAggregator => host::Role::SecondNonAggregator,
    }
}

fn role_to_wit(r: host::Role) -> wit::Role {
    match r {
        host::Role::Aggregator => wit::Role::Aggregator,
        host::Role::NonAggregator => wit::Role::NonAggregator,
        host::Role::FirstNonAggregator => wit::Role::FirstNonAggregator,
        host::Role::SecondNonAggregator => wit::Role::SecondNonAggregator,
    }
}

fn kingdom_state_from_wit(s: wit::KingdomState) -> ComputationState {
    match s {
        wit::KingdomState::PendingRequisitionParams => ComputationState::PendingRequisitionParams,
        wit::KingdomState::PendingRequisitionFulfillment => {
            ComputationState::PendingRequisitionFulfillment
        }
        wit::KingdomState::PendingParticipantConfirmation => {
            ComputationState::PendingParticipantConfirmation
        }
        wit::KingdomState::PendingComputation => ComputationState::PendingComputation,
    }
}

fn stage_from_wit(s: wit::StageInfo) -> host::StageInfo {
    let kind = match s.kind {
        wit::StageKind::Queued(q) => host::StageKind::Queued {
            inputs: q.inputs,
            requisitions: q.requisitions,
        },
        wit::StageKind::WaitInputs(w) => host::StageKind::WaitInputs {
            description: w.description,
            from: match w.from {
                wit::InputSource::Roles(roles) => {
                    host::InputSource::Roles(roles.into_iter().map(role_from_wit).collect())
                }
                wit::InputSource::AnyOne => host::InputSource::AnyOne,
            },
            next: w.next,
        },
        wit::StageKind::WaitKingdom(w) => host::StageKind::WaitKingdom {
            state: kingdom_state_from_wit(w.state),
            next: w.next,
        },
        wit::StageKind::Terminal => host::StageKind::Terminal,
    };
    host::StageInfo {
        number: s.number,
        name: s.name,
        kind,
    }
}

fn context_to_wit(ctx: &host::ComputationContext) -> wit::ComputationContext {
    wit::ComputationContext {
        global_id: ctx.global_id.clone(),
        duchy_id: ctx.duchy_id.clone(),
        role: role_to_wit(ctx.role),
        protocol: system_protocol_to_wit(ctx.protocol),
        computation: ctx.computation.clone(),
        participants: ctx
            .participants
            .iter()
            .map(|p| wit::Participant {
                duchy_id: p.duchy_id.clone(),
                role: role_to_wit(p.role),
                requisition_params: p.requisition_params.clone(),
            })
            .collect(),
        state: ctx.state.clone(),
        attempt: ctx.attempt,
    }
}

fn input_to_wit(i: host::StageInput) -> wit::StageInput {
    let origin = match i.origin {
        host::InputOrigin::Peer {
            duchy_id,
            description,
        } => wit::InputOrigin::Peer((duchy_id, description)),
        host::InputOrigin::Requisition {
            requisition_id,
            header,
        } => wit::InputOrigin::Requisition((requisition_id, header)),
    };
    wit::StageInput {
        origin,
        data: i.data,
    }
}

fn outcome_from_wit(o: wit::StageOutcome) -> host::StageOutcome {
    host::StageOutcome {
        next_stage: o.next_stage,
        state: o.state,
        requisition_params: o.requisition_params,
        confirm: o.confirm,
        result: o.result.map(|r| host::ComputationResult {
            encrypted_result: r.encrypted_result,
            result_public_key: r.result_public_key,
        }),
        sends: o
            .sends
            .into_iter()
            .map(|s| host::Outgoing {
                to: s.to,
                description: s.description,
                payload: s.payload,
            })
            .collect(),
    }
}

fn stage_error_from_wit(e: wit::StageError) -> host::StageError {
    match e {
        wit::StageError::Transient(m) => host::StageError::Transient(m),
        wit::StageError::Permanent(m) => host::StageError::Permanent(m),
        wit::StageError::InvalidInput(m) => host::StageError::InvalidInput(m),
    }
}

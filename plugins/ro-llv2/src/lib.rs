//! `ro-llv2`: reach-only Liquid Legions v2 (halo-system §4.2, mpc-crypto §4 and errata E3), as
//! a duchy plugin. The math is in `llv2-core`, the glue shared with LLv2 in `llv2-common`;
//! every P-256 operation goes to the host's batched `crypto` import.

use halo_plugin_sdk::p256::{CIPHERTEXT_LEN, Host};
use halo_plugin_sdk::prelude::*;
use llv2_common::{
    Variant, core_err, estimate, forward, load_confirmed, noise_rng, not_queued, params,
    register_key as register, requisition_data, result, ring_position, setup_inputs, shared_stage,
    single_peer_input,
};
use llv2_core::protocol::{self as core, RoAggregation};

/// Protocol id.
pub const ID: &str = "ro-llv2";
/// Plugin version.
pub const VERSION: &str = "1.0.0";

/// Stage numbers of the system `ReachOnlyLiquidLegionsV2Stage` enum (halo-system §4.2).
pub use llv2_common::stage::{
    CONFIRMATION_PHASE, INITIALIZATION_PHASE, SETUP_PHASE, SETUP_PHASE_INPUT,
    WAIT_REQUISITIONS_AND_KEY_SET, WAIT_SETUP_PHASE_INPUTS, WAIT_TO_START,
};
pub const WAIT_EXECUTION_PHASE_INPUTS: i32 = 7;
pub const EXECUTION_PHASE: i32 = 8;
pub const COMPLETE: i32 = 9;

/// AdvanceComputation descriptions (`ReachOnlyLiquidLegionsV2.Description`).
pub const EXECUTION_PHASE_INPUT: i32 = 2;

const VARIANT: Variant = Variant::ReachOnly;

/// The reach-only LLv2 protocol plugin.
pub struct RoLlv2;

halo_plugin_sdk::export!(RoLlv2);

/// The stage table of halo-system §4.2.
pub fn stages() -> Vec<StageInfo> {
    llv2_common::setup_stages()
        .wait_inputs(
            WAIT_EXECUTION_PHASE_INPUTS,
            "WAIT_EXECUTION_PHASE_INPUTS",
            EXECUTION_PHASE_INPUT,
            InputSource::AnyOne,
            EXECUTION_PHASE,
        )
        .queued(
            EXECUTION_PHASE,
            "EXECUTION_PHASE",
            &[EXECUTION_PHASE_INPUT],
            false,
        )
        .terminal(COMPLETE, "COMPLETE")
        .build()
}

fn setup_phase(
    ctx: &ComputationContext,
    inputs: &[StageInput],
) -> Result<StageOutcome, StageError> {
    let p = params(ctx, VARIANT)?;
    let st = load_confirmed(ctx)?;
    let ring = ring_position(ctx, &st)?;
    let c = Host;
    let y = register(&c, &st.combined_key)?;
    let requisitions = requisition_data(ctx, inputs, core::RO_REGISTER_LEN)?;
    // The aggregator's inputs: each non-aggregator's registers, then its trailing noise
    // ciphertext (halo-system §4.2).
    let (mut others, mut received) = (Vec::new(), Vec::new());
    if ctx.role == Role::Aggregator {
        for blob in setup_inputs(inputs, &st, SETUP_PHASE_INPUT)? {
            let (crv, noise) = core::ro_split(blob).map_err(core_err)?;
            others.extend_from_slice(crv);
            received.extend_from_slice(noise);
        }
    }
    debug_assert!(received.len().is_multiple_of(CIPHERTEXT_LEN));
    let out = core::ro_setup(
        &c,
        &y,
        &requisitions,
        &others,
        &received,
        p.sketches,
        p.reach_noise.as_ref(),
        &mut noise_rng(),
    )
    .map_err(core_err)?;
    let (to, description) = if ctx.role == Role::Aggregator {
        (ring.first, EXECUTION_PHASE_INPUT)
    } else {
        (ring.aggregator, SETUP_PHASE_INPUT)
    };
    Ok(forward(WAIT_EXECUTION_PHASE_INPUTS, to, description, out))
}

fn execution_phase(
    ctx: &ComputationContext,
    inputs: &[StageInput],
) -> Result<StageOutcome, StageError> {
    let p = params(ctx, VARIANT)?;
    let st = load_confirmed(ctx)?;
    let ring = ring_position(ctx, &st)?;
    let input = single_peer_input(inputs, &ring.previous, EXECUTION_PHASE_INPUT)?;
    let c = Host;
    if ctx.role != Role::Aggregator {
        let out = core::ro_execution(&c, &st.secret_key, input).map_err(core_err)?;
        return Ok(forward(COMPLETE, ring.next, EXECUTION_PHASE_INPUT, out));
    }
    let active = core::ro_execution_at_aggregator(
        &c,
        &st.secret_key,
        input,
        &RoAggregation {
            duchies: p.duchies,
            sketches: p.sketches,
            noise: p.reach_noise.as_ref(),
        },
    )
    .map_err(core_err)?;
    let reach = estimate(&p, active)?;
    Ok(StageOutcome {
        next_stage: COMPLETE,
        result: Some(result(&p, reach, &Default::default())?),
        ..Default::default()
    })
}

impl Protocol for RoLlv2 {
    fn describe() -> Description {
        Description {
            id: ID.into(),
            version: VERSION.into(),
            serves: SystemProtocol::ReachOnlyLiquidLegionsV2,
            stages: stages(),
        }
    }

    fn start(ctx: ComputationContext) -> Result<StartOutcome, StageError> {
        llv2_common::start(&ctx, VARIANT, INITIALIZATION_PHASE)
    }

    fn execute(
        ctx: ComputationContext,
        stage: i32,
        inputs: Vec<StageInput>,
    ) -> Result<StageOutcome, StageError> {
        if let Some(outcome) = shared_stage(&ctx, VARIANT, stage) {
            return outcome;
        }
        match stage {
            SETUP_PHASE => setup_phase(&ctx, &inputs),
            EXECUTION_PHASE => execution_phase(&ctx, &inputs),
            other => Err(not_queued(other)),
        }
    }
}

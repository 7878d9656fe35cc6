//! `llv2`: Liquid Legions v2, reach and frequency (halo-system §4.1, mpc-crypto §3), as a
//! duchy plugin. The math is in `llv2-core`, the glue shared with reach-only LLv2 in
//! `llv2-common`; every P-256 operation goes to the host's batched `crypto` import.

use halo_plugin_sdk::p256::Host;
use halo_plugin_sdk::prelude::*;
use halo_plugin_sdk::state;
use llv2_common::{
    Params, Variant, core_err, estimate, forward, load_confirmed, noise_rng, not_queued, params,
    register_key as register, requisition_data, result, ring_position, setup_inputs, shared_stage,
    single_peer_input,
};
use llv2_core::protocol::{self as core, Baselines, FrequencyNoise, SetupParams};

/// Protocol id.
pub const ID: &str = "llv2";
/// Plugin version.
pub const VERSION: &str = "1.0.0";

/// Stage numbers of the system `LiquidLegionsV2Stage` enum (halo-system §4.1).
pub use llv2_common::stage::{
    CONFIRMATION_PHASE, INITIALIZATION_PHASE, SETUP_PHASE, SETUP_PHASE_INPUT,
    WAIT_REQUISITIONS_AND_KEY_SET, WAIT_SETUP_PHASE_INPUTS, WAIT_TO_START,
};
pub const WAIT_EXECUTION_PHASE_ONE_INPUTS: i32 = 7;
pub const EXECUTION_PHASE_ONE: i32 = 8;
pub const WAIT_EXECUTION_PHASE_TWO_INPUTS: i32 = 9;
pub const EXECUTION_PHASE_TWO: i32 = 10;
pub const WAIT_EXECUTION_PHASE_THREE_INPUTS: i32 = 11;
pub const EXECUTION_PHASE_THREE: i32 = 12;
pub const COMPLETE: i32 = 13;

/// AdvanceComputation descriptions (`LiquidLegionsV2.Description`).
pub const EXECUTION_PHASE_ONE_INPUT: i32 = 2;
pub const EXECUTION_PHASE_TWO_INPUT: i32 = 3;
pub const EXECUTION_PHASE_THREE_INPUT: i32 = 4;

const VARIANT: Variant = Variant::ReachAndFrequency;

/// The LLv2 protocol plugin.
pub struct Llv2;

halo_plugin_sdk::export!(Llv2);

/// The stage table of halo-system §4.1.
pub fn stages() -> Vec<StageInfo> {
    llv2_common::setup_stages()
        .wait_inputs(
            WAIT_EXECUTION_PHASE_ONE_INPUTS,
            "WAIT_EXECUTION_PHASE_ONE_INPUTS",
            EXECUTION_PHASE_ONE_INPUT,
            InputSource::AnyOne,
            EXECUTION_PHASE_ONE,
        )
        .queued(
            EXECUTION_PHASE_ONE,
            "EXECUTION_PHASE_ONE",
            &[EXECUTION_PHASE_ONE_INPUT],
            false,
        )
        .wait_inputs(
            WAIT_EXECUTION_PHASE_TWO_INPUTS,
            "WAIT_EXECUTION_PHASE_TWO_INPUTS",
            EXECUTION_PHASE_TWO_INPUT,
            InputSource::AnyOne,
            EXECUTION_PHASE_TWO,
        )
        .queued(
            EXECUTION_PHASE_TWO,
            "EXECUTION_PHASE_TWO",
            &[EXECUTION_PHASE_TWO_INPUT],
            false,
        )
        .wait_inputs(
            WAIT_EXECUTION_PHASE_THREE_INPUTS,
            "WAIT_EXECUTION_PHASE_THREE_INPUTS",
            EXECUTION_PHASE_THREE_INPUT,
            InputSource::AnyOne,
            EXECUTION_PHASE_THREE,
        )
        .queued(
            EXECUTION_PHASE_THREE,
            "EXECUTION_PHASE_THREE",
            &[EXECUTION_PHASE_THREE_INPUT],
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
    let requisitions = requisition_data(ctx, inputs, core::REGISTER_LEN)?;
    let others = if ctx.role == Role::Aggregator {
        setup_inputs(inputs, &st, SETUP_PHASE_INPUT)?.concat()
    } else {
        Vec::new()
    };
    let out = core::setup(
        &c,
        &y,
        &requisitions,
        &others,
        &SetupParams {
            sketches: p.sketches,
            maximum_frequency: p.maximum_frequency,
            noise: p.reach_noise.as_ref(),
        },
        &mut noise_rng(),
    )
    .map_err(core_err)?;
    let (to, description) = if ctx.role == Role::Aggregator {
        (ring.first, EXECUTION_PHASE_ONE_INPUT)
    } else {
        (ring.aggregator, SETUP_PHASE_INPUT)
    };
    Ok(forward(
        WAIT_EXECUTION_PHASE_ONE_INPUTS,
        to,
        description,
        out,
    ))
}

fn frequency_noise(p: &Params) -> Option<FrequencyNoise<'_>> {
    p.frequency_noise
        .as_ref()
        .map(|noiser| FrequencyNoise { noiser })
}

fn execution_phase_one(
    ctx: &ComputationContext,
    inputs: &[StageInput],
) -> Result<StageOutcome, StageError> {
    let p = params(ctx, VARIANT)?;
    let st = load_confirmed(ctx)?;
    let ring = ring_position(ctx, &st)?;
    let input = single_peer_input(inputs, &ring.previous, EXECUTION_PHASE_ONE_INPUT)?;
    let c = Host;
    let y = register(&c, &st.combined_key)?;
    let (out, to, description) = if ctx.role == Role::Aggregator {
        let out = core::execution_one_at_aggregator(
            &c,
            &st.secret_key,
            &y,
            input,
            p.sketches,
            p.maximum_frequency,
            frequency_noise(&p),
            &mut noise_rng(),
        )
        .map_err(core_err)?;
        (out, ring.first, EXECUTION_PHASE_TWO_INPUT)
    } else {
        let out = core::execution_one(&c, &st.secret_key, &y, input).map_err(core_err)?;
        (out, ring.next, EXECUTION_PHASE_ONE_INPUT)
    };
    Ok(forward(
        WAIT_EXECUTION_PHASE_TWO_INPUTS,
        to,
        description,
        out,
    ))
}

fn execution_phase_two(
    ctx: &ComputationContext,
    inputs: &[StageInput],
) -> Result<StageOutcome, StageError> {
    let p = params(ctx, VARIANT)?;
    let mut st = load_confirmed(ctx)?;
    let ring = ring_position(ctx, &st)?;
    let input = single_peer_input(inputs, &ring.previous, EXECUTION_PHASE_TWO_INPUT)?;
    let c = Host;
    let y = register(&c, &st.combined_key)?;
    if ctx.role != Role::Aggregator {
        let partial = register(&c, &st.partial_key)?;
        let out = core::execution_two(
            &c,
            &st.secret_key,
            &partial,
            &y,
            input,
            p.maximum_frequency,
            frequency_noise(&p),
            &mut noise_rng(),
        )
        .map_err(core_err)?;
        let next = if p.maximum_frequency == 1 {
            COMPLETE
        } else {
            WAIT_EXECUTION_PHASE_THREE_INPUTS
        };
        return Ok(forward(next, ring.next, EXECUTION_PHASE_TWO_INPUT, out));
    }
    let two = core::execution_two_at_aggregator(
        &c,
        &st.secret_key,
        &y,
        input,
        p.maximum_frequency,
        &Baselines {
            reach: p.reach_baseline(),
            frequency_tuples: p.frequency_tuples_baseline(),
            frequency_bucket: None,
        },
    )
    .map_err(core_err)?;
    let reach = estimate(&p, two.active)?;
    halo_plugin_sdk::info!(
        "execution phase two: {} tuples, {} active registers after baselines, {} for the \
         frequency matrix, reach {reach}",
        two.tuples,
        two.active,
        two.valid
    );
    if p.maximum_frequency == 1 {
        return Ok(StageOutcome {
            next_stage: COMPLETE,
            result: Some(result(&p, reach, &Default::default())?),
            ..Default::default()
        });
    }
    st.reach = Some(reach);
    Ok(StageOutcome {
        state: Some(state::encode(&st)),
        ..forward(
            WAIT_EXECUTION_PHASE_THREE_INPUTS,
            ring.first,
            EXECUTION_PHASE_THREE_INPUT,
            two.matrix,
        )
    })
}

fn execution_phase_three(
    ctx: &ComputationContext,
    inputs: &[StageInput],
) -> Result<StageOutcome, StageError> {
    let p = params(ctx, VARIANT)?;
    let st = load_confirmed(ctx)?;
    let ring = ring_position(ctx, &st)?;
    let input = single_peer_input(inputs, &ring.previous, EXECUTION_PHASE_THREE_INPUT)?;
    let c = Host;
    if ctx.role != Role::Aggregator {
        let out = core::execution_three(&c, &st.secret_key, input).map_err(core_err)?;
        return Ok(forward(
            COMPLETE,
            ring.next,
            EXECUTION_PHASE_THREE_INPUT,
            out,
        ));
    }
    let reach = st
        .reach
        .ok_or_else(|| StageError::permanent("state: no reach estimate from phase two"))?;
    let distribution = core::execution_three_at_aggregator(
        &c,
        &st.secret_key,
        input,
        p.maximum_frequency,
        p.frequency_bucket_baseline(),
    )
    .map_err(core_err)?;
    Ok(StageOutcome {
        next_stage: COMPLETE,
        result: Some(result(&p, reach, &distribution)?),
        ..Default::default()
    })
}

impl Protocol for Llv2 {
    fn describe() -> Description {
        Description {
            id: ID.into(),
            version: VERSION.into(),
            serves: SystemProtocol::LiquidLegionsV2,
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
            EXECUTION_PHASE_ONE => execution_phase_one(&ctx, &inputs),
            EXECUTION_PHASE_TWO => execution_phase_two(&ctx, &inputs),
            EXECUTION_PHASE_THREE => execution_phase_three(&ctx, &inputs),
            other => Err(not_queued(other)),
        }
    }
}

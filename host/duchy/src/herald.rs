//! The herald: one long-lived `StreamActiveComputations` per duchy. It creates local
//! computations (pinning the protocol implementation), keeps their Kingdom snapshot fresh,
//! releases stages that wait for a Kingdom state, fails local computations the Kingdom
//! failed or cancelled, and persists the continuation token after each processed item.
//! Every handler is idempotent: after a crash items are seen again (at-least-once).

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Result, anyhow};
use halo_proto::system::v1alpha as sys;
use prost::Message;
use sys::computation::State as ComputationState;
use tokio::sync::watch;

use crate::core::{Core, system_protocol_of};
use crate::names;
use crate::protocol::{ComputationContext, StageKind, find_stage};
use crate::store::{NewComputation, RequisitionRow};

/// Runs until `shutdown` turns true.
pub async fn run(core: Arc<Core>, mut shutdown: watch::Receiver<bool>) {
    let cfg = core.config.herald.clone();
    let mut backoff = cfg.backoff_initial;
    loop {
        if *shutdown.borrow() {
            return;
        }
        let res = tokio::select! {
            _ = shutdown.wait_for(|v| *v) => return,
            r = follow_stream(&core) => r,
        };
        match res {
            Ok(()) => backoff = cfg.backoff_initial,
            Err(e) => {
                tracing::warn!(duchy = %core.id(), "herald stream failed, retrying in {:?}: {e:#}", backoff);
                tokio::select! {
                    _ = shutdown.wait_for(|v| *v) => return,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(cfg.backoff_max);
            }
        }
    }
}

async fn follow_stream(core: &Arc<Core>) -> Result<()> {
    let token = core.store.continuation_token().await?;
    let mut stream = core
        .computations_client()
        .stream_active_computations(sys::StreamActiveComputationsRequest {
            continuation_token: token,
        })
        .await?
        .into_inner();
    while let Some(item) = stream.message().await? {
        if let Some(c) = item.computation {
            let mut attempt = 0;
            loop {
                attempt += 1;
                match process(core, &c).await {
                    Ok(()) => break,
                    Err(e) if attempt < 3 => {
                        tracing::warn!(computation = %c.name, "herald processing failed (attempt {attempt}): {e:#}");
                        tokio::time::sleep(Duration::from_millis(100 * attempt)).await;
                    }
                    Err(e) => {
                        tracing::error!(computation = %c.name, "herald gave up: {e:#}");
                        if let Some(id) = names::parse_computation(&c.name) {
                            let msg = format!("Herald failed after {attempt} attempts. {e:#}");
                            let _ = core.fail_at_kingdom(id, &msg, None).await;
                            let _ = core.store.finish(id, "FAILED").await;
                        }
                        break;
                    }
                }
            }
        }
        core.store
            .set_continuation_token(&item.continuation_token)
            .await?;
    }
    Ok(())
}

fn is_terminal(state: i32) -> bool {
    state == ComputationState::Succeeded as i32
        || state == ComputationState::Failed as i32
        || state == ComputationState::Cancelled as i32
}

fn requisition_rows(global_id: &str, c: &sys::Computation) -> Vec<RequisitionRow> {
    c.requisitions
        .iter()
        .filter_map(|r| {
            let (_, rid) = names::parse_system_requisition(&r.name)?;
            let fulfilling = names::parse_participant(&r.fulfilling_computation_participant)
                .map(|(_, d)| d.to_string())
                .unwrap_or_default();
            Some(RequisitionRow {
                global_id: global_id.to_string(),
                requisition_id: rid.to_string(),
                fulfilling_duchy: fulfilling,
                requisition_spec_hash: r.requisition_spec_hash.clone(),
                nonce_hash: r.nonce_hash.clone(),
                blob: None,
                header: None,
                nonce: None,
            })
        })
        .collect()
}

/// Handles one streamed computation.
pub async fn process(core: &Arc<Core>, c: &sys::Computation) -> Result<()> {
    let Some(global_id) = names::parse_computation(&c.name) else {
        tracing::warn!(name = %c.name, "ignoring computation with a malformed name");
        return Ok(());
    };
    let me = core.id();
    let participates = c
        .computation_participants
        .iter()
        .any(|p| names::parse_participant(&p.name).is_some_and(|(_, d)| d == me));
    if !participates {
        return Ok(());
    }
    let snapshot = c.encode_to_vec();
    match core.store.get(global_id).await? {
        None => create(core, global_id, c, snapshot).await,
        Some(row) => {
            core.store
                .update_snapshot(global_id, &snapshot, c.state)
                .await?;
            core.store
                .upsert_requisitions(&requisition_rows(global_id, c))
                .await?;
            if row.terminal.is_some() {
                return Ok(());
            }
            if c.state == ComputationState::Failed as i32
                || c.state == ComputationState::Cancelled as i32
            {
                let outcome = if c.state == ComputationState::Failed as i32 {
                    "FAILED"
                } else {
                    "CANCELLED"
                };
                if core.store.finish(global_id, outcome).await? {
                    core.store
                        .audit(global_id, "finish", &format!("{outcome} at the Kingdom"))
                        .await?;
                    tracing::info!(computation = %global_id, "{outcome} at the Kingdom");
                }
                return Ok(());
            }
            let protocol = core.protocol_for(&row)?;
            let stages = protocol.stages();
            if let Some(info) = find_stage(&stages, row.stage)
                && let StageKind::WaitKingdom { state, next } = info.kind
                && crate::core::kingdom_state_reached(c.state, state)
            {
                core.enter_stage(global_id, &stages, None, row.stage, next, None)
                    .await?;
            }
            Ok(())
        }
    }
}

async fn create(
    core: &Arc<Core>,
    global_id: &str,
    c: &sys::Computation,
    snapshot: Vec<u8>,
) -> Result<()> {
    if is_terminal(c.state) {
        return Ok(());
    }
    let me = core.id().to_string();
    let protocol = system_protocol_of(c)
        .ok_or_else(|| anyhow!("computation {global_id} uses a protocol this host does not run"))?;
    let Some(role) = core.role_of(protocol, &me) else {
        let msg = format!("duchy {me} has no configured role for {protocol}");
        core.fail_at_kingdom(global_id, &msg, None)
            .await
            .map_err(|e| anyhow!(e))?;
        return Ok(());
    };
    let Some(plugin) = core.config.protocols.select(protocol) else {
        let msg = format!("no implementation of {protocol} is loaded at duchy {me}");
        tracing::error!(computation = %global_id, "{msg}");
        core.fail_at_kingdom(global_id, &msg, None)
            .await
            .map_err(|e| anyhow!(e))?;
        return Ok(());
    };
    let pin = plugin.pin();
    let ctx = ComputationContext {
        global_id: global_id.to_string(),
        duchy_id: me.clone(),
        role,
        protocol,
        computation: snapshot.clone(),
        participants: core.participants(protocol, c),
        state: Vec::new(),
        attempt: 1,
        identity: Some(core.stage_identity()),
    };
    let p = plugin.clone();
    let started = tokio::task::spawn_blocking(move || p.start(&ctx)).await?;
    let stages = plugin.stages();
    let (stage, state, failure) = match started {
        Ok(s) => match crate::outcome::validate_start(
            &pin,
            &stages,
            core.config.mill.outcome_limits(),
            &s,
        ) {
            Ok(()) => (s.initial_stage, s.state, None),
            Err(e) => (0, Vec::new(), Some(e.cause)),
        },
        Err(e) => (0, Vec::new(), Some(e.to_string())),
    };
    let queued =
        find_stage(&stages, stage).is_some_and(|i| matches!(i.kind, StageKind::Queued { .. }));
    let created = core
        .store
        .insert(NewComputation {
            global_id: global_id.to_string(),
            protocol,
            role,
            pin: pin.clone(),
            stage,
            queued: queued && failure.is_none(),
            kingdom_state: c.state,
            computation: snapshot,
            plugin_state: state,
        })
        .await?;
    core.store
        .upsert_requisitions(&requisition_rows(global_id, c))
        .await?;
    if !created {
        return Ok(());
    }
    core.store
        .audit(global_id, "create", &format!("role {role:?}, pinned {pin}"))
        .await?;
    tracing::info!(duchy = %me, computation = %global_id, plugin = %pin, ?role, "computation created");
    if let Some(msg) = failure {
        let msg = format!("{} rejected the computation: {msg}", pin);
        core.store.finish(global_id, "FAILED").await?;
        core.store.audit(global_id, "finish", &msg).await?;
        core.fail_at_kingdom(global_id, &msg, None)
            .await
            .map_err(|e| anyhow!(e))?;
        return Ok(());
    }
    if find_stage(&stages, stage).is_none() {
        return Err(anyhow!(
            "{pin} started computation {global_id} in unknown stage {stage}"
        ));
    }
    core.after_enter(global_id, &stages, stage).await
}

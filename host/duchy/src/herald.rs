//! The herald: one long-lived `StreamActiveComputations` per duchy. It records what the
//! Kingdom says and nothing else: new computations (pinning the protocol implementation, in
//! the [`START_STAGE`] pseudo-stage the mill runs the plugin's `start` from), fresh Kingdom
//! snapshots (then [`Core::drive`] decides whether a stage waiting for a Kingdom state moves
//! on), computations the Kingdom failed or cancelled. It never calls a plugin. The
//! continuation token is persisted after each processed item; every handler is idempotent,
//! so after a crash items are seen again (at-least-once). An item that cannot be processed
//! (a store error) is not skipped: the stream restarts from the persisted token with backoff.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};

use anyhow::{Result, anyhow};
use halo_proto::system::v1alpha as sys;
use prost::Message;
use sys::computation::State as ComputationState;
use tokio::sync::watch;

use crate::core::{Core, system_protocol_of};
use crate::names;
use crate::store::{NewComputation, RequisitionRow, START_STAGE};

/// Whether the herald is in touch with the Kingdom (readiness).
#[derive(Default)]
pub struct HeraldStatus {
    connected: AtomicBool,
    /// When the Kingdom last answered (stream opened or an item arrived), ms since the epoch.
    last_contact_ms: AtomicI64,
}

impl HeraldStatus {
    /// True while the stream is open, or if the Kingdom answered within `recent`.
    pub fn kingdom_reachable(&self, recent: std::time::Duration) -> bool {
        self.connected.load(Ordering::SeqCst)
            || crate::store::now_ms() - self.last_contact_ms.load(Ordering::SeqCst)
                <= crate::store::millis(recent)
    }

    fn contact(&self) {
        self.last_contact_ms
            .store(crate::store::now_ms(), Ordering::SeqCst);
    }
}

/// Runs until `shutdown` turns true.
pub async fn run(core: Arc<Core>, shutdown: watch::Receiver<bool>) {
    run_reporting(core, shutdown, Arc::new(HeraldStatus::default())).await
}

/// [`run`], keeping `status` up to date. At shutdown an item being processed is finished
/// (and its token persisted) before the stream is dropped.
pub async fn run_reporting(
    core: Arc<Core>,
    mut shutdown: watch::Receiver<bool>,
    status: Arc<HeraldStatus>,
) {
    let cfg = core.config.herald.clone();
    let mut backoff = cfg.backoff_initial;
    loop {
        if *shutdown.borrow() {
            return;
        }
        let res = follow_stream(&core, &status, shutdown.clone()).await;
        status.connected.store(false, Ordering::SeqCst);
        if *shutdown.borrow() {
            if let Err(e) = res {
                tracing::info!(duchy = %core.id(), "herald stopped: {e:#}");
            }
            return;
        }
        match res {
            Ok(items) if items > 0 => {
                tracing::info!(duchy = %core.id(), items, "the Kingdom ended the active-computations stream; resuming from the continuation token");
                backoff = cfg.backoff_initial;
            }
            Ok(_) => {
                // Nothing delivered: reconnecting at once could spin against a Kingdom whose
                // streams end immediately. Back off as after a failure.
                tracing::info!(duchy = %core.id(), "the Kingdom ended the active-computations stream without an item; resuming from the continuation token in {backoff:?}");
                tokio::select! {
                    _ = shutdown.wait_for(|v| *v) => return,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(cfg.backoff_max);
            }
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

/// Follows one stream until it ends, fails, or `shutdown` (between items); returns how many
/// items it delivered.
async fn follow_stream(
    core: &Arc<Core>,
    status: &HeraldStatus,
    mut shutdown: watch::Receiver<bool>,
) -> Result<usize> {
    let token = core.store.continuation_token().await?;
    let mut client = core.computations_client();
    let open = client.stream_active_computations(sys::StreamActiveComputationsRequest {
        continuation_token: token,
    });
    let mut stream = tokio::select! {
        _ = shutdown.wait_for(|v| *v) => return Ok(0),
        r = open => r?.into_inner(),
    };
    status.connected.store(true, Ordering::SeqCst);
    status.contact();
    let mut items = 0;
    loop {
        let item = tokio::select! {
            _ = shutdown.wait_for(|v| *v) => return Ok(items),
            m = stream.message() => m?,
        };
        let Some(item) = item else { break };
        items += 1;
        status.contact();
        if let Some(c) = item.computation {
            halo_crashpoint::point("herald.received");
            process(core, &c)
                .await
                .map_err(|e| anyhow!("processing {}: {e:#}", c.name))?;
        }
        halo_crashpoint::point("herald.processed");
        core.store
            .set_continuation_token(&item.continuation_token)
            .await?;
    }
    Ok(items)
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
    let requisitions = requisition_rows(global_id, c);
    match core.store.get(global_id).await? {
        None => create(core, global_id, c, snapshot, &requisitions).await,
        Some(row) => {
            core.store
                .update_snapshot(global_id, &snapshot, c.state, &requisitions)
                .await?;
            if row
                .terminal
                .as_deref()
                .is_some_and(|t| t != crate::store::FAILING)
            {
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
                if core
                    .store
                    .finish(global_id, outcome, &format!("{outcome} at the Kingdom"))
                    .await?
                {
                    tracing::info!(computation = %global_id, "{outcome} at the Kingdom");
                }
                return Ok(());
            }
            core.drive(global_id).await
        }
    }
}

async fn create(
    core: &Arc<Core>,
    global_id: &str,
    c: &sys::Computation,
    snapshot: Vec<u8>,
    requisitions: &[RequisitionRow],
) -> Result<()> {
    if is_terminal(c.state) {
        return Ok(());
    }
    let me = core.id().to_string();
    let Some(protocol) = system_protocol_of(c) else {
        let msg = format!("computation {global_id} uses a protocol duchy {me} does not run");
        return core.fail(global_id, &msg).await;
    };
    let Some(role) = core.role_of(protocol, &me) else {
        let msg = format!("duchy {me} has no configured role for {protocol}");
        return core.fail(global_id, &msg).await;
    };
    let listed: Vec<&str> = c
        .computation_participants
        .iter()
        .filter_map(|p| names::parse_participant(&p.name).map(|(_, d)| d))
        .collect();
    if let Err(why) = core.config.roles.check_participants(protocol, &listed) {
        let msg = format!("duchy {me}: {why}");
        return core.fail(global_id, &msg).await;
    }
    let Some(plugin) = core.config.protocols.select(protocol) else {
        let msg = format!("no implementation of {protocol} is loaded at duchy {me}");
        return core.fail(global_id, &msg).await;
    };
    let pin = plugin.pin();
    let created = core
        .store
        .insert(
            NewComputation {
                global_id: global_id.to_string(),
                protocol,
                role,
                pin: pin.clone(),
                stage: START_STAGE,
                queued: true,
                kingdom_state: c.state,
                computation: snapshot,
                plugin_state: Vec::new(),
            },
            requisitions,
            &format!("role {role:?}, pinned {pin}"),
        )
        .await?;
    if created {
        tracing::info!(duchy = %me, computation = %global_id, plugin = %pin, ?role, "computation recorded");
        core.wake_mill();
    }
    Ok(())
}

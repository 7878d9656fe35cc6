//! Mill workers: claim a queued stage (lease), run it through the pinned protocol on a
//! blocking thread, cache the outcome (so a retry after a crash re-sends the same bytes),
//! deliver its effects (Kingdom calls, payloads to peers) and advance — every write fenced by
//! the claim, whose lease is renewed while the stage runs. The creation pseudo-stage
//! ([`START_STAGE`]) runs the plugin's `start` the same way.
//!
//! Three kinds of trouble: *not ready yet* (a peer behind or unknown, a peer or the Kingdom
//! unavailable or overloaded) releases the claim without counting an attempt, bounded only by
//! the computation deadline; *transient* (a plugin's transient error, a deadline, an
//! unexplained INTERNAL) is retried with backoff and counts; *permanent* fails the computation.
//! A failing computation stops at once and stays `FAILING` until the Kingdom acknowledged the
//! failure ([`run_supervisor`] reports it, retrying until it gets through).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context, Result};
use halo_proto::system::v1alpha as sys;
use prost::Message as _;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::blobs;
use crate::core::{Core, stage_name};
use crate::kingdom::{EffectError, ErrorKind};
use crate::metrics::RetryCause;
use crate::names;
use crate::outcome::{OutcomeCheck, validate_outcome, validate_start};
use crate::protocol::{
    ComputationResult, InputOrigin, StageError, StageInfo, StageInput, StageKind, StageOutcome,
    SystemProtocol, find_stage,
};
use crate::store::{Claim, ComputationRow, START_STAGE, now_ms};

/// Runs one worker until `shutdown`: from then on it claims nothing more, and returns once
/// the stage it is running (if any) has finished. If `abort` turns true first (the shutdown
/// grace period is over), the stage is abandoned where it stands and its claim given back
/// without counting an attempt, claimable at once by the next process.
pub async fn run_worker(
    core: Arc<Core>,
    index: usize,
    mut shutdown: watch::Receiver<bool>,
    mut abort: watch::Receiver<bool>,
) {
    let owner = format!("{}-mill-{}-{:08x}", core.id(), index, rand::random::<u32>());
    let poll = core.config.mill.poll;
    loop {
        if *shutdown.borrow() {
            return;
        }
        match core.store.claim_next(&owner, core.config.mill.lease).await {
            Ok(Some((row, previous))) => {
                if let Some(previous) = previous {
                    tracing::warn!(computation = %row.global_id, %previous, "took over an expired lease");
                    core.metrics.lease_takeover("expired", 1);
                }
                let id = row.global_id.clone();
                let claim = Claim {
                    owner: owner.clone(),
                    stage: row.stage,
                    attempt: row.attempt,
                };
                // Test builds: hold the fresh claim here until the pause ends or shutdown
                // begins (a claim that was in flight when the shutdown came).
                if let Some(pause) = halo_crashpoint::pause("mill.claim_returned") {
                    tokio::select! {
                        _ = shutdown.wait_for(|v| *v) => {}
                        _ = tokio::time::sleep(pause) => {}
                    }
                }
                // Shutdown began while claiming: start nothing new, give the claim back.
                if *shutdown.borrow() {
                    give_back_unstarted(&core, &id, &claim).await;
                    return;
                }
                let lost = Arc::new(AtomicBool::new(false));
                let heartbeat = tokio::spawn(renew_lease(
                    core.clone(),
                    id.clone(),
                    claim.clone(),
                    lost.clone(),
                ));
                let aborted = async {
                    let _ = abort.wait_for(|v| *v).await;
                };
                let res = tokio::select! {
                    res = process_claim(&core, &claim, row.clone(), &lost) => res,
                    () = aborted => {
                        // Dropping the stage's future here is what a crash at this point would
                        // do (every step is fenced by the claim), minus the lease left behind.
                        heartbeat.abort();
                        release_at_shutdown(&core, &id, &claim).await;
                        return;
                    }
                };
                heartbeat.abort();
                if let Err(e) = res {
                    // A local error (store, disk): give the claim back rather than let the
                    // lease run out. A full disk is waited out (not an attempt).
                    let full = blobs::is_storage_full(&e);
                    tracing::error!(computation = %id, storage_full = full, "mill: {e:#}");
                    let delay =
                        backoff(&core.config.mill, row.waits).min(core.config.mill.wait_max);
                    let event = if full { "waiting" } else { "transient" };
                    match core
                        .store
                        .release(&id, &claim, delay, full, (event, &format!("{e:#}")))
                        .await
                    {
                        Ok(true) => core.metrics.retry(if full {
                            RetryCause::StorageFull
                        } else {
                            RetryCause::Local
                        }),
                        Ok(false) => {}
                        Err(e2) => tracing::warn!(computation = %id, "releasing the claim: {e2:#}"),
                    }
                }
            }
            Ok(None) => {
                tokio::select! {
                    _ = shutdown.wait_for(|v| *v) => return,
                    _ = core.work.notified() => {}
                    _ = tokio::time::sleep(poll) => {}
                }
            }
            Err(e) => {
                tracing::error!("mill: claiming work failed: {e:#}");
                tokio::time::sleep(poll).await;
            }
        }
    }
}

/// Gives back a claim whose stage never started because shutdown began (not an attempt;
/// claimable at once).
async fn give_back_unstarted(core: &Arc<Core>, gid: &str, claim: &Claim) {
    match core.store.release_at_shutdown(gid, claim).await {
        Ok(true) => {
            tracing::info!(computation = %gid, attempt = claim.attempt, "shutting down: claim given back before its stage started")
        }
        Ok(false) => {}
        Err(e) => {
            tracing::warn!(computation = %gid, "shutting down: giving the claim back: {e:#}")
        }
    }
}

/// Gives a claim back at shutdown (not an attempt; claimable at once).
async fn release_at_shutdown(core: &Arc<Core>, gid: &str, claim: &Claim) {
    match core.store.release_at_shutdown(gid, claim).await {
        Ok(true) => {
            core.metrics.retry(RetryCause::Shutdown);
            tracing::info!(computation = %gid, attempt = claim.attempt, "shutting down: stage interrupted, lease released");
        }
        Ok(false) => {
            tracing::info!(computation = %gid, "shutting down: the claim had already ended")
        }
        Err(e) => {
            // The next process frees it at start-up (the data directory lock says it is dead).
            tracing::warn!(computation = %gid, "shutting down: releasing the lease: {e:#}")
        }
    }
}

/// Renews a claim every third of the lease while its stage runs; sets `lost` (and stops) if
/// the claim no longer holds, so the worker writes nothing more.
async fn renew_lease(core: Arc<Core>, gid: String, claim: Claim, lost: Arc<AtomicBool>) {
    let lease = core.config.mill.lease;
    let every = (lease / 3).max(Duration::from_millis(50));
    loop {
        tokio::time::sleep(every).await;
        match core.store.renew(&gid, &claim, lease).await {
            Ok(true) => {}
            Ok(false) => {
                tracing::warn!(computation = %gid, attempt = claim.attempt, "lease lost; this worker stops writing");
                lost.store(true, Ordering::SeqCst);
                return;
            }
            Err(e) => tracing::warn!(computation = %gid, "renewing the lease: {e:#}"),
        }
    }
}

/// Supervises failures and deadlines until `shutdown`: reports every failure the Kingdom has
/// not acknowledged yet (retrying with backoff until it gets through; only then is the
/// computation FAILED here); every 30 s fails computations past the computation deadline and
/// re-drives the active ones.
pub async fn run_supervisor(core: Arc<Core>, mut shutdown: watch::Receiver<bool>) {
    let tick = core.config.mill.poll.min(Duration::from_secs(1));
    let mut last_sweep: Option<std::time::Instant> = None;
    loop {
        if *shutdown.borrow() {
            return;
        }
        if last_sweep.is_none_or(|t| t.elapsed() >= Duration::from_secs(30)) {
            last_sweep = Some(std::time::Instant::now());
            if let Err(e) = fail_overdue(&core).await {
                tracing::warn!("deadline sweep: {e:#}");
            }
            // Re-drive every active computation: a transition whose follow-up failed (a store
            // error after the commit) is picked up again without waiting for a restart.
            match core.store.active_ids().await {
                Ok(ids) => {
                    for gid in ids {
                        if let Err(e) = core.drive(&gid).await {
                            tracing::warn!(computation = %gid, "re-evaluating: {e:#}");
                        }
                    }
                }
                Err(e) => tracing::warn!("listing active computations: {e:#}"),
            }
        }
        if let Err(e) = report_failures(&core).await {
            tracing::warn!("reporting failures to the Kingdom: {e:#}");
        }
        tokio::select! {
            _ = shutdown.wait_for(|v| *v) => return,
            _ = core.failures.notified() => {}
            _ = tokio::time::sleep(tick) => {}
        }
    }
}

async fn fail_overdue(core: &Arc<Core>) -> Result<()> {
    let deadline = core.config.mill.computation_deadline;
    let before = now_ms().saturating_sub(crate::store::millis(deadline));
    for row in core.store.overdue(before).await? {
        let name = match core.protocol_for(&row) {
            Ok(p) => stage_name(&p.stages(), row.stage),
            Err(_) => row.stage.to_string(),
        };
        let msg = format!(
            "computation deadline of {}s exceeded at duchy {} in stage {name} (attempt {})",
            deadline.as_secs(),
            core.id(),
            row.attempt
        );
        let attempt = stage_attempt(&row, &name);
        if core
            .store
            .fail(&row.global_id, None, &msg, Some(&attempt.encode_to_vec()))
            .await?
        {
            tracing::error!(computation = %row.global_id, "{msg}");
            core.failures.notify_one();
            core.ended(&row.global_id).await;
        }
    }
    Ok(())
}

async fn report_failures(core: &Arc<Core>) -> Result<()> {
    for f in core.store.pending_failures().await? {
        let attempt = match &f.stage_attempt {
            Some(b) => {
                Some(sys::StageAttempt::decode(b.as_slice()).context("stored stage attempt")?)
            }
            None => None,
        };
        match core
            .fail_at_kingdom(&f.global_id, &f.message, attempt)
            .await
        {
            Ok(how) => {
                core.store.failure_acknowledged(&f.global_id, how).await?;
                tracing::info!(computation = %f.global_id, "failure reported to the Kingdom ({how})");
            }
            Err(e) => {
                let delay = backoff(&core.config.mill, f.tries);
                tracing::warn!(computation = %f.global_id, "failure not acknowledged yet (retry in {delay:?}): {e}");
                core.store.failure_retry_later(&f.global_id, delay).await?;
            }
        }
    }
    Ok(())
}

/// `retry_base · 2^n` capped at `retry_max`, plus up to 25 % jitter.
fn backoff(cfg: &crate::MillConfig, n: u32) -> Duration {
    let base = cfg
        .retry_base
        .saturating_mul(1u32 << n.min(16))
        .min(cfg.retry_max);
    base + Duration::from_millis(rand::random::<u64>() % (base.as_millis() as u64 / 4 + 1))
}

/// A stage outcome as cached in the store: payloads live in blob files.
#[derive(Serialize, Deserialize)]
struct CachedOutcome {
    next_stage: i32,
    state: Option<Vec<u8>>,
    requisition_params: Option<Vec<u8>>,
    confirm: bool,
    result: Option<ComputationResult>,
    sends: Vec<CachedSend>,
}

#[derive(Serialize, Deserialize)]
struct CachedSend {
    to: String,
    description: i32,
    blob: String,
}

fn stage_attempt(row: &ComputationRow, name: &str) -> sys::StageAttempt {
    sys::StageAttempt {
        stage: row.stage,
        stage_name: name.to_string(),
        stage_start_time: Some(prost_types::Timestamp {
            seconds: row.stage_started_ms.div_euclid(1000),
            nanos: (row.stage_started_ms.rem_euclid(1000) * 1_000_000) as i32,
        }),
        attempt_number: row.attempt as i64,
    }
}

/// What one claim ended in (other than success).
enum Trouble {
    /// Not ready yet: release without counting the attempt.
    Wait(RetryCause, String),
    /// Retry with backoff; counts as an attempt.
    Transient(RetryCause, String),
    /// Fail the computation.
    Permanent(String),
}

impl From<EffectError> for Trouble {
    fn from(e: EffectError) -> Self {
        match e.kind {
            ErrorKind::Wait => Trouble::Wait(RetryCause::Wait, e.message),
            ErrorKind::Transient => Trouble::Transient(RetryCause::Delivery, e.message),
            ErrorKind::Permanent => Trouble::Permanent(e.message),
        }
    }
}

async fn process_claim(
    core: &Arc<Core>,
    claim: &Claim,
    row: ComputationRow,
    lost: &AtomicBool,
) -> Result<()> {
    let gid = row.global_id.clone();
    let protocol = match core.protocol_for(&row) {
        Ok(p) => p,
        Err(e) => {
            return settle(core, claim, &row, "?", Trouble::Permanent(format!("{e:#}"))).await;
        }
    };
    let stages = protocol.stages();
    let name = stage_name(&stages, row.stage);
    tracing::info!(duchy = %core.id(), computation = %gid, stage = %name, attempt = row.attempt, "claimed stage");
    if row.waits == 0 {
        // (Repeated claims of a stage that waits are audited by the wait itself.)
        core.store
            .audit(
                &gid,
                "claim",
                &format!("{name} attempt {} by {}", row.attempt, claim.owner),
            )
            .await?;
    }
    halo_crashpoint::point_at("mill.claimed", &name);
    if row.attempt > core.config.mill.max_attempts {
        let last = core
            .store
            .audit_log(&gid)
            .await?
            .into_iter()
            .rev()
            .find(|(_, e, _)| e == "transient")
            .map(|(_, _, d)| format!("; last error: {d}"))
            .unwrap_or_default();
        let msg = format!(
            "stage {name} exceeded the maximum of {} attempts{last}",
            core.config.mill.max_attempts
        );
        return settle(core, claim, &row, &name, Trouble::Permanent(msg)).await;
    }
    let deadline = core.config.mill.computation_deadline;
    if now_ms().saturating_sub(row.created_ms) > crate::store::millis(deadline) {
        let msg = format!(
            "computation deadline of {}s exceeded in stage {name}",
            deadline.as_secs()
        );
        return settle(core, claim, &row, &name, Trouble::Permanent(msg)).await;
    }
    let res = if row.stage == START_STAGE {
        run_start(core, claim, &row, &protocol, lost).await
    } else {
        run_stage(core, claim, &row, &protocol, &stages, &name, lost).await
    };
    match res {
        Ok(()) => Ok(()),
        Err(t) => settle(core, claim, &row, &name, t).await,
    }
}

/// A local error (store, disk): a full disk is waited out, anything else is transient.
fn local_trouble(e: anyhow::Error) -> Trouble {
    if blobs::is_storage_full(&e) {
        Trouble::Wait(RetryCause::StorageFull, format!("storage full: {e:#}"))
    } else {
        Trouble::Transient(RetryCause::Local, format!("{e:#}"))
    }
}

/// The metrics label of a plugin call's result.
fn outcome_label<T>(res: &Result<Result<T, StageError>, tokio::task::JoinError>) -> &'static str {
    match res {
        Ok(Ok(_)) => "ok",
        Ok(Err(StageError::Transient(_))) => "transient",
        Ok(Err(StageError::Permanent(_))) => "permanent",
        Ok(Err(StageError::InvalidInput(_))) => "invalid_input",
        Err(_) => "crashed",
    }
}

/// The creation pseudo-stage: the plugin's `start` picks the initial stage and state.
async fn run_start(
    core: &Arc<Core>,
    claim: &Claim,
    row: &ComputationRow,
    protocol: &Arc<dyn crate::protocol::Protocol>,
    lost: &AtomicBool,
) -> Result<(), Trouble> {
    let gid = &row.global_id;
    let ctx = core
        .context(row)
        .map_err(|e| Trouble::Permanent(format!("{e:#}")))?;
    let p = protocol.clone();
    let started = std::time::Instant::now();
    let res = tokio::task::spawn_blocking(move || p.start(&ctx)).await;
    let stages = protocol.stages();
    let label = outcome_label(&res);
    core.metrics.record_stage(
        &row.pin.name,
        &row.pin.version,
        "START",
        label,
        started.elapsed().as_secs_f64(),
    );
    let out = match res {
        Ok(Ok(o)) => o,
        Ok(Err(StageError::Transient(m))) => return Err(Trouble::Transient(RetryCause::Plugin, m)),
        Ok(Err(e)) => {
            return Err(Trouble::Permanent(format!(
                "{} rejected the computation: {e}",
                row.pin
            )));
        }
        Err(e) => {
            return Err(Trouble::Transient(
                RetryCause::Crashed,
                format!("{} start crashed: {e}", row.pin),
            ));
        }
    };
    validate_start(&row.pin, &stages, core.config.mill.outcome_limits(), &out)
        .map_err(|e| Trouble::Permanent(e.to_string()))?;
    halo_crashpoint::point("mill.executed:START");
    if lost.load(Ordering::SeqCst) {
        return Ok(());
    }
    let moved = core
        .transition(
            gid,
            &stages,
            Some(claim),
            START_STAGE,
            out.initial_stage,
            Some(&out.state),
        )
        .await
        .map_err(local_trouble)?;
    if !moved {
        tracing::warn!(computation = %gid, "claim lost before starting; another worker owns it");
    }
    Ok(())
}

async fn run_stage(
    core: &Arc<Core>,
    claim: &Claim,
    row: &ComputationRow,
    protocol: &Arc<dyn crate::protocol::Protocol>,
    stages: &[StageInfo],
    name: &str,
    lost: &AtomicBool,
) -> Result<(), Trouble> {
    let gid = &row.global_id;
    let Some(info) = find_stage(stages, row.stage) else {
        return Err(Trouble::Permanent(format!(
            "stage {} is not in {}'s stage table",
            row.stage, row.pin
        )));
    };
    let StageKind::Queued {
        inputs: wanted,
        requisitions,
    } = &info.kind
    else {
        return Err(Trouble::Permanent(format!(
            "stage {name} is not a queued stage"
        )));
    };
    let internal = local_trouble;
    let cached = match core
        .store
        .load_outcome(gid, row.stage)
        .await
        .map_err(internal)?
    {
        Some(json) => serde_json::from_str::<CachedOutcome>(&json)
            .map_err(|e| Trouble::Permanent(format!("cached outcome of {name}: {e}")))?,
        None => {
            let inputs = gather_inputs(core, row, wanted, *requisitions)
                .await
                .map_err(internal)?;
            let ctx = core
                .context(row)
                .map_err(|e| Trouble::Permanent(format!("{e:#}")))?;
            let participants: Vec<String> = ctx
                .participants
                .iter()
                .map(|p| p.duchy_id.clone())
                .collect();
            if let Some(pause) = halo_crashpoint::pause_at("mill.execute", name) {
                tokio::time::sleep(pause).await;
            }
            let p = protocol.clone();
            let stage = row.stage;
            let started = std::time::Instant::now();
            let res = tokio::task::spawn_blocking(move || p.execute(&ctx, stage, inputs)).await;
            // Plugin outputs are untrusted: check everything before caching or acting on it.
            let invalid = match &res {
                Ok(Ok(o)) => {
                    let check = OutcomeCheck {
                        plugin: &row.pin,
                        stages,
                        stage: row.stage,
                        duchy_id: core.id(),
                        role: row.role,
                        protocol: row.protocol,
                        participants: &participants,
                        limits: core.config.mill.outcome_limits(),
                    };
                    validate_outcome(&check, o).err()
                }
                _ => None,
            };
            let outcome_label = if invalid.is_some() {
                "invalid_outcome"
            } else {
                outcome_label(&res)
            };
            core.metrics.record_stage(
                &row.pin.name,
                &row.pin.version,
                name,
                outcome_label,
                started.elapsed().as_secs_f64(),
            );
            if let Some(e) = invalid {
                return Err(Trouble::Permanent(format!("stage {name}: {e}")));
            }
            let outcome = match res {
                Ok(Ok(o)) => o,
                Ok(Err(StageError::Transient(m))) => {
                    return Err(Trouble::Transient(
                        RetryCause::Plugin,
                        format!("{}: {m}", row.pin),
                    ));
                }
                Ok(Err(e)) => {
                    return Err(Trouble::Permanent(format!("{} stage {name}: {e}", row.pin)));
                }
                Err(e) => {
                    return Err(Trouble::Permanent(format!(
                        "{} stage {name} crashed: {e}",
                        row.pin
                    )));
                }
            };
            halo_crashpoint::point_at("mill.executed", name);
            let elapsed = started.elapsed().as_secs_f64();
            let cached = cache_outcome(core, row, outcome).await.map_err(internal)?;
            let json = serde_json::to_string(&cached)
                .map_err(|e| Trouble::Permanent(format!("encoding the outcome: {e}")))?;
            let saved = !lost.load(Ordering::SeqCst)
                && core
                    .store
                    .save_outcome(gid, claim, &json)
                    .await
                    .map_err(internal)?;
            if !saved {
                // Claim lost (or an outcome appeared): this attempt's files are nobody's.
                remove_outputs(core, &cached).await;
                match core
                    .store
                    .load_outcome(gid, row.stage)
                    .await
                    .map_err(internal)?
                {
                    Some(json) if core.store.holds(gid, claim).await.map_err(internal)? => {
                        serde_json::from_str::<CachedOutcome>(&json).map_err(|e| {
                            Trouble::Permanent(format!("cached outcome of {name}: {e}"))
                        })?
                    }
                    _ => {
                        tracing::warn!(computation = %gid, "claim lost while running {name}; outcome discarded");
                        return Ok(());
                    }
                }
            } else {
                let ran = std::time::Duration::try_from_secs_f64(elapsed).unwrap_or_default();
                core.store
                    .record_stage_run(gid, claim, name, ran)
                    .await
                    .map_err(internal)?;
                halo_crashpoint::point_at("mill.saved", name);
                cached
            }
        }
    };

    if lost.load(Ordering::SeqCst) || !core.store.holds(gid, claim).await.map_err(internal)? {
        tracing::warn!(computation = %gid, "claim lost before applying {name}; another worker owns it");
        return Ok(());
    }
    apply_effects(core, row, stages, &cached).await?;
    halo_crashpoint::point_at("mill.effects", name);
    let moved = core
        .transition(
            gid,
            stages,
            Some(claim),
            row.stage,
            cached.next_stage,
            cached.state.as_deref(),
        )
        .await
        .map_err(internal)?;
    if !moved {
        tracing::warn!(computation = %gid, "claim lost before advancing from {name}");
    } else if !cached.sends.is_empty()
        && let Ok(dir) =
            blobs::output_dir_key(gid, row.stage).and_then(|k| core.store.blob_path(&k))
    {
        // Delivered and left behind: this stage's payloads (of every attempt) are garbage.
        if let Err(e) = tokio::fs::remove_dir_all(&dir).await {
            tracing::warn!(computation = %gid, "removing the payloads of {name}: {e}");
        }
    }
    Ok(())
}

/// Ends a claim that did not advance: release it (waiting or retrying later) or fail the
/// computation, each fenced by the claim.
async fn settle(
    core: &Arc<Core>,
    claim: &Claim,
    row: &ComputationRow,
    name: &str,
    trouble: Trouble,
) -> Result<()> {
    let gid = &row.global_id;
    let cfg = &core.config.mill;
    let attempt = stage_attempt(row, name);
    match trouble {
        Trouble::Wait(cause, m) => {
            let delay = backoff(cfg, row.waits).min(cfg.wait_max);
            tracing::info!(computation = %gid, stage = %name, "not ready, retry in {delay:?}: {m}");
            if core
                .store
                .release(gid, claim, delay, true, ("waiting", &m))
                .await?
            {
                core.metrics.retry(cause);
            }
        }
        Trouble::Transient(cause, m) => {
            let delay = backoff(cfg, row.attempt.saturating_sub(1));
            tracing::warn!(computation = %gid, stage = %name, attempt = row.attempt, "transient failure, retry in {delay:?}: {m}");
            if core
                .store
                .release(gid, claim, delay, false, ("transient", &m))
                .await?
            {
                core.metrics.retry(cause);
                core.log_to_kingdom(gid, &format!("transient: {m}"), true, Some(attempt))
                    .await;
            }
        }
        Trouble::Permanent(m) => {
            // The stage and attempt travel in `StageAttempt`; the Kingdom's log entry names
            // them with this duchy.
            let msg = m;
            tracing::error!(computation = %gid, stage = %name, attempt = row.attempt, "failing: {msg}");
            if core
                .store
                .fail(gid, Some(claim), &msg, Some(&attempt.encode_to_vec()))
                .await?
            {
                core.failures.notify_one();
                core.ended(gid).await;
            }
        }
    }
    Ok(())
}

async fn remove_outputs(core: &Arc<Core>, o: &CachedOutcome) {
    for s in &o.sends {
        if let Ok(path) = core.store.blob_path(&s.blob) {
            let _ = tokio::fs::remove_file(path).await;
        }
    }
}

async fn gather_inputs(
    core: &Arc<Core>,
    row: &ComputationRow,
    wanted: &[i32],
    requisitions: bool,
) -> Result<Vec<StageInput>> {
    let mut out = Vec::new();
    for input in core.store.inputs(&row.global_id).await? {
        if wanted.contains(&input.description) {
            let data = blobs::read_blob(&core.store.blob_path(&input.blob)?).await?;
            out.push(StageInput {
                origin: InputOrigin::Peer {
                    duchy_id: input.sender,
                    description: input.description,
                },
                data,
            });
        }
    }
    if requisitions {
        for r in core.store.requisitions(&row.global_id).await? {
            if r.fulfilling_duchy != core.id() {
                continue;
            }
            if let Some(blob) = &r.blob {
                let data = blobs::read_blob(&core.store.blob_path(blob)?).await?;
                out.push(StageInput {
                    origin: InputOrigin::Requisition {
                        requisition_id: r.requisition_id.clone(),
                        header: r.header.clone().unwrap_or_default(),
                    },
                    data,
                });
            }
        }
    }
    Ok(out)
}

async fn cache_outcome(
    core: &Arc<Core>,
    row: &ComputationRow,
    o: StageOutcome,
) -> Result<CachedOutcome> {
    let mut sends = Vec::new();
    for (i, s) in o.sends.into_iter().enumerate() {
        let key = blobs::output_key(&row.global_id, row.stage, row.attempt, i)?;
        blobs::write_blob(&core.store.blob_path(&key)?, &s.payload).await?;
        sends.push(CachedSend {
            to: s.to,
            description: s.description,
            blob: key,
        });
    }
    Ok(CachedOutcome {
        next_stage: o.next_stage,
        state: o.state,
        requisition_params: o.requisition_params,
        confirm: o.confirm,
        result: o.result,
        sends,
    })
}

async fn apply_effects(
    core: &Arc<Core>,
    row: &ComputationRow,
    stages: &[StageInfo],
    o: &CachedOutcome,
) -> Result<(), EffectError> {
    if let Some(params) = &o.requisition_params {
        core.publish_requisition_params(&row.global_id, params)
            .await?;
    }
    if o.confirm {
        core.confirm_participation(&row.global_id).await?;
    }
    for s in &o.sends {
        send_to_peer(core, row, stages, s).await?;
    }
    if let Some(result) = &o.result {
        core.send_result(&row.global_id, result).await?;
    }
    Ok(())
}

/// The stage number in a `ComputationStage` reply.
pub fn stage_number(s: &sys::ComputationStage) -> Option<i32> {
    s.stage
        .as_ref()
        .map(|s| SystemProtocol::of_computation_stage(s).1)
}

pub fn advance_header(
    protocol: SystemProtocol,
    global_id: &str,
    description: i32,
) -> sys::AdvanceComputationRequest {
    use sys::advance_computation_request::{Header, Payload};
    sys::AdvanceComputationRequest {
        payload: Some(Payload::Header(Header {
            name: names::computation_name(global_id),
            protocol: Some(protocol.advance_header(description)),
        })),
    }
}

/// Delivers one payload, checking the peer's stage first: exactly at the waiting stage →
/// send; already past it → skip (delivered before); before it → transient (retry later).
async fn send_to_peer(
    core: &Arc<Core>,
    row: &ComputationRow,
    stages: &[StageInfo],
    s: &CachedSend,
) -> Result<(), EffectError> {
    let wait_stage = stages
        .iter()
        .find(|i| matches!(i.kind, StageKind::WaitInputs { description, .. } if description == s.description))
        .map(|i| i.number)
        .ok_or_else(|| EffectError::permanent(format!("no stage waits for description {}", s.description)))?;
    let mut client = core
        .peer(&s.to)
        .map_err(|e| EffectError::permanent(format!("{e:#}")))?;
    let stage = client
        .get_computation_stage(sys::GetComputationStageRequest {
            name: names::computation_stage_name(&row.global_id, &s.to),
        })
        .await;
    let peer_stage = match stage {
        Ok(r) => stage_number(r.get_ref()),
        Err(st) if st.code() == tonic::Code::NotFound => {
            return Err(EffectError::wait(format!(
                "{} does not know the computation yet",
                s.to
            )));
        }
        Err(st) => {
            return Err(EffectError::from_status(
                &format!("GetComputationStage at {}", s.to),
                &st,
            ));
        }
    };
    let Some(peer_stage) = peer_stage else {
        return Err(EffectError::permanent(format!(
            "{} reported no stage",
            s.to
        )));
    };
    if peer_stage > wait_stage {
        tracing::info!(computation = %row.global_id, to = %s.to, "peer already past stage {wait_stage}; not sending again");
        return Ok(());
    }
    if peer_stage < wait_stage {
        return Err(EffectError::wait(format!(
            "{} is at stage {peer_stage}, before {wait_stage}; will retry",
            s.to
        )));
    }
    let path = core
        .store
        .blob_path(&s.blob)
        .map_err(|e| EffectError::permanent(format!("{e:#}")))?;
    // Streamed from the file one chunk at a time: the payload is never whole in memory.
    let chunk = core.config.mill.chunk_size.clamp(1 << 10, 4 << 20);
    let blob = blobs::open_chunks(&path, chunk)
        .await
        .map_err(|e| EffectError::transient(format!("{e:#}")))?;
    let sent = blob.len;
    let failed = blob.failed;
    let header = advance_header(row.protocol, &row.global_id, s.description);
    fn body_chunk(partial_data: Vec<u8>) -> sys::AdvanceComputationRequest {
        halo_crashpoint::point("send.chunk");
        sys::AdvanceComputationRequest {
            payload: Some(sys::advance_computation_request::Payload::BodyChunk(
                sys::advance_computation_request::BodyChunk { partial_data },
            )),
        }
    }
    use tokio_stream::StreamExt as _;
    let msgs = tokio_stream::once(header).chain(blob.chunks.map(body_chunk));
    // A read error abandons the call (cancelling the stream), never completes it. The call
    // runs in its own task (owning client and stream), which the read error aborts.
    let call = tokio::spawn(async move { client.advance_computation(msgs).await });
    let abort = call.abort_handle();
    let read_error = Box::pin(async move {
        match failed.await {
            Ok(e) => e,
            Err(_) => futures::future::pending().await,
        }
    });
    match futures::future::select(call, read_error).await {
        futures::future::Either::Left((joined, _)) => {
            joined
                .map_err(|e| EffectError::transient(format!("delivery task: {e}")))?
                .map_err(|st| {
                    EffectError::from_status(&format!("AdvanceComputation to {}", s.to), &st)
                })?;
        }
        futures::future::Either::Right((e, _)) => {
            abort.abort();
            return Err(EffectError::transient(e));
        }
    }
    halo_crashpoint::point("send.acked");
    core.metrics.bytes_sent(&s.to, sent);
    core.store
        .audit(
            &row.global_id,
            "sent",
            &format!("{sent} bytes (description {}) to {}", s.description, s.to),
        )
        .await
        .map_err(|e| EffectError::transient(format!("{e:#}")))?;
    Ok(())
}

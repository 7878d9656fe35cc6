//! Mill workers: claim a queued stage (lease), run it through the pinned protocol on a
//! blocking thread, cache the outcome (so a retry after a crash re-sends the same bytes),
//! deliver its effects (Kingdom calls, payloads to peers) and advance — all only while the
//! claim still holds. Transient failures are retried with backoff; permanent ones, or too
//! many attempts, fail the computation at the Kingdom with the stage attempt.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, anyhow};
use halo_proto::system::v1alpha as sys;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::blobs;
use crate::core::Core;
use crate::kingdom::EffectError;
use crate::names;
use crate::outcome::{OutcomeCheck, validate_outcome};
use crate::protocol::{
    ComputationResult, InputOrigin, StageError, StageInfo, StageInput, StageKind, StageOutcome,
    SystemProtocol, find_stage,
};
use crate::store::{Claim, ComputationRow, now_ms};

/// Runs one worker until `shutdown`.
pub async fn run_worker(core: Arc<Core>, index: usize, mut shutdown: watch::Receiver<bool>) {
    let owner = format!("{}-mill-{}-{:08x}", core.id(), index, rand::random::<u32>());
    let poll = core.config.mill.poll;
    loop {
        if *shutdown.borrow() {
            return;
        }
        match core.store.claim(&owner, core.config.mill.lease).await {
            Ok(Some(row)) => {
                let id = row.global_id.clone();
                if let Err(e) = process_claim(&core, &owner, row).await {
                    tracing::error!(computation = %id, "mill: {e:#}");
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

fn stage_attempt(row: &ComputationRow, info: Option<&StageInfo>) -> sys::StageAttempt {
    sys::StageAttempt {
        stage: row.stage,
        stage_name: info.map(|i| i.name.clone()).unwrap_or_default(),
        stage_start_time: Some(prost_types::Timestamp {
            seconds: row.stage_started_ms.div_euclid(1000),
            nanos: (row.stage_started_ms.rem_euclid(1000) * 1_000_000) as i32,
        }),
        attempt_number: row.attempt as i64,
    }
}

async fn process_claim(core: &Arc<Core>, owner: &str, row: ComputationRow) -> Result<()> {
    let gid = row.global_id.clone();
    let claim = Claim {
        owner: owner.to_string(),
        stage: row.stage,
        attempt: row.attempt,
    };
    let protocol = match core.protocol_for(&row) {
        Ok(p) => p,
        Err(e) => return fail(core, &row, None, &format!("{e:#}")).await,
    };
    let stages = protocol.stages();
    let info = find_stage(&stages, row.stage).cloned();
    let attempt_info = stage_attempt(&row, info.as_ref());
    if row.attempt > core.config.mill.max_attempts {
        let msg = format!(
            "stage {} exceeded the maximum of {} attempts",
            info.as_ref().map(|i| i.name.as_str()).unwrap_or("?"),
            core.config.mill.max_attempts
        );
        return fail(core, &row, Some(attempt_info), &msg).await;
    }
    let Some(info) = info else {
        return fail(
            core,
            &row,
            Some(attempt_info),
            &format!("stage {} is not in {}'s stage table", row.stage, row.pin),
        )
        .await;
    };
    let StageKind::Queued {
        inputs: wanted,
        requisitions,
    } = &info.kind
    else {
        return fail(
            core,
            &row,
            Some(attempt_info),
            &format!("stage {} is not a queued stage", info.name),
        )
        .await;
    };
    core.store
        .audit(
            &gid,
            "claim",
            &format!("{} attempt {} by {owner}", info.name, row.attempt),
        )
        .await?;

    let cached = match core.store.load_outcome(&gid, row.stage).await? {
        Some(json) => serde_json::from_str::<CachedOutcome>(&json).context("cached outcome")?,
        None => {
            let inputs = gather_inputs(core, &row, wanted, *requisitions).await?;
            let ctx = core.context(&row)?;
            let participants: Vec<String> = ctx
                .participants
                .iter()
                .map(|p| p.duchy_id.clone())
                .collect();
            let p = protocol.clone();
            let stage = row.stage;
            let started = std::time::Instant::now();
            let res = tokio::task::spawn_blocking(move || p.execute(&ctx, stage, inputs)).await;
            // Plugin outputs are untrusted: check everything before caching or acting on it.
            let invalid = match &res {
                Ok(Ok(o)) => {
                    let check = OutcomeCheck {
                        plugin: &row.pin,
                        stages: &stages,
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
            let outcome_label = match &res {
                _ if invalid.is_some() => "invalid_outcome",
                Ok(Ok(_)) => "ok",
                Ok(Err(StageError::Transient(_))) => "transient",
                Ok(Err(StageError::Permanent(_))) => "permanent",
                Ok(Err(StageError::InvalidInput(_))) => "invalid_input",
                Err(_) => "crashed",
            };
            core.metrics.record_stage(
                &row.pin.name,
                &row.pin.version,
                &info.name,
                outcome_label,
                started.elapsed().as_secs_f64(),
            );
            if let Some(e) = invalid {
                return fail(
                    core,
                    &row,
                    Some(attempt_info),
                    &format!("stage {}: {e}", info.name),
                )
                .await;
            }
            let outcome = match res {
                Ok(Ok(o)) => o,
                Ok(Err(StageError::Transient(m))) => {
                    return retry_later(
                        core,
                        &row,
                        &claim,
                        attempt_info,
                        &format!("{}: {m}", row.pin),
                    )
                    .await;
                }
                Ok(Err(e)) => {
                    return fail(
                        core,
                        &row,
                        Some(attempt_info),
                        &format!("{} stage {}: {e}", row.pin, info.name),
                    )
                    .await;
                }
                Err(e) => {
                    return fail(
                        core,
                        &row,
                        Some(attempt_info),
                        &format!("{} stage {} crashed: {e}", row.pin, info.name),
                    )
                    .await;
                }
            };
            core.store
                .audit(
                    &gid,
                    "executed",
                    &format!("{} in {:.3}s", info.name, started.elapsed().as_secs_f64()),
                )
                .await?;
            let cached = cache_outcome(core, &row, outcome).await?;
            core.store
                .save_outcome(&gid, row.stage, &serde_json::to_string(&cached)?)
                .await?;
            cached
        }
    };

    if !core.store.holds(&gid, &claim).await? {
        tracing::warn!(computation = %gid, "claim lost before applying {}; another worker owns it", info.name);
        return Ok(());
    }
    if let Err(e) = apply_effects(core, &row, &stages, &cached).await {
        return if e.transient {
            retry_later(core, &row, &claim, attempt_info, &e.message).await
        } else {
            fail(core, &row, Some(attempt_info), &e.message).await
        };
    }
    let moved = core
        .enter_stage(
            &gid,
            &stages,
            Some(&claim),
            row.stage,
            cached.next_stage,
            cached.state.as_deref(),
        )
        .await?;
    if !moved {
        tracing::warn!(computation = %gid, "claim lost before advancing from {}", info.name);
    }
    Ok(())
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
        let key = blobs::output_key(&row.global_id, row.stage, i)?;
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
    use sys::computation_stage::Stage;
    Some(match s.stage.as_ref()? {
        Stage::LiquidLegionsV2Stage(x) => x.stage,
        Stage::ReachOnlyLiquidLegionsStage(x) => x.stage,
        Stage::HonestMajorityShareShuffleStage(x) => x.stage,
    })
}

pub fn advance_header(
    protocol: SystemProtocol,
    global_id: &str,
    description: i32,
) -> sys::AdvanceComputationRequest {
    use sys::advance_computation_request::{Header, Payload, header::Protocol};
    let p = match protocol {
        SystemProtocol::LiquidLegionsV2 => {
            Protocol::LiquidLegionsV2(sys::LiquidLegionsV2 { description })
        }
        SystemProtocol::ReachOnlyLiquidLegionsV2 => {
            Protocol::ReachOnlyLiquidLegionsV2(sys::ReachOnlyLiquidLegionsV2 { description })
        }
        SystemProtocol::HonestMajorityShareShuffle => {
            Protocol::HonestMajorityShareShuffle(sys::HonestMajorityShareShuffle { description })
        }
    };
    sys::AdvanceComputationRequest {
        payload: Some(Payload::Header(Header {
            name: names::computation_name(global_id),
            protocol: Some(p),
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
            return Err(EffectError::transient(format!(
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
        return Err(EffectError::transient(format!(
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

async fn retry_later(
    core: &Arc<Core>,
    row: &ComputationRow,
    claim: &Claim,
    attempt: sys::StageAttempt,
    message: &str,
) -> Result<()> {
    let cfg = &core.config.mill;
    let exp = row.attempt.saturating_sub(1).min(16);
    let base = cfg
        .retry_base
        .saturating_mul(1u32 << exp)
        .min(cfg.retry_max);
    let jitter = Duration::from_millis(rand::random::<u64>() % (base.as_millis() as u64 / 4 + 1));
    let delay = base + jitter;
    tracing::info!(computation = %row.global_id, "transient failure, retry in {delay:?}: {message}");
    core.store
        .audit(&row.global_id, "transient", message)
        .await?;
    core.store.release(&row.global_id, claim, delay).await?;
    core.log_to_kingdom(
        &row.global_id,
        &format!("transient: {message}"),
        true,
        Some(attempt),
    )
    .await;
    let _ = now_ms();
    Ok(())
}

async fn fail(
    core: &Arc<Core>,
    row: &ComputationRow,
    attempt: Option<sys::StageAttempt>,
    message: &str,
) -> Result<()> {
    tracing::error!(computation = %row.global_id, "failing computation: {message}");
    let mut last = None;
    for i in 0..3 {
        match core
            .fail_at_kingdom(&row.global_id, message, attempt.clone())
            .await
        {
            Ok(()) => {
                last = None;
                break;
            }
            Err(e) if e.transient && i < 2 => {
                last = Some(e);
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => {
                last = Some(e);
                break;
            }
        }
    }
    core.store.finish(&row.global_id, "FAILED").await?;
    core.store
        .audit(&row.global_id, "finish", &format!("FAILED: {message}"))
        .await?;
    if let Some(e) = last {
        return Err(anyhow!("could not report the failure to the Kingdom: {e}"));
    }
    Ok(())
}

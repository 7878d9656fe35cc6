//! State shared by the herald, the mill workers and the servers, and the generic stage
//! machinery that moves a computation through its protocol's stage table.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result, anyhow};
use halo_proto::system::v1alpha::Computation;
use halo_proto::system::v1alpha::computation::State as ComputationState;
use halo_proto::system::v1alpha::computation_control_client::ComputationControlClient;
use prost::Message;
use sha2::{Digest, Sha256};
use tokio::sync::Notify;
use tonic::transport::Channel;

use crate::identity::{CertificateSource, DuchyIdentity};
use crate::protocol::{
    ComputationContext, Participant, Protocol, Role, StageIdentity, StageInfo, StageKind,
    SystemProtocol, find_stage,
};
use crate::store::{Claim, ComputationRow, Store};
use crate::{DuchyConfig, names};

pub struct Core {
    pub config: DuchyConfig,
    pub store: Store,
    /// Woken whenever a stage becomes claimable.
    pub work: Notify,
    /// Woken when a failure is queued for the Kingdom.
    pub failures: Notify,
    pub metrics: Arc<crate::metrics::Metrics>,
    kingdom: Channel,
    peers: Mutex<HashMap<String, (String, Channel)>>,
    certificate_name: String,
    stage_identity: Arc<dyn StageIdentity>,
    /// Concurrent AdvanceComputation streams per peer duchy.
    pub advance_streams: halo_limits::PerKeyLimiter,
    /// Concurrent FulfillRequisition streams per data provider.
    pub fulfillment_streams: halo_limits::PerKeyLimiter,
}

/// Certificate id as the Kingdom derives it: first 8 bytes of SHA-256(DER), hex.
pub fn certificate_id(der: &[u8]) -> String {
    hex::encode(&Sha256::digest(der)[..8])
}

/// Whether Kingdom state `seen` satisfies a stage waiting for `wanted`: the same, or a later
/// non-terminal state (so a notification that arrived before the stage was entered counts).
pub fn kingdom_state_reached(seen: i32, wanted: ComputationState) -> bool {
    let wanted = wanted as i32;
    seen == wanted || (seen > wanted && seen <= ComputationState::PendingComputation as i32)
}

/// The name of stage `number` in `stages` (`START` for the creation pseudo-stage).
pub fn stage_name(stages: &[StageInfo], number: i32) -> String {
    if number == crate::store::START_STAGE {
        return "START".to_string();
    }
    find_stage(stages, number)
        .map(|i| i.name.clone())
        .unwrap_or_else(|| number.to_string())
}

/// Which protocol a Kingdom computation runs.
pub fn system_protocol_of(c: &Computation) -> Option<SystemProtocol> {
    SystemProtocol::of_computation(c)
}

impl Core {
    pub async fn new(config: DuchyConfig) -> Result<Core> {
        let store = Store::open(&config.data_dir).await?;
        // Partial uploads of a previous run (crash, kill) are never completed: remove them.
        let swept = crate::blobs::sweep_partial(store.blob_root()).await?;
        if swept > 0 {
            tracing::info!(duchy = %config.id, files = swept, "removed partial uploads of an earlier run");
        }
        let kingdom = config
            .identity
            .channel(
                &config.trust,
                &halo_identity::Principal::Kingdom,
                &config.kingdom_url,
            )
            .with_context(|| format!("kingdom channel {}", config.kingdom_url))?;
        let der = config
            .identity
            .certificate_der()
            .context("duchy certificate")?;
        let certificate_name = format!(
            "duchies/{}/certificates/{}",
            config.id,
            certificate_id(&der)
        );
        let stage_identity = DuchyIdentity::new(
            Some((config.identity.clone(), certificate_name.clone())),
            config.trust.clone(),
            CertificateSource::Kingdom {
                channel: kingdom.clone(),
                runtime: tokio::runtime::Handle::current(),
            },
        );
        let advance_streams = halo_limits::PerKeyLimiter::new(
            "AdvanceComputation streams",
            config.limits.max_advance_streams_per_peer,
        );
        let fulfillment_streams = halo_limits::PerKeyLimiter::new(
            "FulfillRequisition streams",
            config.limits.max_fulfillment_streams_per_provider,
        );
        Ok(Core {
            advance_streams,
            fulfillment_streams,
            stage_identity,
            config,
            store,
            work: Notify::new(),
            failures: Notify::new(),
            metrics: Arc::new(crate::metrics::Metrics::new()),
            kingdom,
            peers: Mutex::new(HashMap::new()),
            certificate_name,
        })
    }

    pub fn id(&self) -> &str {
        &self.config.id
    }

    /// `duchies/{id}/certificates/{cid}` of this duchy's certificate.
    pub fn certificate_name(&self) -> &str {
        &self.certificate_name
    }

    /// The identity services stages of this duchy use.
    pub fn stage_identity(&self) -> Arc<dyn StageIdentity> {
        self.stage_identity.clone()
    }

    pub fn kingdom_channel(&self) -> Channel {
        self.kingdom.clone()
    }

    /// A ComputationControl client for a peer duchy.
    pub fn peer(&self, duchy: &str) -> Result<ComputationControlClient<Channel>> {
        let url = self
            .config
            .peers
            .get(duchy)
            .ok_or_else(|| anyhow!("no address configured for duchy {duchy}"))?;
        let mut peers = self
            .peers
            .lock()
            .map_err(|_| anyhow!("peer cache poisoned"))?;
        if let Some((u, ch)) = peers.get(duchy)
            && *u == url
        {
            return Ok(ComputationControlClient::new(ch.clone())
                .max_decoding_message_size(self.config.limits.server.max_message_bytes)
                .max_encoding_message_size(self.config.limits.server.max_message_bytes));
        }
        let ch = self.config.identity.channel(
            &self.config.trust,
            &halo_identity::Principal::Duchy(duchy.to_owned()),
            &url,
        )?;
        peers.insert(duchy.to_string(), (url, ch.clone()));
        Ok(ComputationControlClient::new(ch)
            .max_decoding_message_size(self.config.limits.server.max_message_bytes)
            .max_encoding_message_size(self.config.limits.server.max_message_bytes))
    }

    /// The limits payload bounds are derived under ([`crate::protocol::payload_bound`]).
    pub fn payload_limits(&self) -> crate::protocol::PayloadLimits {
        crate::protocol::PayloadLimits {
            max_register_count: self.config.limits.max_register_count,
            ceiling: self.config.max_payload_bytes,
        }
    }

    /// This duchy's role in `protocol`, if it takes part at all.
    pub fn role_of(&self, protocol: SystemProtocol, duchy: &str) -> Option<Role> {
        self.config.roles.role_of(protocol, duchy)
    }

    /// The participants of a computation with their roles.
    pub fn participants(&self, protocol: SystemProtocol, c: &Computation) -> Vec<Participant> {
        c.computation_participants
            .iter()
            .filter_map(|p| {
                let (_, duchy) = names::parse_participant(&p.name)?;
                let role = self.role_of(protocol, duchy)?;
                Some(Participant {
                    duchy_id: duchy.to_string(),
                    role,
                    requisition_params: p
                        .requisition_params
                        .as_ref()
                        .map(|rp| rp.encode_to_vec())
                        .unwrap_or_default(),
                })
            })
            .collect()
    }

    pub fn protocol_for(&self, row: &ComputationRow) -> Result<Arc<dyn Protocol>> {
        self.config
            .protocols
            .pinned(&row.pin)
            .ok_or_else(|| anyhow!("pinned protocol {} is not loaded", row.pin))
    }

    /// Checks that the roles file still gives the computation's participants the roles it
    /// was created with: this duchy's own role is stored at creation, the others' are read
    /// from the roles file at every stage, so an edited roles file (and a restart) in the
    /// middle of a computation would otherwise have this duchy play along with the wrong
    /// roles. `Err` says what changed (the computation must fail).
    pub fn check_roles_unchanged(
        &self,
        row: &ComputationRow,
        c: &Computation,
    ) -> Result<(), String> {
        let me = self.id();
        let listed: Vec<&str> = c
            .computation_participants
            .iter()
            .filter_map(|p| names::parse_participant(&p.name).map(|(_, d)| d))
            .collect();
        if let Err(why) = self.config.roles.check_participants(row.protocol, &listed) {
            return Err(format!(
                "duchy {me}: the roles file changed while the computation was running: {why}"
            ));
        }
        let now = self.role_of(row.protocol, me);
        if now != Some(row.role) {
            return Err(format!(
                "duchy {me}: the roles file changed while the computation was running: this \
                 duchy was created with role {:?} in {}, the roles file now gives {now:?}",
                row.role, row.protocol
            ));
        }
        Ok(())
    }

    /// The context of a stage (or of the plugin's `start`). Fails if the roles file no longer
    /// matches the computation ([`Core::check_roles_unchanged`]).
    pub fn context(&self, row: &ComputationRow) -> Result<ComputationContext> {
        let c = Computation::decode(row.computation.as_slice())
            .context("stored computation snapshot")?;
        self.check_roles_unchanged(row, &c)
            .map_err(|e| anyhow!(e))?;
        Ok(ComputationContext {
            global_id: row.global_id.clone(),
            duchy_id: self.config.id.clone(),
            role: row.role,
            protocol: row.protocol,
            participants: self.participants(row.protocol, &c),
            computation: row.computation.clone(),
            state: row.plugin_state.clone(),
            attempt: row.attempt,
            identity: Some(self.stage_identity()),
        })
    }

    /// Moves a computation from stage `from` into `to` (one store transaction with its audit
    /// entry; with `claim`, fenced by it), then [`Core::drive`]s it. Returns false if the
    /// precondition (stage, claim) no longer held.
    pub async fn transition(
        &self,
        global_id: &str,
        stages: &[StageInfo],
        claim: Option<&Claim>,
        from: i32,
        to: i32,
        plugin_state: Option<&[u8]>,
    ) -> Result<bool> {
        let info = find_stage(stages, to)
            .ok_or_else(|| anyhow!("stage {to} is not in the protocol's stage table"))?;
        let queued = matches!(info.kind, StageKind::Queued { .. });
        halo_crashpoint::point_at("stage.leave", &stage_name(stages, from));
        if !self
            .store
            .advance(
                global_id,
                claim,
                from,
                to,
                queued,
                plugin_state,
                &format!("{} -> {} ({})", from, to, info.name),
            )
            .await?
        {
            return Ok(false);
        }
        halo_crashpoint::point_at("stage.enter", &info.name);
        tracing::info!(duchy = %self.config.id, computation = %global_id, stage = %info.name, "entered stage");
        if queued {
            self.wake_mill();
        }
        self.drive(global_id).await?;
        Ok(true)
    }

    /// Fails a computation outside any stage (no claim): it stops here at once and the
    /// failure is reported to the Kingdom until acknowledged.
    pub async fn fail(&self, global_id: &str, message: &str) -> Result<()> {
        tracing::error!(duchy = %self.config.id, computation = %global_id, "failing: {message}");
        if self.store.fail(global_id, None, message, None).await? {
            self.failures.notify_one();
        }
        self.ended(global_id).await;
        Ok(())
    }

    /// Tells the computation's protocol it ended here (best effort: caches are bounded).
    pub async fn ended(&self, global_id: &str) {
        if let Ok(Some(row)) = self.store.get(global_id).await
            && let Ok(p) = self.protocol_for(&row)
        {
            p.computation_ended(global_id);
        }
    }

    /// Wakes idle mill workers (a stage became claimable).
    pub fn wake_mill(&self) {
        self.work.notify_waiters();
        self.work.notify_one();
    }

    /// The one place that decides what happens next for a computation, from stored state
    /// only: a waiting stage whose inputs are all recorded, or whose Kingdom state was
    /// reached, moves on; a queued stage wakes the mill; a terminal stage finishes the
    /// computation. Idempotent and safe to call at any time, from any task: the herald after
    /// each update, the control server after each delivery (duplicates included), the mill
    /// after each stage, and start-up for every active computation.
    pub async fn drive(&self, global_id: &str) -> Result<()> {
        // Bounded: each round either returns or commits one transition to a later stage.
        for _ in 0..1024 {
            let Some(row) = self.store.get(global_id).await? else {
                return Ok(());
            };
            if row.terminal.is_some() {
                return Ok(());
            }
            if row.stage == crate::store::START_STAGE {
                self.wake_mill();
                return Ok(());
            }
            let protocol = match self.protocol_for(&row) {
                Ok(p) => p,
                Err(e) => {
                    self.fail(global_id, &format!("{e:#}")).await?;
                    return Ok(());
                }
            };
            let stages = protocol.stages();
            let Some(info) = find_stage(&stages, row.stage) else {
                let msg = format!("stage {} is not in {}'s stage table", row.stage, row.pin);
                self.fail(global_id, &msg).await?;
                return Ok(());
            };
            let next = match &info.kind {
                StageKind::Queued { .. } => {
                    self.wake_mill();
                    return Ok(());
                }
                StageKind::Terminal => {
                    self.store.finish(global_id, "COMPLETE", "COMPLETE").await?;
                    protocol.computation_ended(global_id);
                    return Ok(());
                }
                StageKind::WaitKingdom { state, next } => {
                    if !kingdom_state_reached(row.kingdom_state, *state) {
                        return Ok(());
                    }
                    *next
                }
                StageKind::WaitInputs {
                    description,
                    from,
                    next,
                } => {
                    let received: Vec<String> = self
                        .store
                        .inputs(global_id)
                        .await?
                        .into_iter()
                        .filter(|i| i.description == *description)
                        .map(|i| i.sender)
                        .collect();
                    let snapshot = Computation::decode(row.computation.as_slice())
                        .context("stored computation snapshot")?;
                    if let Err(msg) = self.check_roles_unchanged(&row, &snapshot) {
                        self.fail(global_id, &msg).await?;
                        return Ok(());
                    }
                    let complete = match self.expected_senders(&row, from)? {
                        Some(list) if list.is_empty() => {
                            // No participant has a role this stage waits for: a role
                            // configuration that does not match the computation. Moving on
                            // would run the next stage without its inputs.
                            let msg = format!(
                                "stage {} waits for inputs (description {description}) from {from:?}, \
                                 but no other participant of the computation has such a role",
                                info.name
                            );
                            self.fail(global_id, &msg).await?;
                            return Ok(());
                        }
                        Some(list) => list.iter().all(|d| received.contains(d)),
                        None => !received.is_empty(),
                    };
                    if !complete {
                        return Ok(());
                    }
                    *next
                }
            };
            let Some(next_info) = find_stage(&stages, next) else {
                let msg = format!(
                    "stage {} of {} leads to stage {next}, which is not in its stage table",
                    info.name, row.pin
                );
                self.fail(global_id, &msg).await?;
                return Ok(());
            };
            let queued = matches!(next_info.kind, StageKind::Queued { .. });
            halo_crashpoint::point_at("stage.leave", &info.name);
            if self
                .store
                .advance(
                    global_id,
                    None,
                    row.stage,
                    next,
                    queued,
                    None,
                    &format!("{} -> {next} ({})", row.stage, next_info.name),
                )
                .await?
            {
                halo_crashpoint::point_at("stage.enter", &next_info.name);
                tracing::info!(duchy = %self.config.id, computation = %global_id, stage = %next_info.name, "entered stage");
            }
        }
        Err(anyhow!(
            "computation {global_id}: stage table does not settle (a loop of waiting stages?)"
        ))
    }

    /// The duchy ids a waiting stage expects payloads from.
    pub fn expected_senders(
        &self,
        row: &ComputationRow,
        from: &crate::protocol::InputSource,
    ) -> Result<Option<Vec<String>>> {
        use crate::protocol::InputSource;
        let c = Computation::decode(row.computation.as_slice())?;
        let parts = self.participants(row.protocol, &c);
        Ok(match from {
            InputSource::Roles(roles) => Some(
                parts
                    .iter()
                    .filter(|p| roles.contains(&p.role) && p.duchy_id != self.config.id)
                    .map(|p| p.duchy_id.clone())
                    .collect(),
            ),
            InputSource::AnyOne => None,
        })
    }
}

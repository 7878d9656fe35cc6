//! The duchy's local computation store: SQLite (via sqlx) for computations, received inputs,
//! requisitions, cached stage outcomes, the herald's continuation token and the audit log;
//! payloads as files under `{data_dir}/blobs`.
//!
//! All access goes through one connection, so every method is atomic and writers never race;
//! no method holds the connection across network I/O. Every method that changes a computation
//! is one transaction (state change and its audit entry commit together), and every write of a
//! stage's results is fenced by the claim (owner, stage, attempt) that produced it.
//!
//! Durability: WAL with `synchronous=FULL` (a committed transition survives power loss before
//! its effects are sent); blob files are fsynced and so is their directory after the rename
//! (`blobs`). The data directory is locked (`LOCK`, an exclusive advisory lock) while a store
//! is open, so every lease found at start-up belongs to a dead process and is freed at once.

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, anyhow};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Row, SqlitePool};

use crate::protocol::{PluginPin, Role, SystemProtocol};

/// The schema: `host/duchy/migrations`, applied at [`Store::open`].
static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// The pseudo-stage of a computation the herald recorded and no mill worker has started yet:
/// claiming it runs the plugin's `start` (with the same deadline, retry and error rules as
/// every stage), which picks the real initial stage. Reported to peers as stage 0.
pub const START_STAGE: i32 = -1;

/// `terminal` of a computation whose failure is not yet acknowledged by the Kingdom: no more
/// work runs; it becomes `FAILED` once the Kingdom has heard of it.
pub const FAILING: &str = "FAILING";

pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// `d` in milliseconds, saturating (a configured "forever" such as `u64::MAX` seconds must not
/// wrap into the past).
pub fn millis(d: std::time::Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// One local computation.
#[derive(Clone, Debug)]
pub struct ComputationRow {
    pub global_id: String,
    pub protocol: SystemProtocol,
    pub role: Role,
    pub pin: PluginPin,
    pub stage: i32,
    /// Attempts of the current stage so far (claims).
    pub attempt: u32,
    pub queued: bool,
    pub lease_owner: Option<String>,
    pub lease_expiry_ms: Option<i64>,
    /// Latest `Computation.State` seen from the Kingdom.
    pub kingdom_state: i32,
    /// Serialized system `Computation` as last seen.
    pub computation: Vec<u8>,
    pub plugin_state: Vec<u8>,
    /// Set once the computation is finished here: "SUCCEEDED", "FAILED", "CANCELLED".
    pub terminal: Option<String>,
    pub version: i64,
    pub created_ms: i64,
    pub updated_ms: i64,
    pub stage_started_ms: i64,
    /// Consecutive "not ready yet" releases of the current stage (backoff only).
    pub waits: u32,
}

/// A failure to report to the Kingdom (kept until acknowledged).
#[derive(Clone, Debug)]
pub struct FailureRow {
    pub global_id: String,
    pub message: String,
    /// Encoded system `StageAttempt`, if the failure happened in a stage.
    pub stage_attempt: Option<Vec<u8>>,
    pub tries: u32,
}

/// A new computation to insert.
pub struct NewComputation {
    pub global_id: String,
    pub protocol: SystemProtocol,
    pub role: Role,
    pub pin: PluginPin,
    pub stage: i32,
    pub queued: bool,
    pub kingdom_state: i32,
    pub computation: Vec<u8>,
    pub plugin_state: Vec<u8>,
}

/// A requisition of a local computation.
#[derive(Clone, Debug)]
pub struct RequisitionRow {
    pub global_id: String,
    pub requisition_id: String,
    pub fulfilling_duchy: String,
    pub requisition_spec_hash: Vec<u8>,
    pub nonce_hash: Vec<u8>,
    pub blob: Option<String>,
    pub header: Option<Vec<u8>>,
    pub nonce: Option<u64>,
}

/// A received AdvanceComputation payload.
#[derive(Clone, Debug)]
pub struct InputRow {
    pub description: i32,
    pub sender: String,
    pub blob: String,
    pub size: i64,
    pub sha256: String,
}

/// One executed stage (see [`Store::record_stage_run`]).
#[derive(Clone, Debug, PartialEq)]
pub struct StageRun {
    pub stage: i32,
    /// The stage's name in the pinned plugin's stage table.
    pub stage_name: String,
    /// The claim's attempt that ran it.
    pub attempt: u32,
    /// Wall-clock milliseconds since the Unix epoch.
    pub started_ms: i64,
    pub finished_ms: i64,
    /// The measured run time.
    pub seconds: f64,
}

/// Who holds a claim: the stage is applied only while this still matches.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Claim {
    pub owner: String,
    pub stage: i32,
    pub attempt: u32,
}

#[derive(Clone)]
pub struct Store {
    pool: SqlitePool,
    blob_root: PathBuf,
    /// The data directory's exclusive lock, held until [`Store::close`].
    lock: std::sync::Arc<std::sync::Mutex<Option<std::fs::File>>>,
}

fn row_to_computation(r: &sqlx::sqlite::SqliteRow) -> Result<ComputationRow> {
    let protocol: i64 = r.try_get("protocol")?;
    let role: i64 = r.try_get("role")?;
    let attempt: i64 = r.try_get("attempt")?;
    let queued: i64 = r.try_get("queued")?;
    Ok(ComputationRow {
        global_id: r.try_get("global_id")?,
        protocol: SystemProtocol::from_i64(protocol)
            .ok_or_else(|| anyhow!("stored protocol {protocol} is unknown"))?,
        role: Role::from_i64(role).ok_or_else(|| anyhow!("stored role {role} is unknown"))?,
        pin: PluginPin {
            name: r.try_get("plugin_name")?,
            version: r.try_get("plugin_version")?,
            digest: r.try_get("plugin_digest")?,
        },
        stage: r.try_get::<i64, _>("stage")? as i32,
        attempt: attempt.max(0) as u32,
        queued: queued != 0,
        lease_owner: r.try_get("lease_owner")?,
        lease_expiry_ms: r.try_get("lease_expiry_ms")?,
        kingdom_state: r.try_get::<i64, _>("kingdom_state")? as i32,
        computation: r.try_get("computation")?,
        plugin_state: r.try_get("plugin_state")?,
        terminal: r.try_get("terminal")?,
        version: r.try_get("version")?,
        created_ms: r.try_get("created_ms")?,
        updated_ms: r.try_get("updated_ms")?,
        stage_started_ms: r.try_get("stage_started_ms")?,
        waits: r.try_get::<i64, _>("waits")?.max(0) as u32,
    })
}

fn row_to_input(r: &sqlx::sqlite::SqliteRow) -> Result<InputRow> {
    Ok(InputRow {
        description: r.try_get::<i64, _>("description")? as i32,
        sender: r.try_get("sender")?,
        blob: r.try_get("blob")?,
        size: r.try_get("size")?,
        sha256: r.try_get("sha256")?,
    })
}

fn row_to_requisition(r: &sqlx::sqlite::SqliteRow) -> Result<RequisitionRow> {
    let nonce: Option<i64> = r.try_get("nonce")?;
    Ok(RequisitionRow {
        global_id: r.try_get("global_id")?,
        requisition_id: r.try_get("requisition_id")?,
        fulfilling_duchy: r.try_get("fulfilling_duchy")?,
        requisition_spec_hash: r.try_get("requisition_spec_hash")?,
        nonce_hash: r.try_get("nonce_hash")?,
        blob: r.try_get("blob")?,
        header: r.try_get("header")?,
        nonce: nonce.map(|n| n as u64),
    })
}

/// Applies the migrations, adopting a store written before the duchy used them (its tables
/// exist, `_sqlx_migrations` does not): such a store gets the column later versions added
/// (`computations.waits`), the idempotent `0001_init` records itself over the existing tables,
/// later migrations apply as usual, and every table is then checked against a store made from
/// the migrations alone, so an adopted store that still differs is refused rather than used.
async fn migrate(pool: &SqlitePool) -> Result<()> {
    let legacy = !table_exists(pool, "_sqlx_migrations").await?
        && table_exists(pool, "computations").await?;
    if legacy {
        tracing::info!("adopting a duchy store written before schema migrations");
        // Stores written before `waits` existed.
        let has_waits =
            sqlx::query("SELECT 1 FROM pragma_table_info('computations') WHERE name = 'waits'")
                .fetch_optional(pool)
                .await?
                .is_some();
        if !has_waits {
            sqlx::query("ALTER TABLE computations ADD COLUMN waits INTEGER NOT NULL DEFAULT 0")
                .execute(pool)
                .await
                .context("adding computations.waits")?;
        }
    }
    MIGRATOR.run(pool).await?;
    if legacy {
        let mut fresh = <sqlx::SqliteConnection as sqlx::Connection>::connect_with(
            &SqliteConnectOptions::from_str("sqlite::memory:")?,
        )
        .await?;
        MIGRATOR.run(&mut fresh).await?;
        let want = schema_shape(&mut fresh).await?;
        let mut conn = pool.acquire().await?;
        let have = schema_shape(&mut conn).await?;
        if have != want {
            return Err(anyhow!(
                "the store predates schema migrations and its tables differ from the current \
                 schema (have {have:?}, want {want:?})"
            ));
        }
    }
    Ok(())
}

async fn table_exists(pool: &SqlitePool, name: &str) -> Result<bool> {
    Ok(
        sqlx::query("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?")
            .bind(name)
            .fetch_optional(pool)
            .await?
            .is_some(),
    )
}

/// Every table and index (but sqlx's own) with its columns: (name, type, not null, default,
/// primary key position), sorted, for comparing two databases' schemas.
type SchemaShape = Vec<(String, Vec<(String, String, i64, Option<String>, i64)>)>;

async fn schema_shape(conn: &mut sqlx::SqliteConnection) -> Result<SchemaShape> {
    let names: Vec<(String, String)> = sqlx::query_as(
        "SELECT type, name FROM sqlite_master WHERE type IN ('table', 'index') \
         AND name NOT LIKE 'sqlite_%' AND name <> '_sqlx_migrations' ORDER BY type, name",
    )
    .fetch_all(&mut *conn)
    .await?;
    let mut out = Vec::new();
    for (kind, name) in names {
        let columns = if kind == "table" {
            let mut cols: Vec<(String, String, i64, Option<String>, i64)> = sqlx::query_as(
                "SELECT name, type, \"notnull\", dflt_value, pk FROM pragma_table_info(?)",
            )
            .bind(&name)
            .fetch_all(&mut *conn)
            .await?;
            cols.sort();
            cols
        } else {
            let mut cols: Vec<(String, String, i64, Option<String>, i64)> =
                sqlx::query_as("SELECT name, '', 0, NULL, seqno FROM pragma_index_info(?)")
                    .bind(&name)
                    .fetch_all(&mut *conn)
                    .await?;
            cols.sort();
            cols
        };
        out.push((format!("{kind} {name}"), columns));
    }
    Ok(out)
}

impl Store {
    /// Opens (creating if needed) the store under `data_dir`, taking the directory's lock.
    pub async fn open(data_dir: &Path) -> Result<Store> {
        let blob_root = data_dir.join("blobs");
        tokio::fs::create_dir_all(&blob_root)
            .await
            .with_context(|| format!("creating {}", blob_root.display()))?;
        let lock_path = data_dir.join("LOCK");
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .with_context(|| format!("opening {}", lock_path.display()))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(anyhow!(
                    "data directory {} is in use by another duchy process (lock {})",
                    data_dir.display(),
                    lock_path.display()
                ));
            }
            Err(std::fs::TryLockError::Error(e)) => {
                return Err(anyhow!("locking {}: {e}", lock_path.display()));
            }
        }
        let db = data_dir.join("duchy.db");
        let opts = SqliteConnectOptions::from_str(&format!("sqlite://{}", db.display()))
            .with_context(|| format!("database path {}", db.display()))?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(Duration::from_secs(10));
        let pool = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(opts)
            .await
            .with_context(|| format!("opening {}", db.display()))?;
        migrate(&pool)
            .await
            .with_context(|| format!("migrating {}", db.display()))?;
        Ok(Store {
            pool,
            blob_root,
            lock: std::sync::Arc::new(std::sync::Mutex::new(Some(lock))),
        })
    }

    /// Closes the database and releases the data directory's lock.
    pub async fn close(&self) {
        self.pool.close().await;
        if let Ok(mut l) = self.lock.lock() {
            l.take();
        }
    }

    /// Frees every lease: called at start-up, when (the directory being locked) any lease
    /// belongs to a dead incarnation of this process. The attempt it counted stays counted.
    /// Returns the computations released.
    pub async fn release_stale_leases(&self) -> Result<Vec<String>> {
        let now = now_ms();
        let mut tx = self.pool.begin().await?;
        let rows = sqlx::query(
            "UPDATE computations SET lease_owner = NULL, lease_expiry_ms = ?, updated_ms = ?, \
             version = version + 1 WHERE lease_owner IS NOT NULL AND terminal IS NULL AND queued = 1 \
             RETURNING global_id, lease_owner",
        )
        .bind(now)
        .bind(now)
        .fetch_all(&mut *tx)
        .await?;
        let mut ids = Vec::new();
        for r in &rows {
            let id: String = r.try_get("global_id")?;
            ids.push(id.clone());
        }
        // Leases of a process that died with no owner column cleared (none) are handled above;
        // audit each release in the same transaction.
        for id in &ids {
            insert_audit(
                &mut tx,
                id,
                "lease",
                "freed the lease of a previous process",
            )
            .await?;
        }
        tx.commit().await?;
        Ok(ids)
    }

    /// Global ids of computations still active here (not finished, not failing).
    pub async fn active_ids(&self) -> Result<Vec<String>> {
        let rows = sqlx::query(
            "SELECT global_id FROM computations WHERE terminal IS NULL ORDER BY created_ms, global_id",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| r.try_get("global_id").map_err(Into::into))
            .collect()
    }

    /// Active computations created before `created_before_ms` (past their deadline).
    pub async fn overdue(&self, created_before_ms: i64) -> Result<Vec<ComputationRow>> {
        let rows = sqlx::query(
            "SELECT * FROM computations WHERE terminal IS NULL AND created_ms < ? ORDER BY created_ms",
        )
        .bind(created_before_ms)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(row_to_computation).collect()
    }

    pub fn blob_root(&self) -> &Path {
        &self.blob_root
    }

    /// Absolute path of a blob key (made by the `blobs::*_key` functions). A key that is not
    /// a plain relative path of safe components (`blobs::is_safe_key`) is refused, so no
    /// stored or received value can point outside `{data_dir}/blobs`.
    pub fn blob_path(&self, key: &str) -> Result<PathBuf> {
        if !crate::blobs::is_safe_key(key) {
            return Err(anyhow!(
                "refusing blob key {:?}: not a safe relative path",
                key.chars().take(120).collect::<String>()
            ));
        }
        Ok(self.blob_root.join(key))
    }

    // ---- herald token -------------------------------------------------------------------

    pub async fn continuation_token(&self) -> Result<String> {
        let row = sqlx::query("SELECT token FROM herald WHERE id = 1")
            .fetch_optional(&self.pool)
            .await?;
        Ok(match row {
            Some(r) => r.try_get("token")?,
            None => String::new(),
        })
    }

    pub async fn set_continuation_token(&self, token: &str) -> Result<()> {
        sqlx::query(
            "INSERT INTO herald (id, token) VALUES (1, ?) ON CONFLICT(id) DO UPDATE SET token = excluded.token",
        )
        .bind(token)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    // ---- computations -------------------------------------------------------------------

    pub async fn get(&self, global_id: &str) -> Result<Option<ComputationRow>> {
        let row = sqlx::query("SELECT * FROM computations WHERE global_id = ?")
            .bind(global_id)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(row_to_computation).transpose()
    }

    pub async fn list(&self) -> Result<Vec<ComputationRow>> {
        let rows = sqlx::query("SELECT * FROM computations ORDER BY created_ms, global_id")
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(row_to_computation).collect()
    }

    /// Inserts a computation with its requisitions and the audit entry, in one transaction;
    /// returns false if it already existed (nothing changed).
    pub async fn insert(
        &self,
        c: NewComputation,
        requisitions: &[RequisitionRow],
        audit: &str,
    ) -> Result<bool> {
        let now = now_ms();
        let mut tx = self.pool.begin().await?;
        let res = sqlx::query(
            "INSERT OR IGNORE INTO computations (global_id, protocol, role, plugin_name, plugin_version, \
             plugin_digest, stage, attempt, queued, lease_owner, lease_expiry_ms, kingdom_state, computation, \
             plugin_state, terminal, version, created_ms, updated_ms, stage_started_ms, waits) \
             VALUES (?, ?, ?, ?, ?, ?, ?, 0, ?, NULL, ?, ?, ?, ?, NULL, 1, ?, ?, ?, 0)",
        )
        .bind(&c.global_id)
        .bind(c.protocol.as_i64())
        .bind(c.role.as_i64())
        .bind(&c.pin.name)
        .bind(&c.pin.version)
        .bind(&c.pin.digest)
        .bind(c.stage as i64)
        .bind(c.queued as i64)
        .bind(if c.queued { Some(now) } else { None })
        .bind(c.kingdom_state as i64)
        .bind(&c.computation)
        .bind(&c.plugin_state)
        .bind(now)
        .bind(now)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        if res.rows_affected() != 1 {
            return Ok(false);
        }
        upsert_requisitions(&mut tx, requisitions).await?;
        insert_audit(&mut tx, &c.global_id, "create", audit).await?;
        tx.commit().await?;
        Ok(true)
    }

    /// Records the latest Kingdom view of a computation and its requisitions (one
    /// transaction).
    pub async fn update_snapshot(
        &self,
        global_id: &str,
        computation: &[u8],
        kingdom_state: i32,
        requisitions: &[RequisitionRow],
    ) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "UPDATE computations SET computation = ?, kingdom_state = ?, updated_ms = ?, version = version + 1 \
             WHERE global_id = ?",
        )
        .bind(computation)
        .bind(kingdom_state as i64)
        .bind(now_ms())
        .bind(global_id)
        .execute(&mut *tx)
        .await?;
        upsert_requisitions(&mut tx, requisitions).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Claims the next queued computation whose lease is free or expired, incrementing the
    /// stage attempt.
    pub async fn claim(&self, owner: &str, lease: Duration) -> Result<Option<ComputationRow>> {
        Ok(self.claim_next(owner, lease).await?.map(|(row, _)| row))
    }

    /// [`Store::claim`], also returning the owner whose lease had expired on the claimed
    /// stage (a takeover: that worker stalled and lost it), audited in the same transaction.
    pub async fn claim_next(
        &self,
        owner: &str,
        lease: Duration,
    ) -> Result<Option<(ComputationRow, Option<String>)>> {
        let now = now_ms();
        let expiry = now.saturating_add(millis(lease));
        let mut tx = self.pool.begin().await?;
        let Some(candidate) = sqlx::query(
            "SELECT global_id, lease_owner FROM computations WHERE queued = 1 AND terminal IS NULL \
             AND lease_expiry_ms IS NOT NULL AND lease_expiry_ms <= ? \
             ORDER BY lease_expiry_ms, created_ms LIMIT 1",
        )
        .bind(now)
        .fetch_optional(&mut *tx)
        .await?
        else {
            return Ok(None);
        };
        let global_id: String = candidate.try_get("global_id")?;
        let previous: Option<String> = candidate.try_get("lease_owner")?;
        let row = sqlx::query(
            "UPDATE computations SET lease_owner = ?, lease_expiry_ms = ?, attempt = attempt + 1, \
             updated_ms = ?, version = version + 1 WHERE global_id = ? RETURNING *",
        )
        .bind(owner)
        .bind(expiry)
        .bind(now)
        .bind(&global_id)
        .fetch_one(&mut *tx)
        .await?;
        let row = row_to_computation(&row)?;
        if let Some(previous) = &previous {
            insert_audit(
                &mut tx,
                &global_id,
                "lease",
                &format!("took over the expired lease of {previous}"),
            )
            .await?;
        }
        tx.commit().await?;
        Ok(Some((row, previous)))
    }

    /// Extends a claim's lease to `lease` from now; false if the claim no longer holds (the
    /// worker must stop writing: another one may own the stage).
    pub async fn renew(&self, global_id: &str, claim: &Claim, lease: Duration) -> Result<bool> {
        let now = now_ms();
        let res = sqlx::query(
            "UPDATE computations SET lease_expiry_ms = ? WHERE global_id = ? AND lease_owner = ? \
             AND stage = ? AND attempt = ? AND terminal IS NULL AND lease_expiry_ms > ?",
        )
        .bind(now.saturating_add(millis(lease)))
        .bind(global_id)
        .bind(&claim.owner)
        .bind(claim.stage as i64)
        .bind(claim.attempt as i64)
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok(res.rows_affected() == 1)
    }

    /// True while `claim` still holds the computation (same owner, stage and attempt,
    /// lease not expired).
    pub async fn holds(&self, global_id: &str, claim: &Claim) -> Result<bool> {
        let row = sqlx::query(
            "SELECT 1 FROM computations WHERE global_id = ? AND lease_owner = ? AND stage = ? AND attempt = ? \
             AND terminal IS NULL AND lease_expiry_ms > ?",
        )
        .bind(global_id)
        .bind(&claim.owner)
        .bind(claim.stage as i64)
        .bind(claim.attempt as i64)
        .bind(now_ms())
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.is_some())
    }

    /// Moves a computation from stage `from` to `to` in one transaction with its audit entry
    /// (and forgets the cached outcome of `from`). With `claim`, only while the claim still
    /// holds. Returns false (and changes nothing) if the precondition failed.
    #[allow(clippy::too_many_arguments)]
    pub async fn advance(
        &self,
        global_id: &str,
        claim: Option<&Claim>,
        from: i32,
        to: i32,
        queued: bool,
        plugin_state: Option<&[u8]>,
        audit: &str,
    ) -> Result<bool> {
        let now = now_ms();
        let mut q = String::from(
            "UPDATE computations SET stage = ?, attempt = 0, waits = 0, queued = ?, lease_owner = NULL, \
             lease_expiry_ms = ?, plugin_state = COALESCE(?, plugin_state), updated_ms = ?, \
             stage_started_ms = ?, version = version + 1 \
             WHERE global_id = ? AND stage = ? AND terminal IS NULL",
        );
        if claim.is_some() {
            q.push_str(" AND lease_owner = ? AND attempt = ? AND lease_expiry_ms > ?");
        }
        let mut tx = self.pool.begin().await?;
        let mut query = sqlx::query(&q)
            .bind(to as i64)
            .bind(queued as i64)
            .bind(if queued { Some(now) } else { None })
            .bind(plugin_state)
            .bind(now)
            .bind(now)
            .bind(global_id)
            .bind(from as i64);
        if let Some(c) = claim {
            query = query.bind(&c.owner).bind(c.attempt as i64).bind(now);
        }
        let res = query.execute(&mut *tx).await?;
        if res.rows_affected() != 1 {
            return Ok(false);
        }
        sqlx::query("DELETE FROM outcomes WHERE global_id = ? AND stage = ?")
            .bind(global_id)
            .bind(from as i64)
            .execute(&mut *tx)
            .await?;
        insert_audit(&mut tx, global_id, "stage", audit).await?;
        tx.commit().await?;
        Ok(true)
    }

    /// Gives a claimed computation back, claimable again after `delay`. With `waiting`, the
    /// claim did not count as an attempt (the stage was not ready: a peer or the Kingdom is
    /// behind or unavailable) and `waits` grows instead. One transaction with its audit entry.
    pub async fn release(
        &self,
        global_id: &str,
        claim: &Claim,
        delay: Duration,
        waiting: bool,
        audit: (&str, &str),
    ) -> Result<bool> {
        let now = now_ms();
        let mut tx = self.pool.begin().await?;
        let res = sqlx::query(
            "UPDATE computations SET lease_owner = NULL, lease_expiry_ms = ?, updated_ms = ?, \
             version = version + 1, attempt = attempt - ?, waits = waits + ? \
             WHERE global_id = ? AND lease_owner = ? AND attempt = ? AND stage = ? AND terminal IS NULL",
        )
        .bind(now.saturating_add(millis(delay)))
        .bind(now)
        .bind(waiting as i64)
        .bind(waiting as i64)
        .bind(global_id)
        .bind(&claim.owner)
        .bind(claim.attempt as i64)
        .bind(claim.stage as i64)
        .execute(&mut *tx)
        .await?;
        if res.rows_affected() != 1 {
            return Ok(false);
        }
        // A long wait is audited at its 1st, 2nd, 4th, 8th, ... release (with the count), not
        // every few seconds for hours.
        let waits = sqlx::query("SELECT waits FROM computations WHERE global_id = ?")
            .bind(global_id)
            .fetch_one(&mut *tx)
            .await?
            .try_get::<i64, _>("waits")?;
        if !waiting || (waits > 0 && (waits & (waits - 1)) == 0) {
            let detail = if waiting {
                format!("{} (wait {waits})", audit.1)
            } else {
                audit.1.to_string()
            };
            insert_audit(&mut tx, global_id, audit.0, &detail).await?;
        }
        tx.commit().await?;
        Ok(true)
    }

    /// Marks a computation finished here (`COMPLETE`, or `FAILED` / `CANCELLED` as the
    /// Kingdom said; only these two also settle a failure not yet acknowledged, so nothing
    /// turns a pending failure into COMPLETE); returns false if it already was. One
    /// transaction with its audit entry.
    pub async fn finish(&self, global_id: &str, terminal: &str, audit: &str) -> Result<bool> {
        let now = now_ms();
        let mut tx = self.pool.begin().await?;
        let res = sqlx::query(
            "UPDATE computations SET terminal = ?, queued = 0, lease_owner = NULL, lease_expiry_ms = NULL, \
             updated_ms = ?, version = version + 1 WHERE global_id = ? AND (terminal IS NULL \
             OR (terminal = ? AND ? IN ('FAILED', 'CANCELLED')))",
        )
        .bind(terminal)
        .bind(now)
        .bind(global_id)
        .bind(FAILING)
        .bind(terminal)
        .execute(&mut *tx)
        .await?;
        if res.rows_affected() != 1 {
            return Ok(false);
        }
        sqlx::query(
            "UPDATE failures SET acked_ms = ?, acked_how = ? WHERE global_id = ? AND acked_ms IS NULL",
        )
        .bind(now)
        .bind(format!("computation {terminal}"))
        .bind(global_id)
        .execute(&mut *tx)
        .await?;
        insert_audit(&mut tx, global_id, "finish", audit).await?;
        tx.commit().await?;
        Ok(true)
    }

    /// Starts failing a computation: no more work runs for it (`terminal = FAILING`), and the
    /// failure is queued for the Kingdom ([`Store::pending_failures`]) until acknowledged.
    /// With `claim`, only while the claim holds (a stale worker cannot fail a computation
    /// another worker is running). Returns false if nothing changed. A computation this
    /// duchy never recorded (`global_id` unknown) still gets its failure queued.
    pub async fn fail(
        &self,
        global_id: &str,
        claim: Option<&Claim>,
        message: &str,
        stage_attempt: Option<&[u8]>,
    ) -> Result<bool> {
        let now = now_ms();
        let mut tx = self.pool.begin().await?;
        let known = sqlx::query("SELECT 1 FROM computations WHERE global_id = ?")
            .bind(global_id)
            .fetch_optional(&mut *tx)
            .await?
            .is_some();
        if known {
            let mut q = String::from(
                "UPDATE computations SET terminal = ?, queued = 0, lease_owner = NULL, lease_expiry_ms = NULL, \
                 updated_ms = ?, version = version + 1 WHERE global_id = ? AND terminal IS NULL",
            );
            if claim.is_some() {
                q.push_str(" AND lease_owner = ? AND stage = ? AND attempt = ?");
            }
            let mut query = sqlx::query(&q).bind(FAILING).bind(now).bind(global_id);
            if let Some(c) = claim {
                query = query
                    .bind(&c.owner)
                    .bind(c.stage as i64)
                    .bind(c.attempt as i64);
            }
            if query.execute(&mut *tx).await?.rows_affected() != 1 {
                return Ok(false);
            }
        }
        let res = sqlx::query(
            "INSERT INTO failures (global_id, message, stage_attempt, created_ms, next_try_ms, tries) \
             VALUES (?, ?, ?, ?, ?, 0) ON CONFLICT(global_id) DO UPDATE SET message = excluded.message, \
             stage_attempt = excluded.stage_attempt, created_ms = excluded.created_ms, \
             next_try_ms = excluded.next_try_ms, tries = 0, acked_ms = NULL, acked_how = NULL \
             WHERE failures.acked_ms IS NOT NULL",
        )
        .bind(global_id)
        .bind(message)
        .bind(stage_attempt)
        .bind(now)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        if known {
            insert_audit(&mut tx, global_id, "failing", message).await?;
        }
        tx.commit().await?;
        Ok(known || res.rows_affected() == 1)
    }

    /// Failures not yet acknowledged by the Kingdom whose next try is due.
    pub async fn pending_failures(&self) -> Result<Vec<FailureRow>> {
        let rows = sqlx::query(
            "SELECT global_id, message, stage_attempt, tries FROM failures \
             WHERE acked_ms IS NULL AND next_try_ms <= ? ORDER BY next_try_ms LIMIT 100",
        )
        .bind(now_ms())
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(FailureRow {
                    global_id: r.try_get("global_id")?,
                    message: r.try_get("message")?,
                    stage_attempt: r.try_get("stage_attempt")?,
                    tries: r.try_get::<i64, _>("tries")?.max(0) as u32,
                })
            })
            .collect()
    }

    /// The failure of `global_id`, if one was recorded: (message, acknowledged).
    pub async fn failure(&self, global_id: &str) -> Result<Option<(String, bool)>> {
        let row = sqlx::query("SELECT message, acked_ms FROM failures WHERE global_id = ?")
            .bind(global_id)
            .fetch_optional(&self.pool)
            .await?;
        Ok(match row {
            Some(r) => Some((
                r.try_get("message")?,
                r.try_get::<Option<i64>, _>("acked_ms")?.is_some(),
            )),
            None => None,
        })
    }

    /// The Kingdom acknowledged (or made moot) a failure: the computation is FAILED here.
    pub async fn failure_acknowledged(&self, global_id: &str, how: &str) -> Result<()> {
        let now = now_ms();
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "UPDATE failures SET acked_ms = ?, acked_how = ?, tries = tries + 1 WHERE global_id = ? AND acked_ms IS NULL",
        )
        .bind(now)
        .bind(how)
        .bind(global_id)
        .execute(&mut *tx)
        .await?;
        let res = sqlx::query(
            "UPDATE computations SET terminal = 'FAILED', updated_ms = ?, version = version + 1 \
             WHERE global_id = ? AND terminal = ?",
        )
        .bind(now)
        .bind(global_id)
        .bind(FAILING)
        .execute(&mut *tx)
        .await?;
        if res.rows_affected() == 1 {
            insert_audit(&mut tx, global_id, "finish", &format!("FAILED ({how})")).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Reporting a failure did not get through: try again after `delay`.
    pub async fn failure_retry_later(&self, global_id: &str, delay: Duration) -> Result<()> {
        sqlx::query(
            "UPDATE failures SET next_try_ms = ?, tries = tries + 1 WHERE global_id = ? AND acked_ms IS NULL",
        )
        .bind(now_ms().saturating_add(millis(delay)))
        .bind(global_id)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    // ---- cached outcomes ----------------------------------------------------------------

    /// Caches a stage's outcome, only while `claim` holds (a stale worker cannot save).
    /// Returns false if nothing was saved: the claim was lost, or an outcome is already
    /// cached for the stage (then [`Store::load_outcome`] has the one to use).
    pub async fn save_outcome(
        &self,
        global_id: &str,
        claim: &Claim,
        outcome: &str,
    ) -> Result<bool> {
        let res = sqlx::query(
            "INSERT OR IGNORE INTO outcomes (global_id, stage, outcome) \
             SELECT global_id, stage, ? FROM computations WHERE global_id = ? AND lease_owner = ? \
             AND stage = ? AND attempt = ? AND terminal IS NULL AND lease_expiry_ms > ?",
        )
        .bind(outcome)
        .bind(global_id)
        .bind(&claim.owner)
        .bind(claim.stage as i64)
        .bind(claim.attempt as i64)
        .bind(now_ms())
        .execute(&self.pool)
        .await?;
        Ok(res.rows_affected() == 1)
    }

    pub async fn load_outcome(&self, global_id: &str, stage: i32) -> Result<Option<String>> {
        let row = sqlx::query("SELECT outcome FROM outcomes WHERE global_id = ? AND stage = ?")
            .bind(global_id)
            .bind(stage as i64)
            .fetch_optional(&self.pool)
            .await?;
        Ok(match row {
            Some(r) => Some(r.try_get("outcome")?),
            None => None,
        })
    }

    // ---- received inputs ----------------------------------------------------------------

    pub async fn input(
        &self,
        global_id: &str,
        description: i32,
        sender: &str,
    ) -> Result<Option<InputRow>> {
        let row = sqlx::query(
            "SELECT * FROM inputs WHERE global_id = ? AND description = ? AND sender = ?",
        )
        .bind(global_id)
        .bind(description as i64)
        .bind(sender)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(row_to_input).transpose()
    }

    pub async fn inputs(&self, global_id: &str) -> Result<Vec<InputRow>> {
        let rows =
            sqlx::query("SELECT * FROM inputs WHERE global_id = ? ORDER BY description, sender")
                .bind(global_id)
                .fetch_all(&self.pool)
                .await?;
        rows.iter().map(row_to_input).collect()
    }

    /// Records a received input (and its audit entry) while the computation is still at
    /// `stage`; returns false if the stage changed meanwhile (nothing recorded).
    pub async fn record_input(
        &self,
        global_id: &str,
        stage: i32,
        input: &InputRow,
    ) -> Result<bool> {
        let mut tx = self.pool.begin().await?;
        let ok = sqlx::query(
            "SELECT 1 FROM computations WHERE global_id = ? AND stage = ? AND terminal IS NULL",
        )
        .bind(global_id)
        .bind(stage as i64)
        .fetch_optional(&mut *tx)
        .await?
        .is_some();
        if !ok {
            return Ok(false);
        }
        sqlx::query(
            "INSERT OR IGNORE INTO inputs (global_id, description, sender, blob, size, sha256, received_ms) \
             VALUES (?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(global_id)
        .bind(input.description as i64)
        .bind(&input.sender)
        .bind(&input.blob)
        .bind(input.size)
        .bind(&input.sha256)
        .bind(now_ms())
        .execute(&mut *tx)
        .await?;
        insert_audit(
            &mut tx,
            global_id,
            "received",
            &format!(
                "{} bytes (description {}) from {}",
                input.size, input.description, input.sender
            ),
        )
        .await?;
        tx.commit().await?;
        Ok(true)
    }

    // ---- requisitions -------------------------------------------------------------------

    /// Adds requisitions not yet known (existing rows keep their fulfilment data, but
    /// learn a newly assigned fulfilling duchy).
    pub async fn upsert_requisitions(&self, rows: &[RequisitionRow]) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        upsert_requisitions(&mut tx, rows).await?;
        tx.commit().await?;
        Ok(())
    }

    pub async fn find_requisition(&self, requisition_id: &str) -> Result<Vec<RequisitionRow>> {
        let rows = sqlx::query("SELECT * FROM requisitions WHERE requisition_id = ?")
            .bind(requisition_id)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(row_to_requisition).collect()
    }

    pub async fn requisitions(&self, global_id: &str) -> Result<Vec<RequisitionRow>> {
        let rows =
            sqlx::query("SELECT * FROM requisitions WHERE global_id = ? ORDER BY requisition_id")
                .bind(global_id)
                .fetch_all(&self.pool)
                .await?;
        rows.iter().map(row_to_requisition).collect()
    }

    /// Records fulfilment data once; returns false if it was already recorded.
    pub async fn record_requisition(
        &self,
        global_id: &str,
        requisition_id: &str,
        blob: &str,
        header: &[u8],
        nonce: u64,
        fulfilling_duchy: &str,
    ) -> Result<bool> {
        let res = sqlx::query(
            "UPDATE requisitions SET blob = ?, header = ?, nonce = ?, fulfilling_duchy = ? \
             WHERE global_id = ? AND requisition_id = ? AND blob IS NULL",
        )
        .bind(blob)
        .bind(header)
        .bind(nonce as i64)
        .bind(fulfilling_duchy)
        .bind(global_id)
        .bind(requisition_id)
        .execute(&self.pool)
        .await?;
        Ok(res.rows_affected() == 1)
    }

    // ---- lifecycle ----------------------------------------------------------------------

    /// Gives a claim back at shutdown: claimable at once (by the next process), and the claim
    /// is not counted as an attempt (the stage was interrupted, it did not fail). One
    /// transaction with its audit entry; false if the claim no longer held.
    pub async fn release_at_shutdown(&self, global_id: &str, claim: &Claim) -> Result<bool> {
        let now = now_ms();
        let mut tx = self.pool.begin().await?;
        let res = sqlx::query(
            "UPDATE computations SET lease_owner = NULL, lease_expiry_ms = ?, updated_ms = ?, \
             version = version + 1, attempt = MAX(attempt - 1, 0) \
             WHERE global_id = ? AND lease_owner = ? AND attempt = ? AND stage = ? AND terminal IS NULL",
        )
        .bind(now)
        .bind(now)
        .bind(global_id)
        .bind(&claim.owner)
        .bind(claim.attempt as i64)
        .bind(claim.stage as i64)
        .execute(&mut *tx)
        .await?;
        if res.rows_affected() != 1 {
            return Ok(false);
        }
        insert_audit(
            &mut tx,
            global_id,
            "lease",
            &format!(
                "released at shutdown by {} (attempt {} not counted)",
                claim.owner, claim.attempt
            ),
        )
        .await?;
        tx.commit().await?;
        Ok(true)
    }

    /// Queued stages of unfinished computations (claimable, waiting to be retried, or running),
    /// per pinned plugin and stage number.
    pub async fn queue_depth(&self) -> Result<Vec<(PluginPin, i32, i64)>> {
        let rows = sqlx::query(
            "SELECT plugin_name, plugin_version, plugin_digest, stage, COUNT(*) AS n FROM computations \
             WHERE queued = 1 AND terminal IS NULL \
             GROUP BY plugin_name, plugin_version, plugin_digest, stage",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok((
                    PluginPin {
                        name: r.try_get("plugin_name")?,
                        version: r.try_get("plugin_version")?,
                        digest: r.try_get("plugin_digest")?,
                    },
                    r.try_get::<i64, _>("stage")? as i32,
                    r.try_get("n")?,
                ))
            })
            .collect()
    }

    /// One round trip to the database (readiness).
    pub async fn ping(&self) -> Result<()> {
        sqlx::query("SELECT 1").fetch_one(&self.pool).await?;
        Ok(())
    }

    // ---- audit --------------------------------------------------------------------------

    pub async fn audit(&self, global_id: &str, event: &str, detail: &str) -> Result<()> {
        sqlx::query("INSERT INTO audit (time_ms, global_id, event, detail) VALUES (?, ?, ?, ?)")
            .bind(now_ms())
            .bind(global_id)
            .bind(event)
            .bind(detail)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    pub async fn audit_log(&self, global_id: &str) -> Result<Vec<(i64, String, String)>> {
        let rows =
            sqlx::query("SELECT time_ms, event, detail FROM audit WHERE global_id = ? ORDER BY id")
                .bind(global_id)
                .fetch_all(&self.pool)
                .await?;
        rows.iter()
            .map(|r| {
                Ok((
                    r.try_get("time_ms")?,
                    r.try_get("event")?,
                    r.try_get("detail")?,
                ))
            })
            .collect()
    }

    // ---- stage runs ---------------------------------------------------------------------

    /// Records that the stage `claim` holds ran for `elapsed` and its outcome was saved: a
    /// structured `stage_runs` row (the source of stage timings) and the human `executed`
    /// audit entry, in one transaction.
    pub async fn record_stage_run(
        &self,
        global_id: &str,
        claim: &Claim,
        stage_name: &str,
        elapsed: Duration,
    ) -> Result<()> {
        let finished = now_ms();
        let started = finished.saturating_sub(i64::try_from(elapsed.as_millis()).unwrap_or(0));
        let secs = elapsed.as_secs_f64();
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "INSERT INTO stage_runs (global_id, stage, stage_name, attempt, started_ms, \
             finished_ms, seconds) VALUES (?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(global_id)
        .bind(claim.stage as i64)
        .bind(stage_name)
        .bind(claim.attempt as i64)
        .bind(started)
        .bind(finished)
        .bind(secs)
        .execute(&mut *tx)
        .await?;
        insert_audit(
            &mut tx,
            global_id,
            "executed",
            &format!("{stage_name} in {secs:.3}s"),
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Every recorded stage run of a computation, in execution order.
    pub async fn stage_runs(&self, global_id: &str) -> Result<Vec<StageRun>> {
        let rows = sqlx::query(
            "SELECT stage, stage_name, attempt, started_ms, finished_ms, seconds FROM stage_runs \
             WHERE global_id = ? ORDER BY id",
        )
        .bind(global_id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(StageRun {
                    stage: r.try_get::<i64, _>("stage")? as i32,
                    stage_name: r.try_get("stage_name")?,
                    attempt: r.try_get::<i64, _>("attempt")?.max(0) as u32,
                    started_ms: r.try_get("started_ms")?,
                    finished_ms: r.try_get("finished_ms")?,
                    seconds: r.try_get("seconds")?,
                })
            })
            .collect()
    }
}

type Tx<'a> = sqlx::Transaction<'a, sqlx::Sqlite>;

async fn insert_audit(tx: &mut Tx<'_>, global_id: &str, event: &str, detail: &str) -> Result<()> {
    sqlx::query("INSERT INTO audit (time_ms, global_id, event, detail) VALUES (?, ?, ?, ?)")
        .bind(now_ms())
        .bind(global_id)
        .bind(event)
        .bind(detail)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

async fn upsert_requisitions(tx: &mut Tx<'_>, rows: &[RequisitionRow]) -> Result<()> {
    for r in rows {
        sqlx::query(
            "INSERT INTO requisitions (global_id, requisition_id, fulfilling_duchy, requisition_spec_hash, nonce_hash) \
             VALUES (?, ?, ?, ?, ?) ON CONFLICT(global_id, requisition_id) DO UPDATE SET \
             fulfilling_duchy = CASE WHEN excluded.fulfilling_duchy = '' THEN requisitions.fulfilling_duchy ELSE excluded.fulfilling_duchy END",
        )
        .bind(&r.global_id)
        .bind(&r.requisition_id)
        .bind(&r.fulfilling_duchy)
        .bind(&r.requisition_spec_hash)
        .bind(&r.nonce_hash)
        .execute(&mut **tx)
        .await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn new(id: &str) -> NewComputation {
        NewComputation {
            global_id: id.into(),
            protocol: SystemProtocol::HonestMajorityShareShuffle,
            role: Role::Aggregator,
            pin: PluginPin {
                name: "p".into(),
                version: "1".into(),
                digest: "d".into(),
            },
            stage: 1,
            queued: true,
            kingdom_state: 1,
            computation: vec![],
            plugin_state: vec![],
        }
    }

    fn claim_of(owner: &str, row: &ComputationRow) -> Claim {
        Claim {
            owner: owner.into(),
            stage: row.stage,
            attempt: row.attempt,
        }
    }

    #[tokio::test]
    async fn expired_leases_are_reclaimed_and_stale_owners_cannot_advance() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).await.unwrap();
        assert!(store.insert(new("c1"), &[], "create").await.unwrap());
        assert!(
            !store.insert(new("c1"), &[], "create").await.unwrap(),
            "insert is idempotent"
        );

        let first = store
            .claim("a", Duration::from_millis(50))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(first.attempt, 1);
        assert!(
            store
                .claim("b", Duration::from_secs(60))
                .await
                .unwrap()
                .is_none(),
            "leased"
        );
        tokio::time::sleep(Duration::from_millis(80)).await;
        let second = store
            .claim("b", Duration::from_secs(60))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(second.attempt, 2, "a reclaim counts as a new attempt");

        let stale = claim_of("a", &first);
        let current = claim_of("b", &second);
        assert!(!store.holds("c1", &stale).await.unwrap());
        assert!(store.holds("c1", &current).await.unwrap());
        assert!(
            !store
                .renew("c1", &stale, Duration::from_secs(60))
                .await
                .unwrap(),
            "a stale worker cannot renew"
        );
        assert!(
            !store
                .save_outcome("c1", &stale, "{\"stale\":1}")
                .await
                .unwrap(),
            "a stale worker cannot save an outcome"
        );
        assert_eq!(store.load_outcome("c1", 1).await.unwrap(), None);
        assert!(
            !store
                .advance("c1", Some(&stale), 1, 2, false, None, "1 -> 2")
                .await
                .unwrap()
        );
        assert!(
            !store
                .fail("c1", Some(&stale), "stale failure", None)
                .await
                .unwrap(),
            "a stale worker cannot fail the computation"
        );
        assert!(
            store
                .save_outcome("c1", &current, "{\"live\":1}")
                .await
                .unwrap()
        );
        assert!(
            !store
                .save_outcome("c1", &current, "{\"again\":1}")
                .await
                .unwrap(),
            "a saved outcome is never replaced"
        );
        assert_eq!(
            store.load_outcome("c1", 1).await.unwrap().as_deref(),
            Some("{\"live\":1}")
        );
        assert!(
            store
                .advance("c1", Some(&current), 1, 2, false, Some(b"s"), "1 -> 2")
                .await
                .unwrap()
        );
        let row = store.get("c1").await.unwrap().unwrap();
        assert_eq!((row.stage, row.attempt, row.queued), (2, 0, false));
        assert_eq!(row.plugin_state, b"s");
        assert_eq!(
            store.load_outcome("c1", 1).await.unwrap(),
            None,
            "the outcome of a left stage is forgotten with the transition"
        );
        let log = store.audit_log("c1").await.unwrap();
        assert!(
            log.iter().any(|(_, e, d)| e == "stage" && d == "1 -> 2"),
            "the transition's audit entry committed with it: {log:?}"
        );
        assert!(
            store
                .claim("b", Duration::from_secs(1))
                .await
                .unwrap()
                .is_none(),
            "parked stages are not claimable"
        );
    }

    #[tokio::test]
    async fn a_renewed_lease_outlives_its_original_expiry() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).await.unwrap();
        store.insert(new("c"), &[], "create").await.unwrap();
        let row = store
            .claim("a", Duration::from_millis(100))
            .await
            .unwrap()
            .unwrap();
        let claim = claim_of("a", &row);
        for _ in 0..4 {
            tokio::time::sleep(Duration::from_millis(40)).await;
            assert!(
                store
                    .renew("c", &claim, Duration::from_millis(100))
                    .await
                    .unwrap()
            );
        }
        assert!(
            store
                .claim("b", Duration::from_secs(1))
                .await
                .unwrap()
                .is_none(),
            "160 ms into a 100 ms lease, renewed: still held"
        );
        assert!(store.holds("c", &claim).await.unwrap());
    }

    #[tokio::test]
    async fn waiting_releases_do_not_count_attempts_but_transient_ones_do() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).await.unwrap();
        store.insert(new("c"), &[], "create").await.unwrap();
        for _ in 0..5 {
            let row = store
                .claim("a", Duration::from_secs(60))
                .await
                .unwrap()
                .unwrap();
            assert_eq!(row.attempt, 1, "waiting never used up an attempt");
            assert!(
                store
                    .release(
                        "c",
                        &claim_of("a", &row),
                        Duration::ZERO,
                        true,
                        ("waiting", "peer behind")
                    )
                    .await
                    .unwrap()
            );
        }
        let row = store.get("c").await.unwrap().unwrap();
        assert_eq!((row.attempt, row.waits), (0, 5));
        let row = store
            .claim("a", Duration::from_secs(60))
            .await
            .unwrap()
            .unwrap();
        store
            .release(
                "c",
                &claim_of("a", &row),
                Duration::ZERO,
                false,
                ("transient", "x"),
            )
            .await
            .unwrap();
        let row = store
            .claim("a", Duration::from_secs(60))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(row.attempt, 2);
    }

    #[tokio::test]
    async fn transient_release_delays_the_next_claim() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).await.unwrap();
        store.insert(new("c2"), &[], "create").await.unwrap();
        let row = store
            .claim("a", Duration::from_secs(60))
            .await
            .unwrap()
            .unwrap();
        assert!(
            store
                .release(
                    "c2",
                    &claim_of("a", &row),
                    Duration::from_millis(60),
                    false,
                    ("transient", "x")
                )
                .await
                .unwrap()
        );
        assert!(
            store
                .claim("a", Duration::from_secs(60))
                .await
                .unwrap()
                .is_none()
        );
        tokio::time::sleep(Duration::from_millis(90)).await;
        assert!(
            store
                .claim("a", Duration::from_secs(60))
                .await
                .unwrap()
                .is_some()
        );
    }

    #[tokio::test]
    async fn a_failure_stops_work_at_once_and_is_final_only_when_acknowledged() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).await.unwrap();
        store.insert(new("c"), &[], "create").await.unwrap();
        assert!(store.fail("c", None, "boom", Some(b"sa")).await.unwrap());
        let row = store.get("c").await.unwrap().unwrap();
        assert_eq!(row.terminal.as_deref(), Some(FAILING));
        assert!(
            store
                .claim("a", Duration::from_secs(60))
                .await
                .unwrap()
                .is_none(),
            "nothing of a failing computation runs"
        );
        assert!(
            !store.fail("c", None, "second", None).await.unwrap(),
            "the first failure wins"
        );
        let pending = store.pending_failures().await.unwrap();
        assert_eq!(pending.len(), 1);
        assert_eq!(pending[0].message, "boom");
        assert_eq!(pending[0].stage_attempt.as_deref(), Some(&b"sa"[..]));

        store
            .failure_retry_later("c", Duration::from_secs(60))
            .await
            .unwrap();
        assert!(store.pending_failures().await.unwrap().is_empty());
        assert_eq!(
            store.get("c").await.unwrap().unwrap().terminal.as_deref(),
            Some(FAILING),
            "not FAILED while the Kingdom has not heard of it"
        );
        store.failure_acknowledged("c", "recorded").await.unwrap();
        assert_eq!(
            store.get("c").await.unwrap().unwrap().terminal.as_deref(),
            Some("FAILED")
        );
        assert_eq!(
            store.failure("c").await.unwrap(),
            Some(("boom".to_string(), true))
        );
        assert!(
            !store.finish("c", "COMPLETE", "x").await.unwrap(),
            "finished is final"
        );

        // A computation never recorded here (no role, no plugin) still gets reported.
        assert!(store.fail("unknown", None, "no role", None).await.unwrap());
        assert_eq!(store.pending_failures().await.unwrap().len(), 1);
    }

    #[tokio::test]
    async fn nothing_but_the_kingdom_settles_a_pending_failure() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).await.unwrap();
        store.insert(new("c"), &[], "create").await.unwrap();
        store.fail("c", None, "boom", None).await.unwrap();
        assert!(!store.finish("c", "COMPLETE", "COMPLETE").await.unwrap());
        assert_eq!(
            store.get("c").await.unwrap().unwrap().terminal.as_deref(),
            Some(FAILING)
        );
        assert_eq!(store.pending_failures().await.unwrap().len(), 1);
    }

    #[tokio::test]
    async fn a_new_failure_after_an_acknowledged_one_is_reported_again() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).await.unwrap();
        // The herald failed a computation unknown here; the Kingdom acknowledged it.
        store.fail("c", None, "no role", None).await.unwrap();
        store.failure_acknowledged("c", "unknown").await.unwrap();
        // Later the computation is recorded after all and fails for real.
        store.insert(new("c"), &[], "create").await.unwrap();
        assert!(store.fail("c", None, "real", None).await.unwrap());
        let pending = store.pending_failures().await.unwrap();
        assert_eq!(pending.len(), 1);
        assert_eq!(pending[0].message, "real");
    }

    #[tokio::test]
    async fn the_kingdom_failing_a_failing_computation_settles_it() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).await.unwrap();
        store.insert(new("c"), &[], "create").await.unwrap();
        store.fail("c", None, "boom", None).await.unwrap();
        assert!(
            store
                .finish("c", "FAILED", "FAILED at the Kingdom")
                .await
                .unwrap()
        );
        assert!(store.pending_failures().await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn leases_of_a_dead_process_are_freed_at_start_up() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).await.unwrap();
        store.insert(new("c"), &[], "create").await.unwrap();
        let row = store
            .claim("dead", Duration::from_secs(3600))
            .await
            .unwrap()
            .unwrap();
        store.close().await;
        let store = Store::open(dir.path()).await.unwrap();
        assert!(
            store
                .claim("new", Duration::from_secs(60))
                .await
                .unwrap()
                .is_none(),
            "an hour-long lease"
        );
        assert_eq!(store.release_stale_leases().await.unwrap(), vec!["c"]);
        let again = store
            .claim("new", Duration::from_secs(60))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(again.attempt, row.attempt + 1);
        assert!(
            !store
                .save_outcome("c", &claim_of("dead", &row), "{}")
                .await
                .unwrap(),
            "the dead incarnation's claim is fenced off"
        );
    }

    #[tokio::test]
    async fn a_data_directory_is_used_by_one_process_at_a_time() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).await.unwrap();
        let err = match Store::open(dir.path()).await {
            Ok(_) => panic!("a second store opened a locked data directory"),
            Err(e) => format!("{e:#}"),
        };
        assert!(err.contains("in use by another duchy process"), "{err}");
        store.close().await;
        Store::open(dir.path()).await.unwrap();
    }

    #[tokio::test]
    async fn commits_are_durable_against_power_loss() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).await.unwrap();
        let r = sqlx::query("PRAGMA synchronous")
            .fetch_one(&store.pool)
            .await
            .unwrap();
        let mode: i64 = r.try_get(0).unwrap();
        assert_eq!(mode, 2, "synchronous=FULL (2), not NORMAL (1)");
        let r = sqlx::query("PRAGMA journal_mode")
            .fetch_one(&store.pool)
            .await
            .unwrap();
        let journal: String = r.try_get(0).unwrap();
        assert_eq!(journal, "wal");
    }

    #[tokio::test]
    async fn continuation_token_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).await.unwrap();
        assert_eq!(store.continuation_token().await.unwrap(), "");
        store.set_continuation_token("abc").await.unwrap();
        store.close().await;
        let store = Store::open(dir.path()).await.unwrap();
        assert_eq!(store.continuation_token().await.unwrap(), "abc");
    }
}

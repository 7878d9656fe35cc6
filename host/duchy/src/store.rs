//! The duchy's local computation store: SQLite (via sqlx) for computations, received inputs,
//! requisitions, cached stage outcomes, the herald's continuation token and the audit log;
//! payloads as files under `{data_dir}/blobs`.
//!
//! All access goes through one connection, so every method is atomic and writers never race;
//! no method holds the connection across network I/O.

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, anyhow};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Row, SqlitePool};

use crate::protocol::{PluginPin, Role, SystemProtocol};

const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS computations (
  global_id        TEXT PRIMARY KEY,
  protocol         INTEGER NOT NULL,
  role             INTEGER NOT NULL,
  plugin_name      TEXT NOT NULL,
  plugin_version   TEXT NOT NULL,
  plugin_digest    TEXT NOT NULL,
  stage            INTEGER NOT NULL,
  attempt          INTEGER NOT NULL DEFAULT 0,
  queued           INTEGER NOT NULL,
  lease_owner      TEXT,
  lease_expiry_ms  INTEGER,
  kingdom_state    INTEGER NOT NULL,
  computation      BLOB NOT NULL,
  plugin_state     BLOB NOT NULL,
  terminal         TEXT,
  version          INTEGER NOT NULL DEFAULT 1,
  created_ms       INTEGER NOT NULL,
  updated_ms       INTEGER NOT NULL,
  stage_started_ms INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS computations_claim ON computations (queued, lease_expiry_ms);
CREATE TABLE IF NOT EXISTS inputs (
  global_id   TEXT NOT NULL,
  description INTEGER NOT NULL,
  sender      TEXT NOT NULL,
  blob        TEXT NOT NULL,
  size        INTEGER NOT NULL,
  sha256      TEXT NOT NULL,
  received_ms INTEGER NOT NULL,
  PRIMARY KEY (global_id, description, sender)
);
CREATE TABLE IF NOT EXISTS requisitions (
  global_id        TEXT NOT NULL,
  requisition_id   TEXT NOT NULL,
  fulfilling_duchy TEXT NOT NULL,
  requisition_spec_hash BLOB NOT NULL,
  nonce_hash       BLOB NOT NULL,
  blob             TEXT,
  header           BLOB,
  nonce            INTEGER,
  PRIMARY KEY (global_id, requisition_id)
);
CREATE INDEX IF NOT EXISTS requisitions_by_id ON requisitions (requisition_id);
CREATE TABLE IF NOT EXISTS outcomes (
  global_id TEXT NOT NULL,
  stage     INTEGER NOT NULL,
  outcome   TEXT NOT NULL,
  PRIMARY KEY (global_id, stage)
);
CREATE TABLE IF NOT EXISTS herald (
  id    INTEGER PRIMARY KEY CHECK (id = 1),
  token TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS audit (
  id        INTEGER PRIMARY KEY AUTOINCREMENT,
  time_ms   INTEGER NOT NULL,
  global_id TEXT NOT NULL,
  event     TEXT NOT NULL,
  detail    TEXT NOT NULL
);
"#;

pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
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

impl Store {
    /// Opens (creating if needed) the store under `data_dir`.
    pub async fn open(data_dir: &Path) -> Result<Store> {
        let blob_root = data_dir.join("blobs");
        tokio::fs::create_dir_all(&blob_root)
            .await
            .with_context(|| format!("creating {}", blob_root.display()))?;
        let db = data_dir.join("duchy.db");
        let opts = SqliteConnectOptions::from_str(&format!("sqlite://{}", db.display()))
            .with_context(|| format!("database path {}", db.display()))?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(Duration::from_secs(10));
        let pool = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(opts)
            .await
            .with_context(|| format!("opening {}", db.display()))?;
        sqlx::raw_sql(SCHEMA)
            .execute(&pool)
            .await
            .context("creating schema")?;
        Ok(Store { pool, blob_root })
    }

    pub async fn close(&self) {
        self.pool.close().await;
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

    /// Inserts a computation; returns false if it already existed (nothing changed).
    pub async fn insert(&self, c: NewComputation) -> Result<bool> {
        let now = now_ms();
        let res = sqlx::query(
            "INSERT OR IGNORE INTO computations (global_id, protocol, role, plugin_name, plugin_version, \
             plugin_digest, stage, attempt, queued, lease_owner, lease_expiry_ms, kingdom_state, computation, \
             plugin_state, terminal, version, created_ms, updated_ms, stage_started_ms) \
             VALUES (?, ?, ?, ?, ?, ?, ?, 0, ?, NULL, ?, ?, ?, ?, NULL, 1, ?, ?, ?)",
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
        .execute(&self.pool)
        .await?;
        Ok(res.rows_affected() == 1)
    }

    /// Records the latest Kingdom view of a computation.
    pub async fn update_snapshot(
        &self,
        global_id: &str,
        computation: &[u8],
        kingdom_state: i32,
    ) -> Result<()> {
        sqlx::query(
            "UPDATE computations SET computation = ?, kingdom_state = ?, updated_ms = ?, version = version + 1 \
             WHERE global_id = ?",
        )
        .bind(computation)
        .bind(kingdom_state as i64)
        .bind(now_ms())
        .bind(global_id)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Claims the next queued computation whose lease is free or expired.
    /// Increments the stage attempt. `max_leases` bounds nothing here; callers decide.
    pub async fn claim(&self, owner: &str, lease: Duration) -> Result<Option<ComputationRow>> {
        let now = now_ms();
        let expiry = now + lease.as_millis() as i64;
        let row = sqlx::query(
            "UPDATE computations SET lease_owner = ?, lease_expiry_ms = ?, attempt = attempt + 1, \
             updated_ms = ?, version = version + 1 \
             WHERE global_id = (SELECT global_id FROM computations WHERE queued = 1 AND terminal IS NULL \
               AND lease_expiry_ms IS NOT NULL AND lease_expiry_ms <= ? \
               ORDER BY lease_expiry_ms, created_ms LIMIT 1) \
             RETURNING *",
        )
        .bind(owner)
        .bind(expiry)
        .bind(now)
        .bind(now)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(row_to_computation).transpose()
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

    /// Moves a computation from stage `from` to `to`. With `claim`, only while the claim
    /// still holds. Returns false (and changes nothing) if the precondition failed.
    pub async fn advance(
        &self,
        global_id: &str,
        claim: Option<&Claim>,
        from: i32,
        to: i32,
        queued: bool,
        plugin_state: Option<&[u8]>,
    ) -> Result<bool> {
        let now = now_ms();
        let mut q = String::from(
            "UPDATE computations SET stage = ?, attempt = 0, queued = ?, lease_owner = NULL, \
             lease_expiry_ms = ?, plugin_state = COALESCE(?, plugin_state), updated_ms = ?, \
             stage_started_ms = ?, version = version + 1 \
             WHERE global_id = ? AND stage = ? AND terminal IS NULL",
        );
        if claim.is_some() {
            q.push_str(" AND lease_owner = ? AND attempt = ?");
        }
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
            query = query.bind(&c.owner).bind(c.attempt as i64);
        }
        let res = query.execute(&self.pool).await?;
        if res.rows_affected() == 1 {
            sqlx::query("DELETE FROM outcomes WHERE global_id = ? AND stage = ?")
                .bind(global_id)
                .bind(from as i64)
                .execute(&self.pool)
                .await?;
            Ok(true)
        } else {
            Ok(false)
        }
    }

    /// Gives a claimed computation back, claimable again after `delay`.
    pub async fn release(&self, global_id: &str, claim: &Claim, delay: Duration) -> Result<bool> {
        let res = sqlx::query(
            "UPDATE computations SET lease_owner = NULL, lease_expiry_ms = ?, updated_ms = ?, version = version + 1 \
             WHERE global_id = ? AND lease_owner = ? AND attempt = ? AND stage = ?",
        )
        .bind(now_ms() + delay.as_millis() as i64)
        .bind(now_ms())
        .bind(global_id)
        .bind(&claim.owner)
        .bind(claim.attempt as i64)
        .bind(claim.stage as i64)
        .execute(&self.pool)
        .await?;
        Ok(res.rows_affected() == 1)
    }

    /// Marks a computation finished here; returns false if it already was.
    pub async fn finish(&self, global_id: &str, terminal: &str) -> Result<bool> {
        let res = sqlx::query(
            "UPDATE computations SET terminal = ?, queued = 0, lease_owner = NULL, lease_expiry_ms = NULL, \
             updated_ms = ?, version = version + 1 WHERE global_id = ? AND terminal IS NULL",
        )
        .bind(terminal)
        .bind(now_ms())
        .bind(global_id)
        .execute(&self.pool)
        .await?;
        Ok(res.rows_affected() == 1)
    }

    // ---- cached outcomes ----------------------------------------------------------------

    pub async fn save_outcome(&self, global_id: &str, stage: i32, outcome: &str) -> Result<()> {
        sqlx::query("INSERT OR REPLACE INTO outcomes (global_id, stage, outcome) VALUES (?, ?, ?)")
            .bind(global_id)
            .bind(stage as i64)
            .bind(outcome)
            .execute(&self.pool)
            .await?;
        Ok(())
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

    /// Records a received input while the computation is still at `stage`; returns false
    /// if the stage changed meanwhile (nothing recorded).
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
        tx.commit().await?;
        Ok(true)
    }

    // ---- requisitions -------------------------------------------------------------------

    /// Adds requisitions not yet known (existing rows keep their fulfilment data, but
    /// learn a newly assigned fulfilling duchy).
    pub async fn upsert_requisitions(&self, rows: &[RequisitionRow]) -> Result<()> {
        let mut tx = self.pool.begin().await?;
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
            .execute(&mut *tx)
            .await?;
        }
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

    #[tokio::test]
    async fn expired_leases_are_reclaimed_and_stale_owners_cannot_advance() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).await.unwrap();
        assert!(store.insert(new("c1")).await.unwrap());
        assert!(
            !store.insert(new("c1")).await.unwrap(),
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

        let stale = Claim {
            owner: "a".into(),
            stage: 1,
            attempt: 1,
        };
        let current = Claim {
            owner: "b".into(),
            stage: 1,
            attempt: 2,
        };
        assert!(!store.holds("c1", &stale).await.unwrap());
        assert!(store.holds("c1", &current).await.unwrap());
        assert!(
            !store
                .advance("c1", Some(&stale), 1, 2, false, None)
                .await
                .unwrap()
        );
        assert!(
            store
                .advance("c1", Some(&current), 1, 2, false, Some(b"s"))
                .await
                .unwrap()
        );
        let row = store.get("c1").await.unwrap().unwrap();
        assert_eq!((row.stage, row.attempt, row.queued), (2, 0, false));
        assert_eq!(row.plugin_state, b"s");
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
    async fn transient_release_delays_the_next_claim_and_finish_is_final() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).await.unwrap();
        store.insert(new("c2")).await.unwrap();
        let row = store
            .claim("a", Duration::from_secs(60))
            .await
            .unwrap()
            .unwrap();
        let claim = Claim {
            owner: "a".into(),
            stage: row.stage,
            attempt: row.attempt,
        };
        assert!(
            store
                .release("c2", &claim, Duration::from_millis(60))
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
        assert!(store.finish("c2", "FAILED").await.unwrap());
        assert!(!store.finish("c2", "COMPLETE").await.unwrap());
        assert_eq!(
            store.get("c2").await.unwrap().unwrap().terminal.as_deref(),
            Some("FAILED")
        );
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

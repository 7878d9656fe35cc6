//! SQLite persistence: connection pools, the monotonic clock, rows and common queries.
//!
//! All writes go through a single-connection writer pool, so write transactions are
//! serialized and never hit `SQLITE_BUSY` on lock upgrade; reads use a separate read-only pool
//! (WAL mode lets them run concurrently with the writer, each on a consistent snapshot).
//!
//! Times are microseconds since the Unix epoch. [`WriteTx::now`] allocates one timestamp per
//! write transaction as `max(wall clock, last + 1)` from the persisted `clock` row, so every
//! committed write carries a time strictly greater than all earlier commits, across all
//! computations and across restarts. Because the writer is serialized, commits become visible
//! in timestamp order, which is what makes `(update_time, external_computation_id)` a safe
//! resume position for `StreamActiveComputations`.

use std::path::Path;
use std::str::FromStr as _;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Sqlite, SqliteConnection, SqlitePool, Transaction};
use tokio::sync::watch;
use tonic::Status;

/// File name of the database inside the data directory.
pub const DB_FILE: &str = "kingdom.db";

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// What a caller is told when the database is overloaded or momentarily unusable.
pub(crate) const BUSY_MESSAGE: &str = "kingdom database busy, retry";

/// SQLite primary result codes (the low byte of an extended code) that mean "try again":
/// `SQLITE_BUSY` (5: another connection holds the lock past the busy timeout), `SQLITE_LOCKED`
/// (6: a conflict inside this process), `SQLITE_IOERR` (10: the operating system failed a
/// read, write or sync) and `SQLITE_FULL` (13: the disk is full; the transaction was rolled
/// back and succeeds once space returns). Extended codes such as `SQLITE_BUSY_SNAPSHOT` (517),
/// `SQLITE_BUSY_RECOVERY` (261), `SQLITE_LOCKED_SHAREDCACHE` (262) or `SQLITE_IOERR_FSYNC`
/// (1034) share their primary code. Everything else (constraint violations, `SQLITE_CORRUPT`,
/// `SQLITE_NOTADB`, misuse, ...) is a real fault.
fn is_transient_sqlite_code(extended: i64) -> bool {
    matches!(extended & 0xff, 5 | 6 | 10 | 13)
}

/// Whether a database error is overload or a passing condition rather than a fault: the
/// connection pool timed out or is closed (shutting down), its worker died, the OS failed an
/// I/O, or SQLite reported a lock conflict, an I/O error or a full disk.
pub(crate) fn is_transient(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed
        | sqlx::Error::Io(_) => true,
        sqlx::Error::Database(db) => db
            .code()
            .and_then(|c| c.parse::<i64>().ok())
            .is_some_and(is_transient_sqlite_code),
        _ => false,
    }
}

/// Maps a database error to a `tonic::Status` without leaking details to the caller:
/// UNAVAILABLE for overload and passing conditions (see [`is_transient`]), so clients retry
/// with backoff; INTERNAL for real faults (corruption, constraint violations, bugs).
pub(crate) fn db_error(e: sqlx::Error) -> Status {
    if is_transient(&e) {
        tracing::warn!(error = %e, "kingdom database busy");
        Status::unavailable(BUSY_MESSAGE)
    } else {
        tracing::error!(error = %e, "kingdom database error");
        Status::internal("kingdom database error")
    }
}

/// Maps a corrupt stored value to a `tonic::Status`.
pub(crate) fn corrupt(what: &str, e: impl std::fmt::Display) -> Status {
    tracing::error!(error = %e, "corrupt stored {what}");
    Status::internal(format!("corrupt stored {what}"))
}

/// The database: pools plus a commit notification channel.
#[derive(Clone)]
pub(crate) struct Db {
    writer: SqlitePool,
    reader: SqlitePool,
    changes: Arc<watch::Sender<u64>>,
}

/// How long a connection waits for SQLite's lock, and a call for a pooled connection.
#[derive(Clone, Copy, Debug)]
pub(crate) struct DbTimeouts {
    pub busy: Duration,
    pub acquire: Duration,
}

impl Default for DbTimeouts {
    fn default() -> Self {
        DbTimeouts {
            busy: Duration::from_secs(10),
            acquire: Duration::from_secs(30),
        }
    }
}

impl Db {
    /// Opens (creating if missing) `data_dir/kingdom.db` and applies migrations.
    pub async fn open(data_dir: &Path) -> anyhow::Result<Db> {
        Self::open_with(data_dir, DbTimeouts::default()).await
    }

    /// [`Db::open`] with explicit lock and pool timeouts.
    pub async fn open_with(data_dir: &Path, timeouts: DbTimeouts) -> anyhow::Result<Db> {
        std::fs::create_dir_all(data_dir)
            .with_context(|| format!("creating data directory {}", data_dir.display()))?;
        let path = data_dir.join(DB_FILE);
        let base = SqliteConnectOptions::from_str("sqlite:")
            .context("sqlite options")?
            .filename(&path)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .foreign_keys(true)
            .busy_timeout(timeouts.busy);
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            .min_connections(1)
            .acquire_timeout(timeouts.acquire)
            .connect_with(base.clone().create_if_missing(true))
            .await
            .with_context(|| format!("opening {}", path.display()))?;
        MIGRATOR
            .run(&writer)
            .await
            .with_context(|| format!("migrating {}", path.display()))?;
        let reader = SqlitePoolOptions::new()
            .max_connections(4)
            .acquire_timeout(timeouts.acquire)
            .connect_with(base.read_only(true))
            .await
            .with_context(|| format!("opening {} read-only", path.display()))?;
        let (changes, _) = watch::channel(0u64);
        Ok(Db {
            writer,
            reader,
            changes: Arc::new(changes),
        })
    }

    /// Starts a write transaction (serialized with all other writes).
    pub async fn write(&self) -> Result<WriteTx, Status> {
        let tx = self.writer.begin().await.map_err(db_error)?;
        Ok(WriteTx {
            tx,
            now: None,
            computation_changed: false,
            changes: self.changes.clone(),
        })
    }

    /// Starts a read transaction: all reads in it see one consistent snapshot.
    pub async fn read(&self) -> Result<Transaction<'static, Sqlite>, Status> {
        self.reader.begin().await.map_err(db_error)
    }

    /// Receives a new value after every commit that changed a computation.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    /// Closes both pools (waits for connections to be returned).
    pub async fn close(&self) {
        self.reader.close().await;
        self.writer.close().await;
    }
}

/// A write transaction. Dropping it without [`WriteTx::commit`] rolls back.
pub(crate) struct WriteTx {
    tx: Transaction<'static, Sqlite>,
    now: Option<i64>,
    computation_changed: bool,
    changes: Arc<watch::Sender<u64>>,
}

impl WriteTx {
    pub fn conn(&mut self) -> &mut SqliteConnection {
        &mut self.tx
    }

    /// This transaction's timestamp (allocated on first use; see the module docs).
    pub async fn now(&mut self) -> Result<i64, Status> {
        if let Some(now) = self.now {
            return Ok(now);
        }
        let last: i64 = sqlx::query_scalar("SELECT last_micros FROM clock WHERE id = 0")
            .fetch_one(&mut *self.tx)
            .await
            .map_err(db_error)?;
        let now = wall_clock_micros().max(last.saturating_add(1));
        sqlx::query("UPDATE clock SET last_micros = ?1 WHERE id = 0")
            .bind(now)
            .execute(&mut *self.tx)
            .await
            .map_err(db_error)?;
        self.now = Some(now);
        Ok(now)
    }

    /// Records that a computation's update time changed, so streams are woken on commit.
    pub fn mark_computation_changed(&mut self) {
        self.computation_changed = true;
    }

    pub async fn commit(self) -> Result<(), Status> {
        self.tx.commit().await.map_err(db_error)?;
        if self.computation_changed {
            self.changes.send_modify(|v| *v = v.wrapping_add(1));
        }
        Ok(())
    }
}

pub(crate) fn wall_clock_micros() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// Microseconds since the epoch as a protobuf `Timestamp`.
pub(crate) fn timestamp(micros: i64) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: micros.div_euclid(1_000_000),
        // In [0, 999_999_000]: fits in i32.
        nanos: i32::try_from(micros.rem_euclid(1_000_000) * 1_000).unwrap_or(0),
    }
}

/// Entity tag derived from a row's update time (which changes on every write of the row).
pub(crate) fn etag(update_time: i64) -> String {
    format!("W/\"{update_time:016x}\"")
}

#[derive(Clone, Debug, sqlx::FromRow)]
pub(crate) struct MeasurementRow {
    pub external_computation_id: i64,
    pub external_measurement_id: i64,
    pub measurement_consumer_id: String,
    pub protocol: i32,
    pub measurement_spec: Vec<u8>,
    pub protocol_config: Vec<u8>,
    pub aggregator_duchy_id: String,
    pub state: i32,
    pub aggregator_certificate: String,
    pub encrypted_result: Vec<u8>,
    pub result_public_key: Vec<u8>,
    pub failure_message: String,
}

#[derive(Clone, Debug, sqlx::FromRow)]
pub(crate) struct ParticipantRow {
    pub external_computation_id: i64,
    pub duchy_id: String,
    pub state: i32,
    pub update_time: i64,
    pub requisition_params: Option<Vec<u8>>,
    pub failure: Option<Vec<u8>>,
}

#[derive(Clone, Debug, sqlx::FromRow)]
pub(crate) struct RequisitionRow {
    pub external_requisition_id: i64,
    pub external_computation_id: i64,
    pub state: i32,
    pub requisition_spec_hash: Vec<u8>,
    pub nonce_hash: Vec<u8>,
    pub encrypted_requisition_spec: Vec<u8>,
    pub fulfilling_duchy_id: Option<String>,
    pub nonce: Option<i64>,
    pub fulfillment_context: Option<Vec<u8>>,
    pub update_time: i64,
    pub data_provider_id: String,
}

/// A measurement with its participants and requisitions, read in one transaction.
#[derive(Clone, Debug)]
pub(crate) struct ComputationData {
    pub measurement: MeasurementRow,
    pub participants: Vec<ParticipantRow>,
    pub requisitions: Vec<RequisitionRow>,
}

impl ComputationData {
    pub fn participant(&self, duchy_id: &str) -> Option<&ParticipantRow> {
        self.participants.iter().find(|p| p.duchy_id == duchy_id)
    }
}

const MEASUREMENT_COLUMNS: &str = "external_computation_id, external_measurement_id, \
    measurement_consumer_id, protocol, measurement_spec, protocol_config, \
    aggregator_duchy_id, state, aggregator_certificate, encrypted_result, result_public_key, \
    failure_message";

const PARTICIPANT_COLUMNS: &str = "external_computation_id, duchy_id, state, update_time, \
    requisition_params, failure";

const REQUISITION_COLUMNS: &str = "external_requisition_id, external_computation_id, state, \
    requisition_spec_hash, nonce_hash, encrypted_requisition_spec, fulfilling_duchy_id, nonce, \
    fulfillment_context, update_time, data_provider_id";

pub(crate) async fn measurement_by_computation_id(
    conn: &mut SqliteConnection,
    external_computation_id: i64,
) -> Result<Option<MeasurementRow>, Status> {
    sqlx::query_as(&format!(
        "SELECT {MEASUREMENT_COLUMNS} FROM measurements WHERE external_computation_id = ?1"
    ))
    .bind(external_computation_id)
    .fetch_optional(conn)
    .await
    .map_err(db_error)
}

pub(crate) async fn measurement_by_measurement_id(
    conn: &mut SqliteConnection,
    measurement_consumer_id: &str,
    external_measurement_id: i64,
) -> Result<Option<MeasurementRow>, Status> {
    sqlx::query_as(&format!(
        "SELECT {MEASUREMENT_COLUMNS} FROM measurements \
         WHERE measurement_consumer_id = ?1 AND external_measurement_id = ?2"
    ))
    .bind(measurement_consumer_id)
    .bind(external_measurement_id)
    .fetch_optional(conn)
    .await
    .map_err(db_error)
}

pub(crate) async fn measurement_by_request_id(
    conn: &mut SqliteConnection,
    measurement_consumer_id: &str,
    request_id: &str,
) -> Result<Option<MeasurementRow>, Status> {
    sqlx::query_as(&format!(
        "SELECT {MEASUREMENT_COLUMNS} FROM measurements \
         WHERE measurement_consumer_id = ?1 AND request_id = ?2 AND request_id <> ''"
    ))
    .bind(measurement_consumer_id)
    .bind(request_id)
    .fetch_optional(conn)
    .await
    .map_err(db_error)
}

pub(crate) async fn participants(
    conn: &mut SqliteConnection,
    external_computation_id: i64,
) -> Result<Vec<ParticipantRow>, Status> {
    sqlx::query_as(&format!(
        "SELECT {PARTICIPANT_COLUMNS} FROM computation_participants \
         WHERE external_computation_id = ?1 ORDER BY ordinal"
    ))
    .bind(external_computation_id)
    .fetch_all(conn)
    .await
    .map_err(db_error)
}

pub(crate) async fn requisitions(
    conn: &mut SqliteConnection,
    external_computation_id: i64,
) -> Result<Vec<RequisitionRow>, Status> {
    sqlx::query_as(&format!(
        "SELECT {REQUISITION_COLUMNS} FROM requisitions \
         WHERE external_computation_id = ?1 ORDER BY ordinal"
    ))
    .bind(external_computation_id)
    .fetch_all(conn)
    .await
    .map_err(db_error)
}

/// Sort key of [`fulfillable_requisitions`]: unique per requisition (one measurement is created
/// per write transaction, whose time is unique, and `(computation, ordinal)` is unique).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct RequisitionPosition {
    pub create_time_micros: i64,
    pub external_computation_id: i64,
    pub ordinal: i64,
}

impl RequisitionPosition {
    /// Before every requisition.
    pub const START: RequisitionPosition = RequisitionPosition {
        create_time_micros: i64::MIN,
        external_computation_id: i64::MIN,
        ordinal: i64::MIN,
    };
}

/// A row of [`fulfillable_requisitions`]: the requisition and its sort key.
#[derive(Clone, Debug, sqlx::FromRow)]
pub(crate) struct FulfillableRow {
    pub create_time: i64,
    pub ordinal: i64,
    #[sqlx(flatten)]
    pub requisition: RequisitionRow,
}

impl FulfillableRow {
    pub fn position(&self) -> RequisitionPosition {
        RequisitionPosition {
            create_time_micros: self.create_time,
            external_computation_id: self.requisition.external_computation_id,
            ordinal: self.ordinal,
        }
    }
}

/// At most `limit` unfulfilled requisitions of a data provider whose computation awaits
/// fulfilment, strictly after `after` in the order (computation create time, computation id,
/// ordinal): keyset pagination, no OFFSET.
pub(crate) async fn fulfillable_requisitions(
    conn: &mut SqliteConnection,
    data_provider_id: &str,
    unfulfilled: i32,
    pending_fulfillment: i32,
    after: RequisitionPosition,
    limit: i64,
) -> Result<Vec<FulfillableRow>, Status> {
    let columns = REQUISITION_COLUMNS
        .split(", ")
        .map(|c| format!("r.{}", c.trim()))
        .collect::<Vec<_>>()
        .join(", ");
    sqlx::query_as(&format!(
        "SELECT m.create_time AS create_time, r.ordinal AS ordinal, {columns} \
         FROM requisitions r \
         JOIN measurements m ON m.external_computation_id = r.external_computation_id \
         WHERE r.data_provider_id = ?1 AND r.state = ?2 AND m.state = ?3 \
         AND (m.create_time, r.external_computation_id, r.ordinal) > (?4, ?5, ?6) \
         ORDER BY m.create_time, r.external_computation_id, r.ordinal \
         LIMIT ?7"
    ))
    .bind(data_provider_id)
    .bind(unfulfilled)
    .bind(pending_fulfillment)
    .bind(after.create_time_micros)
    .bind(after.external_computation_id)
    .bind(after.ordinal)
    .bind(limit)
    .fetch_all(conn)
    .await
    .map_err(db_error)
}

pub(crate) async fn load_computation(
    conn: &mut SqliteConnection,
    external_computation_id: i64,
) -> Result<Option<ComputationData>, Status> {
    let Some(measurement) = measurement_by_computation_id(conn, external_computation_id).await?
    else {
        return Ok(None);
    };
    let participants = participants(conn, external_computation_id).await?;
    let requisitions = requisitions(conn, external_computation_id).await?;
    Ok(Some(ComputationData {
        measurement,
        participants,
        requisitions,
    }))
}

/// Sets a measurement's state and bumps its update time.
pub(crate) async fn set_measurement_state(
    tx: &mut WriteTx,
    external_computation_id: i64,
    state: i32,
) -> Result<i64, Status> {
    let now = tx.now().await?;
    sqlx::query(
        "UPDATE measurements SET state = ?1, update_time = ?2 WHERE external_computation_id = ?3",
    )
    .bind(state)
    .bind(now)
    .bind(external_computation_id)
    .execute(tx.conn())
    .await
    .map_err(db_error)?;
    tx.mark_computation_changed();
    Ok(now)
}

/// Sets a participant's state, bumping its update time (and so its etag).
pub(crate) async fn set_participant_state(
    tx: &mut WriteTx,
    external_computation_id: i64,
    duchy_id: &str,
    state: i32,
) -> Result<i64, Status> {
    let now = tx.now().await?;
    sqlx::query(
        "UPDATE computation_participants SET state = ?1, update_time = ?2 \
         WHERE external_computation_id = ?3 AND duchy_id = ?4",
    )
    .bind(state)
    .bind(now)
    .bind(external_computation_id)
    .bind(duchy_id)
    .execute(tx.conn())
    .await
    .map_err(db_error)?;
    Ok(now)
}

/// Moves all requisitions of a computation in state `from` to `to`, bumping their etags.
/// Ends a measurement unsuccessfully: withdraws its unfulfilled requisitions, moves it to
/// `state` (FAILED or CANCELLED) and records `message` as its failure message.
pub(crate) async fn end_measurement(
    tx: &mut WriteTx,
    external_computation_id: i64,
    state: i32,
    message: &str,
) -> Result<(), Status> {
    set_requisition_states(
        tx,
        external_computation_id,
        halo_proto::system::v1alpha::requisition::State::Unfulfilled as i32,
        halo_proto::system::v1alpha::requisition::State::Withdrawn as i32,
    )
    .await?;
    set_measurement_state(tx, external_computation_id, state).await?;
    sqlx::query("UPDATE measurements SET failure_message = ?1 WHERE external_computation_id = ?2")
        .bind(message)
        .bind(external_computation_id)
        .execute(tx.conn())
        .await
        .map_err(db_error)?;
    Ok(())
}

pub(crate) async fn set_requisition_states(
    tx: &mut WriteTx,
    external_computation_id: i64,
    from: i32,
    to: i32,
) -> Result<(), Status> {
    let now = tx.now().await?;
    sqlx::query(
        "UPDATE requisitions SET state = ?1, update_time = ?2 \
         WHERE external_computation_id = ?3 AND state = ?4",
    )
    .bind(to)
    .bind(now)
    .bind(external_computation_id)
    .bind(from)
    .execute(tx.conn())
    .await
    .map_err(db_error)?;
    Ok(())
}

/// Bumps the etag of all requisitions of a computation (their public view changed).
pub(crate) async fn touch_requisitions(
    tx: &mut WriteTx,
    external_computation_id: i64,
) -> Result<(), Status> {
    let now = tx.now().await?;
    sqlx::query("UPDATE requisitions SET update_time = ?1 WHERE external_computation_id = ?2")
        .bind(now)
        .bind(external_computation_id)
        .execute(tx.conn())
        .await
        .map_err(db_error)?;
    Ok(())
}

pub(crate) async fn insert_log_entry(
    tx: &mut WriteTx,
    external_computation_id: i64,
    duchy_id: &str,
    entry: &[u8],
) -> Result<i64, Status> {
    let now = tx.now().await?;
    loop {
        let id = crate::random_external_id();
        let done = sqlx::query(
            "INSERT INTO computation_log_entries \
             (external_log_entry_id, external_computation_id, duchy_id, create_time, entry) \
             VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT (external_log_entry_id) DO NOTHING",
        )
        .bind(id)
        .bind(external_computation_id)
        .bind(duchy_id)
        .bind(now)
        .bind(entry)
        .execute(tx.conn())
        .await
        .map_err(db_error)?;
        if done.rows_affected() == 1 {
            return Ok(id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sqlx::Connection as _;

    /// A connection of its own to the Kingdom's database (as another process would have).
    async fn raw_connection(dir: &Path, busy: Duration) -> SqliteConnection {
        let options = SqliteConnectOptions::from_str("sqlite:")
            .unwrap()
            .filename(dir.join(DB_FILE))
            .busy_timeout(busy);
        SqliteConnection::connect_with(&options).await.unwrap()
    }

    fn sqlite_code(e: &sqlx::Error) -> Option<i64> {
        match e {
            sqlx::Error::Database(db) => db.code().and_then(|c| c.parse().ok()),
            _ => None,
        }
    }

    #[track_caller]
    fn assert_unavailable(e: sqlx::Error) {
        assert!(is_transient(&e), "{e:?}");
        let status = db_error(e);
        assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
        assert_eq!(status.message(), BUSY_MESSAGE);
    }

    #[track_caller]
    fn assert_internal(e: sqlx::Error) {
        assert!(!is_transient(&e), "{e:?}");
        let status = db_error(e);
        assert_eq!(status.code(), tonic::Code::Internal, "{status:?}");
    }

    /// Another connection holds the write lock past our busy timeout: SQLITE_BUSY (5), and a
    /// Kingdom write transaction reports UNAVAILABLE.
    #[tokio::test]
    async fn sqlite_busy_is_unavailable() {
        let dir = tempfile::tempdir().unwrap();
        let timeouts = DbTimeouts {
            busy: Duration::from_millis(50),
            acquire: Duration::from_secs(30),
        };
        let db = Db::open_with(dir.path(), timeouts).await.unwrap();
        let mut holder = raw_connection(dir.path(), Duration::ZERO).await;
        sqlx::query("BEGIN IMMEDIATE")
            .execute(&mut holder)
            .await
            .unwrap();

        let mut other = raw_connection(dir.path(), Duration::from_millis(20)).await;
        let e = sqlx::query("BEGIN IMMEDIATE")
            .execute(&mut other)
            .await
            .unwrap_err();
        assert_eq!(sqlite_code(&e), Some(5), "{e:?}");
        assert_unavailable(e);

        // Through the Kingdom's own write path.
        let status = match db.write().await {
            Err(status) => status,
            Ok(mut tx) => tx.now().await.unwrap_err(),
        };
        assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");

        sqlx::query("ROLLBACK").execute(&mut holder).await.unwrap();
        let mut tx = db.write().await.unwrap();
        tx.now().await.unwrap();
        tx.commit().await.unwrap();
        db.close().await;
    }

    /// A read snapshot overtaken by another writer cannot be upgraded: SQLITE_BUSY_SNAPSHOT
    /// (517, an extended code of SQLITE_BUSY) is UNAVAILABLE too.
    #[tokio::test]
    async fn sqlite_busy_snapshot_is_unavailable() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(dir.path()).await.unwrap();
        let mut reader = raw_connection(dir.path(), Duration::from_millis(20)).await;
        sqlx::query("BEGIN").execute(&mut reader).await.unwrap();
        let _: i64 = sqlx::query_scalar("SELECT last_micros FROM clock")
            .fetch_one(&mut reader)
            .await
            .unwrap();
        let mut tx = db.write().await.unwrap();
        tx.now().await.unwrap();
        tx.commit().await.unwrap();
        let e = sqlx::query("UPDATE clock SET last_micros = last_micros + 1")
            .execute(&mut reader)
            .await
            .unwrap_err();
        assert_eq!(sqlite_code(&e), Some(517), "{e:?}");
        assert_unavailable(e);
        db.close().await;
    }

    /// The single writer connection is taken for longer than the acquire timeout:
    /// `PoolTimedOut`; after `close`: `PoolClosed`. Both are UNAVAILABLE.
    #[tokio::test]
    async fn pool_timeout_and_closed_pool_are_unavailable() {
        let dir = tempfile::tempdir().unwrap();
        let timeouts = DbTimeouts {
            busy: Duration::from_secs(10),
            acquire: Duration::from_millis(50),
        };
        let db = Db::open_with(dir.path(), timeouts).await.unwrap();
        let held = db.write().await.unwrap();
        let e = db.writer.begin().await.unwrap_err();
        assert!(matches!(e, sqlx::Error::PoolTimedOut), "{e:?}");
        assert_unavailable(e);
        let status = db.write().await.err().unwrap();
        assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
        drop(held);
        db.write().await.unwrap();

        db.close().await;
        let e = db.writer.begin().await.unwrap_err();
        assert!(matches!(e, sqlx::Error::PoolClosed), "{e:?}");
        assert_unavailable(e);
        let status = db.read().await.err().unwrap();
        assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
    }

    /// Real faults stay INTERNAL: a constraint violation and a file that is not a database.
    #[tokio::test]
    async fn constraint_violation_and_corruption_are_internal() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(dir.path()).await.unwrap();
        let mut tx = db.write().await.unwrap();
        let e = sqlx::query("INSERT INTO clock (id, last_micros) VALUES (0, 1)")
            .execute(tx.conn())
            .await
            .unwrap_err();
        // SQLITE_CONSTRAINT_PRIMARYKEY
        assert_eq!(sqlite_code(&e), Some(1555), "{e:?}");
        assert_internal(e);
        drop(tx);
        db.close().await;

        let bad = tempfile::tempdir().unwrap();
        std::fs::write(bad.path().join(DB_FILE), vec![0x5a; 8192]).unwrap();
        let e = match SqliteConnection::connect_with(
            &SqliteConnectOptions::from_str("sqlite:")
                .unwrap()
                .filename(bad.path().join(DB_FILE)),
        )
        .await
        {
            Err(e) => e,
            Ok(mut conn) => sqlx::query("SELECT * FROM sqlite_master")
                .execute(&mut conn)
                .await
                .unwrap_err(),
        };
        // SQLITE_NOTADB
        assert_eq!(sqlite_code(&e), Some(26), "{e:?}");
        assert_internal(e);
    }

    #[test]
    fn transient_codes_and_io_errors() {
        // BUSY, LOCKED, IOERR, FULL and their extended codes.
        for code in [5, 261, 517, 773, 6, 262, 518, 10, 266, 1034, 13] {
            assert!(is_transient_sqlite_code(code), "{code}");
        }
        // ERROR, INTERNAL, CORRUPT, CONSTRAINT (+ UNIQUE), MISMATCH, MISUSE, NOTADB.
        for code in [1, 2, 11, 19, 2067, 20, 21, 26] {
            assert!(!is_transient_sqlite_code(code), "{code}");
        }
        assert_unavailable(sqlx::Error::Io(std::io::Error::other("disk went away")));
        assert_unavailable(sqlx::Error::WorkerCrashed);
        assert_internal(sqlx::Error::RowNotFound);
        assert_internal(sqlx::Error::Protocol("garbled".into()));
    }

    #[test]
    fn timestamp_conversion() {
        let t = timestamp(1_700_000_000_123_456);
        assert_eq!(t.seconds, 1_700_000_000);
        assert_eq!(t.nanos, 123_456_000);
        let t = timestamp(-1);
        assert_eq!(t.seconds, -1);
        assert_eq!(t.nanos, 999_999_000);
    }

    #[tokio::test]
    async fn clock_is_strictly_increasing_and_persistent() {
        let dir = tempfile::tempdir().unwrap();
        let mut last = 0;
        for _ in 0..2 {
            let db = Db::open(dir.path()).await.unwrap();
            for _ in 0..20 {
                let mut tx = db.write().await.unwrap();
                let a = tx.now().await.unwrap();
                assert_eq!(tx.now().await.unwrap(), a, "one timestamp per transaction");
                tx.commit().await.unwrap();
                assert!(a > last);
                last = a;
            }
            // A rolled-back transaction does not consume its time.
            let mut tx = db.write().await.unwrap();
            let _ = tx.now().await.unwrap();
            drop(tx);
            db.close().await;
        }
        // Simulate a clock far in the future persisted in the DB: time keeps increasing.
        let db = Db::open(dir.path()).await.unwrap();
        let mut tx = db.write().await.unwrap();
        sqlx::query("UPDATE clock SET last_micros = ?1")
            .bind(i64::MAX / 2)
            .execute(tx.conn())
            .await
            .unwrap();
        tx.commit().await.unwrap();
        let mut tx = db.write().await.unwrap();
        assert_eq!(tx.now().await.unwrap(), i64::MAX / 2 + 1);
        tx.commit().await.unwrap();
        db.close().await;
    }
}

//! The duchy store's schema comes from `host/duchy/migrations`; stores written before the
//! duchy used migrations (tables made by the old inline schema text, no `_sqlx_migrations`)
//! are adopted with their data, and one whose tables differ in ways the adoption does not know
//! is refused.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::str::FromStr;

use halo_duchy::store::Store;
use sqlx::sqlite::SqliteConnectOptions;
use sqlx::{Connection, SqliteConnection};

/// The schema text `Store::open` ran before migrations (with `computations.waits`, `failures`).
const BEFORE_MIGRATIONS: &str = include_str!("fixtures/store_schema_before_migrations.sql");
/// The older schema text: no `computations.waits`, no `failures` table.
const BEFORE_WAITS: &str = include_str!("fixtures/store_schema_before_waits.sql");

async fn raw(dir: &Path) -> SqliteConnection {
    let opts = SqliteConnectOptions::from_str("sqlite:")
        .unwrap()
        .filename(dir.join("duchy.db"))
        .create_if_missing(true);
    SqliteConnection::connect_with(&opts).await.unwrap()
}

/// A database as the old code left it: the schema text, one computation, an audit entry and
/// the herald's token.
async fn old_store(dir: &Path, schema: &str) {
    let mut c = raw(dir).await;
    sqlx::raw_sql(schema).execute(&mut c).await.unwrap();
    sqlx::raw_sql(
        "INSERT INTO computations (global_id, protocol, role, plugin_name, plugin_version, \
         plugin_digest, stage, attempt, queued, lease_owner, lease_expiry_ms, kingdom_state, \
         computation, plugin_state, terminal, version, created_ms, updated_ms, stage_started_ms) \
         VALUES ('c1', 3, 1, 'hmss', '1.0.0', 'sha256:00', 2, 1, 1, NULL, 5, 4, x'0a01', x'', \
         NULL, 7, 1, 2, 3); \
         INSERT INTO audit (time_ms, global_id, event, detail) VALUES (1, 'c1', 'create', 'old'); \
         INSERT INTO herald (id, token) VALUES (1, 'tok-7');",
    )
    .execute(&mut c)
    .await
    .unwrap();
    c.close().await.unwrap();
}

async fn applied_versions(dir: &Path) -> Vec<i64> {
    let mut c = raw(dir).await;
    let v: Vec<i64> = sqlx::query_scalar(
        "SELECT version FROM _sqlx_migrations WHERE success = 1 ORDER BY version",
    )
    .fetch_all(&mut c)
    .await
    .unwrap();
    c.close().await.unwrap();
    v
}

fn migration_versions() -> Vec<i64> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations");
    let mut v: Vec<i64> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.ends_with(".sql"))
        .map(|n| n.split('_').next().unwrap().parse().unwrap())
        .collect();
    v.sort();
    v
}

/// Everything the old store held is there and usable after adoption, and the store is now
/// migration-managed (a second open is an ordinary one).
async fn check_adopted(dir: &Path) {
    let store = Store::open(dir).await.unwrap();
    let row = store.get("c1").await.unwrap().expect("the old computation");
    assert_eq!(row.pin.name, "hmss");
    assert_eq!(row.stage, 2);
    assert_eq!(row.attempt, 1);
    assert_eq!(row.version, 7);
    assert_eq!(row.waits, 0);
    assert_eq!(row.computation, vec![0x0a, 0x01]);
    assert_eq!(store.continuation_token().await.unwrap(), "tok-7");
    let log = store.audit_log("c1").await.unwrap();
    assert_eq!(log[0].1, "create");
    // The tables the current code writes work, `failures` included.
    assert!(store.fail("c1", None, "boom", None).await.unwrap());
    assert_eq!(store.pending_failures().await.unwrap().len(), 1);
    store.close().await;
    assert_eq!(applied_versions(dir).await, migration_versions());

    let store = Store::open(dir).await.unwrap();
    assert_eq!(store.pending_failures().await.unwrap().len(), 1);
    assert_eq!(
        store.get("c1").await.unwrap().unwrap().version,
        row.version + 1
    );
    store.close().await;
}

#[tokio::test]
async fn a_new_store_records_every_migration() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).await.unwrap();
    store.close().await;
    assert_eq!(applied_versions(dir.path()).await, migration_versions());
    assert!(!migration_versions().is_empty());
}

#[tokio::test]
async fn a_store_written_before_migrations_is_adopted_with_its_data() {
    let dir = tempfile::tempdir().unwrap();
    old_store(dir.path(), BEFORE_MIGRATIONS).await;
    check_adopted(dir.path()).await;
}

#[tokio::test]
async fn a_store_written_before_waits_gets_the_column_and_the_failures_table() {
    let dir = tempfile::tempdir().unwrap();
    old_store(dir.path(), BEFORE_WAITS).await;
    check_adopted(dir.path()).await;
}

#[tokio::test]
async fn an_old_store_whose_tables_differ_is_refused_not_used() {
    let dir = tempfile::tempdir().unwrap();
    // The old schema with a column no version of the duchy wrote: adoption cannot know what
    // it means, so the store must not be silently taken as current.
    let odd = BEFORE_MIGRATIONS.replace(
        "  detail    TEXT NOT NULL\n",
        "  detail    TEXT NOT NULL,\n  extra     TEXT\n",
    );
    assert_ne!(odd, BEFORE_MIGRATIONS);
    old_store(dir.path(), &odd).await;
    let err = Store::open(dir.path()).await.err().expect("refused");
    let msg = format!("{err:#}");
    assert!(msg.contains("differ from the current schema"), "{msg}");
    assert!(msg.contains("extra"), "{msg}");
}

#[tokio::test]
async fn an_old_store_missing_a_column_is_refused_not_used() {
    let dir = tempfile::tempdir().unwrap();
    let odd = BEFORE_MIGRATIONS.replace("  size        INTEGER NOT NULL,\n", "");
    assert_ne!(odd, BEFORE_MIGRATIONS);
    old_store(dir.path(), &odd).await;
    let err = Store::open(dir.path()).await.err().expect("refused");
    assert!(
        format!("{err:#}").contains("differ from the current schema"),
        "{err:#}"
    );
}

#[tokio::test]
async fn stage_runs_are_structured_rows_in_execution_order() {
    use halo_duchy::store::Claim;
    use std::time::Duration;
    let dir = tempfile::tempdir().unwrap();
    old_store(dir.path(), BEFORE_MIGRATIONS).await;
    let store = Store::open(dir.path()).await.unwrap();
    assert!(store.stage_runs("c1").await.unwrap().is_empty());
    let claim = |stage, attempt| Claim {
        owner: "w".into(),
        stage,
        attempt,
    };
    store
        .record_stage_run(
            "c1",
            &claim(2, 1),
            "SETUP_PHASE",
            Duration::from_millis(1500),
        )
        .await
        .unwrap();
    store
        .record_stage_run(
            "c1",
            &claim(3, 2),
            "SHUFFLE_PHASE",
            Duration::from_millis(250),
        )
        .await
        .unwrap();
    store
        .record_stage_run("other", &claim(2, 1), "SETUP_PHASE", Duration::ZERO)
        .await
        .unwrap();
    let runs = store.stage_runs("c1").await.unwrap();
    assert_eq!(runs.len(), 2);
    assert_eq!(
        (runs[0].stage, runs[0].stage_name.as_str(), runs[0].attempt),
        (2, "SETUP_PHASE", 1)
    );
    assert_eq!(runs[0].seconds, 1.5);
    assert_eq!(runs[0].finished_ms - runs[0].started_ms, 1500);
    assert_eq!(
        (runs[1].stage, runs[1].stage_name.as_str(), runs[1].attempt),
        (3, "SHUFFLE_PHASE", 2)
    );
    assert!(runs[1].started_ms >= runs[0].started_ms);
    // The human audit entry is written with it.
    let executed: Vec<String> = store
        .audit_log("c1")
        .await
        .unwrap()
        .into_iter()
        .filter(|(_, e, _)| e == "executed")
        .map(|(_, _, d)| d)
        .collect();
    assert_eq!(
        executed,
        vec!["SETUP_PHASE in 1.500s", "SHUFFLE_PHASE in 0.250s"]
    );
    store.close().await;
}

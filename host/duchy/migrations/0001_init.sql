-- The duchy's local computation store (see src/store.rs). Times are milliseconds since the
-- Unix epoch.
--
-- Every statement is idempotent (IF NOT EXISTS) on purpose: stores written before the duchy
-- used migrations already have these tables and no `_sqlx_migrations`. `Store::open` brings
-- such a store to this schema (adding `computations.waits` if it predates it), lets this
-- migration record itself as applied, and then checks that every table matches a store made
-- from the migrations alone.
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
  stage_started_ms INTEGER NOT NULL,
  waits            INTEGER NOT NULL DEFAULT 0
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
CREATE TABLE IF NOT EXISTS failures (
  global_id     TEXT PRIMARY KEY,
  message       TEXT NOT NULL,
  stage_attempt BLOB,
  created_ms    INTEGER NOT NULL,
  next_try_ms   INTEGER NOT NULL,
  tries         INTEGER NOT NULL DEFAULT 0,
  acked_ms      INTEGER,
  acked_how     TEXT
);
CREATE TABLE IF NOT EXISTS audit (
  id        INTEGER PRIMARY KEY AUTOINCREMENT,
  time_ms   INTEGER NOT NULL,
  global_id TEXT NOT NULL,
  event     TEXT NOT NULL,
  detail    TEXT NOT NULL
);

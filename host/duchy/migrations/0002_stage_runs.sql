-- One row per executed stage whose outcome was saved (the claim still held): what `halo demo`
-- and operators read stage timings from, instead of parsing the audit log's free text.
-- started_ms / finished_ms are wall-clock milliseconds since the Unix epoch; seconds is the
-- plugin's measured run time (monotonic clock), not their difference.
CREATE TABLE stage_runs (
  id          INTEGER PRIMARY KEY AUTOINCREMENT,
  global_id   TEXT NOT NULL,
  stage       INTEGER NOT NULL,
  stage_name  TEXT NOT NULL,
  attempt     INTEGER NOT NULL,
  started_ms  INTEGER NOT NULL,
  finished_ms INTEGER NOT NULL,
  seconds     REAL NOT NULL
);
CREATE INDEX stage_runs_by_computation ON stage_runs (global_id, id);

//! The replica file's schema and its migrations.
//!
//! The visible state lives in `kv`, with exactly the columns and companion
//! tables of the Deno CLI's own SQLite layout (`migration_state` at version 3,
//! `data_version`, `queue`, `queue_running`), so `Deno.openKv(file)` and
//! `denokv --read-only` open a copy of the replica as is. Everything that is
//! kvreplica's own lives in `kvr_*` tables the Deno CLI ignores.

use rusqlite::{Connection, OptionalExtension};

use super::StoreError;

/// The Deno CLI's layout at its migration version 3.
const DENO_LAYOUT: &str = "
create table if not exists migration_state (
  k integer not null primary key,
  version integer not null
);
insert or ignore into migration_state (k, version) values (0, 3);
create table if not exists data_version (
  k integer primary key,
  version integer not null,
  seq integer not null default 0
);
insert or ignore into data_version (k, version, seq) values (0, 0, 0);
create table if not exists kv (
  k blob primary key,
  v blob not null,
  v_encoding integer not null,
  version integer not null,
  seq integer not null default 0,
  expiration_ms integer not null default -1
) without rowid;
create index if not exists kv_expiration_ms_idx on kv (expiration_ms);
create table if not exists queue (
  ts integer not null,
  id text not null,
  data blob not null,
  backoff_schedule text not null,
  keys_if_undelivered blob not null,
  primary key (ts, id)
);
create table if not exists queue_running (
  deadline integer not null,
  id text not null,
  data blob not null,
  backoff_schedule text not null,
  keys_if_undelivered blob not null,
  primary key (deadline, id)
);
";

/// kvreplica's own tables, one migration per schema version.
const MIGRATIONS: &[&str] = &["
-- Small key/value settings: source binding, DV, position, cursor, mode.
create table kvr_meta (
  k text not null primary key,
  v blob not null
) without rowid;

-- Snapshot ranges of the initial load and whether each is in `kv` yet, so a
-- killed initial load resumes where it stopped.
create table kvr_snapshot_ranges (
  name text not null primary key,
  loaded integer not null
) without rowid;

-- Fetched but not applied log entries (`v` null = delete), in stamp order:
-- the partial tail of a commit, everything newer than a pinned checkout,
-- and whatever a checkout back in time moved out of `kv`.
create table kvr_redo (
  stamp blob not null primary key,
  ts_ms integer not null,
  k blob not null,
  v blob,
  v_encoding integer not null,
  expiration_ms integer not null
) without rowid;

-- For every applied entry after the initial point, the key's previous row
-- (`v` null = absent), so the state can move back to any recoverable point.
create table kvr_undo (
  stamp blob not null primary key,
  ts_ms integer not null,
  k blob not null,
  v blob,
  v_encoding integer not null,
  version integer not null,
  seq integer not null,
  expiration_ms integer not null
) without rowid;

-- Recoverable points: every commit boundary after the initial point,
-- with the commit time of the log object that closed it.
create table kvr_points (
  versionstamp blob not null primary key,
  ts_ms integer not null
) without rowid;
create index kvr_points_ts on kvr_points (ts_ms);
"];

/// The newest schema this build knows.
pub const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

/// Creates or upgrades the schema in one transaction.
pub fn migrate(conn: &mut Connection) -> Result<(), StoreError> {
    let tx = conn.transaction()?;
    tx.execute_batch(DENO_LAYOUT)?;
    let has_meta: bool = tx
        .query_row(
            "select count(*) from sqlite_master where type = 'table' and name = 'kvr_meta'",
            [],
            |r| r.get::<_, i64>(0),
        )
        .map(|n| n > 0)?;
    let current: i64 = if has_meta {
        tx.query_row(
            "select cast(v as integer) from kvr_meta where k = 'schema_version'",
            [],
            |r| r.get(0),
        )
        .optional()?
        .unwrap_or(0)
    } else {
        0
    };
    if current > SCHEMA_VERSION {
        return Err(StoreError::SchemaTooNew {
            found: current,
            supported: SCHEMA_VERSION,
            path: String::new(),
        });
    }
    for (i, m) in MIGRATIONS.iter().enumerate() {
        let version = i as i64 + 1;
        if version > current {
            tx.execute_batch(m)?;
            tx.execute(
                "insert or replace into kvr_meta (k, v) values ('schema_version', ?)",
                [version.to_string()],
            )?;
        }
    }
    tx.commit()?;
    Ok(())
}

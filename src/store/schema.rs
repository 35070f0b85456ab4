//! The replica file's schema and its migrations.
//!
//! The visible state lives in `kv`, with exactly the columns and companion
//! tables of the Deno CLI's own SQLite layout (`migration_state` at version 3,
//! `data_version`, `queue`, `queue_running`), so `Deno.openKv(file)` and
//! `denokv --read-only` open a copy of the replica as is. Everything that is
//! kvreplica's own lives in `kvr_*` tables the Deno CLI ignores.

use std::io::Read;
use std::path::Path;

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
const MIGRATIONS: &[&str] = &[
    "
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
",
    "
-- The newest log objects consumed (applied or kept in redo), by name with
-- their first and last stamps, so a poll can tell an object that became
-- visible late (its name sorts before the cursor) from one already
-- consumed (see `late.rs`). Bounded: the engine trims the oldest.
create table kvr_consumed (
  name text not null primary key,
  first blob not null,
  last blob not null
) without rowid;
-- A file from before this table: every object up to its cursor counts as
-- consumed (`consumed_upto`), and its history may have been pruned up to
-- its oldest point (`history_from`), so late objects are only folded in
-- after both.
insert into kvr_meta (k, v) select 'consumed_upto', v from kvr_meta where k = 'cursor';
insert into kvr_meta (k, v)
  select 'history_from', versionstamp from kvr_points order by versionstamp limit 1;
",
];

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

/// The first bytes of every SQLite database file.
const SQLITE_HEADER: &[u8; 16] = b"SQLite format 3\0";

/// Decides, before anything writes to it, whether the file at `path` may be
/// opened as a replica: a missing or empty file, an empty SQLite database,
/// or a file kvreplica created (it has `kvr_meta` with a schema version).
/// Anything else is another program's data, which opening for writing would
/// change (even setting the journal mode rewrites the header): it is
/// refused with what the file appears to be. Only reads the file.
///
/// Returns the schema version of a replica (`None` for a file with nothing
/// in it yet): a replica already at [`SCHEMA_VERSION`] needs no
/// [`migrate`], which `Store::open` then skips.
pub(super) fn examine(path: &Path) -> Result<Option<i64>, StoreError> {
    let refuse = |what: String| StoreError::NotAReplica {
        path: path.display().to_string(),
        what,
    };
    let io = |error| StoreError::Io {
        path: path.display().to_string(),
        error,
    };
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io(e)),
    };
    if meta.is_dir() {
        return Err(refuse("a directory".into()));
    }
    let mut head = Vec::with_capacity(SQLITE_HEADER.len());
    std::fs::File::open(path)
        .and_then(|f| f.take(SQLITE_HEADER.len() as u64).read_to_end(&mut head))
        .map_err(io)?;
    if head.is_empty() && !has_wal(path) {
        return Ok(None);
    }
    if !head.is_empty() && head != SQLITE_HEADER {
        return Err(refuse(not_sqlite(&head)));
    }
    // Without a write-ahead log beside it the file holds every commit, and
    // `immutable` reads it without creating `-shm`/`-wal` files next to
    // another program's database.
    let opened = if has_wal(path) {
        super::open_read_only(path)
    } else {
        super::open_immutable(path)
    };
    let conn = match opened {
        Ok(c) => c,
        Err(StoreError::Sqlite(e)) => return Err(refuse(format!("not a SQLite database ({e})"))),
        Err(e) => return Err(e),
    };
    let tables =
        tables(&conn).map_err(|e| refuse(format!("an unreadable SQLite database ({e})")))?;
    if tables.is_empty() {
        return Ok(None);
    }
    let has = |t: &str| tables.iter().any(|n| n == t);
    if has("kvr_meta") {
        let version: Option<String> = conn
            .query_row(
                "select cast(v as text) from kvr_meta where k = 'schema_version'",
                [],
                |r| r.get(0),
            )
            .optional()
            .unwrap_or(None);
        if let Some(v) = version {
            // Unreadable as a number: `migrate` reads it again and decides.
            return Ok(Some(v.trim().parse().unwrap_or(-1)));
        }
    }
    let listed = list_tables(&tables);
    if has("kv") && has("migration_state") && has("data_version") {
        let keys: i64 = conn
            .query_row("select count(*) from kv", [], |r| r.get(0))
            .unwrap_or(0);
        let plural = if keys == 1 { "" } else { "s" };
        return Err(refuse(format!(
            "a Deno KV database (the Deno CLI's layout) holding {keys} key{plural} of its own"
        )));
    }
    if has("kv") {
        return Err(refuse(format!(
            "a SQLite database with a `kv` table that is not Deno KV's (tables: {listed})"
        )));
    }
    Err(refuse(format!(
        "another application's SQLite database (tables: {listed})"
    )))
}

/// Whether a write-ahead log with contents lies beside `path`: an empty
/// main file may still hold a database whose pages are all in its log.
fn has_wal(path: &Path) -> bool {
    let mut wal = path.as_os_str().to_owned();
    wal.push("-wal");
    std::fs::metadata(Path::new(&wal)).is_ok_and(|m| m.len() > 0)
}

/// Names of the tables of `conn`'s database, sorted.
fn tables(conn: &Connection) -> rusqlite::Result<Vec<String>> {
    let mut stmt = conn.prepare(
        "select name from sqlite_master where type = 'table' and name not like 'sqlite\\_%' escape '\\' order by name",
    )?;
    let names = stmt.query_map([], |r| r.get(0))?;
    names.collect()
}

/// At most eight table names, for a message.
fn list_tables(tables: &[String]) -> String {
    const SHOWN: usize = 8;
    let mut s = tables
        .iter()
        .take(SHOWN)
        .map(String::as_str)
        .collect::<Vec<_>>()
        .join(", ");
    if tables.len() > SHOWN {
        s.push_str(&format!(" and {} more", tables.len() - SHOWN));
    }
    s
}

/// What a file that does not start like a SQLite database appears to be.
fn not_sqlite(head: &[u8]) -> String {
    // The first bytes may end inside a multi-byte character.
    let valid = match std::str::from_utf8(head) {
        Ok(s) => Some(s),
        Err(e) if e.error_len().is_none() => std::str::from_utf8(&head[..e.valid_up_to()]).ok(),
        Err(_) => None,
    };
    let text = valid.is_some_and(|s| s.chars().all(|c| !c.is_control() || c.is_whitespace()));
    if text {
        "not a SQLite database (a text file)".into()
    } else {
        format!(
            "not a SQLite database (it starts with bytes {})",
            head.iter()
                .take(8)
                .map(|b| format!("{b:02x}"))
                .collect::<String>()
        )
    }
}

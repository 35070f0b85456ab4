//! The replica file: one SQLite database in WAL mode.
//!
//! The visible state is the `kv` table (Deno CLI layout, see `schema.rs`). It
//! only ever moves from one commit boundary to another inside a single SQLite
//! transaction, so a reader in its own read transaction never sees half a
//! commit. Each log batch commits together with the sync cursor that covers
//! it, so a killed process resumes exactly where the last commit left off.
//!
//! One process at a time may write a replica file: [`Store::open`] takes an
//! advisory lock on `<file>.lock`. Only a missing or empty file, or one
//! kvreplica created, is ever opened for writing: any other file is refused
//! before anything is written to it ([`StoreError::NotAReplica`]).

mod apply;
mod filter;
mod late;
pub mod pitr;
mod schema;
mod swap;
mod testhook;
pub mod timeline;
pub mod view;

use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::{Connection, OpenFlags, OptionalExtension};

use crate::format::{LogName, LogStamp, SnapshotName, Versionstamp};
use crate::source::same_backup;

pub use apply::{ApplyOutcome, LogObject};
pub use filter::{parse_prefixes, prefix_from_json, KeyFilter, COMMIT_END_MARKER};
pub use late::{ConsumedWindow, LateOutcome};

/// Errors at the replica-file boundary.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("SQLite error: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("cannot open {path}: {error}")]
    Io {
        path: String,
        /// Part of the message, not a separate cause: printed once.
        error: std::io::Error,
    },
    #[error("writing the replica {path} failed: {reason}")]
    Write { path: String, reason: String },
    #[error(
        "{path} is in use by another kvreplica process (lock file {path}.lock); \
         stop it first, or use its admin API"
    )]
    Locked { path: String },
    #[error(
        "{path} was built from {bound}, not {requested}: a replica follows one backup. \
         To start over from the new source, delete {path} (and its -wal/-shm files) or choose another --db"
    )]
    BoundToOtherSource {
        path: String,
        bound: String,
        requested: String,
    },
    #[error(
        "{path} is not a kvreplica replica: it appears to be {what}. kvreplica writes only to a \
         missing or empty file or to a replica it created, and left this one as it was; \
         choose another --db"
    )]
    NotAReplica { path: String, what: String },
    #[error("{path} has schema version {found}, newer than this kvreplica supports ({supported}); upgrade kvreplica")]
    SchemaTooNew {
        found: i64,
        supported: i64,
        path: String,
    },
    #[error("{0}")]
    Corrupt(String),
    /// An object read entry by entry while it is stored turned out corrupt.
    #[error(transparent)]
    Object(#[from] crate::format::FormatError),
    #[error("the initial snapshot is not complete yet")]
    InitialIncomplete,
    /// The file was built with other prefix filters than the settings
    /// give: its content is not what the new ones would keep.
    #[error(
        "{path} was built with the prefix filter {recorded}, not {requested}, and holds the keys \
         its filter kept. {advice}; or, for the new filter, delete {path} (and its -wal/-shm \
         files) and sync again from the backup"
    )]
    FilterMismatch {
        path: String,
        /// Both filters as [`KeyFilter::describe`] puts them.
        recorded: String,
        requested: String,
        /// How to run with the recorded filter: the flags that give it.
        advice: String,
    },
}

/// Where a replica stands, as stored in the file.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SyncState {
    /// The backup this file is bound to.
    pub source: Option<String>,
    /// The differential versionstamp read from the bucket.
    pub dv: Option<Versionstamp>,
    /// First consistent state; set once logs reach DV.
    pub initial_point: Option<Versionstamp>,
    /// Stamp of the last entry applied to `kv`.
    pub position: Option<LogStamp>,
    /// The last log object consumed (applied or kept in redo).
    pub cursor: Option<LogName>,
    /// Pinned by a checkout: new logs are stored but not applied.
    pub pinned: bool,
    /// Snapshot ranges: (loaded, total); `None` until listed.
    pub snapshot_ranges: Option<(u64, u64)>,
    /// The keys the file keeps (see [`KeyFilter`]).
    pub filter: KeyFilter,
}

impl SyncState {
    /// The initial snapshot is loaded and logs have reached the initial point:
    /// from here on the visible state is consistent and may be served.
    pub fn initial_complete(&self) -> bool {
        self.initial_point.is_some()
            && matches!(self.snapshot_ranges, Some((loaded, total)) if loaded == total)
    }

    /// The visible commit, once the initial snapshot is complete.
    pub fn visible(&self) -> Option<Versionstamp> {
        if self.initial_complete() {
            self.position.map(|p| p.versionstamp())
        } else {
            None
        }
    }
}

/// SQLite's default busy handler would fail a writer at once when a reader
/// holds the WAL for a checkpoint; waiting a little is always right here.
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// 4 MiB page cache (negative = KiB). The apply path visits a batch's keys
/// in key order, so it walks the B-tree once from left to right and a big
/// cache buys little: on a 1M-key catch-up, 64 MiB took the same time as
/// 8 MiB and 4 MiB, for 60 MiB more resident memory. The operating
/// system's file cache still holds the hot pages.
const CACHE_SIZE_KIB: i64 = -4096;

/// WAL + NORMAL: a commit is atomic and survives a process kill; only a
/// power loss can drop the newest commits, which are re-fetched. A checkout
/// cannot be re-fetched and commits with FULL (see [`Store::checkout`]).
const SYNCHRONOUS_APPLY: &str = "normal";

/// The writer's handle on a replica file.
pub struct Store {
    conn: Connection,
    path: PathBuf,
    /// Held for the life of the store: the advisory writer lock.
    _lock: File,
    state: SyncState,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("path", &self.path)
            .field("state", &self.state)
            .finish()
    }
}

fn lock_path(path: &Path) -> PathBuf {
    let mut p = path.as_os_str().to_owned();
    p.push(".lock");
    PathBuf::from(p)
}

impl Store {
    /// Opens (creating if needed) a replica file for writing, taking the
    /// writer lock and migrating the schema. A file that is neither empty
    /// nor a replica is refused unchanged.
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        Self::open_inner(path).map_err(|e| explain(path, e))
    }

    fn open_inner(path: &Path) -> Result<Store, StoreError> {
        let display = path.display().to_string();
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|error| StoreError::Io {
                path: dir.display().to_string(),
                error,
            })?;
        }
        let lock_existed = lock_path(path).exists();
        let lock = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(lock_path(path))
            .map_err(|error| StoreError::Io {
                path: display.clone(),
                error,
            })?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(StoreError::Locked { path: display })
            }
            Err(std::fs::TryLockError::Error(error)) => {
                return Err(StoreError::Io {
                    path: display,
                    error,
                })
            }
        }
        let version = match schema::examine(path) {
            Ok(v) => v,
            Err(e) => {
                drop(lock);
                if !lock_existed {
                    // Leave nothing of ours beside another program's file.
                    let _ = std::fs::remove_file(lock_path(path));
                }
                return Err(e);
            }
        };
        let mut conn = Connection::open(path)?;
        conn.busy_timeout(BUSY_TIMEOUT)?;
        conn.pragma_update(None, "journal_mode", "wal")?;
        conn.pragma_update(None, "synchronous", SYNCHRONOUS_APPLY)?;
        conn.pragma_update(None, "cache_size", CACHE_SIZE_KIB)?;
        conn.set_prepared_statement_cache_capacity(64);
        // A replica at the current schema (what a `pitr checkout` opens)
        // has nothing to migrate: skip the transaction that would check.
        if version != Some(schema::SCHEMA_VERSION) {
            schema::migrate(&mut conn).map_err(|e| match e {
                StoreError::SchemaTooNew {
                    found, supported, ..
                } => StoreError::SchemaTooNew {
                    found,
                    supported,
                    path: display.clone(),
                },
                e => e,
            })?;
        }
        let state = read_state(&conn)?;
        Ok(Store {
            conn,
            path: path.to_path_buf(),
            _lock: lock,
            state,
        })
    }

    /// Where the replica stands.
    pub fn state(&self) -> &SyncState {
        &self.state
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Binds a fresh file to `identity`, or checks that an existing file was
    /// built from the same backup (in any spelling of it). The engine binds
    /// with [`Store::bind`] instead, once the backup's `differential` is read.
    pub fn bind_source(&mut self, identity: &str) -> Result<(), StoreError> {
        match &self.state.source {
            Some(bound) if same_backup(bound, identity) => Ok(()),
            Some(bound) => Err(StoreError::BoundToOtherSource {
                path: self.path.display().to_string(),
                bound: bound.clone(),
                requested: identity.to_string(),
            }),
            None => {
                set_meta(&self.conn, "source", identity.as_bytes())?;
                self.state.source = Some(identity.to_string());
                Ok(())
            }
        }
    }

    /// Refuses a file bound to another backup than `identity`, before the
    /// engine reads anything. Spellings of one backup are one backup (see
    /// [`crate::source::same_backup`]). A binding made before the backup's
    /// `differential` was ever read (by an earlier version, whose first
    /// sync of a mistyped source still bound the file) holds nothing from
    /// that backup and does not count: [`Store::bind`] replaces it.
    pub fn check_source(&self, identity: &str) -> Result<(), StoreError> {
        match &self.state.source {
            Some(bound) if !self.binding_is_provisional() && !same_backup(bound, identity) => {
                Err(StoreError::BoundToOtherSource {
                    path: self.path.display().to_string(),
                    bound: bound.clone(),
                    requested: identity.to_string(),
                })
            }
            _ => Ok(()),
        }
    }

    /// Binds the file to the backup `identity` whose `differential` was
    /// just read as `dv`, in one transaction, or checks an existing binding
    /// (see [`Store::check_source`] and [`Store::set_dv`]). A binding
    /// stored in another spelling of the same backup is kept as it is.
    pub fn bind(&mut self, identity: &str, dv: Versionstamp) -> Result<(), StoreError> {
        self.check_source(identity)?;
        let rebind = match &self.state.source {
            Some(bound) => !same_backup(bound, identity),
            None => true,
        };
        if !rebind || self.state.dv.is_some_and(|old| old != dv) {
            return self.set_dv(dv);
        }
        if let Some(bound) = &self.state.source {
            tracing::info!(
                %bound, source = identity,
                "the file was bound to a source whose differential was never read; binding it to this one"
            );
        }
        let tx = self.conn.transaction()?;
        set_meta(&tx, "source", identity.as_bytes())?;
        set_meta(&tx, "dv", &dv.0)?;
        tx.commit()?;
        self.state.source = Some(identity.to_string());
        self.state.dv = Some(dv);
        Ok(())
    }

    /// A binding without a differential read and nothing loaded: what an
    /// earlier version left after a failed first sync.
    fn binding_is_provisional(&self) -> bool {
        self.state.dv.is_none() && self.state.snapshot_ranges.is_none()
    }

    /// Records the prefix filter of a file that holds nothing yet, or
    /// checks that the file was built with `filter` (no record: no
    /// filter). Refuses another one before writing anything.
    pub fn bind_filter(&mut self, filter: &KeyFilter) -> Result<(), StoreError> {
        if self.state.filter == *filter {
            return Ok(());
        }
        let holds_nothing = self.state.cursor.is_none()
            && self
                .state
                .snapshot_ranges
                .is_none_or(|(loaded, _)| loaded == 0);
        if !holds_nothing {
            return Err(StoreError::FilterMismatch {
                path: self.path.display().to_string(),
                recorded: self.state.filter.describe(),
                requested: filter.describe(),
                advice: match self.state.filter.as_flags() {
                    flags if flags.is_empty() => "Run it without --include-prefix and \
                        --exclude-prefix (and without sync.include_prefixes and \
                        sync.exclude_prefixes in the config file or environment)"
                        .to_string(),
                    flags => format!(
                        "Run it with {flags} (or the same sync.include_prefixes / \
                         sync.exclude_prefixes in the config file or environment)"
                    ),
                },
            });
        }
        self.record_filter(filter)
    }

    /// Stores `filter` as the file's.
    fn record_filter(&mut self, filter: &KeyFilter) -> Result<(), StoreError> {
        if filter.is_empty() {
            self.conn
                .execute("delete from kvr_meta where k = ?", [filter::META_KEY])?;
        } else {
            set_meta(&self.conn, filter::META_KEY, &filter.to_meta())?;
        }
        self.state.filter = filter.clone();
        Ok(())
    }

    /// Records the differential versionstamp. A different DV than the one
    /// stored means the bucket was re-exported: refuse, like another source.
    pub fn set_dv(&mut self, dv: Versionstamp) -> Result<(), StoreError> {
        match self.state.dv {
            Some(old) if old == dv => Ok(()),
            Some(old) => Err(StoreError::Corrupt(format!(
                "the bucket's differential changed from {old} to {dv}: the backup was restarted. \
                 Delete {} to build a new replica from it",
                self.path.display()
            ))),
            None => {
                set_meta(&self.conn, "dv", &dv.0)?;
                self.state.dv = Some(dv);
                Ok(())
            }
        }
    }

    /// The snapshot ranges recorded for the initial load, in apply order,
    /// with whether each is loaded. `None` until they have been listed.
    pub fn snapshot_ranges(&self) -> Result<Option<Vec<(SnapshotName, bool)>>, StoreError> {
        if self.state.snapshot_ranges.is_none() {
            return Ok(None);
        }
        let mut stmt = self
            .conn
            .prepare_cached("select name, loaded from kvr_snapshot_ranges")?;
        let mut out = Vec::new();
        for row in stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, bool>(1)?)))? {
            let (name, loaded) = row?;
            let name: SnapshotName = name
                .parse()
                .map_err(|e| StoreError::Corrupt(format!("kvr_snapshot_ranges: {e}")))?;
            out.push((name, loaded));
        }
        out.sort();
        Ok(Some(out))
    }

    /// Records the full list of snapshot ranges, once.
    pub fn record_snapshot_ranges(&mut self, names: &[SnapshotName]) -> Result<(), StoreError> {
        let tx = self.conn.transaction()?;
        {
            let mut ins = tx.prepare_cached(
                "insert or ignore into kvr_snapshot_ranges (name, loaded) values (?, 0)",
            )?;
            for n in names {
                ins.execute([n.to_string()])?;
            }
        }
        set_meta(&tx, "snapshot_listed", b"1")?;
        tx.commit()?;
        self.state.snapshot_ranges = Some((0, names.len() as u64));
        Ok(())
    }

    /// Writes one snapshot range into `kv` and marks it loaded, in one
    /// transaction.
    pub fn load_snapshot_range(
        &mut self,
        name: &SnapshotName,
        entries: impl IntoIterator<
            Item = Result<crate::format::SnapshotEntry, crate::format::FormatError>,
        >,
    ) -> Result<u64, StoreError> {
        let tx = self.conn.transaction()?;
        let loaded: Option<bool> = tx
            .query_row(
                "select loaded from kvr_snapshot_ranges where name = ?",
                [name.to_string()],
                |r| r.get(0),
            )
            .optional()?;
        match loaded {
            None => {
                return Err(StoreError::Corrupt(format!(
                    "snapshot range {name} was not in the recorded listing"
                )))
            }
            Some(true) => return Ok(0),
            Some(false) => {}
        }
        // Entry by entry: a range may be far larger than memory.
        let mut n = 0;
        {
            let mut put = tx.prepare_cached(apply::SQL_PUT)?;
            for e in entries {
                let e = e?;
                if !self.state.filter.keeps(&e.key) {
                    continue;
                }
                apply::put_row(&mut put, &e.key, &e.record)?;
                n += 1;
                if n % 4096 == 0 {
                    crate::health::STORE_WORK.progress(); // for the watchdog
                }
            }
        }
        tx.execute(
            "update kvr_snapshot_ranges set loaded = 1 where name = ?",
            [name.to_string()],
        )?;
        testhook::before_commit(|| format!("snapshot range {name}"));
        tx.commit()?;
        if let Some((loaded, _)) = &mut self.state.snapshot_ranges {
            *loaded += 1;
        }
        Ok(n)
    }

    /// Declares the initial point reached at DV when the log holds no commit
    /// at or after it (a database with no writes since the snapshot).
    pub fn complete_initial_at_dv(&mut self) -> Result<Versionstamp, StoreError> {
        let dv = self.state.dv.ok_or(StoreError::InitialIncomplete)?;
        if let Some(p) = self.state.initial_point {
            return Ok(p);
        }
        let tx = self.conn.transaction()?;
        let pending: i64 = tx.query_row("select count(*) from kvr_redo", [], |r| r.get(0))?;
        if pending > 0 {
            // A commit is half fetched: the state is not at a boundary yet.
            return Err(StoreError::InitialIncomplete);
        }
        set_meta(&tx, "initial_point", &dv.0)?;
        set_meta(&tx, "position", &dv.commit_end().0)?;
        apply::set_data_version(&tx, dv)?;
        tx.commit()?;
        self.state.initial_point = Some(dv);
        self.state.position = Some(dv.commit_end());
        Ok(dv)
    }

    /// Runs `PRAGMA integrity_check`; `Ok(())` when SQLite reports "ok".
    pub fn integrity_check(&self) -> Result<(), StoreError> {
        let r: String = self
            .conn
            .query_row("pragma integrity_check", [], |r| r.get(0))?;
        if r == "ok" {
            Ok(())
        } else {
            Err(StoreError::Corrupt(format!("integrity check: {r}")))
        }
    }

    /// Number of rows in the visible state.
    pub fn key_count(&self) -> Result<u64, StoreError> {
        Ok(self
            .conn
            .query_row("select count(*) from kv", [], |r| r.get::<_, i64>(0))? as u64)
    }
}

/// Turns a SQLite failure while writing `path` into an error that names the
/// file and says what is wrong with the disk. SQLite reports a failed write
/// as a bare "disk I/O error"; opening the file for appending (which writes
/// nothing) then surfaces the operating system's reason, e.g. a read-only
/// file system. Other errors pass through unchanged.
pub fn explain(path: &Path, e: StoreError) -> StoreError {
    let StoreError::Sqlite(err) = e else { return e };
    use rusqlite::ErrorCode;
    let reason = match err.sqlite_error_code() {
        Some(ErrorCode::DiskFull) => {
            format!("{err}: the disk is full; free space (the sync retries by itself and resumes)")
        }
        Some(ErrorCode::ReadOnly) => format!("{err}: the file or its directory is read-only"),
        Some(ErrorCode::SystemIoFailure | ErrorCode::CannotOpen) => {
            match File::options().append(true).open(path) {
                Err(io) => format!("disk I/O error: {io}"),
                Ok(_) => format!("{err} (the disk failed a write)"),
            }
        }
        _ => return StoreError::Sqlite(err),
    };
    StoreError::Write {
        path: path.display().to_string(),
        reason,
    }
}

/// Opens a replica file read-only, for tools that only look (and for the
/// server's reader pool): no lock, no migration.
///
/// A reader of a WAL database needs its `-shm` index, which SQLite creates
/// next to the file: on read-only media, or in a directory of another user,
/// it cannot, and the first query fails with "attempt to write a readonly
/// database" although nothing is written. When no `-wal` file exists (the
/// last writer closed cleanly, so the main file holds every commit and no
/// writer is running) the file is opened as immutable instead, which needs
/// no index. With a `-wal` beside it that cannot be indexed, reading the
/// main file alone would show an older state: that is refused with the
/// reason.
pub fn open_read_only(path: &Path) -> Result<Connection, StoreError> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    match conn.query_row("select count(*) from sqlite_master", [], |_| Ok(())) {
        Ok(()) => Ok(conn),
        Err(e) if e.sqlite_error_code() == Some(rusqlite::ErrorCode::ReadOnly) => {
            let mut wal = path.as_os_str().to_owned();
            wal.push("-wal");
            if Path::new(&wal).exists() {
                return Err(StoreError::Io {
                    path: path.display().to_string(),
                    error: std::io::Error::other(format!(
                        "{e}: its write-ahead log {} needs an index SQLite cannot create here \
                         (read-only directory or another user's files); read it as the owner, \
                         or from a copy in a writable directory",
                        Path::new(&wal).display()
                    )),
                });
            }
            open_immutable(path)
        }
        Err(e) => Err(e.into()),
    }
}

/// Opens `path` with SQLite's `immutable=1`: no locks, no `-shm`, no
/// `-wal`. Only for a file no one writes (see [`open_read_only`]).
fn open_immutable(path: &Path) -> Result<Connection, StoreError> {
    let io = |error| StoreError::Io {
        path: path.display().to_string(),
        error,
    };
    let absolute = std::path::absolute(path).map_err(io)?;
    let mut uri = url::Url::from_file_path(&absolute)
        .map_err(|()| io(std::io::Error::other("not a file path")))?;
    uri.set_query(Some("immutable=1"));
    let conn = Connection::open_with_flags(
        uri.as_str(),
        OpenFlags::SQLITE_OPEN_READ_ONLY
            | OpenFlags::SQLITE_OPEN_NO_MUTEX
            | OpenFlags::SQLITE_OPEN_URI,
    )?;
    Ok(conn)
}

/// What `path` is, without writing to it: `Ok(None)` for a missing or
/// empty file, the schema version of a replica, or
/// [`StoreError::NotAReplica`] naming what the file appears to be (another
/// program's database, the Deno CLI's own KV file, not SQLite at all).
/// [`Store::open`] refuses foreign files with it; reading commands use it
/// to say the same.
pub fn replica_version(path: &Path) -> Result<Option<i64>, StoreError> {
    schema::examine(path)
}

/// Reads the sync state of an open connection (writer or reader).
pub fn read_state(conn: &Connection) -> Result<SyncState, StoreError> {
    let get = |k: &str| -> Result<Option<Vec<u8>>, StoreError> {
        Ok(conn
            .query_row("select v from kvr_meta where k = ?", [k], |r| r.get(0))
            .optional()?)
    };
    let stamp10 = |k: &str| -> Result<Option<Versionstamp>, StoreError> {
        get(k)?
            .map(|v| {
                Versionstamp::from_slice(&v)
                    .ok_or_else(|| StoreError::Corrupt(format!("kvr_meta.{k} is not 10 bytes")))
            })
            .transpose()
    };
    let source = get("source")?.map(|v| String::from_utf8_lossy(&v).into_owned());
    let dv = stamp10("dv")?;
    let initial_point = stamp10("initial_point")?;
    let position = get("position")?
        .map(|v| {
            LogStamp::from_slice(&v)
                .ok_or_else(|| StoreError::Corrupt("kvr_meta.position is not 12 bytes".into()))
        })
        .transpose()?;
    let cursor = get("cursor")?
        .map(|v| {
            String::from_utf8_lossy(&v)
                .parse::<LogName>()
                .map_err(|e| StoreError::Corrupt(format!("kvr_meta.cursor: {e}")))
        })
        .transpose()?;
    let pinned = get("mode")?.as_deref() == Some(b"pinned");
    let snapshot_ranges = if get("snapshot_listed")?.is_some() {
        Some(conn.query_row(
            "select coalesce(sum(loaded), 0), count(*) from kvr_snapshot_ranges",
            [],
            |r| Ok((r.get::<_, i64>(0)? as u64, r.get::<_, i64>(1)? as u64)),
        )?)
    } else {
        None
    };
    let filter = match get(filter::META_KEY)? {
        Some(v) => KeyFilter::from_meta(&v)
            .ok_or_else(|| StoreError::Corrupt("kvr_meta.filter is not a prefix filter".into()))?,
        None => KeyFilter::default(),
    };
    Ok(SyncState {
        source,
        dv,
        initial_point,
        position,
        cursor,
        pinned,
        snapshot_ranges,
        filter,
    })
}

pub(crate) fn set_meta(conn: &Connection, k: &str, v: &[u8]) -> Result<(), StoreError> {
    conn.prepare_cached("insert or replace into kvr_meta (k, v) values (?, ?)")?
        .execute(rusqlite::params![k, v])?;
    Ok(())
}

#[cfg(test)]
mod tests;

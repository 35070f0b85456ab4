//! Reads of the visible state for KV Connect: a small pool of read-only
//! SQLite connections and the range query behind `snapshot_read` and
//! `watch`.
//!
//! The replica file is in WAL mode, so each reader sees the last committed
//! state while the sync engine writes the next one: a request never waits
//! for an apply transaction and never sees half of one. All ranges of a
//! request are read in one read transaction, i.e. from one commit.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use denokv_proto::datapath::{KvEntry, ReadRange};
use rusqlite::Connection;
use tokio::sync::Semaphore;

use crate::store::{self, StoreError};

/// A bounded set of read-only connections, opened on first use.
///
/// Reads run on tokio's blocking pool; the semaphore caps how many run at
/// once (each holds one connection), so a burst of requests queues here
/// instead of opening connections without bound.
pub struct ReaderPool {
    /// The replica file.
    path: PathBuf,
    /// Idle connections, reused in LIFO order so the warmest cache serves.
    idle: Mutex<Vec<Connection>>,
    /// One permit per connection that may exist.
    permits: Semaphore,
}

impl ReaderPool {
    /// A pool of at most `size` connections to `path` (opened lazily; one
    /// is opened now so a file that cannot be read fails at start-up).
    pub fn new(path: &Path, size: usize) -> Result<Self, StoreError> {
        let first = store::open_read_only(path)?;
        Ok(ReaderPool {
            path: path.to_path_buf(),
            idle: Mutex::new(vec![first]),
            permits: Semaphore::new(size.max(1)),
        })
    }

    /// Runs `f` on a pooled connection, off the async runtime: for reads
    /// that may take long (many or large entries).
    pub async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let _permit = self
            .permits
            .acquire()
            .await
            .expect("the pool's semaphore is never closed");
        let mut conn = self.take()?;
        let (conn, out) = tokio::task::spawn_blocking(move || {
            let out = f(&mut conn);
            (conn, out)
        })
        .await
        .map_err(|e| StoreError::Corrupt(format!("read task failed: {e}")))?;
        self.idle.lock().expect("pool lock").push(conn);
        out
    }

    /// Runs `f` on a pooled connection right here, on the calling task's
    /// thread: for short reads (a few keys, a bounded range), where handing
    /// the work to a blocking thread and back costs more than the read
    /// itself — two thread wake-ups per request were over a third of the
    /// server's CPU time under a point-read load.
    pub async fn read_here<T>(
        &self,
        f: impl FnOnce(&mut Connection) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let _permit = self
            .permits
            .acquire()
            .await
            .expect("the pool's semaphore is never closed");
        let mut conn = self.take()?;
        let out = f(&mut conn);
        self.idle.lock().expect("pool lock").push(conn);
        out
    }

    /// An idle connection, or a new one.
    fn take(&self) -> Result<Connection, StoreError> {
        let idle = self.idle.lock().expect("pool lock").pop();
        match idle {
            Some(c) => Ok(c),
            None => store::open_read_only(&self.path),
        }
    }
}

/// Runs `f` in one read transaction. `BEGIN` and `COMMIT` go through the
/// statement cache: rusqlite's `transaction()` parses both on every call.
fn in_read_tx<T>(
    conn: &mut Connection,
    f: impl FnOnce(&Connection) -> Result<T, StoreError>,
) -> Result<T, StoreError> {
    conn.prepare_cached("begin")?.execute([])?;
    match f(conn) {
        Ok(v) => {
            conn.prepare_cached("commit")?.execute([])?;
            Ok(v)
        }
        Err(e) => {
            // A read transaction has nothing to undo; ending it is enough.
            let _ = conn
                .prepare_cached("rollback")
                .and_then(|mut s| s.execute([]));
            Err(e)
        }
    }
}

const SQL_FORWARD: &str = "select k, v, v_encoding, version, seq from kv \
     where k >= ?1 and k < ?2 and (expiration_ms < 0 or expiration_ms > ?3) \
     order by k asc limit ?4";
const SQL_REVERSE: &str = "select k, v, v_encoding, version, seq from kv \
     where k >= ?1 and k < ?2 and (expiration_ms < 0 or expiration_ms > ?3) \
     order by k desc limit ?4";
const SQL_KEY: &str = "select k, v, v_encoding, version, seq from kv \
     where k = ?1 and (expiration_ms < 0 or expiration_ms > ?2)";

fn entry(r: &rusqlite::Row<'_>) -> rusqlite::Result<KvEntry> {
    let version: i64 = r.get(3)?;
    let seq: i64 = r.get(4)?;
    let mut versionstamp = Vec::with_capacity(10);
    versionstamp.extend_from_slice(&(version as u64).to_be_bytes());
    versionstamp.extend_from_slice(&(seq as u16).to_be_bytes());
    Ok(KvEntry {
        key: r.get(0)?,
        value: r.get(1)?,
        encoding: r.get::<_, i64>(2)? as i32,
        versionstamp,
    })
}

/// Reads every range in one read transaction. `now_ms` decides expiry:
/// a key whose expire-at has passed is absent, as on Deploy.
pub fn read_ranges(
    conn: &mut Connection,
    ranges: &[ReadRange],
    now_ms: i64,
) -> Result<Vec<Vec<KvEntry>>, StoreError> {
    in_read_tx(conn, |tx| {
        let mut out = Vec::with_capacity(ranges.len());
        for r in ranges {
            if r.start >= r.end {
                out.push(Vec::new());
                continue;
            }
            let sql = if r.reverse { SQL_REVERSE } else { SQL_FORWARD };
            let mut stmt = tx.prepare_cached(sql)?;
            let rows = stmt.query_map(
                rusqlite::params![r.start, r.end, now_ms, r.limit as i64],
                entry,
            )?;
            out.push(rows.collect::<Result<Vec<_>, _>>()?);
        }
        Ok(out)
    })
}

/// Reads single keys (for `watch`) in one read transaction; `None` for a
/// key that is absent or expired.
pub fn read_keys(
    conn: &mut Connection,
    keys: &[Vec<u8>],
    now_ms: i64,
) -> Result<Vec<Option<KvEntry>>, StoreError> {
    in_read_tx(conn, |tx| {
        let mut out = Vec::with_capacity(keys.len());
        let mut stmt = tx.prepare_cached(SQL_KEY)?;
        for k in keys {
            let mut rows = stmt.query_map(rusqlite::params![k, now_ms], entry)?;
            out.push(rows.next().transpose()?);
        }
        Ok(out)
    })
}

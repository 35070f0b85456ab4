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

// No `limit ?`: with STAT4 (rusqlite's bundled SQLite) a bound LIMIT is
// part of the plan, so binding one expires the statement and the next step
// parses and plans it again. The rows come in key order straight off the
// primary key, so stopping after `limit` of them (`take`) costs nothing.
const SQL_FORWARD: &str = "select k, v, v_encoding, version, seq from kv \
     where k >= ?1 and k < ?2 and (expiration_ms < 0 or expiration_ms > ?3) \
     order by k asc";
const SQL_REVERSE: &str = "select k, v, v_encoding, version, seq from kv \
     where k >= ?1 and k < ?2 and (expiration_ms < 0 or expiration_ms > ?3) \
     order by k desc";
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
            let limit = usize::try_from(r.limit).unwrap_or(0);
            let rows = stmt.query_map(rusqlite::params![r.start, r.end, now_ms], entry)?;
            let mut values = Vec::with_capacity(limit.min(1024));
            for row in rows.take(limit) {
                values.push(row?);
            }
            out.push(values);
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

#[cfg(test)]
mod tests {
    use super::*;
    use rusqlite::StatementStatus;

    fn replica(rows: u8) -> (tempfile::TempDir, Connection) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.sqlite");
        let w = Connection::open(&path).unwrap();
        // The replica's `kv` table (src/store/schema.rs).
        w.execute_batch(
            "pragma journal_mode = wal;
             create table kv (k blob primary key, v blob not null,
               v_encoding integer not null, version integer not null,
               seq integer not null default 0,
               expiration_ms integer not null default -1) without rowid;
             create index kv_expiration_ms_idx on kv (expiration_ms);",
        )
        .unwrap();
        for i in 0..rows {
            w.execute(
                "insert into kv (k, v, v_encoding, version, seq) values (?1, x'01', 1, 7, 0)",
                [vec![i]],
            )
            .unwrap();
        }
        let r = store::open_read_only(&path).unwrap();
        (dir, r)
    }

    /// A cached read statement is planned once: binding new bounds, limits
    /// or clocks must not make SQLite prepare it again on the next step
    /// (with STAT4, a bound LIMIT is part of the plan, and every request
    /// re-parsed and re-planned its query: a quarter of the server's CPU
    /// under a point-read load).
    #[test]
    fn reads_do_not_reprepare_their_statements() {
        let (_dir, mut conn) = replica(50);
        for i in 0..40u8 {
            let range = ReadRange {
                start: vec![i],
                end: vec![0xff],
                limit: 1 + i as i32 % 7,
                reverse: i % 2 == 0,
            };
            let got = read_ranges(&mut conn, &[range], 1_000 + i as i64).unwrap();
            assert_eq!(got[0].len(), 1 + i as usize % 7);
            read_keys(&mut conn, &[vec![i]], 2_000 + i as i64).unwrap();
        }
        for sql in [SQL_FORWARD, SQL_REVERSE, SQL_KEY] {
            let stmt = conn.prepare_cached(sql).unwrap();
            assert_eq!(
                stmt.get_status(StatementStatus::RePrepare),
                0,
                "re-prepared: {sql}"
            );
        }
    }
}

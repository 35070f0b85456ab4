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

use denokv_proto::datapath::{KvEntry, ReadRange, SnapshotReadOutput, SnapshotReadStatus};
use prost::encoding::{self, WireType};
use prost::Message;
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

/// Reads every range in one read transaction into `KvEntry`s: the
/// reference [`read_ranges_encoded`] is tested against. `now_ms` decides
/// expiry: a key whose expire-at has passed is absent, as on Deploy.
#[cfg(test)]
fn read_ranges(
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

/// Appends a length-delimited field `tag` holding `bytes` (nothing for an
/// empty one, as prost does for proto3 `bytes`).
fn put_bytes(tag: u32, bytes: &[u8], out: &mut Vec<u8>) {
    if !bytes.is_empty() {
        encoding::encode_key(tag, WireType::LengthDelimited, out);
        encoding::encode_varint(bytes.len() as u64, out);
        out.extend_from_slice(bytes);
    }
}

/// Appends one row of [`SQL_FORWARD`]/[`SQL_REVERSE`] to `out` as a
/// `KvEntry` message (field 1 of `ReadRangeOutput`), borrowing the key and
/// value from SQLite instead of copying them into a `KvEntry` first.
fn put_entry(
    r: &rusqlite::Row<'_>,
    entry: &mut Vec<u8>,
    out: &mut Vec<u8>,
) -> rusqlite::Result<()> {
    let key = r.get_ref(0)?.as_blob()?;
    let value = r.get_ref(1)?.as_blob()?;
    let value_encoding = r.get::<_, i64>(2)? as i32;
    let mut versionstamp = [0u8; 10];
    versionstamp[..8].copy_from_slice(&(r.get::<_, i64>(3)? as u64).to_be_bytes());
    versionstamp[8..].copy_from_slice(&(r.get::<_, i64>(4)? as u16).to_be_bytes());
    entry.clear();
    put_bytes(1, key, entry);
    put_bytes(2, value, entry);
    if value_encoding != 0 {
        encoding::int32::encode(3, &value_encoding, entry);
    }
    put_bytes(4, &versionstamp, entry);
    encoding::encode_key(1, WireType::LengthDelimited, out);
    encoding::encode_varint(entry.len() as u64, out);
    out.extend_from_slice(entry);
    Ok(())
}

/// Reads every range in one read transaction, like [`read_ranges`], and
/// returns the encoded `SnapshotReadOutput` (successful, strongly
/// consistent): the bytes prost would write for the same entries, without
/// three allocations per entry (key, value, versionstamp) and a second
/// pass to encode them — the allocator was a sixth of the server's CPU
/// under a load of 100-entry ranges.
pub fn read_ranges_encoded(
    conn: &mut Connection,
    ranges: &[ReadRange],
    now_ms: i64,
) -> Result<Vec<u8>, StoreError> {
    in_read_tx(conn, |tx| {
        let mut out = Vec::new();
        let mut range = Vec::new();
        let mut entry = Vec::new();
        for r in ranges {
            range.clear();
            if r.start < r.end {
                let sql = if r.reverse { SQL_REVERSE } else { SQL_FORWARD };
                let mut stmt = tx.prepare_cached(sql)?;
                let mut rows = stmt.query(rusqlite::params![r.start, r.end, now_ms])?;
                let limit = usize::try_from(r.limit).unwrap_or(0);
                let mut n = 0;
                while n < limit {
                    let Some(row) = rows.next()? else { break };
                    put_entry(row, &mut entry, &mut range)?;
                    n += 1;
                }
            }
            encoding::encode_key(1, WireType::LengthDelimited, &mut out);
            encoding::encode_varint(range.len() as u64, &mut out);
            out.extend_from_slice(&range);
        }
        // The fields after `ranges`, as prost writes them.
        SnapshotReadOutput {
            ranges: Vec::new(),
            read_disabled: false,
            read_is_strongly_consistent: true,
            status: SnapshotReadStatus::SrSuccess as i32,
        }
        .encode(&mut out)
        .expect("a Vec grows as needed");
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
            let got = read_ranges_encoded(&mut conn, &[range], 1_000 + i as i64).unwrap();
            let got = SnapshotReadOutput::decode(&got[..]).unwrap();
            assert_eq!(got.ranges[0].values.len(), 1 + i as usize % 7);
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

    /// The answer written straight from the rows is, byte for byte, what
    /// prost writes for the same entries: empty, reversed, clipped and
    /// several ranges, empty values, encodings and batch indexes.
    #[test]
    fn encoded_answers_equal_prost_encoding() {
        let (dir, mut conn) = replica(0);
        let w = Connection::open(dir.path().join("r.sqlite")).unwrap();
        for i in 0..30u8 {
            let value: Vec<u8> = if i % 5 == 0 {
                vec![]
            } else {
                vec![i; i as usize * 9]
            };
            w.execute(
                "insert into kv (k, v, v_encoding, version, seq, expiration_ms) \
                 values (?1, ?2, ?3, ?4, ?5, ?6)",
                rusqlite::params![
                    vec![b'k', i],
                    value,
                    i64::from(i % 3),
                    1_000_000_007 * i64::from(i) + 1,
                    i64::from(i) * 300,
                    if i == 7 { 10 } else { -1 },
                ],
            )
            .unwrap();
        }
        let range = |start: &[u8], end: &[u8], limit, reverse| ReadRange {
            start: start.to_vec(),
            end: end.to_vec(),
            limit,
            reverse,
        };
        let cases = vec![
            vec![range(b"k", b"l", 1000, false)],
            vec![range(b"k", b"l", 5, true)],
            vec![
                range(b"l", b"m", 10, false),
                range(b"k\x03", b"k\x09", 3, false),
            ],
            vec![
                range(b"k\x05", b"k\x05", 10, false),
                range(b"k", b"k\x01", 1, true),
            ],
            vec![],
        ];
        for ranges in cases {
            let got = read_ranges_encoded(&mut conn, &ranges, 1_000).unwrap();
            let want = SnapshotReadOutput {
                ranges: read_ranges(&mut conn, &ranges, 1_000)
                    .unwrap()
                    .into_iter()
                    .map(|values| denokv_proto::datapath::ReadRangeOutput { values })
                    .collect(),
                read_disabled: false,
                read_is_strongly_consistent: true,
                status: SnapshotReadStatus::SrSuccess as i32,
            };
            assert_eq!(got, want.encode_to_vec(), "{ranges:?}");
        }
    }
}

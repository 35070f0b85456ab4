//! The replica as it stood at any recoverable point, read without moving
//! what it serves.
//!
//! A checkout rewrites `kv` to move the visible state; an export or a diff
//! of an earlier point must not (the replica keeps serving its state, and
//! another process may be syncing the same file). The history needed is
//! already stored: `kvr_undo` holds, for every entry applied after the
//! initial point, the key's previous row, and `kvr_redo` the entries
//! beyond the visible position. So the state at a point is `kv` with an
//! *overlay* of the keys that changed between the visible position and the
//! point, computed from those rows exactly as a checkout's walk would, in
//! the caller's read transaction:
//!
//! - behind the position: per key, the previous row of its oldest undo
//!   entry after the point (what the key held before it first changed);
//! - ahead of it: per key, its newest redo entry up to the point.
//!
//! Both come out of SQLite sorted by key, so a scan is a merge of two
//! ordered streams: memory stays flat whatever the size (SQLite's sorter
//! spills to temporary files) and the cost beyond reading `kv` is the
//! history between the position and the point, not the database.

use std::collections::{BTreeSet, HashMap};
use std::ops::ControlFlow;

use rusqlite::{Connection, OptionalExtension};

use super::{pitr::CheckoutError, pitr::CheckoutTarget, pitr::HistoryView, StoreError, SyncState};
use crate::format::{KvRecord, LogStamp, Versionstamp};

/// Keys from `start` (inclusive) to `end` (exclusive; `None`: no end), in
/// the byte order of their tuple encoding, which is Deno KV's key order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KeyRange {
    pub start: Vec<u8>,
    pub end: Option<Vec<u8>>,
}

impl KeyRange {
    /// Every key.
    pub fn all() -> Self {
        KeyRange::default()
    }

    /// Every key whose encoding starts with `prefix`: the keys under a
    /// tuple prefix (`["users"]` → `["users", …]`) and the prefix key
    /// itself. Parts encode self-delimited, so a byte prefix of whole
    /// parts never catches a longer part (`["user"]` is not a prefix of
    /// `["users"]`).
    pub fn prefix(prefix: &[u8]) -> Self {
        KeyRange {
            start: prefix.to_vec(),
            end: prefix_end(prefix),
        }
    }

    /// The keys of both ranges (an empty range when they do not meet).
    pub fn intersect(&self, other: &KeyRange) -> KeyRange {
        let start = self.start.clone().max(other.start.clone());
        let end = match (&self.end, &other.end) {
            (Some(a), Some(b)) => Some(a.clone().min(b.clone())),
            (a, b) => a.clone().or_else(|| b.clone()),
        };
        KeyRange { start, end }
    }

    /// The same range, starting just after `key` (a page's cursor): the
    /// first byte string after `key` in byte order is `key` followed by a
    /// zero byte.
    pub fn after(&self, key: &[u8]) -> KeyRange {
        let mut next = key.to_vec();
        next.push(0);
        KeyRange {
            start: self.start.clone().max(next),
            end: self.end.clone(),
        }
    }

    /// The keys of any of `ranges`, as sorted, disjoint ranges (ranges that
    /// overlap or touch become one), so a reader walking them in order
    /// meets each key once; no range at all is every key.
    pub fn union(mut ranges: Vec<KeyRange>) -> Vec<KeyRange> {
        if ranges.is_empty() {
            return vec![KeyRange::all()];
        }
        ranges.sort_by(|a, b| a.start.cmp(&b.start));
        let mut merged: Vec<KeyRange> = Vec::with_capacity(ranges.len());
        for r in ranges {
            match merged.last_mut() {
                // Sorted by start: `r` meets the last range unless it
                // starts after its end.
                Some(last) if last.end.as_ref().is_none_or(|e| &r.start <= e) => {
                    last.end = match (last.end.take(), r.end) {
                        (Some(a), Some(b)) => Some(a.max(b)),
                        _ => None,
                    };
                }
                _ => merged.push(r),
            }
        }
        merged
    }

    pub fn contains(&self, key: &[u8]) -> bool {
        key >= &self.start[..] && self.end.as_deref().is_none_or(|e| key < e)
    }

    /// The SQL condition on column `k` (parameters `?1` and `?2`) and its
    /// parameters: a plain range the primary key answers.
    fn sql(&self) -> &'static str {
        if self.end.is_some() {
            "k >= ?1 and k < ?2"
        } else {
            "k >= ?1 and ?2 is null"
        }
    }
}

/// The first byte string after every string that starts with `prefix`;
/// `None` when there is none (a prefix of only `0xff` bytes, or empty).
fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

/// One key's entry in a state: its row, or `None` when the key is absent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub key: Vec<u8>,
    pub record: KvRecord,
}

/// How a key's entry differs between two states.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChangeKind {
    Added,
    Removed,
    Changed,
}

impl ChangeKind {
    pub fn name(self) -> &'static str {
        match self {
            ChangeKind::Added => "added",
            ChangeKind::Removed => "removed",
            ChangeKind::Changed => "changed",
        }
    }
}

/// A key whose entry differs between the two states of a diff.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Change {
    pub key: Vec<u8>,
    pub before: Option<KvRecord>,
    pub after: Option<KvRecord>,
}

impl Change {
    pub fn kind(&self) -> ChangeKind {
        match (&self.before, &self.after) {
            (None, _) => ChangeKind::Added,
            (_, None) => ChangeKind::Removed,
            _ => ChangeKind::Changed,
        }
    }
}

/// The state of a replica at one point, read through a connection the
/// caller holds a read transaction on (so every row belongs to one commit
/// of the file, whatever a writer does meanwhile).
pub struct StateAt<'c> {
    conn: &'c Connection,
    /// Where `kv` stands.
    position: LogStamp,
    /// The point, as the stamp of its commit's end.
    at: LogStamp,
    point: Versionstamp,
    /// The point's commit time, when known.
    ts_ms: Option<i64>,
}

impl<'c> StateAt<'c> {
    /// The state at `target` (`latest` is the newest complete commit, which
    /// a pinned replica does not show), resolved as a checkout resolves it.
    pub fn resolve(
        conn: &'c Connection,
        state: &SyncState,
        target: CheckoutTarget,
    ) -> Result<Self, CheckoutError> {
        let position = state.position.filter(|_| state.initial_complete());
        let position = position.ok_or(CheckoutError::InitialIncomplete)?;
        let point = HistoryView::new(conn, state).resolve(target)?;
        Ok(StateAt {
            conn,
            position,
            at: point.versionstamp.commit_end(),
            point: point.versionstamp,
            ts_ms: Some(point.ts_ms),
        })
    }

    /// The visible state: `kv` as it is.
    pub fn visible(conn: &'c Connection, state: &SyncState) -> Result<Self, CheckoutError> {
        let position = state.position.filter(|_| state.initial_complete());
        let position = position.ok_or(CheckoutError::InitialIncomplete)?;
        let point = position.versionstamp();
        Ok(StateAt {
            conn,
            position,
            at: position,
            point,
            ts_ms: HistoryView::new(conn, state).time_of(point)?,
        })
    }

    /// The commit this state is the state at.
    pub fn point(&self) -> Versionstamp {
        self.point
    }

    /// That commit's time (unknown for an initial point no log object
    /// closed).
    pub fn time_ms(&self) -> Option<i64> {
        self.ts_ms
    }

    /// Calls `f` for every entry in `range`, in key order, until it breaks.
    pub fn scan(
        &self,
        range: &KeyRange,
        mut f: impl FnMut(&Entry) -> ControlFlow<()>,
    ) -> Result<(), StoreError> {
        let mut kv = self.conn.prepare_cached(&format!(
            "select k, v, v_encoding, version, seq, expiration_ms from kv where {} order by k",
            range.sql()
        ))?;
        let mut kv_rows = kv.query(rusqlite::params![range.start, range.end])?;
        let mut query = OverlayQuery::new(self.conn, self.position, self.at, range)?;
        let mut overlay = query.rows()?;
        let mut base = next_kv(&mut kv_rows)?;
        let mut over = overlay.next()?;
        loop {
            // The smaller key comes first; on a tie the overlay's row (or
            // absence) replaces kv's.
            let take_over = match (&base, &over) {
                (None, None) => return Ok(()),
                (Some(_), None) => false,
                (None, Some(_)) => true,
                (Some(b), Some((ok, _))) => ok <= &b.key,
            };
            let entry = if take_over {
                let (key, record) = over.take().expect("checked");
                if base.as_ref().is_some_and(|b| b.key == key) {
                    base = next_kv(&mut kv_rows)?;
                }
                over = overlay.next()?;
                record.map(|record| Entry { key, record })
            } else {
                let b = base.take();
                base = next_kv(&mut kv_rows)?;
                b
            };
            if let Some(entry) = entry {
                if f(&entry).is_break() {
                    return Ok(());
                }
            }
        }
    }

    /// One key's entry in this state.
    pub fn get(&self, key: &[u8]) -> Result<Option<KvRecord>, StoreError> {
        let keys = BTreeSet::from([key.to_vec()]);
        Ok(self.entries_of(&keys)?.remove(key).flatten())
    }

    /// The entries of `keys` in this state (`None`: absent), found as a
    /// checkout's walk finds them: behind the position, the previous row of
    /// each key's oldest undo entry after the point; ahead of it, its
    /// newest redo entry up to the point; otherwise its `kv` row. The
    /// history is read in stamp order (no sorting) and the read stops as
    /// soon as every key is found, so a key written again soon after the
    /// point costs little however far the point is from the position.
    fn entries_of(
        &self,
        keys: &BTreeSet<Vec<u8>>,
    ) -> Result<HashMap<Vec<u8>, Option<KvRecord>>, StoreError> {
        use std::cmp::Ordering::*;
        let mut found: HashMap<Vec<u8>, Option<KvRecord>> = HashMap::with_capacity(keys.len());
        let walk = match self.at.cmp(&self.position) {
            Equal => None,
            Less => Some((
                "select k, v, v_encoding, version, seq, expiration_ms from kvr_undo \
                 where stamp > ?1 and stamp <= ?2 order by stamp",
                self.at,
                self.position,
                true,
            )),
            Greater => Some((
                "select k, v, v_encoding, stamp, expiration_ms from kvr_redo \
                 where stamp > ?1 and stamp <= ?2 order by stamp desc",
                self.position,
                self.at,
                false,
            )),
        };
        if let Some((sql, after, upto, undo)) = walk {
            let mut stmt = self.conn.prepare_cached(sql)?;
            let mut rows = stmt.query([&after.0[..], &upto.0[..]])?;
            while found.len() < keys.len() {
                let Some(r) = rows.next()? else { break };
                let key = blob(r, 0)?;
                if keys.contains(key) && !found.contains_key(key) {
                    let record = if undo {
                        undo_record(r)?
                    } else {
                        redo_record(r)?
                    };
                    found.insert(key.to_vec(), record);
                }
            }
        }
        let mut kv = self.conn.prepare_cached(
            "select k, v, v_encoding, version, seq, expiration_ms from kv where k = ?1",
        )?;
        for key in keys {
            if !found.contains_key(key) {
                let record = kv.query_row([key], |r| Ok(row_record(r)?.1)).optional()?;
                found.insert(key.clone(), record);
            }
        }
        Ok(found)
    }
}

/// Calls `f` for every key in `range` whose entry differs between the
/// states `from` and `to`, in key order, until it breaks. Keys that
/// changed and changed back (same value *and* versionstamp, which only a
/// write that was later undone can give) are not differences; a key
/// written again with the same value is (its versionstamp moved).
///
/// Only keys with history between the two states can differ. A narrow
/// diff (a commit or a few: at most [`NARROW_DIFF_ROWS`] history rows
/// between the points) reads those keys' entries at both points, walking
/// the history from each point towards the visible position in stamp
/// order until every key is found; a wide one merges the two states'
/// overlays, whose cost is the history between the visible position and
/// either state (plus one `kv` lookup per key), not the database.
pub fn diff(
    from: &StateAt<'_>,
    to: &StateAt<'_>,
    range: &KeyRange,
    f: impl FnMut(&Change) -> ControlFlow<()>,
) -> Result<(), StoreError> {
    diff_with(from, to, range, NARROW_DIFF_ROWS, f)
}

/// A diff whose two points are at most this many history rows apart is
/// computed from the keys those rows touch (see [`diff_of_keys`]): a
/// commit or a few, the console's question, costs a scan of the history
/// from the points to the visible position that stops as soon as every
/// such key is resolved, with no sorting. A wider one merges the two
/// states' overlays (each sorted by key in SQLite, flat memory).
const NARROW_DIFF_ROWS: usize = 20_000;

/// [`diff`], narrow up to `narrow_rows` history rows between the points.
pub(crate) fn diff_with(
    from: &StateAt<'_>,
    to: &StateAt<'_>,
    range: &KeyRange,
    narrow_rows: usize,
    f: impl FnMut(&Change) -> ControlFlow<()>,
) -> Result<(), StoreError> {
    debug_assert_eq!(from.position, to.position, "one read transaction");
    match keys_between(from, to, range, narrow_rows)? {
        Some(keys) => diff_of_keys(from, to, &keys, f),
        None => diff_of_overlays(from, to, range, f),
    }
}

/// The keys in `range` that have history rows between the two points
/// (only they can differ), in key order; `None` when there are more than
/// `limit` rows between them.
fn keys_between(
    from: &StateAt<'_>,
    to: &StateAt<'_>,
    range: &KeyRange,
    limit: usize,
) -> Result<Option<BTreeSet<Vec<u8>>>, StoreError> {
    let (lo, hi) = (from.at.min(to.at), from.at.max(to.at));
    let position = from.position;
    let mut keys = BTreeSet::new();
    let mut rows = 0;
    // Applied entries (at or before the position) are undo rows; the
    // others redo rows.
    let parts = [
        ("kvr_undo", lo, hi.min(position)),
        ("kvr_redo", lo.max(position), hi),
    ];
    for (table, after, upto) in parts {
        if after >= upto {
            continue;
        }
        let mut stmt = from.conn.prepare_cached(&format!(
            "select k from {table} where stamp > ?1 and stamp <= ?2"
        ))?;
        let mut found = stmt.query([&after.0[..], &upto.0[..]])?;
        while let Some(r) = found.next()? {
            rows += 1;
            if rows > limit {
                return Ok(None);
            }
            let key = blob(r, 0)?;
            if range.contains(key) && !keys.contains(key) {
                keys.insert(key.to_vec());
            }
        }
    }
    Ok(Some(keys))
}

/// The diff over `keys` (every key that can differ): each key's entry at
/// both points, then the ones that differ in key order.
fn diff_of_keys(
    from: &StateAt<'_>,
    to: &StateAt<'_>,
    keys: &BTreeSet<Vec<u8>>,
    mut f: impl FnMut(&Change) -> ControlFlow<()>,
) -> Result<(), StoreError> {
    let mut before = from.entries_of(keys)?;
    let mut after = to.entries_of(keys)?;
    for key in keys {
        let change = Change {
            key: key.clone(),
            before: before.remove(key).flatten(),
            after: after.remove(key).flatten(),
        };
        if change.before != change.after && f(&change).is_break() {
            break;
        }
    }
    Ok(())
}

/// The diff as a merge of the two states' overlays, for wide diffs.
fn diff_of_overlays(
    from: &StateAt<'_>,
    to: &StateAt<'_>,
    range: &KeyRange,
    mut f: impl FnMut(&Change) -> ControlFlow<()>,
) -> Result<(), StoreError> {
    let conn = from.conn;
    let mut query_a = OverlayQuery::new(conn, from.position, from.at, range)?;
    let mut query_b = OverlayQuery::new(conn, to.position, to.at, range)?;
    let (mut a, mut b) = (query_a.rows()?, query_b.rows()?);
    let mut kv = conn.prepare_cached(
        "select k, v, v_encoding, version, seq, expiration_ms from kv where k = ?1",
    )?;
    let mut base = |key: &[u8]| -> Result<Option<KvRecord>, StoreError> {
        Ok(kv.query_row([key], |r| Ok(row_record(r)?.1)).optional()?)
    };
    let mut next_a = a.next()?;
    let mut next_b = b.next()?;
    loop {
        let key = match (&next_a, &next_b) {
            (None, None) => return Ok(()),
            (Some((k, _)), None) | (None, Some((k, _))) => k.clone(),
            (Some((ka, _)), Some((kb, _))) => ka.min(kb).clone(),
        };
        let before = match next_a.take_if(|(k, _)| *k == key) {
            Some((_, r)) => {
                next_a = a.next()?;
                r
            }
            None => base(&key)?,
        };
        let after = match next_b.take_if(|(k, _)| *k == key) {
            Some((_, r)) => {
                next_b = b.next()?;
                r
            }
            None => base(&key)?,
        };
        if before != after {
            let change = Change { key, before, after };
            if f(&change).is_break() {
                return Ok(());
            }
        }
    }
}

/// The query for the keys whose entry at `at` differs from `kv` (at
/// `position`); [`OverlayQuery::rows`] streams them with that entry, in
/// key order. The statement lives in the caller's frame so its rows can
/// be read one at a time.
struct OverlayQuery<'c> {
    /// The statement, and whether it reads undo (behind) or redo (ahead).
    stmt: Option<(rusqlite::CachedStatement<'c>, bool)>,
    start: Vec<u8>,
    end: Option<Vec<u8>>,
    lo: LogStamp,
    hi: LogStamp,
}

type OverlayRow = (Vec<u8>, Option<KvRecord>);

impl<'c> OverlayQuery<'c> {
    fn new(
        conn: &'c Connection,
        position: LogStamp,
        at: LogStamp,
        range: &KeyRange,
    ) -> Result<Self, StoreError> {
        use std::cmp::Ordering::*;
        let (stmt, lo, hi) = match at.cmp(&position) {
            Equal => (None, position, at),
            // Behind: the oldest undo entry after the point holds the row
            // the key had at the point.
            Less => (
                Some((
                    conn.prepare_cached(&format!(
                        "select k, v, v_encoding, version, seq, expiration_ms from kvr_undo \
                         where {} and stamp > ?3 and stamp <= ?4 order by k, stamp",
                        range.sql()
                    ))?,
                    true,
                )),
                at,
                position,
            ),
            // Ahead: the newest redo entry up to the point is the row.
            Greater => (
                Some((
                    conn.prepare_cached(&format!(
                        "select k, v, v_encoding, stamp, expiration_ms from kvr_redo \
                         where {} and stamp > ?3 and stamp <= ?4 order by k, stamp desc",
                        range.sql()
                    ))?,
                    false,
                )),
                position,
                at,
            ),
        };
        Ok(OverlayQuery {
            stmt,
            start: range.start.clone(),
            end: range.end.clone(),
            lo,
            hi,
        })
    }

    fn rows(&mut self) -> Result<OverlayRows<'_>, StoreError> {
        Ok(match &mut self.stmt {
            None => OverlayRows {
                rows: None,
                undo: false,
                last: None,
            },
            Some((stmt, undo)) => OverlayRows {
                rows: Some(stmt.query(rusqlite::params![
                    self.start,
                    self.end,
                    &self.lo.0[..],
                    &self.hi.0[..]
                ])?),
                undo: *undo,
                last: None,
            },
        })
    }
}

/// The overlay's rows: the first row of each key (they come sorted by key,
/// then by the stamp order that puts the deciding row first).
struct OverlayRows<'s> {
    rows: Option<rusqlite::Rows<'s>>,
    undo: bool,
    last: Option<Vec<u8>>,
}

impl OverlayRows<'_> {
    fn next(&mut self) -> Result<Option<OverlayRow>, StoreError> {
        let Some(rows) = self.rows.as_mut() else {
            return Ok(None);
        };
        while let Some(r) = rows.next()? {
            let key = blob(r, 0)?;
            if self.last.as_deref() == Some(key) {
                continue;
            }
            let key = key.to_vec();
            let record = if self.undo {
                undo_record(r)?
            } else {
                redo_record(r)?
            };
            self.last = Some(key.clone());
            return Ok(Some((key, record)));
        }
        Ok(None)
    }
}

/// The row a key had, from an undo row read as `k, v, v_encoding,
/// version, seq, expiration_ms` (`None`: absent).
fn undo_record(r: &rusqlite::Row<'_>) -> Result<Option<KvRecord>, StoreError> {
    let Some(value) = r.get::<_, Option<Vec<u8>>>(1)? else {
        return Ok(None);
    };
    Ok(Some(KvRecord {
        value,
        encoding: r.get(2)?,
        versionstamp: Versionstamp::from_parts(r.get::<_, i64>(3)? as u64, r.get(4)?),
        expire_at_ms: r.get(5)?,
    }))
}

/// The row a redo entry writes, read as `k, v, v_encoding, stamp,
/// expiration_ms` (`None`: a delete).
fn redo_record(r: &rusqlite::Row<'_>) -> Result<Option<KvRecord>, StoreError> {
    let Some(value) = r.get::<_, Option<Vec<u8>>>(1)? else {
        return Ok(None);
    };
    let stamp = LogStamp::from_slice(blob(r, 3)?)
        .ok_or_else(|| StoreError::Corrupt("kvr_redo holds a stamp that is not 12 bytes".into()))?;
    Ok(Some(KvRecord {
        value,
        encoding: r.get(2)?,
        versionstamp: stamp.versionstamp(),
        expire_at_ms: r.get(4)?,
    }))
}

/// A blob column, borrowed from the row.
fn blob<'r>(r: &'r rusqlite::Row<'_>, i: usize) -> Result<&'r [u8], StoreError> {
    r.get_ref(i)?
        .as_blob()
        .map_err(|e| StoreError::Corrupt(format!("a history row's column {i}: {e}")))
}

fn next_kv(rows: &mut rusqlite::Rows<'_>) -> Result<Option<Entry>, StoreError> {
    match rows.next()? {
        Some(r) => {
            let (key, record) = row_record(r)?;
            Ok(Some(Entry { key, record }))
        }
        None => Ok(None),
    }
}

fn row_record(r: &rusqlite::Row<'_>) -> rusqlite::Result<(Vec<u8>, KvRecord)> {
    Ok((
        r.get(0)?,
        KvRecord {
            value: r.get(1)?,
            encoding: r.get(2)?,
            versionstamp: Versionstamp::from_parts(r.get::<_, i64>(3)? as u64, r.get(4)?),
            expire_at_ms: r.get(5)?,
        },
    ))
}

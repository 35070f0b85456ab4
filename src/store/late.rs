//! Log objects that become visible late: after objects whose names sort
//! after theirs were consumed (concurrent uploads, a slow bucket
//! replication, a copy tool writing in another order). Listing from the
//! cursor never shows them again, so the engine re-lists a trailing window
//! behind the cursor and hands each name it finds unconsumed here.
//!
//! Which objects were consumed is recorded by name (`kvr_consumed`), in the
//! transaction that stores them: stamps alone cannot tell "consumed, then
//! pruned" from "never consumed". The table keeps the newest names only
//! (the engine trims it to a little more than its window). A file created
//! before the table existed counts every object up to its cursor at the
//! upgrade as consumed (`consumed_upto`).
//!
//! A late object is folded in, in one transaction, when its entries lie
//! after the initial point and after the oldest retained history, and
//! overlap nothing stored: the visible state walks back (undo → redo) to
//! just before its first entry, its entries and recoverable points join
//! redo and the points table, and the state walks forward again, to the
//! newest complete commit (following) or to the pin (pinned, which does
//! not move). The result is the replica that saw the objects in order:
//! the same `kv` rows, undo and redo records, points and their times.

use rusqlite::{OptionalExtension, Transaction};

use super::apply::{set_data_version, LogObject, SQL_POINT, SQL_REDO};
use super::pitr::{decrement, walk_backward, walk_forward};
use super::{set_meta, Store, StoreError};
use crate::format::{LogName, LogStamp, Versionstamp};

/// The window of consumed names the engine compares a listing with.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ConsumedWindow {
    /// List from just after this name (`None`: from the first object).
    pub start_after: Option<LogName>,
    /// Names after `start_after` that were consumed, in name order.
    pub consumed: std::collections::BTreeSet<String>,
    /// Objects at or before this name count as consumed (a file upgraded
    /// from before names were recorded, or names trimmed away).
    pub assumed_upto: Option<LogName>,
}

impl ConsumedWindow {
    /// Whether the listed object `name` (at or before the cursor) was never
    /// consumed: it became visible late.
    pub fn is_late(&self, name: &LogName) -> bool {
        self.assumed_upto
            .is_none_or(|u| name.to_string() > u.to_string())
            && !self.consumed.contains(&name.to_string())
    }
}

/// What became of a late object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LateOutcome {
    /// Folded in: the visible commit is now `visible` (perhaps the same
    /// commit as before, with other contents).
    Repaired {
        objects: Vec<LogName>,
        visible: Versionstamp,
        undone: u64,
        redone: u64,
    },
    /// It was consumed meanwhile (nothing done).
    AlreadyConsumed,
    /// `object` cannot be folded in; `why` says what stands in the way.
    Unrepairable { object: LogName, why: String },
    /// `object` leaves commit `commit` half done (the stored log goes on
    /// with commit `next`): a part of the log is still missing, and may
    /// land later as another late object. Nothing was changed.
    Unfinished {
        object: LogName,
        commit: Versionstamp,
        next: Versionstamp,
    },
}

/// The names of `batches`, to record with them ([`record_consumed`]).
pub(super) fn names<L: LogObject>(batches: &[L]) -> Vec<LogName> {
    batches.iter().map(|b| b.name()).collect()
}

/// Records `names` as consumed, in the transaction that stores them.
pub(super) fn record_consumed(tx: &Transaction<'_>, names: &[LogName]) -> Result<(), StoreError> {
    let mut ins = tx.prepare_cached(
        "insert or ignore into kvr_consumed (name, first, last) values (?, ?, ?)",
    )?;
    for n in names {
        ins.execute(rusqlite::params![
            n.to_string(),
            &n.first.0[..],
            &n.last.0[..]
        ])?;
    }
    Ok(())
}

/// Notes that history up to `keep_from` was pruned: no late object at or
/// before it can be folded in any more.
pub(super) fn history_pruned_to(
    tx: &Transaction<'_>,
    keep_from: Versionstamp,
) -> Result<(), StoreError> {
    if meta_stamp10(tx, "history_from")?.is_none_or(|h| h < keep_from) {
        set_meta(tx, "history_from", &keep_from.0)?;
    }
    Ok(())
}

fn meta(conn: &rusqlite::Connection, k: &str) -> Result<Option<Vec<u8>>, StoreError> {
    Ok(conn
        .prepare_cached("select v from kvr_meta where k = ?")?
        .query_row([k], |r| r.get(0))
        .optional()?)
}

fn meta_stamp10(conn: &rusqlite::Connection, k: &str) -> Result<Option<Versionstamp>, StoreError> {
    meta(conn, k)?
        .map(|v| {
            Versionstamp::from_slice(&v)
                .ok_or_else(|| StoreError::Corrupt(format!("kvr_meta.{k} is not 10 bytes")))
        })
        .transpose()
}

fn meta_name(conn: &rusqlite::Connection, k: &str) -> Result<Option<LogName>, StoreError> {
    meta(conn, k)?
        .map(|v| {
            String::from_utf8_lossy(&v)
                .parse::<LogName>()
                .map_err(|e| StoreError::Corrupt(format!("kvr_meta.{k}: {e}")))
        })
        .transpose()
}

fn parse_name(s: &str) -> Result<LogName, StoreError> {
    s.parse()
        .map_err(|e| StoreError::Corrupt(format!("kvr_consumed: {e}")))
}

impl Store {
    /// The consumed names a listing of the `window` objects before the
    /// cursor is compared with: from just before the `window`-th newest
    /// recorded name.
    pub fn consumed_window(&self, window: usize) -> Result<ConsumedWindow, StoreError> {
        let assumed_upto = meta_name(&self.conn, "consumed_upto")?;
        let oldest: Option<String> = self
            .conn
            .prepare_cached("select name from kvr_consumed order by name desc limit 1 offset ?")?
            .query_row(
                [window.saturating_sub(1).min(i64::MAX as usize) as i64],
                |r| r.get(0),
            )
            .optional()?;
        let start_after = match &oldest {
            Some(o) => {
                // Just before the oldest name of the window: the first name
                // that sorts before it, or the assumption's boundary.
                let below: Option<String> = self
                    .conn
                    .prepare_cached(
                        "select name from kvr_consumed where name < ? order by name desc limit 1",
                    )?
                    .query_row([o], |r| r.get(0))
                    .optional()?;
                match below {
                    Some(b) => Some(parse_name(&b)?),
                    None => assumed_upto,
                }
            }
            None => assumed_upto,
        };
        let mut consumed = std::collections::BTreeSet::new();
        let from = start_after.map(|s| s.to_string()).unwrap_or_default();
        let mut stmt = self
            .conn
            .prepare_cached("select name from kvr_consumed where name > ? order by name")?;
        for n in stmt.query_map([from], |r| r.get::<_, String>(0))? {
            consumed.insert(n?);
        }
        Ok(ConsumedWindow {
            start_after,
            consumed,
            assumed_upto,
        })
    }

    /// Keeps the consumed names a little more than a `window`: once more
    /// than twice the window are recorded, forgets all but the newest
    /// `window + 1` (the window and the name just before it); objects at or
    /// before the newest forgotten one count as consumed from then on.
    /// Returns the names forgotten.
    pub fn trim_consumed(&mut self, window: usize) -> Result<u64, StoreError> {
        let recorded: i64 = self
            .conn
            .query_row("select count(*) from kvr_consumed", [], |r| r.get(0))?;
        if recorded as u64 <= 2 * window as u64 {
            return Ok(0);
        }
        let keep = window + 1;
        let tx = self.conn.transaction()?;
        let boundary: Option<String> = tx
            .query_row(
                "select name from kvr_consumed order by name desc limit 1 offset ?",
                [keep.min(i64::MAX as usize) as i64],
                |r| r.get(0),
            )
            .optional()?;
        let Some(boundary) = boundary else {
            return Ok(0);
        };
        let removed = tx.execute("delete from kvr_consumed where name <= ?", [&boundary])?;
        set_meta(&tx, "consumed_upto", boundary.as_bytes())?;
        tx.commit()?;
        Ok(removed as u64)
    }

    /// Folds the late objects `batches` into the stored history, in one
    /// transaction, or says why they cannot be (see the module's docs).
    /// Objects consumed meanwhile are skipped. Several late objects that
    /// hold parts of one commit go in together.
    pub fn repair_late<L: LogObject>(
        &mut self,
        mut batches: Vec<L>,
    ) -> Result<LateOutcome, StoreError> {
        let initial = self
            .state
            .initial_point
            .ok_or(StoreError::InitialIncomplete)?;
        let position = self.state.position.ok_or(StoreError::InitialIncomplete)?;
        let pinned = self.state.pinned;
        batches.sort_by_key(|b| b.name().first);
        let tx = self.conn.transaction()?;
        {
            let mut recorded =
                tx.prepare_cached("select count(*) from kvr_consumed where name = ?")?;
            let mut keep = Vec::with_capacity(batches.len());
            for b in batches {
                if recorded.query_row([b.name().to_string()], |r| r.get::<_, i64>(0))? == 0 {
                    keep.push(b);
                }
            }
            batches = keep;
        }
        let Some(earliest) = batches.first().map(|b| b.name().first) else {
            return Ok(LateOutcome::AlreadyConsumed);
        };
        let mut prev: Option<LogName> = None;
        for b in &batches {
            let why = match prev.filter(|p| b.name().first <= p.last) {
                Some(p) => Some(format!(
                    "its stamps overlap those of the late object {}",
                    crate::backup::log_key(&p)
                )),
                None => obstacle(&tx, b.name(), initial)?,
            };
            if let Some(why) = why {
                return Ok(LateOutcome::Unrepairable {
                    object: b.name(),
                    why,
                });
            }
            prev = Some(b.name());
        }
        // Back to just before the first entry (nothing to do when it lies
        // after the visible state, e.g. ahead of a pin).
        let mut before = earliest.0;
        decrement(&mut before);
        let before = LogStamp(before);
        let (mut base, mut undone) = (position, 0);
        if before < position {
            undone = walk_backward(&tx, position, before)?;
            base = before;
        }
        {
            let mut redo = tx.prepare_cached(SQL_REDO)?;
            let mut point = tx.prepare_cached(SQL_POINT)?;
            for b in &batches {
                for e in b.entries() {
                    let Some(e) = self.state.filter.admit(e?) else {
                        continue;
                    };
                    let (v, enc, exp) = match &e.record {
                        Some(r) => (Some(&r.value[..]), r.encoding, r.expire_at_ms),
                        None => (None, 0, -1),
                    };
                    redo.execute(rusqlite::params![
                        &e.stamp.0[..],
                        b.timestamp_ms(),
                        e.key,
                        v,
                        enc,
                        exp
                    ])?;
                    if e.stamp.is_commit_end() {
                        point.execute(rusqlite::params![
                            &e.stamp.versionstamp().0[..],
                            b.timestamp_ms()
                        ])?;
                    }
                }
            }
        }
        for b in &batches {
            if let Some(gap) = unfinished(&tx, b.name())? {
                // The rest may still land (as another late object): the
                // transaction is dropped, nothing is changed.
                return Ok(gap);
            }
        }
        // Forward again: to the pin, or to the newest complete commit.
        let target = if pinned {
            position
        } else {
            let newest_end: Option<Vec<u8>> = tx.query_row(
                "select max(stamp) from kvr_redo where substr(stamp, 11, 2) = x'ffff'",
                [],
                |r| r.get(0),
            )?;
            newest_end
                .and_then(|s| LogStamp::from_slice(&s))
                .map_or(position, |s| s.max(position))
        };
        let redone = if target > base {
            walk_forward(&tx, base, target)?
        } else {
            0
        };
        set_meta(&tx, "position", &target.0)?;
        set_data_version(&tx, target.versionstamp())?;
        let names = names(&batches);
        record_consumed(&tx, &names)?;
        super::testhook::before_commit(|| {
            format!("late log object {}", crate::backup::log_key(&names[0]))
        });
        tx.commit()?;
        self.state.position = Some(target);
        Ok(LateOutcome::Repaired {
            objects: names,
            visible: target.versionstamp(),
            undone,
            redone,
        })
    }
}

/// One stamp of the stored log (undo and redo), by `sql` over both tables
/// with `?1` = `stamp`.
fn stored(
    tx: &Transaction<'_>,
    sql: &str,
    stamp: LogStamp,
) -> Result<Option<LogStamp>, StoreError> {
    let v: Option<Vec<u8>> = tx
        .prepare_cached(sql)?
        .query_row([&stamp.0[..]], |r| r.get(0))
        .optional()?
        .flatten();
    Ok(v.and_then(|s| LogStamp::from_slice(&s)))
}

/// Why the late object `name` cannot be folded in, if it cannot: entries
/// at or before the initial point (folded into the snapshot's state, with
/// no undo) or the pruned history, or stamps that overlap what is stored.
fn obstacle(
    tx: &Transaction<'_>,
    name: LogName,
    initial: Versionstamp,
) -> Result<Option<String>, StoreError> {
    let (first, last) = (name.first, name.last);
    if first <= initial.commit_end() {
        return Ok(Some(format!(
            "its first entry {first} is at or before the replica's initial point {initial}, \
             whose state came from the snapshot and cannot be rolled back"
        )));
    }
    if let Some(h) = meta_stamp10(tx, "history_from")? {
        if first <= h.commit_end() {
            return Ok(Some(format!(
                "its first entry {first} is at or before {h}, the oldest point the retention \
                 kept (older history was pruned)"
            )));
        }
    }
    let overlapping: Option<String> = tx
        .prepare_cached("select name from kvr_consumed where first <= ?2 and last >= ?1 limit 1")?
        .query_row([&first.0[..], &last.0[..]], |r| r.get(0))
        .optional()?;
    if let Some(o) = overlapping {
        return Ok(Some(format!(
            "its stamps {first}..{last} overlap those of the consumed object {}",
            crate::backup::log_key(&parse_name(&o)?)
        )));
    }
    let next = stored(
        tx,
        "select min(stamp) from (select min(stamp) as stamp from kvr_undo where stamp >= ?1 \
         union all select min(stamp) from kvr_redo where stamp >= ?1)",
        first,
    )?;
    if let Some(s) = next.filter(|s| *s <= last) {
        return Ok(Some(format!(
            "its stamps {first}..{last} overlap the stored entry {s}"
        )));
    }
    Ok(None)
}

/// A commit left half done by the late object `name`, now in redo: the
/// stored entry before it ends inside a commit it does not continue, or it
/// ends inside a commit the next stored entry does not continue.
fn unfinished(tx: &Transaction<'_>, name: LogName) -> Result<Option<LateOutcome>, StoreError> {
    let prev = stored(
        tx,
        "select max(stamp) from (select max(stamp) as stamp from kvr_undo where stamp < ?1 \
         union all select max(stamp) from kvr_redo where stamp < ?1)",
        name.first,
    )?;
    if let Some(p) = prev.filter(|p| !p.is_commit_end()) {
        if p.versionstamp() != name.first.versionstamp() {
            return Ok(Some(LateOutcome::Unfinished {
                object: name,
                commit: p.versionstamp(),
                next: name.first.versionstamp(),
            }));
        }
    }
    if name.last.is_commit_end() {
        return Ok(None);
    }
    let next = stored(
        tx,
        "select min(stamp) from (select min(stamp) as stamp from kvr_undo where stamp > ?1 \
         union all select min(stamp) from kvr_redo where stamp > ?1)",
        name.last,
    )?;
    match next {
        Some(n) if n.versionstamp() == name.last.versionstamp() => Ok(None),
        _ => Ok(Some(LateOutcome::Unfinished {
            object: name,
            commit: name.last.versionstamp(),
            next: next.map_or(name.last.versionstamp(), |n| n.versionstamp()),
        })),
    }
}

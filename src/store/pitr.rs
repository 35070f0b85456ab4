//! Point-in-time recovery: listing recoverable points and moving the visible
//! state to any of them.
//!
//! A checkout walks redo forward (writing undo) or undo backward (writing
//! redo) inside one transaction, so readers see the old state or the new one,
//! never a mix. After a checkout to a chosen point the replica is *pinned*:
//! sync keeps storing new logs in redo, and the visible state stays put until
//! a checkout to another point or to `latest`.

use std::str::FromStr;

use chrono::{DateTime, Utc};
use rusqlite::{Connection, OptionalExtension, Transaction};

use super::apply::{set_data_version, Stmts};
use super::{set_meta, Store, StoreError, SyncState};
use crate::format::{KvRecord, LogStamp, Versionstamp};

/// A recoverable point: a commit boundary after the initial point.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Point {
    pub versionstamp: Versionstamp,
    /// Commit wall-clock time (epoch ms) of the log object that closed it.
    pub ts_ms: i64,
}

impl Point {
    /// RFC 3339 UTC with milliseconds, as `denokv pitr list` prints it.
    pub fn time_rfc3339(&self) -> String {
        DateTime::<Utc>::from_timestamp_millis(self.ts_ms)
            .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
            .unwrap_or_else(|| format!("@{}ms", self.ts_ms))
    }
}

/// What to check out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CheckoutTarget {
    /// Exactly this recoverable point.
    Versionstamp(Versionstamp),
    /// The newest point whose commit time is at or before this instant.
    Timestamp(DateTime<Utc>),
    /// The newest complete commit fetched, and follow new ones from then on.
    Latest,
}

/// Reads what an operator types (`pitr checkout`): `latest` (any case), a
/// 20-hex-digit versionstamp, or an RFC 3339 time. The admin API's JSON
/// form names the kind instead and reads the value with the same
/// [`parse_versionstamp`] and [`parse_time`].
impl FromStr for CheckoutTarget {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        if s.eq_ignore_ascii_case("latest") {
            return Ok(CheckoutTarget::Latest);
        }
        if s.len() == 20 && s.bytes().all(|b| b.is_ascii_hexdigit()) {
            return parse_versionstamp(s).map(CheckoutTarget::Versionstamp);
        }
        parse_time(s).map(CheckoutTarget::Timestamp).map_err(|_| {
            format!("{s:?} is neither a 20-hex-digit versionstamp, an RFC 3339 time, nor `latest`")
        })
    }
}

/// A versionstamp as operators copy it: 20 hex digits, in either case.
pub fn parse_versionstamp(s: &str) -> Result<Versionstamp, String> {
    s.to_ascii_lowercase().parse()
}

/// An RFC 3339 time in any offset, as the instant it names.
pub fn parse_time(s: &str) -> Result<DateTime<Utc>, chrono::ParseError> {
    DateTime::parse_from_rfc3339(s).map(|t| t.with_timezone(&Utc))
}

/// Why a checkout was refused. Each maps to a clear answer for the operator.
#[derive(Debug, thiserror::Error)]
pub enum CheckoutError {
    #[error("the initial snapshot is not complete yet; checkout is possible once it is")]
    InitialIncomplete,
    #[error("{asked} is not a recoverable point{hint}")]
    NotAPoint { asked: Versionstamp, hint: String },
    #[error("{asked} is before the earliest recoverable point ({earliest})")]
    TooEarly { asked: String, earliest: String },
    /// A time after the newest point: pinning the replica there would look
    /// like `latest` but silently stop showing new commits.
    #[error(
        "{asked} is after the newest point ({newest}): a checkout to a time pins the replica, \
         which would then stop showing new commits; check out `latest` to follow them"
    )]
    AfterNewest { asked: String, newest: String },
    #[error("there are no recoverable points yet: the replica is at its initial point")]
    NoPoints,
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<rusqlite::Error> for CheckoutError {
    fn from(e: rusqlite::Error) -> Self {
        CheckoutError::Store(StoreError::Sqlite(e))
    }
}

/// The result of a checkout: where the visible state was and is now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckoutOutcome {
    pub from: Versionstamp,
    pub to: Point,
    /// True unless the target was `latest`.
    pub pinned: bool,
    /// Log entries re-applied (forward).
    pub redone: u64,
    /// Log entries reverted (backward).
    pub undone: u64,
}

/// Where the visible state stands, for `pitr info` and the admin API.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Position {
    pub visible: Versionstamp,
    /// Commit time of the visible point; unknown for the initial point when
    /// no log object closed it (a database with no writes after DV).
    pub visible_ts_ms: Option<i64>,
    pub pinned: bool,
    pub initial_point: Versionstamp,
    /// The newest complete commit fetched.
    pub latest: Point,
    /// Recoverable points newer than the visible one.
    pub points_behind: u64,
    pub points_total: u64,
}

/// Rows moved per step of a checkout: bounds memory whatever the distance.
const CHECKOUT_CHUNK: usize = 4096;

/// SQLite's page cache during a checkout (negative = KiB; see
/// [`Store::checkout`]). An upper bound: pages are allocated as the walk
/// touches them, so a short checkout uses little of it.
const CHECKOUT_CACHE_SIZE_KIB: i64 = -65536;

/// Read-only queries over a replica's history: usable on the writer's
/// connection and on a read-only one (so `pitr list` works while a server
/// holds the writer lock).
pub struct HistoryView<'a> {
    pub(super) conn: &'a Connection,
    pub(super) state: &'a SyncState,
}

impl<'a> HistoryView<'a> {
    pub fn new(conn: &'a Connection, state: &'a SyncState) -> Self {
        HistoryView { conn, state }
    }

    /// How many recoverable points carry the time `ts_ms`. A backup stamps
    /// commits with its objects' times, so several commits often share one:
    /// a checkout by that time lands on the newest of them.
    pub fn points_at(&self, ts_ms: i64) -> Result<u64, StoreError> {
        let mut stmt = self
            .conn
            .prepare_cached("select count(*) from kvr_points where ts_ms = ?1")?;
        Ok(stmt.query_row([ts_ms], |r| r.get::<_, i64>(0))? as u64)
    }

    /// Recoverable points with `start_ms <= time < end_ms`, newest first, at
    /// most `limit`, strictly older than `before` when paginating.
    pub fn points(
        &self,
        start_ms: Option<i64>,
        end_ms: Option<i64>,
        before: Option<Versionstamp>,
        limit: usize,
    ) -> Result<Vec<Point>, StoreError> {
        let mut stmt = self.conn.prepare_cached(
            "select versionstamp, ts_ms from kvr_points \
             where ts_ms >= ?1 and ts_ms < ?2 and versionstamp < ?3 \
             order by versionstamp desc limit ?4",
        )?;
        let before = before
            .map(|b| b.0.to_vec())
            .unwrap_or_else(|| vec![0xff; 11]);
        let rows = stmt.query_map(
            rusqlite::params![
                start_ms.unwrap_or(i64::MIN),
                end_ms.unwrap_or(i64::MAX),
                before,
                limit.min(i64::MAX as usize) as i64
            ],
            row_point,
        )?;
        Ok(rows.collect::<Result<Vec<_>, _>>()?)
    }

    /// The point with exactly this versionstamp.
    pub fn point(&self, vs: Versionstamp) -> Result<Option<Point>, StoreError> {
        Ok(self
            .conn
            .prepare_cached("select versionstamp, ts_ms from kvr_points where versionstamp = ?")?
            .query_row([&vs.0[..]], row_point)
            .optional()?)
    }

    /// Where the visible state stands; `None` before the initial snapshot
    /// is complete.
    pub fn position(&self) -> Result<Option<Position>, StoreError> {
        let Some(visible) = self.state.visible() else {
            return Ok(None);
        };
        let initial_point = self.state.initial_point.expect("visible implies initial");
        let newest = self.edge_point(true)?;
        let visible_ts_ms = self.time_of(visible)?;
        let latest = newest.unwrap_or(Point {
            versionstamp: initial_point,
            ts_ms: visible_ts_ms.unwrap_or(0),
        });
        // One statement (one snapshot), two counts rather than one scan
        // comparing every row: the total reads the smaller time index, the
        // points behind are a key range (none to read when following):
        // 16 ms instead of 98 ms at 1M points.
        let (points_total, points_behind): (i64, i64) = self
            .conn
            .prepare_cached(
                "select (select count(*) from kvr_points), \
                        (select count(*) from kvr_points where versionstamp > ?)",
            )?
            .query_row([&visible.0[..]], |r| Ok((r.get(0)?, r.get(1)?)))?;
        Ok(Some(Position {
            visible,
            visible_ts_ms,
            pinned: self.state.pinned,
            initial_point,
            latest,
            points_behind: points_behind as u64,
            points_total: points_total as u64,
        }))
    }

    /// The commit time of a point or of the initial point (unknown for the
    /// initial point when no log object closed it).
    pub(crate) fn time_of(&self, vs: Versionstamp) -> Result<Option<i64>, StoreError> {
        match self.point(vs)? {
            Some(p) => Ok(Some(p.ts_ms)),
            None => self.initial_ts(),
        }
    }

    fn initial_ts(&self) -> Result<Option<i64>, StoreError> {
        let v: Option<Vec<u8>> = self
            .conn
            .query_row(
                "select v from kvr_meta where k = 'initial_ts_ms'",
                [],
                |r| r.get(0),
            )
            .optional()?;
        Ok(v.and_then(|b| String::from_utf8(b).ok()?.parse().ok()))
    }

    /// The newest (or oldest) recoverable point.
    pub(super) fn edge_point(&self, newest: bool) -> Result<Option<Point>, StoreError> {
        let sql = if newest {
            "select versionstamp, ts_ms from kvr_points order by versionstamp desc limit 1"
        } else {
            "select versionstamp, ts_ms from kvr_points order by versionstamp asc limit 1"
        };
        Ok(self.conn.query_row(sql, [], row_point).optional()?)
    }

    pub(crate) fn resolve(&self, target: CheckoutTarget) -> Result<Point, CheckoutError> {
        match target {
            CheckoutTarget::Latest => match self.edge_point(true)? {
                Some(p) => Ok(p),
                None => {
                    let initial = self
                        .state
                        .initial_point
                        .ok_or(CheckoutError::InitialIncomplete)?;
                    Ok(Point {
                        versionstamp: initial,
                        ts_ms: self.initial_ts()?.unwrap_or(0),
                    })
                }
            },
            CheckoutTarget::Versionstamp(vs) => {
                if let Some(p) = self.point(vs)? {
                    return Ok(p);
                }
                let below = self.neighbour(vs, false)?;
                let above = self.neighbour(vs, true)?;
                let mut hint = String::new();
                if Some(vs) == self.state.initial_point {
                    hint.push_str(
                        " (it is the initial point: states up to it came from a fuzzy snapshot and are not recoverable)",
                    );
                }
                match (below, above) {
                    (Some(b), Some(a)) => hint.push_str(&format!(
                        "; the nearest points are {} ({}) and {} ({})",
                        b.versionstamp,
                        b.time_rfc3339(),
                        a.versionstamp,
                        a.time_rfc3339()
                    )),
                    (Some(p), None) | (None, Some(p)) => hint.push_str(&format!(
                        "; the nearest point is {} ({})",
                        p.versionstamp,
                        p.time_rfc3339()
                    )),
                    (None, None) => hint.push_str("; there are no recoverable points yet"),
                }
                Err(CheckoutError::NotAPoint { asked: vs, hint })
            }
            CheckoutTarget::Timestamp(t) => {
                let ms = t.timestamp_millis();
                if let Some(newest) = self.edge_point(true)?.filter(|n| ms > n.ts_ms) {
                    return Err(CheckoutError::AfterNewest {
                        asked: t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
                        newest: format!("{} at {}", newest.versionstamp, newest.time_rfc3339()),
                    });
                }
                let p = self
                    .conn
                    .prepare_cached(
                        "select versionstamp, ts_ms from kvr_points where ts_ms <= ? \
                         order by ts_ms desc, versionstamp desc limit 1",
                    )?
                    .query_row([ms], row_point)
                    .optional()?;
                match p {
                    Some(p) => Ok(p),
                    None => match self.edge_point(false)? {
                        Some(e) => Err(CheckoutError::TooEarly {
                            asked: t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
                            earliest: format!("{} at {}", e.versionstamp, e.time_rfc3339()),
                        }),
                        None => Err(CheckoutError::NoPoints),
                    },
                }
            }
        }
    }

    fn neighbour(&self, vs: Versionstamp, above: bool) -> Result<Option<Point>, StoreError> {
        let sql = if above {
            "select versionstamp, ts_ms from kvr_points where versionstamp > ? order by versionstamp asc limit 1"
        } else {
            "select versionstamp, ts_ms from kvr_points where versionstamp < ? order by versionstamp desc limit 1"
        };
        Ok(self
            .conn
            .query_row(sql, [&vs.0[..]], row_point)
            .optional()?)
    }
}

impl Store {
    /// Read-only history queries on this store.
    pub fn history(&self) -> HistoryView<'_> {
        HistoryView::new(&self.conn, &self.state)
    }

    /// Moves the visible state to `target` in one transaction, durable
    /// before it returns.
    ///
    /// The apply path commits with `synchronous=NORMAL`: a power loss may
    /// drop its newest commits, which the next sync fetches again. A
    /// checkout cannot be fetched again: losing it would silently put a
    /// pinned replica back to following (or the reverse) after the caller
    /// was told it succeeded. So its transaction commits with
    /// `synchronous=FULL`, which syncs the write-ahead log to disk.
    ///
    /// The page cache grows to [`CHECKOUT_CACHE_SIZE_KIB`] for the
    /// transaction: a walk touches `kv`, `kvr_undo` and `kvr_redo` pages
    /// all over, and with the apply path's 4 MiB cache SQLite spilled dirty
    /// pages to the log mid-transaction, wrote many of them twice and read
    /// evicted ones back (a 10,000-entry walk wrote about 4,900 log frames
    /// for 2,200 distinct pages). SQLite frees the extra pages when the
    /// size is set back.
    pub fn checkout(&mut self, target: CheckoutTarget) -> Result<CheckoutOutcome, CheckoutError> {
        self.conn.pragma_update(None, "synchronous", "full")?;
        self.conn
            .pragma_update(None, "cache_size", CHECKOUT_CACHE_SIZE_KIB)?;
        let out = self.checkout_in_one_transaction(target);
        // The checkout stands either way; left at FULL, applying is only
        // slower, and a bigger cache only costs memory.
        if let Err(e) = self
            .conn
            .pragma_update(None, "synchronous", super::SYNCHRONOUS_APPLY)
            .and_then(|()| {
                self.conn
                    .pragma_update(None, "cache_size", super::CACHE_SIZE_KIB)
            })
        {
            tracing::warn!(error = %e, "cannot set synchronous and cache_size back after a checkout");
        }
        out
    }

    fn checkout_in_one_transaction(
        &mut self,
        target: CheckoutTarget,
    ) -> Result<CheckoutOutcome, CheckoutError> {
        let from = self
            .state
            .visible()
            .ok_or(CheckoutError::InitialIncomplete)?;
        let position = self.state.position.expect("visible implies position");
        let to = self.history().resolve(target)?;
        let target12 = to.versionstamp.commit_end();
        let pinned = !matches!(target, CheckoutTarget::Latest);
        let tx = self.conn.transaction()?;
        let (mut redone, mut undone) = (0, 0);
        if target12 > position {
            redone = walk_forward(&tx, position, target12)?;
        } else if target12 < position {
            undone = walk_backward(&tx, position, target12)?;
        }
        set_meta(&tx, "position", &target12.0)?;
        set_meta(&tx, "mode", if pinned { b"pinned" } else { b"follow" })?;
        set_data_version(&tx, to.versionstamp)?;
        tx.commit()?;
        self.state.position = Some(target12);
        self.state.pinned = pinned;
        Ok(CheckoutOutcome {
            from,
            to,
            pinned,
            redone,
            undone,
        })
    }
}

pub(super) fn row_point(r: &rusqlite::Row<'_>) -> rusqlite::Result<Point> {
    let vs: Vec<u8> = r.get(0)?;
    Ok(Point {
        versionstamp: Versionstamp::from_slice(&vs).unwrap_or_default(),
        ts_ms: r.get(1)?,
    })
}

type RedoRow = (Vec<u8>, i64, Vec<u8>, Option<Vec<u8>>, i64, i64);

/// Re-applies redo entries in `(from, to]`, keeping undo for each.
pub(super) fn walk_forward(
    tx: &Transaction<'_>,
    from: LogStamp,
    to: LogStamp,
) -> Result<u64, StoreError> {
    let mut done = 0;
    let mut after = from;
    loop {
        let mut rows: Vec<RedoRow> = tx
            .prepare_cached(
                "select stamp, ts_ms, k, v, v_encoding, expiration_ms from kvr_redo \
                 where stamp > ? and stamp <= ? order by stamp limit ?",
            )?
            .query_map(
                rusqlite::params![&after.0[..], &to.0[..], CHECKOUT_CHUNK as i64],
                |r| {
                    Ok((
                        r.get(0)?,
                        r.get(1)?,
                        r.get(2)?,
                        r.get(3)?,
                        r.get(4)?,
                        r.get(5)?,
                    ))
                },
            )?
            .collect::<Result<_, _>>()?;
        let Some(last) = rows.last() else { break };
        let last = LogStamp::from_slice(&last.0).ok_or_else(|| {
            StoreError::Corrupt("kvr_redo holds a stamp that is not 12 bytes".into())
        })?;
        let n = rows.len();
        let mut stamps = Vec::with_capacity(n);
        let mut recs = Vec::with_capacity(n);
        for (stamp, _, _, v, enc, exp) in &mut rows {
            let stamp = LogStamp::from_slice(stamp).ok_or_else(|| {
                StoreError::Corrupt("kvr_redo holds a stamp that is not 12 bytes".into())
            })?;
            stamps.push(stamp);
            recs.push(v.take().map(|value| KvRecord {
                value,
                encoding: *enc,
                versionstamp: stamp.versionstamp(),
                expire_at_ms: *exp,
            }));
        }
        // As when the entries were first applied: key by key, then undo
        // records in stamp order.
        let mut stmts = Stmts::new(tx)?;
        let pre = stmts.write_in_key_order(n, |i| &rows[i].2, |i| recs[i].as_ref(), 0)?;
        for (i, (_, ts_ms, key, ..)) in rows.iter().enumerate() {
            let prev = pre.get(i, |j| recs[j].as_ref());
            stmts.write_undo(stamps[i], *ts_ms, key, prev)?;
        }
        drop(stmts);
        tx.prepare_cached("delete from kvr_redo where stamp > ? and stamp <= ?")?
            .execute([&after.0[..], &last.0[..]])?;
        done += n as u64;
        crate::health::STORE_WORK.progress(); // for the watchdog
        super::testhook::chunk_walked();
        after = last;
        if n < CHECKOUT_CHUNK {
            break;
        }
    }
    if after != to {
        return Err(StoreError::Corrupt(format!(
            "the stored log ends at {after}, before the checkout target {to}"
        )));
    }
    Ok(done)
}

type UndoRow = (Vec<u8>, i64, Vec<u8>, Option<Vec<u8>>, i64, i64, u16, i64);

/// Reverts undo entries in `(to, from]`, newest first, keeping redo for each.
pub(super) fn walk_backward(
    tx: &Transaction<'_>,
    from: LogStamp,
    to: LogStamp,
) -> Result<u64, StoreError> {
    let mut done = 0;
    let mut upto = from;
    loop {
        let mut rows: Vec<UndoRow> = tx
            .prepare_cached(
                "select stamp, ts_ms, k, v, v_encoding, version, seq, expiration_ms from kvr_undo \
                 where stamp > ? and stamp <= ? order by stamp desc limit ?",
            )?
            .query_map(
                rusqlite::params![&to.0[..], &upto.0[..], CHECKOUT_CHUNK as i64],
                |r| {
                    Ok((
                        r.get(0)?,
                        r.get(1)?,
                        r.get(2)?,
                        r.get(3)?,
                        r.get(4)?,
                        r.get(5)?,
                        r.get(6)?,
                        r.get(7)?,
                    ))
                },
            )?
            .collect::<Result<_, _>>()?;
        let Some(last) = rows.last() else { break };
        let oldest = LogStamp::from_slice(&last.0).ok_or_else(|| {
            StoreError::Corrupt("kvr_undo holds a stamp that is not 12 bytes".into())
        })?;
        let n = rows.len();
        // Key by key, newest entry first within a key (the rows come newest
        // first and the sort is stable): the newest entry wrote the key's
        // current row, each older one wrote the row the next newer one
        // replaced; the key ends at the oldest entry's previous row. One
        // read and one write per key, in B-tree order.
        let mut order: Vec<usize> = (0..n).collect();
        order.sort_by(|&a, &b| rows[a].2.cmp(&rows[b].2));
        let mut prevs: Vec<Option<KvRecord>> = rows
            .iter_mut()
            .map(|(_, _, _, v, enc, version, seq, exp)| {
                v.take().map(|value| KvRecord {
                    value,
                    encoding: *enc,
                    versionstamp: Versionstamp::from_parts(*version as u64, *seq),
                    expire_at_ms: *exp,
                })
            })
            .collect();
        let mut after: Vec<Option<KvRecord>> = vec![None; n];
        let mut stmts = Stmts::new(tx)?;
        for group in order.chunk_by(|&a, &b| rows[a].2 == rows[b].2) {
            let key = &rows[group[0]].2;
            let mut cur = stmts.get(key)?;
            for &i in group {
                after[i] = std::mem::replace(&mut cur, prevs[i].take());
            }
            stmts.write(key, cur.as_ref())?;
        }
        drop(stmts);
        // Redo records, oldest first.
        {
            let mut redo = tx.prepare_cached(
                "insert into kvr_redo (stamp, ts_ms, k, v, v_encoding, expiration_ms) values (?, ?, ?, ?, ?, ?)",
            )?;
            for i in (0..n).rev() {
                let (stamp, ts_ms, key, ..) = &rows[i];
                let (cv, cenc, cexp) = match &after[i] {
                    Some(r) => (Some(&r.value[..]), r.encoding, r.expire_at_ms),
                    None => (None, 0, -1),
                };
                redo.execute(rusqlite::params![stamp, ts_ms, key, cv, cenc, cexp])?;
            }
        }
        tx.prepare_cached("delete from kvr_undo where stamp >= ? and stamp <= ?")?
            .execute([&oldest.0[..], &upto.0[..]])?;
        done += n as u64;
        crate::health::STORE_WORK.progress(); // for the watchdog
        super::testhook::chunk_walked();
        if n < CHECKOUT_CHUNK {
            break;
        }
        // Continue below the oldest reverted entry.
        let mut prev = oldest.0;
        decrement(&mut prev);
        upto = LogStamp(prev);
    }
    Ok(done)
}

/// The stamp just before `s` in byte order (s > 0 in practice).
pub(super) fn decrement(s: &mut [u8; 12]) {
    for b in s.iter_mut().rev() {
        if *b == 0 {
            *b = 0xff;
        } else {
            *b -= 1;
            return;
        }
    }
}

/// How much history to keep. Without limits every point stays recoverable
/// and the file grows with the log (as with the reference replica).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Retention {
    /// Keep points whose commit time is at most this old, relative to the
    /// newest point, or to the local clock when that is earlier. A point
    /// whose time is ahead of the local clock (see `clock`) is never the
    /// reference, so one wrong clock cannot prune the whole history.
    pub max_age: Option<std::time::Duration>,
    /// Keep at most this many points.
    pub max_points: Option<u64>,
}

impl Retention {
    pub fn is_unlimited(&self) -> bool {
        self.max_age.is_none() && self.max_points.is_none()
    }
}

impl Store {
    /// Forgets points outside `retention`, with the undo records only they
    /// needed. Never forgets the visible point or anything newer, so a
    /// pinned replica keeps what it shows. Returns the points removed.
    pub fn prune_history(&mut self, retention: Retention) -> Result<u64, StoreError> {
        self.prune_history_at(retention, chrono::Utc::now().timestamp_millis())
    }

    /// [`Store::prune_history`] with the local clock at `now_ms`.
    pub(crate) fn prune_history_at(
        &mut self,
        retention: Retention,
        now_ms: i64,
    ) -> Result<u64, StoreError> {
        if retention.is_unlimited() {
            return Ok(0);
        }
        let Some(visible) = self.state.visible() else {
            return Ok(0);
        };
        let tx = self.conn.transaction()?;
        // The oldest point to keep, by each rule; the stricter wins.
        let mut keep_from: Option<Vec<u8>> = None;
        if let Some(n) = retention.max_points {
            let vs: Option<Vec<u8>> = tx
                .query_row(
                    "select versionstamp from kvr_points order by versionstamp desc limit 1 offset ?",
                    [n.saturating_sub(1).min(i64::MAX as u64) as i64],
                    |r| r.get(0),
                )
                .optional()?;
            keep_from = vs.or(keep_from);
        }
        if let Some(age) = retention.max_age {
            // Age counts from the newest point whose time is not ahead of
            // the local clock, and never from later than the local clock.
            let newest: Option<i64> = tx.query_row(
                "select max(ts_ms) from kvr_points where ts_ms <= ?",
                [now_ms.saturating_add(crate::clock::max_ahead_ms())],
                |r| r.get(0),
            )?;
            if let Some(newest) = newest.map(|n| n.min(now_ms)) {
                let cutoff = newest.saturating_sub(age.as_millis().min(i64::MAX as u128) as i64);
                let vs: Option<Vec<u8>> = tx
                    .query_row(
                        "select versionstamp from kvr_points where ts_ms >= ? order by versionstamp asc limit 1",
                        [cutoff],
                        |r| r.get(0),
                    )
                    .optional()?;
                if let Some(vs) = vs {
                    keep_from = Some(match keep_from {
                        Some(k) if k > vs => k,
                        _ => vs,
                    });
                }
            }
        }
        let Some(keep_from) = keep_from else {
            return Ok(0);
        };
        let keep_from = Versionstamp::from_slice(&keep_from)
            .ok_or_else(|| {
                StoreError::Corrupt("kvr_points holds a stamp that is not 10 bytes".into())
            })?
            .min(visible);
        let removed = tx.execute(
            "delete from kvr_points where versionstamp < ?",
            [&keep_from.0[..]],
        )?;
        // Reaching `keep_from` from above needs the undo of every entry after
        // it; entries up to its boundary are never reverted again.
        tx.execute(
            "delete from kvr_undo where stamp <= ?",
            [&keep_from.commit_end().0[..]],
        )?;
        super::late::history_pruned_to(&tx, keep_from)?;
        tx.commit()?;
        Ok(removed as u64)
    }
}

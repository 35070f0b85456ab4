//! The history at a glance: how many commits fell in each interval of
//! time, and the commits around one moment with their mutation counts.
//!
//! An operator looking for "the moment before the bad deploy" starts from
//! *when* writes happened. Both queries read only `kvr_points` (through its
//! time index) and, for the few commits shown, the history rows of each
//! commit by stamp range, so their cost does not grow with the database,
//! and a timeline of a million points is one index scan.

use rusqlite::OptionalExtension;

use super::pitr::{row_point, HistoryView, Point};
use super::StoreError;
use crate::format::Versionstamp;

/// Most intervals one timeline request may ask for: more bars than a
/// screen has pixels buys nothing and costs memory per request.
pub const MAX_BUCKETS: usize = 2000;

/// Commits per interval over `[start_ms, end_ms)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Timeline {
    pub start_ms: i64,
    /// Exclusive.
    pub end_ms: i64,
    /// Width of every interval (the last may reach past `end_ms`).
    pub bucket_ms: i64,
    /// Commits with `start_ms + i * bucket_ms <= time < start_ms + (i + 1) * bucket_ms`.
    pub counts: Vec<u64>,
    /// Commits in `[start_ms, end_ms)`.
    pub commits: u64,
}

/// One commit as the console lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Commit {
    pub point: Point,
    /// Mutations of the commit kept in the history (a prefix filter keeps
    /// fewer than the commit had).
    pub mutations: u64,
    /// The point just before: "what this commit changed" is the diff from
    /// it. `None` for the oldest point (the state before it came from a
    /// fuzzy snapshot and is not recoverable).
    pub previous: Option<Versionstamp>,
}

/// Commits around an anchor, oldest first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Around {
    pub anchor: Versionstamp,
    pub commits: Vec<Commit>,
    pub more_before: bool,
    pub more_after: bool,
}

/// Where to center a list of commits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Anchor {
    /// Exactly this point.
    Point(Versionstamp),
    /// The newest point at or before this time (as a checkout by time
    /// picks it), or the oldest point when the time is before all.
    Time(i64),
}

impl HistoryView<'_> {
    /// Where the replica stood when this view was made.
    pub fn state(&self) -> &crate::store::SyncState {
        self.state
    }

    /// The oldest and newest commit times, when there are points.
    pub fn time_span(&self) -> Result<Option<(i64, i64)>, StoreError> {
        let (lo, hi): (Option<i64>, Option<i64>) =
            self.conn
                .query_row("select min(ts_ms), max(ts_ms) from kvr_points", [], |r| {
                    Ok((r.get(0)?, r.get(1)?))
                })?;
        Ok(lo.zip(hi))
    }

    /// The oldest and the newest recoverable point.
    pub fn edges(&self) -> Result<(Option<Point>, Option<Point>), StoreError> {
        Ok((self.edge_point(false)?, self.edge_point(true)?))
    }

    /// Commits per interval: `buckets` intervals (at least 1 ms each)
    /// covering `[start_ms, end_ms)`. One ordered scan of the time index,
    /// counted here rather than grouped by SQLite (which would sort).
    pub fn timeline(
        &self,
        start_ms: i64,
        end_ms: i64,
        buckets: usize,
    ) -> Result<Timeline, StoreError> {
        // In i128: a range may be any two i64 times (the API takes epoch
        // milliseconds), whose difference does not fit in an i64.
        let span = (end_ms as i128 - start_ms as i128).max(0);
        let buckets = buckets.clamp(1, MAX_BUCKETS) as i128;
        let bucket_ms = ((span + buckets - 1) / buckets).max(1);
        let n = ((span + bucket_ms - 1) / bucket_ms) as usize;
        let mut counts = vec![0u64; n];
        let mut commits = 0;
        let mut stmt = self.conn.prepare_cached(
            "select ts_ms from kvr_points where ts_ms >= ?1 and ts_ms < ?2 order by ts_ms",
        )?;
        let mut rows = stmt.query([start_ms, end_ms])?;
        while let Some(r) = rows.next()? {
            let ts: i64 = r.get(0)?;
            let i = ((ts as i128 - start_ms as i128) / bucket_ms) as usize;
            if let Some(c) = counts.get_mut(i) {
                *c += 1;
                commits += 1;
            }
        }
        Ok(Timeline {
            start_ms,
            end_ms,
            // At most the span of two i64 over one interval: fits unless
            // one interval covers more than i64::MAX ms.
            bucket_ms: i64::try_from(bucket_ms).unwrap_or(i64::MAX),
            counts,
            commits,
        })
    }

    /// Up to `count` commits at or before the anchor (itself included) and
    /// up to `count` after it. `Ok(None)` when there are no points, or the
    /// anchor names no point.
    pub fn commits_around(
        &self,
        anchor: Anchor,
        count: usize,
    ) -> Result<Option<Around>, StoreError> {
        let anchor = match anchor {
            Anchor::Point(vs) => self.point(vs)?.map(|p| p.versionstamp),
            Anchor::Time(ms) => match self
                .conn
                .prepare_cached(
                    "select versionstamp, ts_ms from kvr_points where ts_ms <= ? \
                     order by ts_ms desc, versionstamp desc limit 1",
                )?
                .query_row([ms], row_point)
                .optional()?
            {
                Some(p) => Some(p.versionstamp),
                None => self.edge_point(false)?.map(|p| p.versionstamp),
            },
        };
        let Some(anchor) = anchor else {
            return Ok(None);
        };
        let limit = count as i64 + 1;
        // Newest first, one more than shown: the extra one is the first
        // shown commit's `previous` and says whether there are more.
        let mut before: Vec<Point> = self
            .conn
            .prepare_cached(
                "select versionstamp, ts_ms from kvr_points where versionstamp <= ? \
                 order by versionstamp desc limit ?",
            )?
            .query_map(rusqlite::params![&anchor.0[..], limit], row_point)?
            .collect::<Result<_, _>>()?;
        let mut after: Vec<Point> = self
            .conn
            .prepare_cached(
                "select versionstamp, ts_ms from kvr_points where versionstamp > ? \
                 order by versionstamp asc limit ?",
            )?
            .query_map(rusqlite::params![&anchor.0[..], limit], row_point)?
            .collect::<Result<_, _>>()?;
        let more_after = after.len() > count;
        after.truncate(count);
        // `before` holds up to count + 1: the shown ones and the previous
        // of the oldest shown, whose presence also says there are more.
        let more_before = before.len() > count;
        let oldest_previous = before.get(count).map(|p| p.versionstamp);
        before.truncate(count);
        before.reverse();
        let mut commits = Vec::with_capacity(before.len() + after.len());
        let mut previous = oldest_previous;
        for point in before.into_iter().chain(after) {
            commits.push(Commit {
                mutations: self.mutations_of(point.versionstamp)?,
                previous,
                point,
            });
            previous = Some(point.versionstamp);
        }
        Ok(Some(Around {
            anchor,
            commits,
            more_before,
            more_after,
        }))
    }

    /// The mutations of one commit in the history (applied: undo rows;
    /// ahead of a pinned position: redo rows), without the end markers a
    /// prefix filter leaves (a delete of the empty key).
    fn mutations_of(&self, vs: Versionstamp) -> Result<u64, StoreError> {
        let mut lo = [0u8; 12];
        lo[..10].copy_from_slice(&vs.0);
        let mut hi = lo;
        hi[10] = 0xff;
        hi[11] = 0xff;
        let mut n = 0;
        for table in ["kvr_undo", "kvr_redo"] {
            n += self
                .conn
                .prepare_cached(&format!(
                    "select count(*) from {table} where stamp >= ?1 and stamp <= ?2 and k != x''"
                ))?
                .query_row([&lo[..], &hi[..]], |r| r.get::<_, i64>(0))? as u64;
        }
        Ok(n)
    }
}

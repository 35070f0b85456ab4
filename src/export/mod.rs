//! Export: the state of a replica at one point, decoded, one entry per line
//! (JSON Lines or CSV), in key order, for `kvreplica export` and the admin
//! API's `GET /export` alike.
//!
//! Every entry comes from one read transaction through
//! [`StateAt`](crate::store::view::StateAt): the export is one commit of
//! the file whatever a writer (a `serve` applying logs) does meanwhile, and
//! an earlier point (`at`) is read from the history without moving what the
//! replica serves. Entries are written as they are read, so memory stays
//! flat whatever the size.
//!
//! Expiry is judged at *now*, for an earlier point too: the export of a
//! point shows what a reader would get if the replica were checked out
//! there now (reads leave expired entries out by the clock, not by the
//! point). `include_expired` keeps them.

pub mod http;

use std::io::Write;
use std::ops::ControlFlow;

use rusqlite::Connection;

use crate::decode::{parse_key, EntryRef, KeyError, CSV_HEADER};
use crate::format::Versionstamp;
use crate::store::pitr::{CheckoutError, CheckoutTarget};
use crate::store::view::{KeyRange, StateAt};
use crate::store::{self, StoreError};

/// Errors of an export, named for the person who asked for it.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error(
        "the replica's initial load is not complete yet: nothing consistent to export; \
         let `kvreplica sync` or `serve` finish it first"
    )]
    InitialIncomplete,
    /// A point that cannot be exported (the checkout's own words).
    #[error(transparent)]
    Point(CheckoutError),
    #[error("{what}: {error}")]
    Key { what: &'static str, error: KeyError },
    #[error("the range is empty: start {start} is not before end {end}")]
    EmptyRange { start: String, end: String },
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Writing the output failed (a reader that went away: `BrokenPipe`).
    #[error(transparent)]
    Write(#[from] std::io::Error),
}

impl From<CheckoutError> for ExportError {
    fn from(e: CheckoutError) -> Self {
        match e {
            CheckoutError::InitialIncomplete => ExportError::InitialIncomplete,
            CheckoutError::Store(e) => ExportError::Store(e),
            e => ExportError::Point(e),
        }
    }
}

impl From<rusqlite::Error> for ExportError {
    fn from(e: rusqlite::Error) -> Self {
        ExportError::Store(StoreError::Sqlite(e))
    }
}

/// How entries are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// One JSON object per line.
    Jsonl,
    /// A header row, then key and value as JSON text in their cells.
    Csv,
}

impl Format {
    pub fn content_type(self) -> &'static str {
        match self {
            Format::Jsonl => "application/x-ndjson",
            Format::Csv => "text/csv; charset=utf-8",
        }
    }
}

/// Which entries to export, as typed by a person (CLI flags or query
/// parameters); [`Selection::ranges`] checks and resolves them.
#[derive(Debug, Default, Clone)]
pub struct Selection {
    /// JSON keys: the entries under any of them (a union).
    pub prefixes: Vec<String>,
    /// JSON keys: from `start` (inclusive) to `end` (exclusive).
    pub start: Option<String>,
    pub end: Option<String>,
}

impl Selection {
    /// The key ranges to export, sorted and disjoint: the union of the
    /// prefixes (all keys without one), each cut to `start..end`. Overlapping
    /// prefixes (`["a"]` and `["a","b"]`) are merged, so no entry is
    /// written twice.
    pub fn ranges(&self) -> Result<Vec<KeyRange>, ExportError> {
        let key = |what: &'static str, text: &str| {
            parse_key(text).map_err(|error| ExportError::Key { what, error })
        };
        let start = self.start.as_deref().map(|s| key("start", s)).transpose()?;
        let end = self.end.as_deref().map(|s| key("end", s)).transpose()?;
        if let (Some(s), Some(e)) = (&start, &end) {
            if s >= e {
                return Err(ExportError::EmptyRange {
                    start: self.start.clone().unwrap_or_default(),
                    end: self.end.clone().unwrap_or_default(),
                });
            }
        }
        let bounds = KeyRange {
            start: start.unwrap_or_default(),
            end,
        };
        let prefixes = self
            .prefixes
            .iter()
            .map(|p| key("prefix", p).map(|k| KeyRange::prefix(&k)))
            .collect::<Result<Vec<_>, _>>()?;
        if prefixes.is_empty() {
            return Ok(vec![bounds]);
        }
        let merged = KeyRange::union(prefixes);
        Ok(merged
            .iter()
            .map(|r| r.intersect(&bounds))
            .filter(|r| r.end.as_ref().is_none_or(|e| &r.start < e))
            .collect())
    }
}

/// What to export.
#[derive(Debug, Clone)]
pub struct Request {
    /// `None`: the visible state (what the replica serves now).
    pub at: Option<CheckoutTarget>,
    /// Sorted, disjoint (see [`Selection::ranges`]).
    pub ranges: Vec<KeyRange>,
    pub include_expired: bool,
    pub format: Format,
}

/// What has been written so far.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Counts {
    pub entries: u64,
    pub bytes: u64,
}

/// Entries between two calls of the progress callback.
const PROGRESS_EVERY: u64 = 4096;

/// An export resolved in the caller's read transaction: its point is
/// fixed, and nothing is written yet, so a bad point is an error before the
/// first byte.
pub struct Export<'c> {
    conn: &'c Connection,
    state: StateAt<'c>,
    request: Request,
    now_ms: i64,
}

impl<'c> Export<'c> {
    /// Resolves `request` on `tx`, a connection the caller holds a read
    /// transaction on (`unchecked_transaction`) until the export ends.
    pub fn begin(tx: &'c Connection, request: Request) -> Result<Self, ExportError> {
        let state = store::read_state(tx)?;
        let at = match request.at {
            None => StateAt::visible(tx, &state)?,
            Some(target) => StateAt::resolve(tx, &state, target)?,
        };
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64);
        Ok(Export {
            conn: tx,
            state: at,
            request,
            now_ms,
        })
    }

    /// The commit exported.
    pub fn point(&self) -> Versionstamp {
        self.state.point()
    }

    /// How many entries the ranges hold in the visible state: a count the
    /// primary key answers without reading rows, for a progress bar's ETA.
    /// An estimate: an earlier point or expired entries differ from it.
    pub fn estimate(&self) -> Result<u64, ExportError> {
        let mut total = 0u64;
        for r in &self.request.ranges {
            let n: i64 = match &r.end {
                Some(end) => self.conn.query_row(
                    "select count(*) from kv where k >= ?1 and k < ?2",
                    rusqlite::params![r.start, end],
                    |row| row.get(0),
                )?,
                None => self.conn.query_row(
                    "select count(*) from kv where k >= ?1",
                    [&r.start],
                    |row| row.get(0),
                )?,
            };
            total += n as u64;
        }
        Ok(total)
    }

    /// Writes every entry to `out` (and flushes it), calling `progress`
    /// every few thousand entries.
    pub fn write(
        &self,
        out: &mut dyn Write,
        progress: &mut dyn FnMut(Counts),
    ) -> Result<Counts, ExportError> {
        let mut counts = Counts::default();
        if self.request.format == Format::Csv {
            out.write_all(CSV_HEADER.as_bytes())?;
            counts.bytes += CSV_HEADER.len() as u64;
        }
        let mut line = String::new();
        let mut failed = None;
        for range in &self.request.ranges {
            self.state.scan(range, |entry| {
                let exp = entry.record.expire_at_ms;
                if !(self.request.include_expired || exp < 0 || exp > self.now_ms) {
                    return ControlFlow::Continue(());
                }
                let e = EntryRef::new(&entry.key, &entry.record);
                line.clear();
                match self.request.format {
                    Format::Jsonl => {
                        e.json(&mut line);
                        line.push('\n');
                    }
                    Format::Csv => e.csv(&mut line),
                }
                if let Err(e) = out.write_all(line.as_bytes()) {
                    failed = Some(e);
                    return ControlFlow::Break(());
                }
                counts.entries += 1;
                counts.bytes += line.len() as u64;
                if counts.entries % PROGRESS_EVERY == 0 {
                    progress(counts);
                }
                ControlFlow::Continue(())
            })?;
            if let Some(e) = failed.take() {
                return Err(e.into());
            }
        }
        out.flush()?;
        progress(counts);
        Ok(counts)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sel(prefixes: &[&str], start: Option<&str>, end: Option<&str>) -> Selection {
        Selection {
            prefixes: prefixes.iter().map(|s| s.to_string()).collect(),
            start: start.map(str::to_string),
            end: end.map(str::to_string),
        }
    }

    fn k(text: &str) -> Vec<u8> {
        parse_key(text).unwrap()
    }

    #[test]
    fn overlapping_prefixes_merge_into_one_range_in_key_order() {
        let r = sel(&[r#"["b"]"#, r#"["a","x"]"#, r#"["a"]"#], None, None)
            .ranges()
            .unwrap();
        assert_eq!(
            r,
            vec![
                KeyRange::prefix(&k(r#"["a"]"#)),
                KeyRange::prefix(&k(r#"["b"]"#))
            ]
        );
        // The empty prefix is every key, and swallows the others.
        let r = sel(&[r#"["a"]"#, "[]"], None, None).ranges().unwrap();
        assert_eq!(r, vec![KeyRange::all()]);
    }

    #[test]
    fn start_and_end_cut_the_prefixes_and_an_empty_range_is_an_error() {
        let r = sel(
            &[r#"["a"]"#, r#"["c"]"#],
            Some(r#"["a", 5]"#),
            Some(r#"["b"]"#),
        )
        .ranges()
        .unwrap();
        assert_eq!(
            r,
            vec![KeyRange {
                start: k(r#"["a", 5]"#),
                end: KeyRange::prefix(&k(r#"["a"]"#)).end,
            }]
        );
        let e = sel(&[], Some(r#"["b"]"#), Some(r#"["a"]"#))
            .ranges()
            .unwrap_err();
        assert!(e.to_string().contains("is not before end"), "{e}");
        let e = sel(&["users"], None, None).ranges().unwrap_err();
        assert!(
            e.to_string().starts_with("prefix: invalid key users"),
            "{e}"
        );
    }
}

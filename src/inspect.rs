//! Looking into a replica without moving it: what changed between two
//! points (`kvreplica pitr diff`, `GET /pitr/diff`) and the entries of one
//! state (`kvreplica get`, `GET /kv`), decoded.
//!
//! Both read [`store::view`](crate::store::view) in one read transaction of
//! their own connection, so they run beside `serve` (and its sync) without
//! taking its store lock, and never change what it serves.
//!
//! Cost: a narrow diff (a commit or a few) reads the keys its points'
//! history touches, then walks the history from each point towards the
//! visible position until every one of them is found; a wide one reads
//! the history between the visible position and each of its two points
//! (`kvr_undo`/`kvr_redo`, plus one `kv` lookup per key found there); never
//! the database (see `store::view::diff`). A page of a diff reads that same
//! history again, because its totals count the whole diff (a page is
//! collected in the pass that counts them). Browsing reads `kv` from the
//! page's first key, merged with the history between the visible position
//! and the point.
//!
//! Pages carry a *cursor*: an opaque token (hex) naming the request it
//! belongs to (a hash of its parameters), the points it resolved to, and the
//! last key given. A diff's next pages read the same two points even when
//! `latest` or a time would now name another; a browse `at` a point
//! likewise. A cursor from another request, or not one at all, is refused.

use std::ops::ControlFlow;
use std::path::PathBuf;

use rusqlite::Connection;
use serde::Deserialize;
use serde_json::{json, Value};
use warp::reply::Response;
use warp::Reply;

use crate::admin::AdminError;
use crate::decode::{decode_value, key_json, parse_key, EntryRef, ValueEncoding};
use crate::format::{KvRecord, Versionstamp};
use crate::store::pitr::{CheckoutError, CheckoutTarget, Point};
use crate::store::view::{self, Change, ChangeKind, Entry, KeyRange, StateAt};
use crate::store::{self, StoreError, SyncState};

/// Default and largest page of `GET /pitr/diff` and `GET /kv`.
pub const DEFAULT_PAGE: usize = 100;
pub const MAX_PAGE: usize = 10_000;

/// Why a diff or a browse was refused.
#[derive(Debug, thiserror::Error)]
pub enum InspectError {
    /// A parameter that cannot be read (a key, a point, a cursor, a limit).
    #[error("{0}")]
    BadRequest(String),
    /// A point that cannot be resolved (not recoverable, too early…), with
    /// the checkout's words for it.
    #[error(transparent)]
    Checkout(#[from] CheckoutError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl InspectError {
    /// As an `anyhow` error whose chain still holds the checkout or store
    /// error, so the CLI's exit code is the one they map to.
    pub fn into_anyhow(self) -> anyhow::Error {
        match self {
            InspectError::BadRequest(m) => anyhow::anyhow!(m),
            InspectError::Checkout(e) => e.into(),
            InspectError::Store(e) => e.into(),
        }
    }
}

impl From<InspectError> for AdminError {
    fn from(e: InspectError) -> Self {
        match e {
            InspectError::BadRequest(m) => AdminError::BadRequest(m),
            InspectError::Checkout(e) => AdminError::Checkout(e),
            InspectError::Store(e) => AdminError::Store(e),
        }
    }
}

impl From<rusqlite::Error> for InspectError {
    fn from(e: rusqlite::Error) -> Self {
        InspectError::Store(StoreError::Sqlite(e))
    }
}

/// How many keys differ, by kind.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Totals {
    pub added: u64,
    pub removed: u64,
    pub changed: u64,
}

impl Totals {
    fn count(&mut self, kind: ChangeKind) {
        match kind {
            ChangeKind::Added => self.added += 1,
            ChangeKind::Removed => self.removed += 1,
            ChangeKind::Changed => self.changed += 1,
        }
    }

    pub fn all(&self) -> u64 {
        self.added + self.removed + self.changed
    }

    pub fn json(&self) -> Value {
        json!({"added": self.added, "removed": self.removed, "changed": self.changed})
    }
}

/// A point as answers show it; `time` is `None` only for an initial point
/// whose time the replica never learnt.
#[derive(Clone, Copy, Debug)]
pub struct PointInfo {
    pub versionstamp: Versionstamp,
    pub ts_ms: Option<i64>,
}

impl PointInfo {
    pub fn time(&self) -> Option<String> {
        self.ts_ms.map(|ts_ms| {
            Point {
                versionstamp: self.versionstamp,
                ts_ms,
            }
            .time_rfc3339()
        })
    }

    pub fn json(&self) -> Value {
        json!({"versionstamp": self.versionstamp.to_string(), "time": self.time()})
    }
}

/// What a diff pass found besides the changes it handed out.
#[derive(Debug)]
pub struct DiffSummary {
    pub from: PointInfo,
    pub to: PointInfo,
    /// Every difference in the ranges, whatever the page.
    pub totals: Totals,
    /// The last key handed out, when more changes follow it.
    pub more_after: Option<Vec<u8>>,
}

/// A state resolved in `conn`'s transaction: `latest`, a time or a
/// versionstamp, as a checkout resolves it.
fn resolve<'c>(
    conn: &'c Connection,
    state: &SyncState,
    target: CheckoutTarget,
) -> Result<(StateAt<'c>, PointInfo), InspectError> {
    let at = StateAt::resolve(conn, state, target)?;
    let point = point_info(&at);
    Ok((at, point))
}

/// The point a state is at, as answers show it.
fn point_info(at: &StateAt<'_>) -> PointInfo {
    PointInfo {
        versionstamp: at.point(),
        ts_ms: at.time_ms(),
    }
}

/// Sorted, non-overlapping ranges for a set of prefixes (every key when
/// there is none).
pub fn prefix_ranges(prefixes: &[Vec<u8>]) -> Vec<KeyRange> {
    KeyRange::union(prefixes.iter().map(|p| KeyRange::prefix(p)).collect())
}

/// The diff between the states at `from` and `to` over `ranges` (sorted,
/// apart), in key order: `emit` gets at most `limit` changes after the
/// page's start, and breaking stops the pass (a reader that went away).
///
/// A first page (`page` = `None`) counts every change in the ranges for
/// the totals, in the same pass. A later page gets the totals the first
/// one counted (they cannot change: its cursor pins both points) and the
/// last key given, so it reads only the history of the keys after that
/// key and stops once it has a full page and knows whether more follow.
pub fn diff(
    conn: &Connection,
    from: CheckoutTarget,
    to: CheckoutTarget,
    ranges: &[KeyRange],
    page: Option<(&[u8], Totals)>,
    limit: usize,
    mut emit: impl FnMut(&Change) -> ControlFlow<()>,
) -> Result<DiffSummary, InspectError> {
    // One read transaction: both states and every row are one commit.
    let tx = conn.unchecked_transaction()?;
    let state = store::read_state(&tx)?;
    let (a, from) = resolve(&tx, &state, from)?;
    let (b, to) = resolve(&tx, &state, to)?;
    let (mut totals, counting) = match page {
        Some((_, totals)) => (totals, false),
        None => (Totals::default(), true),
    };
    let ranges: Vec<KeyRange> = match page {
        Some((after, _)) => ranges
            .iter()
            .filter(|r| r.end.as_deref().is_none_or(|e| e > after))
            .map(|r| r.after(after))
            .collect(),
        None => ranges.to_vec(),
    };
    let (mut given, mut more_after, mut last, mut stopped) = (0, None, None::<Vec<u8>>, false);
    for range in &ranges {
        view::diff(&a, &b, range, |c| {
            if counting {
                totals.count(c.kind());
            }
            if given == limit {
                if more_after.is_none() {
                    more_after = last.clone();
                }
                if counting {
                    return ControlFlow::Continue(());
                }
                stopped = true;
                return ControlFlow::Break(());
            }
            given += 1;
            last = Some(c.key.clone());
            if emit(c).is_break() {
                stopped = true;
                return ControlFlow::Break(());
            }
            ControlFlow::Continue(())
        })?;
        if stopped {
            break;
        }
    }
    Ok(DiffSummary {
        from,
        to,
        totals,
        more_after,
    })
}

/// Entries of the visible state (`at` = `None`) or of the state at a
/// point, in `range`, in key order: at most `limit`, and whether more
/// follow (then the last key given).
pub fn browse(
    conn: &Connection,
    at: Option<CheckoutTarget>,
    range: &KeyRange,
    limit: usize,
    mut emit: impl FnMut(&Entry),
) -> Result<(PointInfo, Option<Vec<u8>>), InspectError> {
    let tx = conn.unchecked_transaction()?;
    let state = store::read_state(&tx)?;
    let (view, point) = state_at(&tx, &state, at)?;
    let (mut given, mut more_after, mut last) = (0, None, None::<Vec<u8>>);
    view.scan(range, |e| {
        if given == limit {
            more_after = last.take();
            return ControlFlow::Break(());
        }
        given += 1;
        last = Some(e.key.clone());
        emit(e);
        ControlFlow::Continue(())
    })?;
    Ok((point, more_after))
}

/// One key's entry in the visible state or at a point.
pub fn get(
    conn: &Connection,
    at: Option<CheckoutTarget>,
    key: &[u8],
) -> Result<(PointInfo, Option<KvRecord>), InspectError> {
    let tx = conn.unchecked_transaction()?;
    let state = store::read_state(&tx)?;
    let (view, point) = state_at(&tx, &state, at)?;
    Ok((point, view.get(key)?))
}

fn state_at<'c>(
    conn: &'c Connection,
    state: &SyncState,
    at: Option<CheckoutTarget>,
) -> Result<(StateAt<'c>, PointInfo), InspectError> {
    match at {
        Some(target) => resolve(conn, state, target),
        None => {
            let view = StateAt::visible(conn, state)?;
            let point = point_info(&view);
            Ok((view, point))
        }
    }
}

/// A key given as text in the JSON key form (`["users", "alice"]`).
pub fn key_arg(text: &str, what: &str) -> Result<Vec<u8>, InspectError> {
    parse_key(text).map_err(|e| {
        InspectError::BadRequest(format!(
            "{what}: {e} (a key is a JSON array of parts, e.g. [\"users\", \"alice\"])"
        ))
    })
}

/// A point given as text: `latest`, a 20-hex versionstamp or an RFC 3339
/// time, as `pitr checkout` reads it.
pub fn point_arg(text: &str, what: &str) -> Result<CheckoutTarget, InspectError> {
    text.parse()
        .map_err(|e: String| InspectError::BadRequest(format!("{what}: {e}")))
}

/// An entry's JSON object (the form `kvreplica export` writes).
pub fn entry_json(key: &[u8], record: &KvRecord) -> String {
    let mut out = String::new();
    EntryRef::new(key, record).json(&mut out);
    out
}

/// Appends a change's JSON object: kind, key, and the entry before and
/// after (`null` where the key is absent), fields in that order.
pub fn change_json(c: &Change, out: &mut String) {
    let side = |r: &Option<KvRecord>, out: &mut String| match r {
        Some(r) => EntryRef::new(&c.key, r).json(out),
        None => out.push_str("null"),
    };
    out.push_str(r#"{"kind":""#);
    out.push_str(c.kind().name());
    out.push_str(r#"","key":"#);
    out.push_str(&key_json(&c.key));
    out.push_str(r#","key_hex":""#);
    out.push_str(&hex::encode(&c.key));
    out.push_str(r#"","before":"#);
    side(&c.before, out);
    out.push_str(r#","after":"#);
    side(&c.after, out);
    out.push('}');
}

/// A JSON answer whose fields are JSON texts, in this order (entries are
/// rendered as text once, and read best with their first fields first).
fn json_answer(fields: &[(&str, &str)]) -> Response {
    let mut body = String::from("{");
    for (i, (name, value)) in fields.iter().enumerate() {
        if i > 0 {
            body.push(',');
        }
        body.push_str(&serde_json::to_string(name).expect("a field name"));
        body.push(':');
        body.push_str(value);
    }
    body.push('}');
    warp::reply::with_header(body, "content-type", "application/json").into_response()
}

/// A change as one line of text: kind, key, value before → after.
pub fn change_line(c: &Change) -> String {
    let value = |r: &Option<KvRecord>| match r {
        Some(r) => decode_value(ValueEncoding::from_column(r.encoding), &r.value),
        None => "(absent)".into(),
    };
    format!(
        "{:<8}{}  {} → {}\n",
        c.kind().name(),
        key_json(&c.key),
        value(&c.before),
        value(&c.after)
    )
}

/// The cursor of a page: which request it belongs to, the points it read
/// (so later pages read the same ones) and the last key given.
struct Cursor {
    request: u64,
    points: Vec<Versionstamp>,
    /// A diff's totals, counted by its first page.
    totals: Option<Totals>,
    key: Vec<u8>,
}

impl Cursor {
    fn encode(&self) -> String {
        let mut bytes = self.request.to_be_bytes().to_vec();
        for p in &self.points {
            bytes.extend_from_slice(&p.0);
        }
        if let Some(t) = self.totals {
            for n in [t.added, t.removed, t.changed] {
                bytes.extend_from_slice(&n.to_be_bytes());
            }
        }
        bytes.extend_from_slice(&self.key);
        hex::encode(bytes)
    }

    /// Reads `text` as a cursor of the request `request` carrying `points`
    /// points, and totals when `totals` (a diff's).
    fn decode(
        text: &str,
        request: u64,
        points: usize,
        totals: bool,
    ) -> Result<Cursor, InspectError> {
        let malformed = || {
            InspectError::BadRequest(format!(
                "cursor={text:?} is not a cursor of this endpoint: pass the previous page's \
                 next_cursor as it is, or leave cursor out for the first page"
            ))
        };
        let bytes = hex::decode(text).map_err(|_| malformed())?;
        let counts = if totals { 24 } else { 0 };
        if bytes.len() < 8 + 10 * points + counts {
            return Err(malformed());
        }
        let (head, rest) = bytes.split_at(8);
        if u64::from_be_bytes(head.try_into().expect("8 bytes")) != request {
            return Err(InspectError::BadRequest(
                "cursor belongs to another request (other points, prefix or key range): send it \
                 with the same parameters as the page that gave it, or leave cursor out to start \
                 again"
                    .into(),
            ));
        }
        let (stamps, rest) = rest.split_at(10 * points);
        let (counts, key) = rest.split_at(counts);
        let n =
            |i: usize| u64::from_be_bytes(counts[i * 8..i * 8 + 8].try_into().expect("8 bytes"));
        Ok(Cursor {
            request,
            points: stamps
                .chunks(10)
                .map(|c| Versionstamp::from_slice(c).expect("10 bytes"))
                .collect(),
            totals: totals.then(|| Totals {
                added: n(0),
                removed: n(1),
                changed: n(2),
            }),
            key: key.to_vec(),
        })
    }
}

/// FNV-1a of a request's parameters: stable across runs and builds, so a
/// cursor outlives a restart.
fn request_id(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for b in (part.len() as u64).to_be_bytes().iter().chain(part.iter()) {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    h
}

/// `limit=`: a whole number from 1 to [`MAX_PAGE`].
fn page_limit(raw: Option<&str>) -> Result<usize, InspectError> {
    crate::admin::whole_number(raw, "limit", MAX_PAGE, DEFAULT_PAGE)
        .map_err(InspectError::BadRequest)
}

fn query<'q, T: Deserialize<'q>>(query: &'q str, known: &str) -> Result<T, InspectError> {
    crate::admin::query_params(query, known).map_err(InspectError::BadRequest)
}

/// Runs `f` on a read-only connection of its own to the replica, off the
/// runtime: a scan never holds the sync engine's store lock nor the admin's
/// shared reader.
async fn read<T: Send + 'static>(
    db: PathBuf,
    f: impl FnOnce(&Connection) -> Result<T, InspectError> + Send + 'static,
) -> Result<T, AdminError> {
    tokio::task::spawn_blocking(move || {
        let conn = store::open_read_only(&db)?;
        Ok(f(&conn)?)
    })
    .await
    .map_err(|e| AdminError::Internal(e.to_string()))?
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DiffQuery {
    from: Option<String>,
    to: Option<String>,
    prefix: Option<String>,
    limit: Option<String>,
    cursor: Option<String>,
}

/// `GET /pitr/diff?from=&to=&prefix=&limit=&cursor=`.
pub(crate) async fn diff_endpoint(db: PathBuf, raw: &str) -> Result<Response, AdminError> {
    let q: DiffQuery = query(raw, "from, to, prefix, limit, cursor")?;
    let required = |v: Option<String>, what: &str| {
        v.ok_or_else(|| {
            InspectError::BadRequest(format!(
                "{what} is required: latest, a 20-hex versionstamp or an RFC 3339 time"
            ))
        })
    };
    let (from_text, to_text) = (required(q.from, "from")?, required(q.to, "to")?);
    let (mut from, mut to) = (point_arg(&from_text, "from")?, point_arg(&to_text, "to")?);
    let prefix = q
        .prefix
        .as_deref()
        .map(|p| key_arg(p, "prefix"))
        .transpose()?;
    let limit = page_limit(q.limit.as_deref())?;
    let request = request_id(&[
        b"diff",
        from_text.trim().as_bytes(),
        to_text.trim().as_bytes(),
        prefix.as_deref().unwrap_or(b"\xff-all"),
    ]);
    let page = match q.cursor.as_deref() {
        None => None,
        Some(c) => {
            let c = Cursor::decode(c, request, 2, true)?;
            from = CheckoutTarget::Versionstamp(c.points[0]);
            to = CheckoutTarget::Versionstamp(c.points[1]);
            Some((c.key, c.totals.expect("decoded with totals")))
        }
    };
    let ranges = prefix_ranges(prefix.as_slice());
    let (changes, summary) = read(db, move |conn| {
        let mut changes = String::from("[");
        let page = page.as_ref().map(|(k, t)| (k.as_slice(), *t));
        let summary = diff(conn, from, to, &ranges, page, limit, |c| {
            if changes.len() > 1 {
                changes.push(',');
            }
            change_json(c, &mut changes);
            ControlFlow::Continue(())
        })?;
        changes.push(']');
        Ok((changes, summary))
    })
    .await?;
    let next = summary.more_after.map(|key| {
        Cursor {
            request,
            points: vec![summary.from.versionstamp, summary.to.versionstamp],
            totals: Some(summary.totals),
            key,
        }
        .encode()
    });
    Ok(json_answer(&[
        ("from", &summary.from.json().to_string()),
        ("to", &summary.to.json().to_string()),
        ("totals", &summary.totals.json().to_string()),
        ("changes", &changes),
        ("next_cursor", &json!(next).to_string()),
    ]))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct KvQuery {
    prefix: Option<String>,
    start: Option<String>,
    end: Option<String>,
    limit: Option<String>,
    cursor: Option<String>,
    at: Option<String>,
}

/// `GET /kv?prefix=&start=&end=&limit=&cursor=&at=`.
pub(crate) async fn kv_endpoint(db: PathBuf, raw: &str) -> Result<Response, AdminError> {
    let q: KvQuery = query(raw, "prefix, start, end, limit, cursor, at")?;
    let key = |v: &Option<String>, what: &str| v.as_deref().map(|k| key_arg(k, what)).transpose();
    let (prefix, start, end) = (
        key(&q.prefix, "prefix")?,
        key(&q.start, "start")?,
        key(&q.end, "end")?,
    );
    let mut at = q.at.as_deref().map(|a| point_arg(a, "at")).transpose()?;
    let limit = page_limit(q.limit.as_deref())?;
    let mut range = prefix
        .as_deref()
        .map_or_else(KeyRange::all, KeyRange::prefix);
    if let Some(start) = &start {
        range = range.intersect(&KeyRange {
            start: start.clone(),
            end: None,
        });
    }
    if let Some(end) = &end {
        range = range.intersect(&KeyRange {
            start: Vec::new(),
            end: Some(end.clone()),
        });
    }
    let none: &[u8] = b"\xff-none";
    let request = request_id(&[
        b"kv",
        prefix.as_deref().unwrap_or(none),
        start.as_deref().unwrap_or(none),
        end.as_deref().unwrap_or(none),
        q.at.as_deref().map_or(none, |a| a.trim().as_bytes()),
    ]);
    let pinned = usize::from(at.is_some());
    if let Some(c) = q.cursor.as_deref() {
        let c = Cursor::decode(c, request, pinned, false)?;
        if let Some(p) = c.points.first() {
            at = Some(CheckoutTarget::Versionstamp(*p));
        }
        range = range.after(&c.key);
    }
    let (entries, (point, more_after)) = read(db, move |conn| {
        let mut entries = String::from("[");
        let page = browse(conn, at, &range, limit, |e| {
            if entries.len() > 1 {
                entries.push(',');
            }
            EntryRef::new(&e.key, &e.record).json(&mut entries);
        })?;
        entries.push(']');
        Ok((entries, page))
    })
    .await?;
    let next = more_after.map(|key| {
        Cursor {
            request,
            points: [point.versionstamp][..pinned].to_vec(),
            totals: None,
            key,
        }
        .encode()
    });
    Ok(json_answer(&[
        ("at", &point.json().to_string()),
        ("entries", &entries),
        ("next_cursor", &json!(next).to_string()),
    ]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_ranges_drop_nested_prefixes_and_sort() {
        let users = crate::decode::parse_key(r#"["users"]"#).unwrap();
        let alice = crate::decode::parse_key(r#"["users","alice"]"#).unwrap();
        let orders = crate::decode::parse_key(r#"["orders"]"#).unwrap();
        let ranges = prefix_ranges(&[alice, users.clone(), orders.clone()]);
        assert_eq!(
            ranges,
            vec![KeyRange::prefix(&orders), KeyRange::prefix(&users)]
        );
        assert_eq!(prefix_ranges(&[]), vec![KeyRange::all()]);
    }

    #[test]
    fn a_cursor_reads_back_only_for_its_own_request() {
        let c = Cursor {
            request: request_id(&[b"diff", b"latest", b"x"]),
            points: vec![
                Versionstamp::from_parts(7, 1),
                Versionstamp::from_parts(9, 0),
            ],
            totals: Some(Totals {
                added: 3,
                removed: 1 << 40,
                changed: 0,
            }),
            key: b"\x02k\x00".to_vec(),
        };
        let text = c.encode();
        let back = Cursor::decode(&text, c.request, 2, true).unwrap();
        assert_eq!(
            (back.points, back.totals, back.key),
            (c.points.clone(), c.totals, c.key.clone())
        );
        let other = request_id(&[b"diff", b"latest", b"y"]);
        let e = Cursor::decode(&text, other, 2, true)
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("another request"), "{e}");
        for bad in ["zz", "", "00ff"] {
            let e = Cursor::decode(bad, c.request, 2, true)
                .err()
                .unwrap()
                .to_string();
            assert!(e.contains("not a cursor"), "{bad}: {e}");
        }
    }
}

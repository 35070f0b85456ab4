//! Applying mutation logs to the replica: the hot path of the sync engine.

use rusqlite::{CachedStatement, OptionalExtension, Transaction};

use super::{set_meta, Store, StoreError};
use crate::format::{FormatError, KvRecord, LogBatch, LogEntry, LogName, LogStamp, Versionstamp};

pub(super) const SQL_PUT: &str =
    "insert or replace into kv (k, v, v_encoding, version, seq, expiration_ms) \
     values (?, ?, ?, ?, ?, ?)";
const SQL_DELETE: &str = "delete from kv where k = ?";
const SQL_GET: &str = "select v, v_encoding, version, seq, expiration_ms from kv where k = ?";
const SQL_UNDO: &str =
    "insert into kvr_undo (stamp, ts_ms, k, v, v_encoding, version, seq, expiration_ms) \
     values (?, ?, ?, ?, ?, ?, ?, ?)";
pub(super) const SQL_REDO: &str =
    "insert into kvr_redo (stamp, ts_ms, k, v, v_encoding, expiration_ms) values (?, ?, ?, ?, ?, ?)";
pub(super) const SQL_POINT: &str =
    "insert or ignore into kvr_points (versionstamp, ts_ms) values (?, ?)";

/// What one call to [`Store::apply_logs`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ApplyOutcome {
    /// Entries written to `kv`.
    pub applied: u64,
    /// Entries kept in redo (partial commit tail, or pinned).
    pub deferred: u64,
    /// The new visible commit when it moved.
    pub visible: Option<Versionstamp>,
    /// The newest recoverable point stored by this call, with its commit
    /// time (epoch ms).
    pub latest: Option<(Versionstamp, i64)>,
    /// Set when this batch reached the initial point.
    pub reached_initial: Option<Versionstamp>,
}

/// One log entry on its way to `kv`: borrowed from a fetched batch or read
/// back from redo.
struct Pending {
    stamp: LogStamp,
    ts_ms: i64,
    key: Vec<u8>,
    record: Option<KvRecord>,
}

pub(super) fn put_row(
    stmt: &mut CachedStatement<'_>,
    key: &[u8],
    r: &KvRecord,
) -> Result<(), StoreError> {
    stmt.execute(rusqlite::params![
        key,
        r.value,
        r.encoding,
        r.versionstamp.version() as i64,
        r.versionstamp.seq(),
        r.expire_at_ms
    ])?;
    Ok(())
}

pub(super) fn set_data_version(tx: &Transaction<'_>, v: Versionstamp) -> Result<(), StoreError> {
    tx.prepare_cached("update data_version set version = ?, seq = ? where k = 0")?
        .execute(rusqlite::params![v.version() as i64, v.seq()])?;
    Ok(())
}

/// Statements of the apply loop, prepared once per transaction; the
/// forward walk of a checkout uses them too.
pub(super) struct Stmts<'t> {
    get: CachedStatement<'t>,
    put: CachedStatement<'t>,
    delete: CachedStatement<'t>,
    undo: CachedStatement<'t>,
    point: CachedStatement<'t>,
}

impl<'t> Stmts<'t> {
    pub(super) fn new(tx: &'t Transaction<'_>) -> Result<Self, StoreError> {
        Ok(Stmts {
            get: tx.prepare_cached(SQL_GET)?,
            put: tx.prepare_cached(SQL_PUT)?,
            delete: tx.prepare_cached(SQL_DELETE)?,
            undo: tx.prepare_cached(SQL_UNDO)?,
            point: tx.prepare_cached(SQL_POINT)?,
        })
    }

    /// Reads a key's current row, the pre-image an undo record keeps.
    pub(super) fn get(&mut self, key: &[u8]) -> Result<Option<KvRecord>, StoreError> {
        Ok(self
            .get
            .query_row([key], |r| {
                Ok(KvRecord {
                    value: r.get(0)?,
                    encoding: r.get(1)?,
                    versionstamp: Versionstamp::from_parts(r.get::<_, i64>(2)? as u64, r.get(3)?),
                    expire_at_ms: r.get(4)?,
                })
            })
            .optional()?)
    }

    pub(super) fn write(
        &mut self,
        key: &[u8],
        record: Option<&KvRecord>,
    ) -> Result<(), StoreError> {
        match record {
            Some(r) => put_row(&mut self.put, key, r),
            None => {
                self.delete.execute([key])?;
                Ok(())
            }
        }
    }

    pub(super) fn write_undo(
        &mut self,
        stamp: LogStamp,
        ts_ms: i64,
        key: &[u8],
        prev: Option<&KvRecord>,
    ) -> Result<(), StoreError> {
        let (v, enc, version, seq, exp) = match prev {
            Some(r) => (
                Some(&r.value[..]),
                r.encoding,
                r.versionstamp.version() as i64,
                r.versionstamp.seq(),
                r.expire_at_ms,
            ),
            None => (None, 0, 0, 0, -1),
        };
        self.undo
            .execute(rusqlite::params![
                &stamp.0[..],
                ts_ms,
                key,
                v,
                enc,
                version,
                seq,
                exp
            ])
            .map_err(|e| dup_stamp(e, stamp))?;
        Ok(())
    }

    /// Writes to `kv` the last of `n` entries (in stamp order) for each key,
    /// visiting the keys in key order (a stable sort keeps each key's
    /// entries in stamp order): one read and one write per key, the B-tree
    /// walked once from left to right instead of at random, which is most
    /// of the cost of a large batch. Returns the pre-image of every entry
    /// from `undo_from` on, for its undo record.
    pub(super) fn write_in_key_order<'e>(
        &mut self,
        n: usize,
        key: impl Fn(usize) -> &'e [u8],
        record: impl Fn(usize) -> Option<&'e KvRecord>,
        undo_from: usize,
    ) -> Result<PreImages, StoreError> {
        let mut order: Vec<u32> = (0..n as u32).collect();
        order.sort_by(|&a, &b| key(a as usize).cmp(key(b as usize)));
        let mut pre = PreImages {
            of: vec![u32::MAX; n.saturating_sub(undo_from)],
            rows: Vec::new(),
            n,
            from: undo_from,
        };
        for group in order.chunk_by(|&a, &b| key(a as usize) == key(b as usize)) {
            let k = key(group[0] as usize);
            let mut prev: Option<u32> = None;
            for &i in group {
                if i as usize >= undo_from {
                    pre.of[i as usize - undo_from] = match prev {
                        Some(j) => j,
                        None => {
                            pre.rows.push(self.get(k)?);
                            (n + pre.rows.len() - 1) as u32
                        }
                    };
                }
                prev = Some(i);
            }
            let last = *group.last().expect("a group is never empty") as usize;
            self.write(k, record(last))?;
        }
        Ok(pre)
    }
}

/// Pre-images of entries written by [`Stmts::write_in_key_order`]: per
/// entry, the index of an earlier entry of the same key (below `n`) or of a
/// row read before the writes (`n` + its index in `rows`). Compact, as a
/// batch holds up to a few hundred thousand entries.
pub(super) struct PreImages {
    of: Vec<u32>,
    rows: Vec<Option<KvRecord>>,
    n: usize,
    from: usize,
}

impl PreImages {
    /// The pre-image of entry `i` (at or after `undo_from`); `record`
    /// gives the entries' own records.
    pub(super) fn get<'a>(
        &'a self,
        i: usize,
        record: impl Fn(usize) -> Option<&'a KvRecord>,
    ) -> Option<&'a KvRecord> {
        let b = self.of[i - self.from] as usize;
        if b < self.n {
            record(b)
        } else {
            self.rows[b - self.n].as_ref()
        }
    }
}

/// A primary-key clash on a stamp means the same entry arrived twice:
/// overlapping objects in the bucket.
fn dup_stamp(e: rusqlite::Error, stamp: LogStamp) -> StoreError {
    if let rusqlite::Error::SqliteFailure(f, _) = &e {
        if f.code == rusqlite::ErrorCode::ConstraintViolation {
            return StoreError::Corrupt(format!("log entry {stamp} was delivered twice"));
        }
    }
    StoreError::Sqlite(e)
}

fn insert_redo(stmt: &mut CachedStatement<'_>, p: &Pending) -> Result<(), StoreError> {
    let (v, enc, exp) = match &p.record {
        Some(r) => (Some(&r.value[..]), r.encoding, r.expire_at_ms),
        None => (None, 0, -1),
    };
    stmt.execute(rusqlite::params![
        &p.stamp.0[..],
        p.ts_ms,
        p.key,
        v,
        enc,
        exp
    ])
    .map_err(|e| dup_stamp(e, p.stamp))?;
    Ok(())
}

/// Decoded entries [`Store::apply_logs`] holds at once, counted as their
/// keys and values plus [`ENTRY_OVERHEAD`] each: a batch is written to
/// `kv` chunk by chunk inside its one transaction, so neither a log object
/// of millions of tiny entries nor a long-pinned replica's redo is ever in
/// memory whole. 8 MiB: the size of the largest batch before chunking
/// (half the default byte budget), so a catch-up writes as before.
const CHUNK_BYTES: usize = 8 << 20;
/// What one decoded entry costs besides its key and value: the `Pending`
/// struct, two allocations and its share of the key-order sort.
const ENTRY_OVERHEAD: usize = 128;

fn cost(p: &Pending) -> usize {
    ENTRY_OVERHEAD + p.key.len() + p.record.as_ref().map_or(0, |r| r.value.len())
}

/// The redo rows after `after` (all with `None`), in stamp order, up to
/// about [`CHUNK_BYTES`].
fn redo_chunk(tx: &Transaction<'_>, after: Option<LogStamp>) -> Result<Vec<Pending>, StoreError> {
    let mut stmt = tx.prepare_cached(
        "select stamp, ts_ms, k, v, v_encoding, expiration_ms from kvr_redo \
         where stamp > ? order by stamp",
    )?;
    let after = after.map_or(Vec::new(), |a| a.0.to_vec());
    let mut rows = stmt.query([after])?;
    let mut out = Vec::new();
    let mut bytes = 0;
    while let Some(r) = rows.next()? {
        let stamp: Vec<u8> = r.get(0)?;
        let stamp = LogStamp::from_slice(&stamp).ok_or_else(|| {
            StoreError::Corrupt("kvr_redo holds a stamp that is not 12 bytes".into())
        })?;
        let v: Option<Vec<u8>> = r.get(3)?;
        let p = Pending {
            stamp,
            ts_ms: r.get(1)?,
            key: r.get(2)?,
            record: v.map(|value| KvRecord {
                value,
                encoding: r.get(4).unwrap_or_default(),
                versionstamp: stamp.versionstamp(),
                expire_at_ms: r.get(5).unwrap_or(-1),
            }),
        };
        bytes += cost(&p);
        out.push(p);
        if bytes >= CHUNK_BYTES {
            break;
        }
    }
    Ok(out)
}

/// One following (not pinned) [`Store::apply_logs`] in progress: entries
/// arrive one by one in stamp order and go to `kv` up to the last commit
/// boundary, chunk by chunk; the open commit after it waits in `pending`,
/// or in redo once it is large.
struct Following<'t, 'c> {
    tx: &'t Transaction<'c>,
    stmts: Stmts<'t>,
    redo: CachedStatement<'t>,
    dv: Versionstamp,
    initial: Option<Versionstamp>,
    position: Option<LogStamp>,
    out: ApplyOutcome,
    /// Entries not written yet, after any in redo.
    pending: Vec<Pending>,
    pending_bytes: usize,
    /// `pending[..ended]` ends with a commit's last entry.
    ended: usize,
    /// Redo holds entries (before `pending`) of the commit still open.
    in_redo: bool,
    /// Entries this call put in redo.
    spilled: u64,
}

impl<'t, 'c> Following<'t, 'c> {
    fn push(&mut self, p: Pending) -> Result<(), StoreError> {
        self.pending_bytes += cost(&p);
        let end = p.stamp.is_commit_end();
        self.pending.push(p);
        if end {
            self.ended = self.pending.len();
        }
        if self.pending_bytes >= CHUNK_BYTES {
            if self.ended > 0 {
                self.write_through(self.ended)?;
            }
            // A commit open for this long is moved to redo rather than
            // held.
            if self.pending_bytes >= CHUNK_BYTES / 2 {
                for p in self.pending.drain(..) {
                    insert_redo(&mut self.redo, &p)?;
                    self.spilled += 1;
                }
                self.pending_bytes = 0;
                self.in_redo = true;
            }
        }
        Ok(())
    }

    /// Writes the entries in redo, then `pending[..n]`, which ends a commit.
    fn write_through(&mut self, n: usize) -> Result<(), StoreError> {
        if self.in_redo {
            let mut after = None;
            loop {
                let chunk = redo_chunk(self.tx, after)?;
                let Some(last) = chunk.last() else { break };
                after = Some(last.stamp);
                self.write(&chunk)?;
            }
            self.tx.execute("delete from kvr_redo", [])?;
            self.in_redo = false;
            self.spilled = 0;
        }
        let rest = self.pending.split_off(n);
        let todo = std::mem::replace(&mut self.pending, rest);
        self.write(&todo)?;
        self.pending_bytes = self.pending.iter().map(cost).sum();
        self.ended = 0;
        Ok(())
    }

    /// Writes `todo` (consecutive entries, in stamp order) to `kv` with
    /// their undo records and recoverable points.
    fn write(&mut self, todo: &[Pending]) -> Result<(), StoreError> {
        // In stamp order: checks, recoverable points, and where the undo
        // records start (after the initial point).
        let mut undo_from = if self.initial.is_some() {
            0
        } else {
            todo.len()
        };
        let mut points = Vec::new();
        for (i, p) in todo.iter().enumerate() {
            if let Some(pos) = self.position.filter(|pos| p.stamp <= *pos) {
                return Err(StoreError::Corrupt(format!(
                    "log entry {} is not after the replica's position {pos}",
                    p.stamp,
                )));
            }
            self.position = Some(p.stamp);
            if p.stamp.is_commit_end() {
                let vs = p.stamp.versionstamp();
                if self.initial.is_some() {
                    points.push((vs, p.ts_ms));
                } else if p.stamp >= self.dv.commit_end() {
                    self.initial = Some(vs);
                    self.out.reached_initial = Some(vs);
                    set_meta(self.tx, "initial_ts_ms", p.ts_ms.to_string().as_bytes())?;
                    undo_from = i + 1;
                }
            }
        }
        self.out.applied += todo.len() as u64;
        // In key order (a stable sort keeps each key's entries in stamp
        // order): one read and one write per key, and the B-tree is walked
        // once from left to right instead of at random, which is most of
        // the cost of a large chunk. The pre-image of an entry is the key's
        // previous entry in the chunk, else its row before the chunk.
        let pre = self.stmts.write_in_key_order(
            todo.len(),
            |i| &todo[i].key,
            |i| todo[i].record.as_ref(),
            undo_from,
        )?;
        // In stamp order again: undo records go to the end of their table.
        for (i, p) in todo.iter().enumerate().skip(undo_from) {
            let prev = pre.get(i, |j| todo[j].record.as_ref());
            self.stmts.write_undo(p.stamp, p.ts_ms, &p.key, prev)?;
        }
        for (vs, ts_ms) in points {
            self.stmts
                .point
                .execute(rusqlite::params![&vs.0[..], ts_ms])?;
            self.out.latest = Some((vs, ts_ms));
        }
        crate::health::STORE_WORK.progress(); // for the watchdog
        Ok(())
    }

    /// Writes what ends a commit; the open commit's entries wait in redo.
    fn finish(
        mut self,
    ) -> Result<(Option<Versionstamp>, Option<LogStamp>, ApplyOutcome), StoreError> {
        if self.ended > 0 {
            self.write_through(self.ended)?;
        }
        for p in &self.pending {
            insert_redo(&mut self.redo, p)?;
        }
        self.out.deferred = self.spilled + self.pending.len() as u64;
        Ok((self.initial, self.position, self.out))
    }
}

/// A log object as [`Store::apply_logs`] takes it: decoded already (a
/// [`LogBatch`]) or decoded entry by entry as it is written.
pub trait LogObject {
    fn name(&self) -> LogName;
    /// Commit wall-clock time of the object's mutations (epoch ms).
    fn timestamp_ms(&self) -> i64;
    /// The entries, in strictly ascending stamp order.
    fn entries(&self) -> Box<dyn Iterator<Item = Result<LogEntry, FormatError>> + '_>;
}

impl LogObject for LogBatch {
    fn name(&self) -> LogName {
        self.name
    }
    fn timestamp_ms(&self) -> i64 {
        self.timestamp_ms
    }
    fn entries(&self) -> Box<dyn Iterator<Item = Result<LogEntry, FormatError>> + '_> {
        Box::new(self.entries.iter().cloned().map(Ok))
    }
}

impl Store {
    /// Stores a run of consecutive log objects, in one transaction with the
    /// cursor that covers them.
    ///
    /// Following: entries are applied up to the last commit boundary they
    /// contain (the rest waits in redo for the next object), so the visible
    /// state moves from one boundary to another. Pinned: everything goes to
    /// redo and the visible state stays put.
    ///
    /// Fails without writing anything when an object overlaps or precedes
    /// the previous one, when the previous one ends inside a commit that
    /// this one does not continue (a gap: the end of that commit is
    /// missing), or when the snapshot is not fully loaded.
    pub fn apply_logs<L: LogObject>(
        &mut self,
        batches: Vec<L>,
    ) -> Result<ApplyOutcome, StoreError> {
        if batches.is_empty() {
            return Ok(ApplyOutcome::default());
        }
        match self.state.snapshot_ranges {
            Some((loaded, total)) if loaded == total => {}
            _ => {
                return Err(StoreError::Corrupt(
                    "logs cannot be applied before every snapshot range is loaded".into(),
                ))
            }
        }
        let dv = self.state.dv.ok_or_else(|| {
            StoreError::Corrupt("logs cannot be applied before DV is known".into())
        })?;

        // Objects must follow each other strictly: the only ordering is the
        // stamp, and the names announce the range each object covers.
        let mut prev = self.state.cursor;
        for b in &batches {
            let name = b.name();
            if let Some(p) = prev {
                if name.first <= p.last {
                    return Err(StoreError::Corrupt(format!(
                        "log object {} overlaps or precedes the previous object {} \
                         (first stamp {} is not after {})",
                        crate::backup::log_key(&name),
                        crate::backup::log_key(&p),
                        name.first,
                        p.last
                    )));
                }
            }
            if let Some(p) = prev.filter(|p| !p.last.is_commit_end()) {
                // `p` ends inside a commit: only the rest of that commit
                // may follow, or two commits would become one state.
                if name.first.versionstamp() != p.last.versionstamp() {
                    return Err(StoreError::Corrupt(format!(
                        "gap in the log: {} ends inside commit {} but {} starts commit {}",
                        crate::backup::log_key(&p),
                        p.last.versionstamp(),
                        crate::backup::log_key(&name),
                        name.first.versionstamp()
                    )));
                }
            }
            prev = Some(name);
        }
        let cursor = prev.expect("non-empty");

        let pinned = self.state.pinned;
        let consumed = super::late::names(&batches);
        let filter = &self.state.filter;
        let tx = self.conn.transaction()?;
        let (initial, position, out) = {
            let mut redo = tx.prepare_cached(SQL_REDO)?;
            // Entries the prefix filter leaves out go nowhere; a commit end
            // among them stays as its marker (see `filter.rs`).
            let entries = batches.iter().flat_map(|b| {
                let ts_ms = b.timestamp_ms();
                b.entries().filter_map(move |e| match e {
                    Ok(e) => filter.admit(e).map(|e| {
                        Ok(Pending {
                            stamp: e.stamp,
                            ts_ms,
                            key: e.key,
                            record: e.record,
                        })
                    }),
                    Err(e) => Some(Err(e)),
                })
            });
            if pinned {
                let mut out = ApplyOutcome::default();
                let mut point = tx.prepare_cached(SQL_POINT)?;
                for p in entries {
                    let p = p?;
                    if p.stamp.is_commit_end() {
                        let vs = p.stamp.versionstamp();
                        point.execute(rusqlite::params![&vs.0[..], p.ts_ms])?;
                        out.latest = Some((vs, p.ts_ms));
                    }
                    insert_redo(&mut redo, &p)?;
                    out.deferred += 1;
                }
                (self.state.initial_point, self.state.position, out)
            } else {
                let in_redo = tx.query_row("select exists (select 1 from kvr_redo)", [], |r| {
                    r.get::<_, bool>(0)
                })?;
                let mut f = Following {
                    tx: &tx,
                    stmts: Stmts::new(&tx)?,
                    redo,
                    dv,
                    initial: self.state.initial_point,
                    position: self.state.position,
                    out: ApplyOutcome::default(),
                    pending: Vec::new(),
                    pending_bytes: 0,
                    ended: 0,
                    in_redo,
                    spilled: 0,
                };
                for p in entries {
                    f.push(p?)?;
                }
                f.finish()?
            }
        };
        let mut out = out;
        set_meta(&tx, "cursor", cursor.to_string().as_bytes())?;
        super::late::record_consumed(&tx, &consumed)?;
        if let Some(i) = initial {
            set_meta(&tx, "initial_point", &i.0)?;
        }
        if let Some(p) = position {
            set_meta(&tx, "position", &p.0)?;
            if position != self.state.position && initial.is_some() {
                set_data_version(&tx, p.versionstamp())?;
                out.visible = Some(p.versionstamp());
            }
        }
        super::testhook::before_commit(|| {
            format!("log batch up to {}", crate::backup::log_key(&cursor))
        });
        tx.commit()?;
        self.state.cursor = Some(cursor);
        self.state.initial_point = initial;
        self.state.position = position;
        Ok(out)
    }
}

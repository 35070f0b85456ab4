//! Applying mutation logs to the replica: the hot path of the sync engine.

use rusqlite::{CachedStatement, OptionalExtension, Transaction};

use super::{set_meta, Store, StoreError};
use crate::format::{KvRecord, LogBatch, LogStamp, Versionstamp};

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

/// Takes every redo row out of the table, in stamp order.
fn drain_redo(tx: &Transaction<'_>) -> Result<Vec<Pending>, StoreError> {
    let mut stmt = tx.prepare_cached(
        "select stamp, ts_ms, k, v, v_encoding, expiration_ms from kvr_redo order by stamp",
    )?;
    let rows = stmt
        .query_map([], |r| {
            let stamp: Vec<u8> = r.get(0)?;
            let v: Option<Vec<u8>> = r.get(3)?;
            Ok((
                stamp,
                r.get::<_, i64>(1)?,
                r.get::<_, Vec<u8>>(2)?,
                v,
                r.get::<_, i64>(4)?,
                r.get::<_, i64>(5)?,
            ))
        })?
        .collect::<Result<Vec<_>, _>>()?;
    let mut out = Vec::with_capacity(rows.len());
    for (stamp, ts_ms, key, v, enc, exp) in rows {
        let stamp = LogStamp::from_slice(&stamp).ok_or_else(|| {
            StoreError::Corrupt("kvr_redo holds a stamp that is not 12 bytes".into())
        })?;
        out.push(Pending {
            stamp,
            ts_ms,
            key,
            record: v.map(|value| KvRecord {
                value,
                encoding: enc,
                versionstamp: stamp.versionstamp(),
                expire_at_ms: exp,
            }),
        });
    }
    tx.execute("delete from kvr_redo", [])?;
    Ok(out)
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
    pub fn apply_logs(&mut self, batches: Vec<LogBatch>) -> Result<ApplyOutcome, StoreError> {
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
            if let Some(p) = prev {
                if b.name.first <= p.last {
                    return Err(StoreError::Corrupt(format!(
                        "log object {} overlaps or precedes the previous object {} \
                         (first stamp {} is not after {})",
                        crate::backup::log_key(&b.name),
                        crate::backup::log_key(&p),
                        b.name.first,
                        p.last
                    )));
                }
            }
            if let Some(p) = prev.filter(|p| !p.last.is_commit_end()) {
                // `p` ends inside a commit: only the rest of that commit
                // may follow, or two commits would become one state.
                if b.name.first.versionstamp() != p.last.versionstamp() {
                    return Err(StoreError::Corrupt(format!(
                        "gap in the log: {} ends inside commit {} but {} starts commit {}",
                        crate::backup::log_key(&p),
                        p.last.versionstamp(),
                        crate::backup::log_key(&b.name),
                        b.name.first.versionstamp()
                    )));
                }
            }
            prev = Some(b.name);
        }
        let cursor = prev.expect("non-empty");

        let pinned = self.state.pinned;
        let mut initial = self.state.initial_point;
        let mut position = self.state.position;
        let mut out = ApplyOutcome::default();

        let incoming: usize = batches.iter().map(|b| b.entries.len()).sum();
        let consumed = super::late::names(&batches);
        let tx = self.conn.transaction()?;
        {
            let mut redo = tx.prepare_cached(SQL_REDO)?;
            let mut stmts = Stmts::new(&tx)?;
            let new_entries = batches.into_iter().flat_map(|b| {
                let ts_ms = b.timestamp_ms;
                b.entries.into_iter().map(move |e| Pending {
                    stamp: e.stamp,
                    ts_ms,
                    key: e.key,
                    record: e.record,
                })
            });
            if pinned {
                for p in new_entries {
                    if p.stamp.is_commit_end() {
                        let vs = p.stamp.versionstamp();
                        stmts.point.execute(rusqlite::params![&vs.0[..], p.ts_ms])?;
                        out.latest = Some((vs, p.ts_ms));
                    }
                    insert_redo(&mut redo, &p)?;
                    out.deferred += 1;
                }
            } else {
                let mut all = drain_redo(&tx)?;
                // Exactly sized: growing by doubling would hold up to twice
                // the batch at the peak.
                all.reserve_exact(incoming);
                all.extend(new_entries);
                let last_end = all.iter().rposition(|p| p.stamp.is_commit_end());
                let split = last_end.map_or(0, |i| i + 1);
                let todo = &all[..split];
                // In stamp order: checks, recoverable points, and where the
                // undo records start (after the initial point).
                let mut undo_from = if initial.is_some() { 0 } else { split };
                let mut points = Vec::new();
                for (i, p) in todo.iter().enumerate() {
                    if position.is_some_and(|pos| p.stamp <= pos) {
                        return Err(StoreError::Corrupt(format!(
                            "log entry {} is not after the replica's position {}",
                            p.stamp,
                            position.expect("checked")
                        )));
                    }
                    position = Some(p.stamp);
                    if p.stamp.is_commit_end() {
                        let vs = p.stamp.versionstamp();
                        if initial.is_some() {
                            points.push((vs, p.ts_ms));
                        } else if p.stamp >= dv.commit_end() {
                            initial = Some(vs);
                            out.reached_initial = Some(vs);
                            set_meta(&tx, "initial_ts_ms", p.ts_ms.to_string().as_bytes())?;
                            undo_from = i + 1;
                        }
                    }
                }
                out.applied = split as u64;
                // In key order (a stable sort keeps each key's entries in
                // stamp order): one read and one write per key, and the
                // B-tree is walked once from left to right instead of at
                // random, which is most of the cost of a large batch. The
                // pre-image of an entry is the key's previous entry in the
                // batch, else its row before the batch.
                let pre = stmts.write_in_key_order(
                    split,
                    |i| &todo[i].key,
                    |i| todo[i].record.as_ref(),
                    undo_from,
                )?;
                // In stamp order again: undo records go to the end of
                // their table.
                for (i, p) in todo.iter().enumerate().skip(undo_from) {
                    let prev = pre.get(i, |j| todo[j].record.as_ref());
                    stmts.write_undo(p.stamp, p.ts_ms, &p.key, prev)?;
                }
                for (vs, ts_ms) in points {
                    stmts.point.execute(rusqlite::params![&vs.0[..], ts_ms])?;
                    out.latest = Some((vs, ts_ms));
                }
                for p in &all[split..] {
                    insert_redo(&mut redo, p)?;
                    out.deferred += 1;
                }
            }
        }
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

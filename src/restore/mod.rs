//! `kvreplica restore`: put keys back into the primary database as they
//! were at a point of the replica, over KV Connect ([`client`]).
//!
//! The *plan* merges, key by key, the replica's state at the point (read
//! with [`StateAt`], without moving the replica) over the selected ranges
//! with the primary's current entries: **set** a key whose value, encoding
//! or expiry differs (or that is missing), **delete** one that did not
//! exist at the point (or whose expiry has passed since), **leave** one
//! that is already equal. Equal means the same value bytes and encoding,
//! and an expiry not known to differ: KV Connect's reads do not carry the
//! primary's expiry, so it is known only when the primary's versionstamp
//! is one the replica holds for that key (at the point, or in its newest
//! state). Versionstamps are never compared for equality of content, so a
//! second run after a complete one plans nothing.
//!
//! *Applying* writes the plan in atomic writes within the protocol's
//! limits; every mutation is guarded by a check of the versionstamp the
//! plan read (absent: a null check), so a write made to a key meanwhile is
//! never clobbered: the key is a *conflict*, the rest of its batch is
//! written without it. A check that fails because the key already holds
//! its target (a retried write whose answer was lost) is not a conflict.

pub mod client;
pub mod http;

use std::collections::VecDeque;
use std::ops::ControlFlow;

use denokv_proto::datapath::{AtomicWrite, Check, KvEntry, KvValue, Mutation, MutationType};
use rusqlite::Connection;

use crate::decode::{decode_value, key_json, EntryRef, ValueEncoding};
use crate::format::{KvRecord, Versionstamp};
use crate::store::pitr::{CheckoutError, CheckoutTarget};
use crate::store::view::{KeyRange, StateAt};
use crate::store::{self, StoreError};
use client::{limits, Client, ClientError, WriteOutcome};

#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    #[error("{0}")]
    BadRequest(String),
    #[error(transparent)]
    Checkout(#[from] CheckoutError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("the primary")]
    Client(#[from] ClientError),
    /// Some keys were written meanwhile by someone else and left as they
    /// are (listed in the report).
    #[error("{0} keys changed in the primary while restoring and were left as they are (conflicts); check them, then rerun with --retry-conflicts to restore them anyway")]
    Conflicts(usize),
}

/// Which keys to restore: the union of prefixes and single keys (JSON
/// keys); every key when both are empty.
#[derive(Clone, Debug, Default)]
pub struct Selection {
    pub prefixes: Vec<String>,
    pub keys: Vec<String>,
}

impl Selection {
    /// Sorted, disjoint ranges.
    pub fn ranges(&self) -> Result<Vec<KeyRange>, RestoreError> {
        let key = |what: &str, text: &str| {
            crate::decode::parse_key(text).map_err(|e| {
                RestoreError::BadRequest(format!(
                    "{what} {text}: {e} (a key is a JSON array of parts, e.g. [\"users\", \"alice\"])"
                ))
            })
        };
        let mut ranges = Vec::new();
        for p in &self.prefixes {
            ranges.push(KeyRange::prefix(&key("--prefix", p)?));
        }
        for k in &self.keys {
            let k = key("--key", k)?;
            let mut end = k.clone();
            end.push(0);
            ranges.push(KeyRange {
                start: k,
                end: Some(end),
            });
        }
        Ok(KeyRange::union(ranges))
    }
}

/// What to do with one key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    Set,
    Delete,
}

impl Action {
    pub fn name(self) -> &'static str {
        match self {
            Action::Set => "set",
            Action::Delete => "delete",
        }
    }
}

/// One key to write.
#[derive(Clone, Debug)]
pub struct Step {
    pub key: Vec<u8>,
    /// The entry at the point (`None`: delete).
    pub target: Option<KvRecord>,
    /// The primary's entry the plan read (`None`: absent); its
    /// versionstamp guards the write. Its expiry is unknown (-1).
    pub current: Option<KvRecord>,
}

impl Step {
    pub fn action(&self) -> Action {
        if self.target.is_some() {
            Action::Set
        } else {
            Action::Delete
        }
    }

    /// The plan's line for this key: action, key, value before → after.
    pub fn line(&self) -> String {
        let value = |r: &Option<KvRecord>| match r {
            Some(r) => {
                let v = decode_value(ValueEncoding::from_column(r.encoding), &r.value);
                if r.expire_at_ms > 0 {
                    format!("{v} (expires at {} ms)", r.expire_at_ms)
                } else {
                    v
                }
            }
            None => "(absent)".into(),
        };
        format!(
            "{:<8}{}  {} → {}\n",
            self.action().name(),
            key_json(&self.key),
            value(&self.current),
            value(&self.target)
        )
    }

    /// The plan's JSON object for this key: action, key, the primary's
    /// entry (`before`) and the point's (`after`), `null` where absent.
    pub fn json(&self) -> String {
        let mut out = String::from(r#"{"action":""#);
        out.push_str(self.action().name());
        out.push_str(r#"","key":"#);
        out.push_str(&key_json(&self.key));
        out.push_str(r#","key_hex":""#);
        out.push_str(&hex::encode(&self.key));
        out.push('"');
        for (name, side) in [("before", &self.current), ("after", &self.target)] {
            out.push_str(&format!(r#","{name}":"#));
            match side {
                Some(r) => EntryRef::new(&self.key, r).json(&mut out),
                None => out.push_str("null"),
            }
        }
        out.push('}');
        out
    }

    /// The guarded mutation and its check.
    fn write(&self) -> (Check, Mutation) {
        let check = Check {
            key: self.key.clone(),
            versionstamp: self
                .current
                .as_ref()
                .map(|c| c.versionstamp.0.to_vec())
                .unwrap_or_default(),
        };
        let mutation = match &self.target {
            Some(t) => Mutation {
                key: self.key.clone(),
                value: Some(KvValue {
                    data: t.value.clone(),
                    encoding: t.encoding as i32,
                }),
                mutation_type: MutationType::MSet as i32,
                expire_at_ms: t.expire_at_ms.max(0),
                ..Default::default()
            },
            None => Mutation {
                key: self.key.clone(),
                mutation_type: MutationType::MDelete as i32,
                ..Default::default()
            },
        };
        (check, mutation)
    }

    /// The bytes this step adds to a write (check and mutation).
    fn size(&self) -> usize {
        2 * self.key.len() + self.target.as_ref().map_or(0, |t| t.value.len())
    }
}

/// The plan: the keys to write, in key order, and the count left alone.
#[derive(Debug, Default)]
pub struct Plan {
    pub point: Option<Versionstamp>,
    pub steps: Vec<Step>,
    /// Keys present on either side and already equal.
    pub unchanged: u64,
}

impl Plan {
    pub fn count(&self, action: Action) -> usize {
        self.steps.iter().filter(|s| s.action() == action).count()
    }
}

/// The current time in ms since the epoch (expiry is judged against it).
fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// The primary's entry as a record (its expiry unknown: -1).
fn current_record(e: KvEntry) -> Result<(Vec<u8>, KvRecord), RestoreError> {
    let versionstamp = Versionstamp::from_slice(&e.versionstamp).ok_or_else(|| {
        RestoreError::Client(ClientError::Protocol {
            what: "snapshot_read",
            detail: format!("a versionstamp of {} bytes", e.versionstamp.len()),
        })
    })?;
    Ok((
        e.key,
        KvRecord {
            value: e.value,
            encoding: e.encoding as i64,
            versionstamp,
            expire_at_ms: -1,
        },
    ))
}

/// The replica's entries at `target` over `ranges`, in key order (expired
/// entries included: they plan a delete), with its newest state for the
/// expiry checks (see [`decide`]).
pub struct PointState {
    pub point: Versionstamp,
    pub entries: Vec<(Vec<u8>, KvRecord)>,
    /// The newest state's entries of the same ranges, by key.
    pub latest: std::collections::HashMap<Vec<u8>, KvRecord>,
}

impl PointState {
    /// Reads it in one read transaction of `conn`.
    pub fn read(
        conn: &Connection,
        target: CheckoutTarget,
        ranges: &[KeyRange],
    ) -> Result<PointState, RestoreError> {
        let tx = conn.unchecked_transaction().map_err(StoreError::from)?;
        let state = store::read_state(&tx)?;
        let at = StateAt::resolve(&tx, &state, target)?;
        let latest = StateAt::resolve(&tx, &state, CheckoutTarget::Latest)?;
        let mut entries = Vec::new();
        let mut newest = std::collections::HashMap::new();
        for r in ranges {
            at.scan(r, |e| {
                entries.push((e.key.clone(), e.record.clone()));
                ControlFlow::Continue(())
            })?;
            latest.scan(r, |e| {
                newest.insert(e.key.clone(), e.record.clone());
                ControlFlow::Continue(())
            })?;
        }
        for (key, record) in &entries {
            check_limits(key, Some(record))?;
        }
        Ok(PointState {
            point: at.point(),
            entries,
            latest: newest,
        })
    }
}

/// Refuses a key or value the protocol cannot write (a backup of Deploy
/// never holds one; a hand-made file might).
fn check_limits(key: &[u8], record: Option<&KvRecord>) -> Result<(), RestoreError> {
    if key.len() > limits::MAX_WRITE_KEY_SIZE_BYTES {
        return Err(RestoreError::BadRequest(format!(
            "key {} is {} bytes, more than KV Connect writes ({})",
            key_json(key),
            key.len(),
            limits::MAX_WRITE_KEY_SIZE_BYTES
        )));
    }
    if let Some(r) = record.filter(|r| r.value.len() > limits::MAX_VALUE_SIZE_BYTES) {
        return Err(RestoreError::BadRequest(format!(
            "the value of {} is {} bytes, more than KV Connect writes ({})",
            key_json(key),
            r.value.len(),
            limits::MAX_VALUE_SIZE_BYTES
        )));
    }
    Ok(())
}

/// The step for one key, or `None` when it is already as it was.
fn decide(
    key: &[u8],
    target: Option<&KvRecord>,
    current: Option<&KvRecord>,
    latest: Option<&KvRecord>,
    now: i64,
) -> Option<Step> {
    let target = target.filter(|t| t.expire_at_ms <= 0 || t.expire_at_ms > now);
    let equal = match (target, current) {
        (None, None) => true,
        (Some(t), Some(c)) => {
            let same_content = t.value == c.value && t.encoding == c.encoding;
            // The primary's expiry is known when its entry is one the
            // replica has: the point's own write, or the newest state's.
            let known_expiry = if c.versionstamp == t.versionstamp {
                Some(t.expire_at_ms)
            } else {
                latest
                    .filter(|l| l.versionstamp == c.versionstamp)
                    .map(|l| l.expire_at_ms)
            };
            same_content && known_expiry.is_none_or(|e| e.max(0) == t.expire_at_ms.max(0))
        }
        _ => false,
    };
    (!equal).then(|| Step {
        key: key.to_vec(),
        target: target.cloned(),
        current: current.cloned(),
    })
}

/// Plans the restore of `ranges` to `point` against the primary's current
/// entries.
pub async fn plan(
    client: &mut Client,
    point: &PointState,
    ranges: &[KeyRange],
) -> Result<Plan, RestoreError> {
    let mut primary = Vec::new();
    for r in ranges {
        let mut failed = None;
        client
            .read_range(&r.start, r.end.as_deref(), |e| match current_record(e) {
                Ok(kv) => primary.push(kv),
                Err(e) => failed = Some(e),
            })
            .await?;
        if let Some(e) = failed {
            return Err(e);
        }
    }
    let now = now_ms();
    let mut plan = Plan {
        point: Some(point.point),
        ..Plan::default()
    };
    let (mut a, mut b) = (point.entries.iter().peekable(), primary.iter().peekable());
    loop {
        let (key, target, current) = match (a.peek(), b.peek()) {
            (None, None) => break,
            (Some((ka, ra)), Some((kb, rb))) if ka == kb => {
                let r = (ka, Some(ra), Some(rb));
                a.next();
                b.next();
                r
            }
            (Some((ka, ra)), Some((kb, _))) if ka < kb => {
                a.next();
                (ka, Some(ra), None)
            }
            (Some((ka, ra)), None) => {
                a.next();
                (ka, Some(ra), None)
            }
            (_, Some((kb, rb))) => {
                b.next();
                (kb, None, Some(rb))
            }
        };
        match decide(key, target, current, point.latest.get(key), now) {
            Some(step) => plan.steps.push(step),
            None if target.is_some() || current.is_some() => plan.unchanged += 1,
            None => {}
        }
    }
    Ok(plan)
}

/// Re-plans `keys` (conflicts) against the primary as it is now.
pub async fn replan(
    client: &mut Client,
    point: &PointState,
    keys: &[Vec<u8>],
) -> Result<Plan, RestoreError> {
    let now = now_ms();
    let mut plan = Plan {
        point: Some(point.point),
        ..Plan::default()
    };
    for key in keys {
        let current = client.get(key).await?.map(current_record).transpose()?;
        let target = point
            .entries
            .binary_search_by(|(k, _)| k.as_slice().cmp(key))
            .ok()
            .map(|i| &point.entries[i].1);
        let current = current.map(|(_, r)| r);
        match decide(key, target, current.as_ref(), point.latest.get(key), now) {
            Some(step) => plan.steps.push(step),
            None => plan.unchanged += 1,
        }
    }
    Ok(plan)
}

/// How an apply ended.
#[derive(Debug, Default)]
pub struct Applied {
    /// Keys written (set or deleted).
    pub written: u64,
    /// Keys that already held their target when their check failed.
    pub already: u64,
    /// Keys changed by someone else since the plan read them.
    pub conflicts: Vec<Vec<u8>>,
}

/// Apply settings.
#[derive(Clone, Copy, Debug)]
pub struct ApplyOptions {
    /// Keys per atomic write (1 to [`limits::MAX_CHECKS`]).
    pub batch: usize,
}

impl Default for ApplyOptions {
    fn default() -> Self {
        ApplyOptions {
            batch: limits::MAX_CHECKS,
        }
    }
}

/// The largest batch the protocol allows.
pub const MAX_BATCH: usize = limits::MAX_CHECKS;

/// Writes `plan`'s steps in guarded batches; `progress` gets the number of
/// keys settled so far after every batch.
pub async fn apply(
    client: &mut Client,
    plan: &Plan,
    options: ApplyOptions,
    mut progress: impl FnMut(u64),
) -> Result<Applied, RestoreError> {
    let batch_size = options.batch.clamp(1, MAX_BATCH);
    let mut applied = Applied::default();
    let mut pending: VecDeque<&Step> = plan.steps.iter().collect();
    let mut batch_no = 0u64;
    while !pending.is_empty() {
        let mut batch = Vec::new();
        let mut bytes = 0;
        while let Some(step) = pending.front() {
            if batch.len() == batch_size
                || batch.len() == limits::MAX_MUTATIONS
                || (!batch.is_empty()
                    && bytes + step.size() > limits::MAX_TOTAL_MUTATION_SIZE_BYTES)
            {
                break;
            }
            bytes += step.size();
            batch.push(pending.pop_front().expect("a front"));
        }
        batch_no += 1;
        testhook::before_batch(batch_no);
        write_batch(client, batch, &mut applied).await?;
        progress(applied.written + applied.already + applied.conflicts.len() as u64);
    }
    Ok(applied)
}

/// Writes one batch: the steps whose checks fail are taken out (conflicts,
/// or already restored) and the rest written again without them.
async fn write_batch(
    client: &mut Client,
    mut batch: Vec<&Step>,
    applied: &mut Applied,
) -> Result<(), RestoreError> {
    while !batch.is_empty() {
        let (checks, mutations) = batch.iter().map(|s| s.write()).unzip();
        let write = AtomicWrite {
            checks,
            mutations,
            enqueues: Vec::new(),
        };
        match client.atomic_write(&write).await? {
            WriteOutcome::Committed => {
                applied.written += batch.len() as u64;
                return Ok(());
            }
            WriteOutcome::ChecksFailed(failed) => {
                // A server that does not say which check failed: the keys
                // are tried one by one.
                if failed.is_empty() || failed.iter().any(|&i| i >= batch.len()) {
                    if batch.len() == 1 {
                        settle_failed(client, batch[0], applied).await?;
                        return Ok(());
                    }
                    for step in batch {
                        Box::pin(write_batch(client, vec![step], applied)).await?;
                    }
                    return Ok(());
                }
                let mut rest = Vec::new();
                for (i, step) in batch.into_iter().enumerate() {
                    if failed.contains(&i) {
                        settle_failed(client, step, applied).await?;
                    } else {
                        rest.push(step);
                    }
                }
                batch = rest;
            }
        }
    }
    Ok(())
}

/// A step whose check failed: already at its target (our own earlier
/// write), or a conflict.
async fn settle_failed(
    client: &mut Client,
    step: &Step,
    applied: &mut Applied,
) -> Result<(), RestoreError> {
    let now = client.get(&step.key).await?;
    let done = match (&step.target, &now) {
        (None, None) => true,
        (Some(t), Some(n)) => t.value == n.value && t.encoding == n.encoding as i64,
        _ => false,
    };
    if done {
        applied.already += 1;
    } else {
        applied.conflicts.push(step.key.clone());
    }
    Ok(())
}

/// Connects to the primary and refuses it when it takes no writes.
pub async fn connect(url: &str, token: &str) -> Result<Client, RestoreError> {
    let mut client = Client::connect(url, token).await?;
    client.ensure_writable().await?;
    Ok(client)
}

/// Rounds of `--retry-conflicts` at most (each re-reads the keys).
const RETRY_ROUNDS: usize = 3;

/// Applies `plan`; with `retry_conflicts`, plans the conflicts again
/// against their new entries and writes them (a bounded number of rounds).
pub async fn apply_all(
    client: &mut Client,
    point: &PointState,
    plan: &Plan,
    options: ApplyOptions,
    retry_conflicts: bool,
    progress: &mut (dyn FnMut(u64) + Send),
) -> Result<Applied, RestoreError> {
    let mut applied = apply(client, plan, options, &mut *progress).await?;
    let mut rounds = 0;
    while retry_conflicts && !applied.conflicts.is_empty() && rounds < RETRY_ROUNDS {
        rounds += 1;
        let again = replan(client, point, &applied.conflicts).await?;
        let more = apply(client, &again, options, &mut *progress).await?;
        applied.written += more.written;
        applied.already += more.already + again.unchanged;
        applied.conflicts = more.conflicts;
    }
    Ok(applied)
}

/// The test-only pause between batches (`tests/restore.rs`): with
/// `KVREPLICA_TEST_RESTORE_PAUSE_BEFORE_BATCH=<n>`, the apply prints
/// [`testhook::MARKER`] on stderr before its n-th batch and waits for a
/// line on stdin, so a test can write to the primary (a conflict) or kill
/// the process (an interrupted apply) at that exact moment.
mod testhook {
    pub const MARKER: &str = "kvreplica test hook: restore paused before batch";
    const VAR: &str = "KVREPLICA_TEST_RESTORE_PAUSE_BEFORE_BATCH";

    pub fn before_batch(n: u64) {
        let Ok(v) = std::env::var(VAR) else { return };
        if v.parse::<u64>().ok() != Some(n) {
            return;
        }
        eprintln!("{MARKER} {n}");
        let mut line = String::new();
        let _ = std::io::stdin().read_line(&mut line);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(value: &[u8], vs: u8, expire: i64) -> KvRecord {
        KvRecord {
            value: value.to_vec(),
            encoding: 3,
            versionstamp: Versionstamp([vs; 10]),
            expire_at_ms: expire,
        }
    }

    #[test]
    fn equal_content_is_left_and_expiry_decides_only_where_known() {
        let now = 1_000;
        let k = b"k";
        // Same bytes, another versionstamp, expiry unknown: left.
        assert!(decide(
            k,
            Some(&rec(b"a", 1, -1)),
            Some(&rec(b"a", 2, -1)),
            None,
            now
        )
        .is_none());
        // Another value: set, guarded by the primary's versionstamp.
        let s = decide(
            k,
            Some(&rec(b"a", 1, -1)),
            Some(&rec(b"b", 2, -1)),
            None,
            now,
        )
        .unwrap();
        assert_eq!(s.action(), Action::Set);
        assert_eq!(s.write().0.versionstamp, vec![2; 10]);
        // Same bytes, the primary's entry is the newest state's, which
        // expires: its expiry differs from the point's, so set.
        let latest = rec(b"a", 2, 5_000);
        let s = decide(
            k,
            Some(&rec(b"a", 1, -1)),
            Some(&rec(b"a", 2, -1)),
            Some(&latest),
            now,
        );
        assert_eq!(s.unwrap().write().1.expire_at_ms, 0);
        // Expired by now: deleted; absent on both sides: nothing.
        let s = decide(
            k,
            Some(&rec(b"a", 1, 500)),
            Some(&rec(b"a", 1, -1)),
            None,
            now,
        )
        .unwrap();
        assert_eq!(s.action(), Action::Delete);
        assert!(decide(k, Some(&rec(b"a", 1, 500)), None, None, now).is_none());
        // Missing in the primary: set with a null check.
        let s = decide(k, Some(&rec(b"a", 1, 9_000)), None, None, now).unwrap();
        let (check, m) = s.write();
        assert!(check.versionstamp.is_empty());
        assert_eq!(m.expire_at_ms, 9_000);
    }

    #[test]
    fn keys_and_prefixes_merge_into_sorted_disjoint_ranges() {
        let sel = Selection {
            prefixes: vec![r#"["a"]"#.into()],
            keys: vec![r#"["a","x"]"#.into(), r#"["b"]"#.into()],
        };
        let r = sel.ranges().unwrap();
        assert_eq!(r.len(), 2, "{r:?}");
        assert!(r[0].contains(&crate::decode::parse_key(r#"["a","x"]"#).unwrap()));
        let bad = Selection {
            prefixes: vec!["nope".into()],
            keys: vec![],
        };
        assert!(bad
            .ranges()
            .unwrap_err()
            .to_string()
            .contains("--prefix nope"));
    }
}

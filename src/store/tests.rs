//! Store-level tests with synthetic logs: apply in odd batch shapes, pin,
//! and check out every point in random order against a model.

use std::collections::BTreeMap;

use super::pitr::{CheckoutError, CheckoutTarget};
use super::*;
use crate::format::{
    KvRecord, LogBatch, LogEntry, LogName, LogStamp, SnapshotEntry, SnapshotName, Versionstamp,
};

type Model = BTreeMap<Vec<u8>, KvRecord>;

/// Deterministic generator (splitmix64) so failures reproduce.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

struct Commit {
    vs: Versionstamp,
    ts_ms: i64,
    entries: Vec<LogEntry>,
}

fn history(rng: &mut Rng, commits: usize) -> Vec<Commit> {
    let mut version = 1000u64;
    (0..commits)
        .map(|i| {
            version += 1 + rng.below(5);
            let vs = Versionstamp::from_parts(version, rng.below(2) as u16);
            let n = 1 + rng.below(4) as usize;
            let mut keys: Vec<Vec<u8>> = (0..n).map(|_| vec![b'k', rng.below(12) as u8]).collect();
            keys.sort();
            keys.dedup();
            let last = keys.len() - 1;
            let entries = keys
                .into_iter()
                .enumerate()
                .map(|(j, key)| {
                    let mut s = [0u8; 12];
                    s[..10].copy_from_slice(&vs.0);
                    let idx = if j == last { 0xffff } else { j as u16 };
                    s[10..].copy_from_slice(&idx.to_be_bytes());
                    let stamp = LogStamp(s);
                    let record = (rng.below(4) != 0).then(|| KvRecord {
                        value: format!("v{i}-{j}").into_bytes(),
                        encoding: 3,
                        versionstamp: vs,
                        expire_at_ms: -1,
                    });
                    LogEntry { stamp, key, record }
                })
                .collect();
            Commit {
                vs,
                ts_ms: 1_700_000_000_000 + i as i64 * 1000,
                entries,
            }
        })
        .collect()
}

/// Cuts the flattened entries into log objects at arbitrary places,
/// including in the middle of commits.
fn objects(rng: &mut Rng, commits: &[Commit]) -> Vec<LogBatch> {
    let flat: Vec<(i64, &LogEntry)> = commits
        .iter()
        .flat_map(|c| c.entries.iter().map(move |e| (c.ts_ms, e)))
        .collect();
    let mut out = Vec::new();
    let mut i = 0;
    let mut monoseq = 1;
    while i < flat.len() {
        let n = (1 + rng.below(6) as usize).min(flat.len() - i);
        let part = &flat[i..i + n];
        out.push(LogBatch {
            name: LogName {
                format: 1,
                monoseq,
                first: part[0].1.stamp,
                last: part[n - 1].1.stamp,
            },
            timestamp_ms: part[n - 1].0,
            entries: part.iter().map(|(_, e)| (*e).clone()).collect(),
        });
        monoseq += 1 + rng.below(3);
        i += n;
    }
    out
}

fn model_after(snapshot: &Model, commits: &[Commit], upto: usize) -> Model {
    let mut m = snapshot.clone();
    for c in &commits[..=upto] {
        for e in &c.entries {
            match &e.record {
                Some(r) => m.insert(e.key.clone(), r.clone()),
                None => m.remove(&e.key),
            };
        }
    }
    m
}

fn kv(store: &Store) -> Model {
    let mut stmt = store
        .conn
        .prepare("select k, v, v_encoding, version, seq, expiration_ms from kv")
        .unwrap();
    stmt.query_map([], |r| {
        Ok((
            r.get::<_, Vec<u8>>(0)?,
            KvRecord {
                value: r.get(1)?,
                encoding: r.get(2)?,
                versionstamp: Versionstamp::from_parts(r.get::<_, i64>(3)? as u64, r.get(4)?),
                expire_at_ms: r.get(5)?,
            },
        ))
    })
    .unwrap()
    .collect::<Result<_, _>>()
    .unwrap()
}

fn seeded_store(dir: &tempfile::TempDir, snapshot: &Model, dv: Versionstamp) -> Store {
    let mut store = Store::open(&dir.path().join("r.sqlite")).unwrap();
    store.bind_source("test://x").unwrap();
    store.set_dv(dv).unwrap();
    let name: SnapshotName = "0001_0000000000000001_0000000000000000".parse().unwrap();
    store.record_snapshot_ranges(&[name]).unwrap();
    let entries: Vec<SnapshotEntry> = snapshot
        .iter()
        .map(|(k, r)| SnapshotEntry {
            key: k.clone(),
            record: r.clone(),
        })
        .collect();
    store
        .load_snapshot_range(&name, entries.into_iter().map(Ok))
        .unwrap();
    store
}

#[test]
fn apply_then_checkout_every_point_in_random_order() {
    for seed in 1..=4u64 {
        let mut rng = Rng(seed);
        let commits = history(&mut rng, 80);
        let batches = objects(&mut rng, &commits);
        let snapshot: Model = Model::new();
        // DV at commit 10: commits 0..=10 are replayed without history.
        let initial = 10;
        let dv = commits[initial].vs;
        let dir = tempfile::tempdir().unwrap();
        let mut store = seeded_store(&dir, &snapshot, dv);

        // Apply in chunks of 1..5 objects; after each chunk the visible
        // state must be exactly the model at the last complete commit.
        let mut rest = &batches[..];
        while !rest.is_empty() {
            let n = (1 + rng.below(5) as usize).min(rest.len());
            store.apply_logs(rest[..n].to_vec()).unwrap();
            rest = &rest[n..];
            if let Some(v) = store.state().visible() {
                let idx = commits.iter().position(|c| c.vs == v).unwrap();
                assert!(idx >= initial);
                assert_eq!(
                    kv(&store),
                    model_after(&snapshot, &commits, idx),
                    "seed {seed} at {v}"
                );
            }
        }
        assert_eq!(store.state().initial_point, Some(dv));
        let last = commits.len() - 1;
        assert_eq!(store.state().visible(), Some(commits[last].vs));

        let points = store
            .history()
            .points(None, None, None, usize::MAX)
            .unwrap();
        assert_eq!(
            points.len(),
            last - initial,
            "every commit after the initial point"
        );
        assert_eq!(points[0].versionstamp, commits[last].vs, "newest first");

        let mut order: Vec<usize> = (initial + 1..=last).collect();
        for i in (1..order.len()).rev() {
            order.swap(i, rng.below(i as u64 + 1) as usize);
        }
        for idx in order.into_iter().take(30) {
            let out = store
                .checkout(CheckoutTarget::Versionstamp(commits[idx].vs))
                .unwrap();
            assert!(out.pinned);
            assert_eq!(
                kv(&store),
                model_after(&snapshot, &commits, idx),
                "seed {seed} checkout {idx}"
            );
        }
        // The initial point is not recoverable.
        assert!(matches!(
            store.checkout(CheckoutTarget::Versionstamp(dv)),
            Err(CheckoutError::NotAPoint { .. })
        ));
        store.checkout(CheckoutTarget::Latest).unwrap();
        assert!(!store.state().pinned);
        assert_eq!(kv(&store), model_after(&snapshot, &commits, last));
        store.integrity_check().unwrap();
    }
}

#[test]
fn pinned_replica_stores_new_logs_without_showing_them() {
    let mut rng = Rng(42);
    let commits = history(&mut rng, 40);
    let batches = objects(&mut rng, &commits);
    let dv = commits[0].vs;
    let dir = tempfile::tempdir().unwrap();
    let mut store = seeded_store(&dir, &Model::new(), dv);
    let half = batches.len() / 2;
    store.apply_logs(batches[..half].to_vec()).unwrap();
    let visible = store.state().visible().unwrap();
    let idx = commits.iter().position(|c| c.vs == visible).unwrap();
    let target = commits[idx / 2 + 1].vs;
    store
        .checkout(CheckoutTarget::Versionstamp(target))
        .unwrap();
    let pinned_state = kv(&store);
    let out = store.apply_logs(batches[half..].to_vec()).unwrap();
    assert_eq!(out.visible, None);
    assert_eq!(
        kv(&store),
        pinned_state,
        "pinned: the visible state does not move"
    );
    assert_eq!(store.state().visible(), Some(target));
    // The pin survives a reopen.
    drop(store);
    let mut store = Store::open(&dir.path().join("r.sqlite")).unwrap();
    assert!(store.state().pinned);
    assert_eq!(store.state().visible(), Some(target));
    let out = store.checkout(CheckoutTarget::Latest).unwrap();
    assert_eq!(out.to.versionstamp, commits.last().unwrap().vs);
    assert_eq!(
        kv(&store),
        model_after(&Model::new(), &commits, commits.len() - 1)
    );
}

/// A store with 20 random commits applied (seed 7) and those commits.
fn applied_history(dir: &tempfile::TempDir) -> (Store, Vec<Commit>) {
    let mut rng = Rng(7);
    let commits = history(&mut rng, 20);
    let batches = objects(&mut rng, &commits);
    let mut store = seeded_store(dir, &Model::new(), commits[0].vs);
    store.apply_logs(batches).unwrap();
    (store, commits)
}

#[test]
fn checkout_by_time_picks_newest_point_at_or_before() {
    let dir = tempfile::tempdir().unwrap();
    let (mut store, _) = applied_history(&dir);
    let points = store.history().points(None, None, None, 100).unwrap();
    // Object timestamps are those of their last commit, so look the
    // expected answer up in the stored points rather than the commits.
    for p in &points {
        let t = chrono::DateTime::from_timestamp_millis(p.ts_ms).unwrap();
        let out = store.checkout(CheckoutTarget::Timestamp(t)).unwrap();
        let want = points
            .iter()
            .filter(|q| q.ts_ms <= p.ts_ms)
            .map(|q| q.versionstamp)
            .max()
            .unwrap();
        assert_eq!(out.to.versionstamp, want, "exact match");
        let between = t + chrono::Duration::milliseconds(1);
        if p.ts_ms == points[0].ts_ms {
            // Past the newest point: refused rather than pinned there.
            assert!(matches!(
                store.checkout(CheckoutTarget::Timestamp(between)),
                Err(CheckoutError::AfterNewest { .. })
            ));
            continue;
        }
        let out = store.checkout(CheckoutTarget::Timestamp(between)).unwrap();
        assert_eq!(out.to.versionstamp, want, "between points");
    }
    let earliest = points.last().unwrap();
    let before = chrono::DateTime::from_timestamp_millis(earliest.ts_ms - 1).unwrap();
    assert!(matches!(
        store.checkout(CheckoutTarget::Timestamp(before)),
        Err(CheckoutError::TooEarly { .. })
    ));
}

#[test]
fn overlapping_objects_are_refused_and_nothing_is_written() {
    let mut rng = Rng(3);
    let commits = history(&mut rng, 10);
    let batches = objects(&mut rng, &commits);
    let dir = tempfile::tempdir().unwrap();
    let mut store = seeded_store(&dir, &Model::new(), commits[0].vs);
    store.apply_logs(batches[..3].to_vec()).unwrap();
    let before = (store.state().clone(), kv(&store));
    let err = store
        .apply_logs(vec![batches[2].clone(), batches[3].clone()])
        .unwrap_err();
    assert!(err.to_string().contains("overlaps or precedes"), "{err}");
    assert_eq!((store.state().clone(), kv(&store)), before);
}

#[test]
fn a_replica_is_bound_to_its_source() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("r.sqlite");
    let mut store = Store::open(&path).unwrap();
    store.bind_source("s3://a/p/").unwrap();
    // A second writer is refused while the first holds the lock.
    assert!(matches!(Store::open(&path), Err(StoreError::Locked { .. })));
    drop(store);
    let mut store = Store::open(&path).unwrap();
    store.bind_source("s3://a/p/").unwrap();
    let err = store.bind_source("s3://b/p/").unwrap_err();
    assert!(
        err.to_string().contains("delete"),
        "says how to start over: {err}"
    );
}

#[test]
fn deno_layout_is_present() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("r.sqlite")).unwrap();
    let v: i64 = store
        .conn
        .query_row("select version from migration_state where k = 0", [], |r| {
            r.get(0)
        })
        .unwrap();
    assert_eq!(v, 3);
    for t in ["kv", "data_version", "queue", "queue_running"] {
        let n: i64 = store
            .conn
            .query_row(
                "select count(*) from sqlite_master where name = ?",
                [t],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(n, 1, "{t}");
    }
}

#[test]
fn retention_prunes_old_points_and_keeps_the_rest_recoverable() {
    let mut rng = Rng(11);
    let commits = history(&mut rng, 60);
    let batches = objects(&mut rng, &commits);
    let dir = tempfile::tempdir().unwrap();
    let mut store = seeded_store(&dir, &Model::new(), commits[0].vs);
    store.apply_logs(batches).unwrap();
    let before = store
        .history()
        .points(None, None, None, usize::MAX)
        .unwrap();
    let removed = store
        .prune_history(super::pitr::Retention {
            max_points: Some(10),
            max_age: None,
        })
        .unwrap();
    let after = store
        .history()
        .points(None, None, None, usize::MAX)
        .unwrap();
    assert_eq!(after.len(), 10);
    assert_eq!(removed as usize, before.len() - 10);
    assert_eq!(after[..], before[..10]);
    // Every kept point still checks out exactly.
    for p in after.iter().rev() {
        store
            .checkout(CheckoutTarget::Versionstamp(p.versionstamp))
            .unwrap();
        let idx = commits.iter().position(|c| c.vs == p.versionstamp).unwrap();
        assert_eq!(kv(&store), model_after(&Model::new(), &commits, idx));
    }
    // A pruned point is gone.
    assert!(store
        .checkout(CheckoutTarget::Versionstamp(before[20].versionstamp))
        .is_err());
    // By age: keep points within 5 s of the newest (commits are 1 s apart).
    store.checkout(CheckoutTarget::Latest).unwrap();
    store
        .prune_history(super::pitr::Retention {
            max_points: None,
            max_age: Some(std::time::Duration::from_secs(5)),
        })
        .unwrap();
    let newest = store.history().points(None, None, None, 1).unwrap()[0].ts_ms;
    let left = store
        .history()
        .points(None, None, None, usize::MAX)
        .unwrap();
    assert!(left.iter().all(|p| p.ts_ms >= newest - 5000), "{left:?}");
    assert!(!left.is_empty());
    let undo: i64 = store
        .conn
        .query_row("select count(*) from kvr_undo", [], |r| r.get(0))
        .unwrap();
    assert!(undo > 0 && undo < 60 * 4);
}

#[test]
fn an_object_that_skips_the_end_of_a_commit_is_refused_and_nothing_is_written() {
    // Find a cut: object j-1 ends inside a commit that j ends, and j+1
    // starts another one; then leave j out.
    let (commits, batches, j) = (1..)
        .find_map(|seed| {
            let mut rng = Rng(seed);
            let commits = history(&mut rng, 30);
            let batches = objects(&mut rng, &commits);
            let j = (1..batches.len() - 1).find(|&j| {
                let before = batches[j - 1].name.last;
                !before.is_commit_end()
                    && batches[j + 1].name.first.versionstamp() != before.versionstamp()
            })?;
            Some((commits, batches, j))
        })
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut store = seeded_store(&dir, &Model::new(), commits[0].vs);
    store.apply_logs(batches[..j].to_vec()).unwrap();
    let (state, rows) = (store.state().clone(), kv(&store));

    let err = store.apply_logs(batches[j + 1..].to_vec()).unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("gap in the log"), "{msg}");
    for b in [&batches[j - 1], &batches[j + 1]] {
        assert!(msg.contains(&crate::backup::log_key(&b.name)), "{msg}");
    }
    assert_eq!(store.state(), &state, "nothing moved");
    assert_eq!(kv(&store), rows, "nothing written");

    // The missing object arrives: everything applies in order.
    store.apply_logs(batches[j..].to_vec()).unwrap();
    assert_eq!(
        kv(&store),
        model_after(&Model::new(), &commits, commits.len() - 1)
    );
}

#[test]
fn retention_never_counts_from_a_time_ahead_of_the_local_clock() {
    let mut rng = Rng(12);
    let commits = history(&mut rng, 40);
    let mut batches = objects(&mut rng, &commits);
    let newest_true = commits.last().unwrap().ts_ms;
    let year_ms = 365 * 24 * 3600 * 1000i64;
    batches.last_mut().unwrap().timestamp_ms = newest_true + year_ms;
    let dir = tempfile::tempdir().unwrap();
    let mut store = seeded_store(&dir, &Model::new(), commits[0].vs);
    store.apply_logs(batches).unwrap();
    let all = |s: &Store| s.history().points(None, None, None, usize::MAX).unwrap();
    let age = super::pitr::Retention {
        max_points: None,
        max_age: Some(std::time::Duration::from_secs(5)),
    };
    // The local clock at the newest true commit: the point a year ahead is
    // not the reference, the newest one not ahead is.
    store.prune_history_at(age, newest_true).unwrap();
    let kept = all(&store);
    let trusted: Vec<i64> = kept
        .iter()
        .map(|p| p.ts_ms)
        .filter(|t| *t <= newest_true)
        .collect();
    assert!(trusted.len() >= 3, "{kept:?}");
    assert!(trusted.iter().all(|t| *t >= trusted[0] - 5000), "{kept:?}");
    // A local clock behind the bucket's (within the bound): age counts from
    // the local clock, so points younger than 5 s by it stay.
    let dir = tempfile::tempdir().unwrap();
    let mut store = seeded_store(&dir, &Model::new(), commits[0].vs);
    store.apply_logs(objects(&mut Rng(12), &commits)).unwrap();
    let now = commits[20].ts_ms;
    store.prune_history_at(age, now).unwrap();
    let oldest_kept = all(&store).last().unwrap().ts_ms;
    // (Point times are their object's, a few seconds apart; counting from
    // the newest point would keep nothing older than `now + 14 s`.)
    assert!(
        oldest_kept < now + 5000,
        "oldest kept {oldest_kept}, now {now}"
    );
}

/// Every row of `table` in primary-key order.
fn dump(store: &Store, table: &str) -> Vec<Vec<rusqlite::types::Value>> {
    let mut stmt = store
        .conn
        .prepare(&format!("select * from {table} order by 1"))
        .unwrap();
    let n = stmt.column_count();
    stmt.query_map([], |r| (0..n).map(|i| r.get(i)).collect())
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

/// The objects after the initial point `dv` whose absence the apply path
/// cannot see (no commit left half done between its neighbours): those a
/// test may hold back and fold in late.
fn late_candidates(batches: &[LogBatch], dv: Versionstamp) -> Vec<usize> {
    (1..batches.len() - 1)
        .filter(|&k| {
            let prev = batches[k - 1].name.last;
            batches[k].name.first > dv.commit_end()
                && (prev.is_commit_end()
                    || batches[k + 1].name.first.versionstamp() == prev.versionstamp())
        })
        .collect()
}

/// A log object held back and folded in late (following, or pinned before
/// or after it) leaves exactly the store that applying every object in
/// order leaves: rows, data version, undo, redo, points and their times.
#[test]
fn a_late_object_folded_in_leaves_the_store_an_in_order_one_has() {
    for seed in 1..=40u64 {
        let mut rng = Rng(seed);
        let commits = history(&mut rng, 60);
        let batches = objects(&mut rng, &commits);
        let initial = 10;
        let dv = commits[initial].vs;
        let candidates = late_candidates(&batches, dv);
        let k = candidates[rng.below(candidates.len() as u64) as usize];
        let late = &batches[k];
        // Pinned in a third of the seeds, at a point the late object does
        // not close.
        let pin = (seed % 3 == 0).then(|| {
            let after: Vec<Versionstamp> = commits[initial + 1..]
                .iter()
                .map(|c| c.vs)
                .filter(|vs| !(late.name.first..=late.name.last).contains(&vs.commit_end()))
                .collect();
            after[rng.below(after.len() as u64) as usize]
        });

        let dir = tempfile::tempdir().unwrap();
        let mut clean = seeded_store(&dir, &Model::new(), dv);
        clean.apply_logs(batches.clone()).unwrap();
        let dir2 = tempfile::tempdir().unwrap();
        let mut store = seeded_store(&dir2, &Model::new(), dv);
        let mut rest: Vec<LogBatch> = batches
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != k)
            .map(|(_, b)| b.clone())
            .collect();
        while !rest.is_empty() {
            let n = (1 + rng.below(5) as usize).min(rest.len());
            store.apply_logs(rest.drain(..n).collect()).unwrap();
        }
        if let Some(p) = pin {
            clean.checkout(CheckoutTarget::Versionstamp(p)).unwrap();
            store.checkout(CheckoutTarget::Versionstamp(p)).unwrap();
        }
        let out = store.repair_late(vec![late.clone()]).unwrap();
        assert!(
            matches!(out, LateOutcome::Repaired { .. }),
            "seed {seed}: {out:?}"
        );
        for table in ["kv", "data_version", "kvr_undo", "kvr_redo", "kvr_points"] {
            assert_eq!(
                dump(&store, table),
                dump(&clean, table),
                "seed {seed}, object {k}, pin {pin:?}: {table}"
            );
        }
        assert_eq!(store.state(), clean.state(), "seed {seed}");
        assert_eq!(
            store.repair_late(vec![late.clone()]).unwrap(),
            LateOutcome::AlreadyConsumed
        );
    }
}

/// The record of consumed names stays bounded, and a trimmed name counts
/// as consumed; a late object before the initial point is refused.
#[test]
fn consumed_names_are_bounded_and_early_late_objects_refused() {
    let mut rng = Rng(7);
    let commits = history(&mut rng, 60);
    let batches = objects(&mut rng, &commits);
    let dv = commits[10].vs;
    let dir = tempfile::tempdir().unwrap();
    let mut store = seeded_store(&dir, &Model::new(), dv);
    let skipped = batches
        .iter()
        .position(|b| b.name.last < dv.commit_end() && b.name.last.is_commit_end())
        .unwrap()
        + 1;
    let rest: Vec<LogBatch> = batches
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != skipped)
        .map(|(_, b)| b.clone())
        .collect();
    store.apply_logs(rest).unwrap();
    let window = store.consumed_window(5).unwrap();
    assert_eq!(window.consumed.len(), 5);
    assert!(!window.is_late(&batches[batches.len() - 1].name));
    assert!(store
        .consumed_window(1000)
        .unwrap()
        .is_late(&batches[skipped].name));
    match store.repair_late(vec![batches[skipped].clone()]).unwrap() {
        LateOutcome::Unrepairable { object, why } => {
            assert_eq!(object, batches[skipped].name);
            assert!(why.contains("initial point"), "{why}");
        }
        other => panic!("{other:?}"),
    }

    assert_eq!(
        store.trim_consumed(batches.len()).unwrap(),
        0,
        "not over twice"
    );
    let removed = store.trim_consumed(3).unwrap();
    assert_eq!(removed as usize, batches.len() - 1 - 4);
    let window = store.consumed_window(3).unwrap();
    assert_eq!(window.consumed.len(), 3);
    assert!(
        !store
            .consumed_window(1000)
            .unwrap()
            .is_late(&batches[skipped].name),
        "trimmed: assumed consumed"
    );
}

/// A late object that ends inside a commit whose rest is still missing
/// changes nothing; once the rest is late too, both go in together.
#[test]
fn a_late_object_that_leaves_a_commit_unfinished_waits_for_the_rest() {
    let (commits, batches, k) = (1..200u64)
        .find_map(|seed| {
            let mut rng = Rng(seed);
            let commits = history(&mut rng, 60);
            let batches = objects(&mut rng, &commits);
            let dv_end = commits[10].vs.commit_end();
            let k = (1..batches.len() - 2).find(|&k| {
                batches[k].name.first > dv_end
                    && batches[k - 1].name.last.is_commit_end()
                    && !batches[k].name.last.is_commit_end()
                    && batches[k + 1].name.last.is_commit_end()
            })?;
            Some((commits, batches, k))
        })
        .expect("a seed with a commit split after the initial point");
    let dv = commits[10].vs;
    let dir = tempfile::tempdir().unwrap();
    let mut clean = seeded_store(&dir, &Model::new(), dv);
    clean.apply_logs(batches.clone()).unwrap();
    let dir2 = tempfile::tempdir().unwrap();
    let mut store = seeded_store(&dir2, &Model::new(), dv);
    let rest: Vec<LogBatch> = [&batches[..k], &batches[k + 2..]].concat();
    store.apply_logs(rest).unwrap();
    let before: Vec<_> = ["kv", "kvr_undo", "kvr_redo", "kvr_points"]
        .map(|t| dump(&store, t))
        .into();
    match store.repair_late(vec![batches[k].clone()]).unwrap() {
        LateOutcome::Unfinished { object, commit, .. } => {
            assert_eq!(object, batches[k].name);
            assert_eq!(commit, batches[k].name.last.versionstamp());
        }
        other => panic!("{other:?}"),
    }
    let after: Vec<_> = ["kv", "kvr_undo", "kvr_redo", "kvr_points"]
        .map(|t| dump(&store, t))
        .into();
    assert_eq!(after, before, "nothing changed");
    assert!(store
        .consumed_window(1000)
        .unwrap()
        .is_late(&batches[k].name));

    let out = store
        .repair_late(vec![batches[k + 1].clone(), batches[k].clone()])
        .unwrap();
    assert!(matches!(out, LateOutcome::Repaired { .. }), "{out:?}");
    for table in ["kv", "data_version", "kvr_undo", "kvr_redo", "kvr_points"] {
        assert_eq!(dump(&store, table), dump(&clean, table), "{table}");
    }
}

/// A file from before names were recorded: every object up to its cursor
/// counts as consumed, and its history as pruned up to its oldest point.
#[test]
fn an_upgraded_file_assumes_what_it_cannot_know() {
    let mut rng = Rng(3);
    let commits = history(&mut rng, 60);
    let batches = objects(&mut rng, &commits);
    let dv = commits[10].vs;
    let dir = tempfile::tempdir().unwrap();
    let mut store = seeded_store(&dir, &Model::new(), dv);
    let half = batches.len() / 2;
    store.apply_logs(batches[..half].to_vec()).unwrap();
    let cursor = store.state().cursor.unwrap();
    store
        .conn
        .execute_batch(
            "drop table kvr_consumed; \
             delete from kvr_meta where k in ('consumed_upto', 'history_from'); \
             update kvr_meta set v = '1' where k = 'schema_version';",
        )
        .unwrap();
    drop(store);
    let mut store = Store::open(&dir.path().join("r.sqlite")).unwrap();
    let window = store.consumed_window(1000).unwrap();
    assert_eq!(window.assumed_upto, Some(cursor));
    assert_eq!(window.start_after, Some(cursor));
    assert!(!window.is_late(&batches[0].name));
    store.apply_logs(batches[half..].to_vec()).unwrap();
    assert_eq!(
        store.consumed_window(1000).unwrap().consumed.len(),
        batches.len() - half
    );
    let oldest = store
        .history()
        .points(None, None, None, usize::MAX)
        .unwrap()
        .last()
        .unwrap()
        .versionstamp;
    let early = LogBatch {
        name: LogName {
            format: 1,
            monoseq: 0,
            first: oldest.commit_end(),
            last: oldest.commit_end(),
        },
        timestamp_ms: 0,
        entries: Vec::new(),
    };
    match store.repair_late(vec![early]).unwrap() {
        LateOutcome::Unrepairable { why, .. } => assert!(why.contains("pruned"), "{why}"),
        other => panic!("{other:?}"),
    }
}

/// A checkout raises `synchronous` and the page cache for its own
/// transaction only: after it, done or refused, the apply path runs with
/// its own settings again.
#[test]
fn a_checkout_leaves_the_apply_settings_as_they_were() {
    let dir = tempfile::tempdir().unwrap();
    let (mut store, commits) = applied_history(&dir);
    let settings = |s: &Store| -> (i64, i64) {
        let sync = s.conn.query_row("pragma synchronous", [], |r| r.get(0));
        let cache = s.conn.query_row("pragma cache_size", [], |r| r.get(0));
        (sync.unwrap(), cache.unwrap())
    };
    let apply = (1, CACHE_SIZE_KIB); // NORMAL
    assert_eq!(settings(&store), apply);
    store
        .checkout(CheckoutTarget::Versionstamp(commits[5].vs))
        .unwrap();
    assert_eq!(settings(&store), apply, "after a checkout");
    let not_a_point = Versionstamp::from_parts(1, 0);
    assert!(store
        .checkout(CheckoutTarget::Versionstamp(not_a_point))
        .is_err());
    assert_eq!(settings(&store), apply, "after a refused checkout");
}

/// Opening a replica already at the current schema skips the migration;
/// one at an older version is still migrated (its missing tables appear
/// and its version is raised).
#[test]
fn only_an_older_schema_is_migrated_on_open() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("r.sqlite");
    drop(Store::open(&path).unwrap());
    let version = |path: &Path| -> i64 {
        let c = Connection::open(path).unwrap();
        c.query_row(
            "select cast(v as integer) from kvr_meta where k = 'schema_version'",
            [],
            |r| r.get(0),
        )
        .unwrap()
    };
    assert_eq!(version(&path), schema::SCHEMA_VERSION);
    // Back to version 1: without `kvr_consumed`.
    {
        let c = Connection::open(&path).unwrap();
        c.execute_batch(
            "drop table kvr_consumed; update kvr_meta set v = '1' where k = 'schema_version';",
        )
        .unwrap();
    }
    let store = Store::open(&path).unwrap();
    let has_consumed: i64 = store
        .conn
        .query_row(
            "select count(*) from sqlite_master where name = 'kvr_consumed'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(has_consumed, 1, "the migration to version 2 ran");
    drop(store);
    assert_eq!(version(&path), schema::SCHEMA_VERSION);
    drop(Store::open(&path).unwrap());
    assert_eq!(version(&path), schema::SCHEMA_VERSION);
}

/// The entries `view` scans in `range`, as a model.
fn scanned(view: &super::view::StateAt<'_>, range: &super::view::KeyRange) -> Model {
    let mut out = Model::new();
    let mut last: Option<Vec<u8>> = None;
    view.scan(range, |e| {
        assert!(last.as_ref().is_none_or(|l| *l < e.key), "key order");
        last = Some(e.key.clone());
        out.insert(e.key.clone(), e.record.clone());
        std::ops::ControlFlow::Continue(())
    })
    .unwrap();
    out
}

#[test]
fn the_state_at_any_point_reads_as_a_checkout_would_make_it_without_moving_anything() {
    use super::view::{diff, diff_with, KeyRange, StateAt};
    for seed in 1..=4u64 {
        let mut rng = Rng(100 + seed);
        let commits = history(&mut rng, 80);
        let batches = objects(&mut rng, &commits);
        // A snapshot with keys no log touches and keys the logs change.
        let snapshot: Model = (0..20u8)
            .map(|n| {
                let key = if n < 10 { vec![b'k', n] } else { vec![b'j', n] };
                let record = KvRecord {
                    value: vec![b's', n],
                    encoding: 3,
                    versionstamp: Versionstamp::from_parts(500, 0),
                    expire_at_ms: if n % 3 == 0 { 1_900_000_000_000 } else { -1 },
                };
                (key, record)
            })
            .collect();
        let initial = 10;
        let dir = tempfile::tempdir().unwrap();
        let mut store = seeded_store(&dir, &snapshot, commits[initial].vs);
        // All but the last object (which may end inside a commit: an
        // unfinished tail in redo that no state may show), pinned half way
        // so redo also holds complete commits ahead of the visible state.
        let (_, rest) = batches.split_last().unwrap();
        let half = rest.len() / 2;
        store.apply_logs(rest[..half].to_vec()).unwrap();
        let visible = store.state().visible().unwrap();
        let vidx = commits.iter().position(|c| c.vs == visible).unwrap();
        store
            .checkout(CheckoutTarget::Versionstamp(
                commits[(initial + 1 + vidx) / 2].vs,
            ))
            .unwrap();
        store.apply_logs(rest[half..].to_vec()).unwrap();
        let latest = store.history().position().unwrap().unwrap().latest;
        let lidx = commits
            .iter()
            .position(|c| c.vs == latest.versionstamp)
            .unwrap();
        let ranges = [
            KeyRange::all(),
            KeyRange::prefix(b"k"),
            KeyRange {
                start: vec![b'k', 3],
                end: Some(vec![b'k', 8]),
            },
            KeyRange::prefix(b"j").intersect(&KeyRange::prefix(b"k")),
            KeyRange::all().after(&[b'k', 5]),
        ];
        for round in 0..3 {
            // Three positions: pinned in the middle, at a random point,
            // following at the newest.
            if round == 1 {
                let p = initial + 1 + rng.below((lidx - initial) as u64) as usize;
                store
                    .checkout(CheckoutTarget::Versionstamp(commits[p].vs))
                    .unwrap();
            } else if round == 2 {
                store.checkout(CheckoutTarget::Latest).unwrap();
            }
            let before = (
                kv(&store),
                dump(&store, "kvr_undo"),
                dump(&store, "kvr_redo"),
            );
            let state = store.state().clone();
            let tx = store.conn.unchecked_transaction().unwrap();
            let visible = StateAt::visible(&tx, &state).unwrap();
            assert_eq!(scanned(&visible, &KeyRange::all()), before.0);
            for idx in initial + 1..=lidx {
                let view =
                    StateAt::resolve(&tx, &state, CheckoutTarget::Versionstamp(commits[idx].vs))
                        .unwrap();
                let model = model_after(&snapshot, &commits, idx);
                for range in &ranges {
                    let want: Model = model
                        .iter()
                        .filter(|(k, _)| range.contains(k))
                        .map(|(k, v)| (k.clone(), v.clone()))
                        .collect();
                    assert_eq!(
                        scanned(&view, range),
                        want,
                        "seed {seed} round {round} point {idx} range {range:?}"
                    );
                }
                for n in 0..12u8 {
                    let key = vec![b'k', n];
                    assert_eq!(view.get(&key).unwrap(), model.get(&key).cloned());
                }
            }
            // Diffs between random pairs, either way round, and of every
            // single commit (the console's question), each computed both
            // ways: from the keys between the points, and by merging the
            // two overlays.
            let mut pairs: Vec<(usize, usize)> = (0..40)
                .map(|_| {
                    (
                        initial + 1 + rng.below((lidx - initial) as u64) as usize,
                        initial + 1 + rng.below((lidx - initial) as u64) as usize,
                    )
                })
                .collect();
            pairs.extend((initial + 1..lidx).map(|a| (a, a + 1)));
            for (a, b) in pairs {
                let va = StateAt::resolve(&tx, &state, CheckoutTarget::Versionstamp(commits[a].vs))
                    .unwrap();
                let vb = StateAt::resolve(&tx, &state, CheckoutTarget::Versionstamp(commits[b].vs))
                    .unwrap();
                let (ma, mb) = (
                    model_after(&snapshot, &commits, a),
                    model_after(&snapshot, &commits, b),
                );
                for range in &ranges {
                    let mut want: Vec<(Vec<u8>, Option<KvRecord>, Option<KvRecord>)> = ma
                        .keys()
                        .chain(mb.keys())
                        .filter(|k| range.contains(k))
                        .collect::<std::collections::BTreeSet<_>>()
                        .into_iter()
                        .map(|k| (k.clone(), ma.get(k).cloned(), mb.get(k).cloned()))
                        .filter(|(_, x, y)| x != y)
                        .collect();
                    want.sort_by(|x, y| x.0.cmp(&y.0));
                    for narrow in [0, usize::MAX] {
                        let mut got = Vec::new();
                        diff_with(&va, &vb, range, narrow, |c| {
                            got.push((c.key.clone(), c.before.clone(), c.after.clone()));
                            std::ops::ControlFlow::Continue(())
                        })
                        .unwrap();
                        assert_eq!(
                            got, want,
                            "seed {seed} diff {a} → {b} in {range:?}, narrow up to {narrow} rows"
                        );
                    }
                    let mut got = Vec::new();
                    diff(&va, &vb, range, |c| {
                        got.push((c.key.clone(), c.before.clone(), c.after.clone()));
                        std::ops::ControlFlow::Continue(())
                    })
                    .unwrap();
                    assert_eq!(got, want, "seed {seed} diff {a} → {b} in {range:?}");
                }
            }
            drop(tx);
            assert_eq!(
                (
                    kv(&store),
                    dump(&store, "kvr_undo"),
                    dump(&store, "kvr_redo")
                ),
                before,
                "reading states moves nothing"
            );
        }
    }
}

/// A store with a prefix filter holds, at every point, the whole
/// database's state restricted to the kept keys, keeps every point, and
/// folds a late object in to the same store as one that saw the objects
/// in order; nothing of a left-out key reaches `kv`, undo or redo.
#[test]
fn a_filtered_store_is_the_restricted_whole_at_every_point_late_objects_included() {
    let filter = KeyFilter::new(
        (0..6u8).map(|n| vec![b'k', n]).collect(),
        vec![vec![b'k', 2]],
    );
    let keeps = |k: &[u8]| k.len() == 2 && k[1] < 6 && k[1] != 2;
    let restrict = |m: Model| -> Model { m.into_iter().filter(|(k, _)| keeps(k)).collect() };
    let filtered = |dir: &tempfile::TempDir, snapshot: &Model, dv| {
        let mut s = Store::open(&dir.path().join("r.sqlite")).unwrap();
        s.bind_filter(&filter).unwrap();
        drop(s);
        seeded_store(dir, snapshot, dv)
    };
    for seed in 1..=20u64 {
        let mut rng = Rng(seed);
        let commits = history(&mut rng, 60);
        let batches = objects(&mut rng, &commits);
        let initial = 10;
        let dv = commits[initial].vs;
        let snapshot: Model = (0..12u8)
            .map(|n| {
                let r = KvRecord {
                    value: vec![n],
                    encoding: 3,
                    versionstamp: Versionstamp::from_parts(1, 0),
                    expire_at_ms: -1,
                };
                (vec![b'k', n], r)
            })
            .collect();
        let before = model_after(&snapshot, &commits, initial);

        let (d1, d2, d3) = (
            tempfile::tempdir().unwrap(),
            tempfile::tempdir().unwrap(),
            tempfile::tempdir().unwrap(),
        );
        let mut whole = seeded_store(&d1, &before, dv);
        whole.apply_logs(batches.clone()).unwrap();
        let mut clean = filtered(&d2, &before, dv);
        assert_eq!(
            kv(&clean),
            restrict(before.clone()),
            "seed {seed}: snapshot"
        );
        clean.apply_logs(batches.clone()).unwrap();
        assert_eq!(clean.state().filter, filter);
        assert_eq!(
            dump(&clean, "kvr_points"),
            dump(&whole, "kvr_points"),
            "seed {seed}"
        );
        assert_eq!(dump(&clean, "data_version"), dump(&whole, "data_version"));
        for table in ["kv", "kvr_undo", "kvr_redo"] {
            let keys = clean
                .conn
                .prepare(&format!("select k from {table}"))
                .unwrap()
                .query_map([], |r| r.get::<_, Vec<u8>>(0))
                .unwrap()
                .collect::<Result<Vec<_>, _>>()
                .unwrap();
            assert!(
                keys.iter()
                    .all(|k| keeps(k) || (table != "kv" && k.is_empty())),
                "seed {seed}: {table} holds a left-out key"
            );
        }

        // A late object: folded in, the same store as `clean`.
        let candidates = late_candidates(&batches, dv);
        let k = candidates[rng.below(candidates.len() as u64) as usize];
        let mut late = filtered(&d3, &before, dv);
        let rest: Vec<LogBatch> = (0..batches.len())
            .filter(|i| *i != k)
            .map(|i| batches[i].clone())
            .collect();
        late.apply_logs(rest).unwrap();
        let out = late.repair_late(vec![batches[k].clone()]).unwrap();
        assert!(
            matches!(out, LateOutcome::Repaired { .. }),
            "seed {seed}: {out:?}"
        );
        for table in ["kv", "data_version", "kvr_undo", "kvr_redo", "kvr_points"] {
            assert_eq!(
                dump(&late, table),
                dump(&clean, table),
                "seed {seed}: {table}"
            );
        }

        // Read without moving (store::view), pinned at a middle point so
        // that redo is read too: the same states, and the commit end
        // markers are no difference.
        {
            use super::view::{diff_with, KeyRange, StateAt};
            let mid = (initial + commits.len()) / 2;
            clean
                .checkout(CheckoutTarget::Versionstamp(commits[mid].vs))
                .unwrap();
            let state = clean.state().clone();
            let tx = clean.conn.unchecked_transaction().unwrap();
            let at = |i: usize| {
                StateAt::resolve(&tx, &state, CheckoutTarget::Versionstamp(commits[i].vs)).unwrap()
            };
            for i in [initial + 1, mid, commits.len() - 1] {
                let want = restrict(model_after(&snapshot, &commits, i));
                assert_eq!(
                    scanned(&at(i), &KeyRange::all()),
                    want,
                    "seed {seed}: view at {i}"
                );
            }
            // Both ways of diffing: from the keys between the points, and
            // by merging overlays.
            for narrow in [0, usize::MAX] {
                let mut changes = 0;
                diff_with(
                    &at(initial + 1),
                    &at(commits.len() - 1),
                    &KeyRange::all(),
                    narrow,
                    |c| {
                        assert!(keeps(&c.key), "seed {seed}: a diff shows {:?}", c.key);
                        changes += 1;
                        std::ops::ControlFlow::Continue(())
                    },
                )
                .unwrap();
                assert!(changes > 0, "seed {seed}");
            }
        }

        // Every point, in random order: the restricted whole.
        let mut order: Vec<usize> = (initial + 1..commits.len()).collect();
        for i in (1..order.len()).rev() {
            order.swap(i, rng.below(i as u64 + 1) as usize);
        }
        for i in order.into_iter().take(15) {
            clean
                .checkout(CheckoutTarget::Versionstamp(commits[i].vs))
                .unwrap();
            assert_eq!(
                kv(&clean),
                restrict(model_after(&snapshot, &commits, i)),
                "seed {seed}: commit {i}"
            );
        }
    }
}

/// Another filter is refused once the file holds data; a file that holds
/// nothing yet takes the new one.
#[test]
fn a_filter_is_fixed_once_data_is_in() {
    let dir = tempfile::tempdir().unwrap();
    let a = KeyFilter::new(vec![vec![b'k', 1]], vec![]);
    let b = KeyFilter::new(vec![vec![b'k', 2]], vec![]);
    let mut store = Store::open(&dir.path().join("r.sqlite")).unwrap();
    store.bind_filter(&a).unwrap();
    store.bind_filter(&b).unwrap();
    assert_eq!(store.state().filter, b, "nothing loaded: replaced");
    drop(store);
    let store = seeded_store(&dir, &Model::new(), Versionstamp::from_parts(5, 0));
    assert_eq!(store.state().filter, b, "recorded in the file");
    let mut store = store;
    for other in [a, KeyFilter::default()] {
        match store.bind_filter(&other) {
            Err(StoreError::FilterMismatch { advice, .. }) => {
                assert!(advice.contains(&b.as_flags()), "{advice}");
            }
            r => panic!("{other:?}: {r:?}"),
        }
    }
    store.bind_filter(&b).unwrap();
}

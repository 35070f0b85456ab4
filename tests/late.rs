//! Log objects that become visible late, out of name order: object k lands
//! after objects k + 1… were applied. A late object whose entries lie
//! after the initial point and within the kept history is folded in, and
//! the replica ends equal to one that saw a clean bucket: the same rows,
//! recoverable points and their times, undo and redo records. One that
//! cannot be folded in stops the replica at its last state, loudly. Each
//! scenario runs against a directory, a real S3 server (s3s-fs) and the
//! GCS emulator (fake-gcs-server), all on 127.0.0.1.

#[path = "common/bucket.rs"]
mod bucket;
mod common;
#[path = "common/gcs_server.rs"]
mod gcs_server;
#[path = "common/s3_server.rs"]
mod s3_server;

use std::path::Path;
use std::time::{Duration, Instant};

use bucket::{metric, readyz, stamps, wait_readyz, Bucket, WAIT};
use common::fixture::{assert_rows_eq, Fixture, Spec};
use common::serve::{Method, ServeProcess};
use common::{pitr_list, read_replica};
use serde_json::json;

const PREFIX: &str = "backups/late/";

const REPAIRED: &str = "kvreplica_late_objects_total{outcome=\"repaired\"}";
const UNREPAIRABLE: &str = "kvreplica_late_objects_total{outcome=\"unrepairable\"}";

/// Waits until `check` holds; `what` and the log explain a timeout.
fn wait_until(serve: &ServeProcess, what: &str, check: impl Fn() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !check() {
        assert!(
            Instant::now() < deadline,
            "{what} did not happen within {WAIT:?}; log:\n{}",
            serve.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Every row of `table`, in primary-key order.
fn dump(db: &Path, table: &str) -> Vec<Vec<rusqlite::types::Value>> {
    let conn =
        rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .unwrap();
    let mut stmt = conn
        .prepare(&format!("select * from {table} order by 1"))
        .unwrap();
    let n = stmt.column_count();
    let rows = stmt
        .query_map([], |r| (0..n).map(|i| r.get(i)).collect())
        .unwrap();
    rows.map(Result::unwrap).collect()
}

/// The replica at `db` holds what the one at `clean` holds: visible rows,
/// the data version, undo and redo records, recoverable points and times.
fn assert_same_replica(db: &Path, clean: &Path, label: &str) {
    for table in ["kv", "data_version", "kvr_undo", "kvr_redo", "kvr_points"] {
        let (got, want) = (dump(db, table), dump(clean, table));
        assert!(!want.is_empty() || table == "kvr_redo", "{label}: {table}");
        assert!(
            got == want,
            "{label}: {table} differs from a clean replica's ({} rows, {} expected)",
            got.len(),
            want.len()
        );
    }
    assert_eq!(pitr_list(db), pitr_list(clean), "{label}: pitr list");
}

/// `db` holds what a replica synced from `bucket` as it is now holds.
fn assert_same_as_a_clean_sync(bucket: &Bucket, db: &Path, label: &str) {
    let tmp = tempfile::tempdir().unwrap();
    let clean = tmp.path().join("clean.sqlite");
    let (code, stderr) = bucket.sync(&clean, &[]);
    assert_eq!(code, Some(0), "{stderr}");
    assert_same_replica(db, &clean, label);
}

/// Objects `objects[k]` whose absence no stamp can show: it and the object
/// before it end at commit boundaries (so nothing is left half done).
fn clean_cuts(objects: &[(String, Vec<u8>)]) -> Vec<usize> {
    let ends =
        |i: usize| objects[i].0.starts_with("logs/") && stamps(&objects[i].0).1.ends_with("ffff");
    (1..objects.len() - 1)
        .filter(|&k| ends(k - 1) && ends(k))
        .collect()
}

/// A backup of many small log objects, each ending at a commit boundary.
fn fine_grained() -> Fixture {
    Fixture::generate(Spec {
        split_commits: false,
        muts_per_log: 8,
        ..Spec::default()
    })
}

/// The initial objects, then the appended ones.
fn every_object(fx: &Fixture) -> Vec<(String, Vec<u8>)> {
    fx.initial.iter().chain(&fx.append).cloned().collect()
}

fn vs_hex(fx: &Fixture, commit: usize) -> String {
    hex::encode(fx.commits[commit].versionstamp)
}

/// The commit whose versionstamp starts the stamp `stamp` (24 hex digits).
fn commit_of(fx: &Fixture, stamp: &str) -> usize {
    fx.commits
        .iter()
        .position(|c| hex::encode(c.versionstamp) == stamp[..20])
        .unwrap()
}

fn name(rel: &str) -> &str {
    rel.strip_prefix("logs/").unwrap()
}

/// Object k of the appended logs lands after k + 1…: the replica folds it
/// in, says so once (WARN naming it, counter), and ends equal to a replica
/// built from the clean bucket.
fn late_object_is_folded_in(kind: &str) {
    let fx = Fixture::generate(Spec::default());
    let cuts = clean_cuts(&fx.append);
    let k = cuts[cuts.len() / 2];
    let (bucket, _tmp, db, mut serve) = Bucket::serving(kind, PREFIX, &fx.initial);
    serve.wait_at(&vs_hex(&fx, fx.last_initial));

    let mut without_k = fx.append.clone();
    let late = without_k.remove(k);
    bucket.put(&without_k);
    serve.wait_at(&vs_hex(&fx, fx.last_commit()));
    let before = read_replica(&db);
    assert_ne!(
        before,
        common::fixture::expected_rows(&fx.state_at(fx.last_commit())),
        "the missing object changes the final state (else the test proves nothing)"
    );
    assert_eq!(readyz(&serve).0, 200);

    bucket.put(std::slice::from_ref(&late));
    wait_until(&serve, "the late object folded in", || {
        metric(&serve, REPAIRED) >= 1.0
    });
    serve.wait_at(&vs_hex(&fx, fx.last_commit()));
    assert_rows_eq(
        &read_replica(&db),
        &fx.state_at(fx.last_commit()),
        "after the late object",
    );
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(metric(&serve, REPAIRED), 1.0, "counted once");
    assert_eq!(readyz(&serve).0, 200, "still following");
    let log = serve.log();
    let warn = log
        .lines()
        .find(|l| l.contains("became visible late"))
        .unwrap_or_else(|| panic!("a WARN line; log:\n{log}"));
    assert!(
        warn.contains("WARN") && warn.contains(name(&late.0)),
        "{warn}"
    );
    assert!(serve.terminate().success());
    assert_same_as_a_clean_sync(&bucket, &db, kind);
}

#[test]
fn a_late_object_is_folded_in_dir() {
    late_object_is_folded_in("dir");
}

#[test]
fn a_late_object_is_folded_in_s3() {
    late_object_is_folded_in("s3");
}

#[test]
fn a_late_object_is_folded_in_gcs() {
    late_object_is_folded_in("gcs");
}

/// A pinned replica: one late object lands behind the pin, one ahead of
/// it. The pin stays where it is (its state now with the late commits
/// behind it), and the stored history equals a clean replica's.
fn pinned_replica_repairs_its_history(kind: &str) {
    let fx = fine_grained();
    let cuts = clean_cuts(&fx.append);
    let (k1, k2) = (cuts[1], cuts[cuts.len() - 2]);
    assert!(k2 > k1 + 2, "cuts {cuts:?}");
    // The pin: the commit that ends the object just after k1 (a point
    // between the two late objects).
    let pin = commit_of(&fx, &stamps(&fx.append[k1 + 1].0).1);
    let (bucket, _tmp, db, mut serve) = Bucket::serving(kind, PREFIX, &fx.initial);

    let without: Vec<_> = fx
        .append
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != k1 && *i != k2)
        .map(|(_, o)| o.clone())
        .collect();
    bucket.put(&without);
    serve.wait_at(&vs_hex(&fx, fx.last_commit()));
    let (status, out) = serve.admin(
        Method::Post,
        "/pitr/checkout",
        json!({"versionstamp": vs_hex(&fx, pin)}),
    );
    assert_eq!(status, 200, "{out}");
    assert_eq!(out["mode"], "pinned");

    bucket.put(&[fx.append[k1].clone(), fx.append[k2].clone()]);
    wait_until(&serve, "both late objects folded in", || {
        metric(&serve, REPAIRED) >= 2.0
    });
    let (_, cur) = serve.admin(Method::Get, "/pitr/current", serde_json::Value::Null);
    assert_eq!(cur["mode"], "pinned", "{cur}");
    assert_eq!(cur["versionstamp"], vs_hex(&fx, pin).as_str(), "{cur}");
    assert_rows_eq(
        &read_replica(&db),
        &fx.state_at(pin),
        "the pinned state, with the late commits behind it",
    );
    let (status, out) = serve.admin(Method::Post, "/pitr/checkout", json!({"latest": true}));
    assert_eq!(status, 200, "{out}");
    serve.wait_at(&vs_hex(&fx, fx.last_commit()));
    assert!(serve.terminate().success());
    assert_same_as_a_clean_sync(&bucket, &db, kind);
}

#[test]
fn a_pinned_replica_repairs_its_history_without_moving_the_pin_dir() {
    pinned_replica_repairs_its_history("dir");
}

#[test]
fn a_pinned_replica_repairs_its_history_without_moving_the_pin_s3() {
    pinned_replica_repairs_its_history("s3");
}

#[test]
fn a_pinned_replica_repairs_its_history_without_moving_the_pin_gcs() {
    pinned_replica_repairs_its_history("gcs");
}

/// A late object that cannot be folded in: `/readyz` 503 naming it and how
/// to rebuild, reads keep the last state, nothing newer is applied, and a
/// one-shot `sync` exits 65. `late` is the object held back from the first
/// sync; `retain` the retention flags of that sync.
fn unrepairable(kind: &str, fx: &Fixture, late: usize, retain: &[&str], why: &str) {
    let bucket = Bucket::start(kind, PREFIX);
    let objects = every_object(fx);
    let held = objects[late].clone();
    let mut without = objects.clone();
    without.remove(late);
    bucket.put(&without);
    let tmp = tempfile::tempdir().unwrap();
    let db = tmp.path().join("r.sqlite");
    let (code, stderr) = bucket.sync(&db, retain);
    assert_eq!(code, Some(0), "{stderr}");
    let rows = read_replica(&db);
    let points = pitr_list(&db);

    bucket.put(std::slice::from_ref(&held));
    let mut serve = bucket.serve(&db);
    let reason = wait_readyz(&serve, 503, |b| b.contains("became visible late"));
    assert!(
        reason.contains(name(&held.0)) && reason.contains(why) && reason.contains("move"),
        "readyz names the object, why, and how to rebuild: {reason}"
    );
    assert!(metric(&serve, "kvreplica_errors_total{kind=\"late_object\"}") >= 1.0);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(metric(&serve, UNREPAIRABLE), 1.0, "counted once");
    serve.wait_at(&vs_hex(fx, fx.last_commit()));
    assert_eq!(read_replica(&db), rows, "the last good state");
    assert_eq!(readyz(&serve).0, 503, "still stopped");
    assert!(serve.terminate().success());
    assert_eq!(pitr_list(&db), points);

    let (code, stderr) = bucket.sync(&db, retain);
    assert_eq!(code, Some(65), "{stderr}");
    assert!(
        stderr.contains(name(&held.0)) && stderr.contains(why),
        "{stderr}"
    );
}

/// A generated backup and the index (in initial + append order) of a log
/// object before the initial point whose absence no stamp shows.
fn before_initial() -> (Fixture, usize) {
    let fx = fine_grained();
    let objects = every_object(&fx);
    let first_log = objects
        .iter()
        .position(|o| o.0.starts_with("logs/"))
        .unwrap();
    let dv = hex::encode(fx.commits[fx.dv_commit].versionstamp);
    let late = clean_cuts(&objects)
        .into_iter()
        .filter(|&i| i > first_log)
        .find(|&i| stamps(&objects[i].0).1[..20] < *dv)
        .expect("a clean cut before DV");
    (fx, late)
}

#[test]
fn a_late_object_before_the_initial_point_stops_the_replica_dir() {
    let (fx, late) = before_initial();
    unrepairable("dir", &fx, late, &[], "initial point");
}

#[test]
fn a_late_object_before_the_initial_point_stops_the_replica_s3() {
    let (fx, late) = before_initial();
    unrepairable("s3", &fx, late, &[], "initial point");
}

/// A late object behind history that retention pruned.
fn behind_pruned_history(kind: &str) {
    let fx = fine_grained();
    let objects = every_object(&fx);
    let last_initial_log = fx.initial.len() - 1;
    // After the initial point, long before the last commits.
    let late = clean_cuts(&objects)
        .into_iter()
        .find(|&i| {
            i > last_initial_log && commit_of(&fx, &stamps(&objects[i].0).0) > fx.dv_commit + 1
        })
        .expect("a clean cut after the initial point");
    unrepairable(kind, &fx, late, &["--retain-points", "3"], "pruned");
}

#[test]
fn a_late_object_behind_pruned_history_stops_the_replica_dir() {
    behind_pruned_history("dir");
}

#[test]
fn a_late_object_behind_pruned_history_stops_the_replica_s3() {
    behind_pruned_history("s3");
}

/// A library engine on a directory bucket, for what the processes do not
/// show.
struct Library {
    _bucket: tempfile::TempDir,
    root: std::path::PathBuf,
    _tmp: tempfile::TempDir,
    db: std::path::PathBuf,
    syncer: kvreplica::sync::Syncer,
}

impl Library {
    /// Synced to the end of `fx` without its appended objects `held`,
    /// which it returns.
    async fn without(
        fx: &Fixture,
        held: &[usize],
        opts: kvreplica::sync::SyncOptions,
    ) -> (Library, Vec<(String, Vec<u8>)>) {
        let bucket = tempfile::tempdir().unwrap();
        let root = bucket.path().join(PREFIX);
        let (late, rest): (Vec<_>, Vec<_>) = fx
            .append
            .iter()
            .enumerate()
            .partition(|(i, _)| held.contains(i));
        let strip = |v: Vec<(usize, &(String, Vec<u8>))>| -> Vec<(String, Vec<u8>)> {
            v.into_iter().map(|(_, o)| o.clone()).collect()
        };
        fx.write_initial(&root);
        common::fixture::write_objects(&root, &strip(rest));
        let tmp = tempfile::tempdir().unwrap();
        let db = tmp.path().join("r.sqlite");
        let syncer = Self::engine(&root, &db, opts);
        syncer.initial().await.unwrap();
        syncer.catch_up().await.unwrap();
        let lib = Library {
            _bucket: bucket,
            root,
            _tmp: tmp,
            db,
            syncer,
        };
        (lib, strip(late))
    }

    fn engine(
        root: &Path,
        db: &Path,
        opts: kvreplica::sync::SyncOptions,
    ) -> kvreplica::sync::Syncer {
        use kvreplica::backup::Backup;
        use kvreplica::source::fs::DirStore;
        use kvreplica::store::Store;
        use std::sync::Arc;

        let backup = Arc::new(Backup::new(
            Arc::new(DirStore::new(root.to_path_buf())),
            Default::default(),
        ));
        kvreplica::sync::Syncer::new(backup, Store::open(db).unwrap(), opts).unwrap()
    }

    /// The same replica under a new engine with `opts`.
    fn restart(self, opts: kvreplica::sync::SyncOptions) -> Library {
        drop(self.syncer);
        let syncer = Self::engine(&self.root, &self.db, opts);
        Library { syncer, ..self }
    }
}

/// Watchers wake when a late object is folded in, although the visible
/// commit stays the same one: its contents changed (a watch re-reads its
/// keys on every wake and reports those whose versionstamp changed).
#[tokio::test(flavor = "multi_thread")]
async fn watchers_wake_when_a_late_object_changes_the_visible_state() {
    let fx = fine_grained();
    let cuts = clean_cuts(&fx.append);
    let k = cuts[cuts.len() / 2];
    let (lib, late) = Library::without(&fx, &[k], Default::default()).await;
    let mut visible = lib.syncer.subscribe();
    let at = *visible.borrow_and_update();
    assert_eq!(
        at.map(|v| hex::encode(v.0)),
        Some(vs_hex(&fx, fx.last_commit()))
    );

    lib.syncer.round().await.unwrap();
    assert!(!visible.has_changed().unwrap(), "nothing new, no wake");
    common::fixture::write_objects(&lib.root, &late);
    let r = lib.syncer.round().await.unwrap();
    assert_eq!(r.objects, 1, "{r:?}");
    assert!(visible.has_changed().unwrap(), "the watchers woke");
    assert_eq!(*visible.borrow_and_update(), at, "the same visible commit");
    assert_rows_eq(
        &read_replica(&lib.db),
        &fx.state_at(fx.last_commit()),
        "after the late object",
    );
}

/// Two late objects that each hold part of one commit go in together in
/// one round, even when the first alone fills the byte budget.
#[tokio::test(flavor = "multi_thread")]
async fn late_parts_of_one_commit_go_in_together() {
    let (fx, k) = (1..200)
        .find_map(|seed| {
            let fx = Fixture::generate(Spec {
                seed,
                muts_per_log: 8,
                ..Spec::default()
            });
            let ends = |i: usize| stamps(&fx.append[i].0).1.ends_with("ffff");
            let k = (1..fx.append.len() - 2).find(|&k| {
                ends(k - 1)
                    && !ends(k)
                    && ends(k + 1)
                    && stamps(&fx.append[k + 1].0).0[..20] == stamps(&fx.append[k].0).1[..20]
            })?;
            Some((fx, k))
        })
        .expect("a seed with a commit split over two objects");
    let (lib, late) = Library::without(&fx, &[k, k + 1], Default::default()).await;
    // A budget far smaller than one object (nothing else is downloaded).
    let lib = lib.restart(kvreplica::sync::SyncOptions {
        max_bytes_in_flight: 2,
        ..Default::default()
    });
    common::fixture::write_objects(&lib.root, &late);
    let r = lib.syncer.round().await.unwrap();
    assert_eq!(r.objects, 2, "{r:?}");
    assert_rows_eq(
        &read_replica(&lib.db),
        &fx.state_at(fx.last_commit()),
        "after the late objects",
    );
}

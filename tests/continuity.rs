//! A replica never diverges silently from its backup's log: a commit whose
//! end never arrives stops it at the last complete commit until the
//! missing object lands, and a backup re-exported under the same prefix is
//! not followed. Each scenario runs against a directory and a real S3
//! server (s3s-fs) on 127.0.0.1.

#[path = "common/bucket.rs"]
mod bucket;
mod common;
#[path = "common/gcs_server.rs"]
mod gcs_server;
#[path = "common/s3_server.rs"]
mod s3_server;

use std::time::Duration;

use bucket::{metric, readyz, stamps, wait_readyz, Bucket};
use common::fixture::{assert_rows_eq, Fixture, Spec};
use common::{pitr_list, read_replica};

const PREFIX: &str = "backups/continuity/";

/// A generated backup whose appended objects hold a gap that stamps can
/// show: object `k - 1` ends inside a commit and object `k + 1` starts
/// another one. Returns the fixture and `k`.
fn fixture_with_a_split_commit() -> (Fixture, usize) {
    (1..200)
        .find_map(|seed| {
            let fx = Fixture::generate(Spec {
                seed,
                muts_per_log: 8,
                ..Spec::default()
            });
            let k = (1..fx.append.len() - 1).find(|&k| {
                let (_, before) = stamps(&fx.append[k - 1].0);
                let (after, _) = stamps(&fx.append[k + 1].0);
                !before.ends_with("ffff") && after[..20] != before[..20]
            })?;
            Some((fx, k))
        })
        .expect("a seed whose appended logs split a commit")
}

fn vs_hex(fx: &Fixture, commit: usize) -> String {
    hex::encode(fx.commits[commit].versionstamp)
}

/// Object k is missing while k + 1 is there: the replica stops at the last
/// complete commit (nothing of the unfinished or the next commit), says
/// why, and resumes by itself once k lands, ending equal to a replica that
/// synced the complete bucket.
fn gap_then_late_object(kind: &str) {
    let (fx, k) = fixture_with_a_split_commit();
    let (bucket, tmp, db, mut serve) = Bucket::serving(kind, PREFIX, &fx.initial);
    serve.wait_at(&vs_hex(&fx, fx.last_initial));

    let mut without_k = fx.append.clone();
    let missing = without_k.remove(k);
    bucket.put(&without_k);

    let (_, before) = stamps(&fx.append[k - 1].0);
    let unfinished = fx
        .commits
        .iter()
        .position(|c| hex::encode(c.versionstamp) == before[..20])
        .unwrap();
    let name = |i: usize| fx.append[i].0.strip_prefix("logs/").unwrap().to_string();
    let reason = wait_readyz(&serve, 503, |b| b.contains("gap in the log"));
    assert!(
        reason.contains(&name(k - 1)) && reason.contains(&name(k + 1)),
        "readyz names both objects: {reason}"
    );
    assert!(metric(&serve, "kvreplica_errors_total{kind=\"log_gap\"}") >= 1.0);
    serve.wait_at(&vs_hex(&fx, unfinished - 1));
    // Rounds go on and change nothing.
    std::thread::sleep(Duration::from_millis(500));
    assert_rows_eq(
        &read_replica(&db),
        &fx.state_at(unfinished - 1),
        "stopped at the gap",
    );
    assert_eq!(readyz(&serve).0, 503, "still stopped");

    bucket.put(std::slice::from_ref(&missing));
    serve.wait_at(&vs_hex(&fx, fx.last_commit()));
    wait_readyz(&serve, 200, |_| true);
    assert!(serve.terminate().success());

    let clean = tmp.path().join("clean.sqlite");
    let (code, stderr) = bucket.sync(&clean, &[]);
    assert_eq!(code, Some(0), "{stderr}");
    let rows = read_replica(&db);
    assert_rows_eq(
        &rows,
        &fx.state_at(fx.last_commit()),
        "after the late object",
    );
    assert_eq!(rows, read_replica(&clean), "same rows as a clean sync");
    let points = pitr_list(&db);
    assert_eq!(points, pitr_list(&clean), "same recoverable points");
    let want: Vec<String> = fx
        .points(fx.last_commit())
        .into_iter()
        .map(|p| p.1)
        .collect();
    let got: Vec<String> = points.into_iter().map(|p| p.0).collect();
    assert_eq!(got, want);
}

#[test]
fn a_commit_whose_end_is_missing_stops_the_replica_until_it_lands_dir() {
    gap_then_late_object("dir");
}

#[test]
fn a_commit_whose_end_is_missing_stops_the_replica_until_it_lands_s3() {
    gap_then_late_object("s3");
}

/// Another export replaces the backup under the same prefix: the replica
/// applies none of it, keeps its state, and says what changed and how to
/// rebuild; a one-shot sync refuses with a code systemd does not restart.
/// A changed snapshot set alone (same `differential`), or a vanished
/// `differential`, is refused too.
fn reexport(kind: &str) {
    let old = Fixture::generate(Spec::default());
    let new = Fixture::generate(Spec {
        seed: 7,
        ranges: 6,
        pre_commits: 90,
        ..Spec::default()
    });
    assert_ne!(old.dv, new.dv);
    let bucket = Bucket::start(kind, PREFIX);
    bucket.put(&old.initial);
    let tmp = tempfile::tempdir().unwrap();
    let db = tmp.path().join("r.sqlite");
    let mut serve = bucket.serve(&db);
    serve.wait_ready();
    let at = vs_hex(&old, old.last_initial);
    serve.wait_at(&at);
    let rows = read_replica(&db);

    bucket.clear();
    bucket.put(&new.initial);
    bucket.put(&new.append);
    // While the objects are replaced it may first see `differential`
    // vanish; once the new export is in place, it says how it changed.
    let reason = wait_readyz(&serve, 503, |b| b.contains("differential changed from"));
    assert!(
        reason.contains("re-exported") && reason.contains("kvreplica sync --source"),
        "readyz says what changed and how to rebuild: {reason}"
    );
    assert!(metric(&serve, "kvreplica_errors_total{kind=\"reexported\"}") >= 1.0);
    std::thread::sleep(Duration::from_millis(500));
    serve.wait_at(&at);
    assert_eq!(read_replica(&db), rows, "nothing of the new export applied");
    assert_eq!(readyz(&serve).0, 503, "still stopped");
    assert!(serve.log().contains("re-exported"), "an ERROR line");
    assert!(serve.terminate().success());
    let points = pitr_list(&db);
    assert_eq!(points.len(), old.points(old.last_initial).len());

    let (code, stderr) = bucket.sync(&db, &[]);
    assert_eq!(code, Some(65), "{stderr}");
    assert!(stderr.contains("re-exported"), "{stderr}");

    // The old export back, with one more snapshot range: its differential
    // is the one the replica knows, its snapshot set is not.
    bucket.clear();
    bucket.put(&old.initial);
    bucket.put(&[(
        "snapshots/0001_0000000000000043_0000000000000000.bin".to_string(),
        Vec::new(),
    )]);
    let (code, stderr) = bucket.sync(&db, &[]);
    assert_eq!(code, Some(65), "{stderr}");
    assert!(stderr.contains("snapshot set changed"), "{stderr}");

    // `differential` gone (an export being replaced): not followed either.
    bucket.clear();
    let without: Vec<_> = old
        .initial
        .iter()
        .filter(|(rel, _)| rel != "differential")
        .cloned()
        .collect();
    assert_eq!(without.len() + 1, old.initial.len());
    bucket.put(&without);
    let (code, stderr) = bucket.sync(&db, &[]);
    assert_eq!(code, Some(65), "{stderr}");
    assert!(stderr.contains("differential vanished"), "{stderr}");
    assert_eq!(read_replica(&db), rows);
    assert_eq!(pitr_list(&db), points);
}

#[test]
fn a_reexported_backup_is_not_followed_dir() {
    reexport("dir");
}

#[test]
fn a_reexported_backup_is_not_followed_s3() {
    reexport("s3");
}

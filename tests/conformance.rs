//! The source conformance suite: the same scenarios, unchanged, against
//! every kind of source — a local directory, a real S3-compatible server
//! (s3s-fs) and a real GCS emulator (fake-gcs-server), all on 127.0.0.1.
//! A new source is done when it passes this file with one more backend.

mod common;
#[path = "common/gcs_server.rs"]
mod gcs_server;
#[path = "common/s3_server.rs"]
mod s3_server;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::fixture::{assert_rows_eq, expected_rows, Fixture, Spec};
use common::{integrity_ok, kill_after, pitr_list, read_replica, terminate, wait_for_rows, Sample};

const BUCKET: &str = "kv-backup";
const PREFIX: &str = "backups/3f1c2a7e-0000-4000-8000-000000000001/";

/// How long a replica may take to pick up an object in the `--follow`
/// scenario: many poll intervals, far below a hung test.
const FOLLOW_TIMEOUT: Duration = Duration::from_secs(20);

/// One place to put objects and the arguments that make kvreplica read it.
enum Backend {
    Dir(tempfile::TempDir),
    S3(s3_server::S3Server),
    Gcs(gcs_server::GcsServer),
}

impl Backend {
    fn start(kind: &str) -> Backend {
        match kind {
            "dir" => Backend::Dir(tempfile::tempdir().unwrap()),
            "s3" => {
                let s = s3_server::S3Server::start();
                s.create_bucket(BUCKET);
                Backend::S3(s)
            }
            "gcs" => {
                let s = gcs_server::GcsServer::start();
                s.create_bucket(BUCKET);
                Backend::Gcs(s)
            }
            other => panic!("unknown backend {other}"),
        }
    }

    /// Stores one object at `<PREFIX><rel>`.
    fn put(&self, rel: &str, body: &[u8]) {
        match self {
            Backend::Dir(d) => {
                let p = d.path().join(PREFIX).join(rel);
                std::fs::create_dir_all(p.parent().unwrap()).unwrap();
                std::fs::write(p, body).unwrap();
            }
            Backend::S3(s) => s.put(BUCKET, &format!("{PREFIX}{rel}"), body),
            Backend::Gcs(s) => s.put(BUCKET, &format!("{PREFIX}{rel}"), body),
        }
    }

    fn put_all(&self, objects: &[(String, Vec<u8>)]) {
        for (rel, body) in objects {
            self.put(rel, body);
        }
    }

    /// Uploads a sample's tree (object keys = paths below `root`).
    fn put_tree(&self, root: &Path) {
        match self {
            Backend::Dir(d) => common::copy_dir(root, d.path()),
            Backend::S3(s) => s.put_dir(BUCKET, "", root),
            Backend::Gcs(s) => s.put_dir(BUCKET, "", root),
        }
    }

    /// `kvreplica sync` reading the backup at `prefix`.
    fn sync_cmd_at(&self, prefix: &str, db: &Path) -> Command {
        let mut c = Command::new(common::kvreplica_bin());
        c.arg("sync").arg("--db").arg(db).env_remove("RUST_LOG");
        match self {
            Backend::Dir(d) => {
                c.args([
                    "--source",
                    &format!("file://{}/{prefix}", d.path().display()),
                ]);
            }
            Backend::S3(s) => {
                c.args(["--source", &format!("s3://{BUCKET}/{prefix}")])
                    .args(["--s3-endpoint", &s.endpoint()])
                    .env("AWS_ACCESS_KEY_ID", s.access_key())
                    .env("AWS_SECRET_ACCESS_KEY", s.secret_key());
            }
            Backend::Gcs(s) => {
                c.args(["--source", &format!("gs://{BUCKET}/{prefix}")])
                    .args(["--gcs-endpoint", &s.endpoint()]);
            }
        }
        c
    }

    fn sync_cmd(&self, db: &Path) -> Command {
        self.sync_cmd_at(PREFIX, db)
    }

    fn sync_ok(&self, db: &Path) {
        let out = self.sync_cmd(db).output().unwrap();
        assert!(
            out.status.success(),
            "sync failed ({}):\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// A shared sample syncs to its expected contents and points, initial
/// bucket then appended logs.
fn sample(kind: &str, name: &str) {
    let s = Sample::load(name);
    assert_eq!(s.prefix, PREFIX);
    let b = Backend::start(kind);
    b.put_tree(&s.bucket_root);
    let tmp = tempfile::tempdir().unwrap();
    let db = tmp.path().join("r.sqlite");
    b.sync_ok(&db);
    s.json0.assert_final(&read_replica(&db));
    assert_eq!(pitr_list(&db), s.json0.points());
    b.put_tree(&s.append_root);
    b.sync_ok(&db);
    s.json1.assert_final(&read_replica(&db));
    assert_eq!(pitr_list(&db), s.json1.points());
}

/// A generated backup (format-0 and format-1 names, commits split across
/// objects, an empty range) survives SIGKILLs during the snapshot and the
/// log apply, then converges byte for byte with every point present once.
fn generated_with_kills(kind: &str) {
    let fx = Fixture::generate(Spec {
        seed: 5,
        keys: 3000,
        ranges: 10,
        pre_commits: 100,
        post_commits: 100,
        append_commits: 60,
        muts_per_log: 10,
        ..Spec::default()
    });
    let b = Backend::start(kind);
    b.put_all(&fx.initial);
    let tmp = tempfile::tempdir().unwrap();
    let db = tmp.path().join("r.sqlite");
    let mut kills = 0;
    for (event, nth) in [
        ("snapshot range loaded", 2),
        ("snapshot range loaded", 3),
        ("log batch stored", 2),
        ("log batch stored", 4),
        ("log batch stored", 3),
    ] {
        let mut cmd = b.sync_cmd(&db);
        cmd.args(["--fetch-concurrency", "1", "--page-size", "3"]);
        if kill_after(cmd, event, nth) {
            kills += 1;
            assert!(integrity_ok(&db));
        }
    }
    assert!(
        kills >= 4,
        "only {kills} kills landed before the sync finished"
    );
    b.sync_ok(&db);
    assert_rows_eq(
        &read_replica(&db),
        &fx.state_at(fx.last_initial),
        "after kills",
    );
    let want: Vec<String> = fx
        .points(fx.last_initial)
        .into_iter()
        .map(|p| p.1)
        .collect();
    let got: Vec<String> = pitr_list(&db).into_iter().map(|p| p.0).collect();
    assert_eq!(got, want, "points after kills");

    b.put_all(&fx.append);
    b.sync_ok(&db);
    assert_rows_eq(
        &read_replica(&db),
        &fx.state_at(fx.last_commit()),
        "after append",
    );
    assert_eq!(pitr_list(&db).len(), fx.points(fx.last_commit()).len());
}

/// `sync --follow` picks up appended objects, one at a time, in order.
fn follow(kind: &str) {
    let fx = Fixture::generate(Spec {
        seed: 13,
        append_commits: 25,
        split_commits: false,
        ..Spec::default()
    });
    let b = Backend::start(kind);
    b.put_all(&fx.initial);
    let tmp = tempfile::tempdir().unwrap();
    let db = tmp.path().join("r.sqlite");
    let mut cmd = b.sync_cmd(&db);
    let mut child = cmd
        .args(["--follow", "--poll-interval", "50ms"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let want = expected_rows(&fx.state_at(fx.last_initial));
    wait_for_rows(&db, FOLLOW_TIMEOUT, "initial", |rows| rows == &want);
    let mut commit = fx.last_initial;
    for (rel, body) in &fx.append {
        b.put(rel, body);
        let last_vs = &rel[rel.len() - 4 - 24..rel.len() - 4 - 4];
        while hex::encode(fx.commits[commit].versionstamp) != last_vs {
            commit += 1;
        }
        let want = expected_rows(&fx.state_at(commit));
        wait_for_rows(&db, FOLLOW_TIMEOUT, rel, |rows| rows == &want);
    }
    assert_eq!(commit, fx.last_commit());
    let status = terminate(&mut child);
    assert!(status.success(), "exit after SIGTERM: {status}");
}

/// A corrupt log object stops the sync with the object named; the replica
/// keeps its last good state.
fn corrupt_log(kind: &str) {
    let fx = Fixture::generate(Spec {
        seed: 17,
        append_commits: 10,
        split_commits: false,
        ..Spec::default()
    });
    let b = Backend::start(kind);
    b.put_all(&fx.initial);
    let tmp = tempfile::tempdir().unwrap();
    let db = tmp.path().join("r.sqlite");
    b.sync_ok(&db);
    let before = read_replica(&db);
    let points = pitr_list(&db);
    let (rel, _) = &fx.append[0];
    b.put(rel, b"\x0a\xff\xff\xff\xff not protobuf");
    let out = b.sync_cmd(&db).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "sync accepted a corrupt object");
    assert!(
        stderr.contains(rel.as_str()),
        "error does not name {rel}:\n{stderr}"
    );
    assert_eq!(read_replica(&db), before);
    assert_eq!(pitr_list(&db), points);
}

/// A prefix with nothing under it is an error that says so, not a wait.
fn wrong_prefix(kind: &str) {
    let fx = Fixture::generate(Spec::default());
    let b = Backend::start(kind);
    b.put_all(&fx.initial);
    let tmp = tempfile::tempdir().unwrap();
    let db = tmp.path().join("r.sqlite");
    let out = b
        .sync_cmd_at("backups/no-such-database/", &db)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("no backup") && stderr.contains("no-such-database"),
        "unclear error:\n{stderr}"
    );
}

macro_rules! suite {
    ($($backend:ident),*) => {$(
        mod $backend {
            #[test]
            fn sample_1() { super::sample(stringify!($backend), "sample-1") }
            #[test]
            fn sample_2() { super::sample(stringify!($backend), "sample-2") }
            #[test]
            fn generated_with_kills() { super::generated_with_kills(stringify!($backend)) }
            #[test]
            fn follow() { super::follow(stringify!($backend)) }
            #[test]
            fn corrupt_log() { super::corrupt_log(stringify!($backend)) }
            #[test]
            fn wrong_prefix() { super::wrong_prefix(stringify!($backend)) }
        }
    )*};
}

suite!(dir, s3, gcs);

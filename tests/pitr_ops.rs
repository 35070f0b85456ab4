//! Point-in-time recovery as operators meet it: a checkout to a time past
//! the newest point is refused (it would pin the replica and hide new
//! commits), a checkout is on disk before it is answered, and the reading
//! commands work on a replica file they cannot write.

mod common;

use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::serve::{Method, ServeProcess};
use common::{kvreplica_bin, pitr_list, run, run_ok, Sample};
use serde_json::{json, Value};

/// A time after every sample's commits.
const FAR_FUTURE: &str = "2099-01-01T00:00:00Z";

/// `POST /pitr/checkout` with `body`.
fn checkout(serve: &ServeProcess, body: Value) -> (u16, Value) {
    serve.admin(Method::Post, "/pitr/checkout", body)
}

/// `kvreplica pitr --db <db> <args>`.
fn pitr(db: &Path, args: &[&str]) -> std::process::Output {
    let db = db.display().to_string();
    let mut all = vec!["pitr", "--db", &db];
    all.extend_from_slice(args);
    run(&all)
}

/// The sample synced once into `<tmp>/r.sqlite`; returns the source URL.
fn synced(sample: &Sample, tmp: &Path) -> String {
    let source = sample.install_initial(&tmp.join("bucket"));
    let db = tmp.join("r.sqlite").display().to_string();
    run_ok(&["sync", "--source", &source, "--db", &db]);
    source
}

#[test]
fn a_checkout_past_the_newest_point_is_refused_and_names_latest() {
    let sample = Sample::load("sample-1");
    let tmp = tempfile::tempdir().unwrap();
    let source = synced(&sample, tmp.path());
    let db = tmp.path().join("r.sqlite");
    let latest0 = sample.json0.latest_point();

    // The command line.
    let out = pitr(&db, &["checkout", FAR_FUTURE]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "accepted: {stderr}");
    assert!(
        stderr.contains("after the newest point") && stderr.contains(&latest0),
        "{stderr}"
    );
    assert!(stderr.contains("`latest`"), "suggests latest: {stderr}");
    let info = String::from_utf8(pitr(&db, &["info"]).stdout).unwrap();
    assert!(info.contains("mode: following"), "{info}");
    // The newest point's own time is still a valid target.
    let (_, newest_time) = pitr_list(&db).pop().unwrap();
    let out = pitr(&db, &["checkout", &newest_time]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = pitr(&db, &["checkout", "latest"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // The admin API answers like for a time before the earliest point.
    let db = db.display().to_string();
    let mut serve =
        ServeProcess::start(&["--source", &source, "--db", &db, "--poll-interval", "100ms"]);
    serve.wait_ready();
    serve.wait_at(&latest0);
    let (status, body) = checkout(&serve, json!({ "timestamp": FAR_FUTURE }));
    assert_eq!(status, 404, "{body}");
    let msg = body["error"].as_str().unwrap_or_default();
    assert!(
        msg.contains("after the newest point") && msg.contains("`latest`"),
        "{msg}"
    );
    let (_, current) = serve.admin(Method::Get, "/pitr/current", Value::Null);
    assert_eq!(current["mode"], "following", "{current}");
    // So the replica still follows: new commits show.
    sample.install_append(&tmp.path().join("bucket"));
    serve.wait_at(&sample.json1.latest_point());
}

/// fsync/fdatasync calls of a traced process on the replica's write-ahead
/// log, from `strace -y` output.
fn wal_syncs(trace: &str) -> usize {
    trace
        .lines()
        .filter(|l| (l.contains("fsync(") || l.contains("fdatasync(")) && l.contains("-wal>"))
        .count()
}

#[test]
fn an_admin_checkout_is_synced_to_disk_before_it_is_answered() {
    let sample = Sample::load("sample-1");
    let tmp = tempfile::tempdir().unwrap();
    let source = synced(&sample, tmp.path());
    let db = tmp.path().join("r.sqlite").display().to_string();
    let mut serve = ServeProcess::start(&["--source", &source, "--db", &db]);
    serve.wait_ready();
    serve.wait_at(&sample.json0.latest_point());
    // A first write to a fresh write-ahead log syncs its header whatever
    // the settings: check out once before tracing, so the traced checkout
    // appends to a log that exists.
    let points = sample.json0.points();
    let (status, body) = checkout(&serve, json!({ "versionstamp": points[5].0 }));
    assert_eq!(status, 200, "{body}");

    // Trace the server's file syncs (all its threads) from here on.
    let trace = tmp.path().join("strace.txt");
    let mut strace = Command::new("strace")
        .args(["-f", "-y", "-e", "trace=fsync,fdatasync", "-o"])
        .arg(&trace)
        .args(["-p", &serve.pid().to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("strace (apt-get install strace)");
    let mut attached = String::new();
    let mut err = strace.stderr.take().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    // strace says "Process N attached" once per thread when it is ready.
    let mut buf = [0u8; 4096];
    while !attached.contains("attached") && Instant::now() < deadline {
        let n = err.read(&mut buf).unwrap();
        assert!(n > 0, "strace stopped: {attached}");
        attached.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    std::thread::sleep(Duration::from_millis(500));
    let before = wal_syncs(&std::fs::read_to_string(&trace).unwrap_or_default());

    let (status, body) = checkout(&serve, json!({ "versionstamp": points[10].0 }));
    assert_eq!(status, 200, "{body}");
    // strace may write its line a moment after the call returned; the
    // replica is pinned now, so no later write can be counted instead.
    let mut after = before;
    let deadline = Instant::now() + Duration::from_secs(2);
    while after == before && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
        after = wal_syncs(&std::fs::read_to_string(&trace).unwrap());
    }
    let _ = strace.kill();
    let _ = strace.wait();
    assert!(
        after > before,
        "no fsync of the write-ahead log between the checkout request and its answer \
         ({before} before, {after} after); trace:\n{}",
        std::fs::read_to_string(&trace).unwrap()
    );
}

/// Runs `kvreplica <args>` as the unprivileged user `nobody`: the tests run
/// as root, which SQLite's and the kernel's permission checks let write
/// anywhere.
fn run_as_nobody(args: &[&str]) -> std::process::Output {
    Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .arg(kvreplica_bin())
        .args(args)
        .env_remove("RUST_LOG")
        .output()
        .expect("setpriv (util-linux)")
}

#[test]
fn info_and_list_read_a_replica_they_cannot_write() {
    let sample = Sample::load("sample-1");
    let tmp = tempfile::tempdir().unwrap();
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    synced(&sample, tmp.path());
    // Another user's replica: the file 0444 in a 0555 directory, no -wal or
    // -shm left (sync closed it cleanly).
    let dir = tmp.path().join("ro");
    std::fs::create_dir(&dir).unwrap();
    let db = dir.join("r.sqlite");
    std::fs::copy(tmp.path().join("r.sqlite"), &db).unwrap();
    std::fs::set_permissions(&db, std::fs::Permissions::from_mode(0o444)).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o555)).unwrap();
    let db_arg = db.display().to_string();
    let want_list = run_ok(&[
        "pitr",
        "--db",
        &tmp.path().join("r.sqlite").display().to_string(),
        "list",
    ])
    .stdout;

    let out = run_as_nobody(&["pitr", "--db", &db_arg, "info"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "pitr info: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains(&format!(
            "current versionstamp: {}",
            sample.json0.latest_point()
        )),
        "{stdout}"
    );
    let out = run_as_nobody(&["pitr", "--db", &db_arg, "list"]);
    assert!(
        out.status.success(),
        "pitr list: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.stdout, want_list);
    // Nothing was created beside the file.
    let names: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, ["r.sqlite"]);
    // Checking out still needs the file to be writable, and says so.
    let out = run_as_nobody(&["pitr", "--db", &db_arg, "checkout", "latest"]);
    assert!(!out.status.success());
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
}

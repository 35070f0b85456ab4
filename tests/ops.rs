//! `kvreplica serve` as systemd and a monitoring system see it: sd_notify
//! messages on a fake `NOTIFY_SOCKET` (READY=1 only once the initial
//! snapshot is complete, watchdog pings, STOPPING=1), a clean exit on
//! SIGTERM in the middle of applying logs, and `/metrics` and `/readyz`
//! moving with the sync.

mod common;

use std::collections::BTreeMap;
use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::time::{Duration, Instant};

use common::fixture::{expected_rows, Fixture, Spec};
use common::serve::{http, metadata, Method, ServeProcess};
use common::{integrity_ok, read_replica, run_ok, Sample};

const WAIT: Duration = Duration::from_secs(60);

/// A sample bucket whose initial export has not finished: everything but
/// the `differential` mark, which [`add_differential`] writes later.
fn bucket_without_differential(sample: &Sample, dir: &Path) -> String {
    let source = sample.install_initial(dir);
    let mark = Path::new(source.strip_prefix("file://").unwrap()).join("differential");
    let body = std::fs::read(&mark).unwrap();
    std::fs::remove_file(&mark).unwrap();
    std::fs::write(dir.join("differential.later"), body).unwrap();
    source
}

fn add_differential(source: &str, dir: &Path) {
    let mark = Path::new(source.strip_prefix("file://").unwrap()).join("differential");
    std::fs::rename(dir.join("differential.later"), mark).unwrap();
}

/// Every datagram received so far on the fake notify socket.
fn drain_notify(sock: &UnixDatagram, into: &mut Vec<String>) {
    let mut buf = [0u8; 4096];
    while let Ok(n) = sock.recv(&mut buf) {
        into.push(String::from_utf8_lossy(&buf[..n]).into_owned());
    }
}

fn count(msgs: &[String], line: &str) -> usize {
    msgs.iter().filter(|m| m.lines().any(|l| l == line)).count()
}

#[test]
fn notify_ready_only_after_the_initial_snapshot_then_watchdog_and_stopping() {
    let sample = Sample::load("sample-1");
    let tmp = tempfile::tempdir().unwrap();
    let source = bucket_without_differential(&sample, &tmp.path().join("bucket"));
    let sock_path = tmp.path().join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    sock.set_nonblocking(true).unwrap();
    let db = tmp.path().join("r.sqlite").display().to_string();
    let serve = ServeProcess::start_with_env(
        &["--source", &source, "--db", &db, "--poll-interval", "100ms"],
        &[
            ("NOTIFY_SOCKET", sock_path.to_str().unwrap()),
            // 1 s: kvreplica pings every 0.5 s.
            ("WATCHDOG_USEC", "1000000"),
        ],
    );

    // Waiting for the export: alive (watchdog pings), not ready, and KV
    // Connect refuses with 503 rather than serving an empty state.
    let mut msgs = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(2);
    while Instant::now() < deadline {
        drain_notify(&sock, &mut msgs);
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        count(&msgs, "READY=1"),
        0,
        "READY before the snapshot: {msgs:?}"
    );
    assert!(
        count(&msgs, "WATCHDOG=1") >= 2,
        "watchdog pings while waiting: {msgs:?}"
    );
    assert!(
        msgs.iter()
            .any(|m| m.contains("STATUS=waiting for the backup")),
        "{msgs:?}"
    );
    assert_eq!(metadata(&serve.kv_url()).status, 503);

    add_differential(&source, &tmp.path().join("bucket"));
    let deadline = Instant::now() + WAIT;
    while count(&msgs, "READY=1") == 0 {
        assert!(
            Instant::now() < deadline,
            "no READY=1: {msgs:?}\n{}",
            serve.log()
        );
        drain_notify(&sock, &mut msgs);
        std::thread::sleep(Duration::from_millis(20));
    }
    // Ready means ready: the very next request is served.
    assert_eq!(metadata(&serve.kv_url()).status, 200);
    assert_eq!(count(&msgs, "READY=1"), 1);

    let before = count(&msgs, "WATCHDOG=1");
    std::thread::sleep(Duration::from_millis(1500));
    drain_notify(&sock, &mut msgs);
    assert!(count(&msgs, "WATCHDOG=1") >= before + 2, "{msgs:?}");
    assert!(
        msgs.iter().any(|m| m.contains("STATUS=serving 0000")),
        "status shows the visible point: {msgs:?}"
    );

    let status = serve.terminate();
    assert!(status.success(), "exit status {status}");
    drain_notify(&sock, &mut msgs);
    assert_eq!(count(&msgs, "STOPPING=1"), 1, "{msgs:?}");
}

#[test]
fn sigterm_while_applying_exits_zero_and_leaves_a_commit_boundary() {
    let fx = Fixture::generate(Spec {
        seed: 77,
        keys: 2000,
        pre_commits: 60,
        post_commits: 20,
        append_commits: 400,
        muts_per_log: 8,
        ..Spec::default()
    });
    let tmp = tempfile::tempdir().unwrap();
    let bucket = tmp.path().join("prefix");
    fx.write_initial(&bucket);
    let source = format!("file://{}/", bucket.display());
    let db_path = tmp.path().join("r.sqlite");
    let db = db_path.display().to_string();
    let serve = ServeProcess::start_with_env(
        &[
            "--source",
            &source,
            "--db",
            &db,
            "--page-size",
            "2",
            "--fetch-concurrency",
            "1",
        ],
        &[("RUST_LOG", "kvreplica=debug")],
    );
    // New commits arrive once it serves; stop it in the middle of applying
    // them (before the initial point the state is the fuzzy snapshot: never
    // served, not a point).
    let ready = Instant::now() + WAIT;
    while !serve.log().contains("replica ready") {
        assert!(Instant::now() < ready, "not ready:\n{}", serve.log());
        std::thread::sleep(Duration::from_millis(10));
    }
    fx.write_append(&bucket);
    let batches_after_ready = |log: &str| {
        log.split_once("replica ready")
            .map_or(0, |(_, after)| after.matches("log batch stored").count())
    };
    let deadline = Instant::now() + WAIT;
    while batches_after_ready(&serve.log()) < 3 {
        assert!(
            Instant::now() < deadline,
            "no log batches after ready:\n{}",
            serve.log()
        );
        std::thread::sleep(Duration::from_millis(2));
    }
    let status = serve.terminate();
    assert!(status.success(), "exit status {status}");
    assert!(integrity_ok(&db_path));

    // The visible state is exactly the state at one commit.
    let rows = read_replica(&db_path);
    let at = (0..=fx.last_commit())
        .rev()
        .find(|&i| expected_rows(&fx.state_at(i)) == rows);
    assert!(
        at.is_some(),
        "after SIGTERM the replica is not at any commit boundary"
    );
    assert!(
        at.unwrap() < fx.last_commit(),
        "SIGTERM landed after the sync finished: make the backup bigger"
    );

    // And it resumes to the end.
    run_ok(&["sync", "--source", &source, "--db", &db]);
    assert_eq!(
        read_replica(&db_path),
        expected_rows(&fx.state_at(fx.last_commit()))
    );
}

/// Samples of a Prometheus text exposition, checked line by line: every
/// line is a `# HELP`/`# TYPE` comment or `name{labels} value` with a
/// numeric value.
fn parse_metrics(text: &str) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    for line in text.lines() {
        if line.is_empty() {
            continue;
        }
        if let Some(c) = line.strip_prefix("# ") {
            assert!(
                c.starts_with("HELP ") || c.starts_with("TYPE "),
                "bad comment line {line:?}"
            );
            continue;
        }
        let (name, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("no value in {line:?}"));
        let value: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("value not a number in {line:?}"));
        let metric = name.split('{').next().unwrap();
        assert!(
            !metric.is_empty()
                && metric
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
            "bad metric name in {line:?}"
        );
        if let Some(labels) = name.strip_prefix(metric) {
            assert!(
                labels.is_empty() || (labels.starts_with('{') && labels.ends_with('}')),
                "bad labels in {line:?}"
            );
        }
        out.insert(name.to_string(), value);
    }
    out
}

fn scrape(serve: &ServeProcess) -> BTreeMap<String, f64> {
    let r = http(
        Method::Get,
        &format!("{}/metrics", serve.admin_url()),
        &[],
        Vec::new(),
    )
    .unwrap();
    assert_eq!(r.status, 200);
    assert!(
        r.content_type.starts_with("text/plain"),
        "{}",
        r.content_type
    );
    parse_metrics(&r.text())
}

fn readyz(serve: &ServeProcess) -> u16 {
    http(
        Method::Get,
        &format!("{}/readyz", serve.admin_url()),
        &[],
        Vec::new(),
    )
    .unwrap()
    .status
}

fn wait_until(what: &str, serve: &ServeProcess, check: impl Fn() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !check() {
        assert!(
            Instant::now() < deadline,
            "{what}: never happened\n{}",
            serve.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn metrics_and_readiness_follow_the_sync() {
    let sample = Sample::load("sample-1");
    let tmp = tempfile::tempdir().unwrap();
    let bucket = tmp.path().join("bucket");
    let source = bucket_without_differential(&sample, &bucket);
    let db = tmp.path().join("r.sqlite").display().to_string();
    let serve = ServeProcess::start_with_env(
        &["--source", &source, "--db", &db, "--poll-interval", "100ms"],
        &[],
    );

    assert_eq!(readyz(&serve), 503, "not ready before the snapshot");
    let m = scrape(&serve);
    assert_eq!(m["kvreplica_initial_snapshot_complete"], 0.0);

    add_differential(&source, &bucket);
    wait_until("/readyz 200", &serve, || readyz(&serve) == 200);
    let m0 = scrape(&serve);
    assert_eq!(m0["kvreplica_initial_snapshot_complete"], 1.0);
    assert!(m0["kvreplica_visible_version"] > 0.0);
    assert!(m0["kvreplica_mutations_applied_total"] > 0.0);
    assert!(m0["kvreplica_objects_fetched_total{kind=\"log\"}"] > 0.0);
    assert_eq!(
        m0["kvreplica_objects_applied_total{kind=\"log\"}"],
        m0["kvreplica_objects_fetched_total{kind=\"log\"}"]
    );
    assert!(m0["kvreplica_objects_applied_total{kind=\"snapshot\"}"] > 0.0);
    assert!(m0["kvreplica_bytes_applied_total"] > 0.0);
    assert!(m0["kvreplica_sqlite_file_bytes"] > 0.0);
    assert!(m0.contains_key("kvreplica_replication_lag_seconds"));

    // KV Connect traffic is counted by endpoint and status.
    assert_eq!(metadata(&serve.kv_url()).status, 200);
    let m = scrape(&serve);
    assert!(m["kvreplica_kv_connect_requests_total{endpoint=\"metadata\",status=\"200\"}"] >= 1.0);

    // New commits move the gauges and counters.
    sample.install_append(&bucket);
    let latest1: u64 = u64::from_str_radix(&sample.json1.latest_point()[..16], 16).unwrap();
    wait_until("visible version moves", &serve, || {
        scrape(&serve)["kvreplica_visible_version"] == latest1 as f64
    });
    let m1 = scrape(&serve);
    assert!(m1["kvreplica_mutations_applied_total"] > m0["kvreplica_mutations_applied_total"]);
    assert!(m1["kvreplica_poll_rounds_total"] > m0["kvreplica_poll_rounds_total"]);

    // The bucket disappears: polls fail, errors are counted, and after the
    // readiness window /readyz says why.
    let moved = tmp.path().join("bucket-away");
    std::fs::rename(&bucket, &moved).unwrap();
    wait_until("/readyz 503 after failed polls", &serve, || {
        readyz(&serve) == 503
    });
    // Anyone sees the status; only the admin token sees the last error,
    // which names the bucket (and could name an S3 access key id).
    let ready_body = |token: Option<&str>| {
        let auth = token.map(|t| format!("Bearer {t}"));
        let headers: Vec<(&str, &str)> =
            auth.iter().map(|a| ("authorization", a.as_str())).collect();
        let r = http(
            Method::Get,
            &format!("{}/readyz", serve.admin_url()),
            &headers,
            Vec::new(),
        )
        .unwrap();
        assert_eq!(r.status, 503);
        serde_json::from_str::<serde_json::Value>(&r.text()).unwrap()
    };
    let public = ready_body(None);
    assert_eq!(public["ready"], false, "{public}");
    assert_eq!(
        public["reason"], "no recent successful poll of the bucket",
        "{public}"
    );
    assert!(public.get("detail").is_none(), "{public}");
    let bucket_name = tmp.path().display().to_string();
    assert!(!public.to_string().contains(&bucket_name), "{public}");
    assert!(!public.to_string().contains("last error"), "{public}");
    let private = ready_body(Some(common::serve::ADMIN_TOKEN));
    let detail = private["detail"].as_str().unwrap_or_default();
    assert!(detail.contains("last error"), "{private}");
    let wrong = ready_body(Some("not-the-admin-token-at-all"));
    assert!(wrong.get("detail").is_none(), "{wrong}");
    let m = scrape(&serve);
    let errors: f64 = m
        .iter()
        .filter(|(k, _)| k.starts_with("kvreplica_errors_total"))
        .map(|(_, v)| v)
        .sum();
    assert!(errors > 0.0, "{m:?}");
    std::fs::rename(&moved, &bucket).unwrap();
    wait_until("/readyz 200 again", &serve, || readyz(&serve) == 200);
    assert!(serve.terminate().success());
}

/// Metadata exchange with `token`: the status code.
fn metadata_status(serve: &ServeProcess, token: &str) -> u16 {
    let auth = format!("Bearer {token}");
    http(
        Method::Post,
        &format!("{}/", serve.kv_url()),
        &[
            ("authorization", &auth),
            ("content-type", "application/json"),
        ],
        br#"{"supportedVersions":[2,3]}"#.to_vec(),
    )
    .unwrap()
    .status
}

/// Writes `text` to `path` the way editors and config tools do: a new
/// file renamed over the old one.
fn replace_file(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

#[test]
fn editing_the_config_file_rotates_tokens_without_a_restart() {
    let sample = Sample::load("sample-1");
    let tmp = tempfile::tempdir().unwrap();
    let source = sample.install_initial(&tmp.path().join("bucket"));
    let db = tmp.path().join("r.sqlite");
    let conf_dir = tmp.path().join("etc");
    std::fs::create_dir(&conf_dir).unwrap();
    let conf = conf_dir.join("kvreplica.toml");
    let config = |access: &str, admin: &str| {
        format!(
            "source = \"{source}\"\ndb = \"{}\"\n\n[sync]\npoll_interval = \"100ms\"\n\n\
             [server]\naddr = \"127.0.0.1:0\"\naccess_tokens = [\"{access}\"]\n\n\
             [admin]\naddr = \"127.0.0.1:0\"\ntoken = \"{admin}\"\n",
            db.display()
        )
    };
    let (old, new) = ("old-access-token-1", "new-access-token-2");
    replace_file(&conf, &config(old, "first-admin-token"));
    let mut serve = ServeProcess::start_bare(&["--config", conf.to_str().unwrap()], &[]);
    serve.wait_ready();
    assert_eq!(metadata_status(&serve, old), 200);
    assert_eq!(metadata_status(&serve, new), 401);

    replace_file(&conf, &config(new, "second-admin-token"));
    wait_until("the new token is accepted", &serve, || {
        metadata_status(&serve, new) == 200
    });
    assert_eq!(
        metadata_status(&serve, old),
        401,
        "the old token is revoked"
    );
    let admin = |token: &str| {
        http(
            Method::Get,
            &format!("{}/pitr/current", serve.admin_url()),
            &[("authorization", &format!("Bearer {token}"))],
            Vec::new(),
        )
        .unwrap()
        .status
    };
    assert_eq!(admin("second-admin-token"), 200);
    assert_eq!(admin("first-admin-token"), 401);

    // A broken edit is refused and the running config stays.
    replace_file(&conf, &config("short", "second-admin-token"));
    wait_until("the bad config is reported", &serve, || {
        serve.log().contains("keeping the previous one")
    });
    assert_eq!(metadata_status(&serve, new), 200);
    assert!(
        !serve.log().contains(new) && !serve.log().contains("second-admin-token"),
        "a token reached the log"
    );

    // SIGHUP re-reads too.
    replace_file(&conf, &config(new, "second-admin-token"));
    std::thread::sleep(Duration::from_millis(500));
    let pid = serve.pid().to_string();
    std::process::Command::new("kill")
        .args(["-HUP", &pid])
        .status()
        .unwrap();
    wait_until("SIGHUP handled", &serve, || {
        serve.log().contains("configuration reloaded (SIGHUP)")
    });
    assert!(serve.terminate().success());
}

/// Lines of `log` that contain `needle`.
fn lines_with(log: &str, needle: &str) -> usize {
    log.lines().filter(|l| l.contains(needle)).count()
}

#[test]
fn a_config_next_to_the_replica_is_read_once_per_change() {
    let sample = Sample::load("sample-1");
    let tmp = tempfile::tempdir().unwrap();
    let bucket = tmp.path().join("bucket");
    let source = sample.install_initial(&bucket);
    // The config file, the replica and its WAL share one directory.
    let dir = tmp.path().join("var");
    std::fs::create_dir(&dir).unwrap();
    let db = dir.join("r.sqlite");
    let conf = dir.join("kvreplica.toml");
    let config = |access: &str| {
        format!(
            "source = \"{source}\"\ndb = \"{}\"\n\n[sync]\npoll_interval = \"50ms\"\n\n\
             [server]\naddr = \"127.0.0.1:0\"\naccess_tokens = [\"{access}\"]\n\n\
             [admin]\naddr = \"127.0.0.1:0\"\ntoken = \"{}\"\n",
            db.display(),
            common::serve::ADMIN_TOKEN
        )
    };
    replace_file(&conf, &config("first-access-token-1"));
    let mut serve = ServeProcess::start_bare(
        &["--config", conf.to_str().unwrap()],
        &[("RUST_LOG", "info,kvreplica::reload=debug")],
    );
    serve.wait_ready();
    // Sync load: the later traffic is applied (the replica and its WAL
    // change), and another file in the directory is written all along.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let noise = {
        let (stop, path) = (stop.clone(), dir.join("other.log"));
        std::thread::spawn(move || {
            let mut n = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                std::fs::write(&path, n.to_string()).unwrap();
                n += 1;
                std::thread::sleep(Duration::from_millis(20));
            }
        })
    };
    sample.install_append(&bucket);
    serve.wait_at(&sample.json1.latest_point());
    std::thread::sleep(Duration::from_secs(1));
    let reads = |serve: &ServeProcess| lines_with(&serve.log(), "re-reading the configuration");
    assert_eq!(reads(&serve), 0, "no edit, no re-read:\n{}", serve.log());

    // A valid edit: read once.
    replace_file(&conf, &config("second-access-token-2"));
    wait_until("the new token is accepted", &serve, || {
        metadata_status(&serve, "second-access-token-2") == 200
    });
    std::thread::sleep(Duration::from_secs(2));
    let after_valid = reads(&serve);

    // An invalid edit: one error, however long it stays.
    replace_file(&conf, &config("short"));
    wait_until("the bad config is reported", &serve, || {
        serve.log().contains("keeping the previous one")
    });
    std::thread::sleep(Duration::from_secs(2));
    let log = serve.log();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    noise.join().unwrap();
    assert_eq!(lines_with(&log, "keeping the previous one"), 1, "{log}");
    assert_eq!(after_valid, 1, "one re-read for the valid edit: {log}");
    assert_eq!(reads(&serve), 2, "{log}");
    assert_eq!(metadata_status(&serve, "second-access-token-2"), 200);
    assert!(serve.terminate().success());
}

#[test]
fn a_corrupt_object_stops_the_sync_shows_in_readyz_and_metrics_and_reads_go_on() {
    let sample = Sample::load("sample-1");
    let tmp = tempfile::tempdir().unwrap();
    let bucket = tmp.path().join("bucket");
    let source = sample.install_initial(&bucket);
    let db = tmp.path().join("r.sqlite").display().to_string();
    let mut serve = ServeProcess::start_with_env(
        &["--source", &source, "--db", &db, "--poll-interval", "100ms"],
        &[],
    );
    serve.wait_ready();
    let latest0 = sample.json0.latest_point();
    serve.wait_at(&latest0);

    // The first object of the later traffic arrives as garbage.
    let logs = Path::new(source.strip_prefix("file://").unwrap()).join("logs");
    let append_logs = sample.append_root.join(&sample.prefix).join("logs");
    let first = std::fs::read_dir(&append_logs)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .min()
        .unwrap();
    std::fs::write(logs.join(&first), b"\x0a\xff\xff\xff\xffnot protobuf").unwrap();

    wait_until("/readyz 503 on the corrupt object", &serve, || {
        readyz(&serve) == 503
    });
    // The detail (with the last error) is for the admin token only.
    let r = http(
        Method::Get,
        &format!("{}/readyz", serve.admin_url()),
        &[(
            "authorization",
            &format!("Bearer {}", common::serve::ADMIN_TOKEN),
        )],
        Vec::new(),
    )
    .unwrap();
    assert!(
        r.text().contains(first.to_str().unwrap()),
        "readyz names the object: {}",
        r.text()
    );
    let m = scrape(&serve);
    assert!(
        m["kvreplica_errors_total{kind=\"corrupt_object\"}"] >= 1.0,
        "{m:?}"
    );
    // Reads go on from the last good state.
    assert_eq!(metadata(&serve.kv_url()).status, 200);
    serve.wait_at(&latest0);

    // The real object replaces the garbage: the sync resumes by itself.
    sample.install_append(&bucket);
    serve.wait_at(&sample.json1.latest_point());
    wait_until("/readyz 200 after the repair", &serve, || {
        readyz(&serve) == 200
    });
    assert!(serve.terminate().success());
}

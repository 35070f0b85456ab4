//! kvreplica against a misbehaving object store: every request goes through
//! a fault-injecting proxy (`common/fault_proxy.rs`) in front of a real S3
//! server (s3s-fs) or GCS emulator (fake-gcs-server), which answers some
//! requests with 500s, 503s, throttling, resets (before and during the
//! answer), stalls longer than `--request-timeout`, truncated bodies, and
//! listed objects that are 404 for their first GETs.
//!
//! Whatever the faults, `sync`, `sync --follow` and `serve` must converge
//! to exactly the expected state with every recoverable point present once,
//! the retries must show in the logs (and a failed round in `/metrics`),
//! nothing may hang, and a refusal that no retry mends (403) must end the
//! run at once with the key id named.

#[path = "common/bounded.rs"]
mod bounded;
mod common;
#[path = "common/fault_proxy.rs"]
mod fault_proxy;
#[path = "common/gcs_server.rs"]
mod gcs_server;
#[path = "common/s3_server.rs"]
mod s3_server;

use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::fixture::{assert_rows_eq, expected_rows, Fixture, Spec};
use common::serve::ServeProcess;
use common::{integrity_ok, pitr_list, read_replica, Row, Sample};
use fault_proxy::{Config, Fault, FaultProxy, Flavor, Mode};

const BUCKET: &str = "kv-backup";
const PREFIX: &str = "backups/3f1c2a7e-0000-4000-8000-000000000001/";

/// `--request-timeout` of every run: short, so a stalled answer costs a
/// second, not the default half minute.
const REQUEST_TIMEOUT: &str = "1s";

/// Bound on one `kvreplica sync` run through the faults.
const RUN_LIMIT: Duration = Duration::from_secs(60);

/// Bound on a follower or server reaching an expected state.
const WAIT: Duration = Duration::from_secs(45);

/// What a retry looks like in the log (src/source/retry.rs).
const RETRY_LINE: &str = "failed, retrying";

/// A real store behind a fault proxy.
struct Rig {
    server: Server,
    proxy: FaultProxy,
    /// `HOME` of the runs: nothing from the developer's setup leaks in.
    home: tempfile::TempDir,
}

enum Server {
    S3(s3_server::S3Server),
    Gcs(gcs_server::GcsServer),
}

impl Rig {
    /// A rig whose proxy injects random faults into `percent` % of the
    /// requests.
    fn start(kind: &str, seed: u64, percent: u64) -> Rig {
        Self::start_with(kind, |flavor| Config {
            fault_percent: percent,
            ..Config::new(flavor, seed)
        })
    }

    fn start_with(kind: &str, config: impl FnOnce(Flavor) -> Config) -> Rig {
        let (server, flavor) = match kind {
            "s3" => {
                let s = s3_server::S3Server::start();
                s.create_bucket(BUCKET);
                (
                    Server::S3(s),
                    Flavor::S3 {
                        bucket: BUCKET.into(),
                    },
                )
            }
            "gcs" => {
                let s = gcs_server::GcsServer::start();
                s.create_bucket(BUCKET);
                (Server::Gcs(s), Flavor::Gcs)
            }
            other => panic!("unknown backend {other}"),
        };
        let upstream = match &server {
            Server::S3(s) => s.endpoint(),
            Server::Gcs(s) => s.endpoint(),
        };
        let proxy = FaultProxy::start(&upstream, config(flavor));
        Rig {
            server,
            proxy,
            home: tempfile::tempdir().unwrap(),
        }
    }

    /// Stores `<PREFIX><rel>`. On S3 the file is written aside and renamed
    /// into the bucket, so that a concurrent GET never sees half of it.
    fn put(&self, rel: &str, body: &[u8]) {
        let key = format!("{PREFIX}{rel}");
        match &self.server {
            Server::S3(s) => {
                let path = s.object_path(BUCKET, &key);
                std::fs::create_dir_all(path.parent().unwrap()).unwrap();
                let aside = s.root().join(format!(".upload-{}", rel.replace('/', "_")));
                std::fs::write(&aside, body).unwrap();
                std::fs::rename(&aside, &path).unwrap();
            }
            Server::Gcs(s) => s.put(BUCKET, &key, body),
        }
    }

    fn put_all(&self, objects: &[(String, Vec<u8>)]) {
        for (rel, body) in objects {
            self.put(rel, body);
        }
    }

    /// Uploads a sample's tree (object keys = paths below `root`).
    fn put_tree(&self, root: &Path) {
        match &self.server {
            Server::S3(s) => s.put_dir(BUCKET, "", root),
            Server::Gcs(s) => s.put_dir(BUCKET, "", root),
        }
    }

    /// The arguments that make kvreplica read the bucket through the proxy.
    fn source_args(&self) -> Vec<String> {
        let mut a = vec!["--request-timeout".to_string(), REQUEST_TIMEOUT.into()];
        match &self.server {
            Server::S3(_) => a.extend([
                "--source".into(),
                format!("s3://{BUCKET}/{PREFIX}"),
                "--s3-endpoint".into(),
                self.proxy.endpoint(),
            ]),
            Server::Gcs(_) => a.extend([
                "--source".into(),
                format!("gs://{BUCKET}/{PREFIX}"),
                "--gcs-endpoint".into(),
                self.proxy.endpoint(),
            ]),
        }
        a
    }

    /// The environment of every run: S3 keys (the server's), info logs.
    fn env(&self) -> Vec<(String, String)> {
        let mut e = vec![
            ("HOME".to_string(), self.home.path().display().to_string()),
            ("AWS_EC2_METADATA_DISABLED".into(), "true".into()),
            ("RUST_LOG".into(), "kvreplica=info".into()),
        ];
        if let Server::S3(s) = &self.server {
            e.push(("AWS_ACCESS_KEY_ID".into(), s.access_key().into()));
            e.push(("AWS_SECRET_ACCESS_KEY".into(), s.secret_key().into()));
        }
        e
    }

    /// `kvreplica sync` of `db` through the proxy, with `extra` flags.
    fn sync(&self, db: &Path, extra: &[&str]) -> Command {
        let mut cmd = self.command("sync", db);
        cmd.args(extra);
        cmd
    }

    /// `kvreplica <sub>` of `db` through the proxy, in a clean environment.
    fn command(&self, sub: &str, db: &Path) -> Command {
        let mut cmd = Command::new(common::kvreplica_bin());
        for var in [
            "AWS_ACCESS_KEY_ID",
            "AWS_SECRET_ACCESS_KEY",
            "AWS_SESSION_TOKEN",
            "AWS_PROFILE",
            "AWS_SHARED_CREDENTIALS_FILE",
            "AWS_ROLE_ARN",
            "AWS_WEB_IDENTITY_TOKEN_FILE",
            "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
            "AWS_CONTAINER_CREDENTIALS_FULL_URI",
            "AWS_REGION",
            "AWS_DEFAULT_REGION",
            "GOOGLE_APPLICATION_CREDENTIALS",
            "STORAGE_EMULATOR_HOST",
            "KVREPLICA_CONFIG",
            "KVREPLICA_LOG_LEVEL",
            "RUST_LOG",
        ] {
            cmd.env_remove(var);
        }
        cmd.arg(sub)
            .arg("--db")
            .arg(db)
            .args(self.source_args())
            .envs(self.env());
        cmd
    }
}

/// The stderr of a child, collected by a thread as it comes.
struct Log {
    text: Arc<Mutex<String>>,
    reader: Option<std::thread::JoinHandle<()>>,
}

impl Log {
    fn collect(child: &mut Child) -> Log {
        let text = Arc::new(Mutex::new(String::new()));
        let mut stderr = child.stderr.take().expect("piped stderr");
        let into = text.clone();
        let reader = std::thread::spawn(move || {
            let mut buf = [0u8; 8192];
            loop {
                match stderr.read(&mut buf) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => into
                        .lock()
                        .unwrap()
                        .push_str(&String::from_utf8_lossy(&buf[..n])),
                }
            }
        });
        Log {
            text,
            reader: Some(reader),
        }
    }

    fn text(&self) -> String {
        self.text.lock().unwrap().clone()
    }

    /// Everything, once the child has exited (its end of the pipe closed).
    fn finish(&mut self) -> String {
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
        self.text()
    }
}

/// The last `n` lines of a log, for failure messages.
fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Runs a command to its end, at most `limit`; returns its status and
/// stderr.
fn run_bounded(mut cmd: Command, limit: Duration) -> (ExitStatus, String) {
    let (status, stderr) = bounded::run(&mut cmd, limit);
    (status, String::from_utf8_lossy(&stderr).into_owned())
}

/// Runs `sync` to completion through the faults and returns its log;
/// fails the test on a non-zero exit.
fn sync_ok(rig: &Rig, db: &Path, extra: &[&str], label: &str) -> String {
    let before = rig.proxy.total_faults();
    let (status, log) = run_bounded(rig.sync(db, extra), RUN_LIMIT);
    assert!(
        status.success(),
        "{label}: sync failed ({status}) through the faults.\n{}\nlast faults: {:#?}\nlog tail:\n{}",
        rig.proxy.table(label),
        last_faults(&rig.proxy, 8),
        tail(&log, 40)
    );
    let faults = rig.proxy.total_faults() - before;
    assert_retries_logged(&log, faults, label);
    log
}

fn last_faults(proxy: &FaultProxy, n: usize) -> Vec<String> {
    let all = proxy.injected();
    all[all.len().saturating_sub(n)..]
        .iter()
        .map(|i| format!("{}: {}", i.fault.name(), i.request))
        .collect()
}

/// Every fault fails one attempt of one call, and every failed attempt
/// that is retried leaves one retry line: a run that ended (not one that
/// was stopped mid-request) shows at least as many retries as faults.
fn assert_retries_logged(log: &str, faults: u64, label: &str) {
    let retries = log.lines().filter(|l| l.contains(RETRY_LINE)).count() as u64;
    assert!(
        retries >= faults,
        "{label}: {faults} faults injected but only {retries} retries logged:\n{}",
        tail(log, 40)
    );
}

/// Asserts every kind of [`Mode::Random`] was injected at least `min`
/// times, and that the real server answered every forwarded request.
fn assert_every_kind(proxy: &FaultProxy, min: u64, label: &str) {
    let counts = proxy.counts();
    let table = proxy.table(label);
    eprintln!("{table}");
    for k in Fault::ALL_RANDOM {
        let n = counts.get(&k).copied().unwrap_or(0);
        assert!(
            n >= min,
            "{label}: {} injected {n} times (< {min})\n{table}",
            k.name()
        );
    }
    assert!(
        proxy.upstream_errors().is_empty(),
        "{label}: the real server failed requests: {:?}",
        proxy.upstream_errors()
    );
    // The requests reached the server with the Host they were signed for
    // (SigV4 on S3): the proxy's address, as the client sent it.
    let host = proxy.endpoint().trim_start_matches("http://").to_string();
    assert_eq!(
        proxy.hosts(),
        std::collections::BTreeSet::from([host]),
        "{label}: Host headers"
    );
}

/// Rows of the replica once its file is readable (it may be mid-creation).
fn try_rows(db: &Path) -> Option<BTreeMap<String, Row>> {
    if !db.exists() {
        return None;
    }
    std::panic::catch_unwind(|| read_replica(db)).ok()
}

/// Asserts the replica holds exactly the state after commit `upto`, every
/// recoverable point up to it once, and a sound file.
fn assert_converged(db: &Path, fx: &Fixture, upto: usize, label: &str) {
    assert_rows_eq(&read_replica(db), &fx.state_at(upto), label);
    let want_points: Vec<String> = fx.points(upto).into_iter().map(|p| p.1).collect();
    let got_points: Vec<String> = pitr_list(db).into_iter().map(|p| p.0).collect();
    assert_eq!(got_points, want_points, "{label}: recoverable points");
    assert!(integrity_ok(db), "{label}: integrity check");
}

/// The commit whose state is visible once the log object `rel` is applied:
/// the commit its last entry belongs to when that entry ends the commit,
/// else the one before (the rest of the commit is in the next object).
fn visible_after(fx: &Fixture, rel: &str) -> usize {
    let stem = rel.trim_end_matches(".bin");
    let last = &stem[stem.len() - 24..];
    let (vs, idx) = last.split_at(20);
    let c = fx
        .commits
        .iter()
        .position(|c| hex::encode(c.versionstamp) == vs)
        .unwrap_or_else(|| panic!("{rel}: no commit {vs}"));
    if idx == "ffff" {
        c
    } else {
        c - 1
    }
}

/// A `kvreplica sync --follow` running in the background.
struct Follower {
    child: Child,
    log: Log,
}

impl Follower {
    fn spawn(mut cmd: Command) -> Follower {
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start kvreplica sync --follow");
        let log = Log::collect(&mut child);
        Follower { child, log }
    }

    /// Waits (bounded) until the replica's rows are `want`.
    fn wait_rows(
        &mut self,
        db: &Path,
        want: &BTreeMap<String, Row>,
        label: &str,
        proxy: &FaultProxy,
    ) {
        let deadline = Instant::now() + WAIT;
        loop {
            if try_rows(db).as_ref() == Some(want) {
                return;
            }
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!(
                    "{label}: the follower exited ({status}); log tail:\n{}",
                    tail(&self.log.finish(), 40)
                );
            }
            if Instant::now() > deadline {
                panic!(
                    "{label}: the follower did not get there within {WAIT:?}.\n{}\nlast faults: {:#?}\nlog tail:\n{}",
                    proxy.table(label),
                    last_faults(proxy, 8),
                    tail(&self.log.text(), 40)
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits (bounded) until the log has a line containing `text`.
    fn wait_log(&mut self, text: &str, proxy: &FaultProxy) {
        let deadline = Instant::now() + WAIT;
        while !self.log.text().contains(text) {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!(
                    "the follower exited ({status}); log tail:\n{}",
                    tail(&self.log.finish(), 40)
                );
            }
            assert!(
                Instant::now() < deadline,
                "no {text:?} in the follower's log within {WAIT:?}.\n{}\nlog tail:\n{}",
                proxy.table("follow"),
                tail(&self.log.text(), 40)
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGTERM, a bounded wait for the exit, and the whole log.
    fn stop(mut self) -> (ExitStatus, String) {
        let status = common::terminate(&mut self.child);
        (status, self.log.finish())
    }
}

impl Drop for Follower {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A generated backup (fuzzy snapshot ranges, an empty range, format-0
/// and format-1 names, commits split across objects) synced once through
/// the faults, then followed while its later log objects are appended.
fn generated(kind: &str, seed: u64) {
    let started = Instant::now();
    let fx = Fixture::generate(Spec {
        seed,
        keys: 400,
        ranges: 5,
        pre_commits: 50,
        post_commits: 50,
        append_commits: 30,
        muts_per_log: 8,
        ..Spec::default()
    });
    let rig = Rig::start(kind, seed, 30);
    rig.put_all(&fx.initial);
    let tmp = tempfile::tempdir().unwrap();
    let db = tmp.path().join("r.sqlite");

    sync_ok(
        &rig,
        &db,
        &["--page-size", "10"],
        &format!("{kind}: initial sync"),
    );
    assert_converged(&db, &fx, fx.last_initial, "initial sync");

    let mut follower = Follower::spawn(rig.sync(
        &db,
        &["--follow", "--poll-interval", "100ms", "--page-size", "4"],
    ));
    // Objects appended from here on are picked up by the polling, not by
    // the catch-up a start begins with.
    follower.wait_log("replica is at the newest point", &rig.proxy);
    let groups = fx.append.chunks(fx.append.len().div_ceil(3).max(1));
    for (i, group) in groups.enumerate() {
        rig.put_all(group);
        let (rel, _) = group.last().unwrap();
        let want = expected_rows(&fx.state_at(visible_after(&fx, rel)));
        follower.wait_rows(
            &db,
            &want,
            &format!("{kind}: follow, group {i}"),
            &rig.proxy,
        );
    }
    let (status, log) = follower.stop();
    assert!(
        status.success(),
        "exit after SIGTERM: {status}\n{}",
        tail(&log, 20)
    );
    assert!(log.contains(RETRY_LINE), "no retry logged while following");
    assert_converged(&db, &fx, fx.last_commit(), "after follow");
    assert_every_kind(&rig.proxy, 3, &format!("{kind}: generated backup"));
    eprintln!("{kind}: generated backup done in {:?}", started.elapsed());
}

/// Both shared samples, each on a store and proxy of its own, at the same
/// time (the runs mostly wait out backoffs and stalls).
fn samples(kind: &str, seed: u64) {
    let started = Instant::now();
    std::thread::scope(|scope| {
        let runs: Vec<_> = ["sample-1", "sample-2"]
            .into_iter()
            .zip(seed..)
            .map(|(name, seed)| scope.spawn(move || sample(kind, name, seed)))
            .collect();
        // Join all, then re-raise the first failure as it was.
        let failures: Vec<_> = runs.into_iter().filter_map(|r| r.join().err()).collect();
        if let Some(payload) = failures.into_iter().next() {
            std::panic::resume_unwind(payload);
        }
    });
    eprintln!("{kind}: samples done in {:?}", started.elapsed());
}

/// A shared sample syncs through the faults to its expected contents and
/// points, then again after its appended logs.
fn sample(kind: &str, name: &str, seed: u64) {
    let started = Instant::now();
    let s = Sample::load(name);
    assert_eq!(s.prefix, PREFIX);
    let rig = Rig::start(kind, seed, 25);
    rig.put_tree(&s.bucket_root);
    let tmp = tempfile::tempdir().unwrap();
    let db = tmp.path().join("r.sqlite");
    let label = format!("{kind}: {name}");
    sync_ok(
        &rig,
        &db,
        &["--page-size", "10"],
        &format!("{label}, initial"),
    );
    s.json0.assert_final(&read_replica(&db));
    assert_eq!(pitr_list(&db), s.json0.points(), "{label}: points");
    assert!(integrity_ok(&db));
    rig.put_tree(&s.append_root);
    sync_ok(
        &rig,
        &db,
        &["--page-size", "3"],
        &format!("{label}, append"),
    );
    s.json1.assert_final(&read_replica(&db));
    assert_eq!(
        pitr_list(&db),
        s.json1.points(),
        "{label}: points after append"
    );
    assert!(integrity_ok(&db));
    assert_every_kind(&rig.proxy, 1, &label);
    eprintln!("{label} done in {:?}", started.elapsed());
}

/// What one run with a single kind of fault came to.
struct KindOutcome {
    fault: Fault,
    injected: u64,
    retries: u64,
    took: Duration,
    /// `ok`, or what went wrong.
    outcome: String,
}

/// A one-shot sync of `fx` through a proxy that injects only `fault`.
fn sync_with_only(kind: &str, seed: u64, fx: &Fixture, fault: Fault) -> KindOutcome {
    let rig = Rig::start_with(kind, |flavor| {
        let mut c = Config::new(flavor, seed);
        // Stalls cost a request timeout each: fewer of them.
        c.fault_percent = if matches!(fault, Fault::Stall | Fault::StallMidBody) {
            10
        } else {
            30
        };
        c.max_faults_per_key = 2;
        c.not_found_percent = 0;
        c.kinds = vec![fault];
        if fault == Fault::NotFoundAtFirst {
            c.not_found_percent = 60;
            c.kinds = Vec::new();
        }
        c
    });
    rig.put_all(&fx.initial);
    let tmp = tempfile::tempdir().unwrap();
    let db = tmp.path().join("r.sqlite");
    let started = Instant::now();
    let (status, log) = run_bounded(rig.sync(&db, &[]), RUN_LIMIT);
    let took = started.elapsed();
    let injected = rig.proxy.total_faults();
    let retries: Vec<&str> = log.lines().filter(|l| l.contains(RETRY_LINE)).collect();
    let named = retries.iter().filter(|l| names_cause(fault, l)).count() as u64;
    let outcome = if !status.success() {
        format!("FAILED: {}", log.lines().last().unwrap_or(""))
    } else if read_replica(&db) != expected_rows(&fx.state_at(fx.last_initial)) {
        "WRONG STATE".to_string()
    } else if named < injected {
        let example = retries
            .iter()
            .find(|l| !names_cause(fault, l))
            .and_then(|l| l.split_once("error=").map(|(_, e)| e))
            .unwrap_or("");
        format!(
            "cause not named in {} of {injected} retries, e.g. {example}",
            injected - named
        )
    } else {
        "ok".to_string()
    };
    KindOutcome {
        fault,
        injected,
        retries: retries.len() as u64,
        took,
        outcome,
    }
}

/// Whether a retry line says what went wrong in a way that points at
/// `fault`: the status or the store's own error, a timeout, a connection
/// reset or closed, a body cut short, an object not found.
fn names_cause(fault: Fault, line: &str) -> bool {
    let line = line.to_ascii_lowercase();
    let words: &[&str] = match fault {
        Fault::Http500 => &["500", "internalerror", "backend error"],
        Fault::Http503 => &["503", "service unavailable"],
        Fault::Throttle => &["slowdown", "429", "rate"],
        Fault::ResetBeforeAnswer => &["reset", "closed"],
        Fault::ResetMidBody => &["reset", "closed", "end of file"],
        Fault::Stall | Fault::StallMidBody => &["timed out", "timeout"],
        Fault::Truncated => &["end of file", "closed", "incomplete"],
        Fault::NotFoundAtFirst => &["listed but could not be found"],
        Fault::Denied | Fault::Outage => &[],
    };
    words.iter().any(|w| line.contains(w))
}

/// One kind of fault at a time, often: a one-shot sync of a small
/// generated backup must converge under each, with a retry logged for
/// every fault that says what happened (an operator reading "error
/// sending request" cannot tell a timeout from a reset). Three runs at a
/// time (they mostly wait). Prints one line per kind.
fn one_kind_at_a_time(kind: &str, seed: u64) {
    let started = Instant::now();
    let fx = Fixture::generate(Spec {
        seed,
        keys: 200,
        ranges: 2,
        pre_commits: 20,
        post_commits: 20,
        append_commits: 0,
        muts_per_log: 10,
        ..Spec::default()
    });
    let mut outcomes = Vec::new();
    for faults in Fault::ALL_RANDOM.chunks(3) {
        std::thread::scope(|scope| {
            let runs: Vec<_> = faults
                .iter()
                .map(|&f| {
                    let fx = &fx;
                    scope.spawn(move || sync_with_only(kind, seed, fx, f))
                })
                .collect();
            outcomes.extend(runs.into_iter().map(|r| r.join().expect("run thread")));
        });
    }
    let mut report = format!("{kind}: one kind of fault at a time\n");
    for o in &outcomes {
        report.push_str(&format!(
            "  {:<22} injected {:>3}  retries logged {:>3}  {:>5.1}s  {}\n",
            o.fault.name(),
            o.injected,
            o.retries,
            o.took.as_secs_f64(),
            o.outcome
        ));
    }
    eprintln!("{report}{kind}: done in {:?}", started.elapsed());
    assert!(
        outcomes
            .iter()
            .all(|o| o.outcome == "ok" && o.injected >= 1 && o.retries >= o.injected),
        "{report}"
    );
}

fn errors_by_kind(m: &BTreeMap<String, f64>) -> BTreeMap<String, f64> {
    m.iter()
        .filter(|(k, _)| k.starts_with("kvreplica_errors_total"))
        .map(|(k, v)| (k.clone(), *v))
        .collect()
}

/// `kvreplica_errors_total{kind="source_transient"}` of a server.
fn transient_errors(serve: &ServeProcess) -> f64 {
    serve
        .metrics()
        .get("kvreplica_errors_total{kind=\"source_transient\"}")
        .copied()
        .unwrap_or(0.0)
}

/// `serve` under faults: loads and follows the backup; with `outage`, a
/// store outage long enough to exhaust the retries of one call fails a
/// round, which `/metrics` counts as a transient source error (it takes
/// 11 to 23 s of backoff, so only one backend pays for it: the engine
/// above the source is the same). Then it catches up with appended
/// objects, nothing lost, and no fault shows as anything but a transient
/// error.
fn serve(kind: &str, seed: u64, outage: bool) {
    let started = Instant::now();
    let fx = Fixture::generate(Spec {
        seed,
        append_commits: 30,
        muts_per_log: 12,
        ..Spec::default()
    });
    let rig = Rig::start(kind, seed, 25);
    rig.put_all(&fx.initial);
    let tmp = tempfile::tempdir().unwrap();
    let db = tmp.path().join("r.sqlite");
    let db_arg = db.display().to_string();
    let mut args = vec![
        "--db".to_string(),
        db_arg,
        "--poll-interval".into(),
        "100ms".into(),
        "--page-size".into(),
        "5".into(),
    ];
    args.extend(rig.source_args());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let env = rig.env();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let mut serve = ServeProcess::start_with_env(&args, &env);
    serve.wait_ready();
    serve.wait_at(&hex::encode(fx.commits[fx.last_initial].versionstamp));
    assert_eq!(
        read_replica(&db),
        expected_rows(&fx.state_at(fx.last_initial)),
        "{kind}: serve, initial"
    );
    assert!(
        serve.log().contains(RETRY_LINE),
        "no retry logged by serve:\n{}",
        tail(&serve.log(), 30)
    );

    // The retries absorbed every fault: no round has failed.
    let errors = errors_by_kind(&serve.metrics());
    assert!(
        errors.values().all(|v| *v == 0.0),
        "{kind}: failed rounds under retryable faults: {errors:?}\n{}",
        tail(&serve.log(), 30)
    );

    if outage {
        // Every request fails until a round has given up.
        rig.proxy.set_mode(Mode::Always(Fault::Outage));
        let deadline = Instant::now() + WAIT;
        while transient_errors(&serve) < 1.0 {
            assert!(
                Instant::now() < deadline,
                "{kind}: no failed round counted in /metrics after {WAIT:?} of outage; log tail:\n{}",
                tail(&serve.log(), 30)
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        rig.proxy.set_mode(Mode::Random);
        assert!(
            serve.log().contains("sync round failed"),
            "the failed round is not logged:\n{}",
            tail(&serve.log(), 30)
        );
    }

    // New objects arrive; the server catches up through the faults.
    rig.put_all(&fx.append);
    serve.wait_at(&hex::encode(fx.commits[fx.last_commit()].versionstamp));
    assert_converged(&db, &fx, fx.last_commit(), "serve, after the outage");
    let errors = errors_by_kind(&serve.metrics());
    eprintln!("{kind}: serve /metrics errors: {errors:?}");
    let transient = transient_errors(&serve);
    if outage {
        assert!(transient >= 1.0, "{errors:?}");
    }
    assert_eq!(
        errors.values().sum::<f64>(),
        transient,
        "{kind}: faults surfaced as something other than transient source errors: {errors:?}\n{}",
        tail(&serve.log(), 30)
    );
    assert!(serve.terminate().success());
    assert_every_kind(&rig.proxy, 1, &format!("{kind}: serve"));
    eprintln!("{kind}: serve done in {:?}", started.elapsed());
}

/// A proxy that refuses every request (403), and who is refused: the S3
/// access key id, or GCS's anonymous identity.
fn denying(kind: &str) -> (Rig, &'static str) {
    let rig = Rig::start_with(kind, |flavor| Config {
        mode: Mode::Always(Fault::Denied),
        ..Config::new(flavor, 1)
    });
    let who = match &rig.server {
        Server::S3(s) => s.access_key(),
        Server::Gcs(_) => "anonymous",
    };
    (rig, who)
}

/// Checks the end of a run refused with 403: a non-zero exit within
/// `limit`, a last line saying access denied and naming `who`, no retry,
/// and a single request.
fn assert_denied(
    rig: &Rig,
    who: &str,
    what: &str,
    (status, log): (ExitStatus, String),
    took: Duration,
    limit: Duration,
) {
    let last = log.lines().last().unwrap_or("");
    eprintln!("{what}: 403 → {status} after {took:?}: {last}");
    assert!(!status.success(), "{what}: exit 0 against 403s");
    assert!(
        last.contains("access denied") && last.contains(who),
        "{what}: the final error does not say access denied as {who}:\n{log}"
    );
    assert!(
        !log.contains(RETRY_LINE),
        "{what}: a 403 was retried:\n{log}"
    );
    assert_eq!(rig.proxy.requests(), 1, "{what}: requests after a 403");
    assert!(
        took < limit,
        "{what}: took {took:?} to give up on a 403 (limit {limit:?}):\n{log}"
    );
}

/// Every request refused (403): `sync` stops at once, names the refused
/// identity (the S3 access key id) and does not retry.
fn sync_denied(kind: &str) {
    let (rig, who) = denying(kind);
    let tmp = tempfile::tempdir().unwrap();
    let started = Instant::now();
    let out = run_bounded(
        rig.sync(&tmp.path().join("r.sqlite"), &[]),
        Duration::from_secs(30),
    );
    let what = format!("{kind}: sync");
    assert_denied(
        &rig,
        who,
        &what,
        out,
        started.elapsed(),
        Duration::from_secs(5),
    );
}

/// The same for `serve`: a refusal is no reason to keep polling, nor to
/// linger once it is known.
fn serve_denied(kind: &str) {
    let (rig, who) = denying(kind);
    let tmp = tempfile::tempdir().unwrap();
    let mut cmd = rig.command("serve", &tmp.path().join("r.sqlite"));
    cmd.args(["--addr", "127.0.0.1:0", "--admin-addr", "127.0.0.1:0"])
        .args(["--access-token", common::serve::ACCESS_TOKEN]);
    let started = Instant::now();
    let out = run_bounded(cmd, Duration::from_secs(30));
    let what = format!("{kind}: serve");
    assert_denied(
        &rig,
        who,
        &what,
        out,
        started.elapsed(),
        Duration::from_secs(5),
    );
}

/// `serve` with `args` from the rig's store, once it serves the newest
/// commit of `fx`'s initial objects.
fn serve_caught_up(rig: &Rig, fx: &Fixture, args: Vec<&str>) -> ServeProcess {
    let source = rig.source_args();
    let args: Vec<&str> = args
        .into_iter()
        .chain(source.iter().map(String::as_str))
        .collect();
    let env = rig.env();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let mut serve = ServeProcess::start_with_env(&args, &env);
    serve.wait_ready();
    serve.wait_at(&hex::encode(fx.commits[fx.last_initial].versionstamp));
    serve
}

/// Connections to the store are reused: the initial sync's many requests
/// share about as many connections as it has requests in flight, and once
/// caught up a poll (a listing and a conditional read of `differential`)
/// opens none — against a real store each would be a TCP and TLS handshake.
///
/// The initial bound allows twice the requests in flight: the HTTP client's
/// pool starts a new connection for a request that finds none idle, and a
/// connection whose response body was just read goes back to the pool a
/// moment later, so on a loaded machine a download started right after
/// another one finished can open one more (12 for 8 in flight was seen).
/// A connection per request, or a pool that keeps none, still fails: the
/// sync sends several times that many requests.
fn connections_are_reused(kind: &str) {
    const IN_FLIGHT: u64 = 8;
    // Small log objects: many downloads for the connections to serve.
    let fx = Fixture::generate(Spec {
        seed: 83,
        muts_per_log: 4,
        ..Spec::default()
    });
    let rig = Rig::start_with(kind, |flavor| Config {
        mode: Mode::Pass,
        ..Config::new(flavor, 83)
    });
    rig.put_all(&fx.initial);
    let tmp = tempfile::tempdir().unwrap();
    let db = tmp.path().join("r.sqlite");
    let db_arg = db.display().to_string();
    let in_flight = IN_FLIGHT.to_string();
    let args = vec![
        "--db",
        &db_arg,
        "--poll-interval",
        "50ms",
        "--fetch-concurrency",
        &in_flight,
    ];
    let serve = serve_caught_up(&rig, &fx, args);
    let (opened, requests) = (rig.proxy.connections(), rig.proxy.requests());
    assert!(
        requests >= 5 * IN_FLIGHT,
        "{kind}: the initial sync sent only {requests} requests"
    );
    assert!(
        opened <= 2 * IN_FLIGHT,
        "{kind}: the initial sync opened {opened} connections for {requests} requests \
         with {IN_FLIGHT} in flight"
    );
    std::thread::sleep(Duration::from_secs(2));
    let polls = rig.proxy.requests() - requests;
    assert!(
        polls >= 10,
        "{kind}: only {polls} requests in 2 s of polling"
    );
    assert_eq!(
        rig.proxy.connections(),
        opened,
        "{kind}: {polls} requests while caught up opened new connections"
    );
    eprintln!(
        "{kind}: initial sync {requests} requests on {opened} connections; \
         then {polls} requests on no new one"
    );
    assert!(serve.terminate().success());
}

/// A caught-up poll round sends its independent requests at once — the
/// listing of the late window behind the cursor, the listing after the
/// cursor and the conditional read of `differential` — so against a remote
/// store it costs one round trip, not three. The proxy holds every request
/// a while before forwarding it, so requests sent together are seen in
/// flight together; requests sent one after the other never are.
fn a_caught_up_round_sends_its_requests_at_once(kind: &str) {
    let fx = Fixture::generate(Spec {
        seed: 89,
        ..Spec::default()
    });
    let rig = Rig::start_with(kind, |flavor| Config {
        mode: Mode::Pass,
        hold: Duration::from_millis(100),
        ..Config::new(flavor, 89)
    });
    rig.put_all(&fx.initial);
    let tmp = tempfile::tempdir().unwrap();
    let db = tmp.path().join("r.sqlite");
    let db_arg = db.display().to_string();
    let args = vec!["--db", &db_arg, "--poll-interval", "300ms"];
    let serve = serve_caught_up(&rig, &fx, args);
    // From here on the replica is caught up: every round finds nothing.
    rig.proxy.take_max_in_flight();
    let requests = rig.proxy.requests();
    std::thread::sleep(Duration::from_secs(2));
    let polled = rig.proxy.requests() - requests;
    let at_once = rig.proxy.take_max_in_flight();
    assert!(
        polled >= 6,
        "{kind}: only {polled} requests in 2 s of polling"
    );
    assert_eq!(
        at_once, 3,
        "{kind}: a caught-up round had {at_once} requests in flight at once ({polled} requests \
         in 2 s); want its 3 (late window, after the cursor, differential) together"
    );
    assert!(serve.terminate().success());
}

mod s3 {
    #[test]
    fn a_caught_up_round_sends_its_requests_at_once() {
        super::a_caught_up_round_sends_its_requests_at_once("s3")
    }
    #[test]
    fn generated_backup_sync_and_follow() {
        super::generated("s3", 31)
    }
    #[test]
    fn samples() {
        super::samples("s3", 41)
    }
    #[test]
    fn serve_counts_a_failed_round() {
        super::serve("s3", 47, true)
    }
    #[test]
    fn sync_access_denied_fails_fast() {
        super::sync_denied("s3")
    }
    #[test]
    fn serve_access_denied_fails_fast() {
        super::serve_denied("s3")
    }
    #[test]
    fn one_kind_at_a_time() {
        super::one_kind_at_a_time("s3", 71)
    }
    #[test]
    fn connections_are_reused() {
        super::connections_are_reused("s3")
    }
}

mod gcs {
    #[test]
    fn a_caught_up_round_sends_its_requests_at_once() {
        super::a_caught_up_round_sends_its_requests_at_once("gcs")
    }
    #[test]
    fn generated_backup_sync_and_follow() {
        super::generated("gcs", 53)
    }
    #[test]
    fn samples() {
        super::samples("gcs", 59)
    }
    #[test]
    fn serve_follows_through_faults() {
        super::serve("gcs", 67, false)
    }
    #[test]
    fn sync_access_denied_fails_fast() {
        super::sync_denied("gcs")
    }
    #[test]
    fn serve_access_denied_fails_fast() {
        super::serve_denied("gcs")
    }
    #[test]
    fn one_kind_at_a_time() {
        super::one_kind_at_a_time("gcs", 73)
    }
    #[test]
    fn connections_are_reused() {
        super::connections_are_reused("gcs")
    }
}

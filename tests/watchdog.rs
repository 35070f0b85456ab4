//! The systemd watchdog as systemd sees it (`WATCHDOG_USEC` set, a fake
//! `NOTIFY_SOCKET`): a ping means the runtime answers and the store is not
//! wedged, so a long checkout holding the store and a bucket that stalls
//! every request keep the pings coming (the replica serves reads fine and
//! must not be killed), while a store held by a transaction that never
//! moves stops them within the bound (`WatchdogSec`), so systemd restarts
//! the process.

mod common;
#[path = "common/fault_proxy.rs"]
mod fault_proxy;
#[path = "common/notify_socket.rs"]
mod notify_socket;
#[path = "common/s3_server.rs"]
mod s3_server;

use std::path::Path;
use std::time::{Duration, Instant};

use common::fixture::{Fixture, Spec};
use common::serve::{Method, ServeProcess};
use fault_proxy::{Config, Fault, FaultProxy, Flavor, Mode};
use notify_socket::NotifySocket;
use serde_json::json;

/// `WatchdogSec=` of the tests: kvreplica pings every second.
const WATCHDOG: Duration = Duration::from_secs(2);

/// `serve` of `fx`'s initial bucket, written to `dir`, with the watchdog
/// on and `env` added.
fn serve_dir(fx: &Fixture, dir: &Path, sock: &NotifySocket, env: &[(&str, &str)]) -> ServeProcess {
    let bucket = dir.join("bucket");
    fx.write_initial(&bucket);
    let source = format!("file://{}/", bucket.display());
    let db = dir.join("r.sqlite").display().to_string();
    let mut all = sock.env(WATCHDOG);
    all.extend(env.iter().map(|(k, v)| (*k, v.to_string())));
    let all: Vec<(&str, &str)> = all.iter().map(|(k, v)| (*k, v.as_str())).collect();
    ServeProcess::start_with_env(
        &["--source", &source, "--db", &db, "--poll-interval", "100ms"],
        &all,
    )
}

/// Asserts that systemd's watchdog timer would not have fired between
/// `from` and `to` (`while` says what went on).
fn assert_pinged(
    sock: &NotifySocket,
    serve: &ServeProcess,
    from: Instant,
    to: Instant,
    what: &str,
) {
    let silence = sock.longest_silence(from, to);
    eprintln!("longest silence {what}: {silence:?}");
    assert!(
        silence < WATCHDOG,
        "no watchdog ping for {silence:?} {what} (WatchdogSec {WATCHDOG:?}): \
         systemd would kill a replica that serves reads.\n\
         notify messages (s since it began):\n{}\nlog:\n{}",
        sock.describe(from),
        serve.log()
    );
}

/// A small generated backup with no objects to append.
fn small_backup(seed: u64) -> Fixture {
    Fixture::generate(Spec {
        seed,
        append_commits: 0,
        ..Spec::default()
    })
}

#[test]
fn a_long_checkout_keeps_the_pings_coming() {
    // About 13 000 entries after DV: four chunks for a checkout to walk,
    // each made 1.5 s long by the test hook (a million-row checkout's
    // time), so the checkout holds the store for three watchdog periods.
    let fx = Fixture::generate(Spec {
        seed: 15,
        keys: 2000,
        post_commits: 3000,
        max_muts_per_commit: 8,
        muts_per_log: 2000,
        ..Spec::default()
    });
    let tmp = tempfile::tempdir().unwrap();
    let sock = NotifySocket::bind(tmp.path());
    let mut serve = serve_dir(
        &fx,
        tmp.path(),
        &sock,
        &[("KVREPLICA_TEST_SLOW_CHECKOUT_MS", "1500")],
    );
    serve.wait_ready();
    let points = fx.points(fx.last_initial);
    serve.wait_at(&points.last().unwrap().1);

    // New log objects land while the checkout runs, as they do on a live
    // backup: the sync loop fetches them and waits for the store.
    let started = Instant::now();
    let (status, out) = std::thread::scope(|s| {
        let checkout = s.spawn(|| {
            serve.admin(
                Method::Post,
                "/pitr/checkout",
                json!({"versionstamp": points[0].1}),
            )
        });
        std::thread::sleep(Duration::from_millis(500));
        fx.write_append(&tmp.path().join("bucket"));
        checkout.join().unwrap()
    });
    let ended = Instant::now();
    assert_eq!(status, 200, "{out}");
    assert!(
        ended - started > WATCHDOG * 2,
        "the checkout took {:?}: too short to show anything ({out})",
        ended - started
    );
    eprintln!("checkout {out} took {:?}", ended - started);
    assert_pinged(
        &sock,
        &serve,
        started,
        ended,
        "during a checkout making progress",
    );
    assert!(serve.terminate().success());
}

#[test]
fn a_stalled_object_store_keeps_the_pings_coming() {
    const BUCKET: &str = "kv-backup";
    let fx = small_backup(16);
    let tmp = tempfile::tempdir().unwrap();
    let s3 = s3_server::S3Server::start();
    s3.create_bucket(BUCKET);
    fx.write_initial(&tmp.path().join("export"));
    s3.put_dir(BUCKET, "p/", &tmp.path().join("export"));
    let proxy = FaultProxy::start(
        &s3.endpoint(),
        Config {
            mode: Mode::Pass,
            // Longer than the client waits: every request times out.
            stall: Duration::from_secs(60),
            ..Config::new(
                Flavor::S3 {
                    bucket: BUCKET.into(),
                },
                16,
            )
        },
    );
    let sock = NotifySocket::bind(tmp.path());
    let home = tmp.path().join("home");
    std::fs::create_dir_all(&home).unwrap();
    let mut env = sock.env(WATCHDOG);
    env.extend([
        ("HOME", home.display().to_string()),
        ("AWS_EC2_METADATA_DISABLED", "true".into()),
        ("AWS_ACCESS_KEY_ID", s3.access_key().into()),
        ("AWS_SECRET_ACCESS_KEY", s3.secret_key().into()),
    ]);
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let db = tmp.path().join("r.sqlite").display().to_string();
    let mut serve = ServeProcess::start_with_env(
        &[
            "--source",
            &format!("s3://{BUCKET}/p/"),
            "--s3-endpoint",
            &proxy.endpoint(),
            // Each request waits longer than WatchdogSec before it fails
            // and is retried.
            "--request-timeout",
            "5s",
            "--db",
            &db,
            "--poll-interval",
            "100ms",
        ],
        &env,
    );
    serve.wait_ready();

    proxy.set_mode(Mode::Always(Fault::Stall));
    let requests = proxy.requests();
    let started = Instant::now();
    std::thread::sleep(WATCHDOG * 5);
    let ended = Instant::now();
    assert!(
        proxy.requests() > requests,
        "no request reached the stalled store"
    );
    eprintln!(
        "{} requests to the stalled store",
        proxy.requests() - requests
    );
    assert_pinged(&sock, &serve, started, ended, "while the bucket stalls");
    assert!(serve.terminate().success());
}

#[test]
fn a_wedged_store_stops_the_pings_within_the_bound() {
    const PARKED: &str = "kvreplica test hook: parked before COMMIT";
    let fx = small_backup(17);
    let tmp = tempfile::tempdir().unwrap();
    let sock = NotifySocket::bind(tmp.path());
    let began = Instant::now();
    // The first snapshot range is stored and never committed: the store
    // stays held by a transaction that makes no progress, for ever.
    let serve = serve_dir(
        &fx,
        tmp.path(),
        &sock,
        &[("KVREPLICA_TEST_PARK_IN_TXN", "1")],
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    while !serve.log().contains(PARKED) {
        assert!(
            Instant::now() < deadline,
            "the park hook never fired:\n{}",
            serve.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let parked = Instant::now();
    assert!(
        !sock.pings().is_empty(),
        "no ping before the store wedged:\n{}",
        sock.describe(began)
    );
    // The bound: WatchdogSec without progress, then at most one ping
    // period until the next check; then nothing for good.
    let bound = WATCHDOG + WATCHDOG / 2 + Duration::from_millis(500);
    std::thread::sleep(bound + WATCHDOG * 2);
    let late: Vec<_> = sock
        .pings()
        .into_iter()
        .filter(|t| *t > parked + bound)
        .map(|t| t - parked)
        .collect();
    eprintln!(
        "pings after the park: {:?}",
        sock.pings()
            .into_iter()
            .filter(|t| *t > parked)
            .map(|t| t - parked)
            .collect::<Vec<_>>()
    );
    assert!(
        late.is_empty(),
        "watchdog pings {late:?} after the store wedged (bound {bound:?}): \
         systemd would never restart it.\nnotify messages (s since start):\n{}",
        sock.describe(began)
    );
    assert!(
        serve.log().contains("withholding the watchdog ping"),
        "{}",
        serve.log()
    );
    // Dropping `serve` kills the parked process.
}

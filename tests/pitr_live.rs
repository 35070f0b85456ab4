//! Point-in-time recovery on a live `kvreplica serve`, seen through one
//! long-lived Deno KV client: a checkout over the admin API changes what the
//! same client reads (and wakes its `watch()`), a pinned replica keeps
//! fetching new commits without showing them, the pin survives a restart,
//! and `latest` brings the new data into view.

mod common;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::serve::{clients_dir, deno_bin, Method, ServeProcess, ACCESS_TOKEN};
use common::Sample;
use serde_json::{json, Value};

/// Bound on one answer of the client, and on the replica reaching a state.
const WAIT: Duration = Duration::from_secs(60);

/// `deno_pitr.ts` running with a pipe to its stdin.
struct Client {
    child: Child,
    stdin: ChildStdin,
    lines: mpsc::Receiver<String>,
    _home: tempfile::TempDir,
}

impl Client {
    fn start(url: &str, expected: &std::path::Path, keys: &[String]) -> Client {
        let home = tempfile::tempdir().unwrap();
        let mut child = Command::new(deno_bin())
            .args(["run", "--unstable-kv", "-A"])
            .arg(clients_dir().join("deno_pitr.ts"))
            .arg(url)
            .arg(expected)
            .arg(serde_json::to_string(keys).unwrap())
            .current_dir(home.path())
            .env("NO_COLOR", "1")
            .env("DENO_KV_ACCESS_TOKEN", ACCESS_TOKEN)
            .env("DENO_DIR", home.path().join("deno"))
            .env("DENO_NO_UPDATE_CHECK", "1")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("starting the Deno client");
        let stdin = child.stdin.take().unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Client {
            child,
            stdin,
            lines,
            _home: home,
        }
    }

    fn ask(&mut self, cmd: Value) -> Value {
        writeln!(self.stdin, "{cmd}").unwrap();
        self.stdin.flush().unwrap();
        let line = self
            .lines
            .recv_timeout(WAIT)
            .unwrap_or_else(|e| panic!("the Deno client did not answer {cmd} ({e})"));
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("{line:?}: {e}"))
    }

    /// Key hex → versionstamp (null when absent), read now by `getMany`.
    fn get(&mut self) -> Value {
        self.ask(json!({"get": true}))["get"].clone()
    }

    /// Waits until the newest watch event equals `want`; returns the event
    /// count then.
    fn watch_until(&mut self, want: &Value, label: &str) -> u64 {
        let deadline = Instant::now() + WAIT;
        loop {
            let out = self.ask(json!({"watch": true}));
            if &out["watch"] == want {
                return out["events"].as_u64().unwrap();
            }
            assert!(
                Instant::now() < deadline,
                "{label}: watch never reported {want}; last: {out}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn exit(mut self) {
        let _ = writeln!(self.stdin, "{}", json!({"exit": true}));
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.child.try_wait().unwrap().is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What the client should read for `keys` in a `{key_hex: [value, vs]}`
/// state.
fn expected(state: &Value, keys: &[String]) -> Value {
    let map: BTreeMap<&str, Value> = keys
        .iter()
        .map(|k| {
            (
                k.as_str(),
                state.get(k).map(|e| e[1].clone()).unwrap_or(Value::Null),
            )
        })
        .collect();
    json!(map)
}

fn admin(serve: &ServeProcess, method: Method, path: &str, body: Value) -> (u16, Value) {
    serve.admin(method, path, body)
}

/// Polls `/pitr/current` until `check` accepts it.
fn wait_current(serve: &ServeProcess, label: &str, check: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + WAIT;
    loop {
        let (status, cur) = admin(serve, Method::Get, "/pitr/current", Value::Null);
        if status == 200 && check(&cur) {
            return cur;
        }
        assert!(
            Instant::now() < deadline,
            "{label}: /pitr/current never got there; last: {status} {cur}\n{}",
            serve.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn checkout_pin_restart_and_latest_through_a_live_deno_client() {
    let sample = Sample::load("sample-1");
    let tmp = tempfile::tempdir().unwrap();
    let source = sample.install_initial(&tmp.path().join("bucket"));
    let db = tmp.path().join("replica.sqlite");
    let db_arg = db.display().to_string();
    let args = [
        "--source",
        source.as_str(),
        "--db",
        db_arg.as_str(),
        "--poll-interval",
        "100ms",
    ];
    let expected1 = common::fixtures_dir().join("sample-1/expected-1.json");

    // An earlier recorded state, and the keys whose versionstamp differs
    // between it and both final states: those must move with checkouts.
    let final0 = &sample.json0.raw["final_state"];
    let final1 = &sample.json1.raw["final_state"];
    let latest0 = sample.json0.latest_point();
    let (past, past_state) = sample
        .json0
        .states()
        .into_iter()
        .filter(|(p, _)| *p != latest0 && *p != sample.json0.initial_point())
        .min_by(|a, b| a.0.cmp(&b.0))
        .expect("sample-1 records an intermediate state");
    let mut keys: Vec<String> = final1
        .as_object()
        .unwrap()
        .keys()
        .filter(|k| {
            let vs = |s: &Value| s.get(*k).map(|e| e[1].clone());
            vs(past_state) != vs(final0) && vs(final0) != vs(final1)
        })
        .cloned()
        .collect();
    keys.truncate(10);
    assert!(
        keys.len() >= 2,
        "sample-1 has too few keys changed in both intervals to test with"
    );

    let mut serve = ServeProcess::start(&args);
    serve.wait_ready();
    serve.wait_at(&latest0);
    let mut client = Client::start(&serve.kv_url(), &expected1, &keys);
    assert_eq!(client.get(), expected(final0, &keys), "before any checkout");
    let seen = client.watch_until(&expected(final0, &keys), "first watch event");

    // Checkout through the admin API: the same client reads the past at
    // once, and its watch reports it.
    let (status, out) = admin(
        &serve,
        Method::Post,
        "/pitr/checkout",
        json!({"versionstamp": past}),
    );
    assert_eq!(status, 200, "{out}");
    assert_eq!(out["mode"], "pinned");
    assert_eq!(client.get(), expected(past_state, &keys), "after checkout");
    let after = client.watch_until(&expected(past_state, &keys), "watch after checkout");
    assert!(after > seen, "the checkout woke the watch");

    // New commits while pinned: fetched and stored, not shown.
    sample.install_append(&tmp.path().join("bucket"));
    let latest1 = sample.json1.latest_point();
    let cur = wait_current(&serve, "pinned, new commits fetched", |c| {
        c["latest"]["versionstamp"] == latest1.as_str()
    });
    assert_eq!(cur["mode"], "pinned");
    assert_eq!(cur["versionstamp"], past.as_str());
    assert!(cur["points_behind"].as_u64().unwrap() > 0, "{cur}");
    assert!(
        cur["behind_latest_seconds"].as_f64().unwrap() > 0.0,
        "{cur}"
    );
    assert_eq!(client.get(), expected(past_state, &keys), "pinned");
    client.exit();

    // The pin survives a restart; reads resume from the file at once.
    let status = serve.terminate();
    assert!(status.success(), "serve exited with {status} on SIGTERM");
    let mut serve = ServeProcess::start(&args);
    serve.wait_ready();
    let cur = wait_current(&serve, "after restart", |_| true);
    assert_eq!(cur["mode"], "pinned", "{cur}");
    assert_eq!(cur["versionstamp"], past.as_str(), "{cur}");
    let mut client = Client::start(&serve.kv_url(), &expected1, &keys);
    assert_eq!(
        client.get(),
        expected(past_state, &keys),
        "pinned after restart"
    );
    let seen = client.watch_until(&expected(past_state, &keys), "watch after restart");

    // Back to latest: the commits fetched while pinned come into view.
    let (status, out) = admin(
        &serve,
        Method::Post,
        "/pitr/checkout",
        json!({"latest": true}),
    );
    assert_eq!(status, 200, "{out}");
    assert_eq!(out["mode"], "following");
    assert_eq!(out["versionstamp"], latest1.as_str());
    assert_eq!(client.get(), expected(final1, &keys), "latest");
    let after = client.watch_until(&expected(final1, &keys), "watch after latest");
    assert!(after > seen);
    client.exit();
    assert!(serve.terminate().success());
}

//! `kvreplica restore` against a real writable primary (denokv): a
//! replica synced from a generated backup, the primary seeded with its
//! newest state (the state after a "bad deploy": the backup's last
//! commits) plus keys of its own outside the restored prefix; one prefix
//! restored as of the point before the bad deploy. The primary's prefix
//! then equals the replica's state at the point (bytes, encoding and
//! expiry from denokv's file; values as the real Deno CLI reads them),
//! everything else is untouched; a dry run writes nothing; a write made
//! during the apply is a conflict and is not overwritten; an apply killed
//! midway is finished by a second run; a kvreplica target is refused;
//! 5xx answers and dropped connections are retried; `POST /restore` plans
//! and applies the same; progress shows on a terminal only.

mod common;
#[path = "common/denokv.rs"]
mod denokv;
#[path = "common/fault_proxy.rs"]
mod fault_proxy;

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use common::fixture::Fixture;
use common::serve::{run_deno, Method, ServeProcess, ACCESS_TOKEN};
use common::served::Generated;
use common::{kvreplica_bin, run_ok};
use denokv::Denokv;
use serde_json::Value;

/// `["item"]`, tuple-encoded, in hex: the prefix of every fixture key.
const ITEM_HEX: &str = "026974656d00";
const HOOK: &str = "KVREPLICA_TEST_RESTORE_PAUSE_BEFORE_BATCH";
const MARKER: &str = "kvreplica test hook: restore paused before batch";
const DENO_TIMEOUT: Duration = Duration::from_secs(60);

/// What a restore puts back: value bytes, encoding, expiry (-1: none).
type Content = (Vec<u8>, i64, i64);

struct Setup {
    tmp: tempfile::TempDir,
    fx: Fixture,
    /// The generated bucket's `file://` URL.
    source: String,
    db: PathBuf,
    primary: Denokv,
    token_file: PathBuf,
    /// The commit before the bad deploy.
    point: usize,
}

impl Setup {
    fn new(seed: u64) -> Setup {
        let Generated {
            tmp,
            fx,
            source,
            db,
        } = Generated::new(seed);
        run_ok(&["sync", "--source", &source, "--db", db.to_str().unwrap()]);
        let primary = Denokv::start(tmp.path(), ACCESS_TOKEN);
        let token_file = tmp.path().join("token");
        std::fs::write(&token_file, format!("{ACCESS_TOKEN}\n")).unwrap();
        let point = fx.last_initial - 8;
        assert!(point > fx.dv_commit, "the point is recoverable");
        let setup = Setup {
            tmp,
            fx,
            source,
            db,
            primary,
            token_file,
            point,
        };
        // The primary as the bad deploy left it: the replica's newest
        // state, written by restore itself into the empty primary…
        let out = setup.restore(&["--at", "latest", "--apply"]);
        assert!(out.status.success(), "{}", describe(&out));
        setup.assert_prefix_is(setup.fx.last_initial);
        // …and writes of its own by the Deno CLI: keys outside the prefix
        // (a counter summed twice among them), and a counter under it that
        // the point never had (the restore deletes it).
        for i in 0..3 {
            setup.deno(&["set", &format!(r#"["outside",{i}]"#), "kept"]);
        }
        for key in [r#"["outside","counter"]"#, r#"["item","counter"]"#] {
            setup.deno(&["sum", key, "5"]);
            setup.deno(&["sum", key, "7"]);
        }
        setup
    }

    fn point_vs(&self) -> String {
        hex::encode(self.fx.commits[self.point].versionstamp)
    }

    fn restore_command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(kvreplica_bin());
        cmd.arg("restore")
            .args(["--db", self.db.to_str().unwrap(), "--to", &self.primary.url])
            .args(["--token-file", self.token_file.to_str().unwrap()])
            .args(args)
            .env_remove("RUST_LOG")
            .env_remove("DENO_KV_ACCESS_TOKEN")
            .env_remove(HOOK);
        cmd
    }

    /// `restore --prefix ["item"] --at <point> --apply --batch-size 1`.
    fn apply_one_key_per_batch(&self) -> Command {
        let vs = self.point_vs();
        self.restore_command(&[
            "--prefix",
            r#"["item"]"#,
            "--at",
            &vs,
            "--apply",
            "--batch-size",
            "1",
        ])
    }

    fn restore(&self, args: &[&str]) -> Output {
        let out = self.restore_command(args).output().unwrap();
        let all = describe(&out);
        assert!(!all.contains(ACCESS_TOKEN), "the token leaked:\n{all}");
        out
    }

    /// `restore --prefix ["item"] --at <point>` with `args`.
    fn restore_prefix(&self, args: &[&str]) -> Output {
        let vs = self.point_vs();
        let mut all = vec!["--prefix", r#"["item"]"#, "--at", &vs];
        all.extend_from_slice(args);
        self.restore(&all)
    }

    fn deno(&self, args: &[&str]) -> String {
        let mut all = vec![self.primary.url.as_str()];
        all.extend_from_slice(args);
        let out = run_deno("deno_restore.ts", &all, self.tmp.path(), DENO_TIMEOUT);
        assert!(
            out.status.is_some_and(|s| s.success()),
            "{}",
            out.describe()
        );
        out.stdout
    }

    /// The primary's rows under `["item"]` equal the backup's state after
    /// commit `index`: value bytes, encoding and expiry.
    fn assert_prefix_is(&self, index: usize) {
        let expected: Vec<(String, Content)> = self
            .fx
            .state_at(index)
            .into_iter()
            .map(|(k, r)| {
                (
                    hex::encode(k),
                    (r.value, r.encoding, r.expire_at_ms.max(-1)),
                )
            })
            .collect();
        let actual: Vec<(String, Content)> = self
            .primary
            .rows()
            .into_iter()
            .filter(|(k, _)| k.starts_with(ITEM_HEX))
            .map(|(k, r)| {
                let x = if r.expire_at_ms <= 0 {
                    -1
                } else {
                    r.expire_at_ms
                };
                (k, (r.value, r.encoding, x))
            })
            .collect();
        let wrong: Vec<&String> = expected
            .iter()
            .filter(|e| !actual.contains(e))
            .map(|(k, _)| k)
            .chain(
                actual
                    .iter()
                    .filter(|a| !expected.contains(a))
                    .map(|(k, _)| k),
            )
            .collect();
        assert!(
            wrong.is_empty() && actual.len() == expected.len(),
            "the primary's [\"item\"] differs from the state after commit {index} at keys {wrong:?}"
        );
    }

    /// The primary's rows outside `["item"]`, versionstamps included.
    fn outside(&self) -> Vec<(String, denokv::Row)> {
        let rows: Vec<_> = self
            .primary
            .rows()
            .into_iter()
            .filter(|(k, _)| !k.starts_with(ITEM_HEX))
            .collect();
        assert_eq!(rows.len(), 4, "the keys outside the prefix");
        rows
    }
}

fn describe(out: &Output) -> String {
    format!(
        "{}\n--- stdout\n{}\n--- stderr\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Runs `cmd` with the pause hook before batch `batch`; when it pauses,
/// calls `at_pause` with the child, which decides whether it goes on.
fn run_paused(
    mut cmd: Command,
    batch: usize,
    at_pause: impl FnOnce(&mut std::process::Child),
) -> std::process::Child {
    let mut child = cmd
        .env(HOOK, batch.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, rx) = mpsc::channel();
    let stderr = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    loop {
        let line = rx
            .recv_timeout(Duration::from_secs(60))
            .expect("restore pauses at the hook");
        if line.starts_with(MARKER) {
            break;
        }
    }
    at_pause(&mut child);
    child
}

fn point_copy_reads(setup: &Setup) -> String {
    // The replica's state at the point, as the Deno CLI reads it: a copy
    // of the replica file checked out there.
    let dir = setup.tmp.path().join("copy");
    let copy = common::copy_replica(&setup.db, &dir);
    run_ok(&[
        "pitr",
        "--db",
        copy.to_str().unwrap(),
        "checkout",
        &setup.point_vs(),
    ]);
    let out = run_deno(
        "deno_restore.ts",
        &[copy.to_str().unwrap(), "list", r#"["item"]"#],
        &dir,
        DENO_TIMEOUT,
    );
    assert!(
        out.status.is_some_and(|s| s.success()),
        "{}",
        out.describe()
    );
    out.stdout
}

#[test]
fn restore_puts_a_prefix_back_as_it_was_and_leaves_the_rest() {
    let setup = Setup::new(181);
    assert_ne!(
        setup.fx.state_at(setup.point),
        setup.fx.state_at(setup.fx.last_initial),
        "the bad deploy changed something"
    );
    let outside = setup.outside();
    let before = setup.primary.rows();

    // A dry run prints the plan and writes nothing.
    let out = setup.restore_prefix(&[]);
    assert!(out.status.success(), "{}", describe(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("plan to restore"), "{text}");
    assert!(!text.contains(" 0 to set, 0 to delete"), "{text}");
    assert_eq!(setup.primary.rows(), before, "a dry run changes nothing");

    // --apply: the prefix as it was at the point, the rest untouched.
    let out = setup.restore_prefix(&["--apply"]);
    assert!(out.status.success(), "{}", describe(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("0 conflicts"),
        "{}",
        describe(&out)
    );
    setup.assert_prefix_is(setup.point);
    assert_eq!(setup.outside(), outside, "outside the prefix: untouched");
    let primary_reads = setup.deno(&["list", r#"["item"]"#]);
    let replica_reads = point_copy_reads(&setup);
    let parsed: Value = serde_json::from_str(&primary_reads).unwrap();
    assert_eq!(
        parsed.as_array().unwrap().len(),
        setup.fx.state_at(setup.point).len()
    );
    assert_eq!(primary_reads, replica_reads, "the Deno CLI reads the same");

    // A second run plans nothing and writes nothing.
    let after = setup.primary.rows();
    let out = setup.restore_prefix(&["--apply"]);
    assert!(out.status.success(), "{}", describe(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains(": 0 to set, 0 to delete"), "{text}");
    assert_eq!(setup.primary.rows(), after, "a second run changes nothing");
}

/// The plan's keys (key JSON, key hex), in the order they are written.
fn planned_keys(setup: &Setup) -> Vec<(String, String)> {
    let out = setup.restore_prefix(&["--format", "jsonl", "--show", "100000"]);
    assert!(out.status.success(), "{}", describe(&out));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|v| v.get("action").is_some())
        .map(|v| (v["key"].to_string(), v["key_hex"].as_str().unwrap().into()))
        .collect()
}

#[test]
fn a_write_made_during_the_apply_is_a_conflict_and_is_not_overwritten() {
    let setup = Setup::new(182);
    let planned = planned_keys(&setup);
    assert!(planned.len() >= 2, "{planned:?}");
    // One key per batch; the last key is written by the last batch, and
    // the Deno CLI writes it while the apply is paused before that batch.
    let (key, key_hex) = planned.last().unwrap().clone();
    let cmd = setup.apply_one_key_per_batch();
    let child = run_paused(cmd, planned.len(), |child| {
        setup.deno(&["set", &key, "concurrent"]);
        writeln!(child.stdin.as_mut().unwrap()).unwrap();
    });
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(75), "{}", describe(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains(&format!("conflict {key}")), "{text}");
    assert!(text.contains("1 conflicts"), "{text}");
    let reads: Value = serde_json::from_str(&setup.deno(&["list", r#"["item"]"#])).unwrap();
    let key_parts: Value = serde_json::from_str(&key).unwrap();
    let kept = reads
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e[0][1].as_f64() == key_parts[1].as_f64())
        .unwrap_or_else(|| panic!("{key} in {reads}"));
    assert_eq!(kept[1], "concurrent", "the concurrent write is kept");
    // Every other key is restored.
    let expected = setup.fx.state_at(setup.point);
    let rows = setup.primary.rows();
    for (k, r) in &expected {
        let k = hex::encode(k);
        if k != key_hex {
            assert_eq!(rows[&k].value, r.value, "{k}");
        }
    }

    // --retry-conflicts plans the key again and restores it.
    let out = setup.restore_prefix(&["--apply", "--retry-conflicts"]);
    assert!(out.status.success(), "{}", describe(&out));
    setup.assert_prefix_is(setup.point);
}

#[test]
fn an_apply_killed_midway_is_finished_by_a_second_run() {
    let setup = Setup::new(183);
    let outside = setup.outside();
    let planned = planned_keys(&setup);
    assert!(planned.len() >= 4, "{planned:?}");
    let cmd = setup.apply_one_key_per_batch();
    let mut child = run_paused(cmd, 3, |child| {
        // SIGKILL: no chance to finish anything.
        child.kill().unwrap();
    });
    assert!(!child.wait().unwrap().success());
    assert_eq!(
        planned_keys(&setup).len(),
        planned.len() - 2,
        "two batches of one key were written before the kill"
    );
    let out = setup.restore_prefix(&["--apply"]);
    assert!(out.status.success(), "{}", describe(&out));
    setup.assert_prefix_is(setup.point);
    assert_eq!(setup.outside(), outside);
    assert!(planned_keys(&setup).is_empty(), "nothing left to do");
}

/// `kvreplica serve` on a copy of the setup's replica, synced.
fn serve_replica(setup: &Setup) -> ServeProcess {
    let db = setup.tmp.path().join("served.sqlite");
    std::fs::copy(&setup.db, &db).unwrap();
    let mut serve = ServeProcess::start(&["--source", &setup.source, "--db", db.to_str().unwrap()]);
    serve.wait_ready();
    serve
}

#[test]
fn a_kvreplica_target_is_refused_as_read_only() {
    let setup = Setup::new(184);
    let serve = serve_replica(&setup);
    let before = setup.primary.rows();
    let out = Command::new(kvreplica_bin())
        .args(["restore", "--db", setup.db.to_str().unwrap()])
        .args(["--to", &serve.kv_url(), "--at", &setup.point_vs()])
        .args(["--prefix", r#"["item"]"#, "--apply"])
        .env("DENO_KV_ACCESS_TOKEN", ACCESS_TOKEN)
        .output()
        .unwrap();
    assert!(!out.status.success(), "{}", describe(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("is read-only") && err.contains("not to a replica"),
        "{err}"
    );
    assert!(!err.contains(ACCESS_TOKEN), "{err}");
    assert_eq!(setup.primary.rows(), before);
}

#[test]
fn post_restore_plans_then_applies_over_the_admin_api() {
    let setup = Setup::new(185);
    let serve = serve_replica(&setup);
    let outside = setup.outside();
    let before = setup.primary.rows();
    let body = |apply: bool| {
        serde_json::json!({
            "to": setup.primary.url,
            "token": ACCESS_TOKEN,
            "at": setup.point_vs(),
            "prefix": [r#"["item"]"#],
            "apply": apply,
        })
    };
    // A plan only: counts and keys, nothing written.
    let (status, plan) = serve.admin(Method::Post, "/restore", body(false));
    assert_eq!(status, 200, "{plan}");
    let planned = plan["plan"]["set"].as_u64().unwrap() + plan["plan"]["delete"].as_u64().unwrap();
    assert!(planned > 0, "{plan}");
    assert_eq!(plan["keys"].as_array().unwrap().len() as u64, planned);
    assert_eq!(plan["point"], setup.point_vs());
    assert!(plan["applied"].is_null());
    assert_eq!(setup.primary.rows(), before, "a plan writes nothing");

    // Apply: the prefix as at the point, the rest untouched.
    let (status, done) = serve.admin(Method::Post, "/restore", body(true));
    assert_eq!(status, 200, "{done}");
    assert_eq!(done["applied"]["written"].as_u64(), Some(planned), "{done}");
    assert_eq!(done["applied"]["conflicts"], serde_json::json!([]));
    setup.assert_prefix_is(setup.point);
    assert_eq!(setup.outside(), outside);

    // The replica's own KV Connect listener is refused (502, read-only);
    // a bad point is a 400; the token shows nowhere.
    let mut refused = body(true);
    refused["to"] = serve.kv_url().into();
    let (status, err) = serve.admin(Method::Post, "/restore", refused);
    assert_eq!(status, 502, "{err}");
    assert!(
        err["error"].as_str().unwrap().contains("read-only"),
        "{err}"
    );
    let mut bad = body(false);
    bad["at"] = "yesterday".into();
    assert_eq!(serve.admin(Method::Post, "/restore", bad).0, 400);
    assert!(!serve.log().contains(ACCESS_TOKEN));
    assert!(!err.to_string().contains(ACCESS_TOKEN));
}

#[test]
fn server_errors_and_dropped_connections_are_retried() {
    let setup = Setup::new(186);
    let outside = setup.outside();
    let mut config = fault_proxy::Config::new(fault_proxy::Flavor::Gcs, 186);
    config.fault_percent = 50;
    config.not_found_percent = 0;
    // Answers lost after the write reached the primary (mid-body resets,
    // truncated bodies) included: the retried write's checks then fail on
    // the key's own new entry, which is not a conflict.
    config.kinds = vec![
        fault_proxy::Fault::Http500,
        fault_proxy::Fault::Http503,
        fault_proxy::Fault::ResetBeforeAnswer,
        fault_proxy::Fault::ResetMidBody,
        fault_proxy::Fault::Truncated,
    ];
    let proxy = fault_proxy::FaultProxy::start(&setup.primary.url, config);
    let vs = setup.point_vs();
    let out = Command::new(kvreplica_bin())
        .args(["restore", "--db", setup.db.to_str().unwrap()])
        .args(["--to", &proxy.endpoint(), "--at", &vs])
        .args(["--prefix", r#"["item"]"#, "--apply", "--batch-size", "2"])
        .args(["--token-file", setup.token_file.to_str().unwrap()])
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", describe(&out));
    assert!(
        proxy.total_faults() >= 3,
        "faults injected: {:?}",
        proxy.counts()
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("0 conflicts"),
        "{}",
        describe(&out)
    );
    assert!(!describe(&out).contains(ACCESS_TOKEN));
    setup.assert_prefix_is(setup.point);
    assert_eq!(setup.outside(), outside);
}

#[test]
fn progress_shows_on_a_terminal_and_never_in_a_pipe() {
    let setup = Setup::new(187);
    let planned = planned_keys(&setup).len();
    assert!(planned > 0);
    // `script` gives the command a terminal.
    let command = format!(
        "{} restore --db {} --to {} --token-file {} --at {} --prefix '[\"item\"]' --apply",
        kvreplica_bin(),
        setup.db.display(),
        setup.primary.url,
        setup.token_file.display(),
        setup.point_vs()
    );
    let out = Command::new("script")
        .args(["-qec", &command, "/dev/null"])
        .env_remove("DENO_KV_ACCESS_TOKEN")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains(&format!("restoring {planned}/{planned} keys")),
        "{text:?}"
    );
    setup.assert_prefix_is(setup.point);
    // In a pipe: no bar.
    let out = setup.restore_prefix(&["--apply"]);
    assert!(out.status.success(), "{}", describe(&out));
    assert!(
        !String::from_utf8_lossy(&out.stderr).contains("restoring"),
        "{}",
        describe(&out)
    );
}

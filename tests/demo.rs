//! `scripts/demo.sh`, the README's first command, run as a newcomer would:
//! it serves the shipped sample, the Deno one-liner and the curl it prints
//! work when pasted into a shell and read the sample exactly, no token is
//! ever on a command line, and Ctrl-C stops everything and leaves no file
//! behind.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::serve::{deno_bin, Script, START_TIMEOUT};
use common::{fixtures_dir, kvreplica_bin};
use serde_json::Value;

/// Bound on one pasted command (a Deno start-up plus a full scan).
const PASTE_TIMEOUT: Duration = Duration::from_secs(60);

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The sample's expectations: examples/sample-backup/ is sample-1's
/// bucket, which the test checks before relying on it.
fn expected() -> (PathBuf, Value) {
    let path = fixtures_dir().join("sample-1/expected-0.json");
    let json = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    (path, json)
}

/// The first stdout line starting with `prefix`.
fn line_starting(text: &str, prefix: &str) -> String {
    text.lines()
        .find(|l| l.starts_with(prefix))
        .unwrap_or_else(|| panic!("no line starting with {prefix:?} in:\n{text}"))
        .to_string()
}

/// Runs `line` in bash as a user who pasted it would, with the Deno CLI
/// under test on PATH as `deno`.
fn paste(line: &str) -> common::serve::ScriptOutput {
    let deno_dir = Path::new(&deno_bin()).parent().unwrap().to_path_buf();
    let path = format!(
        "{}:{}",
        deno_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let mut cmd = Command::new("bash");
    cmd.args(["-c", line]).env("PATH", path);
    Script::start(line, cmd).wait(PASTE_TIMEOUT)
}

/// Command lines of every process on the machine.
fn all_command_lines() -> Vec<String> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        if let Ok(raw) = std::fs::read(e.path().join("cmdline")) {
            out.push(String::from_utf8_lossy(&raw).replace('\0', " "));
        }
    }
    out
}

#[test]
fn demo_serves_the_sample_and_stops_cleanly_on_ctrl_c() {
    let sample = root().join("examples/sample-backup");
    let fixture = fixtures_dir()
        .join("sample-1/bucket/kv-backup/backups/3f1c2a7e-0000-4000-8000-000000000001");
    let same = Command::new("diff")
        .arg("-rq")
        .args([&sample, &fixture])
        .output()
        .unwrap();
    assert!(
        same.status.success(),
        "examples/sample-backup/ is no longer sample-1's bucket: update this test's expectations\n{}",
        String::from_utf8_lossy(&same.stdout)
    );
    let (expected_path, expected) = expected();
    let final_state = expected["final_state"].as_object().unwrap();

    let tmp = tempfile::tempdir().unwrap();
    let mut cmd = Command::new("bash");
    cmd.arg(root().join("scripts/demo.sh"))
        .args(["--port", "0", "--admin-port", "0"])
        .env("KVREPLICA_BIN", kvreplica_bin())
        .env("TMPDIR", tmp.path())
        .env_remove("RUST_LOG");
    let mut demo = Script::start("scripts/demo.sh", cmd);
    let out = demo.wait_for_stdout("== Ctrl-C", START_TIMEOUT);

    // The temporary directory, and the token files in it: 0600.
    let dir = line_starting(&out, "== Ctrl-C stops the server and removes ")
        ["== Ctrl-C stops the server and removes ".len()..]
        .to_string();
    let dir = PathBuf::from(dir.trim());
    assert!(dir.starts_with(tmp.path()), "{dir:?} is not under TMPDIR");
    let mut tokens = Vec::new();
    for name in ["access-token", "admin-token", "admin-header"] {
        let meta = std::fs::metadata(dir.join(name)).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o600, "{name}");
        if name != "admin-header" {
            let token = std::fs::read_to_string(dir.join(name)).unwrap();
            assert!(token.trim().len() >= 32, "{name}: {token:?}");
            tokens.push(token.trim().to_string());
        }
    }
    assert_ne!(tokens[0], tokens[1], "one token for both listeners");

    // The one-liner, pasted as printed: the sample's first entries in key
    // order and its number of keys.
    let one_liner = line_starting(&out, "DENO_KV_ACCESS_TOKEN=");
    let run = paste(&one_liner);
    assert!(
        run.status.is_some_and(|s| s.success()),
        "{}",
        run.describe()
    );
    assert_eq!(
        run.stdout.lines().last(),
        Some(format!("{} entries", final_state.len()).as_str()),
        "{}",
        run.describe()
    );
    let mut keys: Vec<&String> = final_state.keys().collect();
    keys.sort();
    let want: Vec<&str> = keys[..3]
        .iter()
        .map(|k| final_state[k.as_str()][1].as_str().unwrap())
        .collect();
    let got: Vec<&str> = run
        .stdout
        .split_whitespace()
        .filter(|w| w.len() == 20 && w.bytes().all(|b| b.is_ascii_hexdigit()))
        .collect();
    assert_eq!(got, want, "{}", run.describe());

    // Every key, value and versionstamp, through the printed URL and token
    // file: the whole sample, exactly.
    let url = run_url(&one_liner);
    let token_file = dir.join("access-token");
    let reads = paste(&format!(
        "DENO_KV_ACCESS_TOKEN=\"$(cat '{}')\" deno run --unstable-kv -A '{}' '{url}' '{}' remote",
        token_file.display(),
        common::serve::clients_dir().join("deno_reads.ts").display(),
        expected_path.display()
    ));
    let summary = reads.assert_success();
    assert_eq!(summary["failure_count"], 0, "{summary:#}");
    assert_eq!(summary["keys"], final_state.len(), "{summary}");

    // The curl, pasted as printed: the replica at the sample's newest point.
    let curl = paste(&line_starting(&out, "curl "));
    assert!(
        curl.status.is_some_and(|s| s.success()),
        "{}",
        curl.describe()
    );
    let current: Value =
        serde_json::from_str(&curl.stdout).unwrap_or_else(|e| panic!("{e}: {}", curl.describe()));
    assert_eq!(
        current["versionstamp"], expected["latest_point"],
        "{current}"
    );
    assert_eq!(current["mode"], "following", "{current}");

    // No token in any process's arguments, the server's included.
    let lines = all_command_lines();
    assert!(
        lines
            .iter()
            .any(|l| l.contains(" serve ") && l.contains(dir.to_str().unwrap())),
        "the demo's server is not running: {lines:#?}"
    );
    for token in &tokens {
        assert!(
            !lines.iter().any(|l| l.contains(token.as_str())),
            "a token is on a command line"
        );
    }

    // Ctrl-C: exit 0, server gone, nothing left behind.
    let rc = unsafe { libc::kill(demo.pid() as i32, libc::SIGINT) };
    assert_eq!(rc, 0);
    let end = demo.wait(START_TIMEOUT);
    assert!(
        end.status.is_some_and(|s| s.code() == Some(0)),
        "{}",
        end.describe()
    );
    assert!(!dir.exists(), "{dir:?} left behind");
    assert_eq!(
        std::fs::read_dir(tmp.path()).unwrap().count(),
        0,
        "files left in TMPDIR"
    );
    let dir_text = dir.to_str().unwrap();
    assert!(
        !all_command_lines().iter().any(|l| l.contains(dir_text)),
        "the demo's server still runs after Ctrl-C"
    );
}

/// The KV Connect URL in the printed one-liner.
fn run_url(one_liner: &str) -> String {
    let at = one_liner
        .find("Deno.openKv(\"")
        .expect("openKv in the one-liner")
        + 13;
    let rest = &one_liner[at..];
    rest[..rest.find('"').unwrap()].to_string()
}

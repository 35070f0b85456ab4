//! The binary's exit codes: failures no restart can mend exit with a code
//! of their own (listed in the unit's `RestartPreventExitStatus=`), the
//! rest with 1, which systemd restarts. See src/exit.rs.

#[path = "common/bounded.rs"]
mod bounded;
#[path = "common/canned.rs"]
mod canned;
mod common;

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use canned::{s3_error, Canned};
use common::{kvreplica_bin, Sample};

/// Exit codes of src/exit.rs, spelled out: the tests pin the numbers
/// operators put in their units.
const FAILURE: i32 = 1;
const USAGE: i32 = 2;
const CORRUPT_BACKUP: i32 = 65;
const NO_BACKUP: i32 = 66;
const REFUSED: i32 = 69;
const REPLICA_MISMATCH: i32 = 73;
const ACCESS_DENIED: i32 = 77;
const BAD_CONFIG: i32 = 78;

/// A run that should stop by itself: the transient case retries for a
/// while (eight attempts, backoff up to 10 s) before giving up.
const RUN_TIMEOUT: Duration = Duration::from_secs(120);

/// `kvreplica <args>` with a clean environment (no AWS setup, no
/// `KVREPLICA_*` from the developer's shell), killed after [`RUN_TIMEOUT`].
fn run(args: &[&str], home: &Path) -> Output {
    let (status, stderr) = bounded::run(
        Command::new(kvreplica_bin())
            .args(args)
            .env_clear()
            .env("HOME", home)
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("AWS_EC2_METADATA_DISABLED", "true"),
        RUN_TIMEOUT,
    );
    Output {
        status,
        stdout: Vec::new(),
        stderr,
    }
}

/// Asserts `out` ended with `code` and an error message containing `says`.
fn assert_exit(out: &Output, code: i32, says: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(code),
        "exit status {} instead of {code}; stderr:\n{stderr}",
        out.status
    );
    assert!(stderr.contains(says), "stderr lacks {says:?}:\n{stderr}");
}

/// `serve` on free ports with a test token, plus `args`.
fn serve_args<'a>(args: &[&'a str]) -> Vec<&'a str> {
    let mut all = vec![
        "serve",
        "--addr",
        "127.0.0.1:0",
        "--admin-addr",
        "127.0.0.1:0",
        "--access-token",
        "exit-code-test-token",
    ];
    all.extend_from_slice(args);
    all
}

/// `--source s3://kv-backup/backups/x/` at `endpoint`, with static keys.
fn s3_args(endpoint: &str, db: &str) -> Vec<String> {
    [
        "--source",
        "s3://kv-backup/backups/x/",
        "--s3-endpoint",
        endpoint,
        "--s3-access-key-id",
        "AKIDEXITCODETEST",
        "--db",
        db,
    ]
    .map(String::from)
    .to_vec()
}

fn secret_file(dir: &Path) -> String {
    let p = dir.join("s3-secret");
    std::fs::write(&p, "exit-code-test-secret").unwrap();
    p.display().to_string()
}

#[test]
fn an_empty_or_missing_backup_directory_exits_66() {
    let tmp = tempfile::tempdir().unwrap();
    let empty = tmp.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let db = tmp.path().join("r.sqlite").display().to_string();
    let source = format!("file://{}/", empty.display());
    for cmd in [
        vec!["sync", "--source", &source, "--db", &db],
        serve_args(&["--source", &source, "--db", &db]),
    ] {
        let out = run(&cmd, tmp.path());
        assert_exit(&out, NO_BACKUP, "no backup found at");
    }
    // A failed first sync has bound the file to its source already: the
    // next case gets a file of its own.
    let db = tmp.path().join("r2.sqlite").display().to_string();
    let missing = format!("file://{}/nowhere/", tmp.path().display());
    let out = run(&["sync", "--source", &missing, "--db", &db], tmp.path());
    assert_exit(&out, NO_BACKUP, "the directory does not exist");
}

#[test]
fn a_wrong_bucket_exits_66_and_refused_credentials_77() {
    let tmp = tempfile::tempdir().unwrap();
    let secret = secret_file(tmp.path());
    for (answer, code, says) in [
        (s3_error(404, "NoSuchBucket"), NO_BACKUP, "does not exist"),
        (
            s3_error(403, "AccessDenied"),
            ACCESS_DENIED,
            "access denied",
        ),
    ] {
        // Each server listens on a port of its own, so a file of its own.
        let db = tmp.path().join(format!("r{code}.sqlite"));
        let db = db.display().to_string();
        let server = Canned::start(move |_| answer.clone());
        let s3 = s3_args(&server.url(), &db);
        let mut args: Vec<&str> = s3.iter().map(String::as_str).collect();
        args.extend(["--s3-secret-access-key-file", &secret]);
        let mut sync = vec!["sync"];
        sync.extend(&args);
        assert_exit(&run(&sync, tmp.path()), code, says);
        assert_exit(&run(&serve_args(&args), tmp.path()), code, says);
    }
}

#[test]
fn a_transient_failure_still_exits_1() {
    let tmp = tempfile::tempdir().unwrap();
    let secret = secret_file(tmp.path());
    let db = tmp.path().join("r.sqlite").display().to_string();
    let server = Canned::start(|_| s3_error(503, "ServiceUnavailable"));
    let s3 = s3_args(&server.url(), &db);
    let mut args: Vec<&str> = vec!["sync"];
    args.extend(s3.iter().map(String::as_str));
    args.extend(["--s3-secret-access-key-file", &secret]);
    let out = run(&args, tmp.path());
    assert_exit(&out, FAILURE, "temporary error");
}

#[test]
fn a_corrupt_backup_exits_65() {
    let sample = Sample::load("sample-1");
    let tmp = tempfile::tempdir().unwrap();
    let source = sample.install_initial(&tmp.path().join("bucket"));
    let logs = Path::new(source.strip_prefix("file://").unwrap()).join("logs");
    let first = std::fs::read_dir(&logs)
        .unwrap()
        .map(|e| e.unwrap().path())
        .min()
        .unwrap();
    std::fs::write(&first, b"\x0a\xff\xff\xff\xffnot protobuf").unwrap();
    let db = tmp.path().join("r.sqlite").display().to_string();
    let out = run(&["sync", "--source", &source, "--db", &db], tmp.path());
    assert_exit(&out, CORRUPT_BACKUP, "not a valid protobuf message");
}

#[test]
fn a_replica_of_another_backup_exits_73() {
    let one = Sample::load("sample-1");
    let two = Sample::load("sample-2");
    let tmp = tempfile::tempdir().unwrap();
    let source1 = one.install_initial(&tmp.path().join("one"));
    let source2 = two.install_initial(&tmp.path().join("two"));
    let db = tmp.path().join("r.sqlite").display().to_string();
    let out = run(&["sync", "--source", &source1, "--db", &db], tmp.path());
    assert_exit(&out, 0, "");
    for cmd in [
        vec!["sync", "--source", &source2, "--db", &db],
        serve_args(&["--source", &source2, "--db", &db]),
    ] {
        let out = run(&cmd, tmp.path());
        assert_exit(&out, REPLICA_MISMATCH, "a replica follows one backup");
    }
}

#[test]
fn a_bad_config_exits_78() {
    let tmp = tempfile::tempdir().unwrap();
    let config = tmp.path().join("kvreplica.toml");
    let db = tmp.path().join("r.sqlite").display().to_string();
    std::fs::write(
        &config,
        "source = \"file:///srv/backup/\"\ndb = \"r.sqlite\"\nbogus = 1\n",
    )
    .unwrap();
    let config = config.display().to_string();
    for cmd in [
        vec!["sync", "--config", &config],
        serve_args(&["--config", &config]),
        vec!["check-config", "--config", &config],
    ] {
        assert_exit(&run(&cmd, tmp.path()), BAD_CONFIG, "unknown key `bogus`");
    }
    // A source URL of no known scheme is a configuration error too.
    let out = run(
        &["sync", "--source", "ftp://host/x/", "--db", &db],
        tmp.path(),
    );
    assert_exit(&out, BAD_CONFIG, "ftp");
}

#[test]
fn a_wrong_command_line_exits_2() {
    let tmp = tempfile::tempdir().unwrap();
    let out = run(&["serve", "--no-such-flag"], tmp.path());
    assert_exit(&out, USAGE, "--no-such-flag");
}

#[test]
fn the_units_do_not_restart_the_permanent_codes_only() {
    for name in ["kvreplica.service", "kvreplica@.service"] {
        let unit = std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("systemd")
                .join(name),
        )
        .unwrap();
        unit_prevents_restart_of_permanent_codes(name, &unit);
    }
}

fn unit_prevents_restart_of_permanent_codes(name: &str, unit: &str) {
    let listed: Vec<i32> = unit
        .lines()
        .filter_map(|l| l.strip_prefix("RestartPreventExitStatus="))
        .flat_map(|v| v.split_whitespace().map(|c| c.parse::<i32>().unwrap()))
        .collect();
    let mut want = vec![
        USAGE,
        CORRUPT_BACKUP,
        NO_BACKUP,
        REFUSED,
        REPLICA_MISMATCH,
        ACCESS_DENIED,
        BAD_CONFIG,
    ];
    want.sort();
    let mut got = listed.clone();
    got.sort();
    assert_eq!(got, want, "RestartPreventExitStatus= of {name}");
    assert!(!listed.contains(&FAILURE));
}

//! Helpers shared by the integration tests: the built binary, sample
//! backups, reading a replica file back, and comparing it with expected
//! contents.

#![allow(dead_code)]

pub mod admin;
pub mod browser;
pub mod fixture;
pub mod serve;
pub mod served;
pub mod v8;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

/// The `kvreplica` binary under test.
pub fn kvreplica_bin() -> &'static str {
    env!("CARGO_BIN_EXE_kvreplica")
}

/// `tests/fixtures/`: sample Deploy-format buckets made by a generator
/// outside this repo, with their expected contents.
pub fn fixtures_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

/// Copies a directory tree (files and folders) into `dst`, creating it.
pub fn copy_dir(src: &Path, dst: &Path) {
    std::fs::create_dir_all(dst).unwrap();
    for entry in std::fs::read_dir(src).unwrap() {
        let entry = entry.unwrap();
        let to = dst.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &to);
        } else {
            std::fs::copy(entry.path(), &to).unwrap();
        }
    }
}

/// Runs `kvreplica <args>` to completion.
pub fn run(args: &[&str]) -> Output {
    Command::new(kvreplica_bin())
        .args(args)
        .env_remove("RUST_LOG")
        .output()
        .expect("running kvreplica")
}

/// Runs `kvreplica <args>` and fails the test unless it exits 0.
pub fn run_ok(args: &[&str]) -> Output {
    let out = run(args);
    assert!(
        out.status.success(),
        "kvreplica {args:?} failed ({}):\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// One row of the replica's visible `kv` table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Row {
    pub value: Vec<u8>,
    pub encoding: i64,
    /// The 10-byte versionstamp as 20 hex digits.
    pub versionstamp: String,
    pub expire_at_ms: i64,
}

/// The visible state of a replica file: hex key → row.
pub fn read_replica(db: &Path) -> BTreeMap<String, Row> {
    let conn =
        rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .unwrap();
    let mut stmt = conn
        .prepare("select k, v, v_encoding, version, seq, expiration_ms from kv order by k")
        .unwrap();
    let rows = stmt
        .query_map([], |r| {
            let version: i64 = r.get(3)?;
            let seq: i64 = r.get(4)?;
            let mut vs = (version as u64).to_be_bytes().to_vec();
            vs.extend((seq as u16).to_be_bytes());
            Ok((
                hex::encode(r.get::<_, Vec<u8>>(0)?),
                Row {
                    value: r.get(1)?,
                    encoding: r.get(2)?,
                    versionstamp: hex::encode(vs),
                    expire_at_ms: r.get(5)?,
                },
            ))
        })
        .unwrap();
    rows.map(Result::unwrap).collect()
}

/// `PRAGMA integrity_check` of a replica file.
pub fn integrity_ok(db: &Path) -> bool {
    let conn = rusqlite::Connection::open(db).unwrap();
    let s: String = conn
        .query_row("pragma integrity_check", [], |r| r.get(0))
        .unwrap();
    s == "ok"
}

/// `PRAGMA integrity_check` through a read-only connection, for a file a
/// kvreplica process may hold open: unlike [`integrity_ok`] it never
/// checkpoints or recovers the WAL, so checking repairs nothing that
/// kvreplica's own restart should have to.
pub fn integrity_ok_read_only(db: &Path) -> bool {
    let conn =
        rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .unwrap();
    let s: String = conn
        .query_row("pragma integrity_check", [], |r| r.get(0))
        .unwrap();
    s == "ok"
}

/// Every table of a replica file as committed, read through one read-only
/// transaction: table name → (rows, hash of the sorted rows). Two files (or
/// one file at two moments) with equal fingerprints hold the same data,
/// history and sync position.
pub fn fingerprint(db: &Path) -> BTreeMap<String, (usize, u64)> {
    use std::hash::{Hash, Hasher};
    let mut conn =
        rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .unwrap();
    let tx = conn.transaction().unwrap();
    let tables: Vec<String> = tx
        .prepare("select name from sqlite_master where type = 'table' order by name")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let mut out = BTreeMap::new();
    for t in tables {
        let mut stmt = tx.prepare(&format!("select * from \"{t}\"")).unwrap();
        let n = stmt.column_count();
        let mut rows: Vec<String> = stmt
            .query_map([], |r| {
                (0..n)
                    .map(|i| r.get_ref(i).map(|v| format!("{v:?}")))
                    .collect::<Result<Vec<_>, _>>()
                    .map(|v| v.join("|"))
            })
            .unwrap()
            .map(Result::unwrap)
            .collect();
        rows.sort();
        let mut h = std::collections::hash_map::DefaultHasher::new();
        rows.hash(&mut h);
        out.insert(t, (rows.len(), h.finish()));
    }
    out
}

/// Copies a replica file and its `-wal` and `-shm` files (those that
/// exist) into `dir`, as they are; returns the copy's path. For checks
/// that need a file of their own: opening a crashed file read-write
/// recovers its WAL, which kvreplica's restart must find untouched.
pub fn copy_replica(db: &Path, dir: &Path) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let name = db.file_name().unwrap().to_str().unwrap();
    for suffix in ["", "-wal", "-shm"] {
        let from = db.with_file_name(format!("{name}{suffix}"));
        if from.exists() {
            std::fs::copy(&from, dir.join(format!("{name}{suffix}"))).unwrap();
        }
    }
    dir.join(name)
}

/// A sample backup of `tests/fixtures/` (see its README).
pub struct Sample {
    pub json0: Expected,
    pub json1: Expected,
    /// `bucket/<bucket>/`: the object keys are the paths below it.
    pub bucket_root: PathBuf,
    /// `append-1/<bucket>/`: later log objects, same key layout.
    pub append_root: PathBuf,
    pub bucket: String,
    pub prefix: String,
}

impl Sample {
    pub fn load(name: &str) -> Sample {
        let dir = fixtures_dir().join(name);
        let json0 = Expected::load(&dir.join("expected-0.json"));
        let json1 = Expected::load(&dir.join("expected-1.json"));
        let bucket = json0.raw["bucket"].as_str().unwrap().to_string();
        let prefix = json0.raw["prefix"].as_str().unwrap().to_string();
        Sample {
            bucket_root: dir.join("bucket").join(&bucket),
            append_root: dir.join("append-1").join(&bucket),
            json0,
            json1,
            bucket,
            prefix,
        }
    }

    /// Copies the initial bucket into `dir` (as `<dir>/<prefix>`) and
    /// returns the `file://` source URL of the backup.
    pub fn install_initial(&self, dir: &Path) -> String {
        copy_dir(&self.bucket_root, dir);
        format!("file://{}/{}", dir.display(), self.prefix)
    }

    /// Adds the append-1 log objects to a directory made by
    /// [`Sample::install_initial`].
    pub fn install_append(&self, dir: &Path) {
        copy_dir(&self.append_root, dir);
    }
}

/// An `expected-*.json` file (format in tests/fixtures/README.md).
pub struct Expected {
    pub raw: Value,
}

impl Expected {
    pub fn load(path: &Path) -> Expected {
        let text = std::fs::read_to_string(path).unwrap();
        Expected {
            raw: serde_json::from_str(&text).unwrap(),
        }
    }

    pub fn latest_point(&self) -> String {
        self.raw["latest_point"].as_str().unwrap().to_string()
    }

    pub fn initial_point(&self) -> String {
        self.raw["initial_point"].as_str().unwrap().to_string()
    }

    /// Recoverable points, ascending: (versionstamp, RFC 3339 time).
    pub fn points(&self) -> Vec<(String, String)> {
        self.raw["points"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| {
                (
                    p["versionstamp"].as_str().unwrap().to_string(),
                    p["time"].as_str().unwrap().to_string(),
                )
            })
            .collect()
    }

    /// The points that have a full expected state, with that state.
    pub fn states(&self) -> Vec<(String, &Value)> {
        self.raw["states"]
            .as_object()
            .unwrap()
            .iter()
            .map(|(k, v)| (k.clone(), v))
            .collect()
    }

    /// Asserts the replica state equals the expected state at `latest_point`.
    pub fn assert_final(&self, rows: &BTreeMap<String, Row>) {
        self.assert_state(rows, &self.raw["final_state"], "final_state");
    }

    /// Asserts `rows` equals one expected state (`{key_hex: [value_id, vs]}`):
    /// same keys, versionstamps, encodings and values.
    pub fn assert_state(&self, rows: &BTreeMap<String, Row>, state: &Value, label: &str) {
        let state = state.as_object().unwrap();
        let extra: Vec<_> = rows.keys().filter(|k| !state.contains_key(*k)).collect();
        let missing: Vec<_> = state.keys().filter(|k| !rows.contains_key(*k)).collect();
        assert!(
            extra.is_empty() && missing.is_empty(),
            "{label}: {} keys too many (e.g. {:?}), {} missing (e.g. {:?})",
            extra.len(),
            extra.first(),
            missing.len(),
            missing.first()
        );
        for (key, exp) in state {
            let row = &rows[key];
            let id = exp[0].as_str().unwrap();
            let vs = exp[1].as_str().unwrap();
            assert_eq!(row.versionstamp, vs, "{label}: versionstamp of key {key}");
            let value = &self.raw["values"][id];
            check_value(row, value).unwrap_or_else(|e| panic!("{label}: key {key}: {e}"));
        }
    }
}

/// Checks a stored value against the fixtures' JSON form of it.
pub fn check_value(row: &Row, expected: &Value) -> Result<(), String> {
    if let Some(dec) = expected.get("$u64").and_then(Value::as_str) {
        let want: u64 = dec.parse().unwrap();
        if row.encoding != 2 || row.value != want.to_le_bytes() {
            return Err(format!(
                "want u64 {want}, got encoding {} value {}",
                row.encoding,
                hex::encode(&row.value)
            ));
        }
        return Ok(());
    }
    if let Some(h) = expected.get("$bytes").and_then(Value::as_str) {
        if row.encoding != 3 || hex::encode(&row.value) != h {
            return Err(format!(
                "want bytes {h}, got encoding {} value {}",
                row.encoding,
                hex::encode(&row.value)
            ));
        }
        return Ok(());
    }
    if row.encoding != 1 {
        return Err(format!("want a V8 value, got encoding {}", row.encoding));
    }
    let got = v8::decode(&row.value).map_err(|e| format!("V8 decode: {e}"))?;
    if !same(&got, expected) {
        return Err(format!("want {expected}, got {got}"));
    }
    Ok(())
}

/// JSON equality where numbers may differ in the last bit: the expected
/// files print the shortest round-trip form, which a JSON parser does not
/// always read back to the exact same double.
fn same(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => {
            let (x, y) = (x.as_f64().unwrap(), y.as_f64().unwrap());
            x == y || (x - y).abs() <= f64::EPSILON * 4.0 * x.abs().max(y.abs())
        }
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(a, b)| same(a, b))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len() && x.iter().all(|(k, v)| y.get(k).is_some_and(|w| same(v, w)))
        }
        _ => a == b,
    }
}

/// `pitr list` output as (versionstamp, time) pairs, oldest first.
pub fn pitr_list(db: &Path) -> Vec<(String, String)> {
    let out = run_ok(&["pitr", "--db", &db.display().to_string(), "list"]);
    let mut v: Vec<(String, String)> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| {
            // <versionstamp>\t<time>[\t<n> points at this time]
            let mut fields = l.split('\t');
            let vs = fields.next().unwrap();
            let t = fields.next().expect("tab-separated line");
            (vs.to_string(), t.to_string())
        })
        .collect();
    v.reverse();
    v
}

/// Runs a prepared `kvreplica sync` command with debug events on stderr and
/// kills it with SIGKILL right after the `nth` line containing `event`.
/// Returns false when the command finished (successfully) before that.
pub fn kill_after(mut cmd: Command, event: &str, nth: usize) -> bool {
    use std::io::BufRead;
    let mut child = cmd
        .env("RUST_LOG", "kvreplica=debug")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = std::io::BufReader::new(child.stderr.take().unwrap());
    let mut seen = 0;
    let mut tail = Vec::new();
    for line in stderr.lines() {
        let line = line.unwrap();
        if line.contains(event) {
            seen += 1;
            if seen == nth {
                child.kill().unwrap();
                child.wait().unwrap();
                return true;
            }
        }
        tail.push(line);
    }
    let status = child.wait().unwrap();
    assert!(
        status.success(),
        "sync failed on its own: {status}\n{}",
        tail.join("\n")
    );
    false
}

/// Polls the replica file until `check` accepts its rows, for at most
/// `timeout`; panics with `label` otherwise.
pub fn wait_for_rows(
    db: &Path,
    timeout: std::time::Duration,
    label: &str,
    check: impl Fn(&BTreeMap<String, Row>) -> bool,
) {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        if db.exists() {
            // The file may be mid-creation on the first attempts.
            if let Ok(rows) = std::panic::catch_unwind(|| read_replica(db)) {
                if check(&rows) {
                    return;
                }
            }
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{label}: the replica did not get there within {timeout:?}"
        );
        std::thread::sleep(std::time::Duration::from_millis(30));
    }
}

/// Sends SIGTERM and waits (bounded) for a clean exit.
pub fn terminate(child: &mut std::process::Child) -> std::process::ExitStatus {
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return s;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("process ignored SIGTERM for 10 s");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// An in-process sync engine for `url` on the replica `db`, for tests that
/// serve it themselves; with `load`, the initial snapshot and every log in
/// the bucket are applied before it is returned.
pub async fn syncer(
    url: &kvreplica::source::SourceUrl,
    db: &Path,
    load: bool,
) -> std::sync::Arc<kvreplica::sync::Syncer> {
    let src = kvreplica::source::open(url, &Default::default()).unwrap();
    let store = kvreplica::store::Store::open(db).unwrap();
    let syncer = std::sync::Arc::new(
        kvreplica::sync::Syncer::new(src, store, kvreplica::sync::SyncOptions::default()).unwrap(),
    );
    if load {
        syncer.initial().await.unwrap();
        syncer.catch_up().await.unwrap();
    }
    syncer
}

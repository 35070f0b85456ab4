//! `kvreplica export`: the visible state of a synced sample, decoded,
//! equals the sample's expected state entry for entry (keys, values,
//! versionstamps, expiry) in JSON Lines and CSV; a closed pipe ends it
//! quietly; a file that is not a replica is refused and left unchanged.
//! `--at` exports earlier points (and `latest` past a pinned replica)
//! without moving it; `--prefix`/`--start`/`--end` select keys; DuckDB
//! reads the output; an export read slowly while `serve` applies logs is
//! exactly one commit; progress shows on a terminal only.

mod common;
#[path = "common/export_entries.rs"]
mod export_entries;
#[path = "common/same_json.rs"]
mod same_json;
#[allow(dead_code, clippy::duplicate_mod)]
#[path = "common/tools.rs"]
mod tools;

use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};

use common::fixture::{Fixture, Spec};
use common::serve::ServeProcess;
use common::{kvreplica_bin, read_replica, run, run_ok, Expected, Sample};
use export_entries::{assert_entries, entries, fixture_value, parse_jsonl, same_entries};
use same_json::same;
use serde_json::{json, Value};

fn synced_sample(dir: &Path) -> (Sample, std::path::PathBuf) {
    let sample = Sample::load("sample-1");
    let source = sample.install_initial(&dir.join("bucket"));
    let db = dir.join("replica.sqlite");
    run_ok(&["sync", "--source", &source, "--db", db.to_str().unwrap()]);
    (sample, db)
}

/// The fixtures' key part form (`{"s": …}`, `{"i": …}`…) in export's.
fn fixture_key(parts: &Value) -> Value {
    let part = |p: &Value| {
        let (tag, v) = p.as_object().unwrap().iter().next().unwrap();
        match tag.as_str() {
            "s" | "bool" => v.clone(),
            "n" => match v {
                Value::String(s) => json!({ "number": s }),
                v => v.clone(),
            },
            "i" => json!({ "bigint": v }),
            "b" => json!({ "bytes": v }),
            t => panic!("unknown fixture key part {t}"),
        }
    };
    Value::Array(parts.as_array().unwrap().iter().map(part).collect())
}

/// Asserts that `entries` (export's objects, in output order) are the
/// sample's final state and the replica's rows, one for one.
fn assert_export_is_expected(entries: &[Value], expected: &Expected, db: &Path) {
    let expected = &expected.raw;
    let state = expected["final_state"].as_object().unwrap();
    let rows = read_replica(db);
    let hexes: Vec<&str> = entries
        .iter()
        .map(|e| e["key_hex"].as_str().unwrap())
        .collect();
    let mut sorted = hexes.clone();
    sorted.sort();
    assert_eq!(hexes, sorted, "entries in key order");
    assert_eq!(entries.len(), state.len(), "one entry per expected key");
    for e in entries {
        let hex = e["key_hex"].as_str().unwrap();
        let [id, vs] = state
            .get(hex)
            .unwrap_or_else(|| panic!("unexpected key {hex}"))
            .as_array()
            .unwrap()
            .as_slice()
        else {
            panic!("state entry of {hex}")
        };
        assert_eq!(e["key"], fixture_key(&expected["keys"][hex]), "key {hex}");
        assert_eq!(&e["versionstamp"], vs, "versionstamp of {hex}");
        let want = fixture_value(&expected["values"][id.as_str().unwrap()]);
        assert!(
            same(&e["value"], &want),
            "value of {hex}: export {} expected {want}",
            e["value"]
        );
        let row = &rows[hex];
        let encoding = match row.encoding {
            1 => "v8",
            2 => "u64",
            3 => "bytes",
            n => panic!("encoding {n}"),
        };
        assert_eq!(e["encoding"], encoding, "encoding of {hex}");
        let expiry = (row.expire_at_ms >= 0).then_some(row.expire_at_ms);
        assert_eq!(e["expires_at_ms"], json!(expiry), "expiry of {hex}");
    }
}

/// `kvreplica export --db DB` as parsed JSON lines.
fn export_jsonl(db: &Path) -> Vec<Value> {
    let out = run_ok(&["export", "--db", db.to_str().unwrap()]);
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

#[test]
fn jsonl_export_equals_the_expected_state() {
    let tmp = tempfile::tempdir().unwrap();
    let (sample, db) = synced_sample(tmp.path());
    assert_export_is_expected(&export_jsonl(&db), &sample.json0, &db);
}

#[test]
fn export_runs_beside_a_serve_that_holds_the_file() {
    let sample = Sample::load("sample-1");
    let tmp = tempfile::tempdir().unwrap();
    let bucket = tmp.path().join("bucket");
    let source = sample.install_initial(&bucket);
    let db = tmp.path().join("replica.sqlite");
    let db_arg = db.display().to_string();
    let mut serve = ServeProcess::start(&[
        "--source",
        &source,
        "--db",
        &db_arg,
        "--poll-interval",
        "100ms",
    ]);
    serve.wait_ready();
    serve.wait_at(&sample.json0.latest_point());
    assert_export_is_expected(&export_jsonl(&db), &sample.json0, &db);
    sample.install_append(&bucket);
    serve.wait_at(&sample.json1.latest_point());
    assert_export_is_expected(&export_jsonl(&db), &sample.json1, &db);
    assert!(serve.terminate().success());
}

/// Splits RFC 4180 CSV text into records of cells.
fn parse_csv(text: &str) -> Vec<Vec<String>> {
    let (mut records, mut record, mut cell) = (Vec::new(), Vec::new(), String::new());
    let mut chars = text.chars().peekable();
    let mut quoted = false;
    while let Some(c) = chars.next() {
        match (quoted, c) {
            (true, '"') if chars.peek() == Some(&'"') => {
                chars.next();
                cell.push('"');
            }
            (true, '"') => quoted = false,
            (false, '"') => quoted = true,
            (false, ',') => record.push(std::mem::take(&mut cell)),
            (false, '\n') => {
                record.push(std::mem::take(&mut cell));
                records.push(std::mem::take(&mut record));
            }
            (_, c) => cell.push(c),
        }
    }
    assert!(
        cell.is_empty() && record.is_empty(),
        "CSV ends with a newline"
    );
    records
}

#[test]
fn csv_export_to_a_file_equals_the_expected_state() {
    let tmp = tempfile::tempdir().unwrap();
    let (sample, db) = synced_sample(tmp.path());
    let file = tmp.path().join("out.csv");
    let out = run_ok(&[
        "export",
        "--db",
        db.to_str().unwrap(),
        "--format",
        "csv",
        "--output",
        file.to_str().unwrap(),
    ]);
    assert!(out.stdout.is_empty(), "the export goes to the file only");
    let records = parse_csv(&std::fs::read_to_string(&file).unwrap());
    assert_eq!(
        records[0],
        [
            "key",
            "key_hex",
            "value",
            "encoding",
            "versionstamp",
            "expires_at_ms"
        ]
    );
    let entries: Vec<Value> = records[1..]
        .iter()
        .map(|r| {
            json!({
                "key": serde_json::from_str::<Value>(&r[0]).unwrap(),
                "key_hex": r[1],
                "value": serde_json::from_str::<Value>(&r[2]).unwrap(),
                "encoding": r[3],
                "versionstamp": r[4],
                "expires_at_ms": if r[5].is_empty() { Value::Null } else { json!(r[5].parse::<i64>().unwrap()) },
            })
        })
        .collect();
    assert_export_is_expected(&entries, &sample.json0, &db);
}

#[test]
fn a_closed_pipe_ends_the_export_quietly() {
    let tmp = tempfile::tempdir().unwrap();
    let (_sample, db) = synced_sample(tmp.path());
    let mut child = Command::new(kvreplica_bin())
        .args(["export", "--db", db.to_str().unwrap()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Read one line, as `| head -1` does, and go away.
    let mut stdout = child.stdout.take().unwrap();
    let mut first = [0u8; 64];
    stdout.read_exact(&mut first).unwrap();
    assert!(first.starts_with(b"{\"key\":"));
    drop(stdout);
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "exit status {}", out.status);
    assert!(
        out.stderr.is_empty(),
        "nothing on stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_file_that_is_not_a_replica_is_refused_and_left_unchanged() {
    let tmp = tempfile::tempdir().unwrap();
    // Any SQLite file with a `kv` table (the Deno CLI's own, say), and a
    // file that is no database at all.
    let other = tmp.path().join("other.sqlite");
    rusqlite::Connection::open(&other)
        .unwrap()
        .execute_batch("create table kv (k blob primary key, v blob)")
        .unwrap();
    let text = tmp.path().join("notes.txt");
    std::fs::write(
        &text,
        "not a database, but long enough to have a header of sorts",
    )
    .unwrap();
    for file in [other, text] {
        let before = std::fs::read(&file).unwrap();
        let out = run(&["export", "--db", file.to_str().unwrap()]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{file:?} exported");
        assert!(
            stderr.contains("is not a kvreplica replica file"),
            "{file:?}: {stderr}"
        );
        assert!(out.stdout.is_empty());
        assert_eq!(std::fs::read(&file).unwrap(), before, "{file:?} changed");
    }
}

#[test]
fn a_replica_whose_initial_load_is_incomplete_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let sample = Sample::load("sample-1");
    let source = sample.install_initial(&tmp.path().join("bucket"));
    let db = tmp.path().join("replica.sqlite");
    let db_arg = db.to_str().unwrap();
    let mut cmd = Command::new(kvreplica_bin());
    cmd.args(["sync", "--source", &source, "--db", db_arg])
        .args(["--fetch-concurrency", "1"]);
    assert!(
        common::kill_after(cmd, "snapshot range loaded", 1),
        "the sync finished before the kill"
    );
    let out = run(&["export", "--db", db_arg]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a partial load was exported");
    assert!(out.stdout.is_empty(), "nothing written");
    assert!(stderr.contains("initial load is not complete"), "{stderr}");
    run_ok(&["sync", "--source", &source, "--db", db_arg]);
    run_ok(&["export", "--db", db_arg]);
}

/// A generated backup of the default shape (initial objects only) synced
/// to a replica.
fn synced_fixture(dir: &Path, seed: u64) -> (Fixture, std::path::PathBuf) {
    let fx = Fixture::generate(Spec {
        seed,
        append_commits: 0,
        ..Spec::default()
    });
    let bucket = dir.join("prefix");
    fx.write_initial(&bucket);
    let source = format!("file://{}/", bucket.display());
    let db = dir.join("replica.sqlite");
    run_ok(&["sync", "--source", &source, "--db", db.to_str().unwrap()]);
    (fx, db)
}

fn export_args(db: &Path, args: &[&str]) -> Vec<Value> {
    let mut all = vec!["export", "--db", db.to_str().unwrap()];
    all.extend_from_slice(args);
    parse_jsonl(&run_ok(&all).stdout)
}

/// A commit time (ms since the epoch) as `--at` takes it.
fn at_time(ms: u64) -> String {
    let t = chrono::DateTime::from_timestamp_millis(ms as i64).unwrap();
    t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

#[test]
fn export_at_latest_and_earlier_points_equals_the_state_there_and_moves_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let (fx, db) = synced_fixture(tmp.path(), 17);
    let points = fx.points(fx.last_initial);
    assert!(points.len() > 20, "{} points", points.len());
    // Pin the replica in the middle: earlier points are behind what it
    // shows (undo), later ones and `latest` ahead of it (redo).
    let (pinned, pinned_vs, _) = points[points.len() / 2].clone();
    run_ok(&["pitr", "checkout", "--db", db.to_str().unwrap(), &pinned_vs]);
    let rows = read_replica(&db);
    let db_arg = db.to_str().unwrap();

    assert_entries(
        &export_args(&db, &[]),
        &entries(&fx.state_at(pinned)),
        "the visible (pinned) state",
    );
    assert_entries(
        &export_args(&db, &["--at", "latest"]),
        &entries(&fx.state_at(fx.last_initial)),
        "--at latest",
    );
    for (idx, vs, _) in [
        &points[0],
        &points[points.len() / 4],
        &points[points.len() - 3],
    ] {
        assert_entries(
            &export_args(&db, &["--at", vs]),
            &entries(&fx.state_at(*idx)),
            &format!("--at {vs}"),
        );
    }
    // By time: the newest point at or before it, as a checkout resolves it.
    let (_, _, ms) = &points[points.len() / 3];
    let newest = points
        .iter()
        .filter(|p| p.2 <= *ms)
        .map(|p| p.0)
        .max()
        .unwrap();
    assert_entries(
        &export_args(&db, &["--at", &at_time(*ms)]),
        &entries(&fx.state_at(newest)),
        "--at a time",
    );
    assert_eq!(read_replica(&db), rows, "an export moved the replica");
    let current = run_ok(&["pitr", "info", "--db", db_arg]);
    assert!(
        String::from_utf8_lossy(&current.stdout).contains(&pinned_vs),
        "still pinned at {pinned_vs}"
    );
}

#[test]
fn prefixes_and_ranges_select_exactly_their_keys() {
    let tmp = tempfile::tempdir().unwrap();
    let (_sample, db) = synced_sample(tmp.path());
    let all = export_jsonl(&db);
    let hex_of = |key: &str| hex::encode(kvreplica::decode::parse_key(key).unwrap());
    let select = |keep: &dyn Fn(&str) -> bool| -> Vec<Value> {
        all.iter()
            .filter(|e| keep(e["key_hex"].as_str().unwrap()))
            .cloned()
            .collect()
    };
    let (users, scores) = (hex_of(r#"["users"]"#), hex_of(r#"["scores"]"#));
    let under = |p: &str, h: &str| h.starts_with(p);
    // A union, in key order, each entry once though the prefixes overlap.
    let got = export_args(
        &db,
        &[
            "--prefix",
            r#"["users"]"#,
            "--prefix",
            r#"["scores"]"#,
            "--prefix",
            r#"["users","u5"]"#,
        ],
    );
    let want = select(&|h| under(&users, h) || under(&scores, h));
    assert!(want.len() > 100, "{} entries", want.len());
    assert_entries(&got, &want, "two prefixes");
    // A range: start inclusive, end exclusive, in byte order (hex keeps it).
    let (start, end) = (r#"["users","u3"]"#, r#"["users","u6"]"#);
    let (hs, he) = (hex_of(start), hex_of(end));
    let in_range = |h: &str| h >= hs.as_str() && h < he.as_str();
    let want = select(&in_range);
    assert!(!want.is_empty());
    assert_entries(
        &export_args(&db, &["--start", start, "--end", end]),
        &want,
        "a range",
    );
    // With prefixes: the keys under a prefix and in the range.
    let got = export_args(
        &db,
        &[
            "--prefix",
            r#"["users"]"#,
            "--prefix",
            r#"["scores"]"#,
            "--start",
            start,
        ],
    );
    let want = select(&|h| (under(&users, h) || under(&scores, h)) && h >= hs.as_str());
    assert_entries(&got, &want, "prefixes and a start");
    assert!(export_args(&db, &["--prefix", r#"["nothing here"]"#]).is_empty());
}

#[test]
fn bad_keys_ranges_and_points_are_refused_with_their_reason() {
    let tmp = tempfile::tempdir().unwrap();
    let (_sample, db) = synced_sample(tmp.path());
    let db_arg = db.to_str().unwrap();
    let cases: &[(&[&str], &str)] = &[
        (&["--prefix", "users"], "prefix: invalid key users"),
        (
            &["--start", r#"["a", {"bigint": "x"}]"#],
            "start: invalid key",
        ),
        (
            &["--start", r#"["b"]"#, "--end", r#"["a"]"#],
            r#"start ["b"] is not before end ["a"]"#,
        ),
        (
            &["--at", "2000-01-01T00:00:00Z"],
            "is before the earliest recoverable point",
        ),
        (
            &["--at", "00000000000000000001"],
            "00000000000000000001 is not a recoverable point; the nearest point is",
        ),
        (
            &["--at", "yesterday"],
            "is neither a 20-hex-digit versionstamp",
        ),
    ];
    for (args, want) in cases {
        let mut all = vec!["export", "--db", db_arg];
        all.extend_from_slice(args);
        let out = run(&all);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} exported");
        assert!(out.stdout.is_empty(), "{args:?} wrote output");
        assert!(stderr.contains(want), "{args:?}: {stderr}");
    }
}

/// The Python with DuckDB that `scripts/install-test-tools.sh` installs.
fn duckdb_python() -> String {
    std::env::var("KVREPLICA_TEST_DUCKDB_PYTHON")
        .unwrap_or_else(|_| tools::dir().join("duckdb/bin/python").display().to_string())
}

#[test]
fn duckdb_loads_the_export_with_the_expected_counts_and_sums() {
    let tmp = tempfile::tempdir().unwrap();
    let (fx, db) = synced_fixture(tmp.path(), 23);
    let file = tmp.path().join("export.jsonl");
    run_ok(&[
        "export",
        "--db",
        db.to_str().unwrap(),
        "--output",
        file.to_str().unwrap(),
    ]);
    let state = fx.state_at(fx.last_initial);
    // Expected, from the workload: entries per encoding, the sum of the
    // keys' numbers (`["item", n]`), of the expiries, and of the values
    // that are JS numbers.
    let mut per_encoding = std::collections::BTreeMap::<&str, i64>::new();
    let (mut key_sum, mut expiry_sum, mut number_sum, mut numbers) = (0i64, 0i64, 0f64, 0i64);
    for (key, rec) in &state {
        let e = export_entries::entry(key, rec);
        *per_encoding
            .entry(["v8", "u64", "bytes"][rec.encoding as usize - 1])
            .or_default() += 1;
        key_sum += export_entries::item_number(key) as i64;
        if rec.expire_at_ms >= 0 {
            expiry_sum += rec.expire_at_ms;
        }
        if let Some(n) = e["value"].as_f64() {
            number_sum += n;
            numbers += 1;
        }
    }
    assert!(numbers > 10, "the workload has numeric values");
    let script = r#"
import duckdb, json, sys
rel = "read_json_auto('" + sys.argv[1] + "')"
out = {
  "per_encoding": dict(duckdb.sql(f"select encoding, count(*) from {rel} group by encoding").fetchall()),
  "key_sum": duckdb.sql(f"select sum(cast(key->>1 as bigint)) from {rel}").fetchall()[0][0],
  "expiry_sum": duckdb.sql(f"select sum(expires_at_ms) from {rel}").fetchall()[0][0],
  "numbers": duckdb.sql(f"select count(*), sum(cast(value as double)) from {rel} where json_type(value) in ('DOUBLE', 'BIGINT', 'UBIGINT')").fetchall()[0],
}
print(json.dumps(out, default=int))
"#;
    let out = Command::new(duckdb_python())
        .args(["-c", script, file.to_str().unwrap()])
        .output()
        .expect("DuckDB's Python (source scripts/install-test-tools.sh)");
    assert!(
        out.status.success(),
        "duckdb: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let got: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(got["per_encoding"], json!(per_encoding), "{got}");
    assert_eq!(got["key_sum"], json!(key_sum), "{got}");
    assert_eq!(got["expiry_sum"], json!(expiry_sum), "{got}");
    assert_eq!(got["numbers"][0], json!(numbers), "{got}");
    let sum = got["numbers"][1].as_f64().unwrap();
    assert!(
        (sum - number_sum).abs() <= 1e-9 * number_sum.abs().max(1.0),
        "sum of numbers: duckdb {sum}, expected {number_sum}"
    );
}

/// The admin API's `/pitr/current` versionstamp of a serve.
fn visible(serve: &ServeProcess) -> String {
    let (status, body) = serve.admin(common::serve::Method::Get, "/pitr/current", Value::Null);
    assert_eq!(status, 200, "{body}");
    body["versionstamp"].as_str().unwrap().to_string()
}

/// A generated backup's initial objects served (polling every 100 ms) from
/// `prefix/` into `replica.sqlite` of the returned directory, once ready
/// and at the backup's newest point.
fn served_fixture(spec: Spec) -> (Fixture, tempfile::TempDir, ServeProcess) {
    let fx = Fixture::generate(spec);
    let tmp = tempfile::tempdir().unwrap();
    let bucket = tmp.path().join("prefix");
    fx.write_initial(&bucket);
    let source = format!("file://{}/", bucket.display());
    let db = tmp.path().join("replica.sqlite").display().to_string();
    let mut serve =
        ServeProcess::start(&["--source", &source, "--db", &db, "--poll-interval", "100ms"]);
    serve.wait_ready();
    serve.wait_at(&hex::encode(fx.commits[fx.last_initial].versionstamp));
    (fx, tmp, serve)
}

#[test]
fn an_export_read_slowly_while_serve_applies_logs_is_exactly_one_commit() {
    let (fx, tmp, serve) = served_fixture(Spec {
        seed: 41,
        keys: 6000,
        append_commits: 120,
        muts_per_log: 8,
        ..Spec::default()
    });
    let bucket = tmp.path().join("prefix");
    let db_arg = tmp.path().join("replica.sqlite").display().to_string();
    // Every state the replica can show, by point.
    let states: Vec<(usize, String)> = fx
        .points(fx.last_commit())
        .into_iter()
        .filter(|p| p.0 >= fx.last_initial)
        .map(|p| (p.0, p.1))
        .chain([(
            fx.last_initial,
            hex::encode(fx.commits[fx.last_initial].versionstamp),
        )])
        .collect();
    let rounds = 10;
    assert!(
        fx.append.len() >= rounds,
        "{} append objects",
        fx.append.len()
    );
    let per_round = fx.append.len() / rounds;
    for round in 0..rounds {
        let before = visible(&serve);
        let mut child = Command::new(kvreplica_bin())
            .args(["export", "--db", &db_arg])
            // Every other round through `--at latest`'s resolution.
            .args(if round % 2 == 1 {
                &["--at", "latest"][..]
            } else {
                &[]
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdout = child.stdout.take().unwrap();
        // The export has its transaction and is writing: it blocks on the
        // full pipe while serve applies the next log objects.
        let mut first = vec![0u8; 4096];
        stdout.read_exact(&mut first).unwrap();
        let objects = &fx.append[round * per_round..(round + 1) * per_round];
        common::fixture::write_objects(&bucket, objects);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        let after = loop {
            let now = visible(&serve);
            if now != before {
                break now;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "serve applied nothing"
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        };
        assert!(
            child.try_wait().unwrap().is_none(),
            "round {round}: the export finished before serve applied (make it bigger)"
        );
        let mut rest = Vec::new();
        stdout.read_to_end(&mut rest).unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        first.extend(rest);
        let got = parse_jsonl(&first);
        // (A commit split across two log objects is listed once per
        // object: the same point.)
        let matching: std::collections::BTreeSet<&String> = states
            .iter()
            .filter(|(idx, _)| same_entries(&got, &entries(&fx.state_at(*idx))))
            .map(|(_, vs)| vs)
            .collect();
        assert_eq!(
            matching.len(),
            1,
            "round {round}: the export ({} entries) is not exactly one state (matches {matching:?}; visible before {before}, after {after})",
            got.len()
        );
        let exported = matching.first().unwrap().as_str();
        assert!(
            exported >= before.as_str() && exported < after.as_str(),
            "round {round}: exported {exported}, visible before {before}, after {after}"
        );
    }
    assert!(serve.terminate().success());
}

#[test]
fn progress_shows_on_a_terminal_and_never_in_a_pipe() {
    let tmp = tempfile::tempdir().unwrap();
    let (_sample, db) = synced_sample(tmp.path());
    let file = tmp.path().join("out.jsonl");
    // `script` gives the command a terminal; the export goes to a file.
    let command = format!(
        "{} export --db {} --output {}",
        kvreplica_bin(),
        db.display(),
        file.display()
    );
    let out = Command::new("script")
        .args(["-qec", &command, "/dev/null"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    let n = std::fs::read_to_string(&file).unwrap().lines().count();
    assert!(
        text.contains(&format!("exporting {n}/{n} entries"))
            && text.contains("MiB/s")
            && text.contains("ETA"),
        "{text:?}"
    );
    // In a pipe: nothing on stderr.
    let out = run_ok(&[
        "export",
        "--db",
        db.to_str().unwrap(),
        "--output",
        file.to_str().unwrap(),
    ]);
    assert!(
        out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Threads of process `pid` named `export` (the admin API's export readers).
fn export_threads(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .flatten()
        .filter(|t| {
            std::fs::read_to_string(t.path().join("comm")).is_ok_and(|c| c.trim() == "export")
        })
        .count()
}

/// Waits (10 s at most) until process `pid` runs no export reader.
fn wait_no_export_threads(pid: u32, round: usize) {
    wait_until_threads(pid, 0, round)
}

/// Waits (10 s at most) until process `pid` runs `n` export readers.
fn wait_until_threads(pid: u32, n: usize, round: usize) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while export_threads(pid) != n {
        assert!(
            std::time::Instant::now() < deadline,
            "round {round}: {} export readers 10 s later, not {n}",
            export_threads(pid)
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

#[test]
fn a_client_that_goes_away_mid_export_stops_its_reader() {
    let (fx, _tmp, serve) = served_fixture(Spec {
        seed: 43,
        // An export (about 11 MB) far larger than what the kernel buffers
        // between the two ends (a send buffer of up to 4 MiB), so that a
        // reader waits on its client.
        keys: 60_000,
        append_commits: 0,
        ..Spec::default()
    });
    let addr = serve.admin_url().trim_start_matches("http://").to_string();
    let token = common::serve::ADMIN_TOKEN;
    for round in 0..3 {
        let (mut stream, head) = export_entries::open_get(&addr, "/export", token, 4096);
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        let mut some = vec![0u8; 16 * 1024];
        stream.read_exact(&mut some).unwrap();
        // The reader waits on the client that is not reading.
        assert_eq!(export_threads(serve.pid()), 1, "round {round}: one reader");
        drop(stream);
        wait_no_export_threads(serve.pid(), round);
    }
    // Each reader stopped because its client left, not by finishing. A
    // reader's thread ends after it logs, but the line reaches the test
    // through serve's stderr pipe: wait for it (10 s at most).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let log = loop {
        let log = serve.log();
        let stopped = log.matches("export stopped: the client went away").count();
        if stopped >= 3 || std::time::Instant::now() > deadline {
            break log;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    assert_eq!(
        log.matches("export stopped: the client went away").count(),
        3,
        "{log}"
    );
    assert!(!log.contains("export sent"), "{log}");
    // At most MAX_EXPORTS at once: one more is answered 503, in the admin
    // API's error form, before any work; a place is free again once an
    // export ends.
    let max = kvreplica::export::http::MAX_EXPORTS;
    let mut held: Vec<_> = (0..max)
        .map(|_| {
            let (stream, head) = export_entries::open_get(&addr, "/export", token, 4096);
            assert!(head.starts_with("HTTP/1.1 200"), "{head}");
            stream
        })
        .collect();
    let (mut stream, head) = export_entries::open_get(&addr, "/export", token, 4096);
    assert!(head.starts_with("HTTP/1.1 503"), "{head}");
    assert!(head.contains("retry-after: 5"), "{head}");
    let mut body = String::new();
    stream.read_to_string(&mut body).unwrap();
    assert!(body.contains("exports are running already"), "{body}");
    assert_eq!(export_threads(serve.pid()), max);
    held.pop();
    wait_until_threads(serve.pid(), max - 1, 4);
    let (stream, head) = export_entries::open_get(&addr, "/export", token, 4096);
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    held.push(stream);
    drop(held);
    wait_no_export_threads(serve.pid(), 5);
    // A whole export still works, and leaves no reader behind either.
    let (mut stream, head) = export_entries::open_get(&addr, "/export", token, 4096);
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).unwrap();
    assert_entries(
        &parse_jsonl(&export_entries::dechunk(&raw)),
        &entries(&fx.state_at(fx.last_initial)),
        "a whole export after the abandoned ones",
    );
    wait_no_export_threads(serve.pid(), 3);
    assert!(serve.log().contains("export sent through the admin API"));
    assert!(serve.terminate().success());
}

//! `kvreplica export`: the visible state of a synced sample, decoded,
//! equals the sample's expected state entry for entry (keys, values,
//! versionstamps, expiry) in JSON Lines and CSV; a closed pipe ends it
//! quietly; a file that is not a replica is refused and left unchanged.

mod common;
#[path = "common/same_json.rs"]
mod same_json;

use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};

use common::serve::ServeProcess;
use common::{kvreplica_bin, read_replica, run, run_ok, Expected, Sample};
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

/// The fixtures' value form (`$bigint`, `$bytes`, `$u64`) in export's.
fn fixture_value(v: &Value) -> Value {
    match v {
        Value::Object(m) if m.len() == 1 && m.contains_key("$bigint") => {
            json!({"$type": "bigint", "value": m["$bigint"]})
        }
        Value::Object(m) if m.len() == 1 && m.contains_key("$bytes") => {
            json!({"$type": "bytes", "hex": m["$bytes"]})
        }
        Value::Object(m) if m.len() == 1 && m.contains_key("$u64") => {
            json!({"$type": "u64", "value": m["$u64"]})
        }
        Value::Object(m) => Value::Object(
            m.iter()
                .map(|(k, v)| (k.clone(), fixture_value(v)))
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.iter().map(fixture_value).collect()),
        v => v.clone(),
    }
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

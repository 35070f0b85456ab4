//! Prefix filters (`sync.include_prefixes`, `sync.exclude_prefixes`): a
//! filtered replica equals the fixtures' expected state restricted to the
//! prefixes at every point (directory and S3 sources), keeps every point,
//! stores nothing of the left-out keys (not in `kv`, not in undo or redo),
//! answers the Deno CLI as a database that only ever held the kept keys,
//! records its filter and refuses another one unchanged, and refuses an
//! invalid prefix at configuration time.

mod common;
#[path = "common/s3_server.rs"]
mod s3_server;

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use common::serve::{deno_bin, metadata, run_deno, Method, ServeProcess, ACCESS_TOKEN};
use common::{pitr_list, read_replica, run_ok, Expected, Sample};
use s3_server::S3Server;
use serde_json::{json, Value};

/// The filter under test, as flags: three first parts kept (one of them
/// a string with a NUL, which the tuple encoding escapes), one bigint
/// first part, and inside `["flags"]` the `true` keys left out.
const FLAGS: [&str; 10] = [
    "--include-prefix",
    r#"["flags"]"#,
    "--include-prefix",
    r#"["counters"]"#,
    "--include-prefix",
    r#"["nul\u0000s"]"#,
    "--include-prefix",
    r#"[{"bigint": "372"}]"#,
    "--exclude-prefix",
    r#"["flags", true]"#,
];

/// Whether the filter keeps a key, from its decoded parts in the fixture
/// (`{"s": …}`, `{"i": …}`, `{"bool": …}`): independent of the byte
/// encoding the replica matches on.
fn kept(parts: &Value) -> bool {
    let p = parts.as_array().unwrap();
    let first = &p[0];
    let included = [
        json!({"s": "flags"}),
        json!({"s": "counters"}),
        json!({"s": "nul\u{0}s"}),
        json!({"i": "372"}),
    ]
    .contains(first);
    let excluded = *first == json!({"s": "flags"}) && p.get(1) == Some(&json!({"bool": true}));
    included && !excluded
}

/// An expected state (`{key_hex: [value_id, vs]}`) restricted to the kept
/// keys.
fn restricted(exp: &Expected, state: &Value) -> Value {
    let keys = &exp.raw["keys"];
    let kept: serde_json::Map<String, Value> = state
        .as_object()
        .unwrap()
        .iter()
        .filter(|(k, _)| kept(&keys[k.as_str()]))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    Value::Object(kept)
}

fn db_arg(db: &Path) -> String {
    db.display().to_string()
}

/// Checks a filtered replica against every state `exp` has: each point
/// checked out, the `kv` table equal to the restricted state; every point
/// of the whole database recoverable; no left-out key in undo or redo.
/// Leaves the replica following again.
fn assert_every_point(db: &Path, exp: &Expected, label: &str) {
    let want_points = exp.points();
    assert_eq!(
        pitr_list(db),
        want_points,
        "{label}: a commit that touches only left-out keys is still a point"
    );
    let states = exp.states();
    assert!(states.len() > 5, "{label}: the fixture has states to check");
    let mut kept_somewhere = 0;
    let mut left_out_somewhere = 0;
    // The initial point is no recoverable point (a fuzzy snapshot's).
    for (point, state) in states.iter().filter(|(p, _)| *p != exp.initial_point()) {
        run_ok(&["pitr", "--db", &db_arg(db), "checkout", point]);
        let want = restricted(exp, state);
        kept_somewhere += want.as_object().unwrap().len();
        left_out_somewhere += state.as_object().unwrap().len() - want.as_object().unwrap().len();
        exp.assert_state(&read_replica(db), &want, &format!("{label} at {point}"));
    }
    assert!(
        kept_somewhere > 0 && left_out_somewhere > 0,
        "{label}: the filter keeps some keys and leaves out others"
    );
    // By time: the newest point at or before the time of a middle point.
    let time = &want_points[want_points.len() / 2].1;
    let out = run_ok(&["pitr", "--db", &db_arg(db), "checkout", time]);
    let text = String::from_utf8_lossy(&out.stdout);
    let newest_at = &want_points.iter().rfind(|(_, t)| t == time).unwrap().0;
    assert!(
        text.starts_with(&format!("checked out {newest_at} ")),
        "{label}: checkout by time {time}: {text}"
    );
    run_ok(&["pitr", "--db", &db_arg(db), "checkout", "latest"]);
    exp.assert_state(
        &read_replica(db),
        &restricted(exp, &exp.raw["final_state"]),
        &format!("{label} latest"),
    );
    assert_history_holds_only_kept_keys(db, label);
}

/// Undo and redo records hold kept keys only, besides commit end markers
/// (the empty key).
fn assert_history_holds_only_kept_keys(db: &Path, label: &str) {
    let conn =
        rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .unwrap();
    let mut stmt = conn
        .prepare("select k from kvr_undo union all select k from kvr_redo")
        .unwrap();
    let keys: Vec<Vec<u8>> = stmt
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert!(!keys.is_empty(), "{label}: history was recorded");
    let (mut markers, mut kept_keys) = (0, 0);
    for k in keys {
        if k.is_empty() {
            markers += 1;
            continue;
        }
        // Decoded here, as keys deleted between sampled states are not
        // in the fixture's list.
        let parts = kvreplica::decode::key_to_json(&k).unwrap();
        let p = parts.as_array().unwrap();
        let included = [
            json!("flags"),
            json!("counters"),
            json!("nul\u{0}s"),
            json!({"bigint": "372"}),
        ]
        .contains(&p[0]);
        let excluded = p[0] == json!("flags") && p.get(1) == Some(&json!(true));
        assert!(
            included && !excluded,
            "{label}: history holds the left-out key {}",
            hex::encode(&k)
        );
        kept_keys += 1;
    }
    assert!(kept_keys > 0, "{label}: kept keys have history");
    assert!(
        markers > 0,
        "{label}: commits of left-out keys leave end markers"
    );
}

/// `kvreplica sync --source SOURCE --db DB EXTRA…`, to add to and run.
fn sync_cmd(source: &str, db: &Path, extra: &[&str]) -> Command {
    let mut cmd = Command::new(common::kvreplica_bin());
    cmd.args(["sync", "--source", source, "--db", &db_arg(db)])
        .args(extra)
        .env_remove("RUST_LOG");
    cmd
}

fn sync(source: &str, db: &Path, extra: &[&str]) -> Output {
    sync_cmd(source, db, extra).output().unwrap()
}

/// Runs `cmd`, which must succeed.
fn succeeds(cmd: &mut Command) {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

fn sync_ok(source: &str, db: &Path, extra: &[&str]) {
    succeeds(&mut sync_cmd(source, db, extra));
}

#[test]
fn a_filtered_replica_equals_the_restricted_state_at_every_point() {
    for name in ["sample-1", "sample-2"] {
        let dir = tempfile::tempdir().unwrap();
        let sample = Sample::load(name);
        let bucket = dir.path().join("bucket");
        let source = sample.install_initial(&bucket);
        let db = dir.path().join("r.sqlite");
        sync_ok(&source, &db, &FLAGS);
        assert_every_point(&db, &sample.json0, &format!("{name} initial"));
        // The append goes through the log path (and, pinned, through redo).
        let first = &sample.json0.points()[0].0;
        run_ok(&["pitr", "--db", &db_arg(&db), "checkout", first]);
        sample.install_append(&bucket);
        sync_ok(&source, &db, &FLAGS);
        run_ok(&["pitr", "--db", &db_arg(&db), "checkout", "latest"]);
        assert_every_point(&db, &sample.json1, &format!("{name} after the append"));
    }
}

#[test]
fn a_filtered_replica_from_s3_equals_the_restricted_state_at_every_point() {
    let sample = Sample::load("sample-2");
    let server = S3Server::start();
    server.create_bucket(&sample.bucket);
    server.put_dir(&sample.bucket, "", &sample.bucket_root);
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("r.sqlite");
    let source = format!("s3://{}/{}", sample.bucket, sample.prefix);
    let s3 = |db: &Path| {
        let endpoint = server.endpoint();
        let s3_flags = ["--s3-endpoint", &endpoint, "--s3-region", "us-east-1"];
        succeeds(
            sync_cmd(&source, db, &[&FLAGS[..], &s3_flags[..]].concat())
                .env("AWS_ACCESS_KEY_ID", server.access_key())
                .env("AWS_SECRET_ACCESS_KEY", server.secret_key())
                .env("AWS_EC2_METADATA_DISABLED", "true"),
        );
    };
    s3(&db);
    assert_every_point(&db, &sample.json0, "s3 initial");
    server.put_dir(&sample.bucket, "", &sample.append_root);
    s3(&db);
    assert_every_point(&db, &sample.json1, "s3 after the append");
}

/// The file's bytes (with its WAL), to show a refusal wrote nothing.
fn file_bytes(db: &Path) -> Vec<Vec<u8>> {
    ["", "-wal"]
        .iter()
        .map(|s| std::fs::read(format!("{}{s}", db.display())).unwrap_or_default())
        .collect()
}

#[test]
fn another_filter_on_an_existing_file_is_refused_and_the_file_left_alone() {
    let dir = tempfile::tempdir().unwrap();
    let sample = Sample::load("sample-1");
    let source = sample.install_initial(&dir.path().join("bucket"));
    let db = dir.path().join("r.sqlite");
    sync_ok(&source, &db, &FLAGS);

    // The same filter spelled otherwise (another order, a covered prefix,
    // the environment's list form) is the same filter.
    succeeds(
        sync_cmd(&source, &db, &[])
            .env(
                "KVREPLICA_INCLUDE_PREFIXES",
                r#"[[{"bigint": "372"}], ["nul\u0000s"], ["counters"], ["flags"], ["counters", 1]]"#,
            )
            .env("KVREPLICA_EXCLUDE_PREFIXES", r#"["flags", true]"#),
    );

    let before = file_bytes(&db);
    for other in [
        vec!["--include-prefix", r#"["users"]"#],
        vec![],
        FLAGS[..8].to_vec(),
    ] {
        let out = sync(&source, &db, &other);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(78), "{other:?}: {stderr}");
        assert!(
            stderr.contains("was built with the prefix filter")
                && stderr.contains(r#"--exclude-prefix '["flags",true]'"#)
                && stderr.contains(r#"--include-prefix '["counters"]'"#)
                && stderr.contains("delete"),
            "{other:?}: the refusal names the matching flags and the way out: {stderr}"
        );
        assert_eq!(file_bytes(&db), before, "{other:?}: the file is unchanged");
    }

    // A file made without a filter is a file of every key.
    let plain = dir.path().join("plain.sqlite");
    sync_ok(&source, &plain, &[]);
    let before = file_bytes(&plain);
    let out = sync(&source, &plain, &FLAGS);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(78), "{stderr}");
    assert!(stderr.contains("none (every key)"), "{stderr}");
    assert_eq!(file_bytes(&plain), before);

    // pitr info shows what each file keeps.
    let info = String::from_utf8(run_ok(&["pitr", "--db", &db_arg(&db), "info"]).stdout).unwrap();
    let line = info
        .lines()
        .find_map(|l| l.strip_prefix("filter: "))
        .expect(&info);
    let shown: Value = serde_json::from_str(line).unwrap();
    assert_eq!(
        shown,
        json!({
            "include": [["counters"], ["flags"], ["nul\u{0}s"], [{"bigint": "372"}]],
            "exclude": [["flags", true]],
        }),
        "{info}"
    );
    let info =
        String::from_utf8(run_ok(&["pitr", "--db", &db_arg(&plain), "info"]).stdout).unwrap();
    assert!(info.contains("filter: none (every key)"), "{info}");
}

#[test]
fn an_invalid_prefix_is_a_configuration_error_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let sample = Sample::load("sample-1");
    let source = sample.install_initial(&dir.path().join("bucket"));
    let db = dir.path().join("r.sqlite");
    let config = dir.path().join("kvreplica.toml");
    let fails = |args: &[&str], env: &[(&str, &str)], expect: &[&str]| {
        let out = sync_cmd(&source, &db, args)
            .envs(env.iter().copied())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(78), "{args:?}: {stderr}");
        for e in expect {
            assert!(
                stderr.contains(e),
                "{args:?} {env:?}: {e:?} not in {stderr}"
            );
        }
    };
    std::fs::write(
        &config,
        "[sync]\ninclude_prefixes = [[\"users\"],\n  [\"orders\", { bigint = \"x\" }]]\n",
    )
    .unwrap();
    let c = config.display().to_string();
    fails(
        &["--config", &c],
        &[],
        &["sync.include_prefixes", "line 2", "decimal integer"],
    );
    fails(
        &["--exclude-prefix", "[]"],
        &[],
        &[
            "sync.exclude_prefixes",
            "--exclude-prefix",
            "matches every key",
        ],
    );
    fails(
        &[],
        &[("KVREPLICA_INCLUDE_PREFIXES", "users")],
        &[
            "sync.include_prefixes",
            "KVREPLICA_INCLUDE_PREFIXES",
            "invalid key",
        ],
    );
    assert!(!db.exists(), "nothing was created");

    // The TOML forms that are right: arrays and JSON strings, mixed.
    std::fs::write(
        &config,
        "[sync]\ninclude_prefixes = [[\"flags\"], '[\"counters\"]', [\"nul\\u0000s\"], [{ bigint = \"372\" }]]\n\
         exclude_prefixes = [[\"flags\", true]]\n",
    )
    .unwrap();
    sync_ok(&source, &db, &["--config", &c]);
    // …which is the filter of the flags: the file accepts them.
    sync_ok(&source, &db, &FLAGS);
}

/// The Deno CLI reads the filtered replica as a database of the kept keys:
/// every read `deno_reads.ts` makes (lists of every kept prefix, ranges,
/// gets, getMany) equals the restricted state, and reads outside the
/// filter answer nothing. `/pitr/current` and the metadata say what the
/// server holds.
#[test]
fn the_deno_cli_reads_a_database_of_the_kept_keys() {
    let dir = tempfile::tempdir().unwrap();
    let sample = Sample::load("sample-1");
    let source = sample.install_initial(&dir.path().join("bucket"));
    let db = dir.path().join("r.sqlite");
    let mut args = vec!["--source", source.as_str(), "--db"];
    let db_s = db_arg(&db);
    args.push(&db_s);
    args.extend_from_slice(&FLAGS);
    let mut server = ServeProcess::start(&args);
    server.wait_ready();

    // The fixture restricted to the filter, as deno_reads.ts reads it.
    let mut exp = sample.json0.raw.clone();
    exp["final_state"] = restricted(&sample.json0, &sample.json0.raw["final_state"]);
    let kept_keys = exp["final_state"].as_object().unwrap().len();
    assert!(kept_keys > 200, "enough keys for every check: {kept_keys}");
    let expected = dir.path().join("expected-filtered.json");
    std::fs::write(&expected, exp.to_string()).unwrap();
    let out = run_deno(
        "deno_reads.ts",
        &[&server.kv_url(), &expected.display().to_string(), "remote"],
        dir.path(),
        Duration::from_secs(180),
    );
    let summary = out.assert_success();
    assert_eq!(summary["keys"], kept_keys, "{summary}");
    assert!(
        summary["counts"]["prefixes"].as_u64() > Some(3),
        "{summary}"
    );

    // Keys outside the filter, present in the whole database.
    let outside: Vec<String> = sample.json0.raw["final_state"]
        .as_object()
        .unwrap()
        .keys()
        .filter_map(|k| {
            let parts = &sample.json0.raw["keys"][k.as_str()];
            let p = parts.as_array()?;
            (p.len() == 2 && p[0] == json!({"s": "users"}))
                .then(|| p[1]["s"].as_str().map(str::to_string))
                .flatten()
        })
        .take(5)
        .collect();
    assert_eq!(outside.len(), 5);
    let script = dir.path().join("outside.ts");
    std::fs::write(
        &script,
        format!(
            r#"const kv = await Deno.openKv(Deno.args[0]);
const ids = {ids};
const gets = [];
for (const id of ids) gets.push((await kv.get(["users", id])).value);
const many = (await kv.getMany(ids.map((id) => ["users", id]))).map((e) => e.value);
const users = [];
for await (const e of kv.list({{ prefix: ["users"] }})) users.push(e.key);
const trues = [];
for await (const e of kv.list({{ prefix: ["flags", true] }})) trues.push(e.key);
const falses = [];
for await (const e of kv.list({{ prefix: ["flags", false] }})) falses.push(e.key);
console.log(JSON.stringify({{ gets, many, users: users.length, trues: trues.length, falses: falses.length }}));
kv.close();
"#,
            ids = serde_json::to_string(&outside).unwrap()
        ),
    )
    .unwrap();
    let home = tempfile::tempdir().unwrap();
    let mut deno = Command::new(deno_bin());
    deno.args(["run", "--unstable-kv", "-A"])
        .arg(&script)
        .arg(server.kv_url())
        .env("DENO_KV_ACCESS_TOKEN", ACCESS_TOKEN)
        .env("DENO_DIR", home.path())
        .env("HOME", home.path())
        .current_dir(dir.path());
    let out = deno.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let got: Value = serde_json::from_slice(&out.stdout).unwrap();
    let falses = restricted(&sample.json0, &sample.json0.raw["final_state"])
        .as_object()
        .unwrap()
        .keys()
        .filter(|k| sample.json0.raw["keys"][k.as_str()][1] == json!({"bool": false}))
        .count();
    assert!(falses > 0);
    assert_eq!(
        got,
        json!({
            "gets": [null, null, null, null, null],
            "many": [null, null, null, null, null],
            "users": 0,
            "trues": 0,
            "falses": falses,
        })
    );

    let (status, current) = server.admin(Method::Get, "/pitr/current", Value::Null);
    assert_eq!(status, 200, "{current}");
    assert_eq!(
        current["filter"],
        json!({
            "include": [["counters"], ["flags"], ["nul\u{0}s"], [{"bigint": "372"}]],
            "exclude": [["flags", true]],
        })
    );

    // Not the id of the whole database: a client balanced across a
    // filtered and an unfiltered replica would read a mix.
    let meta: Value = serde_json::from_slice(&metadata(&server.kv_url()).body).unwrap();
    let whole =
        kvreplica::server::database_id(&kvreplica::source::SourceUrl::parse(&source).unwrap());
    assert_ne!(meta["databaseId"], whole.hyphenated().to_string());
    server.terminate();
}

/// A re-exported backup rebuilt in place (`--on-reexport rebuild`) is
/// rebuilt with the file's filter: the new export's state restricted,
/// its points, and the filter still recorded.
#[test]
fn a_rebuild_after_a_reexport_keeps_the_filter() {
    let dir = tempfile::tempdir().unwrap();
    let old = Sample::load("sample-1");
    let new = Sample::load("sample-2");
    let bucket = dir.path().join("bucket");
    let source = old.install_initial(&bucket);
    let db = dir.path().join("r.sqlite");
    sync_ok(&source, &db, &FLAGS);
    // The new export replaces everything under the same prefix.
    let folder = bucket.join(&old.prefix);
    std::fs::remove_dir_all(&folder).unwrap();
    common::copy_dir(&new.bucket_root.join(&new.prefix), &folder);
    let mut args = FLAGS.to_vec();
    args.extend(["--on-reexport", "rebuild"]);
    sync_ok(&source, &db, &args);
    assert_eq!(pitr_list(&db), new.json0.points());
    new.json0.assert_state(
        &read_replica(&db),
        &restricted(&new.json0, &new.json0.raw["final_state"]),
        "rebuilt",
    );
    assert_history_holds_only_kept_keys(&db, "rebuilt");
    // Still the same filter: the flags are accepted, another one is not.
    sync_ok(&source, &db, &FLAGS);
    let out = sync(&source, &db, &[]);
    assert_eq!(out.status.code(), Some(78));
}

//! Diffs between two points and browsing (`kvreplica pitr diff`, `kvreplica
//! get`, `GET /pitr/diff`, `GET /kv`) against a generated backup whose
//! state at every point is known and against an independent sample's
//! sampled states: every diff equals the difference of the expected
//! states (CLI JSON Lines and the admin API in small pages, totals
//! included), every browse the expected state; the served replica does not
//! move meanwhile; bad parameters get exact statuses.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use common::fixture::{Fixture, Rec, Rng};
use common::serve::{http, Method, ServeProcess};
use common::{run, run_ok, Sample};
use kvreplica::decode::{decode_value, key_json, ValueEncoding};
use serde_json::{json, Value};

/// A generated backup with deletes and overwrites, synced, and a `serve`
/// on it whose visible state was checked out to a middle point (so states
/// on both sides of it are read: behind through undo rows, ahead through
/// redo rows).
struct Served {
    _tmp: tempfile::TempDir,
    fx: Fixture,
    db: PathBuf,
    serve: ServeProcess,
    /// (commit index, versionstamp hex, time ms) of every recoverable point.
    points: Vec<(usize, String, u64)>,
    /// The commit the visible state was checked out to.
    visible: usize,
}

fn served_fixture(seed: u64) -> Served {
    let s = common::served::Served::start(seed);
    let (visible, vs, _) = s.points[s.points.len() / 2].clone();
    let (status, body) = s.serve.admin(
        Method::Post,
        "/pitr/checkout",
        json!({ "versionstamp": vs }),
    );
    assert_eq!(status, 200, "{body}");
    Served {
        _tmp: s.tmp,
        fx: s.fx,
        db: s.db,
        serve: s.serve,
        points: s.points,
        visible,
    }
}

fn encoding_name(encoding: i64) -> String {
    ValueEncoding::from_column(encoding).name()
}

/// What a diff or browse must say of one entry (`null`: absent).
fn expected_side(rec: Option<&Rec>) -> Value {
    match rec {
        None => Value::Null,
        Some(r) => json!({
            "versionstamp": hex::encode(r.versionstamp),
            "encoding": encoding_name(r.encoding),
            "expires_at_ms": (r.expire_at_ms >= 0).then_some(r.expire_at_ms),
            "value": serde_json::from_str::<Value>(
                &decode_value(ValueEncoding::from_column(r.encoding), &r.value)
            ).unwrap(),
        }),
    }
}

/// The same fields of an entry object an answer gave.
fn side(v: &Value) -> Value {
    if v.is_null() {
        return Value::Null;
    }
    json!({
        "versionstamp": v["versionstamp"],
        "encoding": v["encoding"],
        "expires_at_ms": v["expires_at_ms"],
        "value": v["value"],
    })
}

fn key_value(key: &[u8]) -> Value {
    serde_json::from_str(&key_json(key)).unwrap()
}

/// The keys whose values differ between two maps, in key order, with the
/// kind of difference a diff names.
fn differences<'m, K: Ord, V: PartialEq>(
    a: &'m BTreeMap<K, V>,
    b: &'m BTreeMap<K, V>,
) -> Vec<(&'static str, &'m K)> {
    let keys: BTreeSet<&K> = a.keys().chain(b.keys()).collect();
    keys.into_iter()
        .filter_map(|k| match (a.get(k), b.get(k)) {
            (x, y) if x == y => None,
            (None, _) => Some(("added", k)),
            (_, None) => Some(("removed", k)),
            _ => Some(("changed", k)),
        })
        .collect()
}

/// The difference of two expected states, as the changes a diff lists.
fn expected_diff(a: &BTreeMap<Vec<u8>, Rec>, b: &BTreeMap<Vec<u8>, Rec>) -> Vec<Value> {
    differences(a, b)
        .into_iter()
        .map(|(kind, k)| {
            json!({
                "kind": kind,
                "key": key_value(k),
                "key_hex": hex::encode(k),
                "before": expected_side(a.get(k)),
                "after": expected_side(b.get(k)),
            })
        })
        .collect()
}

/// A change an answer gave, in the form of [`expected_diff`].
fn change(c: &Value) -> Value {
    json!({
        "kind": c["kind"],
        "key": c["key"],
        "key_hex": c["key_hex"],
        "before": side(&c["before"]),
        "after": side(&c["after"]),
    })
}

fn totals(changes: &[Value]) -> Value {
    let n = |kind: &str| changes.iter().filter(|c| c["kind"] == kind).count();
    json!({"added": n("added"), "removed": n("removed"), "changed": n("changed")})
}

fn query(params: &[(&str, &str)]) -> String {
    serde_urlencoded::to_string(params).unwrap()
}

/// Every page of `GET <path>?<params>` (adding `limit` and each page's
/// cursor): the items under `field`, and the first page's answer.
fn all_pages(
    serve: &ServeProcess,
    path: &str,
    params: &[(&str, &str)],
    limit: usize,
    field: &str,
) -> (Vec<Value>, Value) {
    let limit = limit.to_string();
    let (mut items, mut first, mut cursor) = (Vec::new(), Value::Null, None::<String>);
    for _ in 0..10_000 {
        let mut p = params.to_vec();
        p.push(("limit", &limit));
        if let Some(c) = &cursor {
            p.push(("cursor", c));
        }
        let (status, body) =
            serve.admin(Method::Get, &format!("{path}?{}", query(&p)), Value::Null);
        assert_eq!(status, 200, "{path} {p:?}: {body}");
        let page = body[field].as_array().unwrap();
        assert!(
            page.len() <= limit.parse().unwrap(),
            "a page holds at most limit"
        );
        items.extend(page.iter().cloned());
        if first.is_null() {
            first = body.clone();
        } else {
            for k in ["from", "to", "totals", "at"] {
                assert_eq!(body[k], first[k], "{k} is the same on every page");
            }
        }
        match body["next_cursor"].as_str() {
            Some(c) => {
                assert!(!page.is_empty(), "a cursor follows a page with entries");
                cursor = Some(c.to_string());
            }
            None => return (items, first),
        }
    }
    panic!("{path}: more than 10000 pages");
}

/// `kvreplica pitr diff FROM TO --format jsonl`: the changes and the
/// totals line.
fn cli_diff(db: &Path, from: &str, to: &str, extra: &[&str]) -> (Vec<Value>, Value) {
    let mut args = vec!["pitr", "--db", db.to_str().unwrap(), "diff", from, to];
    args.extend_from_slice(&["--format", "jsonl"]);
    args.extend_from_slice(extra);
    let out = run_ok(&args);
    let mut lines: Vec<Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    let summary = lines.pop().expect("a totals line");
    (lines, summary)
}

fn time_rfc3339(ms: u64) -> String {
    chrono::DateTime::from_timestamp_millis(ms as i64)
        .unwrap()
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

#[test]
fn diffs_between_random_points_equal_the_fixtures_difference() {
    let s = served_fixture(41);
    let (status, before) = s.serve.admin(Method::Get, "/pitr/current", Value::Null);
    assert_eq!(status, 200);
    let mut rng = Rng::new(7);
    let mut pairs: Vec<(usize, usize)> = (0..24)
        .map(|_| (rng.below(s.points.len()), rng.below(s.points.len())))
        .collect();
    // The visible point itself, and the two ends.
    let mid = s.points.iter().position(|p| p.0 == s.visible).unwrap();
    pairs.extend([(0, s.points.len() - 1), (mid, 0), (s.points.len() - 1, mid)]);
    let mut nonempty = 0;
    for (n, (i, j)) in pairs.into_iter().enumerate() {
        let (ci, vi, _) = &s.points[i];
        let (cj, vj, _) = &s.points[j];
        let want = expected_diff(&s.fx.state_at(*ci), &s.fx.state_at(*cj));
        nonempty += usize::from(!want.is_empty());
        let label = format!("diff {vi} → {vj}");
        // The admin API in small pages.
        let (changes, first) = all_pages(
            &s.serve,
            "/pitr/diff",
            &[("from", vi), ("to", vj)],
            1 + n % 7,
            "changes",
        );
        let got: Vec<Value> = changes.iter().map(change).collect();
        assert_eq!(got, want, "{label} (admin API)");
        assert_eq!(first["totals"], totals(&want), "{label}: totals");
        assert_eq!(first["from"]["versionstamp"], json!(vi), "{label}");
        assert_eq!(first["to"]["versionstamp"], json!(vj), "{label}");
        assert_eq!(first["to"]["time"], json!(time_rfc3339(s.points[j].2)));
        // The CLI, beside the running serve, on every fourth pair.
        if n % 4 == 0 {
            let (changes, summary) = cli_diff(&s.db, vi, vj, &[]);
            let got: Vec<Value> = changes.iter().map(change).collect();
            assert_eq!(got, want, "{label} (CLI)");
            assert_eq!(summary["totals"], totals(&want), "{label}: CLI totals");
        }
    }
    assert!(
        nonempty >= 20,
        "the pairs cover real differences ({nonempty})"
    );

    // Times and `latest` resolve as a checkout does: a time names the
    // newest point at or before it.
    let (ci, vi, ti) = &s.points[3];
    let resolved = s.points.iter().rfind(|p| p.2 <= *ti).unwrap();
    let want = expected_diff(
        &s.fx.state_at(resolved.0),
        &s.fx.state_at(s.fx.last_initial),
    );
    let (changes, summary) = cli_diff(&s.db, &time_rfc3339(*ti), "latest", &[]);
    assert_eq!(changes.iter().map(change).collect::<Vec<_>>(), want);
    assert_eq!(summary["from"]["versionstamp"], json!(resolved.1));
    assert!(ci <= &resolved.0, "{vi}");

    // --limit shows the first changes and still counts them all; the text
    // format is one line per key and the totals.
    let (first, last) = (&s.points[0].1, &s.points.last().unwrap().1);
    let want = expected_diff(
        &s.fx.state_at(s.points[0].0),
        &s.fx.state_at(s.points.last().unwrap().0),
    );
    let (changes, summary) = cli_diff(&s.db, first, last, &["--limit", "3"]);
    assert_eq!(changes.iter().map(change).collect::<Vec<_>>(), want[..3]);
    assert_eq!(summary["totals"], totals(&want));
    let out = run_ok(&["pitr", "--db", s.db.to_str().unwrap(), "diff", first, last]);
    let text = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), want.len() + 1, "{text}");
    for (line, c) in lines.iter().zip(&want) {
        let kind = c["kind"].as_str().unwrap();
        assert!(line.starts_with(kind), "{line}");
        assert!(
            line.contains(&c["key"].to_string()),
            "{line} names {}",
            c["key"]
        );
        assert!(line.contains(" → "), "{line}");
    }
    let t = totals(&want);
    assert_eq!(
        lines.last().unwrap(),
        &format!(
            "{} keys differ from {first} ({}) to {last} ({}): {} added, {} removed, {} changed",
            want.len(),
            time_rfc3339(s.points[0].2),
            time_rfc3339(s.points.last().unwrap().2),
            t["added"],
            t["removed"],
            t["changed"]
        )
    );

    // A prefix: the fixture's keys are all ["item", n].
    let (changes, _) = cli_diff(&s.db, first, last, &["--prefix", r#"["item"]"#]);
    assert_eq!(changes.len(), want.len());
    let (changes, summary) = cli_diff(&s.db, first, last, &["--prefix", r#"["other"]"#]);
    assert!(changes.is_empty());
    assert_eq!(
        summary["totals"],
        json!({"added": 0, "removed": 0, "changed": 0})
    );
    let one = &want[want.len() / 2];
    let (changes, _) = all_pages(
        &s.serve,
        "/pitr/diff",
        &[
            ("from", first),
            ("to", last),
            ("prefix", &one["key"].to_string()),
        ],
        5,
        "changes",
    );
    assert_eq!(
        changes.iter().map(change).collect::<Vec<_>>(),
        std::slice::from_ref(one)
    );

    let (status, after) = s.serve.admin(Method::Get, "/pitr/current", Value::Null);
    assert_eq!(status, 200);
    assert_eq!(
        (&after["versionstamp"], &after["mode"]),
        (&before["versionstamp"], &before["mode"]),
        "diffs do not move the served replica"
    );
    assert_eq!(before["mode"], "pinned");
}

/// The entries of a browse, in the form of [`expected_side`] plus the key.
fn entries(items: &[Value]) -> Vec<Value> {
    items
        .iter()
        .map(|e| json!({"key": e["key"], "key_hex": e["key_hex"], "entry": side(e)}))
        .collect()
}

fn expected_entries<'a>(state: impl IntoIterator<Item = (&'a Vec<u8>, &'a Rec)>) -> Vec<Value> {
    state
        .into_iter()
        .map(|(k, r)| json!({"key": key_value(k), "key_hex": hex::encode(k), "entry": expected_side(Some(r))}))
        .collect()
}

#[test]
fn browse_and_get_at_the_visible_state_and_at_points_equal_the_expected_states() {
    let s = served_fixture(43);
    let (_, current) = s.serve.admin(Method::Get, "/pitr/current", Value::Null);
    let visible = s.fx.state_at(s.visible);
    let (items, first) = all_pages(&s.serve, "/kv", &[], 17, "entries");
    assert_eq!(entries(&items), expected_entries(&visible), "visible state");
    let visible_vs = &s.points.iter().find(|p| p.0 == s.visible).unwrap().1;
    assert_eq!(first["at"]["versionstamp"], json!(visible_vs));
    let db = s.db.to_str().unwrap();
    for (n, (ci, vs, _)) in s.points.iter().enumerate().step_by(9) {
        let state = s.fx.state_at(*ci);
        let (items, first) = all_pages(&s.serve, "/kv", &[("at", vs)], 3 + n % 11, "entries");
        assert_eq!(entries(&items), expected_entries(&state), "state at {vs}");
        assert_eq!(first["at"]["versionstamp"], json!(vs));
        // A key range within a prefix.
        let keys: Vec<&Vec<u8>> = state.keys().collect();
        let (lo, hi) = (keys[keys.len() / 4], keys[keys.len() / 2]);
        let (items, _) = all_pages(
            &s.serve,
            "/kv",
            &[
                ("at", vs),
                ("prefix", r#"["item"]"#),
                ("start", &key_json(lo)),
                ("end", &key_json(hi)),
            ],
            4,
            "entries",
        );
        let want = expected_entries(state.range(lo.clone()..hi.clone()));
        assert_eq!(entries(&items), want, "[{lo:?}, {hi:?}) at {vs}");
        // `kvreplica get` of a present key, and of one the state lacks.
        let key = keys[n % keys.len()];
        let out = run_ok(&["get", "--db", db, &key_json(key), "--at", vs]);
        let got: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(got["key"], key_value(key));
        assert_eq!(side(&got), expected_side(state.get(key)), "get at {vs}");
        let gone = (0..)
            .map(common::fixture::key_for)
            .find(|k| !state.contains_key(k));
        let out = run_ok(&["get", "--db", db, &key_json(&gone.unwrap()), "--at", vs]);
        assert_eq!(String::from_utf8(out.stdout).unwrap(), "null\n");
    }
    let (key, rec) = visible.iter().nth(5).unwrap();
    let out = run_ok(&["get", "--db", db, &key_json(key)]);
    let got: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        side(&got),
        expected_side(Some(rec)),
        "get in the visible state"
    );
    let (_, empty) = all_pages(&s.serve, "/kv", &[("prefix", r#"["none"]"#)], 5, "entries");
    assert_eq!(empty["entries"], json!([]));
    let (_, after) = s.serve.admin(Method::Get, "/pitr/current", Value::Null);
    assert_eq!(
        (&after["versionstamp"], &after["mode"]),
        (&current["versionstamp"], &current["mode"]),
        "browsing at points does not move the served replica"
    );
}

/// A sampled state (`{key_hex: [value_id, versionstamp]}`) as key hex →
/// versionstamp (a key's value changes only with its versionstamp).
fn versionstamps(state: &Value) -> BTreeMap<String, Value> {
    let entries = state.as_object().unwrap().iter();
    entries.map(|(k, e)| (k.clone(), e[1].clone())).collect()
}

#[test]
fn diffs_and_browses_of_the_samples_equal_their_sampled_states() {
    for name in ["sample-1", "sample-2"] {
        sample_diffs_and_browses(name);
    }
}

fn sample_diffs_and_browses(name: &str) {
    let sample = Sample::load(name);
    let tmp = tempfile::tempdir().unwrap();
    let bucket = tmp.path().join("bucket");
    let source = sample.install_initial(&bucket);
    sample.install_append(&bucket);
    let db = tmp.path().join("replica.sqlite");
    let db_arg = db.display().to_string();
    let mut serve = ServeProcess::start(&["--source", &source, "--db", &db_arg]);
    serve.wait_ready();
    let expected = &sample.json1;
    serve.wait_at(&expected.latest_point());
    let points: BTreeSet<String> = expected.points().into_iter().map(|p| p.0).collect();
    let states: Vec<(String, &Value)> = expected
        .states()
        .into_iter()
        .filter(|(vs, _)| points.contains(vs))
        .collect();
    assert!(states.len() >= 8, "{name}: {} sampled points", states.len());
    let vs_of = |e: &Value| e["versionstamp"].as_str().map(String::from);
    let mut rng = Rng::new(3);
    for n in 0..20 {
        let (a, sa) = &states[rng.below(states.len())];
        let (b, sb) = &states[rng.below(states.len())];
        let (sa, sb) = (versionstamps(sa), versionstamps(sb));
        let want: Vec<Value> = differences(&sa, &sb)
            .into_iter()
            .map(|(kind, k)| json!([kind, k, sa.get(k), sb.get(k)]))
            .collect();
        let short = |c: &Value| {
            json!([
                c["kind"],
                c["key_hex"],
                vs_of(&c["before"]),
                vs_of(&c["after"])
            ])
        };
        let (changes, first) = all_pages(
            &serve,
            "/pitr/diff",
            &[("from", a), ("to", b)],
            1 + n * 3,
            "changes",
        );
        assert_eq!(
            changes.iter().map(short).collect::<Vec<_>>(),
            want,
            "{name}: {a} → {b}"
        );
        assert_eq!(first["totals"], totals(&changes));
        if n % 5 == 0 {
            let (changes, _) = cli_diff(&db, a, b, &[]);
            assert_eq!(
                changes.iter().map(short).collect::<Vec<_>>(),
                want,
                "{name}: CLI {a} → {b}"
            );
        }
    }
    for (vs, state) in states.iter().step_by(3) {
        let (items, _) = all_pages(&serve, "/kv", &[("at", vs)], 97, "entries");
        let got: BTreeMap<String, Value> = items
            .iter()
            .map(|e| {
                (
                    e["key_hex"].as_str().unwrap().into(),
                    e["versionstamp"].clone(),
                )
            })
            .collect();
        assert_eq!(got, versionstamps(state), "{name}: browse at {vs}");
    }
    assert!(serve.terminate().success());
}

/// `GET <path_and_query>` with the test admin token: status and error text.
fn error_of(serve: &ServeProcess, path: &str) -> (u16, String) {
    let (status, body) = serve.admin(Method::Get, path, Value::Null);
    (
        status,
        body["error"].as_str().unwrap_or_default().to_string(),
    )
}

#[test]
fn bad_parameters_get_exact_statuses_and_clear_errors() {
    let s = served_fixture(47);
    let (first, last) = (&s.points[0].1, &s.points.last().unwrap().1);
    let diff = |extra: &str| format!("/pitr/diff?from={first}&to={last}{extra}");
    let cases: Vec<(String, u16, &str)> = vec![
        (format!("/pitr/diff?to={last}"), 400, "from is required"),
        (format!("/pitr/diff?from={first}"), 400, "to is required"),
        (
            format!("/pitr/diff?from=yesterday&to={last}"),
            400,
            "from: \"yesterday\"",
        ),
        (diff("&limit=0"), 400, "limit=\"0\""),
        (diff("&limit=10001"), 400, "from 1 to 10000"),
        (diff("&limit=ten"), 400, "limit=\"ten\""),
        (diff("&prefix=%5B"), 400, "prefix:"),
        (diff("&cursor=zz"), 400, "not a cursor of this endpoint"),
        (diff("&cursor=00"), 400, "not a cursor of this endpoint"),
        (
            diff("&colour=red"),
            400,
            "known: from, to, prefix, limit, cursor",
        ),
        ("/kv?at=soon".into(), 400, "at: \"soon\""),
        ("/kv?start=users".into(), 400, "start:"),
        ("/kv?limit=-1".into(), 400, "limit=\"-1\""),
        ("/kv?cursor=0g".into(), 400, "not a cursor of this endpoint"),
        // A point that is not recoverable: the checkout's answer and words.
        (
            format!("/pitr/diff?from=00000000000000000001&to={last}"),
            404,
            "is not a recoverable point",
        ),
        (
            "/kv?at=00000000000000000001".into(),
            404,
            "is not a recoverable point",
        ),
    ];
    for (path, status, text) in &cases {
        let (got, error) = error_of(&s.serve, path);
        assert_eq!(
            (got, error.contains(text)),
            (*status, true),
            "{path}: {got} {error}"
        );
    }
    // A cursor from another diff, or from a browse.
    let mid = &s.points[s.points.len() / 2].1;
    let (status, page) = s.serve.admin(Method::Get, &diff("&limit=1"), Value::Null);
    assert_eq!(status, 200, "{page}");
    let cursor = page["next_cursor"]
        .as_str()
        .expect("more than one change")
        .to_string();
    let other = format!("/pitr/diff?from={first}&to={mid}&limit=1&cursor={cursor}");
    let (got, error) = error_of(&s.serve, &other);
    assert_eq!(
        (got, error.contains("another request")),
        (400, true),
        "{error}"
    );
    let (got, error) = error_of(&s.serve, &format!("/kv?cursor={cursor}"));
    assert_eq!(
        (got, error.contains("another request")),
        (400, true),
        "{error}"
    );
    let (status, _) = s.serve.admin(
        Method::Get,
        &diff(&format!("&limit=1&cursor={cursor}")),
        Value::Null,
    );
    assert_eq!(status, 200, "the cursor with its own request");
    // Only POST moves anything: other methods are refused.
    let (status, _) = s.serve.admin(Method::Post, "/kv", json!({}));
    assert_eq!(status, 405);
    // Answers are JSON.
    let auth = format!("Bearer {}", common::serve::ADMIN_TOKEN);
    for path in [diff(""), "/kv".into()] {
        let url = format!("{}{path}", s.serve.admin_url());
        let r = http(Method::Get, &url, &[("authorization", &auth)], Vec::new()).unwrap();
        assert_eq!(
            (r.status, r.content_type.as_str()),
            (200, "application/json"),
            "{path}"
        );
    }
    // Without the admin token, or with a wrong one: 401.
    for path in [diff(""), "/kv".into()] {
        let url = format!("{}{path}", s.serve.admin_url());
        for headers in [vec![], vec![("authorization", "Bearer wrong-token")]] {
            let r = http(Method::Get, &url, &headers, Vec::new()).unwrap();
            assert_eq!(r.status, 401, "{path} {headers:?}: {}", r.text());
        }
    }

    // The CLI: a point that is not recoverable, a bad key.
    let db = s.db.to_str().unwrap();
    let out = run(&["pitr", "--db", db, "diff", "00000000000000000001", "latest"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("00000000000000000001 is not a recoverable point"),
        "{err}"
    );
    assert!(out.stdout.is_empty());
    let out = run(&["pitr", "--db", db, "diff", first, last, "--prefix", "users"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("--prefix:") && err.contains("JSON array of parts"),
        "{err}"
    );
    let out = run(&["get", "--db", db, "[\"item\""]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("KEY:"), "{err}");
    let out = run(&["get", "--db", db, "[\"item\"]", "--at", "yesterday"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--at: \"yesterday\""), "{err}");
}

//! `GET /export` on the admin API over real HTTP on 127.0.0.1: the same
//! entries as the command (at the visible state, an earlier point, a
//! prefix; JSON Lines and CSV), streamed; every refusal a JSON error with
//! its status before the first byte; an export slower than every deadline
//! of the listener completes while its client reads.

mod common;
#[path = "common/export_entries.rs"]
mod export_entries;

use std::time::{Duration, Instant};

use common::admin::Api;
use common::fixture::{Fixture, Spec};
use common::served::Generated;
use export_entries::{assert_entries, entries, parse_jsonl};
use kvreplica::admin;
use kvreplica::server::Limits;
use serde_json::Value;

const TOKEN: &str = "admin-token-for-export-tests";

impl Api {
    async fn get(&self, path: &str, token: Option<&str>) -> reqwest::Response {
        let mut req = self
            .client
            .get(format!("{}{path}", self.base))
            .timeout(Duration::from_secs(60));
        if let Some(t) = token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        req.send().await.unwrap()
    }

    async fn export(&self, query: &str) -> (reqwest::header::HeaderMap, Vec<u8>) {
        let resp = self.get(&format!("/export{query}"), Some(TOKEN)).await;
        assert_eq!(resp.status(), 200, "/export{query}");
        let headers = resp.headers().clone();
        (headers, resp.bytes().await.unwrap().to_vec())
    }
}

/// The backup of `spec` in `<tmp>/prefix/`.
fn backup(spec: Spec) -> (tempfile::TempDir, Fixture) {
    let g = Generated::with_spec(spec);
    (g.tmp, g.fx)
}

fn encode(text: &str) -> String {
    url::form_urlencoded::byte_serialize(text.as_bytes()).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn get_export_streams_what_the_command_writes() {
    let (tmp, fx) = backup(Spec {
        seed: 5,
        append_commits: 0,
        ..Spec::default()
    });
    let db = tmp.path().join("r.sqlite");
    let api = Api::start_loaded(&tmp.path().join("prefix"), &db, TOKEN).await;
    let latest = fx.state_at(fx.last_initial);

    let (headers, body) = api.export("").await;
    assert_eq!(headers["content-type"], "application/x-ndjson");
    assert_eq!(headers["transfer-encoding"], "chunked");
    assert!(headers.get("content-length").is_none());
    let latest_vs = hex::encode(fx.commits[fx.last_initial].versionstamp);
    assert_eq!(headers["x-kvreplica-versionstamp"], latest_vs.as_str());
    assert_entries(&parse_jsonl(&body), &entries(&latest), "GET /export");
    // The command writes the same bytes.
    let cli = common::run_ok(&["export", "--db", db.to_str().unwrap()]);
    assert_eq!(body, cli.stdout, "GET /export and kvreplica export differ");

    // An earlier point, without moving the replica.
    let points = fx.points(fx.last_initial);
    let (idx, vs, _) = &points[points.len() / 3];
    let (headers, body) = api.export(&format!("?at={vs}")).await;
    assert_eq!(headers["x-kvreplica-versionstamp"], vs.as_str());
    assert_entries(&parse_jsonl(&body), &entries(&fx.state_at(*idx)), "?at=");
    common::fixture::assert_rows_eq(&common::read_replica(&db), &latest, "after ?at=");

    // Prefixes and a range, as the command takes them; CSV.
    let prefix = encode(r#"["item"]"#);
    let start = encode(r#"["item", 100]"#);
    let end = encode(r#"["item", 200]"#);
    let query = format!("?prefix={prefix}&prefix={prefix}&start={start}&end={end}&format=csv");
    let (headers, body) = api.export(&query).await;
    assert_eq!(headers["content-type"], "text/csv; charset=utf-8");
    let cli = common::run_ok(&[
        "export",
        "--db",
        db.to_str().unwrap(),
        "--prefix",
        r#"["item"]"#,
        "--start",
        r#"["item", 100]"#,
        "--end",
        r#"["item", 200]"#,
        "--format",
        "csv",
    ]);
    assert_eq!(body, cli.stdout, "CSV of a range");
    let rows = String::from_utf8(body).unwrap().lines().count() - 1;
    let want = latest
        .keys()
        .filter(|k| (100.0..200.0).contains(&export_entries::item_number(k)))
        .count();
    assert!(want > 10);
    assert_eq!(rows, want, "entries in the range");
    api.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn refusals_are_json_errors_with_their_status_before_the_first_byte() {
    let (tmp, _fx) = backup(Spec {
        seed: 6,
        append_commits: 0,
        ..Spec::default()
    });
    let db = tmp.path().join("r.sqlite");
    let api = Api::start_loaded(&tmp.path().join("prefix"), &db, TOKEN).await;
    let cases: &[(&str, Option<&str>, u16, &str)] = &[
        (
            "?prefix=users",
            Some(TOKEN),
            400,
            "prefix: invalid key users",
        ),
        (
            "?colour=red",
            Some(TOKEN),
            400,
            "unknown query parameter \"colour\"",
        ),
        (
            "?format=xml",
            Some(TOKEN),
            400,
            "format=\"xml\": write jsonl or csv",
        ),
        (
            "?include_expired=yes",
            Some(TOKEN),
            400,
            "write true or false",
        ),
        (
            "?at=yesterday",
            Some(TOKEN),
            400,
            "at: \"yesterday\" is neither",
        ),
        (
            "?start=%5B%22b%22%5D&end=%5B%22a%22%5D",
            Some(TOKEN),
            400,
            "is not before end",
        ),
        (
            "?at=00000000000000000001",
            Some(TOKEN),
            404,
            "is not a recoverable point",
        ),
        (
            "?at=2000-01-01T00:00:00Z",
            Some(TOKEN),
            404,
            "is before the earliest recoverable point",
        ),
        ("", None, 401, "missing or wrong admin token"),
        ("", Some("wrong"), 401, "missing or wrong admin token"),
    ];
    for (query, token, status, text) in cases {
        let resp = api.get(&format!("/export{query}"), *token).await;
        assert_eq!(resp.status().as_u16(), *status, "/export{query}");
        assert_eq!(resp.headers()["content-type"], "application/json");
        let body: Value = resp.json().await.unwrap();
        let error = body["error"].as_str().unwrap();
        assert!(error.contains(text), "/export{query}: {error}");
    }
    let resp = api
        .client
        .post(format!("{}/export", api.base))
        .header("authorization", format!("Bearer {TOKEN}"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 405);
    api.stop().await;

    // Before the initial load: nothing consistent to export yet.
    let db = tmp.path().join("empty.sqlite");
    let api = Api::start(
        &tmp.path().join("prefix"),
        &db,
        vec![TOKEN.into()],
        false,
        admin::limits(),
    )
    .await;
    let resp = api.get("/export", Some(TOKEN)).await;
    assert_eq!(resp.status().as_u16(), 409);
    let body: Value = resp.json().await.unwrap();
    assert!(
        body["error"].as_str().unwrap().contains("not complete"),
        "{body}"
    );
    api.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_export_slower_than_every_deadline_completes_while_its_client_reads() {
    let (tmp, fx) = backup(Spec {
        seed: 7,
        // About 11 MB: far more than the kernel buffers between the ends
        // (a send buffer of up to 4 MiB), so the server waits on the reader.
        keys: 60_000,
        append_commits: 0,
        ..Spec::default()
    });
    let db = tmp.path().join("r.sqlite");
    // Deadlines far below the export's duration.
    let limits = Limits {
        header_read_timeout: Duration::from_millis(300),
        body_read_timeout: Duration::from_millis(300),
        idle_timeout: Duration::from_millis(300),
        stall_timeout: Duration::from_millis(1000),
        ..admin::limits()
    };
    let api = Api::start(
        &tmp.path().join("prefix"),
        &db,
        vec![TOKEN.into()],
        true,
        limits,
    )
    .await;
    let addr = api.base.trim_start_matches("http://").to_string();
    let (took, head, raw) = tokio::task::spawn_blocking(move || {
        use std::io::Read;
        let started = Instant::now();
        let (mut stream, head) = export_entries::open_get(&addr, "/export", TOKEN, 256 * 1024);
        let mut raw = Vec::new();
        let mut buf = vec![0u8; 16 * 1024];
        // A slow reader: a pause (shorter than the stall timeout) after
        // every 512 KiB.
        let mut since_pause = 0;
        loop {
            let n = stream.read(&mut buf).unwrap();
            if n == 0 {
                break;
            }
            raw.extend_from_slice(&buf[..n]);
            since_pause += n;
            if since_pause >= 512 * 1024 {
                since_pause = 0;
                std::thread::sleep(Duration::from_millis(150));
            }
        }
        (started.elapsed(), head, raw)
    })
    .await
    .unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let body = export_entries::dechunk(&raw);
    assert_entries(
        &parse_jsonl(&body),
        &entries(&fx.state_at(fx.last_initial)),
        "slow export",
    );
    assert!(
        took > Duration::from_secs(2),
        "the export took {took:?}: too short to outlast the deadlines (make it bigger)"
    );
    api.stop().await;
}

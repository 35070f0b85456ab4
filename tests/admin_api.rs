//! The HTTP admin API over real HTTP on 127.0.0.1: PITR points, current
//! position, checkout (by versionstamp, time and `latest`) against a
//! generated backup with known states, auth, and every error answer.

mod common;

use common::admin::Api;
use common::fixture::{assert_rows_eq, Fixture};
use common::read_replica;
use common::served::Generated;
use kvreplica::admin;
use serde_json::Value;

const TOKEN: &str = "admin-token-for-tests";

impl Api {
    async fn call(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: &str,
    ) -> (u16, Value) {
        let mut req = self
            .client
            .request(method.parse().unwrap(), format!("{}{path}", self.base))
            .timeout(std::time::Duration::from_secs(10));
        if let Some(t) = token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        if !body.is_empty() {
            req = req
                .header("content-type", "application/json")
                .body(body.to_string());
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap();
        let json = serde_json::from_str(&text).unwrap_or(Value::String(text));
        (status, json)
    }

    async fn get(&self, path: &str) -> (u16, Value) {
        self.call("GET", path, Some(TOKEN), "").await
    }

    async fn checkout(&self, body: &str) -> (u16, Value) {
        self.call("POST", "/pitr/checkout", Some(TOKEN), body).await
    }
}

fn rfc3339_ms(ms: u64) -> String {
    chrono::DateTime::from_timestamp_millis(ms as i64)
        .unwrap()
        .format("%Y-%m-%dT%H:%M:%S%.3fZ")
        .to_string()
}

/// A generated backup in `<tmp>/prefix/`.
fn backup() -> (tempfile::TempDir, Fixture) {
    let g = Generated::new(31);
    (g.tmp, g.fx)
}

#[tokio::test(flavor = "multi_thread")]
async fn points_current_and_checkout_over_http() {
    let (tmp, fx) = backup();
    let db = tmp.path().join("r.sqlite");
    let api = Api::start_loaded(&tmp.path().join("prefix"), &db, TOKEN).await;
    let points = fx.points(fx.last_initial);

    // Newest first, paginated with next_before.
    let mut listed = Vec::new();
    let mut at_time = Vec::new();
    let mut path = "/pitr/points?limit=7".to_string();
    loop {
        let (status, body) = api.get(&path).await;
        assert_eq!(status, 200, "{body}");
        for p in body["points"].as_array().unwrap() {
            listed.push((
                p["versionstamp"].as_str().unwrap().to_string(),
                p["time"].as_str().unwrap().to_string(),
            ));
            at_time.push(p["points_at_time"].as_u64().unwrap());
        }
        match body["next_before"].as_str() {
            Some(b) => path = format!("/pitr/points?limit=7&before={b}"),
            None => break,
        }
    }
    let want: Vec<(String, String)> = points
        .iter()
        .rev()
        .map(|(_, vs, ms)| (vs.clone(), rfc3339_ms(*ms)))
        .collect();
    assert_eq!(listed, want);
    // Commits of one backup object share its time: each point says how
    // many points carry its time.
    let want_at_time: Vec<u64> = points
        .iter()
        .rev()
        .map(|p| points.iter().filter(|q| q.2 == p.2).count() as u64)
        .collect();
    assert_eq!(at_time, want_at_time);
    assert!(at_time.iter().any(|&n| n > 1), "the fixture shares times");

    // Time filter: start <= time < end.
    let (lo, hi) = (points[3].2, points[points.len() - 3].2);
    let (_, body) = api
        .get(&format!(
            "/pitr/points?start={}&end={}&limit=1000",
            rfc3339_ms(lo),
            rfc3339_ms(hi)
        ))
        .await;
    let n = body["points"].as_array().unwrap().len();
    assert_eq!(n, points.iter().filter(|p| p.2 >= lo && p.2 < hi).count());

    let (status, cur) = api.get("/pitr/current").await;
    assert_eq!(status, 200);
    assert_eq!(cur["mode"], "following");
    assert_eq!(cur["versionstamp"], points.last().unwrap().1.as_str());

    // Checkout by versionstamp pins the state there, exactly.
    let (idx, vs, _) = &points[points.len() / 3];
    let (status, out) = api.checkout(&format!(r#"{{"versionstamp":"{vs}"}}"#)).await;
    assert_eq!(status, 200, "{out}");
    assert_eq!(out["versionstamp"], vs.as_str());
    assert_eq!(out["mode"], "pinned");
    assert_rows_eq(
        &read_replica(&db),
        &fx.state_at(*idx),
        "checkout by versionstamp",
    );
    let (_, cur) = api.get("/pitr/current").await;
    assert_eq!(cur["mode"], "pinned");

    // By time: the newest point at or before it.
    let (idx, vs, ms) = &points[points.len() / 2];
    let (status, out) = api
        .checkout(&format!(r#"{{"timestamp":"{}"}}"#, rfc3339_ms(*ms)))
        .await;
    assert_eq!(status, 200, "{out}");
    let newest = points
        .iter()
        .filter(|p| p.2 <= *ms)
        .map(|p| p.0)
        .max()
        .unwrap();
    assert!(newest >= *idx, "{vs}");
    assert_rows_eq(&read_replica(&db), &fx.state_at(newest), "checkout by time");

    // Back to latest: following again.
    let (status, out) = api.checkout(r#"{"latest":true}"#).await;
    assert_eq!(status, 200, "{out}");
    assert_eq!(out["mode"], "following");
    assert_rows_eq(&read_replica(&db), &fx.state_at(fx.last_initial), "latest");
    api.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn errors_are_clear_json_answers() {
    let (tmp, fx) = backup();
    let db = tmp.path().join("r.sqlite");
    let api = Api::start_loaded(&tmp.path().join("prefix"), &db, TOKEN).await;
    let initial = hex::encode(fx.commits[fx.dv_commit].versionstamp);
    let first_ms = fx.points(fx.last_initial)[0].2;

    for (method, path, token, body, want) in [
        ("GET", "/pitr/points", None, "", 401),
        ("GET", "/pitr/current", Some("wrong-token-xxxxxx"), "", 401),
        ("POST", "/pitr/checkout", None, r#"{"latest":true}"#, 401),
        ("GET", "/pitr/points?limit=0", Some(TOKEN), "", 400),
        ("GET", "/pitr/points?start=yesterday", Some(TOKEN), "", 400),
        ("GET", "/pitr/points?bogus=1", Some(TOKEN), "", 400),
        ("POST", "/pitr/checkout", Some(TOKEN), "not json", 400),
        (
            "POST",
            "/pitr/checkout",
            Some(TOKEN),
            r#"{"versionstamp":"xyz"}"#,
            400,
        ),
        (
            "POST",
            "/pitr/checkout",
            Some(TOKEN),
            r#"{"latest":true,"timestamp":"2024-01-01T00:00:00Z"}"#,
            400,
        ),
        (
            "POST",
            "/pitr/checkout",
            Some(TOKEN),
            r#"{"versionstamp":"00000000000000000001"}"#,
            404,
        ),
        ("GET", "/pitr/checkout", Some(TOKEN), "", 405),
        ("GET", "/nope", Some(TOKEN), "", 404),
        // Unknown paths are unknown to anyone, token or not.
        ("GET", "/nope", None, "", 404),
        ("POST", "/pitr", None, "", 404),
        ("GET", "/pitr/points?limit=-1", Some(TOKEN), "", 400),
        ("GET", "/pitr/points?limit=10001", Some(TOKEN), "", 400),
        ("POST", "/readyz", None, "", 405),
    ] {
        let (status, body) = api.call(method, path, token, body).await;
        assert_eq!(status, want, "{method} {path} {body}");
        let msg = body["error"].as_str().unwrap_or_default();
        assert!(
            !msg.is_empty(),
            "{method} {path}: no error message in {body}"
        );
        assert!(!msg.contains(TOKEN), "{method} {path}: token leaked");
    }
    // A bad limit says what is allowed.
    for bad in ["-1", "abc", "0", "10001"] {
        let (_, body) = api.get(&format!("/pitr/points?limit={bad}")).await;
        let msg = body["error"].as_str().unwrap_or_default();
        assert!(
            msg.contains("from 1 to 10000") && !msg.contains("invalid digit"),
            "limit={bad}: {body}"
        );
    }
    // The initial point is not recoverable; a time before the first point
    // is refused; both say so.
    let (status, body) = api
        .checkout(&format!(r#"{{"versionstamp":"{initial}"}}"#))
        .await;
    assert!(status == 404 || status == 400, "{status} {body}");
    let (status, body) = api
        .checkout(&format!(
            r#"{{"timestamp":"{}"}}"#,
            rfc3339_ms(first_ms - 1)
        ))
        .await;
    assert!(status == 404 || status == 400, "{status} {body}");
    // An oversized body.
    let big = format!(r#"{{"latest":true,"pad":"{}"}}"#, "x".repeat(64 * 1024));
    let (status, _) = api.checkout(&big).await;
    assert_eq!(status, 400);
    // Health and metrics need no token.
    let (status, _) = api.call("GET", "/healthz", None, "").await;
    assert_eq!(status, 200);
    let (status, text) = api.call("GET", "/metrics", None, "").await;
    assert_eq!(status, 200);
    assert!(text.as_str().unwrap().contains("kvreplica_"), "{text}");
    // Nothing above moved the replica.
    assert_rows_eq(
        &read_replica(&db),
        &fx.state_at(fx.last_initial),
        "after errors",
    );
    api.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn checkout_waits_for_the_initial_snapshot_and_needs_a_token() {
    let (tmp, _fx) = backup();
    let db = tmp.path().join("r.sqlite");
    // Not loaded yet: 409 with a message, and /readyz says not ready.
    let api = Api::start(
        &tmp.path().join("prefix"),
        &db,
        vec![TOKEN.into()],
        false,
        admin::limits(),
    )
    .await;
    let (status, body) = api.checkout(r#"{"latest":true}"#).await;
    assert_eq!(status, 409, "{body}");
    // Listing and the position agree while loading: both 409.
    let (status, body) = api.get("/pitr/current").await;
    assert_eq!(status, 409, "{body}");
    let (status, body) = api.get("/pitr/points").await;
    assert_eq!(status, 409, "{body}");
    let (status, body) = api.call("GET", "/readyz", None, "").await;
    assert_eq!(status, 503);
    assert_eq!(body["reason"], "initial snapshot in progress", "{body}");
    api.syncer.initial().await.unwrap();
    let (status, _) = api.call("GET", "/readyz", None, "").await;
    assert_eq!(status, 200);
    let (status, body) = api.get("/pitr/points").await;
    assert_eq!(status, 200, "{body}");
    api.stop().await;

    // No admin token configured: PITR endpoints are disabled, health is on.
    let api = Api::start(
        &tmp.path().join("prefix"),
        &db,
        vec![],
        true,
        admin::limits(),
    )
    .await;
    let (status, body) = api
        .call("GET", "/pitr/points", Some("anything-at-all"), "")
        .await;
    assert!(status == 401 || status == 403 || status == 404, "{status}");
    assert!(
        body["error"].as_str().unwrap().contains("disabled"),
        "{body}"
    );
    let (status, _) = api.call("GET", "/healthz", None, "").await;
    assert_eq!(status, 200);
    api.stop().await;
}

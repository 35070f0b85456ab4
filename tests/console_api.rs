//! The operator console's server side: what the admin listener serves
//! without the token (the page and its files, byte for byte as compiled
//! in, with their security headers, and nothing else), and the admin API
//! endpoints the console reads (`GET /status`, `GET /pitr/timeline`,
//! `GET /pitr/commits`) against a generated backup whose points, times and
//! mutation counts are known.

mod common;

use common::fixture::Rng;
use common::serve::{Method, ServeProcess, ADMIN_TOKEN};
use common::served::{Generated, Served};
use serde_json::{json, Value};

/// What the console's files must say about where the page may load from.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
                   connect-src 'self'; form-action 'none'; frame-ancestors 'none'; base-uri 'none'";

/// One answer with its headers, redirects not followed.
struct Answer {
    status: u16,
    headers: reqwest::header::HeaderMap,
    body: Vec<u8>,
}

impl Answer {
    fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }
}

fn request(method: reqwest::Method, url: &str, auth: Option<&str>) -> Answer {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap();
        let mut req = client
            .request(method.clone(), url)
            .timeout(std::time::Duration::from_secs(20));
        if let Some(a) = auth {
            req = req.header("authorization", a);
        }
        if method == reqwest::Method::POST {
            req = req.header("content-type", "application/json").body("{}");
        }
        let r = req.send().await.unwrap_or_else(|e| panic!("{url}: {e}"));
        Answer {
            status: r.status().as_u16(),
            headers: r.headers().clone(),
            body: r.bytes().await.unwrap().to_vec(),
        }
    })
}

/// The file as compiled into the binary (the test reads the source tree).
fn asset(name: &str) -> Vec<u8> {
    std::fs::read(format!(
        "{}/src/console/assets/{name}",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap()
}

fn get(s: &Served, path: &str) -> (u16, Value) {
    s.serve.admin(Method::Get, path, Value::Null)
}

#[test]
fn without_the_token_only_the_console_page_and_its_files_are_served() {
    let s = Served::start(11);
    let base = s.serve.admin_url();
    let wrong = "Bearer wrong-token-for-the-console";

    // `/console` sends the browser to `/console/`, whose page names its
    // files relative to itself.
    let r = request(reqwest::Method::GET, &format!("{base}/console"), None);
    assert_eq!(r.status, 308);
    // Relative: behind a proxy under a path the browser stays under it.
    assert_eq!(r.header("location"), "console/");

    let files = [
        ("/console/", "index.html", "text/html; charset=utf-8"),
        (
            "/console/index.html",
            "index.html",
            "text/html; charset=utf-8",
        ),
        (
            "/console/assets/console.js",
            "console.js",
            "text/javascript; charset=utf-8",
        ),
        (
            "/console/assets/console.css",
            "console.css",
            "text/css; charset=utf-8",
        ),
        (
            "/console/assets/favicon.svg",
            "favicon.svg",
            "image/svg+xml",
        ),
    ];
    for auth in [None, Some(wrong)] {
        for (path, file, content_type) in files {
            let r = request(reqwest::Method::GET, &format!("{base}{path}"), auth);
            assert_eq!(r.status, 200, "{path}");
            // The same bytes for everyone: nothing of the replica's data.
            assert!(r.body == asset(file), "{path} is not {file} as compiled in");
            assert_eq!(r.header("content-type"), content_type, "{path}");
            assert_eq!(r.header("content-security-policy"), CSP, "{path}");
            assert_eq!(r.header("x-content-type-options"), "nosniff", "{path}");
            assert_eq!(r.header("referrer-policy"), "no-referrer", "{path}");
            assert_eq!(r.header("x-frame-options"), "DENY", "{path}");
        }
    }
    let page = String::from_utf8(asset("index.html")).unwrap();
    assert!(page.contains("id=\"login\""), "the page has a login form");
    for (_, vs, _) in &s.points {
        for (_, file, _) in files {
            let text = String::from_utf8_lossy(&asset(file)).into_owned();
            assert!(!text.contains(vs.as_str()), "{file} names a point");
        }
    }

    for path in [
        "/console/assets/nope.js",
        "/console/secret",
        "/console/assets/",
        "/console/assets/console.js/x",
        "/consoles",
    ] {
        let r = request(reqwest::Method::GET, &format!("{base}{path}"), None);
        assert_eq!(
            r.status,
            404,
            "{path}: {}",
            String::from_utf8_lossy(&r.body)
        );
    }
    let r = request(reqwest::Method::POST, &format!("{base}/console/"), None);
    assert_eq!(r.status, 405);

    // Every piece of data is behind the token.
    let data = [
        (reqwest::Method::GET, "/status"),
        (reqwest::Method::GET, "/pitr/timeline"),
        (reqwest::Method::GET, "/pitr/commits"),
        (reqwest::Method::GET, "/pitr/points"),
        (reqwest::Method::GET, "/pitr/current"),
        (reqwest::Method::GET, "/pitr/diff?from=latest&to=latest"),
        (reqwest::Method::GET, "/kv"),
        (reqwest::Method::GET, "/export"),
        (reqwest::Method::POST, "/pitr/checkout"),
        (reqwest::Method::POST, "/restore"),
    ];
    for (method, path) in &data {
        for auth in [None, Some(wrong)] {
            let r = request(method.clone(), &format!("{base}{path}"), auth);
            assert_eq!(r.status, 401, "{method} {path} with {auth:?}");
            assert_eq!(r.header("www-authenticate"), "Bearer");
        }
    }
    let right = format!("Bearer {ADMIN_TOKEN}");
    for path in ["/status", "/pitr/timeline", "/pitr/commits"] {
        let r = request(reqwest::Method::GET, &format!("{base}{path}"), Some(&right));
        assert_eq!(
            r.status,
            200,
            "{path}: {}",
            String::from_utf8_lossy(&r.body)
        );
    }
}

#[test]
fn without_an_admin_token_configured_there_is_no_console() {
    let g = Generated::new(12);
    let mut args = vec![
        "--addr",
        "127.0.0.1:0",
        "--admin-addr",
        "127.0.0.1:0",
        "--access-token",
        common::serve::ACCESS_TOKEN,
    ];
    let bucket = g.args();
    args.extend(bucket.iter().map(String::as_str));
    let serve = ServeProcess::start_bare(&args, &[]);
    let r = request(
        reqwest::Method::GET,
        &format!("{}/console/", serve.admin_url()),
        None,
    );
    assert_eq!(r.status, 404);
    assert!(
        r.json()["error"]
            .as_str()
            .unwrap()
            .contains("--admin-token-file"),
        "{}",
        r.json()
    );
}

/// What `/pitr/timeline` must count: every point in its interval.
fn expected_counts(times: &[u64], start: i64, end: i64, bucket_ms: i64) -> (Vec<u64>, u64) {
    let n = ((end - start) + bucket_ms - 1) / bucket_ms;
    let mut counts = vec![0u64; n.max(0) as usize];
    let mut total = 0;
    for &t in times {
        let t = t as i64;
        if t >= start && t < end {
            counts[((t - start) / bucket_ms) as usize] += 1;
            total += 1;
        }
    }
    (counts, total)
}

fn rfc3339(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .unwrap()
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

#[test]
fn the_timeline_counts_every_commit_in_its_interval() {
    let s = Served::start(13);
    let times: Vec<u64> = s.points.iter().map(|p| p.2).collect();
    let (lo, hi) = (
        *times.iter().min().unwrap() as i64,
        *times.iter().max().unwrap() as i64,
    );
    let newest = s.points.last().unwrap();
    let oldest = s.points.first().unwrap();

    // The whole history by default: oldest point to one past the newest.
    let (status, t) = get(&s, "/pitr/timeline");
    assert_eq!(status, 200, "{t}");
    assert_eq!(t["start_ms"], json!(lo));
    assert_eq!(t["end_ms"], json!(hi + 1));
    assert_eq!(t["commits"], json!(s.points.len()));
    assert_eq!(t["oldest"]["versionstamp"], json!(oldest.1));
    assert_eq!(t["newest"]["versionstamp"], json!(newest.1));
    assert_eq!(t["newest"]["timestamp_ms"], json!(newest.2));
    assert_eq!(t["visible"]["versionstamp"], json!(newest.1));
    assert_eq!(t["initial"]["versionstamp"], json!(hex::encode(s.fx.dv)));
    let bucket_ms = t["bucket_ms"].as_i64().unwrap();
    let counts: Vec<u64> = serde_json::from_value(t["counts"].clone()).unwrap();
    assert!(counts.len() <= 400 && counts.len() as i64 * bucket_ms >= hi + 1 - lo);
    assert_eq!(counts, expected_counts(&times, lo, hi + 1, bucket_ms).0);

    // Ranges in both forms, as many intervals as asked (at most), down to
    // one millisecond each.
    let mut rng = Rng::new(13);
    for round in 0..24 {
        let a = lo - 50 + rng.below((hi - lo + 100) as usize) as i64;
        let b = a + 1 + rng.below((hi - a + 60).max(1) as usize) as i64;
        let buckets = [1usize, 3, 7, 400, 2000][round % 5];
        let (sa, sb) = if round % 2 == 0 {
            (a.to_string(), b.to_string())
        } else {
            (rfc3339(a), rfc3339(b))
        };
        let q = format!(
            "/pitr/timeline?start={}&end={}&buckets={buckets}",
            urlencode(&sa),
            urlencode(&sb)
        );
        let (status, t) = get(&s, &q);
        assert_eq!(status, 200, "{q}: {t}");
        let bucket_ms = t["bucket_ms"].as_i64().unwrap();
        assert_eq!(
            bucket_ms,
            ((b - a + buckets as i64 - 1) / buckets as i64).max(1),
            "{q}"
        );
        let (want, total) = expected_counts(&times, a, b, bucket_ms);
        assert_eq!(t["counts"], json!(want), "{q}");
        assert_eq!(t["commits"], json!(total), "{q}");
        assert!(want.len() <= buckets, "{q}");
    }

    // Any two i64 times: the widest range counts every point, no overflow.
    let (status, t) = get(
        &s,
        &format!(
            "/pitr/timeline?start={}&end={}&buckets=7",
            i64::MIN,
            i64::MAX
        ),
    );
    assert_eq!(status, 200, "{t}");
    assert_eq!(t["commits"], json!(s.points.len()), "{t}");
    assert_eq!(t["counts"].as_array().unwrap().len(), 7, "{t}");

    for q in [
        "buckets=0",
        "buckets=2001",
        "buckets=ten",
        "start=yesterday",
        "start=100&end=100",
        "start=200&end=100",
        "zoom=2",
    ] {
        let (status, body) = get(&s, &format!("/pitr/timeline?{q}"));
        assert_eq!(status, 400, "{q}: {body}");
        assert!(body["error"].is_string(), "{q}: {body}");
    }
}

fn urlencode(s: &str) -> String {
    s.replace(':', "%3A").replace('+', "%2B")
}

/// The window `/pitr/commits` must list around the point at `anchor`.
fn expected_window(s: &Served, anchor: usize, count: usize, visible: &str) -> Value {
    let from = anchor.saturating_sub(count - 1);
    let to = (anchor + count).min(s.points.len() - 1);
    let newest = &s.points.last().unwrap().1;
    let commits: Vec<Value> = (from..=to)
        .map(|i| {
            let (c, vs, ms) = &s.points[i];
            json!({
                "versionstamp": vs,
                "timestamp_ms": ms,
                "time": rfc3339(*ms as i64),
                "mutations": s.fx.commits[*c].muts.len(),
                "previous": (i > 0).then(|| s.points[i - 1].1.clone()),
                "visible": vs == visible,
                "newest": vs == newest,
            })
        })
        .collect();
    json!({
        "anchor": s.points[anchor].1,
        "commits": commits,
        "more_before": from > 0,
        "more_after": to < s.points.len() - 1,
    })
}

#[test]
fn commits_around_a_point_or_a_time_come_with_their_mutations_and_previous_point() {
    let s = Served::start(14);
    let n = s.points.len();
    let mut visible = s.points[n - 1].1.clone();
    let mut rng = Rng::new(14);
    for round in 0..3 {
        if round > 0 {
            // Pinned somewhere: the flags follow, and commits ahead of the
            // position (kept as redo rows) count their mutations too.
            let i = rng.below(n);
            let (status, body) = s.serve.admin(
                Method::Post,
                "/pitr/checkout",
                json!({"versionstamp": s.points[i].1}),
            );
            assert_eq!(status, 200, "{body}");
            visible = s.points[i].1.clone();
        }
        let visible_index = s.points.iter().position(|p| p.1 == visible).unwrap();
        // What the page's header and confirmation count from.
        let (status, cur) = get(&s, "/pitr/current");
        assert_eq!(status, 200, "{cur}");
        assert_eq!(
            (
                &cur["versionstamp"],
                &cur["points_total"],
                &cur["points_behind"]
            ),
            (&json!(visible), &json!(n), &json!(n - 1 - visible_index)),
            "{cur}"
        );
        for count in [1usize, 3, 10, 100] {
            // No anchor: around what readers see.
            let (status, got) = get(&s, &format!("/pitr/commits?count={count}"));
            assert_eq!(status, 200, "{got}");
            assert_eq!(got, expected_window(&s, visible_index, count, &visible));
            for _ in 0..6 {
                let i = rng.below(n);
                let (status, got) = get(
                    &s,
                    &format!("/pitr/commits?around={}&count={count}", s.points[i].1),
                );
                assert_eq!(status, 200, "{got}");
                assert_eq!(got, expected_window(&s, i, count, &visible), "around {i}");
                // By time: the newest point at or before it, as a checkout
                // by time lands.
                let t = s.points[i].2;
                let want = s.points.iter().rposition(|p| p.2 <= t).unwrap();
                for around in [t.to_string(), urlencode(&rfc3339(t as i64))] {
                    let (status, got) =
                        get(&s, &format!("/pitr/commits?around={around}&count={count}"));
                    assert_eq!(status, 200, "{got}");
                    assert_eq!(got, expected_window(&s, want, count, &visible), "at {t}");
                }
            }
        }
    }
    // Before every point: the oldest; the default count is 10.
    let (status, got) = get(
        &s,
        &format!("/pitr/commits?around={}", s.points[0].2 - 1000),
    );
    assert_eq!(status, 200);
    assert_eq!(got, expected_window(&s, 0, 10, &visible));
    assert_eq!(got["commits"][0]["previous"], Value::Null);

    let (status, body) = get(
        &s,
        &format!("/pitr/commits?around={}", hex::encode(s.fx.dv)),
    );
    assert_eq!(status, 404, "the initial point is not a point: {body}");
    assert!(
        body["error"].as_str().unwrap().contains("initial point"),
        "{body}"
    );
    for q in [
        "count=0",
        "count=101",
        "around=soon",
        "around=zz00000000000000000000",
        "at=1",
    ] {
        let (status, body) = get(&s, &format!("/pitr/commits?{q}"));
        assert_eq!(status, 400, "{q}: {body}");
    }
}

#[test]
fn status_reports_the_engine_the_position_and_the_counters_rates_come_from() {
    let s = Served::start(15);
    let (status, st) = get(&s, "/status");
    assert_eq!(status, 200, "{st}");
    assert_eq!(st["ready"], json!(true), "{st}");
    assert_eq!(st["reason"], json!("ok"));
    assert_eq!(st["detail"], Value::Null);
    assert_eq!(st["initial_complete"], json!(true));
    assert_eq!(st["mode"], json!("following"));
    let newest = s.points.last().unwrap();
    assert_eq!(st["visible"], json!(newest.1));
    assert_eq!(st["latest_commit_ms"], json!(newest.2));
    assert_eq!(st["last_error"], Value::Null);
    assert!(
        st["source"].as_str().unwrap().starts_with("file://"),
        "{st}"
    );
    assert_eq!(
        st["snapshot_ranges"]["loaded"],
        st["snapshot_ranges"]["total"]
    );
    assert!(st["last_successful_poll"].is_string(), "{st}");
    assert!(st["poll_interval_seconds"].as_f64().unwrap() > 0.0);
    assert!(st["sync_lag_seconds"].as_f64().unwrap() >= 0.0, "{st}");
    let now = chrono::Utc::now().timestamp_millis();
    assert!((st["now_ms"].as_i64().unwrap() - now).abs() < 60_000);

    // The counters are the metrics' totals.
    let metrics = s.serve.metrics();
    let sum = |name: &str| -> u64 {
        metrics
            .iter()
            .filter(|(k, _)| k.split('{').next() == Some(name))
            .map(|(_, v)| *v as u64)
            .sum()
    };
    let (_, st) = get(&s, "/status");
    let c = &st["counters"];
    assert_eq!(
        c["objects_applied"],
        json!(sum("kvreplica_objects_applied_total"))
    );
    assert_eq!(
        c["mutations_applied"],
        json!(sum("kvreplica_mutations_applied_total"))
    );
    assert_eq!(c["checkouts"], json!(0));
    assert_eq!(c["errors"], json!(sum("kvreplica_errors_total")));
    let mutations: usize = (s.fx.dv_commit + 1..=s.fx.last_initial)
        .map(|i| s.fx.commits[i].muts.len())
        .sum();
    assert!(
        c["mutations_applied"].as_u64().unwrap() >= mutations as u64,
        "{st}"
    );
    let rounds = c["poll_rounds"].as_u64().unwrap();

    let (status, body) = s.serve.admin(
        Method::Post,
        "/pitr/checkout",
        json!({"versionstamp": s.points[2].1}),
    );
    assert_eq!(status, 200, "{body}");
    let (_, st) = get(&s, "/status");
    assert_eq!(st["mode"], json!("pinned"));
    assert_eq!(st["visible"], json!(s.points[2].1));
    assert_eq!(st["latest_commit_ms"], json!(newest.2));
    assert_eq!(st["counters"]["checkouts"], json!(1));
    // The engine keeps polling while pinned.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let (_, st) = get(&s, "/status");
        if st["counters"]["poll_rounds"].as_u64().unwrap() > rounds {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "no poll round: {st}");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

//! `timeline`: what the operator console asks of a large history, on a
//! served replica of a generated backup with C commits (1M by default):
//! `GET /pitr/timeline` of the whole history (400 and 2000 intervals) and
//! of a zoomed-in tenth, `GET /pitr/commits` around a time, `GET /status`
//! and the console's own files; client-side time per request, medians.
//! The whole-history timeline must answer in under a second (the console's
//! promise for a million points): asserted here, where it is measured.

use std::time::Instant;

use serde_json::Value;

use crate::common::browser::Browser;
use crate::common::fixture::Spec;
use crate::common::served::Generated;
use crate::server::{self, ADMIN_TOKEN};
use crate::{kvreplica_release, median, num};

/// The whole-history timeline's budget.
const WHOLE_HISTORY_BUDGET_MS: f64 = 1000.0;

fn timed(
    rt: &tokio::runtime::Runtime,
    http: &reqwest::Client,
    url: &str,
    auth: Option<&str>,
) -> (f64, u16, usize, Option<Value>) {
    rt.block_on(async {
        let t = Instant::now();
        let mut req = http.get(url);
        if let Some(token) = auth {
            req = req.bearer_auth(token);
        }
        let r = req.send().await.unwrap();
        let status = r.status().as_u16();
        let body = r.bytes().await.unwrap();
        let json = serde_json::from_slice(&body).ok();
        (t.elapsed().as_secs_f64() * 1e3, status, body.len(), json)
    })
}

pub fn run(args: &[String]) {
    let commits = num(args, "--commits", 1_000_000);
    let keys = num(args, "--keys", 10_000);
    let runs = num(args, "--runs", 5);
    let bin = kvreplica_release();
    let t = Instant::now();
    // Small commits (1–2 mutations), many per log object: a busy database.
    let Generated {
        tmp: _tmp,
        fx,
        source,
        db,
    } = Generated::with_spec(Spec {
        seed: 9,
        keys,
        pre_commits: 2,
        post_commits: commits,
        append_commits: 0,
        max_muts_per_commit: 2,
        muts_per_log: 2_000,
        ranges: 4,
        empty_range: false,
        format0_logs: 0,
        split_commits: false,
    });
    let newest = fx.last_initial;
    let points = fx.points(newest);
    let distinct_times = points
        .iter()
        .map(|p| p.2)
        .collect::<std::collections::BTreeSet<_>>()
        .len();
    eprintln!(
        "generated in {:.1?}: {} recoverable points at {distinct_times} distinct times",
        t.elapsed(),
        points.len()
    );
    let rt = crate::runtime();
    let latest = hex::encode(fx.commits[newest].versionstamp);
    let (mut srv, http, _, synced) = server::start_synced(&rt, &bin, &source, &db, &latest);
    eprintln!("synced in {synced:.1?}");

    let (lo, hi) = (points[0].2 as i64, points.last().unwrap().2 as i64);
    let tenth = (hi - lo) / 10;
    let middle = lo + (hi - lo) / 2;
    let base = srv.admin_url.clone();
    let cases: Vec<(&str, String, Option<&str>)> = vec![
        (
            "timeline, whole, 400",
            format!("{base}/pitr/timeline"),
            Some(ADMIN_TOKEN),
        ),
        (
            "timeline, whole, 2000",
            format!("{base}/pitr/timeline?buckets=2000"),
            Some(ADMIN_TOKEN),
        ),
        (
            "timeline, a tenth, 400",
            format!(
                "{base}/pitr/timeline?start={}&end={}",
                middle,
                middle + tenth
            ),
            Some(ADMIN_TOKEN),
        ),
        (
            "commits around, 10+10",
            format!("{base}/pitr/commits?around={middle}"),
            Some(ADMIN_TOKEN),
        ),
        ("status", format!("{base}/status"), Some(ADMIN_TOKEN)),
        ("current", format!("{base}/pitr/current"), Some(ADMIN_TOKEN)),
        ("console page", format!("{base}/console/"), None),
        (
            "console script",
            format!("{base}/console/assets/console.js"),
            None,
        ),
    ];
    let mut ms = vec![Vec::new(); cases.len()];
    let mut sizes = vec![0; cases.len()];
    for run in 0..runs {
        for (i, (label, url, auth)) in cases.iter().enumerate() {
            srv.assert_running();
            let (t, status, size, json) = timed(&rt, &http, url, *auth);
            assert_eq!(status, 200, "{label}: {url}");
            if *label == "current" {
                let j = json.as_ref().unwrap();
                assert_eq!(
                    (j["points_total"].as_u64(), j["points_behind"].as_u64()),
                    (Some(points.len() as u64), Some(0)),
                    "{label}: {j}"
                );
            }
            if i == 0 || i == 1 {
                let j = json.as_ref().unwrap();
                let sum: u64 = j["counts"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|c| c.as_u64().unwrap())
                    .sum();
                assert_eq!(sum as usize, points.len(), "{label}: every point counted");
                assert_eq!(j["commits"].as_u64().unwrap() as usize, points.len());
            }
            ms[i].push(t);
            sizes[i] = size;
            eprintln!("run {run}: {label}: {t:.1} ms, {size} bytes");
        }
    }
    let page = in_browser(&srv.admin_url, runs, middle, points.len());
    let pinned = current_pinned_at_oldest(&rt, &http, &base, &points[0].1, points.len(), runs);
    let problems = srv.problems();
    let status = srv.stop();

    println!();
    println!(
        "timeline: {} points ({distinct_times} distinct times), {runs} runs, medians, client-side",
        points.len()
    );
    println!("{:<26} {:>10} {:>10}", "request", "ms", "bytes");
    for (i, (label, _, _)) in cases.iter().enumerate() {
        println!(
            "{:<26} {:>10.1} {:>10}",
            label,
            median(ms[i].clone()),
            sizes[i]
        );
    }
    println!(
        "{:<26} {:>10.1}",
        "current, pinned at oldest",
        median(pinned)
    );
    println!();
    println!("in headless Chromium (in-page time from the click to the drawn answer), medians:");
    for (label, v) in &page {
        println!("{:<36} {:>10.1} ms", label, median(v.clone()));
    }
    println!("server: {status}, {} WARN/ERROR lines", problems.len());
    for p in problems.iter().take(10) {
        println!("  {p}");
    }
    assert!(status.success(), "server exit {status}");
    let login = median(page[0].1.clone());
    assert!(
        login < WHOLE_HISTORY_BUDGET_MS,
        "{}: {login:.1} ms, over the {WHOLE_HISTORY_BUDGET_MS} ms budget",
        page[0].0
    );
    for i in [0, 1] {
        let m = median(ms[i].clone());
        assert!(
            m < WHOLE_HISTORY_BUDGET_MS,
            "{}: {m:.1} ms, over the {WHOLE_HISTORY_BUDGET_MS} ms budget",
            cases[i].0
        );
    }
}

/// Checks the replica out at its oldest point and times `GET
/// /pitr/current` there: the most points behind the visible one it can
/// count.
fn current_pinned_at_oldest(
    rt: &tokio::runtime::Runtime,
    http: &reqwest::Client,
    base: &str,
    oldest: &str,
    points: usize,
    runs: usize,
) -> Vec<f64> {
    let (ms, _) = crate::checkout::post_checkout(
        rt,
        http,
        base,
        serde_json::json!({ "versionstamp": oldest }),
    );
    eprintln!("checked out the oldest point in {ms:.0} ms");
    (0..runs)
        .map(|run| {
            let url = format!("{base}/pitr/current");
            let (t, status, _, json) = timed(rt, http, &url, Some(ADMIN_TOKEN));
            assert_eq!(status, 200);
            let j = json.unwrap();
            assert_eq!(
                (j["points_total"].as_u64(), j["points_behind"].as_u64()),
                (Some(points as u64), Some(points as u64 - 1)),
                "pinned at the oldest point: {j}"
            );
            eprintln!("run {run}: current, pinned at oldest: {t:.1} ms");
            t
        })
        .collect()
}

/// Clicks `click` and measures, inside the page, the time until the text
/// of `changed` differs from what it was (and is not a "Loading…") and
/// `present` exists: the answer fetched, drawn and in the DOM.
const MEASURE: &str = "
    const [click, changed, present] = arguments;
    const text = () => { const n = document.querySelector(changed); return n ? n.textContent : null; };
    const before = text();
    const m = { t0: performance.now(), done: null };
    window.__kvreplicaMeasure = m;
    const check = () => {
        const now = text();
        if (m.done === null && now !== before && !/loading/i.test(now) && document.querySelector(present)) {
            m.done = performance.now();
            obs.disconnect();
        }
    };
    const obs = new MutationObserver(check);
    obs.observe(document.body, { subtree: true, childList: true, characterData: true, attributes: true });
    document.querySelector(click).click();
    return true;";

fn measure(b: &Browser, what: &str, click: &str, changed: &str, present: &str) -> f64 {
    b.js(MEASURE, vec![click.into(), changed.into(), present.into()]);
    b.wait_js(
        "const m = window.__kvreplicaMeasure; return m && m.done !== null ? m.done - m.t0 : null;",
        what,
        |v| v.is_number(),
    )
    .as_f64()
    .unwrap()
}

/// The console in headless Chromium on this history, `runs` times from a
/// fresh page: log in until the whole-history timeline is drawn, zoom in,
/// back to the whole history, find a time, select the commit found.
fn in_browser(
    admin_url: &str,
    runs: usize,
    middle: i64,
    points: usize,
) -> Vec<(&'static str, Vec<f64>)> {
    let mut b = Browser::start("bench-timeline");
    let mut out: Vec<(&'static str, Vec<f64>)> = [
        "log in → whole timeline drawn",
        "zoom in → redrawn",
        "whole history → redrawn",
        "find a time → commits listed",
        "select a commit → its diff",
    ]
    .into_iter()
    .map(|l| (l, Vec::new()))
    .collect();
    let find = chrono::DateTime::from_timestamp_millis(middle)
        .unwrap()
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    for run in 0..runs {
        b.goto(&format!("{admin_url}/console/"));
        b.js("sessionStorage.clear(); return true;", vec![]);
        b.goto(&format!("{admin_url}/console/"));
        b.fill("#login-token", ADMIN_TOKEN);
        let t = [
            measure(
                &b,
                out[0].0,
                "#login-submit",
                "#timeline-range",
                "#timeline rect.bar",
            ),
            measure(
                &b,
                out[1].0,
                "#timeline-zoom-in",
                "#timeline-range",
                "#timeline rect.bar",
            ),
            measure(
                &b,
                out[2].0,
                "#timeline-reset",
                "#timeline-range",
                "#timeline rect.bar",
            ),
            {
                b.fill("#find", &find);
                measure(
                    &b,
                    out[3].0,
                    "#find-go",
                    "#commits tbody",
                    "tr.commit.anchor",
                )
            },
            measure(
                &b,
                out[4].0,
                "tr.commit.anchor",
                "#diff-summary",
                "#diff-summary",
            ),
        ];
        for (i, ms) in t.into_iter().enumerate() {
            out[i].1.push(ms);
        }
        eprintln!("browser run {run}: {t:.1?} ms");
    }
    let shot = b.shot(&format!("{points}-points"));
    eprintln!("screenshot: {}", shot.display());
    out
}

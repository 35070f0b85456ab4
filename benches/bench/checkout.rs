//! `checkout`: how long a point-in-time checkout through the admin API of
//! `kvreplica serve` takes, N commits back from the newest point and from
//! there back to `latest`, on a generated ~100k-key replica with ~100k
//! logged mutations, timed from the client over many repetitions (median,
//! p99, max). [`admin_api`] is the same measurement for `compare`.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Instant;

use serde_json::{json, Value};

use crate::common::fixture::Rec;
use crate::common::served::Generated;
use crate::compare::quantile;
use crate::server::{self, ADMIN_TOKEN};
use crate::{kvreplica_release, list, median, num};

/// Keys compared through KV Connect after each checkout of the first run.
const CHECKED_KEYS: usize = 60;

struct Timing {
    distance: usize,
    back_ms: Vec<f64>,
    latest_ms: Vec<f64>,
    undone: Value,
    redone: Value,
}

fn stats(v: &[f64]) -> String {
    format!(
        "{:>9.1} {:>8.1} {:>8.1}",
        median(v.to_vec()),
        quantile(v, 0.99),
        quantile(v, 1.0)
    )
}

/// `POST /pitr/checkout` with `body` on the admin listener at `admin_url`:
/// the client-side wall time in ms and the answer. The checkout is one
/// transaction, answered after it commits.
pub(crate) fn post_checkout(
    rt: &tokio::runtime::Runtime,
    http: &reqwest::Client,
    admin_url: &str,
    body: Value,
) -> (f64, Value) {
    rt.block_on(async {
        let t = Instant::now();
        let a = server::json_request(
            http,
            &format!("{admin_url}/pitr/checkout"),
            ADMIN_TOKEN,
            Some(body.clone()),
        )
        .await;
        let ms = t.elapsed().as_secs_f64() * 1e3;
        assert_eq!(a.status, 200, "checkout {body}: {}", a.text);
        (ms, a.json)
    })
}

/// The recoverable points of the server at `admin_url`, newest first, at
/// least `want` of them when it has that many.
fn points_newest_first(
    rt: &tokio::runtime::Runtime,
    http: &reqwest::Client,
    admin_url: &str,
    want: usize,
) -> Vec<String> {
    rt.block_on(async {
        let mut points = Vec::new();
        let mut before: Option<String> = None;
        while points.len() < want {
            let mut url = format!("{admin_url}/pitr/points?limit=10000");
            if let Some(b) = &before {
                url.push_str(&format!("&before={b}"));
            }
            let a = server::json_request(http, &url, ADMIN_TOKEN, None).await;
            assert_eq!(a.status, 200, "{url}: {}", a.text);
            let page = a.json["points"].as_array().expect("points").clone();
            points.extend(
                page.iter()
                    .map(|p| p["versionstamp"].as_str().unwrap().to_string()),
            );
            match a.json["next_before"].as_str() {
                Some(b) if !page.is_empty() => before = Some(b.to_string()),
                _ => break,
            }
        }
        points
    })
}

/// For `compare`: on a running `kvreplica serve` that is following its
/// newest point, `reps` times per distance, an admin-API checkout that
/// many points back and then to `latest` (each answer checked). Returns
/// (label, times in ms) per checkout; the replica ends where it started.
pub fn admin_api(
    rt: &tokio::runtime::Runtime,
    admin_url: &str,
    distances: &[usize],
    reps: usize,
) -> Vec<(String, Vec<f64>)> {
    let http = reqwest::Client::new();
    let deepest = distances.iter().copied().max().unwrap_or(0);
    let points = points_newest_first(rt, &http, admin_url, deepest + 1);
    let mut out = Vec::new();
    for &d in distances {
        let Some(target) = points.get(d) else {
            eprintln!("  admin API: no point {d} back ({} points)", points.len());
            continue;
        };
        let (mut back, mut latest) = (Vec::new(), Vec::new());
        for _ in 0..reps {
            let (ms, a) = post_checkout(rt, &http, admin_url, json!({"versionstamp": target}));
            assert_eq!(a["versionstamp"], target.as_str(), "{a}");
            back.push(ms);
            let (ms, a) = post_checkout(rt, &http, admin_url, json!({"latest": true}));
            assert_eq!(a["versionstamp"], points[0].as_str(), "{a}");
            latest.push(ms);
        }
        out.push((format!("{d} back"), back));
        out.push((format!("{d} back, then to latest"), latest));
    }
    out
}

/// The backup the `checkout` and `diff` benchmarks share: `keys` keys and
/// `commits` commits, a twelfth of them before `differential` (so most are
/// recoverable points), in `<tmp>/prefix/`.
pub fn history_backup(keys: usize, commits: usize) -> Generated {
    let pre = (commits / 12).max(2);
    Generated::with_spec(crate::read_spec(7, keys, pre, commits - pre, true))
}

pub fn run(args: &[String]) {
    let keys = num(args, "--keys", 100_000);
    let commits = num(args, "--commits", 12_000);
    let distances = list(args, "--distances", &[1, 100, 10_000]);
    let runs = num(args, "--runs", 30);
    let bin = kvreplica_release();
    let t = Instant::now();
    let Generated {
        tmp: _tmp,
        fx,
        source,
        db,
    } = history_backup(keys, commits);
    let logged_muts: usize = fx.commits[fx.first_logged..=fx.last_initial]
        .iter()
        .map(|c| c.muts.len())
        .sum();
    let points_total = fx.last_initial - fx.dv_commit;
    eprintln!(
        "generated in {:.1?}: {} keys at the newest point, {} logged commits with {logged_muts} mutations, \
         {points_total} recoverable points, {} objects",
        t.elapsed(),
        fx.state_at(fx.last_initial).len(),
        fx.last_initial - fx.first_logged + 1,
        fx.initial.len()
    );
    let deepest = distances.iter().copied().max().unwrap_or(0);
    assert!(
        deepest < points_total,
        "distance {deepest} needs more than {points_total} points: raise --commits"
    );
    let latest = hex::encode(fx.commits[fx.last_initial].versionstamp);

    let rt = crate::runtime();
    let (mut srv, http, database_id, synced_after) =
        server::start_synced(&rt, &bin, &source, &db, &latest);
    let (kv_url, admin_url) = (srv.kv_url.clone(), srv.admin_url.clone());

    // The points, newest first, a page at a time.
    let points = points_newest_first(&rt, &http, &srv.admin_url, deepest + 1);
    assert_eq!(points.first(), Some(&latest), "the newest point");
    for &d in &distances {
        assert_eq!(
            points.get(d),
            Some(&hex::encode(fx.commits[fx.last_initial - d].versionstamp)),
            "the point {d} commits back"
        );
    }

    let checkout = |body: Value| post_checkout(&rt, &http, &admin_url, body);
    // Compares keys changed since `index` with the fixture's state there.
    let verify = |index: usize, what: &str| {
        let state: BTreeMap<Vec<u8>, Rec> = fx.state_at(index);
        let touched: BTreeSet<Vec<u8>> = fx.commits[index.min(fx.last_initial - deepest)..]
            .iter()
            .flat_map(|c| c.muts.iter().map(|m| m.key.clone()))
            .collect();
        let step = (touched.len() / CHECKED_KEYS).max(1);
        let sample: Vec<Vec<u8>> = touched.into_iter().step_by(step).collect();
        let got = rt.block_on(server::read_keys(&http, &kv_url, &database_id, &sample));
        for (k, e) in sample.iter().zip(got) {
            let want = state.get(k);
            let same = match (&e, want) {
                (None, None) => true,
                (Some(e), Some(r)) => {
                    e.value == r.value && e.versionstamp[..] == r.versionstamp[..]
                }
                _ => false,
            };
            assert!(
                same,
                "{what}: key {} reads {:?}, want {:?}",
                hex::encode(k),
                e.map(|e| hex::encode(e.versionstamp)),
                want.map(|r| hex::encode(r.versionstamp))
            );
        }
    };

    let mut timings: Vec<Timing> = distances
        .iter()
        .map(|&d| Timing {
            distance: d,
            back_ms: Vec::new(),
            latest_ms: Vec::new(),
            undone: Value::Null,
            redone: Value::Null,
        })
        .collect();
    for run in 0..runs {
        for t in &mut timings {
            srv.assert_running();
            let target = &points[t.distance];
            let (ms, a) = checkout(json!({"versionstamp": target}));
            assert_eq!(a["versionstamp"], target.as_str(), "{a}");
            assert_eq!(a["mode"], "pinned", "{a}");
            t.back_ms.push(ms);
            t.undone = a["undone"].clone();
            if run == 0 {
                verify(fx.last_initial - t.distance, "after a checkout back");
            }
            let (ms, a) = checkout(json!({"latest": true}));
            assert_eq!(a["versionstamp"], latest.as_str(), "{a}");
            assert_eq!(a["mode"], "following", "{a}");
            t.latest_ms.push(ms);
            t.redone = a["redone"].clone();
            if run == 0 {
                verify(fx.last_initial, "after a checkout to latest");
            }
            eprintln!(
                "run {run}: {} back {:.1} ms, to latest {:.1} ms",
                t.distance,
                t.back_ms.last().unwrap(),
                t.latest_ms.last().unwrap()
            );
        }
    }
    let problems = srv.problems();
    let status = srv.stop();

    println!();
    println!(
        "checkout: {} keys, {} logged commits ({logged_muts} mutations), {points_total} points; \
         admin API POST /pitr/checkout, {runs} runs",
        fx.state_at(fx.last_initial).len(),
        fx.last_initial - fx.first_logged + 1
    );
    println!(
        "{:<18} {:>9} {:>8} {:>8} {:>9}",
        "checkout", "median ms", "p99 ms", "max ms", "entries"
    );
    for t in &timings {
        println!(
            "{:<18} {} {:>9}",
            format!("{} back", t.distance),
            stats(&t.back_ms),
            t.undone.to_string()
        );
        println!(
            "{:<18} {} {:>9}",
            format!("latest (from {})", t.distance),
            stats(&t.latest_ms),
            t.redone.to_string()
        );
    }
    println!(
        "(entries: log entries the checkout reverted or re-applied; initial sync to the newest \
         point took {synced_after:.1?})"
    );
    println!("server: {status}, {} WARN/ERROR lines", problems.len());
    for p in problems.iter().take(10) {
        println!("  {p}");
    }
    assert!(status.success(), "server exit {status}");
}

//! `diff`: how long a diff between two points takes on a generated
//! ~100k-key replica served by `kvreplica serve` (following its newest
//! point): `kvreplica pitr diff FROM TO --format jsonl` beside the server
//! (process wall time) and `GET /pitr/diff` through the admin API (every
//! page, client-side time), for diffs of N commits ending at the newest
//! point and one of 100 commits far back (its cost is the history from
//! the visible position to both points). Each answer's totals are checked
//! against the fixture's states.

use std::process::{Command, Stdio};
use std::time::Instant;

use serde_json::{json, Value};

use crate::common::fixture::Fixture;
use crate::common::served::Generated;
use crate::server::{self, ADMIN_TOKEN};
use crate::{kvreplica_release, list, median, num};

/// Added, removed and changed keys between the fixture's states after
/// commits `a` and `b`.
fn expected_totals(fx: &Fixture, a: usize, b: usize) -> Value {
    let (sa, sb) = (fx.state_at(a), fx.state_at(b));
    let (mut added, mut removed, mut changed) = (0, 0, 0);
    for (k, r) in &sb {
        match sa.get(k) {
            None => added += 1,
            Some(old) if old != r => changed += 1,
            _ => {}
        }
    }
    removed += sa.keys().filter(|k| !sb.contains_key(*k)).count();
    json!({"added": added, "removed": removed, "changed": changed})
}

/// Every page of `GET /pitr/diff?from=&to=&limit=`: (ms, pages, totals).
fn api_diff(
    rt: &tokio::runtime::Runtime,
    http: &reqwest::Client,
    admin_url: &str,
    from: &str,
    to: &str,
    limit: usize,
) -> (f64, usize, Value) {
    rt.block_on(async {
        let t = Instant::now();
        let (mut pages, mut cursor) = (0, None::<String>);
        loop {
            let mut url = format!("{admin_url}/pitr/diff?from={from}&to={to}&limit={limit}");
            if let Some(c) = &cursor {
                url.push_str(&format!("&cursor={c}"));
            }
            let a = server::json_request(http, &url, ADMIN_TOKEN, None).await;
            assert_eq!(a.status, 200, "{url}: {}", a.text);
            pages += 1;
            match a.json["next_cursor"].as_str() {
                Some(c) => cursor = Some(c.to_string()),
                None => {
                    return (
                        t.elapsed().as_secs_f64() * 1e3,
                        pages,
                        a.json["totals"].clone(),
                    )
                }
            }
        }
    })
}

/// `kvreplica pitr diff FROM TO --format jsonl` to a pipe read to the
/// end: (ms, lines, totals).
fn cli_diff(
    bin: &std::path::Path,
    db: &std::path::Path,
    from: &str,
    to: &str,
) -> (f64, usize, Value) {
    let t = Instant::now();
    let out = Command::new(bin)
        .args([
            "pitr",
            "--db",
            db.to_str().unwrap(),
            "diff",
            from,
            to,
            "--format",
            "jsonl",
        ])
        .stderr(Stdio::inherit())
        .output()
        .unwrap();
    let ms = t.elapsed().as_secs_f64() * 1e3;
    assert!(
        out.status.success(),
        "pitr diff {from} {to}: {}",
        out.status
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let last: Value = serde_json::from_str(text.lines().last().unwrap()).unwrap();
    (ms, text.lines().count(), last["totals"].clone())
}

pub fn run(args: &[String]) {
    let keys = num(args, "--keys", 100_000);
    let commits = num(args, "--commits", 12_000);
    let distances = list(args, "--distances", &[100, 10_000]);
    let runs = num(args, "--runs", 5);
    let page = num(args, "--page", 1_000);
    let bin = kvreplica_release();
    let t = Instant::now();
    let Generated {
        tmp: _tmp,
        fx,
        source,
        db,
    } = crate::checkout::history_backup(keys, commits);
    let newest = fx.last_initial;
    let points_total = newest - fx.dv_commit;
    let deepest = distances.iter().copied().max().unwrap_or(0);
    assert!(
        deepest + 100 < points_total,
        "distance {deepest} needs more than {points_total} points: raise --commits"
    );
    eprintln!(
        "generated in {:.1?}: {} keys at the newest point, {points_total} recoverable points",
        t.elapsed(),
        fx.state_at(newest).len()
    );
    let vs = |i: usize| hex::encode(fx.commits[i].versionstamp);
    // (label, from commit, to commit)
    let mut cases: Vec<(String, usize, usize)> = distances
        .iter()
        .map(|&d| (format!("{d} commits to latest"), newest - d, newest))
        .collect();
    cases.push((
        format!("100 commits, {deepest} back"),
        newest - deepest - 100,
        newest - deepest,
    ));
    let want: Vec<Value> = cases
        .iter()
        .map(|(_, a, b)| expected_totals(&fx, *a, *b))
        .collect();

    let rt = crate::runtime();
    let (mut srv, http, _, _) = server::start_synced(&rt, &bin, &source, &db, &vs(newest));
    let mut cli_ms = vec![Vec::new(); cases.len()];
    let mut api_ms = vec![Vec::new(); cases.len()];
    let mut sizes = vec![(0, 0); cases.len()];
    for run in 0..runs {
        for (i, (label, a, b)) in cases.iter().enumerate() {
            srv.assert_running();
            let (ms, lines, totals) = cli_diff(&bin, &db, &vs(*a), &vs(*b));
            assert_eq!(totals, want[i], "CLI {label}");
            cli_ms[i].push(ms);
            let (ams, pages, totals) = api_diff(&rt, &http, &srv.admin_url, &vs(*a), &vs(*b), page);
            assert_eq!(totals, want[i], "admin API {label}");
            api_ms[i].push(ams);
            sizes[i] = (lines - 1, pages);
            eprintln!("run {run}: {label}: CLI {ms:.1} ms, admin API {ams:.1} ms ({pages} pages)");
        }
    }
    let problems = srv.problems();
    let status = srv.stop();

    println!();
    println!(
        "diff: {} keys, {points_total} points, visible state at the newest; {runs} runs, medians; \
         admin API pages of {page}",
        fx.state_at(newest).len()
    );
    println!(
        "{:<26} {:>8} {:>12} {:>15} {:>6}",
        "diff", "keys", "CLI ms", "admin API ms", "pages"
    );
    for (i, (label, _, _)) in cases.iter().enumerate() {
        println!(
            "{:<26} {:>8} {:>12.1} {:>15.1} {:>6}",
            label,
            sizes[i].0,
            median(cli_ms[i].clone()),
            median(api_ms[i].clone()),
            sizes[i].1
        );
    }
    println!("server: {status}, {} WARN/ERROR lines", problems.len());
    for p in problems.iter().take(10) {
        println!("  {p}");
    }
    assert!(status.success(), "server exit {status}");
}

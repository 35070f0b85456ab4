//! Benchmark harness (run with `cargo bench --bench bench -- <command>`).
//!
//! Commands:
//! - `generate --keys N --commits C --muts-per-log M --out DIR
//!   [--append-commits A --append-out DIR2]`: writes a Deploy-format backup
//!   made by the project's fixture writer into DIR (and A more commits of
//!   later log objects into DIR2).
//! - `initial-sync --source URL [--runs R]`: times `kvreplica sync` (release
//!   build) from scratch R times and reports the median wall time, keys/s,
//!   MB/s and peak RSS.
//! - `serve-read [--keys N] [--commits C] [--duration S] [--warmup S]
//!   [--clients 1,16,64] [--protocol http1|h2c|both] [--append-every-ms M]`:
//!   KV Connect `snapshot_read` throughput and latency of `kvreplica serve`,
//!   idle and while the sync applies a steady stream of log objects.
//! - `checkout [--keys N] [--commits C] [--distances 1,100,10000] [--runs R]`:
//!   time of a PITR checkout through the admin API, N commits back and back
//!   to `latest`.
//! - `compare [--sizes 10000,100000,1000000] [--runs R] [--mode
//!   local|remote|both] [--rtt-ms 20] …`: everything above against backups
//!   in a local S3 server (s3s-fs; `remote`: behind a proxy adding a round
//!   trip of `--rtt-ms` to every request), with the machine's raw
//!   S3 GET and SQLite insert rates, replication lag and catch-up apply
//!   rate; with `DENOKV_BIN=/path/to/denokv`, the reference (`denokv pitr
//!   sync`, `serve --sync-from-s3`, `serve --read-only`, `pitr checkout`)
//!   side by side, with ratios and the targets.
//!
//! - `diff [--keys N] [--commits C] [--distances 100,10000] [--runs R]
//!   [--page P]`: time of a diff between two points on a served replica,
//!   `kvreplica pitr diff` (CLI) and `GET /pitr/diff` (admin API, every
//!   page), N commits to the newest point and 100 commits far back.
//!
//! - `export [--keys N] [--commits C] [--runs R]`: `kvreplica export` of an
//!   N-key replica (1M by default) against a plain `SELECT` of the same
//!   rows, and of an earlier point: entries/s, MB/s, peak RSS.
//!
//! - `timeline [--commits C] [--keys N] [--runs R]`: what the operator
//!   console asks of a C-commit history (1M by default): the timeline of
//!   the whole history and of a tenth, the commits around a time, status,
//!   the console's files; fails when the whole-history timeline takes a
//!   second or more.
//!
//! - `proxy --upstream 127.0.0.1:PORT [--rtt-ms 20]`: the remote mode's TLS
//!   delay proxy alone, in front of a server started by hand.
//!
//! See BENCHMARKS.md for the full procedure and recorded figures.

#[path = "../tests/common/mod.rs"]
mod common;

#[path = "../tests/common/certs.rs"]
mod certs;
#[path = "bench/checkout.rs"]
mod checkout;
#[path = "bench/compare.rs"]
mod compare;
#[path = "bench/diff.rs"]
mod diff;
#[path = "bench/export.rs"]
mod export;
#[path = "bench/h2load.rs"]
mod h2load;
#[path = "bench/load.rs"]
mod load;
#[path = "bench/pair.rs"]
mod pair;
#[path = "bench/raw.rs"]
mod raw;
#[path = "bench/remote.rs"]
mod remote;
#[path = "../tests/common/s3_server.rs"]
mod s3_server;
#[path = "bench/scan.rs"]
mod scan;
#[path = "bench/serve_read.rs"]
mod serve_read;
#[path = "bench/server.rs"]
mod server;
#[path = "bench/timeline.rs"]
mod timeline;

use common::fixture;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

pub(crate) fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

pub(crate) fn num(args: &[String], name: &str, default: usize) -> usize {
    arg(args, name).map_or(default, |v| v.parse().expect("a number"))
}

/// A comma-separated list of numbers, e.g. `--clients 1,16,64`.
pub(crate) fn list(args: &[String], name: &str, default: &[usize]) -> Vec<usize> {
    arg(args, name).map_or_else(
        || default.to_vec(),
        |v| {
            v.split(',')
                .map(|n| n.trim().parse().expect("a comma-separated list of numbers"))
                .collect()
        },
    )
}

/// A number of seconds (fractions allowed), e.g. `--duration 5`.
pub(crate) fn secs(args: &[String], name: &str, default: f64) -> std::time::Duration {
    std::time::Duration::from_secs_f64(
        arg(args, name).map_or(default, |v| v.parse().expect("a number of seconds")),
    )
}

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    match args.first().map(String::as_str) {
        Some("generate") => generate(&args),
        Some("initial-sync") => initial_sync(&args),
        Some("serve-read") => serve_read::run(&args),
        Some("checkout") => checkout::run(&args),
        Some("compare") => compare::run(&args),
        Some("proxy") => remote::run(&args),
        Some("h2load") => h2load::run(&args),
        Some("scan") => scan::run(&args),
        Some("diff") => diff::run(&args),
        Some("export") => export::run(&args),
        Some("timeline") => timeline::run(&args),
        _ => {
            eprintln!(
                "usage: cargo bench --bench bench -- generate|initial-sync|serve-read|checkout|compare|proxy|h2load|scan|diff|export|timeline …"
            );
        }
    }
}

/// The harness's client runtime: two workers, like the machine the
/// figures come from.
pub(crate) fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// The backup shape the read and checkout benchmarks share: `keys` keys,
/// `pre` commits before `differential` and `post` after, commits of up to
/// 20 mutations in objects of about 100, one snapshot range per 20,000
/// keys (4 to 256) plus an empty one, no later objects.
pub(crate) fn read_spec(
    seed: u64,
    keys: usize,
    pre: usize,
    post: usize,
    split_commits: bool,
) -> fixture::Spec {
    fixture::Spec {
        seed,
        keys,
        pre_commits: pre,
        post_commits: post,
        append_commits: 0,
        max_muts_per_commit: 20,
        muts_per_log: 100,
        ranges: (keys / 20_000).clamp(4, 256),
        empty_range: true,
        format0_logs: 0,
        split_commits,
    }
}

fn generate(args: &[String]) {
    let keys = num(args, "--keys", 10_000);
    let commits = num(args, "--commits", 1000);
    let out = PathBuf::from(arg(args, "--out").expect("--out DIR"));
    let t = Instant::now();
    let fx = fixture::Fixture::generate(fixture::Spec {
        seed: 42,
        keys,
        pre_commits: commits / 2,
        post_commits: commits - commits / 2,
        append_commits: num(args, "--append-commits", 0),
        max_muts_per_commit: 200,
        muts_per_log: num(args, "--muts-per-log", 100),
        ranges: (keys / 20_000).clamp(4, 256),
        empty_range: true,
        format0_logs: 0,
        split_commits: true,
    });
    fx.write_initial(&out);
    if let Some(dir) = arg(args, "--append-out") {
        // Later log objects, for following a live bucket by hand.
        fx.write_append(Path::new(&dir));
        eprintln!("wrote {} later log objects to {dir}", fx.append.len());
    }
    let bytes: usize = fx.initial.iter().map(|(_, b)| b.len()).sum();
    eprintln!(
        "wrote {} objects, {:.1} MB, {} keys at the newest point, in {:.1?}",
        fx.initial.len(),
        bytes as f64 / 1e6,
        fx.state_at(fx.last_initial).len(),
        t.elapsed()
    );
}

/// The `kvreplica` binary cargo built for this benchmark (`cargo bench`
/// builds it with the bench profile, i.e. the release settings). Running
/// `cargo build --release` from here instead would rebuild the
/// dependencies with the other feature set each time.
pub(crate) fn kvreplica_release() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_kvreplica"))
}

/// Runs `cmd` under `/usr/bin/time -v`; returns (wall seconds, peak RSS KiB).
pub(crate) fn timed(cmd: &mut Command) -> (f64, u64) {
    let mut time = Command::new("/usr/bin/time");
    time.arg("-v").arg(cmd.get_program()).args(cmd.get_args());
    for (k, v) in cmd.get_envs() {
        match v {
            Some(v) => time.env(k, v),
            None => time.env_remove(k),
        };
    }
    let t = Instant::now();
    let out = time.output().expect("/usr/bin/time");
    let wall = t.elapsed().as_secs_f64();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "benchmarked command failed:\n{stderr}"
    );
    let rss = stderr
        .lines()
        .find_map(|l| {
            l.trim()
                .strip_prefix("Maximum resident set size (kbytes): ")
        })
        .and_then(|v| v.trim().parse().ok())
        .expect("peak RSS in /usr/bin/time output");
    (wall, rss)
}

pub(crate) fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn initial_sync(args: &[String]) {
    let source = arg(args, "--source").expect("--source URL");
    let runs = num(args, "--runs", 3);
    let bin = kvreplica_release();
    let tmp = tempfile::tempdir().unwrap();
    let mut walls = Vec::new();
    let mut rsss = Vec::new();
    let mut keys = 0u64;
    let mut db_size = 0u64;
    for i in 0..runs {
        let db = tmp.path().join(format!("run{i}.sqlite"));
        let (wall, rss) = timed(
            Command::new(&bin)
                .args(["sync", "--source", &source, "--db"])
                .arg(&db),
        );
        let conn = rusqlite::Connection::open(&db).unwrap();
        keys = conn
            .query_row("select count(*) from kv", [], |r| r.get::<_, i64>(0))
            .unwrap() as u64;
        db_size = std::fs::metadata(&db).unwrap().len();
        eprintln!(
            "run {i}: {wall:.2} s, peak RSS {:.1} MiB",
            rss as f64 / 1024.0
        );
        walls.push(wall);
        rsss.push(rss as f64);
    }
    let wall = median(walls);
    println!(
        "initial sync: median {wall:.2} s over {runs} runs, {keys} keys, {:.0} keys/s, \
         replica {:.1} MB, peak RSS median {:.1} MiB",
        keys as f64 / wall,
        db_size as f64 / 1e6,
        median(rsss) / 1024.0
    );
}

//! `compare`: kvreplica and, when `DENOKV_BIN` names a `denokv` binary, the
//! reference side by side in one run, on the same generated backups in one
//! local S3 server (s3s-fs on 127.0.0.1).
//!
//! Per backup size: the server's raw GET rate and SQLite's raw insert rate
//! (the machine's limits), initial sync (wall, keys/s, MB/s, peak RSS),
//! catch-up apply rate after a burst of log objects, replication lag
//! (upload → readable through KV Connect), KV Connect read throughput and
//! latency idle and while the sync applies a stream of objects, and PITR
//! checkout times; with the reference, every figure gets a ratio and the
//! issue's target. Each tool reads its own copy of the backup (two prefixes
//! with the same objects), so both see exactly the same stream.
//!
//! `--mode remote` puts the store behind a TLS proxy that adds `--rtt-ms`
//! per round trip ([`crate::remote`]), as a cloud region would, and measures
//! the figures that touch the store (raw GET/LIST, initial sync, catch-up,
//! lag) with the S3 connections and TLS handshakes each tool makes; reads
//! and checkout do not touch the store and are left to the local mode.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use kvreplica::format::{self, LogName, SnapshotName};

use crate::common::fixture::{Fixture, Spec};
use crate::load::{self, Expect, Kind, Protocol, Target};
use crate::raw::{self, S3Place};
use crate::remote::DelayProxy;
use crate::s3_server::S3Server;
use crate::server::{self, Server};
use crate::{kvreplica_release, list, median, num, secs, timed};

const BUCKET: &str = "bench";
/// Bound on a server reaching a state it is expected to reach.
const WAIT: Duration = Duration::from_secs(900);
/// Pause between two probes of a key through KV Connect.
const PROBE_EVERY: Duration = Duration::from_millis(2);
/// Interval of the append stream during the loaded read runs.
const STREAM_EVERY: Duration = Duration::from_millis(50);
/// Largest commit of the workload; objects hold ~100 mutations.
const MAX_MUTS_PER_COMMIT: usize = 200;
const MUTS_PER_LOG: usize = 100;

/// One tool under test.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
enum Tool {
    Kvreplica,
    Denokv,
}

impl Tool {
    fn label(self) -> &'static str {
        match self {
            Tool::Kvreplica => "kvreplica",
            Tool::Denokv => "denokv",
        }
    }

    /// The tool's own copy of the backup.
    fn prefix(self) -> &'static str {
        match self {
            Tool::Kvreplica => "kvr/",
            Tool::Denokv => "dkv/",
        }
    }
}

/// Where the store is.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Mode {
    /// s3s-fs over plain HTTP on loopback.
    Local,
    /// s3s-fs behind the delay proxy.
    Remote,
}

/// Settings of a run.
struct Settings {
    modes: Vec<Mode>,
    /// Round trip the proxy adds in remote mode.
    rtt: Duration,
    runs: usize,
    read_duration: Duration,
    read_warmup: Duration,
    read_runs: usize,
    clients: Vec<usize>,
    protocols: Vec<Protocol>,
    burst: usize,
    lag_objects: usize,
    denokv_lag_objects: usize,
    distances: Vec<usize>,
}

/// One log object still to be uploaded, with what proves it was applied.
#[derive(Clone)]
struct Upload {
    rel: String,
    body: Vec<u8>,
    /// Mutations it holds.
    mutations: usize,
    /// Index of the last commit it completes.
    last_commit: usize,
    /// A key set by one of its own commits, and the versionstamp that key
    /// has once the object is applied (or a newer one).
    probe: (Vec<u8>, [u8; 10]),
}

/// A figure of both tools, with the ratio and the target.
struct Line {
    what: String,
    ours: f64,
    theirs: Option<f64>,
    unit: &'static str,
    target: Option<Goal>,
}

/// A target of the issue.
#[derive(Clone, Copy)]
enum Goal {
    /// kvreplica / reference at most this.
    RatioAtMost(f64),
    /// kvreplica / reference at least this.
    RatioAtLeast(f64),
    /// kvreplica's own figure at most this.
    AtMost(f64),
    /// kvreplica's own figure at least this.
    AtLeast(f64),
}

#[derive(Default)]
struct Report {
    lines: Vec<Line>,
    notes: Vec<String>,
}

impl Report {
    fn add(
        &mut self,
        what: impl Into<String>,
        ours: f64,
        theirs: Option<f64>,
        unit: &'static str,
        target: Option<Goal>,
    ) {
        let line = Line {
            what: what.into(),
            ours,
            theirs,
            unit,
            target,
        };
        eprintln!("  {}", line.render());
        self.lines.push(line);
    }

    fn note(&mut self, n: impl Into<String>) {
        let n = n.into();
        eprintln!("  note: {n}");
        self.notes.push(n);
    }
}

impl Line {
    fn render(&self) -> String {
        let fmt = |v: f64| {
            if v.is_nan() {
                "-".to_string()
            } else if v.abs() >= 1000.0 {
                format!("{v:.0}")
            } else if v.abs() >= 10.0 {
                format!("{v:.1}")
            } else {
                format!("{v:.3}")
            }
        };
        let (theirs, ratio) = match self.theirs {
            Some(t) => (fmt(t), self.ours / t),
            None => ("-".into(), f64::NAN),
        };
        let verdict = match self.target {
            None => String::new(),
            Some(goal) => {
                // 0.1 + 0.2 prints as 0.30000000000000004.
                let r = |b: f64| (b * 1000.0).round() / 1000.0;
                let (text, met) = match goal {
                    Goal::RatioAtMost(b) => (
                        format!("ratio <= {b}"),
                        (!ratio.is_nan()).then_some(ratio <= b),
                    ),
                    Goal::RatioAtLeast(b) => (
                        format!("ratio >= {b}"),
                        (!ratio.is_nan()).then_some(ratio >= b),
                    ),
                    Goal::AtMost(b) => (format!("<= {}", r(b)), Some(self.ours <= b)),
                    Goal::AtLeast(b) => (format!(">= {}", r(b)), Some(self.ours >= b)),
                };
                match met {
                    Some(true) => format!("{text}: met"),
                    Some(false) => format!("{text}: MISSED"),
                    None => text,
                }
            }
        };
        format!(
            "{:<44} {:>11} {:>11} {:>7} {:<6} {}",
            self.what,
            fmt(self.ours),
            theirs,
            if ratio.is_nan() {
                "-".into()
            } else {
                format!("{ratio:.2}")
            },
            self.unit,
            verdict
        )
    }
}

pub fn run(args: &[String]) {
    let settings = Settings {
        modes: match crate::arg(args, "--mode").as_deref().unwrap_or("local") {
            "local" => vec![Mode::Local],
            "remote" => vec![Mode::Remote],
            "both" => vec![Mode::Local, Mode::Remote],
            m => panic!("--mode {m}: want local, remote or both"),
        },
        rtt: Duration::from_millis(num(args, "--rtt-ms", 20) as u64),
        runs: num(args, "--runs", 3).max(1),
        read_duration: secs(args, "--read-duration", 2.0),
        read_warmup: secs(args, "--read-warmup", 0.5),
        read_runs: num(args, "--read-runs", 3).max(1),
        clients: list(args, "--clients", &[1, 16, 64]),
        protocols: match crate::arg(args, "--protocol").as_deref().unwrap_or("http1") {
            "http1" => vec![Protocol::Http1],
            "h2c" => vec![Protocol::H2c],
            "both" => vec![Protocol::Http1, Protocol::H2c],
            p => panic!("--protocol {p}: want http1, h2c or both"),
        },
        burst: num(args, "--burst", 200),
        lag_objects: num(args, "--lag-objects", 15),
        denokv_lag_objects: num(args, "--denokv-lag-objects", 4),
        distances: list(args, "--distances", &[1, 100, 10_000]),
    };
    let sizes = list(args, "--sizes", &[10_000, 100_000, 1_000_000]);
    let denokv = std::env::var_os("DENOKV_BIN")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from);
    if let Some(d) = &denokv {
        assert!(d.is_file(), "DENOKV_BIN={} is not a file", d.display());
    }
    let bin = kvreplica_release();
    let mut out = Vec::new();
    for &keys in &sizes {
        for &mode in &settings.modes {
            let report = size_run(&bin, denokv.as_deref(), keys, mode, &settings);
            out.push((keys, mode, report));
        }
    }
    println!();
    println!(
        "compare: {} run(s) per figure (median), reference {}",
        settings.runs,
        denokv
            .as_ref()
            .map_or("not run (set DENOKV_BIN)".into(), |d| d
                .display()
                .to_string())
    );
    for (keys, mode, report) in out {
        println!();
        println!("== {keys} keys, {}", mode_label(mode, &settings));
        println!(
            "{:<44} {:>11} {:>11} {:>7} {:<6} target",
            "figure", "kvreplica", "denokv", "ratio", "unit"
        );
        for l in &report.lines {
            println!("{}", l.render());
        }
        for n in &report.notes {
            println!("note: {n}");
        }
    }
    // Outside clients on one replica served by both (benches/bench/pair.rs).
    if args.iter().any(|a| a == "--h2load" || a == "--scan") {
        let pair = crate::pair::Pair::start(args);
        if args.iter().any(|a| a == "--h2load") {
            crate::h2load::report(&pair, args);
        }
        if args.iter().any(|a| a == "--scan") {
            crate::scan::report(&pair, args);
        }
    }
}

/// What a table of `mode` measured.
fn mode_label(mode: Mode, st: &Settings) -> String {
    match mode {
        Mode::Local => "local: s3s-fs over plain HTTP on 127.0.0.1".into(),
        Mode::Remote => format!(
            "remote: s3s-fs behind a TLS proxy adding {} ms per round trip (HTTPS with a test \
             CA; reads and checkout not run: they do not touch the store)",
            st.rtt.as_millis()
        ),
    }
}

/// The append objects of the fixture in order, each with its probe.
fn uploads(fx: &Fixture) -> Vec<Upload> {
    let index: HashMap<[u8; 10], usize> = fx
        .commits
        .iter()
        .enumerate()
        .map(|(i, c)| (c.versionstamp, i))
        .collect();
    let mut first = fx.last_initial + 1;
    fx.append
        .iter()
        .map(|(rel, body)| {
            let stem = rel
                .trim_start_matches("logs/")
                .trim_end_matches(".bin")
                .to_string();
            let name: LogName = stem.parse().expect("a log object name");
            let batch = format::decode_log(&name, body).expect("a log object");
            let last = batch.entries.last().expect("a non-empty object").stamp;
            assert!(last.is_commit_end(), "{rel} ends mid-commit");
            let last_commit = index[&last.versionstamp().0];
            // A key this object leaves set: the last mutation of it (in
            // this object) is a set, so it reads back with that commit's
            // versionstamp once the object is applied.
            let mut seen = BTreeSet::new();
            let probe = (first..=last_commit)
                .rev()
                .find_map(|i| {
                    let c = &fx.commits[i];
                    c.muts.iter().rev().find_map(|m| {
                        (seen.insert(m.key.clone()) && m.rec.is_some())
                            .then(|| (m.key.clone(), c.versionstamp))
                    })
                })
                .unwrap_or_else(|| panic!("{rel}: leaves no key set"));
            first = last_commit + 1;
            Upload {
                rel: rel.clone(),
                body: body.clone(),
                mutations: batch.entries.len(),
                last_commit,
                probe,
            }
        })
        .collect()
}

fn size_run(bin: &Path, denokv: Option<&Path>, keys: usize, mode: Mode, st: &Settings) -> Report {
    let mut report = Report::default();
    let remote = mode == Mode::Remote;
    let objects = (keys / 100).max(10);
    // The generator averages ~0.69 log objects per commit at these
    // settings; the counts below are the real ones.
    let commits = objects * 145 / 100;
    // Counted in remote mode too (where reads are not run), so both modes
    // generate the same backup.
    let cells = st.protocols.len() * 2 * st.clients.len() * st.read_runs;
    let stream_objects = ((st.read_warmup + st.read_duration + Duration::from_millis(300))
        .as_secs_f64()
        * cells as f64
        / STREAM_EVERY.as_secs_f64()
        * 1.2) as usize
        + 40;
    let kvr_needs = st.burst + 2 * st.lag_objects + stream_objects;
    let dkv_needs = st.burst + st.denokv_lag_objects + stream_objects;
    let append_needed = kvr_needs.max(dkv_needs);
    let t = Instant::now();
    let fx = Fixture::generate(Spec {
        seed: 42,
        keys,
        pre_commits: commits / 2,
        post_commits: commits - commits / 2,
        append_commits: append_needed * 2 + 100,
        max_muts_per_commit: MAX_MUTS_PER_COMMIT,
        muts_per_log: MUTS_PER_LOG,
        ranges: (keys / 20_000).clamp(4, 256),
        empty_range: true,
        format0_logs: 0,
        split_commits: false,
    });
    let uploads = uploads(&fx);
    assert!(
        uploads.len() >= append_needed,
        "{} objects to append, want {append_needed}",
        uploads.len()
    );
    let initial_bytes: usize = fx.initial.iter().map(|(_, b)| b.len()).sum();
    let initial_logs = fx
        .initial
        .iter()
        .filter(|(r, _)| r.starts_with("logs/"))
        .count();
    let final_state = fx.state_at(fx.last_initial);
    eprintln!(
        "\n== {keys} keys, {mode:?}: {} objects ({initial_logs} log objects), {:.1} MB, {} keys at the newest point; \
         {} objects kept back for uploads; generated in {:.1?}",
        fx.initial.len(),
        initial_bytes as f64 / 1e6,
        final_state.len(),
        uploads.len(),
        t.elapsed()
    );
    report.note(format!(
        "backup: {} keys at the newest point, {} objects ({initial_logs} log objects, {} logged mutations), {:.1} MB",
        final_state.len(),
        fx.initial.len(),
        fx.commits[fx.first_logged..=fx.last_initial]
            .iter()
            .map(|c| c.muts.len())
            .sum::<usize>(),
        initial_bytes as f64 / 1e6
    ));

    let s3 = S3Server::start();
    let tools: Vec<Tool> = match denokv {
        Some(_) => vec![Tool::Kvreplica, Tool::Denokv],
        None => vec![Tool::Kvreplica],
    };
    for tool in [Tool::Kvreplica, Tool::Denokv] {
        fx.write_initial(&s3.root().join(BUCKET).join(tool.prefix()));
    }
    let proxy = remote.then(|| {
        let upstream = s3
            .endpoint()
            .trim_start_matches("http://")
            .parse()
            .expect("s3s-fs listens on an IP address");
        DelayProxy::start(upstream, st.rtt)
    });
    // (connections accepted, TLS handshakes completed) by the proxy.
    let accepted = || {
        proxy
            .as_ref()
            .map_or((0, 0), |p| (p.accepted(), p.handshakes()))
    };
    // What the tools (and the raw figures) use; uploads go to the server
    // directly, so the proxy counts the tools' connections only.
    let endpoint = proxy
        .as_ref()
        .map_or_else(|| s3.endpoint(), DelayProxy::endpoint);
    let direct = |tool: Tool| S3Place {
        endpoint: s3.endpoint(),
        bucket: BUCKET.into(),
        prefix: tool.prefix().into(),
        access_key: s3.access_key().into(),
        secret_key: s3.secret_key().into(),
    };
    let place = |tool: Tool| S3Place {
        endpoint: endpoint.clone(),
        ..direct(tool)
    };
    let mut env: Vec<(&str, String)> = vec![
        ("AWS_ACCESS_KEY_ID", s3.access_key().into()),
        ("AWS_SECRET_ACCESS_KEY", s3.secret_key().into()),
        ("AWS_REGION", "us-east-1".into()),
        ("AWS_EC2_METADATA_DISABLED", "true".into()),
    ];
    if let Some(p) = &proxy {
        // Both tools (and the raw figures' client, in this process) load
        // the system's roots, which honour SSL_CERT_FILE: the proxy's CA.
        let ca = p.ca_file().display().to_string();
        std::env::set_var("SSL_CERT_FILE", &ca);
        env.push(("SSL_CERT_FILE", ca));
    }
    let rt = crate::runtime();
    let tmp = tempfile::tempdir().unwrap();

    // 5. The machine's limits.
    let gets: Vec<raw::GetPass> = (0..st.runs)
        .map(|_| rt.block_on(raw::s3_get_all(&place(Tool::Kvreplica), 64)))
        .collect();
    let get_objects_s = median(
        gets.iter()
            .map(|g| g.objects as f64 / g.elapsed.as_secs_f64())
            .collect(),
    );
    let get_mb_s = median(
        gets.iter()
            .map(|g| g.bytes as f64 / 1e6 / g.elapsed.as_secs_f64())
            .collect(),
    );
    let list_ms = median(
        (0..st.runs)
            .map(|_| {
                rt.block_on(raw::s3_list_tail(&place(Tool::Kvreplica)))
                    .as_secs_f64()
                    * 1e3
            })
            .collect(),
    );
    let rows = backup_rows(&fx);
    let insert_rows_s = median(
        (0..st.runs)
            .map(|_| rows.len() as f64 / raw::sqlite_bulk_insert(&rows, tmp.path()).as_secs_f64())
            .collect(),
    );
    report.add(
        "raw S3 GET, 64 in flight (objects/s)",
        get_objects_s,
        None,
        "obj/s",
        None,
    );
    report.add(
        "raw S3 GET, 64 in flight (MB/s)",
        get_mb_s,
        None,
        "MB/s",
        None,
    );
    report.add(
        "raw S3 LIST of logs/ after its last object",
        list_ms,
        None,
        "ms",
        None,
    );
    report.add(
        format!("raw SQLite insert of the {} backup rows", rows.len()),
        insert_rows_s,
        None,
        "rows/s",
        None,
    );

    // 1. Initial sync.
    let mut synced: HashMap<Tool, PathBuf> = HashMap::new();
    // (wall, peak RSS, connections, TLS handshakes), medians.
    let mut sync_figures: HashMap<Tool, (f64, f64, f64, f64)> = HashMap::new();
    for &tool in &tools {
        let mut walls = Vec::new();
        let mut rsss = Vec::new();
        let mut conns = Vec::new();
        let mut shakes = Vec::new();
        for r in 0..st.runs {
            let db = tmp.path().join(format!("{}-sync{r}.sqlite", tool.label()));
            let mut cmd = match tool {
                Tool::Kvreplica => {
                    let mut c = Command::new(bin);
                    c.args(["sync", "--log-level", "warn", "--source"])
                        .arg(format!("s3://{BUCKET}/{}", tool.prefix()))
                        .args(["--s3-endpoint", &endpoint, "--db"])
                        .arg(&db);
                    c
                }
                Tool::Denokv => {
                    let mut c = Command::new(denokv.unwrap());
                    c.arg("--sqlite-path")
                        .arg(&db)
                        .args(["pitr", "sync", "--s3-bucket", BUCKET, "--s3-prefix"])
                        .arg(tool.prefix())
                        .args(["--s3-endpoint", &endpoint]);
                    c
                }
            };
            for (k, v) in &env {
                cmd.env(k, v);
            }
            let before = accepted();
            let (wall, rss) = timed(&mut cmd);
            let after = accepted();
            conns.push((after.0 - before.0) as f64);
            shakes.push((after.1 - before.1) as f64);
            let n = count_kv(&db);
            assert_eq!(
                n,
                final_state.len(),
                "{} sync: {n} keys in kv, want {}",
                tool.label(),
                final_state.len()
            );
            eprintln!(
                "  {} initial sync run {r}: {wall:.2} s, peak RSS {:.1} MiB",
                tool.label(),
                rss as f64 / 1024.0
            );
            walls.push(wall);
            rsss.push(rss as f64 / 1024.0);
            if r + 1 == st.runs {
                synced.insert(tool, db);
            } else {
                remove_db(&db);
            }
        }
        sync_figures.insert(
            tool,
            (median(walls), median(rsss), median(conns), median(shakes)),
        );
    }
    let ours = sync_figures[&Tool::Kvreplica];
    let theirs = sync_figures.get(&Tool::Denokv).copied();
    report.add(
        "initial sync wall time",
        ours.0,
        theirs.map(|t| t.0),
        "s",
        Some(Goal::RatioAtMost(0.5)),
    );
    report.add(
        "initial sync keys/s",
        final_state.len() as f64 / ours.0,
        theirs.map(|t| final_state.len() as f64 / t.0),
        "keys/s",
        None,
    );
    report.add(
        "initial sync MB/s",
        initial_bytes as f64 / 1e6 / ours.0,
        theirs.map(|t| initial_bytes as f64 / 1e6 / t.0),
        "MB/s",
        None,
    );
    report.add(
        "initial sync peak RSS",
        ours.1,
        theirs.map(|t| t.1),
        "MiB",
        Some(Goal::RatioAtMost(1.0)),
    );
    if remote {
        report.add(
            "initial sync S3 connections opened",
            ours.2,
            theirs.map(|t| t.2),
            "conns",
            None,
        );
        report.add(
            "initial sync TLS handshakes",
            ours.3,
            theirs.map(|t| t.3),
            "shakes",
            None,
        );
    }
    report.add(
        "  as a fraction of raw SQLite insert rate",
        rows.len() as f64 / ours.0 / insert_rows_s,
        theirs.map(|t| rows.len() as f64 / t.0 / insert_rows_s),
        "",
        None,
    );
    report.add(
        "  log objects/s as a fraction of raw S3 GET",
        initial_logs as f64 / ours.0 / get_objects_s,
        theirs.map(|t| initial_logs as f64 / t.0 / get_objects_s),
        "",
        None,
    );

    // 2. Catch-up apply rate and replication lag, then 3. reads.
    let mut steady: HashMap<Tool, Steady> = HashMap::new();
    for &tool in &tools {
        let db = &synced[&tool];
        let s = steady_and_reads(
            &rt,
            tool,
            bin,
            denokv,
            db,
            &place(tool),
            &direct(tool),
            &env,
            &fx,
            &uploads,
            st,
            &mut report,
            remote.then_some(&accepted as &dyn Fn() -> (u64, u64)),
        );
        steady.insert(tool, s);
    }
    let o = &steady[&Tool::Kvreplica];
    let t = steady.get(&Tool::Denokv);
    report.add(
        format!("catch-up apply after a {}-object burst", st.burst),
        o.apply_rate,
        t.map(|t| t.apply_rate),
        "muts/s",
        None,
    );
    report.add(
        "  as a fraction of raw SQLite insert rate",
        o.apply_rate / insert_rows_s,
        t.map(|t| t.apply_rate / insert_rows_s),
        "",
        Some(Goal::AtLeast(0.5)),
    );
    for (label, lags, poll) in [
        ("lag at --poll-interval 100ms", &o.lag_100ms, 0.1),
        ("lag at --poll-interval 1s", &o.lag_1s, 1.0),
    ] {
        report.add(
            format!("{label}, median (denokv: 10-15 s polls)"),
            quantile(lags, 0.5),
            t.map(|t| quantile(&t.lag, 0.5)),
            "s",
            None,
        );
        report.add(
            format!("{label}, max of {}", lags.len()),
            quantile(lags, 1.0),
            t.map(|t| quantile(&t.lag, 1.0)),
            "s",
            Some(Goal::AtMost(poll + 0.2)),
        );
    }
    for (key, ours) in &o.reads {
        let theirs = t.and_then(|t| t.reads.iter().find(|(k, _)| k == key).map(|(_, v)| *v));
        let (phase, proto, kind, c, what) = key;
        let target = (*what == "req/s").then_some(Goal::RatioAtLeast(1.5));
        let unit = if *what == "req/s" { "req/s" } else { "ms" };
        report.add(
            format!("read {phase} {proto} {kind} c={c} {what}"),
            *ours,
            theirs,
            unit,
            target,
        );
    }

    if remote {
        report.add(
            "S3 connections opened during catch-up and lag",
            o.conns as f64,
            t.map(|t| t.conns as f64),
            "conns",
            None,
        );
        report.add(
            "TLS handshakes during catch-up and lag",
            o.handshakes as f64,
            t.map(|t| t.handshakes as f64),
            "shakes",
            None,
        );
        // Checkout does not touch the store.
        return report;
    }

    // 4. Checkout.
    let mut checkout: HashMap<Tool, Vec<(String, f64)>> = HashMap::new();
    for &tool in &tools {
        let db = &synced[&tool];
        let newest = steady[&tool].newest_commit;
        checkout.insert(
            tool,
            checkouts(tool, bin, denokv, db, &fx, newest, st, tmp.path()),
        );
    }
    for (label, ours) in &checkout[&Tool::Kvreplica] {
        let theirs = checkout
            .get(&Tool::Denokv)
            .and_then(|v| v.iter().find(|(l, _)| l == label).map(|(_, s)| *s));
        report.add(
            format!("checkout {label} (CLI, fresh copy)"),
            *ours,
            theirs,
            "s",
            Some(Goal::RatioAtMost(0.5)),
        );
    }
    for (label, ms) in &steady[&Tool::Kvreplica].admin_checkout {
        let goal = (label == "100 back").then_some(Goal::AtMost(5.0)); // issue 16
        for (what, q, goal) in [("median", 0.5, goal), ("p99", 0.99, None)] {
            let v = quantile(ms, q);
            report.add(
                format!("checkout {label} (admin API, {what})"),
                v,
                None,
                "ms",
                goal,
            );
        }
    }
    drop(s3);
    report
}

/// Every row the initial sync writes, in backup order: the snapshot's
/// entries, then every logged mutation (a clear as an absent value).
fn backup_rows(fx: &Fixture) -> Vec<raw::Row> {
    let mut rows = Vec::new();
    for (rel, body) in &fx.initial {
        let Some(stem) = rel
            .strip_prefix("snapshots/")
            .and_then(|r| r.strip_suffix(".bin"))
        else {
            continue;
        };
        let name: SnapshotName = stem.parse().expect("a snapshot name");
        for e in format::decode_snapshot(&name, body).expect("a snapshot range") {
            rows.push(raw::Row {
                key: e.key,
                value: Some(e.record.value),
                encoding: e.record.encoding,
                version: e.record.versionstamp.version() as i64,
            });
        }
    }
    for c in &fx.commits[fx.first_logged..=fx.last_initial] {
        let version = u64::from_be_bytes(c.versionstamp[..8].try_into().unwrap()) as i64;
        for m in &c.muts {
            rows.push(raw::Row {
                key: m.key.clone(),
                value: m.rec.as_ref().map(|r| r.value.clone()),
                encoding: m.rec.as_ref().map_or(0, |r| r.encoding),
                version,
            });
        }
    }
    rows
}

fn count_kv(db: &Path) -> usize {
    let conn = rusqlite::Connection::open(db).unwrap();
    conn.query_row("select count(*) from kv", [], |r| r.get::<_, i64>(0))
        .unwrap() as usize
}

fn remove_db(db: &Path) {
    for suffix in ["", "-wal", "-shm", ".lock"] {
        let mut p = db.as_os_str().to_owned();
        p.push(suffix);
        let _ = std::fs::remove_file(PathBuf::from(p));
    }
}

/// Copies a replica file (and its WAL, if any) to `to`.
fn copy_db(from: &Path, to: &Path) {
    remove_db(to);
    std::fs::copy(from, to).unwrap();
    // On disk before the timed run: else the first checkout's fsync writes
    // back the whole copy, whatever the checkout itself wrote.
    std::fs::File::open(to).unwrap().sync_all().unwrap();
    let mut wal = from.as_os_str().to_owned();
    wal.push("-wal");
    let wal = PathBuf::from(wal);
    if wal.exists() {
        let mut dst = to.as_os_str().to_owned();
        dst.push("-wal");
        std::fs::copy(&wal, PathBuf::from(dst)).unwrap();
    }
}

/// `q`-quantile (0..=1) of unsorted values; NaN when empty.
pub(crate) fn quantile(v: &[f64], q: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let rank = ((q * s.len() as f64).ceil() as usize).clamp(1, s.len());
    s[rank - 1]
}

/// (phase, protocol, read kind, clients, figure) of one read result.
type ReadKey = (
    &'static str,
    &'static str,
    &'static str,
    usize,
    &'static str,
);

/// What the steady-state phase measured for one tool.
#[derive(Default)]
struct Steady {
    apply_rate: f64,
    lag_100ms: Vec<f64>,
    lag_1s: Vec<f64>,
    /// The reference's lag at its fixed 10–15 s polling.
    lag: Vec<f64>,
    /// ((phase, protocol, kind, clients, figure), median value).
    reads: Vec<(ReadKey, f64)>,
    /// Index of the newest commit the replica holds at the end.
    newest_commit: usize,
    /// S3 connections the tool opened during catch-up and lag (remote mode).
    conns: u64,
    /// TLS handshakes the tool completed during catch-up and lag.
    handshakes: u64,
    /// kvreplica's admin-API checkouts at the end (`checkout::admin_api`).
    admin_checkout: Vec<(String, Vec<f64>)>,
}

/// Uploads objects through the S3 API (a real PUT, as Deploy's backup
/// does).
async fn put(place: &S3Place, u: &Upload) {
    place
        .bucket()
        .put_object(format!("{}{}", place.prefix, u.rel), &u.body)
        .await
        .unwrap_or_else(|e| panic!("PUT {}: {e}", u.rel));
}

/// Whether the probe key reads back with at least the probe versionstamp
/// (`version_only`: its first 8 bytes, see [`Expect::version_only`]).
async fn probe_visible(
    http: &reqwest::Client,
    kv_url: &str,
    database_id: &str,
    probe: &(Vec<u8>, [u8; 10]),
    version_only: bool,
) -> bool {
    let got = server::try_read_keys(http, kv_url, database_id, std::slice::from_ref(&probe.0))
        .await
        .ok();
    let n = if version_only { 8 } else { 10 };
    matches!(got.as_deref(), Some([Some(e)])
        if e.versionstamp.len() == 10 && e.versionstamp[..n] >= probe.1[..n])
}

/// Polls the probe until visible; returns when it became visible.
async fn wait_probe(
    http: &reqwest::Client,
    kv_url: &str,
    database_id: &str,
    probe: &(Vec<u8>, [u8; 10]),
    version_only: bool,
) -> Instant {
    let started = Instant::now();
    loop {
        if probe_visible(http, kv_url, database_id, probe, version_only).await {
            return Instant::now();
        }
        assert!(
            started.elapsed() < WAIT,
            "key {} did not reach {} within {WAIT:?}",
            hex::encode(&probe.0),
            hex::encode(probe.1)
        );
        tokio::time::sleep(PROBE_EVERY).await;
    }
}

#[allow(clippy::too_many_arguments)]
fn start_server(
    tool: Tool,
    bin: &Path,
    denokv: Option<&Path>,
    db: &Path,
    place: &S3Place,
    env: &[(&str, String)],
    poll: &str,
    sync: bool,
) -> Server {
    match tool {
        Tool::Kvreplica => {
            let mut cmd = Command::new(bin);
            cmd.args(["serve", "--source"])
                .arg(format!("s3://{}/{}", place.bucket, place.prefix))
                .args(["--s3-endpoint", &place.endpoint, "--db"])
                .arg(db)
                .args(["--poll-interval", poll]);
            for (k, v) in env {
                cmd.env(k, v);
            }
            assert!(sync, "kvreplica serve always follows its source");
            Server::start_kvreplica(cmd, WAIT)
        }
        Tool::Denokv => {
            let extra: Vec<String> = if sync {
                vec![
                    "--sync-from-s3".into(),
                    "--s3-bucket".into(),
                    place.bucket.clone(),
                    "--s3-prefix".into(),
                    place.prefix.clone(),
                    "--s3-endpoint".into(),
                    place.endpoint.clone(),
                ]
            } else {
                vec!["--read-only".into()]
            };
            Server::start_denokv(denokv.unwrap(), db, &extra, env, WAIT)
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn steady_and_reads(
    rt: &tokio::runtime::Runtime,
    tool: Tool,
    bin: &Path,
    denokv: Option<&Path>,
    db: &Path,
    place: &S3Place,
    upload: &S3Place,
    env: &[(&str, String)],
    fx: &Fixture,
    uploads: &[Upload],
    st: &Settings,
    report: &mut Report,
    // Remote mode: the proxy's count of accepted connections.
    remote: Option<&dyn Fn() -> (u64, u64)>,
) -> Steady {
    let mut s = Steady::default();
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(4)
        .tcp_nodelay(true)
        .build()
        .unwrap();
    let mut next = 0usize;
    let label = tool.label();

    // Catch-up: a burst of objects lands while no server runs; the time
    // from starting the server to the burst's last commit being readable.
    let burst = &uploads[next..next + st.burst];
    next += st.burst;
    rt.block_on(async {
        for u in burst {
            put(upload, u).await;
        }
    });
    let mutations: usize = burst.iter().map(|u| u.mutations).sum();
    let conns_before = remote.map_or((0, 0), |a| a());
    let started = Instant::now();
    let srv = start_server(tool, bin, denokv, db, place, env, "100ms", true);
    let database_id = rt.block_on(server::database_id(&http, &srv.kv_url));
    let done = rt.block_on(wait_probe(
        &http,
        &srv.kv_url,
        &database_id,
        &burst.last().unwrap().probe,
        tool == Tool::Denokv,
    ));
    let took = done - started;
    s.apply_rate = mutations as f64 / took.as_secs_f64();
    eprintln!(
        "  {label}: {} objects, {mutations} mutations caught up {took:.2?} after start: {:.0} mutations/s",
        burst.len(),
        s.apply_rate
    );

    // Replication lag: one object at a time, each uploaded at a random
    // moment of the polling cycle; the time from the end of its PUT to its
    // commit being readable.
    let lag_run = |srv: &Server, n: usize, next: &mut usize, poll: Duration| -> Vec<f64> {
        let mut rng = crate::common::fixture::Rng::new(0x1a6 + *next as u64);
        let mut lags = Vec::new();
        for u in &uploads[*next..*next + n] {
            std::thread::sleep(Duration::from_secs_f64(
                poll.as_secs_f64() * rng.below(1000) as f64 / 1000.0,
            ));
            let lag = rt.block_on(async {
                put(upload, u).await;
                let put_done = Instant::now();
                wait_probe(
                    &http,
                    &srv.kv_url,
                    &database_id,
                    &u.probe,
                    tool == Tool::Denokv,
                )
                .await
                    - put_done
            });
            lags.push(lag.as_secs_f64());
        }
        *next += n;
        eprintln!(
            "  {label}: lag over {n} uploads: median {:.3} s, max {:.3} s",
            quantile(&lags, 0.5),
            quantile(&lags, 1.0)
        );
        lags
    };
    let srv = match tool {
        Tool::Kvreplica => {
            s.lag_100ms = lag_run(&srv, st.lag_objects, &mut next, Duration::from_millis(100));
            srv.stop();
            let srv = start_server(tool, bin, denokv, db, place, env, "1s", true);
            s.lag_1s = lag_run(&srv, st.lag_objects, &mut next, Duration::from_secs(1));
            srv
        }
        Tool::Denokv => {
            s.lag = lag_run(
                &srv,
                st.denokv_lag_objects,
                &mut next,
                Duration::from_secs(15),
            );
            srv
        }
    };
    let newest = uploads[next - 1].last_commit;
    if let Some(accepted) = remote {
        // Reads do not touch the store: left to the local mode.
        let now = accepted();
        s.conns = now.0 - conns_before.0;
        s.handshakes = now.1 - conns_before.1;
        srv.stop();
        s.newest_commit = newest;
        return s;
    }

    // Reads, idle: the replica holds exactly the fixture's state at
    // `newest`. kvreplica keeps following (nothing new arrives); denokv
    // runs `--read-only` on the same file.
    let base = fx.state_at(newest);
    let stable = fx.keys_kept_after(&base, newest);
    let idle = Arc::new(Expect {
        keys: stable.clone(),
        base: base.clone(),
        fixed: true,
        version_only: tool == Tool::Denokv,
    });
    let loaded = Arc::new(Expect {
        keys: stable,
        base,
        fixed: false,
        version_only: tool == Tool::Denokv,
    });
    let srv = match tool {
        Tool::Kvreplica => srv,
        Tool::Denokv => {
            srv.stop();
            start_server(tool, bin, denokv, db, place, env, "", false)
        }
    };
    read_cells(rt, &srv, &database_id, "idle", &idle, st, &mut s);
    let srv = match tool {
        Tool::Kvreplica => srv,
        Tool::Denokv => {
            srv.stop();
            start_server(tool, bin, denokv, db, place, env, "", true)
        }
    };

    // Reads, loaded: a thread uploads the next object every 50 ms.
    let stop = Arc::new(AtomicBool::new(false));
    let stream: Vec<Upload> = uploads[next..].to_vec();
    let stream_place = upload.clone();
    let stop2 = stop.clone();
    let streamer = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let started = Instant::now();
        let mut sent = 0usize;
        // Bounded by the number of objects.
        for (i, u) in stream.iter().enumerate() {
            if stop2.load(Ordering::Relaxed) {
                break;
            }
            let due = started + STREAM_EVERY * i as u32;
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
            rt.block_on(put(&stream_place, u));
            sent += 1;
        }
        sent
    });
    read_cells(rt, &srv, &database_id, "loaded", &loaded, st, &mut s);
    stop.store(true, Ordering::Relaxed);
    let sent = streamer.join().expect("the upload stream");
    assert!(
        next + sent < uploads.len(),
        "the upload stream ran out of objects during the loaded runs"
    );
    next += sent;
    s.newest_commit = uploads[next - 1].last_commit;
    // denokv applies on its own 10–15 s schedule: wait for it too.
    let t0 = Instant::now();
    rt.block_on(wait_probe(
        &http,
        &srv.kv_url,
        &database_id,
        &uploads[next - 1].probe,
        tool == Tool::Denokv,
    ));
    report.note(format!(
        "{label}: {sent} objects streamed during the loaded reads, the last readable {:.2?} after the stream stopped",
        t0.elapsed()
    ));
    if tool == Tool::Kvreplica {
        s.admin_checkout = crate::checkout::admin_api(rt, &srv.admin_url, &st.distances, 20);
    }
    srv.stop();
    s
}

fn read_cells(
    rt: &tokio::runtime::Runtime,
    srv: &Server,
    database_id: &str,
    phase: &'static str,
    expect: &Arc<Expect>,
    st: &Settings,
    s: &mut Steady,
) {
    let target = Arc::new(Target {
        kv_url: srv.kv_url.clone(),
        database_id: database_id.to_string(),
    });
    for &protocol in &st.protocols {
        for kind in [Kind::Point, Kind::Range] {
            for &c in &st.clients {
                let mut rps = Vec::new();
                let mut p50 = Vec::new();
                let mut p99 = Vec::new();
                for _ in 0..st.read_runs {
                    let o = rt.block_on(load::run(
                        target.clone(),
                        expect.clone(),
                        protocol,
                        kind,
                        c,
                        st.read_warmup,
                        st.read_duration,
                    ));
                    assert_eq!(
                        o.errors,
                        0,
                        "{phase} {} {} c={c}: {} wrong answers, e.g. {:?}",
                        protocol.label(),
                        kind.label(),
                        o.errors,
                        o.first_errors
                    );
                    rps.push(o.requests_per_second());
                    p50.push(o.percentile_ms(50.0));
                    p99.push(o.percentile_ms(99.0));
                }
                let key = |what| (phase, protocol.label(), kind.label(), c, what);
                s.reads.push((key("req/s"), median(rps)));
                s.reads.push((key("p50"), median(p50)));
                s.reads.push((key("p99"), median(p99)));
            }
        }
    }
}

/// Times the CLI checkout `d` commits back from `newest` and back to the
/// newest point, each on a fresh copy of the replica, `runs` times.
#[allow(clippy::too_many_arguments)]
fn checkouts(
    tool: Tool,
    bin: &Path,
    denokv: Option<&Path>,
    db: &Path,
    fx: &Fixture,
    newest: usize,
    st: &Settings,
    tmp: &Path,
) -> Vec<(String, f64)> {
    let mut out = Vec::new();
    let work = tmp.join(format!("{}-checkout.sqlite", tool.label()));
    for &d in &st.distances {
        // Recoverable points are the commits after the DV commit; a
        // distance beyond the oldest one is measured to the oldest one.
        let available = newest - fx.dv_commit - 1;
        let (d, label) = if d <= available {
            (d, format!("{d} back"))
        } else {
            eprintln!("  {}: the oldest point is {available} back", tool.label());
            (available, "to the oldest point".to_string())
        };
        let target = newest - d;
        let vs = hex::encode(fx.commits[target].versionstamp);
        let want_back = fx.state_at(target).len();
        let want_latest = fx.state_at(newest).len();
        let mut back = Vec::new();
        let mut latest = Vec::new();
        for _ in 0..st.runs {
            copy_db(db, &work);
            let run = |target: &str| -> f64 {
                let mut cmd = match tool {
                    Tool::Kvreplica => {
                        let mut c = Command::new(bin);
                        c.args(["pitr", "checkout", "--db"]).arg(&work).arg(target);
                        c
                    }
                    Tool::Denokv => {
                        let mut c = Command::new(denokv.unwrap());
                        c.arg("--sqlite-path")
                            .arg(&work)
                            .args(["pitr", "checkout", target]);
                        c
                    }
                };
                timed(&mut cmd).0
            };
            back.push(run(&vs));
            assert_eq!(count_kv(&work), want_back, "{} checkout {vs}", tool.label());
            let to_latest = match tool {
                Tool::Kvreplica => "latest".to_string(),
                Tool::Denokv => "ffffffffffffffffffff".to_string(),
            };
            latest.push(run(&to_latest));
            assert_eq!(
                count_kv(&work),
                want_latest,
                "{} checkout back",
                tool.label()
            );
        }
        eprintln!(
            "  {} checkout {d} back: {:.3} s, back to latest {:.3} s",
            tool.label(),
            median(back.clone()),
            median(latest.clone())
        );
        out.push((label.clone(), median(back)));
        out.push((format!("{label}, then to latest"), median(latest)));
    }
    remove_db(&work);
    out
}

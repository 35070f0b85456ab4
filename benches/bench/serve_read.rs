//! `serve-read`: KV Connect `snapshot_read` throughput and latency of
//! `kvreplica serve` over a generated ~100k-key replica, first idle, then
//! while the sync applies a steady stream of new log objects.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::common::fixture::{Fixture, Spec};
use crate::load::{self, Expect, Kind, Outcome, Protocol, Target};
use crate::server::{self, Server};
use crate::{arg, kvreplica_release, list, num, secs};

/// Bound on the sync catching up with the last appended object.
const CATCH_UP_TIMEOUT: Duration = Duration::from_secs(300);
/// Target mutations per appended log object (the fixture writer cuts at
/// commit ends, so objects hold a few more).
const APPEND_MUTS_PER_LOG: usize = 50;
/// Largest commit of the workload (commits average about half of it).
const MAX_MUTS_PER_COMMIT: usize = 20;

/// One row of the result table.
struct Row {
    phase: &'static str,
    protocol: Protocol,
    kind: Kind,
    clients: usize,
    outcome: Outcome,
    /// Cores used by the server and by the load generator during the run.
    server_cores: f64,
    client_cores: f64,
    /// Commits the visible state was behind the newest appended one at
    /// the end of the run (loaded phase only).
    behind: Option<usize>,
}

/// CPU time (user + system) of a process so far, from /proc.
fn cpu_time(pid: &str) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name, which is in parentheses.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<u64> = rest
        .split_whitespace()
        .map(|x| x.parse().unwrap_or(0))
        .collect();
    // utime and stime are fields 14 and 15 of the line, 12 and 13 here.
    let ticks = f.get(11).copied().unwrap_or(0) + f.get(12).copied().unwrap_or(0);
    Duration::from_secs_f64(ticks as f64 / clock_ticks() as f64)
}

fn clock_ticks() -> u64 {
    static TICKS: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(100)
    })
}

/// Copies log objects into the source directory, one every `interval`,
/// each written aside and renamed into `logs/` so the sync never lists a
/// half-written object.
struct Appender {
    stop: Arc<AtomicBool>,
    /// Index (into the fixture's commits) of the newest complete commit
    /// written so far.
    newest: Arc<AtomicUsize>,
    handle: std::thread::JoinHandle<AppendReport>,
}

struct AppendReport {
    written: usize,
    /// Index of the newest complete commit written.
    newest: usize,
    /// The objects ran out before the appender was stopped.
    exhausted: bool,
    /// Largest delay of a write behind its schedule.
    worst_delay: Duration,
    elapsed: Duration,
}

impl Appender {
    fn start(
        objects: Vec<(String, Vec<u8>, usize)>,
        src: PathBuf,
        staging: PathBuf,
        interval: Duration,
        newest: usize,
    ) -> Appender {
        let stop = Arc::new(AtomicBool::new(false));
        let newest = Arc::new(AtomicUsize::new(newest));
        let (s, n) = (stop.clone(), newest.clone());
        let handle = std::thread::spawn(move || {
            std::fs::create_dir_all(&staging).unwrap();
            let started = Instant::now();
            let mut report = AppendReport {
                written: 0,
                newest: n.load(Ordering::Relaxed),
                exhausted: true,
                worst_delay: Duration::ZERO,
                elapsed: Duration::ZERO,
            };
            // Bounded by the number of objects.
            for (i, (rel, body, last_commit)) in objects.into_iter().enumerate() {
                let due = started + interval * i as u32;
                loop {
                    if s.load(Ordering::Relaxed) {
                        break;
                    }
                    let now = Instant::now();
                    if now >= due {
                        break;
                    }
                    std::thread::sleep((due - now).min(Duration::from_millis(10)));
                }
                if s.load(Ordering::Relaxed) {
                    report.exhausted = false;
                    break;
                }
                report.worst_delay = report.worst_delay.max(due.elapsed());
                let tmp = staging.join("object.tmp");
                std::fs::write(&tmp, body).unwrap();
                std::fs::rename(&tmp, src.join(&rel)).unwrap();
                n.store(last_commit, Ordering::Relaxed);
                report.newest = last_commit;
                report.written += 1;
            }
            report.elapsed = started.elapsed();
            report
        });
        Appender {
            stop,
            newest,
            handle,
        }
    }

    fn newest(&self) -> usize {
        self.newest.load(Ordering::Relaxed)
    }

    fn finish(self) -> AppendReport {
        self.stop.store(true, Ordering::Relaxed);
        self.handle.join().expect("the appender thread")
    }
}

pub fn run(args: &[String]) {
    let keys = num(args, "--keys", 100_000);
    let commits = num(args, "--commits", 1000);
    let duration = secs(args, "--duration", 5.0);
    let warmup = secs(args, "--warmup", 1.0);
    let clients = list(args, "--clients", &[1, 16, 64]);
    let interval = Duration::from_millis(num(args, "--append-every-ms", 50).max(1) as u64);
    let protocols = match arg(args, "--protocol").as_deref().unwrap_or("both") {
        "http1" => vec![Protocol::Http1],
        "h2c" => vec![Protocol::H2c],
        "both" => vec![Protocol::Http1, Protocol::H2c],
        p => panic!("--protocol {p}: want http1, h2c or both"),
    };
    let kinds = [Kind::Point, Kind::Range];
    let runs = protocols.len() * kinds.len() * clients.len();
    // The loaded phase: every run plus a second between runs; the append
    // stream must outlast it.
    let loaded_time =
        (warmup + duration + Duration::from_secs(1)) * runs as u32 + Duration::from_secs(5);
    let objects_needed = (loaded_time.as_secs_f64() / interval.as_secs_f64() * 1.3) as usize + 50;

    let bin = kvreplica_release();
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("backup");
    let staging = tmp.path().join("staging");
    let db = tmp.path().join("replica.sqlite");

    // The replica, and the log objects to append later: objects hold
    // about 5.4 commits, so 6 commits per needed object leave a margin
    // (checked below).
    let t = Instant::now();
    let fx = Fixture::generate(Spec {
        seed: 42,
        keys,
        pre_commits: commits / 2,
        post_commits: commits - commits / 2,
        append_commits: objects_needed * 6,
        max_muts_per_commit: MAX_MUTS_PER_COMMIT,
        muts_per_log: APPEND_MUTS_PER_LOG,
        ranges: (keys / 20_000).clamp(4, 256),
        empty_range: true,
        format0_logs: 0,
        split_commits: false,
    });
    fx.write_initial(&src);
    assert!(
        fx.append.len() >= objects_needed,
        "{} objects to append, want {objects_needed}",
        fx.append.len()
    );
    let index: HashMap<[u8; 10], usize> = fx
        .commits
        .iter()
        .enumerate()
        .map(|(i, c)| (c.versionstamp, i))
        .collect();
    // Each object ends on a complete commit (split_commits is off): the
    // last 12-byte stamp of its name, less the 2-byte index.
    let append: Vec<(String, Vec<u8>, usize)> = fx
        .append
        .iter()
        .map(|(rel, body)| {
            let stem = rel.trim_end_matches(".bin");
            let last = stem.rsplit('_').next().unwrap();
            assert!(last.ends_with("ffff"), "{rel} ends mid-commit");
            let mut vs = [0u8; 10];
            hex::decode_to_slice(&last[..20], &mut vs).unwrap();
            (rel.clone(), body.clone(), index[&vs])
        })
        .collect();
    let base = fx.state_at(fx.last_initial);
    let stable = fx.keys_kept_after(&base, fx.last_initial);
    let appended_muts: usize = fx.commits[fx.last_initial + 1..]
        .iter()
        .map(|c| c.muts.len())
        .sum();
    eprintln!(
        "generated in {:.1?}: {} keys at the newest point ({} never cleared later), {} logged commits; \
         {} objects to append ({} commits, {} mutations, {:.1} commits per object)",
        t.elapsed(),
        base.len(),
        stable.len(),
        fx.last_initial - fx.first_logged + 1,
        append.len(),
        fx.commits.len() - fx.last_initial - 1,
        appended_muts,
        (fx.commits.len() - fx.last_initial - 1) as f64 / append.len() as f64,
    );
    let latest_initial = hex::encode(fx.commits[fx.last_initial].versionstamp);

    let rt = crate::runtime();
    let source = format!("file://{}/", src.display());
    let (mut srv, http, database_id, _) =
        server::start_synced(&rt, &bin, &source, &db, &latest_initial);
    let server_pid = srv.pid().to_string();
    let target = Arc::new(Target {
        kv_url: srv.kv_url.clone(),
        database_id,
    });

    let mut rows = Vec::new();
    let one_run = |srv: &mut Server,
                   rows: &mut Vec<Row>,
                   phase: &'static str,
                   expect: &Arc<Expect>,
                   protocol: Protocol,
                   kind: Kind,
                   c: usize|
     -> (f64, f64) {
        srv.assert_running();
        let (s0, c0, t0) = (cpu_time(&server_pid), cpu_time("self"), Instant::now());
        let outcome = rt.block_on(load::run(
            target.clone(),
            expect.clone(),
            protocol,
            kind,
            c,
            warmup,
            duration,
        ));
        let wall = t0.elapsed().as_secs_f64();
        let server_cores = (cpu_time(&server_pid) - s0).as_secs_f64() / wall;
        let client_cores = (cpu_time("self") - c0).as_secs_f64() / wall;
        eprintln!(
            "{phase} {} {} c={c}: {:.0} req/s, p50 {:.2} ms, p99 {:.2} ms, {} errors",
            protocol.label(),
            kind.label(),
            outcome.requests_per_second(),
            outcome.percentile_ms(50.0),
            outcome.percentile_ms(99.0),
            outcome.errors
        );
        rows.push(Row {
            phase,
            protocol,
            kind,
            clients: c,
            outcome,
            server_cores,
            client_cores,
            behind: None,
        });
        (server_cores, client_cores)
    };

    // Idle: the replica stays at the newest initial commit.
    let idle = Arc::new(Expect {
        keys: stable.clone(),
        base: base.clone(),
        fixed: true,
        version_only: false,
    });
    for &protocol in &protocols {
        for kind in kinds {
            for &c in &clients {
                one_run(&mut srv, &mut rows, "idle", &idle, protocol, kind, c);
            }
        }
    }
    rt.block_on(async {
        let at = server::current(&http, &srv.admin_url).await;
        assert_eq!(at, latest_initial, "the replica moved while idle");
    });

    // Loaded: one new log object every `interval` while reading.
    let loaded = Arc::new(Expect {
        keys: stable,
        base,
        fixed: false,
        version_only: false,
    });
    let appender = Appender::start(append, src.clone(), staging, interval, fx.last_initial);
    std::thread::sleep(Duration::from_secs(2));
    for &protocol in &protocols {
        for kind in kinds {
            for &c in &clients {
                one_run(&mut srv, &mut rows, "loaded", &loaded, protocol, kind, c);
                let newest = appender.newest();
                let at = rt.block_on(server::current(&http, &srv.admin_url));
                let mut vs = [0u8; 10];
                hex::decode_to_slice(&at, &mut vs).unwrap();
                rows.last_mut().unwrap().behind = Some(newest.saturating_sub(index[&vs]));
            }
        }
    }
    let report = appender.finish();
    srv.assert_running();
    let newest_vs = hex::encode(fx.commits[report.newest].versionstamp);
    let catch_up = rt.block_on(server::wait_visible(
        &http,
        &srv.admin_url,
        &newest_vs,
        CATCH_UP_TIMEOUT,
    ));
    let problems = srv.problems();
    let log = srv.log();
    let status = srv.stop();

    // The table.
    println!();
    println!(
        "serve-read: {} keys, snapshot_read, {:.1} s per run after a {:.1} s warm-up, one connection per client",
        keys,
        duration.as_secs_f64(),
        warmup.as_secs_f64()
    );
    println!(
        "{:<7} {:<8} {:<9} {:>7} {:>8} {:>8} {:>8} {:>8} {:>6} {:>6} {:>7} {:>7} {:>7}",
        "phase",
        "protocol",
        "read",
        "clients",
        "req/s",
        "p50 ms",
        "p99 ms",
        "max ms",
        ">20ms",
        "errors",
        "srv CPU",
        "gen CPU",
        "behind"
    );
    for r in &rows {
        println!(
            "{:<7} {:<8} {:<9} {:>7} {:>8.0} {:>8.2} {:>8.2} {:>8.1} {:>6} {:>6} {:>7.2} {:>7.2} {:>7}",
            r.phase,
            r.protocol.label(),
            r.kind.label(),
            r.clients,
            r.outcome.requests_per_second(),
            r.outcome.percentile_ms(50.0),
            r.outcome.percentile_ms(99.0),
            r.outcome.max_ms(),
            r.outcome.slower_than(20),
            r.outcome.errors,
            r.server_cores,
            r.client_cores,
            r.behind.map_or("-".to_string(), |b| b.to_string())
        );
    }
    println!(
        "(>20ms: requests that took 20 ms or more; srv/gen CPU: cores used by the server / the \
         load generator; behind: commits the visible state trailed the newest appended one at \
         the end of the run)"
    );
    println!(
        "append stream: {} objects in {:.1?} (one per {interval:?}, worst delay {:.1?}); \
         caught up with the last one {}",
        report.written,
        report.elapsed,
        report.worst_delay,
        match &catch_up {
            Ok(d) => format!("{d:.1?} after the stream stopped"),
            Err(e) => format!("NOT: {e}"),
        }
    );
    println!("server: {status}, {} WARN/ERROR lines", problems.len());
    for p in problems.iter().take(10) {
        println!("  {p}");
    }

    let errors: u64 = rows.iter().map(|r| r.outcome.errors).sum();
    for r in rows.iter().filter(|r| r.outcome.errors > 0) {
        eprintln!(
            "{} {} {} c={}: first errors: {:#?}",
            r.phase,
            r.protocol.label(),
            r.kind.label(),
            r.clients,
            r.outcome.first_errors
        );
    }
    assert!(
        !report.exhausted,
        "the append stream ran out before the loaded phase ended: raise --commits or lower --duration"
    );
    assert!(
        errors == 0 && catch_up.is_ok() && status.success(),
        "the benchmark saw {errors} failed requests, catch-up {catch_up:?}, server exit {status}; server log:\n{log}"
    );
}

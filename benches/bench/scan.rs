//! `scan`: the Deno CLI's own KV client (`KVREPLICA_TEST_DENO`, from
//! `scripts/install-test-tools.sh`) reading a 100k-key replica the way an
//! analytics job does: a full scan, `kv.list({prefix: []}, {batchSize:
//! 1000})`, and 200 sequential `getMany` of 10 keys. Three targets, the
//! same client: kvreplica over KV Connect (h2c), denokv over KV Connect
//! (`DENOKV_BIN`, serving a copy of the replica file), and a local copy of
//! the file opened by `Deno.openKv(path)` — the client's own floor.
//! `--scan-rounds` processes per target, alternating, each running
//! `--scan-runs` scans and getMany loops; medians over all.

use std::path::Path;
use std::process::Command;

use serde_json::Value;

use crate::pair::Pair;
use crate::server::ACCESS_TOKEN;
use crate::{median, num};

/// Timings of one target, seconds.
struct Timings {
    scans: Vec<f64>,
    getmany: Vec<f64>,
}

/// Runs the scan script once against `target` and checks what it read.
fn deno(target: &str, runs: usize, entries: usize, into: &mut Timings) {
    let bin = std::env::var("KVREPLICA_TEST_DENO")
        .expect("KVREPLICA_TEST_DENO: run `source scripts/install-test-tools.sh`");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/bench/deno_scan.ts");
    let out = Command::new(bin)
        .args(["run", "--unstable-kv", "-A"])
        .arg(script)
        .args([target, &runs.to_string()])
        .env("DENO_KV_ACCESS_TOKEN", ACCESS_TOKEN)
        .env("DENO_NO_UPDATE_CHECK", "1")
        .output()
        .expect("running deno");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "deno_scan.ts {target}: {}\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let json: Value = serde_json::from_str(stdout.lines().last().unwrap_or("")).unwrap();
    for s in json["scans"].as_array().unwrap() {
        assert_eq!(
            s["entries"].as_u64(),
            Some(entries as u64),
            "scan of {target}"
        );
        into.scans.push(s["ms"].as_f64().unwrap() / 1e3);
    }
    for g in json["getmany"].as_array().unwrap() {
        assert_eq!(g["found"].as_u64(), Some(2000), "getMany from {target}");
        into.getmany.push(g["ms"].as_f64().unwrap() / 1e3);
    }
}

pub fn run(args: &[String]) {
    let pair = Pair::start(args);
    report(&pair, args);
}

/// Runs every target of `pair` and prints one table.
pub fn report(pair: &Pair, args: &[String]) {
    let rounds = num(args, "--scan-rounds", 3);
    let runs = num(args, "--scan-runs", 3);
    let mut targets: Vec<(String, String)> = pair
        .servers()
        .into_iter()
        .map(|(name, s, _)| (format!("{name} (KV Connect)"), s.kv_url.clone()))
        .collect();
    targets.push((
        "local file (Deno.openKv(path))".into(),
        pair.local_copy.display().to_string(),
    ));
    let mut timings: Vec<Timings> = targets
        .iter()
        .map(|_| Timings {
            scans: Vec::new(),
            getmany: Vec::new(),
        })
        .collect();
    for _ in 0..rounds {
        for ((_, target), t) in targets.iter().zip(&mut timings) {
            deno(target, runs, pair.state.len(), t);
        }
    }
    let medians: Vec<(f64, f64)> = timings
        .into_iter()
        .map(|t| (median(t.scans), median(t.getmany)))
        .collect();
    let (local_scan, local_gm) = *medians.last().unwrap();
    println!(
        "\n| Deno CLI {} keys | full scan, batchSize 1000 | vs local | 200 × getMany(10) | vs local |",
        pair.state.len()
    );
    println!("|---|---|---|---|---|");
    for ((name, _), (scan, gm)) in targets.iter().zip(&medians) {
        println!(
            "| {name} | {scan:.3} s | {:.2}× | {gm:.3} s | {:.2}× |",
            scan / local_scan,
            gm / local_gm
        );
    }
}

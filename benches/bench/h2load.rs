//! `h2load`: KV Connect `snapshot_read` throughput measured by an
//! independent load generator, nghttp2's `h2load` (`H2LOAD`, default
//! `h2load` on the PATH), against kvreplica and the reference serving the
//! same replica ([`crate::pair`]), side by side, alternating, `--runs`
//! times each (median reported).
//!
//! Loads: h2c with prior knowledge (the Deno CLI's transport) at 16
//! clients × 4 streams and 64 × 1, and HTTP/1.1 (`--h1`) at 64 × 1, the
//! same 64 requests in flight. Requests: a point read (one existing key,
//! `[key, key+0x00)`, limit 1) and a 100-entry range (from an existing key
//! with 100 keys after it, limit 100). h2load sends one body for every
//! request and checks only statuses, so each body is first read once with
//! reqwest from both servers and the answers compared with the fixture.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use denokv_proto::datapath::{ReadRange, SnapshotRead, SnapshotReadOutput};
use prost::Message;

use crate::pair::Pair;
use crate::server::{Server, ACCESS_TOKEN};
use crate::{arg, median, num, secs};

/// A request kind: its name, body and the keys it must answer.
type Request<'a> = (&'static str, Vec<u8>, Vec<&'a Vec<u8>>);

/// One load shape.
struct Load {
    label: &'static str,
    clients: usize,
    streams: usize,
    h1: bool,
}

const LOADS: [Load; 3] = [
    Load {
        label: "h2c 16×4",
        clients: 16,
        streams: 4,
        h1: false,
    },
    Load {
        label: "h2c 64×1",
        clients: 64,
        streams: 1,
        h1: false,
    },
    Load {
        label: "http/1.1 64×1",
        clients: 64,
        streams: 1,
        h1: true,
    },
];

/// What one h2load run reported.
#[derive(Debug)]
pub struct H2loadRun {
    pub req_per_s: f64,
    pub succeeded: u64,
    pub failed: u64,
    pub errored: u64,
}

/// Parses h2load's summary (`finished in …, N req/s, …` and `requests: …`).
fn parse(out: &str) -> Option<H2loadRun> {
    let finished = out.lines().find(|l| l.starts_with("finished in"))?;
    let req_per_s = finished
        .split(", ")
        .find_map(|p| p.strip_suffix(" req/s"))?
        .trim()
        .parse()
        .ok()?;
    let requests = out.lines().find(|l| l.starts_with("requests:"))?;
    let count = |what: &str| -> Option<u64> {
        requests
            .split(", ")
            .find_map(|p| p.trim().strip_suffix(what))
            .and_then(|n| n.trim().rsplit(' ').next()?.parse().ok())
    };
    Some(H2loadRun {
        req_per_s,
        succeeded: count(" succeeded")?,
        failed: count(" failed")?,
        errored: count(" errored")?,
    })
}

/// Runs h2load once against `url`'s `snapshot_read` with `body`.
fn h2load(
    url: &str,
    database_id: &str,
    body: &Path,
    load: &Load,
    duration: Duration,
    warmup: Duration,
) -> H2loadRun {
    let bin = std::env::var("H2LOAD").unwrap_or_else(|_| "h2load".into());
    let mut cmd = Command::new(&bin);
    cmd.args(["-t", "1", "-c", &load.clients.to_string()])
        .args(["-m", &load.streams.to_string()])
        .args(["-D", &format!("{}ms", duration.as_millis())])
        .args(["--warm-up-time", &format!("{}ms", warmup.as_millis())])
        .arg("-d")
        .arg(body)
        .args(["-H", "content-type: application/x-protobuf"])
        .args(["-H", &format!("authorization: Bearer {ACCESS_TOKEN}")])
        .args(["-H", "x-denokv-version: 2"])
        .args(["-H", &format!("x-denokv-database-id: {database_id}")]);
    if load.h1 {
        cmd.arg("--h1");
    }
    cmd.arg(format!("{url}/v2/snapshot_read"));
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("running {bin} (set H2LOAD): {e}"));
    let text = String::from_utf8_lossy(&out.stdout);
    let run = parse(&text).unwrap_or_else(|| {
        panic!(
            "unexpected h2load output:\n{text}\n{}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    assert!(
        out.status.success() && run.failed == 0 && run.errored == 0 && run.succeeded > 0,
        "h2load against {url} ({}) failed:\n{text}",
        load.label
    );
    run
}

/// The body of a point read of `key`, or of `limit` entries from it.
fn body(key: &[u8], limit: i32) -> Vec<u8> {
    let end = if limit == 1 {
        let mut e = key.to_vec();
        e.push(0);
        e
    } else {
        vec![0xff]
    };
    SnapshotRead {
        ranges: vec![ReadRange {
            start: key.to_vec(),
            end,
            limit,
            reverse: false,
        }],
    }
    .encode_to_vec()
}

/// Reads `body` once from `srv` (h2c) and checks the keys against `want`.
fn check(pair: &Pair, srv: &Server, database_id: &str, body: &[u8], want: &[&Vec<u8>]) {
    let client = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let answer = pair.rt.block_on(async {
        let r = client
            .post(format!("{}/v2/snapshot_read", srv.kv_url))
            .header("authorization", format!("Bearer {ACCESS_TOKEN}"))
            .header("x-denokv-version", "2")
            .header("x-denokv-database-id", database_id)
            .header("content-type", "application/x-protobuf")
            .body(body.to_vec())
            .send()
            .await
            .unwrap();
        let status = r.status();
        let bytes = r.bytes().await.unwrap();
        assert_eq!(
            status,
            200,
            "{}: {}",
            srv.kv_url,
            String::from_utf8_lossy(&bytes)
        );
        bytes
    });
    let out = SnapshotReadOutput::decode(answer).unwrap();
    let got: Vec<&Vec<u8>> = out.ranges[0].values.iter().map(|e| &e.key).collect();
    assert_eq!(got, want, "answer of {}", srv.kv_url);
    for e in &out.ranges[0].values {
        assert_eq!(
            e.value, pair.state[&e.key].value,
            "value from {}",
            srv.kv_url
        );
    }
}

pub fn run(args: &[String]) {
    let pair = Pair::start(args);
    report(&pair, args);
}

/// Measures every load and request kind against both servers of `pair`
/// and prints one table.
pub fn report(pair: &Pair, args: &[String]) {
    let runs = num(args, "--runs", 3);
    let duration = secs(args, "--h2load-duration", 3.0);
    let warmup = secs(args, "--h2load-warmup", 1.0);
    let only = arg(args, "--loads");
    let keys: Vec<&Vec<u8>> = pair.state.keys().collect();
    let point_key = keys[keys.len() / 3];
    let range_at = keys.len() / 2;
    let kinds: [Request; 2] = [
        ("point", body(point_key, 1), vec![point_key]),
        (
            "range-100",
            body(keys[range_at], 100),
            keys[range_at..range_at + 100].to_vec(),
        ),
    ];
    let servers = pair.servers();
    let denokv = servers.iter().position(|(n, _, _)| *n == "denokv");
    println!(
        "\n| load | request | {} | kvreplica / denokv | kvreplica h2c / own http/1.1 |",
        servers
            .iter()
            .map(|(n, _, _)| format!("{n} req/s"))
            .collect::<Vec<_>>()
            .join(" | ")
    );
    println!("|---|---|{}---|---|", "---|".repeat(servers.len()));
    for (kind, body, want) in &kinds {
        let file = pair.dir.path().join(format!("{kind}.bin"));
        std::fs::write(&file, body).unwrap();
        for (_, srv, id) in &servers {
            check(pair, srv, id, body, want);
        }
        let mut rows: Vec<(&Load, Vec<f64>)> = Vec::new();
        for load in LOADS
            .iter()
            .filter(|l| only.as_deref().is_none_or(|o| o.contains(l.label)))
        {
            let mut per_server = vec![Vec::new(); servers.len()];
            for _ in 0..runs {
                for (i, (_, srv, id)) in servers.iter().enumerate() {
                    let r = h2load(&srv.kv_url, id, &file, load, duration, warmup);
                    per_server[i].push(r.req_per_s);
                }
            }
            let m: Vec<f64> = per_server.into_iter().map(median).collect();
            eprintln!("{kind} {}: {m:?}", load.label);
            rows.push((load, m));
        }
        let own_h1 = rows.iter().find(|(l, _)| l.h1).map(|(_, m)| m[0]);
        for (load, m) in &rows {
            let ratio = denokv
                .map(|i| m[i])
                .map_or("–".to_string(), |d| format!("{:.2}", m[0] / d));
            let vs_h1 = match own_h1 {
                Some(h1) if !load.h1 => format!("{:.2}", m[0] / h1),
                _ => "–".to_string(),
            };
            println!(
                "| {} | {kind} | {} | {ratio} | {vs_h1} |",
                load.label,
                m.iter()
                    .map(|v| format!("{v:.0}"))
                    .collect::<Vec<_>>()
                    .join(" | "),
            );
        }
    }
}

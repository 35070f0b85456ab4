//! A closed-loop KV Connect load generator: N clients, each with a
//! connection of its own, send `snapshot_read` requests back to back for a
//! fixed time and check every answer.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use denokv_proto::datapath::{ReadRange, SnapshotRead, SnapshotReadOutput, SnapshotReadStatus};
use prost::Message;

use crate::common::fixture::{Rec, Rng};
use crate::server::ACCESS_TOKEN;

/// Bound on one request: a request that takes longer is an error.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Entries asked for by a range read.
pub const RANGE_LIMIT: usize = 100;
/// Error messages kept per run (the rest are only counted).
const KEEP_ERRORS: usize = 5;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    /// HTTP/1.1, one keep-alive connection per client (`@deno/kv` on Node).
    Http1,
    /// HTTP/2 cleartext with prior knowledge, one connection per client
    /// (the Deno CLI).
    H2c,
}

impl Protocol {
    pub fn label(self) -> &'static str {
        match self {
            Protocol::Http1 => "HTTP/1.1",
            Protocol::H2c => "h2c",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// One existing key: start = key, end = key + 0x00, limit 1.
    Point,
    /// From an existing key to the end of the key space: end = 0xff,
    /// limit 100.
    Range,
}

impl Kind {
    pub fn label(self) -> &'static str {
        match self {
            Kind::Point => "point",
            Kind::Range => "range-100",
        }
    }
}

/// What the answers must be.
pub struct Expect {
    /// Keys that exist in every state a run can see, ascending; requests
    /// start at one of them, picked at random.
    pub keys: Vec<Vec<u8>>,
    /// The state at the start of the run: the exact answer when the
    /// replica stays put, and the oldest versionstamp a key can have when
    /// the sync moves it forward during the run.
    pub base: BTreeMap<Vec<u8>, Rec>,
    /// Whether the replica stays at `base` for the whole run.
    pub fixed: bool,
    /// Compare only the 8-byte commit version of versionstamps, not the
    /// 2-byte batch index: denokv's SQLite backend answers every
    /// versionstamp with a zero batch index (it keeps the column but does
    /// not read it back), so a key written by the second commit of a batch
    /// reads `…0000` there where the backup (and kvreplica) say `…0001`.
    pub version_only: bool,
}

impl Expect {
    /// The part of versionstamps this run compares.
    fn stamp<'a>(&self, vs: &'a [u8]) -> &'a [u8] {
        if self.version_only {
            &vs[..vs.len().min(8)]
        } else {
            vs
        }
    }
}

/// Where to send requests.
pub struct Target {
    pub kv_url: String,
    pub database_id: String,
}

/// The result of one run.
#[derive(Default)]
pub struct Outcome {
    /// Answers that passed every check (started within the measured time).
    pub ok: u64,
    /// Failed requests or answers (including the warm-up's).
    pub errors: u64,
    /// The first few error messages.
    pub first_errors: Vec<String>,
    /// Latency of every measured request, in microseconds.
    pub latencies_us: Vec<u32>,
    /// The measured time.
    pub elapsed: Duration,
}

impl Outcome {
    fn merge(&mut self, other: Outcome) {
        self.ok += other.ok;
        self.errors += other.errors;
        for e in other.first_errors {
            if self.first_errors.len() < KEEP_ERRORS {
                self.first_errors.push(e);
            }
        }
        self.latencies_us.extend(other.latencies_us);
    }

    fn error(&mut self, e: String) {
        self.errors += 1;
        if self.first_errors.len() < KEEP_ERRORS {
            self.first_errors.push(e);
        }
    }

    /// Answers that passed every check, per second of measured time.
    pub fn requests_per_second(&self) -> f64 {
        self.ok as f64 / self.elapsed.as_secs_f64()
    }

    /// The `p`-th percentile latency (0 < p <= 100) in milliseconds; the
    /// latencies must be sorted.
    pub fn percentile_ms(&self, p: f64) -> f64 {
        let v = &self.latencies_us;
        if v.is_empty() {
            return f64::NAN;
        }
        let rank = ((p / 100.0) * v.len() as f64).ceil() as usize;
        v[rank.clamp(1, v.len()) - 1] as f64 / 1000.0
    }

    /// Requests that took at least `ms` milliseconds.
    pub fn slower_than(&self, ms: u32) -> usize {
        let us = ms * 1000;
        self.latencies_us.len() - self.latencies_us.partition_point(|&l| l < us)
    }

    pub fn max_ms(&self) -> f64 {
        self.latencies_us
            .last()
            .map_or(f64::NAN, |&u| u as f64 / 1000.0)
    }
}

fn client(protocol: Protocol) -> reqwest::Client {
    let b = reqwest::Client::builder()
        .pool_max_idle_per_host(1)
        .timeout(REQUEST_TIMEOUT)
        .tcp_nodelay(true);
    match protocol {
        Protocol::Http1 => b.http1_only(),
        Protocol::H2c => b.http2_prior_knowledge(),
    }
    .build()
    .expect("an HTTP client")
}

/// Runs `clients` clients for `warmup` (not measured) then `duration`.
pub async fn run(
    target: Arc<Target>,
    expect: Arc<Expect>,
    protocol: Protocol,
    kind: Kind,
    clients: usize,
    warmup: Duration,
    duration: Duration,
) -> Outcome {
    let measure_from = Instant::now() + warmup;
    let until = measure_from + duration;
    let tasks: Vec<_> = (0..clients)
        .map(|i| {
            let target = target.clone();
            let expect = expect.clone();
            tokio::spawn(async move {
                let c = client(protocol);
                let mut rng = Rng::new(0xbe4c_0000 + i as u64);
                let mut out = Outcome::default();
                // Bounded by `until`: every request ends within
                // REQUEST_TIMEOUT.
                loop {
                    let started = Instant::now();
                    if started >= until {
                        break;
                    }
                    let pick = rng.below(expect.keys.len());
                    let r = request(&c, &target, &expect, kind, pick).await;
                    let measured = started >= measure_from;
                    if measured {
                        out.latencies_us
                            .push(started.elapsed().as_micros().min(u32::MAX as u128) as u32);
                    }
                    // Answers during the warm-up are checked too.
                    match r {
                        Ok(()) if measured => out.ok += 1,
                        Ok(()) => {}
                        Err(e) => out.error(e),
                    }
                }
                out
            })
        })
        .collect();
    let mut total = Outcome::default();
    for t in tasks {
        total.merge(t.await.expect("a load task"));
    }
    total.elapsed = duration;
    total.latencies_us.sort_unstable();
    total
}

/// One request and the checks of its answer.
async fn request(
    c: &reqwest::Client,
    target: &Target,
    expect: &Expect,
    kind: Kind,
    pick: usize,
) -> Result<(), String> {
    let key = &expect.keys[pick];
    let range = match kind {
        Kind::Point => {
            let mut end = key.clone();
            end.push(0);
            ReadRange {
                start: key.clone(),
                end,
                limit: 1,
                reverse: false,
            }
        }
        Kind::Range => ReadRange {
            start: key.clone(),
            end: vec![0xff],
            limit: RANGE_LIMIT as i32,
            reverse: false,
        },
    };
    let body = SnapshotRead {
        ranges: vec![range],
    }
    .encode_to_vec();
    let resp = c
        .post(format!("{}/v2/snapshot_read", target.kv_url))
        .header("authorization", format!("Bearer {ACCESS_TOKEN}"))
        .header("x-denokv-version", "3")
        .header("x-denokv-database-id", &target.database_id)
        .header("content-type", "application/x-protobuf")
        .body(body)
        .send()
        .await
        .map_err(|e| format!("request: {e}"))?;
    let status = resp.status().as_u16();
    let bytes = resp.bytes().await.map_err(|e| format!("body: {e}"))?;
    if status != 200 {
        return Err(format!(
            "status {status}: {}",
            String::from_utf8_lossy(&bytes)
        ));
    }
    let out = SnapshotReadOutput::decode(bytes).map_err(|e| format!("protobuf: {e}"))?;
    if out.status != SnapshotReadStatus::SrSuccess as i32
        || out.read_disabled
        || !out.read_is_strongly_consistent
        || out.ranges.len() != 1
    {
        return Err(format!(
            "status {}, read_disabled {}, strongly consistent {}, {} ranges",
            out.status,
            out.read_disabled,
            out.read_is_strongly_consistent,
            out.ranges.len()
        ));
    }
    let got = &out.ranges[0].values;
    let hex_key = hex::encode(key);
    match kind {
        Kind::Point => {
            let [e] = got.as_slice() else {
                return Err(format!("point read of {hex_key}: {} entries", got.len()));
            };
            if &e.key != key {
                return Err(format!(
                    "point read of {hex_key}: got key {}",
                    hex::encode(&e.key)
                ));
            }
            let want = &expect.base[key];
            if expect.fixed {
                if e.value != want.value
                    || e.encoding as i64 != want.encoding
                    || expect.stamp(&e.versionstamp) != expect.stamp(&want.versionstamp)
                {
                    return Err(format!(
                        "point read of {hex_key}: wrong entry (value {}, encoding {} want {}, versionstamp {} want {})",
                        if e.value == want.value { "same" } else { "differs" },
                        e.encoding,
                        want.encoding,
                        hex::encode(&e.versionstamp),
                        hex::encode(want.versionstamp)
                    ));
                }
            } else if expect.stamp(&e.versionstamp) < expect.stamp(&want.versionstamp) {
                return Err(format!(
                    "point read of {hex_key}: versionstamp {} older than {}",
                    hex::encode(&e.versionstamp),
                    hex::encode(want.versionstamp)
                ));
            }
        }
        Kind::Range => {
            if got.first().map(|e| &e.key) != Some(key) {
                return Err(format!(
                    "range read from {hex_key}: does not start with it ({} entries)",
                    got.len()
                ));
            }
            if got.len() > RANGE_LIMIT || got.windows(2).any(|w| w[0].key >= w[1].key) {
                return Err(format!(
                    "range read from {hex_key}: {} entries, or not ascending",
                    got.len()
                ));
            }
            if expect.fixed {
                let want: Vec<_> = expect.base.range(key.clone()..).take(RANGE_LIMIT).collect();
                let same = want.len() == got.len()
                    && want.iter().zip(got).all(|((k, r), e)| {
                        *k == &e.key
                            && r.value == e.value
                            && expect.stamp(&r.versionstamp) == expect.stamp(&e.versionstamp)
                    });
                if !same {
                    return Err(format!(
                        "range read from {hex_key}: {} entries differ from the {} expected",
                        got.len(),
                        want.len()
                    ));
                }
            } else if expect.keys.len() - pick >= RANGE_LIMIT && got.len() != RANGE_LIMIT {
                // At least RANGE_LIMIT keys that never go away follow.
                return Err(format!(
                    "range read from {hex_key}: {} entries, want {RANGE_LIMIT}",
                    got.len()
                ));
            }
        }
    }
    Ok(())
}

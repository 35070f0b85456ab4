//! The project's fixture writer: turns a scripted, seeded workload into a
//! Deploy-format backup (fuzzy snapshot ranges, logs that start before the
//! snapshot and overlap it, `differential`, more logs after DV, and later
//! log objects to append) and knows the exact expected state at every
//! commit boundary.
//!
//! The workload: a history of commits that populate the key space (older
//! than the oldest log object, so only the snapshot carries it), then
//! commits of sets, clears and sum/min/max post-images with V8, bytes and
//! u64 values, some with an expiry far in the future, some sharing one
//! commit version (batch seq > 0). Each snapshot range is a copy of its
//! slice of the key space taken at its own moment between the snapshot
//! start and DV, as Deploy's export does.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::Path;

use denokv_proto::backup::{
    BackupKvMutationKind, BackupKvPair, BackupMutationRange, BackupReplicationLogEntry,
    BackupSnapshotRange,
};
use prost::Message;

use super::v8::{self, Js};

/// Far-future expiry used by the workload (2100-01-01), so expired keys
/// never depend on when the test runs.
pub const FAR_EXPIRY_MS: i64 = 4_102_444_800_000;

/// What to generate.
#[derive(Clone, Debug)]
pub struct Spec {
    pub seed: u64,
    /// Keys populated by the history before the first log object.
    pub keys: usize,
    /// Commits in the logs before DV (the snapshot is taken during the
    /// second half of them).
    pub pre_commits: usize,
    /// Commits after DV in the initial bucket.
    pub post_commits: usize,
    /// Commits in the log objects to append later.
    pub append_commits: usize,
    /// Largest number of mutations in one commit.
    pub max_muts_per_commit: usize,
    /// Target number of mutations per log object.
    pub muts_per_log: usize,
    /// Snapshot ranges with keys (plus an empty one when `empty_range`).
    pub ranges: usize,
    pub empty_range: bool,
    /// Use format-0 names for the first this-many log objects.
    pub format0_logs: usize,
    /// Whether a commit may be split across two adjacent log objects.
    pub split_commits: bool,
}

impl Default for Spec {
    fn default() -> Self {
        Spec {
            seed: 1,
            keys: 300,
            pre_commits: 60,
            post_commits: 40,
            append_commits: 30,
            max_muts_per_commit: 6,
            muts_per_log: 25,
            ranges: 4,
            empty_range: true,
            format0_logs: 2,
            split_commits: true,
        }
    }
}

/// One key's stored record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rec {
    pub value: Vec<u8>,
    pub encoding: i64,
    pub versionstamp: [u8; 10],
    /// Epoch ms, or -1 for none.
    pub expire_at_ms: i64,
}

/// One mutation: a post-image (`Some`) or a clear (`None`).
#[derive(Clone, Debug)]
pub struct Mutation {
    pub kind: BackupKvMutationKind,
    pub key: Vec<u8>,
    pub rec: Option<Rec>,
}

/// One commit of the workload.
#[derive(Clone, Debug)]
pub struct Commit {
    pub versionstamp: [u8; 10],
    pub timestamp_ms: u64,
    pub muts: Vec<Mutation>,
}

/// A generated backup.
pub struct Fixture {
    pub spec: Spec,
    pub commits: Vec<Commit>,
    /// Index of the first commit that is in the logs.
    pub first_logged: usize,
    /// Index of the commit DV names.
    pub dv_commit: usize,
    /// Index of the last commit in the initial bucket.
    pub last_initial: usize,
    pub dv: [u8; 10],
    /// Objects of the initial bucket: path below the prefix → bytes.
    pub initial: Vec<(String, Vec<u8>)>,
    /// Log objects to append later, in order.
    pub append: Vec<(String, Vec<u8>)>,
    /// Each log object's commit-time (ms), keyed by the index of every
    /// commit whose last mutation it holds.
    pub point_time: BTreeMap<usize, u64>,
}

/// Deterministic SplitMix64: the same seed gives the same bucket on every
/// machine and every version of the test's dependencies.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed ^ 0x9E37_79B9_7F4A_7C15)
    }
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
    pub fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }
}

/// A Deno KV key `["item", <n>]` (string part, then a JS number part), as
/// the Deno client encodes it.
pub fn key_for(n: usize) -> Vec<u8> {
    let mut k = vec![0x02];
    k.extend_from_slice(b"item");
    k.push(0x00);
    k.push(0x21);
    let bits = (n as f64).to_bits() ^ (1u64 << 63);
    k.extend(bits.to_be_bytes());
    k
}

fn random_js(rng: &mut Rng, depth: u32) -> Js {
    match rng.below(if depth > 1 { 6 } else { 8 }) {
        0 => Js::Str(format!("value-{}", rng.below(100_000))),
        1 => Js::Str(format!("Straße 日本 😀 {}", rng.below(1000))),
        2 => Js::Int(rng.next() as i32),
        3 => Js::Num((rng.next() % 1_000_000) as f64 / 7.0),
        4 => Js::BigInt((rng.next() as i64 as i128) * 1_000_003),
        5 => Js::Bool(rng.chance(50)),
        6 => Js::Array(
            (0..rng.below(4))
                .map(|_| random_js(rng, depth + 1))
                .collect(),
        ),
        _ => Js::Object(
            (0..rng.below(4))
                .map(|i| (format!("f{i}"), random_js(rng, depth + 1)))
                .collect(),
        ),
    }
}

impl Fixture {
    /// Generates the workload and the bucket's objects.
    pub fn generate(spec: Spec) -> Fixture {
        let mut rng = Rng::new(spec.seed);
        let mut commits = Vec::new();
        let mut version: u64 = 0x0000_0002_0000_0000;
        let mut seq: u16 = 0;
        let mut time_ms: u64 = 1_704_067_200_000; // 2024-01-01T00:00:00Z
        let mut next_vs = |rng: &mut Rng, time_ms: &mut u64| {
            // Commit versions skip numbers; one in ten commits shares the
            // previous commit's version with the next batch seq.
            *time_ms += 1 + rng.below(2000) as u64;
            if rng.chance(10) && seq < 3 {
                seq += 1;
            } else {
                version += 1 + rng.below(50) as u64;
                seq = 0;
            }
            let mut vs = [0u8; 10];
            vs[..8].copy_from_slice(&version.to_be_bytes());
            vs[8..].copy_from_slice(&seq.to_be_bytes());
            vs
        };

        // History: populate every key, 200 keys per commit.
        let mut n = 0;
        while n < spec.keys {
            let vs = next_vs(&mut rng, &mut time_ms);
            let muts = (n..(n + 200).min(spec.keys))
                .map(|i| set(&mut rng, key_for(i), vs))
                .collect();
            commits.push(Commit {
                versionstamp: vs,
                timestamp_ms: time_ms,
                muts,
            });
            n += 200;
        }
        let first_logged = commits.len();
        let total = spec.pre_commits + spec.post_commits + spec.append_commits;
        let key_space = spec.keys + spec.keys / 10 + 1;
        for _ in 0..total {
            let vs = next_vs(&mut rng, &mut time_ms);
            let mut used = std::collections::BTreeSet::new();
            let count = 1 + rng.below(spec.max_muts_per_commit);
            let mut muts = Vec::new();
            for _ in 0..count {
                let k = rng.below(key_space);
                if !used.insert(k) {
                    continue;
                }
                let key = key_for(k);
                let m = match rng.below(10) {
                    0 | 1 => Mutation {
                        kind: BackupKvMutationKind::MkClear,
                        key,
                        rec: None,
                    },
                    2 => {
                        let kind = [
                            BackupKvMutationKind::MkSum,
                            BackupKvMutationKind::MkMax,
                            BackupKvMutationKind::MkMin,
                        ][rng.below(3)];
                        Mutation {
                            kind,
                            key,
                            rec: Some(Rec {
                                value: rng.next().to_le_bytes().to_vec(),
                                encoding: 2,
                                versionstamp: vs,
                                expire_at_ms: -1,
                            }),
                        }
                    }
                    _ => set(&mut rng, key, vs),
                };
                muts.push(m);
            }
            commits.push(Commit {
                versionstamp: vs,
                timestamp_ms: time_ms,
                muts,
            });
        }
        let dv_commit = first_logged + spec.pre_commits.max(1) - 1;
        let last_initial = dv_commit + spec.post_commits;
        let dv = commits[dv_commit].versionstamp;

        let mut fx = Fixture {
            spec,
            commits,
            first_logged,
            dv_commit,
            last_initial,
            dv,
            initial: Vec::new(),
            append: Vec::new(),
            point_time: BTreeMap::new(),
        };
        fx.build_objects(&mut rng);
        fx
    }

    fn build_objects(&mut self, rng: &mut Rng) {
        let mut monoseq: u64 = 0x100;
        let mut log_count = 0usize;
        let initial_logs = self.logs(
            self.first_logged,
            self.last_initial,
            rng,
            &mut monoseq,
            &mut log_count,
        );
        let append_logs = self.logs(
            self.last_initial + 1,
            self.commits.len() - 1,
            rng,
            &mut monoseq,
            &mut log_count,
        );
        let snapshots = self.snapshots(rng);
        self.initial
            .push(("differential".into(), hex::encode(self.dv).into_bytes()));
        self.initial.extend(snapshots);
        self.initial.extend(initial_logs);
        self.append = append_logs;
    }

    /// Log objects for commits `from..=to`.
    fn logs(
        &mut self,
        from: usize,
        to: usize,
        rng: &mut Rng,
        monoseq: &mut u64,
        count: &mut usize,
    ) -> Vec<(String, Vec<u8>)> {
        let mut objects = Vec::new();
        if from > to {
            return objects;
        }
        // Flatten into (commit index, entry) and cut into objects.
        let mut pending: Vec<(usize, BackupReplicationLogEntry)> = Vec::new();
        for ci in from..=to {
            let c = &self.commits[ci];
            let n = c.muts.len();
            for (i, m) in c.muts.iter().enumerate() {
                let mut stamp = c.versionstamp.to_vec();
                let idx: u16 = if i + 1 == n { 0xffff } else { i as u16 };
                stamp.extend(idx.to_be_bytes());
                let (value, enc, exp) = match &m.rec {
                    Some(r) => (
                        r.value.clone(),
                        r.encoding as i32,
                        if r.expire_at_ms < 0 {
                            0
                        } else {
                            r.expire_at_ms as u64
                        },
                    ),
                    None => (Vec::new(), 0, 0),
                };
                pending.push((
                    ci,
                    BackupReplicationLogEntry {
                        versionstamp: stamp,
                        kind: m.kind as i32,
                        key: m.key.clone(),
                        value,
                        value_encoding: enc,
                        expire_at_ms: exp,
                    },
                ));
            }
        }
        let mut start = 0;
        while start < pending.len() {
            let mut end = (start + self.spec.muts_per_log).min(pending.len());
            // Cut at a commit end unless splitting is allowed and chosen
            // (never split the very last object: the bucket ends on a
            // complete commit).
            let at_commit_end = |e: usize| {
                e == pending.len() || pending[e - 1].1.versionstamp[10..] == [0xff, 0xff]
            };
            if !(self.spec.split_commits && rng.chance(30) && end < pending.len()) {
                while !at_commit_end(end) {
                    end += 1;
                }
            }
            let chunk = &pending[start..end];
            let last_commit = chunk.last().unwrap().0;
            let ts = self.commits[last_commit].timestamp_ms;
            for (ci, e) in chunk {
                if e.versionstamp[10..] == [0xff, 0xff] {
                    self.point_time.insert(*ci, ts);
                }
            }
            let first = hex::encode(&chunk[0].1.versionstamp);
            let last = hex::encode(&chunk.last().unwrap().1.versionstamp);
            let name = if *count < self.spec.format0_logs {
                format!(
                    "{:016x}_{:016x}_{first}_{last}",
                    *monoseq >> 32,
                    *monoseq & 0xffff_ffff
                )
            } else {
                format!("0001_{:016x}_{first}_{last}", *monoseq)
            };
            *monoseq += 1;
            *count += 1;
            let body = BackupMutationRange {
                entries: chunk.iter().map(|(_, e)| e.clone()).collect(),
                timestamp_ms: ts,
            }
            .encode_to_vec();
            objects.push((format!("logs/{name}.bin"), body));
            start = end;
        }
        objects
    }

    /// Snapshot ranges, each a copy of its key slice at its own moment
    /// between the snapshot start and DV.
    fn snapshots(&self, rng: &mut Rng) -> Vec<(String, Vec<u8>)> {
        let ranges = self.spec.ranges.max(1);
        let key_space = self.spec.keys + self.spec.keys / 10 + 1;
        let snap_start = self.first_logged + (self.dv_commit - self.first_logged) / 2;
        let mut moments: Vec<(usize, usize)> = (0..ranges)
            .map(|r| (snap_start + rng.below(self.dv_commit - snap_start + 1), r))
            .collect();
        moments.sort();
        let bounds: Vec<Vec<u8>> = (0..=ranges)
            .map(|r| key_for(r * key_space / ranges))
            .collect();
        let mut bodies: Vec<Vec<u8>> = vec![Vec::new(); ranges];
        let mut state: BTreeMap<Vec<u8>, Rec> = BTreeMap::new();
        let mut applied = 0;
        for (moment, r) in moments {
            while applied <= moment {
                apply(&mut state, &self.commits[applied]);
                applied += 1;
            }
            let lo = &bounds[r];
            let hi = &bounds[r + 1];
            let mut msg = BackupSnapshotRange::default();
            for (k, rec) in state.range(lo.clone()..) {
                if r + 1 < ranges && k >= hi {
                    break;
                }
                let mut dk = vec![b'd'];
                dk.extend(k);
                let mut mk = vec![b'm'];
                mk.extend(k);
                let mut meta = rec.versionstamp.to_vec();
                meta.push(rec.encoding as u8);
                if rec.expire_at_ms >= 0 {
                    meta.extend(rec.expire_at_ms.to_le_bytes());
                }
                msg.data_list.push(BackupKvPair {
                    key: dk,
                    value: rec.value.clone(),
                });
                msg.metadata_list.push(BackupKvPair {
                    key: mk,
                    value: meta,
                });
            }
            bodies[r] = msg.encode_to_vec();
        }
        if self.spec.empty_range {
            // A range with no keys is a 0-byte object.
            bodies.push(Vec::new());
        }
        bodies
            .into_iter()
            .enumerate()
            .map(|(r, b)| (format!("snapshots/0001_{:016x}_{:016x}.bin", 0x42, r), b))
            .collect()
    }

    /// Writes the initial bucket under `dir` (the prefix's folder).
    pub fn write_initial(&self, dir: &Path) {
        write_objects(dir, &self.initial);
    }

    /// Writes the append log objects under `dir`.
    pub fn write_append(&self, dir: &Path) {
        write_objects(dir, &self.append);
    }

    /// The state right after commit `index`.
    pub fn state_at(&self, index: usize) -> BTreeMap<Vec<u8>, Rec> {
        let mut state = BTreeMap::new();
        for c in &self.commits[..=index] {
            apply(&mut state, c);
        }
        state
    }

    /// Recoverable points up to commit `upto` (inclusive): every commit
    /// after the DV commit, as (commit index, versionstamp hex, time ms).
    pub fn points(&self, upto: usize) -> Vec<(usize, String, u64)> {
        (self.dv_commit + 1..=upto)
            .map(|i| {
                (
                    i,
                    hex::encode(self.commits[i].versionstamp),
                    self.point_time[&i],
                )
            })
            .collect()
    }

    /// The keys of `state` (the state after commit `index`) that no later
    /// commit clears, ascending: a reader of any later state finds each.
    pub fn keys_kept_after(&self, state: &BTreeMap<Vec<u8>, Rec>, index: usize) -> Vec<Vec<u8>> {
        let cleared_later: std::collections::BTreeSet<&Vec<u8>> = self.commits[index + 1..]
            .iter()
            .flat_map(|c| &c.muts)
            .filter(|m| m.kind == BackupKvMutationKind::MkClear)
            .map(|m| &m.key)
            .collect();
        state
            .keys()
            .filter(|k| !cleared_later.contains(k))
            .cloned()
            .collect()
    }

    /// The newest commit of the bucket with the append objects.
    pub fn last_commit(&self) -> usize {
        self.commits.len() - 1
    }
}

fn set(rng: &mut Rng, key: Vec<u8>, vs: [u8; 10]) -> Mutation {
    let (value, encoding) = match rng.below(10) {
        0 => ((0..rng.below(40)).map(|_| rng.next() as u8).collect(), 3),
        1 => (rng.next().to_le_bytes().to_vec(), 2),
        _ => (v8::encode(&random_js(rng, 0)), 1),
    };
    let expire_at_ms = if rng.chance(10) { FAR_EXPIRY_MS } else { -1 };
    Mutation {
        kind: BackupKvMutationKind::MkSet,
        key,
        rec: Some(Rec {
            value,
            encoding,
            versionstamp: vs,
            expire_at_ms,
        }),
    }
}

fn apply(state: &mut BTreeMap<Vec<u8>, Rec>, c: &Commit) {
    for m in &c.muts {
        match &m.rec {
            Some(r) => {
                state.insert(m.key.clone(), r.clone());
            }
            None => {
                state.remove(&m.key);
            }
        }
    }
}

/// Writes `objects` (paths relative to the prefix) under `dir`.
pub fn write_objects(dir: &Path, objects: &[(String, Vec<u8>)]) {
    for (rel, body) in objects {
        let path = dir.join(rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, body).unwrap();
    }
}

/// The rows a replica holding `state` has (see [`super::read_replica`]).
pub fn expected_rows(state: &BTreeMap<Vec<u8>, Rec>) -> BTreeMap<String, super::Row> {
    state
        .iter()
        .map(|(k, r)| {
            (
                hex::encode(k),
                super::Row {
                    value: r.value.clone(),
                    encoding: r.encoding,
                    versionstamp: hex::encode(r.versionstamp),
                    expire_at_ms: r.expire_at_ms,
                },
            )
        })
        .collect()
}

/// Compares a replica's rows (see [`super::read_replica`]) with a state.
pub fn assert_rows_eq(
    rows: &BTreeMap<String, super::Row>,
    state: &BTreeMap<Vec<u8>, Rec>,
    label: &str,
) {
    let want = expected_rows(state);
    if rows != &want {
        let diff = want
            .iter()
            .find(|(k, v)| rows.get(*k) != Some(v))
            .map(|(k, v)| format!("key {k}: want {v:?}, got {:?}", rows.get(k)))
            .or_else(|| {
                rows.keys()
                    .find(|k| !want.contains_key(*k))
                    .map(|k| format!("extra key {k}"))
            });
        panic!(
            "{label}: {} rows, want {}; first difference: {}",
            rows.len(),
            want.len(),
            diff.unwrap_or_default()
        );
    }
}

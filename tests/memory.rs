//! Memory stays bounded whatever the bucket holds: a snapshot range far
//! larger than the byte budget, a log object of millions of tiny entries
//! (whose decoded form is many times its size) and clean buckets whose
//! ranges are large objects are synced with a peak resident set under a
//! stated bound, and the replica ends up with exactly the expected rows.
//!
//! The peak is the `kvreplica sync` child's own high-water mark (`VmHWM`
//! in `/proc/PID/status`), read every 20 ms until it exits: the
//! mark only grows, so the last reading is the peak up to a few
//! milliseconds before the end. (`wait4`'s `ru_maxrss` would be simpler but
//! counts the test process itself: Linux carries the parent's high-water
//! mark over `exec`.)

#[path = "common/bounded.rs"]
mod bounded;
mod common;

use std::collections::BTreeMap;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::fixture;
use common::kvreplica_bin;
use denokv_proto::backup::{
    BackupKvMutationKind, BackupKvPair, BackupMutationRange, BackupReplicationLogEntry,
};
use prost::Message;

/// The bound of the issue, for the default settings (a 16 MiB byte budget):
/// the budget plus what the process needs anyway (the runtime, SQLite's
/// page cache, one chunk of decoded entries). Before objects were
/// streamed, each bucket below took from 150 MB to over 1 GB.
const PEAK_BOUND: u64 = 100_000_000;

/// Runs `kvreplica sync` from the directory `source` into `db`, bounded
/// in time; returns its stderr and its peak resident set in bytes.
fn sync_measured(source: &Path, db: &Path, limit: Duration) -> (String, u64) {
    let start = Instant::now();
    let mut peak_kib = 0u64;
    let (status, stderr) = bounded::run_watching(
        Command::new(kvreplica_bin())
            .args(["sync", "--source"])
            .arg(format!("file://{}/", source.display()))
            .arg("--db")
            .arg(db)
            .env_remove("RUST_LOG"),
        limit,
        |pid| {
            let status = std::fs::read_to_string(format!("/proc/{pid}/status"));
            if let Some(kib) = status.ok().and_then(|text| {
                text.lines()
                    .find_map(|l| l.strip_prefix("VmHWM:"))
                    .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            }) {
                peak_kib = peak_kib.max(kib);
            }
        },
    );
    let stderr = String::from_utf8_lossy(&stderr).into_owned();
    assert!(
        status.success(),
        "kvreplica sync failed ({status}) after {:?}:\n{stderr}",
        start.elapsed()
    );
    assert!(peak_kib > 0, "no VmHWM read");
    eprintln!(
        "kvreplica sync: {:?}, peak RSS {:.1} MB",
        start.elapsed(),
        peak_kib as f64 * 1024.0 / 1e6
    );
    (stderr, peak_kib * 1024)
}

fn assert_peak(peak: u64, what: &str) {
    assert!(
        peak <= PEAK_BOUND,
        "{what}: peak RSS {:.1} MB, over the bound of {:.0} MB",
        peak as f64 / 1e6,
        PEAK_BOUND as f64 / 1e6
    );
}

fn write(path: PathBuf, body: &[u8]) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, body).unwrap();
}

/// A 12-byte log stamp: commit `version`, mutation `index`.
fn stamp(version: u64, index: u16) -> [u8; 12] {
    let mut s = [0u8; 12];
    s[0..8].copy_from_slice(&version.to_be_bytes());
    s[10..12].copy_from_slice(&index.to_be_bytes());
    s
}

/// Appends field `field` (a `BackupKvPair`) to a message being written.
fn put_pair(w: &mut impl Write, field: u32, key: Vec<u8>, value: Vec<u8>) {
    let mut buf = Vec::new();
    prost::encoding::message::encode(field, &BackupKvPair { key, value }, &mut buf);
    w.write_all(&buf).unwrap();
}

fn rows(db: &Path, sql: &str) -> Vec<(Vec<u8>, i64)> {
    let conn = rusqlite::Connection::open(db).unwrap();
    let mut stmt = conn.prepare(sql).unwrap();
    stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

/// The size of the large range: 1 GiB, as the issue asks, sixty-four
/// times the byte budget. It costs about 15 s of the debug build here (and
/// about 4 GB of disk for a moment: the object, its downloaded copy, the
/// replica and its WAL); 256 MiB took 4 s and showed the same bound.
const LARGE_RANGE_BYTES: usize = 1 << 30;
/// Values near Deno KV's 64 KiB limit: few rows, many bytes.
const LARGE_VALUE_BYTES: usize = 60_000;

#[test]
fn a_snapshot_range_far_larger_than_the_budget_is_streamed() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("bucket");
    let n = LARGE_RANGE_BYTES / LARGE_VALUE_BYTES;
    let value = |i: usize| -> Vec<u8> {
        let mut rng = fixture::Rng::new(i as u64);
        (0..LARGE_VALUE_BYTES / 8)
            .flat_map(|_| rng.next().to_le_bytes())
            .collect()
    };
    let path = src.join(format!("snapshots/0001_{:016x}_{:016x}.bin", 1, 0));
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let mut w = BufWriter::new(std::fs::File::create(&path).unwrap());
    for i in 0..n {
        put_pair(
            &mut w,
            1,
            [b"d".as_slice(), &fixture::key_for(i)].concat(),
            value(i),
        );
    }
    for i in 0..n {
        let mut meta = stamp(5, 0)[..10].to_vec();
        meta.push(3); // raw bytes
        put_pair(
            &mut w,
            2,
            [b"m".as_slice(), &fixture::key_for(i)].concat(),
            meta,
        );
    }
    w.into_inner().unwrap().sync_all().unwrap();
    let size = std::fs::metadata(&path).unwrap().len();
    assert!(size >= LARGE_RANGE_BYTES as u64, "{size}");
    write(
        src.join("differential"),
        hex::encode(&stamp(10, 0)[..10]).as_bytes(),
    );
    std::fs::create_dir_all(src.join("logs")).unwrap();

    let db = tmp.path().join("replica.sqlite3");
    let (_, peak) = sync_measured(&src, &db, Duration::from_secs(300));
    assert_peak(peak, &format!("a {} MB snapshot range", size / 1_000_000));

    let got = rows(&db, "select k, length(v) from kv order by k");
    assert_eq!(got.len(), n);
    let mut want: Vec<Vec<u8>> = (0..n).map(fixture::key_for).collect();
    want.sort();
    for ((k, len), w) in got.iter().zip(&want) {
        assert_eq!(k, w);
        assert_eq!(*len, LARGE_VALUE_BYTES as i64);
    }
    for i in [0, n / 2, n - 1] {
        let conn = rusqlite::Connection::open(&db).unwrap();
        let v: Vec<u8> = conn
            .query_row("select v from kv where k = ?", [fixture::key_for(i)], |r| {
                r.get(0)
            })
            .unwrap();
        assert!(v == value(i), "value of key {i}");
    }
}

/// Entries in each commit of the log object: as many as a stamp can
/// number, more than one chunk of decoded entries holds, so that the open
/// commit goes to redo while it is read and comes back from there in
/// chunks.
const COMMIT_ENTRIES: u64 = 0xffff;
/// Entries in the log object: two million.
const LOG_ENTRIES: u64 = 32 * COMMIT_ENTRIES;
/// Distinct keys written (each commit writes each twice).
const LOG_KEYS: u64 = 50_000;

/// An empty snapshot and `differential` at version 1, for a bucket whose
/// data is all in its logs.
fn empty_snapshot_at_version_1(src: &Path) {
    write(
        src.join(format!("snapshots/0001_{:016x}_{:016x}.bin", 1, 0)),
        b"",
    );
    write(
        src.join("differential"),
        hex::encode(&stamp(1, 0)[..10]).as_bytes(),
    );
}

#[test]
fn a_log_object_of_millions_of_tiny_entries_is_streamed() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("bucket");
    // An empty snapshot at DV (version 1), then one log object of
    // LOG_ENTRIES one-byte sets in commits 2, 3, …
    empty_snapshot_at_version_1(&src);
    let commits = LOG_ENTRIES / COMMIT_ENTRIES;
    let first = stamp(2, 0);
    let last = stamp(1 + commits, 0xffff);
    let path = src.join(format!(
        "logs/0001_{:016x}_{}_{}.bin",
        1,
        hex::encode(first),
        hex::encode(last)
    ));
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let mut w = BufWriter::new(std::fs::File::create(&path).unwrap());
    for c in 0..commits {
        for i in 0..COMMIT_ENTRIES {
            let index = if i + 1 == COMMIT_ENTRIES {
                0xffff
            } else {
                i as u16
            };
            let s = stamp(2 + c, index);
            let e = BackupReplicationLogEntry {
                versionstamp: s.to_vec(),
                kind: BackupKvMutationKind::MkSet as i32,
                key: fixture::key_for((i % LOG_KEYS) as usize),
                value: vec![c as u8],
                value_encoding: 3,
                expire_at_ms: 0,
            };
            let mut buf = Vec::new();
            prost::encoding::message::encode(1, &e, &mut buf);
            w.write_all(&buf).unwrap();
        }
    }
    let mut buf = Vec::new();
    prost::encoding::uint64::encode(2, &1_700_000_000_000, &mut buf);
    w.write_all(&buf).unwrap();
    w.into_inner().unwrap().sync_all().unwrap();
    let size = std::fs::metadata(&path).unwrap().len();

    let db = tmp.path().join("replica.sqlite3");
    let (_, peak) = sync_measured(&src, &db, Duration::from_secs(300));
    assert_peak(
        peak,
        &format!(
            "a {} MB log object of {LOG_ENTRIES} entries",
            size / 1_000_000
        ),
    );

    // Every key holds the value of the last commit that wrote it.
    let got = rows(&db, "select v, version from kv");
    assert_eq!(got.len() as u64, LOG_KEYS);
    for (v, version) in &got {
        assert_eq!(v, &vec![(commits - 1) as u8]);
        assert_eq!(*version as u64, 1 + commits);
    }
    let conn = rusqlite::Connection::open(&db).unwrap();
    let redo: i64 = conn
        .query_row("select count(*) from kvr_redo", [], |r| r.get(0))
        .unwrap();
    assert_eq!(redo, 0, "every commit is complete: nothing waits in redo");
    let undo: i64 = conn
        .query_row("select count(*) from kvr_undo", [], |r| r.get(0))
        .unwrap();
    // The first commit is the initial point: undo starts after it.
    assert_eq!(undo as u64, LOG_ENTRIES - COMMIT_ENTRIES);
}

/// A pseudo-random value of `len` bytes, the same for the same `seed`.
fn value_of(seed: u64, len: usize) -> Vec<u8> {
    let mut rng = fixture::Rng::new(seed);
    (0..len.div_ceil(8))
        .flat_map(|_| rng.next().to_le_bytes())
        .take(len)
        .collect()
}

/// A clean bucket: `keys` keys in `ranges` snapshot objects (all written
/// at version 5), `differential` at version 10, then 40 log objects of 5
/// commits each (versions 11, 12, …) that set or delete 100 random keys
/// per commit. Returns the expected newest state: key → (value, version).
fn write_clean_bucket(
    dir: &Path,
    keys: usize,
    ranges: usize,
    value_bytes: usize,
) -> BTreeMap<Vec<u8>, (Vec<u8>, u64)> {
    let mut state: BTreeMap<Vec<u8>, (Vec<u8>, u64)> = BTreeMap::new();
    let per_range = keys.div_ceil(ranges);
    for r in 0..ranges {
        let path = dir.join(format!("snapshots/0001_{:016x}_{:016x}.bin", 1, r));
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        let mut w = BufWriter::new(std::fs::File::create(&path).unwrap());
        let slice = r * per_range..((r + 1) * per_range).min(keys);
        // Keys sort by their encoding, not by number: a range holds any
        // keys, ordered as the database would.
        let mut range_keys: Vec<(Vec<u8>, usize)> =
            slice.map(|i| (fixture::key_for(i), i)).collect();
        range_keys.sort();
        for (k, i) in &range_keys {
            let v = value_of(*i as u64, value_bytes);
            put_pair(&mut w, 1, [b"d".as_slice(), k].concat(), v.clone());
            state.insert(k.clone(), (v, 5));
        }
        for (k, _) in &range_keys {
            let mut meta = stamp(5, 0)[..10].to_vec();
            meta.push(3);
            put_pair(&mut w, 2, [b"m".as_slice(), k].concat(), meta);
        }
        w.into_inner().unwrap().sync_all().unwrap();
    }
    write(
        dir.join("differential"),
        hex::encode(&stamp(10, 0)[..10]).as_bytes(),
    );
    let mut rng = fixture::Rng::new(7);
    let mut version = 11u64;
    for object in 0..40u64 {
        let mut entries = Vec::new();
        for _ in 0..5 {
            for m in 0..100u16 {
                let key = fixture::key_for(rng.below(keys));
                let index = if m == 99 { 0xffff } else { m };
                let delete = rng.chance(10);
                let value = value_of(rng.next(), value_bytes);
                if delete {
                    state.remove(&key);
                } else {
                    state.insert(key.clone(), (value.clone(), version));
                }
                entries.push(BackupReplicationLogEntry {
                    versionstamp: stamp(version, index).to_vec(),
                    kind: if delete {
                        BackupKvMutationKind::MkClear
                    } else {
                        BackupKvMutationKind::MkSet
                    } as i32,
                    key,
                    value: if delete { Vec::new() } else { value },
                    value_encoding: if delete { 0 } else { 3 },
                    expire_at_ms: 0,
                });
            }
            version += 1;
        }
        let name = format!(
            "logs/0001_{:016x}_{}_{}.bin",
            object + 1,
            hex::encode(&entries[0].versionstamp),
            hex::encode(&entries.last().unwrap().versionstamp)
        );
        let body = BackupMutationRange {
            entries,
            timestamp_ms: 1_700_000_000_000 + object,
        };
        write(dir.join(name), &body.encode_to_vec());
    }
    state
}

/// Syncs a clean bucket of `keys` keys of `value_bytes` bytes in `ranges`
/// large snapshot objects and checks the peak and every row.
fn clean_bucket_stays_bounded(keys: usize, ranges: usize, value_bytes: usize) {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("bucket");
    let want = write_clean_bucket(&src, keys, ranges, value_bytes);
    let largest = std::fs::read_dir(src.join("snapshots"))
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().len())
        .max()
        .unwrap();
    let db = tmp.path().join("replica.sqlite3");
    let (_, peak) = sync_measured(&src, &db, Duration::from_secs(300));
    assert_peak(
        peak,
        &format!(
            "{keys} keys in {ranges} ranges ({} MB objects)",
            largest / 1_000_000
        ),
    );
    let conn = rusqlite::Connection::open(&db).unwrap();
    let mut stmt = conn
        .prepare("select k, v, version from kv order by k")
        .unwrap();
    let mut got = stmt.query([]).unwrap();
    let mut n = 0;
    for (k, (v, version)) in &want {
        let row = got.next().unwrap().expect("as many rows as expected");
        assert_eq!(&row.get::<_, Vec<u8>>(0).unwrap(), k);
        assert!(&row.get::<_, Vec<u8>>(1).unwrap() == v, "value of {k:?}");
        assert_eq!(row.get::<_, i64>(2).unwrap() as u64, *version);
        n += 1;
    }
    assert!(
        got.next().unwrap().is_none(),
        "more rows than the {n} expected"
    );
}

// The two buckets of the issue: 300k keys in three ~60 MB objects, and a
// million keys in sixteen ranges, here ~22 MB objects (larger than the
// byte budget, which is what made them expensive; the benchmark fixture's
// many small ranges hide it).

#[test]
fn a_clean_bucket_of_300k_keys_in_three_ranges_stays_bounded() {
    clean_bucket_stays_bounded(300_000, 3, 560);
}

#[test]
fn a_clean_bucket_of_a_million_keys_in_sixteen_ranges_stays_bounded() {
    clean_bucket_stays_bounded(1_000_000, 16, 300);
}

/// A range streamed from a file that turns out corrupt near its end (after
/// thousands of rows were written in its transaction) stores none of it:
/// the sync stops naming the object (exit 65) and the replica holds no
/// half-loaded range.
#[test]
fn a_streamed_range_found_corrupt_at_its_end_stores_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("bucket");
    let n = 20_000;
    let rel = format!("snapshots/0001_{:016x}_{:016x}.bin", 1, 0);
    let path = src.join(&rel);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let mut w = BufWriter::new(std::fs::File::create(&path).unwrap());
    for i in 0..n {
        let k = [b"d".as_slice(), &fixture::key_for(i)].concat();
        put_pair(&mut w, 1, k, value_of(i as u64, 1000));
    }
    for i in 0..n {
        let mut meta = stamp(5, 0)[..10].to_vec();
        meta.push(3);
        if i == n - 1 {
            meta.truncate(3);
        }
        put_pair(
            &mut w,
            2,
            [b"m".as_slice(), &fixture::key_for(i)].concat(),
            meta,
        );
    }
    w.into_inner().unwrap().sync_all().unwrap();
    assert!(std::fs::metadata(&path).unwrap().len() > 16 << 20 >> 2);
    write(
        src.join("differential"),
        hex::encode(&stamp(10, 0)[..10]).as_bytes(),
    );
    std::fs::create_dir_all(src.join("logs")).unwrap();

    let db = tmp.path().join("replica.sqlite3");
    let (status, stderr) = bounded::run(
        Command::new(kvreplica_bin())
            .args(["sync", "--source"])
            .arg(format!("file://{}/", src.display()))
            .arg("--db")
            .arg(&db)
            .env_remove("RUST_LOG"),
        Duration::from_secs(120),
    );
    let stderr = String::from_utf8_lossy(&stderr);
    assert_eq!(status.code(), Some(65), "{stderr}");
    assert!(
        stderr.contains(&rel) && stderr.contains("metadata is 3 bytes"),
        "{stderr}"
    );
    let conn = rusqlite::Connection::open(&db).unwrap();
    let count = |sql: &str| -> i64 { conn.query_row(sql, [], |r| r.get(0)).unwrap() };
    assert_eq!(count("select count(*) from kv"), 0);
    assert_eq!(
        count("select count(*) from kvr_snapshot_ranges where loaded = 1"),
        0
    );
}

/// One commit as large as a stamp can number (65,535 entries of 1 KB
/// values, 70 MB) split across 33 log objects: each object's entries wait
/// in redo until the one holding the commit's end arrives, and the whole
/// commit then leaves redo chunk by chunk, within the bound.
#[test]
fn a_commit_split_across_many_objects_is_drained_from_redo_in_chunks() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("bucket");
    empty_snapshot_at_version_1(&src);
    let n = COMMIT_ENTRIES as usize;
    let entries: Vec<BackupReplicationLogEntry> = (0..n)
        .map(|i| BackupReplicationLogEntry {
            versionstamp: stamp(2, if i + 1 == n { 0xffff } else { i as u16 }).to_vec(),
            kind: BackupKvMutationKind::MkSet as i32,
            key: fixture::key_for(i),
            value: value_of(i as u64, 1000),
            value_encoding: 3,
            expire_at_ms: 0,
        })
        .collect();
    for (o, part) in entries.chunks(2000).enumerate() {
        let name = format!(
            "logs/0001_{:016x}_{}_{}.bin",
            o + 1,
            hex::encode(&part[0].versionstamp),
            hex::encode(&part.last().unwrap().versionstamp)
        );
        let body = BackupMutationRange {
            entries: part.to_vec(),
            timestamp_ms: 1_700_000_000_000,
        };
        write(src.join(name), &body.encode_to_vec());
    }
    drop(entries);

    let db = tmp.path().join("replica.sqlite3");
    let (_, peak) = sync_measured(&src, &db, Duration::from_secs(300));
    assert_peak(peak, "a 70 MB commit split across 33 objects");
    let conn = rusqlite::Connection::open(&db).unwrap();
    let count = |sql: &str| -> i64 { conn.query_row(sql, [], |r| r.get(0)).unwrap() };
    assert_eq!(count("select count(*) from kv where version = 2"), n as i64);
    assert_eq!(count("select count(*) from kvr_redo"), 0);
    for i in [0, n / 2, n - 1] {
        let v: Vec<u8> = conn
            .query_row("select v from kv where k = ?", [fixture::key_for(i)], |r| {
                r.get(0)
            })
            .unwrap();
        assert!(v == value_of(i as u64, 1000), "value of key {i}");
    }
}

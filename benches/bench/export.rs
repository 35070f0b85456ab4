//! `export [--keys N] [--commits C] [--runs R]`: `kvreplica export` (release
//! build) of an N-key replica to a file, against a plain `SELECT` of the
//! same rows (every column, in key order, through rusqlite) in the same
//! run, alternating, R rounds; medians. Also the export of an earlier point
//! (`--at`, half the history back: the overlay of undo rows merged in).
//! Reports entries/s, MB/s of output (and of rows read, for the SELECT)
//! and the export's peak RSS.

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use crate::common::fixture;
use crate::{kvreplica_release, median, num, read_spec, timed};

/// A plain read of every row, as a program reading the file itself would.
fn select(db: &Path) -> (f64, u64, u64) {
    let conn = rusqlite::Connection::open_with_flags(
        db,
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .unwrap();
    let t = Instant::now();
    let mut stmt = conn
        .prepare("select k, v, v_encoding, version, seq, expiration_ms from kv order by k")
        .unwrap();
    let mut rows = stmt.query([]).unwrap();
    let (mut n, mut bytes) = (0u64, 0u64);
    while let Some(r) = rows.next().unwrap() {
        let k = r.get_ref(0).unwrap().as_blob().unwrap().len();
        let v = r.get_ref(1).unwrap().as_blob().unwrap().len();
        let _: (i64, i64, i64, i64) = (
            r.get(2).unwrap(),
            r.get(3).unwrap(),
            r.get(4).unwrap(),
            r.get(5).unwrap(),
        );
        n += 1;
        bytes += (k + v + 32) as u64;
    }
    (t.elapsed().as_secs_f64(), n, bytes)
}

pub fn run(args: &[String]) {
    let keys = num(args, "--keys", 1_000_000);
    let commits = num(args, "--commits", 200);
    let runs = num(args, "--runs", 3);
    let bin = kvreplica_release();
    let tmp = tempfile::tempdir().unwrap();
    let t = Instant::now();
    let fx = fixture::Fixture::generate(read_spec(7, keys, commits / 2, commits / 2, false));
    let bucket = tmp.path().join("bucket");
    fx.write_initial(&bucket);
    let db = tmp.path().join("replica.sqlite");
    let source = format!("file://{}/", bucket.display());
    let out = Command::new(&bin)
        .args(["sync", "--source", &source, "--db"])
        .arg(&db)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let points = fx.points(fx.last_initial);
    let earlier = points[points.len() / 2].1.clone();
    eprintln!(
        "replica of {} keys ready in {:.1?} (db {:.0} MB)",
        fx.state_at(fx.last_initial).len(),
        t.elapsed(),
        std::fs::metadata(&db).unwrap().len() as f64 / 1e6
    );
    let file = tmp.path().join("export.jsonl");
    let export = |at: Option<&str>| {
        let mut cmd = Command::new(&bin);
        cmd.args(["export", "--db"])
            .arg(&db)
            .arg("--output")
            .arg(&file);
        if let Some(at) = at {
            cmd.args(["--at", at]);
        }
        let (wall, rss) = timed(&mut cmd);
        let text = std::fs::read(&file).unwrap();
        let lines = text.iter().filter(|&&b| b == b'\n').count() as u64;
        (wall, rss, lines, text.len() as u64)
    };
    let (mut ex, mut at, mut sel) = (Vec::new(), Vec::new(), Vec::new());
    let (mut rss, mut rss_at) = (Vec::new(), Vec::new());
    let (mut entries, mut out_bytes, mut at_entries, mut rows, mut row_bytes) = (0, 0, 0, 0, 0);
    for round in 0..runs {
        let (w, r, n, b) = export(None);
        (entries, out_bytes) = (n, b);
        ex.push(w);
        rss.push(r as f64);
        let (ws, n, b) = select(&db);
        (rows, row_bytes) = (n, b);
        sel.push(ws);
        let (wa, ra, na, _) = export(Some(&earlier));
        at_entries = na;
        at.push(wa);
        rss_at.push(ra as f64);
        eprintln!("round {round}: export {w:.2} s, SELECT {ws:.2} s, export --at {wa:.2} s");
    }
    assert_eq!(entries, rows, "the export has every row");
    let (ex, sel, at) = (median(ex), median(sel), median(at));
    println!(
        "export of {entries} entries: median {ex:.2} s, {:.0} entries/s, {:.1} MB/s of output ({:.0} MB), peak RSS median {:.1} MiB",
        entries as f64 / ex,
        out_bytes as f64 / 1e6 / ex,
        out_bytes as f64 / 1e6,
        median(rss) / 1024.0
    );
    println!(
        "plain SELECT of the same {rows} rows: median {sel:.2} s, {:.0} rows/s, {:.1} MB/s of rows read; export/SELECT time {:.1}x",
        rows as f64 / sel,
        row_bytes as f64 / 1e6 / sel,
        ex / sel
    );
    println!(
        "export --at {earlier} ({} commits back, {at_entries} entries): median {at:.2} s, {:.0} entries/s, peak RSS median {:.1} MiB",
        points.len() - points.len() / 2 - 1,
        at_entries as f64 / at,
        median(rss_at) / 1024.0
    );
}

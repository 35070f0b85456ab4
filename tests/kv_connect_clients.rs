//! `kvreplica serve` end to end with the real KV Connect clients: the Deno
//! CLI (HTTP/2 cleartext) and `@deno/kv` on Node (HTTP/1.1) read the shared
//! sample backups through it and must see exactly the fixtures' expected
//! final state; `watch` in both follows new commits; a copy of the replica
//! file opens in Deno as a plain KV database; two servers on one source
//! answer alike, even behind a round-robin proxy; a restarted server
//! answers from its file at once.
//!
//! The client scripts live in `tests/clients/` and print a JSON summary of
//! what they compared; the tests assert on it, including that something was
//! compared at all.

mod common;

use std::collections::BTreeMap;
use std::io::Write;
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::serve::{
    http, metadata, run_deno, run_node, spawn_deno, spawn_node, Method, ServeProcess, ACCESS_TOKEN,
};
use common::{Row, Sample};
use denokv_proto::datapath::{ReadRange, SnapshotRead, SnapshotReadOutput, SnapshotReadStatus};
use prost::Message;
use serde_json::Value;

/// Bound on one client script run: a few thousand requests on a debug
/// build, on a busy two-core machine.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(180);
/// Bound on the watch seeing appended commits, well above many poll rounds.
const WATCH_TIMEOUT: Duration = Duration::from_secs(30);

/// A sample bucket copied into a temp dir, with room for replica files.
struct Setup {
    name: String,
    dir: tempfile::TempDir,
    sample: Sample,
    bucket: PathBuf,
    source: String,
}

impl Setup {
    fn new(name: &str) -> Setup {
        let dir = tempfile::tempdir().unwrap();
        let sample = Sample::load(name);
        let bucket = dir.path().join("bucket");
        let source = sample.install_initial(&bucket);
        Setup {
            name: name.to_string(),
            dir,
            sample,
            bucket,
            source,
        }
    }

    /// Adds the append-1 log objects the way an object store shows an
    /// upload: each appears whole (copied beside the bucket, then renamed
    /// into it), in name order, so the server never lists a half-written
    /// object.
    fn append(&self) {
        let staging = self.path("staging");
        self.sample.install_append(&staging);
        let mut files = Vec::new();
        let mut dirs = vec![staging.clone()];
        while let Some(d) = dirs.pop() {
            for e in std::fs::read_dir(&d).unwrap() {
                let p = e.unwrap().path();
                if p.is_dir() {
                    dirs.push(p);
                } else {
                    files.push(p);
                }
            }
        }
        files.sort();
        assert!(!files.is_empty(), "the sample has append-1 objects");
        for f in files {
            let to = self.bucket.join(f.strip_prefix(&staging).unwrap());
            std::fs::create_dir_all(to.parent().unwrap()).unwrap();
            std::fs::rename(&f, &to).unwrap();
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn expected0(&self) -> String {
        self.expected(0)
    }

    fn expected(&self, n: u8) -> String {
        common::fixtures_dir()
            .join(&self.name)
            .join(format!("expected-{n}.json"))
            .display()
            .to_string()
    }

    /// Starts `serve` on replica file `db` and waits until it is ready and
    /// visibly at the initial bucket's latest point.
    fn serve(&self, db: &str) -> ServeProcess {
        let db = self.path(db).display().to_string();
        let mut s = ServeProcess::start(&[
            "--source",
            &self.source,
            "--db",
            &db,
            "--poll-interval",
            "100ms",
        ]);
        s.wait_ready();
        s.wait_at(&self.sample.json0.latest_point());
        s
    }

    fn final_keys(&self) -> usize {
        self.sample.json0.raw["final_state"]
            .as_object()
            .unwrap()
            .len()
    }

    /// The Deploy database id in the sample's prefix (`backups/<uuid>/`).
    fn database_id(&self) -> String {
        self.sample
            .prefix
            .trim_end_matches('/')
            .rsplit('/')
            .next()
            .unwrap()
            .to_string()
    }
}

/// A counter of the client summary, 0 when absent.
fn count(summary: &Value, what: &str) -> u64 {
    summary["counts"][what].as_u64().unwrap_or(0)
}

/// Checks a read-script summary: no mismatch, every kind of read done on
/// every key (so the test cannot pass by comparing nothing), and, for a
/// remote target, every write refused as read-only.
fn assert_reads(summary: &Value, setup: &Setup, client: &str, remote: bool) {
    let label = format!("{client} on {}", setup.name);
    assert_eq!(
        summary["failure_count"], 0,
        "{label}: mismatches: {summary:#}"
    );
    let keys = setup.final_keys() as u64;
    assert!(keys > 100, "{label}: sample too small");
    assert_eq!(summary["keys"], keys, "{label}: {summary}");
    assert!(
        count(summary, "listed_entries") >= 3 * keys,
        "{label}: {summary}"
    );
    assert!(count(summary, "lists") >= 50, "{label}: {summary}");
    assert!(count(summary, "prefixes") >= 5, "{label}: {summary}");
    assert!(count(summary, "ranges") >= 4, "{label}: {summary}");
    assert!(
        count(summary, "cursor_pages") >= 2 * keys.div_ceil(97),
        "{label}: {summary}"
    );
    assert!(count(summary, "point_reads") >= keys, "{label}: {summary}");
    assert!(count(summary, "absent_keys") > 0, "{label}: {summary}");
    assert!(
        count(summary, "get_many_calls") >= keys / 9,
        "{label}: {summary}"
    );
    assert!(count(summary, "value_u64") > 0, "{label}: {summary}");
    assert!(count(summary, "value_bytes") > 0, "{label}: {summary}");
    assert!(
        count(summary, "value_v8") + count(summary, "v8_undecodable") > 0,
        "{label}: {summary}"
    );
    if remote {
        for op in ["set", "delete", "atomic"] {
            let msg = summary["writes"][op].as_str().unwrap_or_default();
            assert!(
                msg.contains("read-only"),
                "{label}: {op} should fail with a read-only error, got: {msg:?}"
            );
        }
    }
}

fn deno_reads(target: &str, setup: &Setup, mode: &str, cwd: &Path) -> Value {
    let out = run_deno(
        "deno_reads.ts",
        &[target, &setup.expected0(), mode],
        cwd,
        CLIENT_TIMEOUT,
    );
    let summary = out.assert_success();
    eprintln!(
        "deno_reads.ts {mode} on {} in {:?}: {}",
        setup.name, out.elapsed, summary
    );
    summary
}

fn node_reads(url: &str, setup: &Setup, parallel: usize) -> Value {
    let out = run_node(
        "node_reads.cjs",
        &[url, &setup.expected0(), &parallel.to_string()],
        CLIENT_TIMEOUT,
    );
    let summary = out.assert_success();
    eprintln!(
        "node_reads.cjs on {} in {:?}: {}",
        setup.name, out.elapsed, summary
    );
    summary
}

#[test]
fn deno_cli_reads_equal_the_fixture_final_state() {
    for name in ["sample-1", "sample-2"] {
        let setup = Setup::new(name);
        let server = setup.serve("replica.sqlite");
        let summary = deno_reads(&server.kv_url(), &setup, "remote", setup.dir.path());
        assert_reads(&summary, &setup, "Deno CLI", true);
        assert!(count(&summary, "value_v8") > 0, "{summary}");
        assert_eq!(count(&summary, "v8_undecodable"), 0, "{summary}");
    }
}

/// Keys whose watch shows the append: one rewritten, and where the sample
/// has them one created, one deleted and one left alone. The untouched key
/// matters: a later frame may report it as `changed: false`, and a client
/// must keep its entry rather than read that as a deletion.
fn watch_keys(sample: &Sample) -> Vec<String> {
    let f0 = sample.json0.raw["final_state"].as_object().unwrap();
    let f1 = sample.json1.raw["final_state"].as_object().unwrap();
    let known = sample.json1.raw["keys"].as_object().unwrap();
    let changed = f0
        .iter()
        .filter(|(k, v)| f1.get(*k).is_some_and(|w| w[1] != v[1]))
        .map(|(k, _)| k.clone())
        .next()
        .expect("the sample's append rewrites some key");
    let mut keys = vec![changed];
    keys.extend(f1.keys().find(|k| !f0.contains_key(*k)).cloned());
    keys.extend(f0.keys().find(|k| !f1.contains_key(*k)).cloned());
    keys.extend(
        f0.iter()
            .find(|(k, v)| f1.get(*k) == Some(*v))
            .map(|(k, _)| k.clone()),
    );
    for k in &keys {
        assert!(known.contains_key(k), "key {k} has no decoded parts");
    }
    keys
}

/// Watches [`watch_keys`] with a client script (`deno_watch.ts` or
/// `node_watch.cjs`, same arguments) while the append-1 objects arrive.
fn watch_sees_appended_commits(node: bool) {
    let setup = Setup::new("sample-1");
    let mut server = setup.serve("replica.sqlite");
    let keys = watch_keys(&setup.sample);
    let ready = setup.path("watch-ready");
    let url = server.kv_url();
    let keys_json = serde_json::to_string(&keys).unwrap();
    let (e0, e1) = (setup.expected(0), setup.expected(1));
    let ready_arg = ready.display().to_string();
    let timeout_ms = WATCH_TIMEOUT.as_millis().to_string();
    let args = [url.as_str(), &e0, &e1, &keys_json, &ready_arg, &timeout_ms];
    let mut script = if node {
        spawn_node("node_watch.cjs", &args)
    } else {
        spawn_deno("deno_watch.ts", &args, setup.dir.path())
    };

    // Append only once the first event (the state before it) was checked.
    let deadline = Instant::now() + WATCH_TIMEOUT;
    while !ready.exists() {
        if !script.running() || Instant::now() > deadline {
            let out = script.wait(Duration::ZERO);
            panic!(
                "no initial watch event:\n{}\nserver log:\n{}",
                out.describe(),
                server.log()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    setup.append();
    // The replica itself gets there, whatever the client reports.
    server.wait_at(&setup.sample.json1.latest_point());

    let out = script.wait(2 * WATCH_TIMEOUT);
    assert!(
        out.status.is_some_and(|s| s.success()),
        "{}\nserver log:\n{}",
        out.describe(),
        server.log()
    );
    let summary = out.summary();
    assert_eq!(summary["stage"], "done", "{summary}");
    assert!(summary["events"].as_u64().unwrap() >= 2, "{summary}");
    // The last event carries expected-1's versionstamps.
    let f1 = &setup.sample.json1.raw["final_state"];
    let want: Vec<Value> = keys
        .iter()
        .map(|k| f1.get(k).map(|v| v[1].clone()).unwrap_or(Value::Null))
        .collect();
    let last = summary["versionstamps"].as_array().unwrap().last().unwrap();
    assert_eq!(last, &Value::Array(want), "{summary}");
}

#[test]
fn deno_watch_sees_appended_commits() {
    watch_sees_appended_commits(false);
}

#[test]
fn node_watch_sees_appended_commits() {
    watch_sees_appended_commits(true);
}

#[test]
fn node_deno_kv_reads_equal_the_fixture_final_state() {
    for name in ["sample-1", "sample-2"] {
        let setup = Setup::new(name);
        let server = setup.serve("replica.sqlite");
        let summary = node_reads(&server.kv_url(), &setup, 4);
        assert_reads(&summary, &setup, "@deno/kv on Node", true);
    }
}

#[test]
fn replica_file_copy_opens_in_deno() {
    let setup = Setup::new("sample-2");
    let server = setup.serve("replica.sqlite");
    let status = server.terminate();
    assert!(
        status.success(),
        "serve exit status after SIGTERM: {status}"
    );

    let copy_dir = setup.path("copy");
    std::fs::create_dir_all(&copy_dir).unwrap();
    let db = setup.path("replica.sqlite");
    std::fs::copy(&db, copy_dir.join("copy.sqlite")).unwrap();
    let wal = setup.path("replica.sqlite-wal");
    if wal.exists() {
        std::fs::copy(&wal, copy_dir.join("copy.sqlite-wal")).unwrap();
    }
    let summary = deno_reads("./copy.sqlite", &setup, "local", &copy_dir);
    assert_reads(&summary, &setup, "Deno.openKv on a copy", false);
}

/// The `x-denokv-*` headers and token of a data-path request.
fn data_headers(db_id: &str) -> Vec<(String, String)> {
    vec![
        ("authorization".into(), format!("Bearer {ACCESS_TOKEN}")),
        ("x-denokv-database-id".into(), db_id.into()),
        ("x-denokv-version".into(), "3".into()),
        ("content-type".into(), "application/x-protobuf".into()),
    ]
}

/// One `snapshot_read` of a single range; the decoded answer, or the
/// status and body text of a refusal.
fn snapshot_read(
    kv_url: &str,
    db_id: &str,
    range: ReadRange,
) -> Result<SnapshotReadOutput, String> {
    let headers = data_headers(db_id);
    let headers: Vec<(&str, &str)> = headers
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let body = SnapshotRead {
        ranges: vec![range],
    }
    .encode_to_vec();
    let r = http(
        Method::Post,
        &format!("{kv_url}/v2/snapshot_read"),
        &headers,
        body,
    )?;
    if r.status != 200 {
        return Err(format!("{} {}", r.status, r.text()));
    }
    let out = SnapshotReadOutput::decode(r.body.as_slice()).map_err(|e| e.to_string())?;
    assert_eq!(out.status, SnapshotReadStatus::SrSuccess as i32);
    assert_eq!(out.ranges.len(), 1);
    Ok(out)
}

/// Every entry of the database through `snapshot_read`, 1000 at a time,
/// as replica rows (hex key → row) for the fixtures' comparison.
fn scan_all(kv_url: &str, db_id: &str) -> BTreeMap<String, Row> {
    let mut rows = BTreeMap::new();
    let mut start = vec![0x00];
    loop {
        let range = ReadRange {
            start: start.clone(),
            end: vec![0xff],
            limit: 1000,
            reverse: false,
        };
        let out = snapshot_read(kv_url, db_id, range).unwrap();
        let values = &out.ranges[0].values;
        for e in values {
            rows.insert(
                hex::encode(&e.key),
                Row {
                    value: e.value.clone(),
                    encoding: i64::from(e.encoding),
                    versionstamp: hex::encode(&e.versionstamp),
                    expire_at_ms: -1,
                },
            );
        }
        match values.last() {
            Some(last) if values.len() == 1000 => {
                start = last.key.clone();
                start.push(0x00);
            }
            _ => return rows,
        }
    }
}

/// Parses a metadata answer, checking the parts clients rely on.
fn database_id_of(server: &ServeProcess) -> String {
    let r = metadata(&server.kv_url());
    assert_eq!(r.status, 200, "metadata: {}", r.text());
    assert_eq!(r.content_type, "application/json");
    let v: Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(v["version"], 3, "{v}");
    assert_eq!(v["token"], ACCESS_TOKEN, "{v}");
    v["databaseId"].as_str().expect("databaseId").to_string()
}

/// A TCP proxy on 127.0.0.1 that hands each new connection to the next
/// upstream in turn, so one client's connections land on different servers.
/// HTTP/2 clients keep one connection, so they alternate per client run;
/// HTTP/1.1 clients open one per request in flight.
struct RoundRobinProxy {
    addr: SocketAddr,
    connections: Arc<Vec<AtomicUsize>>,
    stop: Arc<AtomicBool>,
}

impl RoundRobinProxy {
    fn start(upstreams: Vec<String>) -> RoundRobinProxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let connections: Arc<Vec<AtomicUsize>> =
            Arc::new(upstreams.iter().map(|_| AtomicUsize::new(0)).collect());
        let stop = Arc::new(AtomicBool::new(false));
        let (counts, stopped) = (connections.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut next = 0;
            for down in listener.incoming() {
                if stopped.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(down) = down else { continue };
                let i = next % upstreams.len();
                next += 1;
                counts[i].fetch_add(1, Ordering::SeqCst);
                if let Ok(up) = TcpStream::connect(&upstreams[i]) {
                    pipe(down, up);
                }
            }
        });
        RoundRobinProxy {
            addr,
            connections,
            stop,
        }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn connections(&self) -> Vec<usize> {
        self.connections
            .iter()
            .map(|c| c.load(Ordering::SeqCst))
            .collect()
    }
}

impl Drop for RoundRobinProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wakes the accept loop so it sees the flag.
        let _ = TcpStream::connect(self.addr);
    }
}

/// Copies bytes both ways until each side closes. No Nagle: HTTP/2 frames
/// are small and a delayed ACK would stall every request.
fn pipe(a: TcpStream, b: TcpStream) {
    let _ = a.set_nodelay(true);
    let _ = b.set_nodelay(true);
    for (mut from, mut to) in [(a.try_clone().unwrap(), b.try_clone().unwrap()), (b, a)] {
        std::thread::spawn(move || {
            let _ = std::io::copy(&mut from, &mut to);
            let _ = to.flush();
            let _ = to.shutdown(Shutdown::Write);
        });
    }
}

#[test]
fn two_servers_on_one_source_answer_alike() {
    let setup = Setup::new("sample-1");
    let a = setup.serve("a.sqlite");
    let b = setup.serve("b.sqlite");

    let (id_a, id_b) = (database_id_of(&a), database_id_of(&b));
    assert_eq!(id_a, id_b, "both servers report one database");
    assert_eq!(id_a, setup.database_id());

    // Each server alone holds exactly the fixture's final state.
    let rows_a = scan_all(&a.kv_url(), &id_a);
    let rows_b = scan_all(&b.kv_url(), &id_b);
    setup.sample.json0.assert_final(&rows_a);
    assert_eq!(rows_a, rows_b, "the two servers answer alike");

    // Clients behind a round-robin proxy: Deno twice (one connection per
    // run, so one run per server), Node with requests in flight at once (a
    // connection each: metadata from one server, reads from both).
    let proxy = RoundRobinProxy::start(vec![a.kv_url()[7..].into(), b.kv_url()[7..].into()]);
    for _ in 0..2 {
        let summary = deno_reads(&proxy.url(), &setup, "remote", setup.dir.path());
        assert_reads(&summary, &setup, "Deno CLI via proxy", true);
    }
    let after_deno = proxy.connections();
    assert!(
        after_deno.iter().all(|&n| n > 0),
        "both servers got Deno connections: {after_deno:?}"
    );
    let summary = node_reads(&proxy.url(), &setup, 6);
    assert_reads(&summary, &setup, "@deno/kv via proxy", true);
    let after_node = proxy.connections();
    assert!(
        after_node
            .iter()
            .zip(&after_deno)
            .all(|(now, before)| now > before),
        "Node's connections went to both servers: {after_deno:?} -> {after_node:?}"
    );
}

#[test]
fn restarted_server_answers_from_its_file_at_once() {
    let setup = Setup::new("sample-2");
    let first = setup.serve("replica.sqlite");
    let id = database_id_of(&first);
    assert!(first.terminate().success());

    // No wait for readiness: the file already holds a complete replica.
    let db = setup.path("replica.sqlite").display().to_string();
    let mut second = ServeProcess::start(&[
        "--source",
        &setup.source,
        "--db",
        &db,
        "--poll-interval",
        "100ms",
    ]);
    let r = metadata(&second.kv_url());
    assert_eq!(
        r.status,
        200,
        "metadata right after a restart: {}\nlog:\n{}",
        r.text(),
        second.log()
    );
    let v: Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(v["databaseId"], id.as_str());
    let range = ReadRange {
        start: vec![0x00],
        end: vec![0xff],
        limit: 1000,
        reverse: false,
    };
    let out = snapshot_read(&second.kv_url(), &id, range).unwrap_or_else(|e| {
        panic!(
            "snapshot_read right after a restart: {e}\nlog:\n{}",
            second.log()
        )
    });
    let got: Vec<(String, String)> = out.ranges[0]
        .values
        .iter()
        .map(|e| (hex::encode(&e.key), hex::encode(&e.versionstamp)))
        .collect();
    let mut want: Vec<(String, String)> = setup.sample.json0.raw["final_state"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), v[1].as_str().unwrap().to_string()))
        .collect();
    want.sort();
    want.truncate(1000);
    assert!(!want.is_empty());
    assert_eq!(got, want, "first 1000 entries right after a restart");
    second.wait_ready();
}

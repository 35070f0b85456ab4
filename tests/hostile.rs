//! Hostile clients against both listeners, over real sockets on 127.0.0.1:
//! random protobuf and JSON bodies, bodies of 10 MiB (with and without a
//! length, HTTP/1.1 and h2c), extreme limits, range counts and key sizes,
//! header bytes that are not UTF-8, slowloris, silent and idle
//! connections, more connections and watch streams than the caps, and a
//! sweep of bad tokens over every authenticated endpoint of a
//! `kvreplica serve` process logging at debug.
//!
//! Every answer is a 4xx (a 503 at a cap), the server answers a normal
//! read afterwards, its memory stays bounded, no token shows in an answer
//! or the log, and the replica's contents never change.
//!
//! The random cases run `PROPTEST_CASES` times (256 by default); set it
//! higher for a longer run.

mod common;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::read_replica;
use common::serve::{ServeProcess, ACCESS_TOKEN as CHILD_TOKEN, ADMIN_TOKEN as CHILD_ADMIN};
use common::served::Generated;
use denokv_proto::datapath::{
    AtomicWrite, ReadRange, SnapshotRead, SnapshotReadOutput, Watch, WatchKey,
};
use kvreplica::admin::{self, AdminContext};
use kvreplica::auth::Tokens;
use kvreplica::server::{self, KvConnect, Limits, ServerOptions};
use kvreplica::source::SourceUrl;
use kvreplica::sync::Syncer;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use prost::Message;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const TOKEN: &str = "kv-connect-token-for-hostile-tests";
const ADMIN_TOKEN: &str = "admin-token-for-hostile-tests";
/// Bound on one exchange.
const TIMEOUT: Duration = Duration::from_secs(15);
const MIB: usize = 1024 * 1024;
/// Growth of the resident set allowed across a barrage.
const MEMORY_BOUND_KIB: u64 = 100 * 1024;
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// The proptest configuration: `PROPTEST_CASES` cases (256 by default),
/// no regression files.
fn fuzz_config() -> Config {
    Config {
        failure_persistence: None,
        ..Config::default()
    }
}

/// Resident set of a process (`None`: this one), in KiB.
fn rss_kib(pid: Option<u32>) -> u64 {
    let path = match pid {
        Some(p) => format!("/proc/{p}/status"),
        None => "/proc/self/status".to_string(),
    };
    let status = std::fs::read_to_string(path).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/.../status")
}

/// A generated backup in `<tmp>/prefix/` and its `file://` URL.
fn backup(seed: u64) -> (tempfile::TempDir, String) {
    let g = Generated::new(seed);
    (g.tmp, g.source)
}

/// One answer: status and body text.
#[derive(Debug)]
struct Answer {
    status: u16,
    text: String,
}

/// Asserts an error answer with a status in `want`, a non-empty body and
/// no token in it.
fn assert_refused(a: &Answer, want: &[u16], label: &str) {
    assert!(
        want.contains(&a.status),
        "{label}: status {} (want {want:?}): {}",
        a.status,
        a.text
    );
    assert!(!a.text.trim().is_empty(), "{label}: empty body");
    for t in [TOKEN, ADMIN_TOKEN, CHILD_TOKEN, CHILD_ADMIN] {
        assert!(!a.text.contains(t), "{label}: a token in the body");
    }
}

/// KV Connect and the admin API in this process, over a loaded replica.
struct Harness {
    kv: SocketAddr,
    admin: SocketAddr,
    db_id: String,
    db: PathBuf,
    _tmp: tempfile::TempDir,
    _syncer: Arc<Syncer>,
    stop: Vec<tokio::sync::oneshot::Sender<()>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    h1: reqwest::Client,
    h2: reqwest::Client,
}

impl Harness {
    async fn start(limits: Limits) -> Harness {
        let (tmp, url) = backup(71);
        let url = SourceUrl::parse(&url).unwrap();
        let db = tmp.path().join("r.sqlite");
        let syncer = common::syncer(&url, &db, true).await;
        let database_id = server::database_id(&url);
        let kv = KvConnect::new(
            syncer.clone(),
            &db,
            ServerOptions {
                tokens: Tokens::new(vec![TOKEN.to_string()]),
                database_id,
                readers: 2,
                limits: limits.clone(),
            },
        )
        .unwrap();
        let ctx =
            AdminContext::new(syncer.clone(), Tokens::new(vec![ADMIN_TOKEN.into()]), &db).unwrap();
        let kv_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let admin_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let kv_addr = kv_listener.local_addr().unwrap();
        let admin_addr = admin_listener.local_addr().unwrap();
        let (kv_stop, kv_rx) = tokio::sync::oneshot::channel::<()>();
        let (admin_stop, admin_rx) = tokio::sync::oneshot::channel::<()>();
        let tasks = vec![
            tokio::spawn(server::serve(kv, kv_listener, async move {
                let _ = kv_rx.await;
            })),
            tokio::spawn(admin::serve_with(
                ctx,
                admin_listener,
                Limits {
                    max_connections: admin::MAX_CONNECTIONS,
                    ..limits
                },
                async move {
                    let _ = admin_rx.await;
                },
            )),
        ];
        Harness {
            kv: kv_addr,
            admin: admin_addr,
            db_id: database_id.to_string(),
            db,
            _tmp: tmp,
            _syncer: syncer,
            stop: vec![kv_stop, admin_stop],
            tasks,
            h1: reqwest::Client::builder().http1_only().build().unwrap(),
            h2: reqwest::Client::builder()
                .http2_prior_knowledge()
                .build()
                .unwrap(),
        }
    }

    async fn stop(self) {
        for s in self.stop {
            let _ = s.send(());
        }
        for t in self.tasks {
            tokio::time::timeout(TIMEOUT, t)
                .await
                .expect("server stops")
                .unwrap();
        }
    }

    fn clients(&self) -> [(&reqwest::Client, &'static str); 2] {
        [(&self.h1, "HTTP/1.1"), (&self.h2, "h2c")]
    }

    /// The headers of a well-formed data path request with `auth` as the
    /// whole authorization header.
    fn data_headers(&self, auth: Option<&str>) -> Vec<(String, String)> {
        data_headers(&self.db_id, auth)
    }

    async fn data(
        &self,
        client: &reqwest::Client,
        path: &str,
        body: impl Into<reqwest::Body>,
    ) -> Answer {
        let auth = format!("Bearer {TOKEN}");
        send(
            client,
            "POST",
            &format!("http://{}{path}", self.kv),
            &self.data_headers(Some(&auth)),
            Some(body.into()),
        )
        .await
        .unwrap_or_else(|e| panic!("{path}: {e}"))
    }

    async fn admin_call(
        &self,
        client: &reqwest::Client,
        method: &str,
        path: &str,
        body: Option<reqwest::Body>,
    ) -> Answer {
        let auth = format!("Bearer {ADMIN_TOKEN}");
        send(
            client,
            method,
            &format!("http://{}{path}", self.admin),
            &[("authorization".into(), auth)],
            body,
        )
        .await
        .unwrap_or_else(|e| panic!("{path}: {e}"))
    }

    /// A normal read answers 200 over both transports, quickly.
    async fn assert_healthy(&self, label: &str) {
        for (client, proto) in self.clients() {
            let started = Instant::now();
            let a = self.data(client, "/v2/snapshot_read", read_all()).await;
            assert_eq!(a.status, 200, "{label}, {proto}: {}", a.text);
            assert!(
                started.elapsed() < Duration::from_secs(5),
                "{label}, {proto}: a normal read took {:?}",
                started.elapsed()
            );
        }
        let a = self
            .admin_call(&self.h1, "GET", "/pitr/current", None)
            .await;
        assert_eq!(a.status, 200, "{label}, admin: {}", a.text);
    }
}

fn data_headers(db_id: &str, auth: Option<&str>) -> Vec<(String, String)> {
    let mut h = vec![
        ("x-denokv-version".to_string(), "3".to_string()),
        ("x-denokv-database-id".to_string(), db_id.to_string()),
        (
            "content-type".to_string(),
            "application/x-protobuf".to_string(),
        ),
    ];
    if let Some(a) = auth {
        h.push(("authorization".to_string(), a.to_string()));
    }
    h
}

async fn send(
    client: &reqwest::Client,
    method: &str,
    url: &str,
    headers: &[(String, String)],
    body: Option<reqwest::Body>,
) -> Result<Answer, String> {
    let mut req = client
        .request(method.parse().unwrap(), url)
        .timeout(TIMEOUT);
    for (k, v) in headers {
        req = req.header(k.as_str(), v.as_str());
    }
    if let Some(b) = body {
        req = req.body(b);
    }
    let resp = req.send().await.map_err(|e| format!("{url}: {e:?}"))?;
    let status = resp.status().as_u16();
    // A watch that was accepted streams forever: take the head only.
    let text = if status == 200
        && resp
            .headers()
            .get("content-type")
            .is_some_and(|v| v == "application/octet-stream")
    {
        String::new()
    } else {
        let body = resp
            .bytes()
            .await
            .map_err(|e| format!("{url}: body: {e:?}"))?;
        String::from_utf8_lossy(&body).into_owned()
    };
    Ok(Answer { status, text })
}

fn range(start: &[u8], end: &[u8], limit: i32) -> ReadRange {
    ReadRange {
        start: start.to_vec(),
        end: end.to_vec(),
        limit,
        reverse: false,
    }
}

fn read_body(ranges: Vec<ReadRange>) -> Vec<u8> {
    SnapshotRead { ranges }.encode_to_vec()
}

fn read_all() -> Vec<u8> {
    read_body(vec![range(&[0x00], &[0xff], 100)])
}

fn watch_body(keys: Vec<Vec<u8>>) -> Vec<u8> {
    Watch {
        keys: keys.into_iter().map(|key| WatchKey { key }).collect(),
    }
    .encode_to_vec()
}

/// A body of `len` bytes streamed without a length (HTTP/1.1 chunked, or
/// h2 DATA frames with no content-length).
fn streamed(len: usize) -> reqwest::Body {
    let chunk = bytes::Bytes::from(vec![b'x'; 64 * 1024]);
    let n = len / chunk.len();
    reqwest::Body::wrap_stream(futures::stream::iter(
        (0..n).map(move |_| Ok::<_, std::io::Error>(chunk.clone())),
    ))
}

/// What a raw HTTP/1 client sends after its head.
enum Upload {
    None,
    Bytes(Vec<u8>),
    /// `len` bytes of filler, with `content-length` (in the head) or
    /// chunked.
    Huge {
        len: usize,
        chunked: bool,
    },
}

/// What came back on a raw connection.
#[derive(Debug)]
struct Raw {
    status: Option<u16>,
    text: String,
}

impl Raw {
    fn answer(&self, label: &str) -> Answer {
        Answer {
            status: self
                .status
                .unwrap_or_else(|| panic!("{label}: no HTTP answer: {:?}", self.text)),
            text: self.text.clone(),
        }
    }
}

fn parse_raw(buf: &[u8]) -> Raw {
    let text = String::from_utf8_lossy(buf).into_owned();
    let status = text
        .strip_prefix("HTTP/1.1 ")
        .and_then(|s| s.get(..3))
        .and_then(|s| s.parse().ok());
    let body = match text.find("\r\n\r\n") {
        Some(i) => text[i + 4..].to_string(),
        None => text.clone(),
    };
    Raw { status, text: body }
}

/// Sends `head` and `upload` on a new connection (the upload written
/// while the answer is read, its errors ignored) and reads until the
/// server closes.
async fn raw_exchange(addr: SocketAddr, head: Vec<u8>, upload: Upload) -> Raw {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (mut rd, mut wr) = stream.into_split();
    let writer = tokio::spawn(async move {
        let r: std::io::Result<()> = async {
            wr.write_all(&head).await?;
            match upload {
                Upload::None => {}
                Upload::Bytes(b) => wr.write_all(&b).await?,
                Upload::Huge { len, chunked } => {
                    let chunk = vec![b'x'; 64 * 1024];
                    let mut sent = 0;
                    while sent < len {
                        if chunked {
                            wr.write_all(format!("{:x}\r\n", chunk.len()).as_bytes())
                                .await?;
                        }
                        wr.write_all(&chunk).await?;
                        if chunked {
                            wr.write_all(b"\r\n").await?;
                        }
                        sent += chunk.len();
                    }
                    if chunked {
                        wr.write_all(b"0\r\n\r\n").await?;
                    }
                }
            }
            Ok(())
        }
        .await;
        // Keep the write side open (no FIN) until the answer is read.
        std::future::pending::<()>().await;
        drop((r, wr));
    });
    let mut buf = Vec::new();
    let read = tokio::time::timeout(TIMEOUT, async {
        let mut chunk = [0u8; 16 * 1024];
        loop {
            match rd.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
            if buf.len() > 1024 * 1024 {
                break;
            }
        }
    })
    .await;
    writer.abort();
    assert!(read.is_ok(), "no end of the answer within {TIMEOUT:?}");
    parse_raw(&buf)
}

/// A request head with `connection: close` and the given extra lines.
fn head(method: &str, path: &str, lines: &[&[u8]]) -> Vec<u8> {
    let mut h =
        format!("{method} {path} HTTP/1.1\r\nhost: replica\r\nconnection: close\r\n").into_bytes();
    for l in lines {
        h.extend_from_slice(l);
        h.extend_from_slice(b"\r\n");
    }
    h.extend_from_slice(b"\r\n");
    h
}

fn data_head(db_id: &str, auth: &[u8], body_len: Option<usize>, chunked: bool) -> Vec<u8> {
    let id = format!("x-denokv-database-id: {db_id}");
    let len = body_len.map(|n| format!("content-length: {n}"));
    let mut auth_line = b"authorization: ".to_vec();
    auth_line.extend_from_slice(auth);
    let mut lines: Vec<&[u8]> = vec![
        &auth_line,
        b"x-denokv-version: 3",
        id.as_bytes(),
        b"content-type: application/x-protobuf",
    ];
    if let Some(l) = &len {
        lines.push(l.as_bytes());
    }
    if chunked {
        lines.push(b"transfer-encoding: chunked");
    }
    head("POST", "/v2/snapshot_read", &lines)
}

/// A HEADERS frame (END_STREAM, END_HEADERS) for `GET path` on `stream`,
/// its header block in HPACK literals without indexing.
fn h2_get(stream: u32, path: &str) -> Vec<u8> {
    let mut block = Vec::new();
    for (name, value) in [
        (":method", "GET"),
        (":scheme", "http"),
        (":authority", "replica"),
        (":path", path),
    ] {
        block.push(0);
        block.push(name.len() as u8);
        block.extend_from_slice(name.as_bytes());
        block.push(value.len() as u8);
        block.extend_from_slice(value.as_bytes());
    }
    let mut frame = (block.len() as u32).to_be_bytes()[1..].to_vec();
    frame.extend_from_slice(&[0x1, 0x5]);
    frame.extend_from_slice(&stream.to_be_bytes());
    frame.extend_from_slice(&block);
    frame
}

/// What an HTTP/2 server did on a connection.
#[derive(Debug)]
struct H2Session {
    /// The first GOAWAY's error code, and when it came.
    goaway: Option<(u32, Instant)>,
    /// When the server closed the connection.
    closed: Option<Instant>,
}

/// Reads HTTP/2 frames (acknowledging SETTINGS and PINGs, as a client
/// does) until the server closes the connection or `within` passes.
async fn h2_session(stream: &mut TcpStream, within: Duration) -> H2Session {
    let mut out = H2Session {
        goaway: None,
        closed: None,
    };
    let _ = tokio::time::timeout(within, async {
        loop {
            let mut h = [0u8; 9];
            if stream.read_exact(&mut h).await.is_err() {
                out.closed = Some(Instant::now());
                return;
            }
            let len = u32::from_be_bytes([0, h[0], h[1], h[2]]) as usize;
            let mut payload = vec![0u8; len];
            if stream.read_exact(&mut payload).await.is_err() {
                out.closed = Some(Instant::now());
                return;
            }
            let (kind, flags) = (h[3], h[4]);
            let ack: Option<Vec<u8>> = match kind {
                0x4 if flags & 1 == 0 => Some(vec![0, 0, 0, 0x4, 1, 0, 0, 0, 0]),
                0x6 if flags & 1 == 0 => {
                    let mut f = vec![0, 0, 8, 0x6, 1, 0, 0, 0, 0];
                    f.extend_from_slice(&payload);
                    Some(f)
                }
                0x7 if payload.len() >= 8 && out.goaway.is_none() => {
                    let code = u32::from_be_bytes(payload[4..8].try_into().unwrap());
                    out.goaway = Some((code, Instant::now()));
                    None
                }
                _ => None,
            };
            if let Some(ack) = ack {
                let _ = stream.write_all(&ack).await;
            }
        }
    })
    .await;
    out
}

/// Reads until the server closes the connection; when it did.
async fn closed(stream: &mut TcpStream, within: Duration) -> Option<Instant> {
    tokio::time::timeout(within, async {
        let mut buf = [0u8; 4096];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return Instant::now(),
                Ok(_) => {}
            }
        }
    })
    .await
    .ok()
}

fn metric_line(text: &str, prefix: &str) -> bool {
    text.lines().any(|l| l.starts_with(prefix))
}

/// The expected answer to a `snapshot_read` of `ranges`: 200 when every
/// limit holds, else 400.
fn read_verdict(ranges: &[ReadRange], body_len: usize) -> u16 {
    let ok = body_len <= server::MAX_BODY_BYTES
        && ranges.len() <= server::limits::MAX_READ_RANGES
        && ranges
            .iter()
            .all(|r| r.limit >= 1 && r.limit as usize <= server::limits::MAX_READ_ENTRIES)
        && ranges
            .iter()
            .map(|r| r.limit.max(0) as usize)
            .sum::<usize>()
            <= server::limits::MAX_READ_ENTRIES
        && ranges.iter().all(|r| {
            r.start.len() <= server::limits::MAX_READ_KEY_SIZE_BYTES
                && r.end.len() <= server::limits::MAX_READ_KEY_SIZE_BYTES
        });
    if ok {
        200
    } else {
        400
    }
}

fn key_strategy() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..8),
        prop::collection::vec(any::<u8>(), 2040..2060),
    ]
}

fn limit_strategy() -> impl Strategy<Value = i32> {
    prop_oneof![
        1..=120i32,
        990..=1010i32,
        any::<i32>(),
        Just(0),
        Just(-1),
        Just(i32::MAX),
        Just(i32::MIN),
    ]
}

fn range_strategy() -> impl Strategy<Value = ReadRange> {
    (
        key_strategy(),
        key_strategy(),
        limit_strategy(),
        any::<bool>(),
    )
        .prop_map(|(start, end, limit, reverse)| ReadRange {
            start,
            end,
            limit,
            reverse,
        })
}

/// Random bytes to every endpoint that decodes a body (protobuf on the
/// data path, JSON on metadata and checkout), over both transports, and
/// generated reads whose answer must follow the limits exactly.
#[test]
fn random_bodies_get_4xx_answers() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let h = rt.block_on(Harness::start(Limits::default()));
    let rows = read_replica(&h.db);
    let rss_before = rss_kib(None);

    let mut runner = TestRunner::new(fuzz_config());
    let targets = 6usize;
    runner
        .run(
            &(0..targets, prop::collection::vec(any::<u8>(), 0..2048)),
            |(target, bytes)| {
                let decodes_read = SnapshotRead::decode(&bytes[..]).ok();
                let decodes_watch = Watch::decode(&bytes[..]).is_ok();
                let (label, a) = rt.block_on(async {
                    match target {
                        0 | 1 => {
                            let (client, proto) = h.clients()[target];
                            let a = h.data(client, "/v2/snapshot_read", bytes.clone()).await;
                            (format!("{proto} snapshot_read"), a)
                        }
                        2 | 3 => {
                            let (client, proto) = h.clients()[target - 2];
                            let a = h.data(client, "/v2/watch", bytes.clone()).await;
                            (format!("{proto} watch"), a)
                        }
                        4 => {
                            let auth = format!("Bearer {TOKEN}");
                            let a = send(
                                &h.h1,
                                "POST",
                                &format!("http://{}/", h.kv),
                                &[("authorization".into(), auth)],
                                Some(bytes.clone().into()),
                            )
                            .await
                            .unwrap();
                            ("metadata".to_string(), a)
                        }
                        _ => {
                            let a = h
                                .admin_call(
                                    &h.h2,
                                    "POST",
                                    "/pitr/checkout",
                                    Some(bytes.clone().into()),
                                )
                                .await;
                            ("checkout".to_string(), a)
                        }
                    }
                });
                match target {
                    0 | 1 => match &decodes_read {
                        Some(req) => prop_assert_eq!(
                            a.status,
                            read_verdict(&req.ranges, bytes.len()),
                            "{}: {}",
                            label,
                            a.text
                        ),
                        None => assert_refused(&a, &[400], &label),
                    },
                    2 | 3 if decodes_watch => {
                        prop_assert!(a.status == 200 || a.status == 400, "{label}: {a:?}")
                    }
                    _ => assert_refused(&a, &[400], &label),
                }
                Ok(())
            },
        )
        .unwrap();

    // Generated reads: the answer follows the limits exactly, and a read
    // that passes them returns at most its limits' entries.
    let mut runner = TestRunner::new(fuzz_config());
    runner
        .run(
            &(prop::collection::vec(range_strategy(), 0..14), 0..2usize),
            |(ranges, proto)| {
                let body = read_body(ranges.clone());
                let want = read_verdict(&ranges, body.len());
                let (client, name) = h.clients()[proto];
                let resp = rt.block_on(async {
                    let auth = format!("Bearer {TOKEN}");
                    let mut req = client
                        .post(format!("http://{}/v2/snapshot_read", h.kv))
                        .timeout(TIMEOUT)
                        .body(body);
                    for (k, v) in h.data_headers(Some(&auth)) {
                        req = req.header(k, v);
                    }
                    let r = req.send().await.unwrap();
                    let status = r.status().as_u16();
                    (status, r.bytes().await.unwrap())
                });
                prop_assert_eq!(
                    resp.0,
                    want,
                    "{}: {:?}",
                    name,
                    String::from_utf8_lossy(&resp.1)
                );
                if resp.0 == 200 {
                    let out = SnapshotReadOutput::decode(&resp.1[..]).unwrap();
                    prop_assert_eq!(out.ranges.len(), ranges.len());
                    for (got, asked) in out.ranges.iter().zip(&ranges) {
                        prop_assert!(got.values.len() <= asked.limit as usize);
                    }
                }
                Ok(())
            },
        )
        .unwrap();

    rt.block_on(h.assert_healthy("after the random bodies"));
    let grown = rss_kib(None).saturating_sub(rss_before);
    assert!(grown < MEMORY_BOUND_KIB, "resident set grew by {grown} KiB");
    assert_eq!(read_replica(&h.db), rows, "the replica changed");
    rt.block_on(h.stop());
}

/// Bodies of 10 MiB every way they can come, extreme reads, malformed
/// JSON and header bytes that are not UTF-8.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_and_malformed_requests() {
    let h = Harness::start(Limits::default()).await;
    let rows = read_replica(&h.db);
    let rss_before = rss_kib(None);
    let started = Instant::now();
    let auth = format!("Bearer {TOKEN}");
    let admin_auth = format!("Bearer {ADMIN_TOKEN}");
    let ten = 10 * MIB;

    // 10 MiB to the data path and to checkout: with a length (refused
    // before reading) and without (reading stops at the limit), on
    // HTTP/1.1 (raw, so the client keeps writing) and h2c.
    for chunked in [false, true] {
        let len = (!chunked).then_some(ten);
        let label = if chunked { "chunked" } else { "content-length" };
        let r = raw_exchange(
            h.kv,
            data_head(&h.db_id, auth.as_bytes(), len, chunked),
            Upload::Huge { len: ten, chunked },
        )
        .await;
        let a = r.answer(&format!("HTTP/1.1 snapshot_read 10 MiB {label}"));
        assert_refused(&a, &[400], label);
        assert!(a.text.contains("too large"), "{label}: {}", a.text);

        let mut lines: Vec<Vec<u8>> = vec![
            format!("authorization: {admin_auth}").into_bytes(),
            b"content-type: application/json".to_vec(),
        ];
        match len {
            Some(n) => lines.push(format!("content-length: {n}").into_bytes()),
            None => lines.push(b"transfer-encoding: chunked".to_vec()),
        }
        let lines: Vec<&[u8]> = lines.iter().map(|l| l.as_slice()).collect();
        let r = raw_exchange(
            h.admin,
            head("POST", "/pitr/checkout", &lines),
            Upload::Huge { len: ten, chunked },
        )
        .await;
        assert_refused(
            &r.answer(&format!("HTTP/1.1 checkout 10 MiB {label}")),
            &[400],
            label,
        );
    }
    for (body, label) in [
        (reqwest::Body::from(vec![b'x'; ten]), "content-length"),
        (streamed(ten), "streamed"),
    ] {
        let a = h.data(&h.h2, "/v2/snapshot_read", body).await;
        assert_refused(&a, &[400], &format!("h2c snapshot_read 10 MiB {label}"));
    }
    for (body, label) in [
        (reqwest::Body::from(vec![b'{'; ten]), "content-length"),
        (streamed(ten), "streamed"),
    ] {
        let a = h
            .admin_call(&h.h2, "POST", "/pitr/checkout", Some(body))
            .await;
        assert_refused(&a, &[400], &format!("h2c checkout 10 MiB {label}"));
    }
    // Refused from its content-length and the connection closed: an
    // HTTP/1.1 client still writing the body may see the close (broken
    // pipe, reset) before it reads the 400.
    let auth = format!("Bearer {TOKEN}");
    match send(
        &h.h1,
        "POST",
        &format!("http://{}/", h.kv),
        &h.data_headers(Some(&auth)),
        Some(vec![b' '; ten].into()),
    )
    .await
    {
        Ok(a) => assert_refused(&a, &[400], "metadata 10 MiB"),
        Err(e) => assert!(
            ["Broken pipe", "reset", "BodyWrite", "connection closed"]
                .iter()
                .any(|w| e.contains(w)),
            "metadata 10 MiB: neither a 400 nor a closed connection: {e}"
        ),
    }

    // Extreme reads.
    let big_key = vec![0x02; 100 * 1024];
    let long_key = vec![0x02; 60 * 1024];
    for (client, proto) in h.clients() {
        let cases: Vec<(&str, Vec<u8>, &str)> = vec![
            (
                "limit i32::MAX",
                read_body(vec![range(&[0], &[0xff], i32::MAX)]),
                "limit",
            ),
            (
                "limit i32::MIN",
                read_body(vec![range(&[0], &[0xff], i32::MIN)]),
                "limit",
            ),
            (
                "5000 ranges",
                read_body((0..5000).map(|_| range(&[0], &[0xff], 1)).collect()),
                "ranges",
            ),
            (
                "100 KiB key",
                read_body(vec![range(&big_key, &[0xff], 1)]),
                "too large",
            ),
            (
                "60 KiB key",
                read_body(vec![range(&long_key, &[0xff], 1)]),
                "key",
            ),
        ];
        for (label, body, says) in cases {
            let a = h.data(client, "/v2/snapshot_read", body).await;
            assert_refused(&a, &[400], &format!("{proto} {label}"));
            assert!(a.text.contains(says), "{proto} {label}: {}", a.text);
        }
        for (label, keys, says) in [
            ("watch 5000 keys", vec![vec![2u8]; 5000], "keys"),
            ("watch 60 KiB key", vec![long_key.clone()], "key"),
            ("watch 100 KiB key", vec![big_key.clone()], "too large"),
        ] {
            let a = h.data(client, "/v2/watch", watch_body(keys)).await;
            assert_refused(&a, &[400], &format!("{proto} {label}"));
            assert!(a.text.contains(says), "{proto} {label}: {}", a.text);
        }
        // Empty keys are keys like any other.
        for ranges in [
            vec![range(&[], &[], 10)],
            vec![range(&[], &[0xff], 10)],
            vec![range(&[], &[0x00], 10)],
        ] {
            let a = h.data(client, "/v2/snapshot_read", read_body(ranges)).await;
            assert_eq!(a.status, 200, "{proto} empty key: {}", a.text);
        }
        let a = h.data(client, "/v2/watch", watch_body(vec![vec![]])).await;
        assert_eq!(a.status, 200, "{proto} watch of the empty key: {}", a.text);
        let a = h
            .data(
                client,
                "/v2/atomic_write",
                AtomicWrite::default().encode_to_vec(),
            )
            .await;
        assert_refused(&a, &[400], &format!("{proto} atomic_write"));
    }

    // Malformed JSON.
    let deep = format!("{}{}", "[".repeat(60_000), "]".repeat(60_000));
    let deep_obj = "{\"a\":".repeat(10_000);
    let metadata_bodies = [
        "{",
        "[]",
        "null",
        "{\"supportedVersions\":\"3\"}",
        "{\"supportedVersions\":[1e400]}",
        "{\"supportedVersions\":[-1]}",
        "{\"supportedVersions\":[99999999999999999999999]}",
        "\u{feff}{\"supportedVersions\":[3]}",
        deep.as_str(),
        deep_obj.as_str(),
    ];
    for (client, proto) in h.clients() {
        for body in metadata_bodies {
            let a = send(
                client,
                "POST",
                &format!("http://{}/", h.kv),
                &[("authorization".into(), auth.clone())],
                Some(body.to_string().into()),
            )
            .await
            .unwrap();
            let label = format!("{proto} metadata {:.40}", body);
            assert_refused(&a, &[400], &label);
        }
        for body in [
            "{",
            "{\"latest\":false}",
            "{\"latest\":true,\"extra\":1}",
            "{\"versionstamp\":\"zz\"}",
            "{\"versionstamp\":\"\u{0}\"}",
            "{\"timestamp\":\"not a time\"}",
            "{\"timestamp\":\"+275760-09-13T00:00:00Z\"}",
            "{\"versionstamp\":\"00000000000000000000\",\"latest\":true}",
            deep.as_str(),
            deep_obj.as_str(),
        ] {
            let a = h
                .admin_call(
                    client,
                    "POST",
                    "/pitr/checkout",
                    Some(body.to_string().into()),
                )
                .await;
            assert_refused(&a, &[400, 404], &format!("{proto} checkout {:.40}", body));
        }
        for query in [
            "limit=99999999999999999999999",
            "limit=0",
            "limit=-1",
            "start=yesterday",
            "before=zz",
            "nope=1",
            "%ff%fe=%00",
            "limit=1&limit=2",
        ] {
            let a = h
                .admin_call(client, "GET", &format!("/pitr/points?{query}"), None)
                .await;
            assert_refused(&a, &[400], &format!("{proto} points?{query}"));
        }
    }

    // Header bytes that are not UTF-8, written on a raw socket.
    let read = read_all();
    let cases: Vec<(&str, SocketAddr, Vec<u8>, &[u16])> = vec![
        (
            "token bytes not UTF-8",
            h.kv,
            data_head(
                &h.db_id,
                b"Bearer \xff\xfe\xfd-token-xxxxxxxx",
                Some(read.len()),
                false,
            ),
            &[401],
        ),
        (
            "token with control bytes",
            h.kv,
            data_head(&h.db_id, b"Bearer \x01\x02", Some(read.len()), false),
            &[400, 401],
        ),
        (
            "database id not UTF-8",
            h.kv,
            {
                let mut head = data_head("\u{0}", auth.as_bytes(), Some(read.len()), false);
                let at = head.windows(3).position(|w| w == b": \x00").unwrap() + 2;
                head.splice(at..at + 1, *b"\xc3\x28\xff");
                head
            },
            &[400],
        ),
        (
            "header name not a token",
            h.kv,
            head("POST", "/v2/snapshot_read", &[b"x-\xffname: 1"]),
            &[400],
        ),
        (
            "request line not UTF-8",
            h.kv,
            b"POST /v2/\xff\xfe HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n".to_vec(),
            &[400, 404],
        ),
        (
            "garbage instead of HTTP",
            h.kv,
            b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n".to_vec(),
            &[400],
        ),
        (
            "admin token bytes not UTF-8",
            h.admin,
            head("GET", "/pitr/current", &[b"authorization: Bearer \xff\xfe"]),
            &[400, 401],
        ),
        (
            "admin header name not a token",
            h.admin,
            head("GET", "/pitr/current", &[b"\xff: 1"]),
            &[400],
        ),
    ];
    for (label, addr, head, want) in cases {
        let r = raw_exchange(addr, head, Upload::Bytes(read.clone())).await;
        let a = r.answer(label);
        assert!(want.contains(&a.status), "{label}: {a:?}");
    }

    h.assert_healthy("after oversized and malformed requests")
        .await;
    let grown = rss_kib(None).saturating_sub(rss_before);
    assert!(grown < MEMORY_BOUND_KIB, "resident set grew by {grown} KiB");
    assert_eq!(read_replica(&h.db), rows, "the replica changed");
    eprintln!(
        "oversized and malformed requests: {:?}, resident set +{grown} KiB",
        started.elapsed()
    );
    h.stop().await;
}

/// Slowloris, silent, slow-body, idle and non-reading clients are cut off
/// on time while normal clients keep getting quick answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_clients_are_cut_off() {
    let limits = Limits {
        header_read_timeout: Duration::from_secs(2),
        body_read_timeout: Duration::from_secs(2),
        idle_timeout: Duration::from_secs(3),
        stall_timeout: Duration::from_secs(4),
        ..Limits::default()
    };
    let h = Harness::start(limits).await;
    let started = Instant::now();

    // Slowloris: a byte of a request head per second, on both listeners.
    let mut slow = tokio::task::JoinSet::new();
    for i in 0..20 {
        let addr = if i % 4 == 3 { h.admin } else { h.kv };
        slow.spawn(async move {
            let mut s = TcpStream::connect(addr).await.unwrap();
            let t0 = Instant::now();
            let head = b"POST /v2/snapshot_read HTTP/1.1\r\nhost: replica\r\nx-filler: aaaaaaaaaaaaaaaaaaaa";
            for b in head.iter() {
                if s.write_all(&[*b]).await.is_err() {
                    break;
                }
                let mut probe = [0u8; 256];
                match tokio::time::timeout(Duration::from_secs(1), s.read(&mut probe)).await {
                    Ok(Ok(_)) | Ok(Err(_)) => break, // closed, or an answer
                    Err(_) => {}
                }
            }
            ("slowloris", t0.elapsed())
        });
    }
    // Silent: connect and send nothing (not even the protocol).
    for _ in 0..5 {
        let addr = h.kv;
        slow.spawn(async move {
            let mut s = TcpStream::connect(addr).await.unwrap();
            let t0 = Instant::now();
            closed(&mut s, TIMEOUT).await;
            ("silent", t0.elapsed())
        });
    }
    // A slow h2 preface, a byte per second.
    for _ in 0..3 {
        let addr = h.kv;
        slow.spawn(async move {
            let mut s = TcpStream::connect(addr).await.unwrap();
            let t0 = Instant::now();
            for b in H2_PREFACE {
                if s.write_all(&[*b]).await.is_err() {
                    break;
                }
                let mut probe = [0u8; 64];
                match tokio::time::timeout(Duration::from_secs(1), s.read(&mut probe)).await {
                    Ok(Ok(0)) | Ok(Err(_)) => break,
                    Ok(Ok(_)) | Err(_) => {}
                }
            }
            ("slow h2 preface", t0.elapsed())
        });
    }
    // An h2c connection that never sends a request.
    {
        let addr = h.kv;
        slow.spawn(async move {
            let mut s = TcpStream::connect(addr).await.unwrap();
            s.write_all(H2_PREFACE).await.unwrap();
            s.write_all(&[0, 0, 0, 0x4, 0, 0, 0, 0, 0]).await.unwrap();
            let t0 = Instant::now();
            let session = h2_session(&mut s, TIMEOUT).await;
            let at = session.closed.expect("an unused h2c connection is closed");
            ("unused h2c", at - t0)
        });
    }
    // An idle HTTP/1.1 keep-alive connection (closed by the header read
    // timeout, which also bounds the wait for a next request).
    {
        let addr = h.kv;
        slow.spawn(async move {
            let mut s = TcpStream::connect(addr).await.unwrap();
            s.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
                .await
                .unwrap();
            let t0 = Instant::now();
            let at = closed(&mut s, TIMEOUT)
                .await
                .expect("idle h1 connection closed");
            ("idle HTTP/1.1", at - t0)
        });
    }
    // A used h2c connection gets a GOAWAY once idle, then is closed.
    let idle_h2 = tokio::spawn({
        let addr = h.kv;
        async move {
            let mut s = TcpStream::connect(addr).await.unwrap();
            s.write_all(H2_PREFACE).await.unwrap();
            s.write_all(&[0, 0, 0, 0x4, 0, 0, 0, 0, 0]).await.unwrap();
            s.write_all(&h2_get(1, "/nope")).await.unwrap();
            let t0 = Instant::now();
            let session = h2_session(&mut s, TIMEOUT).await;
            (session, t0)
        }
    });
    // A body sent a byte per second: 408.
    let mut bodies = tokio::task::JoinSet::new();
    for _ in 0..3 {
        let addr = h.kv;
        let head = data_head(
            &h.db_id,
            format!("Bearer {TOKEN}").as_bytes(),
            Some(1000),
            false,
        );
        bodies.spawn(async move {
            let mut s = TcpStream::connect(addr).await.unwrap();
            let t0 = Instant::now();
            s.write_all(&head).await.unwrap();
            let mut got = Vec::new();
            for _ in 0..20 {
                if s.write_all(b"\x0a").await.is_err() {
                    break;
                }
                let mut probe = [0u8; 1024];
                match tokio::time::timeout(Duration::from_secs(1), s.read(&mut probe)).await {
                    Ok(Ok(0)) | Ok(Err(_)) => break,
                    Ok(Ok(n)) => got.extend_from_slice(&probe[..n]),
                    Err(_) => {}
                }
            }
            (parse_raw(&got), t0.elapsed())
        });
    }
    // A client that asks for a large answer and does not read it: the
    // connection is dropped after the stall timeout, so it can read what
    // the kernel buffered, not the whole answer.
    let big = big_values(&h.db, 200, 64 * 1024);
    let stall = tokio::spawn({
        let addr = h.kv;
        let body = read_body(vec![range(&[0x7e], &[0x7f], 1000)]);
        let mut head = data_head(
            &h.db_id,
            format!("Bearer {TOKEN}").as_bytes(),
            Some(body.len()),
            false,
        );
        head.extend_from_slice(&body);
        async move {
            let socket = tokio::net::TcpSocket::new_v4().unwrap();
            socket.set_recv_buffer_size(4096).unwrap();
            let mut s = socket.connect(addr).await.unwrap();
            s.write_all(&head).await.unwrap();
            tokio::time::sleep(Duration::from_secs(7)).await;
            let mut total = 0usize;
            let mut buf = vec![0u8; 64 * 1024];
            let ended = tokio::time::timeout(TIMEOUT, async {
                loop {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => total += n,
                    }
                }
            })
            .await;
            (total, ended.is_ok())
        }
    });

    // Meanwhile, normal clients get quick answers.
    let mut normal = 0;
    while started.elapsed() < Duration::from_secs(4) {
        h.assert_healthy("while slow clients hold connections")
            .await;
        normal += 1;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(normal >= 5, "only {normal} normal rounds");

    let mut cut = Vec::new();
    while let Some(r) = slow.join_next().await {
        let (what, took) = r.unwrap();
        cut.push(took.as_millis());
        assert!(
            took >= Duration::from_millis(1500) && took < Duration::from_secs(6),
            "{what}: cut off after {took:?} (header read timeout 2 s)"
        );
    }
    while let Some(r) = bodies.join_next().await {
        let (raw, took) = r.unwrap();
        assert_eq!(raw.status, Some(408), "slow body: {raw:?}");
        assert!(raw.text.contains("did not arrive"), "{raw:?}");
        assert!(
            took < Duration::from_secs(6),
            "slow body cut off after {took:?}"
        );
    }
    let (session, t0) = idle_h2.await.unwrap();
    let (code, at) = session.goaway.expect("GOAWAY on an idle h2c connection");
    assert_eq!(code, 0, "a graceful GOAWAY");
    assert!(
        at - t0 >= Duration::from_millis(2500) && at - t0 < Duration::from_secs(6),
        "GOAWAY after {:?} (idle timeout 3 s)",
        at - t0
    );
    assert!(session.closed.is_some(), "{session:?}");
    let (read, ended) = stall.await.unwrap();
    assert!(ended, "the stalled connection was not closed");
    assert!(
        read < big,
        "the stalled client got the whole answer ({read} of {big} bytes)"
    );

    h.assert_healthy("after the slow clients").await;
    cut.sort();
    eprintln!(
        "slow clients: {normal} rounds of normal reads meanwhile; cut off after {} to {} ms; \
         stalled reader got {read} of {big} bytes; {:?}",
        cut[0],
        cut[cut.len() - 1],
        started.elapsed()
    );
    h.stop().await;
}

/// Adds `n` keys under the prefix 0x7e with values of `size` bytes
/// straight to the replica's table (the server reads whatever is there);
/// returns their total size.
fn big_values(db: &std::path::Path, n: usize, size: usize) -> usize {
    let conn = rusqlite::Connection::open(db).unwrap();
    conn.busy_timeout(Duration::from_secs(10)).unwrap();
    for i in 0..n {
        conn.execute(
            "insert or replace into kv (k, v, v_encoding, version, seq, expiration_ms) \
             values (?1, ?2, 3, 1, 0, -1)",
            rusqlite::params![vec![0x7e, (i >> 8) as u8, i as u8], vec![b'v'; size]],
        )
        .unwrap();
    }
    n * size
}

/// Connections over the cap wait briefly for a slot, then are refused in
/// their protocol; the server serves normally once they are gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_over_the_cap_wait_then_are_refused() {
    let limits = Limits {
        max_connections: 8,
        header_read_timeout: Duration::from_secs(30),
        ..Limits::default()
    };
    let h = Harness::start(limits).await;
    // Eight connections hold every slot with a request head in progress.
    let mut held = Vec::new();
    for _ in 0..8 {
        let mut s = TcpStream::connect(h.kv).await.unwrap();
        s.write_all(b"POST /v2/snapshot_read HTTP/1.1\r\nhost: x\r\n")
            .await
            .unwrap();
        held.push(s);
    }
    tokio::time::sleep(Duration::from_millis(200)).await;

    // HTTP/1.1: 503 after waiting about CONNECTION_WAIT.
    let t0 = Instant::now();
    let r = raw_exchange(h.kv, head("GET", "/healthz", &[]), Upload::None).await;
    let waited = t0.elapsed();
    let a = r.answer("over the cap, HTTP/1.1");
    assert_refused(&a, &[503], "over the cap, HTTP/1.1");
    assert!(a.text.contains("Too many connections"), "{}", a.text);
    assert!(
        waited >= server::CONNECTION_WAIT - Duration::from_millis(100)
            && waited < server::CONNECTION_WAIT + Duration::from_secs(3),
        "refused after {waited:?}"
    );

    // h2c: a GOAWAY with ENHANCE_YOUR_CALM, then the connection closes.
    let mut s = TcpStream::connect(h.kv).await.unwrap();
    s.write_all(H2_PREFACE).await.unwrap();
    s.write_all(&[0, 0, 0, 0x4, 0, 0, 0, 0, 0]).await.unwrap();
    let session = h2_session(&mut s, TIMEOUT).await;
    let (code, _) = session.goaway.expect("GOAWAY over the cap");
    assert_eq!(code, 0xb, "ENHANCE_YOUR_CALM");
    assert!(session.closed.is_some(), "{session:?}");
    // reqwest over h2c sees an error, not an answer.
    let err = send(
        &h.h2,
        "POST",
        &format!("http://{}/v2/snapshot_read", h.kv),
        &h.data_headers(Some(&format!("Bearer {TOKEN}"))),
        Some(read_all().into()),
    )
    .await;
    assert!(err.is_err(), "h2c over the cap: {err:?}");

    // A connection that frees its slot while another waits: the waiter
    // is served.
    let waiter = tokio::spawn({
        let addr = h.kv;
        let id = h.db_id.clone();
        async move {
            let body = read_all();
            raw_exchange(
                addr,
                data_head(
                    &id,
                    format!("Bearer {TOKEN}").as_bytes(),
                    Some(body.len()),
                    false,
                ),
                Upload::Bytes(body),
            )
            .await
        }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    drop(held.pop());
    let r = waiter.await.unwrap();
    assert_eq!(r.status, Some(200), "the waiter: {r:?}");

    let metrics = kvreplica::metrics::METRICS.render(None);
    assert!(
        metric_line(
            &metrics,
            "kvreplica_errors_total{kind=\"connection_limit\"}"
        ),
        "refused connections are counted"
    );
    drop(held);
    tokio::time::sleep(Duration::from_millis(200)).await;
    h.assert_healthy("after the connection flood").await;
    h.stop().await;
}

/// Watch streams over the cap are answered 503 (plain text, counted);
/// a closed stream frees its place.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_streams_over_the_cap_get_503() {
    let limits = Limits {
        max_watch_streams: 3,
        ..Limits::default()
    };
    let h = Harness::start(limits).await;
    let auth = format!("Bearer {TOKEN}");
    let open = |client: reqwest::Client, key: u8| {
        let url = format!("http://{}/v2/watch", h.kv);
        let headers = h.data_headers(Some(&auth));
        async move {
            let mut req = client
                .post(url)
                .timeout(Duration::from_secs(3600))
                .body(watch_body(vec![vec![2, key]]));
            for (k, v) in headers {
                req = req.header(k, v);
            }
            tokio::time::timeout(TIMEOUT, req.send())
                .await
                .unwrap()
                .unwrap()
        }
    };
    let mut streams = Vec::new();
    for i in 0..3 {
        let client = if i % 2 == 0 {
            h.h2.clone()
        } else {
            h.h1.clone()
        };
        let r = open(client, i).await;
        assert_eq!(r.status(), 200);
        streams.push(r);
    }
    for (client, proto) in h.clients() {
        let r = open(client.clone(), 9).await;
        assert_eq!(r.status(), 503, "{proto}: a fourth watch stream");
        assert_eq!(r.headers()["retry-after"], "1");
        assert!(r.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain"));
        let text = r.text().await.unwrap();
        assert!(text.contains("watch streams"), "{text}");
    }
    let metrics = kvreplica::metrics::METRICS.render(None);
    assert!(
        metric_line(
            &metrics,
            "kvreplica_errors_total{kind=\"watch_stream_limit\"}"
        ),
        "refused watch streams are counted"
    );
    assert!(metric_line(
        &metrics,
        "kvreplica_kv_connect_requests_total{endpoint=\"watch\",status=\"503\"}"
    ));
    // Reads are not limited by open watches.
    h.assert_healthy("with every watch place taken").await;
    // Closing a stream frees its place.
    drop(streams.pop());
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let r = open(h.h2.clone(), 7).await;
        if r.status() == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "no place after a stream closed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(streams);
    h.stop().await;
}

/// The tokens a sweep presents instead of the right one.
fn bad_auth(right: &str, other: &str) -> Vec<(String, Option<String>)> {
    let wrong: String = right
        .chars()
        .map(|c| if c == 'x' { 'y' } else { 'x' })
        .collect();
    vec![
        ("missing".into(), None),
        ("wrong, same length".into(), Some(format!("Bearer {wrong}"))),
        ("short".into(), Some("Bearer abc".into())),
        ("empty".into(), Some("Bearer ".into())),
        ("scheme only".into(), Some("Bearer".into())),
        ("no scheme".into(), Some(right.to_string())),
        ("basic scheme".into(), Some(format!("Basic {right}"))),
        (
            "one character short".into(),
            Some(format!("Bearer {}", &right[..right.len() - 1])),
        ),
        (
            "one character more".into(),
            Some(format!("Bearer {right}x")),
        ),
        (
            "upper case".into(),
            Some(format!("Bearer {}", right.to_uppercase())),
        ),
        (
            "the other listener's".into(),
            Some(format!("Bearer {other}")),
        ),
        (
            "both, comma-separated".into(),
            Some(format!("Bearer {other}, Bearer {right}")),
        ),
    ]
}

/// Every authenticated endpoint of a `kvreplica serve` process refuses
/// every bad token with 401 on both transports, tokens never show in an
/// answer or the debug log, only the admin checkout can move the replica,
/// and a barrage of oversized requests leaves the process's memory
/// bounded.
#[test]
fn auth_sweep_and_barrage_against_serve() {
    let (tmp, url) = backup(73);
    let db = tmp.path().join("r.sqlite");
    let db_arg = db.display().to_string();
    // The burst below comes from one address (127.0.0.1), as does
    // everything else here: lift the per-address cap so the burst meets
    // the listener's own limits (tests/conn_cap.rs covers the cap).
    let mut proc = ServeProcess::start_with_env(
        &[
            "--source",
            &url,
            "--db",
            &db_arg,
            "--max-connections-per-address",
            "1024",
        ],
        &[("RUST_LOG", "debug")],
    );
    proc.wait_ready();
    let db_id = server::database_id(&SourceUrl::parse(&url).unwrap()).to_string();
    let rows = read_replica(&db);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let h1 = reqwest::Client::builder().http1_only().build().unwrap();
    let h2 = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let kv = proc.kv_url();
    let admin_url = proc.admin_url();
    let started = Instant::now();

    let data: Vec<(&str, Vec<u8>)> = vec![
        ("/", br#"{"supportedVersions":[2,3]}"#.to_vec()),
        ("/v2/snapshot_read", read_all()),
        ("/v2/watch", watch_body(vec![vec![2, b'a']])),
        ("/v2/atomic_write", AtomicWrite::default().encode_to_vec()),
    ];
    let admin_eps: Vec<(&str, &str, Option<&str>)> = vec![
        ("GET", "/pitr/points", None),
        ("GET", "/pitr/points?limit=1", None),
        ("GET", "/pitr/current", None),
        ("POST", "/pitr/checkout", Some(r#"{"latest":true}"#)),
        (
            "POST",
            "/pitr/checkout",
            Some(r#"{"versionstamp":"00000000000000000000"}"#),
        ),
    ];
    let mut attempted: Vec<String> = Vec::new();
    let mut refusals = 0;
    rt.block_on(async {
        for (client, proto) in [(&h1, "HTTP/1.1"), (&h2, "h2c")] {
            for (path, body) in &data {
                for (what, auth) in bad_auth(CHILD_TOKEN, CHILD_ADMIN) {
                    let mut headers = data_headers(&db_id, auth.as_deref());
                    if *path == "/" {
                        headers.retain(|(k, _)| k == "authorization");
                    }
                    let a = send(
                        client,
                        "POST",
                        &format!("{kv}{path}"),
                        &headers,
                        Some(body.clone().into()),
                    )
                    .await
                    .unwrap();
                    assert_refused(&a, &[401], &format!("{proto} {path}, {what} token"));
                    refusals += 1;
                    attempted.extend(auth);
                }
            }
            for (method, path, body) in &admin_eps {
                for (what, auth) in bad_auth(CHILD_ADMIN, CHILD_TOKEN) {
                    let headers: Vec<(String, String)> = auth
                        .iter()
                        .map(|a| ("authorization".to_string(), a.clone()))
                        .collect();
                    let a = send(
                        client,
                        method,
                        &format!("{admin_url}{path}"),
                        &headers,
                        body.map(|b| b.to_string().into()),
                    )
                    .await
                    .unwrap();
                    assert_refused(&a, &[401], &format!("{proto} {path}, {what} token"));
                    refusals += 1;
                }
            }

            // The right tokens, for contrast.
            let auth = format!("Bearer {CHILD_TOKEN}");
            let ok = data_headers(&db_id, Some(&auth));
            for (path, want) in [("/v2/snapshot_read", 200), ("/v2/atomic_write", 400)] {
                let body = data.iter().find(|(p, _)| *p == path).unwrap().1.clone();
                let a = send(
                    client,
                    "POST",
                    &format!("{kv}{path}"),
                    &ok,
                    Some(body.into()),
                )
                .await
                .unwrap();
                assert_eq!(a.status, want, "{proto} {path}: {}", a.text);
            }
            let admin_ok = vec![("authorization".to_string(), format!("Bearer {CHILD_ADMIN}"))];
            for path in ["/pitr/points?limit=3", "/pitr/current"] {
                let a = send(
                    client,
                    "GET",
                    &format!("{admin_url}{path}"),
                    &admin_ok,
                    None,
                )
                .await
                .unwrap();
                assert_eq!(a.status, 200, "{proto} {path}: {}", a.text);
                assert!(!a.text.contains(CHILD_ADMIN) && !a.text.contains(CHILD_TOKEN));
            }
        }
    });
    assert_eq!(
        read_replica(&db),
        rows,
        "a refused request changed the replica"
    );

    // A barrage: 10 MiB bodies every way, random bodies, a burst of
    // connections; the process stays within its memory bound.
    let pid = proc.pid();
    let rss_before = rss_kib(Some(pid));
    let kv_addr: SocketAddr = kv.trim_start_matches("http://").parse().unwrap();
    let auth = format!("Bearer {CHILD_TOKEN}");
    rt.block_on(async {
        let mut set = tokio::task::JoinSet::new();
        for i in 0..24 {
            let head = data_head(
                &db_id,
                auth.as_bytes(),
                (i % 2 == 0).then_some(10 * MIB),
                i % 2 == 1,
            );
            set.spawn(async move {
                let r = raw_exchange(
                    kv_addr,
                    head,
                    Upload::Huge {
                        len: 10 * MIB,
                        chunked: i % 2 == 1,
                    },
                )
                .await;
                r.status
            });
        }
        for _ in 0..8 {
            let h2 = h2.clone();
            let headers = data_headers(&db_id, Some(&auth));
            let url = format!("{kv}/v2/snapshot_read");
            set.spawn(async move {
                send(&h2, "POST", &url, &headers, Some(streamed(10 * MIB)))
                    .await
                    .ok()
                    .map(|a| a.status)
            });
        }
        while let Some(status) = set.join_next().await {
            assert_eq!(status.unwrap(), Some(400), "a 10 MiB body");
        }
        let mut held = Vec::new();
        for _ in 0..300 {
            if let Ok(mut s) = TcpStream::connect(kv_addr).await {
                let _ = s.write_all(b"POST / HTTP/1.1\r\nhost: x\r\n").await;
                held.push(s);
            }
        }
        let garbage: Vec<Vec<u8>> = (0..200u32)
            .map(|i| {
                (0..(i * 37 % 2000))
                    .map(|j| (i * 31 + j * 7) as u8)
                    .collect()
            })
            .collect();
        for g in garbage {
            let a = send(
                &h1,
                "POST",
                &format!("{kv}/v2/snapshot_read"),
                &data_headers(&db_id, Some(&auth)),
                Some(g.into()),
            )
            .await
            .unwrap();
            assert!(a.status == 400 || a.status == 200, "{a:?}");
        }
        drop(held);
    });
    let rss_after = rss_kib(Some(pid));
    let grown = rss_after.saturating_sub(rss_before);
    assert!(
        grown < MEMORY_BOUND_KIB,
        "kvreplica serve grew by {grown} KiB ({rss_before} → {rss_after} KiB)"
    );
    rt.block_on(async {
        let a = send(
            &h2,
            "POST",
            &format!("{kv}/v2/snapshot_read"),
            &data_headers(&db_id, Some(&auth)),
            Some(read_all().into()),
        )
        .await
        .unwrap();
        assert_eq!(a.status, 200, "a normal read after the barrage: {}", a.text);
    });
    assert_eq!(read_replica(&db), rows, "the barrage changed the replica");

    // Nothing in the log gives a token away, though it is at debug level
    // and logged every refusal.
    let log = proc.log();
    assert!(
        log.contains("DEBUG") && log.contains("KV Connect request refused"),
        "the log is not at debug level:\n{}",
        &log[..log.len().min(2000)]
    );
    for t in [CHILD_TOKEN, CHILD_ADMIN]
        .iter()
        .map(|s| s.to_string())
        .chain(attempted.iter().filter(|a| a.len() >= 12).cloned())
    {
        let secret = t.trim_start_matches("Bearer ").trim_start_matches("Basic ");
        if secret.len() < 8 {
            continue;
        }
        assert!(
            !log.contains(secret),
            "the log contains a token ({} characters)",
            secret.len()
        );
    }
    eprintln!(
        "auth sweep: {refusals} refusals; barrage: kvreplica serve {rss_before} → {rss_after} KiB; {:?}",
        started.elapsed()
    );
    assert!(proc.terminate().success());
}

//! A fault-injecting HTTP/1.1 proxy for tests: listens on a free 127.0.0.1
//! port, forwards every request to a real server on 127.0.0.1 (s3s-fs or
//! fake-gcs-server) and, by the draw of a seeded RNG, answers some of them
//! badly instead: 500s, 503s, throttling, connections closed or reset
//! before or during the answer, answers that stall longer than the
//! client's request timeout, bodies shorter than their `Content-Length`,
//! and listed objects that are "not there yet" (404) for their first GETs.
//!
//! Requests are forwarded byte for byte, `Host` header included: an S3
//! client signs (SigV4) for the host it talks to, which is the proxy's
//! `127.0.0.1:<port>`, and the server checks the signature against the
//! `Host` it receives, which is then that same value.
//!
//! Every fault makes exactly one request fail, and no request key (method
//! and target) gets more than [`Config::max_faults_per_key`] faults in all,
//! so a client that tries more often than that always gets through.
//! Faults are counted per kind.
//!
//! Runs on a tokio runtime of its own (the tests are plain threads) and
//! stops when dropped. Every wait in it is bounded.
//!
//! Use from any test file with
//! `#[path = "common/fault_proxy.rs"] mod fault_proxy;` — this file depends
//! on no other test module.
#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Longest a client connection may sit idle between two requests.
const IDLE_TIMEOUT: Duration = Duration::from_secs(120);

/// Bound on reading one request (head and body) once it has started.
const READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Bound on one exchange with the real server.
const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(15);

/// Largest request or response head accepted.
const MAX_HEAD: usize = 64 * 1024;

/// One kind of fault.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Fault {
    /// `500` with the store's own error body (S3 `InternalError`, GCS
    /// `backendError`).
    Http500,
    /// `503` with an HTML page, as a load balancer in front of the store
    /// would send.
    Http503,
    /// S3: `503 SlowDown` with the XML error body; GCS: `429
    /// rateLimitExceeded`.
    Throttle,
    /// The request is read, then the connection is closed without a byte
    /// of answer (a reset or an orderly close, by a coin flip).
    ResetBeforeAnswer,
    /// The real answer's head and half its body, then a reset.
    ResetMidBody,
    /// No answer at all until the client gives up (bounded by
    /// [`Config::stall`]).
    Stall,
    /// The real answer's head and half its body, then nothing until the
    /// client gives up.
    StallMidBody,
    /// A `Content-Length` larger than the bytes sent, then an orderly close.
    Truncated,
    /// A listed object answers 404 for its first one or two GETs
    /// (eventual consistency).
    NotFoundAtFirst,
    /// `403 AccessDenied` (only in [`Mode::Always`]).
    Denied,
    /// `503` for every request: the store is down (only in
    /// [`Mode::Always`]).
    Outage,
}

impl Fault {
    /// The kinds drawn in [`Mode::Random`] ([`Fault::NotFoundAtFirst`] is
    /// decided per object, not per request).
    pub const RANDOM: [Fault; 8] = [
        Fault::Http500,
        Fault::Http503,
        Fault::Throttle,
        Fault::ResetBeforeAnswer,
        Fault::ResetMidBody,
        Fault::Stall,
        Fault::StallMidBody,
        Fault::Truncated,
    ];

    /// Every kind [`Mode::Random`] injects.
    pub const ALL_RANDOM: [Fault; 9] = [
        Fault::Http500,
        Fault::Http503,
        Fault::Throttle,
        Fault::ResetBeforeAnswer,
        Fault::ResetMidBody,
        Fault::Stall,
        Fault::StallMidBody,
        Fault::Truncated,
        Fault::NotFoundAtFirst,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Fault::Http500 => "http_500",
            Fault::Http503 => "http_503",
            Fault::Throttle => "throttle",
            Fault::ResetBeforeAnswer => "reset_before_answer",
            Fault::ResetMidBody => "reset_mid_body",
            Fault::Stall => "stall",
            Fault::StallMidBody => "stall_mid_body",
            Fault::Truncated => "truncated_body",
            Fault::NotFoundAtFirst => "not_found_at_first",
            Fault::Denied => "access_denied",
            Fault::Outage => "outage_503",
        }
    }
}

/// Which store's dialect the canned answers speak, and how object GETs
/// are told from listings.
#[derive(Clone, Debug)]
pub enum Flavor {
    /// Path-style S3: `GET /<bucket>/<key>` reads an object.
    S3 { bucket: String },
    /// GCS JSON API: `GET /storage/v1/b/<bucket>/o/<key>?alt=media` reads
    /// an object.
    Gcs,
}

/// What the proxy does with each request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Forward everything.
    Pass,
    /// Inject faults as drawn by the RNG.
    Random,
    /// Answer every request with this fault.
    Always(Fault),
}

/// Settings of a proxy.
#[derive(Clone, Debug)]
pub struct Config {
    pub flavor: Flavor,
    /// Seed of the RNG that draws the faults.
    pub seed: u64,
    /// Chance (percent) that a request gets a random fault.
    pub fault_percent: u64,
    /// Chance (percent) that a listed object (a snapshot or log object)
    /// answers 404 to its first one or two GETs.
    pub not_found_percent: u64,
    /// Most faults one request key (method and target) ever gets, "not
    /// there yet" answers included.
    pub max_faults_per_key: u32,
    /// The kinds random faults are drawn from.
    pub kinds: Vec<Fault>,
    /// Longest a stall holds the connection when the client does not give
    /// up first.
    pub stall: Duration,
    /// The mode at start.
    pub mode: Mode,
    /// How long each forwarded request waits before it goes to the real
    /// server, so that requests a client sends at once are seen in flight
    /// together ([`FaultProxy::max_in_flight`]).
    pub hold: Duration,
}

impl Config {
    pub fn new(flavor: Flavor, seed: u64) -> Config {
        Config {
            flavor,
            seed,
            fault_percent: 35,
            not_found_percent: 20,
            max_faults_per_key: 3,
            kinds: Fault::RANDOM.to_vec(),
            stall: Duration::from_secs(5),
            mode: Mode::Random,
            hold: Duration::ZERO,
        }
    }
}

/// SplitMix64, so that a seed means the same draws everywhere.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

/// What has happened to one request key.
#[derive(Default)]
struct KeyState {
    /// 404s still to give before the object "appears".
    not_found_left: u32,
    /// Faults given so far, "not there yet" answers included.
    faults: u32,
}

/// One injected fault, for reports.
#[derive(Clone, Debug)]
pub struct Injected {
    pub fault: Fault,
    /// `GET /path?query`.
    pub request: String,
}

struct State {
    mode: Mode,
    rng: Rng,
    keys: HashMap<String, KeyState>,
    counts: BTreeMap<Fault, u64>,
    requests: u64,
    injected: Vec<Injected>,
    /// Requests the real server could not be reached for (a harness
    /// problem, not an injected fault).
    upstream_errors: Vec<String>,
    /// `Host` headers of the requests.
    hosts: BTreeSet<String>,
}

struct Shared {
    config: Config,
    upstream: SocketAddr,
    state: Mutex<State>,
    /// Client connections accepted so far: each is a TCP (and, against a
    /// real store, a TLS) handshake the client paid for.
    accepted: std::sync::atomic::AtomicU64,
    /// Forwarded requests in flight now, and the most seen at once.
    in_flight: Mutex<(u64, u64)>,
}

/// Counts a forwarded request in flight until dropped.
struct InFlight(Arc<Shared>);

impl InFlight {
    fn enter(shared: &Arc<Shared>) -> InFlight {
        let mut f = shared.in_flight.lock().unwrap();
        f.0 += 1;
        f.1 = f.1.max(f.0);
        InFlight(shared.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.lock().unwrap().0 -= 1;
    }
}

/// A running proxy; stopped on drop.
pub struct FaultProxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    runtime: Option<tokio::runtime::Runtime>,
}

impl FaultProxy {
    /// Starts a proxy in front of `upstream` (`http://127.0.0.1:<port>`).
    pub fn start(upstream: &str, config: Config) -> FaultProxy {
        let upstream: SocketAddr = upstream
            .strip_prefix("http://")
            .unwrap_or(upstream)
            .trim_end_matches('/')
            .parse()
            .unwrap_or_else(|e| panic!("upstream {upstream:?} is not http://IP:PORT: {e}"));
        assert!(upstream.ip().is_loopback(), "upstream must be on 127.0.0.1");
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("fault-proxy")
            .enable_all()
            .build()
            .expect("proxy runtime");
        let listener = runtime
            .block_on(TcpListener::bind((Ipv4Addr::LOCALHOST, 0)))
            .expect("bind the proxy");
        let addr = listener.local_addr().expect("proxy address");
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                mode: config.mode,
                rng: Rng(config.seed ^ 0x5EED_FA17_0000_0001),
                keys: HashMap::new(),
                counts: BTreeMap::new(),
                requests: 0,
                injected: Vec::new(),
                upstream_errors: Vec::new(),
                hosts: BTreeSet::new(),
            }),
            config,
            upstream,
            accepted: std::sync::atomic::AtomicU64::new(0),
            in_flight: Mutex::new((0, 0)),
        });
        let accept_shared = shared.clone();
        runtime.spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let shared = accept_shared.clone();
                shared
                    .accepted
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                tokio::spawn(async move { connection(stream, shared).await });
            }
        });
        FaultProxy {
            addr,
            shared,
            runtime: Some(runtime),
        }
    }

    /// `http://127.0.0.1:<port>`: the endpoint to give the client.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Client connections accepted so far.
    pub fn connections(&self) -> u64 {
        self.shared
            .accepted
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The most forwarded requests in flight at once since the start or
    /// the last call, which starts counting again from those in flight now.
    pub fn take_max_in_flight(&self) -> u64 {
        let mut f = self.shared.in_flight.lock().unwrap();
        let now = f.0;
        std::mem::replace(&mut f.1, now)
    }

    /// Changes what happens to the next requests.
    pub fn set_mode(&self, mode: Mode) {
        self.shared.state.lock().unwrap().mode = mode;
    }

    /// Faults injected so far, by kind.
    pub fn counts(&self) -> BTreeMap<Fault, u64> {
        self.shared.state.lock().unwrap().counts.clone()
    }

    /// Faults injected so far, all kinds.
    pub fn total_faults(&self) -> u64 {
        self.counts().values().sum()
    }

    /// Requests received so far.
    pub fn requests(&self) -> u64 {
        self.shared.state.lock().unwrap().requests
    }

    /// Every fault injected so far, in order.
    pub fn injected(&self) -> Vec<Injected> {
        self.shared.state.lock().unwrap().injected.clone()
    }

    /// The distinct `Host` headers of the requests received.
    pub fn hosts(&self) -> BTreeSet<String> {
        self.shared.state.lock().unwrap().hosts.clone()
    }

    /// Requests the real server failed to answer (should stay empty).
    pub fn upstream_errors(&self) -> Vec<String> {
        self.shared.state.lock().unwrap().upstream_errors.clone()
    }

    /// A table of the faults injected per kind, with the request count.
    pub fn table(&self, title: &str) -> String {
        let st = self.shared.state.lock().unwrap();
        let mut out = format!(
            "faults injected: {title} (seed {})\n  {:<22} {:>6}\n",
            self.shared.config.seed, "kind", "count"
        );
        let mut kinds: Vec<Fault> = Fault::ALL_RANDOM.to_vec();
        let others: Vec<Fault> = st
            .counts
            .keys()
            .filter(|k| !Fault::ALL_RANDOM.contains(k))
            .copied()
            .collect();
        kinds.extend(others);
        for k in kinds {
            out.push_str(&format!(
                "  {:<22} {:>6}\n",
                k.name(),
                st.counts.get(&k).copied().unwrap_or(0)
            ));
        }
        let total: u64 = st.counts.values().sum();
        out.push_str(&format!(
            "  {:<22} {:>6}\n  {:<22} {:>6}\n",
            "total faults", total, "requests", st.requests
        ));
        out
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

/// A request as read from the client.
struct Request {
    /// Head and body exactly as received.
    raw: Vec<u8>,
    method: String,
    target: String,
    /// The `Host` header, as sent.
    host: String,
    /// The client asked to close the connection after this exchange.
    close: bool,
}

/// An answer as read from the real server.
struct Response {
    /// Everything exactly as received.
    raw: Vec<u8>,
    /// Status line and headers, without framing headers and the blank line.
    head: String,
    /// The body, de-chunked.
    body: Vec<u8>,
    /// The server will close the connection after this answer.
    close: bool,
}

impl Response {
    /// The head with a `Content-Length` of `declared` (which may differ
    /// from the body length) and `Connection: close`.
    fn head_with_length(&self, declared: usize) -> Vec<u8> {
        format!(
            "{}\r\nContent-Length: {declared}\r\nConnection: close\r\n\r\n",
            self.head
        )
        .into_bytes()
    }

    /// A declared length larger than half the body, and half the body:
    /// what a cut-off answer shows.
    fn cut(&self) -> (usize, &[u8]) {
        let len = self.body.len();
        let declared = if len > 1 { len } else { len + 8 };
        (declared, &self.body[..len / 2])
    }
}

impl Shared {
    /// Whether `GET target` reads a snapshot or log object.
    fn is_listed_object(&self, method: &str, target: &str) -> bool {
        if method != "GET" {
            return false;
        }
        let path = target.split('?').next().unwrap_or("");
        let key = match &self.config.flavor {
            Flavor::S3 { bucket } => match path.strip_prefix(&format!("/{bucket}/")) {
                Some(k) if !k.is_empty() => percent_decode(k),
                _ => return false,
            },
            Flavor::Gcs => match path.split_once("/o/") {
                Some((_, k)) if target.contains("alt=media") => percent_decode(k),
                _ => return false,
            },
        };
        key.ends_with(".bin")
            && ["logs/", "snapshots/"]
                .iter()
                .any(|f| key.starts_with(f) || key.contains(&format!("/{f}")))
    }

    /// Decides what happens to one request and counts it.
    fn decide(&self, req: &Request) -> Option<Fault> {
        let listed_object = self.is_listed_object(&req.method, &req.target);
        let mut guard = self.state.lock().unwrap();
        let st = &mut *guard;
        st.requests += 1;
        st.hosts.insert(req.host.clone());
        let fault = match st.mode {
            Mode::Pass => None,
            Mode::Always(f) => Some(f),
            Mode::Random => {
                let key = format!("{} {}", req.method, req.target);
                let rng = &mut st.rng;
                let cfg = &self.config;
                let ks = st.keys.entry(key).or_insert_with(|| KeyState {
                    not_found_left: if listed_object && rng.chance(cfg.not_found_percent) {
                        1 + rng.below(2) as u32
                    } else {
                        0
                    },
                    faults: 0,
                });
                if ks.not_found_left > 0 {
                    ks.not_found_left -= 1;
                    ks.faults += 1;
                    Some(Fault::NotFoundAtFirst)
                } else if !cfg.kinds.is_empty()
                    && ks.faults < cfg.max_faults_per_key
                    && rng.chance(cfg.fault_percent)
                {
                    ks.faults += 1;
                    // The least-used kind (ties drawn at random), so every
                    // kind is exercised about equally often.
                    let least = cfg
                        .kinds
                        .iter()
                        .map(|k| st.counts.get(k).copied().unwrap_or(0))
                        .min()
                        .unwrap_or(0);
                    let candidates: Vec<Fault> = cfg
                        .kinds
                        .iter()
                        .copied()
                        .filter(|k| st.counts.get(k).copied().unwrap_or(0) == least)
                        .collect();
                    Some(candidates[rng.below(candidates.len() as u64) as usize])
                } else {
                    None
                }
            }
        };
        if let Some(f) = fault {
            *st.counts.entry(f).or_default() += 1;
            st.injected.push(Injected {
                fault: f,
                request: format!("{} {}", req.method, req.target),
            });
        }
        fault
    }

    /// A coin flip from the shared RNG.
    fn flip(&self) -> bool {
        self.state.lock().unwrap().rng.chance(50)
    }

    fn upstream_error(&self, req: &Request, e: &std::io::Error) {
        self.state
            .lock()
            .unwrap()
            .upstream_errors
            .push(format!("{} {}: {e}", req.method, req.target));
    }

    /// A complete error answer in the store's dialect.
    fn canned(&self, fault: Fault, target: &str) -> Vec<u8> {
        let s3 = matches!(self.config.flavor, Flavor::S3 { .. });
        let xml = |code: &str, msg: &str| {
            format!(
                "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>{code}</Code>\
                 <Message>{msg}</Message><RequestId>FAULTPROXY</RequestId></Error>"
            )
        };
        let json = |code: u16, reason: &str, msg: &str| {
            format!(
                "{{\"error\":{{\"code\":{code},\"message\":\"{msg}\",\"errors\":[{{\"domain\":\
                 \"global\",\"reason\":\"{reason}\",\"message\":\"{msg}\"}}]}}}}"
            )
        };
        let (status, reason, ctype, body) = match (fault, s3) {
            (Fault::Http500, true) => (
                500,
                "Internal Server Error",
                "application/xml",
                xml(
                    "InternalError",
                    "We encountered an internal error. Please try again.",
                ),
            ),
            (Fault::Http500, false) => (
                500,
                "Internal Server Error",
                "application/json",
                json(500, "backendError", "Backend Error"),
            ),
            (Fault::Http503, _) => (
                503,
                "Service Unavailable",
                "text/html",
                "<html><body><h1>503 Service Unavailable</h1>No server is available to handle \
                 this request.</body></html>"
                    .to_string(),
            ),
            (Fault::Throttle, true) => (
                503,
                "Slow Down",
                "application/xml",
                xml("SlowDown", "Please reduce your request rate."),
            ),
            (Fault::Throttle, false) => (
                429,
                "Too Many Requests",
                "application/json",
                json(
                    429,
                    "rateLimitExceeded",
                    "The rate of change requests is too high.",
                ),
            ),
            (Fault::NotFoundAtFirst, true) => (
                404,
                "Not Found",
                "application/xml",
                xml("NoSuchKey", "The specified key does not exist."),
            ),
            (Fault::NotFoundAtFirst, false) => (
                404,
                "Not Found",
                "application/json",
                json(
                    404,
                    "notFound",
                    &format!("No such object: {}", json_escape(target)),
                ),
            ),
            (Fault::Denied, true) => (
                403,
                "Forbidden",
                "application/xml",
                xml("AccessDenied", "Access Denied"),
            ),
            (Fault::Denied, false) => (
                403,
                "Forbidden",
                "application/json",
                json(
                    403,
                    "forbidden",
                    "Caller does not have storage.objects.get access to the object.",
                ),
            ),
            (Fault::Outage, true) => (
                503,
                "Service Unavailable",
                "application/xml",
                xml("ServiceUnavailable", "Service is unable to handle request."),
            ),
            (Fault::Outage, false) => (
                503,
                "Service Unavailable",
                "application/json",
                json(503, "backendError", "Service Unavailable"),
            ),
            (other, _) => panic!("{other:?} has no canned answer"),
        };
        format!(
            "HTTP/1.1 {status} {reason}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\n\
             Connection: close\r\n\r\n{body}",
            body.len()
        )
        .into_bytes()
    }
}

/// Serves one client connection: requests one after the other until the
/// client closes it, a fault ends it, or it idles too long.
async fn connection(mut client: TcpStream, shared: Arc<Shared>) {
    let _ = client.set_nodelay(true);
    let mut buf = Vec::new();
    loop {
        let req = match read_request(&mut client, &mut buf).await {
            Some(r) => r,
            None => return,
        };
        let fault = shared.decide(&req);
        match fault {
            None => {
                let _counted = InFlight::enter(&shared);
                if !shared.config.hold.is_zero() {
                    tokio::time::sleep(shared.config.hold).await;
                }
                let resp = match exchange(shared.upstream, &req.raw).await {
                    Ok(r) => r,
                    Err(e) => {
                        shared.upstream_error(&req, &e);
                        return;
                    }
                };
                if client.write_all(&resp.raw).await.is_err() {
                    return;
                }
                if req.close || resp.close {
                    let _ = client.shutdown().await;
                    return;
                }
            }
            Some(
                f @ (Fault::Http500
                | Fault::Http503
                | Fault::Throttle
                | Fault::NotFoundAtFirst
                | Fault::Denied
                | Fault::Outage),
            ) => {
                let _ = client.write_all(&shared.canned(f, &req.target)).await;
                let _ = client.shutdown().await;
                return;
            }
            Some(Fault::ResetBeforeAnswer) => {
                if shared.flip() {
                    reset(client);
                } else {
                    let _ = client.shutdown().await;
                }
                return;
            }
            Some(Fault::Stall) => {
                hold(&mut client, shared.config.stall).await;
                return;
            }
            Some(f @ (Fault::ResetMidBody | Fault::StallMidBody | Fault::Truncated)) => {
                let resp = match exchange(shared.upstream, &req.raw).await {
                    Ok(r) => r,
                    Err(e) => {
                        shared.upstream_error(&req, &e);
                        return;
                    }
                };
                let (declared, part) = resp.cut();
                let mut out = resp.head_with_length(declared);
                out.extend_from_slice(part);
                if client.write_all(&out).await.is_err() {
                    return;
                }
                let _ = client.flush().await;
                match f {
                    Fault::ResetMidBody => {
                        // Let the partial answer leave before the reset.
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        reset(client);
                    }
                    Fault::StallMidBody => hold(&mut client, shared.config.stall).await,
                    _ => {
                        let _ = client.shutdown().await;
                    }
                }
                return;
            }
        }
    }
}

/// Closes with a TCP reset instead of an orderly close.
fn reset(stream: TcpStream) {
    let _ = stream.set_zero_linger();
    drop(stream);
}

/// Holds a connection without answering until the client closes it or
/// `limit` passes.
async fn hold(client: &mut TcpStream, limit: Duration) {
    let mut sink = [0u8; 1024];
    let _ = tokio::time::timeout(limit, async {
        loop {
            match client.read(&mut sink).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
}

/// Position of the blank line ending a head, and its length.
fn head_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n").map(|p| p + 4)
}

/// `name: value` headers of a head (lower-cased names).
fn headers(head: &str) -> Vec<(String, String)> {
    head.split("\r\n")
        .skip(1)
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect()
}

fn header<'a>(hs: &'a [(String, String)], name: &str) -> Option<&'a str> {
    hs.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
}

/// Reads more bytes into `buf`; false at end of stream or on error.
async fn fill(stream: &mut TcpStream, buf: &mut Vec<u8>) -> bool {
    let mut chunk = [0u8; 16 * 1024];
    match stream.read(&mut chunk).await {
        Ok(0) | Err(_) => false,
        Ok(n) => {
            buf.extend_from_slice(&chunk[..n]);
            true
        }
    }
}

/// Reads one request (bytes past it stay in `buf`); `None` when the client
/// closed the connection, idled too long or sent something unreadable.
async fn read_request(client: &mut TcpStream, buf: &mut Vec<u8>) -> Option<Request> {
    // Wait (long) for the first byte of the next request, then (briefly)
    // for the rest of it.
    if buf.is_empty() {
        match tokio::time::timeout(IDLE_TIMEOUT, fill(client, buf)).await {
            Ok(true) => {}
            _ => return None,
        }
    }
    let read = async {
        let end = loop {
            if let Some(end) = head_end(buf) {
                break end;
            }
            if buf.len() > MAX_HEAD || !fill(client, buf).await {
                return None;
            }
        };
        let head = String::from_utf8_lossy(&buf[..end]).into_owned();
        let hs = headers(&head);
        if header(&hs, "transfer-encoding").is_some() {
            // The clients under test send no chunked requests.
            return None;
        }
        let len: usize = header(&hs, "content-length")
            .map(|v| v.parse().ok())
            .unwrap_or(Some(0))?;
        while buf.len() < end + len {
            if !fill(client, buf).await {
                return None;
            }
        }
        let raw: Vec<u8> = buf.drain(..end + len).collect();
        let mut line = head.lines().next().unwrap_or("").split_whitespace();
        let method = line.next()?.to_string();
        let target = line.next()?.to_string();
        let version = line.next().unwrap_or("HTTP/1.1");
        let connection = header(&hs, "connection").map(str::to_ascii_lowercase);
        let close = match connection.as_deref() {
            Some(c) if c.contains("close") => true,
            Some(c) if c.contains("keep-alive") => false,
            _ => version == "HTTP/1.0",
        };
        let host = header(&hs, "host").unwrap_or("").to_string();
        Some(Request {
            raw,
            method,
            target,
            host,
            close,
        })
    };
    tokio::time::timeout(READ_TIMEOUT, read)
        .await
        .ok()
        .flatten()
}

/// Sends a request to the real server on a fresh connection and reads its
/// whole answer.
async fn exchange(upstream: SocketAddr, raw: &[u8]) -> std::io::Result<Response> {
    let is_head = raw.starts_with(b"HEAD ");
    let run = async {
        let mut s = TcpStream::connect(upstream).await?;
        let _ = s.set_nodelay(true);
        s.write_all(raw).await?;
        let mut buf = Vec::new();
        let end = loop {
            if let Some(end) = head_end(&buf) {
                break end;
            }
            if buf.len() > MAX_HEAD || !fill(&mut s, &mut buf).await {
                return Err(std::io::Error::other("no complete answer head"));
            }
        };
        let head_text = String::from_utf8_lossy(&buf[..end]).into_owned();
        let status: u16 = head_text
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .ok_or_else(|| std::io::Error::other("bad status line"))?;
        let hs = headers(&head_text);
        let close = header(&hs, "connection").is_some_and(|c| c.eq_ignore_ascii_case("close"));
        let chunked = header(&hs, "transfer-encoding")
            .is_some_and(|t| t.to_ascii_lowercase().contains("chunked"));
        let length: Option<usize> = header(&hs, "content-length").and_then(|v| v.parse().ok());
        let body = if is_head || status / 100 == 1 || status == 204 || status == 304 {
            Vec::new()
        } else if chunked {
            read_chunked(&mut s, &mut buf, end).await?
        } else if let Some(len) = length {
            while buf.len() < end + len {
                if !fill(&mut s, &mut buf).await {
                    return Err(std::io::Error::other("answer body ended early"));
                }
            }
            buf.truncate(end + len);
            buf[end..].to_vec()
        } else {
            while fill(&mut s, &mut buf).await {}
            buf[end..].to_vec()
        };
        let head = head_text
            .trim_end_matches("\r\n")
            .split("\r\n")
            .filter(|l| {
                let name = l
                    .split(':')
                    .next()
                    .unwrap_or("")
                    .trim()
                    .to_ascii_lowercase();
                !matches!(
                    name.as_str(),
                    "content-length" | "transfer-encoding" | "connection" | "keep-alive"
                )
            })
            .collect::<Vec<_>>()
            .join("\r\n");
        Ok(Response {
            raw: buf,
            head,
            body,
            close: close || (!chunked && length.is_none()),
        })
    };
    tokio::time::timeout(UPSTREAM_TIMEOUT, run)
        .await
        .unwrap_or_else(|_| {
            Err(std::io::Error::other(
                "the real server did not answer in time",
            ))
        })
}

/// Reads a chunked body that starts at `buf[start..]`; leaves the raw
/// bytes (through the final chunk and trailers) in `buf` and returns the
/// decoded body.
async fn read_chunked(
    s: &mut TcpStream,
    buf: &mut Vec<u8>,
    start: usize,
) -> std::io::Result<Vec<u8>> {
    let short = || std::io::Error::other("chunked answer ended early");
    let mut body = Vec::new();
    let mut pos = start;
    loop {
        let line_end = loop {
            if let Some(p) = buf[pos..].windows(2).position(|w| w == b"\r\n") {
                break pos + p;
            }
            if !fill(s, buf).await {
                return Err(short());
            }
        };
        let size_text = String::from_utf8_lossy(&buf[pos..line_end]).into_owned();
        let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
            .map_err(|_| std::io::Error::other(format!("bad chunk size {size_text:?}")))?;
        pos = line_end + 2;
        if size == 0 {
            // Trailers, up to the blank line.
            loop {
                if buf[pos..].starts_with(b"\r\n") {
                    buf.truncate(pos + 2);
                    return Ok(body);
                }
                if let Some(p) = buf[pos..].windows(4).position(|w| w == b"\r\n\r\n") {
                    buf.truncate(pos + p + 4);
                    return Ok(body);
                }
                if !fill(s, buf).await {
                    return Err(short());
                }
            }
        }
        while buf.len() < pos + size + 2 {
            if !fill(s, buf).await {
                return Err(short());
            }
        }
        body.extend_from_slice(&buf[pos..pos + size]);
        pos += size + 2;
    }
}

/// Decodes `%XX` escapes (object names in GCS paths).
fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let Ok(b) = u8::from_str_radix(&s[i + 1..i + 3], 16) {
                out.push(b);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn json_escape(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "\\\"")
}

//! Serving an HTTP service on a TCP listener with bounds on what clients
//! can hold: connections, time to send a request, idle connections and
//! responses nobody reads. Both listeners (KV Connect and admin) use it.
//!
//! Each connection speaks HTTP/1.1 or HTTP/2 cleartext with prior
//! knowledge (hyper-util's `auto` builder detects the h2 preface), so the
//! Deno CLI (h2c) and `@deno/kv` (HTTP/1.1) share one port. A listener
//! with TLS ([`Listener::tls`]) offers HTTP/2 and HTTP/1.1 by ALPN instead.
//!
//! What a connection may do:
//! - One client address (an IPv4 address, an IPv6 /64) holds at most
//!   [`Limits::max_connections_per_address`]; a connection over that is
//!   refused at once, so one address cannot take every slot.
//! - It waits for a free slot when [`Limits::max_connections`] are open,
//!   for at most [`CONNECTION_WAIT`]; then it is answered 503 (HTTP/1.1) or
//!   GOAWAY (h2c) and closed. (With TLS it is closed without an answer.)
//! - A TLS handshake must finish within [`Limits::header_read_timeout`].
//! - Its first request, and on HTTP/1 every request's headers, must arrive
//!   within [`Limits::header_read_timeout`] (slowloris). On HTTP/1 the same
//!   timer closes a keep-alive connection idle for that long.
//! - A request body must arrive within [`Limits::body_read_timeout`] of
//!   its headers; reading it then fails (the handlers answer 408 or 400).
//! - A connection with no request in flight for [`Limits::idle_timeout`]
//!   is closed gracefully (HTTP/2: GOAWAY, so clients retry elsewhere).
//! - A response the client does not read for [`Limits::stall_timeout`]
//!   (no progress in taking the next chunk) closes the connection; the
//!   kernel drops a peer that acknowledges nothing for that long
//!   (`TCP_USER_TIMEOUT`), e.g. a vanished watch client.
//!
//! At shutdown the listener closes, open connections finish their
//! in-flight requests (HTTP/2: GOAWAY) and whatever is left after
//! [`SHUTDOWN_GRACE`] is dropped.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;
use warp::http::header::CONNECTION;
use warp::http::{HeaderValue, Request, Response, Version};
use warp::hyper;
use warp::hyper::body::{Body, Frame, Incoming, SizeHint};

use super::tls::Certs;
use crate::metrics;

/// Bounds on what clients of one listener may hold. The defaults suit a
/// replica serving a few hundred application instances; see each field.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Open connections. Each costs a file descriptor, a task and its
    /// buffers (HTTP/1: up to 64 KiB each way; HTTP/2: up to 512 KiB of
    /// request data in flight); a client over the cap waits
    /// [`CONNECTION_WAIT`] for a slot, then is refused. Keep it under the
    /// process's file limit (the systemd unit sets 65536).
    pub max_connections: usize,
    /// Open connections from one client address (IPv6: one /64), counted
    /// within [`Limits::max_connections`]. Connections before
    /// authentication cost the same as any, so without this bound one
    /// host reconnecting in a loop could hold every slot and turn real
    /// clients away. A connection over it is refused at once. Behind a
    /// reverse proxy every client has the proxy's address: raise it to
    /// `max_connections` there.
    pub max_connections_per_address: usize,
    /// Open `watch` streams across all connections (KV Connect only).
    /// Every stream re-reads its keys when a commit becomes visible, so
    /// this bounds the read work of one commit. Over the cap, a new
    /// `watch` is answered 503.
    pub max_watch_streams: usize,
    /// Time to send a request's headers (and, on a new connection, the
    /// first request). Also how long an HTTP/1 keep-alive connection may
    /// sit idle between requests.
    pub header_read_timeout: Duration,
    /// Time to send a request body once its headers arrived. Bodies are
    /// at most 64 KiB (KV Connect) or 4 KiB (admin).
    pub body_read_timeout: Duration,
    /// A connection with no request in flight for this long is closed
    /// (HTTP/2 with GOAWAY). Open `watch` streams are requests in flight.
    pub idle_timeout: Duration,
    /// A response the client stops reading for this long closes the
    /// connection; also the kernel's bound on unacknowledged data.
    pub stall_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: 1024,
            max_connections_per_address: DEFAULT_MAX_CONNECTIONS_PER_ADDRESS,
            max_watch_streams: 1000,
            header_read_timeout: Duration::from_secs(10),
            body_read_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(60),
            stall_timeout: Duration::from_secs(60),
        }
    }
}

/// [`Limits::max_connections_per_address`] by default: an eighth of the
/// connection cap, far above what the applications of one host open (the
/// Deno CLI uses one HTTP/2 connection per database).
pub const DEFAULT_MAX_CONNECTIONS_PER_ADDRESS: usize = 128;

/// How long a connection over [`Limits::max_connections`] waits for a
/// slot before it is refused.
pub const CONNECTION_WAIT: Duration = Duration::from_secs(1);
/// Connections waiting for a slot (or being refused) at once; beyond,
/// new ones are closed at once.
const MAX_WAITING: usize = 128;
/// How long shutdown waits for connections to finish their requests
/// before dropping them.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);
/// Response data is handed to the connection in chunks of at most this
/// size, so progress (and a client that stopped reading) shows per chunk.
const RESPONSE_CHUNK: usize = 64 * 1024;
/// HTTP/2 streams one connection may have open. Deno multiplexes every
/// request of a database, `watch` streams included, on one connection.
const H2_MAX_STREAMS: u32 = 256;
/// HTTP/2 flow-control windows: how much request data a client may send
/// before the server reads it. Requests are at most 64 KiB.
const H2_STREAM_WINDOW: u32 = 128 * 1024;
const H2_CONN_WINDOW: u32 = 512 * 1024;
/// HTTP/2 pings, to find peers that vanished while holding a stream.
const H2_PING_INTERVAL: Duration = Duration::from_secs(30);
const H2_PING_TIMEOUT: Duration = Duration::from_secs(20);
/// HTTP/1 read and write buffer per connection; also the largest request
/// head (HTTP/2 header lists are limited to 16 KiB, hyper's default).
const H1_MAX_BUF: usize = 64 * 1024;

/// The error a request body reports when it did not arrive within
/// [`Limits::body_read_timeout`].
#[derive(Debug)]
pub struct BodyTimeout(pub Duration);

impl std::fmt::Display for BodyTimeout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the request body did not arrive within {} s",
            self.0.as_secs()
        )
    }
}

impl std::error::Error for BodyTimeout {}

/// True when `e`, or an error it wraps, is a [`BodyTimeout`].
pub fn is_body_timeout(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur = Some(e);
    while let Some(e) = cur {
        if e.is::<BodyTimeout>() {
            return true;
        }
        cur = e.source();
    }
    false
}

/// A request body that fails with [`BodyTimeout`] once its deadline has
/// passed (the timer starts only if the body is not there at once), and
/// tells whether it was read to its end.
pub struct Deadline<B> {
    inner: B,
    deadline: Instant,
    timeout: Duration,
    sleep: Option<Pin<Box<tokio::time::Sleep>>>,
    ended: Arc<AtomicBool>,
}

impl<B> Body for Deadline<B>
where
    B: Body + Unpin,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Data = B::Data;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = &mut *self;
        if let Poll::Ready(frame) = Pin::new(&mut this.inner).poll_frame(cx) {
            if frame.is_none() || this.inner.is_end_stream() {
                this.ended.store(true, Ordering::Relaxed);
            }
            return Poll::Ready(frame.map(|f| f.map_err(Into::into)));
        }
        let deadline = this.deadline;
        let sleep = this
            .sleep
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        if sleep.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Some(Err(Box::new(BodyTimeout(this.timeout)))));
        }
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// What one connection is doing, for its idle and stall deadlines.
///
/// Requests and responses only record what they do here; they never wake
/// the connection's driver, which looks at the state on a schedule
/// ([`Activity::next_check`]) instead. Waking it per request (three times:
/// a response waiting, taken, finished) re-polled the connection and
/// re-armed a timer each time, on the path of every request.
struct Activity {
    state: Mutex<ActivityState>,
}

struct ActivityState {
    /// Requests whose response is not finished (bodies included).
    requests: usize,
    /// When `requests` last dropped to zero (or the connection opened).
    idle_since: Instant,
    /// Whether any request arrived yet.
    served: bool,
    next_id: u64,
    /// Responses that handed out data the client has not taken yet, with
    /// since when.
    waiting: Vec<(u64, Instant)>,
}

/// Why a connection's deadline fired.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Expiry {
    /// No request arrived in time on a new connection.
    Unserved,
    /// No request in flight for too long.
    Idle,
    /// A response has not been read for too long.
    Stalled,
}

impl Activity {
    fn new() -> Arc<Self> {
        Arc::new(Activity {
            state: Mutex::new(ActivityState {
                requests: 0,
                idle_since: Instant::now(),
                served: false,
                next_id: 0,
                waiting: Vec::new(),
            }),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ActivityState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The next deadline and what it means, in the current state.
    fn deadline(&self, limits: &Limits) -> Option<(Instant, Expiry)> {
        let s = self.lock();
        if s.requests == 0 {
            Some(if s.served {
                (s.idle_since + limits.idle_timeout, Expiry::Idle)
            } else {
                (s.idle_since + limits.header_read_timeout, Expiry::Unserved)
            })
        } else {
            s.waiting
                .iter()
                .map(|(_, since)| *since)
                .min()
                .map(|since| (since + limits.stall_timeout, Expiry::Stalled))
        }
    }

    /// When the driver must look at the state next, `now`: the current
    /// deadline, and no later than the shortest idle or stall timeout from
    /// now. A deadline that appears later (a request ends, a response
    /// starts waiting on the client) lies at least that far after the
    /// moment it appears, so it is never missed, however many requests
    /// come and go in between.
    fn next_check(&self, limits: &Limits, now: Instant) -> Instant {
        let horizon = now + limits.idle_timeout.min(limits.stall_timeout);
        match self.deadline(limits) {
            Some((at, _)) => at.min(horizon),
            None => horizon,
        }
    }

    /// A request arrived: it is in flight until the returned guard drops.
    fn start(self: &Arc<Self>) -> InFlight {
        let mut s = self.lock();
        s.requests += 1;
        s.served = true;
        let id = s.next_id;
        s.next_id += 1;
        InFlight {
            activity: self.clone(),
            id,
        }
    }
}

/// One request in flight on a connection.
struct InFlight {
    activity: Arc<Activity>,
    id: u64,
}

impl InFlight {
    /// Marks the response as waiting on the client (data handed out, not
    /// taken yet) or not.
    fn set_waiting(&self, waiting: bool) {
        let mut s = self.activity.lock();
        if waiting {
            s.waiting.push((self.id, Instant::now()));
        } else if let Some(i) = s.waiting.iter().position(|(id, _)| *id == self.id) {
            s.waiting.swap_remove(i);
        }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let mut s = self.activity.lock();
        s.requests -= 1;
        if let Some(i) = s.waiting.iter().position(|(id, _)| *id == self.id) {
            s.waiting.swap_remove(i);
        }
        if s.requests == 0 {
            s.idle_since = Instant::now();
        }
    }
}

/// A response body that keeps its request in flight until it is dropped,
/// hands out data in chunks of at most [`RESPONSE_CHUNK`], and tells the
/// connection when the client has not taken the last chunk yet.
pub struct Tracked<B> {
    inner: B,
    /// The rest of a large data frame, handed out chunk by chunk.
    rest: Option<Bytes>,
    flight: InFlight,
    waiting: bool,
}

impl<B> Tracked<B> {
    fn new(inner: B, flight: InFlight) -> Self {
        // Until the connection takes the first chunk, the response waits
        // on the client (e.g. an HTTP/2 window that never opens).
        flight.set_waiting(true);
        Tracked {
            inner,
            rest: None,
            flight,
            waiting: true,
        }
    }

    fn set_waiting(&mut self, waiting: bool) {
        if self.waiting != waiting {
            self.waiting = waiting;
            self.flight.set_waiting(waiting);
        }
    }
}

fn chunk(data: &mut Bytes) -> Bytes {
    if data.len() > RESPONSE_CHUNK {
        data.split_to(RESPONSE_CHUNK)
    } else {
        std::mem::take(data)
    }
}

impl<B> Body for Tracked<B>
where
    B: Body<Data = Bytes> + Unpin,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = &mut *self;
        this.set_waiting(false);
        if let Some(rest) = this.rest.as_mut() {
            let out = chunk(rest);
            if rest.is_empty() {
                this.rest = None;
            }
            this.set_waiting(true);
            return Poll::Ready(Some(Ok(Frame::data(out))));
        }
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                let frame = match frame.into_data() {
                    Ok(mut data) => {
                        let out = chunk(&mut data);
                        if !data.is_empty() {
                            this.rest = Some(data);
                        }
                        Frame::data(out)
                    }
                    Err(other) => other,
                };
                this.set_waiting(true);
                Poll::Ready(Some(Ok(frame)))
            }
            other => other,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.rest.is_none() && self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        let extra = self.rest.as_ref().map_or(0, |r| r.len() as u64);
        let inner = self.inner.size_hint();
        let mut hint = SizeHint::new();
        hint.set_lower(inner.lower() + extra);
        if let Some(upper) = inner.upper() {
            hint.set_upper(upper + extra);
        }
        hint
    }
}

/// The service of one connection: counts requests in flight and bounds
/// the time their bodies take.
struct ConnService<S> {
    inner: S,
    activity: Arc<Activity>,
    body_timeout: Duration,
}

impl<S, B> hyper::service::Service<Request<Incoming>> for ConnService<S>
where
    S: hyper::service::Service<
        Request<Deadline<Incoming>>,
        Response = Response<B>,
        Error = Infallible,
    >,
    S::Future: Send + 'static,
    B: Body<Data = Bytes> + Unpin,
{
    type Response = Response<Tracked<B>>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn call(&self, req: Request<Incoming>) -> Self::Future {
        let flight = self.activity.start();
        let timeout = self.body_timeout;
        let http1 = req.version() < Version::HTTP_2;
        let ended = Arc::new(AtomicBool::new(req.body().is_end_stream()));
        let req = req.map(|inner| Deadline {
            inner,
            deadline: Instant::now() + timeout,
            timeout,
            sleep: None,
            ended: ended.clone(),
        });
        let response = self.inner.call(req);
        Box::pin(async move {
            let mut response = response.await?;
            // An HTTP/1 connection cannot carry another request after a
            // body that was not read (refused, or too slow): say so, or
            // the client may send its next request on a closing
            // connection.
            if http1 && !ended.load(Ordering::Relaxed) {
                response
                    .headers_mut()
                    .insert(CONNECTION, HeaderValue::from_static("close"));
            }
            Ok(response.map(|body| Tracked::new(body, flight)))
        })
    }
}

fn builder(limits: &Limits) -> auto::Builder<TokioExecutor> {
    let mut b = auto::Builder::new(TokioExecutor::new());
    b.http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(H1_MAX_BUF)
        .keep_alive(true);
    b.http1().max_headers(100);
    b.http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(H2_MAX_STREAMS)
        .initial_stream_window_size(H2_STREAM_WINDOW)
        .initial_connection_window_size(H2_CONN_WINDOW)
        .keep_alive_interval(H2_PING_INTERVAL)
        .keep_alive_timeout(H2_PING_TIMEOUT)
        .max_pending_accept_reset_streams(Some(20));
    b
}

/// Socket options of an accepted connection: no Nagle delay (answers are
/// small and would otherwise wait ~40 ms for the client's delayed ACK),
/// and a bound on how long sent data may stay unacknowledged.
fn tune(stream: &TcpStream, limits: &Limits) {
    if let Err(e) = stream.set_nodelay(true) {
        tracing::debug!(error = %e, "cannot set TCP_NODELAY");
    }
    #[cfg(target_os = "linux")]
    if let Err(e) = socket2::SockRef::from(stream).set_tcp_user_timeout(Some(limits.stall_timeout))
    {
        tracing::debug!(error = %e, "cannot set TCP_USER_TIMEOUT");
    }
    #[cfg(not(target_os = "linux"))]
    let _ = limits;
}

/// A bound listener, plain or with TLS. A `TcpListener` converts into a
/// plain one.
pub struct Listener {
    tcp: TcpListener,
    tls: Option<Arc<Certs>>,
}

impl Listener {
    /// Connections to `tcp` speak TLS with the certificate `certs` holds
    /// at the time of their handshake.
    pub fn tls(tcp: TcpListener, certs: Arc<Certs>) -> Listener {
        Listener {
            tcp,
            tls: Some(certs),
        }
    }

    /// The address it is bound to.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.tcp.local_addr()
    }

    /// `https` with TLS, else `http`: for logs.
    pub fn scheme(&self) -> &'static str {
        if self.tls.is_some() {
            "https"
        } else {
            "http"
        }
    }
}

impl From<TcpListener> for Listener {
    fn from(tcp: TcpListener) -> Listener {
        Listener { tcp, tls: None }
    }
}

/// The key one client address is counted under: an IPv4 address (also
/// when it arrives mapped into IPv6), or the /64 of an IPv6 address, the
/// block one host usually holds.
fn address_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6((u128::from(v6) & !u128::from(u64::MAX)).into()),
        },
    }
}

/// Open connections per client address.
#[derive(Default)]
struct PerAddress {
    open: Mutex<HashMap<IpAddr, usize>>,
}

impl PerAddress {
    /// Counts a connection from `ip`, unless that address has `cap` open.
    fn take(self: &Arc<Self>, ip: IpAddr, cap: usize) -> Option<AddressSlot> {
        let key = address_key(ip);
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        let n = open.entry(key).or_insert(0);
        if *n >= cap.max(1) {
            return None;
        }
        *n += 1;
        Some(AddressSlot {
            table: self.clone(),
            key,
        })
    }
}

/// One connection counted against its address; uncounted when dropped.
struct AddressSlot {
    table: Arc<PerAddress>,
    key: IpAddr,
}

impl Drop for AddressSlot {
    fn drop(&mut self) {
        let mut open = self.table.open.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = open.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.key);
            }
        }
    }
}

/// Logs a warning at most once a minute.
struct RareWarning(Option<Instant>);

impl RareWarning {
    fn due(&mut self) -> bool {
        let due = self.0.is_none_or(|t| t.elapsed() > Duration::from_secs(60));
        if due {
            self.0 = Some(Instant::now());
        }
        due
    }
}

/// Serves `service` on `listener` until `shutdown` resolves. `what` names
/// the listener in logs and metrics.
pub(crate) async fn serve<S, B>(
    what: &'static str,
    service: S,
    listener: Listener,
    limits: Limits,
    shutdown: impl Future<Output = ()>,
) where
    S: hyper::service::Service<
            Request<Deadline<Incoming>>,
            Response = Response<B>,
            Error = Infallible,
        > + Clone
        + Send
        + Sync
        + 'static,
    S::Future: Send + 'static,
    B: Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let builder = Arc::new(builder(&limits));
    let limits = Arc::new(limits);
    let acceptor = listener.tls.as_ref().map(Certs::acceptor);
    let listener = listener.tcp;
    let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let per_address = Arc::new(PerAddress::default());
    let waiting = Arc::new(Semaphore::new(MAX_WAITING));
    // Connections refused for their address, being answered at once.
    let refusing = Arc::new(Semaphore::new(MAX_WAITING));
    let (closing_tx, closing) = watch::channel(false);
    let mut tasks = JoinSet::new();
    let mut shutdown = std::pin::pin!(shutdown);
    let mut full_warning = RareWarning(None);
    let mut address_warning = RareWarning(None);
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            Some(_) = tasks.join_next(), if !tasks.is_empty() => continue,
            _ = &mut shutdown => break,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(e) => {
                accept_failed(what, e).await;
                continue;
            }
        };
        tune(&stream, &limits);
        let tls = acceptor.is_some();
        let Some(address) = per_address.take(peer.ip(), limits.max_connections_per_address) else {
            metrics::error("address_connection_limit");
            if address_warning.due() {
                tracing::warn!(
                    listener = what,
                    address = %address_key(peer.ip()),
                    max_connections_per_address = limits.max_connections_per_address,
                    "one client address reached its connection limit: its new connections are refused"
                );
            }
            // A TLS connection is closed at once (see `refuse`); a plain
            // one is answered while few are, else closed.
            if tls {
                drop(stream);
            } else if let Ok(place) = refusing.clone().try_acquire_owned() {
                tasks.spawn(async move {
                    let _place = place;
                    refuse(stream, tls).await
                });
            }
            continue;
        };
        let conn = Conn {
            builder: builder.clone(),
            service: service.clone(),
            limits: limits.clone(),
            closing: closing.clone(),
            tls: acceptor.clone(),
            _address: address,
        };
        match slots.clone().try_acquire_owned() {
            Ok(slot) => {
                tasks.spawn(conn.run(stream, slot));
            }
            Err(_) => {
                metrics::error("connection_limit");
                if full_warning.due() {
                    tracing::warn!(
                        listener = what,
                        max_connections = limits.max_connections,
                        "connection limit reached: new connections wait, then are refused"
                    );
                }
                let Ok(place) = waiting.clone().try_acquire_owned() else {
                    drop(stream);
                    continue;
                };
                let slots = slots.clone();
                tasks.spawn(async move {
                    let _place = place;
                    match tokio::time::timeout(CONNECTION_WAIT, slots.acquire_owned()).await {
                        Ok(Ok(slot)) => {
                            drop(_place);
                            conn.run(stream, slot).await
                        }
                        _ => refuse(stream, tls).await,
                    }
                });
            }
        }
    }
    drop(listener);
    closing_tx.send_replace(true);
    let drained = tokio::time::timeout(SHUTDOWN_GRACE, async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::debug!(
            listener = what,
            open = tasks.len(),
            "dropping connections still open at the end of the shutdown grace"
        );
        tasks.shutdown().await;
    }
}

/// Out of file descriptors and similar: wait a little instead of spinning
/// on a listener that keeps failing. Errors of one aborted connection are
/// not the listener's.
async fn accept_failed(what: &str, e: std::io::Error) {
    use std::io::ErrorKind::*;
    if matches!(
        e.kind(),
        ConnectionAborted | ConnectionReset | ConnectionRefused | Interrupted
    ) {
        return;
    }
    metrics::error("accept");
    tracing::warn!(listener = what, error = %e, "accepting a connection failed; pausing 100 ms");
    tokio::time::sleep(Duration::from_millis(100)).await;
}

/// The HTTP/2 connection preface.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Refuses a connection over a cap in the client's protocol: a 503 for
/// HTTP/1, a GOAWAY (ENHANCE_YOUR_CALM) for h2c. Reads what the client
/// sent for a moment after, so closing does not reset the answer away.
/// A TLS connection is closed before its handshake: answering would cost
/// the handshake the cap is there to save.
async fn refuse(mut stream: TcpStream, tls: bool) {
    if tls {
        return;
    }
    const MESSAGE: &str = "Too many connections to this replica; try again shortly.\n";
    let mut first = [0u8; 24];
    let n = stream.try_read(&mut first).unwrap_or(0);
    let h2 = n >= 3 && first[..n] == H2_PREFACE[..n];
    let answer: Vec<u8> = if h2 {
        let mut out = Vec::new();
        // An empty SETTINGS frame (the server preface), then GOAWAY with
        // last stream 0: no request was processed, retrying is safe.
        out.extend_from_slice(&[0, 0, 0, 0x4, 0, 0, 0, 0, 0]);
        let debug = MESSAGE.trim_end().as_bytes();
        let len = (8 + debug.len()) as u32;
        out.extend_from_slice(&len.to_be_bytes()[1..]);
        out.extend_from_slice(&[0x7, 0, 0, 0, 0, 0]);
        out.extend_from_slice(&[0, 0, 0, 0]);
        out.extend_from_slice(&0xbu32.to_be_bytes());
        out.extend_from_slice(debug);
        out
    } else {
        format!(
            "HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain; charset=utf-8\r\n\
             content-length: {}\r\nretry-after: 1\r\nconnection: close\r\n\r\n{MESSAGE}",
            MESSAGE.len()
        )
        .into_bytes()
    };
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        stream.write_all(&answer).await?;
        stream.shutdown().await?;
        let mut sink = [0u8; 4096];
        let mut left: usize = 64 * 1024;
        while left > 0 {
            let n = stream.read(&mut sink).await?;
            if n == 0 {
                break;
            }
            left = left.saturating_sub(n);
        }
        Ok::<_, std::io::Error>(())
    })
    .await;
}

/// One accepted connection and what it needs to be served.
struct Conn<S> {
    builder: Arc<auto::Builder<TokioExecutor>>,
    service: S,
    limits: Arc<Limits>,
    closing: watch::Receiver<bool>,
    tls: Option<TlsAcceptor>,
    /// Counts the connection against its client's address while it lives.
    _address: AddressSlot,
}

impl<S, B> Conn<S>
where
    S: hyper::service::Service<
            Request<Deadline<Incoming>>,
            Response = Response<B>,
            Error = Infallible,
        > + Send
        + Sync
        + 'static,
    S::Future: Send + 'static,
    B: Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    /// Serves the connection (after its TLS handshake, on a TLS listener)
    /// until it ends, an idle or stall deadline fires, or the server shuts
    /// down. `slot` is held throughout.
    async fn run(self, stream: TcpStream, slot: OwnedSemaphorePermit) {
        let Some(acceptor) = self.tls.clone() else {
            return self.serve(stream, slot).await;
        };
        // A handshake is bounded like a request's headers (slowloris).
        let timeout = self.limits.header_read_timeout;
        match tokio::time::timeout(timeout, acceptor.accept(stream)).await {
            Ok(Ok(tls)) => self.serve(tls, slot).await,
            Ok(Err(e)) => {
                metrics::error("tls_handshake");
                tracing::debug!(error = %e, "TLS handshake failed");
            }
            Err(_) => {
                metrics::error("tls_handshake");
                tracing::debug!("closing a connection whose TLS handshake did not finish in time");
            }
        }
    }

    async fn serve<I>(mut self, io: I, slot: OwnedSemaphorePermit)
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let _slot = slot;
        let activity = Activity::new();
        let service = ConnService {
            inner: self.service,
            activity: activity.clone(),
            body_timeout: self.limits.body_read_timeout,
        };
        let conn = self.builder.serve_connection(TokioIo::new(io), service);
        let mut conn = std::pin::pin!(conn);
        // How long the connection may take to wind down once told to.
        let check = activity.next_check(&self.limits, Instant::now());
        let mut check = std::pin::pin!(tokio::time::sleep_until(check));
        let grace = loop {
            if *self.closing.borrow_and_update() {
                break SHUTDOWN_GRACE;
            }
            tokio::select! {
                r = conn.as_mut() => {
                    if let Err(e) = r {
                        tracing::debug!(error = %e, "connection ended with an error");
                    }
                    return;
                }
                changed = self.closing.changed() => {
                    if changed.is_err() {
                        break SHUTDOWN_GRACE;
                    }
                }
                _ = check.as_mut() => {
                    let now = Instant::now();
                    // Only act on a deadline that holds in the state now.
                    let due = activity
                        .deadline(&self.limits)
                        .filter(|(at, _)| *at <= now);
                    if let Some((_, why)) = due {
                        match why {
                            // A client that sent no request in time, or
                            // stopped reading: nothing to wind down.
                            Expiry::Unserved => {
                                tracing::debug!("closing a connection that sent no request in time");
                                return;
                            }
                            Expiry::Stalled => {
                                tracing::debug!("closing a connection whose client stopped reading");
                                return;
                            }
                            // A request may cross the close: give it the
                            // time a client has to send one.
                            Expiry::Idle => {
                                tracing::debug!("closing a connection with no request in flight");
                                break self.limits.header_read_timeout;
                            }
                        }
                    }
                    check.as_mut().reset(activity.next_check(&self.limits, now));
                }
            }
        };
        conn.as_mut().graceful_shutdown();
        let _ = tokio::time::timeout(grace, conn).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_large_frames() {
        let mut data = Bytes::from(vec![7u8; RESPONSE_CHUNK * 2 + 5]);
        assert_eq!(chunk(&mut data).len(), RESPONSE_CHUNK);
        assert_eq!(chunk(&mut data).len(), RESPONSE_CHUNK);
        assert_eq!(chunk(&mut data).len(), 5);
        assert!(data.is_empty());
    }

    #[test]
    fn body_timeout_is_found_through_wrappers() {
        #[derive(Debug)]
        struct Outer(BodyTimeout);
        impl std::fmt::Display for Outer {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("outer")
            }
        }
        impl std::error::Error for Outer {
            fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
                Some(&self.0)
            }
        }
        assert!(is_body_timeout(&Outer(BodyTimeout(Duration::from_secs(1)))));
        assert!(!is_body_timeout(&std::fmt::Error));
    }

    #[test]
    fn addresses_count_by_host() {
        let key = |s: &str| address_key(s.parse().unwrap()).to_string();
        assert_eq!(key("192.0.2.7"), "192.0.2.7");
        assert_eq!(key("::ffff:192.0.2.7"), "192.0.2.7");
        assert_eq!(key("2001:db8:1:2:3:4:5:6"), "2001:db8:1:2::");
        let table = Arc::new(PerAddress::default());
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        let a = table.take(ip, 2).unwrap();
        let _b = table.take(ip, 2).unwrap();
        assert!(table.take(ip, 2).is_none());
        assert!(table.take("127.0.0.2".parse().unwrap(), 2).is_some());
        drop(a);
        assert!(table.take(ip, 2).is_some());
    }

    /// Timeouts of 1 s (headers), 5 s (idle) and 7 s (stall).
    fn short_limits() -> Limits {
        Limits {
            header_read_timeout: Duration::from_secs(1),
            idle_timeout: Duration::from_secs(5),
            stall_timeout: Duration::from_secs(7),
            ..Limits::default()
        }
    }

    #[tokio::test]
    async fn deadlines_follow_requests_and_stalls() {
        let limits = short_limits();
        let a = Activity::new();
        let (at, why) = a.deadline(&limits).unwrap();
        assert_eq!(why, Expiry::Unserved);
        assert!(at <= Instant::now() + Duration::from_secs(1));
        let flight = a.start();
        assert_eq!(a.deadline(&limits), None);
        flight.set_waiting(true);
        assert_eq!(a.deadline(&limits).unwrap().1, Expiry::Stalled);
        flight.set_waiting(false);
        assert_eq!(a.deadline(&limits), None);
        drop(flight);
        let (at, why) = a.deadline(&limits).unwrap();
        assert_eq!(why, Expiry::Idle);
        assert!(at > Instant::now() + Duration::from_secs(4));
    }

    /// The driver is not woken by requests, so it must look again before
    /// any deadline a request could set from now on.
    #[tokio::test]
    async fn checks_come_before_any_deadline_a_request_can_set() {
        let limits = short_limits();
        let a = Activity::new();
        let now = Instant::now();
        // A new connection: its first request is due first.
        assert!(a.next_check(&limits, now) <= now + Duration::from_secs(1));
        let flight = a.start();
        // Nothing due while a request runs, but a response may start
        // waiting (stall) or the request end (idle) at any moment.
        let check = a.next_check(&limits, now);
        assert_eq!(check, now + Duration::from_secs(5));
        flight.set_waiting(true);
        let later = now + Duration::from_secs(1);
        assert!(a.next_check(&limits, later) <= a.deadline(&limits).unwrap().0);
        drop(flight);
        let (idle_at, _) = a.deadline(&limits).unwrap();
        assert!(check <= idle_at, "the check precedes the idle deadline");
    }
}

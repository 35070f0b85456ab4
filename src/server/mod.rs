//! The read-only KV Connect server: what `Deno.openKv("http://host:4512")`
//! and `@deno/kv` for Node talk to.
//!
//! One listener speaks HTTP/1.1 (Node's fetch) and HTTP/2 cleartext with
//! prior knowledge (the Deno CLI): warp's server detects the HTTP/2
//! preface on each connection. With a certificate ([`tls`]) it speaks TLS
//! instead, offering HTTP/2 and HTTP/1.1 by ALPN. The metadata exchange (`POST /`) hands out
//! the data path `/v2`; `snapshot_read` and `watch` read the visible state
//! through a pool of read-only SQLite connections, and `atomic_write` is
//! refused. Nothing here ever writes to the replica.
//!
//! Requests are answered 503 until the initial snapshot is complete, so a
//! client never sees a state from before the backup's differential point.
//! A restarted replica whose snapshot was complete serves at once from its
//! file, before the first poll of the bucket.
//!
//! What a client may hold (connections, open watch streams, time to send a
//! request, idle and unread connections) is bounded by [`Limits`]; the
//! `listener` module applies them.

pub(crate) mod listener;
mod read;
pub mod tls;
mod watch;

use std::convert::Infallible;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use bytes::{Buf, Bytes, BytesMut};
use chrono::Utc;
use denokv_proto::datapath::{SnapshotRead, Watch};
use futures::{Stream, StreamExt};
use prost::Message;
use serde::Deserialize;
use tokio::sync::{watch as channel, OwnedSemaphorePermit, Semaphore};
use warp::http::{HeaderMap, HeaderValue, Method, StatusCode};
use warp::reply::Response;
use warp::{Filter, Reply};

use crate::auth::Tokens;
use crate::format::Versionstamp;
use crate::metrics::{self, METRICS};
use crate::source::SourceUrl;
use crate::store::StoreError;
use crate::sync::Syncer;

pub use listener::{
    Limits, Listener, CONNECTION_WAIT, DEFAULT_MAX_CONNECTIONS_PER_ADDRESS, SHUTDOWN_GRACE,
};
pub use read::ReaderPool;
pub use watch::KEEPALIVE;

/// Reads asking for at most this many entries in all run on the request's
/// own task (see [`read::ReaderPool::read_here`]); bigger ones on the
/// blocking pool, so one large read cannot hold a runtime thread for long.
const READ_HERE_MAX_ENTRIES: usize = 256;

/// Request limits, the same as the reference server's (denokv_proto's
/// `limits`, which it does not export), so a client that works against
/// Deploy or denokv works here and vice versa.
pub mod limits {
    /// Ranges in one `snapshot_read`.
    pub const MAX_READ_RANGES: usize = 10;
    /// Entries requested across the ranges of one `snapshot_read`.
    pub const MAX_READ_ENTRIES: usize = 1000;
    /// Largest key written (and so watched).
    pub const MAX_WRITE_KEY_SIZE_BYTES: usize = 2048;
    /// Largest range bound: one more than a key, for the `key + 0x00` end
    /// bound of a single-key read.
    pub const MAX_READ_KEY_SIZE_BYTES: usize = MAX_WRITE_KEY_SIZE_BYTES + 1;
    /// Keys in one `watch`.
    pub const MAX_WATCHED_KEYS: usize = 10;
}

/// Largest request body. The largest valid request, ten ranges with two
/// 2049-byte keys each, is about 41 KiB; anything bigger is refused before
/// it is read into memory.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// How long a metadata answer is valid. Clients re-run the exchange when
/// it expires, or earlier on a 401 (e.g. after a token rotation).
pub const METADATA_TTL: chrono::Duration = chrono::Duration::hours(1);

/// Protocol versions served: 2 and 3 differ only in v3 clients requiring
/// `status` in read answers, which is always set.
const VERSIONS: [u64; 2] = [3, 2];

/// Default size of the reader pool: reads are short, CPU-bound SQLite
/// lookups, so a few connections per core keep every core busy while one
/// waits on the disk.
pub fn default_readers() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get() * 2)
        .unwrap_or(4)
        .clamp(4, 32)
}

/// The stable id of the database a source holds: the Deploy database UUID
/// when the prefix carries one, else a UUIDv5 of the source URL. Every
/// replica of one source reports the same id, so clients can be balanced
/// across replicas (metadata from one, reads from another).
pub fn database_id(url: &SourceUrl) -> uuid::Uuid {
    url.deploy_database_id().unwrap_or_else(|| {
        uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_URL, url.to_string().as_bytes())
    })
}

/// The id a replica reports: [`database_id`] for a replica of every key;
/// for one that keeps only some keys (`sync.include_prefixes`,
/// `sync.exclude_prefixes`), a UUIDv5 of that id and the filter, so that
/// it never claims to be the same database as a replica that holds other
/// keys (a client balanced across both would read a mix), while replicas
/// with the same filter still share one id.
pub fn replica_database_id(url: &SourceUrl, filter: &crate::store::KeyFilter) -> uuid::Uuid {
    let id = database_id(url);
    if filter.is_empty() {
        return id;
    }
    let mut name = id.as_bytes().to_vec();
    name.extend(filter.to_meta());
    uuid::Uuid::new_v5(&id, &name)
}

/// Errors at the KV Connect boundary, each with its HTTP status. Bodies
/// are plain text: clients show them to the user verbatim.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("Missing or invalid access token (send Authorization: Bearer <token>).")]
    Unauthorized,
    #[error("The server requires protocol version 2 or 3; the client offered {0}. Upgrade the client (Deno 1.38 or newer).")]
    NoCommonVersion(String),
    #[error("The metadata request body is not valid JSON: {0}")]
    BadMetadataRequest(String),
    #[error("Missing or unsupported x-denokv-version header (this server speaks 2 and 3).")]
    BadProtocolVersion,
    #[error("Missing or wrong x-denokv-database-id header: this server holds database {0}.")]
    WrongDatabase(uuid::Uuid),
    #[error("Malformed request: {0}")]
    BadRequest(String),
    #[error("Request protobuf is invalid: {0}")]
    BadProtobuf(String),
    #[error("Request body too large (at most {MAX_BODY_BYTES} bytes).")]
    BodyTooLarge,
    #[error("The request body did not arrive within {0} s.")]
    BodyTimeout(u64),
    #[error(
        "Too many read ranges in one request (at most {}).",
        limits::MAX_READ_RANGES
    )]
    TooManyRanges,
    #[error(
        "A read range limit must be between 1 and {}.",
        limits::MAX_READ_ENTRIES
    )]
    BadLimit,
    #[error(
        "Too many entries requested across the ranges of one request (at most {} in total).",
        limits::MAX_READ_ENTRIES
    )]
    TooManyEntries,
    #[error("A key exceeds the key size limit ({0} bytes).")]
    KeyTooLong(usize),
    #[error(
        "Too many keys watched in one request (at most {}).",
        limits::MAX_WATCHED_KEYS
    )]
    TooManyWatchedKeys,
    #[error("This database is a read-only replica (kvreplica): writes are not accepted here. Write to the primary database (Deno Deploy) instead.")]
    ReadOnly,
    #[error("The replica is still loading its initial snapshot; try again shortly.")]
    Loading,
    #[error("Resource not found.")]
    NotFound,
    #[error("Method {0} is not allowed here; use POST.")]
    MethodNotAllowed(Method),
    #[error("The server is shutting down.")]
    ShuttingDown,
    #[error("Too many open watch streams on this replica (at most {0}); try again shortly.")]
    TooManyWatchStreams(usize),
    #[error("Internal server error: {0}")]
    Internal(String),
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        use ApiError::*;
        match self {
            Unauthorized => StatusCode::UNAUTHORIZED,
            BadRequest(_)
            | NoCommonVersion(_)
            | BadMetadataRequest(_)
            | BadProtocolVersion
            | WrongDatabase(_)
            | BadProtobuf(_)
            | BodyTooLarge
            | TooManyRanges
            | BadLimit
            | TooManyEntries
            | KeyTooLong(_)
            | TooManyWatchedKeys
            | ReadOnly => StatusCode::BAD_REQUEST,
            NotFound => StatusCode::NOT_FOUND,
            MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            BodyTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            Loading | ShuttingDown | TooManyWatchStreams(_) => StatusCode::SERVICE_UNAVAILABLE,
            Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn into_response(self) -> Response {
        let status = self.status();
        let mut r = Response::new(self.to_string().into());
        *r.status_mut() = status;
        r.headers_mut().insert(
            "content-type",
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        match status {
            StatusCode::UNAUTHORIZED => {
                r.headers_mut()
                    .insert("www-authenticate", HeaderValue::from_static("Bearer"));
            }
            StatusCode::SERVICE_UNAVAILABLE => {
                r.headers_mut()
                    .insert("retry-after", HeaderValue::from_static("1"));
            }
            _ => {}
        }
        r
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        ApiError::Internal(e.to_string())
    }
}

/// What the server is configured with.
pub struct ServerOptions {
    /// Accepted access tokens (shared with config reload for rotation).
    pub tokens: Arc<Tokens>,
    /// The id reported in the metadata and required on the data path.
    pub database_id: uuid::Uuid,
    /// Read connections in the pool.
    pub readers: usize,
    /// Bounds on connections, watch streams and slow clients.
    pub limits: Limits,
}

/// The server's shared state.
pub struct KvConnect {
    /// Accepted access tokens.
    tokens: Arc<Tokens>,
    /// See [`database_id`].
    database_id: uuid::Uuid,
    /// Read-only connections to the replica file.
    pool: ReaderPool,
    /// The visible commit: `None` until the initial snapshot is complete;
    /// watch streams wake when it moves.
    visible: channel::Receiver<Option<Versionstamp>>,
    /// Set at shutdown so watch streams end and connections can drain.
    closing: channel::Sender<bool>,
    /// What clients may hold.
    limits: Limits,
    /// One permit per watch stream that may be open.
    watch_streams: Arc<Semaphore>,
}

impl KvConnect {
    /// Prepares a server over the replica `syncer` keeps at `db`.
    pub fn new(
        syncer: Arc<Syncer>,
        db: &Path,
        opts: ServerOptions,
    ) -> Result<Arc<Self>, StoreError> {
        Ok(Arc::new(KvConnect {
            tokens: opts.tokens,
            database_id: opts.database_id,
            pool: ReaderPool::new(db, opts.readers)?,
            visible: syncer.subscribe(),
            closing: channel::Sender::new(false),
            watch_streams: Arc::new(Semaphore::new(opts.limits.max_watch_streams)),
            limits: opts.limits,
        }))
    }

    /// The database id clients must send.
    pub fn database_id(&self) -> uuid::Uuid {
        self.database_id
    }

    /// Ends every watch stream and refuses new requests: the first step of
    /// a graceful shutdown.
    pub fn close(&self) {
        self.closing.send_replace(true);
    }

    /// A place for one more watch stream, if the cap allows.
    fn watch_stream(&self) -> Result<OwnedSemaphorePermit, ApiError> {
        self.watch_streams.clone().try_acquire_owned().map_err(|_| {
            metrics::error("watch_stream_limit");
            ApiError::TooManyWatchStreams(self.limits.max_watch_streams)
        })
    }

    fn check_serving(&self) -> Result<(), ApiError> {
        if *self.closing.borrow() {
            return Err(ApiError::ShuttingDown);
        }
        if self.visible.borrow().is_none() {
            return Err(ApiError::Loading);
        }
        Ok(())
    }
}

#[derive(Deserialize)]
struct MetadataRequest {
    #[serde(rename = "supportedVersions")]
    supported_versions: Vec<u64>,
}

/// `POST /`: the metadata exchange, for a client that presented `token`.
fn metadata(kv: &KvConnect, token: String, body: &[u8]) -> Result<Response, ApiError> {
    // No body means a version-1 client.
    let offered = if body.is_empty() {
        vec![1]
    } else {
        serde_json::from_slice::<MetadataRequest>(body)
            .map_err(|e| ApiError::BadMetadataRequest(e.to_string()))?
            .supported_versions
    };
    let version = VERSIONS
        .into_iter()
        .find(|v| offered.contains(v))
        .ok_or_else(|| ApiError::NoCommonVersion(format!("{offered:?}")))?;
    kv.check_serving()?;
    let expires_at =
        (Utc::now() + METADATA_TTL).to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    // Exactly these keys: @deno/kv rejects any other.
    let json = serde_json::json!({
        "version": version,
        "databaseId": kv.database_id.hyphenated().to_string(),
        "endpoints": [{"url": "/v2", "consistency": "strong"}],
        "token": token,
        "expiresAt": expires_at,
    });
    let mut r = Response::new(json.to_string().into());
    r.headers_mut()
        .insert("content-type", HeaderValue::from_static("application/json"));
    Ok(r)
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// The checks every data-path request passes: token, protocol version,
/// database id, then readiness.
/// The access token a request presents, if it is one of the configured
/// ones.
fn authorize(kv: &KvConnect, headers: &HeaderMap) -> Result<String, ApiError> {
    kv.tokens
        .check(header(headers, "authorization"))
        .ok_or(ApiError::Unauthorized)
}

fn check_data_path(kv: &KvConnect, headers: &HeaderMap) -> Result<(), ApiError> {
    authorize(kv, headers)?;
    match header(headers, "x-denokv-version") {
        Some("2" | "3") => {}
        _ => return Err(ApiError::BadProtocolVersion),
    }
    let id =
        header(headers, "x-denokv-database-id").and_then(|s| uuid::Uuid::try_parse(s.trim()).ok());
    if id != Some(kv.database_id) {
        return Err(ApiError::WrongDatabase(kv.database_id));
    }
    kv.check_serving()
}

fn protobuf(bytes: Vec<u8>) -> Response {
    let mut r = Response::new(bytes.into());
    r.headers_mut().insert(
        "content-type",
        HeaderValue::from_static("application/x-protobuf"),
    );
    r
}

/// `POST /v2/snapshot_read`.
async fn snapshot_read(kv: &Arc<KvConnect>, body: &[u8]) -> Result<Response, ApiError> {
    let req = SnapshotRead::decode(body).map_err(|e| ApiError::BadProtobuf(e.to_string()))?;
    if req.ranges.len() > limits::MAX_READ_RANGES {
        return Err(ApiError::TooManyRanges);
    }
    let mut total: usize = 0;
    for r in &req.ranges {
        if r.limit <= 0 || r.limit as usize > limits::MAX_READ_ENTRIES {
            return Err(ApiError::BadLimit);
        }
        total += r.limit as usize;
        for k in [&r.start, &r.end] {
            if k.len() > limits::MAX_READ_KEY_SIZE_BYTES {
                return Err(ApiError::KeyTooLong(limits::MAX_READ_KEY_SIZE_BYTES));
            }
        }
    }
    if total > limits::MAX_READ_ENTRIES {
        return Err(ApiError::TooManyEntries);
    }
    let now_ms = Utc::now().timestamp_millis();
    let out = if total <= READ_HERE_MAX_ENTRIES {
        kv.pool
            .read_here(|c| read::read_ranges_encoded(c, &req.ranges, now_ms))
            .await?
    } else {
        kv.pool
            .read(move |c| read::read_ranges_encoded(c, &req.ranges, now_ms))
            .await?
    };
    Ok(protobuf(out))
}

/// `POST /v2/watch`.
fn watch(kv: &Arc<KvConnect>, body: &[u8]) -> Result<Response, ApiError> {
    let req = Watch::decode(body).map_err(|e| ApiError::BadProtobuf(e.to_string()))?;
    if req.keys.len() > limits::MAX_WATCHED_KEYS {
        return Err(ApiError::TooManyWatchedKeys);
    }
    if req
        .keys
        .iter()
        .any(|k| k.key.len() > limits::MAX_WRITE_KEY_SIZE_BYTES)
    {
        return Err(ApiError::KeyTooLong(limits::MAX_WRITE_KEY_SIZE_BYTES));
    }
    let place = kv.watch_stream()?;
    let keys = req.keys.into_iter().map(|k| k.key).collect();
    let mut rx = watch::start(kv.clone(), keys, place);
    let body = futures::stream::poll_fn(move |cx| rx.poll_recv(cx)).map(Ok::<_, Infallible>);
    let mut r = warp::reply::stream(body).into_response();
    r.headers_mut().insert(
        "content-type",
        HeaderValue::from_static("application/octet-stream"),
    );
    Ok(r)
}

/// Which endpoint a path is, for routing and for metric labels.
fn endpoint(path: &str) -> &'static str {
    match path {
        "/" => "metadata",
        "/v2/snapshot_read" => "snapshot_read",
        "/v2/watch" => "watch",
        "/v2/atomic_write" => "atomic_write",
        _ => "other",
    }
}

/// Routes a request. The body is read only once the path, method and
/// token are known to be good: a client without a token cannot make the
/// server read anything.
async fn dispatch<S, B>(
    kv: Arc<KvConnect>,
    method: Method,
    path: &str,
    headers: HeaderMap,
    body: S,
) -> Result<Response, ApiError>
where
    S: Stream<Item = Result<B, warp::Error>>,
    B: Buf,
{
    let ep = endpoint(path);
    if ep == "other" {
        return Err(ApiError::NotFound);
    }
    if method != Method::POST {
        return Err(ApiError::MethodNotAllowed(method));
    }
    if ep == "metadata" {
        let token = authorize(&kv, &headers)?;
        let body = read_body(&kv, &headers, body).await?;
        return metadata(&kv, token, &body);
    }
    check_data_path(&kv, &headers)?;
    let body = read_body(&kv, &headers, body).await?;
    match ep {
        "snapshot_read" => snapshot_read(&kv, &body).await,
        "watch" => watch(&kv, &body),
        _ => Err(ApiError::ReadOnly),
    }
}

/// Reads a request body up to [`MAX_BODY_BYTES`], refusing a larger one
/// from its `content-length` before reading, or as soon as it overflows,
/// and one that does not arrive within [`Limits::body_read_timeout`].
async fn read_body<S, B>(kv: &KvConnect, headers: &HeaderMap, body: S) -> Result<Bytes, ApiError>
where
    S: Stream<Item = Result<B, warp::Error>>,
    B: Buf,
{
    if let Some(len) = header(headers, "content-length").and_then(|s| s.parse::<u64>().ok()) {
        if len > MAX_BODY_BYTES as u64 {
            return Err(ApiError::BodyTooLarge);
        }
    }
    let mut out = BytesMut::new();
    let mut body = std::pin::pin!(body);
    while let Some(chunk) = body.next().await {
        let mut chunk = chunk.map_err(|e| {
            if listener::is_body_timeout(&e) {
                ApiError::BodyTimeout(kv.limits.body_read_timeout.as_secs())
            } else {
                ApiError::BadProtobuf(format!("reading the body: {e}"))
            }
        })?;
        if out.len() + chunk.remaining() > MAX_BODY_BYTES {
            return Err(ApiError::BodyTooLarge);
        }
        while chunk.has_remaining() {
            let c = chunk.chunk();
            out.extend_from_slice(c);
            let n = c.len();
            chunk.advance(n);
        }
    }
    Ok(out.freeze())
}

/// The KV Connect API as a warp filter: every request gets an answer, and
/// is counted by endpoint and status.
pub fn routes(
    kv: Arc<KvConnect>,
) -> impl Filter<Extract = (Response,), Error = Infallible> + Clone {
    let kv = warp::any().map(move || kv.clone());
    kv.and(warp::method())
        .and(warp::path::full())
        .and(warp::header::headers_cloned())
        .and(warp::body::stream())
        .then(
            |kv: Arc<KvConnect>, method: Method, path: warp::path::FullPath, headers: HeaderMap, body| async move {
                let started = Instant::now();
                let ep = endpoint(path.as_str());
                let response = match dispatch(kv, method, path.as_str(), headers, body).await {
                    Ok(r) => r,
                    Err(e) => {
                        if e.status().is_server_error() && !matches!(e, ApiError::Loading | ApiError::ShuttingDown | ApiError::TooManyWatchStreams(_)) {
                            metrics::error("kv_connect");
                            tracing::error!(error = %e, endpoint = ep, "KV Connect request failed");
                        } else {
                            tracing::debug!(error = %e, endpoint = ep, "KV Connect request refused");
                        }
                        e.into_response()
                    }
                };
                METRICS
                    .requests
                    .with_label_values(&[ep, response.status().as_str()])
                    .inc();
                METRICS
                    .request_seconds
                    .with_label_values(&[ep])
                    .observe(started.elapsed().as_secs_f64());
                response
            },
        )
        // Only requests warp cannot parse get here (e.g. a header that is
        // not text).
        .recover(|r: warp::Rejection| async move {
            Ok::<_, Infallible>(ApiError::BadRequest(format!("{r:?}")).into_response())
        })
        .unify()
}

/// Serves KV Connect on `listener` (HTTP/1.1 and h2c; with TLS, HTTP/2
/// and HTTP/1.1 by ALPN) until `shutdown` resolves; then ends watch
/// streams and lets in-flight requests finish (for at most
/// [`SHUTDOWN_GRACE`]).
pub async fn serve(
    kv: Arc<KvConnect>,
    listener: impl Into<Listener>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) {
    let listener = listener.into();
    let scheme = listener.scheme();
    match listener.local_addr() {
        Ok(addr) => tracing::info!(%addr, scheme, "KV Connect listening"),
        Err(_) => tracing::info!(scheme, "KV Connect listening"),
    }
    let closer = kv.clone();
    let limits = kv.limits.clone();
    let service = hyper_util::service::TowerToHyperService::new(warp::service(routes(kv)));
    listener::serve("kv_connect", service, listener, limits, async move {
        shutdown.await;
        closer.close();
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn database_id_prefers_the_deploy_uuid() {
        let url = SourceUrl::parse("s3://b/backups/3f1c2a7e-0000-4000-8000-000000000001/").unwrap();
        assert_eq!(
            database_id(&url).to_string(),
            "3f1c2a7e-0000-4000-8000-000000000001"
        );
        let a = database_id(&SourceUrl::parse("s3://b/some/prefix/").unwrap());
        let b = database_id(&SourceUrl::parse("s3://b/some/prefix").unwrap());
        let c = database_id(&SourceUrl::parse("gs://b/some/prefix/").unwrap());
        assert_eq!(a, b, "the same source gives the same id");
        assert_ne!(a, c);
    }

    #[test]
    fn errors_map_to_statuses() {
        assert_eq!(ApiError::Unauthorized.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(ApiError::ReadOnly.status(), StatusCode::BAD_REQUEST);
        assert!(ApiError::ReadOnly.to_string().contains("read-only"));
        assert_eq!(ApiError::Loading.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(ApiError::NotFound.status(), StatusCode::NOT_FOUND);
        assert_eq!(
            ApiError::BodyTimeout(30).status(),
            StatusCode::REQUEST_TIMEOUT
        );
        let full = ApiError::TooManyWatchStreams(1000);
        assert_eq!(full.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert!(full.to_string().contains("1000"));
    }
}

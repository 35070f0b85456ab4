//! The HTTP admin API: point-in-time recovery (list points, show the
//! position, check out a point) on its own listener and its own bearer token.
//!
//! It is a separate listener from KV Connect so that it can stay on
//! 127.0.0.1 (the default) while data clients reach the replica from
//! elsewhere, and a separate token so that readers cannot move the state.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::json;
use warp::http::{Method, StatusCode};
use warp::reply::Response;
use warp::{Filter, Reply};

use crate::format::Versionstamp;
use crate::metrics::lag_seconds;
use crate::store::pitr::{self, CheckoutError, CheckoutTarget, HistoryView, Point};
use crate::store::{self, StoreError};
use crate::sync::Syncer;

/// Admin requests are small JSON documents; anything bigger is a mistake
/// or an attack.
pub const MAX_BODY_BYTES: u64 = 4096;
/// Default and largest page of `GET /pitr/points`.
pub const DEFAULT_POINTS_PAGE: usize = 100;
pub const MAX_POINTS_PAGE: usize = 10_000;
pub use crate::auth::Tokens;
use crate::server::Limits;

/// Errors at the admin API boundary, each with its HTTP status.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("missing or wrong admin token (send Authorization: Bearer <admin token>)")]
    Unauthorized,
    #[error("{0}")]
    BadRequest(String),
    #[error("no such endpoint: {0}")]
    NotFound(String),
    #[error("method {0} is not allowed here")]
    MethodNotAllowed(Method),
    #[error(transparent)]
    Checkout(#[from] CheckoutError),
    #[error("the initial snapshot is not complete yet")]
    NotReady,
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("internal error: {0}")]
    Internal(String),
}

impl AdminError {
    fn status(&self) -> StatusCode {
        match self {
            AdminError::Unauthorized => StatusCode::UNAUTHORIZED,
            AdminError::BadRequest(_) => StatusCode::BAD_REQUEST,
            AdminError::NotFound(_) => StatusCode::NOT_FOUND,
            AdminError::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            AdminError::Checkout(CheckoutError::InitialIncomplete) | AdminError::NotReady => {
                StatusCode::CONFLICT
            }
            AdminError::Checkout(
                CheckoutError::NotAPoint { .. }
                | CheckoutError::TooEarly { .. }
                | CheckoutError::AfterNewest { .. }
                | CheckoutError::NoPoints,
            ) => StatusCode::NOT_FOUND,
            AdminError::Checkout(CheckoutError::Store(_))
            | AdminError::Store(_)
            | AdminError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn into_response(self) -> Response {
        let status = self.status();
        let mut r = warp::reply::with_status(
            warp::reply::json(&json!({"error": self.to_string()})),
            status,
        )
        .into_response();
        if status == StatusCode::UNAUTHORIZED {
            r.headers_mut().insert(
                "www-authenticate",
                warp::http::HeaderValue::from_static("Bearer"),
            );
        }
        r
    }
}

/// What the admin handlers need.
pub struct AdminContext {
    pub syncer: Arc<Syncer>,
    /// Admin tokens; empty = the PITR endpoints are disabled (health and
    /// metrics stay available).
    pub tokens: Arc<Tokens>,
    /// The replica file, for its size in `/metrics`.
    db: std::path::PathBuf,
    /// A read-only connection for queries, so listing never waits on the
    /// sync engine's write transactions.
    reader: Mutex<rusqlite::Connection>,
}

impl AdminContext {
    pub fn new(
        syncer: Arc<Syncer>,
        tokens: Arc<Tokens>,
        db: &std::path::Path,
    ) -> Result<Arc<Self>, StoreError> {
        let reader = store::open_read_only(db)?;
        Ok(Arc::new(AdminContext {
            syncer,
            tokens,
            db: db.to_path_buf(),
            reader: Mutex::new(reader),
        }))
    }

    /// Runs a read-only query on the admin's connection, off the runtime.
    pub(crate) async fn read<T: Send + 'static>(
        self: &Arc<Self>,
        f: impl FnOnce(&HistoryView<'_>) -> Result<T, AdminError> + Send + 'static,
    ) -> Result<T, AdminError> {
        let me = self.clone();
        tokio::task::spawn_blocking(move || {
            let conn = me.reader.lock().expect("reader lock");
            let state = store::read_state(&conn)?;
            f(&HistoryView::new(&conn, &state))
        })
        .await
        .map_err(|e| AdminError::Internal(e.to_string()))?
    }
}

pub(crate) fn point_json(p: &Point) -> serde_json::Value {
    json!({"versionstamp": p.versionstamp.to_string(), "time": p.time_rfc3339(), "timestamp_ms": p.ts_ms})
}

fn parse_time(s: &str, what: &str) -> Result<DateTime<Utc>, AdminError> {
    pitr::parse_time(s)
        .map_err(|e| AdminError::BadRequest(format!("{what}: {s:?} is not an RFC 3339 time ({e})")))
}

fn parse_stamp(s: &str, what: &str) -> Result<Versionstamp, AdminError> {
    pitr::parse_versionstamp(s).map_err(|e| AdminError::BadRequest(format!("{what}: {s:?}: {e}")))
}

/// A GET request's parameters as `T` (which denies unknown fields); the
/// message names the parameters `known`.
pub(crate) fn query_params<'q, T: Deserialize<'q>>(raw: &'q str, known: &str) -> Result<T, String> {
    serde_urlencoded::from_str(raw).map_err(|e| format!("query: {e} (known: {known})"))
}

/// A count parameter of the admin API (`limit`, `buckets`, `count`): a
/// whole number from 1 to `max`, `default` when absent; the message names
/// the parameter and the bounds. Read from text, so that a bad value gets
/// this message rather than serde's ("invalid digit").
pub(crate) fn whole_number(
    raw: Option<&str>,
    what: &str,
    max: usize,
    default: usize,
) -> Result<usize, String> {
    match raw {
        None => Ok(default),
        Some(raw) => match raw.parse::<usize>() {
            Ok(n) if (1..=max).contains(&n) => Ok(n),
            _ => Err(format!(
                "{what}={raw:?}: write a whole number from 1 to {max} (default {default})"
            )),
        },
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PointsQuery {
    start: Option<String>,
    end: Option<String>,
    /// Text, so that a bad value gets this API's message rather than
    /// serde's ("invalid digit").
    limit: Option<String>,
    before: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CheckoutBody {
    versionstamp: Option<String>,
    timestamp: Option<String>,
    latest: Option<bool>,
}

impl CheckoutBody {
    fn target(self) -> Result<CheckoutTarget, AdminError> {
        match (self.versionstamp, self.timestamp, self.latest) {
            (Some(v), None, None) => Ok(CheckoutTarget::Versionstamp(parse_stamp(&v, "versionstamp")?)),
            (None, Some(t), None) => Ok(CheckoutTarget::Timestamp(parse_time(&t, "timestamp")?)),
            (None, None, Some(true)) => Ok(CheckoutTarget::Latest),
            _ => Err(AdminError::BadRequest(
                "send exactly one of {\"versionstamp\":\"<20 hex>\"}, {\"timestamp\":\"<RFC 3339>\"} or {\"latest\":true}"
                    .into(),
            )),
        }
    }
}

async fn points(ctx: &Arc<AdminContext>, query: &str) -> Result<Response, AdminError> {
    let q: PointsQuery =
        query_params(query, "start, end, limit, before").map_err(AdminError::BadRequest)?;
    let start = q
        .start
        .as_deref()
        .map(|s| parse_time(s, "start"))
        .transpose()?;
    let end = q.end.as_deref().map(|s| parse_time(s, "end")).transpose()?;
    let before = q
        .before
        .as_deref()
        .map(|s| parse_stamp(s, "before"))
        .transpose()?;
    let limit = whole_number(
        q.limit.as_deref(),
        "limit",
        MAX_POINTS_PAGE,
        DEFAULT_POINTS_PAGE,
    )
    .map_err(AdminError::BadRequest)?;
    // Like /pitr/current: no points to list until the initial snapshot is
    // in, rather than an empty list that reads as "no history".
    if !ctx.syncer.state().initial_complete() {
        return Err(AdminError::NotReady);
    }
    let page = ctx
        .read(move |h| {
            let page = h.points(
                start.map(|t| t.timestamp_millis()),
                end.map(|t| t.timestamp_millis()),
                before,
                limit,
            )?;
            let mut out = Vec::with_capacity(page.len());
            for p in page {
                let n = h.points_at(p.ts_ms)?;
                out.push((p, n));
            }
            Ok(out)
        })
        .await?;
    let next = (page.len() == limit).then(|| page.last().map(|p| p.0.versionstamp.to_string()));
    let points: Vec<_> = page
        .iter()
        .map(|(p, n)| {
            let mut j = point_json(p);
            j["points_at_time"] = json!(n);
            j
        })
        .collect();
    Ok(warp::reply::json(&json!({
        "points": points,
        "next_before": next.flatten(),
    }))
    .into_response())
}

async fn current(ctx: &Arc<AdminContext>) -> Result<Response, AdminError> {
    let pos = ctx
        .read(|h| Ok(h.position()?))
        .await?
        .ok_or(AdminError::NotReady)?;
    let visible_time = pos.visible_ts_ms.map(|ms| {
        Point {
            versionstamp: pos.visible,
            ts_ms: ms,
        }
        .time_rfc3339()
    });
    let now_ms = Utc::now().timestamp_millis();
    Ok(warp::reply::json(&json!({
        "versionstamp": pos.visible.to_string(),
        "time": visible_time,
        "mode": if pos.pinned { "pinned" } else { "following" },
        "initial_point": pos.initial_point.to_string(),
        "latest": point_json(&pos.latest),
        "points_behind": pos.points_behind,
        "points_total": pos.points_total,
        // How far the visible state is behind the newest fetched commit.
        "behind_latest_seconds": pos.visible_ts_ms.map(|v| lag_seconds(v, pos.latest.ts_ms)),
        // Age of the newest fetched commit: the replication lag when the
        // source database is busy.
        "sync_lag_seconds": lag_seconds(pos.latest.ts_ms, now_ms),
        // The keys this replica keeps: null (every key) or
        // {"include": [key…], "exclude": [key…]}.
        "filter": ctx.syncer.state().filter.to_json(),
    }))
    .into_response())
}

async fn checkout(ctx: &Arc<AdminContext>, body: &Bytes) -> Result<Response, AdminError> {
    let b: CheckoutBody = serde_json::from_slice(body)
        .map_err(|e| AdminError::BadRequest(format!("body is not the expected JSON: {e}")))?;
    let out = crate::checkout::checkout(&ctx.syncer, b.target()?).await?;
    tracing::info!(
        from = %out.from,
        to = %out.to.versionstamp,
        pinned = out.pinned,
        "checkout through the admin API"
    );
    Ok(warp::reply::json(&json!({
        "versionstamp": out.to.versionstamp.to_string(),
        "time": out.to.time_rfc3339(),
        "mode": if out.pinned { "pinned" } else { "following" },
        "previous": out.from.to_string(),
        "redone": out.redone,
        "undone": out.undone,
    }))
    .into_response())
}

/// Readiness, as [`crate::health::Health::readiness`] judges it. Anyone
/// gets the status; the `detail` (which can quote the last sync error,
/// with the bucket URL or an S3 access key id) needs the admin token.
fn readyz(ctx: &Arc<AdminContext>, authorized: bool) -> Response {
    let readiness = ctx.syncer.health().readiness(
        ctx.syncer.state().initial_complete(),
        ctx.syncer.poll_interval(),
    );
    let (mut body, status) = match &readiness {
        Ok(()) => (json!({"ready": true, "reason": "ok"}), StatusCode::OK),
        Err(not) => (
            json!({"ready": false, "reason": not.status}),
            StatusCode::SERVICE_UNAVAILABLE,
        ),
    };
    if let (true, Err(not)) = (authorized, &readiness) {
        body["detail"] = json!(not.detail);
    }
    warp::reply::with_status(warp::reply::json(&body), status).into_response()
}

/// `GET /status`: what the console's status panel shows, in one answer:
/// readiness with its detail, the sync engine's last poll and error, the
/// lag, and the counters a rate is computed from (the page divides two
/// readings by the time between them).
fn status(ctx: &Arc<AdminContext>) -> Response {
    let state = ctx.syncer.state();
    let health = ctx.syncer.health();
    let readiness = health.readiness(state.initial_complete(), ctx.syncer.poll_interval());
    let m = &crate::metrics::METRICS;
    let (ready, reason, detail) = match &readiness {
        Ok(()) => (true, "ok", None),
        Err(not) => (false, not.status, Some(not.detail.clone())),
    };
    warp::reply::json(&json!({
        "now_ms": Utc::now().timestamp_millis(),
        "ready": ready,
        "reason": reason,
        "detail": detail,
        "initial_complete": state.initial_complete(),
        "snapshot_ranges": state.snapshot_ranges.map(|(loaded, total)| json!({"loaded": loaded, "total": total})),
        "mode": state.visible().map(|_| if state.pinned { "pinned" } else { "following" }),
        // What readers see and how new the newest fetched commit is: a
        // poller (the console) refetches the costlier views only when one
        // of these moves.
        "visible": state.visible().map(|v| v.to_string()),
        "latest_commit_ms": Some(m.latest_commit_ms.get()).filter(|ms| *ms > 0),
        "source": state.source,
        "last_successful_poll": health.last_successful_round().map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)),
        "last_error": health.last_error(),
        "poll_interval_seconds": ctx.syncer.poll_interval().as_secs_f64(),
        "sync_lag_seconds": m.lag_seconds(),
        "objects_behind": m.objects_behind.get(),
        "counters": {
            "objects_applied": crate::metrics::total(&m.objects_applied),
            "mutations_applied": m.mutations_applied.get(),
            "bytes_fetched": m.bytes_fetched.get(),
            "poll_rounds": m.poll_rounds.get(),
            "errors": crate::metrics::total(&m.errors),
            "checkouts": m.checkouts.get(),
        },
    }))
    .into_response()
}

fn metrics(ctx: &Arc<AdminContext>) -> Response {
    let size = ["", "-wal"]
        .iter()
        .filter_map(|suffix| {
            let mut p = ctx.db.as_os_str().to_owned();
            p.push(suffix);
            std::fs::metadata(p).ok().map(|m| m.len())
        })
        .reduce(|a, b| a + b);
    let mut r = crate::metrics::METRICS.render(size).into_response();
    r.headers_mut().insert(
        "content-type",
        warp::http::HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    r
}

async fn dispatch(
    ctx: Arc<AdminContext>,
    method: Method,
    path: warp::path::FullPath,
    query: String,
    auth: Option<String>,
    body: Bytes,
) -> Result<Response, AdminError> {
    let path = path.as_str();
    let authorized = !ctx.tokens.is_empty() && ctx.tokens.check(auth.as_deref()).is_some();
    // Health and metrics need no token; an unknown path is 404 for anyone.
    match (path, &method) {
        ("/healthz", &Method::GET) => {
            return Ok(warp::reply::json(&json!({"status": "alive"})).into_response())
        }
        ("/readyz", &Method::GET) => return Ok(readyz(&ctx, authorized)),
        ("/metrics", &Method::GET) => return Ok(metrics(&ctx)),
        ("/healthz" | "/readyz" | "/metrics", m) => {
            return Err(AdminError::MethodNotAllowed(m.clone()))
        }
        (p, m) if crate::console::owns(p) => {
            if ctx.tokens.is_empty() {
                return Err(AdminError::NotFound(format!(
                    "{p} (the console needs the admin API: give it a token file with --admin-token-file, KVREPLICA_ADMIN_TOKEN_FILE or admin.token_file)"
                )));
            }
            return Ok(crate::console::respond(p, m));
        }
        (p, _) if !PITR_PATHS.contains(&p) && !INSPECT_PATHS.contains(&p) && p != RESTORE_PATH => {
            return Err(AdminError::NotFound(p.to_string()))
        }
        _ => {}
    }
    if ctx.tokens.is_empty() {
        return Err(AdminError::NotFound(format!(
            "{} (the PITR admin API is disabled: give it a token file with --admin-token-file, KVREPLICA_ADMIN_TOKEN_FILE or admin.token_file)",
            path
        )));
    }
    if !authorized {
        return Err(AdminError::Unauthorized);
    }
    match (path, &method) {
        ("/pitr/points", &Method::GET) => points(&ctx, &query).await,
        ("/pitr/current", &Method::GET) => current(&ctx).await,
        ("/pitr/timeline", &Method::GET) => crate::timeline::timeline_endpoint(&ctx, &query).await,
        ("/pitr/commits", &Method::GET) => crate::timeline::commits_endpoint(&ctx, &query).await,
        ("/status", &Method::GET) => Ok(status(&ctx)),
        ("/pitr/checkout", &Method::POST) => checkout(&ctx, &body).await,
        ("/pitr/diff", &Method::GET) => crate::inspect::diff_endpoint(ctx.db.clone(), &query).await,
        ("/kv", &Method::GET) => crate::inspect::kv_endpoint(ctx.db.clone(), &query).await,
        ("/export", &Method::GET) => crate::export::http::respond(&ctx.db, &query).await,
        (RESTORE_PATH, &Method::POST) => crate::restore::http::respond(ctx.db.clone(), &body).await,
        (_, m) => Err(AdminError::MethodNotAllowed(m.clone())),
    }
}

/// The endpoints behind the admin token.
const PITR_PATHS: [&str; 7] = [
    "/pitr/points",
    "/pitr/current",
    "/pitr/checkout",
    "/pitr/timeline",
    "/pitr/commits",
    "/export",
    "/status",
];
/// Writes the replica's state at a point into the primary (`crate::restore`),
/// behind the admin token.
const RESTORE_PATH: &str = "/restore";
/// The read-only views behind the admin token (`crate::inspect`).
const INSPECT_PATHS: [&str; 2] = ["/pitr/diff", "/kv"];

/// The admin API as a warp filter (every request answers; errors are JSON).
pub fn routes(
    ctx: Arc<AdminContext>,
) -> impl Filter<Extract = (Response,), Error = Infallible> + Clone {
    let ctx = warp::any().map(move || ctx.clone());
    let query = warp::query::raw().or(warp::any().map(String::new)).unify();
    // A small body; or none at all (GET, or no Content-Length); else too big.
    let body = warp::body::content_length_limit(MAX_BODY_BYTES)
        .and(warp::body::bytes())
        .map(Some)
        .or(warp::header::optional::<u64>("content-length").and_then(
            |len: Option<u64>| async move {
                match len {
                    None => Ok(Some(Bytes::new())),
                    Some(_) => Err(warp::reject()),
                }
            },
        ))
        .unify()
        .or(warp::any().map(|| None))
        .unify();
    ctx.and(warp::method())
        .and(warp::path::full())
        .and(query)
        .and(warp::header::optional::<String>("authorization"))
        .and(body)
        .then(
            |ctx, method, path, query, auth, body: Option<Bytes>| async move {
                let Some(body) = body else {
                    return AdminError::BadRequest(format!(
                        "request body too large (at most {MAX_BODY_BYTES} bytes)"
                    ))
                    .into_response();
                };
                match dispatch(ctx, method, path, query, auth, body).await {
                    Ok(r) => r,
                    Err(e) => e.into_response(),
                }
            },
        )
        // Only malformed requests get here (e.g. a header that is not text).
        .recover(|r: warp::Rejection| async move {
            Ok::<_, Infallible>(
                AdminError::BadRequest(format!("malformed request: {r:?}")).into_response(),
            )
        })
        .unify()
}

/// Serves the admin API on `listener` until `shutdown` resolves, with
/// the admin listener's [`limits`].
pub async fn serve(
    ctx: Arc<AdminContext>,
    listener: impl Into<crate::server::Listener>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) {
    serve_with(ctx, listener, limits(), shutdown).await
}

/// [`serve`] with other limits.
pub async fn serve_with(
    ctx: Arc<AdminContext>,
    listener: impl Into<crate::server::Listener>,
    limits: Limits,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) {
    let listener = listener.into();
    let scheme = listener.scheme();
    let addr: Option<SocketAddr> = listener.local_addr().ok();
    match addr {
        Some(addr) => tracing::info!(%addr, scheme, "admin API listening"),
        None => tracing::info!(scheme, "admin API listening"),
    }
    let service = hyper_util::service::TowerToHyperService::new(warp::service(routes(ctx)));
    crate::server::listener::serve("admin", service, listener, limits, shutdown).await;
}

/// Open connections to the admin listener: operators, health checks and
/// a metrics scraper need a handful; the rest of [`Limits`] as for KV
/// Connect (the admin API has no streams).
pub const MAX_CONNECTIONS: usize = 64;

/// What clients of the admin listener may hold.
pub fn limits() -> Limits {
    Limits {
        max_connections: MAX_CONNECTIONS,
        ..Limits::default()
    }
}

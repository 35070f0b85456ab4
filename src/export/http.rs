//! `GET /export` on the admin listener: the same export as the command,
//! streamed as a chunked body.
//!
//! The export runs on a thread of its own with its own read-only
//! connection and one read transaction (never the sync engine's store
//! lock). Its point is resolved before the answer starts, so a bad request
//! or point is a JSON error with its status (400, 404, 409: the
//! [`AdminError`] mapping) before the first byte. Then entries flow through
//! a small bounded channel: memory stays flat, and a client that goes away
//! closes the channel, which ends the thread at its next chunk. A failure
//! after the first byte aborts the body, so a client never takes a cut-off
//! export for a whole one. At most [`MAX_EXPORTS`] run at once; more are
//! answered 503 with `Retry-After`.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};
use warp::http::HeaderValue;
use warp::reply::Response;
use warp::Reply;

use super::{Export, ExportError, Format, Request, Selection};
use crate::admin::AdminError;
use crate::store;
use crate::store::pitr::CheckoutTarget;

/// Bytes per chunk sent to the client.
const CHUNK: usize = 64 * 1024;
/// Chunks written ahead of the client: the export's memory bound.
const CHUNKS_AHEAD: usize = 4;
/// The header naming the commit exported.
pub const POINT_HEADER: &str = "x-kvreplica-versionstamp";
/// Exports running at once. Each holds a thread and a read transaction
/// (which keeps SQLite from checkpointing past it); the admin listener's
/// connections times HTTP/2's streams would allow thousands.
pub const MAX_EXPORTS: usize = 8;

static RUNNING: AtomicUsize = AtomicUsize::new(0);

/// One of the [`MAX_EXPORTS`] places, given back when the export's
/// thread ends.
struct Place;

impl Place {
    fn take() -> Option<Place> {
        RUNNING
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < MAX_EXPORTS).then_some(n + 1)
            })
            .ok()
            .map(|_| Place)
    }
}

impl Drop for Place {
    fn drop(&mut self) {
        RUNNING.fetch_sub(1, Ordering::AcqRel);
    }
}

/// 503 with `Retry-After`, in the admin API's error form.
fn busy() -> Response {
    let body = serde_json::json!({
        "error": format!("{MAX_EXPORTS} exports are running already; retry when one ends")
    });
    let mut r = warp::reply::with_status(
        warp::reply::json(&body),
        warp::http::StatusCode::SERVICE_UNAVAILABLE,
    )
    .into_response();
    r.headers_mut()
        .insert("retry-after", HeaderValue::from_static("5"));
    r
}

type Chunk = Result<Bytes, std::io::Error>;

/// The request's query: `at`, `prefix` (repeatable), `start`, `end`,
/// `format`, `include_expired`.
fn parse_query(query: &str) -> Result<Request, AdminError> {
    let bad = AdminError::BadRequest;
    let mut selection = Selection::default();
    let (mut at, mut format, mut include_expired) = (None, Format::Jsonl, false);
    for (name, value) in url::form_urlencoded::parse(query.as_bytes()) {
        let value = value.into_owned();
        match &*name {
            "at" => {
                at = Some(
                    value
                        .parse::<CheckoutTarget>()
                        .map_err(|e| bad(format!("at: {e}")))?,
                )
            }
            "prefix" => selection.prefixes.push(value),
            "start" => selection.start = Some(value),
            "end" => selection.end = Some(value),
            "format" => {
                format = match &*value {
                    "jsonl" => Format::Jsonl,
                    "csv" => Format::Csv,
                    v => return Err(bad(format!("format={v:?}: write jsonl or csv"))),
                }
            }
            "include_expired" => {
                include_expired = match &*value {
                    "true" | "1" => true,
                    "false" | "0" => false,
                    v => return Err(bad(format!("include_expired={v:?}: write true or false"))),
                }
            }
            n => {
                return Err(bad(format!(
                    "unknown query parameter {n:?} (known: at, prefix, start, end, format, include_expired)"
                )))
            }
        }
    }
    let ranges = selection.ranges().map_err(admin_error)?;
    Ok(Request {
        at,
        ranges,
        include_expired,
        format,
    })
}

fn admin_error(e: ExportError) -> AdminError {
    match e {
        ExportError::InitialIncomplete => AdminError::NotReady,
        ExportError::Point(e) => AdminError::Checkout(e),
        e @ (ExportError::Key { .. } | ExportError::EmptyRange { .. }) => {
            AdminError::BadRequest(e.to_string())
        }
        ExportError::Store(e) => AdminError::Store(e),
        ExportError::Write(e) => AdminError::Internal(e.to_string()),
    }
}

/// Answers `GET /export?…` for the replica at `db`.
pub(crate) async fn respond(db: &Path, query: &str) -> Result<Response, AdminError> {
    let request = parse_query(query)?;
    let format = request.format;
    let (started_tx, started) = oneshot::channel();
    let (chunks_tx, chunks) = mpsc::channel(CHUNKS_AHEAD);
    let Some(place) = Place::take() else {
        return Ok(busy());
    };
    let db = db.to_path_buf();
    std::thread::Builder::new()
        .name("export".into())
        .spawn(move || {
            let _place = place;
            run(db, request, started_tx, chunks_tx)
        })
        .map_err(|e| AdminError::Internal(format!("cannot start the export: {e}")))?;
    let point = started
        .await
        .map_err(|_| AdminError::Internal("the export ended before it started".into()))?
        .map_err(admin_error)?;
    let mut r = warp::reply::stream(Chunks(chunks)).into_response();
    let headers = r.headers_mut();
    headers.insert(
        "content-type",
        HeaderValue::from_static(format.content_type()),
    );
    headers.insert(
        POINT_HEADER,
        HeaderValue::from_str(&point.to_string()).expect("hex is a header value"),
    );
    Ok(r)
}

/// The export thread: resolves the point, says so (or why not), then
/// writes every entry into the channel.
fn run(
    db: PathBuf,
    request: Request,
    started: oneshot::Sender<Result<crate::format::Versionstamp, ExportError>>,
    chunks: mpsc::Sender<Chunk>,
) {
    let conn = match store::open_read_only(&db) {
        Ok(c) => c,
        Err(e) => return drop(started.send(Err(e.into()))),
    };
    let tx = match conn.unchecked_transaction() {
        Ok(t) => t,
        Err(e) => return drop(started.send(Err(e.into()))),
    };
    let export = match Export::begin(&tx, request) {
        Ok(x) => x,
        Err(e) => return drop(started.send(Err(e))),
    };
    if started.send(Ok(export.point())).is_err() {
        return;
    }
    let mut out = ChunkWriter {
        buf: Vec::with_capacity(CHUNK),
        chunks,
    };
    let point = export.point();
    match export.write(&mut out, &mut |_| {}) {
        Ok(counts) => tracing::info!(
            %point,
            entries = counts.entries,
            bytes = counts.bytes,
            "export sent through the admin API"
        ),
        Err(ExportError::Write(_)) => {
            tracing::info!(%point, "export stopped: the client went away")
        }
        Err(e) => {
            tracing::warn!(error = %e, "export failed after it started; aborting the response");
            let _ = out
                .chunks
                .blocking_send(Err(std::io::Error::other(e.to_string())));
        }
    }
}

/// Collects output into chunks and hands each to the response; fails
/// (`BrokenPipe`) once the response is gone.
struct ChunkWriter {
    buf: Vec<u8>,
    chunks: mpsc::Sender<Chunk>,
}

impl ChunkWriter {
    fn send(&mut self) -> std::io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = Bytes::from(std::mem::replace(&mut self.buf, Vec::with_capacity(CHUNK)));
        self.chunks
            .blocking_send(Ok(chunk))
            .map_err(|_| std::io::ErrorKind::BrokenPipe.into())
    }
}

impl Write for ChunkWriter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(data);
        if self.buf.len() >= CHUNK {
            self.send()?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.send()
    }
}

/// The channel's chunks as the response body.
struct Chunks(mpsc::Receiver<Chunk>);

impl futures::Stream for Chunks {
    type Item = Chunk;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Chunk>> {
        self.0.poll_recv(cx)
    }
}

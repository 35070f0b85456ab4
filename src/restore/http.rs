//! `POST /restore` on the admin listener (admin token): the restore of
//! `kvreplica restore`, for operators working over HTTP.
//!
//! The body names the primary (`to`) and its token (`token`, used only in
//! the requests to the primary: never logged nor echoed), the point
//! (`at`), the keys (`prefix`, `key`: JSON keys) and whether to write
//! (`apply`, default false: a dry run). The replica is read on a blocking
//! thread with a read-only connection of its own (never the sync engine's
//! store lock).

use std::path::PathBuf;

use bytes::Bytes;
use serde::Deserialize;
use serde_json::json;
use warp::http::StatusCode;
use warp::reply::Response;
use warp::Reply;

use super::client::ClientError;
use super::{ApplyOptions, PointState, RestoreError, Selection, MAX_BATCH};
use crate::admin::AdminError;
use crate::store::pitr::CheckoutTarget;

/// Keys of the plan listed in the answer by default.
const DEFAULT_SHOW: usize = 100;

/// The body. No `Debug`: it holds the primary's token.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Body {
    to: String,
    token: String,
    at: String,
    #[serde(default)]
    prefix: Vec<String>,
    #[serde(default)]
    key: Vec<String>,
    #[serde(default)]
    apply: bool,
    #[serde(default)]
    retry_conflicts: bool,
    batch_size: Option<usize>,
    show: Option<usize>,
}

/// Answers `POST /restore`: `{"point", "plan": {"set", "delete",
/// "unchanged"}, "keys": [step, …], "applied": null | {"written",
/// "already", "conflicts": [key, …]}}`. A failure of the primary (refused,
/// read-only, unreachable) is a 502 naming it; a bad body, key or point
/// a 400 (404/409 for points, as a checkout answers).
pub async fn respond(db: PathBuf, body: &Bytes) -> Result<Response, AdminError> {
    let body: Body = serde_json::from_slice(body)
        .map_err(|e| AdminError::BadRequest(format!("the body: {e}")))?;
    let at: CheckoutTarget = body
        .at
        .parse()
        .map_err(|e: String| AdminError::BadRequest(format!("at: {e}")))?;
    let batch = body.batch_size.unwrap_or(MAX_BATCH);
    if !(1..=MAX_BATCH).contains(&batch) {
        return Err(AdminError::BadRequest(format!(
            "batch_size: {batch} is not 1 to {MAX_BATCH}"
        )));
    }
    match run(db, &body, at, batch).await {
        Ok(answer) => Ok(warp::reply::json(&answer).into_response()),
        Err(RestoreError::BadRequest(m)) => Err(AdminError::BadRequest(m)),
        Err(RestoreError::Checkout(e)) => Err(AdminError::Checkout(e)),
        Err(RestoreError::Store(e)) => Err(AdminError::Store(e)),
        Err(RestoreError::Client(e)) => Ok(primary_failed(&e)),
        Err(e @ RestoreError::Conflicts(_)) => Err(AdminError::Internal(e.to_string())),
    }
}

async fn run(
    db: PathBuf,
    body: &Body,
    at: CheckoutTarget,
    batch: usize,
) -> Result<serde_json::Value, RestoreError> {
    let selection = Selection {
        prefixes: body.prefix.clone(),
        keys: body.key.clone(),
    };
    let ranges = selection.ranges()?;
    let point = {
        let ranges = ranges.clone();
        tokio::task::spawn_blocking(move || {
            let conn = crate::store::open_read_only(&db)?;
            PointState::read(&conn, at, &ranges)
        })
        .await
        .map_err(|e| RestoreError::BadRequest(format!("the read stopped: {e}")))??
    };
    let mut client = super::connect(&body.to, &body.token).await?;
    let plan = super::plan(&mut client, &point, &ranges).await?;
    let keys: Vec<serde_json::Value> = plan
        .steps
        .iter()
        .take(body.show.unwrap_or(DEFAULT_SHOW))
        .map(|s| serde_json::from_str(&s.json()).expect("a step's JSON"))
        .collect();
    let applied = if body.apply {
        let options = ApplyOptions { batch };
        let a = super::apply_all(
            &mut client,
            &point,
            &plan,
            options,
            body.retry_conflicts,
            &mut |_| {},
        )
        .await?;
        let conflicts: Vec<serde_json::Value> = a
            .conflicts
            .iter()
            .map(|k| serde_json::from_str(&crate::decode::key_json(k)).expect("a key's JSON"))
            .collect();
        json!({"written": a.written, "already": a.already, "conflicts": conflicts})
    } else {
        serde_json::Value::Null
    };
    Ok(json!({
        "point": point.point.to_string(),
        "plan": {
            "set": plan.count(super::Action::Set),
            "delete": plan.count(super::Action::Delete),
            "unchanged": plan.unchanged,
        },
        "keys": keys,
        "applied": applied,
    }))
}

/// 502: the primary refused or could not be reached (its message, never
/// the token).
fn primary_failed(e: &ClientError) -> Response {
    warp::reply::with_status(
        warp::reply::json(&json!({"error": format!("the primary: {e}")})),
        StatusCode::BAD_GATEWAY,
    )
    .into_response()
}

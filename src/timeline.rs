//! `GET /pitr/timeline` and `GET /pitr/commits`: the history at a glance,
//! for the operator console and for scripts. Commits per interval are
//! counted on the server, so a history of a million points travels as at
//! most [`MAX_BUCKETS`] numbers; the commits around a moment come with
//! their mutation counts and the point before each (what to diff against).

use std::sync::Arc;

use serde::Deserialize;
use serde_json::json;
use warp::reply::Response;
use warp::Reply;

use crate::admin::{point_json, query_params, whole_number, AdminContext, AdminError};
use crate::store::pitr;
use crate::store::timeline::{Anchor, MAX_BUCKETS};

/// Intervals of a timeline unless asked otherwise: about one per two
/// pixels of a laptop screen's plot.
pub const DEFAULT_BUCKETS: usize = 400;
/// Commits listed on each side of an anchor unless asked otherwise, and
/// at most.
pub const DEFAULT_AROUND: usize = 10;
pub const MAX_AROUND: usize = 100;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TimelineQuery {
    start: Option<String>,
    end: Option<String>,
    buckets: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CommitsQuery {
    around: Option<String>,
    count: Option<String>,
}

/// A time as the console sends it (epoch milliseconds) or as a person
/// types it (RFC 3339).
fn time_ms(raw: &str, what: &str) -> Result<i64, AdminError> {
    if let Ok(ms) = raw.trim().parse::<i64>() {
        return Ok(ms);
    }
    pitr::parse_time(raw)
        .map(|t| t.timestamp_millis())
        .map_err(|_| {
            AdminError::BadRequest(format!(
                "{what}={raw:?}: write an RFC 3339 time or epoch milliseconds"
            ))
        })
}

/// The visible point and the initial point, from the state the read
/// started with.
fn visible_and_initial(
    state: &crate::store::SyncState,
) -> Result<(crate::format::Versionstamp, crate::format::Versionstamp), AdminError> {
    state
        .visible()
        .zip(state.initial_point)
        .ok_or(AdminError::NotReady)
}

fn visible_json(vs: crate::format::Versionstamp, ts_ms: Option<i64>) -> serde_json::Value {
    json!({"versionstamp": vs.to_string(), "timestamp_ms": ts_ms})
}

/// `GET /pitr/timeline?start=&end=&buckets=`.
pub(crate) async fn timeline_endpoint(
    ctx: &Arc<AdminContext>,
    raw: &str,
) -> Result<Response, AdminError> {
    let q: TimelineQuery =
        query_params(raw, "start, end, buckets").map_err(AdminError::BadRequest)?;
    let start = q
        .start
        .as_deref()
        .map(|s| time_ms(s, "start"))
        .transpose()?;
    let end = q.end.as_deref().map(|s| time_ms(s, "end")).transpose()?;
    let buckets = whole_number(
        q.buckets.as_deref(),
        "buckets",
        MAX_BUCKETS,
        DEFAULT_BUCKETS,
    )
    .map_err(AdminError::BadRequest)?;
    if let (Some(s), Some(e)) = (start, end) {
        if e <= s {
            return Err(AdminError::BadRequest(format!(
                "end ({e}) must be after start ({s})"
            )));
        }
    }
    if !ctx.syncer.state().initial_complete() {
        return Err(AdminError::NotReady);
    }
    let body = ctx
        .read(move |h| {
            // The whole history unless asked: oldest point to newest
            // (inclusive, so `end` is one past it); nothing when empty.
            let (lo, hi) = h
                .time_span()?
                .map(|(lo, hi)| (lo, hi + 1))
                .unwrap_or((0, 0));
            let start = start.unwrap_or(lo);
            let end = end.unwrap_or(hi.max(start));
            let t = h.timeline(start, end, buckets)?;
            // Not `position()`: it counts every point, which costs more
            // than this whole answer on a long history.
            let (visible, initial) = visible_and_initial(h.state())?;
            let (oldest, newest) = h.edges()?;
            Ok(json!({
                "start_ms": t.start_ms,
                "end_ms": t.end_ms,
                "bucket_ms": t.bucket_ms,
                "counts": t.counts,
                "commits": t.commits,
                "oldest": oldest.as_ref().map(point_json),
                "newest": newest.as_ref().map(point_json),
                "visible": visible_json(visible, h.time_of(visible)?),
                "initial": visible_json(initial, h.time_of(initial)?),
            }))
        })
        .await?;
    Ok(warp::reply::json(&body).into_response())
}

/// `GET /pitr/commits?around=&count=`.
pub(crate) async fn commits_endpoint(
    ctx: &Arc<AdminContext>,
    raw: &str,
) -> Result<Response, AdminError> {
    let q: CommitsQuery = query_params(raw, "around, count").map_err(AdminError::BadRequest)?;
    let count = whole_number(q.count.as_deref(), "count", MAX_AROUND, DEFAULT_AROUND)
        .map_err(AdminError::BadRequest)?;
    let anchor = match q.around.as_deref().map(str::trim) {
        None => None,
        Some(a) if a.len() == 20 && a.bytes().all(|b| b.is_ascii_hexdigit()) => {
            Some(Anchor::Point(pitr::parse_versionstamp(a).map_err(|e| {
                AdminError::BadRequest(format!("around={a:?}: {e}"))
            })?))
        }
        Some(a) => Some(Anchor::Time(time_ms(a, "around")?)),
    };
    if !ctx.syncer.state().initial_complete() {
        return Err(AdminError::NotReady);
    }
    let body = ctx
        .read(move |h| {
            let (visible, _) = visible_and_initial(h.state())?;
            // Unless asked, around what readers see (the initial point
            // when no commit followed it: the oldest point then).
            let anchor = anchor.unwrap_or(match h.point(visible)? {
                Some(p) => Anchor::Point(p.versionstamp),
                None => Anchor::Time(i64::MIN),
            });
            let around = match h.commits_around(anchor, count)? {
                Some(a) => a,
                None => match anchor {
                    // Not a point: the checkout's words, with the nearest.
                    Anchor::Point(vs) => {
                        return Err(h
                            .resolve(pitr::CheckoutTarget::Versionstamp(vs))
                            .err()
                            .map(AdminError::Checkout)
                            .unwrap_or_else(|| AdminError::Internal("point vanished".into())))
                    }
                    Anchor::Time(_) => {
                        return Ok(json!({"anchor": null, "commits": [], "more_before": false, "more_after": false}))
                    }
                },
            };
            let newest = h.edges()?.1.map(|p| p.versionstamp);
            let commits: Vec<_> = around
                .commits
                .iter()
                .map(|c| {
                    let mut j = point_json(&c.point);
                    j["mutations"] = json!(c.mutations);
                    j["previous"] = json!(c.previous.map(|p| p.to_string()));
                    j["visible"] = json!(c.point.versionstamp == visible);
                    j["newest"] = json!(Some(c.point.versionstamp) == newest);
                    j
                })
                .collect();
            Ok(json!({
                "anchor": around.anchor.to_string(),
                "commits": commits,
                "more_before": around.more_before,
                "more_after": around.more_after,
            }))
        })
        .await?;
    Ok(warp::reply::json(&body).into_response())
}

//! `kvreplica pitr list|info|checkout|diff`: point-in-time recovery on the
//! replica file, offline.
//!
//! `list` and `info` only read, so they work beside a running `serve`;
//! `checkout` needs the writer lock and points at the admin API when a
//! server holds it.

use anyhow::{bail, Context};
use chrono::{DateTime, Utc};
use clap::{Args, Subcommand};

use crate::config::PitrDbArgs;
use crate::format::Versionstamp;
use crate::store::pitr::{self, CheckoutTarget, HistoryView, Point};
use crate::store::{self, Store, StoreError};

#[derive(Debug, Args)]
pub struct PitrArgs {
    /// `--db` and `--config`, from the settings table.
    #[command(flatten)]
    pub db: PitrDbArgs,
    #[command(subcommand)]
    pub command: PitrCommand,
}

#[derive(Debug, Subcommand)]
pub enum PitrCommand {
    /// List recoverable points, newest first: `<versionstamp>\t<time>`,
    /// and `\t<n> points at this time` when several share the time.
    List {
        /// Only points at or after this time (RFC 3339, e.g. 2026-11-23T10:15:00Z).
        #[arg(long, value_parser = parse_time)]
        start: Option<DateTime<Utc>>,
        /// Only points before this time (RFC 3339).
        #[arg(long, value_parser = parse_time)]
        end: Option<DateTime<Utc>>,
        /// At most this many points.
        #[arg(long)]
        limit: Option<usize>,
    },
    /// Show the visible point, the mode (following or pinned) and the newest
    /// point fetched.
    Info,
    /// Move the visible state to a point: a 20-hex versionstamp, an RFC 3339
    /// time (the newest point at or before it), or `latest` (and follow new
    /// commits again).
    Checkout {
        /// <versionstamp> | <RFC 3339 time> | latest
        target: String,
    },
    /// Show every key whose entry differs between two points (added,
    /// removed, changed), decoded, in key order, then the totals. Reads
    /// only: the visible state does not move.
    Diff(super::diff::DiffArgs),
}

fn parse_time(s: &str) -> Result<DateTime<Utc>, String> {
    pitr::parse_time(s)
        .map_err(|e| format!("{s:?} is not an RFC 3339 time ({e}); example: 2026-11-23T10:15:00Z"))
}

/// One line of `pitr list`, in the format `denokv pitr list` prints, with
/// a third column when `at_time` (the points sharing its time) is over 1:
/// a checkout by that time lands on the newest of them.
pub fn list_line(p: &Point, at_time: u64) -> String {
    match at_time {
        0 | 1 => format!("{}\t{}", p.versionstamp, p.time_rfc3339()),
        n => format!(
            "{}\t{}\t{n} points at this time",
            p.versionstamp,
            p.time_rfc3339()
        ),
    }
}

pub fn run(args: PitrArgs) -> anyhow::Result<()> {
    let path = super::existing_replica(&args.db)?;
    match args.command {
        PitrCommand::List { start, end, limit } => {
            let conn = store::open_read_only(&path)?;
            let state = store::read_state(&conn)?;
            let view = HistoryView::new(&conn, &state);
            let mut before = None;
            let mut left = limit.unwrap_or(usize::MAX);
            // Page through so a long history never sits in memory at once.
            while left > 0 {
                let page = view.points(
                    start.map(|t| t.timestamp_millis()),
                    end.map(|t| t.timestamp_millis()),
                    before,
                    left.min(10_000),
                )?;
                let mut text = String::new();
                for p in &page {
                    text += &list_line(p, view.points_at(p.ts_ms)?);
                    text.push('\n');
                }
                if !super::print_out(&text)? {
                    return Ok(());
                }
                left -= page.len();
                match page.last() {
                    Some(p) if page.len() == 10_000 => before = Some(p.versionstamp),
                    _ => break,
                }
            }
            Ok(())
        }
        PitrCommand::Info => {
            let conn = store::open_read_only(&path)?;
            let state = store::read_state(&conn)?;
            let view = HistoryView::new(&conn, &state);
            // `{"exclude":[…],"include":[…]}` (keys as JSON) or "none".
            let filter = format!("filter: {}\n", state.filter.describe());
            let Some(pos) = view.position()? else {
                super::print_out(&format!(
                    "source: {}\n{filter}initial snapshot: in progress (no visible state yet)\n",
                    state.source.unwrap_or_default()
                ))?;
                return Ok(());
            };
            let time = |ms: Option<i64>| {
                ms.map(|ms| {
                    Point {
                        versionstamp: Versionstamp::default(),
                        ts_ms: ms,
                    }
                    .time_rfc3339()
                })
                .unwrap_or_else(|| "unknown".into())
            };
            let keys: i64 = conn.query_row("select count(*) from kv", [], |r| r.get(0))?;
            let mode = if pos.pinned {
                "pinned (new commits are stored, not shown)"
            } else {
                "following the newest commit"
            };
            super::print_out(&format!(
                "source: {}\n{filter}current versionstamp: {}\ncurrent time: {}\nmode: {mode}\n\
                 latest versionstamp: {}\nlatest time: {}\npoints behind latest: {}\n\
                 initial point: {}\nrecoverable points: {}\nkeys: {keys}\n",
                state.source.unwrap_or_default(),
                pos.visible,
                time(pos.visible_ts_ms),
                pos.latest.versionstamp,
                pos.latest.time_rfc3339(),
                pos.points_behind,
                pos.initial_point,
                pos.points_total,
            ))?;
            Ok(())
        }
        PitrCommand::Diff(diff) => super::diff::run(&path, diff),
        PitrCommand::Checkout { target } => {
            let target: CheckoutTarget = target.parse().map_err(anyhow::Error::msg)?;
            let mut store = match Store::open(&path) {
                Ok(s) => s,
                Err(StoreError::Locked { .. }) => bail!(
                    "{} is held by a running kvreplica (serve or sync --follow). Check out through \
                     its admin API instead, e.g. (the header in a file keeps the token out of the process list)\n  \
                     (umask 077; printf 'Authorization: Bearer %s\\n' \"$(cat /etc/kvreplica/admin-token)\" > ~/.kvreplica-admin)\n  \
                     curl -X POST -H @$HOME/.kvreplica-admin -d '{{\"latest\":true}}' http://127.0.0.1:4513/pitr/checkout",
                    path.display()
                ),
                Err(e) => return Err(e).with_context(|| format!("opening {}", path.display())),
            };
            let out = store.checkout(target)?;
            // The checkout is committed: a closed pipe only loses this line.
            super::print_out(&format!(
                "checked out {} ({}); {}\n",
                out.to.versionstamp,
                out.to.time_rfc3339(),
                if out.pinned {
                    "pinned: sync keeps fetching but the visible state stays here until `pitr checkout latest`"
                } else {
                    "following new commits"
                }
            ))?;
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_target(s: &str) -> Result<CheckoutTarget, String> {
        s.parse()
    }

    #[test]
    fn parses_targets() {
        assert_eq!(parse_target("latest").unwrap(), CheckoutTarget::Latest);
        assert_eq!(
            parse_target("0000000200D419D20000").unwrap(),
            CheckoutTarget::Versionstamp("0000000200d419d20000".parse().unwrap())
        );
        assert!(matches!(
            parse_target("2026-11-23T10:15:00Z").unwrap(),
            CheckoutTarget::Timestamp(_)
        ));
        assert!(parse_target("yesterday").is_err());
        assert!(parse_target("0000000200d419d2000").is_err());
    }
}

//! `kvreplica export`: the state of a replica file at one point (the
//! visible state by default), decoded, one entry per line (JSON Lines or
//! CSV), in key order; the streaming itself is [`crate::export`].
//!
//! It only reads (like `pitr list`), so it runs beside a `serve` that
//! writes the file, and `--at` reads an earlier point from the history
//! without moving what the replica serves.

use std::io::{BufWriter, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use clap::Args;

use crate::config::PitrDbArgs;
use crate::export::{Counts, Export, ExportError, Format, Request, Selection};
use crate::store;
use crate::store::pitr::CheckoutTarget;

#[derive(Debug, Args)]
pub struct ExportArgs {
    /// `--db` and `--config`, from the settings table.
    #[command(flatten)]
    pub db: PitrDbArgs,
    /// The point to export: `latest` (the newest commit fetched, even when
    /// the replica is pinned earlier), a versionstamp (20 hex digits) or an
    /// RFC 3339 time, resolved as `pitr checkout` resolves it; the replica
    /// keeps serving what it serves. Default: the visible state.
    #[arg(long, value_name = "POINT|TIME|latest")]
    pub at: Option<CheckoutTarget>,
    /// Only keys under this key prefix (a JSON key such as `["users"]`);
    /// repeat for several (their union, in key order, each entry once).
    #[arg(long, value_name = "KEY")]
    pub prefix: Vec<String>,
    /// Only keys from this one on (a JSON key; inclusive). With `--prefix`:
    /// the keys under a prefix *and* in the range.
    #[arg(long, value_name = "KEY")]
    pub start: Option<String>,
    /// Only keys before this one (a JSON key; exclusive).
    #[arg(long, value_name = "KEY")]
    pub end: Option<String>,
    /// `jsonl`: one JSON object per line; `csv`: a header row, then key and
    /// value as JSON text in their cells.
    #[arg(long, value_enum, default_value_t = Format::Jsonl)]
    pub format: Format,
    /// Write to this file (replaced only once the export is complete) or
    /// `-` for standard output.
    #[arg(long, value_name = "FILE|-", default_value = "-")]
    pub output: String,
    /// Also export entries whose expiry has passed (left out by default,
    /// as reads leave them out; judged at the current time, with `--at` too).
    #[arg(long)]
    pub include_expired: bool,
}

pub fn run(args: ExportArgs) -> anyhow::Result<()> {
    let path = super::existing_replica(&args.db)?;
    let selection = Selection {
        prefixes: args.prefix.clone(),
        start: args.start.clone(),
        end: args.end.clone(),
    };
    let request = Request {
        at: args.at,
        ranges: selection.ranges()?,
        include_expired: args.include_expired,
        format: args.format,
    };
    let conn = open_replica(&path)?;
    // One read transaction: the point resolved and every row are one commit.
    let tx = conn.unchecked_transaction()?;
    let export = Export::begin(&tx, request)?;
    if args.output == "-" {
        let mut out = BufWriter::with_capacity(1 << 16, std::io::stdout().lock());
        return match write(&export, &mut out) {
            // A reader that went away (`| head -1`) ends the export quietly.
            Err(ExportError::Write(e)) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
            r => r.map(drop).map_err(Into::into),
        };
    }
    let target = PathBuf::from(&args.output);
    let dir = match target.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let tmp = tempfile::NamedTempFile::new_in(&dir)
        .with_context(|| format!("cannot create a file in {}", dir.display()))?;
    write(
        &export,
        &mut BufWriter::with_capacity(1 << 16, tmp.as_file()),
    )
    .with_context(|| format!("cannot write {}", target.display()))?;
    tmp.persist(&target)
        .with_context(|| format!("cannot write {}", target.display()))?;
    Ok(())
}

/// Writes the export, with a progress bar when stderr is a terminal
/// (nothing otherwise, so a pipe's stderr stays empty).
fn write(export: &Export<'_>, out: &mut dyn Write) -> Result<Counts, ExportError> {
    if !std::io::stderr().is_terminal() {
        return export.write(out, &mut |_| {});
    }
    // The count of the ranges' keys in `kv`: one index walk, no rows
    // decoded, so the ETA costs little next to the export.
    let bar = indicatif::ProgressBar::new(export.estimate()?);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "exporting {pos}/{len} entries, {msg}, {per_sec}, ETA {eta}",
        )
        .expect("a valid template"),
    );
    bar.enable_steady_tick(Duration::from_millis(200));
    let started = std::time::Instant::now();
    let result = export.write(out, &mut |c| {
        let secs = started.elapsed().as_secs_f64().max(0.001);
        let mib = c.bytes as f64 / (1024.0 * 1024.0);
        bar.set_position(c.entries);
        bar.set_message(format!("{mib:.1} MiB at {:.1} MiB/s", mib / secs));
    });
    bar.finish();
    result
}

/// Opens `path` read-only once the store's examination of the file
/// ([`store::replica_version`], what `sync` and `serve` refuse foreign
/// files with) says it is a replica, and names what it is otherwise.
pub(super) fn open_replica(path: &Path) -> anyhow::Result<rusqlite::Connection> {
    let not_replica = |why: &str| {
        anyhow::anyhow!(
            "{} is not a kvreplica replica file ({why}); give the file `kvreplica sync` or `serve` writes",
            path.display()
        )
    };
    match store::replica_version(path) {
        Ok(Some(_)) => Ok(store::open_read_only(path)?),
        Ok(None) => Err(not_replica("an empty file")),
        Err(store::StoreError::NotAReplica { what, .. }) => Err(not_replica(&what)),
        Err(e) => Err(e.into()),
    }
}

//! `kvreplica export`: the visible state of a replica file, decoded, one
//! entry per line (JSON Lines or CSV), in key order.
//!
//! It only reads (like `pitr list`), so it runs beside a `serve` that
//! writes the file: all rows come from one read transaction, so the export
//! is one commit even while new logs are applied. Rows are streamed, so
//! memory stays flat whatever the size.

use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use clap::{Args, ValueEnum};

use crate::config::PitrDbArgs;
use crate::decode::{EntryRef, ValueEncoding, CSV_HEADER};
use crate::format::Versionstamp;
use crate::store;

#[derive(Debug, Args)]
pub struct ExportArgs {
    /// `--db` and `--config`, from the settings table.
    #[command(flatten)]
    pub db: PitrDbArgs,
    /// `jsonl`: one JSON object per line; `csv`: a header row, then key and
    /// value as JSON text in their cells.
    #[arg(long, value_enum, default_value_t = Format::Jsonl)]
    pub format: Format,
    /// Write to this file (replaced only once the export is complete) or
    /// `-` for standard output.
    #[arg(long, value_name = "FILE|-", default_value = "-")]
    pub output: String,
    /// Also export entries whose expiry has passed (left out by default,
    /// as reads leave them out).
    #[arg(long)]
    pub include_expired: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Jsonl,
    Csv,
}

pub fn run(args: ExportArgs) -> anyhow::Result<()> {
    let path = super::existing_replica(&args.db)?;
    let conn = open_replica(&path)?;
    if args.output == "-" {
        let out = BufWriter::with_capacity(1 << 16, std::io::stdout().lock());
        return match export(&conn, &args, out) {
            // A reader that went away (`| head -1`) ends the export quietly.
            Err(e) if is_broken_pipe(&e) => Ok(()),
            r => r,
        };
    }
    let target = PathBuf::from(&args.output);
    let dir = match target.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let tmp = tempfile::NamedTempFile::new_in(&dir)
        .with_context(|| format!("cannot create a file in {}", dir.display()))?;
    export(
        &conn,
        &args,
        BufWriter::with_capacity(1 << 16, tmp.as_file()),
    )?;
    tmp.persist(&target)
        .with_context(|| format!("cannot write {}", target.display()))?;
    Ok(())
}

fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.downcast_ref::<std::io::Error>()
        .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe)
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

fn export(
    conn: &rusqlite::Connection,
    args: &ExportArgs,
    mut out: impl Write,
) -> anyhow::Result<()> {
    // One read transaction: the state checked and every row are one commit.
    let tx = conn.unchecked_transaction()?;
    let state = store::read_state(&tx)?;
    if !state.initial_complete() {
        bail!(
            "the replica's initial load is not complete yet: nothing consistent to export; \
             let `kvreplica sync` or `serve` finish it first"
        );
    }
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64);
    let mut stmt = tx.prepare(
        "select k, v, v_encoding, version, seq, expiration_ms from kv \
         where ?1 or expiration_ms < 0 or expiration_ms > ?2 order by k",
    )?;
    let mut rows = stmt.query(rusqlite::params![args.include_expired, now_ms])?;
    if args.format == Format::Csv {
        out.write_all(CSV_HEADER.as_bytes())?;
    }
    let mut line = String::new();
    while let Some(row) = rows.next()? {
        let entry = EntryRef {
            key: row.get_ref(0)?.as_blob()?,
            value: row.get_ref(1)?.as_blob()?,
            encoding: ValueEncoding::from_column(row.get(2)?),
            versionstamp: Versionstamp::from_parts(row.get::<_, i64>(3)? as u64, row.get(4)?),
            expires_at_ms: row.get(5)?,
        };
        line.clear();
        match args.format {
            Format::Jsonl => {
                entry.json(&mut line);
                line.push('\n');
            }
            Format::Csv => entry.csv(&mut line),
        }
        out.write_all(line.as_bytes())?;
    }
    out.flush()?;
    Ok(())
}

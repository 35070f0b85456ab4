//! `kvreplica pitr diff FROM TO`: the keys whose entry differs between two
//! points of a replica file, decoded, read without moving its visible
//! state (so it runs beside `serve`, like `pitr list`).

use std::io::{BufWriter, Write};
use std::ops::ControlFlow;
use std::path::Path;

use clap::{Args, ValueEnum};

use crate::inspect::{self, DiffSummary};

#[derive(Debug, Args)]
pub struct DiffArgs {
    /// The older state: <versionstamp> | <RFC 3339 time> | latest.
    pub from: String,
    /// The newer state, in the same forms (a diff may also run backwards).
    pub to: String,
    /// Only keys under this key prefix, in the JSON key form (e.g.
    /// '["users"]'); repeat for several.
    #[arg(long, value_name = "KEY")]
    pub prefix: Vec<String>,
    /// Show at most this many changes (the totals still count them all).
    #[arg(long)]
    pub limit: Option<usize>,
    /// `text`: one line per key (kind, key, value before → after) and the
    /// totals; `jsonl`: one JSON object per key, then one with the totals.
    #[arg(long, value_enum, default_value_t = Format::Text)]
    pub format: Format,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Text,
    Jsonl,
}

pub fn run(path: &Path, args: DiffArgs) -> anyhow::Result<()> {
    let from = inspect::point_arg(&args.from, "FROM").map_err(|e| e.into_anyhow())?;
    let to = inspect::point_arg(&args.to, "TO").map_err(|e| e.into_anyhow())?;
    let prefixes = args
        .prefix
        .iter()
        .map(|p| inspect::key_arg(p, "--prefix"))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| e.into_anyhow())?;
    let conn = super::export::open_replica(path)?;
    let mut out = BufWriter::with_capacity(1 << 16, std::io::stdout().lock());
    let mut failed = None;
    let summary = inspect::diff(
        &conn,
        from,
        to,
        &inspect::prefix_ranges(&prefixes),
        None,
        args.limit.unwrap_or(usize::MAX),
        |c| {
            let line = match args.format {
                Format::Text => inspect::change_line(c),
                Format::Jsonl => {
                    let mut line = String::new();
                    inspect::change_json(c, &mut line);
                    line.push('\n');
                    line
                }
            };
            match out.write_all(line.as_bytes()) {
                Ok(()) => ControlFlow::Continue(()),
                Err(e) => {
                    failed = Some(e);
                    ControlFlow::Break(())
                }
            }
        },
    )
    .map_err(|e| e.into_anyhow())?;
    let end = match failed {
        None => out
            .write_all(summary_text(&summary, args.format).as_bytes())
            .and_then(|()| out.flush()),
        Some(e) => Err(e),
    };
    match end {
        // A reader that went away (`| head`) ends the diff quietly.
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        r => Ok(r?),
    }
}

fn summary_text(s: &DiffSummary, format: Format) -> String {
    match format {
        Format::Jsonl => format!(
            "{}\n",
            serde_json::json!({
                "totals": s.totals.json(),
                "from": s.from.json(),
                "to": s.to.json(),
            })
        ),
        Format::Text => {
            let point = |p: &inspect::PointInfo| match p.time() {
                Some(t) => format!("{} ({t})", p.versionstamp),
                None => p.versionstamp.to_string(),
            };
            format!(
                "{} keys differ from {} to {}: {} added, {} removed, {} changed\n",
                s.totals.all(),
                point(&s.from),
                point(&s.to),
                s.totals.added,
                s.totals.removed,
                s.totals.changed
            )
        }
    }
}

//! `kvreplica restore`: put keys back into the primary database as they
//! were at a point of the replica ([`crate::restore`]). A dry run (the
//! plan) unless `--apply`.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Args;

use super::diff::Format;
use crate::config::PitrDbArgs;
use crate::restore::{self, client::Client, Action, ApplyOptions, Plan, RestoreError, Selection};
use crate::store::pitr::CheckoutTarget;

#[derive(Debug, Args)]
pub struct RestoreArgs {
    /// `--db` and `--config`, from the settings table.
    #[command(flatten)]
    pub db: PitrDbArgs,
    /// The primary's KV Connect URL (the Deno Deploy database's, or a
    /// denokv server's). Another kvreplica is refused: it is read-only.
    #[arg(long, value_name = "URL")]
    pub to: String,
    /// A file holding the primary's access token (else
    /// DENO_KV_ACCESS_TOKEN).
    #[arg(long, value_name = "FILE")]
    pub token_file: Option<PathBuf>,
    /// The point to restore: a versionstamp (20 hex digits), an RFC 3339
    /// time (the newest point at or before it) or `latest`, resolved as
    /// `pitr checkout` resolves it; the replica is not moved.
    #[arg(long, value_name = "POINT|TIME|latest")]
    pub at: CheckoutTarget,
    /// Restore the keys under this key prefix (a JSON key such as
    /// `["users"]`); repeat for several.
    #[arg(long, value_name = "KEY")]
    pub prefix: Vec<String>,
    /// Restore this one key (a JSON key); repeat for several. Without
    /// --prefix and --key, every key.
    #[arg(long, value_name = "KEY")]
    pub key: Vec<String>,
    /// Write the plan to the primary (without it: a dry run that prints
    /// the plan and writes nothing).
    #[arg(long)]
    pub apply: bool,
    /// With --apply: keys that changed in the primary during the apply
    /// (conflicts) are planned again against their new entry and written.
    #[arg(long)]
    pub retry_conflicts: bool,
    /// Keys per atomic write, 1 to 10 (KV Connect allows 10 checks per
    /// write, and every key is guarded by one).
    #[arg(long, default_value_t = restore::MAX_BATCH as u64, value_parser = clap::value_parser!(u64).range(1..=10))]
    pub batch_size: u64,
    /// How many of the planned keys to print (the counts cover them all).
    #[arg(long, default_value_t = 20)]
    pub show: usize,
    /// `text`: one line per key and the counts; `jsonl`: one JSON object
    /// per key, then one with the counts.
    #[arg(long, value_enum, default_value_t = Format::Text)]
    pub format: Format,
}

pub async fn run(args: RestoreArgs) -> anyhow::Result<()> {
    let path = super::existing_replica(&args.db)?;
    let token = token(&args)?;
    let selection = Selection {
        prefixes: args.prefix.clone(),
        keys: args.key.clone(),
    };
    let ranges = selection.ranges()?;
    let point = {
        let path = path.clone();
        let ranges = ranges.clone();
        let target = args.at;
        tokio::task::spawn_blocking(move || {
            let conn = super::export::open_replica(&path)?;
            Ok::<_, anyhow::Error>(restore::PointState::read(&conn, target, &ranges)?)
        })
        .await??
    };
    let mut client = restore::connect(&args.to, &token).await?;
    let plan = restore::plan(&mut client, &point, &ranges).await?;
    print_plan(&plan, &args)?;
    if !args.apply {
        if !plan.steps.is_empty() {
            eprintln!("dry run: nothing written; add --apply to write these keys");
        }
        return Ok(());
    }
    let options = ApplyOptions {
        batch: args.batch_size as usize,
    };
    let applied =
        apply_with_progress(&mut client, &point, &plan, options, args.retry_conflicts).await?;
    let mut report = format!(
        "restored: {} keys written, {} already restored, {} conflicts\n",
        applied.written,
        applied.already,
        applied.conflicts.len()
    );
    for key in &applied.conflicts {
        report.push_str(&format!(
            "conflict {}  changed in the primary meanwhile: left as it is\n",
            crate::decode::key_json(key)
        ));
    }
    super::print_out(&report)?;
    if !applied.conflicts.is_empty() {
        return Err(RestoreError::Conflicts(applied.conflicts.len()).into());
    }
    Ok(())
}

/// The primary's token: `--token-file` (trimmed), else
/// DENO_KV_ACCESS_TOKEN. Never printed.
fn token(args: &RestoreArgs) -> anyhow::Result<String> {
    let token = match &args.token_file {
        Some(f) => std::fs::read_to_string(f)
            .with_context(|| format!("cannot read the token file {}", f.display()))?,
        None => std::env::var("DENO_KV_ACCESS_TOKEN").map_err(|_| {
            anyhow::anyhow!("no access token for the primary: give --token-file FILE or set DENO_KV_ACCESS_TOKEN")
        })?,
    };
    let token = token.trim().to_string();
    if token.is_empty() {
        anyhow::bail!("the access token for the primary is empty");
    }
    Ok(token)
}

fn print_plan(plan: &Plan, args: &RestoreArgs) -> anyhow::Result<()> {
    let mut out = String::new();
    for step in plan.steps.iter().take(args.show) {
        match args.format {
            Format::Text => out.push_str(&step.line()),
            Format::Jsonl => {
                out.push_str(&step.json());
                out.push('\n');
            }
        }
    }
    let (set, delete) = (plan.count(Action::Set), plan.count(Action::Delete));
    let point = plan.point.map(|p| p.to_string()).unwrap_or_default();
    match args.format {
        Format::Text => {
            if plan.steps.len() > args.show {
                out.push_str(&format!(
                    "… and {} more keys\n",
                    plan.steps.len() - args.show
                ));
            }
            out.push_str(&format!(
                "plan to restore {point}: {set} to set, {delete} to delete, {} unchanged\n",
                plan.unchanged
            ));
        }
        Format::Jsonl => out.push_str(&format!(
            "{}\n",
            serde_json::json!({"point": point, "set": set, "delete": delete, "unchanged": plan.unchanged})
        )),
    }
    super::print_out(&out)?;
    Ok(())
}

/// Applies `plan`, with a progress bar when stderr is a terminal.
async fn apply_with_progress(
    client: &mut Client,
    point: &restore::PointState,
    plan: &Plan,
    options: ApplyOptions,
    retry_conflicts: bool,
) -> Result<restore::Applied, RestoreError> {
    if !std::io::stderr().is_terminal() {
        return restore::apply_all(client, point, plan, options, retry_conflicts, &mut |_| {})
            .await;
    }
    let bar = indicatif::ProgressBar::new(plan.steps.len() as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template("restoring {pos}/{len} keys, {per_sec}, ETA {eta}")
            .expect("a valid template"),
    );
    bar.enable_steady_tick(Duration::from_millis(200));
    let result = restore::apply_all(client, point, plan, options, retry_conflicts, &mut |n| {
        bar.set_position(n)
    })
    .await;
    bar.finish();
    let _ = std::io::stderr().flush();
    result
}

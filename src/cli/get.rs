//! `kvreplica get KEY [--at POINT]`: one key's entry in a replica file,
//! decoded, as `kvreplica export` writes entries, in the visible state or
//! at a point (read without moving the visible state).

use clap::Args;

use crate::config::PitrDbArgs;
use crate::inspect;

#[derive(Debug, Args)]
pub struct GetArgs {
    /// `--db` and `--config`, from the settings table.
    #[command(flatten)]
    pub db: PitrDbArgs,
    /// The key, in the JSON key form, e.g. '["users", "alice"]'.
    pub key: String,
    /// Read the state at this point instead of the visible one:
    /// <versionstamp> | <RFC 3339 time> | latest.
    #[arg(long, value_name = "POINT")]
    pub at: Option<String>,
}

/// Prints the entry as one JSON object, or `null` when the key is absent
/// (exit 0 either way: an absent key is an answer, not a failure; exit
/// codes other than 0 mean the question could not be answered).
pub fn run(args: GetArgs) -> anyhow::Result<()> {
    let key = inspect::key_arg(&args.key, "KEY").map_err(|e| e.into_anyhow())?;
    let at = args
        .at
        .as_deref()
        .map(|a| inspect::point_arg(a, "--at"))
        .transpose()
        .map_err(|e| e.into_anyhow())?;
    let path = super::existing_replica(&args.db)?;
    let conn = super::export::open_replica(&path)?;
    let (_, record) = inspect::get(&conn, at, &key).map_err(|e| e.into_anyhow())?;
    let text = match record {
        Some(r) => inspect::entry_json(&key, &r),
        None => "null".into(),
    };
    super::print_out(&format!("{text}\n"))?;
    Ok(())
}

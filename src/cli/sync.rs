//! `kvreplica sync`: one-shot (or --follow) sync of a replica file.

use std::time::Duration;

use anyhow::Context;
use clap::Args;

use super::{shutdown_signal, EngineArgs, SourceArgs};
use crate::source;
use crate::store::Store;
use crate::sync::Syncer;

#[derive(Debug, Args)]
pub struct SyncArgs {
    #[command(flatten)]
    pub source: SourceArgs,
    #[command(flatten)]
    pub engine: EngineArgs,
    /// Keep following the bucket after catching up, until SIGINT/SIGTERM.
    #[arg(long)]
    pub follow: bool,
}

pub async fn run(args: SyncArgs) -> anyhow::Result<()> {
    let url = args.source.source_url()?;
    let db = args.source.db_path()?;
    let source = source::open(
        &url,
        &args.source.s3_options(),
        &args.source.gcs_options(),
        &args.source.remote_options(),
    )?;
    let store = Store::open(&db).with_context(|| format!("opening replica {}", db.display()))?;
    let syncer = Syncer::new(source, store, args.engine.sync_options())?;
    tracing::info!(source = %url, db = %db.display(), "syncing");
    {
        let _report = syncer.progress().report(Duration::from_secs(5));
        syncer.initial().await?;
        syncer.catch_up().await?;
    }
    let state = syncer.state();
    tracing::info!(
        visible = %state.visible().map(|v| v.to_string()).unwrap_or_default(),
        "replica is at the newest point"
    );
    if args.follow {
        syncer.follow(shutdown_signal()).await;
    }
    Ok(())
}

//! `kvreplica sync`: one-shot (or --follow) sync of a replica file.

use std::time::Duration;

use anyhow::Context;
use clap::Args;

use super::shutdown_signal;
use crate::config::{Inputs, SettingArgs, SYNC};
use crate::store::Store;
use crate::sync::{OnReexport, SyncError, Syncer};

#[derive(Debug, Args)]
pub struct SyncArgs {
    /// `--config` and every setting `sync` takes, as flags.
    #[command(flatten)]
    pub settings: SettingArgs<SYNC>,
    /// Keep following the bucket after catching up, until SIGINT/SIGTERM.
    #[arg(long)]
    pub follow: bool,
}

impl SyncArgs {
    /// What the settings are resolved from: the config file and these flags.
    pub fn inputs(&self) -> Inputs {
        self.settings.inputs()
    }
}

pub async fn run(args: SyncArgs) -> anyhow::Result<()> {
    let settings = args.inputs().resolve()?;
    let _log = crate::logging::init(settings.log.format, &settings.log.level)?;
    for e in settings.ignored() {
        tracing::warn!("{e} (ignored: sync does not use this key)");
    }
    let url = &settings.source;
    let db = &settings.db;
    let source = settings.open_source()?;
    let store = Store::open(db).with_context(|| format!("opening replica {}", db.display()))?;
    crate::rebuild::discard_leftover(db, &store);
    let syncer = Syncer::new(source, store, settings.sync.clone())?;
    tracing::info!(source = %url, db = %db.display(), "syncing");
    // Signals are handled from the start: a stop during the first catch-up
    // lands between two transactions like one while following.
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        shutdown_signal().await;
        stop_tx.send_replace(true);
    });
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    {
        let report = syncer.progress().report(Duration::from_secs(5));
        // Under `--on-reexport rebuild` a re-exported backup is rebuilt
        // and swapped in as `serve` does, and the sync succeeds at the new
        // export's newest point; under `stop` it fails (exit 65).
        let caught_up = async {
            syncer.initial().await?;
            match syncer.catch_up().await {
                Err(e @ SyncError::Reexported { .. })
                    if settings.sync.on_reexport == OnReexport::Rebuild =>
                {
                    tracing::warn!(error = %e, "rebuilding the replica from the new export");
                    crate::rebuild::rebuild(&syncer).await?;
                    syncer.catch_up().await
                }
                r => r,
            }
        };
        tokio::select! {
            r = caught_up => {
                // On an error the guard clears the progress line and the
                // error alone is reported.
                r?;
                report.finish();
            }
            _ = stopped(stop_rx.clone()) => {
                drop(report);
                tracing::info!("stopped; the replica keeps its last committed state");
                if args.follow {
                    return Ok(());
                }
                anyhow::bail!("interrupted before reaching the newest point; run sync again to resume");
            }
        }
    }
    let state = syncer.state();
    tracing::info!(
        visible = %state.visible().map(|v| v.to_string()).unwrap_or_default(),
        "replica is at the newest point"
    );
    if args.follow {
        syncer.follow(stopped(stop_rx)).await;
    }
    Ok(())
}

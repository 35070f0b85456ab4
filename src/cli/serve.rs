//! `kvreplica serve`: continuous sync plus the KV Connect server and the
//! admin API, in one process on one replica file.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Args;
use tokio::net::TcpListener;
use tokio::sync::watch;

use super::{shutdown_signal, EngineArgs, SourceArgs};
use crate::admin::{self, AdminContext};
use crate::auth::{self, Tokens};
use crate::metrics::{self, METRICS};
use crate::notify;
use crate::server::{self, KvConnect, ServerOptions};
use crate::source::SourceError;
use crate::store::{Store, StoreError};
use crate::sync::{SyncError, Syncer};

#[derive(Debug, Args)]
pub struct ServeArgs {
    #[command(flatten)]
    pub source: SourceArgs,
    #[command(flatten)]
    pub engine: EngineArgs,

    /// Address of the KV Connect listener (Deno.openKv("http://HOST:PORT")).
    /// Use 127.0.0.1:4512 to accept local clients only; port 0 picks a free port.
    #[arg(long, env = "KVREPLICA_ADDR", default_value = "0.0.0.0:4512")]
    pub addr: SocketAddr,

    /// Access token clients must present (at least 12 characters). Repeat
    /// the flag to accept several during a rotation. Falls back to
    /// $KVREPLICA_ACCESS_TOKEN, then $DENO_KV_ACCESS_TOKEN.
    #[arg(long = "access-token", value_name = "TOKEN")]
    pub access_tokens: Vec<String>,

    /// Address of the admin listener: PITR API, /healthz, /readyz, /metrics.
    #[arg(long, env = "KVREPLICA_ADMIN_ADDR", default_value = "127.0.0.1:4513")]
    pub admin_addr: SocketAddr,

    /// Bearer token of the PITR admin API (at least 12 characters, distinct
    /// from every access token). Without it the /pitr endpoints are off;
    /// health and metrics stay available.
    #[arg(long, env = "KVREPLICA_ADMIN_TOKEN", value_name = "TOKEN")]
    pub admin_token: Option<String>,

    /// Read-only SQLite connections serving KV Connect requests.
    #[arg(long, env = "KVREPLICA_READERS", default_value_t = server::default_readers())]
    pub readers: usize,
}

impl ServeArgs {
    /// The access tokens from the flags or the environment, checked.
    fn access_tokens(&self) -> anyhow::Result<Vec<String>> {
        let tokens = if self.access_tokens.is_empty() {
            ["KVREPLICA_ACCESS_TOKEN", "DENO_KV_ACCESS_TOKEN"]
                .iter()
                .find_map(|k| std::env::var(k).ok().filter(|v| !v.is_empty()))
                .into_iter()
                .collect()
        } else {
            self.access_tokens.clone()
        };
        if tokens.is_empty() {
            bail!("no access token: pass --access-token TOKEN (or set DENO_KV_ACCESS_TOKEN); clients send it as DENO_KV_ACCESS_TOKEN");
        }
        for t in &tokens {
            auth::validate("an access token", t)?;
        }
        Ok(tokens)
    }

    fn admin_tokens(&self, access: &[String]) -> anyhow::Result<Vec<String>> {
        let Some(t) = self.admin_token.as_ref().filter(|t| !t.is_empty()) else {
            return Ok(Vec::new());
        };
        auth::validate("the admin token", t)?;
        if access.contains(t) {
            bail!("the admin token must differ from the access tokens: data clients must not be able to move the replica");
        }
        Ok(vec![t.clone()])
    }
}

/// Resolves once shutdown has begun.
async fn stopped(mut rx: watch::Receiver<bool>) {
    let _ = rx.wait_for(|s| *s).await;
}

async fn bind(addr: SocketAddr, what: &str) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr} for {what}"))
}

/// Errors that no retry will mend: the operator must change something.
fn is_fatal(e: &SyncError) -> bool {
    match e {
        SyncError::EmptySource(_) => true,
        SyncError::Source(SourceError::Config(_)) => true,
        SyncError::Source(e) => !e.is_retryable(),
        SyncError::Store(
            StoreError::BoundToOtherSource { .. } | StoreError::SchemaTooNew { .. },
        ) => true,
        _ => false,
    }
}

/// Loads the initial snapshot, retrying transient failures with backoff.
async fn initial(syncer: &Syncer) -> anyhow::Result<()> {
    let mut failures = 0u32;
    loop {
        match syncer.initial().await {
            Ok(_) => return Ok(()),
            Err(e) if is_fatal(&e) => return Err(e.into()),
            Err(e) => {
                failures += 1;
                metrics::error(e.kind());
                let pause =
                    (syncer.poll_interval() * (1 << failures.min(5))).min(Duration::from_secs(60));
                tracing::error!(error = %e, kind = e.kind(), retry_in = ?pause, "initial snapshot failed; retrying");
                tokio::time::sleep(pause).await;
            }
        }
    }
}

fn status_line(syncer: &Syncer) -> String {
    let state = syncer.state();
    match state.visible() {
        None => match state.snapshot_ranges {
            Some((loaded, total)) => format!("loading initial snapshot: {loaded}/{total} ranges"),
            None => "waiting for the backup's initial snapshot".to_string(),
        },
        Some(v) => {
            let lag = METRICS
                .lag_seconds()
                .map(|l| format!(", newest commit {l:.1}s old"))
                .unwrap_or_default();
            let mode = if state.pinned { " (pinned)" } else { "" };
            format!("serving {v}{mode}{lag}")
        }
    }
}

/// Pings the systemd watchdog while the sync loop shows signs of life, and
/// keeps `STATUS=` current. Without a watchdog it only updates the status.
async fn supervise(syncer: Arc<Syncer>, stop: watch::Receiver<bool>) {
    let mut stop = std::pin::pin!(stopped(stop));
    let watchdog = notify::watchdog_interval();
    let tick = watchdog
        .unwrap_or(Duration::from_secs(5))
        .min(Duration::from_secs(5));
    let mut interval = tokio::time::interval(tick);
    loop {
        tokio::select! {
            _ = interval.tick() => {}
            _ = &mut stop => return,
        }
        if let Some(half) = watchdog {
            // systemd's deadline is twice the ping interval; a loop silent
            // for that long is stuck and should be restarted.
            if syncer.since_alive() < half * 2 {
                notify::watchdog();
            } else {
                tracing::warn!(silent_for = ?syncer.since_alive(), "sync loop shows no progress; withholding the watchdog ping");
            }
        }
        notify::status(&status_line(&syncer));
    }
}

pub async fn run(args: ServeArgs) -> anyhow::Result<()> {
    let access = args.access_tokens()?;
    let admin_tokens = args.admin_tokens(&access)?;
    let url = args.source.source_url()?;
    let db = args.source.db_path()?;
    let source = crate::source::open(
        &url,
        &args.source.s3_options(),
        &args.source.gcs_options(),
        &args.source.remote_options(),
    )?;
    let store = Store::open(&db).with_context(|| format!("opening replica {}", db.display()))?;
    let syncer = Arc::new(Syncer::new(source, store, args.engine.sync_options())?);

    let kv_listener = bind(args.addr, "KV Connect").await?;
    let admin_listener = bind(args.admin_addr, "the admin API").await?;
    let database_id = server::database_id(&url);
    let kv = KvConnect::new(
        syncer.clone(),
        &db,
        ServerOptions {
            tokens: Tokens::new(access),
            database_id,
            readers: args.readers,
        },
    )?;
    let admin_ctx = AdminContext::new(syncer.clone(), Tokens::new(admin_tokens), &db)?;
    tracing::info!(source = %url, db = %db.display(), %database_id, "serving replica");

    let (stop_tx, stop_rx) = watch::channel(false);
    tokio::spawn(async move {
        shutdown_signal().await;
        tracing::info!("shutting down");
        notify::stopping();
        stop_tx.send_replace(true);
    });
    let kv_task = tokio::spawn(server::serve(kv, kv_listener, stopped(stop_rx.clone())));
    let admin_task = tokio::spawn(admin::serve(
        admin_ctx,
        admin_listener,
        stopped(stop_rx.clone()),
    ));
    tokio::spawn(supervise(syncer.clone(), stop_rx.clone()));

    let result = tokio::select! {
        r = initial(&syncer) => r,
        _ = stopped(stop_rx.clone()) => Ok(()),
    };
    if result.is_ok() && !*stop_rx.borrow() {
        notify::ready(&status_line(&syncer));
        tracing::info!(visible = %syncer.state().visible().map(|v| v.to_string()).unwrap_or_default(), "replica ready");
        syncer.follow(stopped(stop_rx.clone())).await;
    }
    // Let in-flight requests finish, but never hang the exit on a client.
    let drain = async {
        let _ = kv_task.await;
        let _ = admin_task.await;
    };
    if tokio::time::timeout(SHUTDOWN_GRACE, drain).await.is_err() {
        tracing::warn!("connections still open after {SHUTDOWN_GRACE:?}; closing them");
    }
    result
}

/// How long shutdown waits for in-flight requests.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

//! `kvreplica serve`: continuous sync plus the KV Connect server and the
//! admin API, in one process on one replica file.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use tokio::net::TcpListener;
use tokio::sync::watch;

use super::shutdown_signal;
use crate::admin::{self, AdminContext};
use crate::auth::Tokens;
use crate::config::{Inputs, RestartOnly, SettingArgs, Settings, SERVE};
use crate::notify;
use crate::reload;
use crate::server::tls::{Certs, TlsPaths};
use crate::server::{self, KvConnect, Limits, Listener, ServerOptions};
use crate::store::Store;
use crate::sync::Syncer;

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// `--config` and every setting `serve` takes, as flags.
    #[command(flatten)]
    pub settings: SettingArgs<SERVE>,
}

impl ServeArgs {
    /// What the settings are resolved from: the config file and these
    /// flags. [`Inputs::resolve`] gives the settings; keep them (or these
    /// inputs) to resolve again on a reload.
    pub fn inputs(&self) -> Inputs {
        self.settings.inputs()
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

/// Binds one listener, with TLS when `tls` names a certificate and key
/// (their certificates, for reloads); plain HTTP on an address other
/// machines can reach is worth one warning.
async fn listen(
    addr: SocketAddr,
    what: &str,
    tls: &TlsPaths,
    table: &'static str,
) -> anyhow::Result<(Listener, Option<Arc<Certs>>)> {
    let certs = match tls.files(table)? {
        Some(files) => Some(Certs::load(files)?),
        None => None,
    };
    let tcp = bind(addr, what).await?;
    Ok(match certs {
        Some(certs) => (Listener::tls(tcp, certs.clone()), Some(certs)),
        None => {
            if !addr.ip().is_loopback() {
                tracing::warn!(
                    %addr,
                    "{what} serves plain HTTP on an address other machines can reach: tokens travel \
                     in clear text; set {table}.tls_cert_file and {table}.tls_key_file, or listen on \
                     127.0.0.1 behind a TLS proxy"
                );
            }
            (tcp.into(), None)
        }
    })
}

pub async fn run(args: ServeArgs) -> anyhow::Result<()> {
    let settings = args.inputs().resolve()?;
    let log = crate::logging::init(settings.log.format, &settings.log.level)?;
    let access_tokens = Tokens::new(settings.access_tokens.clone());
    let admin_tokens = Tokens::new(settings.admin_token.iter().cloned().collect());
    let url = settings.source.clone();
    let db = settings.db.clone();
    let source = settings.open_source()?;
    let store = Store::open(&db).with_context(|| format!("opening replica {}", db.display()))?;
    crate::rebuild::discard_leftover(&db, &store);
    let syncer = Arc::new(Syncer::new(source, store, settings.sync.clone())?);

    let (kv_listener, kv_certs) =
        listen(settings.addr, "KV Connect", &settings.tls, "server").await?;
    let (admin_listener, admin_certs) = listen(
        settings.admin_addr,
        "the admin API",
        &settings.admin_tls,
        "admin",
    )
    .await?;
    let database_id = server::replica_database_id(&url, &settings.sync.filter);
    let kv = KvConnect::new(
        syncer.clone(),
        &db,
        ServerOptions {
            tokens: access_tokens.clone(),
            database_id,
            readers: settings.readers,
            limits: Limits {
                max_connections_per_address: settings.max_connections_per_address,
                ..Default::default()
            },
        },
    )?;
    let admin_ctx = AdminContext::new(syncer.clone(), admin_tokens.clone(), &db)?;
    tracing::info!(source = %url, db = %db.display(), %database_id, "serving replica");

    let (stop_tx, stop_rx) = watch::channel(false);
    let stop_tx = Arc::new(stop_tx);
    let on_signal = stop_tx.clone();
    tokio::spawn(async move {
        shutdown_signal().await;
        tracing::info!("shutting down");
        notify::stopping();
        on_signal.send_replace(true);
    });
    let kv_task = tokio::spawn(server::serve(kv, kv_listener, stopped(stop_rx.clone())));
    let admin_task = tokio::spawn(admin::serve(
        admin_ctx,
        admin_listener,
        stopped(stop_rx.clone()),
    ));
    tokio::spawn(notify::supervise(syncer.clone(), stopped(stop_rx.clone())));
    let current = reloadable(&settings);
    let loader: reload::Loader = Box::new(move || {
        settings
            .reload()
            .map(|s| reloadable(&s))
            .map_err(|e| e.to_string())
    });
    tokio::spawn(reload::run(
        loader,
        current,
        reload::Targets {
            access_tokens,
            admin_tokens,
            syncer: syncer.clone(),
            certs: [("server", kv_certs), ("admin", admin_certs)],
            set_log_level: Box::new(move |level| log.set_level(level).map_err(|e| e.to_string())),
        },
        stopped(stop_rx.clone()),
    ));

    let result = tokio::select! {
        r = syncer.initial_retrying() => r.map(|_| ()).map_err(Into::into),
        _ = stopped(stop_rx.clone()) => Ok(()),
    };
    if result.is_ok() && !*stop_rx.borrow() {
        notify::ready(&notify::status_line(&syncer));
        tracing::info!(visible = %syncer.state().visible().map(|v| v.to_string()).unwrap_or_default(), "replica ready");
        syncer.follow(stopped(stop_rx.clone())).await;
    }
    // A fatal error ends the process like a signal does.
    stop_tx.send_replace(true);
    // The listeners drain for at most SHUTDOWN_GRACE themselves; this bound
    // only guards against a listener task that never ends.
    let grace = server::SHUTDOWN_GRACE + Duration::from_secs(1);
    let drain = async {
        let _ = kv_task.await;
        let _ = admin_task.await;
    };
    if tokio::time::timeout(grace, drain).await.is_err() {
        tracing::warn!("connections still open after {grace:?}; closing them");
    }
    result
}

/// The part of `settings` a reload may change, and the values of the
/// rest, compared key by key to name what needs a restart.
fn reloadable(settings: &Settings) -> reload::Reloadable {
    reload::Reloadable {
        access_tokens: settings.access_tokens.clone(),
        admin_tokens: settings.admin_token.iter().cloned().collect(),
        poll_interval: settings.sync.poll_interval,
        log_level: settings.log.level.clone(),
        restart_only: RestartOnly::of(settings),
        tls: [settings.tls.clone(), settings.admin_tls.clone()],
        files: settings.watched_files().to_vec(),
    }
}

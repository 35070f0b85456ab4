//! Hot reload: when the config file or a secret file changes (or on
//! SIGHUP), re-read the configuration and apply what can change safely in a
//! running replica: access tokens, the admin token, the poll interval, the
//! log level and the listeners' TLS certificates (re-read on every reload,
//! since a certificate renewed in place keeps its file name). Everything else (source, replica file, addresses) needs a
//! restart, and a reload that changes it says so in the log.
//!
//! An invalid new configuration is refused with a log line and the old one
//! stays in force: a typo in the file never locks clients out.
//!
//! Directories are watched rather than files, because editors and
//! deployment tools replace a file by renaming a new one over it (and
//! Kubernetes swaps a symlink), which a watch on the old file would miss.
//! Those directories also hold other files (often the replica and its
//! WAL, written many times a second), and reading the config itself opens
//! it: so only events that name a configuration file (or a Kubernetes
//! `..data` swap) count, and after a short quiet period the files are
//! re-read only when one of them changed on disk (size, time, inode). A
//! change is read once, valid or not: an invalid edit logs one error.

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use notify::{RecursiveMode, Watcher};
use tokio::sync::mpsc;

use crate::auth::Tokens;
use crate::metrics;
use crate::server::tls::{Certs, TlsPaths};
use crate::sync::Syncer;

/// Changes to the watched files arrive in bursts (write, chmod, rename):
/// wait this long after the last event before re-reading.
const QUIET: Duration = Duration::from_millis(200);

/// The part of the configuration a running process can take on.
#[derive(Clone, PartialEq, Eq)]
pub struct Reloadable {
    /// KV Connect access tokens.
    pub access_tokens: Vec<String>,
    /// Admin API token(s); empty = PITR endpoints off.
    pub admin_tokens: Vec<String>,
    /// Pause between polls of the bucket.
    pub poll_interval: Duration,
    /// Log filter (e.g. `info`, `kvreplica=debug`).
    pub log_level: String,
    /// The values of the settings only a restart applies, compared key by
    /// key (its `Debug` names the keys, never a value).
    pub restart_only: crate::config::RestartOnly,
    /// The config file and every secret file it names.
    pub files: Vec<PathBuf>,
    /// TLS certificate and key paths of KV Connect and the admin API, in
    /// the order of [`Targets::certs`].
    pub tls: [TlsPaths; 2],
}

impl std::fmt::Debug for Reloadable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reloadable")
            .field(
                "access_tokens",
                &format!("<{} redacted>", self.access_tokens.len()),
            )
            .field(
                "admin_tokens",
                &format!("<{} redacted>", self.admin_tokens.len()),
            )
            .field("poll_interval", &self.poll_interval)
            .field("log_level", &self.log_level)
            .field("files", &self.files)
            .field("tls", &self.tls)
            .finish()
    }
}

/// Changes the process's log filter; a message on a bad filter.
pub type SetLogLevel = Box<dyn Fn(&str) -> Result<(), String> + Send + Sync>;

/// What a reload acts on.
pub struct Targets {
    pub access_tokens: Arc<Tokens>,
    pub admin_tokens: Arc<Tokens>,
    pub syncer: Arc<Syncer>,
    /// Each listener's settings table (`server`, `admin`) and its
    /// certificates, `None` for a plain listener.
    pub certs: [(&'static str, Option<Arc<Certs>>); 2],
    /// Changes the process's log filter.
    pub set_log_level: SetLogLevel,
}

/// Re-reads the configuration: the same inputs as at start-up (file,
/// environment, flags). Returns a message naming the key at fault.
pub type Loader = Box<dyn Fn() -> Result<Reloadable, String> + Send + Sync>;

/// Why a reload ran.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Trigger {
    FileChanged,
    Sighup,
}

/// Whether a file system event may concern the configuration: it names one
/// of `names` (the files' names) or a Kubernetes atomic-writer entry
/// (`..data`, `..2024_…`), and it is not a mere read (the loader opening
/// the file would otherwise trigger itself).
fn concerns(ev: &notify::Event, names: &BTreeSet<OsString>) -> bool {
    use notify::event::{AccessKind, AccessMode, EventKind};
    if let EventKind::Access(a) = ev.kind {
        if a != AccessKind::Close(AccessMode::Write) {
            return false;
        }
    }
    ev.paths.is_empty()
        || ev.paths.iter().any(|p| {
            p.file_name()
                .is_some_and(|n| names.contains(n) || n.to_string_lossy().starts_with(".."))
        })
}

/// What the files look like on disk: a change of any of them (an edit in
/// place, a file renamed over, a symlink swapped) changes this.
#[derive(Debug, PartialEq, Eq)]
struct Fingerprint(Vec<Option<(u64, std::time::SystemTime, u64)>>);

impl Fingerprint {
    fn of(files: &[PathBuf]) -> Fingerprint {
        Fingerprint(
            files
                .iter()
                .map(|f| {
                    let m = std::fs::metadata(f).ok()?;
                    #[cfg(unix)]
                    let inode = std::os::unix::fs::MetadataExt::ino(&m);
                    #[cfg(not(unix))]
                    let inode = 0;
                    Some((m.len(), m.modified().ok()?, inode))
                })
                .collect(),
        )
    }
}

/// The file names of `files`, for [`concerns`].
fn names(files: &[PathBuf]) -> BTreeSet<OsString> {
    files
        .iter()
        .filter_map(|f| f.file_name().map(OsString::from))
        .collect()
}

fn watched_dirs(files: &[PathBuf]) -> BTreeSet<PathBuf> {
    files
        .iter()
        .map(|f| {
            let abs = std::path::absolute(f).unwrap_or_else(|_| f.clone());
            abs.parent().map(Path::to_path_buf).unwrap_or(abs)
        })
        .collect()
}

/// Applies `new` over `old`, logging what changed.
fn apply(old: &Reloadable, new: &Reloadable, targets: &Targets) {
    if new.access_tokens != old.access_tokens {
        targets.access_tokens.replace(new.access_tokens.clone());
        tracing::info!(tokens = new.access_tokens.len(), "access tokens reloaded");
    }
    if new.admin_tokens != old.admin_tokens {
        targets.admin_tokens.replace(new.admin_tokens.clone());
        tracing::info!(
            enabled = !new.admin_tokens.is_empty(),
            "admin token reloaded"
        );
    }
    if new.poll_interval != old.poll_interval {
        targets.syncer.set_poll_interval(new.poll_interval);
        tracing::info!(poll_interval = ?new.poll_interval, "poll interval reloaded");
    }
    if new.log_level != old.log_level {
        match (targets.set_log_level)(&new.log_level) {
            Ok(()) => tracing::info!(level = %new.log_level, "log level reloaded"),
            Err(e) => tracing::warn!(error = %e, "log level not changed"),
        }
    }
    let restart = old.restart_only.changed(&new.restart_only);
    if !restart.is_empty() {
        tracing::warn!(
            keys = %restart.join(", "),
            "the configuration changed settings that only a restart applies (source, replica file, addresses, sync tuning); \
             they keep their old values until then"
        );
    }
}

/// Re-reads each TLS listener's certificate and key, on every reload:
/// the files may have new contents under the same names. A changed pair
/// serves new handshakes; open connections keep theirs. A bad pair is
/// refused and the current one stays. Turning TLS on or off needs a
/// restart.
fn reload_certs(new: &Reloadable, targets: &Targets) {
    for ((listener, certs), paths) in targets.certs.iter().zip(&new.tls) {
        let files = match paths.files(listener) {
            Ok(files) => files,
            Err(e) => {
                metrics::error("tls_reload");
                tracing::error!(error = %e, "TLS certificate not reloaded");
                continue;
            }
        };
        match (certs, files) {
            (Some(certs), Some(files)) => match certs.reload(&files) {
                Ok(true) => {
                    tracing::info!(listener, cert = %files.cert.display(), "TLS certificate reloaded")
                }
                Ok(false) => {}
                Err(e) => {
                    metrics::error("tls_reload");
                    tracing::error!(listener, error = %e, "TLS certificate not reloaded; keeping the current one");
                }
            },
            (None, None) => {}
            _ => tracing::warn!(listener, "turning TLS on or off takes a restart"),
        }
    }
}

/// Watches the configuration until `stop` resolves, applying each valid
/// change. `current` is what the process runs with now.
pub async fn run(
    loader: Loader,
    mut current: Reloadable,
    targets: Targets,
    stop: impl std::future::Future<Output = ()>,
) {
    let (tx, mut rx) = mpsc::channel::<Trigger>(16);
    let fs_tx = tx.clone();
    let watched_names = Arc::new(Mutex::new(names(&current.files)));
    let filter = watched_names.clone();
    let mut watcher = match notify::recommended_watcher(move |ev: notify::Result<notify::Event>| {
        let Ok(ev) = ev else { return };
        if concerns(&ev, &filter.lock().expect("names lock")) {
            let _ = fs_tx.try_send(Trigger::FileChanged);
        }
    }) {
        Ok(w) => Some(w),
        Err(e) => {
            tracing::warn!(error = %e, "cannot watch the configuration files; reload with SIGHUP");
            None
        }
    };
    let mut dirs = BTreeSet::new();
    let mut watch = |watcher: &mut Option<notify::RecommendedWatcher>, files: &[PathBuf]| {
        let Some(w) = watcher.as_mut() else { return };
        for d in watched_dirs(files) {
            if dirs.contains(&d) {
                continue;
            }
            match w.watch(&d, RecursiveMode::NonRecursive) {
                Ok(()) => {
                    dirs.insert(d);
                }
                Err(e) => {
                    tracing::warn!(dir = %d.display(), error = %e, "cannot watch for configuration changes")
                }
            }
        }
    };
    watch(&mut watcher, &current.files);

    #[cfg(unix)]
    {
        let hup_tx = tx.clone();
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
            Ok(mut hup) => {
                tokio::spawn(async move {
                    while hup.recv().await.is_some() {
                        if hup_tx.send(Trigger::Sighup).await.is_err() {
                            return;
                        }
                    }
                });
            }
            Err(e) => tracing::warn!(error = %e, "cannot handle SIGHUP"),
        }
    }
    drop(tx);

    let loader = Arc::new(loader);
    let mut seen = Fingerprint::of(&current.files);
    let mut stop = std::pin::pin!(stop);
    loop {
        let mut trigger = tokio::select! {
            t = rx.recv() => match t { Some(t) => t, None => return },
            _ = &mut stop => return,
        };
        // Let a burst of events settle; a SIGHUP in it wins.
        while let Ok(Some(t)) = tokio::time::timeout(QUIET, rx.recv()).await {
            if t == Trigger::Sighup {
                trigger = t;
            }
        }
        // An event on a file that did not change (touched, read, or a
        // change already read): nothing to do.
        let now = Fingerprint::of(&current.files);
        if trigger == Trigger::FileChanged && now == seen {
            continue;
        }
        seen = now;
        tracing::debug!(?trigger, "re-reading the configuration");
        let load = loader.clone();
        let loaded = tokio::task::spawn_blocking(move || load())
            .await
            .unwrap_or_else(|e| Err(format!("reload task failed: {e}")));
        if let Ok(new) = &loaded {
            reload_certs(new, &targets);
        }
        match loaded {
            Ok(new) if new == current => {
                if trigger == Trigger::Sighup {
                    tracing::info!("configuration reloaded (SIGHUP): nothing changed");
                }
            }
            Ok(new) => {
                apply(&current, &new, &targets);
                watch(&mut watcher, &new.files);
                *watched_names.lock().expect("names lock") = names(&new.files);
                seen = Fingerprint::of(&new.files);
                current = new;
            }
            Err(e) => {
                metrics::error("config_reload");
                tracing::error!(error = %e, "the new configuration is invalid; keeping the previous one");
            }
        }
    }
}

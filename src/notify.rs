//! systemd readiness and watchdog notifications (`Type=notify`).
//!
//! Every call is a no-op when the process was not started by systemd
//! (`NOTIFY_SOCKET` unset), so the same binary runs anywhere.
//!
//! [`supervise`] keeps systemd informed while a sync engine runs: the
//! watchdog ping while the process is alive in the sense that matters to
//! readers, and a `STATUS=` line from [`status_line`].
//!
//! # What a watchdog ping means
//!
//! Each ping says two things. The runtime answers: the ping is sent by a
//! task on it, on a timer, so a runtime with no worker left to run it sends
//! none. And the store is not wedged: it is not held by a transaction that
//! has shown no progress for `WatchdogSec` (see
//! [`crate::health::STORE_WORK`]). A checkout or apply walking a million
//! rows reports progress at every chunk and keeps the pings coming; a
//! transaction stuck inside one step stops them and systemd restarts the
//! process. A bucket that does not answer (timeouts, retries) is not a
//! reason to restart: readiness (`/readyz`) already says so, and the
//! replica goes on serving its last state.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use sd_notify::NotifyState;

use crate::health::STORE_WORK;
use crate::metrics::METRICS;
use crate::sync::Syncer;

fn send(states: &[NotifyState<'_>]) {
    if let Err(e) = sd_notify::notify(states) {
        tracing::warn!(error = %e, "sd_notify failed");
    }
}

/// `READY=1`: the initial snapshot is complete and the listeners accept
/// connections, so units ordered after this one can start using it.
pub fn ready(status: &str) {
    send(&[NotifyState::Ready, NotifyState::Status(status)]);
}

/// `STATUS=…`: one line shown by `systemctl status`.
pub fn status(status: &str) {
    send(&[NotifyState::Status(status)]);
}

/// `WATCHDOG=1`: proof of life (see the module's docs for what it proves).
pub fn watchdog() {
    send(&[NotifyState::Watchdog]);
}

/// `STOPPING=1`: shutdown has begun.
pub fn stopping() {
    send(&[NotifyState::Stopping, NotifyState::Status("stopping")]);
}

/// How often to ping the watchdog: half the interval systemd enforces
/// (`WatchdogSec=`), as sd_watchdog_enabled(3) recommends; `None` when no
/// watchdog is configured for this process.
pub fn watchdog_interval() -> Option<Duration> {
    sd_notify::watchdog_enabled().map(|d| d / 2)
}

/// One line on where `syncer`'s replica stands, for `STATUS=`.
pub fn status_line(syncer: &Syncer) -> String {
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

/// Pings the systemd watchdog while the runtime answers and the store is
/// not wedged (module docs), and keeps `STATUS=` current, until `stop`
/// resolves. Without a watchdog it only updates the status.
pub async fn supervise(syncer: Arc<Syncer>, stop: impl Future<Output = ()>) {
    let mut stop = std::pin::pin!(stop);
    let ping_every = watchdog_interval();
    let tick = ping_every
        .unwrap_or(Duration::from_secs(5))
        .min(Duration::from_secs(5));
    let mut interval = tokio::time::interval(tick);
    loop {
        tokio::select! {
            _ = interval.tick() => {}
            _ = &mut stop => return,
        }
        if let Some(half) = ping_every {
            // The bound is systemd's own deadline (twice the ping
            // interval): one chunk of a checkout or one batch of an apply
            // takes far less, so only a holder stuck in one step reaches it.
            let bound = half * 2;
            let stalled_for = STORE_WORK.stalled_for();
            if stalled_for < bound {
                watchdog();
            } else {
                tracing::warn!(
                    ?stalled_for,
                    sync_loop_silent_for = ?syncer.health().since_alive(),
                    "the store is held with no progress; withholding the watchdog ping"
                );
            }
        }
        status(&status_line(&syncer));
    }
}

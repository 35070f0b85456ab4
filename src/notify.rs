//! systemd readiness and watchdog notifications (`Type=notify`).
//!
//! Every call is a no-op when the process was not started by systemd
//! (`NOTIFY_SOCKET` unset), so the same binary runs anywhere.
//!
//! [`supervise`] keeps systemd informed while a sync engine runs: the
//! watchdog ping only while the engine's loop shows signs of life, and a
//! `STATUS=` line from [`status_line`].

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use sd_notify::NotifyState;

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

/// `WATCHDOG=1`: proof of life from the sync loop.
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

/// Pings the systemd watchdog while `syncer`'s loop shows signs of life,
/// and keeps `STATUS=` current, until `stop` resolves. Without a watchdog
/// it only updates the status.
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
            // systemd's deadline is twice the ping interval; a loop silent
            // for that long is stuck and should be restarted.
            let silent_for = syncer.health().since_alive();
            if silent_for < half * 2 {
                watchdog();
            } else {
                tracing::warn!(
                    ?silent_for,
                    "sync loop shows no progress; withholding the watchdog ping"
                );
            }
        }
        status(&status_line(&syncer));
    }
}

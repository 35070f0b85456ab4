//! systemd readiness and watchdog notifications (`Type=notify`).
//!
//! Every call is a no-op when the process was not started by systemd
//! (`NOTIFY_SOCKET` unset), so the same binary runs anywhere.

use std::time::Duration;

use sd_notify::NotifyState;

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

//! Liveness of the sync engine: what readiness (`/readyz`) and the systemd
//! watchdog read, kept apart from the engine so that its loop only reports
//! events (a sign of life, a round that succeeded or failed) and never
//! decides what they mean for the operator.

use std::sync::atomic::{AtomicBool, AtomicI64, Ordering::Relaxed};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};

/// `/readyz` fails when the bucket has not answered for this many poll
/// intervals: a few missed rounds are normal retries, more is an outage.
pub const READY_POLL_INTERVALS: u32 = 10;
/// ... but never for less than this, so fast polling does not flap on a
/// few slow requests (each is retried with backoff inside a round).
pub const READY_MIN_WINDOW: Duration = Duration::from_secs(10);

/// The engine's health, updated by the engine and read by anyone. Plain
/// atomics (and one short lock) so that readers never wait for a sync
/// transaction.
#[derive(Debug)]
pub struct Health {
    /// When the last poll round succeeded (epoch ms; 0 = never).
    last_ok_round_ms: AtomicI64,
    /// Why the last round failed, until a round succeeds.
    last_error: Mutex<Option<String>>,
    /// When the engine last made progress or finished a step, failed or
    /// not (epoch ms): reported when the watchdog ping is withheld.
    alive_ms: AtomicI64,
    /// The last round listed the bucket to its end (see
    /// [`crate::sync::RoundOutcome::listed_to_end`]).
    listed_to_end: AtomicBool,
    /// Why the engine stopped following the bucket while it serves its
    /// last good state (a gap in the log, a re-exported backup), until a
    /// round succeeds.
    stopped: Mutex<Option<String>>,
    /// What a rebuild after a re-export has done so far, while one runs
    /// (see `crate::rebuild`).
    rebuilding: Mutex<Option<String>>,
}

impl Default for Health {
    fn default() -> Self {
        Health {
            last_ok_round_ms: AtomicI64::new(0),
            last_error: Mutex::new(None),
            alive_ms: AtomicI64::new(Utc::now().timestamp_millis()),
            listed_to_end: AtomicBool::new(false),
            stopped: Mutex::new(None),
            rebuilding: Mutex::new(None),
        }
    }
}

impl Health {
    /// The engine showed progress: a listing answered, a range or batch
    /// stored, a round ended (even with an error), or a pause ticked.
    pub(crate) fn alive(&self) {
        self.alive_ms.store(Utc::now().timestamp_millis(), Relaxed);
    }

    /// The bucket answered and everything listed so far was applied.
    pub(crate) fn round_ok(&self) {
        self.last_ok_round_ms
            .store(Utc::now().timestamp_millis(), Relaxed);
    }

    /// A round of the follow loop ended: `error` is why it failed, `None`
    /// when it succeeded (which clears the previous error).
    pub(crate) fn round_ended(&self, error: Option<String>) {
        *self.last_error.lock().expect("error lock") = error;
    }

    /// The engine stopped following the bucket for `reason` (readiness
    /// fails at once, whatever the freshness of the polls), or, with
    /// `None`, follows it again.
    pub(crate) fn set_stopped(&self, reason: Option<String>) {
        *self.stopped.lock().expect("stopped lock") = reason;
    }

    /// A rebuild from a re-exported backup is under way and has reached
    /// `progress`, or, with `None`, is over (swapped in or abandoned).
    pub(crate) fn set_rebuilding(&self, progress: Option<String>) {
        *self.rebuilding.lock().expect("rebuilding lock") = progress;
    }

    /// Records whether the last round listed the bucket to its end.
    pub(crate) fn set_listed_to_end(&self, to_end: bool) {
        self.listed_to_end.store(to_end, Relaxed);
    }

    /// Whether the last round listed the bucket to its end, forgetting it:
    /// the next caller must list again.
    pub(crate) fn take_listed_to_end(&self) -> bool {
        self.listed_to_end.swap(false, Relaxed)
    }

    /// When the last poll round succeeded, if one has.
    pub fn last_successful_round(&self) -> Option<DateTime<Utc>> {
        match self.last_ok_round_ms.load(Relaxed) {
            0 => None,
            ms => DateTime::from_timestamp_millis(ms),
        }
    }

    /// How long ago the engine last showed progress. Grows only when the
    /// loop is stuck.
    pub fn since_alive(&self) -> Duration {
        let ms = Utc::now().timestamp_millis() - self.alive_ms.load(Relaxed);
        Duration::from_millis(ms.max(0) as u64)
    }

    /// The error that ended the last round, when it failed.
    pub fn last_error(&self) -> Option<String> {
        self.last_error.lock().expect("error lock").clone()
    }

    /// Readiness: the engine follows the bucket (it did not stop at a gap
    /// in the log or a re-exported backup, and is not rebuilding from a
    /// re-exported one: it serves the old export's state meanwhile), the initial snapshot is
    /// complete and the bucket answered a listing recently (within
    /// [`READY_POLL_INTERVALS`] poll intervals, and at least
    /// [`READY_MIN_WINDOW`]). `Err` says why not.
    pub fn readiness(
        &self,
        initial_complete: bool,
        poll_interval: Duration,
    ) -> Result<(), NotReady> {
        if let Some(progress) = self.rebuilding.lock().expect("rebuilding lock").clone() {
            return Err(NotReady {
                status: NotReady::REBUILDING,
                detail: format!("{}: {progress}", NotReady::REBUILDING),
            });
        }
        if let Some(reason) = self.stopped.lock().expect("stopped lock").clone() {
            return Err(NotReady {
                status: NotReady::STOPPED,
                detail: format!("{}: {reason}", NotReady::STOPPED),
            });
        }
        let window = (poll_interval * READY_POLL_INTERVALS).max(READY_MIN_WINDOW);
        let last = self.last_successful_round();
        let fresh = last.is_some_and(|t| (Utc::now() - t).to_std().unwrap_or_default() <= window);
        match (initial_complete, fresh) {
            (false, _) => Err(NotReady {
                status: NotReady::LOADING,
                detail: NotReady::LOADING.to_string(),
            }),
            (true, false) => Err(NotReady {
                status: NotReady::STALE,
                detail: format!(
                    "no successful poll of the bucket for more than {}s (last: {}){}",
                    window.as_secs(),
                    last.map(|t| t.to_rfc3339())
                        .unwrap_or_else(|| "never".into()),
                    self.last_error()
                        .map(|e| format!("; last error: {e}"))
                        .unwrap_or_default()
                ),
            }),
            (true, true) => Ok(()),
        }
    }
}

/// The store's side of liveness, read by the systemd watchdog: whether the
/// sync store is held (a transaction under way) and when its holder last
/// showed progress. A checkout or apply that walks rows or stores objects
/// reports progress at every chunk, so however long it runs the time
/// without progress stays at one chunk's; only a holder stuck inside one
/// step (a hung disk, a deadlock, the test park hook) lets it grow.
///
/// Process-wide, because the store's code has no handle on the engine's
/// [`Health`]; a process runs one sync engine. Monotonic times (ms since
/// the first use), so a clock step never looks like a wedge.
pub(crate) static STORE_WORK: StoreWork = StoreWork {
    holders: AtomicI64::new(0),
    progress_ms: AtomicI64::new(0),
};

/// See [`STORE_WORK`].
#[derive(Debug)]
pub(crate) struct StoreWork {
    /// How many hold the store now (one in a server; more only in tests).
    holders: AtomicI64,
    /// When a holder last took the store or showed progress.
    progress_ms: AtomicI64,
}

fn monotonic_ms() -> i64 {
    static START: OnceLock<Instant> = OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_millis() as i64
}

impl StoreWork {
    /// The store is taken until the returned guard is dropped; taking it
    /// counts as progress.
    pub(crate) fn hold(&'static self) -> StoreHold {
        self.progress();
        self.holders.fetch_add(1, Relaxed);
        StoreHold(self)
    }

    /// The holder moved on: a chunk of rows walked, a batch stored.
    pub(crate) fn progress(&self) {
        self.progress_ms.store(monotonic_ms(), Relaxed);
    }

    /// How long the store has been held without progress; zero while
    /// nobody holds it (waiting on the bucket is not being wedged).
    pub(crate) fn stalled_for(&self) -> Duration {
        if self.holders.load(Relaxed) <= 0 {
            return Duration::ZERO;
        }
        let ms = monotonic_ms() - self.progress_ms.load(Relaxed);
        Duration::from_millis(ms.max(0) as u64)
    }
}

/// Holds the store in [`StoreWork`]'s eyes until dropped.
pub(crate) struct StoreHold(&'static StoreWork);

impl Drop for StoreHold {
    fn drop(&mut self) {
        self.0.holders.fetch_sub(1, Relaxed);
    }
}

/// Why the replica is not ready, in two forms: `status`, a fixed phrase
/// anyone may read, and `detail`, which can quote the last sync error (and
/// with it the bucket URL or an S3 access key id), for the admin token only.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotReady {
    /// One of [`NotReady::LOADING`], [`NotReady::STALE`],
    /// [`NotReady::STOPPED`] or [`NotReady::REBUILDING`].
    pub status: &'static str,
    /// The status with times and the last error.
    pub detail: String,
}

impl NotReady {
    /// The initial snapshot has not been loaded yet.
    pub const LOADING: &'static str = "initial snapshot in progress";
    /// The bucket has not answered a poll recently.
    pub const STALE: &'static str = "no recent successful poll of the bucket";
    /// The engine stopped following the bucket (a gap in the log, a
    /// re-exported backup) and serves its last good state.
    pub const STOPPED: &'static str = "not following the bucket";
    /// The backup was re-exported and a replica of the new export is
    /// being built; the old export's state is served until it is swapped
    /// in.
    pub const REBUILDING: &'static str =
        "rebuilding from a re-exported backup; serving the previous export meanwhile";
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stopped_engine_is_not_ready_however_fresh_its_polls() {
        let h = Health::default();
        let every = Duration::from_secs(1);
        h.round_ok();
        assert_eq!(h.readiness(true, every), Ok(()));
        h.set_stopped(Some("gap in the log: logs/a.bin ... logs/c.bin".into()));
        h.round_ok();
        let why = h.readiness(true, every).unwrap_err();
        assert_eq!(why.status, NotReady::STOPPED);
        assert!(
            why.detail.contains("not following") && why.detail.contains("logs/c.bin"),
            "{why:?}"
        );
        h.set_stopped(None);
        assert_eq!(h.readiness(true, every), Ok(()));
        h.set_rebuilding(Some("3 of 6 snapshot ranges loaded".into()));
        let why = h.readiness(true, every).unwrap_err();
        assert_eq!(why.status, NotReady::REBUILDING);
        assert!(why.detail.contains("3 of 6"), "{why:?}");
        h.set_rebuilding(None);
        assert_eq!(h.readiness(true, every), Ok(()));
    }

    #[test]
    fn a_store_is_stalled_only_while_held_without_progress() {
        static WORK: StoreWork = StoreWork {
            holders: AtomicI64::new(0),
            progress_ms: AtomicI64::new(0),
        };
        let pause = Duration::from_millis(30);
        std::thread::sleep(pause);
        assert_eq!(WORK.stalled_for(), Duration::ZERO, "not held");
        let held = WORK.hold();
        std::thread::sleep(pause);
        assert!(WORK.stalled_for() >= pause);
        WORK.progress();
        assert!(WORK.stalled_for() < pause);
        drop(held);
        std::thread::sleep(pause);
        assert_eq!(WORK.stalled_for(), Duration::ZERO, "released");
    }
}

//! Test-only hooks inside the store's transactions: one that parks the
//! writer (a wedged store), one that slows a checkout down (a long one).
//!
//! The park hook stops the writer after its rows are written and before
//! COMMIT, so the crash test (`tests/crash.rs`) can SIGKILL it at the one
//! moment a kill between transactions never reaches, and the watchdog test
//! (`tests/watchdog.rs`) can show that a wedged store stops the pings.
//!
//! `KVREPLICA_TEST_PARK_IN_TXN=<n>` (n ≥ 1), read once at the first such
//! transaction of the process, makes the n-th transaction that stores a
//! snapshot range or a log batch print [`MARKER`] on stderr and sleep until
//! the process is killed (SIGKILL: a graceful stop waits for the
//! transaction, forever). Not for production use: a parked replica never
//! moves again. Unset, it costs one branch on a cached value per
//! transaction.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

const VAR: &str = "KVREPLICA_TEST_PARK_IN_TXN";

/// The line the crash test waits for, followed by ` #<n> (<what>)`.
const MARKER: &str = "kvreplica test hook: parked before COMMIT";

/// The transaction to park in; 0 when the hook is off.
static PARK_AT: OnceLock<u64> = OnceLock::new();

/// Transactions seen so far (counted only while the hook is on).
static SEEN: AtomicU64 = AtomicU64::new(0);

/// Called by the store right before committing a transaction that stores
/// `what` (a snapshot range or a log batch); parks when the hook says so.
#[inline]
pub(super) fn before_commit(what: impl FnOnce() -> String) {
    let at = *PARK_AT.get_or_init(|| read_number(VAR, "a transaction number"));
    if at != 0 {
        park_if_nth(at, what());
    }
}

/// The number in `var`, 0 when unset or not a number (said on stderr).
fn read_number(var: &str, what: &str) -> u64 {
    let Ok(v) = std::env::var(var) else { return 0 };
    match v.parse() {
        Ok(n) => n,
        Err(_) => {
            eprintln!("{var}={v:?} is not {what}: ignored");
            0
        }
    }
}

#[cold]
fn park_if_nth(at: u64, what: String) {
    let n = SEEN.fetch_add(1, Ordering::Relaxed) + 1;
    if n == at {
        eprintln!("{MARKER} #{n} ({what})");
        loop {
            std::thread::sleep(Duration::from_secs(3600));
        }
    }
}

const SLOW_VAR: &str = "KVREPLICA_TEST_SLOW_CHECKOUT_MS";

/// Milliseconds to sleep after each chunk a checkout walks; 0 when off.
static SLOW_MS: OnceLock<u64> = OnceLock::new();

/// Called by a checkout after each chunk of rows it walked (and reported
/// as progress). `KVREPLICA_TEST_SLOW_CHECKOUT_MS=<ms>`, read once, makes
/// it sleep that long, so a test gets a checkout of many seconds from a
/// history of a few chunks: a million-row checkout in a test's time. Unset,
/// it costs one branch on a cached value per chunk.
#[inline]
pub(super) fn chunk_walked() {
    let ms = *SLOW_MS.get_or_init(|| read_number(SLOW_VAR, "a number of milliseconds"));
    if ms != 0 {
        std::thread::sleep(Duration::from_millis(ms));
    }
}

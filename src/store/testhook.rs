//! Test-only: parks the writer inside a write transaction, after its rows
//! are written and before COMMIT, so the crash test (`tests/crash.rs`) can
//! SIGKILL it at the one moment a kill between transactions never reaches.
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
    let at = *PARK_AT.get_or_init(read_var);
    if at != 0 {
        park_if_nth(at, what());
    }
}

fn read_var() -> u64 {
    let Ok(v) = std::env::var(VAR) else { return 0 };
    match v.parse() {
        Ok(n) => n,
        Err(_) => {
            eprintln!("{VAR}={v:?} is not a transaction number: ignored");
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

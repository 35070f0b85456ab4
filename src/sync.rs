//! The sync engine: builds a consistent replica from a backup and keeps it
//! current.
//!
//! 1. Wait for `differential` (DV).
//! 2. Load every snapshot range, each in its own transaction (resumable).
//! 3. Replay the log from its first object, in stamp order, over the fuzzy
//!    snapshot until the first commit at or after DV: the initial point.
//! 4. Keep polling for new log objects and apply them in order.
//!
//! Downloads run concurrently but are consumed in name order, and the bytes
//! in flight are bounded by a byte budget (not just a request count), so
//! memory stays flat whatever the bucket size. An object larger than a
//! quarter of the budget goes to a temporary file instead of memory, and
//! every object is decoded entry by entry as it is stored, so neither one
//! large object nor one of millions of tiny entries breaks that bound.
//! Downloads keep running while a transaction is being written (see
//! `overlapped`).

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::Utc;
use futures::future::{self, Either};
use futures::{stream, Stream, StreamExt};
use tokio::sync::{mpsc, oneshot, watch, OwnedSemaphorePermit, Semaphore};

use crate::backup::{Backup, Listed};
use crate::clock::BucketClock;
use crate::format::{self, FormatError, LogName, SnapshotName, Versionstamp};
use crate::health::Health;
use crate::metrics;
use crate::progress::Progress;
use crate::source::SourceError;
use crate::source::{Body, IfChanged, ObjectVersion};
use crate::store::pitr::Retention;
use crate::store::{LateOutcome, LogObject, Store, StoreError, SyncState};

/// Errors that stop a sync round.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error(transparent)]
    Format(#[from] FormatError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("no backup found at {0}: no differential, snapshots or logs under this prefix (check the bucket and prefix)")]
    EmptySource(String),
    #[error("internal task failed: {0}")]
    Task(String),
    /// A hole in the log: `before` ends inside commit `commit` and the next
    /// listed object, `after`, starts another commit, so the end of
    /// `commit` is missing. Applying on would merge two commits into one
    /// state that never existed.
    #[error(
        "gap in the log: {before} ends inside commit {commit} but the next object, {after}, \
         starts commit {next}; the rest of commit {commit} is missing. The replica stays at \
         its last complete commit and resumes by itself when the missing object appears \
         (its name sorts between these two)"
    )]
    LogGap {
        before: String,
        after: String,
        commit: Versionstamp,
        next: Versionstamp,
    },
    /// The backup under this prefix is no longer the export the replica
    /// was built from: its logs do not continue this replica's history.
    #[error(
        "the backup was re-exported under the same prefix: {what}. This replica keeps serving \
         its last state and no longer follows the bucket. Build a new replica file from the new \
         export (`kvreplica sync --source {backup} --db NEW_FILE`, then serve NEW_FILE) or delete \
         {db} and sync again"
    )]
    Reexported {
        what: String,
        backup: String,
        db: String,
    },
    /// A log object became visible after later ones were applied and
    /// cannot be folded into the stored history.
    #[error(
        "log object {object} became visible late (after later objects were applied) and cannot \
         be folded in: {why}. The replica keeps serving its last state and no longer follows \
         the bucket. To rebuild it: stop kvreplica, move {db} (with its -wal and -shm files) \
         aside, and start it again: it builds a new replica from the bucket, which now holds \
         the object"
    )]
    LateObject {
        object: String,
        why: String,
        db: String,
    },
    /// A late object leaves a commit half done: another part of the log
    /// is still missing.
    #[error(
        "log object {object} became visible late, but the stored log around it leaves commit \
         {commit} unfinished (it goes on with commit {next}): another part of the log is still \
         missing. The replica stays where it is and folds them in when the rest lands"
    )]
    LateGap {
        object: String,
        commit: Versionstamp,
        next: Versionstamp,
    },
}

impl SyncError {
    /// Errors no retry will mend (a missing backup, refused or wrong
    /// settings, a file built from another backup): the operator must act.
    pub fn is_permanent(&self) -> bool {
        match self {
            SyncError::EmptySource(_)
            | SyncError::Reexported { .. }
            | SyncError::LateObject { .. } => true,
            SyncError::Source(e) => !e.is_retryable(),
            SyncError::Store(
                StoreError::BoundToOtherSource { .. }
                | StoreError::SchemaTooNew { .. }
                | StoreError::NotAReplica { .. }
                | StoreError::FilterMismatch { .. },
            ) => true,
            _ => false,
        }
    }

    /// A short, stable name for logs and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            SyncError::Source(e) if e.is_retryable() => "source_transient",
            SyncError::Source(_) => "source",
            SyncError::Format(_) => "corrupt_object",
            SyncError::Store(StoreError::Corrupt(_)) => "corrupt_log",
            SyncError::Store(_) => "store",
            SyncError::EmptySource(_) => "empty_source",
            SyncError::Task(_) => "internal",
            SyncError::LogGap { .. } => "log_gap",
            SyncError::Reexported { .. } => "reexported",
            SyncError::LateObject { .. } => "late_object",
            SyncError::LateGap { .. } => "log_gap",
        }
    }

    /// Errors that stop the replica from following while it keeps serving
    /// its last good state: readiness fails until a round succeeds.
    fn stops_following(&self) -> bool {
        matches!(
            self,
            SyncError::LogGap { .. }
                | SyncError::Reexported { .. }
                | SyncError::LateObject { .. }
                | SyncError::LateGap { .. }
        )
    }
}

/// Tunables of the engine.
#[derive(Clone, Debug)]
pub struct SyncOptions {
    /// Downloads in flight at once.
    pub fetch_concurrency: usize,
    /// Upper bound of downloaded-but-not-applied bytes.
    pub max_bytes_in_flight: u64,
    /// Objects asked for per listing request.
    pub page_size: usize,
    /// Time between two polls of the bucket when caught up.
    pub poll_interval: Duration,
    /// Log objects written less than this long before a poll round started
    /// are left for a later round: an upload that lands late (out of order)
    /// would otherwise be skipped forever by `start-after`.
    pub settle: Duration,
    /// Most log objects applied in one transaction.
    pub batch_objects: usize,
    /// Log objects behind the cursor listed again each round to find one
    /// that became visible late (see [`Syncer::fold_in_late`]); 0: never.
    pub late_window: usize,
    /// How much point-in-time history to keep.
    pub retention: Retention,
    /// What a re-exported backup makes the engine do.
    pub on_reexport: OnReexport,
    /// The keys the replica keeps (`sync.include_prefixes`,
    /// `sync.exclude_prefixes`); recorded in a fresh file, checked against
    /// an existing one.
    pub filter: crate::store::KeyFilter,
}

/// What the engine does when the backup is re-exported under the same
/// prefix (see [`SyncError::Reexported`]).
///
/// `Stop` is the default: a rebuild replaces the state clients read, the
/// recoverable history and any pin by those of another export, and needs
/// room for a second copy of the replica; an operator opts into that.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum OnReexport {
    /// Stop following, keep serving the last state; readiness fails and
    /// says what changed.
    #[default]
    Stop,
    /// Build a replica of the new export beside the file (see
    /// [`crate::rebuild`]), keep serving the old state meanwhile, then
    /// switch to the new one in one transaction.
    Rebuild,
}

impl std::str::FromStr for OnReexport {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "stop" => Ok(OnReexport::Stop),
            "rebuild" => Ok(OnReexport::Rebuild),
            _ => Err(format!(
                "{s:?} is not a policy: use \"stop\" or \"rebuild\""
            )),
        }
    }
}

impl std::fmt::Display for OnReexport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            OnReexport::Stop => "stop",
            OnReexport::Rebuild => "rebuild",
        })
    }
}

impl Default for SyncOptions {
    fn default() -> Self {
        SyncOptions {
            // A GET mostly waits on the store (tens of ms to the first byte
            // on S3, even on loopback for some servers) while a log object
            // is tens of KiB: 64 in flight keep a catch-up fed where 16
            // left the writer idle (a 100k-key, 700-object backup: 2.2 s
            // with 16, 1.0 s with 64). The byte budget bounds the memory.
            fetch_concurrency: 64,
            // 16 MiB: many times the size of a typical log object (tens of
            // KiB) and of a snapshot range; half of it makes the largest
            // apply transaction (about 1,000 objects), which is where the
            // gains of bigger transactions level off (a 1M-key catch-up:
            // same time with 64 MiB, 25 % slower with 8 MiB).
            max_bytes_in_flight: 16 << 20,
            // S3's ListObjectsV2 page maximum.
            page_size: 1000,
            poll_interval: Duration::from_secs(1),
            settle: Duration::ZERO,
            // One listing page: transactions of thousands of objects are
            // bounded by the byte budget instead.
            batch_objects: 1000,
            // One listing page (S3's maximum): one more LIST request per
            // poll round, and an object may land up to 1,000 objects late
            // (minutes of a busy database's log) and still be folded in.
            late_window: 1000,
            retention: Retention::default(),
            on_reexport: OnReexport::Stop,
            filter: crate::store::KeyFilter::default(),
        }
    }
}

/// Log objects up to this size are checked on the runtime's threads, larger
/// ones (and those spooled to a file) on the blocking pool: see
/// `Syncer::fetch_log`.
const INLINE_CHECK_BYTES: usize = 256 << 10;

/// Pruning deletes rows in a write transaction: once a minute keeps the
/// history bounded without taxing every round.
const PRUNE_EVERY: Duration = Duration::from_secs(60);

/// A re-export rewrites `differential` after its snapshots, so a changed
/// snapshot set is looked for whenever `differential` changed; this
/// catches one whose `differential` has not been rewritten yet, at the
/// cost of one listing of `snapshots/` per interval.
const SNAPSHOTS_CHECK_EVERY: Duration = Duration::from_secs(300);

/// What the engine knows of the export it follows: the version of
/// `differential` it last found unchanged, and when it last compared the
/// snapshot set with the recorded one.
#[derive(Debug, Default)]
struct ExportSeen {
    differential: Option<ObjectVersion>,
    snapshots_checked: Option<std::time::Instant>,
}

/// Result of one poll round.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RoundOutcome {
    /// Log objects consumed.
    pub objects: u64,
    /// Listed objects left for a later round by the settle guard.
    pub held_back: bool,
    /// The round consumed everything the bucket listed: its last listing
    /// page was not full and nothing was held back.
    pub listed_to_end: bool,
}

/// Drives one replica file from one source.
pub struct Syncer {
    source: Arc<Backup>,
    store: Arc<Mutex<Store>>,
    opts: SyncOptions,
    progress: Arc<Progress>,
    budget: Arc<Semaphore>,
    budget_kib: u32,
    /// The visible commit; receivers (watchers, readiness) wake on change.
    visible: watch::Sender<Option<Versionstamp>>,
    /// A copy of the store's state as of its last change, so readers of
    /// the state (readiness, status lines, the next round) never wait for
    /// the store lock, which an apply transaction holds for its duration.
    state: Mutex<SyncState>,
    /// What readiness and the watchdog read; the loop reports to it.
    health: Health,
    /// The poll interval in ms; atomic so a config reload can change it
    /// while the loop runs.
    poll_interval_ms: AtomicU64,
    /// See [`Syncer::check_export`].
    export: Mutex<ExportSeen>,
    /// Object times found ahead of the local clock (reported once each).
    clock: BucketClock,
    /// The late object last refused, counted once however many rounds
    /// find it again.
    late_refused: Mutex<Option<LogName>>,
}

impl Syncer {
    /// Prepares the engine, refusing at once a file built from another
    /// backup. A fresh file is bound to `source` only once its
    /// `differential` has been read (see [`Syncer::initial`]): a mistyped
    /// or unreachable source leaves it unbound.
    pub fn new(
        source: Arc<Backup>,
        mut store: Store,
        opts: SyncOptions,
    ) -> Result<Self, SyncError> {
        store.check_source(&source.identity())?;
        store.bind_filter(&opts.filter)?;
        let visible = watch::Sender::new(store.state().visible());
        metrics::opened(store.state());
        let state = Mutex::new(store.state().clone());
        let poll_ms = opts.poll_interval.as_millis().clamp(1, u64::MAX as u128) as u64;
        let budget_kib = (opts.max_bytes_in_flight / 1024).clamp(1, u32::MAX as u64 >> 4) as u32;
        Ok(Syncer {
            source,
            store: Arc::new(Mutex::new(store)),
            budget: Arc::new(Semaphore::new(budget_kib as usize)),
            budget_kib,
            opts,
            progress: Progress::new(),
            visible,
            state,
            health: Health::default(),
            poll_interval_ms: AtomicU64::new(poll_ms),
            export: Mutex::default(),
            clock: BucketClock::default(),
            late_refused: Mutex::default(),
        })
    }

    pub fn progress(&self) -> &Arc<Progress> {
        &self.progress
    }

    /// The engine's liveness: what readiness and the watchdog read.
    pub fn health(&self) -> &Health {
        &self.health
    }

    /// The backup the engine reads.
    pub(crate) fn source(&self) -> &Arc<Backup> {
        &self.source
    }

    /// The engine's tunables.
    pub(crate) fn options(&self) -> &SyncOptions {
        &self.opts
    }

    /// The store, once the engine is done with it (a rebuilt replica
    /// about to be copied in); `None` while someone else holds it.
    pub(crate) fn into_store(self) -> Option<Store> {
        Arc::try_unwrap(self.store)
            .ok()
            .map(|m| m.into_inner().expect("store lock"))
    }

    /// The store now holds another export (swapped in by a rebuild):
    /// forget what was seen of the old one and follow again.
    pub(crate) fn follow_anew(&self) {
        *self.export.lock().expect("export lock") = ExportSeen::default();
        self.health.set_stopped(None);
        self.health.set_rebuilding(None);
        let state = self.state();
        metrics::opened(&state);
        self.show(state.visible());
    }

    /// The configured poll interval.
    pub fn poll_interval(&self) -> Duration {
        Duration::from_millis(self.poll_interval_ms.load(Relaxed))
    }

    /// The pause after `failures` failed rounds in a row: the poll interval
    /// doubled per failure, at most 60 s.
    pub fn retry_pause(&self, failures: u32) -> Duration {
        (self.poll_interval() * (1 << failures.min(5))).min(Duration::from_secs(60))
    }

    /// The engine's one retry policy, for the initial load and the follow
    /// loop alike: `failures` failures in a row (this one, `e`, included)
    /// are counted, and the next attempt waits [`Syncer::retry_pause`].
    fn retry_after(&self, e: &SyncError, failures: u32) -> Duration {
        metrics::error(e.kind());
        self.retry_pause(failures)
    }

    /// Changes the poll interval from the next pause on (config reload).
    pub fn set_poll_interval(&self, interval: Duration) {
        self.poll_interval_ms.store(
            interval.as_millis().clamp(1, u64::MAX as u128) as u64,
            Relaxed,
        );
    }

    /// Subscribes to changes of the visible commit.
    pub fn subscribe(&self) -> watch::Receiver<Option<Versionstamp>> {
        self.visible.subscribe()
    }

    /// Wakes everyone watching the visible commit: it is now `visible`.
    pub(crate) fn show(&self, visible: Option<Versionstamp>) {
        self.visible.send_replace(visible);
    }

    /// A copy of the stored sync state as of the last store operation the
    /// engine ran; never waits for a transaction in progress.
    pub fn state(&self) -> SyncState {
        self.state.lock().expect("state lock").clone()
    }

    /// Runs `f` on the store under its lock, off the runtime, and refreshes
    /// the state copy from the store afterwards, whatever `f` did. Between
    /// two sync transactions, never inside one.
    pub(crate) async fn locked<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Store) -> T + Send + 'static,
    ) -> Result<T, String> {
        let store = self.store.clone();
        let (state, out) = tokio::task::spawn_blocking(move || {
            let mut s = store.lock().expect("store lock");
            let _held = crate::health::STORE_WORK.hold(); // for the watchdog
            let out = f(&mut s);
            (s.state().clone(), out)
        })
        .await
        .map_err(|e| e.to_string())?;
        *self.state.lock().expect("state lock") = state;
        Ok(out)
    }

    async fn with_store<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Store) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, SyncError> {
        let out = self
            .locked(move |s| f(s).map_err(|e| crate::store::explain(s.path(), e)))
            .await
            .map_err(SyncError::Task)?;
        out.map_err(|e| match e {
            // An object found corrupt while it was stored entry by entry.
            StoreError::Object(e) => SyncError::Format(e),
            e => SyncError::from(e),
        })
    }

    /// Reserves budget for an object of `size` bytes; objects larger than
    /// the whole budget take all of it (one at a time).
    async fn reserve(&self, size: u64) -> OwnedSemaphorePermit {
        let kib = size.div_ceil(1024).clamp(1, self.budget_kib as u64) as u32;
        self.budget
            .clone()
            .acquire_many_owned(kib)
            .await
            .expect("budget semaphore is never closed")
    }

    /// Downloads an object of `size` bytes with `fetch`: to a temporary
    /// file when it is larger than a quarter of the byte budget (a body in
    /// memory counts against the budget; one on disk costs a buffer), else
    /// to memory. Counts it.
    async fn fetch<F>(
        &self,
        kind: &str,
        size: u64,
        fetch: impl FnOnce(bool) -> F,
    ) -> Result<Body, SyncError>
    where
        F: std::future::Future<Output = Result<Body, SourceError>>,
    {
        let body = fetch(size > self.opts.max_bytes_in_flight / 4).await?;
        metrics::fetched(kind, body.len() as usize);
        self.progress.fetched(body.len() as usize);
        Ok(body)
    }

    /// [`Syncer::initial`], retrying failures that a retry may mend (see
    /// [`SyncError::is_permanent`]) after a growing pause.
    pub async fn initial_retrying(&self) -> Result<Versionstamp, SyncError> {
        let mut failures = 0u32;
        loop {
            match self.initial().await {
                Err(e) if !e.is_permanent() => {
                    failures += 1;
                    let pause = self.retry_after(&e, failures);
                    tracing::error!(error = %e, kind = e.kind(), retry_in = ?pause, "initial snapshot failed; retrying");
                    tokio::time::sleep(pause).await;
                }
                r => return r,
            }
        }
    }

    /// Brings the replica to its initial point, resuming whatever a previous
    /// run left. Returns the initial point.
    ///
    /// The load never finishes into a mix of two exports: the export is
    /// compared with the `differential` read at its start before the
    /// snapshot ranges are fetched, after they are loaded (or when one
    /// fails to download), and before each page of the log. A re-export
    /// fails the load with [`SyncError::Reexported`] under
    /// [`OnReexport::Stop`]; under [`OnReexport::Rebuild`] the file is
    /// emptied and the load starts again from the new export.
    pub async fn initial(&self) -> Result<Versionstamp, SyncError> {
        loop {
            match self.initial_once().await {
                Err(e @ SyncError::Reexported { .. })
                    if self.opts.on_reexport == OnReexport::Rebuild
                        && !self.state().initial_complete() =>
                {
                    tracing::warn!(error = %e, "the backup was re-exported during the initial load; starting it again from the new export");
                    self.restart_load().await?;
                }
                r => return r,
            }
        }
    }

    /// Forgets everything an unfinished initial load stored (see
    /// [`Syncer::initial`]).
    async fn restart_load(&self) -> Result<(), SyncError> {
        self.with_store(|s| s.reset()).await?;
        *self.export.lock().expect("export lock") = ExportSeen::default();
        self.health.set_stopped(None);
        Ok(())
    }

    async fn initial_once(&self) -> Result<Versionstamp, SyncError> {
        let state = self.state();
        if state.initial_complete() {
            return Ok(state.initial_point.expect("complete"));
        }
        let (dv, just_read) = match state.dv {
            Some(dv) if state.source.is_some() => (dv, false),
            _ => {
                // The differential read is what makes this the file's
                // backup: only now is the file bound to it.
                let dv = self.wait_for_differential().await?;
                let identity = self.source.identity();
                self.with_store(move |s| s.bind(&identity, dv)).await?;
                (dv, true)
            }
        };
        tracing::info!(%dv, "differential versionstamp");
        // Before the ranges are fetched and once they are all stored: a
        // range downloaded from another export than `dv`'s is never
        // followed by a complete load. A range that vanished mid-load is
        // most likely a re-export: that is the error to report. A
        // `differential` read just now (a fresh file: no ranges recorded to
        // compare with) is that comparison already.
        //
        // Against a remote store each request is a round trip, so the
        // independent ones go out at once: that comparison, the listing of
        // the ranges, and the first page of the log (listed before the
        // comparison that follows the load, so a re-export that replaced
        // `differential` before it was listed is seen before any of it is
        // applied, as for every page).
        let ranges = self.with_store(|s| s.snapshot_ranges()).await?;
        let list_ranges = ranges.as_ref().is_none_or(|r| r.iter().any(|r| !r.1));
        let cursor = state.cursor;
        let started = Utc::now();
        let (listing, first_page, ()) = tokio::try_join!(
            async {
                Ok::<_, SyncError>(match list_ranges {
                    true => Some(self.source.list_snapshots().await?),
                    false => None,
                })
            },
            async {
                Ok::<_, SyncError>(
                    self.source
                        .list_logs(cursor.as_ref(), self.opts.page_size)
                        .await?,
                )
            },
            async {
                match just_read {
                    true => Ok(()),
                    false => self.check_whole_export().await,
                }
            },
        )?;
        // The first page of the log downloads while the ranges are written
        // and the export compared once more; it is applied after both.
        let (downloaded, ranges_downloaded) = oneshot::channel();
        let load = async move {
            if let Err(e) = self.load_snapshot(ranges, listing, downloaded).await {
                self.check_whole_export().await?;
                return Err(e);
            }
            self.check_whole_export().await
        };
        let first_page = Page {
            listed: first_page,
            checked: true,
            started,
        };
        let first = self
            .consume_listed(
                Some(first_page),
                Some((load, async move {
                    let _ = ranges_downloaded.await;
                })),
            )
            .await;
        let mut first = Some(self.settle_round(first)?);
        loop {
            let round = match first.take() {
                Some(round) => round,
                None => self.round().await?,
            };
            let state = self.state();
            if let Some(p) = state.initial_point {
                tracing::info!(initial_point = %p, "initial snapshot complete");
                metrics::initial_complete();
                self.show(state.visible());
                return Ok(p);
            }
            if round.objects == 0 && !round.held_back {
                // The log holds no commit at or after DV: nothing was written
                // since the snapshot, so the state is the one at DV.
                match self.with_store(|s| s.complete_initial_at_dv()).await {
                    Ok(p) => {
                        tracing::info!(initial_point = %p, "initial snapshot complete (no commits after DV yet)");
                        metrics::initial_complete();
                        self.show(self.state().visible());
                        return Ok(p);
                    }
                    Err(SyncError::Store(StoreError::InitialIncomplete)) => {}
                    Err(e) => return Err(e),
                }
            }
            if round.objects == 0 {
                tokio::time::sleep(self.poll_interval()).await;
                self.health.alive();
            }
        }
    }

    async fn wait_for_differential(&self) -> Result<Versionstamp, SyncError> {
        let object = self.source.differential_name();
        let mut waited = Duration::ZERO;
        loop {
            // Its version is recorded: the export checks that follow the
            // first read compare with it instead of reading it again.
            match self.source.differential_if_changed(None).await? {
                Some(IfChanged::Changed { body, version }) => {
                    let dv = format::parse_differential(&object, &body)?;
                    let mut seen = self.export.lock().expect("export lock");
                    seen.differential = Some(version);
                    // Nothing recorded yet to compare the snapshot set with.
                    seen.snapshots_checked = Some(std::time::Instant::now());
                    return Ok(dv);
                }
                Some(IfChanged::Unchanged) => {
                    if let Some(body) = self.source.read_differential().await? {
                        return Ok(format::parse_differential(&object, &body)?);
                    }
                }
                None => {}
            }
            if waited.is_zero() {
                let (snaps, logs) =
                    tokio::try_join!(self.source.list_snapshots(), self.source.list_logs(None, 1))?;
                if snaps.is_empty() && logs.is_empty() {
                    return Err(SyncError::EmptySource(self.source.identity()));
                }
            }
            if waited.as_secs().is_multiple_of(60) {
                tracing::info!(
                    "waiting for {object}: the backup's initial export has not finished yet"
                );
            }
            let pause = self.poll_interval();
            tokio::time::sleep(pause).await;
            // Waiting for Deploy's first export is progress, not a hang.
            self.health.alive();
            waited += pause;
        }
    }

    /// Loads the snapshot ranges not loaded yet; `ranges` are those the
    /// file recorded (`None`: none yet), `listing` the bucket's, when it
    /// was listed already (it records the ranges and gives their sizes,
    /// for the byte budget).
    ///
    /// `downloaded` is dropped once every range is downloaded (or none is
    /// left to load), while they may still be being written: log objects
    /// may download from then on without taking bandwidth, connections or
    /// byte budget the ranges need.
    async fn load_snapshot(
        &self,
        ranges: Option<Vec<(SnapshotName, bool)>>,
        mut listing: Option<Vec<Listed<SnapshotName>>>,
        downloaded: oneshot::Sender<()>,
    ) -> Result<(), SyncError> {
        let ranges = match ranges {
            Some(r) => r,
            None => {
                let listed = match listing.take() {
                    Some(l) => l,
                    None => self.source.list_snapshots().await?,
                };
                let names: Vec<SnapshotName> = listed.iter().map(|l| l.name).collect();
                listing = Some(listed);
                self.with_store(move |s| s.record_snapshot_ranges(&names))
                    .await?;
                self.with_store(|s| s.snapshot_ranges())
                    .await?
                    .expect("just recorded")
            }
        };
        let total = ranges.len() as u64;
        let todo: Vec<SnapshotName> = ranges.iter().filter(|r| !r.1).map(|r| r.0).collect();
        self.progress.ranges(total, total - todo.len() as u64);
        if todo.is_empty() {
            return Ok(());
        }
        let listing = match listing {
            Some(l) => l,
            None => self.source.list_snapshots().await?,
        };
        let sizes: std::collections::HashMap<SnapshotName, u64> =
            listing.into_iter().map(|l| (l.name, l.size)).collect();
        tracing::info!(ranges = todo.len(), total, "loading snapshot ranges");
        let fetches = stream::iter(todo)
            .then(|name| {
                let size = sizes.get(&name).copied().unwrap_or(1 << 20);
                async move { (name, size, self.reserve(size).await) }
            })
            .map(|(name, size, permit)| async move {
                let body = self
                    .fetch("snapshot", size, |to_file| {
                        self.source.fetch_snapshot(&name, to_file)
                    })
                    .await?;
                Ok::<_, SyncError>((name, body, permit))
            })
            .buffered(self.opts.fetch_concurrency.max(1))
            .map(Some)
            .chain(stream::once(async move {
                drop(downloaded);
                None
            }))
            .filter_map(future::ready);
        overlapped(
            fetches,
            self.opts.fetch_concurrency,
            |mut ready| async move {
                while let Some(item) = ready.recv().await {
                    let (name, body, permit) = item?;
                    let len = body.len();
                    // Decoded entry by entry as it is written: a range may
                    // be far larger than memory.
                    let n = self
                        .with_store(move |s| {
                            let object = crate::backup::snapshot_key(&name);
                            let entries = format::SnapshotEntries::new(&object, body.payload());
                            s.load_snapshot_range(&name, entries)
                        })
                        .await?;
                    metrics::applied("snapshot", 1, len);
                    tracing::debug!(range = %name, keys = n, "snapshot range loaded");
                    self.health.alive();
                    drop(permit);
                    self.progress.range_loaded(n);
                }
                Ok(())
            },
        )
        .await
    }

    /// One poll round: consumes every log object listed after the cursor
    /// that is older than the round start minus the settle window, up to a
    /// gap in the log, each listed page once the backup was found to be
    /// still the export the replica was built from.
    ///
    /// A gap or a re-export stops the replica where it is (readiness says
    /// why) until a round succeeds: after a gap the cursor stays on the
    /// last object before it, so the next round lists from there and finds
    /// the missing object when it lands.
    pub async fn round(&self) -> Result<RoundOutcome, SyncError> {
        let r = self.listed_round().await;
        self.settle_round(r)
    }

    /// [`Syncer::round`] without its report to readiness.
    ///
    /// Each request to a remote store costs a round trip, so the ones that
    /// do not depend on each other go out at once: the late window's
    /// listing, the listing after the cursor and the export comparison. A
    /// round that finds nothing new costs one round trip; one that finds
    /// objects compares the export again after its listing, while they
    /// download (see [`Syncer::consume_listed`]), so it costs two.
    async fn listed_round(&self) -> Result<RoundOutcome, SyncError> {
        let cursor = self.state().cursor;
        let started = Utc::now();
        let (late, listed, ()) = tokio::try_join!(
            self.list_late(),
            async {
                Ok::<_, SyncError>(
                    self.source
                        .list_logs(cursor.as_ref(), self.opts.page_size)
                        .await?,
                )
            },
            self.check_export(),
        )?;
        // Late objects first: one that cannot be folded in stops the
        // replica before anything newer is applied, and a repair walks
        // back a shorter way.
        let late = self.fold_in_late(late).await?;
        // A repair folds objects in behind the cursor, which stays; the
        // listing after it is then still the next page.
        let first = (self.state().cursor == cursor).then_some(Page {
            listed,
            checked: false,
            started,
        });
        let mut r = self
            .consume_listed(first, None::<(future::Ready<_>, future::Ready<()>)>)
            .await?;
        r.objects += late;
        Ok(r)
    }

    /// Reports a round's outcome to readiness: an error that stops the
    /// replica from following says so until a round succeeds.
    fn settle_round(&self, r: Result<RoundOutcome, SyncError>) -> Result<RoundOutcome, SyncError> {
        match &r {
            Ok(_) => self.health.set_stopped(None),
            Err(e) if e.stops_following() => self.health.set_stopped(Some(e.to_string())),
            Err(_) => {}
        }
        r
    }

    /// Compares the bucket's export with the one the replica was built
    /// from: `differential` by a conditional request per listed page (no
    /// body while unchanged), the snapshot set when `differential` changed
    /// and every [`SNAPSHOTS_CHECK_EVERY`].
    async fn check_export(&self) -> Result<(), SyncError> {
        let Some(dv) = self.state().dv else {
            return Ok(());
        };
        let known = self
            .export
            .lock()
            .expect("export lock")
            .differential
            .clone();
        let name = self.source.differential_name();
        let time_due = self
            .export
            .lock()
            .expect("export lock")
            .snapshots_checked
            .is_none_or(|t| t.elapsed() >= SNAPSHOTS_CHECK_EVERY);
        // Both requests at once when both are due (one round trip).
        let (answer, snapshots) =
            tokio::join!(self.source.differential_if_changed(known.as_ref()), async {
                match time_due {
                    true => Some(self.snapshots_changed().await),
                    false => None,
                }
            });
        let changed = match answer? {
            None => return Err(self.reexported(format!("{name} vanished")).await),
            Some(IfChanged::Unchanged) => None,
            Some(IfChanged::Changed { body, version }) => {
                let now = format::parse_differential(&name, &body)?;
                if now != dv {
                    return Err(self
                        .reexported(format!("{name} changed from {dv} to {now}"))
                        .await);
                }
                Some(version)
            }
        };
        let due = changed.is_some() || time_due;
        let snapshots = match snapshots {
            Some(compared) => Some(compared?),
            None if due => Some(self.snapshots_changed().await?),
            None => None,
        };
        if let Some(Some(what)) = snapshots {
            return Err(self.reexported(what).await);
        }
        let mut seen = self.export.lock().expect("export lock");
        if due {
            seen.snapshots_checked = Some(std::time::Instant::now());
        }
        if let Some(v) = changed {
            seen.differential = Some(v);
        }
        Ok(())
    }

    /// [`Syncer::check_export`] with the snapshot set compared now, due or
    /// not: what the initial load relies on.
    async fn check_whole_export(&self) -> Result<(), SyncError> {
        self.export.lock().expect("export lock").snapshots_checked = None;
        self.check_export().await
    }

    /// How the listed snapshot ranges differ from those the replica
    /// recorded for its initial load; `None` when they are the same (or
    /// none were recorded yet).
    async fn snapshots_changed(&self) -> Result<Option<String>, SyncError> {
        let Some(recorded) = self.with_store(|s| s.snapshot_ranges()).await? else {
            return Ok(None);
        };
        let recorded: std::collections::BTreeSet<SnapshotName> =
            recorded.into_iter().map(|r| r.0).collect();
        let listed: std::collections::BTreeSet<SnapshotName> = self
            .source
            .list_snapshots()
            .await?
            .into_iter()
            .map(|l| l.name)
            .collect();
        if recorded == listed {
            return Ok(None);
        }
        let gone = recorded.difference(&listed).next();
        let new = listed.difference(&recorded).next();
        let example = match (gone, new) {
            (Some(g), _) => format!("{} is gone", crate::backup::snapshot_key(g)),
            (None, Some(n)) => format!("{} is new", crate::backup::snapshot_key(n)),
            (None, None) => unreachable!("the sets differ"),
        };
        Ok(Some(format!(
            "the snapshot set changed ({} ranges recorded, {} listed; {example})",
            recorded.len(),
            listed.len()
        )))
    }

    /// The error for a re-exported backup (the follow loop logs it).
    async fn reexported(&self, what: String) -> SyncError {
        let db = self
            .locked(|s| s.path().display().to_string())
            .await
            .unwrap_or_else(|_| "the replica file".into());
        SyncError::Reexported {
            what,
            backup: self.source.identity(),
            db,
        }
    }

    /// Lists and consumes log objects page after page, from `first` when
    /// that page was listed already (see [`Syncer::round`]).
    ///
    /// A page is applied only once the export was compared after it was
    /// listed: that comparison runs while the page downloads. While a full
    /// page is applied, the next one is listed (and the export compared
    /// after it), so a catch-up pays no round trip between two pages.
    ///
    /// `before_first`: work the first page's objects are applied after
    /// (the initial load of the snapshot), and the moment they may start
    /// downloading.
    async fn consume_listed(
        &self,
        first: Option<Page>,
        before_first: Option<(
            impl std::future::Future<Output = Result<(), SyncError>>,
            impl std::future::Future<Output = ()>,
        )>,
    ) -> Result<RoundOutcome, SyncError> {
        let started = first.as_ref().map_or_else(Utc::now, |p| p.started);
        let (mut before, mut start) = match before_first {
            Some((gate, start)) => (Some(gate), Some(start)),
            None => (None, None),
        };
        let page_size = self.opts.page_size;
        let mut out = RoundOutcome::default();
        metrics::poll_round();
        let mut next = first;
        loop {
            let cursor = self.state().cursor;
            let Page {
                listed, checked, ..
            } = match next.take() {
                Some(page) => page,
                None => Page {
                    listed: self.source.list_logs(cursor.as_ref(), page_size).await?,
                    checked: false,
                    started,
                },
            };
            self.health.alive();
            let full_page = listed.len() >= page_size;
            let ready: Vec<Listed<LogName>> = listed
                .iter()
                .take_while(|l| {
                    self.clock
                        .settled(&l.name, l.last_modified, started, self.opts.settle)
                })
                .cloned()
                .collect();
            if ready.len() < listed.len() {
                out.held_back = true;
            }
            metrics::objects_behind(listed.len());
            let gap = find_gap(cursor, &ready);
            let ready = match &gap {
                Some((i, _)) => ready[..*i].to_vec(),
                None => ready,
            };
            if ready.is_empty() && gap.is_none() {
                if let Some(before) = before.take() {
                    before.await?;
                }
                out.listed_to_end = !full_page && !out.held_back;
                break;
            }
            let n_ready = ready.len();
            let before = before.take();
            let start = start.take();
            // This page is consumed to its end: the next one follows it.
            let after = (full_page && !out.held_back && gap.is_none())
                .then(|| ready.last().map(|l| l.name))
                .flatten();
            let compared = async {
                if let Some(before) = before {
                    before.await?;
                }
                match checked {
                    true => Ok(()),
                    false => self.check_export().await,
                }
            };
            let start = async {
                if let Some(start) = start {
                    start.await;
                }
            };
            let prefetch = async {
                let Some(after) = after else {
                    return Ok(None);
                };
                let listed = self.source.list_logs(Some(&after), page_size).await?;
                self.check_export().await?;
                Ok::<_, SyncError>(Some(listed))
            };
            let (consumed, prefetched) =
                tokio::join!(self.consume_logs(ready, start, compared), prefetch);
            out.objects += consumed?;
            self.bound_consumed().await?;
            if let Some((i, before)) = gap {
                let after = &listed[i].name;
                return Err(SyncError::LogGap {
                    before: self.source.describe_log(&before),
                    after: self.source.describe_log(after),
                    commit: before.last.versionstamp(),
                    next: after.first.versionstamp(),
                });
            }
            // Each page applied counts for readiness, so a long catch-up
            // round does not look like a stuck one; a page that fails to
            // apply (a corrupt object) does not.
            self.health.round_ok();
            metrics::objects_behind(listed.len() - n_ready);
            if !full_page || out.held_back {
                out.listed_to_end = !full_page && !out.held_back;
                break;
            }
            next = prefetched?
                .filter(|_| self.state().cursor == after)
                .map(|listed| Page {
                    listed,
                    checked: true,
                    started,
                });
        }
        self.health.round_ok();
        self.health.set_listed_to_end(out.listed_to_end);
        Ok(out)
    }

    /// Keeps the record of consumed log objects a little larger than the
    /// late window (see [`Store::trim_consumed`]), page after page, so the
    /// replay of a whole bucket does not grow it either.
    async fn bound_consumed(&self) -> Result<(), SyncError> {
        let window = self.opts.late_window;
        if window > 0 {
            self.with_store(move |s| s.trim_consumed(window)).await?;
        }
        Ok(())
    }

    /// Lists the trailing window of `late_window` log objects behind the
    /// cursor again and returns those never consumed (with their sizes):
    /// objects that became visible after objects whose names sort after
    /// theirs (concurrent uploads, a slow bucket replication, a copy tool
    /// writing in another order), which listing from the cursor never shows
    /// (see `store::late`). Late objects younger than the settle window
    /// wait for a later round, like new ones.
    async fn list_late(&self) -> Result<Vec<(LogName, u64)>, SyncError> {
        let window = self.opts.late_window;
        let state = self.state();
        let Some(cursor) = state
            .cursor
            .filter(|_| window > 0 && state.initial_complete())
        else {
            return Ok(Vec::new());
        };
        let started = Utc::now();
        let seen = self.with_store(move |s| s.consumed_window(window)).await?;
        let page = self.opts.page_size;
        let cursor_key = cursor.to_string();
        let budget = (self.opts.max_bytes_in_flight / 2).max(1);
        let (mut late, mut bytes): (Vec<(LogName, u64)>, u64) = (Vec::new(), 0);
        let mut after = seen.start_after;
        'pages: loop {
            let listed = self.source.list_logs(after.as_ref(), page).await?;
            let full_page = listed.len() >= page;
            for l in listed {
                if l.name.to_string() >= cursor_key {
                    break 'pages;
                }
                after = Some(l.name);
                let settled =
                    self.clock
                        .settled(&l.name, l.last_modified, started, self.opts.settle);
                // One transaction takes about half the byte budget at most
                // (at least one object, and never half a commit); the rest
                // waits for the next round.
                let room = match late.last() {
                    None => true,
                    Some((prev, _)) => bytes < budget || !prev.last.is_commit_end(),
                };
                if seen.is_late(&l.name) && settled && room {
                    bytes += l.size;
                    late.push((l.name, l.size));
                }
            }
            if !full_page {
                break;
            }
        }
        Ok(late)
    }

    /// Folds in the late objects `late` found by [`Syncer::list_late`].
    /// Returns the objects folded in.
    async fn fold_in_late(&self, late: Vec<(LogName, u64)>) -> Result<u64, SyncError> {
        if late.is_empty() {
            return Ok(0);
        }
        // A re-exported backup's objects are not late objects of this one.
        self.check_export().await?;
        let mut batches = Vec::with_capacity(late.len());
        for (name, size) in late {
            batches.push(self.fetch_log(name, size).await?);
        }
        let outcome = self.with_store(move |s| s.repair_late(batches)).await?;
        self.health.alive();
        match outcome {
            LateOutcome::AlreadyConsumed => Ok(0),
            LateOutcome::Repaired {
                objects,
                visible,
                undone,
                redone,
            } => {
                for o in &objects {
                    metrics::late_object("repaired");
                    tracing::warn!(
                        object = %self.source.describe_log(o),
                        undone, redone, %visible,
                        "a log object became visible late (after later objects were applied); \
                         folded it into the history as if it had come in order"
                    );
                }
                // Watchers wake even when the visible commit is the same:
                // its contents may have changed.
                self.show(self.state().visible());
                Ok(objects.len() as u64)
            }
            LateOutcome::Unrepairable { object, why } => {
                if self.late_refused.lock().expect("late lock").replace(object) != Some(object) {
                    metrics::late_object("unrepairable");
                }
                let db = self
                    .locked(|s| s.path().display().to_string())
                    .await
                    .map_err(SyncError::Task)?;
                Err(SyncError::LateObject {
                    object: self.source.describe_log(&object),
                    why,
                    db,
                })
            }
            LateOutcome::Unfinished {
                object,
                commit,
                next,
            } => Err(SyncError::LateGap {
                object: self.source.describe_log(&object),
                commit,
                next,
            }),
        }
    }

    /// Downloads the log object `name` of `size` bytes and checks it whole
    /// before it is stored, so that a corrupt object stops the batch after
    /// the objects before it; it is decoded again, entry by entry, as it is
    /// written (its decoded form is many times its size).
    async fn fetch_log(&self, name: LogName, size: u64) -> Result<FetchedLog, SyncError> {
        let body = self
            .fetch("log", size, |to_file| self.source.fetch_log(&name, to_file))
            .await?;
        // A small object in memory is checked where it landed (tens of
        // microseconds): handing each of 64 downloads finishing together
        // to the blocking pool would start a thread per download, each
        // with its stack and buffers (peak memory), for no gain.
        let (log, body) = match &body {
            Body::Bytes(b) if b.len() <= INLINE_CHECK_BYTES => {
                (format::check_log(&name, body.payload()), body)
            }
            _ => tokio::task::spawn_blocking(move || {
                (format::check_log(&name, body.payload()), body)
            })
            .await
            .map_err(|e| SyncError::Task(e.to_string()))?,
        };
        let log = log?;
        self.clock.check_commit_time(&name, log.timestamp_ms);
        Ok(FetchedLog {
            name,
            object: crate::backup::log_key(&name),
            summary: log,
            body,
        })
    }

    /// Downloads, decodes and applies `objects` in order, in transactions of
    /// up to `batch_objects` objects or half the byte budget. Objects before
    /// a failing one are kept.
    ///
    /// Nothing is applied before `compared` (the export comparison that
    /// follows the listing of `objects`) succeeds; the downloads start once
    /// `start` is ready.
    async fn consume_logs(
        &self,
        objects: Vec<Listed<LogName>>,
        start: impl std::future::Future<Output = ()>,
        compared: impl std::future::Future<Output = Result<(), SyncError>>,
    ) -> Result<u64, SyncError> {
        let objects = stream::once(async move {
            start.await;
            stream::iter(objects)
        })
        .flatten();
        let fetches = objects
            .then(|l| async move {
                let permit = self.reserve(l.size).await;
                (l.name, l.size, permit)
            })
            .map(|(name, size, permit)| async move {
                Ok::<_, SyncError>((self.fetch_log(name, size).await?, permit))
            })
            .buffered(self.opts.fetch_concurrency.max(1));
        let batch_objects = self.opts.batch_objects.max(1);
        // Half the byte budget: the other half keeps downloads going while
        // a full batch is written (a batch holding the whole budget would
        // wait for downloads that wait for it).
        let batch_bytes = (self.opts.max_bytes_in_flight / 2).max(1);
        overlapped(
            fetches,
            self.opts.fetch_concurrency,
            |mut ready| async move {
                compared.await?;
                let mut consumed = 0;
                // A transaction takes objects until it holds `batch_objects` of
                // them or half the byte budget, or the listing ends. A write
                // transaction costs about the same whether it changes 100 or
                // 10,000 rows of one B-tree page region (each touched page is
                // written once per commit), so a catch-up must not pay a commit
                // per object; a replica that keeps up lists a few objects per
                // round, which then go in at once without waiting.
                let mut next = ready.recv().await;
                while next.is_some() {
                    let mut batches: Vec<FetchedLog> = Vec::new();
                    let mut permits = Vec::new();
                    let mut bytes = 0u64;
                    let mut failure = None;
                    while let Some(item) = next.take() {
                        match item {
                            Ok((b, p)) => {
                                bytes += b.body.len();
                                batches.push(b);
                                permits.push(p);
                            }
                            Err(e) => {
                                failure = Some(e);
                                break;
                            }
                        }
                        if batches.len() >= batch_objects || bytes >= batch_bytes {
                            break;
                        }
                        next = ready.recv().await;
                    }
                    let n = batches.len() as u64;
                    let mutations: u64 = batches.iter().map(|b| b.summary.entries).sum();
                    if n > 0 {
                        let timer = metrics::apply_started();
                        let outcome = self.with_store(move |s| s.apply_logs(batches)).await?;
                        drop(timer);
                        self.health.alive();
                        drop(permits);
                        metrics::logs_applied(n, bytes, mutations, &outcome);
                        tracing::debug!(
                            objects = n,
                            mutations,
                            applied = outcome.applied,
                            deferred = outcome.deferred,
                            "log batch stored"
                        );
                        consumed += n;
                        self.progress.logs_applied(n, mutations);
                        if let Some(v) = outcome.visible {
                            self.show(Some(v));
                        }
                        if let Some(p) = outcome.reached_initial {
                            tracing::debug!(initial_point = %p, "logs reached the initial point");
                        }
                    }
                    if let Some(e) = failure {
                        return Err(e);
                    }
                    next = ready.recv().await;
                }
                Ok(consumed)
            },
        )
        .await
    }

    /// Runs rounds until one finds nothing new: the newest point the bucket
    /// holds right now.
    pub async fn catch_up(&self) -> Result<(), SyncError> {
        // A round that just listed the bucket to its end (such as the one
        // that completed the initial snapshot) has reached the newest point;
        // listing again at once would only find what landed in between.
        if !self.health.take_listed_to_end() {
            loop {
                let r = self.round().await?;
                if r.objects == 0 || r.listed_to_end {
                    break;
                }
            }
        }
        self.prune().await
    }

    /// Applies the retention policy.
    pub async fn prune(&self) -> Result<(), SyncError> {
        let retention = self.opts.retention;
        if retention.is_unlimited() {
            return Ok(());
        }
        let removed = self.with_store(move |s| s.prune_history(retention)).await?;
        if removed > 0 {
            tracing::info!(removed, "pruned recoverable points outside the retention");
        }
        Ok(())
    }

    /// Follows the bucket until `shutdown` resolves: a round every poll
    /// interval (up to 10 % shorter at random, so replicas spread their
    /// requests), counted from the start of the previous round. A
    /// failed round is logged and retried after a growing pause. A
    /// re-exported backup under [`OnReexport::Rebuild`] is rebuilt and
    /// swapped in (see [`crate::rebuild`]) before following goes on.
    pub async fn follow(&self, shutdown: impl std::future::Future<Output = ()>) {
        let mut shutdown = std::pin::pin!(shutdown);
        let mut failures = 0u32;
        let mut last_prune = std::time::Instant::now();
        loop {
            if last_prune.elapsed() >= PRUNE_EVERY {
                last_prune = std::time::Instant::now();
                if let Err(e) = self.prune().await {
                    tracing::error!(error = %e, "pruning history failed");
                }
            }
            // A round is a series of transactions, each complete in itself:
            // stopping between two of them loses nothing.
            let round_started = tokio::time::Instant::now();
            let round = tokio::select! {
                r = self.round() => r,
                _ = &mut shutdown => return,
            };
            let pause = match round {
                Ok(r) => {
                    failures = 0;
                    self.health.round_ended(None);
                    if r.objects > 0 {
                        Duration::ZERO
                    } else {
                        // Rounds start one interval apart: the time a round
                        // took (its round trips to the store) is not added
                        // to the interval, so an object waits at most one
                        // interval before a round lists it. A store slower
                        // than the interval still gets a tenth of it off.
                        let interval = self.poll_interval();
                        jitter(interval)
                            .saturating_sub(round_started.elapsed())
                            .max(interval / 10)
                    }
                }
                Err(e @ SyncError::Reexported { .. })
                    if self.opts.on_reexport == OnReexport::Rebuild =>
                {
                    metrics::error(e.kind());
                    tracing::warn!(error = %e, "rebuilding the replica from the new export");
                    let rebuilt = tokio::select! {
                        r = crate::rebuild::rebuild(self) => r,
                        _ = &mut shutdown => return,
                    };
                    match rebuilt {
                        Ok(()) => {
                            failures = 0;
                            self.health.round_ended(None);
                            Duration::ZERO
                        }
                        Err(e) => {
                            failures += 1;
                            tracing::error!(error = %e, kind = e.kind(), "rebuild failed");
                            self.health.round_ended(Some(e.to_string()));
                            self.retry_after(&e, failures)
                        }
                    }
                }
                Err(e) => {
                    failures += 1;
                    let pause = self.retry_after(&e, failures);
                    tracing::error!(error = %e, kind = e.kind(), "sync round failed");
                    self.health.round_ended(Some(e.to_string()));
                    pause
                }
            };
            self.health.alive();
            // The pause ticks the heartbeat so a long backoff is not taken
            // for a stuck loop.
            let until = tokio::time::Instant::now() + pause;
            loop {
                let step = until
                    .saturating_duration_since(tokio::time::Instant::now())
                    .min(Duration::from_secs(1));
                if step.is_zero() {
                    break;
                }
                tokio::select! {
                    _ = &mut shutdown => return,
                    _ = tokio::time::sleep(step) => self.health.alive(),
                }
            }
            if futures::FutureExt::now_or_never(&mut shutdown).is_some() {
                return;
            }
        }
    }
}

/// A page of the log listed after the cursor.
struct Page {
    listed: Vec<Listed<LogName>>,
    /// The export was compared with the replica's after this listing.
    checked: bool,
    /// When the round that listed it started (for the settle window).
    started: chrono::DateTime<Utc>,
}

/// A downloaded log object, checked whole ([`format::check_log`]) and
/// decoded again entry by entry as it is stored.
struct FetchedLog {
    name: LogName,
    object: String,
    summary: format::LogSummary,
    body: Body,
}

impl LogObject for FetchedLog {
    fn name(&self) -> LogName {
        self.name
    }
    fn timestamp_ms(&self) -> i64 {
        self.summary.timestamp_ms
    }
    fn entries(&self) -> Box<dyn Iterator<Item = Result<format::LogEntry, FormatError>> + '_> {
        Box::new(format::LogEntries::new(
            &self.name,
            &self.object,
            self.body.payload(),
        ))
    }
}

/// The first of `listed` (consumed in order after `prev`) that starts a
/// commit other than the one its predecessor ends inside: its index and
/// that predecessor. Names carry their objects' first and last stamps, so
/// a gap is found before anything is downloaded. (A gap that falls on a
/// commit boundary cannot be seen from stamps, which are not dense.)
fn find_gap(prev: Option<LogName>, listed: &[Listed<LogName>]) -> Option<(usize, LogName)> {
    let mut prev = prev;
    for (i, l) in listed.iter().enumerate() {
        if let Some(p) = prev {
            if !p.last.is_commit_end() && l.name.first.versionstamp() != p.last.versionstamp() {
                return Some((i, p));
            }
        }
        prev = Some(l.name);
    }
    None
}

/// `d` shortened by up to 10 % at random, so replicas started together
/// spread their requests; never longer, so the interval bounds the lag.
fn jitter(d: Duration) -> Duration {
    use rand::Rng;
    let f: f64 = rand::rng().random_range(0.9..=1.0);
    d.mul_f64(f)
}

/// Runs the download stream `items` ahead of `consume`, which receives its
/// items in order through a channel of `depth` slots. Polling a stream only
/// from the loop that applies it would pause every download during each
/// transaction; here downloads go on while a transaction is written, and
/// stop (dropped) as soon as `consume` returns, e.g. on an error.
async fn overlapped<T, R, F, Fut>(items: impl Stream<Item = T>, depth: usize, consume: F) -> R
where
    F: FnOnce(mpsc::Receiver<T>) -> Fut,
    Fut: std::future::Future<Output = R>,
{
    let (tx, rx) = mpsc::channel(depth.max(1));
    let produce = async move {
        let mut items = std::pin::pin!(items);
        while let Some(item) = items.next().await {
            if tx.send(item).await.is_err() {
                break;
            }
        }
    };
    let produce = std::pin::pin!(produce);
    let consume = std::pin::pin!(consume(rx));
    match future::select(produce, consume).await {
        Either::Left(((), consume)) => consume.await,
        Either::Right((r, _)) => r,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The poll interval bounds the lag: the jitter that spreads replicas
    /// may shorten it, never lengthen it.
    #[test]
    fn jitter_never_lengthens_the_interval() {
        let d = Duration::from_secs(1);
        let pauses: Vec<Duration> = (0..1000).map(|_| jitter(d)).collect();
        assert!(pauses.iter().all(|p| *p <= d), "a pause longer than {d:?}");
        assert!(
            pauses.iter().all(|p| *p >= d.mul_f64(0.9)),
            "a pause under 90 % of {d:?}"
        );
        assert!(pauses.iter().any(|p| *p < d.mul_f64(0.95)), "no jitter");
    }
}

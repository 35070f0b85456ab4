//! Progress of a sync, shared between the engine (which counts) and whoever
//! reports it: a progress bar on a terminal, periodic log lines otherwise.

use std::io::IsTerminal;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Counters the sync engine bumps as it goes. Plain atomics: they are read
/// by reporters and metrics without taking any lock on the hot path.
#[derive(Debug, Default)]
pub struct Progress {
    /// Snapshot ranges in the initial snapshot.
    pub ranges_total: AtomicU64,
    /// Snapshot ranges already in the replica.
    pub ranges_loaded: AtomicU64,
    /// Log objects applied or stored.
    pub log_objects: AtomicU64,
    /// Log entries (mutations) applied or stored.
    pub mutations: AtomicU64,
    /// Bytes downloaded, snapshots and logs.
    pub bytes: AtomicU64,
    /// Keys written by the snapshot load.
    pub snapshot_keys: AtomicU64,
}

impl Progress {
    pub fn new() -> Arc<Self> {
        Arc::new(Progress::default())
    }

    /// An object of `bytes` bytes was downloaded.
    pub(crate) fn fetched(&self, bytes: usize) {
        self.bytes.fetch_add(bytes as u64, Relaxed);
    }

    /// The initial snapshot has `total` ranges, `loaded` of them stored.
    pub(crate) fn ranges(&self, total: u64, loaded: u64) {
        self.ranges_total.store(total, Relaxed);
        self.ranges_loaded.store(loaded, Relaxed);
    }

    /// One snapshot range of `keys` keys was stored.
    pub(crate) fn range_loaded(&self, keys: u64) {
        self.ranges_loaded.fetch_add(1, Relaxed);
        self.snapshot_keys.fetch_add(keys, Relaxed);
    }

    /// `objects` log objects holding `mutations` entries were stored.
    pub(crate) fn logs_applied(&self, objects: u64, mutations: u64) {
        self.log_objects.fetch_add(objects, Relaxed);
        self.mutations.fetch_add(mutations, Relaxed);
    }

    fn line(&self, elapsed: Duration) -> String {
        let bytes = self.bytes.load(Relaxed);
        let secs = elapsed.as_secs_f64().max(0.001);
        format!(
            "snapshot ranges {}/{}, {} keys; log objects {}, mutations {}; {:.1} MiB at {:.1} MiB/s",
            self.ranges_loaded.load(Relaxed),
            self.ranges_total.load(Relaxed),
            self.snapshot_keys.load(Relaxed),
            self.log_objects.load(Relaxed),
            self.mutations.load(Relaxed),
            bytes as f64 / 1048576.0,
            bytes as f64 / 1048576.0 / secs,
        )
    }

    /// Reports progress on stderr until the returned guard is finished or
    /// dropped: a spinner line on a terminal, an `info` log line every
    /// `every` otherwise.
    pub fn report(self: &Arc<Self>, every: Duration) -> ReportGuard {
        let me = self.clone();
        let start = Instant::now();
        let (handle, bar) = if std::io::stderr().is_terminal() {
            let bar = indicatif::ProgressBar::new_spinner();
            bar.enable_steady_tick(Duration::from_millis(200));
            let shown = bar.clone();
            let handle = tokio::spawn(async move {
                loop {
                    shown.set_message(me.line(start.elapsed()));
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            });
            (handle, Some(bar))
        } else {
            let handle = tokio::spawn(async move {
                loop {
                    tokio::time::sleep(every).await;
                    tracing::info!("sync progress: {}", me.line(start.elapsed()));
                }
            });
            (handle, None)
        };
        ReportGuard {
            handle,
            bar,
            progress: self.clone(),
            start,
        }
    }
}

/// Stops the reporter when dropped, clearing the progress line before
/// anything else is logged; [`ReportGuard::finish`] also logs a summary.
pub struct ReportGuard {
    handle: tokio::task::JoinHandle<()>,
    /// The spinner on a terminal. Cleared here, synchronously: an aborted
    /// task is dropped later, after the caller's next log line.
    bar: Option<indicatif::ProgressBar>,
    progress: Arc<Progress>,
    start: Instant,
}

impl ReportGuard {
    /// The sync reached its goal: stops the reporter and logs the summary.
    /// A sync that failed or was stopped just drops the guard, so that its
    /// error is not preceded by a "finished" line.
    pub fn finish(self) {
        let (elapsed, line) = (
            self.start.elapsed(),
            self.progress.line(self.start.elapsed()),
        );
        drop(self);
        tracing::info!("sync finished in {:.1}s: {line}", elapsed.as_secs_f64());
    }
}

impl Drop for ReportGuard {
    fn drop(&mut self) {
        self.handle.abort();
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
    }
}

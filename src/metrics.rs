//! Prometheus metrics: one registry for the process, served at `/metrics` on
//! the admin listener.
//!
//! Each thing that happens has one function here that both updates the
//! metric and (where useful) logs, so logs and metrics never disagree.
//! Names follow Prometheus conventions (`*_total`, `*_seconds`, `*_bytes`).

use std::sync::LazyLock;

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts,
    Registry, TextEncoder,
};

use crate::format::Versionstamp;
use crate::store::pitr::CheckoutOutcome;
use crate::store::{ApplyOutcome, SyncState};

/// All of kvreplica's metrics.
pub struct Metrics {
    registry: Registry,
    /// Commit version (first 8 bytes of the versionstamp) of the visible state.
    pub visible_version: IntGauge,
    /// Commit version of the newest complete commit fetched.
    pub latest_version: IntGauge,
    /// Commit time (epoch ms) of the newest applied or fetched point.
    pub latest_commit_ms: IntGauge,
    /// Commit time (epoch ms) of the visible point.
    pub visible_commit_ms: IntGauge,
    /// Log objects listed but not consumed yet at the end of the last round.
    pub objects_behind: IntGauge,
    pub objects_fetched: IntCounterVec,
    pub bytes_fetched: IntCounter,
    /// Objects whose contents were committed to the replica, by kind.
    pub objects_applied: IntCounterVec,
    /// Bytes of the objects committed to the replica.
    pub bytes_applied: IntCounter,
    pub mutations_applied: IntCounter,
    pub poll_rounds: IntCounter,
    pub errors: IntCounterVec,
    pub apply_seconds: Histogram,
    pub requests: IntCounterVec,
    pub request_seconds: HistogramVec,
    pub watch_streams: IntGauge,
    pub checkouts: IntCounter,
    /// 1 once the initial snapshot is complete.
    pub initial_complete: IntGauge,
    /// 1 while pinned by a checkout.
    pub pinned: IntGauge,
    /// Objects with a time too far ahead of the local clock to be used,
    /// by which time (`last_modified`, `commit_time`).
    pub future_object_times: IntCounterVec,
    /// Log objects found late (listed after objects whose names sort after
    /// theirs were consumed), by outcome (`repaired`, `unrepairable`).
    pub late_objects: IntCounterVec,
}

fn reg<T: prometheus::core::Collector + Clone + 'static>(r: &Registry, m: T) -> T {
    r.register(Box::new(m.clone()))
        .expect("metric names are unique");
    m
}

impl Metrics {
    fn new() -> Self {
        let r = Registry::new_custom(Some("kvreplica".into()), None).expect("valid prefix");
        // Apply batches take from well under a millisecond to seconds for a
        // full page of 1000 objects; 100 µs … ~6.5 s in powers of 4.
        let apply_buckets = prometheus::exponential_buckets(0.0001, 4.0, 9).expect("buckets");
        // KV Connect reads: 50 µs … ~3 s.
        let req_buckets = prometheus::exponential_buckets(0.00005, 4.0, 9).expect("buckets");
        Metrics {
            visible_version: reg(
                &r,
                IntGauge::new("visible_version", "Commit version of the visible state").unwrap(),
            ),
            latest_version: reg(
                &r,
                IntGauge::new(
                    "latest_version",
                    "Commit version of the newest complete commit fetched",
                )
                .unwrap(),
            ),
            latest_commit_ms: reg(
                &r,
                IntGauge::new(
                    "latest_commit_timestamp_ms",
                    "Commit time (epoch ms) of the newest complete commit fetched",
                )
                .unwrap(),
            ),
            visible_commit_ms: reg(
                &r,
                IntGauge::new(
                    "visible_commit_timestamp_ms",
                    "Commit time (epoch ms) of the visible state",
                )
                .unwrap(),
            ),
            objects_behind: reg(
                &r,
                IntGauge::new("objects_behind", "Log objects listed but not yet consumed").unwrap(),
            ),
            objects_fetched: reg(
                &r,
                IntCounterVec::new(
                    Opts::new("objects_fetched_total", "Objects downloaded, by kind"),
                    &["kind"],
                )
                .unwrap(),
            ),
            bytes_fetched: reg(
                &r,
                IntCounter::new("bytes_fetched_total", "Bytes downloaded").unwrap(),
            ),
            objects_applied: reg(
                &r,
                IntCounterVec::new(
                    Opts::new(
                        "objects_applied_total",
                        "Objects whose contents were committed to the replica, by kind",
                    ),
                    &["kind"],
                )
                .unwrap(),
            ),
            bytes_applied: reg(
                &r,
                IntCounter::new(
                    "bytes_applied_total",
                    "Bytes of the objects committed to the replica",
                )
                .unwrap(),
            ),
            mutations_applied: reg(
                &r,
                IntCounter::new(
                    "mutations_applied_total",
                    "Log entries stored (applied or kept for later)",
                )
                .unwrap(),
            ),
            poll_rounds: reg(
                &r,
                IntCounter::new("poll_rounds_total", "Poll rounds of the bucket").unwrap(),
            ),
            errors: reg(
                &r,
                IntCounterVec::new(Opts::new("errors_total", "Errors, by kind"), &["kind"])
                    .unwrap(),
            ),
            apply_seconds: reg(
                &r,
                Histogram::with_opts(
                    HistogramOpts::new("apply_batch_seconds", "Duration of one apply transaction")
                        .buckets(apply_buckets),
                )
                .unwrap(),
            ),
            requests: reg(
                &r,
                IntCounterVec::new(
                    Opts::new(
                        "kv_connect_requests_total",
                        "KV Connect requests, by endpoint and status",
                    ),
                    &["endpoint", "status"],
                )
                .unwrap(),
            ),
            request_seconds: reg(
                &r,
                HistogramVec::new(
                    HistogramOpts::new("kv_connect_request_seconds", "KV Connect request latency")
                        .buckets(req_buckets),
                    &["endpoint"],
                )
                .unwrap(),
            ),
            watch_streams: reg(
                &r,
                IntGauge::new("watch_streams", "Open KV Connect watch streams").unwrap(),
            ),
            checkouts: reg(
                &r,
                IntCounter::new("checkouts_total", "Point-in-time checkouts").unwrap(),
            ),
            initial_complete: reg(
                &r,
                IntGauge::new(
                    "initial_snapshot_complete",
                    "1 once the initial snapshot is complete",
                )
                .unwrap(),
            ),
            pinned: reg(
                &r,
                IntGauge::new("pinned", "1 while a checkout pins the visible state").unwrap(),
            ),
            future_object_times: reg(
                &r,
                IntCounterVec::new(
                    Opts::new(
                        "future_object_times_total",
                        "Objects whose time (LastModified or commit time) was too far ahead \
                         of the local clock to be used, by which time",
                    ),
                    &["time"],
                )
                .unwrap(),
            ),
            late_objects: reg(
                &r,
                IntCounterVec::new(
                    Opts::new(
                        "late_objects_total",
                        "Log objects that became visible after later ones were consumed, \
                         by outcome (repaired, unrepairable)",
                    ),
                    &["outcome"],
                )
                .unwrap(),
            ),
            registry: r,
        }
    }

    /// Now minus the commit time of the newest commit fetched, once one is
    /// known. A database without writes shows a growing lag: the newest
    /// commit is old, and nothing tells the replica whether newer ones exist.
    pub fn lag_seconds(&self) -> Option<f64> {
        let latest = self.latest_commit_ms.get();
        (latest > 0).then(|| lag_seconds(latest, chrono::Utc::now().timestamp_millis()))
    }

    /// The Prometheus text exposition of every metric, plus the replica
    /// file's size (read at scrape time) and the replication lag computed
    /// against the current clock.
    pub fn render(&self, db_size_bytes: Option<u64>) -> String {
        let mut families = self.registry.gather();
        let extra = Registry::new_custom(Some("kvreplica".into()), None).expect("valid prefix");
        if let Some(size) = db_size_bytes {
            let g = IntGauge::new("sqlite_file_bytes", "Size of the replica file with its WAL")
                .unwrap();
            g.set(size as i64);
            extra.register(Box::new(g)).expect("unique");
        }
        if let Some(lag) = self.lag_seconds() {
            let g = prometheus::Gauge::new(
                "replication_lag_seconds",
                "Now minus the commit time of the newest commit fetched",
            )
            .unwrap();
            g.set(lag);
            extra.register(Box::new(g)).expect("unique");
        }
        families.extend(extra.gather());
        let mut out = Vec::new();
        TextEncoder::new()
            .encode(&families, &mut out)
            .expect("text encoding of gathered metrics");
        String::from_utf8(out).expect("prometheus text is UTF-8")
    }
}

/// The process-wide metrics.
pub static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);

/// The sum of a counter over all its labels (e.g. objects applied of
/// every kind), for the admin API's `/status`.
pub fn total(counter: &IntCounterVec) -> u64 {
    use prometheus::core::Collector;
    counter
        .collect()
        .iter()
        .flat_map(|family| family.get_metric())
        .map(|m| m.get_counter().get_value() as u64)
        .sum()
}

/// Seconds from the commit time `commit_ms` to `now_ms` (epoch ms), never
/// negative (clocks differ between Deploy and here): the one definition of
/// replication lag, shared by `/metrics`, the admin API and the status line.
pub fn lag_seconds(commit_ms: i64, now_ms: i64) -> f64 {
    (now_ms - commit_ms).max(0) as f64 / 1000.0
}

/// A replica file was opened by the engine: its gauges start from what the
/// file holds.
pub fn opened(state: &SyncState) {
    METRICS
        .initial_complete
        .set(state.initial_complete() as i64);
    METRICS.pinned.set(state.pinned as i64);
    if let Some(v) = state.visible() {
        METRICS.visible_version.set(v.version() as i64);
    }
}

/// The initial snapshot became complete.
pub fn initial_complete() {
    METRICS.initial_complete.set(1);
}

/// A poll round began.
pub fn poll_round() {
    METRICS.poll_rounds.inc();
}

/// `behind` log objects are listed but not consumed yet.
pub fn objects_behind(behind: usize) {
    METRICS.objects_behind.set(behind as i64);
}

/// An apply transaction began: it is timed until the returned timer is
/// dropped, failed or not.
pub fn apply_started() -> prometheus::HistogramTimer {
    METRICS.apply_seconds.start_timer()
}

/// A transaction of `objects` log objects (`bytes` long, `mutations`
/// entries) was committed, with `outcome`.
pub fn logs_applied(objects: u64, bytes: u64, mutations: u64, outcome: &ApplyOutcome) {
    applied("log", objects, bytes);
    METRICS.mutations_applied.inc_by(mutations);
    if let Some((vs, ts)) = outcome.latest {
        METRICS.latest_version.set(vs.version() as i64);
        METRICS.latest_commit_ms.set(ts);
        if outcome.visible == Some(vs) {
            visible(vs, ts);
        }
    }
}

/// A checkout moved the visible state.
pub fn checkout(out: &CheckoutOutcome) {
    METRICS.checkouts.inc();
    METRICS.pinned.set(out.pinned as i64);
    visible(out.to.versionstamp, out.to.ts_ms);
}

fn visible(vs: Versionstamp, ts_ms: i64) {
    METRICS.visible_version.set(vs.version() as i64);
    METRICS.visible_commit_ms.set(ts_ms);
}

/// A sync or server error happened; `kind` is a short stable label.
pub fn error(kind: &str) {
    METRICS.errors.with_label_values(&[kind]).inc();
}

/// An object was downloaded.
pub fn fetched(kind: &str, bytes: usize) {
    METRICS.objects_fetched.with_label_values(&[kind]).inc();
    METRICS.bytes_fetched.inc_by(bytes as u64);
}

/// Objects were committed to the replica (applied, or stored for later
/// when pinned or mid-commit).
pub fn applied(kind: &str, objects: u64, bytes: u64) {
    METRICS
        .objects_applied
        .with_label_values(&[kind])
        .inc_by(objects);
    METRICS.bytes_applied.inc_by(bytes);
}

/// An object's time (`which`: `last_modified`, `commit_time`) was found
/// too far ahead of the local clock to be used.
pub fn future_object_time(which: &str) {
    METRICS
        .future_object_times
        .with_label_values(&[which])
        .inc();
}

/// A log object was found late; `outcome`: `repaired` or `unrepairable`.
pub fn late_object(outcome: &str) {
    METRICS.late_objects.with_label_values(&[outcome]).inc();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_prometheus_text() {
        fetched("log", 10);
        error("source_transient");
        let text = METRICS.render(Some(4096));
        assert!(text.contains("kvreplica_bytes_fetched_total"));
        assert!(text.contains("kvreplica_errors_total{kind=\"source_transient\"}"));
        assert!(text.contains("kvreplica_sqlite_file_bytes 4096"));
        assert!(text.contains("# TYPE kvreplica_apply_batch_seconds histogram"));
    }
}

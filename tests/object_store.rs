//! The object-store contract: the same tests, unchanged, against every
//! backend — a local directory, a real S3-compatible server (s3s-fs, which
//! checks SigV4) and a GCS emulator (fake-gcs-server) — read through
//! [`Backup`], the layout reader the sync engine uses. A new backend is done
//! when it passes this file with one more `contract!` line.
//!
//! What only one backend has (SigV4 keys, GCS credentials, endpoint
//! parsing, answers only a broken server gives) is in `s3_source.rs` and
//! `gcs_source.rs`; the retry wrapper is proven here against a
//! fault-injecting store (`common/stores.rs`).

#[path = "common/gcs_server.rs"]
mod gcs_server;
#[path = "common/s3_server.rs"]
mod s3_server;
#[path = "common/stores.rs"]
mod stores;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use chrono::{DateTime, Utc};
use kvreplica::backup::{log_key as rel_log_key, snapshot_key, Backup};
use kvreplica::format::{FormatError, LogName};
use kvreplica::source::fs::DirStore;
use kvreplica::source::gcs::GcsStore;
use kvreplica::source::retry::RetryPolicy;
use kvreplica::source::s3::{S3Credentials, S3Store};
use kvreplica::source::{GcsOptions, IfChanged, ObjectStore, S3Options, SourceError};
use stores::{log_name, single_attempt, snapshot_name, FaultStore};

const BUCKET: &str = "kv-backup";
const PREFIX: &str = "backups/3f1c2a7e-0000-4000-8000-000000000001/";

/// Timeout of each request in these tests: far above what the local
/// servers need, far below what would make a hung test noticeable.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// A backend with a bucket (or directory) the test can write into.
trait Rig: Sized {
    fn start() -> Self;
    fn create_bucket(&self, bucket: &str);
    fn put(&self, bucket: &str, key: &str, body: &[u8]);
    fn remove(&self, bucket: &str, key: &str);
    /// Sets an object's modification time; false when the backend cannot
    /// (the emulator stamps the upload time).
    fn set_modified(&self, bucket: &str, key: &str, when: SystemTime) -> bool;
    /// Writes a folder placeholder (`<prefix>logs/`); false when the
    /// backend cannot hold one.
    fn put_placeholder(&self, bucket: &str, key: &str) -> bool;
    /// The store for `<bucket>/<PREFIX>`.
    fn store(&self, bucket: &str) -> Arc<dyn ObjectStore>;
    /// The identity the store must report.
    fn identity(&self, bucket: &str) -> String;
    /// How a missing object of `bucket` must be named (`key` includes the
    /// prefix).
    fn object_name(&self, bucket: &str, key: &str) -> String;
    /// Whether `err` says that `bucket` does not exist.
    fn is_missing_bucket(&self, err: &SourceError, bucket: &str) -> bool;

    fn backup(&self, bucket: &str) -> Backup {
        single_attempt(self.store(bucket))
    }
}

/// A directory per bucket: `<tmp>/<bucket>/<key>`.
struct Dir(tempfile::TempDir);

impl Dir {
    fn path(&self, bucket: &str, key: &str) -> PathBuf {
        self.0.path().join(bucket).join(key)
    }
}

impl Rig for Dir {
    fn start() -> Self {
        Dir(tempfile::tempdir().unwrap())
    }
    fn create_bucket(&self, bucket: &str) {
        std::fs::create_dir_all(self.path(bucket, PREFIX)).unwrap();
    }
    fn put(&self, bucket: &str, key: &str, body: &[u8]) {
        let path = self.path(bucket, key);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, body).unwrap();
    }
    fn remove(&self, bucket: &str, key: &str) {
        std::fs::remove_file(self.path(bucket, key)).unwrap();
    }
    fn set_modified(&self, bucket: &str, key: &str, when: SystemTime) -> bool {
        std::fs::File::options()
            .write(true)
            .open(self.path(bucket, key))
            .and_then(|f| f.set_modified(when))
            .unwrap();
        true
    }
    fn put_placeholder(&self, _: &str, _: &str) -> bool {
        false
    }
    fn store(&self, bucket: &str) -> Arc<dyn ObjectStore> {
        Arc::new(DirStore::new(self.path(bucket, PREFIX)))
    }
    fn identity(&self, bucket: &str) -> String {
        format!("file://{}", self.path(bucket, PREFIX).display())
    }
    fn object_name(&self, bucket: &str, key: &str) -> String {
        self.path(bucket, key).display().to_string()
    }
    fn is_missing_bucket(&self, err: &SourceError, bucket: &str) -> bool {
        matches!(err, SourceError::NoSuchDirectory(d) if d.contains(bucket))
    }
}

struct S3(s3_server::S3Server);

impl Rig for S3 {
    fn start() -> Self {
        S3(s3_server::S3Server::start())
    }
    fn create_bucket(&self, bucket: &str) {
        self.0.create_bucket(bucket);
    }
    fn put(&self, bucket: &str, key: &str, body: &[u8]) {
        self.0.put(bucket, key, body);
    }
    fn remove(&self, bucket: &str, key: &str) {
        self.0.remove(bucket, key);
    }
    fn set_modified(&self, bucket: &str, key: &str, when: SystemTime) -> bool {
        self.0.set_modified(bucket, key, when);
        true
    }
    fn put_placeholder(&self, _: &str, _: &str) -> bool {
        false
    }
    fn store(&self, bucket: &str) -> Arc<dyn ObjectStore> {
        let creds = S3Credentials {
            access_key_id: self.0.access_key().to_string(),
            secret_access_key: self.0.secret_key().to_string(),
            session_token: None,
        };
        let opts = S3Options {
            endpoint: Some(self.0.endpoint()),
            ..S3Options::default()
        };
        Arc::new(
            S3Store::new(
                bucket.into(),
                PREFIX.into(),
                &opts,
                Some(creds),
                REQUEST_TIMEOUT,
            )
            .unwrap(),
        )
    }
    fn identity(&self, bucket: &str) -> String {
        // A custom endpoint is part of the identity.
        format!("{}/{bucket}/{PREFIX}", self.0.endpoint())
    }
    fn object_name(&self, bucket: &str, key: &str) -> String {
        format!("{}/{bucket}/{key}", self.0.endpoint())
    }
    fn is_missing_bucket(&self, err: &SourceError, bucket: &str) -> bool {
        matches!(err, SourceError::NoSuchBucket(b) if b == bucket)
    }
}

struct Gcs(gcs_server::GcsServer);

impl Rig for Gcs {
    fn start() -> Self {
        Gcs(gcs_server::GcsServer::start())
    }
    fn create_bucket(&self, bucket: &str) {
        self.0.create_bucket(bucket);
    }
    fn put(&self, bucket: &str, key: &str, body: &[u8]) {
        self.0.put(bucket, key, body);
    }
    fn remove(&self, bucket: &str, key: &str) {
        self.0.delete(bucket, key);
    }
    fn set_modified(&self, _: &str, _: &str, _: SystemTime) -> bool {
        false
    }
    fn put_placeholder(&self, bucket: &str, key: &str) -> bool {
        self.0.put(bucket, key, b"");
        true
    }
    fn store(&self, bucket: &str) -> Arc<dyn ObjectStore> {
        // Anonymous access to the emulator.
        let opts = GcsOptions {
            endpoint: Some(self.0.endpoint()),
            ..GcsOptions::default()
        };
        Arc::new(GcsStore::new(bucket.into(), PREFIX.into(), &opts, REQUEST_TIMEOUT).unwrap())
    }
    fn identity(&self, bucket: &str) -> String {
        format!("gs://{bucket}/{PREFIX}")
    }
    fn object_name(&self, bucket: &str, key: &str) -> String {
        format!("gs://{bucket}/{key}")
    }
    fn is_missing_bucket(&self, err: &SourceError, bucket: &str) -> bool {
        matches!(err, SourceError::NoSuchBucket(b) if b == bucket)
    }
}

fn log_key(name: &LogName) -> String {
    format!("{PREFIX}{}", rel_log_key(name))
}

fn names<N: Copy>(listed: &[kvreplica::backup::Listed<N>]) -> Vec<N> {
    listed.iter().map(|l| l.name).collect()
}

async fn lists_logs_after_a_cursor_across_pages<R: Rig>() {
    // More than one page of the stores' 1000-key maximum.
    const LOGS: u64 = 1203;
    let rig = R::start();
    rig.create_bucket(BUCKET);
    let before = Utc::now() - chrono::Duration::seconds(1);
    // Object i holds i % 7 bytes and, where the store lets us say so, was
    // written at a distinct, known millisecond, so sizes and times are
    // checked exactly.
    let base_ms: u64 = 1_700_000_000_123;
    let written = |i: u64| UNIX_EPOCH + Duration::from_millis(base_ms + i * 60_001);
    let mut exact = true;
    for i in 0..LOGS {
        let key = log_key(&log_name(i));
        rig.put(BUCKET, &key, &vec![b'x'; (i % 7) as usize]);
        exact &= rig.set_modified(BUCKET, &key, written(i));
    }
    // Neighbours that must not be listed: another prefix sharing the
    // start, the bucket root, and a snapshot.
    rig.put(
        BUCKET,
        &format!("{}x/logs/{}.bin", PREFIX.trim_end_matches('/'), log_name(0)),
        b"",
    );
    rig.put(BUCKET, &format!("{}.bin", log_name(5)), b"");
    rig.put(
        BUCKET,
        &format!("{PREFIX}{}", snapshot_key(&snapshot_name(0))),
        b"",
    );
    // A folder placeholder is not an object name.
    rig.put_placeholder(BUCKET, &format!("{PREFIX}logs/"));
    let after = Utc::now() + chrono::Duration::seconds(1);
    let src = rig.backup(BUCKET);
    let all: Vec<LogName> = (0..LOGS).map(log_name).collect();

    let listed = src.list_logs(None, usize::MAX).await.unwrap();
    assert_eq!(
        names(&listed),
        all,
        "every log, in order, nothing from outside the prefix"
    );
    for (i, l) in listed.iter().enumerate() {
        let i = i as u64;
        assert_eq!(l.size, i % 7, "size of {}", l.name);
        if exact {
            let expected: DateTime<Utc> = written(i).into();
            assert_eq!(l.last_modified, expected, "LastModified of {}", l.name);
        } else {
            assert!(
                before <= l.last_modified && l.last_modified <= after,
                "last_modified of {} is the upload time: {}",
                l.name,
                l.last_modified
            );
        }
    }

    // Pages of 500, each one call after the previous page's last.
    let mut paged = Vec::new();
    let mut cursor: Option<LogName> = None;
    let mut pages = Vec::new();
    loop {
        let page = src.list_logs(cursor.as_ref(), 500).await.unwrap();
        if page.is_empty() {
            break;
        }
        pages.push(page.len());
        cursor = Some(page.last().unwrap().name);
        paged.extend(names(&page));
        assert!(pages.len() <= 4, "the listing ends");
    }
    assert_eq!(pages, [500, 500, 203]);
    assert_eq!(paged, all);

    // start-after is exclusive, the limit holds across pages.
    let page = src.list_logs(Some(&all[499]), 700).await.unwrap();
    assert_eq!(names(&page), all[500..1200]);
    let page = src.list_logs(Some(&all[0]), 1).await.unwrap();
    assert_eq!(names(&page), [all[1]]);
    let tail = src.list_logs(Some(&all[1100]), 1000).await.unwrap();
    assert_eq!(tail.len(), 102);
    assert!(src
        .list_logs(Some(&all[LOGS as usize - 1]), 10)
        .await
        .unwrap()
        .is_empty());
    assert!(src.list_logs(None, 0).await.unwrap().is_empty());
    // A cursor that names no object starts at the next one.
    let between: LogName = format!("0001_{:016x}_{:020x}0000_{:020x}0000", 10, 10, 10)
        .parse()
        .unwrap();
    assert!(between > all[9] && between < all[10]);
    let page = src.list_logs(Some(&between), 2).await.unwrap();
    assert_eq!(names(&page), [all[10], all[11]]);
}

async fn lists_all_snapshot_pages_and_reads_objects<R: Rig>() {
    // Pages of 1000, like S3 and GCS: three pages.
    const SNAPSHOTS: u64 = 2001;
    let rig = R::start();
    rig.create_bucket(BUCKET);
    for seq in 0..SNAPSHOTS {
        rig.put(
            BUCKET,
            &format!("{PREFIX}{}", snapshot_key(&snapshot_name(seq))),
            &seq.to_be_bytes(),
        );
    }
    // A log beside them is not a snapshot.
    rig.put(BUCKET, &log_key(&log_name(1)), b"");
    let src = rig.backup(BUCKET);
    let listed = src.list_snapshots().await.unwrap();
    assert_eq!(listed.len(), SNAPSHOTS as usize);
    assert!(listed
        .iter()
        .enumerate()
        .all(|(i, l)| l.name == snapshot_name(i as u64) && l.size == 8));
    assert_eq!(
        src.get_snapshot(&snapshot_name(2000)).await.unwrap(),
        2000u64.to_be_bytes()
    );
    // An empty range is a 0-byte object, not a missing one.
    assert_eq!(src.get_log(&log_name(1)).await.unwrap(), b"");
    // The same bytes streamed to a temporary file (for large objects).
    let body = src
        .fetch_snapshot(&snapshot_name(2000), true)
        .await
        .unwrap();
    assert_eq!(file_bytes(body), 2000u64.to_be_bytes());
    assert_eq!(
        file_bytes(src.fetch_log(&log_name(1), true).await.unwrap()),
        b""
    );
}

/// The bytes of a body streamed to a temporary file.
fn file_bytes(body: kvreplica::source::Body) -> Vec<u8> {
    use std::io::{Read, Seek};
    let kvreplica::source::Body::File { mut file, len } = body else {
        panic!("not streamed to a file: {body:?}");
    };
    file.rewind().unwrap();
    let mut out = Vec::new();
    file.read_to_end(&mut out).unwrap();
    assert_eq!(out.len() as u64, len);
    out
}

async fn differential_absent_then_present<R: Rig>() {
    let rig = R::start();
    rig.create_bucket(BUCKET);
    let src = rig.backup(BUCKET);
    assert_eq!(src.read_differential().await.unwrap(), None);
    rig.put(
        BUCKET,
        &format!("{PREFIX}differential"),
        b"0000000200d0000000ff",
    );
    assert_eq!(
        src.read_differential().await.unwrap().as_deref(),
        Some(&b"0000000200d0000000ff"[..])
    );
    assert_eq!(
        src.identity(),
        rig.identity(BUCKET),
        "the identity names the store, bucket and prefix"
    );
}

async fn differential_is_polled_without_its_body<R: Rig>() {
    let rig = R::start();
    rig.create_bucket(BUCKET);
    let src = rig.backup(BUCKET);
    let key = format!("{PREFIX}differential");
    assert_eq!(src.differential_if_changed(None).await.unwrap(), None);
    rig.put(BUCKET, &key, b"0000000200d0000000ff");
    let Some(IfChanged::Changed { body, version }) =
        src.differential_if_changed(None).await.unwrap()
    else {
        panic!("a first read returns the body");
    };
    assert_eq!(body, b"0000000200d0000000ff");
    assert_eq!(
        src.differential_if_changed(Some(&version)).await.unwrap(),
        Some(IfChanged::Unchanged),
        "the same version is not read again"
    );
    // A restarted backup writes a new value (and, for the directory, a new
    // size, whatever the clock's granularity).
    rig.put(BUCKET, &key, b"0000000300d0000000ff\n");
    let Some(IfChanged::Changed {
        body,
        version: newer,
    }) = src.differential_if_changed(Some(&version)).await.unwrap()
    else {
        panic!("a rewritten object is read again");
    };
    assert_eq!(body, b"0000000300d0000000ff\n");
    assert_ne!(newer, version);
    rig.remove(BUCKET, &key);
    assert_eq!(
        src.differential_if_changed(Some(&newer)).await.unwrap(),
        None
    );
    let err = rig
        .backup("no-such-bucket")
        .differential_if_changed(None)
        .await
        .unwrap_err();
    assert!(rig.is_missing_bucket(&err, "no-such-bucket"), "{err:?}");
}

async fn a_listed_object_that_is_gone_is_retryable<R: Rig>() {
    let rig = R::start();
    rig.create_bucket(BUCKET);
    let name = log_name(3);
    rig.put(BUCKET, &log_key(&name), b"abc");
    let src = rig.backup(BUCKET);
    assert_eq!(src.list_logs(None, 10).await.unwrap().len(), 1);
    assert_eq!(src.get_log(&name).await.unwrap(), b"abc");
    rig.remove(BUCKET, &log_key(&name));
    let err = src.get_log(&name).await.unwrap_err();
    let expected = rig.object_name(BUCKET, &log_key(&name));
    assert!(
        matches!(&err, SourceError::ListedButMissing(o) if *o == expected),
        "{err:?}"
    );
    assert!(err.is_retryable());
    let err = src.get_snapshot(&snapshot_name(0)).await.unwrap_err();
    assert!(matches!(err, SourceError::ListedButMissing(_)), "{err:?}");
    let err = src.fetch_log(&name, true).await.unwrap_err();
    assert!(
        matches!(&err, SourceError::ListedButMissing(o) if *o == expected),
        "{err:?}"
    );
}

async fn a_missing_bucket_is_named<R: Rig>() {
    let rig = R::start();
    rig.create_bucket(BUCKET);
    let src = rig.backup("no-such-bucket");
    for err in [
        src.read_differential().await.unwrap_err(),
        src.list_snapshots().await.unwrap_err(),
        src.list_logs(None, 10).await.unwrap_err(),
    ] {
        assert!(rig.is_missing_bucket(&err, "no-such-bucket"), "{err:?}");
        assert!(!err.is_retryable());
        assert!(err.to_string().contains("no-such-bucket"), "{err}");
    }
}

async fn an_invalid_object_name_is_a_format_error<R: Rig>() {
    let rig = R::start();
    rig.create_bucket(BUCKET);
    rig.put(BUCKET, &log_key(&log_name(1)), b"");
    rig.put(BUCKET, &format!("{PREFIX}logs/not-a-log.bin"), b"");
    rig.put(BUCKET, &format!("{PREFIX}snapshots/0001_zz.bin"), b"");
    let src = rig.backup(BUCKET);
    let store = rig.store(BUCKET);
    let err = src.list_logs(None, 10).await.unwrap_err();
    assert!(
        matches!(&err, SourceError::Format(FormatError::BadName { name, .. })
            if *name == store.naming().key_in_store("logs/not-a-log.bin") && name.contains("not-a-log")),
        "{err:?}"
    );
    assert!(!err.is_retryable());
    let err = src.list_snapshots().await.unwrap_err();
    assert!(
        matches!(&err, SourceError::Format(FormatError::BadName { name, .. }) if name.contains("0001_zz")),
        "{err:?}"
    );

    // Something without `.bin` under logs/ is just as invalid.
    rig.remove(BUCKET, &format!("{PREFIX}logs/not-a-log.bin"));
    rig.put(BUCKET, &format!("{PREFIX}logs/README"), b"hi");
    let err = src.list_logs(None, 10).await.unwrap_err();
    assert!(
        matches!(&err, SourceError::Format(FormatError::BadName { name, .. }) if name.ends_with("logs/README")),
        "{err:?}"
    );
}

/// Backoff short enough that retries cost nothing.
fn quick_retries(max_attempts: u32) -> RetryPolicy {
    RetryPolicy {
        max_attempts,
        initial_backoff: Duration::from_millis(1),
        max_backoff: Duration::from_millis(5),
    }
}

async fn retries_transient_faults_and_stops_at_permanent_ones<R: Rig>() {
    let rig = R::start();
    rig.create_bucket(BUCKET);
    rig.put(BUCKET, &log_key(&log_name(1)), b"abc");

    // Two 503s, then the real answer: three calls, one result.
    let faulty = FaultStore::new(
        rig.store(BUCKET),
        vec![FaultStore::transient(), FaultStore::transient()],
    );
    let src = Backup::new(faulty.clone(), quick_retries(3));
    assert_eq!(src.get_log(&log_name(1)).await.unwrap(), b"abc");
    assert_eq!(faulty.calls(), 3);
    assert_eq!(
        names(&src.list_logs(None, 10).await.unwrap()),
        [log_name(1)]
    );
    assert_eq!(faulty.calls(), 4, "no fault left, one call");

    // More transient faults than attempts: the last one is returned.
    let faulty = FaultStore::new(
        rig.store(BUCKET),
        (0..3).map(|_| FaultStore::transient()).collect(),
    );
    let src = Backup::new(faulty.clone(), quick_retries(3));
    let err = src.list_logs(None, 10).await.unwrap_err();
    assert!(matches!(err, SourceError::Transient { .. }), "{err:?}");
    assert_eq!(faulty.calls(), 3, "gives up after max_attempts");

    // A refusal is not retried.
    let faulty = FaultStore::new(rig.store(BUCKET), vec![FaultStore::denied()]);
    let src = Backup::new(faulty.clone(), quick_retries(5));
    let err = src.read_differential().await.unwrap_err();
    assert!(matches!(err, SourceError::AccessDenied { .. }), "{err:?}");
    assert_eq!(faulty.calls(), 1, "permanent errors are not retried");

    // A listed object that is missing is retried until it appears (with
    // backoffs long enough for the upload to land in between).
    let name = log_name(2);
    let faulty = FaultStore::new(rig.store(BUCKET), vec![]);
    let patient = RetryPolicy {
        max_attempts: 10,
        initial_backoff: Duration::from_millis(100),
        max_backoff: Duration::from_millis(200),
    };
    let src = Arc::new(Backup::new(faulty.clone(), patient));
    let get = tokio::spawn({
        let src = src.clone();
        async move { src.get_log(&name).await }
    });
    while faulty.calls() < 2 {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    rig.put(BUCKET, &log_key(&name), b"late");
    assert_eq!(get.await.unwrap().unwrap(), b"late");
    // A missing differential is no error, and not retried.
    let calls = faulty.calls();
    assert_eq!(src.read_differential().await.unwrap(), None);
    assert_eq!(faulty.calls(), calls + 2, "one GET, one listing");
}

/// Instantiates every contract test for one backend.
macro_rules! contract {
    ($module:ident, $rig:ty) => {
        mod $module {
            use super::*;

            #[tokio::test(flavor = "multi_thread")]
            async fn lists_logs_after_a_cursor_across_pages() {
                super::lists_logs_after_a_cursor_across_pages::<$rig>().await;
            }

            #[tokio::test(flavor = "multi_thread")]
            async fn lists_all_snapshot_pages_and_reads_objects() {
                super::lists_all_snapshot_pages_and_reads_objects::<$rig>().await;
            }

            #[tokio::test(flavor = "multi_thread")]
            async fn differential_absent_then_present() {
                super::differential_absent_then_present::<$rig>().await;
            }

            #[tokio::test(flavor = "multi_thread")]
            async fn differential_is_polled_without_its_body() {
                super::differential_is_polled_without_its_body::<$rig>().await;
            }

            #[tokio::test(flavor = "multi_thread")]
            async fn a_listed_object_that_is_gone_is_retryable() {
                super::a_listed_object_that_is_gone_is_retryable::<$rig>().await;
            }

            #[tokio::test(flavor = "multi_thread")]
            async fn a_missing_bucket_is_named() {
                super::a_missing_bucket_is_named::<$rig>().await;
            }

            #[tokio::test(flavor = "multi_thread")]
            async fn an_invalid_object_name_is_a_format_error() {
                super::an_invalid_object_name_is_a_format_error::<$rig>().await;
            }

            #[tokio::test(flavor = "multi_thread")]
            async fn retries_transient_faults_and_stops_at_permanent_ones() {
                super::retries_transient_faults_and_stops_at_permanent_ones::<$rig>().await;
            }
        }
    };
}

contract!(dir, Dir);
contract!(s3, S3);
contract!(gcs, Gcs);

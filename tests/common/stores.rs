//! What the store tests share: object names, a reader that makes one
//! attempt per call, and [`FaultStore`], an [`ObjectStore`] that fails on
//! purpose: it wraps a real store and answers the calls a script names with
//! an error instead, so tests can prove what the retry wrapper does with
//! each kind of failure without a network in between (the proxy in
//! `fault_proxy.rs` covers the wire).
#![allow(dead_code)]

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use kvreplica::backup::Backup;
use kvreplica::format::{LogName, SnapshotName};
use kvreplica::source::retry::RetryPolicy;
use kvreplica::source::{
    IfChanged, Listing, Naming, ObjectStore, ObjectVersion, SourceError, StoreResult,
};

/// The i-th of a run of consecutive, valid format-1 log names.
pub fn log_name(i: u64) -> LogName {
    format!("0001_{i:016x}_{i:020x}0000_{i:020x}ffff")
        .parse()
        .expect("valid log name")
}

/// The snapshot range `seq` of one valid format-1 snapshot.
pub fn snapshot_name(seq: u64) -> SnapshotName {
    format!("0001_{:016x}_{seq:016x}", 7)
        .parse()
        .expect("valid snapshot name")
}

/// The backup `store` holds, read with one attempt per call: for tests of
/// what a store answers, not of what retrying makes of it.
pub fn single_attempt(store: Arc<dyn ObjectStore>) -> Backup {
    let once = RetryPolicy {
        max_attempts: 1,
        ..RetryPolicy::default()
    };
    Backup::new(store, once)
}

/// Wraps `inner`; each call first takes the next scripted error, if any.
#[derive(Debug)]
pub struct FaultStore {
    inner: Arc<dyn ObjectStore>,
    script: Mutex<VecDeque<SourceError>>,
    /// Calls made, failed ones included.
    calls: AtomicU32,
}

impl FaultStore {
    /// A store whose next calls fail with `faults`, in order, then pass.
    pub fn new(inner: Arc<dyn ObjectStore>, faults: Vec<SourceError>) -> Arc<Self> {
        Arc::new(FaultStore {
            inner,
            script: Mutex::new(faults.into()),
            calls: AtomicU32::new(0),
        })
    }

    /// A transient failure, as a 503 would be classified.
    pub fn transient() -> SourceError {
        SourceError::Transient {
            what: "fault".into(),
            detail: "HTTP 503 injected".into(),
        }
    }

    /// A permanent failure, as a 403 would be classified.
    pub fn denied() -> SourceError {
        SourceError::AccessDenied {
            what: "fault".into(),
            detail: "HTTP 403 injected".into(),
        }
    }

    pub fn calls(&self) -> u32 {
        self.calls.load(Ordering::SeqCst)
    }

    fn next_fault(&self) -> Result<(), SourceError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        match self.script.lock().unwrap().pop_front() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

#[async_trait]
impl ObjectStore for FaultStore {
    fn naming(&self) -> &Naming {
        self.inner.naming()
    }
    async fn list(&self, prefix: &str, after: Option<&str>, limit: usize) -> StoreResult<Listing> {
        self.next_fault()?;
        self.inner.list(prefix, after, limit).await
    }
    async fn get(&self, key: &str) -> StoreResult<Option<Vec<u8>>> {
        self.next_fault()?;
        self.inner.get(key).await
    }
    async fn get_to_file(&self, key: &str, file: &mut tokio::fs::File) -> StoreResult<Option<u64>> {
        self.next_fault()?;
        self.inner.get_to_file(key, file).await
    }
    async fn get_if_changed(
        &self,
        key: &str,
        known: Option<&ObjectVersion>,
    ) -> StoreResult<Option<IfChanged>> {
        self.next_fault()?;
        self.inner.get_if_changed(key, known).await
    }
}

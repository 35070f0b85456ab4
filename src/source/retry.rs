//! Retries with exponential backoff and full jitter around any [`Source`].
//!
//! Kept as a wrapper so every backend gets the same policy and so tests can
//! reason about it in one place.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use rand::Rng;

use super::{Listed, Source, SourceError};
use crate::format::{LogName, SnapshotName};

/// How transient failures are retried.
#[derive(Clone, Debug)]
pub struct RetryPolicy {
    /// Attempts in all, the first included.
    pub max_attempts: u32,
    /// Backoff cap before the first retry; doubles each time.
    pub initial_backoff: Duration,
    /// Upper bound of one backoff.
    pub max_backoff: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        // Eight attempts with a 200 ms start and 10 s cap ride out about
        // half a minute of 5xx answers, the order of an S3 partition split.
        RetryPolicy {
            max_attempts: 8,
            initial_backoff: Duration::from_millis(200),
            max_backoff: Duration::from_secs(10),
        }
    }
}

impl RetryPolicy {
    /// The backoff before retry number `attempt` (1-based): a uniformly random
    /// time up to the exponential cap ("full jitter"), so that many replicas
    /// failing together do not retry in lock-step.
    pub fn backoff(&self, attempt: u32) -> Duration {
        let cap = self
            .initial_backoff
            .saturating_mul(1u32 << attempt.saturating_sub(1).min(16))
            .min(self.max_backoff);
        let ms = cap.as_millis() as u64;
        Duration::from_millis(rand::rng().random_range(ms / 2..=ms.max(1)))
    }

    /// Runs `op` until it succeeds, fails permanently or runs out of attempts.
    pub async fn run<T, F, Fut>(&self, what: &str, mut op: F) -> Result<T, SourceError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, SourceError>>,
    {
        let mut attempt = 1;
        loop {
            match op().await {
                Ok(v) => return Ok(v),
                Err(e) if e.is_retryable() && attempt < self.max_attempts => {
                    let wait = self.backoff(attempt);
                    tracing::warn!(
                        error = %e,
                        attempt,
                        wait_ms = wait.as_millis() as u64,
                        "{what} failed, retrying"
                    );
                    tokio::time::sleep(wait).await;
                    attempt += 1;
                }
                Err(e) => return Err(e),
            }
        }
    }
}

/// A [`Source`] whose every call is retried by a [`RetryPolicy`].
#[derive(Debug)]
pub struct Retrying {
    inner: Arc<dyn Source>,
    policy: RetryPolicy,
}

impl Retrying {
    pub fn new(inner: Arc<dyn Source>, policy: RetryPolicy) -> Self {
        Retrying { inner, policy }
    }
}

#[async_trait]
impl Source for Retrying {
    fn identity(&self) -> String {
        self.inner.identity()
    }
    async fn read_differential(&self) -> Result<Option<Vec<u8>>, SourceError> {
        self.policy
            .run("reading differential", || self.inner.read_differential())
            .await
    }
    async fn list_snapshots(&self) -> Result<Vec<Listed<SnapshotName>>, SourceError> {
        self.policy
            .run("listing snapshots", || self.inner.list_snapshots())
            .await
    }
    async fn list_logs(
        &self,
        start_after: Option<&LogName>,
        limit: usize,
    ) -> Result<Vec<Listed<LogName>>, SourceError> {
        self.policy
            .run("listing logs", || self.inner.list_logs(start_after, limit))
            .await
    }
    async fn get_snapshot(&self, name: &SnapshotName) -> Result<Vec<u8>, SourceError> {
        self.policy
            .run("fetching snapshot", || self.inner.get_snapshot(name))
            .await
    }
    async fn get_log(&self, name: &LogName) -> Result<Vec<u8>, SourceError> {
        self.policy
            .run("fetching log", || self.inner.get_log(name))
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    #[tokio::test(start_paused = true)]
    async fn retries_transient_then_gives_up() {
        let p = RetryPolicy {
            max_attempts: 3,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(1),
        };
        let calls = AtomicU32::new(0);
        let r: Result<(), _> = p
            .run("x", || async {
                calls.fetch_add(1, Ordering::SeqCst);
                Err(SourceError::Transient {
                    what: "x".into(),
                    detail: "503".into(),
                })
            })
            .await;
        assert!(r.is_err());
        assert_eq!(calls.load(Ordering::SeqCst), 3);

        let calls = AtomicU32::new(0);
        let r: Result<(), _> = p
            .run("x", || async {
                calls.fetch_add(1, Ordering::SeqCst);
                Err(SourceError::NoSuchBucket("b".into()))
            })
            .await;
        assert!(r.is_err());
        assert_eq!(
            calls.load(Ordering::SeqCst),
            1,
            "permanent errors are not retried"
        );

        let calls = AtomicU32::new(0);
        let r = p
            .run("x", || async {
                if calls.fetch_add(1, Ordering::SeqCst) == 0 {
                    Err(SourceError::ListedButMissing("o".into()))
                } else {
                    Ok(7)
                }
            })
            .await;
        assert_eq!(r.unwrap(), 7);
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        let p = RetryPolicy::default();
        for attempt in 1..20 {
            let b = p.backoff(attempt);
            assert!(b <= p.max_backoff);
        }
        assert!(p.backoff(1) <= Duration::from_millis(200));
    }
}

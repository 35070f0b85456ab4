//! Retries with exponential backoff and full jitter around any
//! [`ObjectStore`].
//!
//! Kept as a wrapper so every backend gets the same policy and so tests can
//! reason about it in one place.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use rand::Rng;

use super::{
    Body, IfChanged, Listing, Naming, ObjectStore, ObjectVersion, SourceError, StoreResult,
};

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

/// An [`ObjectStore`] whose every call is retried by a [`RetryPolicy`].
#[derive(Debug)]
pub struct Retrying {
    inner: Arc<dyn ObjectStore>,
    policy: RetryPolicy,
}

impl Retrying {
    pub fn new(inner: Arc<dyn ObjectStore>, policy: RetryPolicy) -> Self {
        Retrying { inner, policy }
    }

    /// Fetches an object that a listing named. Its absence is retried, not
    /// treated as empty: eventually consistent stores list an object a
    /// moment before they serve it.
    pub(crate) async fn get_listed(&self, key: &str) -> Result<Vec<u8>, SourceError> {
        self.policy
            .run(&format!("fetching {key}"), || async {
                self.inner
                    .get(key)
                    .await?
                    .ok_or_else(|| SourceError::ListedButMissing(self.naming().describe(key)))
            })
            .await
    }

    /// Fetches an object that a listing named to an anonymous temporary
    /// file, for an object too large to hold in memory: a transfer that
    /// breaks mid-body is retried from the start, as [`Retrying::get_listed`]
    /// retries a whole-body fetch.
    pub(crate) async fn get_listed_to_file(&self, key: &str) -> Result<Body, SourceError> {
        let what = self.naming().describe(key);
        let std_file = tempfile::tempfile().map_err(|e| super::spool_error(&what, e))?;
        let mut file = tokio::fs::File::from_std(std_file);
        let len = self.to_file(key, &mut file, true).await?;
        let len = len.ok_or(SourceError::ListedButMissing(what))?;
        Ok(Body::File {
            file: file.into_std().await,
            len,
        })
    }

    /// [`ObjectStore::get_to_file`], retried; each attempt starts over in
    /// the emptied file. With `listed`, a missing object is retried too.
    async fn to_file(
        &self,
        key: &str,
        file: &mut tokio::fs::File,
        listed: bool,
    ) -> StoreResult<Option<u64>> {
        use tokio::io::AsyncSeekExt;
        let what = self.naming().describe(key);
        let file = tokio::sync::Mutex::new(file);
        self.policy
            .run(&format!("fetching {key}"), || async {
                let mut f = file.lock().await;
                f.set_len(0)
                    .await
                    .map_err(|e| super::spool_error(&what, e))?;
                f.rewind().await.map_err(|e| super::spool_error(&what, e))?;
                match self.inner.get_to_file(key, &mut f).await? {
                    None if listed => Err(SourceError::ListedButMissing(what.clone())),
                    len => Ok(len),
                }
            })
            .await
    }
}

#[async_trait]
impl ObjectStore for Retrying {
    fn naming(&self) -> &Naming {
        self.inner.naming()
    }
    async fn list(&self, prefix: &str, after: Option<&str>, limit: usize) -> StoreResult<Listing> {
        self.policy
            .run(&format!("listing {prefix}"), || {
                self.inner.list(prefix, after, limit)
            })
            .await
    }
    async fn get(&self, key: &str) -> StoreResult<Option<Vec<u8>>> {
        self.policy
            .run(&format!("fetching {key}"), || self.inner.get(key))
            .await
    }
    async fn get_to_file(&self, key: &str, file: &mut tokio::fs::File) -> StoreResult<Option<u64>> {
        self.to_file(key, file, false).await
    }
    async fn get_if_changed(
        &self,
        key: &str,
        known: Option<&ObjectVersion>,
    ) -> StoreResult<Option<IfChanged>> {
        self.policy
            .run(&format!("polling {key}"), || {
                self.inner.get_if_changed(key, known)
            })
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

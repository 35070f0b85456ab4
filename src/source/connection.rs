//! What the remote stores share around their client. It is built on first
//! use, because resolving credentials or a first token may be network I/O,
//! which belongs in the async calls (and is retried like them). It remembers
//! who it acts as, because "403" alone does not tell an operator which
//! account lacks a permission. And failed requests come back classified,
//! with the 404 left to the call that knows what it means.

use std::fmt;
use std::future::Future;

use tokio::sync::OnceCell;

use super::SourceError;

/// A ready client and the identity it acts as.
pub(crate) struct Connected<C> {
    /// The backend's client (it holds the credentials).
    pub client: C,
    /// Who the requests are made as, for access-denied messages.
    pub identity: String,
}

impl<C> fmt::Debug for Connected<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The client holds secrets; show only who acts.
        f.debug_struct("Connected")
            .field("identity", &self.identity)
            .finish_non_exhaustive()
    }
}

/// A client built by the first call that needs it.
pub(crate) struct LazyClient<C>(OnceCell<Connected<C>>);

impl<C> LazyClient<C> {
    pub fn new() -> Self {
        LazyClient(OnceCell::new())
    }

    /// The client, built by `connect` when no call has built it yet; a
    /// failed build is tried again by the next call.
    pub async fn get<F, Fut>(&self, connect: F) -> Result<&Connected<C>, SourceError>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Connected<C>, SourceError>>,
    {
        self.0.get_or_try_init(connect).await
    }
}

impl<C> fmt::Debug for LazyClient<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0.get(), f)
    }
}

/// Outcome of classifying a failed request.
pub(crate) enum Classified {
    /// A 404 that names no bucket: a missing object, or for a listing a
    /// bucket that is not there, depending on the call.
    NotFound,
    /// Any other failure, already classified.
    Error(SourceError),
}

impl Classified {
    /// For an object request: a 404 means the object is missing.
    pub fn missing_object<T>(self) -> Result<Option<T>, SourceError> {
        match self {
            Classified::NotFound => Ok(None),
            Classified::Error(e) => Err(e),
        }
    }

    /// For a listing, which names no object: a 404 can only be the bucket.
    pub fn missing_bucket<T>(self, bucket: &str) -> Result<T, SourceError> {
        match self {
            Classified::NotFound => Err(SourceError::NoSuchBucket(bucket.to_string())),
            Classified::Error(e) => Err(e),
        }
    }
}

/// 408, 429 and 5xx are worth retrying, as both AWS's and Google's retry
/// guidance document.
pub(crate) fn status_is_transient(status: u16) -> bool {
    matches!(status, 408 | 429 | 500..=599)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transient_statuses() {
        for s in [408, 429, 500, 502, 503, 504] {
            assert!(status_is_transient(s), "{s}");
        }
        for s in [400, 401, 403, 404, 412] {
            assert!(!status_is_transient(s), "{s}");
        }
    }
}

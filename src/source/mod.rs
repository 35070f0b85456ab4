//! Where backups are read from: one [`Source`] trait shaped like an object
//! store's API, one implementation per backend.
//!
//! The sync engine only sees this trait, so each backend is tested against the
//! same behaviour: list with a start-after cursor and a page limit, get an
//! object whole. Backends classify their own errors ([`SourceError::is_retryable`])
//! so retry decisions never depend on string matching.

pub mod fs;
pub mod gcs;
pub mod retry;
pub mod s3;

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use crate::format::{FormatError, LogName, SnapshotName};

/// Errors at the object-store boundary.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// A listed object that is not there (yet): eventually consistent stores
    /// do this for a moment, so it is retried rather than treated as empty.
    #[error("object {0} is listed but could not be found")]
    ListedButMissing(String),
    /// The bucket itself does not exist.
    #[error("bucket {0:?} does not exist")]
    NoSuchBucket(String),
    /// The directory of a `file://` source does not exist: no backup there.
    #[error("no backup at {0}: the directory does not exist")]
    NoSuchDirectory(String),
    /// Credentials were refused; retrying will not help.
    #[error("access denied to {what}: {detail}")]
    AccessDenied { what: String, detail: String },
    /// A 5xx, throttling answer, timeout or broken connection: worth retrying.
    #[error("temporary error reading {what}: {detail}")]
    Transient { what: String, detail: String },
    /// Anything else the store said no to.
    #[error("error reading {what}: {detail}")]
    Permanent { what: String, detail: String },
    /// A listed name that is not a valid backup object name.
    #[error(transparent)]
    Format(#[from] FormatError),
    /// The source URL or its settings are wrong.
    #[error("invalid source: {0}")]
    Config(String),
}

impl SourceError {
    /// True when the same call may succeed later.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            SourceError::ListedButMissing(_) | SourceError::Transient { .. }
        )
    }
}

/// A listed object with what the sync loop needs to schedule it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Listed<N> {
    pub name: N,
    /// Object size in bytes, used to bound the bytes in flight.
    pub size: u64,
    /// When the store says the object was written; guards against
    /// consuming a log past an object that is still being uploaded.
    pub last_modified: DateTime<Utc>,
}

/// A read-only view of one backup (bucket + prefix).
#[async_trait]
pub trait Source: Send + Sync + fmt::Debug {
    /// A stable description of the bucket and prefix, stored in the replica
    /// so that a file built from one backup is never synced from another.
    fn identity(&self) -> String;

    /// Reads `<prefix>differential`; `None` while it does not exist yet.
    async fn read_differential(&self) -> Result<Option<Vec<u8>>, SourceError>;

    /// Lists every snapshot range (all pages), in name order.
    async fn list_snapshots(&self) -> Result<Vec<Listed<SnapshotName>>, SourceError>;

    /// Lists up to `limit` log objects whose names sort after `start_after`
    /// (from the first when `None`), in name order.
    async fn list_logs(
        &self,
        start_after: Option<&LogName>,
        limit: usize,
    ) -> Result<Vec<Listed<LogName>>, SourceError>;

    /// Fetches one snapshot range's bytes.
    async fn get_snapshot(&self, name: &SnapshotName) -> Result<Vec<u8>, SourceError>;

    /// Fetches one log object's bytes.
    async fn get_log(&self, name: &LogName) -> Result<Vec<u8>, SourceError>;
}

/// Parses an object key below `<prefix><folder>` into a name. Keys that do not
/// end in `.bin` are an error, like any other invalid name.
pub(crate) fn name_from_key<N: std::str::FromStr<Err = FormatError>>(
    key: &str,
    list_prefix: &str,
) -> Result<N, SourceError> {
    let rest = key.strip_prefix(list_prefix).unwrap_or(key);
    let stem = rest
        .strip_suffix(".bin")
        .ok_or_else(|| FormatError::BadName {
            name: key.to_string(),
            reason: "backup objects end in .bin".into(),
        })?;
    Ok(stem.parse::<N>()?)
}

/// Settings that apply to S3-compatible stores.
#[derive(Clone, Debug, Default)]
pub struct S3Options {
    /// Custom endpoint (MinIO, R2, a local test server); AWS when `None`.
    pub endpoint: Option<String>,
    /// Region name; `us-east-1` when `None` and no `AWS_REGION` is set.
    pub region: Option<String>,
    /// Address buckets as `endpoint/bucket` instead of `bucket.endpoint`;
    /// what most S3-compatible servers want. Default on with a custom endpoint.
    pub path_style: Option<bool>,
}

/// Settings that apply to Google Cloud Storage.
#[derive(Clone, Debug, Default)]
pub struct GcsOptions {
    /// Service-account JSON key file. When `None` the backend looks further,
    /// in the order Google's clients use: `GOOGLE_APPLICATION_CREDENTIALS`,
    /// gcloud's application-default credentials, the metadata server
    /// (workload identity), else anonymous (public buckets).
    pub credentials_file: Option<std::path::PathBuf>,
    /// JSON API endpoint of an emulator (`http://host:port` or `host:port`);
    /// falls back to `STORAGE_EMULATOR_HOST`, else Google's. A plain-HTTP
    /// endpoint is used anonymously unless a key file is given explicitly.
    pub endpoint: Option<String>,
}

/// Settings common to every remote source.
#[derive(Clone, Debug)]
pub struct RemoteOptions {
    /// Timeout of each single request.
    pub request_timeout: Duration,
    /// Retry policy for transient failures.
    pub retry: retry::RetryPolicy,
}

impl Default for RemoteOptions {
    fn default() -> Self {
        RemoteOptions {
            request_timeout: Duration::from_secs(30),
            retry: retry::RetryPolicy::default(),
        }
    }
}

/// A parsed `--source` URL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SourceUrl {
    /// `file:///dir/prefix/`: a bucket copied to disk.
    Dir { root: std::path::PathBuf },
    /// `s3://bucket/prefix/`.
    S3 { bucket: String, prefix: String },
    /// `gs://bucket/prefix/`.
    Gcs { bucket: String, prefix: String },
}

impl SourceUrl {
    /// Parses `s3://bucket/prefix/`, `gs://bucket/prefix/` or `file:///path/`.
    /// A prefix always ends in `/` (Deploy writes it so); one is added when
    /// missing.
    pub fn parse(s: &str) -> Result<Self, SourceError> {
        if let Some(rest) = s.strip_prefix("s3://") {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            if bucket.is_empty() {
                return Err(SourceError::Config(format!("{s:?}: missing bucket name")));
            }
            Ok(SourceUrl::S3 {
                bucket: bucket.to_string(),
                prefix: normalize_prefix(prefix),
            })
        } else if let Some(rest) = s.strip_prefix("gs://") {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            if bucket.is_empty() {
                return Err(SourceError::Config(format!("{s:?}: missing bucket name")));
            }
            Ok(SourceUrl::Gcs {
                bucket: bucket.to_string(),
                prefix: normalize_prefix(prefix),
            })
        } else if let Some(rest) = s.strip_prefix("file://") {
            if !rest.starts_with('/') {
                return Err(SourceError::Config(format!(
                    "{s:?}: a file URL needs an absolute path (file:///dir/)"
                )));
            }
            Ok(SourceUrl::Dir {
                root: std::path::PathBuf::from(rest),
            })
        } else {
            Err(SourceError::Config(format!(
                "{s:?}: expected s3://bucket/prefix/, gs://bucket/prefix/ or file:///dir/"
            )))
        }
    }

    /// The Deploy database id, when the prefix carries one (Deploy writes
    /// backups under `.../<database uuid>/`).
    pub fn deploy_database_id(&self) -> Option<uuid::Uuid> {
        let path = match self {
            SourceUrl::Dir { root } => root.to_string_lossy().into_owned(),
            SourceUrl::S3 { prefix, .. } | SourceUrl::Gcs { prefix, .. } => prefix.clone(),
        };
        path.split('/')
            .rev()
            .find_map(|seg| uuid::Uuid::try_parse(seg).ok())
    }
}

impl fmt::Display for SourceUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SourceUrl::Dir { root } => write!(f, "file://{}", root.display()),
            SourceUrl::S3 { bucket, prefix } => write!(f, "s3://{bucket}/{prefix}"),
            SourceUrl::Gcs { bucket, prefix } => write!(f, "gs://{bucket}/{prefix}"),
        }
    }
}

fn normalize_prefix(p: &str) -> String {
    let p = p.trim_start_matches('/');
    if p.is_empty() || p.ends_with('/') {
        p.to_string()
    } else {
        format!("{p}/")
    }
}

/// Opens the source a URL names, wrapped in the retry policy.
pub fn open(
    url: &SourceUrl,
    s3: &S3Options,
    gcs: &GcsOptions,
    remote: &RemoteOptions,
) -> Result<Arc<dyn Source>, SourceError> {
    let inner: Arc<dyn Source> = match url {
        SourceUrl::Dir { root } => Arc::new(fs::DirSource::new(root.clone())),
        SourceUrl::S3 { bucket, prefix } => Arc::new(s3::S3Source::new(
            bucket.clone(),
            prefix.clone(),
            s3,
            remote.request_timeout,
        )?),
        SourceUrl::Gcs { bucket, prefix } => Arc::new(gcs::GcsSource::new(
            bucket.clone(),
            prefix.clone(),
            gcs,
            remote.request_timeout,
        )?),
    };
    Ok(Arc::new(retry::Retrying::new(inner, remote.retry.clone())))
}

/// An error and its sources, `: `-joined: reqwest's own message ("error
/// sending request") hides the cause (refused, timed out, reset).
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(inner) = cur {
        let text = inner.to_string();
        if !s.contains(&text) {
            s.push_str(": ");
            s.push_str(&text);
        }
        cur = inner.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_source_urls() {
        assert_eq!(
            SourceUrl::parse("s3://b/backups/x").unwrap(),
            SourceUrl::S3 {
                bucket: "b".into(),
                prefix: "backups/x/".into()
            }
        );
        assert_eq!(
            SourceUrl::parse("s3://b").unwrap(),
            SourceUrl::S3 {
                bucket: "b".into(),
                prefix: "".into()
            }
        );
        assert!(SourceUrl::parse("s3:///x").is_err());
        assert!(SourceUrl::parse("file://relative/x").is_err());
        assert!(SourceUrl::parse("http://x").is_err());
        let u = SourceUrl::parse("s3://b/backups/3f1c2a7e-0000-4000-8000-000000000001/").unwrap();
        assert_eq!(
            u.deploy_database_id().unwrap().to_string(),
            "3f1c2a7e-0000-4000-8000-000000000001"
        );
        assert_eq!(
            u.to_string(),
            "s3://b/backups/3f1c2a7e-0000-4000-8000-000000000001/"
        );
    }

    #[test]
    fn parses_gcs_urls() {
        assert_eq!(
            SourceUrl::parse("gs://b/backups/x").unwrap(),
            SourceUrl::Gcs {
                bucket: "b".into(),
                prefix: "backups/x/".into()
            }
        );
        assert_eq!(
            SourceUrl::parse("gs://b").unwrap(),
            SourceUrl::Gcs {
                bucket: "b".into(),
                prefix: "".into()
            }
        );
        assert!(SourceUrl::parse("gs:///x").is_err());
        let raw = "gs://b/backups/3f1c2a7e-0000-4000-8000-000000000001/";
        let u = SourceUrl::parse(raw).unwrap();
        assert_eq!(
            u.deploy_database_id().unwrap().to_string(),
            "3f1c2a7e-0000-4000-8000-000000000001"
        );
        assert_eq!(u.to_string(), raw);
        assert_eq!(SourceUrl::parse(&u.to_string()).unwrap(), u);
    }
}

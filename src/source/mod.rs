//! Where backups are read from: one small [`ObjectStore`] trait shaped like
//! an object store's API, one implementation per backend ([`fs::DirStore`],
//! [`s3::S3Store`], [`gcs::GcsStore`]), one retry wrapper
//! ([`retry::Retrying`]) around any of them, and one factory ([`open`]).
//!
//! The stores know nothing of the backup layout (`crate::backup` alone
//! does), so each backend only speaks its API: list with a start-after
//! cursor and a page limit, get an object whole or to a file, get it only
//! if it changed.
//! Backends classify their own errors ([`SourceError::is_retryable`]) so
//! retry decisions never depend on string matching.

mod connection;
pub mod fs;
pub mod gcs;
pub mod retry;
pub mod s3;

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use crate::backup::Backup;
use crate::format::FormatError;

pub use s3::S3Credentials;

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

/// One object of a listing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObjectMeta {
    /// The key below the store's root (bucket + prefix, or directory).
    pub key: String,
    /// Object size in bytes.
    pub size: u64,
    /// When the store says the object was written.
    pub last_modified: DateTime<Utc>,
}

/// One page of a listing.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Listing {
    /// Keys in ascending order, each after the start-after key.
    pub objects: Vec<ObjectMeta>,
    /// True when the store says more keys follow this page.
    pub more: bool,
}

/// What a store says identifies one version of an object (an S3 ETag, a GCS
/// generation, a file's mtime and size): opaque, only ever compared, so that
/// a poll can learn "unchanged" without downloading the body.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ObjectVersion(pub String);

/// The answer of [`ObjectStore::get_if_changed`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum IfChanged {
    /// The object is still the version the caller knows; no body was read.
    Unchanged,
    /// A different version (or the first read), with its body.
    Changed {
        body: Vec<u8>,
        version: ObjectVersion,
    },
}

/// A downloaded object: its bytes, or the copy of a large object in an
/// anonymous temporary file (gone when this is dropped).
#[derive(Debug)]
pub enum Body {
    Bytes(Vec<u8>),
    File { file: std::fs::File, len: u64 },
}

impl Body {
    /// The object's size in bytes.
    pub fn len(&self) -> u64 {
        self.payload().len()
    }

    /// True for an empty object.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Where the decoders read it from.
    pub fn payload(&self) -> crate::format::Payload<'_> {
        match self {
            Body::Bytes(b) => crate::format::Payload::Bytes(b),
            Body::File { file, len } => crate::format::Payload::File(file, *len),
        }
    }
}

/// Copies a body arriving in chunks to `file`: what every backend's
/// [`ObjectStore::get_to_file`] does with its stream. Chunk errors are
/// classified by `classify`; a failed write to the file is transient (a
/// full temporary directory may be emptied).
pub(crate) async fn copy_to_file<E>(
    what: &str,
    mut chunks: impl futures::Stream<Item = Result<bytes::Bytes, E>> + Unpin,
    file: &mut tokio::fs::File,
    classify: impl Fn(E) -> SourceError,
) -> StoreResult<u64> {
    use futures::StreamExt;
    use tokio::io::AsyncWriteExt;
    let mut len = 0u64;
    while let Some(chunk) = chunks.next().await {
        let chunk = chunk.map_err(&classify)?;
        file.write_all(&chunk)
            .await
            .map_err(|e| spool_error(what, e))?;
        len += chunk.len() as u64;
    }
    file.flush().await.map_err(|e| spool_error(what, e))?;
    Ok(len)
}

/// A failure of the temporary file a large object is downloaded to.
pub(crate) fn spool_error(what: &str, e: std::io::Error) -> SourceError {
    SourceError::Transient {
        what: what.to_string(),
        detail: format!("writing its downloaded copy to a temporary file failed: {e}"),
    }
}

/// The answer of every store call.
pub type StoreResult<T> = Result<T, SourceError>;

/// How a store names itself and its objects, built once from its settings
/// so that the identity, messages and listed names always agree.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Naming {
    /// A stable description of the bucket and prefix (or directory), stored
    /// in replica files so that a file built from one backup is never synced
    /// from another: its value must never change for the same settings.
    pub identity: String,
    /// Put before a key to name the object in messages (a URL or a path),
    /// so that an operator can find it.
    pub url_base: String,
    /// Put before a key to spell it as the store's own listing does.
    pub key_prefix: String,
}

impl Naming {
    /// The names of a bucket's objects below `prefix`, where `bucket_url`
    /// (`s3://b/`, `http://host:9000/b/`, `gs://b/`) names the bucket: the
    /// identity is the URL of the prefix.
    pub(crate) fn in_bucket(bucket_url: &str, prefix: &str) -> Naming {
        let url = format!("{bucket_url}{prefix}");
        Naming {
            identity: url.clone(),
            url_base: url,
            key_prefix: prefix.to_string(),
        }
    }

    /// How `key` is named in messages.
    pub fn describe(&self, key: &str) -> String {
        format!("{}{key}", self.url_base)
    }

    /// `key` as the store's listing spells it (the prefix prepended), for
    /// requests and for errors that quote a listed name.
    pub fn key_in_store(&self, key: &str) -> String {
        format!("{}{key}", self.key_prefix)
    }

    /// A key as the store lists it, made relative to the prefix again.
    pub(crate) fn relative<'a>(&self, listed: &'a str) -> &'a str {
        listed.strip_prefix(&self.key_prefix).unwrap_or(listed)
    }
}

/// A read-only object store rooted at one backup (bucket + prefix, or a
/// directory). Keys are relative to that root; the store adds its prefix.
///
/// Implementations only speak their API and classify failures into
/// [`SourceError`]; they never retry (that is [`retry::Retrying`]'s job, so
/// every backend gets one policy) and never interpret keys (that is
/// [`crate::backup`]'s job, so the layout is spelled once).
#[async_trait]
pub trait ObjectStore: Send + Sync + fmt::Debug {
    /// The store's identity and how it names objects.
    fn naming(&self) -> &Naming;

    /// Lists up to `limit` (at least one, at most the store's page size)
    /// keys that start with `prefix` and sort after `after`, in key order:
    /// one request.
    async fn list(&self, prefix: &str, after: Option<&str>, limit: usize) -> StoreResult<Listing>;

    /// Fetches an object whole; `None` when it does not exist.
    async fn get(&self, key: &str) -> StoreResult<Option<Vec<u8>>>;

    /// Writes an object's body to `file` (empty, at its start) as it
    /// arrives, never holding it whole: for objects too large to keep in
    /// memory. Returns its length; `None` when it does not exist. A body
    /// cut short is an error (the caller empties the file and retries).
    async fn get_to_file(&self, key: &str, file: &mut tokio::fs::File) -> StoreResult<Option<u64>>;

    /// Fetches an object unless its version is still `known`; `None` when it
    /// does not exist. "Unchanged" costs no body transfer, so the object can
    /// be polled cheaply.
    async fn get_if_changed(
        &self,
        key: &str,
        known: Option<&ObjectVersion>,
    ) -> StoreResult<Option<IfChanged>>;
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

/// Whether two source identities (see [`Naming::identity`]) name the same
/// backup. Identities are stored in replica files as they were spelled
/// when the file was bound, by this version or an earlier one (which kept
/// a directory's trailing slash, or an explicitly given AWS endpoint), so
/// both sides are normalised here instead of rewriting what a file holds.
pub fn same_backup(a: &str, b: &str) -> bool {
    a == b || normalize_identity(a) == normalize_identity(b)
}

/// One spelling per backup: a directory without trailing or doubled
/// slashes and `.` segments; a bucket prefix ending in `/`; an endpoint
/// URL lower-cased without its default port; and AWS's own S3 endpoints
/// (`https://s3.amazonaws.com`, `https://s3.<region>.amazonaws.com`),
/// which all address the one global bucket namespace, as `s3://`.
fn normalize_identity(id: &str) -> String {
    if let Some(path) = id.strip_prefix("file://") {
        let path: std::path::PathBuf = std::path::Path::new(path).components().collect();
        return format!("file://{}", path.display());
    }
    for scheme in ["s3://", "gs://"] {
        if let Some(rest) = id.strip_prefix(scheme) {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            return format!("{scheme}{bucket}/{}", normalize_prefix(prefix));
        }
    }
    let Ok(url) = url::Url::parse(id) else {
        return id.to_string();
    };
    let (Some(host), "http" | "https") = (url.host_str(), url.scheme()) else {
        return id.to_string();
    };
    let path = url.path().trim_start_matches('/');
    let (bucket, prefix) = path.split_once('/').unwrap_or((path, ""));
    let prefix = normalize_prefix(prefix);
    if url.scheme() == "https" && url.port().is_none() && is_aws_s3_endpoint(host) {
        return format!("s3://{bucket}/{prefix}");
    }
    match url.port() {
        Some(port) => format!("{}://{host}:{port}/{bucket}/{prefix}", url.scheme()),
        None => format!("{}://{host}/{bucket}/{prefix}", url.scheme()),
    }
}

/// `s3.amazonaws.com`, `s3.<region>.amazonaws.com`, `s3-<region>.amazonaws.com`
/// and their dual-stack and FIPS variants: AWS's path-style S3 endpoints.
fn is_aws_s3_endpoint(host: &str) -> bool {
    host == "s3.amazonaws.com"
        || host
            .strip_suffix(".amazonaws.com")
            .is_some_and(|h| h.starts_with("s3.") || h.starts_with("s3-"))
}

/// Everything [`open`] needs besides the URL.
#[derive(Clone, Debug, Default)]
pub struct SourceOptions {
    /// Settings of S3-compatible stores.
    pub s3: S3Options,
    /// Static S3 keys; the AWS credential chain when `None`.
    pub s3_credentials: Option<S3Credentials>,
    /// Settings of Google Cloud Storage.
    pub gcs: GcsOptions,
    /// Timeouts and retries of every remote store.
    pub remote: RemoteOptions,
}

/// Opens the backup a URL names: the one place a backend is chosen, so the
/// CLI, the configuration and the tests all get the same store, wrapped in
/// the same retry policy.
pub fn open(url: &SourceUrl, options: &SourceOptions) -> Result<Arc<Backup>, SourceError> {
    let timeout = options.remote.request_timeout;
    let store: Arc<dyn ObjectStore> = match url {
        SourceUrl::Dir { root } => Arc::new(fs::DirStore::new(root.clone())),
        SourceUrl::S3 { bucket, prefix } => Arc::new(s3::S3Store::new(
            bucket.clone(),
            prefix.clone(),
            &options.s3,
            options.s3_credentials.clone(),
            timeout,
        )?),
        SourceUrl::Gcs { bucket, prefix } => Arc::new(gcs::GcsStore::new(
            bucket.clone(),
            prefix.clone(),
            &options.gcs,
            timeout,
        )?),
    };
    Ok(Arc::new(Backup::new(store, options.remote.retry.clone())))
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
    fn spellings_of_one_backup_are_one_backup() {
        let same = [
            ("file:///x/sample", "file:///x/sample/"),
            ("file:///x/sample", "file:///x//sample/./"),
            ("s3://b/p/", "s3://b/p"),
            ("s3://b/p/", "https://s3.amazonaws.com/b/p/"),
            ("s3://b/p/", "https://s3.eu-west-1.amazonaws.com/b/p/"),
            ("s3://b/p/", "https://S3.us-east-1.amazonaws.com:443/b/p"),
            ("http://127.0.0.1:9000/b/p/", "http://127.0.0.1:9000/b/p"),
            ("gs://b/p/", "gs://b/p"),
        ];
        for (a, b) in same {
            assert!(same_backup(a, b), "{a} vs {b}");
        }
        let different = [
            ("file:///x/sample", "file:///x/other"),
            ("s3://b/p/", "s3://b/q/"),
            ("s3://b/p/", "http://s3.amazonaws.com/b/p/"),
            ("s3://b/p/", "http://127.0.0.1:9000/b/p/"),
            ("http://127.0.0.1:9000/b/p/", "http://127.0.0.1:9001/b/p/"),
            ("s3://b/p/", "gs://b/p/"),
        ];
        for (a, b) in different {
            assert!(!same_backup(a, b), "{a} vs {b}");
        }
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

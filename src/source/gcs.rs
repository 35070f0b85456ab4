//! Objects in a Google Cloud Storage bucket, read natively through the GCS
//! JSON API (no HMAC keys, no S3-interop endpoint).
//!
//! A listing is one `objects.list` request with `prefix` + `startOffset` +
//! `maxResults`; objects are downloaded with `alt=media`, and polled by their
//! generation (one metadata request, no body, while it is unchanged). Errors
//! are classified into [`SourceError`] so that the retry wrapper and the sync
//! loop treat GCS exactly like every other backend.
//!
//! # Credentials
//! Tried in the order Google's own clients use, first match wins:
//! 1. an explicit service-account JSON key file ([`GcsOptions::credentials_file`]);
//! 2. with a plain-`http://` endpoint (an emulator): anonymous, so that no
//!    token is ever fetched for, or sent to, a test server;
//! 3. `GOOGLE_APPLICATION_CREDENTIALS`;
//! 4. gcloud's application-default credentials file
//!    (`gcloud auth application-default login`);
//! 5. the GCE/GKE metadata server (workload identity);
//! 6. anonymous (public buckets).
//!
//! The identity that was used is named in every access-denied error, because
//! "403" alone does not tell an operator which account lacks
//! `roles/storage.objectViewer`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use gcloud_storage::client::google_cloud_auth;
use gcloud_storage::client::{Client, ClientConfig};
use gcloud_storage::http::objects::download::Range;
use gcloud_storage::http::objects::get::GetObjectRequest;
use gcloud_storage::http::objects::list::ListObjectsRequest;
use gcloud_storage::http::objects::Object;
use gcloud_storage::http::Error as GcsError;

use super::connection::{status_is_transient, Classified, Connected, LazyClient};
use super::{
    error_chain, GcsOptions, IfChanged, Listing, Naming, ObjectMeta, ObjectStore, ObjectVersion,
    SourceError, StoreResult,
};

/// The public GCS endpoint, used when no other endpoint is configured.
const DEFAULT_ENDPOINT: &str = "https://storage.googleapis.com";

/// Most objects GCS returns per listing page: the documented maximum of
/// `maxResults` for `objects.list`.
const MAX_PAGE: usize = 1000;

/// OAuth scope for reading objects: the narrowest scope that covers
/// `objects.list` and `objects.get`.
const READ_ONLY_SCOPE: &[&str] = &["https://www.googleapis.com/auth/devstorage.read_only"];

/// Environment variable that names a service-account key file, read by every
/// Google client library.
const CREDENTIALS_ENV: &str = "GOOGLE_APPLICATION_CREDENTIALS";

/// Environment variable with the `host:port` (or URL) of a GCS emulator,
/// read by every Google client library.
const EMULATOR_ENV: &str = "STORAGE_EMULATOR_HOST";

/// Reads objects below `gs://<bucket>/<prefix>`.
#[derive(Debug)]
pub struct GcsStore {
    /// Bucket name, without `gs://`.
    bucket: String,
    /// Below `gs://bucket/`, with the backup's object-name prefix (empty or
    /// ending in `/`).
    naming: Naming,
    /// Base URL of the JSON API (the public endpoint or an emulator).
    endpoint: String,
    /// How the client will authenticate, decided without I/O.
    auth: AuthPlan,
    /// Timeout of every single HTTP request to GCS.
    request_timeout: Duration,
    /// The JSON-API client (cheap to clone, shares one connection pool),
    /// built on first use, and the account it acts as.
    client: LazyClient<Client>,
}

/// The credential source chosen from the options and environment.
#[derive(Clone, Debug, PartialEq, Eq)]
enum AuthPlan {
    /// A JSON key file; `origin` says where its path came from.
    KeyFile { path: PathBuf, origin: &'static str },
    /// Try the metadata server; anonymous when not on Google Cloud.
    MetadataOrAnonymous,
    /// No credentials at all.
    Anonymous,
}

impl AuthPlan {
    /// Picks the credential source (see the module docs for the order).
    /// `env` and `well_known` are parameters so the order can be tested
    /// without touching the process environment.
    fn choose(
        explicit: Option<&Path>,
        endpoint: &str,
        env: impl Fn(&str) -> Option<String>,
        well_known: Option<PathBuf>,
    ) -> AuthPlan {
        if let Some(path) = explicit {
            return AuthPlan::KeyFile {
                path: path.to_path_buf(),
                origin: "--gcs-credentials-file",
            };
        }
        if endpoint.starts_with("http://") {
            return AuthPlan::Anonymous;
        }
        if let Some(path) = env(CREDENTIALS_ENV).filter(|p| !p.is_empty()) {
            return AuthPlan::KeyFile {
                path: PathBuf::from(path),
                origin: CREDENTIALS_ENV,
            };
        }
        if let Some(path) = well_known {
            return AuthPlan::KeyFile {
                path,
                origin: "gcloud application-default credentials",
            };
        }
        AuthPlan::MetadataOrAnonymous
    }
}

/// gcloud's application-default credentials file, when it exists.
fn well_known_credentials() -> Option<PathBuf> {
    let home = std::env::var_os("HOME")?;
    let path = PathBuf::from(home).join(".config/gcloud/application_default_credentials.json");
    path.is_file().then_some(path)
}

/// Turns `host:port` (the `STORAGE_EMULATOR_HOST` convention) or a URL into
/// a base URL without a trailing `/`.
fn normalize_endpoint(raw: &str) -> Result<String, SourceError> {
    let raw = raw.trim().trim_end_matches('/');
    let url = if raw.contains("://") {
        raw.to_string()
    } else {
        format!("http://{raw}")
    };
    let parsed = url::Url::parse(&url)
        .map_err(|e| SourceError::Config(format!("GCS endpoint {raw:?}: {e}")))?;
    if !matches!(parsed.scheme(), "http" | "https") || parsed.host_str().is_none() {
        return Err(SourceError::Config(format!(
            "GCS endpoint {raw:?}: expected http(s)://host[:port]"
        )));
    }
    Ok(url)
}

impl GcsStore {
    /// A store for `gs://<bucket>/<prefix>`. Nothing is contacted until the
    /// first call; the endpoint falls back to `STORAGE_EMULATOR_HOST` and the
    /// credentials to `GOOGLE_APPLICATION_CREDENTIALS` (see the module docs).
    pub fn new(
        bucket: String,
        prefix: String,
        options: &GcsOptions,
        request_timeout: Duration,
    ) -> Result<Self, SourceError> {
        let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        let endpoint = match options.endpoint.clone().or_else(|| env(EMULATOR_ENV)) {
            Some(e) => normalize_endpoint(&e)?,
            None => DEFAULT_ENDPOINT.to_string(),
        };
        let auth = AuthPlan::choose(
            options.credentials_file.as_deref(),
            &endpoint,
            env,
            well_known_credentials(),
        );
        Ok(GcsStore {
            naming: Naming::in_bucket(&format!("gs://{bucket}/"), &prefix),
            bucket,
            endpoint,
            auth,
            request_timeout,
            client: LazyClient::new(),
        })
    }

    /// The client, built (and authenticated) on first use.
    async fn connected(&self) -> Result<&Connected<Client>, SourceError> {
        self.client.get(|| self.connect()).await
    }

    async fn connect(&self) -> Result<Connected<Client>, SourceError> {
        let http = reqwest::Client::builder()
            .timeout(self.request_timeout)
            .build()
            .map_err(|e| SourceError::Config(format!("cannot build the HTTP client: {e}")))?;
        let mut config = ClientConfig {
            http: Some(reqwest_middleware::ClientBuilder::new(http).build()),
            storage_endpoint: self.endpoint.clone(),
            ..ClientConfig::default()
        }
        .anonymous();
        let auth_config =
            google_cloud_auth::project::Config::default().with_scopes(READ_ONLY_SCOPE);
        let identity = match &self.auth {
            AuthPlan::Anonymous => "anonymous".to_string(),
            AuthPlan::KeyFile { path, origin } => {
                let what = format!("credentials file {} (from {origin})", path.display());
                let bytes = tokio::fs::read(path)
                    .await
                    .map_err(|e| SourceError::Config(format!("cannot read {what}: {e}")))?;
                let creds: google_cloud_auth::credentials::CredentialsFile =
                    serde_json::from_slice(&bytes).map_err(|e| {
                        SourceError::Config(format!("{what} is not a Google credentials file: {e}"))
                    })?;
                let identity = match &creds.client_email {
                    Some(email) => format!("service account {email} ({what})"),
                    None => format!("{} credentials ({what})", creds.tp),
                };
                let provider =
                    google_cloud_auth::token::DefaultTokenSourceProvider::new_with_credentials(
                        auth_config,
                        Box::new(creds),
                    )
                    .await
                    .map_err(|e| self.auth_error(&identity, e))?;
                config.token_source_provider = Some(Box::new(provider));
                identity
            }
            AuthPlan::MetadataOrAnonymous => {
                if gcloud_metadata::on_gce().await {
                    let identity = match gcloud_metadata::email("default").await {
                        Ok(email) => format!("metadata server identity {email}"),
                        Err(_) => "metadata server identity".to_string(),
                    };
                    let provider =
                        google_cloud_auth::token::DefaultTokenSourceProvider::new(auth_config)
                            .await
                            .map_err(|e| self.auth_error(&identity, e))?;
                    config.token_source_provider = Some(Box::new(provider));
                    identity
                } else {
                    "anonymous (no credentials found: pass --gcs-credentials-file or set \
                     GOOGLE_APPLICATION_CREDENTIALS)"
                        .to_string()
                }
            }
        };
        tracing::debug!(endpoint = %self.endpoint, %identity, "GCS client ready");
        Ok(Connected {
            client: Client::new(config),
            identity,
        })
    }

    /// Classifies a failure to obtain an access token.
    fn auth_error(&self, identity: &str, e: google_cloud_auth::error::Error) -> SourceError {
        let what = self.naming.identity.clone();
        let detail = format!("obtaining a token for {identity}: {e}");
        if token_error_is_transient(&e) {
            SourceError::Transient { what, detail }
        } else {
            SourceError::AccessDenied { what, detail }
        }
    }

    /// Classifies a failed request about `what`; a 404 is left to the
    /// caller, which knows whether it means "no object" or "no bucket".
    fn classify(&self, conn: &Connected<Client>, what: String, e: GcsError) -> Classified {
        let (status, detail) = match &e {
            GcsError::Response(r) => (Some(r.code), r.to_string()),
            GcsError::HttpClient(re) | GcsError::RawResponse(re, _) => {
                match re.status().map(|s| s.as_u16()) {
                    Some(s) => (Some(s), error_chain(&e)),
                    None if http_error_is_transient(re) => {
                        return Classified::Error(SourceError::Transient {
                            what,
                            detail: error_chain(&e),
                        })
                    }
                    None => (None, error_chain(&e)),
                }
            }
            GcsError::TokenSource(inner) => {
                return Classified::Error(
                    match inner.downcast_ref::<google_cloud_auth::error::Error>() {
                        Some(te) if token_error_is_transient(te) => SourceError::Transient {
                            what,
                            detail: format!("refreshing the token of {}: {e}", conn.identity),
                        },
                        _ => SourceError::AccessDenied {
                            what,
                            detail: format!("refreshing the token of {}: {e}", conn.identity),
                        },
                    },
                )
            }
            GcsError::HttpMiddleware(_) | GcsError::InvalidRangeHeader(_) => (None, e.to_string()),
        };
        Classified::Error(match status {
            Some(404) => return Classified::NotFound,
            Some(401 | 403) => SourceError::AccessDenied {
                what,
                detail: format!("{detail} (as {})", conn.identity),
            },
            Some(s) if status_is_transient(s) => SourceError::Transient { what, detail },
            _ => SourceError::Permanent { what, detail },
        })
    }

    /// A listed object, its key relative to the prefix.
    fn meta(&self, obj: Object) -> ObjectMeta {
        // An object without `updated` is treated as written just now, so a
        // settle window still holds it back rather than letting it through.
        let last_modified = obj
            .updated
            .or(obj.time_created)
            .and_then(|t| DateTime::<Utc>::from_timestamp(t.unix_timestamp(), t.nanosecond()))
            .unwrap_or_else(Utc::now);
        ObjectMeta {
            key: self.naming.relative(&obj.name).to_string(),
            size: u64::try_from(obj.size).unwrap_or(0),
            last_modified,
        }
    }

    fn request(&self, key: &str) -> GetObjectRequest {
        GetObjectRequest {
            bucket: self.bucket.clone(),
            object: self.naming.key_in_store(key),
            ..GetObjectRequest::default()
        }
    }

    /// A failed object request: `None` for a missing object.
    fn missing_or<T>(
        &self,
        conn: &Connected<Client>,
        key: &str,
        e: GcsError,
    ) -> Result<Option<T>, SourceError> {
        self.classify(conn, self.naming.describe(key), e)
            .missing_object()
    }
}

/// Timeouts and broken connections (no HTTP status at all) are transient.
fn http_error_is_transient(e: &reqwest::Error) -> bool {
    match e.status() {
        Some(s) => status_is_transient(s.as_u16()),
        None => {
            e.is_timeout()
                || e.is_connect()
                || e.is_request()
                || e.is_body()
                // reqwest reports a body cut short (reset, truncated) while
                // reading it whole as a decode error; only malformed JSON
                // is a decode error that a retry cannot mend.
                || (e.is_decode() && !caused_by::<serde_json::Error>(e))
        }
    }
}

/// Whether `e` or one of its sources is a `T`.
fn caused_by<T: std::error::Error + 'static>(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur = Some(e);
    while let Some(inner) = cur {
        if inner.downcast_ref::<T>().is_some() {
            return true;
        }
        cur = inner.source();
    }
    false
}

/// Whether refreshing a token failed for a reason that may go away.
fn token_error_is_transient(e: &google_cloud_auth::error::Error) -> bool {
    use google_cloud_auth::error::Error as A;
    match e {
        A::HttpError(re) => http_error_is_transient(re),
        A::TokenErrorResponse { status, .. } => status_is_transient(*status),
        _ => false,
    }
}

#[async_trait]
impl ObjectStore for GcsStore {
    async fn list(&self, prefix: &str, after: Option<&str>, limit: usize) -> StoreResult<Listing> {
        let start_offset = after.map(|a| self.naming.key_in_store(a));
        let limit = limit.clamp(1, MAX_PAGE);
        // One more than wanted: `startOffset` is inclusive, so the first
        // item may be the start-after key itself.
        let want = limit + usize::from(after.is_some());
        let conn = self.connected().await?;
        let req = ListObjectsRequest {
            bucket: self.bucket.clone(),
            prefix: Some(self.naming.key_in_store(prefix)),
            start_offset: start_offset.clone(),
            max_results: Some(want.min(MAX_PAGE) as i32),
            ..ListObjectsRequest::default()
        };
        let resp = match conn.client.list_objects(&req).await {
            Ok(resp) => resp,
            Err(e) => {
                let what = self.naming.describe(prefix);
                return self.classify(conn, what, e).missing_bucket(&self.bucket);
            }
        };
        let mut more = resp.next_page_token.is_some_and(|t| !t.is_empty());
        let mut objects = Vec::new();
        let items = resp.items.unwrap_or_default().into_iter();
        for obj in items.filter(|o| start_offset.as_ref().is_none_or(|a| o.name > *a)) {
            if objects.len() == limit {
                more = true;
                break;
            }
            objects.push(self.meta(obj));
        }
        Ok(Listing { objects, more })
    }

    async fn get(&self, key: &str) -> StoreResult<Option<Vec<u8>>> {
        let conn = self.connected().await?;
        match conn
            .client
            .download_object(&self.request(key), &Range::default())
            .await
        {
            Ok(bytes) => Ok(Some(bytes)),
            Err(e) => self.missing_or(conn, key, e),
        }
    }

    async fn get_to_file(&self, key: &str, file: &mut tokio::fs::File) -> StoreResult<Option<u64>> {
        let conn = self.connected().await?;
        let what = self.naming.describe(key);
        let chunks = match conn
            .client
            .download_streamed_object(&self.request(key), &Range::default())
            .await
        {
            Ok(s) => s,
            Err(e) => return self.missing_or(conn, key, e),
        };
        let classify = |e| match self.classify(conn, what.clone(), e) {
            Classified::Error(e) => e,
            Classified::NotFound => SourceError::ListedButMissing(what.clone()),
        };
        super::copy_to_file(&what, std::pin::pin!(chunks), file, classify)
            .await
            .map(Some)
    }

    async fn get_if_changed(
        &self,
        key: &str,
        known: Option<&ObjectVersion>,
    ) -> StoreResult<Option<IfChanged>> {
        let conn = self.connected().await?;
        // The metadata names the generation without the body. The download
        // that follows may find a newer one; the version then lags the body,
        // which only costs one more download at the next poll.
        let object = match conn.client.get_object(&self.request(key)).await {
            Ok(o) => o,
            Err(e) => return self.missing_or(conn, key, e),
        };
        let version = ObjectVersion(object.generation.to_string());
        if known == Some(&version) {
            return Ok(Some(IfChanged::Unchanged));
        }
        match self.get(key).await? {
            Some(body) => Ok(Some(IfChanged::Changed { body, version })),
            None => Ok(None),
        }
    }

    fn naming(&self) -> &Naming {
        &self.naming
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credential_order() {
        let none = |_: &str| None::<String>;
        let gac = |k: &str| (k == CREDENTIALS_ENV).then(|| "/env/key.json".to_string());
        let explicit = Path::new("/x/key.json");
        let https = DEFAULT_ENDPOINT;
        let wk = Some(PathBuf::from("/home/u/adc.json"));

        // An explicit key file wins over everything, even with an emulator.
        assert_eq!(
            AuthPlan::choose(Some(explicit), "http://127.0.0.1:1", gac, wk.clone()),
            AuthPlan::KeyFile {
                path: explicit.into(),
                origin: "--gcs-credentials-file"
            }
        );
        // An emulator is used anonymously.
        assert_eq!(
            AuthPlan::choose(None, "http://127.0.0.1:1", gac, wk.clone()),
            AuthPlan::Anonymous
        );
        assert_eq!(
            AuthPlan::choose(None, https, gac, wk.clone()),
            AuthPlan::KeyFile {
                path: "/env/key.json".into(),
                origin: CREDENTIALS_ENV
            }
        );
        assert!(matches!(
            AuthPlan::choose(None, https, none, wk),
            AuthPlan::KeyFile {
                origin: "gcloud application-default credentials",
                ..
            }
        ));
        assert_eq!(
            AuthPlan::choose(None, https, none, None),
            AuthPlan::MetadataOrAnonymous
        );
    }

    #[test]
    fn endpoints() {
        // `host:port` is the `STORAGE_EMULATOR_HOST` convention: plain HTTP.
        let good = [
            ("127.0.0.1:4443", "http://127.0.0.1:4443"),
            ("https://storage.example/", "https://storage.example"),
        ];
        for (raw, want) in good {
            assert_eq!(normalize_endpoint(raw).unwrap(), want, "{raw}");
        }
        for bad in ["ftp://x", ""] {
            assert!(normalize_endpoint(bad).is_err(), "{bad}");
        }
    }
}

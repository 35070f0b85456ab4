//! Objects in Amazon S3 or an S3-compatible store (MinIO, Cloudflare R2,
//! Ceph, a local test server), read with `rust-s3` over `ListObjectsV2` and
//! `GetObject`.
//!
//! A listing is one request with `prefix` + `start-after` + `max-keys`;
//! objects are downloaded whole, conditionally with `If-None-Match`. Every
//! failure is classified into [`SourceError`] here, so that the retry wrapper
//! ([`super::retry::Retrying`]) and the sync loop treat S3 exactly like every
//! other backend. Nothing is retried in this module: `rust-s3`'s own retry
//! loop is switched off (see [`S3Store::new`]).
//!
//! # Addressing
//! Without an endpoint the bucket is on AWS, addressed virtual-host style
//! (`bucket.s3.amazonaws.com`), except for bucket names with dots, which AWS
//! only serves path-style over TLS. With an endpoint (`http(s)://host[:port]`,
//! `https://` assumed when no scheme is given) requests go path-style
//! (`host/bucket/key`), what MinIO and most S3-compatible servers expect.
//! [`S3Options::path_style`] overrides both defaults. The region comes from
//! [`S3Options::region`], else `AWS_REGION`, else `AWS_DEFAULT_REGION`, else
//! `us-east-1`.
//!
//! # Credentials
//! Resolved on first use (they may need network I/O), first match wins, in
//! the order of the AWS SDKs:
//! 1. `AWS_ACCESS_KEY_ID` + `AWS_SECRET_ACCESS_KEY` (+ `AWS_SESSION_TOKEN`);
//! 2. the shared credentials file (`AWS_SHARED_CREDENTIALS_FILE`, else
//!    `~/.aws/credentials`), profile `AWS_PROFILE` or `default`;
//! 3. web identity (`AWS_ROLE_ARN` + `AWS_WEB_IDENTITY_TOKEN_FILE`, EKS IRSA);
//! 4. container credentials (ECS task roles, EKS Pod Identity);
//! 5. the EC2 instance metadata service (instance profile), unless
//!    `AWS_EC2_METADATA_DISABLED=true`.
//!
//! When none of them yields credentials the source fails with
//! [`SourceError::Config`] naming what was looked for. It does **not** fall
//! back to anonymous requests: Deploy only writes backups into private
//! buckets, and an anonymous request to a private bucket ends in a 403 that
//! hides the real problem (no credentials configured) behind a misleading
//! "access denied".
//!
//! Access-denied errors name the access key id in use and where it came
//! from (never the secret), because "403" alone does not tell an operator
//! which key lacks `s3:ListBucket` / `s3:GetObject`.
//!
//! # Identity
//! [`Naming::identity`] is a URL of the backup: `s3://bucket/prefix/` on AWS
//! (bucket names are global there, so the region is left out) and
//! `<endpoint>/bucket/prefix/` (e.g. `http://127.0.0.1:9000/kv-backup/p/`)
//! with a custom endpoint, so that two servers holding a bucket of the same
//! name are different sources. It stays a URL (rather than, say, `s3://… @
//! endpoint`) because the sync engine names objects by appending to it.
//! Errors name objects the same way.

use std::path::PathBuf;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use reqwest::header::{HeaderMap, HeaderValue, IF_NONE_MATCH};
use s3::creds::error::CredentialsError;
use s3::creds::Credentials;
use s3::error::S3Error;
use s3::request::request_trait::ResponseData;
use s3::serde_types::Object;
use s3::{Bucket, Region};

use super::connection::{status_is_transient, Classified, Connected, LazyClient};
use super::{
    error_chain, IfChanged, Listing, Naming, ObjectMeta, ObjectStore, ObjectVersion, S3Options,
    SourceError, StoreResult,
};

/// Most keys one `ListObjectsV2` page returns: the documented maximum of
/// `max-keys` on AWS (and the default of MinIO and s3s).
const MAX_PAGE: usize = 1000;

/// Region used when none is configured: AWS's default region, and the name
/// S3-compatible servers accept when they ignore regions.
const DEFAULT_REGION: &str = "us-east-1";

/// Longest part of an error body quoted in a message: enough for S3's XML
/// `<Code>`/`<Message>`, short enough that a proxy's HTML page does not
/// flood the log.
const MAX_DETAIL: usize = 300;

/// Resolving credentials may take a few metadata requests (IMDSv2 needs a
/// token, then the role, then the keys; v1 is tried after); the whole chain
/// is bounded by this many request timeouts.
const CREDENTIAL_TIMEOUTS: u32 = 6;

/// Error codes that mean the credentials (or the clock they sign with) were
/// refused, whatever HTTP status carries them.
const DENIED_CODES: &[&str] = &[
    "AccessDenied",
    "AllAccessDisabled",
    "AccountProblem",
    "ExpiredToken",
    "InvalidAccessKeyId",
    "InvalidToken",
    "RequestTimeTooSkewed",
    "SignatureDoesNotMatch",
    "TokenRefreshRequired",
];

/// Error codes S3 (and compatible stores) use for throttling and for
/// server-side trouble; `RequestTimeout` comes with a 400 but only means
/// the connection was too slow.
const TRANSIENT_CODES: &[&str] = &[
    "InternalError",
    "RequestLimitExceeded",
    "RequestThrottled",
    "RequestTimeout",
    "ServiceUnavailable",
    "SlowDown",
    "Throttling",
    "ThrottlingException",
    "TooManyRequestsException",
];

/// Static keys, for callers that hold them already (tests, embedding
/// applications); without them [`S3Store::new`] uses the AWS chain.
#[derive(Clone)]
pub struct S3Credentials {
    /// The access key id; it is named in access-denied errors.
    pub access_key_id: String,
    /// The secret key; never printed, not even by `Debug`.
    pub secret_access_key: String,
    /// Session token of temporary (STS) credentials.
    pub session_token: Option<String>,
}

impl std::fmt::Debug for S3Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Credentials")
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &"<redacted>")
            .field(
                "session_token",
                &self.session_token.as_ref().map(|_| "<redacted>"),
            )
            .finish()
    }
}

/// Where the credentials come from.
#[derive(Debug)]
enum CredentialPlan {
    /// Given by the caller.
    Static(S3Credentials),
    /// The AWS chain (see the module docs), resolved on first use.
    Chain,
}

/// Reads objects below `s3://<bucket>/<prefix>` on AWS or on a custom
/// endpoint.
#[derive(Debug)]
pub struct S3Store {
    /// Bucket name, without `s3://`.
    bucket: String,
    /// AWS region or custom endpoint (with the region name to sign with).
    region: Region,
    /// Path-style (`host/bucket/key`) rather than virtual-host addressing.
    path_style: bool,
    /// Timeout of every single HTTP request.
    request_timeout: Duration,
    /// Below `s3://bucket/` or `<endpoint>/bucket/`, with the backup's key
    /// prefix (empty or ending in `/`).
    naming: Naming,
    /// How to obtain credentials.
    credentials: CredentialPlan,
    /// rust-s3's bucket handle (HTTP client and credentials), built on
    /// first use, and the key id it signs as.
    client: LazyClient<Box<Bucket>>,
}

impl S3Store {
    /// A store for `s3://<bucket>/<prefix>`, signing with `credentials`, or
    /// with the AWS chain (see the module docs) when `None`. Nothing is
    /// contacted until the first call; invalid settings (endpoint, region)
    /// fail here.
    ///
    /// `rust-s3` retries transient failures by itself by default (one more
    /// attempt after a second); this switches that process-wide setting
    /// off, because retrying belongs to [`super::retry::Retrying`], which
    /// has the configured policy and reports each attempt.
    pub fn new(
        bucket: String,
        prefix: String,
        opts: &S3Options,
        credentials: Option<S3Credentials>,
        request_timeout: Duration,
    ) -> Result<S3Store, SourceError> {
        let credentials = match credentials {
            Some(c) => CredentialPlan::Static(c),
            None => CredentialPlan::Chain,
        };
        Self::build(bucket, prefix, opts, request_timeout, credentials)
    }

    fn build(
        bucket: String,
        prefix: String,
        opts: &S3Options,
        request_timeout: Duration,
        credentials: CredentialPlan,
    ) -> Result<S3Store, SourceError> {
        s3::set_retries(0);
        if bucket.is_empty() {
            return Err(SourceError::Config("missing S3 bucket name".into()));
        }
        let env = |k: &str| std::env::var(k).ok().filter(|v| !v.trim().is_empty());
        let endpoint = opts
            .endpoint
            .as_deref()
            .filter(|e| !e.trim().is_empty())
            .map(normalize_endpoint)
            .transpose()?;
        let region_name = opts
            .region
            .clone()
            .filter(|r| !r.trim().is_empty())
            .or_else(|| env("AWS_REGION"))
            .or_else(|| env("AWS_DEFAULT_REGION"))
            .unwrap_or_else(|| DEFAULT_REGION.to_string());
        let region = region_for(region_name.trim(), endpoint.as_deref())?;
        // AWS serves dotted bucket names virtual-host style only over plain
        // HTTP (the wildcard certificate does not cover them), so the SDKs
        // switch those to path style; so do we.
        let path_style = opts
            .path_style
            .unwrap_or(endpoint.is_some() || bucket.contains('.'));
        let bucket_url = match &endpoint {
            Some(ep) => format!("{ep}/{bucket}/"),
            None => format!("s3://{bucket}/"),
        };
        Ok(S3Store {
            naming: Naming::in_bucket(&bucket_url, &prefix),
            bucket,
            region,
            path_style,
            request_timeout,
            credentials,
            client: LazyClient::new(),
        })
    }

    /// The bucket handle, built (and its credentials resolved) on first use.
    async fn connected(&self) -> Result<&Connected<Box<Bucket>>, SourceError> {
        self.client.get(|| self.connect()).await
    }

    async fn connect(&self) -> Result<Connected<Box<Bucket>>, SourceError> {
        let what = self.naming.identity.clone();
        let (creds, identity) = match &self.credentials {
            CredentialPlan::Static(c) => {
                let creds = Credentials::new(
                    Some(&c.access_key_id),
                    Some(&c.secret_access_key),
                    None,
                    c.session_token.as_deref(),
                    None,
                )
                .map_err(|e| SourceError::Config(format!("S3 credentials: {e}")))?;
                (
                    creds,
                    format!("access key id {} given explicitly", c.access_key_id),
                )
            }
            CredentialPlan::Chain => {
                // The chain reads files and may call metadata services with
                // a blocking client: keep it off the async workers.
                s3::creds::set_request_timeout(Some(self.request_timeout));
                let what2 = what.clone();
                let task = tokio::task::spawn_blocking(move || credentials_from_chain(&what2));
                let bound = self.request_timeout.saturating_mul(CREDENTIAL_TIMEOUTS);
                match tokio::time::timeout(bound, task).await {
                    Ok(Ok(res)) => res?,
                    Ok(Err(join)) => {
                        return Err(SourceError::Transient {
                            what,
                            detail: format!("resolving AWS credentials: {join}"),
                        })
                    }
                    Err(_) => {
                        return Err(SourceError::Transient {
                            what,
                            detail: format!("resolving AWS credentials took longer than {bound:?}"),
                        })
                    }
                }
            }
        };
        let mut bucket = Bucket::new(&self.bucket, self.region.clone(), creds)
            .map_err(|e| SourceError::Config(format!("cannot build the S3 client: {e}")))?;
        if self.path_style {
            bucket.set_path_style();
        } else {
            bucket.set_subdomain_style();
        }
        bucket.set_request_timeout(Some(self.request_timeout));
        tracing::debug!(source = %what, %identity, path_style = self.path_style, "S3 client ready");
        Ok(Connected {
            client: bucket,
            identity,
        })
    }

    /// Classifies a failed request about `what`; a 404 other than
    /// `NoSuchBucket` is left to the caller.
    fn classify(
        &self,
        conn: &Connected<Box<Bucket>>,
        what: String,
        e: S3Error,
        is_get: bool,
    ) -> Classified {
        let err = match e {
            S3Error::HttpFailWithBody(status, body) => {
                let code = xml_text(&body, "Code");
                let detail = http_detail(status, code.as_deref(), &body);
                let code = code.as_deref().unwrap_or("");
                if code == "NoSuchBucket" {
                    SourceError::NoSuchBucket(self.bucket.clone())
                } else if status == 404 {
                    return Classified::NotFound;
                } else if matches!(status, 401 | 403) || DENIED_CODES.contains(&code) {
                    let hint = if is_get && status == 403 && matches!(code, "AccessDenied" | "") {
                        "; S3 also answers 403 for a missing object when the key \
                         lacks s3:ListBucket"
                    } else {
                        ""
                    };
                    SourceError::AccessDenied {
                        what,
                        detail: format!("{detail} (as {}{hint})", conn.identity),
                    }
                } else if status_is_transient(status) || TRANSIENT_CODES.contains(&code) {
                    SourceError::Transient { what, detail }
                } else {
                    SourceError::Permanent { what, detail }
                }
            }
            S3Error::Reqwest(re) => {
                // `what` names the object already; reqwest's URL would
                // repeat it with the query string.
                let re = re.without_url();
                let detail = error_chain(&re);
                if re.is_builder() || re.is_redirect() {
                    SourceError::Permanent { what, detail }
                } else {
                    // Timeouts, refused or reset connections, bodies cut
                    // short: the network, not the request, failed.
                    SourceError::Transient { what, detail }
                }
            }
            S3Error::Io(io) => SourceError::Transient {
                what,
                detail: format!("I/O error: {io}"),
            },
            S3Error::Credentials(CredentialsError::NoRefreshSource) => SourceError::AccessDenied {
                what,
                detail: format!(
                    "the temporary credentials of {} expired and cannot be refreshed",
                    conn.identity
                ),
            },
            S3Error::Credentials(ce) => SourceError::Transient {
                what,
                detail: format!("refreshing the credentials of {}: {ce}", conn.identity),
            },
            S3Error::SerdeXml(xe) => SourceError::Permanent {
                what,
                detail: format!("unreadable listing XML: {xe}"),
            },
            other => SourceError::Permanent {
                what,
                detail: other.to_string(),
            },
        };
        Classified::Error(err)
    }

    /// A listed object, its key relative to the prefix.
    fn meta(&self, obj: &Object) -> Result<ObjectMeta, SourceError> {
        let key = self.naming.relative(&obj.key);
        let last_modified =
            parse_last_modified(&obj.last_modified).ok_or_else(|| SourceError::Permanent {
                what: self.naming.describe(key),
                detail: format!("unparsable LastModified {:?}", obj.last_modified),
            })?;
        Ok(ObjectMeta {
            key: key.to_string(),
            size: obj.size,
            last_modified,
        })
    }

    /// One `GetObject` of `<prefix><key>` with `headers` added: `Ok(None)`
    /// on a 404 (`NoSuchKey`), `Ok(Some(None))` on a 304 (not modified).
    async fn fetch(
        &self,
        key: &str,
        headers: Option<HeaderMap>,
    ) -> Result<Option<Option<ResponseData>>, SourceError> {
        let conn = self.connected().await?;
        let full = self.naming.key_in_store(key);
        let res = match headers {
            Some(h) => match conn.client.with_extra_headers(h) {
                Ok(b) => b.get_object(&full).await,
                Err(e) => Err(e),
            },
            None => conn.client.get_object(&full).await,
        };
        match res {
            Ok(resp) => Ok(Some(Some(resp))),
            Err(S3Error::HttpFailWithBody(304, _)) => Ok(Some(None)),
            Err(e) => self
                .classify(conn, self.naming.describe(key), e, true)
                .missing_object(),
        }
    }
}

#[async_trait]
impl ObjectStore for S3Store {
    async fn list(&self, prefix: &str, after: Option<&str>, limit: usize) -> StoreResult<Listing> {
        let conn = self.connected().await?;
        let start_after = after.map(|a| self.naming.key_in_store(a));
        let max_keys = Some(limit.clamp(1, MAX_PAGE));
        let list_prefix = self.naming.key_in_store(prefix);
        let answer = conn
            .client
            .list_page(list_prefix, None, None, start_after.clone(), max_keys)
            .await;
        let page = match answer {
            Ok((page, _status)) => page,
            Err(e) => {
                let what = self.naming.describe(prefix);
                return self
                    .classify(conn, what, e, false)
                    .missing_bucket(&self.bucket);
            }
        };
        let mut objects = Vec::new();
        // start-after is exclusive; a server that disagrees must not make us
        // read an object twice.
        let fresh = |o: &&Object| start_after.as_ref().is_none_or(|a| o.key > *a);
        for obj in page.contents.iter().filter(fresh) {
            objects.push(self.meta(obj)?);
        }
        Ok(Listing {
            objects,
            more: page.is_truncated,
        })
    }

    async fn get(&self, key: &str) -> StoreResult<Option<Vec<u8>>> {
        Ok(self
            .fetch(key, None)
            .await?
            .map(|resp| resp.map(|r| r.to_vec()).unwrap_or_default()))
    }

    async fn get_to_file(&self, key: &str, file: &mut tokio::fs::File) -> StoreResult<Option<u64>> {
        let conn = self.connected().await?;
        let what = self.naming.describe(key);
        let classify = |e| match self.classify(conn, what.clone(), e, true) {
            Classified::Error(e) => e,
            Classified::NotFound => SourceError::ListedButMissing(what.clone()),
        };
        let mut resp = match conn
            .client
            .get_object_stream(self.naming.key_in_store(key))
            .await
        {
            Ok(r) => r,
            Err(S3Error::HttpFailWithBody(404, _)) => return Ok(None),
            Err(e) => return Err(classify(e)),
        };
        super::copy_to_file(&what, resp.bytes(), file, classify)
            .await
            .map(Some)
    }

    async fn get_if_changed(
        &self,
        key: &str,
        known: Option<&ObjectVersion>,
    ) -> StoreResult<Option<IfChanged>> {
        let headers = match known {
            Some(ObjectVersion(etag)) if !etag.is_empty() => {
                let mut h = HeaderMap::new();
                let value = HeaderValue::from_str(etag).map_err(|_| SourceError::Permanent {
                    what: self.naming.describe(key),
                    detail: format!("unusable ETag {etag:?}"),
                })?;
                h.insert(IF_NONE_MATCH, value);
                Some(h)
            }
            _ => None,
        };
        let Some(answer) = self.fetch(key, headers).await? else {
            return Ok(None);
        };
        let Some(resp) = answer else {
            return Ok(Some(IfChanged::Unchanged));
        };
        let headers = resp.headers();
        let etag = headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case("etag"))
            .map(|(_, v)| v.clone())
            .unwrap_or_default();
        let version = ObjectVersion(etag);
        // A server that ignores If-None-Match still sends the ETag.
        if !version.0.is_empty() && known == Some(&version) {
            return Ok(Some(IfChanged::Unchanged));
        }
        Ok(Some(IfChanged::Changed {
            body: resp.to_vec(),
            version,
        }))
    }

    fn naming(&self) -> &Naming {
        &self.naming
    }
}

/// Turns an endpoint into `scheme://host[:port]` (no trailing `/`, default
/// port dropped, host lower-cased), so that one server always gives one
/// identity. `https://` is assumed without a scheme.
fn normalize_endpoint(raw: &str) -> Result<String, SourceError> {
    let raw = raw.trim();
    let with_scheme = if raw.contains("://") {
        raw.to_string()
    } else {
        format!("https://{raw}")
    };
    let bad = |why: &str| SourceError::Config(format!("S3 endpoint {raw:?}: {why}"));
    let url = url::Url::parse(&with_scheme).map_err(|e| bad(&e.to_string()))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(bad("expected http(s)://host[:port]"));
    }
    let host = url.host_str().ok_or_else(|| bad("no host"))?;
    if !url.username().is_empty() || url.password().is_some() {
        return Err(bad(
            "credentials do not belong in the URL; use AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY",
        ));
    }
    if url.path() != "/" || url.query().is_some() || url.fragment().is_some() {
        return Err(bad(
            "expected http(s)://host[:port] without a path; the bucket goes in --source",
        ));
    }
    Ok(match url.port() {
        Some(p) => format!("{}://{host}:{p}", url.scheme()),
        None => format!("{}://{host}", url.scheme()),
    })
}

/// The rust-s3 region for a region name and optional endpoint.
fn region_for(name: &str, endpoint: Option<&str>) -> Result<Region, SourceError> {
    let valid = !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if !valid {
        return Err(SourceError::Config(format!(
            "S3 region {name:?}: expected a name such as us-east-1"
        )));
    }
    if let Some(ep) = endpoint {
        return Ok(Region::Custom {
            region: name.to_string(),
            endpoint: ep.to_string(),
        });
    }
    match name.parse::<Region>() {
        // rust-s3 knows the region (and its endpoint's spelling).
        Ok(r) if !matches!(r, Region::Custom { .. }) => Ok(r),
        // A region newer than this rust-s3: AWS's regular endpoint name.
        _ => Ok(Region::Custom {
            region: name.to_string(),
            endpoint: format!("https://s3.{name}.amazonaws.com"),
        }),
    }
}

/// Walks the AWS credential chain (see the module docs). Blocking.
/// Returns the credentials and a description of them for messages.
fn credentials_from_chain(what: &str) -> Result<(Credentials, String), SourceError> {
    let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    let config = |msg: String| SourceError::Config(format!("AWS credentials for {what}: {msg}"));
    let transient = |msg: String| SourceError::Transient {
        what: what.to_string(),
        detail: format!("resolving AWS credentials: {msg}"),
    };
    let described = |c: Credentials, origin: &str| {
        let id = c.access_key.clone().unwrap_or_default();
        (c, format!("access key id {id} from {origin}"))
    };

    // 1. Environment.
    if let Some(id) = env("AWS_ACCESS_KEY_ID") {
        let secret = env("AWS_SECRET_ACCESS_KEY").ok_or_else(|| {
            config("AWS_ACCESS_KEY_ID is set but AWS_SECRET_ACCESS_KEY is not".into())
        })?;
        let token = env("AWS_SESSION_TOKEN").or_else(|| env("AWS_SECURITY_TOKEN"));
        let c = Credentials::new(Some(&id), Some(&secret), None, token.as_deref(), None)
            .map_err(|e| config(e.to_string()))?;
        return Ok(described(c, "AWS_ACCESS_KEY_ID"));
    }

    // 2. Shared credentials file.
    let profile = env("AWS_PROFILE");
    let file = env("AWS_SHARED_CREDENTIALS_FILE")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".aws/credentials")));
    if let Some(file) = file.filter(|f| f.is_file()) {
        let section = profile.as_deref().unwrap_or("default");
        match Credentials::from_credentials_file(&file, Some(section)) {
            Ok(c) => {
                return Ok(described(
                    c,
                    &format!("profile {section} in {}", file.display()),
                ))
            }
            // Only named profiles, no default: an instance role may still
            // apply. A profile asked for by name must exist, though.
            Err(CredentialsError::ConfigNotFound) if profile.is_none() => {}
            Err(CredentialsError::ConfigNotFound) => {
                return Err(config(format!(
                    "AWS_PROFILE={section} but {} has no [{section}] section",
                    file.display()
                )))
            }
            Err(e) => {
                return Err(config(format!(
                    "profile {section} in {}: {e}",
                    file.display()
                )))
            }
        }
    } else if let Some(p) = &profile {
        return Err(config(format!(
            "AWS_PROFILE={p} but there is no credentials file (set \
             AWS_SHARED_CREDENTIALS_FILE or create ~/.aws/credentials); SSO and \
             config-file-only profiles are not supported"
        )));
    }

    // 3. Web identity (EKS IRSA).
    if env("AWS_ROLE_ARN").is_some() && env("AWS_WEB_IDENTITY_TOKEN_FILE").is_some() {
        return match Credentials::from_sts_env("kvreplica") {
            Ok(c) => Ok(described(c, "web identity (AWS_ROLE_ARN)")),
            Err(e @ CredentialsError::Atto(_)) => Err(transient(format!("STS: {e}"))),
            Err(e) => Err(config(format!(
                "assuming AWS_ROLE_ARN with AWS_WEB_IDENTITY_TOKEN_FILE: {e}"
            ))),
        };
    }

    // 4. Container credentials (ECS, EKS Pod Identity).
    if env("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI").is_some()
        || env("AWS_CONTAINER_CREDENTIALS_FULL_URI").is_some()
    {
        return match Credentials::from_container_credentials_provider() {
            Ok(c) => Ok(described(c, "container credentials")),
            Err(
                e @ (CredentialsError::Atto(_)
                | CredentialsError::ContainerCredentialsRequest
                | CredentialsError::UnexpectedStatusCode(_)),
            ) => Err(transient(format!("container credentials: {e}"))),
            Err(e) => Err(config(format!("container credentials: {e}"))),
        };
    }

    // 5. EC2 instance metadata (v2, then v1), unless switched off the way
    // the AWS SDKs are.
    let imds_disabled =
        env("AWS_EC2_METADATA_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true"));
    if !imds_disabled {
        match Credentials::from_instance_metadata_v2(false) {
            Ok(c) => return Ok(described(c, "EC2 instance metadata")),
            Err(CredentialsError::NotEc2) => {}
            Err(e2) => {
                return match Credentials::from_instance_metadata(false) {
                    Ok(c) => Ok(described(c, "EC2 instance metadata")),
                    Err(e1) => Err(transient(format!(
                        "EC2 instance metadata: {e2} (IMDSv2), {e1} (IMDSv1)"
                    ))),
                }
            }
        }
    }

    Err(config(
        "none found: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, configure a profile \
         in ~/.aws/credentials (AWS_PROFILE), or run with an IAM role (EC2 instance profile, \
         ECS task role, EKS IRSA)"
            .into(),
    ))
}

/// The text of the first `<tag>…</tag>` in an S3 XML error body.
fn xml_text(body: &str, tag: &str) -> Option<String> {
    let open = format!("<{tag}>");
    let close = format!("</{tag}>");
    let start = body.find(&open)? + open.len();
    let len = body[start..].find(&close)?;
    let text = body[start..start + len].trim();
    (!text.is_empty()).then(|| text.to_string())
}

/// `HTTP 403 AccessDenied: Access Denied`, or the start of a body that is
/// not S3's XML.
fn http_detail(status: u16, code: Option<&str>, body: &str) -> String {
    match code {
        Some(code) => match xml_text(body, "Message") {
            Some(msg) => format!("HTTP {status} {code}: {}", truncate(&msg)),
            None => format!("HTTP {status} {code}"),
        },
        None if body.trim().is_empty() => format!("HTTP {status}"),
        None => format!("HTTP {status}: {}", truncate(body.trim())),
    }
}

/// At most [`MAX_DETAIL`] bytes of `s`, cut at a character boundary.
fn truncate(s: &str) -> String {
    if s.len() <= MAX_DETAIL {
        return s.to_string();
    }
    let mut end = MAX_DETAIL;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

/// Parses a listing's `LastModified` (RFC 3339, as S3 writes it:
/// `2024-05-01T12:00:00.000Z`).
fn parse_last_modified(s: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(s.trim())
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints() {
        assert_eq!(
            normalize_endpoint("http://127.0.0.1:9000/").unwrap(),
            "http://127.0.0.1:9000"
        );
        assert_eq!(
            normalize_endpoint("HTTPS://Storage.Example:443").unwrap(),
            "https://storage.example"
        );
        assert_eq!(
            normalize_endpoint("minio.local:9000").unwrap(),
            "https://minio.local:9000"
        );
        assert!(normalize_endpoint("ftp://x").is_err());
        assert!(normalize_endpoint("http://h/bucket").is_err());
        assert!(normalize_endpoint("http://k:s@h").is_err());
        assert!(normalize_endpoint("").is_err());
    }

    #[test]
    fn regions() {
        assert_eq!(region_for("us-east-1", None).unwrap(), Region::UsEast1);
        assert_eq!(
            region_for("xx-newplace-9", None).unwrap(),
            Region::Custom {
                region: "xx-newplace-9".into(),
                endpoint: "https://s3.xx-newplace-9.amazonaws.com".into()
            }
        );
        assert_eq!(
            region_for("auto", Some("https://acct.r2.cloudflarestorage.com")).unwrap(),
            Region::Custom {
                region: "auto".into(),
                endpoint: "https://acct.r2.cloudflarestorage.com".into()
            }
        );
        assert!(region_for("us east", None).is_err());
    }

    #[test]
    fn addressing_and_identity() {
        let aws = S3Store::new(
            "b".into(),
            "p/".into(),
            &S3Options {
                region: Some("eu-west-1".into()),
                ..S3Options::default()
            },
            None,
            Duration::from_secs(1),
        )
        .unwrap();
        assert!(!aws.path_style);
        assert_eq!(aws.naming().identity, "s3://b/p/");
        let dotted = S3Store::new(
            "a.b".into(),
            "".into(),
            &S3Options::default(),
            None,
            Duration::from_secs(1),
        )
        .unwrap();
        assert!(dotted.path_style);
        let local = S3Store::new(
            "b".into(),
            "p/".into(),
            &S3Options {
                endpoint: Some("http://127.0.0.1:9000/".into()),
                ..S3Options::default()
            },
            None,
            Duration::from_secs(1),
        )
        .unwrap();
        assert!(local.path_style);
        assert_eq!(local.naming().identity, "http://127.0.0.1:9000/b/p/");
        let forced = S3Store::new(
            "b".into(),
            "".into(),
            &S3Options {
                endpoint: Some("http://127.0.0.1:9000".into()),
                path_style: Some(false),
                ..S3Options::default()
            },
            None,
            Duration::from_secs(1),
        )
        .unwrap();
        assert!(!forced.path_style);
    }

    #[test]
    fn error_bodies() {
        let body = "<?xml version=\"1.0\"?><Error><Code>SlowDown</Code>\
                    <Message>Please reduce your request rate.</Message></Error>";
        assert_eq!(xml_text(body, "Code").as_deref(), Some("SlowDown"));
        assert_eq!(
            http_detail(503, Some("SlowDown"), body),
            "HTTP 503 SlowDown: Please reduce your request rate."
        );
        assert_eq!(http_detail(502, None, ""), "HTTP 502");
        assert_eq!(xml_text("<html>", "Code"), None);
        let long = "é".repeat(400);
        assert!(truncate(&long).len() <= MAX_DETAIL + "…".len());
    }

    #[test]
    fn last_modified() {
        let t = parse_last_modified("2024-05-01T12:00:00.123Z").unwrap();
        assert_eq!(t.timestamp_millis(), 1_714_564_800_123);
        assert!(parse_last_modified("Wed, 01 May 2024 12:00:00 GMT").is_none());
    }

    #[test]
    fn credentials_debug_hides_the_secret() {
        let c = S3Credentials {
            access_key_id: "AKIDEXAMPLE".into(),
            secret_access_key: "wJalrXUtnFEMI".into(),
            session_token: Some("tok".into()),
        };
        let shown = format!("{c:?}");
        assert!(shown.contains("AKIDEXAMPLE"));
        assert!(!shown.contains("wJalrXUtnFEMI") && !shown.contains("tok\""));
    }
}

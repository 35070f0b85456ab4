//! A KV Connect *client*: what `kvreplica restore` reads the primary with
//! and writes it through (the Deploy database's KV Connect URL, or a
//! `denokv` server).
//!
//! The metadata exchange gives the data-path endpoint and its token; reads
//! are `snapshot_read` pages, writes `atomic_write` with checks. Transient
//! failures (5xx, a dropped connection) are retried with a bounded backoff;
//! a 401 on the data path re-runs the metadata exchange once (the data-path
//! token may have expired). Tokens go only into `Authorization` headers:
//! no error or log line carries one.

use std::time::Duration;

use denokv_proto::datapath::{
    AtomicWrite, AtomicWriteOutput, AtomicWriteStatus, Check, KvEntry, ReadRange, SnapshotRead,
    SnapshotReadOutput,
};
use prost::Message;
use url::Url;

/// The protocol's limits, as the reference server (`denokv`) and Deno
/// Deploy enforce them. `denokv_proto` declares the same numbers in a
/// private module (`limits`), so they are repeated here.
pub(crate) mod limits {
    /// Checks in one `atomic_write`: every mutation carries one, so this
    /// is also the largest batch.
    pub const MAX_CHECKS: usize = 10;
    pub const MAX_MUTATIONS: usize = 1000;
    pub const MAX_WRITE_KEY_SIZE_BYTES: usize = 2048;
    pub const MAX_VALUE_SIZE_BYTES: usize = 65536;
    /// Keys and values of one write's mutations and checks together.
    pub const MAX_TOTAL_MUTATION_SIZE_BYTES: usize = 819200;
    /// Entries one `snapshot_read` returns at most.
    pub const MAX_READ_ENTRIES: usize = 1000;
}

/// Attempts per request for transient failures (the first included).
const ATTEMPTS: u32 = 6;
/// The first retry's delay; doubled per attempt up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(200);
const MAX_BACKOFF: Duration = Duration::from_secs(5);
const TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The server refused the request for a lasting reason (a 4xx other
    /// than a data-path 401, or a refused metadata exchange).
    #[error("{what}: the server answered {status}: {body}")]
    Refused {
        what: &'static str,
        status: u16,
        body: String,
    },
    /// The target accepts no writes: another kvreplica (a read-only
    /// replica), or a database whose writes are disabled.
    #[error("{url} is read-only ({why}): restore writes to the primary database (the Deno Deploy database's KV Connect URL or a denokv server), not to a replica")]
    ReadOnly { url: String, why: String },
    /// Still failing after the bounded retries (5xx, connection errors).
    #[error("{what}: {detail} (gave up after {ATTEMPTS} attempts)")]
    Transient { what: &'static str, detail: String },
    /// An answer this client cannot read.
    #[error("{what}: {detail}")]
    Protocol { what: &'static str, detail: String },
}

/// What the metadata exchange gives.
struct Session {
    endpoint: Url,
    token: String,
    database_id: String,
    version: u64,
}

/// A connection to one KV Connect database.
pub struct Client {
    http: reqwest::Client,
    url: Url,
    token: String,
    session: Session,
}

/// How one guarded write ended.
#[derive(Debug, PartialEq, Eq)]
pub enum WriteOutcome {
    Committed,
    /// The checks at these indices (into the request's checks) failed;
    /// nothing was written.
    ChecksFailed(Vec<usize>),
}

/// A failure of one attempt: worth retrying or not.
enum Attempt {
    Retry(String),
    Unauthorized(String),
    Fail(ClientError),
}

impl Client {
    /// Runs the metadata exchange with `url` and `token`.
    pub async fn connect(url: &str, token: &str) -> Result<Client, ClientError> {
        let url = Url::parse(url).map_err(|e| ClientError::Protocol {
            what: "the target URL",
            detail: format!("{url:?} is not a URL: {e}"),
        })?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(ClientError::Protocol {
                what: "the target URL",
                detail: format!("{url} is not an http:// or https:// URL"),
            });
        }
        let http = reqwest::Client::builder()
            .timeout(TIMEOUT)
            .build()
            .map_err(|e| ClientError::Protocol {
                what: "the HTTP client",
                detail: e.to_string(),
            })?;
        let session = metadata(&http, &url, token).await?;
        Ok(Client {
            http,
            url,
            token: token.to_string(),
            session,
        })
    }

    /// The database's id, as the metadata exchange named it.
    pub fn database_id(&self) -> &str {
        &self.session.database_id
    }

    /// Refuses a target that accepts no writes, with a write that cannot
    /// change anything: one check that a probe key has a versionstamp no
    /// write ever gets (all `ff`) and no mutation. A writable server
    /// answers that the check failed; a kvreplica answers 400 "read-only"
    /// and a database with writes disabled `AW_WRITE_DISABLED`. (The
    /// metadata answer says nothing about writability.)
    pub async fn ensure_writable(&mut self) -> Result<(), ClientError> {
        let probe = AtomicWrite {
            checks: vec![Check {
                // ["kvreplica", "restore-probe"], tuple-encoded.
                key: b"\x02kvreplica\x00\x02restore-probe\x00".to_vec(),
                versionstamp: vec![0xff; 10],
            }],
            ..Default::default()
        };
        match self.atomic_write(&probe).await {
            Ok(_) => Ok(()),
            Err(ClientError::Refused { status, body, .. })
                if status == 400 && body.to_ascii_lowercase().contains("read") =>
            {
                Err(ClientError::ReadOnly {
                    url: self.url.to_string(),
                    why: format!("its atomic_write answered {status}: {body}"),
                })
            }
            Err(e) => Err(e),
        }
    }

    /// Reads `range` (`start..end`, `end` `None`: to the end of the key
    /// space), page after page, calling `f` with every entry in key order.
    pub async fn read_range(
        &mut self,
        start: &[u8],
        end: Option<&[u8]>,
        mut f: impl FnMut(KvEntry),
    ) -> Result<(), ClientError> {
        let end = end.map(<[u8]>::to_vec).unwrap_or_else(|| vec![0xff]);
        let mut start = start.to_vec();
        loop {
            let request = SnapshotRead {
                ranges: vec![ReadRange {
                    start: start.clone(),
                    end: end.clone(),
                    limit: limits::MAX_READ_ENTRIES as i32,
                    reverse: false,
                }],
            };
            let body = self
                .data_path("snapshot_read", request.encode_to_vec())
                .await?;
            let out = SnapshotReadOutput::decode(&body[..]).map_err(|e| ClientError::Protocol {
                what: "snapshot_read",
                detail: format!("undecodable answer: {e}"),
            })?;
            if out.read_disabled {
                return Err(ClientError::Refused {
                    what: "snapshot_read",
                    status: 200,
                    body: "reads are disabled on this database".into(),
                });
            }
            let values = out
                .ranges
                .into_iter()
                .next()
                .map(|r| r.values)
                .unwrap_or_default();
            let full = values.len() >= limits::MAX_READ_ENTRIES;
            let mut last = None;
            for entry in values {
                last = Some(entry.key.clone());
                f(entry);
            }
            match last {
                Some(mut key) if full => {
                    key.push(0);
                    start = key;
                }
                _ => return Ok(()),
            }
        }
    }

    /// One key's current entry.
    pub async fn get(&mut self, key: &[u8]) -> Result<Option<KvEntry>, ClientError> {
        let mut end = key.to_vec();
        end.push(0);
        let mut found = None;
        self.read_range(key, Some(&end), |e| found = Some(e))
            .await?;
        Ok(found)
    }

    /// Sends one atomic write.
    pub async fn atomic_write(&mut self, write: &AtomicWrite) -> Result<WriteOutcome, ClientError> {
        let body = self
            .data_path("atomic_write", write.encode_to_vec())
            .await?;
        let out = AtomicWriteOutput::decode(&body[..]).map_err(|e| ClientError::Protocol {
            what: "atomic_write",
            detail: format!("undecodable answer: {e}"),
        })?;
        match AtomicWriteStatus::try_from(out.status) {
            Ok(AtomicWriteStatus::AwSuccess) => Ok(WriteOutcome::Committed),
            Ok(AtomicWriteStatus::AwCheckFailure) => Ok(WriteOutcome::ChecksFailed(
                out.failed_checks.iter().map(|&i| i as usize).collect(),
            )),
            Ok(AtomicWriteStatus::AwWriteDisabled) => Err(ClientError::ReadOnly {
                url: self.url.to_string(),
                why: "its atomic_write answered AW_WRITE_DISABLED".into(),
            }),
            _ => Err(ClientError::Protocol {
                what: "atomic_write",
                detail: format!("unknown status {}", out.status),
            }),
        }
    }

    /// POSTs `body` to the data-path `method`, retrying transient failures
    /// with backoff and re-running the metadata exchange once on a 401.
    async fn data_path(
        &mut self,
        method: &'static str,
        body: Vec<u8>,
    ) -> Result<bytes::Bytes, ClientError> {
        let mut refreshed = false;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let url = join(&self.session.endpoint, method);
            let sent = self
                .http
                .post(url)
                .bearer_auth(&self.session.token)
                .header("x-denokv-database-id", &self.session.database_id)
                .header("x-denokv-version", self.session.version.to_string())
                .header("content-type", "application/x-protobuf")
                .body(body.clone())
                .send()
                .await;
            let result = match sent {
                Err(e) => Err(Attempt::Retry(e.without_url().to_string())),
                Ok(response) => answer(method, response).await,
            };
            match result {
                Ok(bytes) => return Ok(bytes),
                Err(Attempt::Unauthorized(_)) if !refreshed => {
                    refreshed = true;
                    self.session = metadata(&self.http, &self.url, &self.token).await?;
                }
                Err(Attempt::Unauthorized(body)) => {
                    return Err(ClientError::Refused {
                        what: method,
                        status: 401,
                        body,
                    })
                }
                Err(Attempt::Retry(detail)) if attempt >= ATTEMPTS => {
                    return Err(ClientError::Transient {
                        what: method,
                        detail,
                    })
                }
                Err(Attempt::Retry(detail)) => {
                    tracing::warn!(attempt, "{method}: {detail}; retrying");
                    tokio::time::sleep(backoff(attempt)).await;
                }
                Err(Attempt::Fail(e)) => return Err(e),
            }
        }
    }
}

/// The delay before retry `attempt` (1-based): doubling, capped.
fn backoff(attempt: u32) -> Duration {
    FIRST_BACKOFF
        .saturating_mul(1 << attempt.saturating_sub(1).min(10))
        .min(MAX_BACKOFF)
}

/// `base` with `/method` appended to its path.
fn join(base: &Url, method: &str) -> Url {
    let mut url = base.clone();
    let path = format!("{}/{method}", url.path().trim_end_matches('/'));
    url.set_path(&path);
    url
}

/// A response's body on 200; otherwise what kind of failure it is.
async fn answer(what: &'static str, response: reqwest::Response) -> Result<bytes::Bytes, Attempt> {
    let status = response.status();
    let body = match response.bytes().await {
        Ok(b) => b,
        Err(e) => return Err(Attempt::Retry(e.without_url().to_string())),
    };
    if status.is_success() {
        return Ok(body);
    }
    let text = String::from_utf8_lossy(&body)
        .trim()
        .chars()
        .take(500)
        .collect::<String>();
    if status.is_server_error() || status.as_u16() == 429 {
        Err(Attempt::Retry(format!(
            "the server answered {status}: {text}"
        )))
    } else if status.as_u16() == 401 {
        Err(Attempt::Unauthorized(text))
    } else {
        Err(Attempt::Fail(ClientError::Refused {
            what,
            status: status.as_u16(),
            body: text,
        }))
    }
}

/// The metadata exchange (retried like the data path).
async fn metadata(http: &reqwest::Client, url: &Url, token: &str) -> Result<Session, ClientError> {
    const WHAT: &str = "the metadata exchange";
    let mut attempt = 0;
    let body = loop {
        attempt += 1;
        let sent = http
            .post(url.clone())
            .bearer_auth(token)
            .header("content-type", "application/json")
            .body(r#"{"supportedVersions":[1,2,3]}"#)
            .send()
            .await;
        let result = match sent {
            Err(e) => Err(Attempt::Retry(e.without_url().to_string())),
            Ok(response) => answer(WHAT, response).await,
        };
        match result {
            Ok(body) => break body,
            Err(Attempt::Retry(detail)) if attempt < ATTEMPTS => {
                tracing::warn!(attempt, "{WHAT}: {detail}; retrying");
                tokio::time::sleep(backoff(attempt)).await;
            }
            Err(Attempt::Retry(detail)) => {
                return Err(ClientError::Transient { what: WHAT, detail })
            }
            Err(Attempt::Unauthorized(body)) => {
                return Err(ClientError::Refused {
                    what: WHAT,
                    status: 401,
                    body: format!("{body} (check the access token)"),
                })
            }
            Err(Attempt::Fail(e)) => return Err(e),
        }
    };
    parse_metadata(url, &body)
}

fn parse_metadata(url: &Url, body: &[u8]) -> Result<Session, ClientError> {
    let bad = |detail: String| ClientError::Protocol {
        what: "the metadata exchange",
        detail,
    };
    let json: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| bad(format!("the answer is not JSON: {e}")))?;
    let version = json["version"].as_u64().unwrap_or(1);
    let database_id = json["databaseId"]
        .as_str()
        .or_else(|| json["uuid"].as_str())
        .ok_or_else(|| bad("the answer names no databaseId".into()))?
        .to_string();
    let token = json["token"]
        .as_str()
        .ok_or_else(|| bad("the answer has no data-path token".into()))?
        .to_string();
    let endpoints = json["endpoints"].as_array().cloned().unwrap_or_default();
    let endpoint = endpoints
        .iter()
        .find(|e| e["consistency"] == "strong")
        .and_then(|e| e["url"].as_str())
        .ok_or_else(|| bad("the answer has no strongly consistent endpoint".into()))?;
    let endpoint = url
        .join(endpoint)
        .map_err(|e| bad(format!("endpoint {endpoint:?}: {e}")))?;
    Ok(Session {
        endpoint,
        token,
        database_id,
        version,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_endpoints_resolve_against_the_url_and_keep_no_token_in_errors() {
        let url = Url::parse("http://127.0.0.1:4512/").unwrap();
        let body = br#"{"version":3,"databaseId":"d","endpoints":[{"url":"/v2","consistency":"strong"}],"token":"secret-token","expiresAt":"x"}"#;
        let s = parse_metadata(&url, body).unwrap();
        assert_eq!(s.endpoint.as_str(), "http://127.0.0.1:4512/v2");
        assert_eq!(join(&s.endpoint, "atomic_write").path(), "/v2/atomic_write");
        let e = parse_metadata(&url, br#"{"token":"secret-token","databaseId":"d"}"#)
            .err()
            .unwrap();
        assert!(!e.to_string().contains("secret-token"), "{e}");
        assert_eq!(backoff(1), FIRST_BACKOFF);
        assert_eq!(backoff(30), MAX_BACKOFF);
    }
}

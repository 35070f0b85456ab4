//! The KV Connect server over real HTTP on 127.0.0.1, over HTTP/1.1 and
//! HTTP/2 cleartext with prior knowledge: the metadata exchange (shape,
//! version negotiation, database id, tokens and their rotation),
//! `snapshot_read` against the replica's rows (request order, half-open
//! ranges, limits, reverse, expired keys), `watch` frames as sync and
//! checkout move the state and its keep-alives, `atomic_write` refused,
//! the 503 before the initial snapshot, and every error answer.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::fixture::{Fixture, Rec, Spec, FAR_EXPIRY_MS};
use common::{read_replica, Row, Sample};
use denokv_proto::backup::{BackupKvMutationKind, BackupMutationRange, BackupReplicationLogEntry};
use denokv_proto::datapath::{
    AtomicWrite, KvEntry, KvValue, Mutation, MutationType, ReadRange, SnapshotRead,
    SnapshotReadOutput, SnapshotReadStatus, ValueEncoding, Watch, WatchKey, WatchOutput,
};
use kvreplica::auth::Tokens;
use kvreplica::checkout::checkout;
use kvreplica::format::Versionstamp;
use kvreplica::server::{self, KvConnect, ServerOptions};
use kvreplica::source::SourceUrl;
use kvreplica::store::pitr::CheckoutTarget;
use kvreplica::sync::Syncer;
use prost::Message;
use reqwest::Version;
use serde_json::Value;

const TOKEN: &str = "kv-connect-token-for-tests";
const OTHER_TOKEN: &str = "another-kv-connect-token";
const NEW_TOKEN: &str = "rotated-kv-connect-token";
/// Bound on every plain request.
const TIMEOUT: Duration = Duration::from_secs(10);
/// The Deploy database id in the shared samples' prefix.
const SAMPLE_DB_ID: &str = "3f1c2a7e-0000-4000-8000-000000000001";

/// One answer, read to the end.
struct Resp {
    status: u16,
    content_type: String,
    version: Version,
    body: Vec<u8>,
}

impl Resp {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// A KV Connect server on 127.0.0.1:0 over a replica of a backup directory,
/// with an HTTP/1.1 and an h2c client.
struct Server {
    base: String,
    url: SourceUrl,
    db_id: String,
    tokens: Arc<Tokens>,
    syncer: Arc<Syncer>,
    h1: reqwest::Client,
    h2: reqwest::Client,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl Server {
    /// Serves `source` (a `file://` URL) from the replica `db`; with `load`
    /// the initial snapshot and every log are applied before it starts.
    async fn start(source: &str, db: &Path, tokens: &[&str], load: bool) -> Server {
        let url = SourceUrl::parse(source).unwrap();
        let syncer = common::syncer(&url, db, load).await;
        let tokens = Tokens::new(tokens.iter().map(|t| t.to_string()).collect());
        let database_id = server::database_id(&url);
        let kv = KvConnect::new(
            syncer.clone(),
            db,
            ServerOptions {
                tokens: tokens.clone(),
                database_id,
                readers: 2,
                limits: Default::default(),
            },
        )
        .unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(server::serve(kv, listener, async move {
            let _ = rx.await;
        }));
        Server {
            base,
            url,
            db_id: database_id.to_string(),
            tokens,
            syncer,
            h1: reqwest::Client::builder().http1_only().build().unwrap(),
            h2: reqwest::Client::builder()
                .http2_prior_knowledge()
                .build()
                .unwrap(),
            stop: Some(tx),
            task,
        }
    }

    /// Both clients, with the HTTP version each must get back.
    fn clients(&self) -> [(&reqwest::Client, Version); 2] {
        [(&self.h1, Version::HTTP_11), (&self.h2, Version::HTTP_2)]
    }

    async fn send(
        &self,
        client: &reqwest::Client,
        method: &str,
        path: &str,
        headers: &[(String, String)],
        body: Vec<u8>,
    ) -> Resp {
        let mut req = client
            .request(method.parse().unwrap(), format!("{}{path}", self.base))
            .timeout(TIMEOUT);
        for (k, v) in headers {
            req = req.header(k.as_str(), v.as_str());
        }
        if !body.is_empty() {
            req = req.body(body);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        let version = resp.version();
        let content_type = header(&resp, "content-type");
        let body = resp.bytes().await.unwrap().to_vec();
        Resp {
            status,
            content_type,
            version,
            body,
        }
    }

    /// `POST /` with `authorization` as given (the whole header value).
    async fn metadata(&self, client: &reqwest::Client, auth: Option<&str>, body: &str) -> Resp {
        let mut headers = Vec::new();
        if let Some(a) = auth {
            headers.push(("authorization".to_string(), a.to_string()));
        }
        if !body.is_empty() {
            headers.push(("content-type".to_string(), "application/json".to_string()));
        }
        self.send(client, "POST", "/", &headers, body.as_bytes().to_vec())
            .await
    }

    /// The headers of a well-formed data path request, with `overrides`
    /// applied (`None` removes the header).
    fn data_headers(&self, overrides: &[(&str, Option<&str>)]) -> Vec<(String, String)> {
        let mut h: BTreeMap<String, String> = [
            ("authorization", format!("Bearer {TOKEN}")),
            ("x-denokv-version", "3".to_string()),
            ("x-denokv-database-id", self.db_id.clone()),
            ("content-type", "application/x-protobuf".to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        for (k, v) in overrides {
            match v {
                Some(v) => h.insert(k.to_string(), v.to_string()),
                None => h.remove(*k),
            };
        }
        h.into_iter().collect()
    }

    async fn data(
        &self,
        client: &reqwest::Client,
        path: &str,
        overrides: &[(&str, Option<&str>)],
        body: Vec<u8>,
    ) -> Resp {
        self.send(client, "POST", path, &self.data_headers(overrides), body)
            .await
    }

    /// A successful `snapshot_read`, checked for the fields every answer has.
    async fn read(&self, client: &reqwest::Client, ranges: Vec<ReadRange>) -> SnapshotReadOutput {
        let n = ranges.len();
        let r = self
            .data(
                client,
                "/v2/snapshot_read",
                &[],
                SnapshotRead { ranges }.encode_to_vec(),
            )
            .await;
        assert_eq!(r.status, 200, "snapshot_read: {}", r.text());
        assert_eq!(r.content_type, "application/x-protobuf");
        let out = SnapshotReadOutput::decode(&r.body[..]).unwrap();
        assert_eq!(out.status, SnapshotReadStatus::SrSuccess as i32);
        assert!(out.read_is_strongly_consistent);
        assert!(!out.read_disabled);
        assert_eq!(out.ranges.len(), n, "one output range per requested range");
        for e in out.ranges.iter().flat_map(|r| &r.values) {
            assert_eq!(e.versionstamp.len(), 10, "versionstamp of {}", hex(&e.key));
        }
        out
    }

    async fn watch(&self, client: &reqwest::Client, keys: &[Vec<u8>]) -> WatchStream {
        let body = Watch {
            keys: keys.iter().map(|k| WatchKey { key: k.clone() }).collect(),
        }
        .encode_to_vec();
        let mut req = client.post(format!("{}/v2/watch", self.base)).body(body);
        for (k, v) in self.data_headers(&[]) {
            req = req.header(k, v);
        }
        // No whole-request timeout: the body is endless; the answer's head
        // and every frame are waited for with a bound.
        let resp = tokio::time::timeout(TIMEOUT, req.send())
            .await
            .expect("watch answers within 10 s")
            .unwrap();
        assert_eq!(resp.status().as_u16(), 200, "watch");
        assert_eq!(header(&resp, "content-type"), "application/octet-stream");
        WatchStream {
            resp,
            buf: Vec::new(),
        }
    }

    async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        tokio::time::timeout(TIMEOUT, self.task)
            .await
            .expect("server stops on shutdown")
            .unwrap();
    }
}

/// A `watch` answer being read frame by frame.
struct WatchStream {
    resp: reqwest::Response,
    buf: Vec<u8>,
}

impl WatchStream {
    /// The next frame (`None` for a keep-alive); panics when none is
    /// complete within `wait`.
    async fn frame(&mut self, wait: Duration) -> Option<WatchOutput> {
        let deadline = Instant::now() + wait;
        loop {
            if self.buf.len() >= 4 {
                let n = u32::from_le_bytes(self.buf[..4].try_into().unwrap()) as usize;
                if self.buf.len() >= 4 + n {
                    let frame: Vec<u8> = self.buf.drain(..4 + n).skip(4).collect();
                    if n == 0 {
                        return None;
                    }
                    let out = WatchOutput::decode(&frame[..]).unwrap();
                    assert_eq!(out.status, SnapshotReadStatus::SrSuccess as i32);
                    return Some(out);
                }
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, self.resp.chunk()).await {
                Err(_) => panic!("no complete watch frame within {wait:?}"),
                Ok(Ok(Some(chunk))) => self.buf.extend_from_slice(&chunk),
                Ok(Ok(None)) => panic!("the watch stream ended"),
                Ok(Err(e)) => panic!("the watch stream failed: {e}"),
            }
        }
    }

    /// The next frame that is not a keep-alive.
    async fn data_frame(&mut self, wait: Duration) -> WatchOutput {
        let deadline = Instant::now() + wait;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if let Some(out) = self.frame(left).await {
                return out;
            }
        }
    }

    /// Reads frames, folding changed entries into `seen`, until every key
    /// shows `want`. Each frame must move some key's versionstamp; a key in
    /// `stable` (one no commit touches) may be reported, as changed with
    /// its current entry or as unchanged, but never with another entry.
    async fn until(
        &mut self,
        seen: &mut [Option<KvEntry>],
        want: &[Option<Rec>],
        stable: &[usize],
        label: &str,
    ) {
        let stamp = |e: &Option<KvEntry>| e.as_ref().map(|e| e.versionstamp.clone());
        let deadline = Instant::now() + Duration::from_secs(20);
        while !matches_all(seen, want) {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero(),
                "{label}: the watched keys did not reach the state within 20 s"
            );
            let out = self.data_frame(left).await;
            assert_eq!(out.keys.len(), seen.len(), "{label}: one output per key");
            assert!(
                out.keys
                    .iter()
                    .zip(seen.iter())
                    .any(|(k, s)| k.changed && stamp(&k.entry_if_changed) != stamp(s)),
                "{label}: a frame where no versionstamp moved"
            );
            for (i, k) in out.keys.into_iter().enumerate() {
                if k.changed {
                    if stable.contains(&i) {
                        assert!(
                            matches(&k.entry_if_changed, &want[i]),
                            "{label}: untouched key {i} reported with another entry: {:?}",
                            k.entry_if_changed
                        );
                    }
                    seen[i] = k.entry_if_changed;
                }
            }
        }
    }
}

fn header(resp: &reqwest::Response, name: &str) -> String {
    resp.headers()
        .get(name)
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default()
}

fn hex(b: &[u8]) -> String {
    hex::encode(b)
}

fn range(start: &[u8], end: &[u8], limit: i32, reverse: bool) -> ReadRange {
    ReadRange {
        start: start.to_vec(),
        end: end.to_vec(),
        limit,
        reverse,
    }
}

/// A Deno KV key of one string part.
fn str_key(s: &str) -> Vec<u8> {
    let mut k = vec![0x02];
    k.extend_from_slice(s.as_bytes());
    k.push(0x00);
    k
}

/// Entries as comparable (key, value, encoding, versionstamp) hex tuples.
fn entries(got: &[KvEntry]) -> Vec<(String, String, i64, String)> {
    got.iter()
        .map(|e| {
            (
                hex(&e.key),
                hex(&e.value),
                e.encoding as i64,
                hex(&e.versionstamp),
            )
        })
        .collect()
}

/// Replica rows in the same form as [`entries`].
fn rows<'a>(
    it: impl IntoIterator<Item = (&'a String, &'a Row)>,
) -> Vec<(String, String, i64, String)> {
    it.into_iter()
        .map(|(k, r)| (k.clone(), hex(&r.value), r.encoding, r.versionstamp.clone()))
        .collect()
}

fn matches(entry: &Option<KvEntry>, rec: &Option<Rec>) -> bool {
    match (entry, rec) {
        (None, None) => true,
        (Some(e), Some(r)) => {
            e.value == r.value
                && e.encoding as i64 == r.encoding
                && e.versionstamp == r.versionstamp
        }
        _ => false,
    }
}

fn matches_all(seen: &[Option<KvEntry>], want: &[Option<Rec>]) -> bool {
    seen.iter().zip(want).all(|(e, r)| matches(e, r))
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// A generated backup in `<tmp>/prefix/` and its `file://` URL.
fn backup(seed: u64, append_commits: usize) -> (tempfile::TempDir, Fixture, String) {
    let fx = Fixture::generate(Spec {
        seed,
        append_commits,
        ..Spec::default()
    });
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("prefix");
    fx.write_initial(&dir);
    let url = format!("file://{}/", dir.display());
    (tmp, fx, url)
}

/// One more log object after the fixture's last initial commit, holding a
/// key that expired long ago and one that expires in 2100.
fn append_expiring_keys(fx: &Fixture, dir: &Path, expired: &[u8], later: &[u8]) {
    let last = &fx.commits[fx.last_initial];
    let version = u64::from_be_bytes(last.versionstamp[..8].try_into().unwrap()) + 7;
    let stamp = |idx: u16| {
        let mut s = version.to_be_bytes().to_vec();
        s.extend(0u16.to_be_bytes());
        s.extend(idx.to_be_bytes());
        s
    };
    let entries = vec![
        BackupReplicationLogEntry {
            versionstamp: stamp(0),
            kind: BackupKvMutationKind::MkSet as i32,
            key: expired.to_vec(),
            value: vec![1, 2, 3],
            value_encoding: 3,
            expire_at_ms: 1_000,
        },
        BackupReplicationLogEntry {
            versionstamp: stamp(0xffff),
            kind: BackupKvMutationKind::MkSet as i32,
            key: later.to_vec(),
            value: 42u64.to_le_bytes().to_vec(),
            value_encoding: 2,
            expire_at_ms: FAR_EXPIRY_MS as u64,
        },
    ];
    let name = format!(
        "logs/0001_{:016x}_{}_{}.bin",
        0x10_0000,
        hex(&entries[0].versionstamp),
        hex(&entries[1].versionstamp)
    );
    let body = BackupMutationRange {
        entries,
        timestamp_ms: last.timestamp_ms + 1_000,
    }
    .encode_to_vec();
    std::fs::write(dir.join(name), body).unwrap();
}

/// `msg` followed by an unknown length-delimited field (number 15) so the
/// whole body is exactly `total` bytes; decoders skip the field.
fn padded(mut msg: Vec<u8>, total: usize) -> Vec<u8> {
    // The field is a tag byte, the pad length as a varint, then the pad.
    let room = total - msg.len() - 1;
    let n = (1..=4)
        .map(|varint_len| room - varint_len)
        .find(|&n| prost::encoding::encoded_len_varint(n as u64) + n == room)
        .unwrap();
    msg.push((15 << 3) | 2);
    prost::encoding::encode_varint(n as u64, &mut msg);
    msg.resize(total, b'x');
    assert_eq!(msg.len(), total);
    msg
}

/// Asserts an error answer: the status, a plain-text human-readable body,
/// and no token echoed back.
fn assert_error(r: &Resp, want: u16, label: &str) {
    assert_eq!(r.status, want, "{label}: {}", r.text());
    assert_eq!(
        r.content_type, "text/plain; charset=utf-8",
        "{label}: error content-type"
    );
    let text = r.text();
    assert!(!text.trim().is_empty(), "{label}: empty error body");
    for t in [TOKEN, OTHER_TOKEN, NEW_TOKEN] {
        assert!(!text.contains(t), "{label}: token in the error body");
    }
}

/// Asserts a metadata answer is the exact v2/v3 shape, for `token`.
fn assert_metadata(r: &Resp, want_version: u64, token: &str, db_id: &str, label: &str) -> Value {
    assert_eq!(r.status, 200, "{label}: {}", r.text());
    assert_eq!(r.content_type, "application/json", "{label}: content-type");
    let v: Value = serde_json::from_slice(&r.body).unwrap();
    let obj = v.as_object().unwrap();
    let mut keys: Vec<&str> = obj.keys().map(String::as_str).collect();
    keys.sort();
    assert_eq!(
        keys,
        ["databaseId", "endpoints", "expiresAt", "token", "version"],
        "{label}: exactly these keys"
    );
    assert_eq!(v["version"], want_version, "{label}: version");
    assert_eq!(
        v["endpoints"],
        serde_json::json!([{"url": "/v2", "consistency": "strong"}]),
        "{label}: endpoints"
    );
    assert_eq!(v["token"], token, "{label}: token");
    let id = v["databaseId"].as_str().unwrap();
    assert_eq!(id, db_id, "{label}: databaseId");
    assert_eq!(id, id.to_lowercase(), "{label}: databaseId in lower case");
    uuid::Uuid::try_parse(id).unwrap();
    let expires = chrono::DateTime::parse_from_rfc3339(v["expiresAt"].as_str().unwrap())
        .unwrap_or_else(|e| panic!("{label}: expiresAt {}: {e}", v["expiresAt"]));
    assert!(
        expires > chrono::Utc::now(),
        "{label}: expiresAt {expires} is not in the future"
    );
    v
}

#[test]
fn database_id_comes_from_the_prefix_or_the_url() {
    let id = |s: &str| server::database_id(&SourceUrl::parse(s).unwrap());
    let deploy = uuid::Uuid::parse_str(SAMPLE_DB_ID).unwrap();
    for s in [
        format!("s3://bucket/kv-backup/backups/{SAMPLE_DB_ID}/"),
        format!("gs://bucket/backups/{SAMPLE_DB_ID}/"),
        format!("file:///srv/copy/backups/{SAMPLE_DB_ID}/"),
    ] {
        assert_eq!(id(&s), deploy, "{s}");
    }
    // No uuid in the prefix: a UUIDv5 of the URL, the same for every
    // process serving that source, another for another source.
    let a = id("s3://bucket/some/prefix/");
    assert_eq!(a.get_version_num(), 5);
    assert_eq!(a, id("s3://bucket/some/prefix/"));
    assert_ne!(a, id("s3://bucket/other/prefix/"));
    assert_ne!(a, id("gs://bucket/some/prefix/"));
    assert_eq!(id("file:///srv/copy/").get_version_num(), 5);
}

#[tokio::test(flavor = "multi_thread")]
async fn metadata_exchange_over_http1_and_h2c() {
    let sample = Sample::load("sample-1");
    let tmp = tempfile::tempdir().unwrap();
    let source = sample.install_initial(&tmp.path().join("bucket"));
    let db = tmp.path().join("r.sqlite");
    let srv = Server::start(&source, &db, &[TOKEN], true).await;
    // The Deploy database uuid in the prefix is used as is.
    assert_eq!(srv.db_id, SAMPLE_DB_ID);
    assert_eq!(server::database_id(&srv.url).to_string(), SAMPLE_DB_ID);
    let auth = format!("Bearer {TOKEN}");

    for (client, version) in srv.clients() {
        for (offer, want) in [
            ("[2,3]", 3),
            ("[1,2,3]", 3),
            ("[3,2]", 3),
            ("[2]", 2),
            ("[1,2]", 2),
            ("[3]", 3),
        ] {
            let label = format!("{version:?} supportedVersions {offer}");
            let r = srv
                .metadata(
                    client,
                    Some(&auth),
                    &format!(r#"{{"supportedVersions":{offer}}}"#),
                )
                .await;
            assert_eq!(r.version, version, "{label}");
            assert_metadata(&r, want, TOKEN, SAMPLE_DB_ID, &label);
        }

        // The data path with what the exchange gave, as a client does.
        let r = srv
            .metadata(client, Some(&auth), r#"{"supportedVersions":[2,3]}"#)
            .await;
        let meta = assert_metadata(&r, 3, TOKEN, SAMPLE_DB_ID, "exchange");
        let body = SnapshotRead {
            ranges: vec![range(&[0x00], &[0xff], 3, false)],
        }
        .encode_to_vec();
        let headers = vec![
            (
                "authorization".to_string(),
                format!("Bearer {}", meta["token"].as_str().unwrap()),
            ),
            (
                "x-denokv-database-id".to_string(),
                meta["databaseId"].as_str().unwrap().to_string(),
            ),
            ("x-denokv-version".to_string(), meta["version"].to_string()),
            (
                "content-type".to_string(),
                "application/x-protobuf".to_string(),
            ),
        ];
        let r = srv
            .send(
                client,
                "POST",
                &format!(
                    "{}/snapshot_read",
                    meta["endpoints"][0]["url"].as_str().unwrap()
                ),
                &headers,
                body,
            )
            .await;
        assert_eq!(r.status, 200, "{version:?} data path: {}", r.text());
        assert_eq!(r.version, version);
        let out = SnapshotReadOutput::decode(&r.body[..]).unwrap();
        let want = rows(read_replica(&db).iter().take(3));
        assert_eq!(entries(&out.ranges[0].values), want);
    }
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn metadata_auth_errors_and_token_rotation() {
    let (tmp, _fx, url) = backup(41, 0);
    let db = tmp.path().join("r.sqlite");
    let srv = Server::start(&url, &db, &[TOKEN, OTHER_TOKEN], true).await;
    // No uuid in this prefix: the id is derived from the source URL.
    assert_eq!(srv.db_id, server::database_id(&srv.url).to_string());
    assert_eq!(
        uuid::Uuid::parse_str(&srv.db_id).unwrap().get_version_num(),
        5
    );
    let ok = r#"{"supportedVersions":[2,3]}"#;

    for (client, version) in srv.clients() {
        // Both configured tokens work, each echoed back.
        for t in [TOKEN, OTHER_TOKEN] {
            let r = srv.metadata(client, Some(&format!("Bearer {t}")), ok).await;
            assert_eq!(r.version, version);
            assert_metadata(&r, 3, t, &srv.db_id, &format!("{version:?} token {t}"));
        }
        let wrong_suffix = format!("Bearer {TOKEN}x");
        let prefix_only = format!("Bearer {}", &TOKEN[..TOKEN.len() - 1]);
        let two_words = format!("Bearer {TOKEN} {OTHER_TOKEN}");
        let basic = format!("Basic {TOKEN}");
        for (auth, label) in [
            (None, "no authorization header"),
            (Some("Bearer wrong-token-xxxxxxxx"), "unknown token"),
            (Some(wrong_suffix.as_str()), "token with a suffix"),
            (Some(prefix_only.as_str()), "prefix of a token"),
            (Some(two_words.as_str()), "two tokens"),
            (Some(basic.as_str()), "Basic scheme"),
            (Some(TOKEN), "no scheme"),
            (Some("Bearer"), "scheme only"),
            (Some("Bearer "), "empty token"),
        ] {
            let r = srv.metadata(client, auth, ok).await;
            assert_error(&r, 401, &format!("{version:?} metadata, {label}"));
        }
        let auth = format!("Bearer {TOKEN}");
        for (body, label) in [
            ("not json", "not JSON"),
            ("{", "truncated JSON"),
            (r#"{"supportedVersions":[1]}"#, "only version 1"),
            (r#"{"supportedVersions":[4,5]}"#, "only unknown versions"),
            (r#"{"supportedVersions":[]}"#, "no versions"),
            (r#"{"supportedVersions":"2"}"#, "versions not a list"),
            ("", "empty body"),
        ] {
            let r = srv.metadata(client, Some(&auth), body).await;
            assert_error(&r, 400, &format!("{version:?} metadata, {label}"));
        }
    }

    // Rotation: the new set replaces the old one, on both endpoints.
    srv.tokens.replace(vec![NEW_TOKEN.to_string()]);
    let read = SnapshotRead {
        ranges: vec![range(&[0x00], &[0xff], 1, false)],
    }
    .encode_to_vec();
    for (client, version) in srv.clients() {
        for t in [TOKEN, OTHER_TOKEN] {
            let bearer = format!("Bearer {t}");
            let r = srv.metadata(client, Some(&bearer), ok).await;
            assert_error(&r, 401, &format!("{version:?} metadata, rotated-out {t}"));
            let r = srv
                .data(
                    client,
                    "/v2/snapshot_read",
                    &[("authorization", Some(&bearer))],
                    read.clone(),
                )
                .await;
            assert_error(&r, 401, &format!("{version:?} data path, rotated-out {t}"));
        }
        let bearer = format!("Bearer {NEW_TOKEN}");
        let r = srv.metadata(client, Some(&bearer), ok).await;
        assert_metadata(&r, 3, NEW_TOKEN, &srv.db_id, "rotated-in token");
        let r = srv
            .data(
                client,
                "/v2/snapshot_read",
                &[("authorization", Some(&bearer))],
                read.clone(),
            )
            .await;
        assert_eq!(
            r.status,
            200,
            "{version:?} data path, new token: {}",
            r.text()
        );
    }
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn data_path_errors_and_limits() {
    let (tmp, _fx, url) = backup(43, 0);
    let db = tmp.path().join("r.sqlite");
    let srv = Server::start(&url, &db, &[TOKEN], true).await;
    let read = |ranges: Vec<ReadRange>| SnapshotRead { ranges }.encode_to_vec();
    let one = read(vec![range(&[0x00], &[0xff], 10, false)]);
    let other_db = uuid::Uuid::new_v4().to_string();
    let big_key = vec![0x02; 2050];
    let max_key = vec![0x02; 2049];
    let watch = |keys: Vec<Vec<u8>>| {
        Watch {
            keys: keys.into_iter().map(|key| WatchKey { key }).collect(),
        }
        .encode_to_vec()
    };
    let write = AtomicWrite {
        mutations: vec![Mutation {
            key: str_key("a"),
            value: Some(KvValue {
                data: vec![1],
                encoding: ValueEncoding::VeBytes as i32,
            }),
            mutation_type: MutationType::MSet as i32,
            ..Default::default()
        }],
        ..Default::default()
    }
    .encode_to_vec();
    let wrong = "Bearer wrong-token-xxxxxxxx".to_string();
    let sr = "/v2/snapshot_read";

    type Case<'a> = (
        &'a str,
        Vec<(&'a str, Option<&'a str>)>,
        Vec<u8>,
        u16,
        &'a str,
    );
    let cases: Vec<Case> = vec![
        (
            sr,
            vec![("authorization", None)],
            one.clone(),
            401,
            "no token",
        ),
        (
            sr,
            vec![("authorization", Some(&wrong))],
            one.clone(),
            401,
            "wrong token",
        ),
        (
            sr,
            vec![("authorization", Some(TOKEN))],
            one.clone(),
            401,
            "no scheme",
        ),
        (
            sr,
            vec![("x-denokv-version", None)],
            one.clone(),
            400,
            "no version",
        ),
        (
            sr,
            vec![("x-denokv-version", Some("1"))],
            one.clone(),
            400,
            "version 1",
        ),
        (
            sr,
            vec![("x-denokv-version", Some("4"))],
            one.clone(),
            400,
            "version 4",
        ),
        (
            sr,
            vec![("x-denokv-version", Some("three"))],
            one.clone(),
            400,
            "version not a number",
        ),
        (
            sr,
            vec![("x-denokv-database-id", None)],
            one.clone(),
            400,
            "no database id",
        ),
        (
            sr,
            vec![("x-denokv-database-id", Some("not-a-uuid"))],
            one.clone(),
            400,
            "database id not a uuid",
        ),
        (
            sr,
            vec![("x-denokv-database-id", Some(&other_db))],
            one.clone(),
            400,
            "another database id",
        ),
        (
            sr,
            vec![],
            vec![0x0a, 0xff, 0xff, 0xff, 0xff, 0x0f],
            400,
            "garbage protobuf",
        ),
        (
            sr,
            vec![],
            b"not protobuf at all".to_vec(),
            400,
            "text body",
        ),
        (
            sr,
            vec![],
            padded(one.clone(), 64 * 1024 + 1),
            400,
            "body over 64 KiB",
        ),
        (
            sr,
            vec![],
            read((0..11).map(|_| range(&[0x00], &[0xff], 1, false)).collect()),
            400,
            "11 ranges",
        ),
        (
            sr,
            vec![],
            read(vec![range(&[0x00], &[0xff], 0, false)]),
            400,
            "limit 0",
        ),
        (
            sr,
            vec![],
            read(vec![range(&[0x00], &[0xff], -1, false)]),
            400,
            "negative limit",
        ),
        (
            sr,
            vec![],
            read(vec![
                range(&[0x00], &[0xff], 500, false),
                range(&[0x00], &[0xff], 501, false),
            ]),
            400,
            "limits summing to 1001",
        ),
        (
            sr,
            vec![],
            read(vec![range(&[0x00], &[0xff], 1001, false)]),
            400,
            "limit 1001",
        ),
        (
            sr,
            vec![],
            read(vec![range(&big_key, &[0xff], 1, false)]),
            400,
            "start key of 2050 bytes",
        ),
        (
            sr,
            vec![],
            read(vec![range(&[0x00], &big_key, 1, false)]),
            400,
            "end key of 2050 bytes",
        ),
        (
            "/v2/watch",
            vec![("authorization", None)],
            watch(vec![str_key("a")]),
            401,
            "watch, no token",
        ),
        (
            "/v2/watch",
            vec![("x-denokv-version", None)],
            watch(vec![str_key("a")]),
            400,
            "watch, no version",
        ),
        (
            "/v2/watch",
            vec![("x-denokv-database-id", Some(&other_db))],
            watch(vec![str_key("a")]),
            400,
            "watch, another database id",
        ),
        (
            "/v2/watch",
            vec![],
            vec![0x0a, 0xff, 0xff, 0xff, 0xff, 0x0f],
            400,
            "watch, garbage protobuf",
        ),
        (
            "/v2/watch",
            vec![],
            watch((0..11).map(|i| str_key(&format!("k{i}"))).collect()),
            400,
            "watch, 11 keys",
        ),
        (
            "/v2/watch",
            vec![],
            watch(vec![vec![0x02; 2049]]),
            400,
            "watch, key of 2049 bytes",
        ),
        (
            "/v2/atomic_write",
            vec![("authorization", None)],
            write.clone(),
            401,
            "atomic_write, no token",
        ),
    ];
    for (client, version) in srv.clients() {
        for (path, overrides, body, want, label) in &cases {
            let r = srv.data(client, path, overrides, body.clone()).await;
            assert_error(&r, *want, &format!("{version:?} {path}, {label}"));
        }

        // atomic_write: a clear refusal, whatever the write.
        for (body, label) in [
            (write.clone(), "a set"),
            (AtomicWrite::default().encode_to_vec(), "an empty write"),
        ] {
            let r = srv.data(client, "/v2/atomic_write", &[], body).await;
            let label = format!("{version:?} atomic_write, {label}");
            assert_error(&r, 400, &label);
            assert!(r.text().contains("read-only"), "{label}: {}", r.text());
        }

        // Unknown paths and methods.
        for (method, path, want) in [
            ("POST", "/nope", 404),
            ("POST", "/v1/snapshot_read", 404),
            ("POST", "/v2/snapshot_read/more", 404),
            ("POST", "/v2/list", 404),
            ("GET", "/nope", 404),
            ("GET", "/v2/snapshot_read", 405),
            ("GET", "/v2/watch", 405),
            ("GET", "/v2/atomic_write", 405),
            ("PUT", "/v2/snapshot_read", 405),
            ("GET", "/", 405),
        ] {
            let r = srv
                .send(client, method, path, &srv.data_headers(&[]), Vec::new())
                .await;
            assert_error(&r, want, &format!("{version:?} {method} {path}"));
        }

        // Right at the limits: accepted.
        for (body, label) in [
            (padded(one.clone(), 64 * 1024), "a body of exactly 64 KiB"),
            (
                read(
                    (0..10)
                        .map(|_| range(&[0x00], &[0xff], 100, false))
                        .collect(),
                ),
                "10 ranges summing to 1000",
            ),
            (
                read(vec![range(&max_key, &[0xff], 1, false)]),
                "start key of 2049 bytes",
            ),
            (
                read(vec![range(&[0x00], &max_key, 1, false)]),
                "end key of 2049 bytes",
            ),
        ] {
            let r = srv.data(client, sr, &[], body).await;
            assert_eq!(r.status, 200, "{version:?} {label}: {}", r.text());
        }
        for v in ["2", "3"] {
            let r = srv
                .data(client, sr, &[("x-denokv-version", Some(v))], one.clone())
                .await;
            assert_eq!(
                r.status,
                200,
                "{version:?} x-denokv-version {v}: {}",
                r.text()
            );
        }
        let keys: Vec<Vec<u8>> = (0..9)
            .map(|i| str_key(&format!("k{i}")))
            .chain([vec![0x02; 2048]])
            .collect();
        let mut w = srv.watch(client, &keys).await;
        let first = w.data_frame(TIMEOUT).await;
        assert_eq!(first.keys.len(), 10, "{version:?} watch of 10 keys");
    }
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn snapshot_read_serves_the_replica() {
    let (tmp, fx, url) = backup(47, 0);
    let expired = str_key("expired");
    let later = str_key("expires-later");
    append_expiring_keys(&fx, &tmp.path().join("prefix"), &expired, &later);
    let db = tmp.path().join("r.sqlite");
    let srv = Server::start(&url, &db, &[TOKEN], true).await;

    // The replica holds the expired row; the server must hide it.
    let all_rows = read_replica(&db);
    assert_eq!(
        all_rows.get(&hex(&expired)).map(|r| r.expire_at_ms),
        Some(1_000),
        "the replica keeps the expired row"
    );
    let now = now_ms();
    let live: BTreeMap<String, Row> = all_rows
        .into_iter()
        .filter(|(_, r)| r.expire_at_ms < 0 || r.expire_at_ms > now)
        .collect();
    assert!(live.contains_key(&hex(&later)));
    assert!(live.len() > 100 && live.len() <= 1000, "{}", live.len());
    let keys: Vec<Vec<u8>> = live.keys().map(|k| hex::decode(k).unwrap()).collect();
    let want = |from: usize, to: usize| rows(live.iter().skip(from).take(to - from));
    let rev = |mut v: Vec<_>| {
        v.reverse();
        v
    };

    let mut h1_all = None;
    for (client, version) in srv.clients() {
        let label = format!("{version:?}");
        // Everything, from both starts clients send for list({prefix: []}).
        for start in [&[0x00][..], &[][..]] {
            let out = srv
                .read(client, vec![range(start, &[0xff], 1000, false)])
                .await;
            assert_eq!(
                entries(&out.ranges[0].values),
                want(0, keys.len()),
                "{label}: all keys from start {start:?}"
            );
            match &h1_all {
                None => h1_all = Some(out),
                Some(h1) => assert_eq!(&out, h1, "h2c and HTTP/1.1 answers differ"),
            }
        }

        // Half-open ranges, limits, reverse, several ranges in request
        // order from one request.
        let (a, b) = (&keys[10], &keys[20]);
        let out = srv
            .read(
                client,
                vec![
                    range(a, b, 100, false),
                    range(a, b, 5, false),
                    range(a, b, 5, true),
                    range(a, b, 100, true),
                    range(&keys[40], &keys[41], 100, false),
                    range(&[0x01], &[0x02], 100, false),
                    range(&keys[0], &keys[0], 100, false),
                    range(&keys[30], &[0xff], 1, false),
                ],
            )
            .await;
        let got: Vec<_> = out.ranges.iter().map(|r| entries(&r.values)).collect();
        assert_eq!(got[0], want(10, 20), "{label}: [a, b)");
        assert_eq!(got[1], want(10, 15), "{label}: [a, b) limit 5");
        assert_eq!(got[2], rev(want(15, 20)), "{label}: [a, b) limit 5 reverse");
        assert_eq!(got[3], rev(want(10, 20)), "{label}: [a, b) reverse");
        assert_eq!(got[4], want(40, 41), "{label}: a one-key range");
        assert!(got[5].is_empty(), "{label}: a range with no keys");
        assert!(got[6].is_empty(), "{label}: start = end");
        assert_eq!(got[7], want(30, 31), "{label}: get, @deno/kv style");

        // The same ranges in another order come back in that order.
        let out = srv
            .read(
                client,
                vec![
                    range(&keys[50], &keys[53], 100, false),
                    range(&keys[3], &keys[5], 100, true),
                    range(&keys[20], &keys[22], 100, false),
                ],
            )
            .await;
        let got: Vec<_> = out.ranges.iter().map(|r| entries(&r.values)).collect();
        assert_eq!(
            got,
            [want(50, 53), rev(want(3, 5)), want(20, 22)],
            "{label}"
        );

        // kv.get as the Deno CLI sends it: [key, key\0) limit 1.
        let point = |k: &[u8]| {
            let mut end = k.to_vec();
            end.push(0x00);
            range(k, &end, 1, false)
        };
        let out = srv
            .read(
                client,
                vec![
                    point(&keys[7]),
                    point(&expired),
                    point(&later),
                    point(&str_key("missing")),
                ],
            )
            .await;
        let got: Vec<_> = out.ranges.iter().map(|r| entries(&r.values)).collect();
        assert_eq!(got[0], want(7, 8), "{label}: get of a key");
        assert!(got[1].is_empty(), "{label}: an expired key is not returned");
        assert_eq!(
            got[2],
            rows([(&hex(&later), &live[&hex(&later)])]),
            "{label}: a key expiring in 2100"
        );
        assert_eq!(
            out.ranges[2].values[0].encoding,
            ValueEncoding::VeLe64 as i32
        );
        assert!(got[3].is_empty(), "{label}: get of a missing key");
        // The @deno/kv form of get, [key, ff) limit 1, skips the expired
        // key to the next live one.
        let out = srv
            .read(client, vec![range(&expired, &[0xff], 1, false)])
            .await;
        let next = keys.iter().position(|k| k > &expired).unwrap();
        assert_eq!(
            entries(&out.ranges[0].values),
            want(next, next + 1),
            "{label}: the expired key is skipped"
        );
    }
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn watch_follows_sync_and_checkout() {
    let (tmp, fx, url) = backup(53, 30);
    let db = tmp.path().join("r.sqlite");
    let srv = Server::start(&url, &db, &[TOKEN], true).await;
    let initial = fx.state_at(fx.last_initial);
    let last = fx.state_at(fx.last_commit());
    let points = fx.points(fx.last_commit());
    let (early_idx, early_vs, _) = points[points.len() / 4].clone();
    assert!(early_idx < fx.last_initial);
    let early = fx.state_at(early_idx);

    // Keys the appended logs change, keys the checkout changes, a key that
    // never exists and one that never changes.
    let all_keys: std::collections::BTreeSet<&Vec<u8>> = initial
        .keys()
        .chain(last.keys())
        .chain(early.keys())
        .collect();
    let differs =
        |x: &BTreeMap<Vec<u8>, Rec>, y: &BTreeMap<Vec<u8>, Rec>, k: &Vec<u8>| x.get(k) != y.get(k);
    let mut keys: Vec<Vec<u8>> = all_keys
        .iter()
        .filter(|k| differs(&initial, &last, k))
        .take(4)
        .map(|k| (*k).clone())
        .collect();
    let moved: Vec<Vec<u8>> = all_keys
        .iter()
        .filter(|k| differs(&early, &last, k) && !keys.contains(k))
        .take(4)
        .map(|k| (*k).clone())
        .collect();
    keys.extend(moved);
    assert!(keys.len() >= 4, "the workload changes too few keys");
    keys.push(str_key("never-written"));
    let stable_key = all_keys
        .iter()
        .find(|k| {
            initial.contains_key(**k) && !differs(&initial, &last, k) && !differs(&early, &last, k)
        })
        .expect("a key no commit after the early point touches");
    keys.push((*stable_key).clone());
    let stable = [keys.len() - 2, keys.len() - 1];
    let state = |s: &BTreeMap<Vec<u8>, Rec>| -> Vec<Option<Rec>> {
        keys.iter().map(|k| s.get(k).cloned()).collect()
    };

    // First frame: every key, changed, with its entry or none.
    let mut streams = Vec::new();
    for (client, version) in srv.clients() {
        let mut w = srv.watch(client, &keys).await;
        let first = w.data_frame(TIMEOUT).await;
        assert_eq!(first.keys.len(), keys.len(), "{version:?}");
        let mut seen = Vec::new();
        for (i, k) in first.keys.into_iter().enumerate() {
            assert!(k.changed, "{version:?}: key {i} in the first frame");
            if let Some(e) = &k.entry_if_changed {
                assert_eq!(e.key, keys[i], "{version:?}: entry key");
            }
            seen.push(k.entry_if_changed);
        }
        assert!(
            matches_all(&seen, &state(&initial)),
            "{version:?}: first frame differs from the replica"
        );
        streams.push((w, seen, version));
    }

    // New commits synced: frames bring the watched keys to the new state.
    fx.write_append(&tmp.path().join("prefix"));
    srv.syncer.catch_up().await.unwrap();
    for (w, seen, version) in &mut streams {
        w.until(
            seen,
            &state(&last),
            &stable,
            &format!("{version:?} after sync"),
        )
        .await;
    }

    // A checkout to an earlier point moves them back, `latest` forward.
    checkout(
        &srv.syncer,
        CheckoutTarget::Versionstamp(early_vs.parse::<Versionstamp>().unwrap()),
    )
    .await
    .unwrap();
    for (w, seen, version) in &mut streams {
        w.until(
            seen,
            &state(&early),
            &stable,
            &format!("{version:?} after checkout"),
        )
        .await;
    }
    checkout(&srv.syncer, CheckoutTarget::Latest).await.unwrap();
    for (w, seen, version) in &mut streams {
        w.until(
            seen,
            &state(&last),
            &stable,
            &format!("{version:?} back to latest"),
        )
        .await;
    }
    drop(streams);
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn watch_keep_alive_and_shutdown() {
    let (tmp, _fx, url) = backup(59, 0);
    let db = tmp.path().join("r.sqlite");
    let srv = Server::start(&url, &db, &[TOKEN], true).await;
    let keys = vec![str_key("never-written")];
    let mut h1 = srv.watch(&srv.h1, &keys).await;
    let mut h2 = srv.watch(&srv.h2, &keys).await;
    for w in [&mut h1, &mut h2] {
        let first = w.data_frame(TIMEOUT).await;
        assert!(first.keys[0].changed && first.keys[0].entry_if_changed.is_none());
    }
    // Nothing changes: an empty frame within the 5 s period (plus slack).
    let started = Instant::now();
    for w in [&mut h1, &mut h2] {
        let left = Duration::from_secs(7).saturating_sub(started.elapsed());
        assert!(
            w.frame(left).await.is_none(),
            "a data frame though nothing changed"
        );
    }
    // Open watches do not hold the server up at shutdown.
    srv.stop().await;
    drop((h1, h2));
}

#[tokio::test(flavor = "multi_thread")]
async fn answers_503_until_the_initial_snapshot_is_loaded() {
    let (tmp, _fx, url) = backup(61, 0);
    let db = tmp.path().join("r.sqlite");
    let srv = Server::start(&url, &db, &[TOKEN], false).await;
    let auth = format!("Bearer {TOKEN}");
    let ok = r#"{"supportedVersions":[2,3]}"#;
    let read = SnapshotRead {
        ranges: vec![range(&[0x00], &[0xff], 1000, false)],
    }
    .encode_to_vec();
    let watch = Watch {
        keys: vec![WatchKey { key: str_key("a") }],
    }
    .encode_to_vec();
    for (client, version) in srv.clients() {
        let r = srv.metadata(client, Some(&auth), ok).await;
        assert_error(&r, 503, &format!("{version:?} metadata"));
        assert!(r.text().to_lowercase().contains("snapshot"), "{}", r.text());
        for (path, body) in [
            ("/v2/snapshot_read", read.clone()),
            ("/v2/watch", watch.clone()),
        ] {
            let r = srv.data(client, path, &[], body).await;
            assert_error(&r, 503, &format!("{version:?} {path}"));
            assert!(r.text().to_lowercase().contains("snapshot"), "{}", r.text());
        }
    }

    srv.syncer.initial().await.unwrap();
    let rows_now = read_replica(&db);
    for (client, version) in srv.clients() {
        let r = srv.metadata(client, Some(&auth), ok).await;
        assert_metadata(&r, 3, TOKEN, &srv.db_id, &format!("{version:?} loaded"));
        let out = srv
            .read(client, vec![range(&[0x00], &[0xff], 1000, false)])
            .await;
        assert_eq!(
            entries(&out.ranges[0].values),
            rows(&rows_now),
            "{version:?}"
        );
    }
    srv.stop().await;
}

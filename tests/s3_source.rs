//! What only the S3 store has: SigV4 keys against a real S3-compatible
//! server (s3s-fs), small canned HTTP servers for the answers a healthy
//! server never gives (throttling, 5xx, S3 error codes, cut-off bodies, hung
//! connections), the shape of a `ListObjectsV2` request, and one round trip
//! of the `kvreplica` binary through S3. What every store does is in
//! `object_store.rs`.

#[path = "common/bounded.rs"]
mod bounded;
#[path = "common/canned.rs"]
mod canned;
#[path = "common/certs.rs"]
mod certs;
#[path = "common/s3_server.rs"]
mod s3_server;
#[path = "common/stores.rs"]
mod stores;

use std::collections::BTreeMap;
use std::io::Read;
use std::net::{Ipv4Addr, TcpListener};
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use canned::{http, s3_error, Answer, Canned};
use kvreplica::backup::Backup;
use kvreplica::format::LogName;
use kvreplica::source::s3::{S3Credentials, S3Store};
use kvreplica::source::{IfChanged, ObjectVersion, S3Options, SourceError};
use s3_server::S3Server;
use stores::{log_name, single_attempt};

const BUCKET: &str = "kv-backup";
const PREFIX: &str = "backups/3f1c2a7e-0000-4000-8000-000000000001/";

/// Timeout of each request in these tests: far above what the local
/// server needs, far below what would make a hung test noticeable.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// Longest a run of the binary may take; the sample syncs in about a
/// second.
const BINARY_TIMEOUT: Duration = Duration::from_secs(120);

/// The backup at `<endpoint>/<bucket>/<PREFIX>`, one attempt per call: these
/// tests check how single answers are classified.
fn source_with(endpoint: &str, bucket: &str, creds: S3Credentials, timeout: Duration) -> Backup {
    let store = S3Store::new(
        bucket.to_string(),
        PREFIX.to_string(),
        &S3Options {
            endpoint: Some(endpoint.to_string()),
            ..S3Options::default()
        },
        Some(creds),
        timeout,
    )
    .expect("valid source");
    single_attempt(Arc::new(store))
}

fn creds(server: &S3Server) -> S3Credentials {
    S3Credentials {
        access_key_id: server.access_key().to_string(),
        secret_access_key: server.secret_key().to_string(),
        session_token: None,
    }
}

/// Keys for the canned servers, which check nothing.
fn test_creds() -> S3Credentials {
    S3Credentials {
        access_key_id: "AKIDCANNEDTEST".into(),
        secret_access_key: "canned-secret-never-shown".into(),
        session_token: None,
    }
}

fn log_key(name: &LogName) -> String {
    format!("{PREFIX}logs/{name}.bin")
}

#[tokio::test(flavor = "multi_thread")]
async fn refused_credentials_name_the_key_not_the_secret() {
    let server = S3Server::start();
    server.create_bucket(BUCKET);
    server.put(BUCKET, &log_key(&log_name(1)), b"abc");

    let wrong_secret = S3Credentials {
        secret_access_key: "not-the-secret-0123456789".into(),
        ..creds(&server)
    };
    let src = source_with(&server.endpoint(), BUCKET, wrong_secret, REQUEST_TIMEOUT);
    let errors = [
        src.list_logs(None, 10).await.unwrap_err(),
        src.list_snapshots().await.unwrap_err(),
        src.read_differential().await.unwrap_err(),
        src.get_log(&log_name(1)).await.unwrap_err(),
    ];
    for err in errors {
        assert!(
            matches!(&err, SourceError::AccessDenied { detail, .. }
                if detail.contains(server.access_key())),
            "{err:?}"
        );
        assert!(!err.is_retryable());
        let shown = format!("{err} {err:?}");
        assert!(!shown.contains("not-the-secret"), "{shown}");
        assert!(!shown.contains(server.secret_key()), "{shown}");
    }

    let unknown_key = S3Credentials {
        access_key_id: "AKIDUNKNOWN000000000".into(),
        ..creds(&server)
    };
    let src = source_with(&server.endpoint(), BUCKET, unknown_key, REQUEST_TIMEOUT);
    let err = src.list_logs(None, 10).await.unwrap_err();
    assert!(
        matches!(&err, SourceError::AccessDenied { detail, .. }
            if detail.contains("AKIDUNKNOWN000000000")),
        "{err:?}"
    );
    assert!(!format!("{err:?}").contains(server.secret_key()));
}

/// Checks that an error has the expected class.
type Expect = fn(&SourceError) -> bool;

#[tokio::test(flavor = "multi_thread")]
async fn s3_http_failures_are_classified() {
    let transient: Expect = |e| matches!(e, SourceError::Transient { .. }) && e.is_retryable();
    let permanent: Expect = |e| matches!(e, SourceError::Permanent { .. }) && !e.is_retryable();
    let denied: Expect = |e| matches!(e, SourceError::AccessDenied { detail, .. } if detail.contains("AKIDCANNEDTEST"));
    let cases: Vec<(&str, Answer, Expect)> = vec![
        ("500", s3_error(500, "InternalError"), transient),
        ("503", s3_error(503, "ServiceUnavailable"), transient),
        ("SlowDown", s3_error(503, "SlowDown"), transient),
        ("429", http(429, "text/plain", ""), transient),
        (
            "502 html",
            http(502, "text/html", "<html>bad gateway</html>"),
            transient,
        ),
        ("RequestTimeout", s3_error(400, "RequestTimeout"), transient),
        ("400", s3_error(400, "InvalidArgument"), permanent),
        ("409", s3_error(409, "OperationAborted?"), permanent),
        ("403", s3_error(403, "AccessDenied"), denied),
        ("401", http(401, "text/plain", ""), denied),
        (
            "SignatureDoesNotMatch",
            s3_error(403, "SignatureDoesNotMatch"),
            denied,
        ),
        ("ExpiredToken", s3_error(400, "ExpiredToken"), denied),
        (
            "truncated body",
            Some(
                "HTTP/1.1 200 OK\r\nContent-Type: application/xml\r\nContent-Length: 500\r\n\
                 Connection: close\r\n\r\n<?xml version=\"1.0\"?><ListBucketResult>"
                    .into(),
            ),
            transient,
        ),
    ];
    for (label, answer, expected) in cases {
        let server = Canned::start(move |_| answer.clone());
        let src = source_with(&server.url(), BUCKET, test_creds(), REQUEST_TIMEOUT);
        let err = src.list_logs(None, 10).await.unwrap_err();
        assert!(expected(&err), "{label}, list: {err:?}");
        assert!(
            err.to_string().contains(PREFIX),
            "{label}: names the listing: {err}"
        );
        let err = src.get_log(&log_name(1)).await.unwrap_err();
        assert!(expected(&err), "{label}, get: {err:?}");
        assert!(
            err.to_string().contains(&log_key(&log_name(1))),
            "{label}: names the object: {err}"
        );
        assert!(
            !format!("{err:?}").contains("canned-secret-never-shown"),
            "{label}"
        );
        // No retry inside the source: one request per call.
        assert_eq!(server.requests.lock().unwrap().len(), 2, "{label}");
    }

    // NoSuchBucket from an object GET names the bucket too.
    let server = Canned::start(|_| s3_error(404, "NoSuchBucket"));
    let src = source_with(&server.url(), BUCKET, test_creds(), REQUEST_TIMEOUT);
    let err = src.get_log(&log_name(1)).await.unwrap_err();
    assert!(
        matches!(&err, SourceError::NoSuchBucket(b) if b == BUCKET),
        "{err:?}"
    );

    // A 200 whose body is not a listing.
    let server = Canned::start(|_| http(200, "text/html", "<html>captive portal</html>"));
    let src = source_with(&server.url(), BUCKET, test_creds(), REQUEST_TIMEOUT);
    let err = src.list_snapshots().await.unwrap_err();
    assert!(matches!(err, SourceError::Permanent { .. }), "{err:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn list_logs_is_one_request_with_start_after_and_max_keys() {
    let empty = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\
        <ListBucketResult><Name>kv-backup</Name><KeyCount>0</KeyCount>\
        <MaxKeys>10</MaxKeys><IsTruncated>true</IsTruncated>\
        <NextContinuationToken>t</NextContinuationToken></ListBucketResult>";
    let server = Canned::start(move |_| http(200, "application/xml", empty));
    let src = source_with(&server.url(), BUCKET, test_creds(), REQUEST_TIMEOUT);
    let after = log_name(7);
    assert!(src.list_logs(Some(&after), 10).await.unwrap().is_empty());
    let requests = server
        .requests
        .lock()
        .unwrap()
        .iter()
        .map(|r| r.line.clone())
        .collect::<Vec<_>>();
    assert_eq!(requests.len(), 1, "{requests:?}");
    let line = &requests[0];
    let target = line.split_whitespace().nth(1).unwrap();
    let url = url::Url::parse(&format!("http://h{target}")).unwrap();
    assert_eq!(url.path(), format!("/{BUCKET}/"), "path-style: {line}");
    let query: BTreeMap<String, String> = url.query_pairs().into_owned().collect();
    assert_eq!(
        query.get("list-type").map(String::as_str),
        Some("2"),
        "{line}"
    );
    assert_eq!(
        query.get("prefix"),
        Some(&format!("{PREFIX}logs/")),
        "{line}"
    );
    assert_eq!(query.get("start-after"), Some(&log_key(&after)), "{line}");
    assert_eq!(
        query.get("max-keys").map(String::as_str),
        Some("10"),
        "{line}"
    );
    assert!(!query.contains_key("continuation-token"), "{line}");
}

/// A raw answer to a `GetObject`: a body with its ETag, or a 304.
fn with_etag(status: u16, etag: &str, body: &str) -> Answer {
    Some(format!(
        "HTTP/1.1 {status} X\r\nETag: {etag}\r\nContent-Type: application/octet-stream\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    ))
}

#[tokio::test(flavor = "multi_thread")]
async fn differential_is_polled_with_if_none_match() {
    // The first read gets the body and its ETag; the next, sent with
    // If-None-Match, is answered 304 without a body; then the object changes.
    let answers = std::sync::Mutex::new(
        vec![
            with_etag(200, "\"v1\"", "0000000200d0000000ff"),
            with_etag(304, "\"v1\"", ""),
            with_etag(200, "\"v2\"", "0000000300d0000000ff"),
        ]
        .into_iter(),
    );
    let server = Canned::start(move |_| answers.lock().unwrap().next().flatten());
    let src = source_with(&server.url(), BUCKET, test_creds(), REQUEST_TIMEOUT);
    let Some(IfChanged::Changed { body, version }) =
        src.differential_if_changed(None).await.unwrap()
    else {
        panic!("a first read returns the body");
    };
    assert_eq!(body, b"0000000200d0000000ff");
    assert_eq!(version, ObjectVersion("\"v1\"".into()), "the ETag");
    assert_eq!(
        src.differential_if_changed(Some(&version)).await.unwrap(),
        Some(IfChanged::Unchanged),
        "a 304 is no change"
    );
    let Some(IfChanged::Changed { body, version }) =
        src.differential_if_changed(Some(&version)).await.unwrap()
    else {
        panic!("a new ETag is a change");
    };
    assert_eq!(body, b"0000000300d0000000ff");
    assert_eq!(version, ObjectVersion("\"v2\"".into()));
    let lines: Vec<String> = server
        .requests
        .lock()
        .unwrap()
        .iter()
        .map(|r| r.line.clone())
        .collect();
    assert_eq!(lines.len(), 3, "one GET per poll: {lines:?}");
    for line in &lines {
        assert!(
            line.starts_with(&format!("GET /{BUCKET}/{PREFIX}differential ")),
            "{line}"
        );
    }

    // The poll carries the known ETag, signed like every header.
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let head = std::thread::spawn(move || {
        let (mut conn, _) = listener.accept().unwrap();
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") && conn.read(&mut byte).unwrap() == 1 {
            head.push(byte[0]);
        }
        let answer = with_etag(304, "\"v2\"", "").unwrap();
        std::io::Write::write_all(&mut conn, answer.as_bytes()).unwrap();
        String::from_utf8(head).unwrap().to_ascii_lowercase()
    });
    let src = source_with(&url, BUCKET, test_creds(), REQUEST_TIMEOUT);
    let known = ObjectVersion("\"v2\"".into());
    assert_eq!(
        src.differential_if_changed(Some(&known)).await.unwrap(),
        Some(IfChanged::Unchanged)
    );
    let head = head.join().unwrap();
    assert!(head.contains("\r\nif-none-match: \"v2\"\r\n"), "{head}");
    assert!(head.contains("if-none-match;"), "signed: {head}");
}

#[tokio::test(flavor = "multi_thread")]
async fn s3_refused_and_hung_connections_are_transient() {
    let closed = {
        let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        l.local_addr().unwrap()
    };
    let src = source_with(
        &format!("http://{closed}"),
        BUCKET,
        test_creds(),
        REQUEST_TIMEOUT,
    );
    let err = src.list_logs(None, 1).await.unwrap_err();
    assert!(matches!(err, SourceError::Transient { .. }), "{err:?}");
    let err = src.get_log(&log_name(1)).await.unwrap_err();
    assert!(matches!(err, SourceError::Transient { .. }), "{err:?}");

    let hung = Canned::start(|_| None);
    let src = source_with(&hung.url(), BUCKET, test_creds(), Duration::from_secs(1));
    for call in 0..2 {
        let started = Instant::now();
        let err = if call == 0 {
            src.get_log(&log_name(1)).await.unwrap_err()
        } else {
            src.list_logs(None, 10).await.unwrap_err()
        };
        assert!(matches!(err, SourceError::Transient { .. }), "{err:?}");
        assert!(
            started.elapsed() < Duration::from_secs(4),
            "the request timeout applies: {:?}",
            started.elapsed()
        );
    }
    assert_eq!(hung.requests.lock().unwrap().len(), 2, "no retry inside");
}

/// Runs the binary with a bounded wall time; returns (success, stderr).
fn run_bounded(cmd: &mut Command) -> (bool, String) {
    let (status, stderr) = bounded::run(cmd, BINARY_TIMEOUT);
    (
        status.success(),
        String::from_utf8_lossy(&stderr).into_owned(),
    )
}

/// `kvreplica` with a clean environment: nothing from the developer's AWS
/// setup leaks in.
fn kvreplica(home: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_kvreplica"));
    for var in [
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_SESSION_TOKEN",
        "AWS_SECURITY_TOKEN",
        "AWS_PROFILE",
        "AWS_SHARED_CREDENTIALS_FILE",
        "AWS_ROLE_ARN",
        "AWS_WEB_IDENTITY_TOKEN_FILE",
        "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
        "AWS_CONTAINER_CREDENTIALS_FULL_URI",
        "AWS_REGION",
        "AWS_DEFAULT_REGION",
        "DENO_KV_S3_ENDPOINT",
        "KVREPLICA_SOURCE",
        "KVREPLICA_DB",
        "KVREPLICA_S3_ENDPOINT",
        "KVREPLICA_S3_REGION",
        "KVREPLICA_S3_PATH_STYLE",
        "RUST_LOG",
    ] {
        cmd.env_remove(var);
    }
    cmd.env("HOME", home)
        .env("AWS_EC2_METADATA_DISABLED", "true");
    cmd
}

#[test]
fn syncs_the_sample_through_s3() {
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/sample-1");
    let server = S3Server::start();
    server.create_bucket(BUCKET);
    server.put_dir(BUCKET, "", &fixtures.join("bucket").join(BUCKET));
    let tmp = tempfile::tempdir().unwrap();
    let db = tmp.path().join("r.sqlite");
    let (ok, stderr) = run_bounded(
        kvreplica(tmp.path())
            .args(["sync", "--source", &format!("s3://{BUCKET}/{PREFIX}")])
            .arg("--db")
            .arg(&db)
            .args(["--s3-endpoint", &server.endpoint()])
            .env("AWS_ACCESS_KEY_ID", server.access_key())
            .env("AWS_SECRET_ACCESS_KEY", server.secret_key()),
    );
    assert!(ok, "kvreplica sync failed:\n{stderr}");

    let expected: serde_json::Value =
        serde_json::from_slice(&std::fs::read(fixtures.join("expected-0.json")).unwrap()).unwrap();
    let want: BTreeMap<String, String> = expected["final_state"]
        .as_object()
        .expect("final_state")
        .iter()
        .map(|(k, v)| (k.clone(), v[1].as_str().expect("versionstamp").to_string()))
        .collect();
    assert!(!want.is_empty());

    let conn = rusqlite::Connection::open(&db).unwrap();
    let mut stmt = conn.prepare("select k, version, seq from kv").unwrap();
    let got: BTreeMap<String, String> = stmt
        .query_map([], |row| {
            let k: Vec<u8> = row.get(0)?;
            let version: i64 = row.get(1)?;
            let seq: i64 = row.get(2)?;
            let mut vs = (version as u64).to_be_bytes().to_vec();
            vs.extend_from_slice(&(seq as u16).to_be_bytes());
            Ok((hex::encode(k), hex::encode(vs)))
        })
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(
        got.keys().collect::<Vec<_>>(),
        want.keys().collect::<Vec<_>>(),
        "the replica holds exactly the expected keys"
    );
    let wrong: Vec<_> = got
        .iter()
        .filter(|(k, vs)| want.get(*k) != Some(*vs))
        .take(5)
        .collect();
    assert!(wrong.is_empty(), "versionstamps differ, e.g. {wrong:?}");
}

#[test]
fn missing_credentials_are_a_clear_configuration_error() {
    let server = S3Server::start();
    server.create_bucket(BUCKET);
    let tmp = tempfile::tempdir().unwrap();
    let started = Instant::now();
    let (ok, stderr) = run_bounded(
        kvreplica(tmp.path())
            .args(["sync", "--source", &format!("s3://{BUCKET}/{PREFIX}")])
            .arg("--db")
            .arg(tmp.path().join("r.sqlite"))
            .args(["--s3-endpoint", &server.endpoint()]),
    );
    assert!(!ok, "no credentials must fail");
    assert!(
        stderr.contains("AWS_ACCESS_KEY_ID") && stderr.contains("credentials"),
        "{stderr}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "a configuration error is not retried"
    );
}

/// A TLS-terminating proxy on 127.0.0.1 in front of `upstream` (an S3
/// endpoint such as a private MinIO or a corporate gateway), serving
/// `cert`/`key`. Returns its `https://` endpoint; it lives as long as the
/// test process.
fn tls_front(upstream: std::net::SocketAddr, cert: &Path, key: &Path) -> String {
    use tokio_rustls::rustls::pki_types::pem::PemObject;
    use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_file(key).unwrap();
    let config = tokio_rustls::rustls::ServerConfig::builder_with_provider(Arc::new(
        tokio_rustls::rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    let addr = listener.local_addr().unwrap();
    listener.set_nonblocking(true).unwrap();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    return;
                };
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    // A client that refuses the certificate ends here.
                    let Ok(mut client) = acceptor.accept(client).await else {
                        return;
                    };
                    if let Ok(mut server) = tokio::net::TcpStream::connect(upstream).await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    }
                });
            }
        });
    });
    format!("https://{addr}")
}

/// An S3-compatible store behind a private CA: trusted through
/// `SSL_CERT_FILE` (the sync is exact), refused without it (the log says
/// why: the issuer is unknown).
#[test]
fn a_store_behind_a_private_ca_is_trusted_through_ssl_cert_file() {
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/sample-1");
    let server = S3Server::start();
    server.create_bucket(BUCKET);
    server.put_dir(BUCKET, "", &fixtures.join("bucket").join(BUCKET));
    let mut test_ca = certs::TestCa::new();
    let (cert, key) = test_ca.issue("s3");
    let ca = test_ca.ca();
    let upstream = server
        .endpoint()
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .parse()
        .expect("s3s-fs listens on an IP address");
    let endpoint = tls_front(upstream, &cert, &key);
    let tmp = tempfile::tempdir().unwrap();
    let sync = |db: &Path| {
        let mut cmd = kvreplica(tmp.path());
        cmd.args(["sync", "--source", &format!("s3://{BUCKET}/{PREFIX}")])
            .arg("--db")
            .arg(db)
            .args(["--s3-endpoint", &endpoint])
            .env("AWS_ACCESS_KEY_ID", server.access_key())
            .env("AWS_SECRET_ACCESS_KEY", server.secret_key())
            .env_remove("SSL_CERT_FILE")
            .env_remove("SSL_CERT_DIR");
        cmd
    };

    // Without the CA: never synced, and the log names the certificate.
    let refused_db = tmp.path().join("refused.sqlite");
    let log_path = tmp.path().join("refused.log");
    let mut child = sync(&refused_db)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log_path).unwrap())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let log = loop {
        let log = std::fs::read_to_string(&log_path).unwrap_or_default();
        let exited = child.try_wait().unwrap();
        if log.contains("UnknownIssuer") || exited.is_some() {
            assert!(
                exited.is_none_or(|s| !s.success()),
                "a sync through an untrusted certificate succeeded:\n{log}"
            );
            break log;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no certificate error logged within 30 s:\n{log}"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        log.contains("certificate") && log.contains("UnknownIssuer"),
        "the log says why the store is refused:\n{log}"
    );

    // With the CA in SSL_CERT_FILE: the sample, exactly.
    let db = tmp.path().join("r.sqlite");
    let (ok, stderr) = run_bounded(sync(&db).env("SSL_CERT_FILE", &ca));
    assert!(
        ok,
        "kvreplica sync through the private CA failed:\n{stderr}"
    );
    let expected: serde_json::Value =
        serde_json::from_slice(&std::fs::read(fixtures.join("expected-0.json")).unwrap()).unwrap();
    let want = expected["final_state"]
        .as_object()
        .expect("final_state")
        .len();
    let conn = rusqlite::Connection::open(&db).unwrap();
    let got: i64 = conn
        .query_row("select count(*) from kv", [], |r| r.get(0))
        .unwrap();
    assert!(want > 0);
    assert_eq!(got as usize, want, "the replica holds every expected key");
}

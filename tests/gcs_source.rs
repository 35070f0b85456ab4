//! `GcsSource` against a real GCS emulator (fake-gcs-server), plus small
//! canned HTTP servers for the answers an emulator never gives (throttling,
//! 5xx, 403, hung connections) and for the OAuth token endpoint.

#[path = "common/canned.rs"]
mod canned;
#[path = "common/gcs_server.rs"]
mod gcs_server;

use std::net::{Ipv4Addr, TcpListener};
use std::path::Path;
use std::time::{Duration, Instant};

use canned::Canned;
use chrono::Utc;
use gcs_server::GcsServer;
use kvreplica::format::{FormatError, LogName, SnapshotName};
use kvreplica::source::gcs::GcsSource;
use kvreplica::source::{GcsOptions, Source, SourceError};

const BUCKET: &str = "kv-backup";
const PREFIX: &str = "backups/3f1c2a7e-0000-4000-8000-000000000001/";

/// Timeout of each request in these tests: far above what the local
/// emulator needs, far below what would make a hung test noticeable.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

fn source_at(endpoint: &str, bucket: &str, opts: GcsOptions) -> GcsSource {
    GcsSource::new(
        bucket.to_string(),
        PREFIX.to_string(),
        &GcsOptions {
            endpoint: Some(endpoint.to_string()),
            ..opts
        },
        REQUEST_TIMEOUT,
    )
    .expect("valid source")
}

fn source(server: &GcsServer, bucket: &str) -> GcsSource {
    source_at(&server.endpoint(), bucket, GcsOptions::default())
}

/// The i-th of a run of consecutive, valid format-1 log names.
fn log_name(i: u64) -> LogName {
    format!("0001_{i:016x}_{i:020x}0000_{i:020x}ffff")
        .parse()
        .expect("valid log name")
}

fn snapshot_name(seq: u64) -> SnapshotName {
    format!("0001_{:016x}_{seq:016x}", 7)
        .parse()
        .expect("valid snapshot name")
}

fn log_key(name: &LogName) -> String {
    format!("{PREFIX}logs/{name}.bin")
}

#[tokio::test(flavor = "multi_thread")]
async fn lists_logs_after_a_cursor_across_pages() {
    // More than one page of GCS's documented 1000-item maximum.
    const LOGS: u64 = 1203;
    let server = GcsServer::start();
    server.create_bucket(BUCKET);
    let before = Utc::now() - chrono::Duration::seconds(1);
    // Object i holds i % 7 bytes, so sizes are checked too.
    for i in 0..LOGS {
        server.put(
            BUCKET,
            &log_key(&log_name(i)),
            &vec![b'x'; (i % 7) as usize],
        );
    }
    // Neighbours that must not be listed: another prefix sharing the
    // start, and the bucket root.
    server.put(
        BUCKET,
        &format!("{}x/logs/{}.bin", PREFIX.trim_end_matches('/'), log_name(0)),
        b"",
    );
    server.put(BUCKET, &format!("{}.bin", log_name(5)), b"");
    // A folder placeholder is not an object name.
    server.put(BUCKET, &format!("{PREFIX}logs/"), b"");
    let after = Utc::now() + chrono::Duration::seconds(1);
    let src = source(&server, BUCKET);
    let all: Vec<LogName> = (0..LOGS).map(log_name).collect();

    let listed = src.list_logs(None, usize::MAX).await.unwrap();
    assert_eq!(
        listed.iter().map(|l| l.name).collect::<Vec<_>>(),
        all,
        "every log, in order, nothing from outside the prefix"
    );
    for (i, l) in listed.iter().enumerate() {
        assert_eq!(l.size, (i % 7) as u64, "size of {}", l.name);
        assert!(
            before <= l.last_modified && l.last_modified <= after,
            "last_modified of {} is the upload time: {}",
            l.name,
            l.last_modified
        );
    }

    // start-after is exclusive, the limit holds across pages.
    let page = src.list_logs(Some(&all[499]), 700).await.unwrap();
    assert_eq!(
        page.iter().map(|l| l.name).collect::<Vec<_>>(),
        all[500..1200]
    );
    let page = src.list_logs(Some(&all[0]), 1).await.unwrap();
    assert_eq!(page[0].name, all[1]);
    assert_eq!(page.len(), 1);
    let tail = src.list_logs(Some(&all[1100]), 1000).await.unwrap();
    assert_eq!(tail.len(), 102);
    assert!(src
        .list_logs(Some(&all[LOGS as usize - 1]), 10)
        .await
        .unwrap()
        .is_empty());
    // A cursor that names no object starts at the next one.
    let between: LogName = format!("0001_{:016x}_{:020x}0000_{:020x}0000", 10, 10, 10)
        .parse()
        .unwrap();
    assert!(between > all[9] && between < all[10]);
    let page = src.list_logs(Some(&between), 2).await.unwrap();
    assert_eq!(page[0].name, all[10]);
    assert!(src.list_logs(None, 0).await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn lists_all_snapshot_pages_and_reads_objects() {
    const SNAPSHOTS: u64 = 1001;
    let server = GcsServer::start();
    server.create_bucket(BUCKET);
    for seq in 0..SNAPSHOTS {
        let body = seq.to_be_bytes();
        server.put(
            BUCKET,
            &format!("{PREFIX}snapshots/{}.bin", snapshot_name(seq)),
            &body,
        );
    }
    let src = source(&server, BUCKET);
    let listed = src.list_snapshots().await.unwrap();
    assert_eq!(listed.len(), SNAPSHOTS as usize);
    assert!(listed
        .iter()
        .enumerate()
        .all(|(i, l)| l.name == snapshot_name(i as u64) && l.size == 8));
    assert_eq!(
        src.get_snapshot(&snapshot_name(1000)).await.unwrap(),
        1000u64.to_be_bytes()
    );
    // An empty range is a 0-byte object, not a missing one.
    server.put(BUCKET, &log_key(&log_name(1)), b"");
    assert_eq!(src.get_log(&log_name(1)).await.unwrap(), b"");
}

#[tokio::test(flavor = "multi_thread")]
async fn differential_absent_then_present() {
    let server = GcsServer::start();
    server.create_bucket(BUCKET);
    let src = source(&server, BUCKET);
    assert_eq!(src.read_differential().await.unwrap(), None);
    server.put(
        BUCKET,
        &format!("{PREFIX}differential"),
        b"0000000200d0000000ff",
    );
    assert_eq!(
        src.read_differential().await.unwrap().as_deref(),
        Some(&b"0000000200d0000000ff"[..])
    );
    assert_eq!(
        src.identity(),
        format!("gs://{BUCKET}/{PREFIX}"),
        "anonymous access to the emulator, identity names bucket and prefix"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_listed_object_that_is_gone_is_retryable() {
    let server = GcsServer::start();
    server.create_bucket(BUCKET);
    let name = log_name(3);
    server.put(BUCKET, &log_key(&name), b"abc");
    let src = source(&server, BUCKET);
    assert_eq!(src.list_logs(None, 10).await.unwrap().len(), 1);
    server.delete(BUCKET, &log_key(&name));
    let err = src.get_log(&name).await.unwrap_err();
    assert!(
        matches!(&err, SourceError::ListedButMissing(o) if *o == format!("gs://{BUCKET}/{}", log_key(&name))),
        "{err:?}"
    );
    assert!(err.is_retryable());
    let err = src.get_snapshot(&snapshot_name(0)).await.unwrap_err();
    assert!(matches!(err, SourceError::ListedButMissing(_)), "{err:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_missing_bucket_is_named() {
    let server = GcsServer::start();
    let src = source(&server, "no-such-bucket");
    for err in [
        src.read_differential().await.unwrap_err(),
        src.list_snapshots().await.unwrap_err(),
        src.list_logs(None, 10).await.unwrap_err(),
    ] {
        assert!(
            matches!(&err, SourceError::NoSuchBucket(b) if b == "no-such-bucket"),
            "{err:?}"
        );
        assert!(!err.is_retryable());
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_invalid_object_name_is_a_format_error() {
    let server = GcsServer::start();
    server.create_bucket(BUCKET);
    server.put(BUCKET, &log_key(&log_name(1)), b"");
    server.put(BUCKET, &format!("{PREFIX}logs/not-a-log.bin"), b"");
    server.put(BUCKET, &format!("{PREFIX}snapshots/0001_zz.bin"), b"");
    let src = source(&server, BUCKET);
    let err = src.list_logs(None, 10).await.unwrap_err();
    assert!(
        matches!(&err, SourceError::Format(FormatError::BadName { name, .. }) if name.contains("not-a-log")),
        "{err:?}"
    );
    assert!(!err.is_retryable());
    let err = src.list_snapshots().await.unwrap_err();
    assert!(
        matches!(&err, SourceError::Format(FormatError::BadName { name, .. }) if name.contains("0001_zz")),
        "{err:?}"
    );
}

/// A status and JSON body, or `None` to never answer.
type Answer = Option<(u16, String)>;

/// Checks that an error has the expected class.
type Expect = fn(&SourceError) -> bool;

/// The raw response for an [`Answer`].
fn raw(a: Answer) -> canned::Answer {
    a.and_then(|(status, text)| canned::http(status, "application/json", &text))
}

fn gcs_error(code: u16, message: &str) -> Answer {
    Some((
        code,
        format!(
            r#"{{"error":{{"code":{code},"message":"{message}","errors":[{{"domain":"global","reason":"x","message":"{message}"}}]}}}}"#
        ),
    ))
}

#[tokio::test(flavor = "multi_thread")]
async fn http_failures_are_classified() {
    let cases: [(Answer, Expect); 6] = [
        (gcs_error(503, "Backend Error"), |e| {
            matches!(e, SourceError::Transient { .. })
        }),
        (gcs_error(429, "rateLimitExceeded"), |e| {
            matches!(e, SourceError::Transient { .. })
        }),
        (Some((502, "<html>bad gateway</html>".into())), |e| {
            matches!(e, SourceError::Transient { .. })
        }),
        (
            gcs_error(403, "Forbidden"),
            |e| matches!(e, SourceError::AccessDenied { detail, .. } if detail.contains("anonymous")),
        ),
        (gcs_error(401, "Login Required"), |e| {
            matches!(e, SourceError::AccessDenied { .. })
        }),
        (gcs_error(400, "Invalid argument"), |e| {
            matches!(e, SourceError::Permanent { .. })
        }),
    ];
    for (answer, expected) in cases {
        let label = format!("{answer:?}");
        let server = Canned::start(move |_| raw(answer.clone()));
        let src = source_at(&server.url(), BUCKET, GcsOptions::default());
        let err = src.list_logs(None, 10).await.unwrap_err();
        assert!(expected(&err), "{label}: {err:?}");
        let err = src.get_log(&log_name(1)).await.unwrap_err();
        assert!(expected(&err), "{label}: {err:?}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn refused_and_hung_connections_are_transient() {
    let closed = {
        let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        l.local_addr().unwrap()
    };
    let src = source_at(&format!("http://{closed}"), BUCKET, GcsOptions::default());
    let err = src.list_logs(None, 1).await.unwrap_err();
    assert!(matches!(err, SourceError::Transient { .. }), "{err:?}");

    let hung = Canned::start(|_| None);
    let src = GcsSource::new(
        BUCKET.into(),
        PREFIX.into(),
        &GcsOptions {
            endpoint: Some(hung.url()),
            ..GcsOptions::default()
        },
        Duration::from_millis(300),
    )
    .unwrap();
    let started = Instant::now();
    let err = src.get_log(&log_name(1)).await.unwrap_err();
    assert!(matches!(err, SourceError::Transient { .. }), "{err:?}");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "request timeout applies"
    );
}

/// Writes a service-account key file with a fresh RSA key (made by the
/// `openssl` CLI) whose token endpoint is `token_uri`.
fn write_key_file(dir: &Path, token_uri: &str) -> std::path::PathBuf {
    let pem = dir.join("key.pem");
    let ok = std::process::Command::new("openssl")
        .args([
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
            "-out",
        ])
        .arg(&pem)
        .stderr(std::process::Stdio::null())
        .status()
        .expect("run openssl")
        .success();
    assert!(ok, "openssl genpkey failed");
    let key = std::fs::read_to_string(&pem).unwrap();
    let json = serde_json::json!({
        "type": "service_account",
        "project_id": "test-project",
        "private_key_id": "k1",
        "private_key": key,
        "client_email": "replica@test-project.iam.gserviceaccount.com",
        "client_id": "1",
        "token_uri": token_uri,
    });
    let path = dir.join("key.json");
    std::fs::write(&path, json.to_string()).unwrap();
    path
}

/// Decodes unpadded base64url (the JWT alphabet).
fn b64url(s: &str) -> Vec<u8> {
    let val = |c: u8| match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'-' => 62,
        b'_' => 63,
        _ => panic!("not base64url: {c}"),
    };
    let mut out = Vec::new();
    let (mut acc, mut bits) = (0u32, 0);
    for c in s.bytes() {
        acc = (acc << 6) | u32::from(val(c));
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn key_file_signs_a_valid_assertion_and_names_the_account() {
    let dir = tempfile::tempdir().unwrap();
    let token = Canned::start(|_| {
        raw(Some((
            200,
            r#"{"access_token":"test-token","token_type":"Bearer","expires_in":3600}"#.into(),
        )))
    });
    let key_file = write_key_file(dir.path(), &format!("{}/token", token.url()));
    let server = GcsServer::start();
    server.create_bucket(BUCKET);
    server.put(BUCKET, &log_key(&log_name(1)), b"abc");
    let src = source_at(
        &server.endpoint(),
        BUCKET,
        GcsOptions {
            credentials_file: Some(key_file.clone()),
            ..GcsOptions::default()
        },
    );
    assert_eq!(src.get_log(&log_name(1)).await.unwrap(), b"abc");

    // The token request carried an RS256 assertion for this account that
    // verifies against the key's public half.
    let body = token.requests.lock().unwrap()[0].body.clone();
    let form: std::collections::HashMap<String, String> =
        url::form_urlencoded::parse(body.as_bytes())
            .into_owned()
            .collect();
    assert_eq!(
        form["grant_type"],
        "urn:ietf:params:oauth:grant-type:jwt-bearer"
    );
    let jwt = &form["assertion"];
    let parts: Vec<&str> = jwt.split('.').collect();
    let header: serde_json::Value = serde_json::from_slice(&b64url(parts[0])).unwrap();
    let claims: serde_json::Value = serde_json::from_slice(&b64url(parts[1])).unwrap();
    assert_eq!(header["alg"], "RS256");
    assert_eq!(
        claims["iss"],
        "replica@test-project.iam.gserviceaccount.com"
    );
    assert_eq!(
        claims["scope"],
        "https://www.googleapis.com/auth/devstorage.read_only"
    );
    let signed = dir.path().join("signed");
    let sig = dir.path().join("sig");
    std::fs::write(&signed, format!("{}.{}", parts[0], parts[1])).unwrap();
    std::fs::write(&sig, b64url(parts[2])).unwrap();
    let verified = std::process::Command::new("openssl")
        .args(["dgst", "-sha256", "-prverify"])
        .arg(dir.path().join("key.pem"))
        .arg("-signature")
        .arg(&sig)
        .arg(&signed)
        .output()
        .unwrap();
    assert!(
        verified.status.success(),
        "signature: {}{}",
        String::from_utf8_lossy(&verified.stdout),
        String::from_utf8_lossy(&verified.stderr)
    );

    // A refused key (revoked, deleted account) is an access error naming it.
    let refusing = Canned::start(|_| {
        raw(Some((
            400,
            r#"{"error":"invalid_grant","error_description":"Invalid JWT Signature."}"#.into(),
        )))
    });
    let key_file = write_key_file(dir.path(), &format!("{}/token", refusing.url()));
    let src = source_at(
        &server.endpoint(),
        BUCKET,
        GcsOptions {
            credentials_file: Some(key_file),
            ..GcsOptions::default()
        },
    );
    let err = src.list_logs(None, 1).await.unwrap_err();
    assert!(
        matches!(&err, SourceError::AccessDenied { detail, .. }
            if detail.contains("replica@test-project.iam.gserviceaccount.com")),
        "{err:?}"
    );

    // A key file that does not exist is a configuration error naming it.
    let src = source_at(
        &server.endpoint(),
        BUCKET,
        GcsOptions {
            credentials_file: Some(dir.path().join("missing.json")),
            ..GcsOptions::default()
        },
    );
    let err = src.list_logs(None, 1).await.unwrap_err();
    assert!(
        matches!(&err, SourceError::Config(m) if m.contains("missing.json")),
        "{err:?}"
    );
}

//! What only the GCS store has: small canned HTTP servers for the answers
//! an emulator never gives (throttling, 5xx, 403, hung connections), and
//! service-account key files against a canned OAuth token endpoint. What
//! every store does is in `object_store.rs`.

#[path = "common/canned.rs"]
mod canned;
#[path = "common/gcs_server.rs"]
mod gcs_server;
#[path = "common/stores.rs"]
mod stores;

use std::net::{Ipv4Addr, TcpListener};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use canned::Canned;
use gcs_server::GcsServer;
use kvreplica::backup::Backup;
use kvreplica::format::LogName;
use kvreplica::source::gcs::GcsStore;
use kvreplica::source::{GcsOptions, IfChanged, ObjectVersion, SourceError};
use stores::{log_name, single_attempt};

const BUCKET: &str = "kv-backup";
const PREFIX: &str = "backups/3f1c2a7e-0000-4000-8000-000000000001/";

/// Timeout of each request in these tests: far above what the local
/// emulator needs, far below what would make a hung test noticeable.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// The backup at `gs://<bucket>/<PREFIX>` on `endpoint`, one attempt per
/// call: these tests check how single answers are classified.
fn source_at(endpoint: &str, bucket: &str, opts: GcsOptions) -> Backup {
    source_timed(endpoint, bucket, opts, REQUEST_TIMEOUT)
}

fn source_timed(endpoint: &str, bucket: &str, opts: GcsOptions, timeout: Duration) -> Backup {
    let store = GcsStore::new(
        bucket.to_string(),
        PREFIX.to_string(),
        &GcsOptions {
            endpoint: Some(endpoint.to_string()),
            ..opts
        },
        timeout,
    )
    .expect("valid source");
    single_attempt(Arc::new(store))
}

fn log_key(name: &LogName) -> String {
    format!("{PREFIX}logs/{name}.bin")
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
async fn gcs_http_failures_are_classified() {
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
async fn differential_is_polled_by_generation() {
    let name = format!("{PREFIX}differential");
    let metadata = serde_json::json!({
        "kind": "storage#object",
        "id": format!("{BUCKET}/{name}/7"),
        "selfLink": "http://x/self",
        "mediaLink": "http://x/media",
        "name": name,
        "bucket": BUCKET,
        "generation": "7",
        "metageneration": "1",
        "size": "20",
    })
    .to_string();
    let server = Canned::start(move |req| {
        if req.line.contains("alt=media") {
            canned::http(200, "application/octet-stream", "0000000200d0000000ff")
        } else {
            raw(Some((200, metadata.clone())))
        }
    });
    let src = source_at(&server.url(), BUCKET, GcsOptions::default());
    let Some(IfChanged::Changed { body, version }) =
        src.differential_if_changed(None).await.unwrap()
    else {
        panic!("a first read returns the body");
    };
    assert_eq!(body, b"0000000200d0000000ff");
    assert_eq!(version, ObjectVersion("7".into()), "the generation");
    assert_eq!(
        server.requests.lock().unwrap().len(),
        2,
        "metadata, then media"
    );
    assert_eq!(
        src.differential_if_changed(Some(&version)).await.unwrap(),
        Some(IfChanged::Unchanged)
    );
    let requests = server.requests.lock().unwrap();
    assert_eq!(requests.len(), 3, "an unchanged object costs one request");
    assert!(
        !requests[2].line.contains("alt=media"),
        "and no body: {}",
        requests[2].line
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn gcs_refused_and_hung_connections_are_transient() {
    let closed = {
        let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        l.local_addr().unwrap()
    };
    let src = source_at(&format!("http://{closed}"), BUCKET, GcsOptions::default());
    let err = src.list_logs(None, 1).await.unwrap_err();
    assert!(matches!(err, SourceError::Transient { .. }), "{err:?}");

    let hung = Canned::start(|_| None);
    let src = source_timed(
        &hung.url(),
        BUCKET,
        GcsOptions::default(),
        Duration::from_millis(300),
    );
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

//! `S3Source` against a real S3-compatible server (s3s-fs, which checks
//! SigV4), plus small canned HTTP servers for the answers a healthy server
//! never gives (throttling, 5xx, cut-off bodies, hung connections), and one
//! round trip of the `kvreplica` binary through S3.

#[path = "common/canned.rs"]
mod canned;
#[path = "common/s3_server.rs"]
mod s3_server;

use std::collections::BTreeMap;
use std::io::Read;
use std::net::{Ipv4Addr, TcpListener};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, UNIX_EPOCH};

use canned::{http, Answer, Canned};
use chrono::{DateTime, Utc};
use kvreplica::format::{FormatError, LogName, SnapshotName};
use kvreplica::source::s3::{S3Credentials, S3Source};
use kvreplica::source::{S3Options, Source, SourceError};
use s3_server::S3Server;

const BUCKET: &str = "kv-backup";
const PREFIX: &str = "backups/3f1c2a7e-0000-4000-8000-000000000001/";

/// Timeout of each request in these tests: far above what the local
/// server needs, far below what would make a hung test noticeable.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// Longest a run of the binary may take; the sample syncs in about a
/// second.
const BINARY_TIMEOUT: Duration = Duration::from_secs(120);

fn source_with(endpoint: &str, bucket: &str, creds: S3Credentials, timeout: Duration) -> S3Source {
    S3Source::with_credentials(
        bucket.to_string(),
        PREFIX.to_string(),
        &S3Options {
            endpoint: Some(endpoint.to_string()),
            ..S3Options::default()
        },
        timeout,
        creds,
    )
    .expect("valid source")
}

fn creds(server: &S3Server) -> S3Credentials {
    S3Credentials {
        access_key_id: server.access_key().to_string(),
        secret_access_key: server.secret_key().to_string(),
        session_token: None,
    }
}

fn source(server: &S3Server, bucket: &str) -> S3Source {
    source_with(&server.endpoint(), bucket, creds(server), REQUEST_TIMEOUT)
}

/// Keys for the canned servers, which check nothing.
fn test_creds() -> S3Credentials {
    S3Credentials {
        access_key_id: "AKIDCANNEDTEST".into(),
        secret_access_key: "canned-secret-never-shown".into(),
        session_token: None,
    }
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
async fn lists_logs_after_a_cursor_page_by_page() {
    const LOGS: u64 = 25;
    let server = S3Server::start();
    server.create_bucket(BUCKET);
    // Object i holds i % 7 bytes and was written at a distinct, known
    // millisecond, so sizes and LastModified are checked exactly.
    let base_ms: u64 = 1_700_000_000_123;
    let written = |i: u64| UNIX_EPOCH + Duration::from_millis(base_ms + i * 60_001);
    for i in 0..LOGS {
        let key = log_key(&log_name(i));
        server.put(BUCKET, &key, &vec![b'x'; (i % 7) as usize]);
        server.set_modified(BUCKET, &key, written(i));
    }
    // Neighbours that must not be listed: another prefix sharing the
    // start, and the bucket root.
    server.put(
        BUCKET,
        &format!("{}x/logs/{}.bin", PREFIX.trim_end_matches('/'), log_name(0)),
        b"",
    );
    server.put(BUCKET, &format!("{}.bin", log_name(5)), b"");
    server.put(
        BUCKET,
        &format!("{PREFIX}snapshots/{}.bin", snapshot_name(0)),
        b"",
    );
    let src = source(&server, BUCKET);
    let all: Vec<LogName> = (0..LOGS).map(log_name).collect();

    // Three pages of 10, each one request after the previous page's last.
    let mut listed = Vec::new();
    let mut cursor: Option<LogName> = None;
    let mut pages = Vec::new();
    loop {
        let page = src.list_logs(cursor.as_ref(), 10).await.unwrap();
        if page.is_empty() {
            break;
        }
        pages.push(page.len());
        cursor = Some(page.last().unwrap().name);
        listed.extend(page);
        assert!(pages.len() <= 4, "the listing ends");
    }
    assert_eq!(pages, [10, 10, 5]);
    assert_eq!(
        listed.iter().map(|l| l.name).collect::<Vec<_>>(),
        all,
        "every log, in order, nothing from outside the prefix"
    );
    for (i, l) in listed.iter().enumerate() {
        let i = i as u64;
        assert_eq!(l.size, i % 7, "size of {}", l.name);
        let expected: DateTime<Utc> = written(i).into();
        assert_eq!(l.last_modified, expected, "LastModified of {}", l.name);
    }

    // start-after is exclusive; a limit of one gives one.
    let page = src.list_logs(Some(&all[0]), 1).await.unwrap();
    assert_eq!(page.iter().map(|l| l.name).collect::<Vec<_>>(), [all[1]]);
    assert!(src.list_logs(Some(&all[24]), 10).await.unwrap().is_empty());
    assert!(src.list_logs(None, 0).await.unwrap().is_empty());
    // A cursor that names no object starts at the next one.
    let between: LogName = format!("0001_{:016x}_{:020x}0000_{:020x}0000", 10, 10, 10)
        .parse()
        .unwrap();
    assert!(between > all[9] && between < all[10]);
    let page = src.list_logs(Some(&between), 2).await.unwrap();
    assert_eq!(
        page.iter().map(|l| l.name).collect::<Vec<_>>(),
        [all[10], all[11]]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn lists_all_snapshot_pages_and_reads_objects() {
    // s3s-fs honours max-keys and pages at 1000 like S3: three pages.
    const SNAPSHOTS: u64 = 2001;
    let server = S3Server::start();
    server.create_bucket(BUCKET);
    for seq in 0..SNAPSHOTS {
        server.put(
            BUCKET,
            &format!("{PREFIX}snapshots/{}.bin", snapshot_name(seq)),
            &seq.to_be_bytes(),
        );
    }
    // A log beside them is not a snapshot.
    server.put(BUCKET, &log_key(&log_name(1)), b"");
    let src = source(&server, BUCKET);
    let listed = src.list_snapshots().await.unwrap();
    assert_eq!(listed.len(), SNAPSHOTS as usize);
    assert!(listed
        .iter()
        .enumerate()
        .all(|(i, l)| l.name == snapshot_name(i as u64) && l.size == 8));
    assert_eq!(
        src.get_snapshot(&snapshot_name(2000)).await.unwrap(),
        2000u64.to_be_bytes()
    );
    // An empty range is a 0-byte object, not a missing one.
    assert_eq!(src.get_log(&log_name(1)).await.unwrap(), b"");
}

#[tokio::test(flavor = "multi_thread")]
async fn differential_absent_then_present() {
    let server = S3Server::start();
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
        format!("{}/{BUCKET}/{PREFIX}", server.endpoint()),
        "a custom endpoint is part of the identity"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_listed_object_that_is_gone_is_retryable() {
    let server = S3Server::start();
    server.create_bucket(BUCKET);
    let name = log_name(3);
    server.put(BUCKET, &log_key(&name), b"abc");
    let src = source(&server, BUCKET);
    assert_eq!(src.list_logs(None, 10).await.unwrap().len(), 1);
    assert_eq!(src.get_log(&name).await.unwrap(), b"abc");
    server.remove(BUCKET, &log_key(&name));
    let err = src.get_log(&name).await.unwrap_err();
    let expected = format!("{}/{BUCKET}/{}", server.endpoint(), log_key(&name));
    assert!(
        matches!(&err, SourceError::ListedButMissing(o) if *o == expected),
        "{err:?}"
    );
    assert!(err.is_retryable());
    let err = src.get_snapshot(&snapshot_name(0)).await.unwrap_err();
    assert!(matches!(err, SourceError::ListedButMissing(_)), "{err:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_missing_bucket_is_named() {
    let server = S3Server::start();
    server.create_bucket(BUCKET);
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
        assert!(err.to_string().contains("no-such-bucket"), "{err}");
    }
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

#[tokio::test(flavor = "multi_thread")]
async fn an_invalid_object_name_is_a_format_error() {
    let server = S3Server::start();
    server.create_bucket(BUCKET);
    server.put(BUCKET, &log_key(&log_name(1)), b"");
    server.put(BUCKET, &format!("{PREFIX}logs/not-a-log.bin"), b"");
    server.put(BUCKET, &format!("{PREFIX}snapshots/0001_zz.bin"), b"");
    let src = source(&server, BUCKET);
    let err = src.list_logs(None, 10).await.unwrap_err();
    assert!(
        matches!(&err, SourceError::Format(FormatError::BadName { name, .. })
            if *name == format!("{PREFIX}logs/not-a-log.bin")),
        "{err:?}"
    );
    assert!(!err.is_retryable());
    let err = src.list_snapshots().await.unwrap_err();
    assert!(
        matches!(&err, SourceError::Format(FormatError::BadName { name, .. }) if name.contains("0001_zz")),
        "{err:?}"
    );

    // Something without `.bin` under logs/ is just as invalid.
    server.remove(BUCKET, &format!("{PREFIX}logs/not-a-log.bin"));
    server.put(BUCKET, &format!("{PREFIX}logs/README"), b"hi");
    let err = src.list_logs(None, 10).await.unwrap_err();
    assert!(
        matches!(&err, SourceError::Format(FormatError::BadName { name, .. }) if name.ends_with("logs/README")),
        "{err:?}"
    );
}

/// Checks that an error has the expected class.
type Expect = fn(&SourceError) -> bool;

fn s3_error(status: u16, code: &str) -> Answer {
    http(
        status,
        "application/xml",
        &format!(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>{code}</Code>\
             <Message>canned {code}</Message><RequestId>1</RequestId></Error>"
        ),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn http_failures_are_classified() {
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

#[tokio::test(flavor = "multi_thread")]
async fn refused_and_hung_connections_are_transient() {
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
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start kvreplica");
    let mut stderr = child.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    let deadline = Instant::now() + BINARY_TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("kvreplica did not finish within {BINARY_TIMEOUT:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    (status.success(), reader.join().unwrap())
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

//! TLS on both listeners of `kvreplica serve`, with the real clients: the
//! Deno CLI (`DENO_CERT`) and `@deno/kv` on Node (`NODE_EXTRA_CA_CERTS`)
//! read the sample exactly over `https`, the admin API answers reqwest
//! (rustls) trusting the test CA, HTTP/2 and HTTP/1.1 are offered by ALPN,
//! a certificate rotation leaves open connections alone while new ones
//! see the new certificate, bad files are refused naming the file, and a
//! plain listener on a non-loopback address logs one warning.
//!
//! Certificates come from the `openssl` command line (an ECDSA P-256 test
//! CA and leaves for 127.0.0.1), so no certificate generator is compiled
//! into the test build.

#[path = "common/certs.rs"]
mod certs;
mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use certs::TestCa;
use common::serve::{run_deno_env, run_node_env, Method, ServeProcess};
use common::Sample;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::rustls::client::Resumption;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};
use tokio_rustls::rustls::{ClientConfig, RootCertStore};
use tokio_rustls::TlsConnector;

const CLIENT_TIMEOUT: Duration = Duration::from_secs(180);
/// Bound on a reload after the files changed (a 200 ms quiet period,
/// then a re-read).
const RELOAD_TIMEOUT: Duration = Duration::from_secs(20);

/// The DER of the first certificate in a PEM file.
fn der(pem: &Path) -> Vec<u8> {
    CertificateDer::pem_file_iter(pem)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .to_vec()
}

/// Copies `from` over `to` the way deployment tools do: a new file
/// renamed into place.
fn replace(from: &Path, to: &Path) {
    let tmp = to.with_extension("new");
    std::fs::copy(from, &tmp).unwrap();
    std::fs::rename(&tmp, to).unwrap();
}

/// The served TLS files, at fixed names the server is configured with,
/// alone in their directory (which the server watches): symbolic links
/// into another directory (as Kubernetes mounts secrets), which it does
/// not watch.
struct Served {
    cert: PathBuf,
    key: PathBuf,
    _links: tempfile::TempDir,
    behind: tempfile::TempDir,
}

impl Served {
    fn install((cert, key): &(PathBuf, PathBuf)) -> Served {
        let links = tempfile::tempdir().unwrap();
        let behind = tempfile::tempdir().unwrap();
        let served = Served {
            cert: links.path().join("served-cert.pem"),
            key: links.path().join("served-key.pem"),
            _links: links,
            behind,
        };
        served.change_behind(cert, key);
        std::os::unix::fs::symlink(served.behind.path().join("cert.pem"), &served.cert).unwrap();
        std::os::unix::fs::symlink(served.behind.path().join("key.pem"), &served.key).unwrap();
        served
    }

    /// New files where the links point: the watched directory sees
    /// nothing.
    fn change_behind(&self, cert: &Path, key: &Path) {
        replace(key, &self.behind.path().join("key.pem"));
        replace(cert, &self.behind.path().join("cert.pem"));
    }

    /// New files renamed over the configured names.
    fn rotate_to(&self, cert: &Path, key: &Path) {
        replace(key, &self.key);
        replace(cert, &self.cert);
    }
}

/// The sample bucket served with TLS on both listeners.
fn serve_tls(dir: &Path, files: &Served, ca: &Path, extra: &[&str]) -> (ServeProcess, Sample) {
    let sample = Sample::load("sample-1");
    let source = sample.install_initial(&dir.join("bucket"));
    let db = dir.join("replica.sqlite");
    let (cert, key) = (files.cert.to_str().unwrap(), files.key.to_str().unwrap());
    let mut args = vec![
        "--source",
        &source,
        "--db",
        db.to_str().unwrap(),
        "--tls-cert-file",
        cert,
        "--tls-key-file",
        key,
        "--admin-tls-cert-file",
        cert,
        "--admin-tls-key-file",
        key,
    ];
    args.extend_from_slice(extra);
    let mut server = ServeProcess::start(&args).trusting(ca);
    server.wait_ready();
    server.wait_at(&sample.json0.latest_point());
    (server, sample)
}

/// A TLS client trusting only `ca`, offering `alpn`.
fn connector(ca: &Path, alpn: &[&[u8]]) -> TlsConnector {
    let mut roots = RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    // Every connection a full handshake: a resumed session reports the
    // certificate of the session it resumed.
    config.resumption = Resumption::disabled();
    TlsConnector::from(Arc::new(config))
}

type Tls = tokio_rustls::client::TlsStream<TcpStream>;

/// A TLS connection to `addr` (`host:port`): the stream, the server's
/// certificate and the protocol ALPN chose.
async fn connect(tls: &TlsConnector, addr: &str) -> (Tls, Vec<u8>, Option<Vec<u8>>) {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let name = ServerName::try_from("127.0.0.1").unwrap();
    let s = tls.connect(name, tcp).await.expect("TLS handshake");
    let (_, conn) = s.get_ref();
    let cert = conn.peer_certificates().unwrap()[0].to_vec();
    let alpn = conn.alpn_protocol().map(<[u8]>::to_vec);
    (s, cert, alpn)
}

/// One listener: its `host:port` and a request it answers 200.
struct Target {
    addr: String,
    probe: Vec<u8>,
}

/// KV Connect (its metadata exchange) and the admin API (`/healthz`).
fn targets(server: &ServeProcess) -> [Target; 2] {
    let addr = |url: String| url.trim_start_matches("https://").to_string();
    [
        Target {
            addr: addr(server.kv_url()),
            probe: metadata_request(),
        },
        Target {
            addr: addr(server.admin_url()),
            probe: b"GET /healthz HTTP/1.1\r\nhost: 127.0.0.1\r\n\r\n".to_vec(),
        },
    ]
}

/// KV Connect's metadata exchange as an HTTP/1.1 request.
fn metadata_request() -> Vec<u8> {
    {
        let body = br#"{"supportedVersions":[2,3]}"#;
        let mut r = format!(
            "POST / HTTP/1.1\r\nhost: 127.0.0.1\r\nauthorization: Bearer {}\r\n\
             content-type: application/json\r\ncontent-length: {}\r\n\r\n",
            common::serve::ACCESS_TOKEN,
            body.len()
        )
        .into_bytes();
        r.extend_from_slice(body);
        r
    }
}

/// One request over an HTTP/1.1 keep-alive connection: the status.
async fn exchange(s: &mut Tls, request: &[u8]) -> u16 {
    s.write_all(request).await.unwrap();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut chunk))
            .await
            .expect("an answer in time")
            .unwrap();
        assert!(
            n > 0,
            "the connection closed: {}",
            String::from_utf8_lossy(&buf)
        );
        buf.extend_from_slice(&chunk[..n]);
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_lowercase();
    let len: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .map(|v| v.trim().parse().unwrap())
        .expect("a content-length");
    while buf.len() < head_end + len {
        let n = s.read(&mut chunk).await.unwrap();
        assert!(n > 0);
        buf.extend_from_slice(&chunk[..n]);
    }
    head[9..12].parse().unwrap()
}

fn wait_for_log(server: &ServeProcess, needle: &str, times: usize) {
    let deadline = Instant::now() + RELOAD_TIMEOUT;
    while server.log().matches(needle).count() < times {
        assert!(
            Instant::now() < deadline,
            "no {needle:?} (x{times}) in the log:\n{}",
            server.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn final_keys(sample: &Sample) -> u64 {
    sample.json0.raw["final_state"].as_object().unwrap().len() as u64
}

#[test]
fn deno_node_and_the_admin_api_over_tls() {
    let mut ca = TestCa::new();
    let leaf = ca.issue("leaf");
    let served = Served::install(&leaf);
    let dir = tempfile::tempdir().unwrap();
    let (server, sample) = serve_tls(dir.path(), &served, &ca.ca(), &[]);
    let url = server.kv_url();
    assert!(url.starts_with("https://127.0.0.1:"), "{url}");
    let expected = common::fixtures_dir().join("sample-1/expected-0.json");
    let expected = expected.to_str().unwrap();
    let keys = final_keys(&sample);
    assert!(keys > 100);
    let ca_path = ca.ca();
    let ca_path = ca_path.to_str().unwrap();

    // The Deno CLI: HTTP/2 over TLS.
    let out = run_deno_env(
        "deno_reads.ts",
        &[&url, expected, "remote"],
        dir.path(),
        &[("DENO_CERT", ca_path)],
        CLIENT_TIMEOUT,
    );
    let summary = out.assert_success();
    assert_eq!(summary["failure_count"], 0, "Deno over TLS: {summary:#}");
    assert_eq!(summary["keys"], keys, "Deno over TLS: {summary}");
    assert!(
        summary["counts"]["point_reads"].as_u64().unwrap_or(0) >= keys,
        "{summary}"
    );

    // @deno/kv on Node: HTTP/1.1 over TLS.
    let out = run_node_env(
        "node_reads.cjs",
        &[&url, expected, "4"],
        &[("NODE_EXTRA_CA_CERTS", ca_path)],
        CLIENT_TIMEOUT,
    );
    let summary = out.assert_success();
    assert_eq!(summary["failure_count"], 0, "Node over TLS: {summary:#}");
    assert_eq!(summary["keys"], keys, "Node over TLS: {summary}");

    // Without the CA, Deno refuses the certificate: the clients above
    // really checked it.
    let out = run_deno_env(
        "deno_reads.ts",
        &[&url, expected, "remote"],
        dir.path(),
        &[],
        CLIENT_TIMEOUT,
    );
    assert!(
        out.status.is_some_and(|s| !s.success()),
        "{}",
        out.describe()
    );

    // The admin API with reqwest (rustls) trusting the CA.
    let (status, current) = server.admin(Method::Get, "/pitr/current", Value::Null);
    assert_eq!(status, 200, "{current}");
    assert_eq!(
        current["versionstamp"],
        sample.json0.latest_point(),
        "{current}"
    );
    assert!(server.admin_url().starts_with("https://"));

    // ALPN: HTTP/2 preferred, HTTP/1.1 for clients without it, on both
    // listeners; plain HTTP on a TLS port gets no answer.
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let targets = targets(&server);
        for t in &targets {
            let addr = &t.addr;
            let (_, _, alpn) = connect(&connector(&ca.ca(), &[b"h2", b"http/1.1"]), addr).await;
            assert_eq!(alpn.as_deref(), Some(&b"h2"[..]), "{addr}");
            let (mut s, _, alpn) = connect(&connector(&ca.ca(), &[b"http/1.1"]), addr).await;
            assert_eq!(alpn.as_deref(), Some(&b"http/1.1"[..]), "{addr}");
            assert_eq!(exchange(&mut s, &t.probe).await, 200, "{addr}");
        }
        let mut plain = TcpStream::connect(&targets[0].addr).await.unwrap();
        plain
            .write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
            .await
            .unwrap();
        let mut buf = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(10), plain.read_to_end(&mut buf)).await;
        assert!(!buf.starts_with(b"HTTP/1.1 200"), "plain HTTP answered");
    });
    let log = server.log();
    assert!(
        log.contains("KV Connect listening") && log.contains("https"),
        "{log}"
    );
    assert!(!log.contains("plain HTTP"), "{log}");
}

/// Opens a connection to `t` and checks it is served with `cert`.
async fn assert_serves(h1: &TlsConnector, t: &Target, cert: &Path, what: &str) {
    let (mut s, got, _) = connect(h1, &t.addr).await;
    assert_eq!(got, der(cert), "{}: {what}", t.addr);
    assert_eq!(exchange(&mut s, &t.probe).await, 200, "{}: {what}", t.addr);
}

#[test]
fn a_rotated_certificate_serves_new_connections_and_spares_open_ones() {
    let mut ca = TestCa::new();
    let first = ca.issue("first");
    let second = ca.issue("second");
    let third = ca.issue("third");
    let served = Served::install(&first);
    let dir = tempfile::tempdir().unwrap();
    let (server, _sample) = serve_tls(dir.path(), &served, &ca.ca(), &[]);
    let targets = targets(&server);
    let h1 = connector(&ca.ca(), &[b"http/1.1"]);
    let rt = tokio::runtime::Runtime::new().unwrap();

    // Open connections on both listeners, on the first certificate.
    let mut open = rt.block_on(async {
        let mut open = Vec::new();
        for t in &targets {
            let (mut s, cert, _) = connect(&h1, &t.addr).await;
            assert_eq!(cert, der(&first.0), "{}", t.addr);
            assert_eq!(exchange(&mut s, &t.probe).await, 200);
            open.push(s);
        }
        open
    });
    let check_open = |open: &mut Vec<Tls>, what: &str| {
        rt.block_on(async {
            for (s, t) in open.iter_mut().zip(&targets) {
                let status = exchange(s, &t.probe).await;
                assert_eq!(status, 200, "{}: the open connection, {what}", t.addr);
            }
        })
    };

    // SIGHUP: files changed where no watch sees them are read on SIGHUP.
    served.change_behind(&second.0, &second.1);
    std::thread::sleep(Duration::from_secs(1));
    rt.block_on(assert_serves(&h1, &targets[0], &first.0, "before SIGHUP"));
    let status = Command::new("kill")
        .args(["-HUP", &server.pid().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    wait_for_log(&server, "TLS certificate reloaded", 2);
    check_open(&mut open, "after SIGHUP");
    rt.block_on(async {
        for t in &targets {
            assert_serves(&h1, t, &second.0, "after SIGHUP").await;
        }
    });

    // A file watch: new key and certificate renamed over the served names.
    served.rotate_to(&third.0, &third.1);
    wait_for_log(&server, "TLS certificate reloaded", 4);
    check_open(&mut open, "after a rotation");
    rt.block_on(async {
        for t in &targets {
            assert_serves(&h1, t, &third.0, "after a rotation").await;
        }
    });

    // A broken rotation (the first key with the third certificate) is
    // refused, naming the files, and the third pair stays in service.
    replace(&first.1, &served.key);
    wait_for_log(&server, "does not belong to the certificate", 2);
    let log = server.log();
    assert!(
        log.contains(served.key.to_str().unwrap()) && log.contains("keeping the current one"),
        "{log}"
    );
    check_open(&mut open, "after a broken rotation");
    rt.block_on(async {
        for t in &targets {
            assert_serves(&h1, t, &third.0, "after a broken rotation").await;
        }
    });
}

/// `kvreplica serve` on `dir` (an empty bucket, and the replica file)
/// with `args`, that must not start: its stderr.
fn refused_start(dir: &Path, args: &[&str]) -> String {
    let out = Command::new(common::kvreplica_bin())
        .arg("serve")
        .args([
            "--addr",
            "127.0.0.1:0",
            "--admin-addr",
            "127.0.0.1:0",
            "--access-token",
            common::serve::ACCESS_TOKEN,
        ])
        .arg("--source")
        .arg(format!("file://{}/", dir.display()))
        .arg("--db")
        .arg(dir.join("r.sqlite"))
        .args(args)
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "serve {args:?} started:\n{stderr}");
    stderr
}

#[test]
fn bad_certificate_files_are_refused_naming_the_file() {
    let mut ca = TestCa::new();
    let (cert, key) = ca.issue("one");
    let (_, other_key) = ca.issue("two");
    let (cert, key, other_key) = (
        cert.to_str().unwrap(),
        key.to_str().unwrap(),
        other_key.to_str().unwrap(),
    );
    let missing = ca.path("missing.pem");
    let missing = missing.to_str().unwrap();
    let garbage = ca.path("garbage.pem");
    std::fs::write(&garbage, "not a certificate\n").unwrap();
    let garbage = garbage.to_str().unwrap();

    let half = "server.tls_cert_file is set but server.tls_key_file is not".to_string();
    let mismatch =
        format!("the TLS key in {other_key} does not belong to the certificate in {cert}");
    let no_cert = format!("the TLS certificate file {garbage} holds no PEM certificate");
    let no_key = format!("the TLS key file {garbage} holds no usable private key");
    let cases: [(&[&str], Vec<String>); 6] = [
        (
            &["--tls-cert-file", missing, "--tls-key-file", key],
            vec!["server.tls_cert_file".into(), missing.into()],
        ),
        (
            &[
                "--admin-tls-cert-file",
                cert,
                "--admin-tls-key-file",
                missing,
            ],
            vec!["admin.tls_key_file".into(), missing.into()],
        ),
        (&["--tls-cert-file", cert], vec![half]),
        (
            &["--tls-cert-file", cert, "--tls-key-file", other_key],
            vec![mismatch],
        ),
        (
            &["--tls-cert-file", garbage, "--tls-key-file", key],
            vec![no_cert],
        ),
        (
            &["--tls-cert-file", cert, "--tls-key-file", garbage],
            vec![no_key],
        ),
    ];
    let mut e = String::new();
    for (args, wanted) in cases {
        e = refused_start(&ca.path(""), args);
        for w in wanted {
            assert!(e.contains(&w), "serve {args:?}: no {w:?} in:\n{e}");
        }
    }
    // Key material never shows in an error.
    let key_text = std::fs::read_to_string(key).unwrap();
    let body = key_text.lines().nth(1).unwrap();
    assert!(!e.contains(body));
}

#[test]
fn plain_http_on_a_reachable_address_warns_once() {
    let dir = tempfile::tempdir().unwrap();
    let sample = Sample::load("sample-1");
    let source = sample.install_initial(&dir.path().join("bucket"));
    let db = dir.path().join("replica.sqlite");
    let db = db.to_str().unwrap();
    let common_args = [
        "--admin-addr",
        "127.0.0.1:0",
        "--access-token",
        common::serve::ACCESS_TOKEN,
        "--source",
        &source,
        "--db",
        db,
    ];
    let warning = "serves plain HTTP on an address other machines can reach";

    let mut args = vec!["--addr", "0.0.0.0:0"];
    args.extend_from_slice(&common_args);
    let mut server = ServeProcess::start_bare(&args, &[]);
    server.wait_ready();
    let log = server.log();
    assert_eq!(log.matches(warning).count(), 1, "{log}");
    let line = log.lines().find(|l| l.contains(warning)).unwrap();
    assert!(
        line.contains("WARN") && line.contains("KV Connect"),
        "{line}"
    );
    assert!(line.contains("server.tls_cert_file"), "{line}");
    drop(server);

    let mut args = vec!["--addr", "127.0.0.1:0"];
    args.extend_from_slice(&common_args);
    let mut server = ServeProcess::start_bare(&args, &[]);
    server.wait_ready();
    let log = server.log();
    assert!(!log.contains(warning), "{log}");
}

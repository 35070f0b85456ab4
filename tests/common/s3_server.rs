//! A real S3-compatible server (s3s-fs) for tests: started on a free
//! 127.0.0.1 port over a fresh temporary directory, killed on drop.
//!
//! s3s-fs checks SigV4 signatures against one access key / secret key pair
//! and maps bucket `b` to the directory `<root>/b` and object `k` to the
//! file `<root>/b/k`. Tests therefore seed buckets by writing files (no
//! HTTP upload, no signing code in the tests) and back-date objects by
//! setting a file's mtime, which s3s-fs reports as `LastModified`.
//!
//! The binary comes from `KVREPLICA_TEST_S3S_FS`, else from
//! `s3s-fs/bin/s3s-fs` of the tools directory (see `tools.rs`), where `scripts/install-test-tools.sh`
//! installs it (`cargo install s3s-fs@0.14.1 --features binary`).
//!
//! Use from any test file with
//! `#[path = "common/s3_server.rs"] mod s3_server;` — this file depends on
//! no other test module but `tools.rs`.
#![allow(dead_code)]

// Test files that start both servers load this module twice, on purpose:
// each server module stands alone.
#[allow(clippy::duplicate_mod)]
#[path = "tools.rs"]
mod tools;

use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

/// Longest wait for the server to accept connections; it is ready in about
/// 10 ms on these machines, so this only bounds a broken start.
const START_TIMEOUT: Duration = Duration::from_secs(10);

/// Pause between two connection attempts while it starts.
const POLL_INTERVAL: Duration = Duration::from_millis(10);

/// Attempts at starting it: a free port found by binding `:0` can be taken
/// by someone else before the server binds it.
const START_ATTEMPTS: usize = 3;

/// Access key the server accepts (the AWS documentation's example id).
const ACCESS_KEY: &str = "AKIAIOSFODNN7EXAMPLE";

/// Secret key the server accepts (the AWS documentation's example secret).
const SECRET_KEY: &str = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY";

/// A running s3s-fs.
pub struct S3Server {
    /// The server process, killed on drop.
    child: Child,
    /// Where it listens (always 127.0.0.1).
    addr: SocketAddr,
    /// The directory it serves: one subdirectory per bucket. Removed on
    /// drop, after the process is gone.
    root: tempfile::TempDir,
    /// Its stdout and stderr, shown when it fails to start.
    log: tempfile::NamedTempFile,
}

/// Path of the s3s-fs binary, or a message on how to install it.
pub fn binary() -> Result<PathBuf, String> {
    if let Some(p) = std::env::var_os("KVREPLICA_TEST_S3S_FS").filter(|p| !p.is_empty()) {
        return Ok(PathBuf::from(p));
    }
    let path = tools::dir().join("s3s-fs/bin/s3s-fs");
    if path.is_file() {
        Ok(path)
    } else {
        Err(format!(
            "s3s-fs not found (no KVREPLICA_TEST_S3S_FS, nothing at {}): \
             run `scripts/install-test-tools.sh` first",
            path.display()
        ))
    }
}

fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .expect("bind a free port")
        .port()
}

impl S3Server {
    /// Starts s3s-fs over an empty temporary directory and waits until it
    /// accepts connections. Panics (with the install hint) when the binary
    /// is missing: tests that need it must not pass by skipping.
    pub fn start() -> S3Server {
        let bin = binary().unwrap_or_else(|e| panic!("{e}"));
        let mut last_log = String::new();
        for _ in 0..START_ATTEMPTS {
            let root = tempfile::tempdir().expect("temporary root directory");
            let port = free_port();
            let log = tempfile::NamedTempFile::new().expect("log file");
            let out = log.reopen().expect("log file");
            let err = log.reopen().expect("log file");
            let child = Command::new(&bin)
                .args(["--host", "127.0.0.1", "--port", &port.to_string()])
                .args(["--access-key", ACCESS_KEY, "--secret-key", SECRET_KEY])
                .arg(root.path())
                .env("RUST_LOG", "warn")
                .stdin(Stdio::null())
                .stdout(out)
                .stderr(err)
                .spawn()
                .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
            let mut server = S3Server {
                child,
                addr: SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
                root,
                log,
            };
            if server.wait_ready() {
                return server;
            }
            last_log = server.log_text();
            // Dropping kills it; try another port.
        }
        panic!("s3s-fs did not start listening; its log:\n{last_log}");
    }

    fn wait_ready(&mut self) -> bool {
        let deadline = Instant::now() + START_TIMEOUT;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return false;
            }
            // Ours, not another server given the same port at the same time.
            if TcpStream::connect_timeout(&self.addr, POLL_INTERVAL * 10).is_ok()
                && tools::listens_on(self.child.id(), self.addr.port())
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

    /// Base URL, for `--s3-endpoint` / `S3Options::endpoint`:
    /// `http://127.0.0.1:<port>`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The access key id the server accepts.
    pub fn access_key(&self) -> &'static str {
        ACCESS_KEY
    }

    /// The secret key the server accepts.
    pub fn secret_key(&self) -> &'static str {
        SECRET_KEY
    }

    /// The directory the server serves (`<root>/<bucket>/<key>`).
    pub fn root(&self) -> &Path {
        self.root.path()
    }

    /// The file that holds `key` in `bucket`.
    pub fn object_path(&self, bucket: &str, key: &str) -> PathBuf {
        assert!(
            !key.starts_with('/') && !key.split('/').any(|s| s == ".." || s == "."),
            "key {key:?} does not map to a file below the bucket"
        );
        self.root.path().join(bucket).join(key)
    }

    /// Creates an empty bucket (a directory); no-op when it exists.
    pub fn create_bucket(&self, bucket: &str) {
        let dir = self.root.path().join(bucket);
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    }

    /// Writes one object, creating the bucket and the key's "folders".
    /// Keys ending in `/` (folder placeholders) cannot be stored as files.
    pub fn put(&self, bucket: &str, key: &str, data: &[u8]) {
        assert!(!key.is_empty() && !key.ends_with('/'), "key {key:?}");
        let path = self.object_path(bucket, key);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).unwrap_or_else(|e| panic!("{}: {e}", parent.display()));
        }
        std::fs::write(&path, data).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    }

    /// Copies every file under `dir` into `bucket` as
    /// `<key_prefix><path relative to dir>`, keeping each file's mtime (so
    /// `LastModified` is the fixture's, not the copy time).
    pub fn put_dir(&self, bucket: &str, key_prefix: &str, dir: &Path) {
        let mut files = Vec::new();
        collect_files(dir, &mut files);
        files.sort();
        for f in files {
            let rel = f.strip_prefix(dir).expect("below dir");
            let rel = rel.to_str().expect("UTF-8 file name").replace('\\', "/");
            let key = format!("{key_prefix}{rel}");
            let data = std::fs::read(&f).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
            self.put(bucket, &key, &data);
            if let Ok(mtime) = std::fs::metadata(&f).and_then(|m| m.modified()) {
                self.set_modified(bucket, &key, mtime);
            }
        }
    }

    /// Sets an object's `LastModified` (its file's mtime).
    pub fn set_modified(&self, bucket: &str, key: &str, when: SystemTime) {
        let path = self.object_path(bucket, key);
        std::fs::File::options()
            .write(true)
            .open(&path)
            .and_then(|f| f.set_modified(when))
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    }

    /// Deletes one object.
    pub fn remove(&self, bucket: &str, key: &str) {
        let path = self.object_path(bucket, key);
        std::fs::remove_file(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
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

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

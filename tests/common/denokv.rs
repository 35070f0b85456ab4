//! A real, writable KV Connect server for the restore tests: `denokv`
//! (crates.io, installed by scripts/install-test-tools.sh into
//! `$KVREPLICA_TEST_DENOKV`) on 127.0.0.1, on its own SQLite file.

use std::collections::BTreeMap;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub use super::common::Row;

/// A running denokv; killed when dropped.
pub struct Denokv {
    child: Child,
    pub url: String,
    pub sqlite: PathBuf,
}

impl Denokv {
    /// Starts denokv with `token` on a free port of 127.0.0.1, its file in
    /// `dir`, and waits (bounded) until it accepts connections.
    pub fn start(dir: &Path, token: &str) -> Denokv {
        let bin = std::env::var("KVREPLICA_TEST_DENOKV").unwrap_or_else(|_| {
            panic!(
                "KVREPLICA_TEST_DENOKV is not set: run `source scripts/install-test-tools.sh` first"
            )
        });
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let sqlite = dir.join("primary.sqlite");
        let addr = format!("127.0.0.1:{port}");
        let child = Command::new(bin)
            .arg("--sqlite-path")
            .arg(&sqlite)
            .args(["serve", "--access-token", token, "--addr", &addr])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting denokv");
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(&addr).is_err() {
            assert!(Instant::now() < deadline, "denokv did not listen on {addr}");
            std::thread::sleep(Duration::from_millis(50));
        }
        Denokv {
            child,
            url: format!("http://{addr}"),
            sqlite,
        }
    }

    /// Every row of its file, by hex key: what a client cannot read over
    /// KV Connect (the expiry) included. denokv keeps the Deno CLI's
    /// layout, which is the replica's.
    pub fn rows(&self) -> BTreeMap<String, Row> {
        super::common::read_replica(&self.sqlite)
    }
}

impl Drop for Denokv {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

//! A real, writable KV Connect server for the restore tests: `denokv`
//! (crates.io, installed by scripts/install-test-tools.sh into
//! `$KVREPLICA_TEST_DENOKV`) on 127.0.0.1, on its own SQLite file.

use std::collections::BTreeMap;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// One row of denokv's `kv` table: value, encoding, versionstamp (hex),
/// expiry (epoch ms, -1 none).
pub type Row = (Vec<u8>, i64, String, i64);

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
    /// KV Connect (the expiry) included.
    pub fn rows(&self) -> BTreeMap<String, Row> {
        let conn = rusqlite::Connection::open_with_flags(
            &self.sqlite,
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
        )
        .unwrap();
        let mut stmt = conn
            .prepare("select k, v, v_encoding, version, seq, expiration_ms from kv order by k")
            .unwrap();
        let rows = stmt
            .query_map([], |r| {
                let k: Vec<u8> = r.get(0)?;
                let version: i64 = r.get(3)?;
                let seq: i64 = r.get(4)?;
                let vs = format!("{:016x}{:04x}", version as u64, seq as u16);
                Ok((hex::encode(k), (r.get(1)?, r.get(2)?, vs, r.get(5)?)))
            })
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        rows
    }
}

impl Drop for Denokv {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

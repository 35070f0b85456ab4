//! A backup bucket for the scenario tests that change a bucket under a
//! running replica (`continuity.rs`, `late.rs`): a directory, a real S3
//! server (s3s-fs) or the GCS emulator (fake-gcs-server) on 127.0.0.1,
//! how kvreplica is told to read it, and the admin's view of the replica
//! (`/readyz`, `/metrics`).
//!
//! A test file loads it with `#[path = "common/bucket.rs"] mod bucket;`
//! beside `mod common;`, `mod s3_server;` and `mod gcs_server;`.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::common;
use super::common::serve::{Method, ServeProcess};
use super::gcs_server::GcsServer;
use super::s3_server::S3Server;

/// The bucket name on S3 and GCS.
pub const BUCKET: &str = "kv-backup";

/// Far more than the few poll intervals (100 ms) any step takes.
pub const WAIT: Duration = Duration::from_secs(30);

/// Where the backup lives.
enum Store {
    Dir(tempfile::TempDir),
    S3(S3Server),
    /// With the keys put so far, for [`Bucket::clear`].
    Gcs(GcsServer, Mutex<Vec<String>>),
}

/// A backup under `prefix` of a fresh bucket.
pub struct Bucket {
    store: Store,
    prefix: &'static str,
}

impl Bucket {
    /// `kind`: `dir`, `s3` or `gcs`.
    pub fn start(kind: &str, prefix: &'static str) -> Bucket {
        let store = match kind {
            "dir" => Store::Dir(tempfile::tempdir().unwrap()),
            "s3" => {
                let s = S3Server::start();
                s.create_bucket(BUCKET);
                Store::S3(s)
            }
            "gcs" => {
                let s = GcsServer::start();
                s.create_bucket(BUCKET);
                Store::Gcs(s, Mutex::default())
            }
            other => panic!("unknown backend {other}"),
        };
        Bucket { store, prefix }
    }

    /// The folder that holds the prefix on disk (the directory source and
    /// s3s-fs store objects as files).
    fn prefix_dir(&self) -> PathBuf {
        match &self.store {
            Store::Dir(d) => d.path().join(self.prefix),
            Store::S3(s) => s.root().join(BUCKET).join(self.prefix),
            Store::Gcs(..) => panic!("the GCS emulator keeps its objects in memory"),
        }
    }

    /// Stores each `(path below the prefix, body)`, whole: a listing never
    /// shows half an object.
    pub fn put(&self, objects: &[(String, Vec<u8>)]) {
        for (rel, body) in objects {
            let key = format!("{}{rel}", self.prefix);
            match &self.store {
                Store::Dir(d) => {
                    let p = self.prefix_dir().join(rel);
                    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
                    let aside = d.path().join(".upload");
                    std::fs::write(&aside, body).unwrap();
                    std::fs::rename(&aside, p).unwrap();
                }
                Store::S3(s) => s.put(BUCKET, &key, body),
                Store::Gcs(s, keys) => {
                    s.put(BUCKET, &key, body);
                    keys.lock().unwrap().push(key);
                }
            }
        }
    }

    /// Deletes every object under the prefix.
    pub fn clear(&self) {
        match &self.store {
            Store::Gcs(s, keys) => {
                let mut keys = keys.lock().unwrap();
                keys.sort();
                keys.dedup();
                for k in keys.drain(..) {
                    s.delete(BUCKET, &k);
                }
            }
            _ => std::fs::remove_dir_all(self.prefix_dir()).unwrap(),
        }
    }

    /// `--source` and the settings to reach it.
    pub fn args(&self) -> Vec<String> {
        let prefix = self.prefix;
        match &self.store {
            Store::Dir(d) => vec![
                "--source".into(),
                format!("file://{}/{prefix}", d.path().display()),
            ],
            Store::S3(s) => vec![
                "--source".into(),
                format!("s3://{BUCKET}/{prefix}"),
                "--s3-endpoint".into(),
                s.endpoint(),
            ],
            Store::Gcs(s, _) => vec![
                "--source".into(),
                format!("gs://{BUCKET}/{prefix}"),
                "--gcs-endpoint".into(),
                s.endpoint(),
            ],
        }
    }

    /// The environment kvreplica needs to reach it (S3's keys).
    pub fn env(&self) -> Vec<(&'static str, String)> {
        match &self.store {
            Store::S3(s) => vec![
                ("AWS_ACCESS_KEY_ID", s.access_key().to_string()),
                ("AWS_SECRET_ACCESS_KEY", s.secret_key().to_string()),
            ],
            _ => Vec::new(),
        }
    }

    /// A bucket of `kind` holding `objects`, and `kvreplica serve` of a new
    /// replica of it (`r.sqlite` in the returned folder), once ready.
    pub fn serving(
        kind: &str,
        prefix: &'static str,
        objects: &[(String, Vec<u8>)],
    ) -> (Bucket, tempfile::TempDir, PathBuf, ServeProcess) {
        let bucket = Bucket::start(kind, prefix);
        bucket.put(objects);
        let tmp = tempfile::tempdir().unwrap();
        let db = tmp.path().join("r.sqlite");
        let mut serve = bucket.serve(&db);
        serve.wait_ready();
        (bucket, tmp, db, serve)
    }

    /// `kvreplica serve` of `db`, polling every 100 ms.
    pub fn serve(&self, db: &Path) -> ServeProcess {
        let mut args = self.args();
        args.extend(["--db".into(), db.display().to_string()]);
        args.extend(["--poll-interval".into(), "100ms".into()]);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let env = self.env();
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        ServeProcess::start_with_env(&args, &env)
    }

    /// A one-shot `kvreplica sync` of `db` with `extra` flags: its exit
    /// code and stderr.
    pub fn sync(&self, db: &Path, extra: &[&str]) -> (Option<i32>, String) {
        let out = Command::new(common::kvreplica_bin())
            .arg("sync")
            .args(self.args())
            .arg("--db")
            .arg(db)
            .args(extra)
            .env_remove("RUST_LOG")
            .envs(self.env())
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }
}

/// `/readyz` as the admin sees it (the detail needs the admin token): status
/// and body. Anyone else gets the status phrase only, never the detail.
pub fn readyz(serve: &ServeProcess) -> (u16, String) {
    // The two requests are not one instant: the state may move between
    // them (a round that stops or resumes), so ask again, a bounded number
    // of times, until both saw the same state.
    let (mut anonymous, (mut status, mut body));
    let mut tries = 0;
    loop {
        anonymous = serve.get("/readyz");
        (status, body) = serve.admin(Method::Get, "/readyz", serde_json::Value::Null);
        tries += 1;
        if anonymous.status == status || tries >= 20 {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(25));
    }
    assert_eq!(anonymous.status, status, "same status for anyone");
    assert!(
        anonymous.text().find("detail").is_none(),
        "the detail is for the admin token only: {}",
        anonymous.text()
    );
    (status, body.to_string())
}

/// One sample of `/metrics` (0 when absent).
pub fn metric(serve: &ServeProcess, sample: &str) -> f64 {
    serve
        .get("/metrics")
        .text()
        .lines()
        .find_map(|l| l.strip_prefix(sample)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0.0)
}

/// Waits until `/readyz` answers `status` with a body that `check` accepts;
/// returns the body.
pub fn wait_readyz(serve: &ServeProcess, status: u16, check: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + WAIT;
    loop {
        let (s, body) = readyz(serve);
        if s == status && check(&body) {
            return body;
        }
        assert!(
            Instant::now() < deadline,
            "/readyz never answered {status} as expected (last: {s} {body}); log:\n{}",
            serve.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The first and last stamps (24 hex digits) a log object's name announces.
pub fn stamps(rel: &str) -> (String, String) {
    let stem = rel
        .strip_prefix("logs/")
        .unwrap()
        .strip_suffix(".bin")
        .unwrap();
    let mut parts = stem.rsplit('_');
    let last = parts.next().unwrap().to_string();
    let first = parts.next().unwrap().to_string();
    (first, last)
}

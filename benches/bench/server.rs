//! `kvreplica serve` (release build) as a child process for the benchmarks,
//! and the few KV Connect and admin API calls they make besides the load.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

/// The KV Connect access token of the benchmarked server.
pub const ACCESS_TOKEN: &str = "bench-access-token-0001";
/// Its admin API token (distinct from the access token).
pub const ADMIN_TOKEN: &str = "bench-admin-token-0001";
/// Bound on one admin or metadata request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// A running `kvreplica serve`, killed when dropped.
pub struct Server {
    child: Child,
    /// Everything the process wrote to stderr, appended by a reader thread.
    log: Arc<Mutex<String>>,
    reader: Option<std::thread::JoinHandle<()>>,
    /// `http://host:port` of the KV Connect listener.
    pub kv_url: String,
    /// `http://host:port` of the admin listener.
    pub admin_url: String,
}

/// The value after `marker` up to the next whitespace.
fn field_after(text: &str, marker: &str) -> Option<String> {
    let at = text.find(marker)? + marker.len();
    let rest = &text[at..];
    let end = rest.find(char::is_whitespace).unwrap_or(rest.len());
    (end > 0).then(|| rest[..end].to_string())
}

impl Server {
    /// Starts `bin serve` on free ports of 127.0.0.1 over `source` and
    /// `db`, and waits (at most `timeout`) until both listeners have
    /// announced their address. Does not wait for readiness.
    pub fn start(bin: &Path, source: &str, db: &Path, timeout: Duration) -> Server {
        let mut cmd = Command::new(bin);
        cmd.args(["serve", "--source", source, "--db"])
            .arg(db)
            .args(["--poll-interval", "100ms"]);
        Server::start_kvreplica(cmd, timeout)
    }

    /// Starts a prepared `kvreplica serve …` command (listeners, tokens and
    /// a clean environment are added here) and waits, at most `timeout`,
    /// until both listeners have announced their address.
    pub fn start_kvreplica(mut cmd: Command, timeout: Duration) -> Server {
        cmd.args(["--addr", "127.0.0.1:0", "--admin-addr", "127.0.0.1:0"])
            .args(["--access-token", ACCESS_TOKEN, "--admin-token", ADMIN_TOKEN])
            .env_remove("RUST_LOG")
            .env_remove("DENO_KV_ACCESS_TOKEN")
            .env_remove("KVREPLICA_ACCESS_TOKEN")
            .env_remove("KVREPLICA_ADMIN_TOKEN");
        Server::spawn(cmd, "kvreplica serve", timeout, |log| {
            let kv = field_after(log, "KV Connect listening addr=")?;
            let admin = field_after(log, "admin API listening addr=")?;
            Some((format!("http://{kv}"), format!("http://{admin}")))
        })
    }

    /// Starts `denokv --sqlite-path db serve --addr 127.0.0.1:0
    /// --access-token … <extra>` (the reference server, `bin` from
    /// `DENOKV_BIN`) and waits, at most `timeout`, until it says where it
    /// listens. It has no admin listener (`admin_url` is empty). With
    /// `--sync-from-s3` it listens only once its initial sync is done.
    pub fn start_denokv(
        bin: &Path,
        db: &Path,
        extra: &[String],
        env: &[(&str, String)],
        timeout: Duration,
    ) -> Server {
        let mut cmd = Command::new(bin);
        cmd.arg("--sqlite-path")
            .arg(db)
            .args([
                "serve",
                "--addr",
                "127.0.0.1:0",
                "--access-token",
                ACCESS_TOKEN,
            ])
            .args(extra)
            .env("RUST_LOG", "info")
            .env_remove("DENO_KV_ACCESS_TOKEN");
        for (k, v) in env {
            cmd.env(k, v);
        }
        Server::spawn(cmd, "denokv serve", timeout, |log| {
            let kv = field_after(log, "Listening on ")?;
            Some((kv, String::new()))
        })
    }

    /// Spawns `cmd` with stderr drained by a thread and waits, at most
    /// `timeout`, until `listening` finds the URLs in what it wrote.
    fn spawn(
        mut cmd: Command,
        what: &str,
        timeout: Duration,
        listening: impl Fn(&str) -> Option<(String, String)>,
    ) -> Server {
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {what}: {e}"));
        let log = Arc::new(Mutex::new(String::new()));
        let stderr = child.stderr.take().unwrap();
        let into = log.clone();
        // Drains stderr to its end so the server never blocks on the pipe.
        let reader = std::thread::spawn(move || {
            let mut r = BufReader::new(stderr);
            let mut line = Vec::new();
            loop {
                line.clear();
                match r.read_until(b'\n', &mut line) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => into
                        .lock()
                        .unwrap()
                        .push_str(&String::from_utf8_lossy(&line)),
                }
            }
        });
        let deadline = Instant::now() + timeout;
        let (kv_url, admin_url) = loop {
            if let Some(urls) = listening(&log.lock().unwrap()) {
                break urls;
            }
            if let Some(status) = child.try_wait().unwrap() {
                panic!(
                    "{what} exited ({status}) before listening:\n{}",
                    log.lock().unwrap()
                );
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!(
                    "{what} did not announce its listeners within {timeout:?}:\n{}",
                    log.lock().unwrap()
                );
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        Server {
            child,
            log,
            reader: Some(reader),
            kv_url,
            admin_url,
        }
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Everything the server wrote to stderr so far.
    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// The server's WARN and ERROR lines so far.
    pub fn problems(&self) -> Vec<String> {
        self.log()
            .lines()
            .filter(|l| l.contains(" WARN ") || l.contains(" ERROR "))
            .map(str::to_string)
            .collect()
    }

    /// Panics (with the log) if the process has exited.
    pub fn assert_running(&mut self) {
        if let Some(status) = self.child.try_wait().unwrap() {
            panic!("kvreplica serve exited ({status}):\n{}", self.log());
        }
    }

    /// Polls `GET /readyz` until it answers 200, for at most `timeout`.
    pub fn wait_ready(&mut self, rt: &tokio::runtime::Runtime, timeout: Duration) -> Duration {
        let started = Instant::now();
        let url = format!("{}/readyz", self.admin_url);
        let client = reqwest::Client::new();
        let mut last = String::new();
        while started.elapsed() < timeout {
            self.assert_running();
            let r = rt.block_on(async {
                let r = client
                    .get(&url)
                    .timeout(Duration::from_secs(5))
                    .send()
                    .await?;
                let status = r.status().as_u16();
                Ok::<_, reqwest::Error>((status, r.text().await?))
            });
            match r {
                Ok((200, _)) => return started.elapsed(),
                Ok((s, body)) => last = format!("{s} {body}"),
                Err(e) => last = e.to_string(),
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!(
            "/readyz not 200 within {timeout:?} (last: {last}); log:\n{}",
            self.log()
        );
    }

    /// Stops the server with SIGTERM (SIGKILL after 15 s) and returns how
    /// it exited.
    pub fn stop(mut self) -> ExitStatus {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(15);
        let status = loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                break s;
            }
            if Instant::now() > deadline {
                eprintln!("the server ignored SIGTERM for 15 s; killing it");
                let _ = self.child.kill();
                break self.child.wait().unwrap();
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
        status
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// One answer of the admin API or the metadata exchange.
/// Bound on a replica getting ready and reaching the newest point.
pub const READY_TIMEOUT: Duration = Duration::from_secs(900);

/// Starts `kvreplica serve` on `source`, waits until it is ready and its
/// visible state is at `latest`, reports how long that took, and returns
/// the server, a client, the database id clients must send and the time
/// from start to the newest point.
pub fn start_synced(
    rt: &tokio::runtime::Runtime,
    bin: &Path,
    source: &str,
    db: &Path,
    latest: &str,
) -> (Server, reqwest::Client, String, Duration) {
    let mut srv = Server::start(bin, source, db, Duration::from_secs(60));
    let ready_after = srv.wait_ready(rt, READY_TIMEOUT);
    let http = reqwest::Client::new();
    let synced_after = ready_after
        + rt.block_on(wait_visible(&http, &srv.admin_url, latest, READY_TIMEOUT))
            .unwrap();
    eprintln!(
        "server ready after {ready_after:.1?}, at the newest point {latest} after {synced_after:.1?}; replica {:.1} MB",
        std::fs::metadata(db).map_or(0, |m| m.len()) as f64 / 1e6
    );
    let database_id = rt.block_on(database_id(&http, &srv.kv_url));
    (srv, http, database_id, synced_after)
}

pub struct JsonAnswer {
    pub status: u16,
    pub json: Value,
    pub text: String,
}

/// A JSON request: GET when `body` is `None`, else POST with that body.
pub async fn json_request(
    client: &reqwest::Client,
    url: &str,
    token: &str,
    body: Option<Value>,
) -> JsonAnswer {
    let req = match body {
        None => client.get(url),
        Some(b) => client
            .post(url)
            .header("content-type", "application/json")
            .body(b.to_string()),
    };
    let resp = req
        .header("authorization", format!("Bearer {token}"))
        .timeout(REQUEST_TIMEOUT)
        .send()
        .await
        .unwrap_or_else(|e| panic!("{url}: {e}"));
    let status = resp.status().as_u16();
    let text = resp
        .text()
        .await
        .unwrap_or_else(|e| panic!("{url}: reading the body: {e}"));
    JsonAnswer {
        status,
        json: serde_json::from_str(&text).unwrap_or(Value::Null),
        text,
    }
}

/// The KV Connect metadata exchange; returns the database id.
pub async fn database_id(client: &reqwest::Client, kv_url: &str) -> String {
    let a = json_request(
        client,
        &format!("{kv_url}/"),
        ACCESS_TOKEN,
        Some(serde_json::json!({"supportedVersions": [2, 3]})),
    )
    .await;
    assert_eq!(a.status, 200, "metadata exchange: {}", a.text);
    assert_eq!(a.json["version"], 3, "metadata exchange: {}", a.text);
    a.json["databaseId"]
        .as_str()
        .unwrap_or_else(|| panic!("no databaseId in {}", a.text))
        .to_string()
}

/// `GET /pitr/current`: the visible versionstamp (20 hex digits).
pub async fn current(client: &reqwest::Client, admin_url: &str) -> String {
    let a = json_request(
        client,
        &format!("{admin_url}/pitr/current"),
        ADMIN_TOKEN,
        None,
    )
    .await;
    assert_eq!(a.status, 200, "/pitr/current: {}", a.text);
    a.json["versionstamp"]
        .as_str()
        .unwrap_or_else(|| panic!("no versionstamp in {}", a.text))
        .to_string()
}

/// Polls `/pitr/current` until the visible state is at `versionstamp`, for
/// at most `timeout`; returns how long that took.
pub async fn wait_visible(
    client: &reqwest::Client,
    admin_url: &str,
    versionstamp: &str,
    timeout: Duration,
) -> Result<Duration, String> {
    let started = Instant::now();
    loop {
        let at = current(client, admin_url).await;
        if at.as_str() >= versionstamp {
            return Ok(started.elapsed());
        }
        if started.elapsed() > timeout {
            return Err(format!(
                "the replica is at {at}, not {versionstamp}, after {timeout:?}"
            ));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Reads single keys through KV Connect `snapshot_read` (ten ranges per
/// request); `None` for an absent key.
pub async fn read_keys(
    client: &reqwest::Client,
    kv_url: &str,
    database_id: &str,
    keys: &[Vec<u8>],
) -> Vec<Option<denokv_proto::datapath::KvEntry>> {
    let mut out = Vec::new();
    for chunk in keys.chunks(10) {
        out.extend(
            try_read_keys(client, kv_url, database_id, chunk)
                .await
                .unwrap_or_else(|e| panic!("snapshot_read: {e}")),
        );
    }
    out
}

/// Reads single keys in one `snapshot_read`; an error (not listening yet,
/// still loading, a bad answer) as a message, for polling a key until it
/// shows up.
pub async fn try_read_keys(
    client: &reqwest::Client,
    kv_url: &str,
    database_id: &str,
    keys: &[Vec<u8>],
) -> Result<Vec<Option<denokv_proto::datapath::KvEntry>>, String> {
    use denokv_proto::datapath::{ReadRange, SnapshotRead, SnapshotReadOutput};
    use prost::Message;
    let body = SnapshotRead {
        ranges: keys
            .iter()
            .map(|k| {
                let mut end = k.clone();
                end.push(0);
                ReadRange {
                    start: k.clone(),
                    end,
                    limit: 1,
                    reverse: false,
                }
            })
            .collect(),
    }
    .encode_to_vec();
    let resp = client
        .post(format!("{kv_url}/v2/snapshot_read"))
        .header("authorization", format!("Bearer {ACCESS_TOKEN}"))
        .header("x-denokv-version", "3")
        .header("x-denokv-database-id", database_id)
        .header("content-type", "application/x-protobuf")
        .body(body)
        .timeout(REQUEST_TIMEOUT)
        .send()
        .await
        .map_err(|e| e.to_string())?;
    let status = resp.status().as_u16();
    let bytes = resp.bytes().await.map_err(|e| e.to_string())?;
    if status != 200 {
        return Err(format!("{status}: {}", String::from_utf8_lossy(&bytes)));
    }
    let answer = SnapshotReadOutput::decode(bytes).map_err(|e| e.to_string())?;
    if answer.ranges.len() != keys.len() {
        return Err(format!(
            "{} ranges for {} keys",
            answer.ranges.len(),
            keys.len()
        ));
    }
    Ok(answer
        .ranges
        .into_iter()
        .map(|r| r.values.into_iter().next())
        .collect())
}

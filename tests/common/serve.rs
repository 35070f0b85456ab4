//! `kvreplica serve` as a child process, and the real KV Connect clients
//! (the Deno CLI and `@deno/kv` on Node) run as scripts against it.
//!
//! The clients come from `scripts/install-test-tools.sh`, which exports
//! `KVREPLICA_TEST_DENO` and `KVREPLICA_TEST_NODE_MODULES`. A missing
//! variable fails the test: CI always sets them, so a silent skip would
//! only hide that the clients were never run.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

/// The KV Connect token every test server accepts and clients present.
pub const ACCESS_TOKEN: &str = "kv-connect-token-for-client-tests";
/// The admin API token of every test server.
pub const ADMIN_TOKEN: &str = "admin-token-for-client-tests";
/// Bound on start-up, readiness and catching up: generous, since a debug
/// build on a busy two-core machine loads a sample in a second or two.
pub const START_TIMEOUT: Duration = Duration::from_secs(60);
/// Bound on one plain HTTP request to a test server.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Lines of a child's output, appended by a reader thread; the condvar
/// wakes whoever waits for a particular line.
#[derive(Default)]
struct Captured {
    text: Mutex<String>,
    changed: Condvar,
}

/// Reads `from` to its end on a thread of its own, so the child never
/// blocks on a full pipe however much it writes.
fn drain(from: impl Read + Send + 'static, into: Arc<Captured>) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut r = BufReader::new(from);
        let mut line = Vec::new();
        loop {
            line.clear();
            match r.read_until(b'\n', &mut line) {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    into.text
                        .lock()
                        .unwrap()
                        .push_str(&String::from_utf8_lossy(&line));
                    into.changed.notify_all();
                }
            }
        }
        into.changed.notify_all();
    })
}

/// The value after `marker` up to the next whitespace, in the first line
/// that has it.
fn field_after(text: &str, marker: &str) -> Option<String> {
    let at = text.find(marker)? + marker.len();
    let rest = &text[at..];
    let end = rest.find(char::is_whitespace).unwrap_or(rest.len());
    (end > 0).then(|| rest[..end].to_string())
}

/// A running `kvreplica serve`; killed when dropped.
pub struct ServeProcess {
    child: Child,
    log: Arc<Captured>,
    kv_addr: String,
    admin_addr: String,
    /// The CA the clients trust, for a server with TLS on both listeners.
    ca: Option<PathBuf>,
}

impl ServeProcess {
    /// Starts `kvreplica serve` on free ports of 127.0.0.1 with the test
    /// tokens and `args` (at least `--source` and `--db`), and waits until
    /// both listeners have announced their address. Does not wait for the
    /// replica to be ready: see [`ServeProcess::wait_ready`].
    pub fn start(args: &[&str]) -> ServeProcess {
        Self::start_with_env(args, &[])
    }

    /// [`ServeProcess::start`] with extra environment variables (e.g.
    /// `NOTIFY_SOCKET`, `RUST_LOG`).
    pub fn start_with_env(args: &[&str], env: &[(&str, &str)]) -> ServeProcess {
        Self::start_adjusted(args, env, |_| {})
    }

    /// [`ServeProcess::start_with_env`] with the command adjusted by
    /// `adjust` before it starts (e.g. a `pre_exec` that sets a resource
    /// limit).
    pub fn start_adjusted(
        args: &[&str],
        env: &[(&str, &str)],
        adjust: impl FnOnce(&mut Command),
    ) -> ServeProcess {
        let mut all = vec![
            "--addr",
            "127.0.0.1:0",
            "--admin-addr",
            "127.0.0.1:0",
            "--access-token",
            ACCESS_TOKEN,
            "--admin-token",
            ADMIN_TOKEN,
        ];
        all.extend_from_slice(args);
        Self::start_bare_adjusted(&all, env, adjust)
    }

    /// `kvreplica serve <args>` with nothing added: for a server configured
    /// by a file, whose keys the test flags would otherwise override. The
    /// addresses must still be given (port 0) somewhere.
    pub fn start_bare(args: &[&str], env: &[(&str, &str)]) -> ServeProcess {
        Self::start_bare_adjusted(args, env, |_| {})
    }

    /// [`ServeProcess::start_bare`] with the command adjusted by `adjust`
    /// before it starts.
    pub fn start_bare_adjusted(
        args: &[&str],
        env: &[(&str, &str)],
        adjust: impl FnOnce(&mut Command),
    ) -> ServeProcess {
        let mut cmd = Command::new(super::kvreplica_bin());
        adjust(&mut cmd);
        let mut child = cmd
            .arg("serve")
            .args(args)
            .env_remove("RUST_LOG")
            .env_remove("DENO_KV_ACCESS_TOKEN")
            .env_remove("KVREPLICA_ADMIN_TOKEN")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting kvreplica serve");
        let log = Arc::new(Captured::default());
        drain(child.stderr.take().unwrap(), log.clone());
        let deadline = Instant::now() + START_TIMEOUT;
        let mut text = log.text.lock().unwrap();
        let (kv_addr, admin_addr) = loop {
            let kv = field_after(&text, "KV Connect listening addr=");
            let admin = field_after(&text, "admin API listening addr=");
            if let (Some(kv), Some(admin)) = (kv, admin) {
                break (kv, admin);
            }
            if let Some(status) = child.try_wait().unwrap() {
                panic!("kvreplica serve exited ({status}) before listening:\n{text}");
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("kvreplica serve did not announce both listeners within {START_TIMEOUT:?}:\n{text}");
            }
            text = log
                .changed
                .wait_timeout(text, Duration::from_millis(50))
                .unwrap()
                .0;
        };
        drop(text);
        ServeProcess {
            child,
            log,
            kv_addr,
            admin_addr,
            ca: None,
        }
    }

    /// The process id, for signals.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// For a server started with TLS on both listeners: the URLs are
    /// `https`, and this process's requests trust the PEM CA `ca`.
    pub fn trusting(mut self, ca: &Path) -> ServeProcess {
        self.ca = Some(ca.to_path_buf());
        self
    }

    fn scheme(&self) -> &'static str {
        if self.ca.is_some() {
            "https"
        } else {
            "http"
        }
    }

    /// The KV Connect base URL clients open.
    pub fn kv_url(&self) -> String {
        format!("{}://{}", self.scheme(), self.kv_addr)
    }

    /// The admin API base URL.
    pub fn admin_url(&self) -> String {
        format!("{}://{}", self.scheme(), self.admin_addr)
    }

    /// Everything the process wrote to stderr so far.
    pub fn log(&self) -> String {
        self.log.text.lock().unwrap().clone()
    }

    /// Polls `GET /readyz` until it answers 200 (initial snapshot loaded
    /// and a poll of the source succeeded).
    pub fn wait_ready(&mut self) {
        let url = format!("{}/readyz", self.admin_url());
        let mut last = String::new();
        let deadline = Instant::now() + START_TIMEOUT;
        while Instant::now() < deadline {
            self.assert_running();
            match http_trusting(self.ca.as_deref(), Method::Get, &url, &[], Vec::new()) {
                Ok(r) if r.status == 200 => return,
                Ok(r) => last = format!("{} {}", r.status, r.text()),
                Err(e) => last = e,
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!(
            "/readyz not 200 within {START_TIMEOUT:?} (last: {last}); log:\n{}",
            self.log()
        );
    }

    /// Polls the admin API until the visible state is at `versionstamp`,
    /// so a test compares with the expected state only once the replica
    /// has caught up to it, not while a poll is still applying commits.
    pub fn wait_at(&mut self, versionstamp: &str) {
        let url = format!("{}/pitr/current", self.admin_url());
        let auth = format!("Bearer {ADMIN_TOKEN}");
        let mut last = String::new();
        let deadline = Instant::now() + START_TIMEOUT;
        while Instant::now() < deadline {
            self.assert_running();
            let headers = [("authorization", auth.as_str())];
            match http_trusting(self.ca.as_deref(), Method::Get, &url, &headers, Vec::new()) {
                Ok(r) if r.status == 200 => {
                    let v: Value = serde_json::from_slice(&r.body).unwrap_or_default();
                    if v["versionstamp"] == versionstamp {
                        return;
                    }
                    last = r.text();
                }
                Ok(r) => last = format!("{} {}", r.status, r.text()),
                Err(e) => last = e,
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!(
            "replica not at {versionstamp} within {START_TIMEOUT:?} (last /pitr/current: {last}); log:\n{}",
            self.log()
        );
    }

    /// An unauthenticated `GET` of the admin listener's `path` (`/readyz`,
    /// `/metrics`).
    pub fn get(&self, path: &str) -> HttpResponse {
        http(
            Method::Get,
            &format!("{}{path}", self.admin_url()),
            &[],
            Vec::new(),
        )
        .unwrap()
    }

    /// One admin API call with the test admin token: the status and the
    /// JSON answer (`Null` when there is none). A `Null` body sends none.
    pub fn admin(&self, method: Method, path: &str, body: Value) -> (u16, Value) {
        let auth = format!("Bearer {ADMIN_TOKEN}");
        let body = if body.is_null() {
            Vec::new()
        } else {
            body.to_string().into_bytes()
        };
        let r = http_trusting(
            self.ca.as_deref(),
            method,
            &format!("{}{path}", self.admin_url()),
            &[
                ("authorization", &auth),
                ("content-type", "application/json"),
            ],
            body,
        )
        .unwrap();
        (
            r.status,
            serde_json::from_slice(&r.body).unwrap_or(Value::Null),
        )
    }

    /// `GET /metrics` as samples, `name{labels}` → value.
    pub fn metrics(&self) -> std::collections::BTreeMap<String, f64> {
        let r = http(
            Method::Get,
            &format!("{}/metrics", self.admin_url()),
            &[],
            Vec::new(),
        )
        .expect("GET /metrics");
        assert_eq!(r.status, 200);
        r.text()
            .lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
            .filter_map(|l| l.rsplit_once(' '))
            .filter_map(|(k, v)| Some((k.to_string(), v.parse().ok()?)))
            .collect()
    }

    fn assert_running(&mut self) {
        if let Some(status) = self.child.try_wait().unwrap() {
            panic!("kvreplica serve exited ({status}):\n{}", self.log());
        }
    }

    /// Stops the process with SIGTERM and returns its exit status.
    pub fn terminate(mut self) -> ExitStatus {
        super::terminate(&mut self.child)
    }
}

impl Drop for ServeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[derive(Clone, Copy, Debug)]
pub enum Method {
    Get,
    Post,
}

/// One HTTP answer, read to the end.
#[derive(Debug)]
pub struct HttpResponse {
    pub status: u16,
    pub content_type: String,
    pub body: Vec<u8>,
}

impl HttpResponse {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// A blocking HTTP/1.1 request (the tests themselves are plain threads),
/// bounded by [`REQUEST_TIMEOUT`]. Transport errors come back as text.
pub fn http(
    method: Method,
    url: &str,
    headers: &[(&str, &str)],
    body: Vec<u8>,
) -> Result<HttpResponse, String> {
    http_trusting(None, method, url, headers, body)
}

/// [`http`] trusting the PEM CA `ca` (only it) for `https` URLs.
pub fn http_trusting(
    ca: Option<&Path>,
    method: Method,
    url: &str,
    headers: &[(&str, &str)],
    body: Vec<u8>,
) -> Result<HttpResponse, String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut client = reqwest::Client::builder();
        if let Some(ca) = ca {
            let pem = std::fs::read(ca).map_err(|e| format!("{}: {e}", ca.display()))?;
            let cert = reqwest::Certificate::from_pem(&pem).map_err(|e| e.to_string())?;
            client = client
                .tls_built_in_root_certs(false)
                .add_root_certificate(cert);
        }
        let client = client.build().map_err(|e| e.to_string())?;
        let mut req = match method {
            Method::Get => client.get(url),
            Method::Post => client.post(url).body(body),
        }
        .timeout(REQUEST_TIMEOUT);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let resp = req.send().await.map_err(|e| format!("{url}: {e}"))?;
        let status = resp.status().as_u16();
        let content_type = resp
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        let body = resp
            .bytes()
            .await
            .map_err(|e| format!("{url}: reading the body: {e}"))?
            .to_vec();
        Ok(HttpResponse {
            status,
            content_type,
            body,
        })
    })
}

/// The KV Connect metadata exchange as the clients do it.
pub fn metadata(kv_url: &str) -> HttpResponse {
    let auth = format!("Bearer {ACCESS_TOKEN}");
    http(
        Method::Post,
        &format!("{kv_url}/"),
        &[
            ("authorization", &auth),
            ("content-type", "application/json"),
        ],
        br#"{"supportedVersions":[2,3]}"#.to_vec(),
    )
    .unwrap()
}

/// `tests/clients/`: the client scripts.
pub fn clients_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/clients")
}

fn tool_env(var: &str) -> String {
    match std::env::var(var) {
        Ok(v) if !v.is_empty() => {
            assert!(
                Path::new(&v).exists(),
                "{var}={v} does not exist: run `source scripts/install-test-tools.sh` again"
            );
            v
        }
        _ => panic!(
            "{var} is not set: the KV Connect client tests need the real clients; \
             run `source scripts/install-test-tools.sh` first (scripts/test.sh does)"
        ),
    }
}

/// The Deno CLI installed by scripts/install-test-tools.sh.
pub fn deno_bin() -> String {
    tool_env("KVREPLICA_TEST_DENO")
}

/// The node_modules folder holding `@deno/kv`.
pub fn node_modules() -> String {
    tool_env("KVREPLICA_TEST_NODE_MODULES")
}

/// What a client script printed, and how it ended.
#[derive(Debug)]
pub struct ScriptOutput {
    pub label: String,
    /// None when the script was killed at its deadline.
    pub status: Option<ExitStatus>,
    pub stdout: String,
    pub stderr: String,
    pub elapsed: Duration,
}

impl ScriptOutput {
    /// Everything about the run, for a failure message.
    pub fn describe(&self) -> String {
        format!(
            "{} ({}, {:?}):\n--- stdout\n{}\n--- stderr\n{}",
            self.label,
            match self.status {
                Some(s) => s.to_string(),
                None => "killed at its deadline".into(),
            },
            self.elapsed,
            self.stdout,
            self.stderr
        )
    }

    /// The last stdout line that is a JSON object: the script's summary.
    pub fn summary(&self) -> Value {
        self.stdout
            .lines()
            .rev()
            .find_map(|l| {
                l.trim()
                    .starts_with('{')
                    .then(|| serde_json::from_str(l.trim()).ok())
                    .flatten()
            })
            .unwrap_or_else(|| panic!("no JSON summary from {}", self.describe()))
    }

    /// Fails unless the script exited 0, then returns its summary.
    pub fn assert_success(&self) -> Value {
        assert!(
            self.status.is_some_and(|s| s.success()),
            "{}",
            self.describe()
        );
        self.summary()
    }
}

/// A client script running in the background.
pub struct Script {
    label: String,
    child: Child,
    stdout: Arc<Captured>,
    stderr: Arc<Captured>,
    readers: Vec<std::thread::JoinHandle<()>>,
    started: Instant,
    /// Deno's cache, removed with the script.
    _home: tempfile::TempDir,
}

impl Script {
    fn spawn(label: String, mut cmd: Command, home: tempfile::TempDir) -> Script {
        let mut child = cmd
            .env("NO_COLOR", "1")
            .env("DENO_KV_ACCESS_TOKEN", ACCESS_TOKEN)
            .env("DENO_DIR", home.path().join("deno"))
            .env("DENO_NO_UPDATE_CHECK", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {label}: {e}"));
        let stdout = Arc::new(Captured::default());
        let stderr = Arc::new(Captured::default());
        let readers = vec![
            drain(child.stdout.take().unwrap(), stdout.clone()),
            drain(child.stderr.take().unwrap(), stderr.clone()),
        ];
        Script {
            label,
            child,
            stdout,
            stderr,
            readers,
            started: Instant::now(),
            _home: home,
        }
    }

    /// Starts any command as a script: output captured, killed when
    /// dropped; e.g. a program that prints what its user should run next.
    pub fn start(label: &str, cmd: Command) -> Script {
        Script::spawn(label.into(), cmd, tempfile::tempdir().unwrap())
    }

    /// The process id, for signals.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits until the script's stdout holds `marker`, and returns all of
    /// it; fails if the script ends first or `timeout` passes.
    pub fn wait_for_stdout(&mut self, marker: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let text = self.stdout.text.lock().unwrap().clone();
            if text.contains(marker) {
                return text;
            }
            let ended = self.child.try_wait().unwrap();
            if ended.is_some() || Instant::now() > deadline {
                panic!(
                    "{} printed no {marker:?} ({}):\n--- stdout\n{text}\n--- stderr\n{}",
                    self.label,
                    ended.map_or("still running at its deadline".into(), |s| s.to_string()),
                    self.stderr_so_far()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Whether the script is still running.
    pub fn running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    /// What the script wrote to stderr so far.
    pub fn stderr_so_far(&self) -> String {
        self.stderr.text.lock().unwrap().clone()
    }

    /// Waits for the script to end, killing it after `timeout`.
    pub fn wait(mut self, timeout: Duration) -> ScriptOutput {
        let deadline = self.started + timeout;
        let status = loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                break Some(s);
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                break None;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        for r in self.readers.drain(..) {
            let _ = r.join();
        }
        ScriptOutput {
            label: self.label.clone(),
            status,
            stdout: self.stdout.text.lock().unwrap().clone(),
            stderr: self.stderr.text.lock().unwrap().clone(),
            elapsed: self.started.elapsed(),
        }
    }
}

impl Drop for Script {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `deno run --unstable-kv -A tests/clients/<script> <args>` in
/// `cwd`, with the test access token and a cache dir of its own.
pub fn spawn_deno(script: &str, args: &[&str], cwd: &Path) -> Script {
    spawn_deno_env(script, args, cwd, &[])
}

/// [`spawn_deno`] with extra environment variables (e.g. `DENO_CERT`).
pub fn spawn_deno_env(script: &str, args: &[&str], cwd: &Path, env: &[(&str, &str)]) -> Script {
    let home = tempfile::tempdir().unwrap();
    let mut cmd = Command::new(deno_bin());
    cmd.args(["run", "--unstable-kv", "-A"])
        .arg(clients_dir().join(script))
        .args(args)
        .envs(env.iter().copied())
        .current_dir(cwd);
    Script::spawn(format!("deno {script} {args:?}"), cmd, home)
}

/// Runs a Deno client script to its end, killing it after `timeout`.
pub fn run_deno(script: &str, args: &[&str], cwd: &Path, timeout: Duration) -> ScriptOutput {
    spawn_deno(script, args, cwd).wait(timeout)
}

/// [`run_deno`] with extra environment variables.
pub fn run_deno_env(
    script: &str,
    args: &[&str],
    cwd: &Path,
    env: &[(&str, &str)],
    timeout: Duration,
) -> ScriptOutput {
    spawn_deno_env(script, args, cwd, env).wait(timeout)
}

/// Starts `node tests/clients/<script> <args>` with `@deno/kv` resolvable
/// (the scripts are CommonJS, which honours NODE_PATH) and the test access
/// token.
pub fn spawn_node(script: &str, args: &[&str]) -> Script {
    spawn_node_env(script, args, &[])
}

/// [`spawn_node`] with extra environment variables (e.g.
/// `NODE_EXTRA_CA_CERTS`).
pub fn spawn_node_env(script: &str, args: &[&str], env: &[(&str, &str)]) -> Script {
    let home = tempfile::tempdir().unwrap();
    let mut cmd = Command::new("node");
    cmd.arg(clients_dir().join(script))
        .args(args)
        .env("NODE_PATH", node_modules())
        .envs(env.iter().copied())
        .current_dir(home.path());
    Script::spawn(format!("node {script} {args:?}"), cmd, home)
}

/// Runs a Node client script to its end, killing it after `timeout`.
pub fn run_node(script: &str, args: &[&str], timeout: Duration) -> ScriptOutput {
    spawn_node(script, args).wait(timeout)
}

/// [`run_node`] with extra environment variables.
pub fn run_node_env(
    script: &str,
    args: &[&str],
    env: &[(&str, &str)],
    timeout: Duration,
) -> ScriptOutput {
    spawn_node_env(script, args, env).wait(timeout)
}

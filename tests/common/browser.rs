//! A real browser for the operator console's test: Debian's `chromedriver`
//! on a free port of 127.0.0.1 driving headless Chromium over WebDriver
//! (the `fantoccini` client), with a numbered screenshot of each step and
//! bounded waits for what the page shows.
//!
//! Both programs come from `scripts/install-test-tools.sh`, which exports
//! `KVREPLICA_TEST_CHROMIUM` and `KVREPLICA_TEST_CHROMEDRIVER`. A missing
//! one fails the test: CI always sets them, and a silent skip would only
//! hide that the page was never driven.
//!
//! The calls are blocking (each runs the WebDriver request on a runtime of
//! the browser's own), so a test mixes them freely with the blocking
//! helpers of [`super::serve`].

use std::io::{BufRead, BufReader, Read};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fantoccini::actions::{InputSource, KeyAction, KeyActions, MouseActions, PointerAction};
use fantoccini::elements::Element;
use fantoccini::key::Key;
use fantoccini::wd::WebDriverCompatibleCommand;
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{json, Value};

/// Bound on one wait for the page ([`Browser::wait_for`]) and its step.
pub const WAIT: Duration = Duration::from_secs(10);
const STEP: Duration = Duration::from_millis(50);
/// Bound on chromedriver starting and answering `GET /status`.
const DRIVER_START: Duration = Duration::from_secs(30);
/// The window the session opens with: a laptop screen.
pub const WINDOW: (u32, u32) = (1280, 900);

/// An absolute path to an executable from the test tools' variable `var`.
fn tool(var: &str, what: &str) -> String {
    let path = match std::env::var(var) {
        Ok(v) if !v.is_empty() => v,
        _ => panic!(
            "{var} is not set: the console test needs {what}; \
             run `source scripts/install-test-tools.sh` first (scripts/test.sh does)"
        ),
    };
    use std::os::unix::fs::PermissionsExt;
    let executable = Path::new(&path).is_absolute()
        && std::fs::metadata(&path)
            .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0);
    assert!(
        executable,
        "{var}={path} is not an absolute path to an executable: \
         run `source scripts/install-test-tools.sh` again"
    );
    path
}

/// Text a child writes, appended by a reader thread.
type Captured = Arc<Mutex<String>>;

fn drain(from: impl Read + Send + 'static) -> Captured {
    let text = Captured::default();
    let into = text.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(from).lines() {
            let Ok(line) = line else { break };
            let mut t = into.lock().unwrap();
            t.push_str(&line);
            t.push('\n');
        }
    });
    text
}

/// `chromedriver --port=<port>` in a process group of its own, so that
/// dropping it ends the Chromium it started too.
struct Driver {
    child: Child,
    port: u16,
    log: Captured,
}

impl Driver {
    /// Starts chromedriver on a port found free a moment before; another
    /// process may take that port first, so a driver that fails to bind
    /// (it exits) is started again on another one, three times at most.
    fn start(binary: &str) -> Driver {
        let mut failures = Vec::new();
        for _ in 0..3 {
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .expect("a free port on 127.0.0.1")
                .port();
            let mut child = Command::new(binary)
                .arg(format!("--port={port}"))
                .process_group(0)
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap_or_else(|e| panic!("starting {binary}: {e}"));
            let out = drain(child.stdout.take().unwrap());
            let err = drain(child.stderr.take().unwrap());
            let log = Arc::new(Mutex::new(String::new()));
            let mut driver = Driver { child, port, log };
            let all = |out: &Captured, err: &Captured| {
                format!("{}{}", out.lock().unwrap(), err.lock().unwrap())
            };
            let deadline = Instant::now() + DRIVER_START;
            loop {
                if let Some(status) = driver.child.try_wait().unwrap() {
                    failures.push(format!("port {port}: exited {status}: {}", all(&out, &err)));
                    break;
                }
                // Its own announcement tells it from another server that
                // holds the port; `/status` tells that it takes sessions.
                let announced = out.lock().unwrap().contains("started successfully");
                if announced && driver.ready() {
                    driver.log = out;
                    return driver;
                }
                if Instant::now() > deadline {
                    panic!(
                        "{binary} did not answer GET /status on port {port} within \
                         {DRIVER_START:?}:\n{}",
                        all(&out, &err)
                    );
                }
                std::thread::sleep(STEP);
            }
        }
        panic!("{binary} did not start:\n{}", failures.join("\n"));
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn ready(&self) -> bool {
        let r = super::serve::http(
            super::serve::Method::Get,
            &format!("{}/status", self.url()),
            &[],
            Vec::new(),
        );
        r.is_ok_and(|r| {
            r.status == 200
                && serde_json::from_slice::<Value>(&r.body)
                    .is_ok_and(|v| v["value"]["ready"] == true)
        })
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        // The whole group: chromedriver and the browser it started.
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", self.child.id())])
            .stderr(Stdio::null())
            .status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Chromedriver's log of the page's console (`console.*` calls, uncaught
/// exceptions, refused loads and Content-Security-Policy violations):
/// `POST /session/{id}/se/log {"type": "browser"}`, which returns the
/// entries since the previous call.
#[derive(Debug)]
struct BrowserLog;

impl WebDriverCompatibleCommand for BrowserLog {
    fn endpoint(
        &self,
        base: &url::Url,
        session: Option<&str>,
    ) -> Result<url::Url, url::ParseError> {
        base.join(&format!("session/{}/se/log", session.unwrap_or_default()))
    }

    fn method_and_body(&self, _: &url::Url) -> (reqwest::Method, Option<String>) {
        (
            reqwest::Method::POST,
            Some(json!({"type": "browser"}).to_string()),
        )
    }
}

/// One headless Chromium session; ends it and its driver when dropped.
pub struct Browser {
    rt: tokio::runtime::Runtime,
    client: Client,
    /// Declared after the client: the session ends before the driver.
    driver: Driver,
    shots: PathBuf,
    shot_no: u32,
    /// Every console entry read so far (see [`Browser::console`]).
    console: Vec<Value>,
}

impl Browser {
    /// Starts chromedriver and a headless Chromium session on it, with
    /// screenshots going to `$KVREPLICA_CONSOLE_SCREENSHOTS/<test>/` or
    /// `target/console-screenshots/<test>/` (emptied of older PNGs; its
    /// path is printed).
    pub fn start(test: &str) -> Browser {
        let chromium = tool("KVREPLICA_TEST_CHROMIUM", "Debian's chromium");
        let chromedriver = tool("KVREPLICA_TEST_CHROMEDRIVER", "Debian's chromium-driver");
        let shots = screenshot_dir(test);
        let driver = Driver::start(&chromedriver);
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let mut caps = serde_json::Map::new();
        caps.insert(
            "goog:chromeOptions".into(),
            json!({
                "binary": chromium,
                "args": [
                    "--headless=new",
                    "--no-sandbox",
                    "--disable-gpu",
                    format!("--window-size={},{}", WINDOW.0, WINDOW.1),
                ],
            }),
        );
        caps.insert("goog:loggingPrefs".into(), json!({"browser": "ALL"}));
        let client = rt
            .block_on(async {
                tokio::time::timeout(
                    DRIVER_START,
                    ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
                        .capabilities(caps)
                        .connect(&driver.url()),
                )
                .await
            })
            .unwrap_or_else(|_| panic!("no session within {DRIVER_START:?}"))
            .unwrap_or_else(|e| {
                panic!(
                    "opening a Chromium session ({chromium}): {e}\n{}",
                    driver.log.lock().unwrap()
                )
            });
        Browser {
            rt,
            client,
            driver,
            shots,
            shot_no: 0,
            console: Vec::new(),
        }
    }

    /// Where the screenshots go.
    pub fn screenshots(&self) -> &Path {
        &self.shots
    }

    fn run<T>(
        &self,
        what: &str,
        f: impl std::future::Future<Output = Result<T, fantoccini::error::CmdError>>,
    ) -> T {
        self.rt
            .block_on(async { tokio::time::timeout(WAIT * 3, f).await })
            .unwrap_or_else(|_| panic!("{what}: no answer from the browser within {:?}", WAIT * 3))
            .unwrap_or_else(|e| panic!("{what}: {e}"))
    }

    /// Opens `url` and waits for its load event.
    pub fn goto(&self, url: &str) {
        self.run(&format!("open {url}"), self.client.goto(url));
    }

    /// Runs `script` (a function body; `arguments[i]` are `args`) in the
    /// page and returns what it returns.
    pub fn js(&self, script: &str, args: Vec<Value>) -> Value {
        self.run(
            &format!("script {script}"),
            self.client.execute(script, args),
        )
    }

    /// The element `css` selects; fails the test when there is none.
    pub fn find(&self, css: &str) -> Element {
        self.run(&format!("find {css}"), self.client.find(Locator::Css(css)))
    }

    /// Every element `css` selects.
    pub fn find_all(&self, css: &str) -> Vec<Element> {
        self.run(
            &format!("find all {css}"),
            self.client.find_all(Locator::Css(css)),
        )
    }

    /// A WebDriver click on `css` (scrolled into view; refused when
    /// another element covers it, as a person's click would miss). Found
    /// again when the page redrew it between the lookup and the click
    /// (its refresh every 2 s may), within [`WAIT`].
    pub fn click(&self, css: &str) {
        let deadline = Instant::now() + WAIT;
        loop {
            let el = self.find(css);
            let clicked = self
                .rt
                .block_on(async { tokio::time::timeout(WAIT, el.click()).await });
            match clicked {
                Ok(Ok(())) => return,
                Ok(Err(e)) if e.is_stale_element_reference() && Instant::now() < deadline => {
                    std::thread::sleep(STEP)
                }
                Ok(Err(e)) => panic!("click {css}: {e}"),
                Err(_) => panic!("click {css}: no answer from the browser within {WAIT:?}"),
            }
        }
    }

    /// [`Browser::click`] on an element found before.
    pub fn click_element(&self, el: &Element, what: &str) {
        self.run(&format!("click {what}"), el.click());
    }

    /// Shift+click on an element: a real pointer click while Shift is
    /// held.
    pub fn shift_click_element(&self, el: &Element, what: &str) {
        let shift: char = Key::Shift.into();
        let keys = KeyActions::new("keyboard".into())
            .then(KeyAction::Down { value: shift })
            .then(KeyAction::Pause {
                duration: Duration::ZERO,
            })
            .then(KeyAction::Pause {
                duration: Duration::ZERO,
            })
            .then(KeyAction::Pause {
                duration: Duration::ZERO,
            })
            .then(KeyAction::Up { value: shift });
        let mouse = MouseActions::new("mouse".into())
            .then(PointerAction::Pause {
                duration: Duration::ZERO,
            })
            .then(PointerAction::MoveToElement {
                element: el.clone(),
                duration: None,
                x: 0.0,
                y: 0.0,
            })
            .then(PointerAction::Down {
                button: fantoccini::actions::MOUSE_BUTTON_LEFT,
            })
            .then(PointerAction::Up {
                button: fantoccini::actions::MOUSE_BUTTON_LEFT,
            });
        let actions = fantoccini::actions::Actions::from(keys).and(mouse);
        self.run(
            &format!("shift+click {what}"),
            self.client.perform_actions(actions),
        );
        self.run("release keys", self.client.release_actions());
    }

    /// Clears the input `css` and types `text` into it.
    pub fn fill(&self, css: &str, text: &str) {
        let el = self.find(css);
        self.run(&format!("clear {css}"), el.clear());
        self.run(&format!("type into {css}"), el.send_keys(text));
    }

    /// Chooses the option of value `value` in the `select` `css`.
    pub fn select(&self, css: &str, value: &str) {
        let el = self.find(css);
        self.run(
            &format!("select {value} in {css}"),
            el.select_by_value(value),
        );
    }

    /// Gives `css` the keyboard focus (as Tab would); fails the test when
    /// it cannot take it.
    pub fn focus(&self, css: &str) {
        let focused = self.js(
            "const e = document.querySelector(arguments[0]); \
             if (!e) return 'no element'; e.focus(); \
             return document.activeElement === e ? 'ok' : 'not focusable';",
            vec![json!(css)],
        );
        assert_eq!(focused, "ok", "focus {css}");
    }

    /// Presses and releases `key` on whatever has the focus.
    pub fn press(&self, key: Key) {
        let k: char = key.into();
        let keys = KeyActions::new("keyboard".into())
            .then(KeyAction::Down { value: k })
            .then(KeyAction::Up { value: k });
        self.run(&format!("press {key:?}"), self.client.perform_actions(keys));
    }

    /// `#id` (or `tag`/`tag#id`/`tag.class`) of the element with the focus.
    pub fn focused(&self) -> String {
        self.js(
            "const e = document.activeElement; if (!e) return ''; \
             return e.tagName.toLowerCase() + (e.id ? '#' + e.id : '') + \
               (e.classList.length ? '.' + [...e.classList].join('.') : '');",
            vec![],
        )
        .as_str()
        .unwrap_or_default()
        .to_string()
    }

    /// The `textContent` of `css`, untrimmed; `None` when nothing matches.
    pub fn raw_text(&self, css: &str) -> Option<String> {
        self.js(
            "const e = document.querySelector(arguments[0]); return e ? e.textContent : null;",
            vec![json!(css)],
        )
        .as_str()
        .map(str::to_string)
    }

    /// The `textContent` of `css` with surrounding white space trimmed.
    pub fn text(&self, css: &str) -> Option<String> {
        self.raw_text(css).map(|t| t.trim().to_string())
    }

    /// Whether `css` is rendered (in a box of its own, not in a `hidden`
    /// or `display: none` part, not `visibility: hidden`).
    pub fn visible(&self, css: &str) -> bool {
        self.js(
            "const e = document.querySelector(arguments[0]); \
             return !!e && e.getClientRects().length > 0 && \
               getComputedStyle(e).visibility !== 'hidden';",
            vec![json!(css)],
        ) == true
    }

    /// Waits (up to [`WAIT`], every 50 ms) until `probe` returns `Ok`;
    /// fails the test with `what` and the last `Err` (what was seen)
    /// otherwise.
    pub fn wait_for<T>(
        &self,
        what: &str,
        mut probe: impl FnMut(&Browser) -> Result<T, String>,
    ) -> T {
        let deadline = Instant::now() + WAIT;
        loop {
            let last = match probe(self) {
                Ok(v) => return v,
                Err(seen) => seen,
            };
            if Instant::now() > deadline {
                panic!(
                    "waited {WAIT:?} for {what}; last seen: {last}\nconsole: {:#?}",
                    self.console_so_far()
                );
            }
            std::thread::sleep(STEP);
        }
    }

    /// Waits until `css`'s trimmed text satisfies `ok` (described by
    /// `what`), and returns it.
    pub fn wait_text_until(&self, css: &str, what: &str, ok: impl Fn(&str) -> bool) -> String {
        self.wait_for(&format!("{css} {what}"), |b| match b.text(css) {
            Some(t) if ok(&t) => Ok(t),
            Some(t) => Err(format!("{t:?}")),
            None => Err("no such element".into()),
        })
    }

    /// Waits until `css`'s trimmed text is exactly `want`.
    pub fn wait_text(&self, css: &str, want: &str) {
        self.wait_text_until(css, &format!("to read {want:?}"), |t| t == want);
    }

    /// Waits until `css` is visible (`true`) or not (`false`).
    pub fn wait_visible(&self, css: &str, visible: bool) {
        self.wait_for(&format!("{css} visible = {visible}"), |b| {
            let now = b.visible(css);
            if now == visible {
                Ok(())
            } else {
                Err(format!("visible = {now}"))
            }
        });
    }

    /// Waits until `script`'s result satisfies `ok`, and returns it.
    pub fn wait_js(&self, script: &str, what: &str, ok: impl Fn(&Value) -> bool) -> Value {
        self.wait_for(what, |b| {
            let v = b.js(script, vec![]);
            if ok(&v) {
                Ok(v)
            } else {
                Err(v.to_string())
            }
        })
    }

    /// Sets the window's outer size.
    pub fn set_window(&self, width: u32, height: u32) {
        self.run(
            "set the window size",
            self.client.set_window_size(width, height),
        );
    }

    /// Writes a screenshot of the window as `NN-<step>.png` and returns
    /// its path.
    pub fn shot(&mut self, step: &str) -> PathBuf {
        self.shot_no += 1;
        let png = self.run(&format!("screenshot {step}"), self.client.screenshot());
        let path = self.shots.join(format!("{:02}-{step}.png", self.shot_no));
        std::fs::write(&path, png).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        path
    }

    /// The page's console entries since the session began (level, message),
    /// e.g. uncaught exceptions and Content-Security-Policy violations.
    pub fn console(&mut self) -> Vec<Value> {
        let new = self.run("read the browser log", self.client.issue_cmd(BrowserLog));
        if let Value::Array(entries) = new {
            self.console.extend(entries);
        }
        self.console.clone()
    }

    /// [`Browser::console`] for a failure message (reads without keeping).
    fn console_so_far(&self) -> Vec<String> {
        let new = self.rt.block_on(async {
            tokio::time::timeout(WAIT, self.client.issue_cmd(BrowserLog)).await
        });
        let mut all: Vec<Value> = self.console.clone();
        if let Ok(Ok(Value::Array(entries))) = new {
            all.extend(entries);
        }
        all.iter()
            .map(|e| {
                format!(
                    "{} {}",
                    e["level"].as_str().unwrap_or("?"),
                    e["message"].as_str().unwrap_or("?")
                )
            })
            .collect()
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // End the session so chromedriver closes Chromium; the driver's
        // drop then kills whatever is left of its process group.
        let client = self.client.clone();
        let _ = self
            .rt
            .block_on(async { tokio::time::timeout(Duration::from_secs(5), client.close()).await });
        let _ = &self.driver;
    }
}

/// `$KVREPLICA_CONSOLE_SCREENSHOTS/<test>/` or
/// `target/console-screenshots/<test>/`, created, without older PNGs.
fn screenshot_dir(test: &str) -> PathBuf {
    let base = match std::env::var_os("KVREPLICA_CONSOLE_SCREENSHOTS").filter(|v| !v.is_empty()) {
        Some(dir) => PathBuf::from(dir),
        // <target>/debug/kvreplica → <target>.
        None => Path::new(super::kvreplica_bin())
            .ancestors()
            .nth(2)
            .expect("the binary lies in <target>/<profile>/")
            .join("console-screenshots"),
    };
    let dir = base.join(test);
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    for entry in std::fs::read_dir(&dir).unwrap().flatten() {
        if entry.path().extension().is_some_and(|e| e == "png") {
            let _ = std::fs::remove_file(entry.path());
        }
    }
    println!("console screenshots: {}", dir.display());
    dir
}

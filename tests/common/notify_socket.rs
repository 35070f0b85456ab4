//! A fake systemd notify socket for tests: a Unix datagram socket in a
//! temporary directory whose messages a thread records with the time they
//! arrived, so a test can ask how long the watchdog went without a ping.
//!
//! Use from a test file with
//! `#[path = "common/notify_socket.rs"] mod notify_socket;` — this file
//! depends on no other test module.
#![allow(dead_code)]

use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The socket, listening until dropped.
pub struct NotifySocket {
    path: PathBuf,
    got: Arc<Mutex<Vec<(Instant, String)>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl NotifySocket {
    /// Binds `notify.sock` in `dir`.
    pub fn bind(dir: &Path) -> NotifySocket {
        let path = dir.join("notify.sock");
        let sock = UnixDatagram::bind(&path).unwrap();
        // Bounded waits, so that the thread sees `stop`.
        sock.set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        let got = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = std::thread::spawn({
            let (got, stop) = (got.clone(), stop.clone());
            move || {
                let mut buf = [0u8; 4096];
                while !stop.load(Ordering::Relaxed) {
                    if let Ok(n) = sock.recv(&mut buf) {
                        let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
                        got.lock().unwrap().push((Instant::now(), msg));
                    }
                }
            }
        });
        NotifySocket {
            path,
            got,
            stop,
            thread: Some(thread),
        }
    }

    /// The environment systemd gives a `Type=notify` service with
    /// `WatchdogSec=` set to `watchdog`.
    pub fn env(&self, watchdog: Duration) -> Vec<(&'static str, String)> {
        vec![
            ("NOTIFY_SOCKET", self.path.display().to_string()),
            ("WATCHDOG_USEC", watchdog.as_micros().to_string()),
        ]
    }

    /// When each `WATCHDOG=1` arrived, oldest first.
    pub fn pings(&self) -> Vec<Instant> {
        self.got
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, m)| m.lines().any(|l| l == "WATCHDOG=1"))
            .map(|(t, _)| *t)
            .collect()
    }

    /// The longest time within `[from, to]` without a ping, counting from
    /// `from` to the first ping and from the last one to `to`: what
    /// systemd's watchdog timer would have seen.
    pub fn longest_silence(&self, from: Instant, to: Instant) -> Duration {
        let mut last = from;
        let mut longest = Duration::ZERO;
        for t in self.pings().into_iter().filter(|t| *t > from && *t <= to) {
            longest = longest.max(t - last);
            last = t;
        }
        longest.max(to - last)
    }

    /// Every message so far, for failure messages.
    pub fn describe(&self, since: Instant) -> String {
        self.got
            .lock()
            .unwrap()
            .iter()
            .map(|(t, m)| {
                let at = t
                    .checked_duration_since(since)
                    .map_or(-1.0, |d| d.as_secs_f64());
                format!("{at:.2}s {}\n", m.replace('\n', " "))
            })
            .collect()
    }
}

impl Drop for NotifySocket {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

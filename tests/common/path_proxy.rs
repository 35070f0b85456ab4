//! A reverse proxy that serves an upstream under a path, as an operator's
//! `location /kv-admin/ { proxy_pass http://127.0.0.1:4513/; }` does:
//! requests for `/kv-admin/x` go upstream as `/x`; anything outside the
//! prefix is answered 404 here and remembered, so a test can tell that a
//! page never addressed the host's root.
//!
//! One request per connection (`Connection: close` both ways), so each
//! request's target is rewritten; a request body is streamed through
//! untouched. Threads, bounded by socket timeouts; the listener stops when
//! the proxy is dropped.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How long a connection may stay silent before the proxy gives up on it.
const IDLE: Duration = Duration::from_secs(20);
/// The longest request head the proxy reads.
const MAX_HEAD: usize = 64 * 1024;

#[derive(Default)]
struct Seen {
    forwarded: AtomicU64,
    outside: Mutex<Vec<String>>,
}

pub struct PathProxy {
    addr: String,
    prefix: String,
    seen: Arc<Seen>,
    stop: Arc<AtomicBool>,
}

impl PathProxy {
    /// Serves `upstream` (`host:port` or `http://host:port`) under
    /// `prefix`, which starts and ends with `/`.
    pub fn start(upstream: &str, prefix: &str) -> PathProxy {
        assert!(prefix.starts_with('/') && prefix.ends_with('/') && prefix.len() > 1);
        let upstream = upstream.trim_start_matches("http://").to_string();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let seen = Arc::new(Seen::default());
        let stop = Arc::new(AtomicBool::new(false));
        let (seen2, stop2, prefix2) = (seen.clone(), stop.clone(), prefix.to_string());
        std::thread::spawn(move || {
            for client in listener.incoming() {
                if stop2.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(client) = client else { continue };
                let (seen, upstream, prefix) = (seen2.clone(), upstream.clone(), prefix2.clone());
                std::thread::spawn(move || {
                    if let Err(e) = forward(client, &upstream, &prefix, &seen) {
                        eprintln!("path proxy: {e}");
                    }
                });
            }
        });
        PathProxy {
            addr,
            prefix: prefix.to_string(),
            seen,
            stop,
        }
    }

    /// `http://127.0.0.1:PORT/kv-admin/`: where the upstream's root is.
    pub fn url(&self) -> String {
        format!("http://{}{}", self.addr, self.prefix)
    }

    /// Requests sent upstream so far.
    pub fn forwarded(&self) -> u64 {
        self.seen.forwarded.load(Ordering::SeqCst)
    }

    /// `METHOD target` of every request outside the prefix so far.
    pub fn outside(&self) -> Vec<String> {
        self.seen.outside.lock().unwrap().clone()
    }
}

impl Drop for PathProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop so it sees the flag.
        let _ = TcpStream::connect(&self.addr);
    }
}

/// Reads one request head, rewrites its target and `Connection`, and
/// pipes the rest both ways until the upstream closes.
fn forward(
    mut client: TcpStream,
    upstream: &str,
    prefix: &str,
    seen: &Seen,
) -> std::io::Result<()> {
    client.set_read_timeout(Some(IDLE))?;
    client.set_write_timeout(Some(IDLE))?;
    let (head, body_start) = match read_head(&mut client)? {
        Some(read) => read,
        // A connection opened and closed (or left idle) without a request.
        None => return Ok(()),
    };
    let head = String::from_utf8_lossy(&head).into_owned();
    let mut lines = head.split("\r\n");
    let request_line = lines.next().unwrap_or_default();
    let mut parts = request_line.splitn(3, ' ');
    let (method, target, version) = (
        parts.next().unwrap_or_default(),
        parts.next().unwrap_or_default(),
        parts.next().unwrap_or_default(),
    );
    let Some(rest) = target.strip_prefix(prefix) else {
        seen.outside
            .lock()
            .unwrap()
            .push(format!("{method} {target}"));
        let body = "outside the proxied path\n";
        write!(
            client,
            "HTTP/1.1 404 Not Found\r\ncontent-type: text/plain\r\ncontent-length: {}\r\n\
             connection: close\r\n\r\n{body}",
            body.len()
        )?;
        return Ok(());
    };
    let mut out = format!("{method} /{rest} {version}\r\n");
    for line in lines.filter(|l| !l.is_empty()) {
        if !line.to_ascii_lowercase().starts_with("connection:") {
            out.push_str(line);
            out.push_str("\r\n");
        }
    }
    out.push_str("connection: close\r\n\r\n");
    let mut up = TcpStream::connect(upstream)?;
    up.set_read_timeout(Some(IDLE))?;
    up.set_write_timeout(Some(IDLE))?;
    up.write_all(out.as_bytes())?;
    up.write_all(&body_start)?;
    seen.forwarded.fetch_add(1, Ordering::SeqCst);
    // The rest of a request body, if any, while the answer comes back.
    let (mut from_client, mut to_up) = (client.try_clone()?, up.try_clone()?);
    std::thread::spawn(move || {
        let _ = std::io::copy(&mut from_client, &mut to_up);
    });
    let copied = std::io::copy(&mut up, &mut client);
    let _ = client.shutdown(Shutdown::Both);
    let _ = up.shutdown(Shutdown::Both);
    copied.map(|_| ())
}

/// The request head (without its blank line) and the bytes read after it,
/// or `None` when the client sent nothing.
fn read_head(client: &mut TcpStream) -> std::io::Result<Option<(Vec<u8>, Vec<u8>)>> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let rest = buf.split_off(end + 4);
            buf.truncate(end);
            return Ok(Some((buf, rest)));
        }
        if buf.len() > MAX_HEAD {
            return Err(std::io::Error::other("request head too long"));
        }
        let n = match client.read(&mut chunk) {
            Ok(n) => n,
            Err(e) if buf.is_empty() && e.kind() == std::io::ErrorKind::WouldBlock => 0,
            Err(e) => return Err(e),
        };
        if n == 0 {
            return if buf.is_empty() {
                Ok(None)
            } else {
                Err(std::io::Error::other(
                    "connection closed inside a request head",
                ))
            };
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

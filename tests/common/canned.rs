//! A minimal HTTP server for the answers a healthy real server never gives
//! (5xx, throttling, refused credentials, a connection that never answers).
//! Stopped on drop. Bound to 127.0.0.1 only.

#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

/// One request as received.
#[derive(Clone, Debug)]
pub struct Request {
    /// The request line, e.g. `GET /path?query HTTP/1.1`.
    pub line: String,
    pub body: String,
}

/// The whole raw HTTP response to send, or `None` to hold the connection
/// open without answering.
pub type Answer = Option<String>;

pub struct Canned {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    /// Requests received, in order.
    pub requests: Arc<Mutex<Vec<Request>>>,
}

impl Canned {
    /// Starts answering every request with `answer(request)`.
    pub fn start(answer: impl Fn(&Request) -> Answer + Send + 'static) -> Canned {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let requests = Arc::new(Mutex::new(Vec::new()));
        let (stop2, requests2) = (stop.clone(), requests.clone());
        let thread = std::thread::spawn(move || {
            let mut held = Vec::new();
            while !stop2.load(Ordering::SeqCst) {
                let Ok((mut s, _)) = listener.accept() else {
                    std::thread::sleep(Duration::from_millis(5));
                    continue;
                };
                s.set_nonblocking(false).unwrap();
                s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                let req = read_request(&mut s);
                requests2.lock().unwrap().push(req.clone());
                match answer(&req) {
                    Some(raw) => {
                        let _ = s.write_all(raw.as_bytes());
                        let _ = s.flush();
                    }
                    None => held.push(s),
                }
            }
        });
        Canned {
            addr,
            stop,
            thread: Some(thread),
            requests,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for Canned {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A complete response with a body and `Connection: close`.
pub fn http(status: u16, content_type: &str, body: &str) -> Answer {
    Some(format!(
        "HTTP/1.1 {status} X\r\nContent-Type: {content_type}\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    ))
}

/// An S3 error document with `code`, as S3 answers a failed request.
pub fn s3_error(status: u16, code: &str) -> Answer {
    http(
        status,
        "application/xml",
        &format!(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>{code}</Code>\
             <Message>canned {code}</Message><RequestId>1</RequestId></Error>"
        ),
    )
}

fn read_request(s: &mut TcpStream) -> Request {
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        match s.read(&mut byte) {
            Ok(1) => buf.push(byte[0]),
            _ => {
                return Request {
                    line: String::new(),
                    body: String::new(),
                }
            }
        }
    }
    let head = String::from_utf8_lossy(&buf).into_owned();
    let len = head
        .to_ascii_lowercase()
        .lines()
        .find_map(|l| l.strip_prefix("content-length:").map(str::to_string))
        .and_then(|v| v.trim().parse::<usize>().ok())
        .unwrap_or(0);
    let mut body = vec![0; len];
    let _ = s.read_exact(&mut body);
    Request {
        line: head.lines().next().unwrap_or("").to_string(),
        body: String::from_utf8_lossy(&body).into_owned(),
    }
}

//! A "remote" store for `compare --mode remote`: a TCP proxy on 127.0.0.1 in
//! front of the local S3 server that delays every byte by half a round trip
//! in each direction, so each request/response costs `rtt` as it would
//! against a cloud region.
//!
//! Each direction of a connection is a queue: a chunk read at time `t` is
//! written at `t + rtt/2`, whatever else is queued, so latency is added
//! without cutting bandwidth (a sleep per read would). A new connection also
//! pays the TCP handshake: the client's first bytes cannot reach the server
//! before one round trip after the connect.
//!
//! The proxy does not terminate TLS: kvreplica's S3 client (rust-s3 0.38,
//! feature `tokio-rustls-tls-ring` → reqwest `rustls-tls` →
//! `rustls-tls-webpki-roots`) trusts only the Mozilla roots compiled into the
//! binary, ignores `SSL_CERT_FILE`, and kvreplica has no setting for a CA, so
//! it cannot be pointed at a store with a test certificate (BENCHMARKS.md).
//! The proxy counts the connections it accepts, so the report can show how
//! many each tool opens (a new connection costs a handshake round trip, and
//! would cost a TLS handshake against a real store).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::time::Instant;

/// A running delay proxy; stops with its runtime when dropped.
pub struct DelayProxy {
    addr: SocketAddr,
    accepted: Arc<AtomicU64>,
    _rt: tokio::runtime::Runtime,
}

impl DelayProxy {
    /// Listens on 127.0.0.1 (a free port) and forwards every connection to
    /// `upstream`, adding `rtt` per round trip.
    pub fn start(upstream: SocketAddr, rtt: Duration) -> DelayProxy {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let listener = rt
            .block_on(TcpListener::bind("127.0.0.1:0"))
            .expect("binding the delay proxy on 127.0.0.1");
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicU64::new(0));
        let count = accepted.clone();
        rt.spawn(async move {
            // Ends with the runtime.
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    continue;
                };
                let accepted_at = Instant::now();
                count.fetch_add(1, Ordering::Relaxed);
                tokio::spawn(async move {
                    let Ok(server) = TcpStream::connect(upstream).await else {
                        return;
                    };
                    let _ = client.set_nodelay(true);
                    let _ = server.set_nodelay(true);
                    let (cr, cw) = client.into_split();
                    let (sr, sw) = server.into_split();
                    // The client's data leaves after its SYN / SYN-ACK round trip.
                    let handshake = accepted_at + rtt;
                    tokio::join!(
                        direction(cr, sw, rtt / 2, Some(handshake)),
                        direction(sr, cw, rtt / 2, None)
                    );
                });
            }
        });
        DelayProxy {
            addr,
            accepted,
            _rt: rt,
        }
    }

    /// Base URL, for `--s3-endpoint`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> u64 {
        self.accepted.load(Ordering::Relaxed)
    }
}

/// Copies `from` to `to`, each chunk written `delay` after it was read (and
/// not before `not_before`); shuts `to` down after `from`'s end.
async fn direction(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    delay: Duration,
    not_before: Option<Instant>,
) {
    let (tx, mut rx) = mpsc::unbounded_channel::<(Instant, Vec<u8>)>();
    let reader = async move {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match from.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    let now = Instant::now();
                    let now = not_before.map_or(now, |t| now.max(t));
                    if tx.send((now + delay, buf[..n].to_vec())).is_err() {
                        break;
                    }
                }
            }
        }
        // Dropping `tx` ends the writer once the queue is drained.
    };
    let writer = async move {
        while let Some((due, chunk)) = rx.recv().await {
            tokio::time::sleep_until(due).await;
            if to.write_all(&chunk).await.is_err() {
                return;
            }
        }
        let _ = to.shutdown().await;
    };
    tokio::join!(reader, writer);
}

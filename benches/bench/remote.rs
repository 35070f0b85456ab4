//! A "remote" store for `compare --mode remote`: a TLS-terminating proxy on
//! 127.0.0.1 in front of the local S3 server that delays every byte by half
//! a round trip in each direction, so each request/response costs `rtt` and
//! each new connection a TCP and a TLS handshake, as they would against a
//! cloud region.
//!
//! Each direction of a connection is a queue: a chunk read at time `t` is
//! written at `t + rtt/2`, whatever else is queued, so latency is added
//! without cutting bandwidth (a sleep per read would). A new connection also
//! pays the TCP handshake: the client's first bytes cannot reach the server
//! before one round trip after the connect.
//!
//! TLS is terminated *behind* the delay (client ⇄ delay ⇄ TLS ⇄ s3s-fs), so
//! the TLS handshake's flights pay the round trips too (one with TLS 1.3).
//! The certificate is issued for 127.0.0.1 by a test CA made at start-up
//! ([`crate::certs::TestCa`]); the tools trust it through `SSL_CERT_FILE`
//! (kvreplica's S3 client loads the system's roots, which honour it, and so
//! does denokv 0.14's). No ALPN is offered: both tools speak HTTP/1.1, as
//! the s3s-fs behind the proxy is reached over it. The proxy counts the
//! connections it accepts and the TLS handshakes that completed, so the
//! report can show both per tool.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_rustls::rustls::crypto::ring;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::ServerConfig;
use tokio_rustls::TlsAcceptor;

use crate::certs::TestCa;

/// A running delay proxy; stops with its runtime when dropped.
pub struct DelayProxy {
    addr: SocketAddr,
    accepted: Arc<AtomicU64>,
    handshakes: Arc<AtomicU64>,
    ca: TestCa,
    _rt: tokio::runtime::Runtime,
}

/// A TLS acceptor for 127.0.0.1 with a certificate from `ca`.
fn acceptor(ca: &mut TestCa) -> TlsAcceptor {
    let (cert, key) = ca.issue("proxy");
    let chain = CertificateDer::pem_file_iter(&cert)
        .expect("the proxy's certificate")
        .collect::<Result<Vec<_>, _>>()
        .expect("the proxy's certificate");
    let key = PrivateKeyDer::from_pem_file(&key).expect("the proxy's key");
    let config = ServerConfig::builder_with_provider(Arc::new(ring::default_provider()))
        .with_safe_default_protocol_versions()
        .expect("TLS 1.2 and 1.3 with ring")
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .expect("the proxy's certificate and key");
    TlsAcceptor::from(Arc::new(config))
}

impl DelayProxy {
    /// Listens on 127.0.0.1 (a free port) for TLS and forwards every
    /// connection to `upstream` over plain TCP, adding `rtt` per round trip.
    pub fn start(upstream: SocketAddr, rtt: Duration) -> DelayProxy {
        let mut ca = TestCa::new();
        let tls = acceptor(&mut ca);
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
        let handshakes = Arc::new(AtomicU64::new(0));
        let (count, shakes) = (accepted.clone(), handshakes.clone());
        rt.spawn(async move {
            // Ends with the runtime.
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    continue;
                };
                let accepted_at = Instant::now();
                count.fetch_add(1, Ordering::Relaxed);
                let (tls, shakes) = (tls.clone(), shakes.clone());
                tokio::spawn(async move {
                    let _ = client.set_nodelay(true);
                    // The delayed wire ends in `near`; TLS is spoken on `far`.
                    let (near, far) = tokio::io::duplex(256 * 1024);
                    let (cr, cw) = client.into_split();
                    let (nr, nw) = tokio::io::split(near);
                    // The client's data leaves after its SYN / SYN-ACK round trip.
                    let handshake = accepted_at + rtt;
                    let wire = async {
                        tokio::join!(
                            direction(cr, nw, rtt / 2, Some(handshake)),
                            direction(nr, cw, rtt / 2, None)
                        );
                    };
                    let relay = async move {
                        let Ok(mut plain) = tls.accept(far).await else {
                            return;
                        };
                        shakes.fetch_add(1, Ordering::Relaxed);
                        let Ok(mut server) = TcpStream::connect(upstream).await else {
                            return;
                        };
                        let _ = server.set_nodelay(true);
                        let _ = tokio::io::copy_bidirectional(&mut plain, &mut server).await;
                        let _ = plain.shutdown().await;
                    };
                    tokio::join!(wire, relay);
                });
            }
        });
        DelayProxy {
            addr,
            accepted,
            handshakes,
            ca,
            _rt: rt,
        }
    }

    /// Base URL, for `--s3-endpoint`.
    pub fn endpoint(&self) -> String {
        format!("https://{}", self.addr)
    }

    /// The CA that issued the proxy's certificate, for `SSL_CERT_FILE`.
    pub fn ca_file(&self) -> PathBuf {
        self.ca.ca()
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> u64 {
        self.accepted.load(Ordering::Relaxed)
    }

    /// TLS handshakes completed so far.
    pub fn handshakes(&self) -> u64 {
        self.handshakes.load(Ordering::Relaxed)
    }
}

/// Copies `from` to `to`, each chunk written `delay` after it was read (and
/// not before `not_before`); shuts `to` down after `from`'s end.
async fn direction(
    mut from: impl AsyncRead + Unpin,
    mut to: impl AsyncWrite + Unpin,
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

/// `proxy --upstream 127.0.0.1:PORT [--rtt-ms 20]`: runs the proxy alone
/// in front of a server started by hand, for side-by-side runs of two
/// builds (see BENCHMARKS.md). Prints `endpoint URL` and `ca FILE`, then,
/// for every line read on stdin, `connections N handshakes M`; stops at the
/// end of stdin.
pub fn run(args: &[String]) {
    let upstream: SocketAddr = crate::arg(args, "--upstream")
        .expect("--upstream 127.0.0.1:PORT")
        .parse()
        .expect("--upstream: an IP address and port");
    let rtt = Duration::from_millis(crate::num(args, "--rtt-ms", 20) as u64);
    let proxy = DelayProxy::start(upstream, rtt);
    println!("endpoint {}", proxy.endpoint());
    println!("ca {}", proxy.ca_file().display());
    let mut line = String::new();
    while std::io::stdin().read_line(&mut line).unwrap_or(0) > 0 {
        println!(
            "connections {} handshakes {}",
            proxy.accepted(),
            proxy.handshakes()
        );
        line.clear();
    }
}

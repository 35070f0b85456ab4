//! Pre-authentication slot exhaustion: one client address opening more
//! connections than the listener has slots must not turn other clients
//! away. A `kvreplica serve` process with its default limits (1024
//! connections, 128 per address) gets 1,100 connections from 127.0.0.1
//! that send half a request and wait; a client on 127.0.0.2 (all of
//! 127.0.0.0/8 is loopback on Linux) keeps reading meanwhile.

mod common;

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use common::serve::{http, Method, ServeProcess, ACCESS_TOKEN};
use common::Sample;
use denokv_proto::datapath::{ReadRange, SnapshotRead, SnapshotReadOutput, SnapshotReadStatus};
use prost::Message;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// More connections than the listener's cap (1024).
const FLOOD: usize = 1100;
/// The default per-address cap.
const PER_ADDRESS: usize = kvreplica::server::DEFAULT_MAX_CONNECTIONS_PER_ADDRESS;
/// How long the other client keeps reading while the flood holds.
const READING: Duration = Duration::from_secs(3);

/// One flood connection: what it got within `within`.
#[derive(Debug, PartialEq, Eq)]
enum Fate {
    /// Answered 503 (refused).
    Refused,
    /// Closed without an answer.
    Closed,
    /// Still open, waiting for the rest of its request.
    Held,
}

async fn flood_one(addr: SocketAddr, within: Duration) -> (TcpStream, Fate) {
    let mut s = TcpStream::connect(addr).await.expect("connecting");
    let _ = s
        .write_all(b"POST /v2/snapshot_read HTTP/1.1\r\nhost: x\r\n")
        .await;
    let mut buf = Vec::new();
    let fate = match tokio::time::timeout(within, s.read_to_end(&mut buf)).await {
        Err(_) => Fate::Held,
        Ok(_) if buf.starts_with(b"HTTP/1.1 503") => Fate::Refused,
        Ok(_) => Fate::Closed,
    };
    (s, fate)
}

/// `POST url` with `body` through `client`: status and body.
async fn post_from(
    client: &reqwest::Client,
    url: &str,
    headers: &[(&str, &str)],
    body: Vec<u8>,
) -> Result<(u16, Vec<u8>), String> {
    let mut req = client.post(url).body(body).timeout(Duration::from_secs(10));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let r = req.send().await.map_err(|e| format!("{url}: {e}"))?;
    let status = r.status().as_u16();
    let body = r.bytes().await.map_err(|e| e.to_string())?.to_vec();
    Ok((status, body))
}

/// The metadata exchange and one read of the whole (small) database
/// through `client`; the number of entries read.
async fn read_from(client: &reqwest::Client, kv_url: &str) -> Result<usize, String> {
    let auth = format!("Bearer {ACCESS_TOKEN}");
    let (status, body) = post_from(
        client,
        &format!("{kv_url}/"),
        &[
            ("authorization", &auth),
            ("content-type", "application/json"),
        ],
        br#"{"supportedVersions":[2,3]}"#.to_vec(),
    )
    .await?;
    if status != 200 {
        return Err(format!(
            "metadata: {status} {}",
            String::from_utf8_lossy(&body)
        ));
    }
    let meta: Value = serde_json::from_slice(&body).map_err(|e| e.to_string())?;
    let db_id = meta["databaseId"]
        .as_str()
        .ok_or("no databaseId")?
        .to_string();
    let read = SnapshotRead {
        ranges: vec![ReadRange {
            start: vec![0x00],
            end: vec![0xff],
            limit: 1000,
            reverse: false,
        }],
    }
    .encode_to_vec();
    let (status, body) = post_from(
        client,
        &format!("{kv_url}/v2/snapshot_read"),
        &[
            ("authorization", &auth),
            ("x-denokv-database-id", &db_id),
            ("x-denokv-version", "3"),
            ("content-type", "application/x-protobuf"),
        ],
        read,
    )
    .await?;
    if status != 200 {
        return Err(format!(
            "snapshot_read: {status} {}",
            String::from_utf8_lossy(&body)
        ));
    }
    let out = SnapshotReadOutput::decode(body.as_slice()).map_err(|e| e.to_string())?;
    if out.status != SnapshotReadStatus::SrSuccess as i32 {
        return Err(format!("snapshot_read status {}", out.status));
    }
    Ok(out.ranges.iter().map(|r| r.values.len()).sum())
}

#[test]
fn one_address_cannot_hold_every_connection_slot() {
    let dir = tempfile::tempdir().unwrap();
    let sample = Sample::load("sample-1");
    let source = sample.install_initial(&dir.path().join("bucket"));
    let db = dir.path().join("replica.sqlite");
    let mut server = ServeProcess::start(&["--source", &source, "--db", db.to_str().unwrap()]);
    server.wait_ready();
    let kv_url = server.kv_url();
    let addr: SocketAddr = kv_url.trim_start_matches("http://").parse().unwrap();
    let other: IpAddr = "127.0.0.2".parse().unwrap();
    let client = reqwest::Client::builder()
        .local_address(other)
        .http1_only()
        .build()
        .unwrap();

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (fates, reads) = rt.block_on(async {
        let baseline = read_from(&client, &kv_url)
            .await
            .expect("a read from 127.0.0.2 before the flood");
        assert!(baseline > 0, "the sample has entries");
        // The flood: every connection stays open (as far as the server
        // lets it) while the other client reads.
        let hold = READING + Duration::from_secs(3);
        let flood: Vec<_> = (0..FLOOD)
            .map(|_| tokio::spawn(flood_one(addr, hold)))
            .collect();
        // Connections over a cap are refused within CONNECTION_WAIT.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let mut reads = Vec::new();
        let started = Instant::now();
        while started.elapsed() < READING {
            let t0 = Instant::now();
            let r = read_from(&client, &kv_url).await;
            reads.push((r, t0.elapsed()));
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let mut fates = Vec::new();
        for f in flood {
            fates.push(f.await.unwrap());
        }
        (fates, reads)
    });
    let count = |fate: Fate| fates.iter().filter(|(_, f)| *f == fate).count();
    let (held, refused, closed) = (count(Fate::Held), count(Fate::Refused), count(Fate::Closed));
    let summary = format!("held {held}, refused {refused}, closed {closed}");

    assert!(reads.len() >= 5, "reads: {reads:?}");
    for (r, took) in &reads {
        match r {
            Ok(n) => assert!(*n > 0, "an empty read"),
            Err(e) => panic!(
                "127.0.0.2 was turned away while 127.0.0.1 flooded ({summary}): {e}\nlog:\n{}",
                server.log()
            ),
        }
        assert!(*took < Duration::from_secs(2), "a read took {took:?}");
    }
    assert_eq!(held, PER_ADDRESS, "{summary}");
    // The rest are refused: answered 503 while few are being answered
    // (the server bounds that work), closed at once beyond.
    assert_eq!(
        refused + closed,
        FLOOD.saturating_sub(PER_ADDRESS),
        "{summary}"
    );
    assert!(refused > 0, "{summary}");
    drop(fates);

    let text = http(
        Method::Get,
        &format!("{}/metrics", server.admin_url()),
        &[],
        Vec::new(),
    )
    .unwrap()
    .text();
    assert!(
        text.lines().any(|l| l
            .starts_with("kvreplica_errors_total{kind=\"address_connection_limit\"}")
            && !l.ends_with(" 0")),
        "refusals are counted:\n{text}"
    );
    let log = server.log();
    assert_eq!(
        log.matches("one client address reached its connection limit")
            .count(),
        1,
        "one warning:\n{log}"
    );
}

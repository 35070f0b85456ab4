//! What `kvreplica export` (and `GET /export`) must write for a generated
//! backup's state: one JSON object per entry, in key order. Included by
//! path by the export tests.

#![allow(dead_code)]

use std::collections::BTreeMap;

use serde_json::{json, Value};

use crate::common::fixture::Rec;
use crate::common::v8;

/// The fixtures' value form (`$bigint`, `$bytes`, `$u64`) in export's.
pub fn fixture_value(v: &Value) -> Value {
    match v {
        Value::Object(m) if m.len() == 1 && m.contains_key("$bigint") => {
            json!({"$type": "bigint", "value": m["$bigint"]})
        }
        Value::Object(m) if m.len() == 1 && m.contains_key("$bytes") => {
            json!({"$type": "bytes", "hex": m["$bytes"]})
        }
        Value::Object(m) if m.len() == 1 && m.contains_key("$u64") => {
            json!({"$type": "u64", "value": m["$u64"]})
        }
        Value::Object(m) => Value::Object(
            m.iter()
                .map(|(k, v)| (k.clone(), fixture_value(v)))
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.iter().map(fixture_value).collect()),
        v => v.clone(),
    }
}

/// The generated workload's keys (`["item", n]`): `n`.
pub fn item_number(key: &[u8]) -> f64 {
    assert_eq!(&key[..7], b"\x02item\x00\x21", "a workload key");
    let bits = u64::from_be_bytes(key[7..15].try_into().unwrap()) ^ (1u64 << 63);
    f64::from_bits(bits)
}

/// One entry as export writes it, from the workload's record.
pub fn entry(key: &[u8], rec: &Rec) -> Value {
    let (value, encoding) = match rec.encoding {
        1 => (
            fixture_value(&v8::decode(&rec.value).expect("a V8 value")),
            "v8",
        ),
        2 => (
            json!({"$type": "u64", "value": u64::from_le_bytes(rec.value[..8].try_into().unwrap()).to_string()}),
            "u64",
        ),
        3 => (
            json!({"$type": "bytes", "hex": hex::encode(&rec.value)}),
            "bytes",
        ),
        n => panic!("encoding {n}"),
    };
    json!({
        "key": ["item", item_number(key)],
        "key_hex": hex::encode(key),
        "value": value,
        "encoding": encoding,
        "versionstamp": hex::encode(rec.versionstamp),
        "expires_at_ms": (rec.expire_at_ms >= 0).then_some(rec.expire_at_ms),
    })
}

/// The entries of `state`, in key order.
pub fn entries(state: &BTreeMap<Vec<u8>, Rec>) -> Vec<Value> {
    state.iter().map(|(k, r)| entry(k, r)).collect()
}

/// Parses JSON Lines.
pub fn parse_jsonl(text: &[u8]) -> Vec<Value> {
    String::from_utf8(text.to_vec())
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

/// The same JSON, numbers within a rounding of each other: serde_json's
/// default float parsing (the export's text read back) can be one unit
/// in the last place off the exact double the workload wrote.
pub fn same(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => {
            let (x, y) = (x.as_f64().unwrap(), y.as_f64().unwrap());
            x == y || (x - y).abs() <= 4.0 * f64::EPSILON * x.abs().max(y.abs())
        }
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(a, b)| same(a, b))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len() && x.iter().all(|(k, v)| y.get(k).is_some_and(|w| same(v, w)))
        }
        _ => a == b,
    }
}

/// Asserts `got` are exactly `want`, entry for entry (numbers compared as
/// doubles), naming the first difference.
pub fn assert_entries(got: &[Value], want: &[Value], label: &str) {
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            same(g, w),
            "{label}: entry {i} differs:\n got {g}\nwant {w}"
        );
    }
    assert_eq!(got.len(), want.len(), "{label}: number of entries");
}

/// Whether `got` are exactly `want` (see [`assert_entries`]).
pub fn same_entries(got: &[Value], want: &[Value]) -> bool {
    got.len() == want.len() && got.iter().zip(want).all(|(g, w)| same(g, w))
}

/// A `GET` over HTTP/1.1 on a socket with a receive buffer of `rcvbuf`
/// bytes (no autotuning), so the server can run ahead of the reader by
/// little more than its own send buffer: the connection, after the request
/// was sent, and its headers.
pub fn open_get(
    addr: &str,
    path: &str,
    token: &str,
    rcvbuf: usize,
) -> (std::net::TcpStream, String) {
    use std::io::{BufRead, Write};
    let addr: std::net::SocketAddr = addr.parse().unwrap();
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket.set_recv_buffer_size(rcvbuf).unwrap();
    socket.connect(&addr.into()).unwrap();
    let mut stream: std::net::TcpStream = socket.into();
    stream
        .set_read_timeout(Some(std::time::Duration::from_secs(30)))
        .unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nhost: {addr}\r\nauthorization: Bearer {token}\r\nconnection: close\r\n\r\n"
    )
    .unwrap();
    let mut reader = std::io::BufReader::with_capacity(1, stream.try_clone().unwrap());
    let mut head = String::new();
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        if line == "\r\n" || line.is_empty() {
            break;
        }
        head.push_str(&line);
    }
    (stream, head)
}

/// A chunked body's data.
pub fn dechunk(mut raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let eol = raw
            .windows(2)
            .position(|w| w == b"\r\n")
            .expect("a chunk size line");
        let size = usize::from_str_radix(std::str::from_utf8(&raw[..eol]).unwrap().trim(), 16)
            .expect("a chunk size");
        raw = &raw[eol + 2..];
        if size == 0 {
            return out;
        }
        assert!(raw.len() >= size + 2, "the body was cut short in a chunk");
        out.extend_from_slice(&raw[..size]);
        assert_eq!(&raw[size..size + 2], b"\r\n", "chunk end");
        raw = &raw[size + 2..];
    }
}

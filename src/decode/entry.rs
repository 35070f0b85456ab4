//! One entry (key and row) as every reading feature shows it: a JSON
//! object or a CSV row with the decoded key, the key's hex, the decoded
//! value, its encoding, versionstamp and expiry. Export, browsing and
//! diffs all render through here, so an entry reads the same in each.

use std::fmt::Write;

use super::{decode_value, key_to_json, ValueEncoding};
use crate::format::{KvRecord, Versionstamp};

/// The CSV header matching [`EntryRef::csv`].
pub const CSV_HEADER: &str = "key,key_hex,value,encoding,versionstamp,expires_at_ms\n";

/// An entry borrowed from wherever it was read (a SQLite row, a
/// [`KvRecord`]), so a stream renders it without copying.
#[derive(Clone, Copy, Debug)]
pub struct EntryRef<'r> {
    pub key: &'r [u8],
    pub value: &'r [u8],
    pub encoding: ValueEncoding,
    pub versionstamp: Versionstamp,
    /// Milliseconds since the epoch; negative: no expiry.
    pub expires_at_ms: i64,
}

impl<'r> EntryRef<'r> {
    pub fn new(key: &'r [u8], record: &'r KvRecord) -> Self {
        EntryRef {
            key,
            value: &record.value,
            encoding: ValueEncoding::from_column(record.encoding),
            versionstamp: record.versionstamp,
            expires_at_ms: record.expire_at_ms,
        }
    }

    /// The key's JSON parts, or an `undecodable` object with the reason
    /// (the hex is shown next to it in any case).
    pub fn key_json(&self) -> String {
        key_json(self.key)
    }

    fn expiry(&self) -> String {
        if self.expires_at_ms < 0 {
            "null".into()
        } else {
            self.expires_at_ms.to_string()
        }
    }

    /// Appends the entry as one JSON object (no newline).
    pub fn json(&self, out: &mut String) {
        write!(
            out,
            r#"{{"key":{},"key_hex":"{}","value":{},"encoding":"{}","versionstamp":"{}","expires_at_ms":{}}}"#,
            self.key_json(),
            hex::encode(self.key),
            decode_value(self.encoding, self.value),
            self.encoding.name(),
            self.versionstamp,
            self.expiry(),
        )
        .expect("write to a String");
    }

    /// The entry as a JSON value (for answers built with `serde_json`).
    pub fn to_json(&self) -> serde_json::Value {
        let mut s = String::new();
        self.json(&mut s);
        serde_json::from_str(&s).expect("the entry renders as JSON")
    }

    /// Appends the entry as one CSV row (RFC 4180, with its newline): key
    /// and value as JSON text in quoted cells.
    pub fn csv(&self, out: &mut String) {
        let expiry = if self.expires_at_ms < 0 {
            String::new()
        } else {
            self.expires_at_ms.to_string()
        };
        let cells = [
            csv_cell(&self.key_json()),
            hex::encode(self.key),
            csv_cell(&decode_value(self.encoding, self.value)),
            self.encoding.name(),
            self.versionstamp.to_string(),
            expiry,
        ];
        *out += &cells.join(",");
        out.push('\n');
    }
}

/// A key's JSON parts as text, or an `undecodable` object with the reason.
pub fn key_json(key: &[u8]) -> String {
    match key_to_json(key) {
        Ok(k) => k.to_string(),
        Err(e) => serde_json::json!({"$type": "undecodable", "reason": e.to_string()}).to_string(),
    }
}

/// A CSV cell (RFC 4180): quoted, inner quotes doubled.
fn csv_cell(text: &str) -> String {
    format!("\"{}\"", text.replace('"', "\"\""))
}

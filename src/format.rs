//! The Deno Deploy backup bucket format: object names, versionstamps and the
//! protobuf payloads of snapshot and mutation-log objects.
//!
//! Everything read from a bucket is untrusted: every decoder here returns a
//! [`FormatError`] that names the offending object instead of panicking, so a
//! corrupt backup stops the sync with a message an operator can act on.

use std::fmt;
use std::str::FromStr;

use denokv_proto::backup::{BackupKvMutationKind, BackupKvPair, BackupReplicationLogEntry};
use prost::Message;

mod wire;

pub use wire::{Payload, WireError};

/// Errors found while decoding bucket objects. Each names the object so the
/// operator can find it in the bucket.
#[derive(Debug, thiserror::Error)]
pub enum FormatError {
    #[error("invalid object name {name:?}: {reason}")]
    BadName { name: String, reason: String },
    #[error("object {object}: `differential` must hold 20 hex digits, found {found:?}")]
    BadDifferential { object: String, found: String },
    #[error("object {object}: not a valid protobuf message: {source}")]
    BadProtobuf {
        object: String,
        #[source]
        source: WireError,
    },
    #[error("object {object}: {reason}")]
    Corrupt { object: String, reason: String },
}

impl FormatError {
    fn corrupt(object: impl fmt::Display, reason: impl Into<String>) -> Self {
        FormatError::Corrupt {
            object: object.to_string(),
            reason: reason.into(),
        }
    }
    fn bad_name(name: &str, reason: impl Into<String>) -> Self {
        FormatError::BadName {
            name: name.to_string(),
            reason: reason.into(),
        }
    }
}

/// The 10-byte versionstamp a client sees for a key: 8-byte big-endian commit
/// version followed by the 2-byte big-endian batch sequence.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Versionstamp(pub [u8; 10]);

impl Versionstamp {
    /// The commit version part, as the Deno SQLite layout stores it in `version`.
    pub fn version(&self) -> u64 {
        u64::from_be_bytes(self.0[0..8].try_into().expect("8 bytes"))
    }
    /// The batch sequence part, as the Deno SQLite layout stores it in `seq`.
    pub fn seq(&self) -> u16 {
        u16::from_be_bytes(self.0[8..10].try_into().expect("2 bytes"))
    }
    /// Rebuilds a versionstamp from the Deno SQLite layout's two columns.
    pub fn from_parts(version: u64, seq: u16) -> Self {
        let mut out = [0u8; 10];
        out[0..8].copy_from_slice(&version.to_be_bytes());
        out[8..10].copy_from_slice(&seq.to_be_bytes());
        Versionstamp(out)
    }
    /// The log stamp of the last mutation of this commit: the recoverable point.
    pub fn commit_end(&self) -> LogStamp {
        let mut out = [0xffu8; 12];
        out[0..10].copy_from_slice(&self.0);
        LogStamp(out)
    }
    pub fn from_slice(b: &[u8]) -> Option<Self> {
        Some(Versionstamp(b.try_into().ok()?))
    }
}

impl fmt::Display for Versionstamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}
impl fmt::Debug for Versionstamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Versionstamp({self})")
    }
}

impl FromStr for Versionstamp {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let mut out = [0u8; 10];
        if s.len() != 20 {
            return Err(format!(
                "a versionstamp is 20 hex digits, got {} characters",
                s.len()
            ));
        }
        hex::decode_to_slice(s, &mut out).map_err(|e| format!("not hex: {e}"))?;
        Ok(Versionstamp(out))
    }
}

/// The 12-byte stamp of one log entry: the commit's versionstamp followed by
/// the 2-byte big-endian index of the mutation inside it. The last mutation
/// of a commit has index `0xffff`, which makes its stamp a commit boundary.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct LogStamp(pub [u8; 12]);

impl LogStamp {
    /// The versionstamp clients see for keys written by this entry.
    pub fn versionstamp(&self) -> Versionstamp {
        Versionstamp(self.0[0..10].try_into().expect("10 bytes"))
    }
    /// True for the last mutation of a commit: a state boundary.
    pub fn is_commit_end(&self) -> bool {
        self.0[10] == 0xff && self.0[11] == 0xff
    }
    pub fn from_slice(b: &[u8]) -> Option<Self> {
        Some(LogStamp(b.try_into().ok()?))
    }
}

impl fmt::Display for LogStamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}
impl fmt::Debug for LogStamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "LogStamp({self})")
    }
}

fn parse_hex_u64(name: &str, field: &str, width: usize) -> Result<u64, FormatError> {
    if field.len() != width || !field.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(FormatError::bad_name(
            name,
            format!("field {field:?} is not {width} hex digits"),
        ));
    }
    if field.bytes().any(|b| b.is_ascii_uppercase()) {
        return Err(FormatError::bad_name(
            name,
            format!("field {field:?} is not lower-case hex"),
        ));
    }
    u64::from_str_radix(field, 16)
        .map_err(|e| FormatError::bad_name(name, format!("field {field:?}: {e}")))
}

fn parse_stamp(name: &str, field: &str) -> Result<LogStamp, FormatError> {
    if field.len() != 24 || field.bytes().any(|b| b.is_ascii_uppercase()) {
        return Err(FormatError::bad_name(
            name,
            format!("stamp {field:?} is not 24 lower-case hex digits"),
        ));
    }
    let mut out = [0u8; 12];
    hex::decode_to_slice(field, &mut out)
        .map_err(|e| FormatError::bad_name(name, format!("stamp {field:?}: {e}")))?;
    Ok(LogStamp(out))
}

/// Splits the leading format/epoch fields shared by both object kinds.
/// Returns (format version, monoseq, remaining fields).
fn parse_head<'a>(
    name: &str,
    fields: &'a [&'a str],
) -> Result<(u16, u64, &'a [&'a str]), FormatError> {
    let first = fields
        .first()
        .ok_or_else(|| FormatError::bad_name(name, "empty name"))?;
    match first.len() {
        4 => {
            let version = parse_hex_u64(name, first, 4)?;
            if version != 1 {
                return Err(FormatError::bad_name(
                    name,
                    format!("unknown format version {version}"),
                ));
            }
            let monoseq = parse_hex_u64(name, fields.get(1).copied().unwrap_or(""), 16)?;
            Ok((1, monoseq, &fields[2.min(fields.len())..]))
        }
        16 => {
            let epoch = parse_hex_u64(name, first, 16)?;
            let tsn = parse_hex_u64(name, fields.get(1).copied().unwrap_or(""), 16)?;
            if epoch >= 1 << 32 || tsn >= 1 << 32 {
                return Err(FormatError::bad_name(
                    name,
                    "format-0 epoch and tsn must each be below 2^32",
                ));
            }
            Ok((0, (epoch << 32) | tsn, &fields[2.min(fields.len())..]))
        }
        _ => Err(FormatError::bad_name(
            name,
            "first field must be 4 (format 1) or 16 (format 0) hex digits",
        )),
    }
}

fn fmt_head(f: &mut fmt::Formatter<'_>, format: u16, monoseq: u64) -> fmt::Result {
    if format == 0 {
        write!(f, "{:016x}_{:016x}", monoseq >> 32, monoseq & 0xffff_ffff)
    } else {
        write!(f, "{format:04x}_{monoseq:016x}")
    }
}

/// Name of a snapshot range object, without the folder and the suffix
/// ([`crate::backup::snapshot_key`] adds them). Ordering is the order ranges
/// are applied in.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub struct SnapshotName {
    pub format: u16,
    pub monoseq: u64,
    pub seq: u64,
}

impl FromStr for SnapshotName {
    type Err = FormatError;
    fn from_str(name: &str) -> Result<Self, FormatError> {
        let fields: Vec<&str> = name.split('_').collect();
        let (format, monoseq, rest) = parse_head(name, &fields)?;
        if rest.len() != 1 {
            return Err(FormatError::bad_name(
                name,
                "a snapshot name has a format/epoch, a monoseq/tsn and a seq field",
            ));
        }
        let seq = parse_hex_u64(name, rest[0], 16)?;
        Ok(SnapshotName {
            format,
            monoseq,
            seq,
        })
    }
}

impl fmt::Display for SnapshotName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt_head(f, self.format, self.monoseq)?;
        write!(f, "_{:016x}", self.seq)
    }
}

/// Name of a mutation-log object, without the folder and the suffix
/// ([`crate::backup::log_key`] adds them). It names the first and last
/// stamps the object holds.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub struct LogName {
    pub format: u16,
    pub monoseq: u64,
    pub first: LogStamp,
    pub last: LogStamp,
}

impl FromStr for LogName {
    type Err = FormatError;
    fn from_str(name: &str) -> Result<Self, FormatError> {
        let fields: Vec<&str> = name.split('_').collect();
        let (format, monoseq, rest) = parse_head(name, &fields)?;
        if rest.len() != 2 {
            return Err(FormatError::bad_name(
                name,
                "a log name has a format/epoch, a monoseq/tsn and two stamp fields",
            ));
        }
        let first = parse_stamp(name, rest[0])?;
        let last = parse_stamp(name, rest[1])?;
        if first > last {
            return Err(FormatError::bad_name(
                name,
                "first stamp is after the last stamp",
            ));
        }
        Ok(LogName {
            format,
            monoseq,
            first,
            last,
        })
    }
}

impl fmt::Display for LogName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt_head(f, self.format, self.monoseq)?;
        write!(f, "_{}_{}", self.first, self.last)
    }
}

/// Parses the `differential` object: 20 hex digits, surrounding white space
/// tolerated.
pub fn parse_differential(object: &str, body: &[u8]) -> Result<Versionstamp, FormatError> {
    let text = String::from_utf8_lossy(body);
    let trimmed = text.trim();
    trimmed
        .to_ascii_lowercase()
        .parse::<Versionstamp>()
        .map_err(|_| FormatError::BadDifferential {
            object: object.to_string(),
            found: trimmed.chars().take(64).collect(),
        })
}

/// Value encodings, with the same numbers as KV Connect.
pub const ENCODING_V8: i64 = 1;
pub const ENCODING_LE64: i64 = 2;
pub const ENCODING_BYTES: i64 = 3;

fn check_encoding(object: &dyn fmt::Display, key: &[u8], encoding: i64) -> Result<(), FormatError> {
    if (ENCODING_V8..=ENCODING_BYTES).contains(&encoding) {
        Ok(())
    } else {
        Err(FormatError::corrupt(
            object,
            format!(
                "key {}: unknown value encoding {encoding}",
                hex::encode(key)
            ),
        ))
    }
}

/// Deno KV refuses keys longer than this, so no backup of a real database
/// holds one; a longer key in an object is corruption (or hostile input),
/// and would otherwise make the replica hold what no client can address.
pub const MAX_KEY_BYTES: usize = 2048;
/// Deno KV's limit on a value's encoded size; see [`MAX_KEY_BYTES`].
pub const MAX_VALUE_BYTES: usize = 65_536;

/// Refuses an entry whose key or value is larger than Deno KV allows.
fn check_sizes(object: &dyn fmt::Display, key: &[u8], value: &[u8]) -> Result<(), FormatError> {
    let short = |k: &[u8]| hex::encode(&k[..k.len().min(32)]);
    if key.len() > MAX_KEY_BYTES {
        return Err(FormatError::corrupt(
            object,
            format!(
                "key {}…: {} bytes, more than Deno KV's {MAX_KEY_BYTES}",
                short(key),
                key.len()
            ),
        ));
    }
    if value.len() > MAX_VALUE_BYTES {
        return Err(FormatError::corrupt(
            object,
            format!(
                "key {}: value of {} bytes, more than Deno KV's {MAX_VALUE_BYTES}",
                hex::encode(key),
                value.len()
            ),
        ));
    }
    Ok(())
}

/// Expiry as the Deno SQLite layout stores it: epoch ms, or -1 for none.
pub const NO_EXPIRY: i64 = -1;

/// One key's full record: what a snapshot holds and what a set writes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KvRecord {
    pub value: Vec<u8>,
    pub encoding: i64,
    pub versionstamp: Versionstamp,
    pub expire_at_ms: i64,
}

/// One key of a snapshot range.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnapshotEntry {
    pub key: Vec<u8>,
    pub record: KvRecord,
}

/// Decodes a snapshot range, checking that the data and metadata lists pair
/// up key by key.
pub fn decode_snapshot(
    name: &SnapshotName,
    body: &[u8],
) -> Result<Vec<SnapshotEntry>, FormatError> {
    let object = crate::backup::snapshot_key(name);
    SnapshotEntries::new(&object, Payload::Bytes(body)).collect()
}

/// The entries of a snapshot range, decoded one at a time from its payload
/// (which may be far larger than memory): the data list and the metadata
/// list are walked side by side, each pair checked as [`decode_snapshot`]
/// does. Stops after the first error.
pub struct SnapshotEntries<'a> {
    object: &'a str,
    data: wire::Fields<'a>,
    meta: wire::Fields<'a>,
    i: u64,
    done: bool,
}

impl<'a> SnapshotEntries<'a> {
    /// Walks `payload`, the body of the snapshot object named `object`.
    pub fn new(object: &'a str, payload: Payload<'a>) -> Self {
        SnapshotEntries {
            object,
            data: wire::Fields::new(payload, object),
            meta: wire::Fields::new(payload, object),
            i: 0,
            done: false,
        }
    }

    fn step(&mut self) -> Result<Option<SnapshotEntry>, FormatError> {
        let data = self.data.element(1)?;
        let meta = self.meta.element(2)?;
        let (data, meta) = match (data, meta) {
            (None, None) => return Ok(None),
            (Some(d), Some(m)) => (d, m),
            (d, m) => {
                let data_n = self.i + u64::from(d.is_some()) + self.data.count(1)?;
                let meta_n = self.i + u64::from(m.is_some()) + self.meta.count(2)?;
                return Err(FormatError::corrupt(
                    self.object,
                    format!("{data_n} data entries but {meta_n} metadata entries"),
                ));
            }
        };
        let i = self.i;
        self.i += 1;
        let pair =
            |b: Vec<u8>| BackupKvPair::decode(&b[..]).map_err(|e| self.data.error(e.to_string()));
        let (data, meta) = (pair(data)?, pair(meta)?);
        let object = self.object;
        let (Some((b'd', dkey)), Some((b'm', mkey))) =
            (data.key.split_first(), meta.key.split_first())
        else {
            return Err(FormatError::corrupt(
                object,
                format!("pair {i}: data key must start with 'd' and metadata key with 'm'"),
            ));
        };
        if dkey != mkey {
            return Err(FormatError::corrupt(
                object,
                format!(
                    "pair {i}: data key {} and metadata key {} differ",
                    hex::encode(dkey),
                    hex::encode(mkey)
                ),
            ));
        }
        check_sizes(&object, dkey, &data.value)?;
        let m = &meta.value;
        if m.len() != 11 && m.len() != 19 {
            return Err(FormatError::corrupt(
                object,
                format!(
                    "key {}: metadata is {} bytes, expected 11 or 19",
                    hex::encode(dkey),
                    m.len()
                ),
            ));
        }
        let versionstamp = Versionstamp(m[0..10].try_into().expect("10 bytes"));
        let encoding = i64::from(m[10]);
        check_encoding(&object, dkey, encoding)?;
        let expire_at_ms = if m.len() == 19 {
            let e = i64::from_le_bytes(m[11..19].try_into().expect("8 bytes"));
            if e < 0 {
                NO_EXPIRY
            } else {
                e
            }
        } else {
            NO_EXPIRY
        };
        Ok(Some(SnapshotEntry {
            key: dkey.to_vec(),
            record: KvRecord {
                value: data.value,
                encoding,
                versionstamp,
                expire_at_ms,
            },
        }))
    }
}

impl Iterator for SnapshotEntries<'_> {
    type Item = Result<SnapshotEntry, FormatError>;
    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        let r = self.step().transpose();
        self.done = !matches!(r, Some(Ok(_)));
        r
    }
}

/// One decoded log entry: a post-image (`Some`) or a delete (`None`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogEntry {
    pub stamp: LogStamp,
    pub key: Vec<u8>,
    pub record: Option<KvRecord>,
}

/// A decoded mutation-log object.
#[derive(Clone, Debug)]
pub struct LogBatch {
    pub name: LogName,
    /// Commit wall-clock time of this group of mutations (epoch ms).
    pub timestamp_ms: i64,
    /// Entries in strictly ascending stamp order.
    pub entries: Vec<LogEntry>,
}

/// Decodes a log object and checks its entries are in strictly ascending
/// stamp order and inside the stamp range its name announces.
pub fn decode_log(name: &LogName, body: &[u8]) -> Result<LogBatch, FormatError> {
    let object = crate::backup::log_key(name);
    let mut walk = LogEntries::new(name, &object, Payload::Bytes(body));
    let entries = walk.by_ref().collect::<Result<Vec<_>, _>>()?;
    Ok(LogBatch {
        name: *name,
        timestamp_ms: walk.timestamp_ms()?,
        entries,
    })
}

/// What [`check_log`] found in a log object.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LogSummary {
    /// Commit wall-clock time of the object's mutations (epoch ms).
    pub timestamp_ms: i64,
    /// Entries the object holds.
    pub entries: u64,
}

/// Checks a whole log object as [`decode_log`] does without keeping its
/// entries (a log object may hold millions of tiny ones, whose decoded
/// form is many times the object's size): the object can then be applied
/// entry by entry with [`LogEntries`], knowing it is sound.
pub fn check_log(name: &LogName, payload: Payload<'_>) -> Result<LogSummary, FormatError> {
    let object = crate::backup::log_key(name);
    let mut walk = LogEntries::new(name, &object, payload);
    let mut entries = 0;
    for e in walk.by_ref() {
        e?;
        entries += 1;
    }
    Ok(LogSummary {
        timestamp_ms: walk.timestamp_ms()?,
        entries,
    })
}

/// The entries of a log object, decoded one at a time from its payload.
/// Stops after the first error.
pub struct LogEntries<'a> {
    name: LogName,
    object: &'a str,
    fields: wire::Fields<'a>,
    timestamp: u64,
    prev: Option<LogStamp>,
    i: u64,
    done: bool,
}

impl<'a> LogEntries<'a> {
    /// Walks `payload`, the body of the log object `name` (named `object`
    /// in messages).
    pub fn new(name: &LogName, object: &'a str, payload: Payload<'a>) -> Self {
        LogEntries {
            name: *name,
            object,
            fields: wire::Fields::new(payload, object),
            timestamp: 0,
            prev: None,
            i: 0,
            done: false,
        }
    }

    /// The object's commit time, once every entry was read (the field may
    /// come after them).
    pub fn timestamp_ms(&self) -> Result<i64, FormatError> {
        i64::try_from(self.timestamp).map_err(|_| {
            FormatError::corrupt(
                self.object,
                format!("timestamp {} out of range", self.timestamp),
            )
        })
    }

    fn step(&mut self) -> Result<Option<LogEntry>, FormatError> {
        let body = loop {
            match self.fields.next(1)? {
                None => return Ok(None),
                Some((_, wire::Value::Bytes(b))) => break b,
                Some((2, wire::Value::Varint(t))) => self.timestamp = t,
                Some((1 | 2, _)) => return Err(self.fields.error("wrong wire type")),
                Some(_) => {}
            }
        };
        let e = BackupReplicationLogEntry::decode(&body[..])
            .map_err(|e| self.fields.error(e.to_string()))?;
        drop(body);
        let (name, object, i) = (&self.name, self.object, self.i);
        self.i += 1;
        let stamp = LogStamp::from_slice(&e.versionstamp).ok_or_else(|| {
            FormatError::corrupt(
                object,
                format!(
                    "entry {i}: versionstamp is {} bytes, expected 12",
                    e.versionstamp.len()
                ),
            )
        })?;
        if stamp < name.first || stamp > name.last {
            return Err(FormatError::corrupt(
                object,
                format!(
                    "entry {i}: stamp {stamp} outside the range {}..={} the object name announces",
                    name.first, name.last
                ),
            ));
        }
        if let Some(p) = self.prev {
            if stamp <= p {
                return Err(FormatError::corrupt(
                    object,
                    format!("entry {i}: stamp {stamp} is not after the previous stamp {p}"),
                ));
            }
        }
        self.prev = Some(stamp);
        check_sizes(&object, &e.key, &e.value)?;
        let kind = BackupKvMutationKind::try_from(e.kind).map_err(|_| {
            FormatError::corrupt(
                object,
                format!("entry {i}: unknown mutation kind {}", e.kind),
            )
        })?;
        let record = match kind {
            BackupKvMutationKind::MkClear => None,
            BackupKvMutationKind::MkSet
            | BackupKvMutationKind::MkSum
            | BackupKvMutationKind::MkMax
            | BackupKvMutationKind::MkMin => {
                let encoding = i64::from(e.value_encoding);
                check_encoding(&object, &e.key, encoding)?;
                // Deploy writes 0 for "no expiry" in log entries.
                let expire_at_ms = match i64::try_from(e.expire_at_ms) {
                    Ok(0) | Err(_) => NO_EXPIRY,
                    Ok(v) => v,
                };
                Some(KvRecord {
                    value: e.value,
                    encoding,
                    versionstamp: stamp.versionstamp(),
                    expire_at_ms,
                })
            }
            BackupKvMutationKind::MkUnspecified => {
                return Err(FormatError::corrupt(
                    object,
                    format!("entry {i}: mutation kind is unspecified"),
                ))
            }
        };
        Ok(Some(LogEntry {
            stamp,
            key: e.key,
            record,
        }))
    }
}

impl Iterator for LogEntries<'_> {
    type Item = Result<LogEntry, FormatError>;
    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        let r = self.step().transpose();
        self.done = !matches!(r, Some(Ok(_)));
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use denokv_proto::backup::{BackupMutationRange, BackupSnapshotRange};

    fn stamp(v: u64, idx: u16) -> LogStamp {
        let mut s = [0u8; 12];
        s[0..8].copy_from_slice(&v.to_be_bytes());
        s[10..12].copy_from_slice(&idx.to_be_bytes());
        LogStamp(s)
    }

    fn log_name(first: LogStamp, last: LogStamp) -> LogName {
        LogName {
            format: 1,
            monoseq: 7,
            first,
            last,
        }
    }

    fn entry(s: LogStamp, kind: BackupKvMutationKind) -> BackupReplicationLogEntry {
        BackupReplicationLogEntry {
            versionstamp: s.0.to_vec(),
            kind: kind as i32,
            key: b"\x02k\x00".to_vec(),
            value: b"v".to_vec(),
            value_encoding: 3,
            expire_at_ms: 0,
        }
    }

    fn log_body(entries: Vec<BackupReplicationLogEntry>) -> Vec<u8> {
        BackupMutationRange {
            entries,
            timestamp_ms: 1_700_000_000_000,
        }
        .encode_to_vec()
    }

    #[test]
    fn names_round_trip_in_both_formats() {
        for n in [
            "0001_0000000000003c27_0000000200ca388b0000ffff_0000000200ca62890000ffff",
            "0000000000000001_0000000000052073_000000020025137d00000000_0000000200254c6400000000",
        ] {
            let parsed: LogName = n.parse().unwrap();
            assert_eq!(parsed.to_string(), n);
        }
        let l: LogName =
            "0000000000000001_0000000000052073_000000020025137d00000000_0000000200254c6400000000"
                .parse()
                .unwrap();
        assert_eq!(l.format, 0);
        assert_eq!(l.monoseq, (1 << 32) | 0x52073);
        for n in [
            "0001_000000000000b2e2_0000000000000002",
            "0000000000000002_00000000000c4c8d_0000000000000000",
        ] {
            let parsed: SnapshotName = n.parse().unwrap();
            assert_eq!(parsed.to_string(), n);
        }
    }

    #[test]
    fn bad_names_are_rejected() {
        for n in [
            "",
            "garbage",
            "0002_0000000000000001_0000000000000000",
            "0001_000000000000001_0000000000000000",
            "0001_000000000000000g_0000000000000000",
            "0001_0000000000000001_0000000000000000_00",
            "001_0000000000000001_0000000000000000",
            "0000000100000000_0000000000000001_0000000000000000",
            "0001_000000000000000A_0000000000000000",
        ] {
            let err = n.parse::<SnapshotName>().unwrap_err();
            assert!(matches!(err, FormatError::BadName { .. }), "{n}: {err}");
            assert!(err.to_string().contains(n), "{err}");
        }
        for n in [
            "0001_0000000000000001_0000000200ca388b0000ffff",
            "0001_0000000000000001_0000000200ca388b0000ffff_0000000200ca388b0000fff",
            "0001_0000000000000002_0000000200ca388b0001ffff_0000000200ca388b0000ffff",
            "0001_0000000000000002_0000000200ca388b0000FFFF_0000000200ca388b0000ffff",
        ] {
            assert!(matches!(
                n.parse::<LogName>(),
                Err(FormatError::BadName { .. })
            ));
        }
    }

    #[test]
    fn differential_parses_with_whitespace_and_rejects_garbage() {
        assert_eq!(
            parse_differential("d", b" 0000000200d419d20000\n").unwrap(),
            "0000000200d419d20000".parse().unwrap()
        );
        for bad in [
            &b"0000000200d419d2000"[..],
            b"zz00000200d419d20000",
            b"",
            b"0000000200d419d200000",
        ] {
            let err = parse_differential("prefix/differential", bad).unwrap_err();
            assert!(err.to_string().contains("prefix/differential"));
        }
    }

    #[test]
    fn log_decodes_kinds_as_post_images() {
        let a = stamp(5, 0);
        let b = stamp(5, 0xffff);
        let name = log_name(a, b);
        let body = log_body(vec![
            entry(a, BackupKvMutationKind::MkSum),
            entry(b, BackupKvMutationKind::MkClear),
        ]);
        let batch = decode_log(&name, &body).unwrap();
        assert_eq!(batch.entries.len(), 2);
        assert_eq!(batch.entries[0].record.as_ref().unwrap().value, b"v");
        assert_eq!(
            batch.entries[0].record.as_ref().unwrap().expire_at_ms,
            NO_EXPIRY
        );
        assert!(batch.entries[1].record.is_none());
        assert!(batch.entries[1].stamp.is_commit_end());
        assert_eq!(batch.timestamp_ms, 1_700_000_000_000);
    }

    #[test]
    fn log_rejects_disorder_range_and_truncation() {
        let a = stamp(5, 0);
        let b = stamp(5, 0xffff);
        let name = log_name(a, b);
        // Out of order.
        let body = log_body(vec![
            entry(b, BackupKvMutationKind::MkSet),
            entry(a, BackupKvMutationKind::MkSet),
        ]);
        let err = decode_log(&name, &body).unwrap_err();
        assert!(err.to_string().contains("not after"), "{err}");
        assert!(err.to_string().contains(&name.to_string()));
        // Duplicate stamp.
        let body = log_body(vec![
            entry(a, BackupKvMutationKind::MkSet),
            entry(a, BackupKvMutationKind::MkSet),
        ]);
        assert!(decode_log(&name, &body).is_err());
        // Outside the named range.
        let body = log_body(vec![entry(stamp(6, 0xffff), BackupKvMutationKind::MkSet)]);
        let err = decode_log(&name, &body).unwrap_err();
        assert!(err.to_string().contains("outside"), "{err}");
        // Truncated protobuf.
        let body = log_body(vec![entry(a, BackupKvMutationKind::MkSet)]);
        let err = decode_log(&name, &body[..body.len() - 3]).unwrap_err();
        assert!(matches!(err, FormatError::BadProtobuf { .. }), "{err}");
        // Wrong stamp length.
        let mut e = entry(a, BackupKvMutationKind::MkSet);
        e.versionstamp.truncate(10);
        let err = decode_log(&name, &log_body(vec![e])).unwrap_err();
        assert!(err.to_string().contains("expected 12"), "{err}");
        // Unspecified kind and bad encoding.
        let err = decode_log(
            &name,
            &log_body(vec![entry(a, BackupKvMutationKind::MkUnspecified)]),
        )
        .unwrap_err();
        assert!(err.to_string().contains("unspecified"));
        let mut e = entry(a, BackupKvMutationKind::MkSet);
        e.value_encoding = 9;
        assert!(decode_log(&name, &log_body(vec![e])).is_err());
    }

    fn pair(prefix: u8, key: &[u8], value: &[u8]) -> BackupKvPair {
        let mut k = vec![prefix];
        k.extend_from_slice(key);
        BackupKvPair {
            key: k,
            value: value.to_vec(),
        }
    }

    fn meta(vs: u64, enc: u8, expiry: Option<i64>) -> Vec<u8> {
        let mut m = Versionstamp::from_parts(vs, 3).0.to_vec();
        m.push(enc);
        if let Some(e) = expiry {
            m.extend_from_slice(&e.to_le_bytes());
        }
        m
    }

    #[test]
    fn snapshot_decodes_pairs_with_metadata() {
        let name: SnapshotName = "0001_0000000000000001_0000000000000000".parse().unwrap();
        let body = BackupSnapshotRange {
            data_list: vec![pair(b'd', b"a", b"1"), pair(b'd', b"b", b"2")],
            metadata_list: vec![
                pair(b'm', b"a", &meta(9, 3, None)),
                pair(b'm', b"b", &meta(9, 2, Some(-1))),
            ],
        }
        .encode_to_vec();
        let entries = decode_snapshot(&name, &body).unwrap();
        assert_eq!(entries[0].key, b"a");
        assert_eq!(
            entries[0].record.versionstamp,
            Versionstamp::from_parts(9, 3)
        );
        assert_eq!(entries[1].record.encoding, 2);
        assert_eq!(entries[1].record.expire_at_ms, NO_EXPIRY);
        assert!(decode_snapshot(&name, &[]).unwrap().is_empty());
    }

    #[test]
    fn keys_and_values_over_deno_kv_limits_are_corrupt_input() {
        let name: SnapshotName = "0001_0000000000000001_0000000000000000".parse().unwrap();
        let snapshot = |key: &[u8], value: &[u8]| {
            let body = BackupSnapshotRange {
                data_list: vec![pair(b'd', key, value)],
                metadata_list: vec![pair(b'm', key, &meta(9, 3, None))],
            }
            .encode_to_vec();
            decode_snapshot(&name, &body)
        };
        let at_limit = (vec![b'k'; MAX_KEY_BYTES], vec![0u8; MAX_VALUE_BYTES]);
        assert!(snapshot(&at_limit.0, &at_limit.1).is_ok());
        let e = snapshot(&vec![b'k'; MAX_KEY_BYTES + 1], b"v").unwrap_err();
        assert!(
            e.to_string()
                .contains("2049 bytes, more than Deno KV's 2048"),
            "{e}"
        );
        assert!(
            e.to_string().contains("snapshots/"),
            "names the object: {e}"
        );
        let e = snapshot(b"k", &vec![0u8; MAX_VALUE_BYTES + 1]).unwrap_err();
        assert!(e.to_string().contains("value of 65537 bytes"), "{e}");

        let (a, b) = (stamp(9, 0), stamp(9, 0xffff));
        let log = |e: BackupReplicationLogEntry| decode_log(&log_name(a, b), &log_body(vec![e]));
        let mut big_key = entry(a, BackupKvMutationKind::MkSet);
        big_key.key = vec![b'k'; MAX_KEY_BYTES + 1];
        let e = log(big_key).unwrap_err();
        assert!(e.to_string().contains("more than Deno KV's 2048"), "{e}");
        assert!(e.to_string().contains("logs/"), "names the object: {e}");
        let mut big_value = entry(a, BackupKvMutationKind::MkSet);
        big_value.value = vec![0u8; MAX_VALUE_BYTES + 1];
        assert!(log(big_value)
            .unwrap_err()
            .to_string()
            .contains("value of 65537 bytes"));
        let mut at_limit_log = entry(a, BackupKvMutationKind::MkSet);
        at_limit_log.key = at_limit.0;
        at_limit_log.value = at_limit.1;
        assert!(log(at_limit_log).is_ok());
    }

    #[test]
    fn snapshot_rejects_mismatched_pairs_and_bad_metadata() {
        let name: SnapshotName = "0001_0000000000000001_0000000000000000".parse().unwrap();
        let cases: Vec<(BackupSnapshotRange, &str)> = vec![
            (
                BackupSnapshotRange {
                    data_list: vec![pair(b'd', b"a", b"1"), pair(b'd', b"b", b"1")],
                    metadata_list: vec![pair(b'm', b"a", &meta(1, 1, None))],
                },
                "2 data entries but 1 metadata",
            ),
            (
                BackupSnapshotRange {
                    data_list: vec![pair(b'd', b"a", b"1")],
                    metadata_list: vec![pair(b'm', b"b", &meta(1, 1, None))],
                },
                "differ",
            ),
            (
                BackupSnapshotRange {
                    data_list: vec![pair(b'x', b"a", b"1")],
                    metadata_list: vec![pair(b'm', b"a", &meta(1, 1, None))],
                },
                "must start with 'd'",
            ),
            (
                BackupSnapshotRange {
                    data_list: vec![pair(b'd', b"a", b"1")],
                    metadata_list: vec![pair(b'm', b"a", &[1, 2, 3])],
                },
                "metadata is 3 bytes",
            ),
            (
                BackupSnapshotRange {
                    data_list: vec![pair(b'd', b"a", b"1")],
                    metadata_list: vec![pair(b'm', b"a", &meta(1, 7, None))],
                },
                "unknown value encoding",
            ),
        ];
        for (range, want) in cases {
            let err = decode_snapshot(&name, &range.encode_to_vec()).unwrap_err();
            let msg = err.to_string();
            assert!(msg.contains(want), "{msg} should contain {want}");
            assert!(msg.contains(&name.to_string()), "{msg}");
        }
        let err = decode_snapshot(&name, b"\x0a\xff\xff").unwrap_err();
        assert!(matches!(err, FormatError::BadProtobuf { .. }));
    }

    #[test]
    fn versionstamp_parts_round_trip() {
        let v = Versionstamp::from_parts(0x0000_0002_00d4_19d2, 0x0102);
        assert_eq!(v.to_string(), "0000000200d419d20102");
        assert_eq!(v.version(), 0x0000_0002_00d4_19d2);
        assert_eq!(v.seq(), 0x0102);
        assert!(v.commit_end().is_commit_end());
        assert_eq!(v.commit_end().versionstamp(), v);
        assert!("0000000200d419d2010".parse::<Versionstamp>().is_err());
    }
}

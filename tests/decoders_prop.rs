//! Property tests of the bucket-format decoders, which read untrusted
//! input: object names, `differential`, snapshot ranges and mutation logs.
//!
//! Arbitrary, truncated and corrupted input never panics and is either
//! decoded or refused with an error naming the object; well-formed input
//! generated from random records decodes to exactly those records.
//!
//! Each property runs `PROPTEST_CASES` cases (256 by default), e.g.
//! `PROPTEST_CASES=100000 cargo test --release --test decoders_prop` for a
//! longer run.

use denokv_proto::backup::{
    BackupKvMutationKind, BackupKvPair, BackupMutationRange, BackupReplicationLogEntry,
    BackupSnapshotRange,
};
use kvreplica::format::{
    decode_log, decode_snapshot, parse_differential, FormatError, LogName, LogStamp, SnapshotName,
    Versionstamp, NO_EXPIRY,
};
use proptest::prelude::*;
use prost::Message;

fn config() -> ProptestConfig {
    ProptestConfig {
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// The object an error names, whatever its kind.
fn names(err: &FormatError, object: &str) -> bool {
    err.to_string().contains(object)
}

fn snapshot_name() -> SnapshotName {
    "0001_000000000000b2e2_0000000000000002".parse().unwrap()
}

fn stamp(version: u64, idx: u16) -> LogStamp {
    let mut s = [0u8; 12];
    s[0..8].copy_from_slice(&version.to_be_bytes());
    s[10..12].copy_from_slice(&idx.to_be_bytes());
    LogStamp(s)
}

/// A well-formed name of either format, as its parts.
fn name_parts() -> impl Strategy<Value = (u16, u64, u64, u64)> {
    // Format 0 writes the monoseq as a 32-bit epoch and a 32-bit tsn.
    (
        prop_oneof![Just(0u16), Just(1u16)],
        any::<u64>(),
        any::<u64>(),
        any::<u64>(),
    )
        .prop_map(|(format, monoseq, a, b)| (format, monoseq, a.min(b), a.max(b)))
}

fn head(format: u16, monoseq: u64) -> String {
    if format == 0 {
        format!("{:016x}_{:016x}", monoseq >> 32, monoseq & 0xffff_ffff)
    } else {
        format!("{format:04x}_{monoseq:016x}")
    }
}

/// One snapshot record: key, value, versionstamp, encoding, expiry
/// (`None`: the 11-byte metadata without one).
type SnapRec = (Vec<u8>, Vec<u8>, [u8; 10], u8, Option<i64>);

fn snap_rec() -> impl Strategy<Value = SnapRec> {
    (
        prop::collection::vec(any::<u8>(), 0..40),
        prop::collection::vec(any::<u8>(), 0..100),
        any::<[u8; 10]>(),
        1u8..=3,
        prop::option::of(any::<i64>()),
    )
}

fn snapshot_body(recs: &[SnapRec]) -> Vec<u8> {
    let mut range = BackupSnapshotRange::default();
    for (key, value, vs, enc, exp) in recs {
        let mut dkey = vec![b'd'];
        dkey.extend_from_slice(key);
        let mut mkey = vec![b'm'];
        mkey.extend_from_slice(key);
        let mut meta = vs.to_vec();
        meta.push(*enc);
        if let Some(e) = exp {
            meta.extend_from_slice(&e.to_le_bytes());
        }
        range.data_list.push(BackupKvPair {
            key: dkey,
            value: value.clone(),
        });
        range.metadata_list.push(BackupKvPair {
            key: mkey,
            value: meta,
        });
    }
    range.encode_to_vec()
}

/// One log entry: stamp (version, index), kind, key, value, encoding,
/// expiry.
type LogRec = ((u64, u16), i32, Vec<u8>, Vec<u8>, i32, u64);

fn log_rec() -> impl Strategy<Value = LogRec> {
    (
        (0u64..50, prop_oneof![Just(0xffffu16), 0u16..4]),
        1i32..=5,
        prop::collection::vec(any::<u8>(), 0..30),
        prop::collection::vec(any::<u8>(), 0..60),
        1i32..=3,
        prop_oneof![Just(0u64), any::<u64>()],
    )
}

fn log_body(recs: &[LogRec], timestamp_ms: u64) -> Vec<u8> {
    BackupMutationRange {
        entries: recs
            .iter()
            .map(
                |((v, i), kind, key, value, enc, exp)| BackupReplicationLogEntry {
                    versionstamp: stamp(*v, *i).0.to_vec(),
                    kind: *kind,
                    key: key.clone(),
                    value: value.clone(),
                    value_encoding: *enc,
                    expire_at_ms: *exp,
                },
            )
            .collect(),
        timestamp_ms,
    }
    .encode_to_vec()
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn any_text_as_a_name_is_parsed_or_refused(s in "\\PC{0,80}|[0-9a-fA-F_]{0,80}") {
        match s.parse::<SnapshotName>() {
            Ok(n) => prop_assert_eq!(n.to_string().parse::<SnapshotName>().unwrap(), n),
            Err(e) => prop_assert!(matches!(e, FormatError::BadName { .. }), "{}", e),
        }
        match s.parse::<LogName>() {
            Ok(n) => {
                prop_assert!(n.first <= n.last);
                prop_assert_eq!(n.to_string().parse::<LogName>().unwrap(), n);
            }
            Err(e) => prop_assert!(matches!(e, FormatError::BadName { .. }), "{}", e),
        }
    }

    #[test]
    fn well_formed_names_round_trip((format, monoseq, a, b) in name_parts(), seq in any::<u64>()) {
        let name = format!("{}_{seq:016x}", head(format, monoseq));
        let n: SnapshotName = name.parse().unwrap();
        prop_assert_eq!((n.format, n.monoseq, n.seq), (format, monoseq, seq));
        prop_assert_eq!(n.to_string(), name);

        let (first, last) = (stamp(a, (a % 7) as u16), stamp(b, 0xffff));
        let name = format!("{}_{first}_{last}", head(format, monoseq));
        let n: LogName = name.parse().unwrap();
        prop_assert_eq!((n.format, n.monoseq, n.first, n.last), (format, monoseq, first, last));
        prop_assert_eq!(n.to_string(), name);
        // Swapped stamps name no range.
        if first != last {
            let swapped = format!("{}_{last}_{first}", head(format, monoseq));
            prop_assert!(swapped.parse::<LogName>().is_err());
        }
    }

    #[test]
    fn one_changed_character_never_panics(
        (format, monoseq, a, b) in name_parts(),
        at in any::<prop::sample::Index>(),
        c in any::<char>(),
    ) {
        let name = format!("{}_{}_{}", head(format, monoseq), stamp(a, 1), stamp(b, 2));
        let i = at.index(name.len());
        let mut changed: String = name.chars().take(i).collect();
        changed.push(c);
        changed.extend(name.chars().skip(i + 1));
        let _ = changed.parse::<LogName>();
        let _ = changed.parse::<SnapshotName>();
    }

    #[test]
    fn differential_is_parsed_or_refused_naming_the_object(body in prop::collection::vec(any::<u8>(), 0..200)) {
        match parse_differential("prefix/differential", &body) {
            Ok(v) => prop_assert_eq!(v.to_string().len(), 20),
            Err(e) => {
                prop_assert!(names(&e, "prefix/differential"), "{}", e);
                if let FormatError::BadDifferential { found, .. } = &e {
                    prop_assert!(found.chars().count() <= 64, "the error quotes at most 64 characters");
                }
            }
        }
    }

    #[test]
    fn differential_tolerates_white_space_and_case(
        vs in any::<[u8; 10]>(),
        pre in "[ \t\r\n]{0,4}",
        post in "[ \t\r\n]{0,4}",
        upper in any::<bool>(),
    ) {
        let mut hex = hex::encode(vs);
        if upper {
            hex = hex.to_uppercase();
        }
        let body = format!("{pre}{hex}{post}");
        prop_assert_eq!(parse_differential("d", body.as_bytes()).unwrap(), Versionstamp(vs));
    }

    #[test]
    fn arbitrary_bytes_never_panic_the_object_decoders(body in prop::collection::vec(any::<u8>(), 0..4096)) {
        if let Err(e) = decode_snapshot(&snapshot_name(), &body) {
            prop_assert!(names(&e, "snapshots/0001_000000000000b2e2_0000000000000002.bin"), "{}", e);
        }
        let name: LogName = format!("0001_0000000000000007_{}_{}", stamp(0, 0), stamp(u64::MAX, 0xffff))
            .parse()
            .unwrap();
        if let Err(e) = decode_log(&name, &body) {
            prop_assert!(names(&e, &format!("logs/{name}.bin")), "{}", e);
        }
    }

    #[test]
    fn snapshots_decode_to_their_records(recs in prop::collection::vec(snap_rec(), 0..20)) {
        let body = snapshot_body(&recs);
        let out = decode_snapshot(&snapshot_name(), &body).unwrap();
        prop_assert_eq!(out.len(), recs.len());
        for (got, (key, value, vs, enc, exp)) in out.iter().zip(&recs) {
            prop_assert_eq!(&got.key, key);
            prop_assert_eq!(&got.record.value, value);
            prop_assert_eq!(got.record.versionstamp, Versionstamp(*vs));
            prop_assert_eq!(got.record.encoding, i64::from(*enc));
            let want = match exp {
                Some(e) if *e >= 0 => *e,
                _ => NO_EXPIRY,
            };
            prop_assert_eq!(got.record.expire_at_ms, want);
        }
    }

    #[test]
    fn damaged_snapshots_never_panic(
        recs in prop::collection::vec(snap_rec(), 1..10),
        cut in any::<prop::sample::Index>(),
        flip in any::<(prop::sample::Index, u8)>(),
        bad_encoding in 4u8..=255,
    ) {
        let body = snapshot_body(&recs);
        let _ = decode_snapshot(&snapshot_name(), &body[..cut.index(body.len())]);
        let mut flipped = body.clone();
        let i = flip.0.index(flipped.len());
        flipped[i] ^= flip.1 | 1;
        let _ = decode_snapshot(&snapshot_name(), &flipped);
        // An unknown encoding, a key that does not pair up, a metadata
        // list of another length: refused.
        let mut bad = recs.clone();
        bad[0].3 = bad_encoding;
        prop_assert!(decode_snapshot(&snapshot_name(), &snapshot_body(&bad)).is_err());
        let mut range = BackupSnapshotRange::decode(&body[..]).unwrap();
        range.metadata_list[0].key.push(0);
        prop_assert!(decode_snapshot(&snapshot_name(), &range.encode_to_vec()).is_err());
        range.metadata_list.pop();
        prop_assert!(decode_snapshot(&snapshot_name(), &range.encode_to_vec()).is_err());
    }

    #[test]
    fn logs_decode_in_order_or_are_refused(
        recs in prop::collection::vec(log_rec(), 0..20),
        timestamp_ms in prop_oneof![0u64..=i64::MAX as u64, any::<u64>()],
    ) {
        let name: LogName = format!("0001_0000000000000007_{}_{}", stamp(0, 0), stamp(49, 0xffff))
            .parse()
            .unwrap();
        let body = log_body(&recs, timestamp_ms);
        let stamps: Vec<LogStamp> = recs.iter().map(|((v, i), ..)| stamp(*v, *i)).collect();
        let ordered = stamps.windows(2).all(|w| w[0] < w[1]);
        let timestamp_ok = i64::try_from(timestamp_ms).is_ok();
        match decode_log(&name, &body) {
            Ok(batch) => {
                prop_assert!(ordered && timestamp_ok);
                prop_assert_eq!(batch.timestamp_ms as u64, timestamp_ms);
                prop_assert_eq!(batch.entries.len(), recs.len());
                for (e, ((v, i), kind, key, value, enc, exp)) in batch.entries.iter().zip(&recs) {
                    prop_assert_eq!(e.stamp, stamp(*v, *i));
                    prop_assert_eq!(&e.key, key);
                    if *kind == BackupKvMutationKind::MkClear as i32 {
                        prop_assert!(e.record.is_none());
                    } else {
                        let r = e.record.as_ref().unwrap();
                        prop_assert_eq!(&r.value, value);
                        prop_assert_eq!(r.encoding, i64::from(*enc));
                        prop_assert_eq!(r.versionstamp, e.stamp.versionstamp());
                        let want = match i64::try_from(*exp) {
                            Ok(0) | Err(_) => NO_EXPIRY,
                            Ok(x) => x,
                        };
                        prop_assert_eq!(r.expire_at_ms, want);
                    }
                }
            }
            Err(e) => {
                prop_assert!(!(ordered && timestamp_ok), "refused a well-formed log: {}", e);
                prop_assert!(names(&e, &format!("logs/{name}.bin")), "{}", e);
            }
        }
        // Entries outside the stamps the name announces are refused.
        if !recs.is_empty() {
            let narrow: LogName = format!("0001_0000000000000007_{}_{}", stamp(50, 0), stamp(60, 0xffff))
                .parse()
                .unwrap();
            prop_assert!(decode_log(&narrow, &body).is_err());
        }
    }

    #[test]
    fn damaged_logs_never_panic(
        recs in prop::collection::vec(log_rec(), 1..10),
        cut in any::<prop::sample::Index>(),
        flip in any::<(prop::sample::Index, u8)>(),
        kind in prop_oneof![Just(0i32), 6i32..1000, Just(-1)],
        encoding in prop_oneof![Just(0i32), 4i32..1000, Just(-1)],
    ) {
        let name: LogName = format!("0001_0000000000000007_{}_{}", stamp(0, 0), stamp(49, 0xffff))
            .parse()
            .unwrap();
        let mut recs = recs;
        recs.sort_by_key(|r| r.0);
        recs.dedup_by_key(|r| r.0);
        let body = log_body(&recs, 1_700_000_000_000);
        let _ = decode_log(&name, &body[..cut.index(body.len())]);
        let mut flipped = body.clone();
        let i = flip.0.index(flipped.len());
        flipped[i] ^= flip.1 | 1;
        let _ = decode_log(&name, &flipped);
        // An unknown or unspecified kind, or a set with an unknown
        // encoding: refused.
        let mut bad = recs.clone();
        bad[0].1 = kind;
        prop_assert!(decode_log(&name, &log_body(&bad, 1)).is_err());
        let mut bad = recs.clone();
        bad[0].1 = BackupKvMutationKind::MkSet as i32;
        bad[0].4 = encoding;
        prop_assert!(decode_log(&name, &log_body(&bad, 1)).is_err());
    }
}

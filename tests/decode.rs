//! The decoding layer (`kvreplica::decode`): every kind of value and key
//! part written by the real Deno CLI into a local KV file decodes to the
//! form the script computed for it; keys round-trip through their JSON
//! form; arbitrary bytes never panic and always give JSON.

mod common;
#[path = "common/same_json.rs"]
mod same_json;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use kvreplica::decode::{decode_value, key_from_json, key_to_json, parse_key, ValueEncoding};
use proptest::prelude::*;
use same_json::same;
use serde_json::{json, Value};

#[test]
fn every_kind_the_deno_cli_writes_decodes_to_its_documented_form() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("kinds.sqlite");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/common/v8_kinds.js");
    let mut cmd = Command::new(common::serve::deno_bin());
    cmd.args(["run", "--unstable-kv", "-A"])
        .arg(&script)
        .arg(&file);
    let out = common::serve::Script::start("deno v8_kinds.js", cmd).wait(Duration::from_secs(120));
    let summary = out.assert_success();
    let expected = summary["entries"].as_array().unwrap();

    let conn =
        rusqlite::Connection::open_with_flags(&file, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .unwrap();
    let mut stmt = conn
        .prepare("select k, v, v_encoding from kv order by k")
        .unwrap();
    let rows: Vec<(Vec<u8>, Vec<u8>, i64)> = stmt
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(rows.len(), expected.len(), "one row per value written");
    let mut failures = Vec::new();
    for (k, v, enc) in rows {
        let key = key_to_json(&k).unwrap_or_else(|e| panic!("key {}: {e}", hex::encode(&k)));
        // Numbers as doubles: the script prints `-1e300` where the
        // decoder prints `-1e+300`.
        let Some(want) = expected
            .iter()
            .find(|e| same(&e["key"], &key))
            .map(|e| &e["value"])
        else {
            failures.push(format!(
                "key {key} ({}) was not written by the script",
                hex::encode(&k)
            ));
            continue;
        };
        assert_eq!(
            key_from_json(&key).unwrap(),
            k,
            "key {key} encodes back to its bytes"
        );
        let text = decode_value(ValueEncoding::from_column(enc), &v);
        let got: Value = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("{key}: decoded value is not JSON ({e}): {text}"));
        if !same(&got, want) {
            failures.push(format!("{key}:\n   want {want}\n   got  {got}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// A key part in its JSON form, any type.
fn key_part() -> impl Strategy<Value = Value> {
    prop_oneof![
        ".*".prop_map(Value::String),
        any::<bool>().prop_map(Value::Bool),
        any::<f64>().prop_map(|f| match serde_json::Number::from_f64(f) {
            Some(n) => Value::Number(n),
            None if f.is_nan() => json!({"number": "NaN"}),
            None if f > 0.0 => json!({"number": "Infinity"}),
            None => json!({"number": "-Infinity"}),
        }),
        any::<i128>().prop_map(|n| json!({"bigint": n.to_string()})),
        proptest::collection::vec(any::<u8>(), 0..20)
            .prop_map(|b| json!({"bytes": hex::encode(b)})),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 500, ..ProptestConfig::default() })]

    #[test]
    fn keys_round_trip_through_their_json_form(parts in proptest::collection::vec(key_part(), 0..6)) {
        let key = Value::Array(parts);
        let bytes = parse_key(&key.to_string()).unwrap();
        let back = key_to_json(&bytes).unwrap();
        prop_assert_eq!(&back, &key);
        prop_assert_eq!(key_from_json(&back).unwrap(), bytes);
    }

    #[test]
    fn arbitrary_key_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
        if let Ok(key) = key_to_json(&bytes) {
            // Whatever decodes encodes again and decodes to the same parts.
            let again = key_from_json(&key).unwrap();
            prop_assert_eq!(key_to_json(&again).unwrap(), key);
        }
    }

    #[test]
    fn arbitrary_value_bytes_never_panic_and_give_json(
        encoding in 0i64..5,
        v8_header in any::<bool>(),
        tail in proptest::collection::vec(any::<u8>(), 0..96),
    ) {
        let mut bytes = if v8_header { vec![0xff, 0x0f] } else { Vec::new() };
        bytes.extend(tail);
        let text = decode_value(ValueEncoding::from_column(encoding), &bytes);
        let v: Value = serde_json::from_str(&text)
            .map_err(|e| TestCaseError::fail(format!("{e}: {text}")))?;
        if v.get("$type") == Some(&json!("undecodable")) {
            prop_assert_eq!(&v["bytes"], &json!(hex::encode(&bytes)));
            prop_assert!(v["reason"].as_str().is_some_and(|r| !r.is_empty()));
        }
    }
}

//! Keys: Deno KV's tuple encoding (the bytes in the `kv` table's `k`
//! column) to a JSON array of typed parts, and a user's JSON key back to
//! bytes.
//!
//! The byte codec itself is `denokv_proto`'s (`decode_key`/`encode_key`,
//! the one the Deno CLI's SQLite backend uses), so keys sort and compare
//! exactly as in Deno. This file owns only the JSON form:
//!
//! | part        | JSON                                   |
//! |-------------|----------------------------------------|
//! | string      | `"users"`                              |
//! | boolean     | `true` / `false`                       |
//! | number      | `42.5` (NaN/±Infinity: `{"number": "NaN"}`, `"Infinity"`, `"-Infinity"`) |
//! | bigint      | `{"bigint": "42"}`                     |
//! | Uint8Array  | `{"bytes": "<hex>"}`                   |
//!
//! A plain JSON number is always a JS number (as `42` is in Deno); a bigint
//! key part (`42n` in Deno) is written `{"bigint": "42"}`.

use denokv_proto::{Key, KeyPart};
use serde_json::{Map, Number, Value};

/// Why a key does not decode, or a user's key does not parse.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// Bytes that are not a tuple-encoded key.
    #[error("not a Deno KV key: {0}")]
    Encoding(String),
    /// A JSON key that does not follow the documented syntax.
    #[error("invalid key {text}: {reason}; keys are JSON arrays such as [\"users\", 42, true, {{\"bigint\": \"7\"}}, {{\"bytes\": \"00ff\"}}]")]
    Syntax { text: String, reason: String },
}

/// The JSON array of `bytes`' parts (see the module docs for the form).
pub fn key_to_json(bytes: &[u8]) -> Result<Value, KeyError> {
    let key = denokv_proto::decode_key(bytes).map_err(|e| KeyError::Encoding(e.to_string()))?;
    Ok(Value::Array(key.0.iter().map(part_to_json).collect()))
}

fn part_to_json(part: &KeyPart) -> Value {
    let tagged = |tag: &str, v: String| {
        let mut m = Map::new();
        m.insert(tag.to_owned(), Value::String(v));
        Value::Object(m)
    };
    match part {
        KeyPart::String(s) => Value::String(s.clone()),
        KeyPart::True => Value::Bool(true),
        KeyPart::False => Value::Bool(false),
        KeyPart::Int(n) => tagged("bigint", n.to_string()),
        KeyPart::Bytes(b) => tagged("bytes", hex::encode(b)),
        KeyPart::Float(f) => match Number::from_f64(*f) {
            Some(n) => Value::Number(n),
            None => tagged("number", non_finite_name(*f).to_owned()),
        },
    }
}

fn non_finite_name(f: f64) -> &'static str {
    if f.is_nan() {
        "NaN"
    } else if f > 0.0 {
        "Infinity"
    } else {
        "-Infinity"
    }
}

/// The tuple-encoded bytes of a key given in the JSON form (the text a
/// user types for `--prefix`), e.g. `["users", {"bigint": "42"}]`.
pub fn parse_key(text: &str) -> Result<Vec<u8>, KeyError> {
    let syntax = |reason: String| KeyError::Syntax {
        text: text.to_owned(),
        reason,
    };
    let value: Value =
        serde_json::from_str(&exact_numbers(text)).map_err(|e| syntax(e.to_string()))?;
    key_from_json(&value).map_err(|e| match e {
        KeyError::Syntax { reason, .. } => syntax(reason),
        e => e,
    })
}

/// The keys of `text`: one key (`["users"]`) or a JSON array of keys
/// (`[["users"], ["orders", 1]]`), told apart by the first element (a key
/// part is never an array). For settings that take several keys in one
/// string (an environment variable).
pub fn parse_keys(text: &str) -> Result<Vec<Vec<u8>>, KeyError> {
    let syntax = |reason: String| KeyError::Syntax {
        text: text.to_owned(),
        reason,
    };
    let value: Value =
        serde_json::from_str(&exact_numbers(text)).map_err(|e| syntax(e.to_string()))?;
    match &value {
        Value::Array(items) if items.first().is_some_and(Value::is_array) => {
            items.iter().map(key_from_json).collect()
        }
        _ => key_from_json(&value).map(|k| vec![k]),
    }
}

/// `text` with every number token outside strings turned into
/// `{"number": "<token>"}`, read later by Rust's exact `f64` parser:
/// serde_json's own float parsing (without its `float_roundtrip` feature)
/// can be one bit off, and a key one bit off is another key.
fn exact_numbers(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 16);
    let mut chars = text.chars().peekable();
    let (mut in_string, mut escaped) = (false, false);
    while let Some(c) = chars.next() {
        if in_string {
            out.push(c);
            match (escaped, c) {
                (true, _) => escaped = false,
                (false, '\\') => escaped = true,
                (false, '"') => in_string = false,
                _ => {}
            }
        } else if c == '-' || c.is_ascii_digit() {
            let mut token = String::from(c);
            while let Some(&d) = chars.peek() {
                if !matches!(d, '0'..='9' | '.' | 'e' | 'E' | '+' | '-') {
                    break;
                }
                token.push(d);
                chars.next();
            }
            out += &format!(r#"{{"number":"{token}"}}"#);
        } else {
            in_string = c == '"';
            out.push(c);
        }
    }
    out
}

/// The tuple-encoded bytes of a key in the JSON form (see [`parse_key`]).
pub fn key_from_json(value: &Value) -> Result<Vec<u8>, KeyError> {
    let syntax = |reason: String| KeyError::Syntax {
        text: value.to_string(),
        reason,
    };
    let Value::Array(parts) = value else {
        return Err(syntax("a key is a JSON array of parts".into()));
    };
    let parts = parts
        .iter()
        .enumerate()
        .map(|(i, p)| part_from_json(p).map_err(|r| syntax(format!("part {i} ({p}): {r}"))))
        .collect::<Result<Vec<_>, _>>()?;
    denokv_proto::encode_key(&Key(parts)).map_err(|e| syntax(e.to_string()))
}

fn part_from_json(part: &Value) -> Result<KeyPart, String> {
    Ok(match part {
        Value::String(s) => KeyPart::String(s.clone()),
        Value::Bool(true) => KeyPart::True,
        Value::Bool(false) => KeyPart::False,
        Value::Number(n) => KeyPart::Float(n.as_f64().ok_or("a number out of range")?),
        Value::Object(m) if m.len() == 1 => {
            let (tag, v) = m.iter().next().expect("one entry");
            let Value::String(v) = v else {
                return Err(format!("the value of {tag:?} must be a string"));
            };
            match tag.as_str() {
                "bigint" => KeyPart::Int(
                    v.parse()
                        .map_err(|e| format!("{v:?} is not a decimal integer ({e})"))?,
                ),
                "bytes" => {
                    KeyPart::Bytes(hex::decode(v).map_err(|e| format!("{v:?} is not hex ({e})"))?)
                }
                "number" => KeyPart::Float(match v.as_str() {
                    "NaN" => f64::NAN,
                    "Infinity" => f64::INFINITY,
                    "-Infinity" => f64::NEG_INFINITY,
                    v => v.parse().map_err(|_| {
                        format!("{v:?} is not a number (a JSON number, NaN, Infinity or -Infinity)")
                    })?,
                }),
                _ => return Err(format!("unknown tag {tag:?} (bigint, bytes or number)")),
            }
        }
        _ => {
            return Err(
                "a part is a string, number, boolean, {\"bigint\": \"…\"}, {\"bytes\": \"<hex>\"} \
                 or {\"number\": \"NaN\"}"
                    .into(),
            )
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_reads_as_typed_parts_and_back() {
        let text = r#"["users",42.5,true,false,{"bigint":"-123456789012345678901234567890"},{"bytes":"00ff"},{"number":"-Infinity"}]"#;
        let bytes = parse_key(text).unwrap();
        assert_eq!(bytes[0], 0x02, "a string part starts with 0x02");
        assert_eq!(key_to_json(&bytes).unwrap().to_string(), text);
    }

    #[test]
    fn one_key_or_a_list_of_keys() {
        let users = parse_key(r#"["users"]"#).unwrap();
        let half = parse_key("[0.1]").unwrap();
        assert_eq!(parse_keys(r#"["users"]"#).unwrap(), vec![users.clone()]);
        assert_eq!(
            parse_keys(r#"[["users"], [0.1]]"#).unwrap(),
            vec![users, half]
        );
        assert!(parse_keys(r#"[["users"], "x"]"#).is_err());
    }

    #[test]
    fn a_bad_key_names_what_is_wrong() {
        let e = parse_key(r#"["a", {"bigint": "x"}]"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("part 1") && e.contains("decimal integer"), "{e}");
        let e = parse_key(r#"{"a": 1}"#).unwrap_err().to_string();
        assert!(e.contains("JSON array"), "{e}");
        assert!(
            key_to_json(&[0x02, b'a']).is_err(),
            "an unterminated string"
        );
    }
}

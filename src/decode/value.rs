//! Values: the `kv` table's `v` column, by its `v_encoding`, to JSON text.
//!
//! Encoding 1 (V8-serialized, what `kv.set` writes for any JS value) is
//! parsed by the Deno authors' `v8_valueserializer`; encoding 2 is a
//! `Deno.KvU64` (8 bytes, little-endian); encoding 3 a `Uint8Array`.
//!
//! What JSON can say is plain JSON (objects keep their property order).
//! Everything else is an object with a `"$type"` member (README, "Export
//! the data", lists them all):
//! `undefined`, `number` (NaN, ±Infinity, -0), `bigint`, `date`,
//! `regexp`, `map`, `set`, `arraybuffer`, `typedarray`, `sparse` (arrays
//! with holes or extra properties), `error`, `boxed` (`new Number(1)`…),
//! `object` (a plain object that has its own `$type` property, so it can
//! not be mistaken for a tag), `string` (a string with lone surrogates),
//! `u64`, `bytes`, `shared`/`ref` (an object reached more than once, or a
//! cycle) and `undecodable` (raw bytes and the reason, never dropped).

use std::collections::{HashMap, HashSet};
use std::fmt::Write;

use v8_valueserializer::{
    ArrayBufferViewKind, Heap, HeapReference, HeapValue, PropertyKey, StringValue, Value,
    ValueDeserializer,
};

/// The `v_encoding` column: how a value's bytes are to be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ValueEncoding {
    /// 1: a V8-serialized JS value.
    V8,
    /// 2: a `Deno.KvU64`, 8 bytes little-endian.
    U64,
    /// 3: a `Uint8Array`'s bytes.
    Bytes,
    /// Any other number: exported as raw bytes with the reason.
    Unknown(i64),
}

impl ValueEncoding {
    /// The encoding of a `v_encoding` column value.
    pub fn from_column(n: i64) -> Self {
        match n {
            1 => Self::V8,
            2 => Self::U64,
            3 => Self::Bytes,
            n => Self::Unknown(n),
        }
    }

    /// The name exported next to the value: `v8`, `u64`, `bytes` or the number.
    pub fn name(self) -> String {
        match self {
            Self::V8 => "v8".into(),
            Self::U64 => "u64".into(),
            Self::Bytes => "bytes".into(),
            Self::Unknown(n) => n.to_string(),
        }
    }
}

/// The JSON text of a stored value. Never fails and never panics: bytes
/// that do not decode come out as `{"$type": "undecodable", "encoding":
/// …, "bytes": "<hex>", "reason": "…"}`, so an export loses nothing.
pub fn decode_value(encoding: ValueEncoding, bytes: &[u8]) -> String {
    let result = match encoding {
        ValueEncoding::V8 => decode_v8(bytes),
        ValueEncoding::U64 => match <[u8; 8]>::try_from(bytes) {
            Ok(b) => Ok(format!(
                r#"{{"$type":"u64","value":"{}"}}"#,
                u64::from_le_bytes(b)
            )),
            Err(_) => Err(format!("a KvU64 is 8 bytes, this one {}", bytes.len())),
        },
        ValueEncoding::Bytes => Ok(format!(
            r#"{{"$type":"bytes","hex":"{}"}}"#,
            hex::encode(bytes)
        )),
        ValueEncoding::Unknown(n) => Err(format!("unknown value encoding {n}")),
    };
    result.unwrap_or_else(|reason| {
        let mut out = String::new();
        write!(
            out,
            r#"{{"$type":"undecodable","encoding":{},"bytes":"{}","reason":"#,
            json_str(&encoding.name()),
            hex::encode(bytes)
        )
        .expect("write to a String");
        out += &json_str(&reason);
        out.push('}');
        out
    })
}

/// The V8 format version written by current V8 (the Deno CLI 2.x and
/// Deploy): `v8_valueserializer` 0.1.1 reads up to 15.
const V8_VERSION_16: [u8; 2] = [0xff, 0x10];

fn decode_v8(bytes: &[u8]) -> Result<String, String> {
    // Version 16 differs from 15 only in writing ArrayBuffer and view
    // lengths and offsets as 64-bit varints instead of 32-bit ones: the
    // same bytes for any value below 4 GiB (a KV value is at most 64 KiB),
    // and one above fails the 32-bit read as an undecodable value. So a
    // version-16 value is read as 15; any other version is left to the
    // parser (which names it when it cannot).
    let patched;
    let bytes = match bytes.strip_prefix(&V8_VERSION_16) {
        Some(rest) => {
            patched = [&[0xff, 0x0f], rest].concat();
            &patched[..]
        }
        None => bytes,
    };
    // The parser is a third-party crate fed bytes from a bucket: a panic
    // in it must become an undecodable value, not a dead export.
    std::panic::catch_unwind(|| {
        let (value, heap) = ValueDeserializer::default()
            .read(bytes)
            .map_err(|e| format!("not a V8-serialized value: {e}"))?;
        let mut w = Writer::new(&heap);
        w.count(&value);
        w.value(&value)?;
        Ok(w.out)
    })
    .unwrap_or_else(|_| Err("the V8 value parser failed on these bytes".into()))
}

/// Writes one value as JSON text, heap objects reached twice as
/// `shared`/`ref` pairs.
struct Writer<'h> {
    heap: &'h Heap,
    /// How many times each heap object is referenced (counted up to 2).
    seen: HashMap<HeapReference, u8>,
    /// Ids of the objects written once already (or being written).
    ids: HashMap<HeapReference, usize>,
    out: String,
}

impl<'h> Writer<'h> {
    fn new(heap: &'h Heap) -> Self {
        Writer {
            heap,
            seen: HashMap::new(),
            ids: HashMap::new(),
            out: String::new(),
        }
    }

    fn open(&self, r: &HeapReference) -> Result<&'h HeapValue, String> {
        r.try_open(self.heap)
            .ok_or_else(|| "a reference to a missing object".to_owned())
    }

    /// Counts references, iteratively (a deep value cannot overflow the stack).
    fn count(&mut self, root: &Value) {
        let mut stack = vec![root.clone()];
        let mut walked = HashSet::new();
        while let Some(v) = stack.pop() {
            let Value::HeapReference(r) = v else { continue };
            let n = self.seen.entry(r).or_insert(0);
            *n = (*n + 1).min(2);
            if !walked.insert(r) {
                continue;
            }
            let Some(h) = r.try_open(self.heap) else {
                continue;
            };
            match h {
                HeapValue::Object(o) => stack.extend(o.properties.iter().map(|(_, v)| v.clone())),
                HeapValue::DenseArray(a) => {
                    stack.extend(a.elements.iter().flatten().cloned());
                    stack.extend(a.properties.iter().map(|(_, v)| v.clone()));
                }
                HeapValue::SparseArray(a) => {
                    stack.extend(a.properties.iter().map(|(_, v)| v.clone()))
                }
                HeapValue::Map(m) => {
                    for (k, v) in &m.entries {
                        stack.push(k.clone());
                        stack.push(v.clone());
                    }
                }
                HeapValue::Set(s) => stack.extend(s.values.iter().cloned()),
                HeapValue::ArrayBufferView(v) => stack.push(Value::HeapReference(v.buffer)),
                HeapValue::Error(e) => stack.extend(e.cause.iter().cloned()),
                _ => {}
            }
        }
    }

    fn value(&mut self, v: &Value) -> Result<(), String> {
        match v {
            Value::Undefined => self.out += r#"{"$type":"undefined"}"#,
            Value::Null => self.out += "null",
            Value::Bool(b) => write!(self.out, "{b}").expect("write"),
            Value::I32(n) => write!(self.out, "{n}").expect("write"),
            Value::U32(n) => write!(self.out, "{n}").expect("write"),
            Value::Double(d) => self.number(*d),
            Value::BigInt(n) => {
                write!(self.out, r#"{{"$type":"bigint","value":"{n}"}}"#).expect("write")
            }
            Value::String(s) => self.string(s),
            Value::HeapReference(r) => self.reference(r)?,
        }
        Ok(())
    }

    fn number(&mut self, d: f64) {
        let special = if d.is_nan() {
            "NaN"
        } else if d == f64::INFINITY {
            "Infinity"
        } else if d == f64::NEG_INFINITY {
            "-Infinity"
        } else if d == 0.0 && d.is_sign_negative() {
            "-0"
        } else {
            if d.fract() == 0.0 && d.abs() < 9_007_199_254_740_992.0 {
                write!(self.out, "{}", d as i64).expect("write");
            } else {
                self.out += &serde_json::Number::from_f64(d).expect("finite").to_string();
            }
            return;
        };
        write!(self.out, r#"{{"$type":"number","value":"{special}"}}"#).expect("write");
    }

    fn string(&mut self, s: &StringValue) {
        match s {
            StringValue::TwoByte(t) => match String::from_utf16(t.as_bytes()) {
                Ok(s) => self.out += &json_str(&s),
                Err(_) => {
                    // Lone surrogates: JSON text cannot carry them losslessly.
                    let units: Vec<String> = t.as_bytes().iter().map(|u| u.to_string()).collect();
                    write!(
                        self.out,
                        r#"{{"$type":"string","utf16":[{}]}}"#,
                        units.join(",")
                    )
                    .expect("write");
                }
            },
            s => self.out += &json_str(&s.to_string()),
        }
    }

    fn key(&mut self, k: &PropertyKey) {
        match k {
            PropertyKey::I32(n) => self.out += &json_str(&n.to_string()),
            PropertyKey::U32(n) => self.out += &json_str(&n.to_string()),
            PropertyKey::Double(d) => self.out += &json_str(&d.to_string()),
            PropertyKey::String(s) => match s {
                StringValue::TwoByte(_) => self.string(s),
                s => self.out += &json_str(&s.to_string()),
            },
        }
    }

    fn key_text(k: &PropertyKey) -> String {
        match k {
            PropertyKey::String(s) => s.to_string().into_owned(),
            PropertyKey::I32(n) => n.to_string(),
            PropertyKey::U32(n) => n.to_string(),
            PropertyKey::Double(d) => d.to_string(),
        }
    }

    /// `[[key, value], …]`
    fn pairs(&mut self, props: &[(PropertyKey, Value)]) -> Result<(), String> {
        self.out.push('[');
        for (i, (k, v)) in props.iter().enumerate() {
            if i > 0 {
                self.out.push(',');
            }
            self.out.push('[');
            self.key(k);
            self.out.push(',');
            self.value(v)?;
            self.out.push(']');
        }
        self.out.push(']');
        Ok(())
    }

    fn list<'a>(&mut self, values: impl Iterator<Item = &'a Value>) -> Result<(), String> {
        self.out.push('[');
        for (i, v) in values.enumerate() {
            if i > 0 {
                self.out.push(',');
            }
            self.value(v)?;
        }
        self.out.push(']');
        Ok(())
    }

    fn reference(&mut self, r: &HeapReference) -> Result<(), String> {
        if let Some(id) = self.ids.get(r) {
            write!(self.out, r#"{{"$type":"ref","id":{id}}}"#).expect("write");
            return Ok(());
        }
        let shared = self.seen.get(r).copied().unwrap_or(0) > 1;
        if shared {
            let id = self.ids.len();
            self.ids.insert(*r, id);
            write!(self.out, r#"{{"$type":"shared","id":{id},"value":"#).expect("write");
        }
        self.heap_value(self.open(r)?)?;
        if shared {
            self.out.push('}');
        }
        Ok(())
    }

    fn heap_value(&mut self, h: &HeapValue) -> Result<(), String> {
        match h {
            HeapValue::BooleanObject(b) => {
                write!(self.out, r#"{{"$type":"boxed","value":{b}}}"#).expect("write")
            }
            HeapValue::NumberObject(d) => {
                self.out += r#"{"$type":"boxed","value":"#;
                self.number(*d);
                self.out.push('}');
            }
            HeapValue::BigIntObject(n) => write!(
                self.out,
                r#"{{"$type":"boxed","value":{{"$type":"bigint","value":"{n}"}}}}"#
            )
            .expect("write"),
            HeapValue::StringObject(s) => {
                self.out += r#"{"$type":"boxed","value":"#;
                self.string(s);
                self.out.push('}');
            }
            HeapValue::RegExp(re) => {
                self.out += r#"{"$type":"regexp","source":"#;
                self.string(&re.pattern);
                write!(
                    self.out,
                    r#","flags":{}}}"#,
                    json_str(&regexp_flags(re.flags))
                )
                .expect("write");
            }
            HeapValue::Date(d) => match d.ms_since_epoch() {
                Some(ms) => {
                    let iso = chrono::DateTime::from_timestamp_millis(ms)
                        .map(|t| t.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string());
                    write!(
                        self.out,
                        r#"{{"$type":"date","ms":{ms},"iso":{}}}"#,
                        iso.map_or("null".into(), |s| json_str(&s))
                    )
                    .expect("write")
                }
                None => self.out += r#"{"$type":"date","ms":null,"iso":null}"#,
            },
            HeapValue::Object(o) => {
                let tag_like = o
                    .properties
                    .iter()
                    .any(|(k, _)| Self::key_text(k) == "$type");
                if tag_like {
                    self.out += r#"{"$type":"object","properties":"#;
                    self.pairs(&o.properties)?;
                    self.out.push('}');
                } else {
                    self.out.push('{');
                    for (i, (k, v)) in o.properties.iter().enumerate() {
                        if i > 0 {
                            self.out.push(',');
                        }
                        self.out += &json_str(&Self::key_text(k));
                        self.out.push(':');
                        self.value(v)?;
                    }
                    self.out.push('}');
                }
            }
            HeapValue::DenseArray(a) => {
                if a.properties.is_empty() && a.elements.iter().all(Option::is_some) {
                    self.list(a.elements.iter().flatten())?;
                } else {
                    write!(
                        self.out,
                        r#"{{"$type":"sparse","length":{},"properties":"#,
                        a.elements.len()
                    )
                    .expect("write");
                    let mut props: Vec<(PropertyKey, Value)> = a
                        .elements
                        .iter()
                        .enumerate()
                        .filter_map(|(i, e)| Some((PropertyKey::U32(i as u32), e.clone()?)))
                        .collect();
                    props.extend(a.properties.iter().cloned());
                    self.pairs(&props)?;
                    self.out.push('}');
                }
            }
            HeapValue::SparseArray(a) => {
                write!(
                    self.out,
                    r#"{{"$type":"sparse","length":{},"properties":"#,
                    a.length
                )
                .expect("write");
                self.pairs(&a.properties)?;
                self.out.push('}');
            }
            HeapValue::Map(m) => {
                self.out += r#"{"$type":"map","entries":["#;
                for (i, (k, v)) in m.entries.iter().enumerate() {
                    if i > 0 {
                        self.out.push(',');
                    }
                    self.out.push('[');
                    self.value(k)?;
                    self.out.push(',');
                    self.value(v)?;
                    self.out.push(']');
                }
                self.out += "]}";
            }
            HeapValue::Set(s) => {
                self.out += r#"{"$type":"set","values":"#;
                self.list(s.values.iter())?;
                self.out.push('}');
            }
            HeapValue::ArrayBuffer(b) => write!(
                self.out,
                r#"{{"$type":"arraybuffer","hex":"{}"}}"#,
                hex::encode(b.as_u8_slice())
            )
            .expect("write"),
            HeapValue::ArrayBufferView(v) => {
                let HeapValue::ArrayBuffer(b) = self.open(&v.buffer)? else {
                    return Err("a typed array over something not an ArrayBuffer".into());
                };
                let bytes = b.as_u8_slice();
                let width = v.kind.byte_width() as usize;
                let start = v.byte_offset as usize;
                let len = if v.is_length_tracking {
                    bytes.len().saturating_sub(start) / width * width
                } else {
                    v.length as usize
                        * if v.kind == ArrayBufferViewKind::DataView {
                            1
                        } else {
                            width
                        }
                };
                let slice = bytes
                    .get(start..start.saturating_add(len))
                    .ok_or("a typed array outside its buffer")?;
                write!(
                    self.out,
                    r#"{{"$type":"typedarray","kind":"{}","hex":"{}"}}"#,
                    v.kind,
                    hex::encode(slice)
                )
                .expect("write");
            }
            HeapValue::Error(e) => {
                write!(self.out, r#"{{"$type":"error","name":"{}""#, e.name).expect("write");
                if let Some(m) = &e.message {
                    self.out += r#","message":"#;
                    self.string(m);
                }
                if let Some(s) = &e.stack {
                    self.out += r#","stack":"#;
                    self.string(s);
                }
                if let Some(c) = &e.cause {
                    self.out += r#","cause":"#;
                    self.value(c)?;
                }
                self.out.push('}');
            }
        }
        Ok(())
    }
}

fn regexp_flags(f: v8_valueserializer::RegExpFlags) -> String {
    use v8_valueserializer::RegExpFlags as F;
    // In the order JS's `RegExp.prototype.flags` gives them.
    [
        (F::HAS_INDICES, 'd'),
        (F::GLOBAL, 'g'),
        (F::IGNORE_CASE, 'i'),
        (F::MULTILINE, 'm'),
        (F::DOT_ALL, 's'),
        (F::UNICODE, 'u'),
        (F::UNICODE_SETS, 'v'),
        (F::STICKY, 'y'),
    ]
    .iter()
    .filter(|(bit, _)| f.contains(*bit))
    .map(|(_, c)| *c)
    .collect()
}

fn json_str(s: &str) -> String {
    serde_json::to_string(s).expect("a string serializes")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn u64_bytes_and_unknown_encodings() {
        let v = decode_value(ValueEncoding::U64, &7u64.to_le_bytes());
        assert_eq!(v, r#"{"$type":"u64","value":"7"}"#);
        let v = decode_value(ValueEncoding::Bytes, &[0, 255]);
        assert_eq!(v, r#"{"$type":"bytes","hex":"00ff"}"#);
        let v: serde_json::Value =
            serde_json::from_str(&decode_value(ValueEncoding::U64, &[1, 2])).unwrap();
        assert_eq!(v["$type"], "undecodable");
        assert_eq!(v["bytes"], "0102");
        let v: serde_json::Value =
            serde_json::from_str(&decode_value(ValueEncoding::from_column(9), &[1])).unwrap();
        assert_eq!(v["reason"], "unknown value encoding 9");
    }
}

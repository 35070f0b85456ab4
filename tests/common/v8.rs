//! The subset of V8's value serialization format that Deno KV values use,
//! in both directions: the fixture writer encodes values with it, and the
//! comparisons decode stored values back to JSON to check them against
//! expected contents made by a generator outside this repo.
//!
//! Decoded JSON follows the fixtures' conventions: bigints become
//! `{"$bigint": "<decimal>"}`, everything else maps to the obvious JSON value
//! (numbers as f64, `undefined` as `null`).

#![allow(dead_code)]

use serde_json::{Map, Number, Value};

const VERSION: u8 = 15;

/// A JS value the writer can produce.
#[derive(Clone, Debug, PartialEq)]
pub enum Js {
    Null,
    Undefined,
    Bool(bool),
    Int(i32),
    Num(f64),
    BigInt(i128),
    Str(String),
    Array(Vec<Js>),
    Object(Vec<(String, Js)>),
}

impl Js {
    /// The JSON the decoder gives for the encoded value.
    pub fn to_json(&self) -> Value {
        match self {
            Js::Null | Js::Undefined => Value::Null,
            Js::Bool(b) => Value::Bool(*b),
            Js::Int(i) => num(f64::from(*i)),
            Js::Num(f) => num(*f),
            Js::BigInt(b) => bigint_json(&b.to_string()),
            Js::Str(s) => Value::String(s.clone()),
            Js::Array(a) => Value::Array(a.iter().map(Js::to_json).collect()),
            Js::Object(o) => {
                Value::Object(o.iter().map(|(k, v)| (k.clone(), v.to_json())).collect())
            }
        }
    }
}

fn num(f: f64) -> Value {
    Number::from_f64(f)
        .map(Value::Number)
        .unwrap_or(Value::Null)
}

fn bigint_json(decimal: &str) -> Value {
    let mut m = Map::new();
    m.insert("$bigint".into(), Value::String(decimal.into()));
    Value::Object(m)
}

/// Serializes `v` the way `Deno.KvU64`-free KV values are stored (encoding 1).
pub fn encode(v: &Js) -> Vec<u8> {
    let mut out = vec![0xFF, VERSION];
    write_value(&mut out, v);
    out
}

fn varint(out: &mut Vec<u8>, mut n: u64) {
    loop {
        let b = (n & 0x7F) as u8;
        n >>= 7;
        if n == 0 {
            out.push(b);
            return;
        }
        out.push(b | 0x80);
    }
}

fn write_string(out: &mut Vec<u8>, s: &str) {
    if s.chars().all(|c| (c as u32) < 256) {
        out.push(b'"');
        varint(out, s.chars().count() as u64);
        out.extend(s.chars().map(|c| c as u8));
    } else {
        let units: Vec<u16> = s.encode_utf16().collect();
        // Two-byte strings are aligned so that the payload starts at an even
        // offset; V8 pads with a zero byte before the tag when needed.
        let len_bytes = {
            let mut tmp = Vec::new();
            varint(&mut tmp, units.len() as u64 * 2);
            tmp.len()
        };
        if !(out.len() + 1 + len_bytes).is_multiple_of(2) {
            out.push(0);
        }
        out.push(b'c');
        varint(out, units.len() as u64 * 2);
        for u in units {
            out.extend(u.to_le_bytes());
        }
    }
}

fn write_value(out: &mut Vec<u8>, v: &Js) {
    match v {
        Js::Null => out.push(b'0'),
        Js::Undefined => out.push(b'_'),
        Js::Bool(true) => out.push(b'T'),
        Js::Bool(false) => out.push(b'F'),
        Js::Int(i) => {
            out.push(b'I');
            varint(out, ((i << 1) ^ (i >> 31)) as u32 as u64);
        }
        Js::Num(f) => {
            out.push(b'N');
            out.extend(f.to_le_bytes());
        }
        Js::BigInt(b) => {
            out.push(b'Z');
            let mag = b.unsigned_abs();
            let mut digits = mag.to_le_bytes().to_vec();
            while digits.len() > 8 && digits[digits.len() - 8..].iter().all(|&d| d == 0) {
                digits.truncate(digits.len() - 8);
            }
            if mag == 0 {
                digits.clear();
            }
            let bitfield = (digits.len() as u64) << 1 | u64::from(*b < 0);
            varint(out, bitfield);
            out.extend(digits);
        }
        Js::Str(s) => write_string(out, s),
        Js::Array(items) => {
            out.push(b'A');
            varint(out, items.len() as u64);
            for i in items {
                write_value(out, i);
            }
            out.push(b'$');
            varint(out, 0);
            varint(out, items.len() as u64);
        }
        Js::Object(props) => {
            out.push(b'o');
            for (k, v) in props {
                write_string(out, k);
                write_value(out, v);
            }
            out.push(b'{');
            varint(out, props.len() as u64);
        }
    }
}

/// Decodes a V8-serialized value to JSON (see the module doc).
pub fn decode(bytes: &[u8]) -> Result<Value, String> {
    let mut r = Reader { b: bytes, pos: 0 };
    r.skip_padding();
    if r.byte()? != 0xFF {
        return Err("missing version header".into());
    }
    r.varint()?;
    let v = r.value()?;
    r.skip_padding();
    if r.pos != bytes.len() {
        return Err(format!("{} trailing bytes", bytes.len() - r.pos));
    }
    Ok(v)
}

struct Reader<'a> {
    b: &'a [u8],
    pos: usize,
}

enum Item {
    Value(Value),
    EndObject,
    EndDense,
    EndSparse,
    Hole,
}

impl Reader<'_> {
    fn byte(&mut self) -> Result<u8, String> {
        let b = *self.b.get(self.pos).ok_or("truncated")?;
        self.pos += 1;
        Ok(b)
    }

    fn take(&mut self, n: usize) -> Result<&[u8], String> {
        let end = self.pos.checked_add(n).ok_or("length overflow")?;
        let s = self.b.get(self.pos..end).ok_or("truncated")?;
        self.pos = end;
        Ok(s)
    }

    fn varint(&mut self) -> Result<u64, String> {
        let mut n = 0u64;
        for shift in (0..64).step_by(7) {
            let b = self.byte()?;
            n |= u64::from(b & 0x7F) << shift;
            if b & 0x80 == 0 {
                return Ok(n);
            }
        }
        Err("varint too long".into())
    }

    fn skip_padding(&mut self) {
        while self.b.get(self.pos) == Some(&0) {
            self.pos += 1;
        }
    }

    fn value(&mut self) -> Result<Value, String> {
        match self.item()? {
            Item::Value(v) => Ok(v),
            _ => Err(format!("unexpected end marker at {}", self.pos)),
        }
    }

    fn key(&mut self) -> Result<Option<String>, String> {
        Ok(match self.item()? {
            Item::Value(Value::String(s)) => Some(s),
            Item::Value(Value::Number(n)) => Some(n.to_string()),
            Item::EndObject | Item::EndDense | Item::EndSparse => None,
            _ => return Err("bad property key".into()),
        })
    }

    fn item(&mut self) -> Result<Item, String> {
        self.skip_padding();
        let tag = self.byte()?;
        Ok(Item::Value(match tag {
            b'0' | b'_' => Value::Null,
            b'T' => Value::Bool(true),
            b'F' => Value::Bool(false),
            b'I' => {
                let z = self.varint()? as u32;
                let i = ((z >> 1) as i32) ^ -((z & 1) as i32);
                num(f64::from(i))
            }
            b'U' => num(self.varint()? as f64),
            b'N' => {
                let d = f64::from_le_bytes(self.take(8)?.try_into().expect("8"));
                num(d)
            }
            b'Z' => {
                let bitfield = self.varint()?;
                let len = usize::try_from(bitfield >> 1).map_err(|_| "bigint length")?;
                let digits = self.take(len)?.to_vec();
                let mag = decimal(digits);
                let s = if bitfield & 1 == 1 && mag != "0" {
                    format!("-{mag}")
                } else {
                    mag
                };
                bigint_json(&s)
            }
            b'"' => {
                let n = self.varint()? as usize;
                Value::String(self.take(n)?.iter().map(|&c| c as char).collect())
            }
            b'S' => {
                let n = self.varint()? as usize;
                Value::String(String::from_utf8(self.take(n)?.to_vec()).map_err(|e| e.to_string())?)
            }
            b'c' => {
                let n = self.varint()? as usize;
                let units: Vec<u16> = self
                    .take(n)?
                    .chunks_exact(2)
                    .map(|c| u16::from_le_bytes([c[0], c[1]]))
                    .collect();
                Value::String(String::from_utf16(&units).map_err(|e| e.to_string())?)
            }
            b'o' => {
                let mut m = Map::new();
                while let Some(k) = self.key()? {
                    let v = self.value()?;
                    m.insert(k, v);
                }
                self.varint()?;
                Value::Object(m)
            }
            b'A' => {
                let len = self.varint()? as usize;
                let mut items = Vec::with_capacity(len.min(1 << 16));
                for _ in 0..len {
                    match self.item()? {
                        Item::Value(v) => items.push(v),
                        Item::Hole => items.push(Value::Null),
                        _ => return Err("dense array ended early".into()),
                    }
                }
                // Extra named properties are not used by KV values.
                match self.item()? {
                    Item::EndDense => {}
                    _ => return Err("dense array has extra properties".into()),
                }
                self.varint()?;
                self.varint()?;
                Value::Array(items)
            }
            b'a' => {
                let len = self.varint()? as usize;
                let mut items = vec![Value::Null; len.min(1 << 16)];
                while let Some(k) = self.key()? {
                    let v = self.value()?;
                    let i: usize = k.parse().map_err(|_| "sparse array key")?;
                    if i < items.len() {
                        items[i] = v;
                    }
                }
                self.varint()?;
                self.varint()?;
                Value::Array(items)
            }
            b'{' => return Ok(Item::EndObject),
            b'$' => return Ok(Item::EndDense),
            b'@' => return Ok(Item::EndSparse),
            b'-' => return Ok(Item::Hole),
            t => return Err(format!("unsupported V8 tag 0x{t:02x} at {}", self.pos - 1)),
        }))
    }
}

/// Little-endian magnitude bytes to decimal, by repeated division.
fn decimal(mut le: Vec<u8>) -> String {
    let mut out = Vec::new();
    while le.last() == Some(&0) {
        le.pop();
    }
    while !le.is_empty() {
        let mut rem = 0u32;
        for d in le.iter_mut().rev() {
            let cur = (rem << 8) | u32::from(*d);
            *d = (cur / 10) as u8;
            rem = cur % 10;
        }
        out.push(b'0' + rem as u8);
        while le.last() == Some(&0) {
            le.pop();
        }
    }
    if out.is_empty() {
        out.push(b'0');
    }
    out.reverse();
    String::from_utf8(out).expect("digits")
}

#[test]
fn round_trips_the_writer_subset() {
    let v = Js::Object(vec![
        ("a".into(), Js::Int(-5)),
        ("ü日本".into(), Js::Str("emoji 😀".into())),
        ("n".into(), Js::Num(0.25)),
        (
            "l".into(),
            Js::Array(vec![Js::Bool(true), Js::Null, Js::BigInt(-(1i128 << 70))]),
        ),
    ]);
    assert_eq!(decode(&encode(&v)).unwrap(), v.to_json());
}

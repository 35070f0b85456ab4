//! JSON equality with numbers compared as doubles, for tests that compare
//! a decoded export with JSON some other program printed (`1e21` against
//! `1000000000000000000000`, `-1e300` against `-1e+300`, `0` against `0.0`).
//! Included by path (`#[path = "common/same_json.rs"]`) by the tests that
//! use it.

use serde_json::Value;

/// Whether `a` and `b` are the same JSON, numbers compared as `f64`.
pub fn same(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x.as_f64() == y.as_f64(),
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(a, b)| same(a, b))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len() && x.iter().all(|(k, v)| y.get(k).is_some_and(|w| same(v, w)))
        }
        _ => a == b,
    }
}

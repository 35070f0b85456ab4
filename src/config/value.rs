//! A setting's value whatever its type, parsed from a string (environment,
//! flags) or a TOML value, checked against its [`Kind`], and written back
//! for `check-config` and `--help`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use toml::de::DeValue;

use super::table::{setting, Kind, Setting};
use super::{ConfigError, LogFormat, Origin, Secret};
use crate::source::SourceUrl;
use crate::sync::OnReexport;

/// A secret given as a value or as a file to read it from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum SecretInput {
    Value(Secret),
    File(PathBuf),
}

/// Access tokens given as values or as a file with one per line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum TokensInput {
    Values(Vec<Secret>),
    File(PathBuf),
}

/// One setting's value. `Debug` shows no secret ([`Secret`] redacts).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Value {
    Text(String),
    Path(PathBuf),
    Bool(bool),
    Count(u64),
    Duration(Duration),
    Addr(SocketAddr),
    Source(SourceUrl),
    Format(LogFormat),
    OnReexport(OnReexport),
    Secret(SecretInput),
    Tokens(TokensInput),
    /// Tuple-encoded key prefixes (see [`crate::store::KeyFilter`]).
    Prefixes(Vec<Vec<u8>>),
}

/// A bad-value error for `key`.
pub(super) fn bad(key: &Setting, origin: &Origin, reason: impl Into<String>) -> ConfigError {
    ConfigError::BadValue {
        key: key.name.to_string(),
        origin: origin.clone(),
        reason: reason.into(),
    }
}

/// Parses `raw` (an environment variable or a flag) as a value of `key`.
pub(super) fn parse(
    key: &'static Setting,
    raw: &str,
    origin: &Origin,
) -> Result<Value, ConfigError> {
    let fail = |reason: String| Err(bad(key, origin, reason));
    Ok(match key.kind {
        Kind::Text | Kind::LogLevel => Value::Text(raw.to_string()),
        Kind::Path | Kind::KeyFile => Value::Path(PathBuf::from(raw)),
        Kind::Bool => match raw.trim().to_ascii_lowercase().as_str() {
            "true" | "1" | "yes" | "on" => Value::Bool(true),
            "false" | "0" | "no" | "off" => Value::Bool(false),
            _ => return fail(format!("{raw:?} is not a boolean: write true or false")),
        },
        Kind::Count { .. } => match raw.trim().parse::<u64>() {
            Ok(n) => Value::Count(n),
            Err(_) => return fail(format!("{raw:?} is not a whole number")),
        },
        // humantime's own reason ("expected number at 0") is left out: it
        // reads as a parser's, not as advice.
        Kind::Duration { .. } => match humantime::parse_duration(raw.trim()) {
            Ok(d) => Value::Duration(d),
            Err(_) => {
                return fail(format!(
                    "{raw:?} is not a duration: write a number and a unit, e.g. \"1s\", \"250ms\", \"7d\""
                ))
            }
        },
        Kind::Addr => match addr(raw.trim()) {
            Ok(a) => Value::Addr(a),
            Err(reason) => return fail(reason),
        },
        Kind::Source => match SourceUrl::parse(raw.trim()) {
            Ok(u) => Value::Source(u),
            Err(e) => return fail(e.to_string()),
        },
        Kind::LogFormat => match raw.parse::<LogFormat>() {
            Ok(f) => Value::Format(f),
            Err(e) => return fail(e),
        },
        Kind::OnReexport => match raw.parse::<OnReexport>() {
            Ok(p) => Value::OnReexport(p),
            Err(e) => return fail(e),
        },
        Kind::Secret => Value::Secret(SecretInput::Value(Secret::new(raw))),
        Kind::Tokens => Value::Tokens(TokensInput::Values(vec![Secret::new(raw)])),
        Kind::Prefixes => match crate::store::parse_prefixes(raw) {
            Ok(p) => Value::Prefixes(p),
            Err(e) => return fail(e),
        },
        Kind::FileOf { of } => match setting(of).kind {
            Kind::Tokens => Value::Tokens(TokensInput::File(PathBuf::from(raw))),
            _ => Value::Secret(SecretInput::File(PathBuf::from(raw))),
        },
    })
}

/// The address forms, for errors.
const ADDR_FORMS: &str = "write IP:PORT, HOST:PORT or :PORT, e.g. \"127.0.0.1:4512\", \
     \"[::1]:4512\", \"localhost:4512\" or \":4512\" (every IPv4 interface)";

/// A listener address: `IP:PORT` (`[IPv6]:PORT`), `HOST:PORT` or `:PORT`.
///
/// `:PORT` is Go's `net.Listen` shorthand for "every interface" (denokv
/// takes only `IP:PORT`); here it is `0.0.0.0:PORT`, every IPv4
/// interface, as the default `server.addr` (denokv's `0.0.0.0:4512`);
/// `[::]:PORT` adds IPv6. A host name is resolved when the settings are
/// read, and the listener binds one of its addresses, IPv4 first (as Go
/// does): `localhost:4512` is `127.0.0.1:4512`.
fn addr(raw: &str) -> Result<SocketAddr, String> {
    use std::net::ToSocketAddrs;
    if let Ok(a) = raw.parse::<SocketAddr>() {
        return Ok(a);
    }
    let not = || format!("{raw:?} is not an address: {ADDR_FORMS}");
    let (host, port) = raw.rsplit_once(':').ok_or_else(not)?;
    let port: u16 = port
        .parse()
        .map_err(|_| format!("{raw:?}: {port:?} is not a port (0 to 65535); {ADDR_FORMS}"))?;
    if host.is_empty() {
        return Ok(SocketAddr::from(([0, 0, 0, 0], port)));
    }
    if host.contains([':', '[', ']', '/']) || host.chars().any(char::is_whitespace) {
        return Err(not());
    }
    let found: Vec<SocketAddr> = (host, port)
        .to_socket_addrs()
        .map_err(|e| format!("{raw:?}: cannot resolve the host name {host:?} ({e}); {ADDR_FORMS}"))?
        .collect();
    found
        .iter()
        .find(|a| a.is_ipv4())
        .or(found.first())
        .copied()
        .ok_or_else(|| format!("{raw:?}: the host name {host:?} has no address; {ADDR_FORMS}"))
}

/// A TOML type, as errors name it.
fn toml_type(v: &DeValue<'_>) -> &'static str {
    match v {
        DeValue::String(_) => "a string",
        DeValue::Integer(_) => "an integer",
        DeValue::Float(_) => "a float",
        DeValue::Boolean(_) => "a boolean",
        DeValue::Datetime(_) => "a datetime",
        DeValue::Array(_) => "an array",
        DeValue::Table(_) => "a table",
    }
}

/// A type error; it names the types only, never the value (which may be a
/// secret).
pub(super) fn wrong_type(
    key: &str,
    origin: &Origin,
    found: &DeValue<'_>,
    expected: &str,
) -> ConfigError {
    ConfigError::BadValue {
        key: key.to_string(),
        origin: origin.clone(),
        reason: format!("{} where {expected} is expected", toml_type(found)),
    }
}

/// Converts a TOML value of the config file into a value of `key`.
pub(super) fn from_toml(
    key: &'static Setting,
    v: &DeValue<'_>,
    origin: &Origin,
) -> Result<Value, ConfigError> {
    match (key.kind, v) {
        (Kind::Bool, DeValue::Boolean(b)) => Ok(Value::Bool(*b)),
        (Kind::Bool, _) => Err(wrong_type(key.name, origin, v, "a boolean")),
        (Kind::Count { .. }, DeValue::Integer(i)) => {
            match i64::from_str_radix(i.as_str(), i.radix()) {
                Ok(n) if n < 0 => Err(bad(key, origin, format!("{n} is negative"))),
                Ok(n) => Ok(Value::Count(n as u64)),
                Err(_) => Err(bad(key, origin, format!("{i} is out of range"))),
            }
        }
        (Kind::Count { .. }, _) => Err(wrong_type(key.name, origin, v, "an integer")),
        (Kind::Tokens, DeValue::Array(items)) => {
            let mut tokens = Vec::new();
            for item in items {
                match item.get_ref() {
                    DeValue::String(s) => tokens.push(Secret::new(s.as_ref())),
                    other => return Err(wrong_type(key.name, origin, other, "a string")),
                }
            }
            Ok(Value::Tokens(TokensInput::Values(tokens)))
        }
        (Kind::Tokens, _) => Err(wrong_type(key.name, origin, v, "an array")),
        (Kind::Prefixes, DeValue::Array(items)) => {
            let mut prefixes = Vec::new();
            for item in items {
                match item.get_ref() {
                    DeValue::String(s) => match crate::store::parse_prefixes(s) {
                        Ok(p) => prefixes.extend(p),
                        Err(e) => return Err(bad(key, origin, e)),
                    },
                    DeValue::Array(_) => {
                        let json = toml_to_json(item.get_ref())
                            .and_then(|j| crate::store::prefix_from_json(&j));
                        prefixes.push(json.map_err(|e| bad(key, origin, e))?);
                    }
                    other => {
                        return Err(wrong_type(
                            key.name,
                            origin,
                            other,
                            "a key (a TOML array such as [\"users\", 42] or a JSON string)",
                        ))
                    }
                }
            }
            Ok(Value::Prefixes(prefixes))
        }
        (_, DeValue::String(s)) => parse(key, s, origin),
        (_, _) => Err(wrong_type(key.name, origin, v, "a string")),
    }
}

/// A key written as a TOML array (`["orders", { bigint = "42" }]`) as the
/// JSON form of [`crate::decode`]: strings, numbers, booleans, and inline
/// tables for the tagged parts.
fn toml_to_json(v: &DeValue<'_>) -> Result<serde_json::Value, String> {
    use serde_json::Value as J;
    Ok(match v {
        DeValue::String(s) => J::String(s.to_string()),
        DeValue::Boolean(b) => J::Bool(*b),
        DeValue::Integer(i) => {
            let n = i64::from_str_radix(i.as_str(), i.radix())
                .map_err(|_| format!("{i} is out of range"))?;
            J::from(n as f64)
        }
        DeValue::Float(f) => {
            let x: f64 = f
                .as_str()
                .replace('_', "")
                .parse()
                .map_err(|_| format!("{} is not a number key part", f.as_str()))?;
            serde_json::Number::from_f64(x)
                .map(J::Number)
                .unwrap_or_else(|| serde_json::json!({ "number": x.to_string() }))
        }
        DeValue::Array(items) => J::Array(
            items
                .iter()
                .map(|i| toml_to_json(i.get_ref()))
                .collect::<Result<_, _>>()?,
        ),
        DeValue::Table(t) => J::Object(
            t.iter()
                .map(|(k, v)| Ok((k.get_ref().to_string(), toml_to_json(v.get_ref())?)))
                .collect::<Result<_, String>>()?,
        ),
        DeValue::Datetime(d) => return Err(format!("{d} is a datetime, not a key part")),
    })
}

/// Checks the range (or form) of a value `given_as` (a setting or its
/// file form) holds.
pub(super) fn validate(
    given_as: &'static Setting,
    v: &Value,
    origin: &Origin,
) -> Result<(), ConfigError> {
    let fail = |reason: String| Err(bad(given_as, origin, reason));
    match (given_as.kind, v) {
        (Kind::LogLevel, Value::Text(l)) => {
            // RUST_LOG keeps its own, looser syntax (a bare target is a
            // directive there).
            let checked = if *origin == Origin::Env("RUST_LOG") {
                crate::logging::validate_filter(l)
            } else {
                crate::logging::validate_level(l)
            };
            checked.or_else(fail)
        }
        (_, Value::Text(s)) if s.trim().is_empty() => fail("is empty".into()),
        (_, Value::Path(p)) if p.as_os_str().is_empty() => fail("is empty".into()),
        (Kind::Count { min, max }, Value::Count(n)) if *n < min || *n > max => {
            if max == u64::MAX {
                fail(format!("{n} is out of range: at least {min}"))
            } else {
                fail(format!("{n} is out of range: {min} to {max}"))
            }
        }
        (Kind::Duration { positive: true }, Value::Duration(d)) if d.is_zero() => {
            fail("must be more than 0".into())
        }
        (_, Value::Secret(SecretInput::Value(s))) if s.expose().is_empty() => {
            fail("is empty".into())
        }
        (_, Value::Secret(SecretInput::File(p)) | Value::Tokens(TokensInput::File(p)))
            if p.as_os_str().is_empty() =>
        {
            fail("is empty".into())
        }
        (_, Value::Tokens(TokensInput::Values(v))) if v.is_empty() => {
            fail("the list is empty".into())
        }
        (_, Value::Tokens(TokensInput::Values(v))) if v.iter().any(|t| t.expose().is_empty()) => {
            fail("a token is empty".into())
        }
        _ => Ok(()),
    }
}

const REDACTED: &str = "<redacted>";

impl Value {
    /// The value as `--help` shows a default: `1s`, `64`, `0.0.0.0:4512`.
    pub fn plain(&self) -> String {
        match self {
            Value::Text(s) => s.clone(),
            Value::Path(p) => p.to_string_lossy().into_owned(),
            Value::Bool(b) => b.to_string(),
            Value::Count(n) => n.to_string(),
            Value::Duration(d) => humantime::format_duration(*d).to_string(),
            Value::Addr(a) => a.to_string(),
            Value::Source(u) => u.to_string(),
            Value::Format(f) => f.to_string(),
            Value::OnReexport(p) => p.to_string(),
            Value::Secret(_) | Value::Tokens(_) => REDACTED.to_string(),
            Value::Prefixes(p) => {
                let keys: Vec<String> = p.iter().map(|k| key_text(k)).collect();
                format!("[{}]", keys.join(", "))
            }
        }
    }

    /// The value as TOML, secrets redacted.
    pub fn toml(&self) -> String {
        match self {
            Value::Bool(_) | Value::Count(_) => self.plain(),
            Value::Tokens(TokensInput::Values(v)) => {
                format!("[{}]", vec![string(REDACTED); v.len()].join(", "))
            }
            // Each key as JSON text in a TOML string, literal when it can
            // be (no quotes to escape): what the file takes.
            Value::Prefixes(p) => {
                let keys: Vec<String> = p
                    .iter()
                    .map(|k| match key_text(k) {
                        t if !t.contains(['\'', '\n']) => format!("'{t}'"),
                        t => string(&t),
                    })
                    .collect();
                format!("[{}]", keys.join(", "))
            }
            _ => string(&self.plain()),
        }
    }
}

/// A tuple-encoded key as its JSON text.
fn key_text(k: &[u8]) -> String {
    crate::decode::key_to_json(k)
        .map(|j| j.to_string())
        .unwrap_or_else(|_| hex::encode(k))
}

/// A TOML basic string.
pub(super) fn string(s: &str) -> String {
    use std::fmt::Write;
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() => {
                let _ = write!(out, "\\u{:04X}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn addresses_take_host_names_and_the_port_alone() {
        let ok = |s: &str| super::addr(s).unwrap().to_string();
        assert_eq!(ok("127.0.0.1:4512"), "127.0.0.1:4512");
        assert_eq!(ok("[::1]:4512"), "[::1]:4512");
        assert_eq!(ok(":4512"), "0.0.0.0:4512");
        assert_eq!(ok("localhost:4512"), "127.0.0.1:4512");
        for bad in [
            "4512",
            "localhost",
            ":port",
            "a b:1",
            "[::1:4512",
            "x:70000",
        ] {
            let e = super::addr(bad).unwrap_err();
            assert!(e.contains("HOST:PORT or :PORT"), "{bad}: {e}");
        }
    }

    #[test]
    fn prefixes_show_as_the_file_takes_them() {
        let keys = |t: &str| crate::store::parse_prefixes(t).unwrap();
        let v = super::Value::Prefixes(keys(r#"[["users"], ["it's", {"bigint": "7"}]]"#));
        assert_eq!(
            v.toml(),
            r#"['["users"]', "[\"it's\",{\"bigint\":\"7\"}]"]"#
        );
        assert_eq!(v.plain(), r#"[["users"], ["it's",{"bigint":"7"}]]"#);
    }

    #[test]
    fn strings_are_escaped() {
        assert_eq!(super::string(r#"a"b\c"#), r#""a\"b\\c""#);
        assert_eq!(super::string("x\u{1}"), "\"x\\u0001\"");
    }
}

//! The TOML config file: its layout, and errors that name the key and the
//! line.

use std::path::{Path, PathBuf};

use serde::Deserialize;
use toml::de::{DeTable, DeValue};
use toml::Spanned;

use super::keys::{self, Key};
use super::layer::{self, Layer, Sourced, TokensInput};
use super::{ConfigError, Origin, Secret};

/// The whole file. Every table is optional; unknown keys are errors.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    /// Backup location URL.
    source: Option<Spanned<String>>,
    /// Replica SQLite file.
    db: Option<Spanned<String>>,
    /// S3 endpoint, region, addressing and static keys.
    #[serde(default)]
    s3: S3Table,
    /// GCS key file and endpoint.
    #[serde(default)]
    gcs: GcsTable,
    /// Engine tunables.
    #[serde(default)]
    sync: SyncTable,
    /// The KV Connect listener and its tokens.
    #[serde(default)]
    server: ServerTable,
    /// The admin listener and its token.
    #[serde(default)]
    admin: AdminTable,
    /// Log level and format.
    #[serde(default)]
    log: LogTable,
}

/// `[s3]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct S3Table {
    /// Custom endpoint URL (MinIO, R2, …).
    endpoint: Option<Spanned<String>>,
    /// Region to sign with.
    region: Option<Spanned<String>>,
    /// Path-style addressing.
    path_style: Option<Spanned<bool>>,
    /// Static access key id (else the AWS credential chain).
    access_key_id: Option<Spanned<String>>,
    /// Its secret key, inline.
    secret_access_key: Option<Spanned<String>>,
    /// Its secret key, read from a file.
    secret_access_key_file: Option<Spanned<String>>,
}

/// `[gcs]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct GcsTable {
    /// Service-account JSON key file.
    credentials_file: Option<Spanned<String>>,
    /// JSON API endpoint of an emulator.
    endpoint: Option<Spanned<String>>,
}

/// `[sync]`. Durations are strings such as `"1s"`, `"250ms"`, `"7d"`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct SyncTable {
    /// Pause between polls when caught up.
    poll_interval: Option<Spanned<String>>,
    /// Age under which log objects wait for the next round.
    settle: Option<Spanned<String>>,
    /// Downloads in flight.
    fetch_concurrency: Option<Spanned<i64>>,
    /// Bound on downloaded-but-not-applied data, MiB.
    max_mib_in_flight: Option<Spanned<i64>>,
    /// Objects per listing request.
    page_size: Option<Spanned<i64>>,
    /// Timeout of each request to the store.
    request_timeout: Option<Spanned<String>>,
    /// Most recoverable points kept.
    retain_points: Option<Spanned<i64>>,
    /// Oldest recoverable point kept, from the newest commit.
    retain_for: Option<Spanned<String>>,
}

/// `[server]`: the KV Connect listener.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ServerTable {
    /// Listen address.
    addr: Option<Spanned<String>>,
    /// Accepted tokens, inline.
    access_tokens: Option<Spanned<Vec<String>>>,
    /// Accepted tokens, one per line of this file.
    access_tokens_file: Option<Spanned<String>>,
    /// Read-only SQLite connections.
    readers: Option<Spanned<i64>>,
}

/// `[admin]`: the admin listener.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct AdminTable {
    /// Listen address.
    addr: Option<Spanned<String>>,
    /// Bearer token of `/pitr/*`, inline.
    token: Option<Spanned<String>>,
    /// Bearer token of `/pitr/*`, read from a file.
    token_file: Option<Spanned<String>>,
}

/// `[log]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct LogTable {
    /// Filter in `RUST_LOG` syntax.
    level: Option<Spanned<String>>,
    /// `plain` or `json`.
    format: Option<Spanned<String>>,
}

/// Parses the config file at `path` (its text is `text`) into a layer.
pub(super) fn layer(path: &Path, text: &str) -> Result<Layer, ConfigError> {
    let file: FileConfig = toml::from_str(text).map_err(|e| describe(path, text, &e))?;
    let at = |span: std::ops::Range<usize>| Origin::File {
        path: path.to_path_buf(),
        line: line_of(text, span.start),
    };
    let string = |v: Option<Spanned<String>>| {
        v.map(|s| {
            let origin = at(s.span());
            Sourced::new(s.into_inner(), origin)
        })
    };
    let path_of = |v: Option<Spanned<String>>| {
        string(v).map(|s| Sourced::new(PathBuf::from(s.value), s.origin))
    };
    fn parsed<T>(
        v: Option<Sourced<String>>,
        key: &'static Key,
        f: fn(&Key, &str, Origin) -> Result<Sourced<T>, ConfigError>,
    ) -> Result<Option<Sourced<T>>, ConfigError> {
        v.map(|s| f(key, &s.value, s.origin)).transpose()
    }
    let duration = |key: &'static Key, v: Option<Spanned<String>>| {
        string(v)
            .map(|s| layer::duration(key, &s.value, s.origin))
            .transpose()
    };
    let integer = |key: &'static Key, v: Option<Spanned<i64>>| {
        v.map(|s| layer::integer(key, *s.get_ref(), at(s.span())))
            .transpose()
    };
    let secret =
        |value: Option<Spanned<String>>| string(value).map(|s| (Secret::new(s.value), s.origin));
    let secret_file = |file: Option<Spanned<String>>| path_of(file).map(|s| (s.value, s.origin));

    let FileConfig {
        source,
        db,
        s3,
        gcs,
        sync,
        server,
        admin,
        log,
    } = file;
    let mut l = Layer {
        source: parsed(string(source), &keys::SOURCE, layer::source)?,
        db: path_of(db),
        s3_endpoint: string(s3.endpoint),
        s3_region: string(s3.region),
        s3_path_style: s3.path_style.map(|s| {
            let origin = at(s.span());
            Sourced::new(s.into_inner(), origin)
        }),
        s3_access_key_id: string(s3.access_key_id),
        s3_secret_access_key: layer::secret_pair(
            &keys::S3_SECRET_ACCESS_KEY,
            secret(s3.secret_access_key),
            secret_file(s3.secret_access_key_file),
            (
                keys::S3_SECRET_ACCESS_KEY.name,
                keys::S3_SECRET_ACCESS_KEY_FILE.name,
            ),
        )?,
        gcs_credentials_file: path_of(gcs.credentials_file),
        gcs_endpoint: string(gcs.endpoint),
        poll_interval: duration(&keys::POLL_INTERVAL, sync.poll_interval)?,
        settle: duration(&keys::SETTLE, sync.settle)?,
        fetch_concurrency: integer(&keys::FETCH_CONCURRENCY, sync.fetch_concurrency)?,
        max_mib_in_flight: integer(&keys::MAX_MIB_IN_FLIGHT, sync.max_mib_in_flight)?,
        page_size: integer(&keys::PAGE_SIZE, sync.page_size)?,
        request_timeout: duration(&keys::REQUEST_TIMEOUT, sync.request_timeout)?,
        retain_points: integer(&keys::RETAIN_POINTS, sync.retain_points)?,
        retain_for: duration(&keys::RETAIN_FOR, sync.retain_for)?,
        addr: parsed(string(server.addr), &keys::ADDR, layer::addr)?,
        readers: integer(&keys::READERS, server.readers)?,
        admin_addr: parsed(string(admin.addr), &keys::ADMIN_ADDR, layer::addr)?,
        admin_token: layer::secret_pair(
            &keys::ADMIN_TOKEN,
            secret(admin.token),
            secret_file(admin.token_file),
            (keys::ADMIN_TOKEN.name, keys::ADMIN_TOKEN_FILE.name),
        )?,
        log_level: string(log.level),
        log_format: parsed(string(log.format), &keys::LOG_FORMAT, layer::log_format)?,
        access_tokens: None,
    };
    let tokens = server.access_tokens.map(|s| {
        let origin = at(s.span());
        (s.into_inner(), origin)
    });
    l.access_tokens = match (tokens, path_of(server.access_tokens_file)) {
        (Some((_, origin)), Some(_)) => {
            return Err(ConfigError::Conflict {
                key: keys::ACCESS_TOKENS.name,
                first: keys::ACCESS_TOKENS.name,
                second: keys::ACCESS_TOKENS_FILE.name,
                origin,
            })
        }
        (Some((v, origin)), None) => Some(Sourced::new(
            TokensInput::Values(v.into_iter().map(Secret::new).collect()),
            origin,
        )),
        (None, Some(p)) => Some(Sourced::new(TokensInput::File(p.value), p.origin)),
        (None, None) => None,
    };
    Ok(l)
}

/// The 1-based line of byte `offset`.
fn line_of(text: &str, offset: usize) -> usize {
    let end = offset.min(text.len());
    text.as_bytes()[..end]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

/// Turns a TOML error into one that names the key (as a dotted path) and
/// the line. The messages of type errors carry no value, so a secret in a
/// mistyped key does not leak.
fn describe(path: &Path, text: &str, e: &toml::de::Error) -> ConfigError {
    let message = e.message().trim().to_string();
    let offset = e.span().map(|s| s.start).unwrap_or(0);
    let line = line_of(text, offset);
    let key = key_at(text, offset);
    if let Some(rest) = message.strip_prefix("unknown field ") {
        // "`name`, expected one of `a`, `b`" / "`name`, expected `a`"
        let (name, expected) = rest.split_once(", ").unwrap_or((rest, ""));
        let name = name.trim_matches('`').to_string();
        return ConfigError::UnknownKey {
            key: key.unwrap_or(name),
            path: path.to_path_buf(),
            line,
            expected: allowed(expected),
        };
    }
    match key {
        Some(key) => ConfigError::BadValue {
            key,
            origin: Origin::File {
                path: path.to_path_buf(),
                line,
            },
            reason: redact_value(&message),
        },
        None => ConfigError::Syntax {
            path: path.to_path_buf(),
            line,
            message,
        },
    }
}

/// "expected one of `a`, `b`" as "keys allowed here: `a`, `b`".
fn allowed(expected: &str) -> String {
    let list = expected
        .trim_start_matches("expected one of ")
        .trim_start_matches("expected ");
    if list.is_empty() || list.starts_with("there are no fields") {
        String::new()
    } else {
        format!("keys allowed here: {list}")
    }
}

/// serde's type errors quote the value (`invalid type: string "abc",
/// expected i64`); keep the types, in TOML's words, and drop the value,
/// which may be a secret.
fn redact_value(message: &str) -> String {
    // `found` starts with the kind ("string", "integer", ...) and may go on
    // with the value: only its first word is looked at.
    let toml_type = |serde: &str| -> String {
        let s = serde
            .trim()
            .trim_start_matches("a ")
            .trim_start_matches("an ");
        let word = s.split_whitespace().next().unwrap_or(s);
        match word {
            "i64" | "u64" | "integer" => "an integer",
            "sequence" => "an array",
            "map" | "struct" => "a table",
            "string" | "str" => "a string",
            "boolean" | "bool" => "a boolean",
            "floating" | "float" | "f64" => "a float",
            other => other,
        }
        .to_string()
    };
    match message.strip_prefix("invalid type: ") {
        Some(rest) => {
            let (found, expected) = rest.split_once(", expected ").unwrap_or((rest, ""));
            let found = toml_type(found);
            if expected.is_empty() {
                format!("wrong type: {found}")
            } else {
                format!("{found} where {} is expected", toml_type(expected))
            }
        }
        None => message.to_string(),
    }
}

/// The dotted key whose name or value covers byte `offset`, if the text
/// parses as TOML.
fn key_at(text: &str, offset: usize) -> Option<String> {
    let table = DeTable::parse(text).ok()?;
    find_key(table.get_ref(), offset, "")
}

fn find_key(table: &DeTable<'_>, offset: usize, prefix: &str) -> Option<String> {
    let dotted = |k: &str| {
        if prefix.is_empty() {
            k.to_string()
        } else {
            format!("{prefix}.{k}")
        }
    };
    // Keys first: an unknown key's error points at its name.
    for (k, _) in table.iter() {
        if k.span().contains(&offset) {
            return Some(dotted(k.get_ref()));
        }
    }
    for (k, v) in table.iter() {
        if let DeValue::Table(t) = v.get_ref() {
            if let Some(found) = find_key(t, offset, &dotted(k.get_ref())) {
                return Some(found);
            }
        }
    }
    for (k, v) in table.iter() {
        if v.span().contains(&offset) {
            return Some(dotted(k.get_ref()));
        }
    }
    None
}

//! One layer of settings (the file, the environment or the flags): the keys
//! it sets, each parsed and with its origin. Layers are checked one by one,
//! then overlaid.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use super::keys::{self, Key};
use super::{ConfigError, Flags, LogFormat, Origin, Secret};
use crate::source::SourceUrl;

/// A value and where it came from.
#[derive(Clone, Debug)]
pub(super) struct Sourced<T> {
    pub value: T,
    pub origin: Origin,
}

impl<T> Sourced<T> {
    pub fn new(value: T, origin: Origin) -> Self {
        Sourced { value, origin }
    }
}

/// A secret given as a value or as a file to read it from.
#[derive(Clone, Debug)]
pub(super) enum SecretInput {
    Value(Secret),
    File(PathBuf),
}

/// Access tokens given as values or as a file with one per line.
#[derive(Clone, Debug)]
pub(super) enum TokensInput {
    Values(Vec<Secret>),
    File(PathBuf),
}

/// The keys one layer sets, one field per key of [`super::keys`] under the
/// same name; `None` leaves the key to a lower layer. The two forms of a
/// secret (value, file) share one field, so a higher layer replaces both.
#[derive(Clone, Debug, Default)]
pub(super) struct Layer {
    pub source: Option<Sourced<SourceUrl>>,
    pub db: Option<Sourced<PathBuf>>,
    pub s3_endpoint: Option<Sourced<String>>,
    pub s3_region: Option<Sourced<String>>,
    pub s3_path_style: Option<Sourced<bool>>,
    pub s3_access_key_id: Option<Sourced<String>>,
    pub s3_secret_access_key: Option<Sourced<SecretInput>>,
    pub gcs_credentials_file: Option<Sourced<PathBuf>>,
    pub gcs_endpoint: Option<Sourced<String>>,
    pub poll_interval: Option<Sourced<Duration>>,
    pub settle: Option<Sourced<Duration>>,
    pub fetch_concurrency: Option<Sourced<u64>>,
    pub max_mib_in_flight: Option<Sourced<u64>>,
    pub page_size: Option<Sourced<u64>>,
    pub request_timeout: Option<Sourced<Duration>>,
    pub retain_points: Option<Sourced<u64>>,
    pub retain_for: Option<Sourced<Duration>>,
    pub addr: Option<Sourced<SocketAddr>>,
    pub access_tokens: Option<Sourced<TokensInput>>,
    pub readers: Option<Sourced<u64>>,
    pub admin_addr: Option<Sourced<SocketAddr>>,
    pub admin_token: Option<Sourced<SecretInput>>,
    pub log_level: Option<Sourced<String>>,
    pub log_format: Option<Sourced<LogFormat>>,
}

macro_rules! overlay {
    ($low:ident, $high:ident; $($field:ident),* $(,)?) => {
        Layer { $($field: $high.$field.or($low.$field)),* }
    };
}

/// Upper bound of `sync.max_mib_in_flight`: 1 TiB, far above any memory,
/// and small enough that the byte count cannot overflow.
const MAX_MIB: u64 = 1 << 20;

/// S3's ListObjectsV2 returns at most 1000 keys per page; so does GCS.
const MAX_PAGE_SIZE: u64 = 1000;

impl Layer {
    /// This layer with every key `high` sets taken from `high`.
    pub fn overlaid(self, high: Layer) -> Layer {
        let low = self;
        overlay!(low, high;
            source, db, s3_endpoint, s3_region, s3_path_style, s3_access_key_id,
            s3_secret_access_key, gcs_credentials_file, gcs_endpoint, poll_interval, settle,
            fetch_concurrency, max_mib_in_flight, page_size, request_timeout, retain_points,
            retain_for, addr, access_tokens, readers, admin_addr, admin_token, log_level,
            log_format,
        )
    }

    /// Checks the range of every value this layer sets.
    pub fn validate(&self) -> Result<(), ConfigError> {
        fn positive(key: &Key, v: &Option<Sourced<Duration>>) -> Result<(), ConfigError> {
            match v {
                Some(s) if s.value.is_zero() => Err(bad(key, &s.origin, "must be more than 0")),
                _ => Ok(()),
            }
        }
        fn range(
            key: &Key,
            v: &Option<Sourced<u64>>,
            min: u64,
            max: u64,
        ) -> Result<(), ConfigError> {
            match v {
                Some(s) if s.value < min || s.value > max => Err(bad(
                    key,
                    &s.origin,
                    if max == u64::MAX {
                        format!("{} is out of range: at least {min}", s.value)
                    } else {
                        format!("{} is out of range: {min} to {max}", s.value)
                    },
                )),
                _ => Ok(()),
            }
        }
        fn filled(key: &Key, v: &Option<Sourced<String>>) -> Result<(), ConfigError> {
            match v {
                Some(s) if s.value.trim().is_empty() => Err(bad(key, &s.origin, "is empty")),
                _ => Ok(()),
            }
        }
        fn path(key: &Key, v: &Option<Sourced<PathBuf>>) -> Result<(), ConfigError> {
            match v {
                Some(s) if s.value.as_os_str().is_empty() => Err(bad(key, &s.origin, "is empty")),
                _ => Ok(()),
            }
        }
        fn secret(
            value: &Key,
            file: &Key,
            v: &Option<Sourced<SecretInput>>,
        ) -> Result<(), ConfigError> {
            match v {
                Some(s) => match &s.value {
                    SecretInput::Value(x) if x.expose().is_empty() => {
                        Err(bad(value, &s.origin, "is empty"))
                    }
                    SecretInput::File(p) if p.as_os_str().is_empty() => {
                        Err(bad(file, &s.origin, "is empty"))
                    }
                    _ => Ok(()),
                },
                None => Ok(()),
            }
        }
        path(&keys::DB, &self.db)?;
        filled(&keys::S3_ENDPOINT, &self.s3_endpoint)?;
        filled(&keys::S3_REGION, &self.s3_region)?;
        filled(&keys::S3_ACCESS_KEY_ID, &self.s3_access_key_id)?;
        secret(
            &keys::S3_SECRET_ACCESS_KEY,
            &keys::S3_SECRET_ACCESS_KEY_FILE,
            &self.s3_secret_access_key,
        )?;
        path(&keys::GCS_CREDENTIALS_FILE, &self.gcs_credentials_file)?;
        filled(&keys::GCS_ENDPOINT, &self.gcs_endpoint)?;
        positive(&keys::POLL_INTERVAL, &self.poll_interval)?;
        positive(&keys::REQUEST_TIMEOUT, &self.request_timeout)?;
        positive(&keys::RETAIN_FOR, &self.retain_for)?;
        range(
            &keys::FETCH_CONCURRENCY,
            &self.fetch_concurrency,
            1,
            u64::MAX,
        )?;
        range(
            &keys::MAX_MIB_IN_FLIGHT,
            &self.max_mib_in_flight,
            1,
            MAX_MIB,
        )?;
        range(&keys::PAGE_SIZE, &self.page_size, 1, MAX_PAGE_SIZE)?;
        range(&keys::RETAIN_POINTS, &self.retain_points, 1, u64::MAX)?;
        range(&keys::READERS, &self.readers, 1, u64::MAX)?;
        if let Some(t) = &self.access_tokens {
            match &t.value {
                TokensInput::Values(v) if v.is_empty() => {
                    return Err(bad(&keys::ACCESS_TOKENS, &t.origin, "the list is empty"))
                }
                TokensInput::Values(v) if v.iter().any(|t| t.expose().is_empty()) => {
                    return Err(bad(&keys::ACCESS_TOKENS, &t.origin, "a token is empty"))
                }
                TokensInput::File(p) if p.as_os_str().is_empty() => {
                    return Err(bad(&keys::ACCESS_TOKENS_FILE, &t.origin, "is empty"))
                }
                _ => {}
            }
        }
        secret(
            &keys::ADMIN_TOKEN,
            &keys::ADMIN_TOKEN_FILE,
            &self.admin_token,
        )?;
        if let Some(l) = &self.log_level {
            // RUST_LOG keeps its own, looser syntax (a bare target is a
            // directive there).
            let checked = if l.origin == Origin::Env("RUST_LOG") {
                crate::logging::validate_filter(&l.value)
            } else {
                crate::logging::validate_level(&l.value)
            };
            checked.map_err(|e| bad(&keys::LOG_LEVEL, &l.origin, e))?;
        }
        Ok(())
    }
}

/// A bad-value error for `key`.
pub(super) fn bad(key: &Key, origin: &Origin, reason: impl Into<String>) -> ConfigError {
    ConfigError::BadValue {
        key: key.name.to_string(),
        origin: origin.clone(),
        reason: reason.into(),
    }
}

type Parsed<T> = Result<Sourced<T>, ConfigError>;

pub(super) fn duration(key: &Key, raw: &str, origin: Origin) -> Parsed<Duration> {
    match humantime::parse_duration(raw.trim()) {
        Ok(d) => Ok(Sourced::new(d, origin)),
        Err(e) => Err(bad(
            key,
            &origin,
            format!("{raw:?} is not a duration ({e}); write e.g. \"1s\", \"250ms\", \"7d\""),
        )),
    }
}

pub(super) fn number(key: &Key, raw: &str, origin: Origin) -> Parsed<u64> {
    match raw.trim().parse::<u64>() {
        Ok(n) => Ok(Sourced::new(n, origin)),
        Err(_) => Err(bad(key, &origin, format!("{raw:?} is not a whole number"))),
    }
}

pub(super) fn integer(key: &Key, n: i64, origin: Origin) -> Parsed<u64> {
    match u64::try_from(n) {
        Ok(n) => Ok(Sourced::new(n, origin)),
        Err(_) => Err(bad(key, &origin, format!("{n} is negative"))),
    }
}

pub(super) fn addr(key: &Key, raw: &str, origin: Origin) -> Parsed<SocketAddr> {
    match raw.trim().parse::<SocketAddr>() {
        Ok(a) => Ok(Sourced::new(a, origin)),
        Err(_) => Err(bad(
            key,
            &origin,
            format!("{raw:?} is not an address: write IP:PORT, e.g. \"127.0.0.1:4512\" or \"[::]:4512\""),
        )),
    }
}

pub(super) fn source(key: &Key, raw: &str, origin: Origin) -> Parsed<SourceUrl> {
    match SourceUrl::parse(raw.trim()) {
        Ok(u) => Ok(Sourced::new(u, origin)),
        Err(e) => Err(bad(key, &origin, e.to_string())),
    }
}

pub(super) fn boolean(key: &Key, raw: &str, origin: Origin) -> Parsed<bool> {
    match raw.trim().to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Ok(Sourced::new(true, origin)),
        "false" | "0" | "no" | "off" => Ok(Sourced::new(false, origin)),
        _ => Err(bad(
            key,
            &origin,
            format!("{raw:?} is not a boolean: write true or false"),
        )),
    }
}

pub(super) fn log_format(key: &Key, raw: &str, origin: Origin) -> Parsed<LogFormat> {
    match raw.parse::<LogFormat>() {
        Ok(f) => Ok(Sourced::new(f, origin)),
        Err(e) => Err(bad(key, &origin, e)),
    }
}

/// A secret given (at most) one of two ways in one layer.
pub(super) fn secret_pair(
    value_key: &'static Key,
    value: Option<(Secret, Origin)>,
    file: Option<(PathBuf, Origin)>,
    names: (&'static str, &'static str),
) -> Result<Option<Sourced<SecretInput>>, ConfigError> {
    match (value, file) {
        (Some((_, origin)), Some(_)) => Err(ConfigError::Conflict {
            key: value_key.name,
            first: names.0,
            second: names.1,
            origin,
        }),
        (Some((v, origin)), None) => Ok(Some(Sourced::new(SecretInput::Value(v), origin))),
        (None, Some((p, origin))) => Ok(Some(Sourced::new(SecretInput::File(p), origin))),
        (None, None) => Ok(None),
    }
}

/// The environment layer. `env` returns `None` for unset and empty
/// variables.
pub(super) fn from_env(env: &dyn Fn(&str) -> Option<String>) -> Result<Layer, ConfigError> {
    let get = |name: &'static str| env(name).map(|v| (v, Origin::Env(name)));
    // kvreplica's own name first, then denokv's.
    let first = |names: &[&'static str]| names.iter().find_map(|n| get(n));
    let text = |key: &'static Key| get(key.env).map(|(v, o)| Sourced::new(v, o));
    fn parse<T>(
        env: &dyn Fn(&str) -> Option<String>,
        key: &'static Key,
        f: fn(&Key, &str, Origin) -> Parsed<T>,
    ) -> Result<Option<Sourced<T>>, ConfigError> {
        env(key.env)
            .map(|v| f(key, &v, Origin::Env(key.env)))
            .transpose()
    }

    let source = match get(keys::SOURCE.env) {
        Some((v, o)) => Some(source(&keys::SOURCE, &v, o)?),
        None => match get("DENO_KV_S3_BUCKET") {
            Some((bucket, o)) => {
                let prefix = env("DENO_KV_S3_PREFIX").unwrap_or_default();
                Some(source(
                    &keys::SOURCE,
                    &format!("s3://{bucket}/{prefix}"),
                    o,
                )?)
            }
            None => None,
        },
    };
    let token = get(keys::ACCESS_TOKENS.env);
    let tokens_file = get(keys::ACCESS_TOKENS_FILE.env);
    let access_tokens = match (token, tokens_file) {
        (Some((_, origin)), Some(_)) => {
            return Err(ConfigError::Conflict {
                key: keys::ACCESS_TOKENS.name,
                first: keys::ACCESS_TOKENS.env,
                second: keys::ACCESS_TOKENS_FILE.env,
                origin,
            })
        }
        (Some((v, o)), None) => Some(Sourced::new(TokensInput::Values(vec![Secret::new(v)]), o)),
        (None, Some((p, o))) => Some(Sourced::new(TokensInput::File(PathBuf::from(p)), o)),
        // denokv's variable, which clients read too.
        (None, None) => get("DENO_KV_ACCESS_TOKEN")
            .map(|(v, o)| Sourced::new(TokensInput::Values(vec![Secret::new(v)]), o)),
    };
    Ok(Layer {
        source,
        access_tokens,
        db: first(&[keys::DB.env, "DENO_KV_SQLITE_PATH"])
            .map(|(v, o)| Sourced::new(PathBuf::from(v), o)),
        s3_endpoint: first(&[keys::S3_ENDPOINT.env, "DENO_KV_S3_ENDPOINT"])
            .map(|(v, o)| Sourced::new(v, o)),
        s3_region: text(&keys::S3_REGION),
        s3_path_style: parse(env, &keys::S3_PATH_STYLE, boolean)?,
        s3_access_key_id: text(&keys::S3_ACCESS_KEY_ID),
        s3_secret_access_key: secret_pair(
            &keys::S3_SECRET_ACCESS_KEY,
            get(keys::S3_SECRET_ACCESS_KEY.env).map(|(v, o)| (Secret::new(v), o)),
            get(keys::S3_SECRET_ACCESS_KEY_FILE.env).map(|(v, o)| (PathBuf::from(v), o)),
            (
                keys::S3_SECRET_ACCESS_KEY.env,
                keys::S3_SECRET_ACCESS_KEY_FILE.env,
            ),
        )?,
        gcs_credentials_file: get(keys::GCS_CREDENTIALS_FILE.env)
            .map(|(v, o)| Sourced::new(PathBuf::from(v), o)),
        gcs_endpoint: text(&keys::GCS_ENDPOINT),
        poll_interval: parse(env, &keys::POLL_INTERVAL, duration)?,
        settle: parse(env, &keys::SETTLE, duration)?,
        fetch_concurrency: parse(env, &keys::FETCH_CONCURRENCY, number)?,
        max_mib_in_flight: parse(env, &keys::MAX_MIB_IN_FLIGHT, number)?,
        page_size: parse(env, &keys::PAGE_SIZE, number)?,
        request_timeout: parse(env, &keys::REQUEST_TIMEOUT, duration)?,
        retain_points: parse(env, &keys::RETAIN_POINTS, number)?,
        retain_for: parse(env, &keys::RETAIN_FOR, duration)?,
        addr: parse(env, &keys::ADDR, addr)?,
        readers: parse(env, &keys::READERS, number)?,
        admin_addr: parse(env, &keys::ADMIN_ADDR, addr)?,
        admin_token: secret_pair(
            &keys::ADMIN_TOKEN,
            get(keys::ADMIN_TOKEN.env).map(|(v, o)| (Secret::new(v), o)),
            get(keys::ADMIN_TOKEN_FILE.env).map(|(v, o)| (PathBuf::from(v), o)),
            (keys::ADMIN_TOKEN.env, keys::ADMIN_TOKEN_FILE.env),
        )?,
        log_level: first(&[keys::LOG_LEVEL.env, "RUST_LOG"]).map(|(v, o)| Sourced::new(v, o)),
        log_format: parse(env, &keys::LOG_FORMAT, log_format)?,
    })
}

/// The flag layer. Clap has parsed the types already.
pub(super) fn from_flags(f: &Flags) -> Result<Layer, ConfigError> {
    fn flag<T: Clone>(key: &Key, v: &Option<T>) -> Option<Sourced<T>> {
        v.clone().map(|v| Sourced::new(v, Origin::Flag(key.flag)))
    }
    let file_flag =
        |key: &'static Key, v: &Option<PathBuf>| v.clone().map(|p| (p, Origin::Flag(key.flag)));
    let mut l = Layer {
        db: flag(&keys::DB, &f.db),
        s3_endpoint: flag(&keys::S3_ENDPOINT, &f.s3_endpoint),
        s3_region: flag(&keys::S3_REGION, &f.s3_region),
        s3_path_style: flag(&keys::S3_PATH_STYLE, &f.s3_path_style),
        s3_access_key_id: flag(&keys::S3_ACCESS_KEY_ID, &f.s3_access_key_id),
        s3_secret_access_key: file_flag(
            &keys::S3_SECRET_ACCESS_KEY_FILE,
            &f.s3_secret_access_key_file,
        )
        .map(|(p, o)| Sourced::new(SecretInput::File(p), o)),
        gcs_credentials_file: flag(&keys::GCS_CREDENTIALS_FILE, &f.gcs_credentials_file),
        gcs_endpoint: flag(&keys::GCS_ENDPOINT, &f.gcs_endpoint),
        poll_interval: flag(&keys::POLL_INTERVAL, &f.poll_interval),
        settle: flag(&keys::SETTLE, &f.settle),
        fetch_concurrency: flag(&keys::FETCH_CONCURRENCY, &f.fetch_concurrency),
        max_mib_in_flight: flag(&keys::MAX_MIB_IN_FLIGHT, &f.max_mib_in_flight),
        page_size: flag(&keys::PAGE_SIZE, &f.page_size),
        request_timeout: flag(&keys::REQUEST_TIMEOUT, &f.request_timeout),
        retain_points: flag(&keys::RETAIN_POINTS, &f.retain_points),
        retain_for: flag(&keys::RETAIN_FOR, &f.retain_for),
        addr: flag(&keys::ADDR, &f.addr),
        readers: flag(&keys::READERS, &f.readers),
        admin_addr: flag(&keys::ADMIN_ADDR, &f.admin_addr),
        log_level: flag(&keys::LOG_LEVEL, &f.log_level),
        log_format: flag(&keys::LOG_FORMAT, &f.log_format),
        ..Layer::default()
    };
    if let Some(s) = &f.source {
        l.source = Some(source(&keys::SOURCE, s, Origin::Flag(keys::SOURCE.flag))?);
    }
    let tokens = (!f.access_tokens.is_empty()).then(|| {
        (
            f.access_tokens.clone(),
            Origin::Flag(keys::ACCESS_TOKENS.flag),
        )
    });
    l.access_tokens = match (
        tokens,
        file_flag(&keys::ACCESS_TOKENS_FILE, &f.access_tokens_file),
    ) {
        (Some((_, origin)), Some(_)) => {
            return Err(ConfigError::Conflict {
                key: keys::ACCESS_TOKENS.name,
                first: keys::ACCESS_TOKENS.flag,
                second: keys::ACCESS_TOKENS_FILE.flag,
                origin,
            })
        }
        (Some((v, o)), None) => Some(Sourced::new(TokensInput::Values(v), o)),
        (None, Some((p, o))) => Some(Sourced::new(TokensInput::File(p), o)),
        (None, None) => None,
    };
    l.admin_token = secret_pair(
        &keys::ADMIN_TOKEN,
        f.admin_token
            .clone()
            .map(|v| (v, Origin::Flag(keys::ADMIN_TOKEN.flag))),
        file_flag(&keys::ADMIN_TOKEN_FILE, &f.admin_token_file),
        (keys::ADMIN_TOKEN.flag, keys::ADMIN_TOKEN_FILE.flag),
    )?;
    Ok(l)
}

//! Settings of `kvreplica sync|serve`: one TOML file, environment variables
//! and command-line flags, merged key by key.
//!
//! # Precedence
//! For every key: a flag, else an environment variable, else the config
//! file, else the default. Within the environment, kvreplica's own
//! `KVREPLICA_*` name wins over the denokv name it shares a key with
//! (`DENO_KV_*`, and `RUST_LOG` for `log.level`). A value is checked where it
//! is given, even when a higher layer overrides it, so a bad file is
//! reported whatever the flags say.
//!
//! # Secrets
//! Tokens and cloud keys may be given as `*_file` paths instead of values
//! (systemd credentials, Kubernetes secrets). A relative path is resolved
//! against `$CREDENTIALS_DIRECTORY` when systemd set it (`LoadCredential=`),
//! else against the working directory. Secret values are held as
//! [`Secret`] until the settings are final, and never printed: not by
//! `Debug`, not in errors, not by `check-config`.
//!
//! # Reload
//! [`Settings::reload`] resolves again from the same inputs (config path,
//! the flags given at start, the environment as it is now);
//! [`Settings::watched_files`] lists the files a change of which should
//! trigger it.

mod file;
mod keys;
mod layer;
mod render;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use crate::auth;
use crate::backup::Backup;
use crate::source::s3::S3Credentials;
use crate::source::{self, GcsOptions, RemoteOptions, S3Options, SourceError, SourceUrl};
use crate::store::pitr::Retention;
use crate::sync::SyncOptions;

pub use crate::logging::LogFormat;
pub use keys::Key;

use layer::{Layer, SecretInput, Sourced, TokensInput};

/// A secret value (token, key). Its `Debug` and `Display` print
/// `<redacted>`; [`Secret::expose`] is the only way to the value.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a value.
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(value.into())
    }

    /// The value itself, for the one place that needs it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl FromStr for Secret {
    type Err = std::convert::Infallible;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Secret::new(s))
    }
}

/// Where a value came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Origin {
    /// Nothing set it; the built-in default.
    Default,
    /// The config file, at this line (1-based).
    File { path: PathBuf, line: usize },
    /// This environment variable.
    Env(&'static str),
    /// This command-line flag.
    Flag(&'static str),
}

impl Origin {
    /// A short form for `check-config`'s comments: `default`, `file line 7`,
    /// `env KVREPLICA_DB`, `flag --db`.
    pub fn short(&self) -> String {
        match self {
            Origin::Default => "default".into(),
            Origin::File { line, .. } => format!("file line {line}"),
            Origin::Env(name) => format!("env {name}"),
            Origin::Flag(name) => format!("flag {name}"),
        }
    }
}

/// Reads as the tail of a sentence: "`sync.settle` *in /etc/k.toml line 7*".
impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::Default => f.write_str("by default"),
            Origin::File { path, line } => write!(f, "in {} line {line}", path.display()),
            Origin::Env(name) => write!(f, "from environment variable {name}"),
            Origin::Flag(name) => write!(f, "from flag {name}"),
        }
    }
}

/// A configuration that cannot be used. Every variant names the key at
/// fault and, when the value came from the config file, its line; none
/// carries a secret value.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The config file could not be read.
    #[error("cannot read the config file {}: {error}", path.display())]
    ReadConfig {
        path: PathBuf,
        error: std::io::Error,
    },
    /// The config file is not valid TOML.
    #[error("{} line {line}: not valid TOML: {message}", path.display())]
    Syntax {
        path: PathBuf,
        line: usize,
        message: String,
    },
    /// A key (or table) the config file format does not have.
    #[error("unknown key `{key}` in {} line {line}{}", path.display(), expected_hint(expected))]
    UnknownKey {
        key: String,
        path: PathBuf,
        line: usize,
        /// The keys allowed there, as the TOML parser lists them.
        expected: String,
    },
    /// A value of the wrong type, out of range or malformed.
    #[error("{key} {origin}: {reason}")]
    BadValue {
        key: String,
        origin: Origin,
        reason: String,
    },
    /// A required key has no value anywhere.
    #[error("{key} is not set: {hint}")]
    Missing {
        key: &'static str,
        hint: &'static str,
    },
    /// A secret is given both as a value and as a file in the same place
    /// (both keys in the file, both variables, both flags).
    #[error(
        "{key}: {first} and {second} are both set{}: keep one of them",
        place(origin)
    )]
    Conflict {
        key: &'static str,
        /// The names used, e.g. `admin.token` and `admin.token_file`.
        first: &'static str,
        second: &'static str,
        origin: Origin,
    },
    /// A `*_file` secret (or key file) cannot be read.
    #[error("{key} {origin}: cannot read {}: {error}", path.display())]
    SecretFile {
        key: &'static str,
        origin: Origin,
        path: PathBuf,
        error: std::io::Error,
    },
}

/// " in FILE line N" for a value from the config file; the names of an
/// environment variable or flag say where they are already.
fn place(origin: &Origin) -> String {
    match origin {
        Origin::File { .. } => format!(" {origin}"),
        _ => String::new(),
    }
}

fn expected_hint(expected: &str) -> String {
    if expected.is_empty() {
        String::new()
    } else {
        format!(" ({expected})")
    }
}

/// Which command the settings are for: it decides what is required.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Purpose {
    /// `kvreplica sync`: source and replica file; listener and token keys
    /// are checked but their secrets not read.
    Sync,
    /// `kvreplica serve` and `check-config`: also at least one access token.
    Serve,
}

/// Values given on the command line (`None`: not given). Filled in by the
/// CLI from its flags; every field overrides the key of the same name.
#[derive(Clone, Debug, Default)]
pub struct Flags {
    /// `--source`.
    pub source: Option<String>,
    /// `--db`.
    pub db: Option<PathBuf>,
    /// `--s3-endpoint`.
    pub s3_endpoint: Option<String>,
    /// `--s3-region`.
    pub s3_region: Option<String>,
    /// `--s3-path-style`.
    pub s3_path_style: Option<bool>,
    /// `--s3-access-key-id`.
    pub s3_access_key_id: Option<String>,
    /// `--s3-secret-access-key-file`.
    pub s3_secret_access_key_file: Option<PathBuf>,
    /// `--gcs-credentials-file`.
    pub gcs_credentials_file: Option<PathBuf>,
    /// `--gcs-endpoint`.
    pub gcs_endpoint: Option<String>,
    /// `--poll-interval`.
    pub poll_interval: Option<Duration>,
    /// `--settle`.
    pub settle: Option<Duration>,
    /// `--fetch-concurrency`.
    pub fetch_concurrency: Option<u64>,
    /// `--max-mib-in-flight`.
    pub max_mib_in_flight: Option<u64>,
    /// `--page-size`.
    pub page_size: Option<u64>,
    /// `--request-timeout`.
    pub request_timeout: Option<Duration>,
    /// `--retain-points`.
    pub retain_points: Option<u64>,
    /// `--retain-for`.
    pub retain_for: Option<Duration>,
    /// `--addr`.
    pub addr: Option<SocketAddr>,
    /// `--access-token`, repeated; empty when not given.
    pub access_tokens: Vec<Secret>,
    /// `--access-tokens-file`.
    pub access_tokens_file: Option<PathBuf>,
    /// `--readers`.
    pub readers: Option<u64>,
    /// `--admin-addr`.
    pub admin_addr: Option<SocketAddr>,
    /// `--admin-token`.
    pub admin_token: Option<Secret>,
    /// `--admin-token-file`.
    pub admin_token_file: Option<PathBuf>,
    /// `--log-level`.
    pub log_level: Option<String>,
    /// `--log-format`.
    pub log_format: Option<LogFormat>,
}

/// Everything settings are resolved from, apart from the environment:
/// kept by [`Settings`] so that a reload starts from the same place.
#[derive(Clone, Debug)]
pub struct Inputs {
    /// The TOML file (`--config` / `KVREPLICA_CONFIG`), if any.
    pub config: Option<PathBuf>,
    /// The flags given on the command line.
    pub flags: Flags,
    /// The command the settings are for.
    pub purpose: Purpose,
}

impl Inputs {
    /// Resolves the settings against the process environment.
    pub fn resolve(&self) -> Result<Settings, ConfigError> {
        resolve_with(self, &|name| std::env::var(name).ok())
    }
}

/// Log output settings (`[log]`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogSettings {
    /// Level filter in `RUST_LOG` syntax, e.g. `info` or
    /// `warn,kvreplica=debug`; hand it to [`crate::logging::init`] and
    /// [`crate::logging::LogHandle::set_level`].
    pub level: String,
    /// Plain lines or JSON.
    pub format: LogFormat,
}

/// The effective settings: every key resolved, checked, secrets read.
#[derive(Clone)]
pub struct Settings {
    /// Where the backup is read from (`source`).
    pub source: SourceUrl,
    /// The replica SQLite file (`db`).
    pub db: PathBuf,
    /// S3 endpoint, region and addressing (`[s3]`).
    pub s3: S3Options,
    /// Static S3 keys (`s3.access_key_id` + `s3.secret_access_key`); `None`
    /// leaves credentials to the AWS chain.
    pub s3_credentials: Option<S3Credentials>,
    /// GCS key file and endpoint (`[gcs]`).
    pub gcs: GcsOptions,
    /// Per-request timeout and retries for remote sources.
    pub remote: RemoteOptions,
    /// Engine tunables (`[sync]`); `sync.poll_interval` is the pause
    /// between polls when caught up.
    pub sync: SyncOptions,
    /// KV Connect listener (`server.addr`).
    pub addr: SocketAddr,
    /// Accepted KV Connect tokens, checked (length, characters); empty for
    /// [`Purpose::Sync`]. Hand them to [`crate::auth::Tokens`].
    pub access_tokens: Vec<String>,
    /// Admin API listener (`admin.addr`).
    pub admin_addr: SocketAddr,
    /// The admin API token, checked and distinct from every access token;
    /// `None` turns `/pitr/*` off.
    pub admin_token: Option<String>,
    /// Read-only SQLite connections serving KV Connect (`server.readers`).
    pub readers: usize,
    /// Log level and format (`[log]`).
    pub log: LogSettings,
    /// Where each key's value came from, by dotted key name.
    origins: BTreeMap<&'static str, Origin>,
    /// Secrets given as files: dotted key name to the file read.
    secret_files: BTreeMap<&'static str, PathBuf>,
    /// The config file and every file a secret was read from.
    watched: Vec<PathBuf>,
    /// What these settings were resolved from, for [`Settings::reload`].
    inputs: Arc<Inputs>,
}

impl fmt::Debug for Settings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let redacted = |n: usize| vec!["<redacted>"; n];
        f.debug_struct("Settings")
            .field("source", &self.source)
            .field("db", &self.db)
            .field("s3", &self.s3)
            .field("s3_credentials", &self.s3_credentials)
            .field("gcs", &self.gcs)
            .field("remote", &self.remote)
            .field("sync", &self.sync)
            .field("addr", &self.addr)
            .field("access_tokens", &redacted(self.access_tokens.len()))
            .field("admin_addr", &self.admin_addr)
            .field(
                "admin_token",
                &self.admin_token.as_ref().map(|_| "<redacted>"),
            )
            .field("readers", &self.readers)
            .field("log", &self.log)
            .finish_non_exhaustive()
    }
}

impl Settings {
    /// Resolves the settings again from the same config path and flags,
    /// with the environment as it is now: what a reload (SIGHUP, a changed
    /// file) does. An error leaves the caller's settings as they were.
    pub fn reload(&self) -> Result<Settings, ConfigError> {
        self.inputs.resolve()
    }

    /// The files to watch for a reload: the config file and every file a
    /// secret or key was read from, as absolute paths.
    pub fn watched_files(&self) -> &[PathBuf] {
        &self.watched
    }

    /// Where the value of `key` (dotted, e.g. `sync.poll_interval`) came
    /// from; `None` for an optional key nothing set.
    pub fn origin(&self, key: &str) -> Option<&Origin> {
        self.origins.get(key)
    }

    /// The inputs these settings were resolved from.
    pub fn inputs(&self) -> &Inputs {
        &self.inputs
    }

    /// Opens the backup source, with the static S3 keys when configured.
    /// Contacts nothing: connecting happens on first use.
    pub fn open_source(&self) -> Result<Arc<Backup>, SourceError> {
        source::open(
            &self.source,
            &source::SourceOptions {
                s3: self.s3.clone(),
                s3_credentials: self.s3_credentials.clone(),
                gcs: self.gcs.clone(),
                remote: self.remote.clone(),
            },
        )
    }

    /// The effective configuration as commented TOML, secrets redacted and
    /// each value's origin in a comment: what `kvreplica check-config`
    /// prints.
    pub fn render(&self) -> String {
        render::render(self)
    }
}

/// Defaults of the keys that have no home elsewhere; the engine's come
/// from [`SyncOptions::default`] and [`RemoteOptions::default`], and
/// `server.readers` from [`crate::server::default_readers`].
pub mod defaults {
    /// `server.addr`: every interface, denokv's port.
    pub const ADDR: &str = "0.0.0.0:4512";
    /// `admin.addr`: loopback only; the admin API can move the replica.
    pub const ADMIN_ADDR: &str = "127.0.0.1:4513";
    /// `log.level`.
    pub const LOG_LEVEL: &str = "info";
}

/// Resolves settings with `env` standing for the environment (tests pass a
/// map). Reads the config file and the secret files.
pub fn resolve_with(
    inputs: &Inputs,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Settings, ConfigError> {
    let env = |name: &str| env(name).filter(|v| !v.is_empty());
    let config_path = inputs.config.as_deref().map(absolute);
    let mut r = Resolution {
        credentials_dir: env("CREDENTIALS_DIRECTORY").map(PathBuf::from),
        origins: BTreeMap::new(),
        secret_files: BTreeMap::new(),
        watched: Vec::new(),
    };

    let file_layer = match &config_path {
        Some(path) => {
            let text = std::fs::read_to_string(path).map_err(|error| ConfigError::ReadConfig {
                path: path.clone(),
                error,
            })?;
            r.watched.push(path.clone());
            file::layer(path, &text)?
        }
        None => Layer::default(),
    };
    let env_layer = layer::from_env(&env)?;
    let flag_layer = layer::from_flags(&inputs.flags)?;
    for l in [&file_layer, &env_layer, &flag_layer] {
        l.validate()?;
    }
    let m = file_layer.overlaid(env_layer).overlaid(flag_layer);

    let source = r.required(
        &keys::SOURCE,
        m.source,
        "set `source` in the config file or KVREPLICA_SOURCE (or DENO_KV_S3_BUCKET and \
         DENO_KV_S3_PREFIX), or pass --source s3://bucket/prefix/, gs://bucket/prefix/ \
         or file:///dir/",
    )?;
    let db = r.required(
        &keys::DB,
        m.db,
        "set `db` in the config file or KVREPLICA_DB (or DENO_KV_SQLITE_PATH), or pass --db PATH",
    )?;
    let s3 = S3Options {
        endpoint: r.optional(&keys::S3_ENDPOINT, m.s3_endpoint),
        region: r.optional(&keys::S3_REGION, m.s3_region),
        path_style: r.optional(&keys::S3_PATH_STYLE, m.s3_path_style),
    };
    let s3_credentials = match (
        r.optional(&keys::S3_ACCESS_KEY_ID, m.s3_access_key_id),
        &m.s3_secret_access_key,
    ) {
        (None, None) => None,
        (Some(_), None) => {
            return Err(ConfigError::Missing {
                key: keys::S3_SECRET_ACCESS_KEY.name,
                hint: "s3.access_key_id is set, so its secret is needed too \
                       (s3.secret_access_key or s3.secret_access_key_file)",
            })
        }
        (None, Some(_)) => {
            return Err(ConfigError::Missing {
                key: keys::S3_ACCESS_KEY_ID.name,
                hint: "an S3 secret access key is set, so its access key id is needed too",
            })
        }
        (Some(id), Some(secret)) => Some(S3Credentials {
            access_key_id: id,
            secret_access_key: r
                .secret(
                    &keys::S3_SECRET_ACCESS_KEY,
                    &keys::S3_SECRET_ACCESS_KEY_FILE,
                    secret,
                )?
                .expose()
                .to_string(),
            session_token: None,
        }),
    };
    let gcs = GcsOptions {
        credentials_file: match m.gcs_credentials_file {
            Some(f) => Some(r.key_file(&keys::GCS_CREDENTIALS_FILE, f)?),
            None => None,
        },
        endpoint: r.optional(&keys::GCS_ENDPOINT, m.gcs_endpoint),
    };

    let engine = SyncOptions::default();
    let sync = SyncOptions {
        fetch_concurrency: r.or(
            &keys::FETCH_CONCURRENCY,
            m.fetch_concurrency,
            engine.fetch_concurrency as u64,
        ) as usize,
        max_bytes_in_flight: r.or(
            &keys::MAX_MIB_IN_FLIGHT,
            m.max_mib_in_flight,
            engine.max_bytes_in_flight >> 20,
        ) << 20,
        page_size: r.or(&keys::PAGE_SIZE, m.page_size, engine.page_size as u64) as usize,
        poll_interval: r.or(&keys::POLL_INTERVAL, m.poll_interval, engine.poll_interval),
        settle: r.or(&keys::SETTLE, m.settle, engine.settle),
        retention: Retention {
            max_age: r.optional(&keys::RETAIN_FOR, m.retain_for),
            max_points: r.optional(&keys::RETAIN_POINTS, m.retain_points),
        },
        ..engine
    };
    let remote = RemoteOptions {
        request_timeout: r.or(
            &keys::REQUEST_TIMEOUT,
            m.request_timeout,
            RemoteOptions::default().request_timeout,
        ),
        ..RemoteOptions::default()
    };
    let readers = r.or(
        &keys::READERS,
        m.readers,
        crate::server::default_readers() as u64,
    ) as usize;
    let log = LogSettings {
        level: r.or(&keys::LOG_LEVEL, m.log_level, defaults::LOG_LEVEL.into()),
        format: r.or(&keys::LOG_FORMAT, m.log_format, LogFormat::default()),
    };

    let addr = m.addr.unwrap_or_else(|| default_addr(defaults::ADDR));
    let admin_addr = m
        .admin_addr
        .unwrap_or_else(|| default_addr(defaults::ADMIN_ADDR));
    r.note(&keys::ADDR, addr.origin.clone());
    r.note(&keys::ADMIN_ADDR, admin_addr.origin.clone());
    let mut access_tokens = Vec::new();
    let mut admin_token = None;
    if inputs.purpose == Purpose::Serve {
        if addr.value == admin_addr.value && addr.value.port() != 0 {
            return Err(layer::bad(
                &keys::ADMIN_ADDR,
                &admin_addr.origin,
                format!(
                    "{} is server.addr too: the admin API needs a listener of its own",
                    admin_addr.value
                ),
            ));
        }
        let given = m.access_tokens.ok_or(ConfigError::Missing {
            key: keys::ACCESS_TOKENS.name,
            hint: "clients need a token: set server.access_tokens or server.access_tokens_file \
                   in the config file, KVREPLICA_ACCESS_TOKEN, KVREPLICA_ACCESS_TOKENS_FILE or \
                   DENO_KV_ACCESS_TOKEN, or pass --access-token TOKEN (clients send it as \
                   DENO_KV_ACCESS_TOKEN)",
        })?;
        let tokens = r.tokens(&given)?;
        for t in &tokens {
            auth::validate("an access token", t.expose())
                .map_err(|e| layer::bad(&keys::ACCESS_TOKENS, &given.origin, e.to_string()))?;
        }
        if let Some(given) = &m.admin_token {
            let token = r.secret(&keys::ADMIN_TOKEN, &keys::ADMIN_TOKEN_FILE, given)?;
            let bad = |reason: String| layer::bad(&keys::ADMIN_TOKEN, &given.origin, reason);
            auth::validate("the admin token", token.expose()).map_err(|e| bad(e.to_string()))?;
            if tokens.contains(&token) {
                return Err(bad(
                    "the admin token equals an access token; it must differ from \
                     every one, so that data clients cannot move the replica"
                        .into(),
                ));
            }
            admin_token = Some(token.expose().to_string());
        }
        access_tokens = tokens.iter().map(|t| t.expose().to_string()).collect();
    }

    Ok(Settings {
        source,
        db,
        s3,
        s3_credentials,
        gcs,
        remote,
        sync,
        addr: addr.value,
        access_tokens,
        admin_addr: admin_addr.value,
        admin_token,
        readers,
        log,
        origins: r.origins,
        secret_files: r.secret_files,
        watched: r.watched,
        inputs: Arc::new(Inputs {
            config: config_path,
            ..inputs.clone()
        }),
    })
}

/// Bookkeeping while one resolution runs: origins, files read.
struct Resolution {
    /// systemd's `$CREDENTIALS_DIRECTORY`, for relative `*_file` paths.
    credentials_dir: Option<PathBuf>,
    origins: BTreeMap<&'static str, Origin>,
    secret_files: BTreeMap<&'static str, PathBuf>,
    watched: Vec<PathBuf>,
}

impl Resolution {
    fn note(&mut self, key: &'static Key, origin: Origin) {
        self.origins.insert(key.name, origin);
    }

    fn optional<T>(&mut self, key: &'static Key, v: Option<Sourced<T>>) -> Option<T> {
        v.map(|v| {
            self.note(key, v.origin);
            v.value
        })
    }

    fn or<T>(&mut self, key: &'static Key, v: Option<Sourced<T>>, default: T) -> T {
        let v = v.unwrap_or(Sourced::new(default, Origin::Default));
        self.note(key, v.origin);
        v.value
    }

    fn required<T>(
        &mut self,
        key: &'static Key,
        v: Option<Sourced<T>>,
        hint: &'static str,
    ) -> Result<T, ConfigError> {
        self.optional(key, v).ok_or(ConfigError::Missing {
            key: key.name,
            hint,
        })
    }

    /// Reads the file of secret `key` given by `file_key` (resolved
    /// against `$CREDENTIALS_DIRECTORY`).
    fn read(
        &mut self,
        key: &'static Key,
        file_key: &'static Key,
        origin: &Origin,
        given: &Path,
    ) -> Result<(String, PathBuf), ConfigError> {
        let path = secret_path(given, self.credentials_dir.as_deref());
        let text = std::fs::read_to_string(&path).map_err(|error| ConfigError::SecretFile {
            key: file_key.name,
            origin: origin.clone(),
            path: path.clone(),
            error,
        })?;
        self.watched.push(path.clone());
        self.secret_files.insert(key.name, path.clone());
        Ok((text, path))
    }

    /// A single secret: the value, or the file's content without the
    /// trailing newline editors and `echo` add.
    fn secret(
        &mut self,
        key: &'static Key,
        file_key: &'static Key,
        given: &Sourced<SecretInput>,
    ) -> Result<Secret, ConfigError> {
        self.note(key, given.origin.clone());
        match &given.value {
            SecretInput::Value(v) => Ok(v.clone()),
            SecretInput::File(p) => {
                let (text, path) = self.read(key, file_key, &given.origin, p)?;
                let value = text.trim_end_matches(['\n', '\r']);
                if value.is_empty() {
                    return Err(layer::bad(
                        file_key,
                        &given.origin,
                        format!("{} is empty", path.display()),
                    ));
                }
                Ok(Secret::new(value))
            }
        }
    }

    /// Access tokens: the values, or a file with one per line (blank lines
    /// and lines starting with `#` skipped).
    fn tokens(&mut self, given: &Sourced<TokensInput>) -> Result<Vec<Secret>, ConfigError> {
        let key = &keys::ACCESS_TOKENS;
        self.note(key, given.origin.clone());
        match &given.value {
            TokensInput::Values(v) => Ok(v.clone()),
            TokensInput::File(p) => {
                let (text, path) = self.read(key, &keys::ACCESS_TOKENS_FILE, &given.origin, p)?;
                let tokens: Vec<Secret> = text
                    .lines()
                    .map(str::trim)
                    .filter(|l| !l.is_empty() && !l.starts_with('#'))
                    .map(Secret::new)
                    .collect();
                if tokens.is_empty() {
                    return Err(layer::bad(
                        &keys::ACCESS_TOKENS_FILE,
                        &given.origin,
                        format!("{} holds no token (one per line)", path.display()),
                    ));
                }
                Ok(tokens)
            }
        }
    }

    /// A key file the source reads itself: resolved like a secret file and
    /// checked to be readable now, rather than at the first request.
    fn key_file(
        &mut self,
        key: &'static Key,
        given: Sourced<PathBuf>,
    ) -> Result<PathBuf, ConfigError> {
        self.note(key, given.origin.clone());
        let path = secret_path(&given.value, self.credentials_dir.as_deref());
        std::fs::File::open(&path).map_err(|error| ConfigError::SecretFile {
            key: key.name,
            origin: given.origin.clone(),
            path: path.clone(),
            error,
        })?;
        self.watched.push(path.clone());
        Ok(path)
    }
}

/// A built-in default address, as a value of default origin.
fn default_addr(addr: &str) -> Sourced<SocketAddr> {
    Sourced::new(
        addr.parse().expect("built-in default addresses parse"),
        Origin::Default,
    )
}

/// The replica file for `kvreplica pitr`: `--db`, else `KVREPLICA_DB`, else
/// `DENO_KV_SQLITE_PATH`, else `db` in the config file.
pub fn resolve_db(config: Option<&Path>, flag: Option<PathBuf>) -> Result<PathBuf, ConfigError> {
    let env = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty());
    if let Some(p) = flag
        .or_else(|| env("KVREPLICA_DB").map(PathBuf::from))
        .or_else(|| env("DENO_KV_SQLITE_PATH").map(PathBuf::from))
    {
        return Ok(p);
    }
    if let Some(path) = config {
        let path = absolute(path);
        let text = std::fs::read_to_string(&path).map_err(|error| ConfigError::ReadConfig {
            path: path.clone(),
            error,
        })?;
        let file = file::layer(&path, &text)?;
        file.validate()?;
        if let Some(db) = file.db {
            return Ok(db.value);
        }
    }
    Err(ConfigError::Missing {
        key: keys::DB.name,
        hint: "pass --db PATH (or set KVREPLICA_DB or DENO_KV_SQLITE_PATH, or `db` in the \
               file given with --config)",
    })
}

/// `path` made absolute against the working directory, so that a reload
/// and a file watcher see the same file whatever happens later.
fn absolute(path: &Path) -> PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf())
}

/// A `*_file` path as given, resolved: relative paths against systemd's
/// `$CREDENTIALS_DIRECTORY` when set, else the working directory.
fn secret_path(given: &Path, credentials_dir: Option<&Path>) -> PathBuf {
    match credentials_dir {
        Some(dir) if given.is_relative() => dir.join(given),
        _ => absolute(given),
    }
}

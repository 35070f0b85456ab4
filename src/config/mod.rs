//! Settings of `kvreplica sync|serve`: one TOML file, environment variables
//! and command-line flags, merged key by key.
//!
//! # One table
//! Every setting is one entry of `table.rs`: its key, type and checks, its
//! field in [`Settings`], its variables, flag and help, whether a reload
//! applies it. The rest is derived from that table: the file walk
//! (`file.rs`), the environment and flag layers (`layer.rs`), the clap
//! arguments (`args.rs`), `check-config`'s output (`render.rs`), the list
//! of changes that need a restart (`restart.rs`) and the README's table
//! (`readme.rs`, checked by a test). `resolve.rs` adds the rules that span
//! keys: secrets read from files, the S3 key pair, the two listeners.
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

mod args;
mod file;
mod layer;
#[cfg(test)]
mod readme;
mod render;
mod resolve;
mod restart;
mod table;
#[cfg(test)]
mod tests;
mod value;

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;

use crate::backup::Backup;
use crate::source::s3::S3Credentials;
use crate::source::{self, GcsOptions, RemoteOptions, S3Options, SourceError, SourceUrl};
use crate::sync::SyncOptions;

pub use crate::logging::LogFormat;
pub use args::{PitrDbArgs, SettingArgs};
pub use layer::Flags;
pub use resolve::resolve_with;
pub use restart::RestartOnly;
pub(crate) use table::{SERVE, SYNC};

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
    #[error("{key} {origin}: cannot read {}: {error}{hint}", path.display())]
    SecretFile {
        key: &'static str,
        origin: Origin,
        path: PathBuf,
        error: std::io::Error,
        /// How a relative name was looked up, when systemd did not set
        /// `$CREDENTIALS_DIRECTORY`; else empty.
        hint: String,
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
    /// KV Connect's TLS certificate and key (`server.tls_*_file`).
    pub tls: crate::server::tls::TlsPaths,
    /// Open KV Connect connections per client address
    /// (`server.max_connections_per_address`).
    pub max_connections_per_address: usize,
    /// The admin API's TLS certificate and key (`admin.tls_*_file`).
    pub admin_tls: crate::server::tls::TlsPaths,
    /// Log level and format (`[log]`).
    pub log: LogSettings,
    /// Where each key's value came from, by dotted key name.
    origins: BTreeMap<&'static str, Origin>,
    /// Secrets given as files: dotted key name to the file read.
    secret_files: BTreeMap<&'static str, PathBuf>,
    /// The config file and every file a secret was read from.
    watched: Vec<PathBuf>,
    /// Bad values in the file of keys this command does not use, left out.
    ignored: Vec<String>,
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

    /// Bad values in the config file of keys the command does not use
    /// (`[server]` for `sync`): left out, each a message to log as a
    /// warning once logging is set up.
    pub fn ignored(&self) -> &[String] {
        &self.ignored
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

/// The replica file for `kvreplica pitr`: `--db`, else the variables of
/// `db` (`KVREPLICA_DB`, else `DENO_KV_SQLITE_PATH`), else `db` in the
/// config file.
pub fn resolve_db(config: Option<&Path>, flag: Option<PathBuf>) -> Result<PathBuf, ConfigError> {
    let db = table::setting("db");
    let env = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty());
    if let Some(p) = flag.or_else(|| db.env.iter().find_map(|n| env(n)).map(PathBuf::from)) {
        return Ok(p);
    }
    if let Some(path) = config {
        let path = absolute(path);
        let text = std::fs::read_to_string(&path).map_err(|error| ConfigError::ReadConfig {
            path: path.clone(),
            error,
        })?;
        let mut skipped = Vec::new();
        let file = file::layer(&path, &text, &|s| s.name == db.name, &mut skipped)?;
        file.validate()?;
        for e in skipped {
            tracing::warn!("{e} (ignored: pitr reads only `db` from the file)");
        }
        if let Some(value::Value::Path(p)) = file.get(db.name).map(|e| &e.value) {
            return Ok(p.clone());
        }
    }
    Err(ConfigError::Missing {
        key: db.name,
        hint: "pass --db PATH (or set KVREPLICA_DB or DENO_KV_SQLITE_PATH, or `db` in the \
               file given with --config)",
    })
}

/// `--config` (`flag`), else a non-empty `$KVREPLICA_CONFIG`.
pub fn config_path(flag: Option<PathBuf>) -> Option<PathBuf> {
    flag.or_else(|| {
        std::env::var_os("KVREPLICA_CONFIG")
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
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

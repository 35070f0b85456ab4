//! The one table of settings. Each entry says everything about a setting:
//! its dotted TOML name, its type and checks, where it lives in
//! [`Settings`], its environment variables, its flag and help text, which
//! commands take it, whether a reload may change it. The file, environment
//! and flag parsers, the clap arguments, `check-config`'s output, the
//! reload's restart list and the README's table are all derived from it,
//! so adding a setting is one entry here plus the code that uses it.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use super::value::{SecretInput, TokensInput, Value};
use super::{LogFormat, Settings};
use crate::source::SourceUrl;
use crate::store::KeyFilter;
use crate::sync::OnReexport;

/// What a setting holds, and so how it is parsed and checked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    /// A non-blank string.
    Text,
    /// A non-empty path.
    Path,
    /// A non-empty path to a key file the source reads itself: resolved
    /// like a secret file and checked to be readable at resolution.
    KeyFile,
    /// `true` or `false` (also `1`/`0`, `yes`/`no`, `on`/`off` in the
    /// environment).
    Bool,
    /// A whole number from `min` to `max`.
    Count { min: u64, max: u64 },
    /// A humantime duration such as `"250ms"`; `positive` refuses zero.
    Duration { positive: bool },
    /// `IP:PORT`, `HOST:PORT` or `:PORT` (see `value::addr`).
    Addr,
    /// A backup location URL.
    Source,
    /// A log filter (`RUST_LOG` syntax from `RUST_LOG`, a level otherwise).
    LogLevel,
    /// `plain` or `json`.
    LogFormat,
    /// `stop` or `rebuild` (see [`crate::sync::OnReexport`]).
    OnReexport,
    /// A secret value; never printed.
    Secret,
    /// A list of secret tokens (repeatable flag, TOML array).
    Tokens,
    /// A list of Deno KV key prefixes, each a JSON key: a repeatable flag
    /// (one key, or a JSON array of keys, each), a variable holding one
    /// key or a JSON array of keys, a TOML array of keys (TOML arrays or
    /// JSON strings).
    Prefixes,
    /// The `*_file` form of the secret (or tokens) setting `of`: a path to
    /// read the value from. It shares its layer slot with `of`.
    FileOf { of: &'static str },
}

/// The commands whose flags include a setting (a bit set).
pub(crate) type Commands = u8;
/// `kvreplica sync`.
pub(crate) const SYNC: Commands = 1;
/// `kvreplica serve` and `check-config` (which takes every flag of serve).
pub(crate) const SERVE: Commands = 2;
/// Both.
const RUN: Commands = SYNC | SERVE;

/// A setting's command-line flag.
#[derive(Debug)]
pub(crate) struct Flag {
    /// `--page-size`.
    pub long: &'static str,
    /// The placeholder in `--help`: `N` shows as `<N>`.
    pub value_name: &'static str,
    /// Position in `--help`, which groups flags by topic rather than by
    /// file table.
    pub position: u8,
    /// The commands that take it.
    pub commands: Commands,
}

/// The environment as resolution sees it: `None` for unset and empty.
pub(crate) type Env<'a> = dyn Fn(&str) -> Option<String> + 'a;

/// A denokv-style environment fallback that is not a single variable.
#[derive(Debug)]
pub(crate) struct EnvFallback {
    /// How `--help` and the README name it.
    pub doc: &'static str,
    /// Reads it: the raw value and the variable to name as its origin.
    pub read: fn(&Env) -> Option<(String, &'static str)>,
}

/// Reads a setting's value from [`Settings`].
pub(crate) type Getter = fn(&Settings) -> Option<Value>;
/// Stores a checked value into [`Settings`].
pub(crate) type Setter = fn(&mut Settings, Value);

/// One setting.
#[derive(Debug)]
pub(crate) struct Setting {
    /// Dotted TOML key, e.g. `sync.poll_interval`; errors and origins name it.
    pub name: &'static str,
    pub kind: Kind,
    /// The doc comment: the help text before the `[default: …]` part.
    pub doc: &'static str,
    /// How `--help` and the README describe the default when it is not a
    /// plain value of the built-in settings (`None`: that value, if any).
    pub default_doc: Option<&'static str>,
    /// `Some(hint)`: there is no default, and the hint says how to set it.
    pub required: Option<&'static str>,
    /// Environment variables, first wins: kvreplica's own, then denokv's.
    pub env: &'static [&'static str],
    pub env_fallback: Option<&'static EnvFallback>,
    pub flag: Option<Flag>,
    /// A running `serve` takes a change on reload; any other change is
    /// reported as needing a restart.
    pub reloadable: bool,
    /// The effective value, for `check-config`, help defaults and the
    /// restart comparison (`None` for a file form).
    pub get: Option<Getter>,
    /// Stores the value; `None` for settings resolved by hand (secrets,
    /// which need reading and cross-checks).
    pub set: Option<Setter>,
}

impl Setting {
    /// The key inside its TOML table: `poll_interval` for `sync.poll_interval`.
    pub fn leaf(&self) -> &'static str {
        self.name.rsplit('.').next().unwrap_or(self.name)
    }

    /// The TOML table it lives in, `""` at the top level.
    pub fn table(&self) -> &'static str {
        self.name.rsplit_once('.').map(|(t, _)| t).unwrap_or("")
    }

    /// The `*_file` form of this secret, if it has one.
    pub fn file_form(&'static self) -> Option<&'static Setting> {
        SETTINGS
            .iter()
            .find(|s| s.kind == Kind::FileOf { of: self.name })
    }

    /// The help text before the bracket: the doc comment.
    pub fn help(&self) -> &'static str {
        self.doc.trim()
    }

    /// How the default reads in `--help` and the README: the built-in
    /// value, or the entry's own words; `None` for a required setting or
    /// one without a default.
    pub fn default_text(&self) -> Option<String> {
        if self.required.is_some() {
            return None;
        }
        // Built once per process: every command line builds the help of
        // every setting, and the built-in values probe the CPU quota
        // (`available_parallelism`, a few cgroup files each time), which
        // was a visible part of a short `pitr checkout`.
        static BUILT_IN: std::sync::OnceLock<Settings> = std::sync::OnceLock::new();
        let built_in = || {
            BUILT_IN.get_or_init(|| {
                let inputs = super::Inputs {
                    config: None,
                    flags: super::Flags::default(),
                    purpose: super::Purpose::Serve,
                };
                Settings::built_in(std::sync::Arc::new(inputs))
            })
        };
        let value = || (self.get?)(built_in()).map(|v| v.plain());
        self.default_doc.map(String::from).or_else(value)
    }

    /// The environment variables, first wins, with the fallback's
    /// description last.
    pub fn env_names(&self) -> Vec<&'static str> {
        let fallback = self.env_fallback.map(|f| f.doc);
        self.env.iter().copied().chain(fallback).collect()
    }

    /// The setting whose layer slot this one fills: itself, or for a file
    /// form the secret it is the file of.
    pub fn slot(&'static self) -> &'static Setting {
        match self.kind {
            Kind::FileOf { of } => setting(of),
            _ => self,
        }
    }
}

/// The setting called `name`. Panics on a name the table lacks: callers
/// pass literals.
pub(crate) fn setting(name: &str) -> &'static Setting {
    SETTINGS
        .iter()
        .find(|s| s.name == name)
        .unwrap_or_else(|| panic!("no setting {name}"))
}

/// Index of `name` in [`SETTINGS`].
pub(crate) fn index(name: &str) -> usize {
    SETTINGS
        .iter()
        .position(|s| s.name == name)
        .unwrap_or_else(|| panic!("no setting {name}"))
}

/// Converts between a [`Settings`] field and a [`Value`].
pub(crate) trait Field: Sized {
    fn to_value(&self) -> Option<Value>;
    fn from_value(v: Value) -> Option<Self>;
}

macro_rules! field {
    ($t:ty, $variant:ident) => {
        impl Field for $t {
            fn to_value(&self) -> Option<Value> {
                Some(Value::$variant(self.clone()))
            }
            fn from_value(v: Value) -> Option<Self> {
                match v {
                    Value::$variant(x) => Some(x),
                    _ => None,
                }
            }
        }
    };
}
field!(String, Text);
field!(PathBuf, Path);
field!(bool, Bool);
field!(u64, Count);
field!(Duration, Duration);
field!(SocketAddr, Addr);
field!(SourceUrl, Source);
field!(LogFormat, Format);
field!(OnReexport, OnReexport);

impl Field for usize {
    fn to_value(&self) -> Option<Value> {
        Some(Value::Count(*self as u64))
    }
    fn from_value(v: Value) -> Option<Self> {
        u64::from_value(v).map(|n| n as usize)
    }
}

impl<T: Field> Field for Option<T> {
    fn to_value(&self) -> Option<Value> {
        self.as_ref().and_then(T::to_value)
    }
    fn from_value(v: Value) -> Option<Self> {
        T::from_value(v).map(Some)
    }
}

/// The field holds the value as is.
struct Plain;

impl Plain {
    fn get<F: Field>(f: &F) -> Option<Value> {
        f.to_value()
    }
    fn set<F: Field>(f: &mut F, v: Value) {
        if let Some(v) = F::from_value(v) {
            *f = v;
        }
    }
}

/// One list of a [`crate::store::KeyFilter`]; unset when empty.
struct IncludePrefixes;
struct ExcludePrefixes;

impl IncludePrefixes {
    fn get(f: &KeyFilter) -> Option<Value> {
        (!f.include().is_empty()).then(|| Value::Prefixes(f.include().to_vec()))
    }
    fn set(f: &mut KeyFilter, v: Value) {
        if let Value::Prefixes(p) = v {
            *f = KeyFilter::new(p, f.exclude().to_vec());
        }
    }
}

impl ExcludePrefixes {
    fn get(f: &KeyFilter) -> Option<Value> {
        (!f.exclude().is_empty()).then(|| Value::Prefixes(f.exclude().to_vec()))
    }
    fn set(f: &mut KeyFilter, v: Value) {
        if let Value::Prefixes(p) = v {
            *f = KeyFilter::new(f.include().to_vec(), p);
        }
    }
}

/// The setting is in MiB, the field in bytes.
struct Mib;

impl Mib {
    fn get(bytes: &u64) -> Option<Value> {
        Some(Value::Count(bytes >> 20))
    }
    fn set(bytes: &mut u64, v: Value) {
        if let Value::Count(mib) = v {
            *bytes = mib << 20;
        }
    }
}

/// `get`/`set` of an entry: `field(path)` (optionally `as Conversion`),
/// `get(closure)` for a read-only view, `none()` for a file form.
macro_rules! access {
    (field($($f:ident).+)) => { access!(field($($f).+ as Plain)) };
    (field($($f:ident).+ as $conv:ident)) => {
        (
            Some((|s: &Settings| $conv::get(&s.$($f).+)) as Getter),
            Some((|s: &mut Settings, v: Value| $conv::set(&mut s.$($f).+, v)) as Setter),
        )
    };
    (get($get:expr)) => { (Some($get as Getter), None) };
    (none()) => { (None, None) };
}

/// The table. Each entry:
///
/// ```text
/// /// Help text.
/// "dotted.name": Kind => field(path.in.settings), [flag "--x" <VALUE> @position in COMMANDS,]
///     env ["KVREPLICA_X", "DENOKV_X"] [else FALLBACK],
///     [default "text for --help",] [required "hint",] [reloadable true,]
/// ```
macro_rules! settings {
    ($(
        $(#[doc = $doc:literal])*
        $name:literal : $kind:expr => $acc:ident($($accargs:tt)*),
        $(flag $long:literal <$value:ident> @ $pos:literal in $cmds:expr,)?
        env [$($env:literal),*] $(else $fallback:ident)?,
        $(default $default:literal,)?
        $(required $hint:literal,)?
        $(reloadable $reloadable:literal,)?
    )*) => {
        /// Every setting, in the config file's order.
        pub(crate) static SETTINGS: &[Setting] = &[$({
            let (get, set) = access!($acc($($accargs)*));
            Setting {
                name: $name,
                kind: $kind,
                doc: concat!($($doc),*),
                default_doc: opt!($($default)?),
                required: opt!($($hint)?),
                env: &[$($env),*],
                env_fallback: opt!($(&$fallback)?),
                flag: opt!($(Flag {
                    long: $long,
                    value_name: stringify!($value),
                    position: $pos,
                    commands: $cmds,
                })?),
                reloadable: false $(|| $reloadable)?,
                get,
                set,
            }
        }),*];
    };
}

/// `Some` of the argument, `None` without one.
macro_rules! opt {
    () => {
        None
    };
    ($x:expr) => {
        Some($x)
    };
}

/// `s3://$DENO_KV_S3_BUCKET/$DENO_KV_S3_PREFIX`, denokv's way of naming
/// the backup.
static S3_BUCKET_PREFIX: EnvFallback = EnvFallback {
    doc: "s3://$DENO_KV_S3_BUCKET/$DENO_KV_S3_PREFIX",
    read: |env| {
        let bucket = env("DENO_KV_S3_BUCKET")?;
        let prefix = env("DENO_KV_S3_PREFIX").unwrap_or_default();
        Some((format!("s3://{bucket}/{prefix}"), "DENO_KV_S3_BUCKET"))
    },
};

/// Upper bound of `sync.max_mib_in_flight`: 1 TiB, far above any memory,
/// and small enough that the byte count cannot overflow.
const MAX_MIB: u64 = 1 << 20;

/// S3's ListObjectsV2 returns at most 1000 keys per page; so does GCS.
const MAX_PAGE_SIZE: u64 = 1000;

const ANY: u64 = u64::MAX;

fn s3_key_id(s: &Settings) -> Option<Value> {
    s.s3_credentials
        .as_ref()
        .map(|c| Value::Text(c.access_key_id.clone()))
}

fn s3_secret(s: &Settings) -> Option<Value> {
    let c = s.s3_credentials.as_ref()?;
    Some(Value::Secret(SecretInput::Value(super::Secret::new(
        c.secret_access_key.clone(),
    ))))
}

fn access_tokens(s: &Settings) -> Option<Value> {
    let tokens = s.access_tokens.iter().map(super::Secret::new).collect();
    (!s.access_tokens.is_empty()).then_some(Value::Tokens(TokensInput::Values(tokens)))
}

fn admin_token(s: &Settings) -> Option<Value> {
    let token = s.admin_token.as_ref()?;
    Some(Value::Secret(SecretInput::Value(super::Secret::new(token))))
}

#[rustfmt::skip]
settings! {
    /// Backup location: s3://bucket/prefix/, gs://bucket/prefix/ or
    /// file:///dir/prefix/
    "source": Kind::Source => field(source), flag "--source" <URL> @1 in RUN,
        env ["KVREPLICA_SOURCE"] else S3_BUCKET_PREFIX,
        required "set `source` in the config file or KVREPLICA_SOURCE (or DENO_KV_S3_BUCKET and \
                  DENO_KV_S3_PREFIX), or pass --source s3://bucket/prefix/, gs://bucket/prefix/ \
                  or file:///dir/",
    /// The replica SQLite file, created if missing
    "db": Kind::Path => field(db), flag "--db" <PATH> @2 in RUN,
        env ["KVREPLICA_DB", "DENO_KV_SQLITE_PATH"],
        required "set `db` in the config file or KVREPLICA_DB (or DENO_KV_SQLITE_PATH), \
                  or pass --db PATH",
    /// S3-compatible endpoint URL (MinIO, R2, ...)
    "s3.endpoint": Kind::Text => field(s3.endpoint), flag "--s3-endpoint" <URL> @3 in RUN,
        env ["KVREPLICA_S3_ENDPOINT", "DENO_KV_S3_ENDPOINT"],
    /// S3 region
    "s3.region": Kind::Text => field(s3.region), flag "--s3-region" <REGION> @4 in RUN,
        env ["KVREPLICA_S3_REGION"], default "$AWS_REGION, else us-east-1",
    /// Path-style bucket addressing
    "s3.path_style": Kind::Bool => field(s3.path_style), flag "--s3-path-style" <BOOL> @5 in RUN,
        env ["KVREPLICA_S3_PATH_STYLE"], default "on with an endpoint, off for AWS",
    /// Static S3 access key id, instead of the AWS credential chain
    "s3.access_key_id": Kind::Text => get(s3_key_id), flag "--s3-access-key-id" <ID> @6 in RUN,
        env ["KVREPLICA_S3_ACCESS_KEY_ID"],
    /// The secret key of s3.access_key_id (not a flag: command lines are
    /// visible to every local user)
    "s3.secret_access_key": Kind::Secret => get(s3_secret),
        env ["KVREPLICA_S3_SECRET_ACCESS_KEY"],
    /// File holding the secret key of --s3-access-key-id
    "s3.secret_access_key_file": Kind::FileOf { of: "s3.secret_access_key" } => none(), flag "--s3-secret-access-key-file" <PATH> @7 in RUN,
        env ["KVREPLICA_S3_SECRET_ACCESS_KEY_FILE"],
    /// Service-account JSON key file for gs:// sources. Without it:
    /// $GOOGLE_APPLICATION_CREDENTIALS, gcloud's application-default
    /// credentials, the GCE/GKE metadata server, else anonymous
    "gcs.credentials_file": Kind::KeyFile => field(gcs.credentials_file), flag "--gcs-credentials-file" <PATH> @8 in RUN,
        env ["KVREPLICA_GCS_CREDENTIALS_FILE"],
    /// GCS JSON API endpoint, for an emulator (e.g. http://127.0.0.1:4443);
    /// falls back to $STORAGE_EMULATOR_HOST
    "gcs.endpoint": Kind::Text => field(gcs.endpoint), flag "--gcs-endpoint" <URL> @9 in RUN,
        env ["KVREPLICA_GCS_ENDPOINT"],
    /// Time between polls of the bucket when caught up, e.g. 1s, 250ms
    "sync.poll_interval": Kind::Duration { positive: true } => field(sync.poll_interval), flag "--poll-interval" <DURATION> @11 in RUN,
        env ["KVREPLICA_POLL_INTERVAL"], reloadable true,
    /// Leave log objects younger than this (at the start of a poll round)
    /// for a later round, in case an earlier upload is still landing
    "sync.settle": Kind::Duration { positive: false } => field(sync.settle), flag "--settle" <DURATION> @12 in RUN,
        env ["KVREPLICA_SETTLE"],
    /// Log objects behind the cursor listed again each poll round to find
    /// one that became visible late (out of name order), which is then
    /// folded in; 0 turns the check off
    "sync.late_window": Kind::Count { min: 0, max: ANY } => field(sync.late_window), flag "--late-window" <N> @12 in RUN,
        env ["KVREPLICA_LATE_WINDOW"],
    /// Downloads in flight at once
    "sync.fetch_concurrency": Kind::Count { min: 1, max: ANY } => field(sync.fetch_concurrency), flag "--fetch-concurrency" <N> @13 in RUN,
        env ["KVREPLICA_FETCH_CONCURRENCY"],
    /// Upper bound of downloaded-but-not-yet-applied data, in MiB
    "sync.max_mib_in_flight": Kind::Count { min: 1, max: MAX_MIB } => field(sync.max_bytes_in_flight as Mib), flag "--max-mib-in-flight" <MIB> @14 in RUN,
        env ["KVREPLICA_MAX_MIB_IN_FLIGHT"],
    /// Objects per listing request, 1 to 1000
    "sync.page_size": Kind::Count { min: 1, max: MAX_PAGE_SIZE } => field(sync.page_size), flag "--page-size" <N> @15 in RUN,
        env ["KVREPLICA_PAGE_SIZE"],
    /// Timeout of each request to the object store
    "sync.request_timeout": Kind::Duration { positive: true } => field(remote.request_timeout), flag "--request-timeout" <DURATION> @10 in RUN,
        env ["KVREPLICA_REQUEST_TIMEOUT"],
    /// Keep at most this many recoverable points
    "sync.retain_points": Kind::Count { min: 1, max: ANY } => field(sync.retention.max_points), flag "--retain-points" <N> @16 in RUN,
        env ["KVREPLICA_RETAIN_POINTS"], default "all",
    /// Keep recoverable points at most this old, measured from the newest
    /// commit, e.g. 7d, 12h
    "sync.retain_for": Kind::Duration { positive: true } => field(sync.retention.max_age), flag "--retain-for" <DURATION> @17 in RUN,
        env ["KVREPLICA_RETAIN_FOR"], default "forever",
    /// What to do when the backup is re-exported under the same prefix:
    /// stop (keep serving the old state, readiness fails) or rebuild (build
    /// a replica of the new export beside the file, serve the old one
    /// meanwhile, then switch to it in one transaction)
    "sync.on_reexport": Kind::OnReexport => field(sync.on_reexport), flag "--on-reexport" <POLICY> @17 in RUN,
        env ["KVREPLICA_ON_REEXPORT"],
    /// Store only keys under these prefixes (Deno KV keys as JSON, e.g.
    /// ["users"] or ["orders", {"bigint": "42"}]); repeat the flag for
    /// several. Fixed for the life of the file. Unset: every key
    "sync.include_prefixes": Kind::Prefixes => field(sync.filter as IncludePrefixes), flag "--include-prefix" <KEY> @17 in RUN,
        env ["KVREPLICA_INCLUDE_PREFIXES"],
    /// Leave out keys under these prefixes (same form), also inside an
    /// included prefix. Fixed for the life of the file
    "sync.exclude_prefixes": Kind::Prefixes => field(sync.filter as ExcludePrefixes), flag "--exclude-prefix" <KEY> @17 in RUN,
        env ["KVREPLICA_EXCLUDE_PREFIXES"],
    /// Address of the KV Connect listener (Deno.openKv("http://HOST:PORT")).
    /// Use 127.0.0.1:4512 to accept local clients only; port 0 picks a free
    /// port
    "server.addr": Kind::Addr => field(addr), flag "--addr" <ADDR> @20 in SERVE,
        env ["KVREPLICA_ADDR"],
    /// Access token clients must present (at least 12 characters). Repeat
    /// the flag to accept several during a rotation
    "server.access_tokens": Kind::Tokens => get(access_tokens), flag "--access-token" <TOKEN> @21 in SERVE,
        env ["KVREPLICA_ACCESS_TOKEN", "DENO_KV_ACCESS_TOKEN"], reloadable true,
    /// File of access tokens, one per line
    "server.access_tokens_file": Kind::FileOf { of: "server.access_tokens" } => none(), flag "--access-tokens-file" <PATH> @22 in SERVE,
        env ["KVREPLICA_ACCESS_TOKENS_FILE"], reloadable true,
    /// Read-only SQLite connections serving KV Connect requests
    "server.readers": Kind::Count { min: 1, max: ANY } => field(readers), flag "--readers" <N> @26 in SERVE,
        env ["KVREPLICA_READERS"], default "2 per core, 4 to 32",
    /// PEM certificate chain for KV Connect over TLS
    /// (Deno.openKv("https://HOST:PORT")); with server.tls_key_file.
    /// Re-read when it changes
    "server.tls_cert_file": Kind::KeyFile => field(tls.cert_file), flag "--tls-cert-file" <PATH> @27 in SERVE,
        env ["KVREPLICA_TLS_CERT_FILE"], reloadable true,
    /// PEM private key of server.tls_cert_file
    "server.tls_key_file": Kind::KeyFile => field(tls.key_file), flag "--tls-key-file" <PATH> @28 in SERVE,
        env ["KVREPLICA_TLS_KEY_FILE"], reloadable true,
    /// Open KV Connect connections from one client address (IPv6: one
    /// /64); more are refused. Behind a reverse proxy, raise it to 1024
    "server.max_connections_per_address": Kind::Count { min: 1, max: ANY } => field(max_connections_per_address), flag "--max-connections-per-address" <N> @29 in SERVE,
        env ["KVREPLICA_MAX_CONNECTIONS_PER_ADDRESS"],
    /// Address of the admin listener: PITR API, operator console (/console/),
    /// /healthz, /readyz, /metrics
    "admin.addr": Kind::Addr => field(admin_addr), flag "--admin-addr" <ADDR> @23 in SERVE,
        env ["KVREPLICA_ADMIN_ADDR"],
    /// Bearer token of the PITR admin API (at least 12 characters, distinct
    /// from every access token). Without it the /pitr endpoints and the
    /// console are off; health and metrics stay available
    "admin.token": Kind::Secret => get(admin_token), flag "--admin-token" <TOKEN> @24 in SERVE,
        env ["KVREPLICA_ADMIN_TOKEN"], reloadable true,
    /// File holding the admin token
    "admin.token_file": Kind::FileOf { of: "admin.token" } => none(), flag "--admin-token-file" <PATH> @25 in SERVE,
        env ["KVREPLICA_ADMIN_TOKEN_FILE"], reloadable true,
    /// PEM certificate chain for the admin API over TLS; with
    /// admin.tls_key_file. Re-read when it changes
    "admin.tls_cert_file": Kind::KeyFile => field(admin_tls.cert_file), flag "--admin-tls-cert-file" <PATH> @30 in SERVE,
        env ["KVREPLICA_ADMIN_TLS_CERT_FILE"], reloadable true,
    /// PEM private key of admin.tls_cert_file
    "admin.tls_key_file": Kind::KeyFile => field(admin_tls.key_file), flag "--admin-tls-key-file" <PATH> @31 in SERVE,
        env ["KVREPLICA_ADMIN_TLS_KEY_FILE"], reloadable true,
    /// Log level filter, e.g. info or warn,kvreplica=debug
    "log.level": Kind::LogLevel => field(log.level), flag "--log-level" <FILTER> @18 in RUN,
        env ["KVREPLICA_LOG_LEVEL", "RUST_LOG"], reloadable true,
    /// Log format: plain or json
    "log.format": Kind::LogFormat => field(log.format), flag "--log-format" <FORMAT> @19 in RUN,
        env ["KVREPLICA_LOG_FORMAT"],
}

//! The `kvreplica` command line: shared arguments here, one file per
//! subcommand.
//!
//! Flags that set a config key are all optional and carry no default: the
//! defaults, the config file and the environment are applied by
//! [`crate::config`], so that a flag always wins and an unset flag never
//! hides the file.

mod check_config;
mod pitr;
mod serve;
mod sync;

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::config::{Flags, LogFormat};

/// Keeps a live, read-only replica of a Deno KV database from the backups
/// Deno Deploy writes to S3, GCS or a directory.
#[derive(Debug, Parser)]
#[command(name = "kvreplica", version, about, after_long_help = crate::exit::HELP)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Sync the replica file to the newest point in the backup, then exit
    /// (or keep following with --follow).
    Sync(sync::SyncArgs),
    /// Sync continuously and serve the replica to Deno KV clients (KV Connect).
    Serve(serve::ServeArgs),
    /// Point-in-time recovery on a replica file: list points, show the
    /// position, check out a point.
    Pitr(pitr::PitrArgs),
    /// Check the configuration of `serve` (file, environment, flags) and
    /// print the effective settings, secrets redacted; exits non-zero with
    /// the error otherwise.
    CheckConfig(check_config::CheckConfigArgs),
}

/// Where to read from and where the replica lives. Each flag overrides the
/// config key and environment variable named in its help.
#[derive(Debug, Args)]
pub struct SourceArgs {
    /// Backup location: s3://bucket/prefix/, gs://bucket/prefix/ or
    /// file:///dir/prefix/ [config: source; env: KVREPLICA_SOURCE, else
    /// s3://$DENO_KV_S3_BUCKET/$DENO_KV_S3_PREFIX]
    #[arg(long, value_name = "URL")]
    pub source: Option<String>,

    /// The replica SQLite file, created if missing [config: db; env:
    /// KVREPLICA_DB, DENO_KV_SQLITE_PATH]
    #[arg(long, value_name = "PATH")]
    pub db: Option<PathBuf>,

    /// S3-compatible endpoint URL (MinIO, R2, ...) [config: s3.endpoint;
    /// env: KVREPLICA_S3_ENDPOINT, DENO_KV_S3_ENDPOINT]
    #[arg(long, value_name = "URL")]
    pub s3_endpoint: Option<String>,

    /// S3 region [default: $AWS_REGION, else us-east-1; config: s3.region;
    /// env: KVREPLICA_S3_REGION]
    #[arg(long, value_name = "REGION")]
    pub s3_region: Option<String>,

    /// Path-style bucket addressing [default: on with an endpoint, off for
    /// AWS; config: s3.path_style; env: KVREPLICA_S3_PATH_STYLE]
    #[arg(long, value_name = "BOOL")]
    pub s3_path_style: Option<bool>,

    /// Static S3 access key id, instead of the AWS credential chain
    /// [config: s3.access_key_id; env: KVREPLICA_S3_ACCESS_KEY_ID]
    #[arg(long, value_name = "ID")]
    pub s3_access_key_id: Option<String>,

    /// File holding the secret key of --s3-access-key-id [config:
    /// s3.secret_access_key_file; env: KVREPLICA_S3_SECRET_ACCESS_KEY_FILE]
    #[arg(long, value_name = "PATH")]
    pub s3_secret_access_key_file: Option<PathBuf>,

    /// Service-account JSON key file for gs:// sources. Without it:
    /// $GOOGLE_APPLICATION_CREDENTIALS, gcloud's application-default
    /// credentials, the GCE/GKE metadata server, else anonymous [config:
    /// gcs.credentials_file; env: KVREPLICA_GCS_CREDENTIALS_FILE]
    #[arg(long, value_name = "PATH")]
    pub gcs_credentials_file: Option<PathBuf>,

    /// GCS JSON API endpoint, for an emulator (e.g. http://127.0.0.1:4443);
    /// falls back to $STORAGE_EMULATOR_HOST [config: gcs.endpoint; env:
    /// KVREPLICA_GCS_ENDPOINT]
    #[arg(long, value_name = "URL")]
    pub gcs_endpoint: Option<String>,

    /// Timeout of each request to the object store [default: 30s; config:
    /// sync.request_timeout; env: KVREPLICA_REQUEST_TIMEOUT]
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub request_timeout: Option<Duration>,
}

/// Knobs of the sync engine.
#[derive(Debug, Args)]
pub struct EngineArgs {
    /// Time between polls of the bucket when caught up, e.g. 1s, 250ms
    /// [default: 1s; config: sync.poll_interval; env: KVREPLICA_POLL_INTERVAL]
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub poll_interval: Option<Duration>,

    /// Leave log objects younger than this (at the start of a poll round)
    /// for a later round, in case an earlier upload is still landing
    /// [default: 0s; config: sync.settle; env: KVREPLICA_SETTLE]
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub settle: Option<Duration>,

    /// Downloads in flight at once [default: 64; config:
    /// sync.fetch_concurrency; env: KVREPLICA_FETCH_CONCURRENCY]
    #[arg(long, value_name = "N")]
    pub fetch_concurrency: Option<u64>,

    /// Upper bound of downloaded-but-not-yet-applied data, in MiB [default:
    /// 16; config: sync.max_mib_in_flight; env: KVREPLICA_MAX_MIB_IN_FLIGHT]
    #[arg(long, value_name = "MIB")]
    pub max_mib_in_flight: Option<u64>,

    /// Objects per listing request, 1 to 1000 [default: 1000; config:
    /// sync.page_size; env: KVREPLICA_PAGE_SIZE]
    #[arg(long, value_name = "N")]
    pub page_size: Option<u64>,

    /// Keep at most this many recoverable points [default: all; config:
    /// sync.retain_points; env: KVREPLICA_RETAIN_POINTS]
    #[arg(long, value_name = "N")]
    pub retain_points: Option<u64>,

    /// Keep recoverable points at most this old, measured from the newest
    /// commit, e.g. 7d, 12h [default: forever; config: sync.retain_for;
    /// env: KVREPLICA_RETAIN_FOR]
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub retain_for: Option<Duration>,
}

/// Log output.
#[derive(Debug, Args)]
pub struct LogArgs {
    /// Log level filter, e.g. info or warn,kvreplica=debug [default: info;
    /// config: log.level; env: KVREPLICA_LOG_LEVEL, else RUST_LOG]
    #[arg(long, value_name = "FILTER")]
    pub log_level: Option<String>,

    /// Log format: plain or json [default: plain; config: log.format; env:
    /// KVREPLICA_LOG_FORMAT]
    #[arg(long, value_name = "FORMAT", value_parser = parse_log_format)]
    pub log_format: Option<LogFormat>,
}

/// `--config`, else a non-empty `$KVREPLICA_CONFIG`.
pub fn config_path(flag: &Option<PathBuf>) -> Option<PathBuf> {
    flag.clone().or_else(|| {
        std::env::var_os("KVREPLICA_CONFIG")
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    })
}

fn parse_log_format(s: &str) -> Result<LogFormat, String> {
    s.parse()
}

impl SourceArgs {
    /// Copies the flags given into `flags`.
    pub fn apply(&self, flags: &mut Flags) {
        flags.source = self.source.clone();
        flags.db = self.db.clone();
        flags.s3_endpoint = self.s3_endpoint.clone();
        flags.s3_region = self.s3_region.clone();
        flags.s3_path_style = self.s3_path_style;
        flags.s3_access_key_id = self.s3_access_key_id.clone();
        flags.s3_secret_access_key_file = self.s3_secret_access_key_file.clone();
        flags.gcs_credentials_file = self.gcs_credentials_file.clone();
        flags.gcs_endpoint = self.gcs_endpoint.clone();
        flags.request_timeout = self.request_timeout;
    }
}

impl EngineArgs {
    /// Copies the flags given into `flags`.
    pub fn apply(&self, flags: &mut Flags) {
        flags.poll_interval = self.poll_interval;
        flags.settle = self.settle;
        flags.fetch_concurrency = self.fetch_concurrency;
        flags.max_mib_in_flight = self.max_mib_in_flight;
        flags.page_size = self.page_size;
        flags.retain_points = self.retain_points;
        flags.retain_for = self.retain_for;
    }
}

impl LogArgs {
    /// Copies the flags given into `flags`.
    pub fn apply(&self, flags: &mut Flags) {
        flags.log_level = self.log_level.clone();
        flags.log_format = self.log_format;
    }
}

/// Resolves when SIGINT or SIGTERM arrives.
pub async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("install SIGTERM handler");
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}

/// Two glibc allocator settings that keep a catch-up's resident memory
/// near its live data. glibc gives each thread that allocates under
/// contention an arena of its own (up to 8 per core) and the engine
/// allocates on many blocking threads (downloads decoded there, SQLite's
/// page cache filled from whichever thread runs the store); and once a
/// large block is freed, glibc raises its mmap threshold to that size, so
/// later batch-sized buffers come from the arenas and stay there after
/// they are freed. A 1M-key catch-up peaked at 240 MiB resident with about
/// 60 MiB of live data; with two arenas and a fixed 256 KiB threshold it
/// peaks near 75 MiB, for a few percent more time.
fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets allocator parameters, and it runs before
    // any other thread exists.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
        libc::mallopt(libc::M_MMAP_THRESHOLD, 256 << 10);
    }
}

/// Entry point of the binary: parses arguments, runs the command and turns
/// an error into a message and an exit code (`crate::exit`: one that
/// says whether a restart can help).
pub fn main() -> std::process::ExitCode {
    tune_allocator();
    let cli = Cli::parse();
    // `sync` and `serve` set up logging from their settings.
    if matches!(cli.command, Command::Pitr(_) | Command::CheckConfig(_)) {
        crate::logging::init_default();
    }
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = rt.block_on(async {
        match cli.command {
            Command::Sync(args) => sync::run(args).await,
            Command::Serve(args) => serve::run(args).await,
            Command::Pitr(args) => pitr::run(args),
            Command::CheckConfig(args) => check_config::run(args),
        }
    });
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            crate::exit::Exit::of(&e).code()
        }
    }
}

//! The `kvreplica` command line: shared arguments here, one file per
//! subcommand.

mod pitr;
mod serve;
mod sync;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::bail;
use clap::{Args, Parser, Subcommand};

use crate::source::{GcsOptions, RemoteOptions, S3Options, SourceUrl};
use crate::store::pitr::Retention;
use crate::sync::SyncOptions;

/// Keeps a live, read-only replica of a Deno KV database from the backups
/// Deno Deploy writes to S3, GCS or a directory.
#[derive(Debug, Parser)]
#[command(name = "kvreplica", version, about)]
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
}

/// Where to read from and where the replica lives.
#[derive(Debug, Args)]
pub struct SourceArgs {
    /// Backup location: s3://bucket/prefix/, gs://bucket/prefix/ or file:///dir/prefix/.
    /// Falls back to s3://$DENO_KV_S3_BUCKET/$DENO_KV_S3_PREFIX.
    #[arg(long, env = "KVREPLICA_SOURCE")]
    pub source: Option<String>,

    /// The replica SQLite file (created if missing).
    /// Falls back to $DENO_KV_SQLITE_PATH.
    #[arg(long, env = "KVREPLICA_DB")]
    pub db: Option<PathBuf>,

    /// S3-compatible endpoint URL (MinIO, R2, ...). Falls back to $DENO_KV_S3_ENDPOINT.
    #[arg(long, env = "KVREPLICA_S3_ENDPOINT")]
    pub s3_endpoint: Option<String>,

    /// S3 region (default: $AWS_REGION, else us-east-1).
    #[arg(long, env = "KVREPLICA_S3_REGION")]
    pub s3_region: Option<String>,

    /// Path-style bucket addressing (default: on with --s3-endpoint, off for AWS).
    #[arg(long, env = "KVREPLICA_S3_PATH_STYLE")]
    pub s3_path_style: Option<bool>,

    /// Service-account JSON key file for gs:// sources. Without it:
    /// $GOOGLE_APPLICATION_CREDENTIALS, gcloud's application-default
    /// credentials, the GCE/GKE metadata server, else anonymous.
    #[arg(long, env = "KVREPLICA_GCS_CREDENTIALS_FILE")]
    pub gcs_credentials_file: Option<PathBuf>,

    /// GCS JSON API endpoint, for an emulator (e.g. http://127.0.0.1:4443).
    /// Falls back to $STORAGE_EMULATOR_HOST.
    #[arg(long, env = "KVREPLICA_GCS_ENDPOINT")]
    pub gcs_endpoint: Option<String>,

    /// Timeout of each request to the object store.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub request_timeout: Duration,
}

/// Knobs of the sync engine.
#[derive(Debug, Args)]
pub struct EngineArgs {
    /// Time between polls of the bucket when caught up (e.g. 1s, 250ms).
    #[arg(long, env = "KVREPLICA_POLL_INTERVAL", default_value = "1s", value_parser = humantime::parse_duration)]
    pub poll_interval: Duration,

    /// Leave log objects younger than this (at the start of a poll round)
    /// for a later round, in case an earlier upload is still landing.
    #[arg(long, env = "KVREPLICA_SETTLE", default_value = "0s", value_parser = humantime::parse_duration)]
    pub settle: Duration,

    /// Downloads in flight at once.
    #[arg(long, default_value_t = 16)]
    pub fetch_concurrency: usize,

    /// Upper bound of downloaded-but-not-yet-applied data, in MiB.
    #[arg(long, default_value_t = 64)]
    pub max_mib_in_flight: u64,

    /// Objects per listing request (S3 allows at most 1000).
    #[arg(long, default_value_t = 1000)]
    pub page_size: usize,

    /// Keep at most this many recoverable points (default: all).
    #[arg(long, env = "KVREPLICA_RETAIN_POINTS")]
    pub retain_points: Option<u64>,

    /// Keep recoverable points at most this old, measured from the newest
    /// commit (e.g. 7d, 12h; default: forever).
    #[arg(long, env = "KVREPLICA_RETAIN_FOR", value_parser = humantime::parse_duration)]
    pub retain_for: Option<Duration>,
}

impl SourceArgs {
    /// The source URL, from the flag or denokv's environment variables.
    pub fn source_url(&self) -> anyhow::Result<SourceUrl> {
        let raw = match &self.source {
            Some(s) => s.clone(),
            None => match std::env::var("DENO_KV_S3_BUCKET") {
                Ok(bucket) if !bucket.is_empty() => format!(
                    "s3://{bucket}/{}",
                    std::env::var("DENO_KV_S3_PREFIX").unwrap_or_default()
                ),
                _ => bail!("no source given: pass --source s3://bucket/prefix/, gs://bucket/prefix/ or file:///dir/ (or set DENO_KV_S3_BUCKET)"),
            },
        };
        Ok(SourceUrl::parse(&raw)?)
    }

    pub fn db_path(&self) -> anyhow::Result<PathBuf> {
        match &self.db {
            Some(p) => Ok(p.clone()),
            None => match std::env::var_os("DENO_KV_SQLITE_PATH") {
                Some(p) if !p.is_empty() => Ok(PathBuf::from(p)),
                _ => bail!("no replica file given: pass --db PATH (or set DENO_KV_SQLITE_PATH)"),
            },
        }
    }

    pub fn s3_options(&self) -> S3Options {
        S3Options {
            endpoint: self.s3_endpoint.clone().or_else(|| {
                std::env::var("DENO_KV_S3_ENDPOINT")
                    .ok()
                    .filter(|s| !s.is_empty())
            }),
            region: self.s3_region.clone(),
            path_style: self.s3_path_style,
        }
    }

    /// GCS settings; the environment fallbacks are applied by the backend.
    pub fn gcs_options(&self) -> GcsOptions {
        GcsOptions {
            credentials_file: self.gcs_credentials_file.clone(),
            endpoint: self.gcs_endpoint.clone(),
        }
    }

    pub fn remote_options(&self) -> RemoteOptions {
        RemoteOptions {
            request_timeout: self.request_timeout,
            ..RemoteOptions::default()
        }
    }
}

impl EngineArgs {
    pub fn sync_options(&self) -> SyncOptions {
        SyncOptions {
            fetch_concurrency: self.fetch_concurrency.max(1),
            max_bytes_in_flight: self.max_mib_in_flight.max(1) << 20,
            page_size: self.page_size.clamp(1, 1000),
            poll_interval: self.poll_interval,
            settle: self.settle,
            retention: Retention {
                max_age: self.retain_for,
                max_points: self.retain_points,
            },
            ..SyncOptions::default()
        }
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

/// Entry point of the binary: parses arguments, runs the command and turns
/// an error into a message and a non-zero exit code.
pub fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
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
        }
    });
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

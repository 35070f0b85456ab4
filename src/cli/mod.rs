//! The `kvreplica` command line: shared arguments here, one file per
//! subcommand.
//! The flags that set a config key come from the settings table
//! (`config::SettingArgs`).

mod check_config;
mod diff;
mod export;
mod get;
mod pitr;
mod restore;
mod serve;
mod sync;

use clap::{Parser, Subcommand};

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
    /// position, check out a point, diff two points.
    Pitr(pitr::PitrArgs),
    /// Check the configuration of `serve` (file, environment, flags) and
    /// print the effective settings, secrets redacted; exits non-zero with
    /// the error otherwise.
    CheckConfig(check_config::CheckConfigArgs),
    /// Export the replica's visible state, decoded, one entry per line
    /// (JSON Lines or CSV) in key order; reads only, so it runs beside
    /// `serve`.
    Export(export::ExportArgs),
    /// Print one key's entry, decoded (JSON, `null` when absent), in the
    /// visible state or at a point (--at); reads only.
    Get(get::GetArgs),
    /// Put keys back into the primary database (over KV Connect) as they
    /// were at a point of the replica: a dry run that prints the plan,
    /// or --apply to write it, guarded against concurrent writes.
    Restore(restore::RestoreArgs),
}

/// The replica file a reading command (`pitr`, `export`) names. It must
/// exist: these commands never create one.
fn existing_replica(db: &crate::config::PitrDbArgs) -> anyhow::Result<std::path::PathBuf> {
    let path = db.resolve()?;
    if !path.exists() {
        anyhow::bail!(
            "{} does not exist: sync a replica first (kvreplica sync)",
            path.display()
        );
    }
    Ok(path)
}

/// Writes `text` to stdout and flushes it. A reader that went away
/// (`kvreplica pitr list | head -1`) is not an error: the answer is
/// `Ok(false)`, and the caller stops writing and exits quietly (`print!`
/// would panic with exit 101).
fn print_out(text: &str) -> std::io::Result<bool> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(false),
        Err(e) => Err(e),
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
    if matches!(
        cli.command,
        Command::Pitr(_)
            | Command::CheckConfig(_)
            | Command::Export(_)
            | Command::Get(_)
            | Command::Restore(_)
    ) {
        crate::logging::init_default();
    }
    // `pitr` works on the file alone: no runtime to start (its worker
    // threads and CPU-quota probes were a visible part of a short
    // `pitr checkout`).
    let result = match cli.command {
        Command::Pitr(args) => pitr::run(args),
        Command::Export(args) => export::run(args),
        Command::Get(args) => get::run(args),
        command => run_async(command),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            crate::exit::Exit::of(&e).code()
        }
    }
}

/// Runs the commands that need the async runtime (`sync`, `serve`, and
/// `check-config`, which may resolve a store's settings).
fn run_async(command: Command) -> anyhow::Result<()> {
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => anyhow::bail!("cannot start the runtime: {e}"),
    };
    rt.block_on(async {
        match command {
            Command::Sync(args) => sync::run(args).await,
            Command::Serve(args) => serve::run(args).await,
            Command::Pitr(args) => pitr::run(args),
            Command::CheckConfig(args) => check_config::run(args),
            Command::Export(args) => export::run(args),
            Command::Get(args) => get::run(args),
            Command::Restore(args) => restore::run(args).await,
        }
    })
}

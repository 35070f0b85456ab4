//! `kvreplica check-config`: resolves the settings `serve` would run with
//! and prints them, secrets redacted, each value with its origin.

use clap::Args;

use super::serve::ServeArgs;

#[derive(Debug, Args)]
pub struct CheckConfigArgs {
    /// Every flag of `serve`: they override the file and the environment
    /// here as they would there.
    #[command(flatten)]
    pub serve: ServeArgs,
}

/// Prints the effective configuration on stdout, or returns the first
/// error (which names the key, and the line when it is in the file).
pub fn run(args: CheckConfigArgs) -> anyhow::Result<()> {
    let settings = args.serve.inputs().resolve()?;
    // Builds the source client too (nothing is contacted): endpoints and
    // regions are checked the way `serve` would check them.
    settings
        .open_source()
        .map_err(|e| anyhow::anyhow!("source settings (source, [s3], [gcs]): {e}"))?;
    super::print_out(&settings.render())?;
    Ok(())
}

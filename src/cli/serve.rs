//! `kvreplica serve`: continuous sync plus the KV Connect server.

use clap::Args;

use super::{EngineArgs, SourceArgs};

#[derive(Debug, Args)]
pub struct ServeArgs {
    #[command(flatten)]
    pub source: SourceArgs,
    #[command(flatten)]
    pub engine: EngineArgs,
}

pub async fn run(_args: ServeArgs) -> anyhow::Result<()> {
    anyhow::bail!("serve is not available yet")
}

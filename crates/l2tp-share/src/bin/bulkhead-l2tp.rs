//! `bulkhead-l2tp`: the `bulkhead l2tp` commands as a program of their own,
//! small enough to ship statically linked in the guest image (as the agent
//! is), where the agent starts the resource server and clients dial.

use clap::Parser;

/// L2TP resource sharing: share modems with clients through L2TP tunnels.
#[derive(Debug, Parser)]
#[command(name = "bulkhead-l2tp", version)]
struct Cli {
    #[command(subcommand)]
    command: bulkhead_l2tp_share::cli::Command,
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    bulkhead_l2tp_share::cli::run(bulkhead_l2tp_share::cli::Args {
        command: cli.command,
    })
}

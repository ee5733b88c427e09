//! `bulkhead`: the command-line entry point. Each capability crate owns its
//! subcommand (arguments and behaviour); this crate only dispatches.

mod partition;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "bulkhead",
    version,
    about = "Bulkhead logical-partition manager"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Partitions: run one in the foreground, or manage them through bulkheadd.
    #[command(subcommand)]
    Partition(partition::PartitionCommand),
    /// Guest images: kernel + initramfs, Debian root LUs.
    Image(bulkhead_image::cli::ImageArgs),
    /// Shared port: many servers behind one port, routed by TLS SNI or HTTP Host.
    Portshare(bulkhead_portshare::cli::Args),
    /// The cluster of hosts: `cluster hosts` lists every member.
    #[command(subcommand)]
    Cluster(bulkhead_manager::cluster::cli::ClusterCommand),
    /// Grants between partitions: list, show, revoke, log, and act as a partition.
    #[command(subcommand)]
    Grant(bulkhead_manager::grant_cli::GrantCommand),
    /// Shared-memory regions (and disks) partitions own.
    #[command(subcommand)]
    Region(bulkhead_manager::grant_cli::RegionCommand),
    /// LUs: thin disks of the repository, owned by a client.
    #[command(subcommand)]
    Lu(bulkhead_manager::lu::cli::LuCommand),
    /// Routes of the shared port: `expose list`.
    #[command(subcommand)]
    Expose(bulkhead_manager::expose_cli::ExposeCommand),
    /// Service pools: partitions pre-started with a program, handed out per session.
    #[command(subcommand)]
    Pool(bulkhead_manager::pools::cli::PoolCommand),
    /// Remote restart: a hibernated partition restarted on another host under a token.
    #[command(subcommand)]
    RemoteRestart(bulkhead_manager::remote_restart::cli::RemoteRestartCommand),
    /// Run bulkheadd, the partition manager daemon, in the foreground.
    Serve(bulkhead_manager::cli::ServeArgs),
    /// L2TP resource sharing: share modems with clients through L2TP tunnels.
    L2tp(bulkhead_l2tp_share::cli::Args),
    /// Hayes modem model on a PTY (stands in for real hardware).
    Modem(bulkhead_modem::cli::Args),
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
    match cli.command {
        Command::Partition(c) => partition::run(c),
        Command::Image(a) => bulkhead_image::cli::run(a),
        Command::Portshare(a) => bulkhead_portshare::cli::run(a),
        Command::Cluster(c) => {
            partition::runtime()?.block_on(bulkhead_manager::cluster::cli::run(c))
        }
        Command::Grant(c) => partition::runtime()?.block_on(bulkhead_manager::grant_cli::run(c)),
        Command::Region(c) => {
            partition::runtime()?.block_on(bulkhead_manager::grant_cli::run_region(c))
        }
        Command::Lu(c) => partition::runtime()?.block_on(bulkhead_manager::lu::cli::run(c)),
        Command::Expose(c) => partition::runtime()?.block_on(bulkhead_manager::expose_cli::run(c)),
        Command::Pool(c) => partition::runtime()?.block_on(bulkhead_manager::pools::cli::run(c)),
        Command::RemoteRestart(c) => {
            partition::runtime()?.block_on(bulkhead_manager::remote_restart::cli::run(c))
        }
        Command::Serve(a) => partition::runtime()?.block_on(bulkhead_manager::cli::serve(a)),
        Command::L2tp(a) => bulkhead_l2tp_share::cli::run(a),
        Command::Modem(a) => bulkhead_modem::cli::run(a),
    }
}

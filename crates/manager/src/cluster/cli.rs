//! `bulkhead cluster hosts [--json]`.

use super::ClusterHost;
use crate::cli::ApiArgs;

#[derive(Debug, clap::Subcommand)]
pub enum ClusterCommand {
    /// Every host of the cluster: state (up, lost), capacity, allocation, partitions.
    Hosts(HostsArgs),
}

#[derive(Debug, clap::Args)]
pub struct HostsArgs {
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub api: ApiArgs,
}

/// Runs one cluster command. Failures print one line and exit non-zero.
pub async fn run(cmd: ClusterCommand) -> anyhow::Result<()> {
    let r = match cmd {
        ClusterCommand::Hosts(a) => hosts(a).await,
    };
    crate::cli::exit_on_error(r)
}

async fn hosts(a: HostsArgs) -> anyhow::Result<()> {
    let hosts = a.api.client()?.cluster_hosts().await?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&hosts)?);
    } else {
        print!("{}", table(&hosts));
    }
    Ok(())
}

/// The hosts as a table, one line each.
pub fn table(hosts: &[ClusterHost]) -> String {
    let mut out = format!(
        "{:<16} {:<5} {:>5} {:>9} {:>10} {:>10} {:>5}  {:<22} {}\n",
        "NAME", "STATE", "CPUS", "MEMORY", "VCPUS-USED", "MEM-USED", "PARTS", "ENDPOINT", "ID"
    );
    for h in hosts {
        out.push_str(&format!(
            "{:<16} {:<5} {:>5} {:>8}M {:>10} {:>9}M {:>5}  {:<22} {}\n",
            h.name,
            h.state.as_str(),
            h.capacity.cpus,
            h.capacity.memory_mib,
            h.allocated.vcpus,
            h.allocated.memory_mib,
            h.partitions,
            h.endpoints.first().map_or("-", String::as_str),
            h.id
        ));
    }
    out
}

//! `bulkhead partition ha NAME resume|reboot|none`.

use crate::cli::ApiArgs;
use bulkhead_store::HaPolicy;

#[derive(Debug, clap::Args)]
pub struct HaArgs {
    pub name: String,
    /// resume (from its hibernation data, else a boot), reboot (a boot from
    /// its LUs on another host) or none.
    #[arg(value_parser = parse_policy)]
    pub policy: HaPolicy,
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub api: ApiArgs,
}

pub fn parse_policy(s: &str) -> Result<HaPolicy, String> {
    s.parse()
}

pub async fn run(a: HaArgs) -> anyhow::Result<()> {
    let rec = a.api.client()?.set_ha(&a.name, a.policy).await?;
    if a.json {
        return crate::cli::print_json(&rec);
    }
    println!("{}: ha {}", rec.name, rec.ha);
    Ok(())
}

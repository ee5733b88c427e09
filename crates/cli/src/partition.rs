//! `bulkhead partition ...`: partitions, run in the foreground by the engine.

use clap::Subcommand;

// Built once per process from the command line: the size does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
pub enum PartitionCommand {
    /// Run one partition in the foreground with its console on this terminal,
    /// without the daemon, until it powers off or Ctrl-C.
    Run(bulkhead_engine::cli::RunArgs),
    /// Partitions managed by bulkheadd (create, start, stop, list, ...).
    #[command(flatten)]
    Api(bulkhead_manager::cli::PartitionCommand),
}

pub fn run(cmd: PartitionCommand) -> anyhow::Result<()> {
    match cmd {
        PartitionCommand::Run(args) => {
            let rt = runtime()?;
            let result = rt.block_on(bulkhead_engine::cli::run(args));
            // The console's stdin reader blocks in read(2), which nothing can
            // cancel: waiting for it would hang the exit until Enter is pressed.
            rt.shutdown_background();
            result
        }
        PartitionCommand::Api(c) => runtime()?.block_on(bulkhead_manager::cli::run(c)),
    }
}

pub fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}

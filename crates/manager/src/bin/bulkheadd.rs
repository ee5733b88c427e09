//! bulkheadd: the partition manager daemon (same as `bulkhead serve`).

use clap::Parser;

#[derive(Parser)]
#[command(
    name = "bulkheadd",
    version,
    about = "Bulkhead partition manager daemon"
)]
struct Args {
    #[command(flatten)]
    serve: bulkhead_manager::cli::ServeArgs,
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(bulkhead_manager::cli::serve(args.serve))
}

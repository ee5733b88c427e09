//! `bulkhead portshare serve ...` and `bulkhead portshare routes ...`.

use crate::admin::{self, AdminRequest};
use crate::proxy_protocol::Version;
use crate::server::Server;
use crate::table::{Config, Dur, ListenerConfig, RouteConfig, Table};
use anyhow::{bail, Context};
use clap::{Args as ClapArgs, Subcommand};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tracing::{error, info, warn};

/// Shared port: many servers behind one port, routed by domain.
#[derive(Debug, ClapArgs)]
pub struct Args {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the proxy. SIGHUP reloads --config; SIGTERM stops gracefully.
    Serve(ServeArgs),
    /// List, add or remove rows of a running proxy through its admin socket.
    Routes(RoutesArgs),
}

#[derive(Debug, ClapArgs)]
pub struct ServeArgs {
    /// TOML table (see docs/portshare.md).
    #[arg(long, conflicts_with_all = ["listen", "route"])]
    pub config: Option<PathBuf>,
    /// Quick use: the shared address, e.g. 0.0.0.0:80.
    #[arg(long, requires = "route")]
    pub listen: Option<SocketAddr>,
    /// Quick use: DOMAIN=HOST:PORT (DOMAIN may be *.suffix, or * for the default row).
    #[arg(long, value_name = "DOMAIN=TARGET")]
    pub route: Vec<String>,
    /// Quick use: send a PROXY header (v1 or v2) to every target.
    #[arg(long, value_parser = parse_version)]
    pub proxy_protocol: Option<Version>,
    /// Worker threads (overrides the file; 1 = single-threaded).
    #[arg(long)]
    pub workers: Option<usize>,
    /// Admin socket (overrides the file).
    #[arg(long)]
    pub admin_socket: Option<PathBuf>,
    /// Prometheus endpoint address (overrides the file).
    #[arg(long)]
    pub metrics: Option<SocketAddr>,
    /// JSON-lines access log (overrides the file).
    #[arg(long)]
    pub access_log: Option<PathBuf>,
    /// Validate the configuration and exit.
    #[arg(long)]
    pub check: bool,
}

fn parse_version(s: &str) -> Result<Version, String> {
    match s {
        "v1" | "1" => Ok(Version::V1),
        "v2" | "2" => Ok(Version::V2),
        _ => Err("use v1 or v2".into()),
    }
}

#[derive(Debug, ClapArgs)]
pub struct RoutesArgs {
    /// Admin socket of the running proxy.
    #[arg(
        long,
        env = "BULKHEAD_PORTSHARE_ADMIN",
        default_value = "/run/bulkhead/portshare.sock"
    )]
    pub admin: PathBuf,
    #[command(subcommand)]
    pub op: RoutesOp,
}

#[derive(Debug, Subcommand)]
pub enum RoutesOp {
    /// Print the rows in force.
    List {
        /// JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Add a row (or replace the row with the same listener and domain).
    Add {
        #[arg(long)]
        listen: SocketAddr,
        #[arg(long)]
        domain: String,
        #[arg(long)]
        target: String,
        #[arg(long, value_parser = parse_version)]
        proxy_protocol: Option<Version>,
        #[arg(long)]
        max_connections: Option<usize>,
    },
    /// Remove a row.
    Remove {
        #[arg(long)]
        listen: SocketAddr,
        #[arg(long)]
        domain: String,
    },
}

pub fn run(args: Args) -> anyhow::Result<()> {
    match args.command {
        Command::Serve(a) => serve(a),
        Command::Routes(a) => routes(a),
    }
}

/// Builds the configuration from --config or the quick flags.
pub fn config_from(a: &ServeArgs) -> anyhow::Result<Config> {
    let mut cfg = match (&a.config, a.listen) {
        (Some(p), _) => Config::load(p)?,
        (None, Some(listen)) => {
            let mut routes = Vec::new();
            for r in &a.route {
                let (domain, target) = r
                    .split_once('=')
                    .with_context(|| format!("--route {r:?}: use DOMAIN=HOST:PORT"))?;
                routes.push(RouteConfig {
                    listen,
                    domain: domain.into(),
                    target: target.into(),
                    proxy_protocol: a.proxy_protocol,
                    max_connections: None,
                });
            }
            Config {
                listeners: vec![ListenerConfig::new(listen)],
                routes,
                ..Default::default()
            }
        }
        (None, None) => bail!("give --config FILE, or --listen ADDR with --route DOMAIN=TARGET"),
    };
    if a.workers.is_some() {
        cfg.workers = a.workers;
    }
    if a.admin_socket.is_some() {
        cfg.admin_socket = a.admin_socket.clone();
    }
    if a.metrics.is_some() {
        cfg.metrics = a.metrics;
    }
    if a.access_log.is_some() {
        cfg.access_log = a.access_log.clone();
    }
    Ok(cfg)
}

fn serve(a: ServeArgs) -> anyhow::Result<()> {
    let cfg = config_from(&a)?;
    // Validate before touching any socket.
    Table::build(cfg.clone(), &Default::default())?;
    if a.check {
        println!(
            "configuration OK: {} listeners, {} routes",
            cfg.listeners.len(),
            cfg.routes.len()
        );
        return Ok(());
    }
    let workers = cfg.workers.unwrap_or(1).max(1);
    let rt = if workers == 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(workers)
            .enable_all()
            .build()?
    };
    let path = a.config.clone();
    rt.block_on(serve_until_signal(cfg, path.as_deref()))
}

async fn serve_until_signal(cfg: Config, path: Option<&Path>) -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let deadline = cfg
        .shutdown_timeout
        .map_or(Duration::from_secs(30), |d: Dur| d.0);
    let mut hup = signal(SignalKind::hangup())?;
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let server = Server::start(cfg).await?;
    info!("portshare ready");
    loop {
        tokio::select! {
            _ = hup.recv() => match path {
                Some(p) => match Config::load(p) {
                    Ok(c) => match server.reload(c).await {
                        Ok(()) => info!(config = %p.display(), "reloaded"),
                        Err(e) => error!(error = %format!("{e:#}"), "reload refused; the previous table stays"),
                    },
                    Err(e) => error!(error = %e, "reload refused; the previous table stays"),
                },
                None => warn!("SIGHUP: no --config file to reload"),
            },
            _ = term.recv() => break,
            _ = int.recv() => break,
        }
    }
    info!(
        deadline_s = deadline.as_secs_f64(),
        "stopping: no new connections, finishing open ones"
    );
    let left = server.shutdown(deadline).await;
    if left > 0 {
        warn!(open = left, "shutdown deadline passed; closing the rest");
    } else {
        info!("all connections finished");
    }
    Ok(())
}

fn routes(a: RoutesArgs) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let (req, json) = match a.op {
        RoutesOp::List { json } => (AdminRequest::List, json),
        RoutesOp::Add {
            listen,
            domain,
            target,
            proxy_protocol,
            max_connections,
        } => (
            AdminRequest::Add {
                route: RouteConfig {
                    listen,
                    domain,
                    target,
                    proxy_protocol,
                    max_connections,
                },
            },
            false,
        ),
        RoutesOp::Remove { listen, domain } => (AdminRequest::Remove { listen, domain }, false),
    };
    let listing = matches!(req, AdminRequest::List);
    let resp = rt.block_on(admin::request(&a.admin, &req))?;
    if !resp.ok {
        bail!("{}", resp.error.unwrap_or_else(|| "refused".into()));
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&resp.routes)?);
    } else if listing {
        println!(
            "{:<22} {:<28} {:<22} {:<6} LIMIT",
            "LISTEN", "DOMAIN", "TARGET", "PROXY"
        );
        for r in &resp.routes {
            let pp = match r.proxy_protocol {
                Some(Version::V1) => "v1",
                Some(Version::V2) => "v2",
                None => "-",
            };
            let lim = r.max_connections.map_or("-".to_string(), |n| n.to_string());
            println!(
                "{:<22} {:<28} {:<22} {:<6} {lim}",
                r.listen.to_string(),
                r.domain,
                r.target,
                pp
            );
        }
    } else {
        println!("ok ({} routes)", resp.routes.len());
    }
    Ok(())
}

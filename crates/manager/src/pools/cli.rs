//! `bulkhead pool ...`: the pool commands, and the API client's pool calls.

use super::types::*;
use crate::cli::{parse_percent, print_json, print_view, ApiArgs, ListArgs, NameArgs};
use crate::client::{encode_segment, Client, ClientError};
use anyhow::Context;
use hyper::Method;
use std::time::Duration;

/// `bulkhead pool`: service pools and the users who may allocate.
#[derive(Debug, clap::Subcommand)]
pub enum PoolCommand {
    /// Define a pool: partitions NAME-1..N, each running the program.
    Create(CreateArgs),
    /// Every pool with its partitions by state.
    List(ListArgs),
    /// One pool: each partition's primary id, state, alternate id, sessions served.
    Show(NameArgs),
    /// Change a pool's size (and max).
    Resize(ResizeArgs),
    /// Destroy a pool and its partitions.
    Destroy(DestroyArgs),
    /// Users who may allocate.
    #[command(subcommand)]
    User(UserCommand),
    /// Hold a conversation with PROGRAM through the gateway: standard input
    /// to the program, its output to standard output; at end of input,
    /// deallocate with confirmation.
    Connect(ConnectArgs),
    /// Serve PROGRAM on the shared port by domain: each connection is one
    /// allocation under --user, relayed to the program (docs/portshare.md).
    Expose(crate::expose_cli::PoolExposeArgs),
    /// Remove PROGRAM's routes on the shared port (one domain's, or all).
    Unexpose(crate::expose_cli::PoolUnexposeArgs),
}

#[derive(Debug, clap::Args)]
pub struct ConnectArgs {
    pub program: String,
    /// Your pool user name: the session's alternate id.
    #[arg(long)]
    pub user: String,
    /// Your token (`pool user add` printed it).
    #[arg(
        long,
        env = "BULKHEAD_POOL_TOKEN",
        hide_env_values = true,
        default_value = ""
    )]
    pub token: String,
    /// The gateway's ADDR:PORT (bulkheadd's `[pool] gateway`).
    #[arg(long, env = "BULKHEAD_POOL_GATEWAY", default_value = "127.0.0.1:7400")]
    pub gateway: String,
    /// How long to wait for a partition when none is idle, milliseconds.
    #[arg(long, default_value_t = 30_000)]
    pub wait_ms: u32,
    /// The gateway speaks TLS: trust its certificate if it chains to this
    /// PEM CA file and names the --gateway host.
    #[arg(long, visible_alias = "tls-ca", env = "BULKHEAD_POOL_CA")]
    pub ca: Option<std::path::PathBuf>,
    /// The gateway speaks TLS: trust the certificate with this SHA-256.
    #[arg(long, env = "BULKHEAD_POOL_TLS_FINGERPRINT", conflicts_with = "ca")]
    pub tls_fingerprint: Option<String>,
}

#[derive(Debug, clap::Subcommand)]
pub enum UserCommand {
    /// Add a user; prints the token once, alone on the last line.
    Add(UserAddArgs),
    List(ListArgs),
    Remove(NameArgs),
}

#[derive(Debug, clap::Args)]
pub struct CreateArgs {
    pub name: String,
    /// The program (transaction program name) the pool serves.
    #[arg(long)]
    pub program: String,
    #[arg(long)]
    pub size: u32,
    /// Ceiling under load (the size when absent).
    #[arg(long)]
    pub max: Option<u32>,
    #[arg(long, default_value_t = 1)]
    pub vcpus: u32,
    /// Guest memory per partition, e.g. 256M.
    #[arg(long)]
    pub memory: String,
    /// CPU entitlement per partition, e.g. 20%.
    #[arg(long)]
    pub cpu: String,
    /// Guest image directory (the daemon's default when absent).
    #[arg(long)]
    pub image: Option<String>,
    /// The program's command, run with /bin/sh -c in each partition.
    #[arg(long)]
    pub app: String,
    /// The TCP port the program answers on.
    #[arg(long)]
    pub port: u16,
    /// Run after each session; exit 0 confirms the deallocation.
    #[arg(long)]
    pub cleanup: Option<String>,
    /// Replace a partition after K sessions (1: fresh for every session).
    #[arg(long)]
    pub recycle_after: Option<u32>,
    /// Users are not trusted: --recycle-after defaults to 1.
    #[arg(long)]
    pub untrusted: bool,
    /// Return once every partition is idle (or failed).
    #[arg(long)]
    pub wait: bool,
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub api: ApiArgs,
}

#[derive(Debug, clap::Args)]
pub struct ResizeArgs {
    pub name: String,
    #[arg(long)]
    pub size: u32,
    #[arg(long)]
    pub max: Option<u32>,
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub api: ApiArgs,
}

#[derive(Debug, clap::Args)]
pub struct DestroyArgs {
    pub name: String,
    /// End open sessions first instead of refusing.
    #[arg(long)]
    pub force: bool,
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub api: ApiArgs,
}

#[derive(Debug, clap::Args)]
pub struct UserAddArgs {
    pub name: String,
    /// The programs the user may allocate, comma-separated.
    #[arg(long, value_delimiter = ',', required = true)]
    pub programs: Vec<String>,
    /// Concurrent sessions (queued requests count); 1 when absent.
    #[arg(long)]
    pub max_sessions: Option<u32>,
    #[command(flatten)]
    pub api: ApiArgs,
}

/// How long `pool create --wait` waits for every partition to settle.
const CREATE_WAIT: Duration = Duration::from_secs(600);

fn pool_path(name: &str) -> String {
    format!("/v1/pools/{}", encode_segment(name))
}

impl Client {
    pub async fn pool_create(&self, req: &CreatePool) -> Result<PoolView, ClientError> {
        self.send(Method::POST, "/v1/pools", Some(req)).await
    }
    pub async fn pool_list(&self) -> Result<Vec<PoolView>, ClientError> {
        self.send::<(), _>(Method::GET, "/v1/pools", None).await
    }
    pub async fn pool_show(&self, name: &str) -> Result<PoolView, ClientError> {
        self.send::<(), _>(Method::GET, &pool_path(name), None)
            .await
    }
    pub async fn pool_resize(&self, name: &str, req: &ResizePool) -> Result<PoolView, ClientError> {
        let path = format!("{}/resize", pool_path(name));
        self.send(Method::POST, &path, Some(req)).await
    }
    pub async fn pool_destroy(
        &self,
        name: &str,
        force: bool,
    ) -> Result<PoolDestroyed, ClientError> {
        let path = format!("{}?force={force}", pool_path(name));
        self.send::<(), _>(Method::DELETE, &path, None).await
    }
    pub async fn pool_user_add(&self, req: &AddPoolUser) -> Result<PoolUserAdded, ClientError> {
        self.send(Method::POST, "/v1/pool-users", Some(req)).await
    }
    pub async fn pool_user_list(&self) -> Result<Vec<PoolUserView>, ClientError> {
        self.send::<(), _>(Method::GET, "/v1/pool-users", None)
            .await
    }
    pub async fn pool_user_remove(&self, name: &str) -> Result<PoolUserRemoved, ClientError> {
        let path = format!("/v1/pool-users/{}", encode_segment(name));
        self.send::<(), _>(Method::DELETE, &path, None).await
    }
}

/// Whether every partition of the pool has left booting and recycling.
fn settled(v: &PoolView) -> bool {
    v.partitions
        .iter()
        .all(|p| !matches!(p.state.as_str(), "booting" | "recycling"))
}

/// `pool list` as a table: partitions by state.
pub fn list_table(pools: &[PoolView]) -> String {
    let mut out = format!(
        "{:<20} {:<16} {:>5} {:>5} {:>6} {:>8} {:>8}\n",
        "NAME", "PROGRAM", "SIZE", "MAX", "IDLE", "SESSION", "OTHER"
    );
    for v in pools {
        let count = |s: &str| v.partitions.iter().filter(|p| p.state == s).count();
        let idle = count("idle");
        let busy = count("in-session") + count("cleaning");
        let c = &v.statement;
        out.push_str(&format!(
            "{:<20} {:<16} {:>5} {:>5} {:>6} {:>8} {:>8}\n",
            c.name,
            c.program,
            c.size,
            c.max.unwrap_or(c.size),
            idle,
            busy,
            v.partitions.len() - idle - busy
        ));
    }
    out
}

/// `pool show` as text.
pub fn show_text(v: &PoolView) -> String {
    let c = &v.statement;
    let mut out = format!(
        "pool {} serves {} on port {} (size {}, max {}, recycle after {})\napp: {}\ncleanup: {}\n",
        c.name,
        c.program,
        c.port,
        c.size,
        c.max.unwrap_or(c.size),
        c.recycle_after
            .or(c.untrusted.then_some(1))
            .map_or("never".to_string(), |k| format!("{k} sessions")),
        c.app,
        c.cleanup.as_deref().unwrap_or("-"),
    );
    out.push_str(&format!(
        "{:<24} {:<12} {:<20} {:>8}\n",
        "PRIMARY ID", "STATE", "ALTERNATE ID", "SERVED"
    ));
    for p in &v.partitions {
        out.push_str(&format!(
            "{:<24} {:<12} {:<20} {:>8}\n",
            p.primary_id,
            p.state,
            p.alternate_id.as_deref().unwrap_or("-"),
            p.sessions_served
        ));
    }
    out
}

/// Runs one pool command; a failure prints one line and exits non-zero.
pub async fn run(cmd: PoolCommand) -> anyhow::Result<()> {
    crate::cli::exit_on_error(run_inner(cmd).await)
}

async fn run_inner(cmd: PoolCommand) -> anyhow::Result<()> {
    match cmd {
        PoolCommand::Create(a) => {
            let req = CreatePool {
                name: a.name,
                program: a.program,
                size: a.size,
                max: a.max,
                vcpus: a.vcpus,
                memory_mib: bulkhead_engine::spec::parse_mib(&a.memory)
                    .map_err(anyhow::Error::msg)?,
                cpu_percent: parse_percent(&a.cpu)?,
                image: a.image,
                app: a.app,
                port: a.port,
                cleanup: a.cleanup,
                recycle_after: a.recycle_after,
                untrusted: a.untrusted,
            };
            let c = a.api.client()?;
            let mut v = c.pool_create(&req).await?;
            let deadline = tokio::time::Instant::now() + CREATE_WAIT;
            while a.wait && !settled(&v) {
                if tokio::time::Instant::now() >= deadline {
                    anyhow::bail!("pool {} did not settle within {CREATE_WAIT:?}", req.name);
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
                v = c.pool_show(&req.name).await?;
            }
            print_view(&v, a.json, show_text)?;
        }
        PoolCommand::List(a) => {
            let v = a.api.client()?.pool_list().await?;
            print_view(v.as_slice(), a.json, list_table)?;
        }
        PoolCommand::Show(a) => {
            let v = a.api.client()?.pool_show(&a.name).await?;
            print_view(&v, a.json, show_text)?;
        }
        PoolCommand::Resize(a) => {
            let req = ResizePool {
                size: a.size,
                max: a.max,
            };
            let v = a.api.client()?.pool_resize(&a.name, &req).await?;
            print_view(&v, a.json, show_text)?;
        }
        PoolCommand::Destroy(a) => {
            let d = a.api.client()?.pool_destroy(&a.name, a.force).await?;
            if a.json {
                return print_json(&d);
            }
            println!(
                "destroyed pool {} ({})",
                d.destroyed,
                if d.partitions.is_empty() {
                    "no partitions".to_string()
                } else {
                    d.partitions.join(", ")
                }
            );
        }
        PoolCommand::User(UserCommand::Add(a)) => {
            let req = AddPoolUser {
                name: a.name,
                programs: a.programs,
                max_sessions: a.max_sessions,
            };
            let r = a.api.client()?.pool_user_add(&req).await?;
            println!(
                "added pool user {} (programs {}; at most {} sessions); the token, shown this once:",
                r.user.name,
                r.user.programs.join(","),
                r.user.max_sessions
            );
            // Alone on the last line, so scripts take it with `tail -n1`.
            println!("{}", r.token);
        }
        PoolCommand::User(UserCommand::List(a)) => {
            let v = a.api.client()?.pool_user_list().await?;
            if a.json {
                return print_json(&v);
            }
            println!("{:<24} {:>8}  PROGRAMS", "USER", "SESSIONS");
            for u in v {
                println!(
                    "{:<24} {:>8}  {}",
                    u.name,
                    u.max_sessions,
                    u.programs.join(",")
                );
            }
        }
        PoolCommand::Connect(a) => connect(a).await?,
        PoolCommand::Expose(a) => crate::expose_cli::pool_expose(a).await?,
        PoolCommand::Unexpose(a) => crate::expose_cli::pool_unexpose(a).await?,
        PoolCommand::User(UserCommand::Remove(a)) => {
            let r = a.api.client()?.pool_user_remove(&a.name).await?;
            if a.json {
                return print_json(&r);
            }
            println!("removed pool user {}", r.removed);
        }
    }
    Ok(())
}

/// `pool connect`: stdin to the program, the program to stdout.
async fn connect(a: ConnectArgs) -> anyhow::Result<()> {
    use crate::tls::Trust;
    use bulkhead_pool_proto::client::Client as Gateway;
    let trust = match (&a.tls_fingerprint, &a.ca) {
        (Some(f), _) => Some(Trust::Fingerprint(f.clone())),
        (None, Some(ca)) => Some(Trust::CaFile(ca.clone())),
        (None, None) => None,
    };
    let at = || format!("gateway {}", a.gateway);
    match trust {
        None => {
            let c = Gateway::connect_tcp(a.gateway.as_str())
                .await
                .with_context(at)?;
            converse(c, a).await
        }
        Some(t) => {
            let name = crate::tls::server_name(&a.gateway);
            let c = Gateway::connect_tls(a.gateway.as_str(), t.client_config()?, name)
                .await
                .with_context(at)?;
            converse(c, a).await
        }
    }
}

/// One session over a connected client, until the end of standard input.
async fn converse<S>(
    mut c: bulkhead_pool_proto::client::Client<S>,
    a: ConnectArgs,
) -> anyhow::Result<()>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let session = c
        .allocate(bulkhead_pool_proto::Allocate {
            program: a.program,
            user: a.user,
            credential: a.token,
            wait_ms: a.wait_ms,
        })
        .await?;
    tracing::debug!(%session, "allocated");
    // Standard input is read by its own task: a channel's receive is
    // cancel-safe in the select below, a read of stdin need not be.
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<u8>>(4);
    tokio::spawn(async move {
        let mut stdin = tokio::io::stdin();
        let mut buf = vec![0u8; 16 * 1024];
        while let Ok(n) = stdin.read(&mut buf).await {
            if n == 0 || tx.send(buf[..n].to_vec()).await.is_err() {
                break;
            }
        }
    });
    let mut out = tokio::io::stdout();
    loop {
        tokio::select! {
            chunk = rx.recv() => match chunk {
                Some(b) => c.send(&b).await?,
                None => break,
            },
            d = c.recv() => {
                out.write_all(&d?).await?;
                out.flush().await?;
            }
        }
    }
    let tail = c.deallocate().await?;
    out.write_all(&tail).await?;
    out.flush().await?;
    Ok(())
}

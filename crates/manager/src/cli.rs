//! `bulkhead serve` (the daemon) and the API-client half of
//! `bulkhead partition ...`.

use crate::api::{
    AttachDisk, CreatePartition, ExecRequest, PartitionView, StartOptions, Stats, StopOptions,
};
use crate::client::{Client, Endpoint};
use crate::config::{Config, DEFAULT_SOCKET};
use crate::tls::Trust;
use anyhow::Context;
use bulkhead_store::{DiskRecord, PartitionRecord};
use serde::Serialize;
use std::path::PathBuf;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[derive(Debug, Clone, clap::Args)]
pub struct ServeArgs {
    /// TOML configuration file; embedded defaults when absent.
    #[arg(long, env = "BULKHEAD_CONFIG")]
    pub config: Option<PathBuf>,
    /// Data directory (state database, run directories); overrides the file.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// API unix socket; overrides the file.
    #[arg(long)]
    pub socket: Option<PathBuf>,
}

/// Runs bulkheadd until SIGINT or SIGTERM. Partitions keep running after it.
pub async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let cfg = Config::load(args.config.as_deref(), args.data_dir, args.socket)?;
    tracing::info!(data_dir = %cfg.data_dir.display(), bridge = %cfg.network.bridge, "bulkheadd starting");
    let manager = crate::manager::Manager::open(cfg).await?;
    let c = manager.capacity();
    tracing::info!(
        cpus = c.host_cpus,
        memory_mib = c.host_memory_mib,
        "host capacity"
    );
    let shutdown = async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("SIGTERM handler");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    };
    crate::server::serve(manager, shutdown).await
}

/// How to reach the daemon.
#[derive(Debug, Clone, clap::Args)]
pub struct ApiArgs {
    /// bulkheadd's unix socket.
    #[arg(long, env = "BULKHEAD_SOCKET", default_value = DEFAULT_SOCKET)]
    pub socket: PathBuf,
    /// Use the TCP API (TLS) at host:port instead of the socket.
    #[arg(long, env = "BULKHEAD_API")]
    pub api: Option<String>,
    /// Bearer token for the TCP API.
    #[arg(long, env = "BULKHEAD_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Trust the daemon whose certificate has this SHA-256 (bulkheadd logs it).
    #[arg(long, env = "BULKHEAD_TLS_FINGERPRINT")]
    pub tls_fingerprint: Option<String>,
    /// Trust the daemon's certificate if it chains to this PEM CA file and
    /// names the --api host.
    #[arg(long, env = "BULKHEAD_TLS_CA", conflicts_with = "tls_fingerprint")]
    pub tls_ca: Option<PathBuf>,
}

impl ApiArgs {
    pub fn client(&self) -> anyhow::Result<Client> {
        let Some(addr) = &self.api else {
            return Ok(Client::unix(&self.socket));
        };
        let trust = match (&self.tls_fingerprint, &self.tls_ca) {
            (Some(f), _) => Trust::Fingerprint(f.clone()),
            (None, Some(ca)) => Trust::CaFile(ca.clone()),
            (None, None) => anyhow::bail!(
                "the TCP API is TLS: give --tls-fingerprint (the SHA-256 bulkheadd logs) or --tls-ca FILE"
            ),
        };
        Ok(Client::new(Endpoint::Tcp {
            addr: addr.clone(),
            token: self.token.clone(),
            tls: trust.client_config()?,
        }))
    }
}

#[derive(Debug, clap::Args)]
pub struct CreateArgs {
    pub name: String,
    #[arg(long, default_value_t = 1)]
    pub vcpus: u32,
    /// Guest memory, e.g. 256M or 1G.
    #[arg(long)]
    pub memory: String,
    /// CPU entitlement in percent of one host CPU, e.g. 50%.
    #[arg(long)]
    pub cpu: String,
    /// A disk: PATH[:ro] (qcow2 by extension, raw otherwise); repeatable.
    #[arg(long)]
    pub disk: Vec<String>,
    /// Attach to the host's internal VLAN with an assigned address.
    #[arg(long)]
    pub net: bool,
    /// Guest image directory (the daemon's default when absent).
    #[arg(long)]
    pub image: Option<String>,
    /// Extra kernel command line.
    #[arg(long)]
    pub cmdline: Option<String>,
    /// never, on-failure or always.
    #[arg(long, default_value = "never")]
    pub restart: String,
    /// PCIe ports kept free for disks hot-plugged while it runs (q35).
    #[arg(long, default_value_t = 0)]
    pub hotplug: u32,
    /// Named guest CPU model: x86-64-v2 (default) or x86-64-v1.
    #[arg(long)]
    pub cpu_model: Option<String>,
    /// The cluster host (by name) that owns and runs it; this one when absent.
    #[arg(long)]
    pub host: Option<String>,
    /// Hibernate after this long idle, e.g. 90s, 10m, 2h (at least 10s).
    #[arg(long)]
    pub hibernate_idle: Option<String>,
    /// Checkpoint it this often while it runs, e.g. 30s, 5m (at least 5s);
    /// its writable disks must be qcow2 (docs/cluster.md, "Checkpoints").
    #[arg(long)]
    pub checkpoint_every: Option<String>,
    /// The owning client (tenant); the partition's own name by default.
    #[arg(long)]
    pub client: Option<String>,
    /// An LU of the client to attach: NAME[:ro]; repeatable.
    #[arg(long)]
    pub lu: Vec<String>,
    /// When its host is lost: resume (from hibernation data, else boot),
    /// reboot (boot on another host) or none.
    #[arg(long, default_value = "none", value_parser = crate::ha::cli::parse_policy)]
    pub ha: bulkhead_store::HaPolicy,
    #[command(flatten)]
    pub devices: DeviceArgs,
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub api: ApiArgs,
}

/// `bulkhead partition disk add|remove`: disks of a running partition.
#[derive(Debug, clap::Subcommand)]
pub enum DiskCommand {
    /// Hot-plug a disk into a running partition created with --hotplug N.
    Add(DiskAddArgs),
    /// Remove a hot-plugged disk (waits until the guest released it).
    Remove(DiskRemoveArgs),
}

#[derive(Debug, clap::Args)]
pub struct DiskAddArgs {
    pub name: String,
    /// The image: PATH[:ro] (qcow2 by extension, raw otherwise).
    #[arg(required_unless_present = "lu", conflicts_with = "lu")]
    pub disk: Option<String>,
    /// An LU of the partition's client instead of a path: NAME[:ro].
    #[arg(long)]
    pub lu: Option<String>,
    /// Adapter id; hotN when absent.
    #[arg(long)]
    pub id: Option<String>,
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub api: ApiArgs,
}

#[derive(Debug, clap::Args)]
pub struct DiskRemoveArgs {
    pub name: String,
    /// The disk's adapter id (from `disk add` or `show`).
    pub id: String,
    #[command(flatten)]
    pub api: ApiArgs,
}

#[derive(Debug, clap::Args)]
pub struct NameArgs {
    pub name: String,
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub api: ApiArgs,
}

#[derive(Debug, clap::Args)]
pub struct ResumeArgs {
    pub name: String,
    /// The cluster host (by name) to resume it on; this one when absent.
    #[arg(long)]
    pub host: Option<String>,
    /// Migration by promotion: first make the redundant copy of each
    /// mirrored LU the partition writes its primary (`lu promote`); refused,
    /// with nothing changed, when a copy is not in step.
    #[arg(long)]
    pub promote_mirror: bool,
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub api: ApiArgs,
}

#[derive(Debug, clap::Args)]
pub struct StartArgs {
    pub name: String,
    /// Return once the agent reports ready.
    #[arg(long)]
    pub wait: bool,
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub api: ApiArgs,
}

#[derive(Debug, clap::Args)]
pub struct StopArgs {
    pub name: String,
    /// Kill QEMU at once.
    #[arg(long)]
    pub force: bool,
    /// Seconds for the graceful stop before QEMU is killed.
    #[arg(long)]
    pub timeout: Option<u64>,
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub api: ApiArgs,
}

#[derive(Debug, clap::Args)]
pub struct DestroyArgs {
    pub name: String,
    /// Destroy even if it runs (QEMU is killed).
    #[arg(long)]
    pub force: bool,
    #[command(flatten)]
    pub api: ApiArgs,
}

#[derive(Debug, clap::Args)]
pub struct ListArgs {
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub api: ApiArgs,
}

#[derive(Debug, clap::Args)]
pub struct ConsoleArgs {
    pub name: String,
    /// Print the last lines of the console log instead of attaching.
    #[arg(long)]
    pub log: bool,
    #[arg(long, default_value_t = 50)]
    pub lines: usize,
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub api: ApiArgs,
}

#[derive(Debug, clap::Args)]
pub struct ExecArgs {
    pub name: String,
    /// Seconds before the guest kills the command.
    #[arg(long, default_value_t = 60)]
    pub timeout: u64,
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub api: ApiArgs,
    /// The command and its arguments (after `--`).
    #[arg(last = true, required = true)]
    pub argv: Vec<String>,
}

/// Host devices of `partition create` (issue 15).
#[derive(Debug, clap::Args)]
pub struct DeviceArgs {
    /// A host serial line (tty or PTY) the partition owns, the guest's
    /// /dev/ttyS1 (the next one /dev/ttyS2...); repeatable.
    #[arg(long = "serial-device", value_name = "PATH")]
    pub serial_device: Vec<String>,
    /// Start the L2TP resource server in the partition on its serial lines,
    /// with this profile (TOML: secret, directory...; docs/l2tp.md).
    #[arg(long, value_name = "FILE", requires = "serial_device")]
    pub l2tp_server: Option<std::path::PathBuf>,
}

/// The partition commands served by bulkheadd.
#[derive(Debug, clap::Subcommand)]
pub enum PartitionCommand {
    /// Define a partition.
    Create(Box<CreateArgs>),
    /// Start a partition.
    Start(StartArgs),
    /// Stop a partition (graceful through the agent, forced after a timeout).
    Stop(StopArgs),
    /// Stop then start a partition.
    Restart(StartArgs),
    /// Remove a partition (refuses a running one unless --force).
    Destroy(DestroyArgs),
    /// List partitions.
    List(ListArgs),
    /// Show one partition with its recent events.
    Show(NameArgs),
    /// Attach to the serial console (Ctrl-] detaches), or print its log.
    Console(ConsoleArgs),
    /// Run a command in the partition through its agent.
    Exec(ExecArgs),
    /// CPU time used vs entitlement, memory, uptime.
    Stats(NameArgs),
    /// Hot-plug disks into a running partition, or remove them.
    #[command(subcommand)]
    Disk(DiskCommand),
    /// Save a running partition (memory and devices) into its hibernation
    /// image and stop it; shows the bytes written on a terminal.
    Hibernate(NameArgs),
    /// Restore a hibernated partition from its image and run it.
    Resume(ResumeArgs),
    /// Checkpoint a running partition now (it runs on), or with --every
    /// set how often it is checkpointed (0: off).
    Checkpoint(crate::checkpoint::CheckpointArgs),
    /// Resume a stopped or failed partition from its last checkpoint (its
    /// disks reverted to the checkpoint's point first).
    RestoreCheckpoint(NameArgs),
    /// Serve it on the shared port by domain (HTTP Host, TLS SNI).
    Expose(crate::expose_cli::ExposeArgs),
    /// Remove its routes on the shared port (one domain's, or all).
    Unexpose(crate::expose_cli::UnexposeArgs),
    /// Set what the cluster does when its host is lost: resume, reboot, none.
    Ha(crate::ha::cli::HaArgs),
}

/// `90s`, `10m`, `2h`, `1d` or plain seconds.
pub fn parse_duration_secs(s: &str) -> anyhow::Result<u64> {
    let t = s.trim();
    let (num, unit) = match t.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => t.split_at(i),
        None => (t, "s"),
    };
    let mult = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86400,
        _ => 0,
    };
    num.parse::<u64>()
        .ok()
        .filter(|_| mult > 0)
        .and_then(|n| n.checked_mul(mult))
        .with_context(|| format!("{s:?} is not a duration such as 90s, 10m or 2h"))
}

/// Parses `50%` or `50` as a percentage.
pub fn parse_percent(s: &str) -> anyhow::Result<u32> {
    let t = s.trim().trim_end_matches('%');
    t.parse::<u32>()
        .ok()
        .with_context(|| format!("--cpu {s:?} must be a percentage such as 50%"))
}

pub fn parse_disk(s: &str) -> anyhow::Result<DiskRecord> {
    let (path, ro) = match s.strip_suffix(":ro") {
        Some(p) => (p, true),
        None => (s, false),
    };
    let abs = std::path::absolute(path).with_context(|| format!("disk {path:?}"))?;
    let format = if path.ends_with(".qcow2") {
        "qcow2"
    } else {
        "raw"
    };
    Ok(DiskRecord {
        path: abs.to_string_lossy().into_owned(),
        format: format.into(),
        readonly: ro,
        lu: None,
    })
}

/// Runs one partition command. Failures print one line and exit non-zero.
pub async fn run(cmd: PartitionCommand) -> anyhow::Result<()> {
    exit_on_error(run_inner(cmd).await)
}

/// A failed command prints one line and exits 1.
pub fn exit_on_error(r: anyhow::Result<()>) -> anyhow::Result<()> {
    if let Err(e) = r {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
    Ok(())
}

/// `v` as JSON with `--json`, else as `text` renders it (a table, a show).
pub fn print_view<T: Serialize + ?Sized>(
    v: &T,
    json: bool,
    text: impl Fn(&T) -> String,
) -> anyhow::Result<()> {
    if json {
        return print_json(v);
    }
    print!("{}", text(v));
    Ok(())
}

/// `--json`: the typed reply, pretty.
pub fn print_json<T: Serialize + ?Sized>(v: &T) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

async fn run_inner(cmd: PartitionCommand) -> anyhow::Result<()> {
    match cmd {
        PartitionCommand::Create(a) => {
            let memory_mib =
                bulkhead_engine::spec::parse_mib(&a.memory).map_err(anyhow::Error::msg)?;
            let disks = a
                .disk
                .iter()
                .map(|d| parse_disk(d))
                .collect::<anyhow::Result<Vec<_>>>()?;
            let req = CreatePartition {
                name: a.name,
                vcpus: a.vcpus,
                memory_mib,
                cpu_percent: parse_percent(&a.cpu)?,
                image: a.image,
                cmdline: a.cmdline,
                disks,
                net: a.net,
                restart_policy: a.restart.parse().map_err(anyhow::Error::msg)?,
                hotplug_slots: a.hotplug,
                cpu_model: a.cpu_model,
                host: a.host,
                hibernate_idle_secs: a
                    .hibernate_idle
                    .as_deref()
                    .map(parse_duration_secs)
                    .transpose()?,
                checkpoint_every_ms: a
                    .checkpoint_every
                    .as_deref()
                    .map(crate::checkpoint::parse_every)
                    .transpose()?
                    .flatten(),
                client: a.client,
                lus: a
                    .lu
                    .iter()
                    .map(|l| crate::lu::cli::parse_lu_attach(l))
                    .collect(),
                devices: crate::devices::cli_devices(
                    &a.devices.serial_device,
                    a.devices.l2tp_server.as_deref(),
                )?,
                ha: a.ha,
            };
            let rec = a.api.client()?.create(&req).await?;
            print_record(&rec, a.json)?;
        }
        PartitionCommand::Start(a) => {
            let opts = StartOptions { wait: a.wait };
            let rec = a.api.client()?.start(&a.name, &opts).await?;
            print_record(&rec, a.json)?;
        }
        PartitionCommand::Restart(a) => {
            let opts = StartOptions { wait: a.wait };
            let rec = a.api.client()?.restart(&a.name, &opts).await?;
            print_record(&rec, a.json)?;
        }
        PartitionCommand::Stop(a) => {
            let opts = StopOptions {
                force: a.force,
                timeout_secs: a.timeout,
            };
            let rec = a.api.client()?.stop(&a.name, &opts).await?;
            print_record(&rec, a.json)?;
        }
        PartitionCommand::Destroy(a) => {
            let d = a.api.client()?.destroy(&a.name, a.force).await?;
            println!("destroyed {}", d.destroyed);
        }
        PartitionCommand::List(a) => {
            let client = a.api.client()?;
            let recs = client.list().await?;
            if a.json {
                print_json(&recs)?;
            } else {
                // Members by name; a daemon outside any cluster has none.
                let hosts = client.cluster_hosts().await.unwrap_or_default();
                print!("{}", list_table(&recs, &hosts));
            }
        }
        PartitionCommand::Show(a) => {
            let client = a.api.client()?;
            let view = client.show(&a.name).await?;
            if a.json {
                print_json(&view)?;
            } else {
                let hosts = client.cluster_hosts().await.unwrap_or_default();
                print!("{}", show_text(&view, &hosts));
            }
        }
        PartitionCommand::Stats(a) => {
            let st = a.api.client()?.stats(&a.name).await?;
            if a.json {
                print_json(&st)?;
            } else {
                print!("{}", stats_text(&st));
            }
        }
        PartitionCommand::Exec(a) => {
            let req = ExecRequest {
                argv: a.argv,
                timeout_secs: Some(a.timeout),
            };
            let r = a.api.client()?.exec(&a.name, &req).await?;
            if a.json {
                return print_json(&r);
            }
            let mut out = tokio::io::stdout();
            out.write_all(r.stdout.as_bytes()).await?;
            out.flush().await?;
            eprint!("{}", r.stderr);
            if r.code != 0 {
                std::process::exit(r.code);
            }
        }
        PartitionCommand::Disk(DiskCommand::Add(a)) => {
            let client = a.api.client()?;
            let disk = match (&a.lu, &a.disk) {
                (Some(lu), _) => {
                    let l = crate::lu::cli::parse_lu_attach(lu);
                    let req = crate::lu::types::AttachLu {
                        lu: l.name,
                        readonly: l.readonly,
                        id: a.id,
                    };
                    client.attach_lu(&a.name, &req).await?
                }
                (None, d) => {
                    let d = parse_disk(d.as_deref().unwrap_or_default())?;
                    let req = AttachDisk {
                        path: d.path,
                        format: Some(d.format),
                        readonly: d.readonly,
                        id: a.id,
                    };
                    client.attach_disk(&a.name, &req).await?
                }
            };
            if a.json {
                print_json(&disk)?;
            } else {
                println!("{} attached to {} (port {})", disk.id, a.name, disk.slot);
            }
        }
        PartitionCommand::Hibernate(a) => {
            let client = a.api.client()?;
            let rec = hibernate_with_progress(&client, &a.name).await?;
            print_record(&rec, a.json)?;
        }
        PartitionCommand::Checkpoint(a) => crate::checkpoint::checkpoint_cli(a).await?,
        PartitionCommand::RestoreCheckpoint(a) => {
            let rec = a.api.client()?.restore_checkpoint(&a.name).await?;
            print_record(&rec, a.json)?;
        }
        PartitionCommand::Expose(a) => crate::expose_cli::expose(a).await?,
        PartitionCommand::Unexpose(a) => crate::expose_cli::unexpose(a).await?,
        PartitionCommand::Ha(a) => crate::ha::cli::run(a).await?,
        PartitionCommand::Resume(a) => {
            let opts = crate::api::ResumeOptions {
                host: a.host,
                promote_mirror: a.promote_mirror,
            };
            let rec = a.api.client()?.resume_with(&a.name, &opts).await?;
            print_record(&rec, a.json)?;
        }
        PartitionCommand::Disk(DiskCommand::Remove(a)) => {
            let d = a.api.client()?.detach_disk(&a.name, &a.id).await?;
            println!("{} removed from {}", d.id, a.name);
        }
        PartitionCommand::Console(a) => {
            let client = a.api.client()?;
            if a.log || a.json {
                let log = client.console_log(&a.name, a.lines).await?;
                if a.json {
                    print_json(&log)?;
                } else {
                    for l in &log.lines {
                        println!("{l}");
                    }
                }
                return Ok(());
            }
            attach(&client, &a.name).await?;
        }
    }
    Ok(())
}

/// Hibernates; while the call runs, a terminal on stderr shows the bytes
/// saved of the total (polled from the progress endpoint).
async fn hibernate_with_progress(client: &Client, name: &str) -> anyhow::Result<PartitionRecord> {
    use std::io::IsTerminal;
    let call = client.hibernate(name);
    if !std::io::stderr().is_terminal() {
        return Ok(call.await?);
    }
    tokio::pin!(call);
    let mut tick = tokio::time::interval(std::time::Duration::from_millis(200));
    let mib = |b: u64| b as f64 / 1048576.0;
    loop {
        tokio::select! {
            r = &mut call => {
                eprint!("\r\x1b[K");
                return Ok(r?);
            }
            _ = tick.tick() => {
                if let Ok(p) = client.hibernate_progress(name).await {
                    if p.active && p.total > 0 {
                        eprint!("\r\x1b[Ksaving {name}: {:.1} of {:.1} MiB", mib(p.transferred), mib(p.total));
                    }
                }
            }
        }
    }
}

/// The state as a person reads it: `hibernated (idle)` says why.
pub fn state_text(r: &PartitionRecord) -> String {
    match (&r.state, &r.hibernation) {
        (bulkhead_store::PartitionState::Hibernated, Some(h)) => {
            format!("{} ({})", r.state, h.reason)
        }
        _ => r.state.to_string(),
    }
}

/// `/v1/partitions/NAME`, for a name the daemon would accept (checked
/// before anything is sent, so a bad one is a clear error).
pub fn partition_path(name: &str) -> anyhow::Result<String> {
    Ok(crate::client::partition_path(name)?)
}

pub use crate::client::encode_segment;

/// Console: guest output to stdout, stdin to the guest, until Ctrl-] or EOF
/// from the guest side.
async fn attach(client: &Client, name: &str) -> anyhow::Result<()> {
    let stream = client.console(name).await?;
    eprintln!("bulkhead: attached to {name}'s console; Ctrl-] detaches\r");
    // Keys go to the guest as typed (Ctrl-C included) while attached.
    let _raw = RawTerminal::enter();
    let (mut r, mut w) = tokio::io::split(stream);
    let out = async {
        let mut stdout = tokio::io::stdout();
        let mut buf = [0u8; 4096];
        loop {
            let n = r.read(&mut buf).await?;
            if n == 0 {
                break;
            }
            stdout.write_all(&buf[..n]).await?;
            stdout.flush().await?;
        }
        anyhow::Ok(())
    };
    let inp = async {
        let mut stdin = tokio::io::stdin();
        let mut buf = [0u8; 1024];
        loop {
            let n = stdin.read(&mut buf).await?;
            if n == 0 {
                // Our stdin ended (a pipe): keep showing output.
                std::future::pending::<()>().await;
            }
            if let Some(i) = buf[..n].iter().position(|b| *b == 0x1d) {
                w.write_all(&buf[..i]).await?;
                break;
            }
            w.write_all(&buf[..n]).await?;
        }
        anyhow::Ok(())
    };
    tokio::select! {
        r = out => r?,
        r = inp => r?,
    }
    eprintln!("\r\nbulkhead: detached\r");
    Ok(())
}

/// The terminal in raw mode for as long as this lives; nothing when stdin
/// is not a terminal.
struct RawTerminal(Option<libc::termios>);

impl RawTerminal {
    fn enter() -> Self {
        // SAFETY: isatty/tcgetattr/tcsetattr on fd 0 with a termios we own;
        // the previous settings are kept to be restored on drop.
        unsafe {
            if libc::isatty(0) != 1 {
                return Self(None);
            }
            let mut t: libc::termios = std::mem::zeroed();
            if libc::tcgetattr(0, &mut t) != 0 {
                return Self(None);
            }
            let saved = t;
            libc::cfmakeraw(&mut t);
            if libc::tcsetattr(0, libc::TCSANOW, &t) != 0 {
                return Self(None);
            }
            Self(Some(saved))
        }
    }
}

impl Drop for RawTerminal {
    fn drop(&mut self) {
        if let Some(t) = &self.0 {
            // SAFETY: restores the settings read in `enter` on the same fd.
            unsafe {
                libc::tcsetattr(0, libc::TCSANOW, t);
            }
        }
    }
}

/// An optional value, or `-`.
fn opt<T: std::fmt::Display>(v: Option<T>) -> String {
    v.map(|v| v.to_string()).unwrap_or_else(|| "-".into())
}

/// Aligned columns, the widths taken from the content.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut w: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            w[i] = w[i].max(c.chars().count());
        }
    }
    let mut out = String::new();
    let line = |cells: Vec<String>, out: &mut String| {
        let last = cells.len() - 1;
        for (i, c) in cells.into_iter().enumerate() {
            if i == last {
                out.push_str(&c);
            } else {
                out.push_str(&format!("{c:<width$}  ", width = w[i]));
            }
        }
        out.push('\n');
    };
    line(header.iter().map(|h| h.to_string()).collect(), &mut out);
    for r in rows {
        line(r.clone(), &mut out);
    }
    out
}

/// A host id as its cluster member's name, when `hosts` knows it.
fn host_name(id: &str, hosts: &[crate::cluster::ClusterHost]) -> String {
    hosts
        .iter()
        .find(|h| h.id == id)
        .map_or_else(|| id.to_string(), |h| h.name.clone())
}

/// The partition table. A HOST column (members by name) appears in a
/// cluster of more than one host, or when the records belong to more than
/// one host (a shared store); one host's list stays narrow.
pub fn list_table(recs: &[PartitionRecord], hosts: &[crate::cluster::ClusterHost]) -> String {
    let many_hosts = hosts.len() > 1 || recs.iter().any(|r| r.host != recs[0].host);
    let rows: Vec<Vec<String>> = recs
        .iter()
        .map(|p| {
            let mut row = vec![
                p.name.clone(),
                state_text(p),
                p.vcpus.to_string(),
                format!("{}M", p.memory_mib),
                format!("{}%", p.cpu_percent),
                opt(p.net.as_ref().map(|n| &n.ip)),
                opt(p.pid),
                p.last_exit.clone().unwrap_or_default(),
            ];
            if many_hosts {
                row.insert(1, host_name(&p.host, hosts));
            }
            row
        })
        .collect();
    let mut header = vec![
        "NAME",
        "STATE",
        "VCPUS",
        "MEMORY",
        "CPU",
        "ADDRESS",
        "PID",
        "LAST EXIT",
    ];
    if many_hosts {
        header.insert(1, "HOST");
    }
    table(&header, &rows)
}

pub(crate) fn print_record(rec: &PartitionRecord, json: bool) -> anyhow::Result<()> {
    if json {
        return print_json(rec);
    }
    println!(
        "{} {} (pid {}, address {})",
        rec.name,
        rec.state,
        opt(rec.pid),
        opt(rec.net.as_ref().map(|n| &n.ip))
    );
    Ok(())
}

fn ms_ago(at: Option<u64>) -> String {
    match at {
        Some(t) => {
            let secs = bulkhead_store::now_ms().saturating_sub(t) / 1000;
            format!("{secs}s ago")
        }
        None => "-".into(),
    }
}

/// `, ro` for a read-only disk.
fn ro(readonly: bool) -> &'static str {
    if readonly {
        ", ro"
    } else {
        ""
    }
}

pub fn show_text(v: &PartitionView, hosts: &[crate::cluster::ClusterHost]) -> String {
    let r = &v.record;
    let mut rows = vec![
        ("name", r.name.clone()),
        (
            "state",
            format!("{} (since {})", state_text(r), ms_ago(Some(r.state_since))),
        ),
        ("vcpus", r.vcpus.to_string()),
        (
            "memory",
            format!(
                "{} MiB (cgroup limit {} MiB with QEMU)",
                r.memory_mib, v.memory_limit_mib
            ),
        ),
        ("cpu entitlement", format!("{}% of one CPU", r.cpu_percent)),
        ("address", opt(r.net.as_ref().map(|n| &n.ip))),
        ("mac", opt(r.net.as_ref().map(|n| &n.mac))),
        ("tap", opt(v.tap.as_ref())),
        (
            "restart policy",
            format!("{} (restarts {})", r.restart_policy, r.restarts),
        ),
        ("host", {
            let name = host_name(&r.host, hosts);
            if name == r.host {
                name
            } else {
                format!("{name} ({})", r.host)
            }
        }),
        (
            "client",
            format!("{} (ClientID {})", r.client(), r.client_id),
        ),
        (
            "adapter ids",
            r.adapter_ids
                .iter()
                .map(|(a, id)| format!("{a}={id}"))
                .collect::<Vec<_>>()
                .join(" "),
        ),
        ("cpu model", r.cpu_model.clone()),
        ("hot-plug ports", r.hotplug_slots.to_string()),
        ("pid", opt(r.pid)),
        ("started", ms_ago(r.started_at)),
        ("last exit", opt(r.last_exit.as_ref())),
        ("console log", opt(v.console_log.as_ref())),
        (
            "hibernate idle",
            opt(r.hibernate_idle_secs.map(|s| format!("{s} s"))),
        ),
        (
            "checkpoint every",
            opt(r.checkpoint_every_ms.map(|ms| format!("{} s", ms / 1000))),
        ),
    ];
    for (i, d) in r.devices.serial.iter().enumerate() {
        rows.push(("serial device", format!("{d} (guest /dev/ttyS{})", i + 1)));
    }
    if let Some(l) = &r.devices.l2tp_server {
        rows.push((
            "l2tp server",
            format!(
                "UDP port {} on the VLAN address, {} directory names",
                l.port.unwrap_or(crate::devices::L2TP_PORT),
                l.directory.len()
            ),
        ));
    }
    if let Some(h) = &r.hibernation {
        rows.push((
            "hibernation",
            format!(
                "{} ({:.1} MiB, {}, saved {})",
                h.location,
                h.bytes as f64 / 1048576.0,
                h.reason,
                ms_ago(Some(h.saved_at))
            ),
        ));
    }
    for d in &r.disks {
        let lu =
            d.lu.as_ref()
                .map(|l| format!("LU {l}: "))
                .unwrap_or_default();
        rows.push((
            "disk",
            format!("{lu}{} ({}{})", d.path, d.format, ro(d.readonly)),
        ));
    }
    for d in &v.hotplugged_disks {
        rows.push((
            "hot-plugged",
            format!(
                "{} {} ({}{}, port {})",
                d.id,
                d.path,
                d.format,
                ro(d.readonly),
                d.slot
            ),
        ));
    }
    let mut out = String::new();
    for (k, val) in rows {
        out.push_str(&format!("{:<16} {val}\n", format!("{k}:")));
    }
    out.push_str("events:\n");
    for e in &v.events {
        out.push_str(&format!("  {:>8}  {}\n", ms_ago(Some(e.at)), e.message));
    }
    out
}

pub fn stats_text(v: &Stats) -> String {
    let mib = |x: u64| format!("{:.1} MiB", x as f64 / 1048576.0);
    let rows = [
        ("state", v.state.to_string()),
        ("cpu entitlement", format!("{}%", v.cpu_entitlement_percent)),
        ("cpu now", format!("{}%", v.cpu_recent_percent)),
        ("cpu average", format!("{}%", v.cpu_avg_percent)),
        ("cpu time", format!("{:.2} s", v.cpu_time_ns as f64 / 1e9)),
        (
            "memory (cgroup)",
            format!("{} of {}", mib(v.memory_bytes), mib(v.memory_limit_bytes)),
        ),
        ("qemu rss", mib(v.rss_bytes)),
        ("uptime", format!("{:.1} s", v.uptime_ms as f64 / 1e3)),
    ];
    let mut out = String::new();
    for (k, val) in rows {
        out.push_str(&format!("{:<16} {val}\n", format!("{k}:")));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A `bulkhead partition ...` command line, parsed.
    fn parse(args: &[&str]) -> Result<PartitionCommand, clap::Error> {
        use clap::Parser;
        #[derive(clap::Parser)]
        struct T {
            #[command(subcommand)]
            c: PartitionCommand,
        }
        T::try_parse_from(std::iter::once("t").chain(args.iter().copied())).map(|t| t.c)
    }

    #[test]
    fn percent_and_disk_parsing() {
        assert_eq!(parse_percent("50%").unwrap(), 50);
        assert_eq!(parse_percent("25").unwrap(), 25);
        assert!(parse_percent("half").is_err());
        assert!(parse_percent("-5%").is_err());
        let d = parse_disk("/x/a.qcow2:ro").unwrap();
        assert_eq!(
            (d.path.as_str(), d.format.as_str()),
            ("/x/a.qcow2", "qcow2")
        );
        assert!(d.readonly);
    }

    #[test]
    fn serial_device_and_l2tp_server_arguments() {
        let dir = tempfile::tempdir().unwrap();
        let profile = dir.path().join("m.toml");
        std::fs::write(
            &profile,
            "secret = \"s\"\n[directory]\nPRIMARY_ISP = \"5551234\"\n",
        )
        .unwrap();
        let p = profile.to_str().unwrap();
        let base = ["create", "m", "--memory", "160M", "--cpu", "30%"];
        let with = |extra: &[&str]| parse(&[&base[..], extra].concat());
        let c = with(&["--serial-device", "/tmp/ttyM0", "--l2tp-server", p]).unwrap();
        let PartitionCommand::Create(a) = c else {
            panic!("not create")
        };
        let d =
            crate::devices::cli_devices(&a.devices.serial_device, a.devices.l2tp_server.as_deref())
                .unwrap();
        assert_eq!(d.serial, ["/tmp/ttyM0"]);
        let l = d.l2tp_server.unwrap();
        assert_eq!(l.secret.as_deref(), Some("s"));
        assert_eq!(l.directory["PRIMARY_ISP"], "5551234");
        // A server needs a line; a profile with an unknown key is refused.
        assert!(with(&["--l2tp-server", p]).is_err());
        std::fs::write(&profile, "secert = \"typo\"\n").unwrap();
        let e = crate::devices::cli_devices(&[], Some(&profile)).unwrap_err();
        assert!(format!("{e:#}").contains("secert"), "{e:#}");
    }

    #[test]
    fn hotplug_and_cpu_model_arguments() {
        let c = parse(&[
            "create",
            "p",
            "--memory",
            "256M",
            "--cpu",
            "50%",
            "--hotplug",
            "2",
            "--cpu-model",
            "x86-64-v1",
        ])
        .unwrap();
        let PartitionCommand::Create(a) = c else {
            panic!("not create")
        };
        assert_eq!((a.hotplug, a.cpu_model.as_deref()), (2, Some("x86-64-v1")));
        let c = parse(&["disk", "add", "p", "/x.raw:ro", "--id", "d1"]).unwrap();
        let PartitionCommand::Disk(DiskCommand::Add(a)) = c else {
            panic!("not disk add")
        };
        assert_eq!(
            (a.disk.as_deref(), a.id.as_deref()),
            (Some("/x.raw:ro"), Some("d1"))
        );
        assert!(parse(&["disk", "remove", "p"]).is_err());
        let c = parse(&["disk", "add", "p", "--lu", "vol:ro"]).unwrap();
        let PartitionCommand::Disk(DiskCommand::Add(a)) = c else {
            panic!("not disk add")
        };
        assert_eq!((a.disk, a.lu.as_deref()), (None, Some("vol:ro")));
        // A path or an LU, one of them.
        assert!(parse(&["disk", "add", "p"]).is_err());
        assert!(parse(&["disk", "add", "p", "/x", "--lu", "v"]).is_err());
        // What the daemon sends for `show`, read as the typed view.
        let view: PartitionView = serde_json::from_value(serde_json::json!({
            "name": "p", "vcpus": 1, "memory_mib": 128, "cpu_percent": 10,
            "state": "running", "created_at": 1, "state_since": 1, "pid": null,
            "net": null, "memory_limit_mib": 224, "tap": null,
            "cpu_model": "x86-64-v2", "hotplug_slots": 2,
            "hotplugged_disks": [{"id": "hot0", "path": "/x.raw", "format": "raw", "readonly": true, "slot": 0}],
        }))
        .unwrap();
        let shown = show_text(&view, &[]);
        assert!(shown.contains("cpu model:       x86-64-v2"), "{shown}");
        assert!(
            shown.contains("hot-plugged:     hot0 /x.raw (raw, ro, port 0)"),
            "{shown}"
        );
    }

    #[test]
    fn hibernation_arguments_and_state() {
        for (s, secs) in [
            ("90", 90),
            ("90s", 90),
            ("10m", 600),
            ("2h", 7200),
            ("1d", 86400),
        ] {
            assert_eq!(parse_duration_secs(s).unwrap(), secs, "{s}");
        }
        for bad in ["", "m", "10x", "-5s", "1.5h", "99999999999999999999d"] {
            assert!(parse_duration_secs(bad).is_err(), "{bad:?}");
        }
        let c = parse(&[
            "create",
            "p",
            "--memory",
            "1G",
            "--cpu",
            "5%",
            "--hibernate-idle",
            "10m",
        ]);
        let PartitionCommand::Create(a) = c.unwrap() else {
            panic!("not create")
        };
        assert_eq!(a.hibernate_idle.as_deref(), Some("10m"));
        assert!(matches!(
            parse(&["hibernate", "p", "--json"]).unwrap(),
            PartitionCommand::Hibernate(NameArgs { json: true, .. })
        ));
        assert!(matches!(
            parse(&["resume", "p"]).unwrap(),
            PartitionCommand::Resume(_)
        ));
        let mut rec: PartitionRecord = serde_json::from_value(serde_json::json!({
            "name": "p", "host": "h", "vcpus": 1, "memory_mib": 128, "cpu_percent": 10,
            "state": "hibernated", "created_at": 1, "state_since": 1,
            "hibernation": {"location": "clients/p/hibernation/p", "bytes": 1048576,
                "sha256": "00", "saved_at": 1, "reason": "idle", "config": {}},
        }))
        .unwrap();
        assert_eq!(state_text(&rec), "hibernated (idle)");
        assert!(list_table(std::slice::from_ref(&rec), &[]).contains("hibernated (idle)"));
        rec.state = bulkhead_store::PartitionState::Running;
        assert_eq!(state_text(&rec), "running");
    }

    #[test]
    fn names_are_checked_and_segments_encoded() {
        assert_eq!(partition_path("web-1").unwrap(), "/v1/partitions/web-1");
        for bad in ["a b", "x?force=true", "../host", "x/stop", "", "Web"] {
            let e = partition_path(bad).unwrap_err().to_string();
            assert!(e.contains("partition name"), "{bad:?}: {e}");
        }
        assert_eq!(encode_segment("a b?c=d/é"), "a%20b%3Fc%3Dd%2F%C3%A9");
    }

    #[test]
    fn host_column_only_when_records_span_hosts() {
        let rec = |name: &str, host: &str| {
            let mut r: PartitionRecord = serde_json::from_value(serde_json::json!({
                "name": name, "host": host, "vcpus": 1, "memory_mib": 128,
                "cpu_percent": 10, "state": "defined", "created_at": 1,
                "state_since": 1, "revision": 1
            }))
            .expect("a minimal record");
            r.cpu_model = "x86-64-v2".into();
            r
        };
        let one = list_table(&[rec("a", "h1"), rec("b", "h1")], &[]);
        assert!(!one.contains("HOST"), "{one}");
        let two = list_table(&[rec("a", "h1"), rec("b", "h2")], &[]);
        let lines: Vec<&str> = two.lines().collect();
        assert!(lines[0].starts_with("NAME  HOST  STATE"), "{two}");
        assert!(lines[2].starts_with("b     h2    defined"), "{two}");
        assert_eq!(list_table(&[], &[]).lines().count(), 1);
        // In a cluster, members by name, even when all records are one host's.
        let member = |name: &str, id: &str| -> crate::cluster::ClusterHost {
            serde_json::from_value(serde_json::json!({
                "name": name, "id": id, "state": "up",
                "capacity": {"cpus": 2, "memory_mib": 1024},
                "allocated": {"vcpus": 0, "memory_mib": 0}, "partitions": 0,
                "endpoints": [], "underlay": null, "started_at": 1, "version": "x"
            }))
            .expect("a member")
        };
        let hosts = [member("alpha", "h1"), member("beta", "h2")];
        let named = list_table(&[rec("a", "h1"), rec("b", "h1")], &hosts);
        let lines: Vec<&str> = named.lines().collect();
        assert!(lines[0].starts_with("NAME  HOST   STATE"), "{named}");
        assert!(lines[2].starts_with("b     alpha  defined"), "{named}");
    }

    #[test]
    fn tables_align() {
        let t = table(
            &["A", "B"],
            &[
                vec!["long-name".into(), "x".into()],
                vec!["s".into(), "y".into()],
            ],
        );
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines[0], "A          B");
        assert_eq!(lines[1], "long-name  x");
        assert_eq!(lines[2], "s          y");
    }
}

//! `bulkhead partition run`: one partition in the foreground, console on the
//! terminal, until it powers off or Ctrl-C. The engine without the daemon.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::signal::unix::{signal, Signal, SignalKind};

use crate::spec::{
    parse_mib, AdapterSpec, DiskFormat, DiskSpec, MachineKind, NetSpec, PartitionSpec,
};
use crate::{LaunchOptions, Partition};

#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// Guest image directory (vmlinux and initramfs.cpio.gz), as `bulkhead image build` writes it;
    /// by default the daemon's: $BULKHEAD_IMAGE_DIR, else ~/.cache/bulkhead/image.
    #[arg(long, default_value_os_t = crate::default_image_dir(), hide_default_value = true)]
    pub image: PathBuf,
    #[arg(long, default_value = "run")]
    pub name: String,
    /// Memory, e.g. 256M or 1G.
    #[arg(long, default_value = "256M")]
    pub memory: String,
    #[arg(long, default_value_t = 1)]
    pub vcpus: u32,
    /// A disk (raw, or qcow2 by extension); repeat for more. `:ro` makes it read-only.
    #[arg(long)]
    pub disk: Vec<String>,
    /// Attach a virtio-net adapter to this host bridge.
    #[arg(long)]
    pub net: Option<String>,
    /// Guest address on that bridge, CIDR (e.g. 10.77.0.2/24).
    #[arg(long, requires = "net")]
    pub ip: Option<String>,
    /// Extra kernel command line.
    #[arg(long, default_value = "")]
    pub cmdline: String,
    /// microvm, q35 or auto.
    #[arg(long, default_value = "auto")]
    pub machine: String,
    /// Boot the first disk as the root filesystem (a root LU).
    #[arg(long)]
    pub root_disk: bool,
    /// Seconds to wait for the agent before giving up.
    #[arg(long, default_value_t = 120)]
    pub ready_timeout: u64,
}

impl RunArgs {
    pub fn to_spec(&self) -> anyhow::Result<PartitionSpec> {
        let mut spec = PartitionSpec::new(
            &self.name,
            self.image.join("vmlinux"),
            self.image.join("initramfs.cpio.gz"),
        );
        spec.memory_mib = parse_mib(&self.memory).map_err(anyhow::Error::msg)?;
        spec.vcpus = self.vcpus;
        spec.boot.cmdline = self.cmdline.clone();
        spec.machine = match self.machine.as_str() {
            "auto" => MachineKind::Auto,
            "microvm" => MachineKind::Microvm,
            "q35" => MachineKind::Q35,
            m => anyhow::bail!("unknown machine {m:?} (auto, microvm, q35)"),
        };
        for (i, d) in self.disk.iter().enumerate() {
            let (path, readonly) = match d.strip_suffix(":ro") {
                Some(p) => (PathBuf::from(p), true),
                None => (PathBuf::from(d), false),
            };
            spec.adapters.push(AdapterSpec::Disk(DiskSpec {
                id: format!("disk{i}"),
                format: DiskFormat::guess(&path),
                path,
                readonly,
                backing: None,
                shared_read: false,
            }));
        }
        if self.root_disk {
            anyhow::ensure!(!self.disk.is_empty(), "--root-disk needs a --disk");
            spec.boot.root_disk = Some("disk0".into());
        }
        if let Some(br) = &self.net {
            spec.adapters.push(AdapterSpec::Net(NetSpec {
                id: "net0".into(),
                bridge: br.clone(),
                mac: None,
                tap: None,
                ip: self.ip.clone(),
                gateway: None,
            }));
        }
        Ok(spec)
    }
}

/// SIGINT (Ctrl-C), SIGTERM and SIGHUP (the terminal went away) all stop the
/// partition: none of them may leave QEMU running with nobody to stop it.
struct StopSignals {
    int: Signal,
    term: Signal,
    hup: Signal,
}

impl StopSignals {
    fn new() -> std::io::Result<StopSignals> {
        Ok(StopSignals {
            int: signal(SignalKind::interrupt())?,
            term: signal(SignalKind::terminate())?,
            hup: signal(SignalKind::hangup())?,
        })
    }

    async fn recv(&mut self) -> &'static str {
        tokio::select! {
            _ = self.int.recv() => "SIGINT",
            _ = self.term.recv() => "SIGTERM",
            _ = self.hup.recv() => "SIGHUP",
        }
    }
}

/// A status line on stderr. After SIGHUP the terminal may be gone, and a
/// failed write must not end us before QEMU is stopped (`eprintln!` panics).
fn say(line: std::fmt::Arguments) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "{line}");
}

pub async fn run(args: RunArgs) -> anyhow::Result<()> {
    let spec = args.to_spec()?;
    // Listen for the stop signals before anything starts, so an early one
    // stops the partition instead of killing this process and leaving QEMU.
    let mut stop = StopSignals::new()?;
    let run_dir =
        std::env::temp_dir().join(format!("bulkhead-run-{}-{}", spec.name, std::process::id()));
    let mut opts = LaunchOptions::new(&run_dir);
    opts.kill_on_drop = true;
    // And if we die anyway (SIGKILL), QEMU dies with us.
    opts.die_with_parent = true;
    let part = Partition::launch(spec, opts)
        .await
        .context("starting the partition")?;
    say(format_args!(
        "bulkhead: partition started (QEMU pid {}); Ctrl-C stops it",
        part.pid()
    ));

    // The console: guest output to our stdout, our stdin to the guest.
    let console = tokio::net::UnixStream::connect(part.console_socket())
        .await
        .context("connecting to the console")?;
    let (mut con_r, mut con_w) = console.into_split();
    let out = tokio::spawn(async move {
        let mut stdout = tokio::io::stdout();
        let mut buf = [0u8; 4096];
        while let Ok(n) = con_r.read(&mut buf).await {
            if n == 0 || stdout.write_all(&buf[..n]).await.is_err() {
                break;
            }
            let _ = stdout.flush().await;
        }
    });
    tokio::spawn(async move {
        let _ = tokio::io::copy(&mut tokio::io::stdin(), &mut con_w).await;
        // Dropping the write half would shut the socket down and QEMU would
        // drop the console client: keep it while the partition runs.
        std::future::pending::<()>().await;
        drop(con_w);
    });

    let mut interrupted = None;
    let ready = tokio::select! {
        r = part.wait_ready(Duration::from_secs(args.ready_timeout)) => r,
        sig = stop.recv() => {
            interrupted = Some(sig);
            Err(crate::EngineError::NotRunning(format!("{sig} before the agent was ready")))
        }
    };
    match &ready {
        Ok(r) => say(format_args!(
            "bulkhead: agent ready: {} vCPU(s), kernel {}, guest boot {} ms",
            r.ncpus, r.kernel_release, r.boot_ms
        )),
        Err(e) => say(format_args!("bulkhead: {e}")),
    }
    let exit = if interrupted.is_some() {
        part.stop(Duration::from_secs(30)).await?
    } else {
        tokio::select! {
            e = part.wait_exit() => e,
            sig = stop.recv() => {
                say(format_args!("\nbulkhead: {sig}: stopping"));
                part.stop(Duration::from_secs(30)).await?
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(1), out).await;
    let _ = std::fs::remove_dir_all(&run_dir);
    say(format_args!("bulkhead: partition ended: {}", exit.reason));
    ready?;
    if exit.is_failure() {
        anyhow::bail!("partition failed: {}", exit.reason);
    }
    Ok(())
}

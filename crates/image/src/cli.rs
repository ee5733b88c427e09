//! `bulkhead image ...`.

use std::path::PathBuf;

use clap::{Args, Subcommand};

use crate::build::{self, AddSpec, BuildOptions, Outcome};
use crate::rootfs::{self, RootfsOptions};
use crate::Error;

/// Guest images: kernel + initramfs, and Debian root LUs.
#[derive(Debug, Args)]
pub struct ImageArgs {
    #[command(subcommand)]
    pub command: ImageCommand,
}

#[derive(Debug, Subcommand)]
pub enum ImageCommand {
    /// Build DIR/vmlinux and DIR/initramfs.cpio.gz (cached: unchanged inputs do nothing).
    Build(BuildArgs),
    /// Make a Debian root file system LU (qcow2) bootable with bulkhead.root=/dev/vda.
    Rootfs(RootfsArgs),
}

#[derive(Debug, Args)]
pub struct BuildArgs {
    /// Output directory.
    #[arg(long)]
    pub out: PathBuf,
    /// The static bulkhead-agent binary (built by `make agent`).
    #[arg(long, default_value = crate::DEFAULT_AGENT)]
    pub agent: PathBuf,
    /// The static bulkhead-l2tp binary (built by `make agent`), installed as
    /// /usr/sbin/bulkhead-l2tp: the L2TP resource server and client in partitions.
    #[arg(long, value_name = "PATH")]
    pub l2tp: Option<PathBuf>,
    /// Put a host file or directory into the image: SRC:DEST (DEST absolute). Repeatable.
    #[arg(long = "add", value_name = "SRC:DEST", value_parser = parse_add)]
    pub adds: Vec<AddSpec>,
    /// Use this kernel .deb instead of Debian's current linux-image-cloud-amd64.
    #[arg(long)]
    pub kernel_deb: Option<PathBuf>,
    /// Also load this kernel module (and its dependencies) at boot. Repeatable.
    #[arg(long = "module", value_name = "NAME")]
    pub modules: Vec<String>,
    /// busybox binary to install (static).
    #[arg(long, default_value = "/bin/busybox")]
    pub busybox: PathBuf,
}

#[derive(Debug, Args)]
pub struct RootfsArgs {
    /// Output qcow2 file.
    #[arg(long, required_unless_present = "prefetch")]
    pub out: Option<PathBuf>,
    /// Only download the Debian packages into the cache (no LU is built).
    #[arg(long, conflicts_with = "out")]
    pub prefetch: bool,
    /// Virtual size of the LU (K, M, G, T suffixes).
    #[arg(long, default_value = "1G", value_parser = parse_size)]
    pub size: u64,
    /// The static bulkhead-agent binary installed as /usr/sbin/bulkhead-agent.
    #[arg(long, default_value = crate::DEFAULT_AGENT)]
    pub agent: PathBuf,
    /// Debian suite.
    #[arg(long, default_value = "bookworm")]
    pub suite: String,
    /// Debian mirror (default: the first one in apt's sources; an error when there is none).
    #[arg(long)]
    pub mirror: Option<String>,
    /// Host name written to /etc/hostname.
    #[arg(long, default_value = "bulkhead")]
    pub hostname: String,
}

fn parse_add(s: &str) -> Result<AddSpec, String> {
    s.parse().map_err(|e: Error| e.to_string())
}

fn parse_size(s: &str) -> Result<u64, String> {
    rootfs::parse_size(s).map_err(|e| e.to_string())
}

pub(crate) fn check_hostname(name: &str) -> Result<(), Error> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && !name.starts_with(['-', '.'])
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
    if ok {
        Ok(())
    } else {
        Err(Error::Invalid(format!("invalid host name {name:?}")))
    }
}

/// Runs `bulkhead image ...`; progress goes to stdout, one line per step.
pub fn run(args: ImageArgs) -> anyhow::Result<()> {
    let mut progress = |line: &str| println!("image: {line}");
    match args.command {
        ImageCommand::Build(a) => {
            let mut opts = BuildOptions::new(a.out);
            opts.agent = a.agent;
            opts.l2tp = a.l2tp;
            opts.adds = a.adds;
            opts.kernel_deb = a.kernel_deb;
            opts.extra_modules = a.modules;
            opts.busybox = a.busybox;
            let outcome = build::build(&opts, &mut progress)?;
            if let Outcome::UpToDate(m) = outcome {
                println!(
                    "image: cache hit (kernel {}), nothing rebuilt",
                    m.kernel_release
                );
            }
        }
        ImageCommand::Rootfs(a) => {
            let Some(out) = a.out else {
                rootfs::prefetch(
                    &a.suite,
                    a.mirror.as_deref(),
                    &crate::cache_dir(),
                    &mut progress,
                )?;
                return Ok(());
            };
            let mut opts = RootfsOptions::new(out);
            opts.size_bytes = a.size;
            opts.agent = a.agent;
            opts.suite = a.suite;
            opts.mirror = a.mirror;
            opts.hostname = a.hostname;
            rootfs::rootfs(&opts, &mut progress)?;
        }
    }
    Ok(())
}

//! bulkhead-image: builds what a partition boots.
//!
//! - [`build::build`] (`bulkhead image build`): `vmlinux` (the ELF extracted
//!   from Debian's cloud kernel package, booted through its PVH entry) and
//!   `initramfs.cpio.gz` (busybox-static, bulkhead-agent as /init, the modules
//!   the virtual devices need with their load order, user files).
//! - [`rootfs::rootfs`] (`bulkhead image rootfs`): a Debian root file system
//!   LU (debootstrap minbase plus the agent) as qcow2.
//! - [`cli`]: the `bulkhead image` subcommand.

pub mod build;
pub mod cli;
pub mod cpio;
pub mod kernel;
pub mod rootfs;

use std::path::{Path, PathBuf};
use std::process::Command;

/// Everything that can go wrong building an image.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("kernel: {0}")]
    Kernel(String),
    #[error("agent: {0}")]
    Agent(String),
    #[error("--add {spec}: {reason}")]
    Add { spec: String, reason: String },
    #[error("{0}")]
    Tool(String),
    #[error("{0}")]
    Invalid(String),
}

impl Error {
    pub(crate) fn io(path: &Path, source: std::io::Error) -> Error {
        Error::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

/// Runs a command; on failure the error carries its stderr.
pub(crate) fn run(cmd: &mut Command) -> Result<String, Error> {
    let shown = format!("{cmd:?}");
    let out = cmd.output().map_err(|e| {
        Error::Tool(format!(
            "{shown}: {e} (is it installed? see scripts/bootstrap)"
        ))
    })?;
    if !out.status.success() {
        return Err(Error::Tool(format!(
            "{shown} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

pub(crate) fn sha256_file(path: &Path) -> Result<String, Error> {
    use sha2::Digest;
    let mut f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut h = sha2::Sha256::new();
    std::io::copy(&mut f, &mut h).map_err(|e| Error::io(path, e))?;
    Ok(hex::encode(h.finalize()))
}

/// `$XDG_CACHE_HOME/bulkhead`, else `~/.cache/bulkhead`.
pub fn cache_dir() -> PathBuf {
    if let Some(x) = std::env::var_os("XDG_CACHE_HOME").filter(|x| !x.is_empty()) {
        return PathBuf::from(x).join("bulkhead");
    }
    let home = std::env::var_os("HOME").unwrap_or_else(|| "/root".into());
    PathBuf::from(home).join(".cache/bulkhead")
}

/// Where `make agent` puts the static agent, relative to the workspace root.
pub const DEFAULT_AGENT: &str = "target/x86_64-unknown-linux-gnu/release/bulkhead-agent";

/// Checks that `path` is a static x86-64 ELF executable (no PT_INTERP): the
/// guest has no C library, so a dynamic agent would not start.
pub fn check_static_elf(path: &Path) -> Result<(), Error> {
    let data = std::fs::read(path).map_err(|e| {
        Error::Agent(format!(
            "{}: {e} (build it with `make agent`, or pass --agent)",
            path.display()
        ))
    })?;
    let bad = |m: &str| Error::Agent(format!("{}: {m}", path.display()));
    if data.len() < 64 || &data[..4] != b"\x7fELF" || data[4] != 2 || data[5] != 1 {
        return Err(bad("not a 64-bit little-endian ELF file"));
    }
    let u16_at = |o: usize| u16::from_le_bytes([data[o], data[o + 1]]) as usize;
    let u64_at = |o: usize| u64::from_le_bytes(data[o..o + 8].try_into().unwrap()) as usize;
    if u16_at(18) != 62 {
        return Err(bad("not an x86-64 executable"));
    }
    let (phoff, phentsize, phnum) = (u64_at(32), u16_at(54), u16_at(56));
    for i in 0..phnum {
        let o = phoff + i * phentsize;
        if o + 4 > data.len() {
            return Err(bad("truncated program headers"));
        }
        if u32::from_le_bytes(data[o..o + 4].try_into().unwrap()) == 3 {
            return Err(bad(
                "dynamically linked (has an ELF interpreter); build it static with `make agent`",
            ));
        }
    }
    Ok(())
}

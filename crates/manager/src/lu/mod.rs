//! The repository of LUs: the one module that owns its layout, and the
//! qemu-img operations on LU files. The layout under the repository root
//! (`[cluster] repository`, by default `<data_dir>/repository`):
//!
//! ```text
//! clients/<client>/lu/<lu>.qcow2                 an LU (thin qcow2)
//! clients/<client>/lu/<copy>.raw                  a redundant copy (sparse raw)
//! clients/<client>/hibernation/<partition>/      a partition's hibernation data
//! ```
//!
//! Everything of a client is under `clients/<client>/`: an attach confines
//! the LU and its backing chain to that directory (storage::Roots over it),
//! so no client reaches another's data by path, symlink or backing file.

pub mod cli;
pub mod mirror;
pub mod types;

use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The repository: a directory every host sees at the same path.
#[derive(Debug, Clone)]
pub struct Repository {
    /// Canonical.
    root: PathBuf,
}

/// What an LU is for; `lu request` reuses and grows only LUs of the purpose asked.
pub const PURPOSES: [&str; 3] = ["data", "paging", "hibernation"];

impl Repository {
    /// Creates the directory if missing and resolves it.
    pub fn open(root: &Path) -> anyhow::Result<Self> {
        std::fs::create_dir_all(root.join("clients"))
            .map_err(|e| anyhow::anyhow!("repository {}: {e}", root.display()))?;
        Ok(Self {
            root: std::fs::canonicalize(root)?,
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Everything of one client: the confinement of its LUs' files.
    pub fn client_dir(&self, client: &str) -> PathBuf {
        self.root.join("clients").join(client)
    }

    /// Where an LU's file lives, relative to the root (what the store records).
    pub fn lu_rel_path(client: &str, lu: &str) -> String {
        format!("clients/{client}/lu/{lu}.qcow2")
    }

    /// Where a redundant copy lives. A copy is raw (sparse, so thin): a
    /// mirror job's writes to a qcow2 would leave its metadata in the
    /// writing QEMU's cache, unseen by readers and lost if that host dies.
    pub fn copy_rel_path(client: &str, lu: &str) -> String {
        format!("clients/{client}/lu/{lu}.raw")
    }

    /// The absolute path of a recorded relative path.
    pub fn path_of(&self, rel: &str) -> PathBuf {
        self.root.join(rel)
    }

    /// Where a partition's hibernation data lives (the hibernate feature
    /// writes its state files here): in the client's area, beside its LUs.
    pub fn hibernation_dir(&self, client: &str, partition: &str) -> PathBuf {
        self.client_dir(client).join("hibernation").join(partition)
    }
}

/// Refuses a repository that overlaps a storage root: a disk named by path
/// from a root would reach every client's LUs without the ownership check.
pub fn check_apart(repo: &Path, roots: &[PathBuf]) -> Result<(), String> {
    match roots
        .iter()
        .find(|r| repo.starts_with(r) || r.starts_with(repo))
    {
        Some(r) => Err(format!(
            "the repository {} and the storage root {} overlap: a disk path could then reach any client's LUs; keep them apart",
            repo.display(),
            r.display()
        )),
        None => Ok(()),
    }
}

/// The rule for LU and client names (the partition name rule: they become
/// path components, so no `/`, `.` or `..`).
pub fn check_name(what: &str, name: &str) -> Result<(), String> {
    if bulkhead_engine::spec::valid_name(name) {
        return Ok(());
    }
    Err(format!(
        "{what} name {name:?} must be 1-48 characters of a-z, 0-9 and '-', not starting with '-'"
    ))
}

/// The format of an LU's file, by its recorded path: `.raw` for redundant
/// copies, qcow2 for every other LU.
pub fn format_of(rel_path: &str) -> bulkhead_engine::DiskFormat {
    match rel_path.ends_with(".raw") {
        true => bulkhead_engine::DiskFormat::Raw,
        false => bulkhead_engine::DiskFormat::Qcow2,
    }
}

/// Largest LU: 64 TiB (qcow2 with default clusters allows far more; this
/// keeps a typo from making a file no one meant).
pub const MAX_LU_BYTES: u64 = 64 << 40;

/// A size an LU may have: whole 512-byte sectors, 1 MiB to [`MAX_LU_BYTES`].
pub fn check_size(bytes: u64) -> Result<(), String> {
    if !(1 << 20..=MAX_LU_BYTES).contains(&bytes) || !bytes.is_multiple_of(512) {
        return Err(format!(
            "LU size {bytes} must be a multiple of 512 bytes from 1 MiB to {MAX_LU_BYTES} (64 TiB)"
        ));
    }
    Ok(())
}

/// Runs qemu-img with `args` around `path` (`before`, the path, `after`).
fn qemu_img(before: &[&str], path: &Path, after: &[&str]) -> Result<Vec<u8>, String> {
    let out = Command::new("qemu-img")
        .args(before)
        .arg(path)
        .args(after)
        .output()
        .map_err(|e| format!("running qemu-img (qemu-utils): {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "qemu-img {} {}: {}",
            before.first().copied().unwrap_or(""),
            path.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(out.stdout)
}

/// Makes a thin qcow2 of `bytes` (no preallocation: the file holds only
/// its metadata until the guest writes), refusing to replace any file.
pub fn create_thin(path: &Path, bytes: u64) -> Result<(), String> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    if std::fs::symlink_metadata(path).is_ok() {
        return Err(format!("{} already exists", path.display()));
    }
    let size = bytes.to_string();
    let opts = ["create", "-q", "-f", "qcow2", "-o", "preallocation=off"];
    qemu_img(&opts, path, &[&size]).map(drop)
}

/// Makes a sparse raw file of `bytes` (a redundant copy), refusing to
/// replace any file; a size the file system refuses leaves no file.
pub fn create_sparse(path: &Path, bytes: u64) -> std::io::Result<()> {
    let f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)?;
    f.set_len(bytes).inspect_err(|_| {
        let _ = std::fs::remove_file(path);
    })
}

/// Copies the guest-visible data of the qcow2 `src` into the existing
/// sparse raw `dst` of the same size (`-n --target-is-zero`: only what `src`
/// holds is written, so a thin LU copies in the time its data takes).
pub fn copy_into(src: &Path, dst: &Path) -> Result<(), String> {
    let src = src.to_string_lossy();
    let opts = [
        "convert",
        "-n",
        "--target-is-zero",
        "-U",
        "-q",
        "-f",
        "qcow2",
        "-O",
        "raw",
        &src,
    ];
    qemu_img(&opts, dst, &[]).map(drop)
}

/// Copies the guest-visible data of `src` into a new file `dst`, each in
/// the format its path gives (`qemu-img convert`, which keeps holes; `-U`
/// because read-only holders may have `src` open: the caller's lock in the
/// store keeps writers out). Refuses to replace any file.
pub fn copy_to(src: &Path, dst: &Path) -> Result<(), String> {
    if std::fs::symlink_metadata(dst).is_ok() {
        return Err(format!("{} already exists", dst.display()));
    }
    let fmt = |p: &Path| format_of(&p.to_string_lossy()).as_str();
    let (from, to) = (fmt(src), fmt(dst));
    let src = src.to_string_lossy();
    let opts = ["convert", "-U", "-q", "-f", from, "-O", to, &src];
    qemu_img(&opts, dst, &[]).map(drop)
}

/// Sets the virtual size of a qcow2 to `bytes` (`qemu-img resize`). Callers
/// only grow (a shrink would cut data off).
pub fn grow_to(path: &Path, bytes: u64) -> Result<(), String> {
    let size = bytes.to_string();
    qemu_img(&["resize", "-q", "-f", "qcow2"], path, &[&size]).map(drop)
}

/// What `qemu-img info` says of a file's sizes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub struct Usage {
    /// The size the guest sees.
    #[serde(rename = "virtual-size")]
    pub virtual_bytes: u64,
    /// Bytes the file occupies on the disk (its allocated blocks).
    #[serde(rename = "actual-size", default)]
    pub allocated_bytes: u64,
}

/// The LU file's virtual size and allocation; `-U` reads it while a QEMU
/// holds it open.
pub fn usage(path: &Path) -> Result<Usage, String> {
    let fmt = format_of(&path.to_string_lossy()).as_str();
    let out = qemu_img(&["info", "-U", "--output=json", "-f", fmt], path, &[])?;
    serde_json::from_slice(&out).map_err(|e| format!("qemu-img info output: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repository_and_storage_roots_stay_apart() {
        let roots = [PathBuf::from("/d/storage"), PathBuf::from("/srv")];
        assert!(check_apart(Path::new("/d/repository"), &roots).is_ok());
        assert!(check_apart(Path::new("/srv/repo"), &roots).is_err());
        assert!(check_apart(Path::new("/d"), &roots).is_err());
        assert!(check_apart(Path::new("/d/storage"), &roots).is_err());
    }

    #[test]
    fn names_and_sizes() {
        assert!(check_name("LU", "vol-1").is_ok());
        for bad in ["", "..", "a/b", "A", "-x", &"x".repeat(49)] {
            assert!(check_name("LU", bad).is_err(), "{bad:?}");
        }
        assert!(check_size(1 << 20).is_ok());
        for bad in [0, 512, (1 << 20) + 1, MAX_LU_BYTES + 512] {
            assert!(check_size(bad).is_err(), "{bad}");
        }
        let r = Repository {
            root: PathBuf::from("/r"),
        };
        assert_eq!(
            r.path_of(&Repository::lu_rel_path("c", "v")),
            Path::new("/r/clients/c/lu/v.qcow2")
        );
        assert_eq!(
            r.hibernation_dir("c", "p"),
            Path::new("/r/clients/c/hibernation/p")
        );
    }
}

//! Storage roots: a partition's disks, their qcow2 backing chains and its
//! image directory come only from configured directories, as libvirt's
//! storage pools confine them. Paths are canonicalized (symlinks resolved,
//! `..` refused) before they are compared, and a qcow2's backing chain is
//! read one link at a time with `qemu-img info`, each link checked before it
//! is opened, then pinned in the QEMU command line.

use bulkhead_engine::{BackingFile, DiskFormat};
use serde::Deserialize;
use std::os::unix::fs::FileTypeExt;
use std::path::{Component, Path, PathBuf};
use std::process::Command;

/// Longest backing chain accepted.
const MAX_CHAIN: usize = 16;

#[derive(Debug, Clone)]
pub struct Roots {
    /// Canonical.
    roots: Vec<PathBuf>,
    data_dir: PathBuf,
    image_dir: PathBuf,
}

/// A disk that passed the checks: its canonical path and pinned chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckedDisk {
    pub path: PathBuf,
    /// `Some` for qcow2 (empty: no backing file), `None` for raw.
    pub backing: Option<Vec<BackingFile>>,
}

impl Roots {
    /// Creates missing roots and resolves them. A root may not hold the data
    /// directory: the daemon's own state is never a disk.
    pub fn open(roots: &[PathBuf], data_dir: &Path, image_dir: &Path) -> anyhow::Result<Self> {
        let data_dir = std::fs::canonicalize(data_dir)?;
        let mut canon = Vec::new();
        for r in roots {
            std::fs::create_dir_all(r)
                .map_err(|e| anyhow::anyhow!("storage root {}: {e}", r.display()))?;
            let c = std::fs::canonicalize(r)?;
            if data_dir.starts_with(&c) {
                anyhow::bail!(
                    "storage root {} holds the data directory {}: choose a directory inside it or elsewhere",
                    r.display(),
                    data_dir.display()
                );
            }
            canon.push(c);
        }
        Ok(Self {
            roots: canon,
            data_dir,
            image_dir: std::fs::canonicalize(image_dir).unwrap_or_else(|_| image_dir.into()),
        })
    }

    pub fn roots(&self) -> &[PathBuf] {
        &self.roots
    }

    fn allowed(&self) -> String {
        let v: Vec<String> = self.roots.iter().map(|r| r.display().to_string()).collect();
        format!("storage roots [{}]", v.join(", "))
    }

    fn inside_roots(&self, canon: &Path) -> bool {
        self.roots.iter().any(|r| canon.starts_with(r))
    }

    /// Resolves `path` and checks it is a regular file inside the roots.
    /// `what` names it in errors ("disk /x", "backing file /y of disk /x").
    fn resolve(&self, path: &Path, what: &str) -> Result<PathBuf, String> {
        if !path.is_absolute() {
            return Err(format!(
                "{what} must be an absolute path in the {}",
                self.allowed()
            ));
        }
        if path.components().any(|c| c == Component::ParentDir) {
            return Err(format!(
                "{what} must not contain '..': name it inside the {}",
                self.allowed()
            ));
        }
        let canon = std::fs::canonicalize(path)
            .map_err(|_| format!("{what} does not exist (absolute path needed)"))?;
        let meta = std::fs::metadata(&canon).map_err(|e| format!("{what}: {e}"))?;
        let ft = meta.file_type();
        if ft.is_block_device() || ft.is_char_device() {
            return Err(format!(
                "{what} is a host device: disks are files in the {}",
                self.allowed()
            ));
        }
        if !ft.is_file() {
            return Err(format!(
                "{what} is not a regular file: disks are files in the {}",
                self.allowed()
            ));
        }
        if self.inside_roots(&canon) {
            return Ok(canon);
        }
        if canon.starts_with(&self.data_dir) {
            return Err(format!(
                "{what} lies in bulkheadd's data directory {}: disks come from the {}",
                self.data_dir.display(),
                self.allowed()
            ));
        }
        if canon != path {
            return Err(format!(
                "{what} resolves (through a symlink) to {}, outside the {}",
                canon.display(),
                self.allowed()
            ));
        }
        Err(format!("{what} is outside the {}", self.allowed()))
    }

    /// Checks a disk of a create or start request.
    pub fn check_disk(&self, path: &str, format: &str) -> Result<CheckedDisk, String> {
        let what = format!("disk {path}");
        let canon = self.resolve(Path::new(path), &what)?;
        match format {
            "raw" => Ok(CheckedDisk {
                path: canon,
                backing: None,
            }),
            "qcow2" => {
                let backing = self.backing_chain(&canon, &what)?;
                Ok(CheckedDisk {
                    path: canon,
                    backing: Some(backing),
                })
            }
            f => Err(format!("disk format {f:?} must be raw or qcow2")),
        }
    }

    /// Follows a qcow2's backing chain one image at a time, checking each
    /// file before anything opens it.
    fn backing_chain(&self, top: &Path, what: &str) -> Result<Vec<BackingFile>, String> {
        let mut chain = Vec::new();
        let mut cur = top.to_path_buf();
        let mut fmt = DiskFormat::Qcow2;
        loop {
            if fmt == DiskFormat::Raw {
                return Ok(chain);
            }
            let info = qemu_img_info(&cur).map_err(|e| format!("{what}: {e}"))?;
            if info.format_specific_data_file().is_some() {
                return Err(format!(
                    "{what}: {} names an external data file; not allowed",
                    cur.display()
                ));
            }
            let Some(next) = info.backing() else {
                return Ok(chain);
            };
            if chain.len() >= MAX_CHAIN {
                return Err(format!(
                    "{what}: backing chain longer than {MAX_CHAIN} images"
                ));
            }
            let next_what = format!("backing file {} of {what}", next.display());
            let next = self.resolve(&next, &next_what)?;
            fmt = match info.backing_format.as_deref() {
                Some("qcow2") => DiskFormat::Qcow2,
                Some("raw") => DiskFormat::Raw,
                other => {
                    return Err(format!(
                        "{next_what}: its format must be recorded as raw or qcow2 in the image (qemu-img create -F), not {other:?}"
                    ))
                }
            };
            if chain.iter().any(|b: &BackingFile| b.path == next) || next == top {
                return Err(format!("{what}: backing chain has a loop"));
            }
            chain.push(BackingFile {
                path: next.clone(),
                format: fmt,
            });
            cur = next;
        }
    }

    /// Checks an image directory (and its two files) against the configured
    /// image directory and the roots. Returns the canonical directory.
    pub fn check_image(&self, dir: &Path) -> Result<PathBuf, String> {
        let canon =
            std::fs::canonicalize(dir).map_err(|e| format!("image {}: {e}", dir.display()))?;
        let ok = |p: &Path| p.starts_with(&self.image_dir) || self.inside_roots(p);
        if !ok(&canon) {
            return Err(format!(
                "image {} is outside the configured image_dir {} and the {}",
                dir.display(),
                self.image_dir.display(),
                self.allowed()
            ));
        }
        for f in ["vmlinux", "initramfs.cpio.gz"] {
            let p = std::fs::canonicalize(canon.join(f))
                .map_err(|e| format!("image {}: {f}: {e}", dir.display()))?;
            if !ok(&p) || !p.is_file() {
                return Err(format!(
                    "image {}: {f} resolves to {}, not a file under the image directory or the {}",
                    dir.display(),
                    p.display(),
                    self.allowed()
                ));
            }
        }
        Ok(canon)
    }
}

/// The parts of `qemu-img info --output=json` read here.
#[derive(Debug, Deserialize)]
struct ImgInfo {
    #[serde(rename = "full-backing-filename")]
    full_backing_filename: Option<String>,
    #[serde(rename = "backing-filename")]
    backing_filename: Option<String>,
    #[serde(rename = "backing-filename-format")]
    backing_format: Option<String>,
    #[serde(rename = "format-specific", default)]
    format_specific: serde_json::Value,
}

impl ImgInfo {
    fn backing(&self) -> Option<PathBuf> {
        self.full_backing_filename
            .as_ref()
            .or(self.backing_filename.as_ref())
            .map(PathBuf::from)
    }
    fn format_specific_data_file(&self) -> Option<&str> {
        self.format_specific["data"]["data-file"].as_str()
    }
}

/// One image's header, without opening its backing file.
fn qemu_img_info(path: &Path) -> Result<ImgInfo, String> {
    let out = Command::new("qemu-img")
        .args(["info", "-U", "--output=json", "-f", "qcow2"])
        .arg(path)
        .output()
        .map_err(|e| format!("running qemu-img (qemu-utils): {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "not a readable qcow2 image: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    serde_json::from_slice(&out.stdout).map_err(|e| format!("qemu-img info output: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use bulkhead_testbed::qcow2;

    fn setup() -> (tempfile::TempDir, Roots) {
        let t = tempfile::tempdir().unwrap();
        let data = t.path().join("data");
        std::fs::create_dir_all(&data).unwrap();
        std::fs::write(data.join("state.db"), b"x").unwrap();
        let img = t.path().join("img");
        std::fs::create_dir_all(&img).unwrap();
        let r = Roots::open(&[data.join("storage")], &data, &img).unwrap();
        (t, r)
    }

    #[test]
    fn refusals_each_say_why() {
        let (t, r) = setup();
        let root = t.path().join("data/storage");
        std::fs::write(root.join("ok.img"), b"").unwrap();
        assert!(r
            .check_disk(root.join("ok.img").to_str().unwrap(), "raw")
            .is_ok());
        std::os::unix::fs::symlink("/etc/passwd", root.join("link.img")).unwrap();
        let cases = [
            ("/dev/null", "host device"),
            (
                t.path().join("data/state.db").to_str().unwrap(),
                "data directory",
            ),
            (root.join("link.img").to_str().unwrap(), "through a symlink"),
            ("/etc/passwd", "outside the storage roots"),
            ("relative.img", "absolute"),
            (&format!("{}/../state.db", root.display()), "'..'"),
        ]
        .map(|(p, w)| (p.to_string(), w));
        for (p, want) in cases {
            let e = r.check_disk(&p, "raw").unwrap_err();
            assert!(e.contains(want), "{p}: {e}");
        }
        // A root may not hold the data directory.
        let data = t.path().join("data");
        assert!(Roots::open(&[t.path().into()], &data, &data).is_err());
    }

    #[test]
    fn backing_chains_are_pinned_or_refused() {
        let (t, r) = setup();
        let root = t.path().join("data/storage");
        let base = root.join("base.qcow2");
        let top = root.join("top.qcow2");
        qcow2(&base, "16M", None);
        qcow2(&top, "16M", Some(&base));
        let d = r.check_disk(base.to_str().unwrap(), "qcow2").unwrap();
        assert_eq!(d.backing, Some(vec![]));
        let d = r.check_disk(top.to_str().unwrap(), "qcow2").unwrap();
        assert_eq!(
            d.backing,
            Some(vec![BackingFile {
                path: std::fs::canonicalize(&base).unwrap(),
                format: DiskFormat::Qcow2
            }])
        );
        // Backing file outside the roots.
        let outside = t.path().join("outside.qcow2");
        qcow2(&outside, "16M", None);
        let evil = root.join("evil.qcow2");
        qcow2(&evil, "16M", Some(&outside));
        let e = r.check_disk(evil.to_str().unwrap(), "qcow2").unwrap_err();
        assert!(e.contains("backing file") && e.contains("outside"), "{e}");
        // Not a qcow2 at all.
        std::fs::write(root.join("raw.img"), vec![0u8; 4096]).unwrap();
        let e = r
            .check_disk(root.join("raw.img").to_str().unwrap(), "qcow2")
            .unwrap_err();
        assert!(e.contains("not a readable qcow2"), "{e}");
    }
}

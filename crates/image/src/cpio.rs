//! A cpio "newc" archive writer (the format the kernel unpacks an initramfs from).

use std::collections::BTreeMap;
use std::io::{self, Write};

/// One archive member.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry {
    Dir { mode: u32 },
    File { mode: u32, data: Vec<u8> },
    Symlink { target: String },
    CharDev { mode: u32, major: u32, minor: u32 },
}

/// An in-memory archive: paths (relative, no leading `/`) to entries.
/// Parent directories are created as needed; writing is deterministic
/// (sorted paths, mtime 0, uid/gid 0).
#[derive(Debug, Default)]
pub struct Archive {
    entries: BTreeMap<String, Entry>,
}

/// Normalizes `/a//b/` into `a/b`; rejects `..`, `.` and empty paths.
pub fn normalize(path: &str) -> Result<String, String> {
    let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
    if parts.is_empty() {
        return Err(format!("empty path {path:?}"));
    }
    if parts.iter().any(|p| *p == ".." || *p == ".") {
        return Err(format!("path {path:?} contains . or .."));
    }
    Ok(parts.join("/"))
}

impl Archive {
    pub fn new() -> Archive {
        Archive::default()
    }

    /// Adds (or replaces) an entry, creating missing parent directories.
    pub fn insert(&mut self, path: &str, entry: Entry) -> Result<(), String> {
        let path = normalize(path)?;
        let mut parent = String::new();
        let comps: Vec<&str> = path.split('/').collect();
        for comp in &comps[..comps.len() - 1] {
            if !parent.is_empty() {
                parent.push('/');
            }
            parent.push_str(comp);
            match self.entries.get(&parent) {
                None => {
                    self.entries
                        .insert(parent.clone(), Entry::Dir { mode: 0o755 });
                }
                Some(Entry::Dir { .. }) => {}
                Some(_) => return Err(format!("{parent} is not a directory (needed for {path})")),
            }
        }
        if matches!(self.entries.get(&path), Some(Entry::Dir { .. }))
            && !matches!(entry, Entry::Dir { .. })
        {
            return Err(format!("{path} is already a directory"));
        }
        self.entries.insert(path, entry);
        Ok(())
    }

    pub fn get(&self, path: &str) -> Option<&Entry> {
        normalize(path).ok().and_then(|p| self.entries.get(&p))
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Writes the archive, trailer included.
    pub fn write_to<W: Write>(&self, w: &mut W) -> io::Result<()> {
        for (ino, (path, e)) in (1u32..).zip(self.entries.iter()) {
            let (mode, data, rdev): (u32, &[u8], (u32, u32)) = match e {
                Entry::Dir { mode } => (0o040000 | (mode & 0o7777), &[], (0, 0)),
                Entry::File { mode, data } => (0o100000 | (mode & 0o7777), data, (0, 0)),
                Entry::Symlink { target } => (0o120777, target.as_bytes(), (0, 0)),
                Entry::CharDev { mode, major, minor } => {
                    (0o020000 | (mode & 0o7777), &[], (*major, *minor))
                }
            };
            let nlink = if matches!(e, Entry::Dir { .. }) { 2 } else { 1 };
            write_header(w, ino, mode, nlink, data.len() as u32, rdev, path)?;
            w.write_all(data)?;
            pad(w, data.len())?;
        }
        write_header(w, 0, 0, 1, 0, (0, 0), "TRAILER!!!")
    }
}

fn pad<W: Write>(w: &mut W, len: usize) -> io::Result<()> {
    let n = (4 - len % 4) % 4;
    w.write_all(&[0u8; 3][..n])
}

fn write_header<W: Write>(
    w: &mut W,
    ino: u32,
    mode: u32,
    nlink: u32,
    size: u32,
    rdev: (u32, u32),
    name: &str,
) -> io::Result<()> {
    let fields = [
        ino,
        mode,
        0, // uid
        0, // gid
        nlink,
        0, // mtime: fixed, so equal inputs give equal archives
        size,
        0, // devmajor
        0, // devminor
        rdev.0,
        rdev.1,
        name.len() as u32 + 1,
        0, // check
    ];
    let mut h = String::with_capacity(110);
    h.push_str("070701");
    for f in fields {
        h.push_str(&format!("{f:08x}"));
    }
    w.write_all(h.as_bytes())?;
    w.write_all(name.as_bytes())?;
    w.write_all(&[0])?;
    pad(w, 110 + name.len() + 1)
}

/// Reads a newc archive back (for tests and `image inspect`-style checks).
pub fn read(mut data: &[u8]) -> Result<Vec<(String, u32, Vec<u8>)>, String> {
    let mut out = Vec::new();
    let mut offset = 0usize;
    loop {
        if data.len() < 110 || &data[..6] != b"070701" {
            return Err(format!("bad cpio header at offset {offset}"));
        }
        let field = |i: usize| -> Result<u32, String> {
            let s = std::str::from_utf8(&data[6 + i * 8..14 + i * 8]).map_err(|e| e.to_string())?;
            u32::from_str_radix(s, 16).map_err(|e| e.to_string())
        };
        let mode = field(1)?;
        let size = field(6)? as usize;
        let namesize = field(11)? as usize;
        let name_end = 110 + namesize;
        let data_start = name_end.div_ceil(4) * 4;
        let data_end = data_start + size;
        if namesize == 0 || data.len() < data_end {
            return Err(format!("truncated cpio entry at offset {offset}"));
        }
        let name = String::from_utf8_lossy(&data[110..name_end - 1]).into_owned();
        if name == "TRAILER!!!" {
            return Ok(out);
        }
        out.push((name, mode, data[data_start..data_end].to_vec()));
        let next = data_end.div_ceil(4) * 4;
        let next = next.min(data.len());
        data = &data[next..];
        offset += next;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_what_cpio_reads() {
        let mut a = Archive::new();
        a.insert(
            "/init",
            Entry::File {
                mode: 0o755,
                data: b"#!/bin/sh\n".to_vec(),
            },
        )
        .unwrap();
        a.insert(
            "bin/sh",
            Entry::Symlink {
                target: "/bin/busybox".into(),
            },
        )
        .unwrap();
        a.insert(
            "dev/console",
            Entry::CharDev {
                mode: 0o600,
                major: 5,
                minor: 1,
            },
        )
        .unwrap();
        a.insert(
            "lib/modules/x/y.ko",
            Entry::File {
                mode: 0o644,
                data: vec![1, 2, 3, 4, 5],
            },
        )
        .unwrap();
        let mut buf = Vec::new();
        a.write_to(&mut buf).unwrap();
        assert_eq!(buf.len() % 4, 0);
        let got = read(&buf).unwrap();
        let names: Vec<&str> = got.iter().map(|e| e.0.as_str()).collect();
        assert_eq!(
            names,
            [
                "bin",
                "bin/sh",
                "dev",
                "dev/console",
                "init",
                "lib",
                "lib/modules",
                "lib/modules/x",
                "lib/modules/x/y.ko"
            ]
        );
        assert_eq!(got[1].2, b"/bin/busybox");
        assert_eq!(got[3].1, 0o020600);
        assert_eq!(got[8].2, vec![1, 2, 3, 4, 5]);

        // GNU cpio agrees, when it is installed.
        if std::path::Path::new("/usr/bin/cpio").exists() {
            let dir = tempfile::tempdir().unwrap();
            let f = dir.path().join("a.cpio");
            std::fs::write(&f, &buf).unwrap();
            let out = std::process::Command::new("cpio")
                .args(["-t", "--quiet", "-F"])
                .arg(&f)
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            let listed = String::from_utf8(out.stdout).unwrap();
            assert_eq!(listed.lines().collect::<Vec<_>>(), names);
        }
    }

    #[test]
    fn rejects_bad_paths_and_conflicts() {
        let mut a = Archive::new();
        assert!(a.insert("", Entry::Dir { mode: 0o755 }).is_err());
        assert!(a.insert("a/../b", Entry::Dir { mode: 0o755 }).is_err());
        a.insert(
            "f",
            Entry::File {
                mode: 0o644,
                data: vec![],
            },
        )
        .unwrap();
        assert!(a
            .insert(
                "f/g",
                Entry::File {
                    mode: 0o644,
                    data: vec![]
                }
            )
            .is_err());
        a.insert(
            "d/x",
            Entry::File {
                mode: 0o644,
                data: vec![],
            },
        )
        .unwrap();
        assert!(a
            .insert(
                "d",
                Entry::File {
                    mode: 0o644,
                    data: vec![]
                }
            )
            .is_err());
        assert_eq!(normalize("//a//b/").unwrap(), "a/b");
    }

    #[test]
    fn reader_rejects_garbage() {
        assert!(read(b"hello").is_err());
        let mut buf = Vec::new();
        Archive::new().write_to(&mut buf).unwrap();
        assert!(read(&buf).unwrap().is_empty());
        assert!(read(&buf[..buf.len() - 8]).is_err());
    }
}

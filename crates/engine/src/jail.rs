//! Confinement of one QEMU, as libvirt's namespaces and dynamic ownership do
//! it: its own mount namespace whose root is a small tmpfs holding `/usr`
//! (read-only), a private `/dev` with only the device nodes QEMU needs, and
//! the partition's own files; the host's data directories, block devices and
//! `/proc` are not there. Then it drops to an unprivileged user before exec.
//!
//! The plan is built before the fork (every path a `CString`), so the child
//! only makes system calls between fork and exec.

use std::collections::BTreeSet;
use std::ffi::CString;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::EngineError;

/// Where the partition's own run files appear inside the jail.
pub const JAIL_RUN: &str = "/run/partition";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct User {
    pub uid: u32,
    pub gid: u32,
}

/// Resolves a user name (getpwnam_r).
pub fn lookup_user(name: &str) -> Result<User, EngineError> {
    let c = CString::new(name)
        .map_err(|_| EngineError::InvalidSpec(format!("user name {name:?} has a NUL")))?;
    let mut buf = vec![0u8; 16 * 1024];
    // SAFETY: passwd is plain old data; zeroed is a valid value for it.
    let mut pw: libc::passwd = unsafe { std::mem::zeroed() };
    let mut out: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: every pointer is valid for the call, buf outlives it and its
    // length is passed; the result is only read when `out` is non-null.
    let rc = unsafe {
        libc::getpwnam_r(
            c.as_ptr(),
            &mut pw,
            buf.as_mut_ptr().cast(),
            buf.len(),
            &mut out,
        )
    };
    if rc != 0 || out.is_null() {
        return Err(EngineError::Host(format!(
            "user {name:?} does not exist (scripts/bootstrap creates bulkhead-qemu)"
        )));
    }
    Ok(User {
        uid: pw.pw_uid,
        gid: pw.pw_gid,
    })
}

#[derive(Debug)]
enum Step {
    Dir(CString),
    Symlink {
        target: CString,
        link: CString,
    },
    Node {
        path: CString,
        mode: libc::mode_t,
        dev: libc::dev_t,
        owner: Option<User>,
    },
    /// A bind mount of a file or directory; `file` mount points are created empty.
    Bind {
        src: CString,
        dst: CString,
        file: bool,
        recursive: bool,
        readonly: bool,
    },
}

/// One QEMU's mount namespace and user, ready to enter in the child.
#[derive(Debug)]
pub struct Jail {
    root: CString,
    steps: Vec<Step>,
    user: Option<User>,
}

fn cstr(p: &Path) -> CString {
    CString::new(p.as_os_str().as_encoded_bytes()).expect("path without NUL")
}

/// A file (or directory) to show inside the jail: host path, path inside,
/// writable or not.
#[derive(Debug, Clone)]
pub struct Reveal {
    pub host: PathBuf,
    pub inside: PathBuf,
    pub writable: bool,
}

impl Jail {
    /// Plans the jail rooted at `root` (an empty directory the tmpfs is
    /// mounted on). `devices` are host device node paths to recreate.
    pub fn plan(
        root: &Path,
        devices: &[&str],
        files: &[Reveal],
        user: Option<User>,
    ) -> Result<Jail, EngineError> {
        let host_err = |what: &Path, e: std::io::Error| {
            EngineError::Host(format!("jail: {}: {e}", what.display()))
        };
        let inside = |p: &Path| root.join(p.strip_prefix("/").unwrap_or(p));
        let mut steps = Vec::new();
        let mut dirs = BTreeSet::new();
        let mut want_dir = |steps: &mut Vec<Step>, p: &Path| {
            // Every ancestor first, each once.
            let mut acc = PathBuf::from("/");
            for c in p.components().skip(1) {
                acc.push(c);
                if dirs.insert(acc.clone()) {
                    steps.push(Step::Dir(cstr(&inside(&acc))));
                }
            }
        };
        want_dir(&mut steps, Path::new("/usr"));
        steps.push(Step::Bind {
            src: cstr(Path::new("/usr")),
            dst: cstr(&inside(Path::new("/usr"))),
            file: false,
            recursive: true,
            readonly: true,
        });
        // Merged-/usr links (/lib -> usr/lib), or the directories themselves.
        for top in ["bin", "sbin", "lib", "lib32", "lib64", "libx32"] {
            let p = Path::new("/").join(top);
            match std::fs::symlink_metadata(&p) {
                Ok(m) if m.file_type().is_symlink() => {
                    let target = std::fs::read_link(&p).map_err(|e| host_err(&p, e))?;
                    steps.push(Step::Symlink {
                        target: cstr(&target),
                        link: cstr(&inside(&p)),
                    });
                }
                Ok(m) if m.is_dir() => {
                    want_dir(&mut steps, &p);
                    steps.push(Step::Bind {
                        src: cstr(&p),
                        dst: cstr(&inside(&p)),
                        file: false,
                        recursive: true,
                        readonly: true,
                    });
                }
                _ => {}
            }
        }
        for d in devices {
            let p = Path::new(d);
            let m = std::fs::metadata(p).map_err(|e| host_err(p, e))?;
            if !m.file_type().is_char_device() {
                return Err(EngineError::Host(format!("{d} is not a character device")));
            }
            if let Some(parent) = p.parent() {
                want_dir(&mut steps, parent);
            }
            // /dev/kvm is the one node not open to everyone: give it to QEMU's user.
            let (mode, owner) = if *d == "/dev/kvm" {
                (0o600, user)
            } else {
                (0o666, None)
            };
            steps.push(Step::Node {
                path: cstr(&inside(p)),
                mode: libc::S_IFCHR | mode,
                dev: m.rdev(),
                owner,
            });
        }
        for f in files {
            // A directory is bound as one: files mounted into it on the host
            // later appear inside too (it is a slave of the host's mount).
            let dir = f.host.is_dir();
            if dir {
                want_dir(&mut steps, &f.inside);
            } else if let Some(parent) = f.inside.parent() {
                want_dir(&mut steps, parent);
            }
            steps.push(Step::Bind {
                src: cstr(&f.host),
                dst: cstr(&inside(&f.inside)),
                file: !dir,
                recursive: false,
                readonly: !f.writable,
            });
        }
        Ok(Jail {
            root: cstr(root),
            steps,
            user,
        })
    }

    /// Enters the jail. Runs in the forked child before exec: system calls
    /// only, on data prepared before the fork.
    pub fn enter(&self) -> std::io::Result<()> {
        use libc::{c_ulong, MS_BIND, MS_NOSUID, MS_RDONLY, MS_REC, MS_REMOUNT, MS_SLAVE};
        let err = std::io::Error::last_os_error;
        let check = |rc: libc::c_int| if rc < 0 { Err(err()) } else { Ok(()) };
        let null = std::ptr::null::<libc::c_char>();
        // SAFETY (every block below): system calls on NUL-terminated strings
        // owned by `self`, which outlives them; null where the kernel accepts it.
        unsafe {
            check(libc::unshare(libc::CLONE_NEWNS))?;
            // Nothing done here reaches the host's mount table.
            check(libc::mount(
                null,
                c"/".as_ptr(),
                null,
                (MS_REC | MS_SLAVE) as c_ulong,
                std::ptr::null(),
            ))?;
            check(libc::mount(
                c"tmpfs".as_ptr(),
                self.root.as_ptr(),
                c"tmpfs".as_ptr(),
                MS_NOSUID as c_ulong,
                c"mode=0755,size=1m".as_ptr().cast(),
            ))?;
            for s in &self.steps {
                match s {
                    Step::Dir(p) => {
                        if libc::mkdir(p.as_ptr(), 0o755) < 0
                            && *libc::__errno_location() != libc::EEXIST
                        {
                            return Err(err());
                        }
                    }
                    Step::Symlink { target, link } => {
                        check(libc::symlink(target.as_ptr(), link.as_ptr()))?
                    }
                    Step::Node {
                        path,
                        mode,
                        dev,
                        owner,
                    } => {
                        check(libc::mknod(path.as_ptr(), *mode, *dev))?;
                        // mknod applies the umask; the mode must be exact.
                        check(libc::chmod(path.as_ptr(), *mode & 0o777))?;
                        if let Some(u) = owner {
                            check(libc::chown(path.as_ptr(), u.uid, u.gid))?;
                        }
                    }
                    Step::Bind {
                        src,
                        dst,
                        file,
                        recursive,
                        readonly,
                    } => {
                        if *file {
                            let fd = libc::open(
                                dst.as_ptr(),
                                libc::O_CREAT | libc::O_WRONLY | libc::O_CLOEXEC,
                                0o644,
                            );
                            if fd < 0 {
                                return Err(err());
                            }
                            libc::close(fd);
                        }
                        let rec = if *recursive { MS_REC } else { 0 };
                        check(libc::mount(
                            src.as_ptr(),
                            dst.as_ptr(),
                            null,
                            (MS_BIND | rec) as c_ulong,
                            std::ptr::null(),
                        ))?;
                        if *readonly {
                            check(libc::mount(
                                null,
                                dst.as_ptr(),
                                null,
                                (MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID) as c_ulong,
                                std::ptr::null(),
                            ))?;
                        }
                    }
                }
            }
            check(libc::chdir(self.root.as_ptr()))?;
            check(libc::mkdir(c".old".as_ptr(), 0o700))?;
            check(libc::syscall(libc::SYS_pivot_root, c".".as_ptr(), c".old".as_ptr()) as i32)?;
            check(libc::umount2(c"/.old".as_ptr(), libc::MNT_DETACH))?;
            check(libc::rmdir(c"/.old".as_ptr()))?;
            check(libc::chdir(c"/".as_ptr()))?;
            check(libc::mount(
                null,
                c"/".as_ptr(),
                null,
                (MS_REMOUNT | MS_RDONLY | MS_NOSUID) as c_ulong,
                std::ptr::null(),
            ))?;
            if let Some(u) = self.user {
                check(libc::setgroups(0, std::ptr::null()))?;
                check(libc::setgid(u.gid))?;
                check(libc::setuid(u.uid))?;
            }
        }
        Ok(())
    }
}

/// Original owners of the files given to QEMU's user, so they can be given
/// back when the partition goes away (libvirt's dynamic ownership).
#[derive(Debug, Default, Serialize, Deserialize)]
struct Owners {
    files: Vec<(PathBuf, u32, u32)>,
}

const OWNERS_FILE: &str = "owners.json";

/// Makes `paths` accessible to `user` (read, or read-write), changing the
/// owner of those it cannot reach, and records the original owners in
/// `run_dir` (the first record of a path wins: it is the host's).
pub fn grant(run_dir: &Path, user: User, paths: &[(PathBuf, bool)]) -> Result<(), EngineError> {
    let record = run_dir.join(OWNERS_FILE);
    let mut owners: Owners = std::fs::read(&record)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default();
    let mut changed = false;
    for (p, writable) in paths {
        // Canonical paths name regular files; anything else here was swapped
        // in since they were checked, and chown would follow it.
        let m = std::fs::symlink_metadata(p)
            .map_err(|e| EngineError::Host(format!("{}: {e}", p.display())))?;
        if !m.file_type().is_file() {
            return Err(EngineError::InvalidSpec(format!(
                "{} is no longer a regular file",
                p.display()
            )));
        }
        let mode = m.mode();
        let reachable = if m.uid() == user.uid {
            true
        } else if *writable {
            false
        } else {
            mode & 0o004 != 0 || (m.gid() == user.gid && mode & 0o040 != 0)
        };
        if reachable {
            continue;
        }
        if !owners.files.iter().any(|(q, _, _)| q == p) {
            owners.files.push((p.clone(), m.uid(), m.gid()));
            changed = true;
        }
        std::os::unix::fs::chown(p, Some(user.uid), Some(user.gid))
            .map_err(|e| EngineError::Host(format!("giving {} to QEMU: {e}", p.display())))?;
    }
    if changed {
        std::fs::write(
            &record,
            serde_json::to_vec(&owners).expect("owners serialize"),
        )
        .map_err(|e| EngineError::Host(format!("writing {}: {e}", record.display())))?;
    }
    Ok(())
}

/// Gives back the files [`grant`] took, as recorded in `run_dir`.
pub fn restore_owners(run_dir: &Path) {
    let record = run_dir.join(OWNERS_FILE);
    let Some(owners) = std::fs::read(&record)
        .ok()
        .and_then(|b| serde_json::from_slice::<Owners>(&b).ok())
    else {
        return;
    };
    for (p, uid, gid) in owners.files {
        if let Err(e) = std::os::unix::fs::chown(&p, Some(uid), Some(gid)) {
            tracing::warn!(path = %p.display(), error = %e, "restoring owner");
        }
    }
    let _ = std::fs::remove_file(record);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plan_creates_each_directory_once_and_recreates_devices() {
        let j = Jail::plan(
            Path::new("/r"),
            &["/dev/null", "/dev/urandom"],
            &[
                Reveal {
                    host: "/x/a.qcow2".into(),
                    inside: "/srv/lu/a.qcow2".into(),
                    writable: true,
                },
                Reveal {
                    host: "/x/b.qcow2".into(),
                    inside: "/srv/lu/b.qcow2".into(),
                    writable: false,
                },
            ],
            None,
        )
        .unwrap();
        let dirs: Vec<String> = j
            .steps
            .iter()
            .filter_map(|s| match s {
                Step::Dir(p) => Some(p.to_string_lossy().into_owned()),
                _ => None,
            })
            .collect();
        assert_eq!(
            dirs.iter().filter(|d| *d == "/r/srv/lu").count(),
            1,
            "{dirs:?}"
        );
        assert!(dirs.contains(&"/r/dev".to_string()));
        let nodes = j
            .steps
            .iter()
            .filter(|s| matches!(s, Step::Node { .. }))
            .count();
        assert_eq!(nodes, 2);
        assert!(Jail::plan(Path::new("/r"), &["/etc/passwd"], &[], None).is_err());
    }

    #[test]
    fn root_user_exists_and_nonsense_does_not() {
        assert_eq!(lookup_user("root").unwrap().uid, 0);
        assert!(lookup_user("no-such-user-bulkhead").is_err());
    }
}

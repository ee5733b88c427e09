//! Shared-memory regions plugged into a running partition: a
//! `memory-backend-file` (share=on) on a file the host holds, and an
//! `ivshmem-plain` device on a free hot-plug root port. The same file plugged
//! into several partitions is one memory.
//!
//! QEMU 7.2 opens a backend's `mem-path` with plain `open()`, so `/dev/fdset`
//! paths do not work there. A confined QEMU instead sees the file through its
//! share directory: `<run_dir>/shm` is a shared mount on the host, bound at
//! boot into the jail (where it is a slave), so a file bind-mounted into it on
//! the host later appears in the jail too. A read-only region is mounted
//! read-only before it is attached (a remount would not propagate), so QEMU
//! cannot open it for writing whatever it asks; the backend is read-only too.

use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::json;

use super::{HotplugRecord, Partition};
use crate::cmdline;
use crate::jail;
use crate::spec::{check_region_size, AdapterSpec, RegionSpec};
use crate::EngineError;

/// The share directory under the run directory, and where the jail shows it.
const SHARE_DIR: &str = "shm";

/// What the guest needs to find a plugged region.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegionPlug {
    pub id: String,
    pub slot: u32,
    /// The guest's PCI address of the root port the device sits behind
    /// (`bulkhead-guest region map PORT`).
    pub port: String,
    pub size: u64,
    pub readonly: bool,
}

fn backend_id(id: &str) -> String {
    format!("mem-{id}")
}

fn host_err(what: &str, p: &Path, e: std::io::Error) -> EngineError {
    EngineError::Host(format!("{what} {}: {e}", p.display()))
}

fn cpath(p: &Path) -> CString {
    CString::new(p.as_os_str().as_encoded_bytes()).expect("path without NUL")
}

fn check(rc: libc::c_long, what: &str, p: &Path) -> Result<libc::c_long, EngineError> {
    if rc < 0 {
        Err(host_err(what, p, std::io::Error::last_os_error()))
    } else {
        Ok(rc)
    }
}

/// Makes `<run_dir>/shm` a shared mount of its own (after clearing what a
/// previous run left there) and returns it, for the jail to bind.
pub(crate) fn prepare_share_dir(run_dir: &Path) -> Result<PathBuf, EngineError> {
    release_share_dir(run_dir);
    let d = run_dir.join(SHARE_DIR);
    std::fs::create_dir_all(&d).map_err(|e| host_err("creating", &d, e))?;
    // QEMU's user only traverses it; the files in it are mounts.
    std::fs::set_permissions(&d, std::os::unix::fs::PermissionsExt::from_mode(0o711))
        .map_err(|e| host_err("chmod", &d, e))?;
    let c = cpath(&d);
    let null = std::ptr::null::<libc::c_char>();
    // SAFETY: mount(2) on a NUL-terminated path we own; null where allowed.
    unsafe {
        check(
            libc::mount(
                c.as_ptr(),
                c.as_ptr(),
                null,
                libc::MS_BIND,
                std::ptr::null(),
            ) as libc::c_long,
            "binding",
            &d,
        )?;
        check(
            libc::mount(null, c.as_ptr(), null, libc::MS_SHARED, std::ptr::null()) as libc::c_long,
            "sharing",
            &d,
        )?;
    }
    Ok(d)
}

/// Unmounts every region in the share directory and the directory itself.
/// Safe to call when nothing is mounted.
pub(crate) fn release_share_dir(run_dir: &Path) {
    let d = run_dir.join(SHARE_DIR);
    if let Ok(entries) = std::fs::read_dir(&d) {
        for e in entries.flatten() {
            unshare_file(&e.path());
        }
    }
    let c = cpath(&d);
    // SAFETY: umount2 on a path we own; failure (nothing mounted) is fine.
    while unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) } == 0 {}
    let _ = std::fs::remove_dir(&d);
}

/// Mounts `host` (read-only if asked) onto `<share dir>/<id>`; returns the
/// path QEMU opens inside the jail.
fn share_file(
    run_dir: &Path,
    id: &str,
    host: &Path,
    readonly: bool,
) -> Result<PathBuf, EngineError> {
    let target = run_dir.join(SHARE_DIR).join(id);
    std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&target)
        .map_err(|e| host_err("creating", &target, e))?;
    let mounted = (|| {
        let src = cpath(host);
        let dst = cpath(&target);
        // SAFETY: open_tree on a NUL-terminated path; the fd it returns is
        // owned here at once.
        let fd = check(
            unsafe {
                libc::syscall(
                    libc::SYS_open_tree,
                    libc::AT_FDCWD,
                    src.as_ptr(),
                    libc::OPEN_TREE_CLONE | libc::OPEN_TREE_CLOEXEC,
                )
            },
            "cloning a mount of",
            host,
        )?;
        // SAFETY: a new descriptor nobody else owns.
        let tree = unsafe { OwnedFd::from_raw_fd(fd as i32) };
        let mut attr = libc::mount_attr {
            attr_set: libc::MOUNT_ATTR_NOSUID | libc::MOUNT_ATTR_NODEV | libc::MOUNT_ATTR_NOEXEC,
            attr_clr: 0,
            propagation: 0,
            userns_fd: 0,
        };
        if readonly {
            attr.attr_set |= libc::MOUNT_ATTR_RDONLY;
        }
        // SAFETY: mount_setattr on our detached tree with a valid attr of
        // the size passed; then move_mount of that tree onto our target.
        unsafe {
            check(
                libc::syscall(
                    libc::SYS_mount_setattr,
                    tree.as_raw_fd(),
                    c"".as_ptr(),
                    libc::AT_EMPTY_PATH,
                    &mut attr as *mut libc::mount_attr,
                    std::mem::size_of::<libc::mount_attr>(),
                ),
                "setting mount flags of",
                host,
            )?;
            check(
                libc::syscall(
                    libc::SYS_move_mount,
                    tree.as_raw_fd(),
                    c"".as_ptr(),
                    libc::AT_FDCWD,
                    dst.as_ptr(),
                    libc::MOVE_MOUNT_F_EMPTY_PATH,
                ),
                "mounting onto",
                &target,
            )?;
        }
        Ok(())
    })();
    if let Err(e) = mounted {
        let _ = std::fs::remove_file(&target);
        return Err(e);
    }
    Ok(Path::new(jail::JAIL_RUN).join(SHARE_DIR).join(id))
}

/// Unmounts one shared file (the unmount reaches the jail) and removes its
/// mount point.
fn unshare_file(target: &Path) {
    let c = cpath(target);
    // SAFETY: umount2 on a path we own; failure (not mounted) is fine.
    while unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) } == 0 {}
    let _ = std::fs::remove_file(target);
}

/// The region file's size, checked: a regular file of an allowed size.
fn region_size(path: &Path) -> Result<u64, EngineError> {
    let m = std::fs::metadata(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => EngineError::MissingFile {
            what: "region file",
            path: path.to_path_buf(),
        },
        _ => host_err("reading", path, e),
    })?;
    if !m.is_file() {
        return Err(EngineError::InvalidSpec(format!(
            "region file {} is not a regular file",
            path.display()
        )));
    }
    check_region_size(m.len()).map_err(EngineError::InvalidSpec)?;
    Ok(m.len())
}

impl Partition {
    /// Plugs a shared-memory region into a free hot-plug slot. Returns once
    /// QEMU added the device; the guest sees it a moment later (ACPI
    /// hot-plug) and maps it with `bulkhead-guest region map PORT`. On
    /// failure nothing stays plugged or mounted.
    pub async fn plug_region(&self, region: RegionSpec) -> Result<RegionPlug, EngineError> {
        let slot = self.free_slot(&region.id)?;
        let host = std::fs::canonicalize(&region.path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => EngineError::MissingFile {
                what: "region file",
                path: region.path.clone(),
            },
            _ => host_err("resolving", &region.path, e),
        })?;
        let size = region_size(&host)?;
        let mem_path = if self.opts.confine {
            if let Some(u) = self.opts.run_as.as_deref() {
                let user = jail::lookup_user(u)?;
                jail::grant(
                    &self.opts.run_dir,
                    user,
                    &[(host.clone(), !region.readonly)],
                )?;
            }
            share_file(&self.opts.run_dir, &region.id, &host, region.readonly)?
        } else {
            host.clone()
        };
        let backend = backend_id(&region.id);
        let added = self
            .qmp
            .object_add(json!({
                "qom-type": "memory-backend-file",
                "id": backend,
                "mem-path": mem_path,
                "size": size,
                "share": true,
                "readonly": region.readonly,
            }))
            .await;
        let plugged = match added {
            Ok(()) => {
                let r = self
                    .qmp
                    .device_add(json!({
                        "driver": "ivshmem-plain",
                        "memdev": backend,
                        "id": region.id,
                        "bus": format!("hp{slot}"),
                    }))
                    .await;
                if r.is_err() {
                    let _ = self.qmp.object_del(&backend).await;
                }
                r
            }
            Err(e) => Err(e),
        };
        if let Err(e) = plugged {
            if self.opts.confine {
                unshare_file(&self.opts.run_dir.join(SHARE_DIR).join(&region.id));
            }
            return Err(e.into());
        }
        let plug = RegionPlug {
            id: region.id.clone(),
            slot,
            port: cmdline::hotplug_port_address(slot),
            size,
            readonly: region.readonly,
        };
        self.hotplugged.lock().expect("hotplug lock").insert(
            region.id.clone(),
            HotplugRecord {
                slot,
                adapter: AdapterSpec::Region(region),
                fdsets: Vec::new(),
            },
        );
        self.save_state()?;
        Ok(plug)
    }

    /// After its device is gone: the backend, then the mount.
    pub(super) async fn release_region(&self, id: &str) -> Result<(), EngineError> {
        self.qmp.object_del(&backend_id(id)).await?;
        if self.opts.confine {
            unshare_file(&self.opts.run_dir.join(SHARE_DIR).join(id));
        }
        Ok(())
    }
}

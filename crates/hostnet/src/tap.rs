//! Partition TAPs: made persistent with the TUN ioctls, so QEMU opens them by
//! name (`-netdev tap,ifname=...`) as the unprivileged user they are given
//! to, then enslaved to the bridge and brought up over rtnetlink.
//!
//! Flags: IFF_TAP | IFF_NO_PI, as `ip tuntap add mode tap` makes them. QEMU
//! sets its own IFF_VNET_HDR (and offloads) when it attaches; the kernel takes
//! the attacher's flags, and only IFF_MULTI_QUEUE must match, which neither
//! side sets.

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;

use crate::netns;
use crate::rtnl::Rtnl;
use crate::{names, no_link, HostnetError};

/// Who may attach to the TAP besides root (QEMU's user).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Owner {
    pub uid: u32,
    pub gid: u32,
}

fn io_err(op: String) -> impl FnOnce(std::io::Error) -> HostnetError {
    move |source| HostnetError::Io { op, source }
}

/// Creates `tap` for `owner`, enslaved to `bridge` and up. A TAP of that
/// name left by a crash is removed first. On failure nothing is left.
pub fn create(
    tap: &str,
    bridge: &str,
    owner: Option<Owner>,
    netns: Option<&str>,
) -> Result<(), HostnetError> {
    names::check_ifname(tap)?;
    names::check_ifname(bridge)?;
    netns::run(netns, || {
        let mut nl = Rtnl::open()?;
        let br = nl
            .link(bridge)?
            .ok_or_else(|| no_link("bridge", bridge, netns))?;
        if let Some(old) = nl.link(tap)? {
            tracing::warn!(tap, "removing stale TAP");
            nl.delete(old.index)?;
        }
        make_persistent(tap, owner)?;
        let attached = nl
            .link(tap)
            .and_then(|l| l.ok_or_else(|| no_link("TAP", tap, netns)))
            .and_then(|l| nl.set_up(l.index, Some(br.index)));
        if let Err(e) = attached {
            if let Ok(Some(l)) = nl.link(tap) {
                let _ = nl.delete(l.index);
            }
            return Err(e);
        }
        Ok(())
    })
}

/// Removes `tap`; nothing when it is gone already.
pub fn remove(tap: &str, netns: Option<&str>) -> Result<(), HostnetError> {
    crate::delete_link(tap, netns)
}

/// TUNSETIFF + owner/group + TUNSETPERSIST: the device outlives the
/// descriptor, which is closed on return.
fn make_persistent(tap: &str, owner: Option<Owner>) -> Result<(), HostnetError> {
    let tun: File = OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/net/tun")
        .map_err(io_err("opening /dev/net/tun".into()))?;
    let fd = tun.as_raw_fd();
    // SAFETY: ifreq is plain old data; all zeroes is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    // check_ifname bounds the name to 15 bytes: the NUL stays.
    for (d, s) in req.ifr_name.iter_mut().zip(tap.bytes()) {
        *d = s as libc::c_char;
    }
    req.ifr_ifru.ifru_flags = (libc::IFF_TAP | libc::IFF_NO_PI) as libc::c_short;
    // SAFETY: TUNSETIFF reads and writes an ifreq, which `req` is and which
    // lives across the call; `fd` is open.
    if unsafe { libc::ioctl(fd, libc::TUNSETIFF, &mut req as *mut libc::ifreq) } < 0 {
        return Err(io_err(format!("creating TAP {tap} (TUNSETIFF)"))(
            std::io::Error::last_os_error(),
        ));
    }
    let set = |op: libc::Ioctl, arg: libc::c_ulong, what: &str| {
        // SAFETY: these TUN ioctls take their argument by value, no pointer;
        // `fd` is open and attached to the TAP.
        if unsafe { libc::ioctl(fd, op, arg) } < 0 {
            Err(io_err(format!("TAP {tap}: {what}"))(
                std::io::Error::last_os_error(),
            ))
        } else {
            Ok(())
        }
    };
    if let Some(o) = owner {
        set(libc::TUNSETOWNER, o.uid.into(), "TUNSETOWNER")?;
        set(libc::TUNSETGROUP, o.gid.into(), "TUNSETGROUP")?;
    }
    // Until persistent the device goes with the descriptor: an error above
    // leaves nothing behind.
    set(libc::TUNSETPERSIST, 1, "TUNSETPERSIST")
}

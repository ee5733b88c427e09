//! A restored clone's own identity (issue 17): the host's request names its
//! host name, the clock, and for each NIC the MAC it had in the template and
//! what it has now. Done with system calls: a process per change would cost
//! a fork and exec each under TCG.

use super::sys;
use crate::cmdline::{netmask, validate_hostname};
use crate::proto::{NicIdentity, Reidentity};
use std::net::Ipv4Addr;
use std::path::Path;

/// Applies `r`; the first failure stops it, with what failed.
pub fn apply(r: &Reidentity) -> Result<(), String> {
    validate_hostname(&r.hostname)?;
    // Checked whole before anything changes.
    let nics: Vec<(&NicIdentity, Plan)> = r
        .nics
        .iter()
        .map(|n| plan(n).map(|p| (n, p)))
        .collect::<Result<_, _>>()?;
    sys::set_clock(r.clock_unix_ms).map_err(|e| format!("setting the clock: {e}"))?;
    sys::sethostname(&r.hostname).map_err(|e| format!("sethostname: {e}"))?;
    for (n, p) in nics {
        let iface = iface_with_mac(Path::new("/sys/class/net"), &n.old_mac)
            .or_else(|| iface_with_mac(Path::new("/sys/class/net"), &n.new_mac))
            .ok_or_else(|| format!("no interface has MAC {}", n.old_mac))?;
        sys::set_mac(&iface, p.mac).map_err(|e| format!("{iface} MAC {}: {e}", n.new_mac))?;
        if let Some((ip, prefix)) = p.addr {
            sys::ifconfig(&iface, Some((ip, netmask(prefix))))
                .map_err(|e| format!("{iface} {ip}/{prefix}: {e}"))?;
        }
        if let Some(gw) = p.gateway {
            match sys::add_default_route(gw) {
                Ok(()) => {}
                // Kept through the address change.
                Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {}
                Err(e) => return Err(format!("default route via {gw}: {e}")),
            }
        }
    }
    Ok(())
}

/// One NIC's change, parsed.
struct Plan {
    mac: [u8; 6],
    addr: Option<(Ipv4Addr, u8)>,
    gateway: Option<Ipv4Addr>,
}

fn plan(n: &NicIdentity) -> Result<Plan, String> {
    parse_mac(&n.old_mac)?;
    let mac = parse_mac(&n.new_mac)?;
    let addr =
        n.ip.as_deref()
            .map(|cidr| {
                let (ip, prefix) = cidr
                    .split_once('/')
                    .ok_or_else(|| format!("address {cidr:?} is not ADDR/PREFIX"))?;
                let ip: Ipv4Addr = ip.parse().map_err(|_| format!("address {cidr:?}"))?;
                let prefix: u8 = prefix
                    .parse()
                    .ok()
                    .filter(|p| *p <= 32)
                    .ok_or_else(|| format!("prefix of {cidr:?}"))?;
                Ok::<_, String>((ip, prefix))
            })
            .transpose()?;
    let gateway = n
        .gateway
        .as_deref()
        .map(|g| g.parse().map_err(|_| format!("gateway {g:?}")))
        .transpose()?;
    Ok(Plan { mac, addr, gateway })
}

fn parse_mac(s: &str) -> Result<[u8; 6], String> {
    let mut out = [0u8; 6];
    let mut parts = s.split(':');
    for b in out.iter_mut() {
        *b = parts
            .next()
            .filter(|p| p.len() == 2)
            .and_then(|p| u8::from_str_radix(p, 16).ok())
            .ok_or_else(|| format!("MAC {s:?}"))?;
    }
    if parts.next().is_some() {
        return Err(format!("MAC {s:?}"));
    }
    Ok(out)
}

/// The interface under `net` (sysfs' class dir) whose address is `mac`.
fn iface_with_mac(net: &Path, mac: &str) -> Option<String> {
    std::fs::read_dir(net).ok()?.flatten().find_map(|e| {
        let a = std::fs::read_to_string(e.path().join("address")).ok()?;
        a.trim()
            .eq_ignore_ascii_case(mac)
            .then(|| e.file_name().to_string_lossy().into_owned())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_input_is_refused_before_anything_changes() {
        let nic = |old: &str, new: &str, ip: Option<&str>, gw: Option<&str>| NicIdentity {
            old_mac: old.into(),
            new_mac: new.into(),
            ip: ip.map(str::to_string),
            gateway: gw.map(str::to_string),
        };
        let ok = nic(
            "52:54:00:00:00:01",
            "52:54:00:0a:0b:0c",
            Some("10.1.2.3/24"),
            Some("10.1.2.1"),
        );
        let p = plan(&ok).unwrap();
        assert_eq!(p.mac, [0x52, 0x54, 0, 0x0a, 0x0b, 0x0c]);
        assert_eq!(p.addr, Some((Ipv4Addr::new(10, 1, 2, 3), 24)));
        assert_eq!(p.gateway, Some(Ipv4Addr::new(10, 1, 2, 1)));
        for bad in [
            nic("52:54:00:00:00", "52:54:00:0a:0b:0c", None, None),
            nic("52:54:00:00:00:01", "52:54:00:0a:0b:0c:0d", None, None),
            nic("52:54:00:00:00:01", "zz:54:00:0a:0b:0c", None, None),
            nic(
                "52:54:00:00:00:01",
                "52:54:00:0a:0b:0c",
                Some("10.1.2.3"),
                None,
            ),
            nic(
                "52:54:00:00:00:01",
                "52:54:00:0a:0b:0c",
                Some("10.1.2.3/33"),
                None,
            ),
            nic("52:54:00:00:00:01", "52:54:00:0a:0b:0c", None, Some("gw")),
        ] {
            assert!(plan(&bad).is_err(), "{bad:?}");
        }
        // A bad host name stops it first.
        let r = Reidentity {
            hostname: "-bad".into(),
            clock_unix_ms: 0,
            nics: vec![],
        };
        assert!(apply(&r).is_err());
    }

    #[test]
    fn the_interface_is_found_by_its_mac() {
        let d = tempfile::tempdir().unwrap();
        for (n, mac) in [
            ("eth0", "52:54:00:00:00:01\n"),
            ("eth1", "52:54:00:00:00:02\n"),
        ] {
            std::fs::create_dir(d.path().join(n)).unwrap();
            std::fs::write(d.path().join(n).join("address"), mac).unwrap();
        }
        assert_eq!(
            iface_with_mac(d.path(), "52:54:00:00:00:02").as_deref(),
            Some("eth1")
        );
        assert_eq!(iface_with_mac(d.path(), "52:54:00:00:00:03"), None);
    }
}

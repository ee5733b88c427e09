//! The internal VLAN: one Linux bridge per daemon with the subnet's first
//! address, and partition addresses assigned from the rest. Bridge and link
//! changes go through iproute2 (`ip`), which every host with bridges has.

use anyhow::{bail, Context};
use std::collections::HashSet;
use std::net::Ipv4Addr;
use std::process::Command;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Subnet {
    pub network: Ipv4Addr,
    pub prefix: u8,
}

impl Subnet {
    pub fn parse(s: &str) -> anyhow::Result<Self> {
        let (addr, prefix) = s
            .split_once('/')
            .with_context(|| format!("subnet {s:?} is not CIDR (a.b.c.d/len)"))?;
        let addr: Ipv4Addr = addr
            .parse()
            .with_context(|| format!("subnet {s:?}: bad address"))?;
        let prefix: u8 = prefix
            .parse()
            .ok()
            .filter(|p| (8..=30).contains(p))
            .with_context(|| format!("subnet {s:?}: prefix length must be 8-30"))?;
        let mask = u32::MAX << (32 - prefix);
        Ok(Self {
            network: Ipv4Addr::from(u32::from(addr) & mask),
            prefix,
        })
    }

    /// The bridge's address: the first host address.
    pub fn gateway(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.network) + 1)
    }

    fn hosts(&self) -> impl Iterator<Item = Ipv4Addr> {
        let base = u32::from(self.network);
        let size = 1u32 << (32 - self.prefix);
        // Skip the network, the gateway and the broadcast address.
        (2..size - 1).map(move |i| Ipv4Addr::from(base + i))
    }

    /// The lowest address not in `used`, as CIDR.
    pub fn allocate(&self, used: &HashSet<Ipv4Addr>) -> Option<String> {
        self.hosts()
            .find(|a| !used.contains(a))
            .map(|a| format!("{a}/{}", self.prefix))
    }
}

/// A locally administered MAC derived from the address, so it is unique
/// wherever the address is.
pub fn mac_for(ip: Ipv4Addr) -> String {
    let o = ip.octets();
    format!("52:54:{:02x}:{:02x}:{:02x}:{:02x}", o[0], o[1], o[2], o[3])
}

/// The address part of a CIDR string.
pub fn addr_of(cidr: &str) -> Option<Ipv4Addr> {
    cidr.split('/').next()?.parse().ok()
}

fn ip(args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .context("running ip (iproute2)")?;
    if !out.status.success() {
        bail!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

pub fn link_exists(name: &str) -> bool {
    std::path::Path::new("/sys/class/net").join(name).exists()
}

/// Creates the bridge with the gateway address if missing, and brings it up.
pub fn ensure_bridge(name: &str, subnet: &Subnet) -> anyhow::Result<()> {
    if !link_exists(name) {
        ip(&["link", "add", name, "type", "bridge"]).or_else(|e| {
            if link_exists(name) {
                Ok(String::new())
            } else {
                Err(e)
            }
        })?;
    }
    let cidr = format!("{}/{}", subnet.gateway(), subnet.prefix);
    let addrs = ip(&["-o", "-4", "addr", "show", "dev", name])?;
    if !addrs.contains(&format!(" {cidr} ")) {
        ip(&["addr", "add", &cidr, "dev", name])?;
    }
    ip(&["link", "set", name, "up"])?;
    Ok(())
}

/// Interfaces enslaved to `bridge` (the partitions' TAPs).
pub fn bridge_ports(bridge: &str) -> Vec<String> {
    let dir = std::path::Path::new("/sys/class/net")
        .join(bridge)
        .join("brif");
    std::fs::read_dir(dir)
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

pub fn delete_link(name: &str) -> anyhow::Result<()> {
    if link_exists(name) {
        ip(&["link", "del", name])?;
    }
    Ok(())
}

/// The nftables table holding a daemon's anti-spoofing rules.
pub fn filter_table(instance: &str) -> String {
    format!("bulkhead-{instance}")
}

/// Feeds a script to `nft -f -`.
fn nft(script: &str) -> anyhow::Result<()> {
    use std::io::Write;
    let mut child = Command::new("nft")
        .args(["-f", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .context("running nft (nftables)")?;
    child
        .stdin
        .take()
        .expect("piped stdin")
        .write_all(script.as_bytes())?;
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!(
            "nft: {}: {}",
            script.trim().replace('\n', "; "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// The VLAN's anti-spoofing table (nftables bridge family): one chain per
/// partition TAP, reached through a verdict map keyed by the input port, so
/// frames a partition sends are checked before the bridge forwards them or
/// hands them to the host. Idempotent.
pub fn ensure_filter(instance: &str) -> anyhow::Result<()> {
    let t = filter_table(instance);
    nft(&format!(
        "add table bridge {t}\n\
         add chain bridge {t} prerouting {{ type filter hook prerouting priority -300; policy accept; }}\n\
         add map bridge {t} taps {{ type ifname : verdict; }}\n\
         flush chain bridge {t} prerouting\n\
         add rule bridge {t} prerouting iifname vmap @taps\n"
    ))
}

/// Lets `tap` send only frames from its own MAC, IPv4 packets from its own
/// address and ARP that names both as sender (an address probe's 0.0.0.0
/// too); everything else it sends is dropped, as libvirt's clean-traffic
/// filter does (no IPv6, no VLAN tags, no other ethertypes). Replaces any
/// earlier rules for the TAP.
pub fn guard_tap(instance: &str, tap: &str, mac: &str, ip: Ipv4Addr) -> anyhow::Result<()> {
    let t = filter_table(instance);
    let c = format!("bridge {t} {tap}");
    nft(&format!(
        "add chain {c}\n\
         flush chain {c}\n\
         add rule {c} ether saddr != {mac} drop\n\
         add rule {c} ether type arp arp saddr ether != {mac} drop\n\
         add rule {c} ether type arp arp saddr ip != {{ {ip}, 0.0.0.0 }} drop\n\
         add rule {c} ether type arp accept\n\
         add rule {c} ether type ip ip saddr != {ip} drop\n\
         add rule {c} ether type ip accept\n\
         add rule {c} drop\n\
         add element bridge {t} taps {{ \"{tap}\" : jump {tap} }}\n"
    ))
}

/// Removes a TAP's rules (nothing when there are none).
pub fn unguard_tap(instance: &str, tap: &str) {
    let t = filter_table(instance);
    // Separate scripts: a missing element must not keep the chain.
    let _ = nft(&format!("delete element bridge {t} taps {{ \"{tap}\" }}\n"));
    let _ = nft(&format!("delete chain bridge {t} {tap}\n"));
}

/// The TAP name for a partition: short (IFNAMSIZ is 16), stable, and unique
/// per daemon, so reconciliation can tell ours from others'.
pub fn tap_name(instance: &str, partition: &str) -> String {
    let h = crate::config::fnv1a(format!("{instance}/{partition}").as_bytes());
    format!("bht{:010x}", h & 0xff_ffff_ffff)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subnet_parse_and_allocate() {
        let s = Subnet::parse("10.77.0.9/24").unwrap();
        assert_eq!(s.network, Ipv4Addr::new(10, 77, 0, 0));
        assert_eq!(s.gateway(), Ipv4Addr::new(10, 77, 0, 1));
        let mut used = HashSet::new();
        assert_eq!(s.allocate(&used).unwrap(), "10.77.0.2/24");
        used.insert(Ipv4Addr::new(10, 77, 0, 2));
        assert_eq!(s.allocate(&used).unwrap(), "10.77.0.3/24");
        let tiny = Subnet::parse("10.0.0.0/30").unwrap();
        let used: HashSet<_> = [Ipv4Addr::new(10, 0, 0, 2)].into();
        assert_eq!(tiny.allocate(&used), None);
        for bad in ["10.0.0.0", "10.0.0.0/33", "10.0.0/24", "x/24", "10.0.0.0/4"] {
            assert!(Subnet::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn names_fit_ifnamsiz() {
        let t = tap_name("abcdef12", "a-very-long-partition-name");
        assert!(t.len() <= 15, "{t}");
        assert_ne!(t, tap_name("abcdef13", "a-very-long-partition-name"));
        assert_eq!(mac_for(Ipv4Addr::new(10, 77, 0, 2)), "52:54:0a:4d:00:02");
    }
}

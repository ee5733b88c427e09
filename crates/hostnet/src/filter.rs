//! The VLAN's anti-spoofing filter, in nftables (bridge family). Rules are
//! written with the `nft` command: it is nftables' own front end, and its
//! scripts are atomic. Blocking: async callers use `crate::blocking`.

use std::io::Write;
use std::net::Ipv4Addr;
use std::process::{Command, Stdio};

use crate::{names, HostnetError};

/// The nftables table holding a daemon's anti-spoofing rules.
pub fn table(instance: &str) -> String {
    format!("bulkhead-{instance}")
}

/// Feeds a script to `nft -f -`.
fn nft(script: &str) -> Result<(), HostnetError> {
    let mut child = Command::new("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| HostnetError::Io {
            op: "running nft (nftables)".into(),
            source: e,
        })?;
    let wrote = child
        .stdin
        .take()
        .expect("piped stdin")
        .write_all(script.as_bytes());
    let out = child.wait_with_output().map_err(|e| HostnetError::Io {
        op: "waiting for nft".into(),
        source: e,
    })?;
    if !out.status.success() || wrote.is_err() {
        return Err(HostnetError::Nft(format!(
            "{}: {}",
            script.trim().replace('\n', "; "),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(())
}

/// One chain per partition TAP, reached through a verdict map keyed by the
/// input port, so frames a partition sends are checked before the bridge
/// forwards them or hands them to the host. Idempotent.
pub fn ensure(instance: &str) -> Result<(), HostnetError> {
    let t = table(instance);
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
pub fn guard_tap(instance: &str, tap: &str, mac: &str, ip: Ipv4Addr) -> Result<(), HostnetError> {
    names::check_ifname(tap)?;
    // The MAC goes into a script: only xx:xx:xx:xx:xx:xx.
    let mac_ok = mac.len() == 17
        && mac
            .split(':')
            .all(|o| o.len() == 2 && o.bytes().all(|b| b.is_ascii_hexdigit()));
    if !mac_ok {
        return Err(HostnetError::InvalidName(mac.to_string()));
    }
    let t = table(instance);
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

/// Keeps the VLAN's gateway address local to each host when bridges of
/// several hosts are joined by `port` (a VXLAN port): every bridge holds the
/// gateway address, so ARP asking for it or sent from it must not cross, or
/// partitions would learn another host's bridge as their gateway. Idempotent.
pub fn keep_gateway_local(
    instance: &str,
    port: &str,
    gateway: Ipv4Addr,
) -> Result<(), HostnetError> {
    names::check_ifname(port)?;
    let t = table(instance);
    let mut script = String::new();
    for (chain, hook) in [
        ("tunnel_in", "input"),
        ("tunnel_fwd", "forward"),
        ("tunnel_out", "output"),
    ] {
        script.push_str(&format!(
            "add chain bridge {t} {chain} {{ type filter hook {hook} priority -300; policy accept; }}\n\
             flush chain bridge {t} {chain}\n"
        ));
    }
    script.push_str(&format!(
        "add rule bridge {t} tunnel_in iifname {port} ether type arp arp daddr ip {gateway} drop\n\
         add rule bridge {t} tunnel_fwd oifname {port} ether type arp arp daddr ip {gateway} drop\n\
         add rule bridge {t} tunnel_fwd iifname {port} ether type arp arp daddr ip {gateway} drop\n\
         add rule bridge {t} tunnel_out oifname {port} ether type arp arp saddr ip {gateway} drop\n"
    ));
    nft(&script)
}

/// Removes a TAP's rules (nothing when there are none).
pub fn unguard_tap(instance: &str, tap: &str) {
    if names::check_ifname(tap).is_err() {
        return;
    }
    let t = table(instance);
    // Separate scripts: a missing element must not keep the chain.
    let _ = nft(&format!("delete element bridge {t} taps {{ \"{tap}\" }}\n"));
    let _ = nft(&format!("delete chain bridge {t} {tap}\n"));
}

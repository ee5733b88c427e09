//! The internal VLAN: one Linux bridge per daemon with the subnet's first
//! address, and partition addresses assigned from the rest. Links, the
//! filter and the names of TAPs and MACs are `bulkhead_hostnet`'s (netlink,
//! no `ip` command); these calls block, so the manager runs them off the
//! reactor.

use anyhow::Context;
use std::collections::HashSet;
use std::net::Ipv4Addr;

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

/// The MAC of a partition with address `ip` (the one naming scheme).
pub use bulkhead_hostnet::names::mac_for_addr as mac_for;

/// The address part of a CIDR string.
pub fn addr_of(cidr: &str) -> Option<Ipv4Addr> {
    cidr.split('/').next()?.parse().ok()
}

/// Creates the bridge with the gateway address if missing, and brings it up.
/// Blocking (netlink).
pub fn ensure_bridge(name: &str, subnet: &Subnet) -> anyhow::Result<()> {
    bulkhead_hostnet::ensure_bridge(name, Some((subnet.gateway(), subnet.prefix)), None)?;
    Ok(())
}

/// Interfaces enslaved to `bridge` (the partitions' TAPs). Blocking.
pub fn bridge_ports(bridge: &str) -> anyhow::Result<Vec<String>> {
    Ok(bulkhead_hostnet::bridge_ports(bridge, None)?)
}

/// Blocking (netlink).
pub fn delete_link(name: &str) -> anyhow::Result<()> {
    Ok(bulkhead_hostnet::delete_link(name, None)?)
}

/// The VLAN's anti-spoofing filter (nftables): blocking, it runs `nft`.
pub use bulkhead_hostnet::filter::{
    ensure as ensure_filter, guard_tap, table as filter_table, unguard_tap,
};

/// The one adapter a managed partition has.
pub const ADAPTER: &str = "net0";

/// The TAP of a partition of this daemon (`instance`).
pub fn tap_name(instance: &str, partition: &str) -> String {
    bulkhead_hostnet::names::tap_name(instance, partition, ADAPTER)
}

/// Whether `port` is a TAP this daemon named (orphan clean-up).
pub fn is_our_tap(instance: &str, port: &str) -> bool {
    bulkhead_hostnet::names::is_tap_of(port, instance)
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
    fn tap_names_are_per_daemon() {
        let t = tap_name("abcdef12", "a-very-long-partition-name");
        assert!(t.len() <= 15, "{t}");
        assert_ne!(t, tap_name("abcdef13", "a-very-long-partition-name"));
        assert!(is_our_tap("abcdef12", &t));
        assert!(!is_our_tap("abcdef13", &t));
    }
}

//! VXLAN ports that join bridges of different hosts into one L2 segment
//! (issue 14): a VXLAN link enslaved to the VLAN bridge, and unicast
//! flood entries (all-zero MAC, one per remote host) so broadcasts such as
//! ARP reach every other host (head-end replication, no multicast needed).
//! Unicast MACs are then learned from what arrives.

use crate::rtnl::Rtnl;
use crate::{is_errno, names, netns, no_link, HostnetError};
use netlink_packet_core::{NLM_F_APPEND, NLM_F_CREATE, NLM_F_DUMP};
use netlink_packet_route::link::{
    InfoData, InfoKind, InfoVxlan, LinkAttribute, LinkInfo, LinkMessage,
};
use netlink_packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use std::net::Ipv4Addr;

/// What a VXLAN port is made with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Vxlan {
    /// The VXLAN network identifier (24 bits).
    pub vni: u32,
    /// This host's underlay address: the tunnels' source.
    pub local: Ipv4Addr,
    /// UDP destination port (4789 is IANA's).
    pub port: u16,
    /// MTU of the port. The encapsulation adds 50 bytes, so the underlay must
    /// carry `mtu + 50`.
    pub mtu: u32,
}

/// Creates the VXLAN link `name` (if missing), enslaves it to `bridge` and
/// brings it up. Idempotent.
pub fn ensure(name: &str, v: Vxlan, bridge: &str, netns: Option<&str>) -> Result<(), HostnetError> {
    names::check_ifname(name)?;
    names::check_ifname(bridge)?;
    netns::run(netns, || {
        let mut nl = Rtnl::open()?;
        let br = nl
            .link(bridge)?
            .ok_or_else(|| no_link("bridge", bridge, netns))?;
        let link = match nl.link(name)? {
            Some(l) => l,
            None => {
                let mut m = LinkMessage::default();
                m.attributes.push(LinkAttribute::IfName(name.to_string()));
                m.attributes.push(LinkAttribute::Mtu(v.mtu));
                m.attributes.push(LinkAttribute::LinkInfo(vec![
                    LinkInfo::Kind(InfoKind::Vxlan),
                    LinkInfo::Data(InfoData::Vxlan(vec![
                        InfoVxlan::Id(v.vni),
                        InfoVxlan::Local(v.local),
                        InfoVxlan::Port(v.port),
                        InfoVxlan::Learning(true),
                    ])),
                ]));
                if let Err(e) = nl.request(
                    &format!("creating VXLAN {name}"),
                    RouteNetlinkMessage::NewLink(m),
                    NLM_F_CREATE | netlink_packet_core::NLM_F_EXCL,
                ) {
                    if !is_errno(&e, libc::EEXIST) {
                        return Err(e);
                    }
                }
                nl.link(name)?
                    .ok_or_else(|| no_link("VXLAN", name, netns))?
            }
        };
        nl.set_up(link.index, Some(br.index))
    })
}

fn flood_entry(index: u32, remote: Ipv4Addr) -> NeighbourMessage {
    let mut m = NeighbourMessage::default();
    m.header.family = AddressFamily::Bridge;
    m.header.ifindex = index;
    m.header.state = NeighbourState::Permanent;
    m.header.flags = NeighbourFlags::Own;
    m.attributes
        .push(NeighbourAttribute::LinkLayerAddress(vec![0; 6]));
    m.attributes
        .push(NeighbourAttribute::Destination(NeighbourAddress::Inet(
            remote,
        )));
    m
}

/// The remote hosts the VXLAN link `name` floods to.
pub fn remotes(name: &str, netns: Option<&str>) -> Result<Vec<Ipv4Addr>, HostnetError> {
    names::check_ifname(name)?;
    netns::run(netns, || {
        let mut nl = Rtnl::open()?;
        let link = nl
            .link(name)?
            .ok_or_else(|| no_link("VXLAN", name, netns))?;
        let mut q = NeighbourMessage::default();
        q.header.family = AddressFamily::Bridge;
        let all = nl.request(
            "listing forwarding entries",
            RouteNetlinkMessage::GetNeighbour(q),
            NLM_F_DUMP,
        )?;
        let mut out = Vec::new();
        for m in all {
            let RouteNetlinkMessage::NewNeighbour(n) = m else {
                continue;
            };
            if n.header.ifindex != link.index {
                continue;
            }
            let zero = n
                .attributes
                .iter()
                .any(|a| matches!(a, NeighbourAttribute::LinkLayerAddress(l) if l.iter().all(|b| *b == 0)));
            let dst = n.attributes.iter().find_map(|a| match a {
                NeighbourAttribute::Destination(NeighbourAddress::Inet(ip)) => Some(*ip),
                // In a bridge-family entry the parser cannot tell the address family.
                NeighbourAttribute::Destination(NeighbourAddress::Other(b)) => {
                    <[u8; 4]>::try_from(b.as_slice()).ok().map(Ipv4Addr::from)
                }
                _ => None,
            });
            if let (true, Some(ip)) = (zero, dst) {
                out.push(ip);
            }
        }
        out.sort();
        out.dedup();
        Ok(out)
    })
}

/// Adds `remote` to the hosts the VXLAN link `name` floods to (as
/// `bridge fdb append 00:00:00:00:00:00 dev NAME dst REMOTE`). Idempotent.
pub fn add_remote(name: &str, remote: Ipv4Addr, netns: Option<&str>) -> Result<(), HostnetError> {
    names::check_ifname(name)?;
    netns::run(netns, || {
        let mut nl = Rtnl::open()?;
        let link = nl
            .link(name)?
            .ok_or_else(|| no_link("VXLAN", name, netns))?;
        match nl.request(
            &format!("adding {remote} to VXLAN {name}"),
            RouteNetlinkMessage::NewNeighbour(flood_entry(link.index, remote)),
            NLM_F_CREATE | NLM_F_APPEND,
        ) {
            Err(e) if is_errno(&e, libc::EEXIST) => Ok(()),
            other => other.map(|_| ()),
        }
    })
}

//! A small synchronous rtnetlink client: one request at a time on a socket
//! opened in the calling thread's network namespace. The kernel answers these
//! at once, so a call costs a few syscalls; async callers still run it off the
//! reactor (`crate::blocking`).

use std::io;
use std::net::{IpAddr, Ipv4Addr};

use netlink_packet_core::{
    NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL,
    NLM_F_REQUEST,
};
use netlink_packet_route::address::{AddressAttribute, AddressMessage};
use netlink_packet_route::link::{InfoKind, LinkAttribute, LinkFlags, LinkInfo, LinkMessage};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};

use crate::HostnetError;

/// What the callers need of a link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    pub index: u32,
    pub name: String,
    pub up: bool,
    /// The bridge it is enslaved to, by index.
    pub master: Option<u32>,
}

impl Link {
    fn from_msg(m: &LinkMessage) -> Link {
        let mut l = Link {
            index: m.header.index,
            name: String::new(),
            up: m.header.flags.contains(LinkFlags::Up),
            master: None,
        };
        for a in &m.attributes {
            match a {
                LinkAttribute::IfName(n) => l.name = n.clone(),
                LinkAttribute::Controller(i) => l.master = Some(*i),
                _ => {}
            }
        }
        l
    }
}

pub struct Rtnl {
    sock: Socket,
    seq: u32,
}

fn nl_err(what: &str, e: io::Error) -> HostnetError {
    HostnetError::Netlink {
        op: what.to_string(),
        source: e,
    }
}

impl Rtnl {
    /// A socket in the calling thread's network namespace.
    pub fn open() -> Result<Rtnl, HostnetError> {
        let mut sock = Socket::new(NETLINK_ROUTE).map_err(|e| nl_err("opening socket", e))?;
        sock.bind_auto().map_err(|e| nl_err("binding socket", e))?;
        sock.connect(&SocketAddr::new(0, 0))
            .map_err(|e| nl_err("connecting socket", e))?;
        Ok(Rtnl { sock, seq: 0 })
    }

    /// Sends one request and collects the replies to it: up to the ACK (or
    /// the end of a dump), or the kernel's error.
    pub(crate) fn request(
        &mut self,
        what: &str,
        msg: RouteNetlinkMessage,
        flags: u16,
    ) -> Result<Vec<RouteNetlinkMessage>, HostnetError> {
        self.seq = self.seq.wrapping_add(1);
        let dump = flags & NLM_F_DUMP == NLM_F_DUMP;
        let mut header = NetlinkHeader::default();
        // A dump ends with NLMSG_DONE; anything else is acknowledged.
        header.flags = NLM_F_REQUEST | flags | if dump { 0 } else { NLM_F_ACK };
        header.sequence_number = self.seq;
        let mut req = NetlinkMessage::new(header, NetlinkPayload::from(msg));
        req.finalize();
        let mut buf = vec![0; req.buffer_len()];
        req.serialize(&mut buf);
        self.sock.send(&buf, 0).map_err(|e| nl_err(what, e))?;
        let mut out = Vec::new();
        loop {
            let (data, _) = self.sock.recv_from_full().map_err(|e| nl_err(what, e))?;
            let mut off = 0;
            while off < data.len() {
                let m = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&data[off..])
                    .map_err(|e| HostnetError::Protocol(format!("{what}: {e}")))?;
                let len = m.header.length as usize;
                if len == 0 {
                    return Err(HostnetError::Protocol(format!("{what}: empty message")));
                }
                off += (len + 3) & !3;
                // Replies to an earlier, abandoned request are not ours.
                if m.header.sequence_number != self.seq {
                    continue;
                }
                match m.payload {
                    NetlinkPayload::InnerMessage(i) => out.push(i),
                    NetlinkPayload::Done(_) => return Ok(out),
                    NetlinkPayload::Error(e) => {
                        return match e.code {
                            None => Ok(out),
                            Some(_) => Err(nl_err(what, e.to_io())),
                        }
                    }
                    _ => {}
                }
            }
        }
    }

    /// The link called `name`, if there is one.
    pub fn link(&mut self, name: &str) -> Result<Option<Link>, HostnetError> {
        let mut m = LinkMessage::default();
        m.attributes.push(LinkAttribute::IfName(name.to_string()));
        match self.request(
            &format!("reading link {name}"),
            RouteNetlinkMessage::GetLink(m),
            0,
        ) {
            Ok(r) => Ok(r.iter().find_map(|m| match m {
                RouteNetlinkMessage::NewLink(l) => Some(Link::from_msg(l)),
                _ => None,
            })),
            Err(HostnetError::Netlink { source, .. })
                if source.raw_os_error() == Some(libc::ENODEV) =>
            {
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    /// Every link in the namespace.
    pub fn links(&mut self) -> Result<Vec<Link>, HostnetError> {
        let r = self.request(
            "listing links",
            RouteNetlinkMessage::GetLink(LinkMessage::default()),
            NLM_F_DUMP,
        )?;
        Ok(r.iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewLink(l) => Some(Link::from_msg(l)),
                _ => None,
            })
            .collect())
    }

    /// Creates a bridge; `EEXIST` when the name is taken.
    pub fn add_bridge(&mut self, name: &str) -> Result<(), HostnetError> {
        let mut m = LinkMessage::default();
        m.attributes.push(LinkAttribute::IfName(name.to_string()));
        m.attributes
            .push(LinkAttribute::LinkInfo(vec![LinkInfo::Kind(
                InfoKind::Bridge,
            )]));
        self.request(
            &format!("creating bridge {name}"),
            RouteNetlinkMessage::NewLink(m),
            NLM_F_CREATE | NLM_F_EXCL,
        )?;
        Ok(())
    }

    /// Enslaves a link to `master` (when given) and brings it up, in one
    /// message as `ip link set dev X master Y up` does.
    pub fn set_up(&mut self, index: u32, master: Option<u32>) -> Result<(), HostnetError> {
        let mut m = LinkMessage::default();
        m.header.index = index;
        m.header.flags = LinkFlags::Up;
        m.header.change_mask = LinkFlags::Up;
        if let Some(b) = master {
            m.attributes.push(LinkAttribute::Controller(b));
        }
        self.request(
            &format!("setting link {index} up"),
            RouteNetlinkMessage::SetLink(m),
            0,
        )?;
        Ok(())
    }

    pub fn delete(&mut self, index: u32) -> Result<(), HostnetError> {
        let mut m = LinkMessage::default();
        m.header.index = index;
        self.request(
            &format!("deleting link {index}"),
            RouteNetlinkMessage::DelLink(m),
            0,
        )?;
        Ok(())
    }

    /// The IPv4 addresses of a link, with their prefix lengths.
    pub fn addresses(&mut self, index: u32) -> Result<Vec<(Ipv4Addr, u8)>, HostnetError> {
        let mut q = AddressMessage::default();
        q.header.family = AddressFamily::Inet;
        let r = self.request(
            "listing addresses",
            RouteNetlinkMessage::GetAddress(q),
            NLM_F_DUMP,
        )?;
        Ok(r.iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewAddress(a) if a.header.index == index => {
                    a.attributes.iter().find_map(|at| match at {
                        AddressAttribute::Local(IpAddr::V4(ip)) => Some((*ip, a.header.prefix_len)),
                        _ => None,
                    })
                }
                _ => None,
            })
            .collect())
    }

    pub fn add_address(
        &mut self,
        index: u32,
        ip: Ipv4Addr,
        prefix: u8,
    ) -> Result<(), HostnetError> {
        let mut m = AddressMessage::default();
        m.header.family = AddressFamily::Inet;
        m.header.prefix_len = prefix;
        m.header.index = index;
        m.attributes.push(AddressAttribute::Local(IpAddr::V4(ip)));
        m.attributes.push(AddressAttribute::Address(IpAddr::V4(ip)));
        self.request(
            &format!("adding {ip}/{prefix} to link {index}"),
            RouteNetlinkMessage::NewAddress(m),
            NLM_F_CREATE | NLM_F_EXCL,
        )?;
        Ok(())
    }
}

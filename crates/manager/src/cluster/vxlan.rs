//! Keeps this host's VXLAN port in step with the members: one port on the
//! VLAN bridge, flooding to every other member's underlay address (added as
//! hosts join; a lost host's entry stays, as it may come back).

use crate::manager::Manager;
use bulkhead_hostnet::filter;
use bulkhead_hostnet::vxlan::{self, Vxlan};
use std::collections::HashSet;
use std::net::Ipv4Addr;

/// The port's MTU: the guests' 1500, so the underlay must carry 1550
/// (VXLAN adds 50 bytes). docs/cluster.md says why this and not 1450.
pub const MTU: u32 = 1500;

/// The VXLAN link of a daemon's bridge: `vx` and its instance (10 characters).
pub fn link_name(m: &Manager) -> String {
    format!("vx{}", m.config().cgroup_instance())
}

pub struct Sync {
    /// Without an underlay address there is no VXLAN.
    local: Option<Ipv4Addr>,
    made: bool,
    known: HashSet<Ipv4Addr>,
}

impl Sync {
    pub fn new(m: &Manager) -> Self {
        Self {
            local: m.config().cluster.underlay,
            made: false,
            known: HashSet::new(),
        }
    }

    /// Makes the port once, then adds the members not flooded to yet.
    /// Failures are logged and tried again at the next step.
    pub async fn step(&mut self, m: &Manager) {
        let Some(local) = self.local else {
            return;
        };
        let name = link_name(m);
        if !self.made {
            let cfg = &m.config();
            let v = Vxlan {
                vni: cfg.cluster.vxlan_id,
                local,
                port: cfg.cluster.vxlan_port,
                mtu: MTU,
            };
            let (n, bridge) = (name.clone(), cfg.network.bridge.clone());
            let (instance, gateway) = (cfg.cgroup_instance(), cfg.gateway());
            let made = bulkhead_hostnet::blocking(move || {
                vxlan::ensure(&n, v, &bridge, None)?;
                filter::keep_gateway_local(&instance, &n, gateway)
            });
            match made.await {
                Ok(()) => {
                    self.made = true;
                    tracing::info!(link = %name, vni = v.vni, %local, "VXLAN port on the VLAN bridge");
                }
                Err(e) => {
                    tracing::warn!(error = %e, "making the VXLAN port");
                    return;
                }
            }
        }
        let members = match m.store().hosts().await {
            Ok(h) => h,
            Err(e) => {
                tracing::warn!(error = %e, "reading the members for VXLAN");
                return;
            }
        };
        let new: Vec<Ipv4Addr> = members
            .iter()
            .filter_map(|h| h.record.underlay.as_deref()?.parse().ok())
            .filter(|ip| *ip != local && !self.known.contains(ip))
            .collect();
        for ip in new {
            let n = name.clone();
            match bulkhead_hostnet::blocking(move || vxlan::add_remote(&n, ip, None)).await {
                Ok(()) => {
                    tracing::info!(remote = %ip, "VXLAN floods to a new member");
                    self.known.insert(ip);
                }
                Err(e) => tracing::warn!(remote = %ip, error = %e, "adding a VXLAN remote"),
            }
        }
    }
}

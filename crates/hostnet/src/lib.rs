//! Host networking for partitions: the bridge (internal VLAN), partition
//! TAPs and the anti-spoofing filter, over rtnetlink and the TUN ioctls (no
//! `ip` command), in the host's network namespace or a named one; and the one
//! scheme that names TAPs and MACs ([`names`]). See the crate README.
//!
//! Calls are synchronous (a few syscalls each; `nft` is a command); async
//! callers wrap them in [`blocking`].

pub mod filter;
pub mod names;
mod netns;
mod rtnl;
pub mod tap;
pub mod vxlan;

use std::net::Ipv4Addr;

pub use rtnl::Link;
use rtnl::Rtnl;

#[derive(Debug, thiserror::Error)]
pub enum HostnetError {
    #[error("invalid interface or namespace name {0:?}")]
    InvalidName(String),
    #[error("{what} {name} does not exist{}", in_netns(.netns))]
    NoSuchLink {
        what: &'static str,
        name: String,
        netns: Option<String>,
    },
    #[error("netlink: {op}: {source}")]
    Netlink {
        op: String,
        #[source]
        source: std::io::Error,
    },
    #[error("netlink: {0}")]
    Protocol(String),
    #[error("{op}: {source}")]
    Io {
        op: String,
        #[source]
        source: std::io::Error,
    },
    #[error("nft: {0}")]
    Nft(String),
}

fn in_netns(netns: &Option<String>) -> String {
    netns
        .as_ref()
        .map(|n| format!(" in network namespace {n}"))
        .unwrap_or_default()
}

/// Runs blocking host work (these calls, a cgroup removal that waits for
/// killed tasks) on tokio's blocking pool, so the reactor keeps serving.
pub async fn blocking<T, F>(f: F) -> T
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + 'static,
{
    match tokio::task::spawn_blocking(f).await {
        Ok(v) => v,
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(e) => panic!("blocking host work cancelled: {e}"),
    }
}

/// The link called `name` (in the host's namespace when `netns` is None).
pub fn link(name: &str, netns: Option<&str>) -> Result<Option<Link>, HostnetError> {
    names::check_ifname(name)?;
    netns::run(netns, || Rtnl::open()?.link(name))
}

/// Deletes the link called `name`; nothing when there is none.
pub fn delete_link(name: &str, netns: Option<&str>) -> Result<(), HostnetError> {
    names::check_ifname(name)?;
    netns::run(netns, || {
        let mut nl = Rtnl::open()?;
        match nl.link(name)? {
            Some(l) => nl.delete(l.index),
            None => Ok(()),
        }
    })
}

/// Creates the bridge `name` if missing, gives it `address` (ip, prefix
/// length) if it lacks it, and brings it up. Idempotent, and safe against
/// another daemon creating the same bridge at the same time.
pub fn ensure_bridge(
    name: &str,
    address: Option<(Ipv4Addr, u8)>,
    netns: Option<&str>,
) -> Result<(), HostnetError> {
    names::check_ifname(name)?;
    netns::run(netns, || {
        let mut nl = Rtnl::open()?;
        let br = match nl.link(name)? {
            Some(l) => l,
            None => {
                if let Err(e) = nl.add_bridge(name) {
                    if !is_errno(&e, libc::EEXIST) {
                        return Err(e);
                    }
                }
                nl.link(name)?
                    .ok_or_else(|| no_link("bridge", name, netns))?
            }
        };
        if let Some((ip, prefix)) = address {
            if !nl.addresses(br.index)?.contains(&(ip, prefix)) {
                if let Err(e) = nl.add_address(br.index, ip, prefix) {
                    if !is_errno(&e, libc::EEXIST) {
                        return Err(e);
                    }
                }
            }
        }
        nl.set_up(br.index, None)
    })
}

/// The names of the links enslaved to `bridge` (empty when it does not exist).
pub fn bridge_ports(bridge: &str, netns: Option<&str>) -> Result<Vec<String>, HostnetError> {
    names::check_ifname(bridge)?;
    netns::run(netns, || {
        let mut nl = Rtnl::open()?;
        let Some(br) = nl.link(bridge)? else {
            return Ok(Vec::new());
        };
        Ok(nl
            .links()?
            .into_iter()
            .filter(|l| l.master == Some(br.index))
            .map(|l| l.name)
            .collect())
    })
}

pub(crate) fn is_errno(e: &HostnetError, errno: i32) -> bool {
    matches!(e, HostnetError::Netlink { source, .. } if source.raw_os_error() == Some(errno))
}

pub(crate) fn no_link(what: &'static str, name: &str, netns: Option<&str>) -> HostnetError {
    HostnetError::NoSuchLink {
        what,
        name: name.to_string(),
        netns: netns.map(str::to_string),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// On a one-thread runtime, work handed to `blocking` can wait for a task
    /// of that runtime: it would wait out its bound if it ran on the reactor.
    #[test]
    fn blocking_work_leaves_the_reactor_free() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let (tx, rx) = std::sync::mpsc::channel::<()>();
            let work = blocking(move || rx.recv_timeout(Duration::from_secs(60)).is_ok());
            tokio::spawn(async move { tx.send(()).unwrap() });
            assert!(work.await, "the reactor ran the task while the work waited");
        });
    }
}

//! A service pool behind the shared port: a pool route's rows reach a
//! loopback door here; each connection to it is one allocation of the
//! route's program under the route's user (`crate::pools::door`).

use super::doors::Doors;
use crate::manager::Manager;
use bulkhead_store::PoolTarget;
use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Weak;
use std::time::Duration;
use tokio::net::TcpListener;

#[derive(Default)]
pub(super) struct PoolDoors {
    doors: Doors<PoolTarget>,
}

impl PoolDoors {
    /// The loopback address serving `t`, made on first use.
    pub fn target(&self, m: &Weak<Manager>, t: &PoolTarget) -> std::io::Result<SocketAddr> {
        self.doors
            .target(t, |l| tokio::spawn(accept_loop(l, m.clone(), t.clone())))
    }

    /// Drops the doors of routes removed.
    pub fn retain(&self, keep: &HashSet<PoolTarget>) {
        self.doors.retain(keep);
    }
}

async fn accept_loop(l: TcpListener, m: Weak<Manager>, t: PoolTarget) {
    loop {
        let Ok((s, _)) = l.accept().await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let Some(m) = m.upgrade() else { return };
        tokio::spawn(crate::pools::door::serve(m, s, t.clone()));
    }
}

//! Keeps the proxy's table in step with the store: a pure function from the
//! routes and the partition records to a portshare [`Config`], applied with
//! `Server::reload` only when it changed (a reload swaps the table
//! atomically; open connections keep the rows they were routed with, so a
//! change never drops one).

use super::routes::{route_state, RouteState};
use crate::manager::Manager;
use bulkhead_portshare::proxy_protocol::Version;
use bulkhead_portshare::{Config, ListenerConfig, RouteConfig};
use bulkhead_store::{ExposedRoute, PartitionRecord, PoolTarget, Scope};
use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;
use tracing::{info, warn};

/// The table the proxy should hold. A running partition's rows reach its
/// VLAN address; a hibernated one's reach `wake` (which resumes it); any
/// other state's reach `refuse` (502 at once); a pool route's reach `door`
/// (one allocation per connection). Rows of partitions that no longer
/// exist are left out (421, or the listener's default row) and returned,
/// to be removed from the store.
pub fn desired(
    listeners: &[SocketAddr],
    routes: &[ExposedRoute],
    recs: &[PartitionRecord],
    refuse: SocketAddr,
    mut wake: impl FnMut(&ExposedRoute, IpAddr) -> Option<SocketAddr>,
    mut door: impl FnMut(&PoolTarget) -> Option<SocketAddr>,
) -> (Config, Vec<String>) {
    let mut gone = Vec::new();
    let mut rows = Vec::new();
    for r in routes {
        let Ok(listen) = r.listener.parse::<SocketAddr>() else {
            continue;
        };
        // Another daemon's listener: its table, not this one's.
        if !listeners.contains(&listen) {
            continue;
        }
        if let Some(t) = &r.pool {
            // A PROXY header ties the door's connection to one client: the
            // proxy then never hands it to another (one allocation each).
            rows.push(RouteConfig {
                listen,
                domain: r.domain.clone(),
                target: door(t).unwrap_or(refuse).to_string(),
                proxy_protocol: Some(Version::V2),
                max_connections: None,
            });
            continue;
        }
        let Some(rec) = recs.iter().find(|p| p.name == r.partition) else {
            if !gone.contains(&r.partition) {
                gone.push(r.partition.clone());
            }
            continue;
        };
        let target = match route_state(rec) {
            (RouteState::Serving, Some(ip)) => SocketAddr::new(ip, r.port),
            (RouteState::Waking, Some(ip)) => wake(r, ip).unwrap_or(refuse),
            _ => refuse,
        };
        rows.push(RouteConfig {
            listen,
            domain: r.domain.clone(),
            target: target.to_string(),
            proxy_protocol: r.proxy_protocol.then_some(Version::V2),
            max_connections: None,
        });
    }
    let config = Config {
        listeners: listeners.iter().map(|l| ListenerConfig::new(*l)).collect(),
        routes: rows,
        ..Default::default()
    };
    (config, gone)
}

/// Starts the task that rebuilds the table when kicked and every
/// `refresh_ms`; it ends with the manager.
pub fn spawn(m: &Arc<Manager>) {
    if m.expose.server().is_none() {
        return;
    }
    let weak = Arc::downgrade(m);
    let kick = m.expose.kick.clone();
    let every = Duration::from_millis(m.expose.config().refresh_ms.max(10));
    tokio::spawn(async move {
        let mut applied: Option<Config> = None;
        loop {
            {
                let Some(m) = weak.upgrade() else { break };
                if let Err(e) = once(&m, &mut applied).await {
                    warn!(error = %e, "shared port: table not refreshed");
                }
            }
            tokio::select! {
                _ = kick.notified() => {}
                _ = tokio::time::sleep(every) => {}
            }
        }
    });
}

async fn once(m: &Arc<Manager>, applied: &mut Option<Config>) -> anyhow::Result<()> {
    let ex = &m.expose;
    let (Some(server), Some((_, refuse))) = (ex.server(), &ex.refuse) else {
        return Ok(());
    };
    // Routes first: a partition they name was there when it was exposed, so
    // a record missing from the later listing was destroyed since.
    let routes = m.store().routes().await?;
    let recs = if routes.is_empty() {
        Vec::new()
    } else {
        m.store().list(Scope::All).await?
    };
    let weak = Arc::downgrade(m);
    let (mut waking, mut doors) = (HashSet::new(), HashSet::new());
    let wake = |r: &ExposedRoute, ip| {
        waking.insert((r.partition.clone(), r.port));
        ex.wakers
            .target(&weak, &r.partition, ip, r.port)
            .map_err(|e| warn!(partition = %r.partition, error = %e, "no waker; 502 until it runs"))
            .ok()
    };
    let door = |t: &PoolTarget| {
        doors.insert(t.clone());
        ex.pool_doors
            .target(&weak, t)
            .map_err(|e| warn!(program = %t.program, error = %e, "no pool door; 502"))
            .ok()
    };
    let (config, gone) = desired(&ex.cfg.listeners, &routes, &recs, *refuse, wake, door);
    ex.wakers.retain(&waking);
    ex.pool_doors.retain(&doors);
    for p in gone {
        let removed = m.store().route_remove(&p, None).await?;
        info!(partition = %p, routes = removed.len(), "destroyed partition's routes removed");
    }
    if applied.as_ref() != Some(&config) {
        server.reload(config.clone()).await?;
        info!(rows = config.routes.len(), "shared port table updated");
        *applied = Some(config);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use bulkhead_store::{NetRecord, PartitionState};

    fn rec(name: &str, state: PartitionState, ip: Option<&str>) -> PartitionRecord {
        let mut r = bulkhead_store::conformance::record(name);
        r.state = state;
        r.net = ip.map(|ip| NetRecord {
            ip: format!("{ip}/24"),
            mac: "52:54:00:00:00:01".into(),
        });
        r
    }

    fn route(l: &str, d: &str, p: &str) -> ExposedRoute {
        bulkhead_store::conformance::routes::route(l, d, p, 8080)
    }

    fn pool_route() -> ExposedRoute {
        let mut r = route("127.0.0.1:8000", "pool.example.org", "pool:echo");
        r.pool = Some(PoolTarget {
            program: "echo".into(),
            user: "alice".into(),
            wait_ms: 100,
        });
        r
    }

    #[test]
    fn rows_follow_the_partitions_state() {
        let l: SocketAddr = "127.0.0.1:8000".parse().unwrap();
        let refuse: SocketAddr = "127.0.0.1:9".parse().unwrap();
        let waker: SocketAddr = "127.0.0.1:10".parse().unwrap();
        let routes = [
            route("127.0.0.1:8000", "a.example.org", "a"),
            route("127.0.0.1:8000", "b.example.org", "b"),
            route("127.0.0.1:8000", "h.example.org", "h"),
            route("127.0.0.1:8000", "gone.example.org", "gone"),
            route("127.0.0.1:7000", "other.example.org", "a"),
            pool_route(),
        ];
        let recs = [
            rec("a", PartitionState::Running, Some("10.1.0.2")),
            rec("b", PartitionState::Stopped, Some("10.1.0.3")),
            rec("h", PartitionState::Hibernated, Some("10.1.0.4")),
        ];
        let mut woken = Vec::new();
        let door: SocketAddr = "127.0.0.1:11".parse().unwrap();
        let mut doors = Vec::new();
        let (cfg, gone) = desired(
            &[l],
            &routes,
            &recs,
            refuse,
            |r, ip| {
                woken.push((r.partition.clone(), ip));
                Some(waker)
            },
            |t| {
                doors.push(t.clone());
                Some(door)
            },
        );
        let t: Vec<(&str, &str)> = cfg
            .routes
            .iter()
            .map(|r| (r.domain.as_str(), r.target.as_str()))
            .collect();
        assert_eq!(
            t,
            [
                ("a.example.org", "10.1.0.2:8080"),
                ("b.example.org", "127.0.0.1:9"),
                ("h.example.org", "127.0.0.1:10"),
                ("pool.example.org", "127.0.0.1:11"),
            ]
        );
        // A pool route is no partition: never "gone"; its door gets a
        // PROXY header (so the proxy never shares its connections).
        assert_eq!(gone, ["gone"]);
        assert_eq!(doors, [routes[5].pool.clone().unwrap()]);
        assert_eq!(cfg.routes[3].proxy_protocol, Some(Version::V2));
        assert_eq!(cfg.routes[0].proxy_protocol, None);
        assert_eq!(woken, [("h".to_string(), "10.1.0.4".parse().unwrap())]);
        assert_eq!(cfg.listeners.len(), 1);
        // The table portshare builds from it is valid.
        let stats = bulkhead_portshare::metrics::Stats::default();
        bulkhead_portshare::Table::build(cfg, &stats).unwrap();
    }
}

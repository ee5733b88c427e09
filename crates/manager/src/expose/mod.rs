//! The shared port driven by the manager (issue 15): `partition expose` /
//! `unexpose` / `expose list`, and a portshare [`Server`] run in-process on
//! `[portshare] listeners`, whose table [`sync`] keeps in step with the
//! routes in the store and the partitions' states.
//!
//! Every daemon routes to every partition of the store (any host) whose VLAN
//! address it can reach: its table is a function of the store, so a partition
//! that restarts, gets a new address or resumes on another host is followed
//! by every daemon on its next refresh, with nothing sent between hosts.

mod doors;
pub(crate) mod openapi;
mod pool_route;
mod routes;
mod sync;
mod wake;

pub use routes::{
    ExposePoolRequest, ExposeRequest, Exposed, RouteState, RouteView, Unexposed,
    DEFAULT_POOL_WAIT_MS,
};

use bulkhead_portshare::{ListenerConfig, Server};
use serde::Deserialize;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;

/// `[portshare]`: the shared port in bulkheadd. No listeners: the feature is off.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PortshareConfig {
    /// Shared listeners, e.g. `["0.0.0.0:80", "0.0.0.0:443"]` (TLS by SNI
    /// and HTTP by Host on each).
    pub listeners: Vec<SocketAddr>,
    /// How often the table is rebuilt from the store when nothing here
    /// changed it (a partition started or moved by another daemon).
    pub refresh_ms: u64,
    /// Scale to zero: connections held at once while hibernated partitions
    /// resume; more are answered 503.
    pub wake_max_held: usize,
    /// How long a held connection waits for the partition's server, then 503.
    pub wake_timeout_secs: u64,
}

impl Default for PortshareConfig {
    fn default() -> Self {
        Self {
            listeners: Vec::new(),
            refresh_ms: 250,
            wake_max_held: 64,
            wake_timeout_secs: 120,
        }
    }
}

/// Typed commands of the expose API (one arm of `ApiRequest`).
#[derive(Debug, Clone, PartialEq)]
pub enum ExposeCommand {
    /// `POST /v1/partitions/{name}/routes`.
    Expose { name: String, req: ExposeRequest },
    /// `DELETE /v1/partitions/{name}/routes[?domain=D]`.
    Unexpose {
        name: String,
        domain: Option<String>,
    },
    /// `POST /v1/programs/{program}/routes`.
    ExposePool {
        program: String,
        req: ExposePoolRequest,
    },
    /// `DELETE /v1/programs/{program}/routes[?domain=D]`.
    UnexposePool {
        program: String,
        domain: Option<String>,
    },
    /// `GET /v1/routes`.
    List,
}

/// Replies of the expose API (one arm of `ApiReply`).
#[derive(Debug, Clone, serde::Serialize)]
#[serde(untagged)]
pub enum ExposeReply {
    Exposed(Exposed),
    Unexposed(Unexposed),
    Routes(Vec<RouteView>),
}

/// The daemon's shared port: the proxy (when configured), what wakes
/// hibernated partitions, and the refresh trigger.
pub struct Exposer {
    cfg: PortshareConfig,
    server: Option<Arc<Server>>,
    kick: Arc<Notify>,
    /// A loopback port bound but never listening: connecting is refused at
    /// once, so a stopped partition's domain answers 502 without waiting for
    /// a connect timeout towards an address no guest holds.
    refuse: Option<(tokio::net::TcpSocket, SocketAddr)>,
    wakers: wake::Wakers,
    pool_doors: pool_route::PoolDoors,
}

impl Exposer {
    /// Binds the listeners (a bind failure stops the daemon's start).
    pub async fn start(cfg: &PortshareConfig) -> anyhow::Result<Self> {
        let wakers = wake::Wakers::new(
            cfg.wake_max_held,
            Duration::from_secs(cfg.wake_timeout_secs),
        );
        let mut me = Self {
            cfg: cfg.clone(),
            server: None,
            kick: Arc::new(Notify::new()),
            refuse: None,
            wakers,
            pool_doors: Default::default(),
        };
        if cfg.listeners.is_empty() {
            return Ok(me);
        }
        let config = bulkhead_portshare::Config {
            listeners: cfg
                .listeners
                .iter()
                .map(|l| ListenerConfig::new(*l))
                .collect(),
            ..Default::default()
        };
        me.server = Some(
            Server::start(config)
                .await
                .map_err(|e| anyhow::anyhow!("[portshare] listeners: {e:#}"))?,
        );
        let sock = tokio::net::TcpSocket::new_v4()?;
        sock.bind(SocketAddr::from(([127, 0, 0, 1], 0)))?;
        let addr = sock.local_addr()?;
        me.refuse = Some((sock, addr));
        Ok(me)
    }

    pub fn config(&self) -> &PortshareConfig {
        &self.cfg
    }

    /// The proxy, when listeners are configured.
    pub fn server(&self) -> Option<&Arc<Server>> {
        self.server.as_ref()
    }

    /// Asks for a table rebuild now (after a route change here).
    pub fn kick(&self) {
        self.kick.notify_one();
    }
}

pub(crate) use doors::http_error;
pub use routes::{handle, normalize_domain};
pub use sync::spawn as spawn_sync;

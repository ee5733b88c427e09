//! Routes of the shared port (issue 15): a row `(listener, domain) →
//! (partition, virtual port)` that the manager turns into the portshare
//! table while the partition runs. One partition may hold many rows; a
//! `(listener, domain)` pair belongs to at most one partition, decided in
//! the write's own transaction by every backend. A row may instead target a
//! service pool's program (`pool`): its holder is then `pool:PROGRAM`.

use serde::{Deserialize, Serialize};

/// One exposed route, as stored and as the API shows it.
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExposedRoute {
    /// The shared listener, `ADDR:PORT` as configured in `[portshare] listeners`.
    pub listener: String,
    /// `app.example.org`, or `*.example.org` for every name under it.
    pub domain: String,
    pub partition: String,
    /// The partition's virtual port (where its server listens).
    pub port: u16,
    /// Send a PROXY v2 header first, so the server sees the real client.
    #[serde(default)]
    pub proxy_protocol: bool,
    /// A service pool's program instead of one partition: each connection
    /// is one allocation under `user`. `partition` is then `pool:PROGRAM`
    /// (no partition name holds a `:`) and `port` is unused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool: Option<PoolTarget>,
}

/// Where a pool route's connections go (see [`ExposedRoute::pool`]).
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoolTarget {
    /// The program a pool serves.
    pub program: String,
    /// The pool user each connection's allocation is made under (its
    /// alternate id); no token is asked: the route's creator vouches.
    pub user: String,
    /// How long a connection waits for an idle partition, then 503.
    pub wait_ms: u32,
}

impl ExposedRoute {
    /// Key order of every listing: by listener, then domain.
    pub fn key(&self) -> (&str, &str) {
        (&self.listener, &self.domain)
    }

    /// Whether a removal of `partition`'s routes (those of `domain` only,
    /// or all) takes this one.
    pub fn matches(&self, partition: &str, domain: Option<&str>) -> bool {
        self.partition == partition && domain.is_none_or(|d| d == self.domain)
    }

    /// The refusal every backend gives when `held` (as stored) stops `self`.
    pub fn taken_by(&self, held: &ExposedRoute) -> Option<crate::StoreError> {
        (held.partition != self.partition).then(|| crate::StoreError::RouteTaken {
            listener: self.listener.clone(),
            domain: self.domain.clone(),
            holder: held.partition.clone(),
        })
    }
}

pub(crate) fn unsupported(op: &'static str) -> crate::StoreError {
    crate::StoreError::Backend {
        op,
        message: "this store keeps no routes".into(),
    }
}

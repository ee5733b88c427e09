//! Routes of the shared port (issue 15): a row `(listener, domain) →
//! (partition, virtual port)` that the manager turns into the portshare
//! table while the partition runs. One partition may hold many rows; a
//! `(listener, domain)` pair belongs to at most one partition, decided in
//! the write's own transaction by every backend.

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

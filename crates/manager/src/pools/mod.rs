//! Service pools in bulkheadd (issue 17): the pool statement expanded into
//! ordinary managed partitions `NAME-1..N`, each started with its program and
//! idle once the program answers on its port; the users who may allocate.
//!
//! The decisions are `bulkhead_pool::Allocator`'s (sans I/O); this module
//! keeps it behind a mutex, carries out the `Action`s it returns (`driver`)
//! through the manager's own typed API, as an administrator would, and keeps
//! the statements and users in the store (`PoolKind`).

pub mod api;
pub mod cli;
pub(crate) mod door;
mod driver;
pub mod gateway;
pub(crate) mod metrics;
mod session;
mod template;
pub(crate) mod tls;
pub mod types;
mod users;

use crate::api::ApiError;
use crate::manager::Manager;
use bulkhead_pool::{Allocator, PoolSpec};
use bulkhead_store::PoolKind;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use types::*;

/// `[pool]` of bulkheadd's configuration.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PoolConfig {
    /// Where the gateway listens (`ADDR:PORT`); no gateway when absent.
    pub gateway: Option<std::net::SocketAddr>,
    /// PEM certificate chain and key: with both the gateway speaks TLS.
    pub gateway_cert: Option<std::path::PathBuf>,
    pub gateway_key: Option<std::path::PathBuf>,
    /// A session with no DATA either way for this long ends (ERROR
    /// `idle-timeout`; the cleanup runs).
    pub idle_timeout_ms: u64,
}

impl Default for PoolConfig {
    fn default() -> Self {
        Self {
            gateway: None,
            gateway_cert: None,
            gateway_key: None,
            idle_timeout_ms: 600_000,
        }
    }
}

/// The pools of this daemon: the allocator and the statements it was given.
#[derive(Default)]
pub struct Pools {
    alloc: Mutex<Allocator>,
    /// The gateway's connections waiting for answers and holding sessions.
    pub(crate) waiting: gateway::Waiting,
    statements: Mutex<HashMap<String, Stored>>,
    /// One action at a time per partition (a boot and a destroy of one
    /// primary id never interleave).
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// Counted by the gateway, exported by `crate::metrics`.
    pub(crate) metrics: metrics::PoolMetrics,
}

/// A statement and the store revision it was read or written at.
#[derive(Clone)]
struct Stored {
    statement: CreatePool,
    revision: u64,
}

impl std::fmt::Debug for Pools {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pools").finish_non_exhaustive()
    }
}

/// Longest pool name: `NAME-NN` must stay a valid partition name (48).
pub const MAX_POOL_NAME: usize = 40;
/// Most partitions one pool may have.
pub const MAX_POOL_SIZE: u32 = 64;

impl Pools {
    /// Sets the metrics' gauges from the allocator (at each scrape).
    pub(crate) fn refresh_metrics(&self) {
        self.metrics.refresh(&self.alloc.lock().unwrap());
    }

    fn statement(&self, pool: &str) -> Option<CreatePool> {
        self.statements
            .lock()
            .unwrap()
            .get(pool)
            .map(|s| s.statement.clone())
    }

    fn lock_of(&self, partition: &str) -> Arc<tokio::sync::Mutex<()>> {
        self.locks
            .lock()
            .unwrap()
            .entry(partition.to_string())
            .or_default()
            .clone()
    }

    fn view(&self, pool: &str) -> Option<PoolView> {
        let statement = self.statement(pool)?;
        let alloc = self.alloc.lock().unwrap();
        let partitions = alloc
            .partitions_of(pool)
            .map(|p| PoolPartitionView {
                primary_id: p.primary_id.clone(),
                state: p.state.as_str().to_string(),
                alternate_id: p.alternate_id.clone(),
                session: p.state.session().map(|s| s.0),
                sessions_served: p.sessions_served,
            })
            .collect();
        Some(PoolView {
            statement,
            partitions,
        })
    }
}

fn spec_of(c: &CreatePool) -> PoolSpec {
    let max = c.max.unwrap_or(c.size);
    PoolSpec {
        name: c.name.clone(),
        program: c.program.clone(),
        size: c.size,
        max,
        // Above its size a pool keeps one spare starting for the next request.
        min_idle: u32::from(max > c.size),
        recycle_after: c.recycle_after.or(c.untrusted.then_some(1)),
    }
}

/// Refuses a statement before anything acts on it.
fn check(c: &CreatePool) -> Result<(), ApiError> {
    let bad = |m: String| Err(ApiError::BadRequest(m));
    if c.name.len() > MAX_POOL_NAME || !bulkhead_engine::spec::valid_name(&c.name) {
        return bad(format!(
            "pool name {:?} must be 1-{MAX_POOL_NAME} characters of a-z, 0-9 and '-', not starting with '-'",
            c.name
        ));
    }
    if !bulkhead_pool_proto::check_name(&c.program) {
        return bad(format!(
            "program {:?} must be 1-64 of [A-Za-z0-9._@-], the first a letter or digit",
            c.program
        ));
    }
    let max = c.max.unwrap_or(c.size);
    if c.size == 0 || c.size > max || max > MAX_POOL_SIZE {
        return bad(format!("need 1 <= size <= max <= {MAX_POOL_SIZE}"));
    }
    if c.port == 0 {
        return bad("port must be 1-65535".into());
    }
    if c.app.trim().is_empty() || c.app.len() > 4096 {
        return bad("app must be a command of 1-4096 bytes".into());
    }
    if c.cleanup.as_ref().is_some_and(|s| s.len() > 4096) {
        return bad("cleanup must be at most 4096 bytes".into());
    }
    if c.recycle_after == Some(0) {
        return bad("recycle_after must be at least 1".into());
    }
    Ok(())
}

fn body(c: &CreatePool) -> String {
    serde_json::to_string(c).expect("a statement serialises")
}

/// The pool named, or 404.
fn not_found(pool: &str) -> ApiError {
    ApiError::NoDevice(format!("pool {pool:?} not found"))
}

impl Manager {
    /// Defines a pool: stores the statement, then boots its partitions in
    /// the background (`pool show` follows them to idle).
    pub(crate) async fn pool_create(self: &Arc<Self>, c: CreatePool) -> Result<PoolView, ApiError> {
        check(&c)?;
        // Partition names the pool would take must be free of other partitions.
        let spec = spec_of(&c);
        for i in 1..=spec.max {
            let id = bulkhead_pool::primary_id(&c.name, i);
            if self.store().get(&id).await?.is_some() {
                return Err(ApiError::Conflict(format!(
                    "partition {id:?} exists; pool {:?} would use that name",
                    c.name
                )));
            }
        }
        let revision = match self
            .store()
            .pool_doc_put(PoolKind::Pool, &c.name, 0, &body(&c))
            .await
        {
            Ok(r) => r,
            Err(bulkhead_store::StoreError::Conflict { .. }) => {
                return Err(ApiError::AlreadyExists(format!("pool {}", c.name)))
            }
            Err(e) => return Err(e.into()),
        };
        self.pool_adopt(c.clone(), revision)?;
        Ok(self.pools.view(&c.name).expect("just added"))
    }

    /// Gives a stored statement to the allocator and carries out its boots:
    /// partitions already running (a daemon restart) are adopted.
    fn pool_adopt(self: &Arc<Self>, c: CreatePool, revision: u64) -> Result<(), ApiError> {
        let actions = {
            let mut alloc = self.pools.alloc.lock().unwrap();
            alloc
                .add_pool(spec_of(&c))
                .map_err(|e| ApiError::BadRequest(e.to_string()))?
        };
        self.pools.statements.lock().unwrap().insert(
            c.name.clone(),
            Stored {
                statement: c,
                revision,
            },
        );
        driver::carry_out(self, actions);
        Ok(())
    }

    /// Re-adopts the pools in the store (after the partitions were recovered)
    /// and starts watching their idle partitions.
    pub(crate) async fn pools_recover(self: &Arc<Self>) {
        driver::watch(self);
        let docs = match self.store().pool_doc_list(PoolKind::Pool).await {
            Ok(d) => d,
            Err(e) => {
                tracing::warn!(error = %e, "reading the pool statements");
                return;
            }
        };
        for d in docs {
            match serde_json::from_str::<CreatePool>(&d.body) {
                Ok(c) => {
                    if let Err(e) = self.pool_adopt(c, d.revision) {
                        tracing::warn!(pool = %d.name, error = %e, "re-adopting pool");
                    }
                }
                Err(e) => tracing::warn!(pool = %d.name, error = %e, "corrupt pool statement"),
            }
        }
    }

    pub(crate) fn pool_list(&self) -> Vec<PoolView> {
        let mut names: Vec<String> = self
            .pools
            .statements
            .lock()
            .unwrap()
            .keys()
            .cloned()
            .collect();
        names.sort();
        names.iter().filter_map(|n| self.pools.view(n)).collect()
    }

    pub(crate) fn pool_show(&self, name: &str) -> Result<PoolView, ApiError> {
        self.pools.view(name).ok_or_else(|| not_found(name))
    }

    pub(crate) async fn pool_resize(
        self: &Arc<Self>,
        name: &str,
        r: ResizePool,
    ) -> Result<PoolView, ApiError> {
        let stored = self
            .pools
            .statements
            .lock()
            .unwrap()
            .get(name)
            .cloned()
            .ok_or_else(|| not_found(name))?;
        let mut c = stored.statement.clone();
        c.size = r.size;
        c.max = Some(r.max.unwrap_or(r.size));
        check(&c)?;
        let revision = self
            .store()
            .pool_doc_put(PoolKind::Pool, name, stored.revision, &body(&c))
            .await?;
        let actions = self
            .pools
            .alloc
            .lock()
            .unwrap()
            .resize(name, c.size, c.max.unwrap_or(c.size))
            .map_err(|e| ApiError::BadRequest(e.to_string()))?;
        self.pools.statements.lock().unwrap().insert(
            name.to_string(),
            Stored {
                statement: c,
                revision,
            },
        );
        driver::carry_out(self, actions);
        self.pool_show(name)
    }

    /// Destroys a pool and its partitions; with sessions open only `force`
    /// does (they end with ERROR `shutdown`).
    pub(crate) async fn pool_destroy(
        self: &Arc<Self>,
        name: &str,
        force: bool,
    ) -> Result<PoolDestroyed, ApiError> {
        let view = self.pool_show(name)?;
        let open: Vec<&str> = view
            .partitions
            .iter()
            .filter(|p| p.session.is_some())
            .map(|p| p.primary_id.as_str())
            .collect();
        if !open.is_empty() && !force {
            return Err(ApiError::Conflict(format!(
                "pool {name:?} has sessions open on {}; --force ends them",
                open.join(", ")
            )));
        }
        let revision = self
            .pools
            .statements
            .lock()
            .unwrap()
            .get(name)
            .map(|s| s.revision)
            .ok_or_else(|| not_found(name))?;
        // The statement goes first: a restart in between does not re-adopt it.
        self.store()
            .pool_doc_delete(PoolKind::Pool, name, revision)
            .await?;
        self.pools.statements.lock().unwrap().remove(name);
        let actions = self
            .pools
            .alloc
            .lock()
            .unwrap()
            .remove_pool(name)
            .map_err(|_| not_found(name))?;
        let partitions = driver::carry_out_now(self, actions).await;
        template::discard(self, name).await;
        Ok(PoolDestroyed {
            destroyed: name.to_string(),
            partitions,
        })
    }
}

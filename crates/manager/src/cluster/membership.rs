//! Registering this daemon as a member, and keeping it up.

use crate::manager::Manager;
use bulkhead_store::HostRecord;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The record this daemon registers: its API endpoint (and the certificate
/// fingerprint forwarding hosts pin), underlay address and capacity.
pub fn record(m: &Manager, tls_fingerprint: Option<String>) -> HostRecord {
    let cfg = m.config();
    let advertise = cfg.cluster.advertise.clone().or_else(|| {
        cfg.api
            .tcp
            .filter(|a| !a.ip().is_unspecified())
            .map(|a| a.to_string())
    });
    let c = m.capacity();
    HostRecord {
        id: m.host_id().to_string(),
        name: super::host_name(m),
        endpoints: advertise.into_iter().collect(),
        tls_fingerprint,
        underlay: cfg.cluster.underlay.map(|u| u.to_string()),
        cpus: c.host_cpus,
        memory_mib: c.host_memory_mib,
        started_at: bulkhead_store::now_ms(),
        version: env!("CARGO_PKG_VERSION").into(),
    }
}

/// Registers the daemon (refused, and the daemon not started, when another
/// host holds its name) and returns the task that renews the membership
/// and keeps the VXLAN forwarding entries in step with the members.
pub async fn start(
    m: Arc<Manager>,
    tls_fingerprint: Option<String>,
) -> anyhow::Result<impl std::future::Future<Output = ()>> {
    let rec = record(&m, tls_fingerprint);
    let ttl = Duration::from_millis(m.config().cluster.lease_ms);
    let sent = Instant::now();
    m.store()
        .register_host(&rec, ttl)
        .await
        .map_err(|e| anyhow::anyhow!("joining the cluster as {:?}: {e}", rec.name))?;
    // Fencing (issue 12): the lease's age is counted from when the call
    // that made it was sent, never later than etcd's own count.
    m.lease_renewed(sent);
    // Other hosts to fail over to exist only on etcd: with SQLite (one
    // host) a slow database must not fence the host, and HA is inert.
    if !m.config().cluster.etcd.is_empty() {
        m.spawn_self_fence();
        m.spawn_orchestrator();
    }
    tracing::info!(name = %rec.name, id = %rec.id, endpoints = ?rec.endpoints, "cluster member registered");
    let mut vxlan = super::vxlan::Sync::new(&m);
    vxlan.step(&m).await;
    // The VXLAN remotes follow the members on a loop of their own: its
    // store read must never delay a renewal (the self-fence counts those).
    let vm = m.clone();
    let follow_members = async move {
        let mut tick = tokio::time::interval(ttl / 3);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            vxlan.step(&vm).await;
        }
    };
    let renew = async move {
        // At least three renewals per ttl, and one every 500 ms: a renewal
        // lost to an etcd leader election (1-2 s) is followed by another
        // well before the self-fence deadline; after a failure, tries come
        // faster still.
        let every = (ttl / 3).min(Duration::from_millis(500));
        let soon = Duration::from_millis(200).min(ttl / 6);
        let attempt = attempt_budget(&m);
        let mut wait = every;
        loop {
            tokio::time::sleep(wait).await;
            let sent = Instant::now();
            wait = every;
            let Ok(renewed) = tokio::time::timeout(attempt, m.store().renew_host(&rec.id)).await
            else {
                // A request stuck on a member that died: the next attempt
                // goes out while the self-fence deadline still allows it.
                tracing::warn!(
                    budget_ms = attempt.as_millis() as u64,
                    "renewing cluster membership took too long; trying again"
                );
                wait = soon;
                continue;
            };
            match renewed {
                Ok(()) => {
                    m.lease_renewed(sent);
                    // Renewed after a fence (the alive key is made again on
                    // a fresh lease): the same clean-up as a registration.
                    if m.fenced() {
                        m.rejoin().await;
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "renewing cluster membership; registering again");
                    let sent = Instant::now();
                    match m.store().register_host(&rec, ttl).await {
                        Ok(()) => {
                            m.lease_renewed(sent);
                            // The lease may have lapsed: claims may have moved
                            // partitions away. Clean up; restart nothing.
                            m.rejoin().await;
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "registering again");
                            wait = soon;
                        }
                    }
                }
            }
        }
    };
    Ok(async move {
        tokio::join!(renew, follow_members);
    })
}

/// How long one renewal may take before it is abandoned for a new one: a
/// third of the self-fence deadline, so that a request stuck on an etcd
/// member that died (it waits for the store's whole timeout otherwise)
/// leaves room for two more tries before the host fences itself.
fn attempt_budget(m: &Manager) -> Duration {
    let t = crate::ha::Timings::of(&m.config().cluster);
    let store = Duration::from_millis(m.config().cluster.timeout_ms);
    (t.self_fence / 3).clamp(
        Duration::from_millis(200),
        store.max(Duration::from_millis(200)),
    )
}

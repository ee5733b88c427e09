//! Registering this daemon as a member, and keeping it up.

use crate::manager::Manager;
use bulkhead_store::HostRecord;
use std::sync::Arc;
use std::time::Duration;

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
    m.store()
        .register_host(&rec, ttl)
        .await
        .map_err(|e| anyhow::anyhow!("joining the cluster as {:?}: {e}", rec.name))?;
    tracing::info!(name = %rec.name, id = %rec.id, endpoints = ?rec.endpoints, "cluster member registered");
    let mut vxlan = super::vxlan::Sync::new(&m);
    vxlan.step(&m).await;
    Ok(async move {
        // Three renewals per ttl: one lost or slow renewal does not lose the host.
        let mut tick = tokio::time::interval(ttl / 3);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if let Err(e) = m.store().renew_host(&rec.id).await {
                tracing::warn!(error = %e, "renewing cluster membership; registering again");
                if let Err(e) = m.store().register_host(&rec, ttl).await {
                    tracing::warn!(error = %e, "registering again");
                }
            }
            vxlan.step(&m).await;
        }
    })
}

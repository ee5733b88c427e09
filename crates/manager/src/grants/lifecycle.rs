//! Grants and the partitions' lives: a partition that stops or is destroyed
//! ends what it gave and held; expiry; and the reconciliation of the table
//! with the devices after the daemon starts (`reconcile::plan`).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Weak};

use bulkhead_grant::{Actor, GrantError, PartitionId, ResourceKind, Timestamp};
use bulkhead_store::now_ms;
use serde_json::json;

use super::ops::{events_json, take_unmaps};
use super::reconcile::{plan, Fix, Observed};
use super::{region_device, region_file, region_key, Grants, Via, DEVICE_PREFIX};
use crate::manager::Manager;

impl Manager {
    /// `name`'s QEMU ended (or it is destroyed): every grant of a resource it
    /// owns, every grant it gave and every grant it held ends, and the other
    /// holders are unmapped; its own devices went with its QEMU. On destroy
    /// its regions are removed and their files deleted.
    pub(crate) async fn grants_partition_ended(self: &Arc<Self>, name: &str, destroyed: bool) {
        let Ok(p) = name.parse::<PartitionId>() else {
            return;
        };
        let mut st = self.grants.state.lock().await;
        let st = &mut *st;
        let before = st.clone();
        let files: Vec<_> = st
            .table
            .resources()
            .filter(|e| destroyed && e.resource.owner() == &p)
            .filter(|e| e.resource.id().kind == ResourceKind::Region)
            .map(|e| region_file(&self.grants.dir, &e.resource.id(), e.generation))
            .collect();
        let now = Timestamp(now_ms());
        let o = if destroyed {
            st.table.partition_destroyed(&p, now)
        } else {
            st.table.partition_stopped(&p, now)
        };
        let mut maps = take_unmaps(st, &o.effects);
        maps.retain(|m| m.partition != name);
        let own: Vec<String> = st
            .maps
            .iter()
            .filter(|(_, m)| m.partition == name)
            .map(|(k, _)| k.clone())
            .collect();
        for k in &own {
            st.maps.remove(k);
        }
        let changed = st.table != before.table || !own.is_empty();
        if !changed {
            return;
        }
        if let Err(e) = self
            .commit(st, &before, Via::Manager, events_json(&o.events))
            .await
        {
            tracing::error!(partition = name, error = %e, "recording the grants a stop ended");
            return;
        }
        for f in files {
            let _ = std::fs::remove_file(f);
        }
        let reports = self.unmap_all(maps).await;
        if !reports.is_empty() {
            let _ = self.grants.persist(st, Via::Manager, reports).await;
        }
    }

    /// Ends grants whose cookie or lifetime ran out.
    async fn grants_expire(self: &Arc<Self>) {
        let mut st = self.grants.state.lock().await;
        let st = &mut *st;
        let before = st.clone();
        let o = st.table.expire(Timestamp(now_ms()));
        if o.events.is_empty() {
            return;
        }
        let maps = take_unmaps(st, &o.effects);
        if let Err(e) = self
            .commit(st, &before, Via::Manager, events_json(&o.events))
            .await
        {
            tracing::error!(error = %e, "recording expired grants");
            return;
        }
        let reports = self.unmap_all(maps).await;
        if !reports.is_empty() {
            let _ = self.grants.persist(st, Via::Manager, reports).await;
        }
    }

    /// What each running partition has plugged in of ours: the engine's
    /// hot-plug records and QEMU's own device tree (a crash between
    /// `device_add` and the engine's record leaves a device only QEMU knows).
    async fn grants_observe(&self) -> Observed {
        let mut obs = Observed::default();
        for name in self.running_names() {
            let Some(p) = self.running(&name) else {
                continue;
            };
            let mut devices: BTreeSet<String> = p
                .hotplugged()
                .iter()
                .map(|h| h.adapter.id().to_string())
                .collect();
            if let Ok(v) = p.qmp().qom_list("/machine/peripheral").await {
                devices.extend(v.into_iter().map(|(n, _)| n));
            }
            devices.retain(|d| d.starts_with(DEVICE_PREFIX));
            obs.running.insert(name, devices);
        }
        obs
    }

    /// After the daemon starts and has re-adopted its partitions, and when a
    /// partition becomes ready (an owner started again gets its regions
    /// back): makes the table and the devices agree (see `reconcile`), and
    /// logs what it did.
    pub(crate) async fn grants_reconcile(self: &Arc<Self>) {
        // Observed under the lock: no operation plugs or unplugs meanwhile.
        let mut st = self.grants.state.lock().await;
        let st = &mut *st;
        remove_orphan_files(&self.grants, st);
        if st.table.resources().next().is_none()
            && st.table.grants().next().is_none()
            && st.maps.is_empty()
        {
            // Nothing was ever granted or created: no device can be ours.
            return;
        }
        let obs = self.grants_observe().await;
        let fixes = plan(&st.table, &st.maps, &obs);
        if fixes.is_empty() {
            return;
        }
        tracing::info!(?fixes, "grants: reconciling the table with the devices");
        let before = st.clone();
        let now = Timestamp(now_ms());
        let mut events = vec![json!({ "action": "reconciled", "fixes": fixes })];
        let mut unmaps = Vec::new();
        let mut unplugs = Vec::new();
        let mut replugs = Vec::new();
        for f in &fixes {
            match f {
                Fix::Unplug { partition, device } => unplugs.push((partition, device)),
                Fix::Stopped { partition } => {
                    let Ok(p) = partition.parse::<PartitionId>() else {
                        continue;
                    };
                    let o = st.table.partition_stopped(&p, now);
                    unmaps.extend(take_unmaps(st, &o.effects));
                    events.extend(events_json(&o.events));
                }
                Fix::End { grant } => match st.table.revoke(&Actor::Manager, *grant, now) {
                    Ok(o) => {
                        unmaps.extend(take_unmaps(st, &o.effects));
                        events.extend(events_json(&o.events));
                    }
                    // A stop above may have ended it already.
                    Err(GrantError::Ended { .. }) => {}
                    Err(e) => tracing::warn!(%grant, error = %e, "ending a grant without device"),
                },
                Fix::Forget { key } => {
                    st.maps.remove(key);
                }
                Fix::Replug { resource } => replugs.push(resource.clone()),
            }
        }
        // Mappings whose device is missing were forgotten above; of the
        // rest, only those whose device is there need unmapping.
        if let Err(e) = self.commit(st, &before, Via::Manager, events).await {
            tracing::error!(error = %e, "recording the reconciliation");
            return;
        }
        let mut reports = self.unmap_all(unmaps).await;
        for (partition, device) in unplugs {
            reports.push(self.unplug_stray(partition, device).await);
        }
        for rid in replugs {
            let Some(e) = st.table.resource(&rid) else {
                continue;
            };
            let Ok(p) = self.ready_partition(rid.owner.as_str()).await else {
                continue;
            };
            let file = region_file(&self.grants.dir, &rid, e.generation);
            let device = region_device(&rid, e.generation);
            match self.plug_and_map_region(&p, &device, &file, false).await {
                Ok(m) => {
                    st.maps.insert(region_key(&rid), m);
                    reports.push(json!({ "action": "replugged", "resource": rid.to_string() }));
                }
                Err(e) => reports.push(
                    json!({ "action": "replug_failed", "resource": rid.to_string(), "error": e.to_string() }),
                ),
            }
        }
        let _ = self.grants.persist(st, Via::Manager, reports).await;
    }

    /// A device of ours nothing accounts for: unplugged through the engine
    /// when it has a record of it, else deleted over QMP directly.
    async fn unplug_stray(&self, partition: &str, device: &str) -> serde_json::Value {
        let Some(p) = self.running(partition) else {
            return json!({ "action": "unplugged", "partition": partition, "device": device, "outcome": "gone" });
        };
        let recorded = p.hotplugged().iter().any(|h| h.adapter.id() == device);
        let r = if recorded {
            p.unplug(device, self.unplug_timeout())
                .await
                .map_err(|e| e.to_string())
        } else {
            p.qmp().device_del(device).await.map_err(|e| e.to_string())
        };
        json!({
            "action": "unplugged",
            "partition": partition,
            "device": device,
            "outcome": match r { Ok(()) => "unplugged".to_string(), Err(e) => format!("failed: {e}") },
        })
    }

    /// The next time expiry has work, if any.
    async fn grants_next_deadline(&self) -> Option<u64> {
        self.grants
            .state
            .lock()
            .await
            .table
            .next_deadline()
            .map(|t| t.0)
    }
}

/// Region files no registered region names (a crash between creating the
/// file and committing, or a destroy that did not finish).
fn remove_orphan_files(g: &Grants, st: &super::State) {
    let known: BTreeMap<std::path::PathBuf, ()> = st
        .table
        .resources()
        .map(|e| (region_file(&g.dir, &e.resource.id(), e.generation), ()))
        .collect();
    if let Ok(d) = std::fs::read_dir(&g.dir) {
        for f in d.flatten() {
            if !known.contains_key(&f.path()) {
                tracing::info!(file = %f.path().display(), "removing an orphan region file");
                let _ = std::fs::remove_file(f.path());
            }
        }
    }
}

/// Sleeps until the table's next deadline (or a change), then expires what
/// is due. Holds the manager only while working.
pub(crate) async fn expiry_task(m: Weak<Manager>, grants: Arc<Grants>) {
    loop {
        let notified = grants.wake.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        let next = match m.upgrade() {
            Some(m) => m.grants_next_deadline().await,
            None => return,
        };
        let sleep = match next {
            Some(t) => std::time::Duration::from_millis(t.saturating_sub(now_ms())),
            None => std::time::Duration::from_secs(3600),
        };
        tokio::select! {
            _ = tokio::time::sleep(sleep) => {
                match m.upgrade() {
                    Some(m) => m.grants_expire().await,
                    None => return,
                }
                if next.is_none() {
                    grants.housekeeping().await;
                }
            }
            _ = &mut notified => {}
        }
    }
}

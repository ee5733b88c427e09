//! The grant operations: one handler for what a partition asks (through its
//! agent, or an administrator acting as it through the API), and the
//! administrator's own calls. Each operation holds the service's lock from
//! check to last effect, commits the table before touching devices, and
//! puts the table back as it was when an effect fails.

use std::sync::Arc;

use bulkhead_grant::reply::{GrantView, GuestReply, OwnedView};
use bulkhead_grant::request::GuestRequest;
use bulkhead_grant::{
    Action, Actor, Effect, Event, GrantError, GrantId, GrantState, IssueRequest, Outcome,
    PartitionId, RegionSize, Resource, ResourceId, ResourceKind, ResourceName, Source, Timestamp,
};
use bulkhead_store::{now_ms, PartitionRecord};
use rand::rngs::OsRng;
use serde_json::json;

use super::{
    failpoint, grant_key, region_device, region_file, region_key, GrantInfo, GrantLogEntry,
    Mapping, RegionView, State, Via,
};
use crate::api::ApiError;
use crate::manager::Manager;

pub(super) fn events_json(events: &[Event]) -> Vec<serde_json::Value> {
    events
        .iter()
        .map(|e| {
            serde_json::to_value(e).unwrap_or_else(|e| json!({ "unserialisable": e.to_string() }))
        })
        .collect()
}

/// The grants an operation ended, from its event.
fn ended_of(events: &[Event]) -> Vec<GrantId> {
    events
        .iter()
        .flat_map(|e| match &e.action {
            Action::Released { ended, .. }
            | Action::Revoked { ended, .. }
            | Action::Expired { ended, .. }
            | Action::PartitionStopped { ended, .. }
            | Action::ResourceRemoved { ended, .. } => ended.clone(),
            _ => Vec::new(),
        })
        .collect()
}

/// Takes out the mappings the `Unmap` effects end, in the effects' order
/// (deepest first). They leave the state before the commit: a crash after it
/// leaves devices the table no longer allows, which a restart unplugs.
pub(super) fn take_unmaps(st: &mut State, effects: &[Effect]) -> Vec<Mapping> {
    effects
        .iter()
        .filter_map(|e| match e {
            Effect::Unmap { grant, .. } => st.maps.remove(&grant_key(*grant)),
            Effect::Map { .. } => None,
        })
        .collect()
}

fn refused(e: GrantError) -> ApiError {
    ApiError::Grant(e)
}

fn partition_id(name: &str) -> Result<PartitionId, ApiError> {
    name.parse()
        .map_err(|e: bulkhead_grant::TypeError| ApiError::BadRequest(e.to_string()))
}

fn now() -> Timestamp {
    Timestamp(now_ms())
}

impl Manager {
    /// Commits `st` with `events`; on failure `st` is put back to `before`.
    pub(super) async fn commit(
        &self,
        st: &mut State,
        before: &State,
        via: Via,
        events: Vec<serde_json::Value>,
    ) -> Result<(), ApiError> {
        let r = self.grants.persist(st, via, events).await;
        if r.is_err() {
            st.restore(before);
        }
        r
    }

    /// Puts the state back to `before` after an effect failed, and logs why.
    async fn roll_back(&self, st: &mut State, before: State, via: Via, what: &str, e: &ApiError) {
        st.restore(&before);
        let ev = json!({ "action": "rolled_back", "what": what, "error": e.to_string() });
        if let Err(e) = self.grants.persist(st, via, [ev]).await {
            tracing::error!(error = %e, "recording a grant roll-back");
        }
    }

    /// One request of partition `name`. The API's on-behalf call and the
    /// agent relay both come here, so they cannot differ.
    pub async fn grant_request(
        self: &Arc<Self>,
        name: &str,
        via: Via,
        req: GuestRequest,
    ) -> Result<GuestReply, ApiError> {
        let rec = self.get(name).await?;
        let me = partition_id(name)?;
        let mut st = self.grants.state.lock().await;
        let st = &mut *st;
        match req {
            GuestRequest::RegionCreate { name, size } => {
                self.region_create(st, via, &rec, &me, name, size).await
            }
            GuestRequest::Grant {
                resource,
                kind,
                to,
                read_only,
                expires_ms,
            } => {
                let rid = ResourceId {
                    kind,
                    owner: me.clone(),
                    name: resource,
                };
                self.issue(st, via, &me, Source::Owned(rid), to, read_only, expires_ms)
                    .await
            }
            GuestRequest::Regrant {
                grant,
                to,
                read_only,
                expires_ms,
            } => {
                self.issue(st, via, &me, Source::Regrant(grant), to, read_only, expires_ms)
                    .await
            }
            GuestRequest::Accept { cookie } => {
                // Checked before the cookie is spent: a holder that cannot map
                // keeps a usable cookie.
                self.ready_partition(name).await?;
                let before = st.clone();
                let o = st.table.accept(&me, &cookie, now()).map_err(refused)?;
                self.commit(st, &before, via, events_json(&o.events)).await?;
                failpoint("grant-after-commit");
                let Some(Effect::Map {
                    holder,
                    grant,
                    resource,
                    access,
                }) = o.effects.first().cloned()
                else {
                    return Err(ApiError::Internal("accept without a map".into()));
                };
                match self
                    .map_grant(st, grant, holder.as_str(), &resource, access)
                    .await
                {
                    Ok(m) => {
                        let path = m.path.clone();
                        st.maps.insert(grant_key(grant), m);
                        let after = st.clone();
                        self.commit(st, &after, via, Vec::new()).await?;
                        Ok(GuestReply::Mapped {
                            grant,
                            resource,
                            access,
                            path,
                        })
                    }
                    Err(e) => {
                        self.roll_back(st, before, via, &format!("accept of {grant}"), &e).await;
                        Err(e)
                    }
                }
            }
            GuestRequest::Release { grant } => {
                self.end(st, via, grant, |t| t.release(&me, grant, now()))
                    .await
            }
            GuestRequest::Revoke { grant } => {
                let by = Actor::Partition(me.clone());
                self.end(st, via, grant, |t| t.revoke(&by, grant, now()))
                    .await
            }
            GuestRequest::List {} => Ok(list_for(st, &me)),
            GuestRequest::Read { .. } | GuestRequest::Write { .. } => Err(ApiError::BadRequest(
                "read and write are done inside the partition (bulkhead-guest read/write on the mapping)"
                    .into(),
            )),
        }
    }

    /// Release and revoke: `op` ends the grant and its descendants (a refusal
    /// changes nothing); committed, then each holder is unmapped.
    async fn end(
        self: &Arc<Self>,
        st: &mut State,
        via: Via,
        grant: GrantId,
        op: impl FnOnce(&mut bulkhead_grant::GrantTable) -> Result<Outcome<()>, GrantError>,
    ) -> Result<GuestReply, ApiError> {
        let before = st.clone();
        let o = op(&mut st.table).map_err(refused)?;
        let maps = take_unmaps(st, &o.effects);
        self.commit(st, &before, via, events_json(&o.events))
            .await?;
        failpoint("revoke-after-commit");
        let reports = self.unmap_all(maps).await;
        if !reports.is_empty() {
            self.grants.persist(st, Via::Manager, reports).await?;
        }
        Ok(GuestReply::Ended {
            grant,
            ended: ended_of(&o.events),
        })
    }

    /// `grant` and `grant --regrant`: a new grant and its cookie.
    #[allow(clippy::too_many_arguments)]
    async fn issue(
        &self,
        st: &mut State,
        via: Via,
        me: &PartitionId,
        source: Source,
        to: PartitionId,
        read_only: bool,
        expires_ms: Option<u64>,
    ) -> Result<GuestReply, ApiError> {
        self.get(to.as_str()).await?;
        let before = st.clone();
        let mut events = Vec::new();
        // A disk becomes a resource the first time its owner grants it.
        if let Source::Owned(rid) = &source {
            if rid.kind == ResourceKind::Disk && st.table.resource(rid).is_none() {
                self.owner_disk(me.as_str(), rid.name.as_str()).await?;
                let disk = Resource::Disk {
                    owner: me.clone(),
                    disk: rid.name.clone(),
                };
                let o = st
                    .table
                    .add_resource(&Actor::Partition(me.clone()), disk, now())
                    .map_err(refused)?;
                events.extend(o.events);
            }
        }
        let req = IssueRequest {
            source,
            grantee: to,
            access: GuestRequest::access(read_only),
            lifetime_ms: expires_ms,
        };
        let o = match st.table.issue(me, req, now(), &mut OsRng) {
            Ok(o) => o,
            Err(e) => {
                st.restore(&before);
                return Err(refused(e));
            }
        };
        events.extend(o.events);
        self.commit(st, &before, via, events_json(&events)).await?;
        let grant = o.value.grant;
        Ok(GuestReply::Issued {
            grant,
            cookie: o.value.cookie,
            expires_at: st.table.grant(grant).and_then(|g| g.expires_at),
        })
    }

    /// `region create`: the file, the resource, the owner's device and its
    /// mapping; all of it undone if any step fails.
    async fn region_create(
        &self,
        st: &mut State,
        via: Via,
        rec: &PartitionRecord,
        me: &PartitionId,
        name: ResourceName,
        size: RegionSize,
    ) -> Result<GuestReply, ApiError> {
        let p = self.ready_partition(&rec.name).await?;
        if rec.hotplug_slots == 0 {
            return Err(ApiError::Conflict(format!(
                "partition {:?} has no hot-plug ports; create it with hotplug_slots > 0 to hold regions",
                rec.name
            )));
        }
        let owned = st.table.owned_region_bytes(me);
        let limit = rec.memory_mib << 20;
        if owned.saturating_add(size.bytes()) > limit {
            return Err(ApiError::OverCapacity(format!(
                "{} owns {owned} bytes of regions; {} more is over its memory entitlement of {} MiB",
                rec.name,
                size.bytes(),
                rec.memory_mib
            )));
        }
        let before = st.clone();
        let resource = Resource::Region {
            owner: me.clone(),
            name,
            size,
        };
        let rid = resource.id();
        let o = st
            .table
            .add_resource(&Actor::Partition(me.clone()), resource, now())
            .map_err(refused)?;
        let generation = st.table.resource(&rid).map(|e| e.generation).unwrap_or(0);
        let file = region_file(&self.grants.dir, &rid, generation);
        if let Err(e) = make_region_file(&file, size.bytes()) {
            st.restore(&before);
            return Err(ApiError::Internal(format!(
                "region file {}: {e}",
                file.display()
            )));
        }
        if let Err(e) = self.commit(st, &before, via, events_json(&o.events)).await {
            let _ = std::fs::remove_file(&file);
            return Err(e);
        }
        failpoint("region-after-commit");
        let device = region_device(&rid, generation);
        match self.plug_and_map_region(&p, &device, &file, false).await {
            Ok(m) => {
                let path = m.path.clone();
                st.maps.insert(region_key(&rid), m);
                let after = st.clone();
                self.commit(st, &after, via, Vec::new()).await?;
                Ok(GuestReply::Region {
                    resource: rid,
                    size: size.bytes(),
                    path,
                })
            }
            Err(e) => {
                self.roll_back(st, before, via, &format!("region create {rid}"), &e)
                    .await;
                let _ = std::fs::remove_file(&file);
                Err(e)
            }
        }
    }

    /// `GET /v1/grants`: every grant, or those `partition` gave, holds or owns.
    pub async fn grant_list(&self, partition: Option<&str>) -> Result<Vec<GrantInfo>, ApiError> {
        let st = self.grants.state.lock().await;
        let mut v: Vec<GrantInfo> = st
            .table
            .grants()
            .filter(|g| {
                partition.is_none_or(|p| {
                    g.granter.as_str() == p
                        || g.grantee.as_str() == p
                        || g.resource.owner.as_str() == p
                })
            })
            .map(|g| GrantInfo::new(g, st.maps.get(&grant_key(g.id))))
            .collect();
        v.sort_by(|a, b| (a.issued_at, &a.id).cmp(&(b.issued_at, &b.id)));
        Ok(v)
    }

    pub async fn grant_show(&self, id: &str) -> Result<GrantInfo, ApiError> {
        let id = parse_grant_id(id)?;
        let st = self.grants.state.lock().await;
        let g = st
            .table
            .grant(id)
            .ok_or(ApiError::Grant(GrantError::UnknownGrant(id)))?;
        Ok(GrantInfo::new(g, st.maps.get(&grant_key(id))))
    }

    /// `POST /v1/grants/{id}/revoke`: an administrator ends a grant and every
    /// grant derived from it.
    pub async fn grant_revoke(self: &Arc<Self>, id: &str) -> Result<GuestReply, ApiError> {
        let id = parse_grant_id(id)?;
        let mut st = self.grants.state.lock().await;
        let st = &mut *st;
        self.end(st, Via::Api, id, |t| t.revoke(&Actor::Admin, id, now()))
            .await
    }

    pub async fn grant_log(
        &self,
        after: u64,
        limit: usize,
    ) -> Result<Vec<GrantLogEntry>, ApiError> {
        self.grants.log(after, limit).await
    }

    pub async fn region_list(&self) -> Vec<RegionView> {
        let st = self.grants.state.lock().await;
        st.table
            .resources()
            .map(|e| {
                let id = e.resource.id();
                let holders = st
                    .table
                    .grants()
                    .filter(|g| g.resource == id && g.state == GrantState::Accepted)
                    .map(|g| g.grantee.to_string())
                    .collect();
                let file = (id.kind == ResourceKind::Region).then(|| {
                    region_file(&self.grants.dir, &id, e.generation)
                        .to_string_lossy()
                        .into_owned()
                });
                RegionView::new(e, file, st.maps.get(&region_key(&id)), holders)
            })
            .collect()
    }
}

fn parse_grant_id(id: &str) -> Result<GrantId, ApiError> {
    id.parse()
        .map_err(|e: bulkhead_grant::TypeError| ApiError::BadRequest(e.to_string()))
}

/// `list`: what `me` owns, and every live grant it gave, holds or owns.
fn list_for(st: &State, me: &PartitionId) -> GuestReply {
    let owned = st
        .table
        .resources()
        .filter(|e| e.resource.owner() == me)
        .map(|e| {
            let id = e.resource.id();
            OwnedView {
                size: match &e.resource {
                    Resource::Region { size, .. } => Some(size.bytes()),
                    Resource::Disk { .. } => None,
                },
                path: st.maps.get(&region_key(&id)).map(|m| m.path.clone()),
                resource: id,
            }
        })
        .collect();
    let grants = st
        .table
        .visible_to(me)
        .filter(|g| g.state.is_live())
        .map(|g| GrantView {
            grant: g.id,
            resource: g.resource.clone(),
            granter: g.granter.clone(),
            grantee: g.grantee.clone(),
            access: g.access,
            parent: g.parent,
            depth: g.depth,
            state: g.state,
            expires_at: g.expires_at,
            path: (&g.grantee == me)
                .then(|| st.maps.get(&grant_key(g.id)).map(|m| m.path.clone()))
                .flatten(),
        })
        .collect();
    GuestReply::List { owned, grants }
}

/// A sparse file of `size` bytes only the daemon reads (the engine gives it
/// to QEMU's user when it plugs it).
fn make_region_file(path: &std::path::Path, size: u64) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let f = std::fs::OpenOptions::new()
        .create_new(true)
        .write(true)
        .mode(0o600)
        .open(path)?;
    f.set_len(size)
}

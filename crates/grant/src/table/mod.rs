//! The grant table: a pure state machine over resources and grants.
//!
//! Every operation checks everything first and changes the table only when it
//! succeeds, so a refusal leaves the table byte-for-byte as it was. A success returns
//! an [`Outcome`]: the value asked for, the [`Effect`]s the manager must carry out
//! (hot-plug, unplug) and the [`Event`]s for `bulkhead grant log`. Grants form a tree
//! per resource (seL4's capability derivation tree): ending a grant ends every grant
//! derived from it.

use std::collections::{BTreeMap, BTreeSet};

use rand::{CryptoRng, RngCore};
use serde::{Deserialize, Serialize};

use crate::cookie::{Binding, Cookie, CookieDigest};
use crate::error::GrantError;
use crate::types::{Access, Actor, GrantId, PartitionId, Resource, ResourceId, Timestamp};

mod check;
mod outcome;

pub use outcome::{Action, Effect, Event, IssueRequest, Issued, Outcome, Source};

/// Bounds of the table. Persisted with it, so a restart keeps the same rules.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct GrantConfig {
    /// Longest chain owner → … → holder: a grant from the owner is 1 deep.
    pub max_depth: u8,
    /// How long a cookie may wait to be accepted.
    pub cookie_ttl_ms: u64,
    /// Live grants one partition may have issued at once (a hostile guest cannot
    /// grow the table without bound).
    pub max_live_grants_per_partition: usize,
    /// Resources one partition may own.
    pub max_resources_per_partition: usize,
}

impl Default for GrantConfig {
    fn default() -> Self {
        GrantConfig {
            max_depth: 4,
            cookie_ttl_ms: 10 * 60 * 1000,
            max_live_grants_per_partition: 256,
            max_resources_per_partition: 64,
        }
    }
}

/// Where a grant is in its life. `Issued` and `Accepted` are live; the rest are final.
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GrantState {
    /// Cookie handed out, not accepted yet.
    Issued,
    /// Accepted: the grantee has (or is getting) the mapping.
    Accepted,
    /// The grantee let go (or declined).
    Released,
    /// Ended by a revoke, or because the grant it came from ended.
    Revoked,
    /// The cookie or the grant's lifetime ran out.
    Expired,
}

impl GrantState {
    pub fn is_live(self) -> bool {
        matches!(self, GrantState::Issued | GrantState::Accepted)
    }
}

/// One grant: `granter` lets `grantee` use `resource` with `access`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Grant {
    pub id: GrantId,
    pub resource: ResourceId,
    pub granter: PartitionId,
    pub grantee: PartitionId,
    pub access: Access,
    /// The grant this one was re-granted from; `None` for the owner's own grants.
    pub parent: Option<GrantId>,
    /// 1 for a grant from the owner, parent's depth + 1 for a re-grant.
    pub depth: u8,
    /// The resource's generation when the grant was issued.
    pub generation: u64,
    pub issued_at: Timestamp,
    /// The cookie must be accepted before this.
    pub cookie_expires_at: Timestamp,
    /// The grant ends at this time; never later than its parent's.
    pub expires_at: Option<Timestamp>,
    pub accepted_at: Option<Timestamp>,
    pub ended_at: Option<Timestamp>,
    pub state: GrantState,
    /// SHA-256 of the cookie and its binding; the cookie itself is never kept.
    cookie: CookieDigest,
}

impl Grant {
    fn binding(&self) -> Binding<'_> {
        Binding {
            grant: self.id,
            resource: &self.resource,
            grantee: &self.grantee,
            access: self.access,
            parent: self.parent,
            generation: self.generation,
        }
    }
}

/// A registered resource and the generation it was registered under.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResourceEntry {
    pub resource: Resource,
    /// Unique per registration: a resource removed and created again under the same
    /// name gets a new one, so the old one's grants can never apply to it.
    pub generation: u64,
    pub created_at: Timestamp,
}

/// The whole grant state of a manager. Serialise it to persist it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GrantTable {
    #[serde(default)]
    config: GrantConfig,
    next_generation: u64,
    #[serde(with = "check::resource_list")]
    resources: BTreeMap<ResourceId, ResourceEntry>,
    grants: BTreeMap<GrantId, Grant>,
}

impl GrantTable {
    pub fn new(config: GrantConfig) -> GrantTable {
        GrantTable {
            config,
            ..GrantTable::default()
        }
    }

    pub fn config(&self) -> &GrantConfig {
        &self.config
    }

    pub fn grant(&self, id: GrantId) -> Option<&Grant> {
        self.grants.get(&id)
    }

    pub fn grants(&self) -> impl Iterator<Item = &Grant> {
        self.grants.values()
    }

    pub fn resource(&self, id: &ResourceId) -> Option<&ResourceEntry> {
        self.resources.get(id)
    }

    pub fn resources(&self) -> impl Iterator<Item = &ResourceEntry> {
        self.resources.values()
    }

    /// Grants a partition may see (`bulkhead-guest list`): those it granted, holds,
    /// or that are of a resource it owns.
    pub fn visible_to<'a>(&'a self, p: &'a PartitionId) -> impl Iterator<Item = &'a Grant> + 'a {
        self.grants
            .values()
            .filter(move |g| &g.granter == p || &g.grantee == p || &g.resource.owner == p)
    }

    /// Bytes of shared memory `p` owns (counted against its memory entitlement).
    pub fn owned_region_bytes(&self, p: &PartitionId) -> u64 {
        self.resources
            .values()
            .filter_map(|e| match &e.resource {
                Resource::Region { owner, size, .. } if owner == p => Some(size.bytes()),
                _ => None,
            })
            .sum()
    }

    /// The next time [`expire`](Self::expire) has work: arm a timer for it.
    pub fn next_deadline(&self) -> Option<Timestamp> {
        self.grants.values().filter_map(deadline).min()
    }

    /// Registers a resource for its owner (region create, disk registration).
    pub fn add_resource(
        &mut self,
        by: &Actor,
        resource: Resource,
        now: Timestamp,
    ) -> Result<Outcome<()>, GrantError> {
        let id = resource.id();
        check_owner_or_admin(by, &id)?;
        if self.resources.contains_key(&id) {
            return Err(GrantError::ResourceExists(id));
        }
        let limit = self.config.max_resources_per_partition;
        if self
            .resources
            .keys()
            .filter(|r| r.owner == id.owner)
            .count()
            >= limit
        {
            return Err(GrantError::TooMany {
                by: id.owner,
                what: "resources",
                limit,
            });
        }
        self.next_generation += 1;
        let entry = ResourceEntry {
            resource,
            generation: self.next_generation,
            created_at: now,
        };
        self.resources.insert(id.clone(), entry);
        Ok(Outcome::logged(
            (),
            vec![],
            now,
            by.clone(),
            Action::ResourceAdded { resource: id },
        ))
    }

    /// Removes a resource; every grant of it ends.
    pub fn remove_resource(
        &mut self,
        by: &Actor,
        id: &ResourceId,
        now: Timestamp,
    ) -> Result<Outcome<()>, GrantError> {
        check_owner_or_admin(by, id)?;
        if !self.resources.contains_key(id) {
            return Err(GrantError::UnknownResource(id.clone()));
        }
        let roots: Vec<GrantId> = self
            .grants
            .values()
            .filter(|g| g.state.is_live() && &g.resource == id && g.parent.is_none())
            .map(|g| g.id)
            .collect();
        let mut effects = Vec::new();
        let ended = self.end_trees(&roots, GrantState::Revoked, now, &mut effects);
        self.resources.remove(id);
        let action = Action::ResourceRemoved {
            resource: id.clone(),
            ended,
        };
        Ok(Outcome::logged((), effects, now, by.clone(), action))
    }

    /// Issues a grant and its cookie. `lifetime_ms` bounds the grant itself (clamped
    /// to its parent's end); the cookie must be accepted within the configured TTL.
    pub fn issue<R: RngCore + CryptoRng>(
        &mut self,
        by: &PartitionId,
        req: IssueRequest,
        now: Timestamp,
        rng: &mut R,
    ) -> Result<Outcome<Issued>, GrantError> {
        let IssueRequest {
            source,
            grantee,
            access,
            lifetime_ms,
        } = req;
        let (resource, parent, depth, generation, held, parent_end) = match &source {
            Source::Owned(rid) => {
                let entry = self
                    .resources
                    .get(rid)
                    .ok_or_else(|| GrantError::UnknownResource(rid.clone()))?;
                if &rid.owner != by {
                    return Err(GrantError::NotOwner {
                        by: by.clone(),
                        resource: rid.clone(),
                    });
                }
                (
                    rid.clone(),
                    None,
                    1u8,
                    entry.generation,
                    entry.resource.max_access(),
                    None,
                )
            }
            Source::Regrant(gid) => {
                let g = self.held_by(by, *gid, now)?;
                let depth = g.depth.saturating_add(1);
                if depth > self.config.max_depth {
                    return Err(GrantError::DepthExceeded {
                        depth,
                        max: self.config.max_depth,
                    });
                }
                (
                    g.resource.clone(),
                    Some(g.id),
                    depth,
                    g.generation,
                    g.access,
                    g.expires_at,
                )
            }
        };
        if access > held {
            return Err(GrantError::AccessWiderThanHeld {
                held,
                asked: access,
            });
        }
        if &grantee == by {
            return Err(GrantError::SelfGrant);
        }
        if grantee == resource.owner {
            return Err(GrantError::GranteeIsOwner(grantee));
        }
        if lifetime_ms == Some(0) {
            return Err(GrantError::ZeroLifetime);
        }
        let limit = self.config.max_live_grants_per_partition;
        if self
            .grants
            .values()
            .filter(|g| g.state.is_live() && &g.granter == by)
            .count()
            >= limit
        {
            return Err(GrantError::TooMany {
                by: by.clone(),
                what: "grants",
                limit,
            });
        }

        let id = loop {
            let id = GrantId::from_u64(rng.next_u64());
            if !self.grants.contains_key(&id) {
                break id;
            }
        };
        // No grant outlives the one it came from.
        let expires_at = match (lifetime_ms.map(|ms| now.plus_ms(ms)), parent_end) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let cookie_ttl_end = now.plus_ms(self.config.cookie_ttl_ms);
        let cookie_expires_at = expires_at.map_or(cookie_ttl_end, |e| e.min(cookie_ttl_end));
        let cookie = Cookie::generate(id, rng);
        let digest = cookie.digest(&Binding {
            grant: id,
            resource: &resource,
            grantee: &grantee,
            access,
            parent,
            generation,
        });
        let grant = Grant {
            id,
            resource: resource.clone(),
            granter: by.clone(),
            grantee: grantee.clone(),
            access,
            parent,
            depth,
            generation,
            issued_at: now,
            cookie_expires_at,
            expires_at,
            accepted_at: None,
            ended_at: None,
            state: GrantState::Issued,
            cookie: digest,
        };
        self.grants.insert(id, grant);
        let action = Action::Issued {
            grant: id,
            resource,
            grantee,
            access,
            parent,
        };
        Ok(Outcome::logged(
            Issued { grant: id, cookie },
            vec![],
            now,
            Actor::Partition(by.clone()),
            action,
        ))
    }

    /// `presenter` presents `cookie`. On success the manager maps the resource into
    /// the presenter ([`Effect::Map`]). The cookie is single-use.
    pub fn accept(
        &mut self,
        presenter: &PartitionId,
        cookie: &Cookie,
        now: Timestamp,
    ) -> Result<Outcome<GrantId>, GrantError> {
        let g = self
            .grants
            .get(&cookie.grant_id())
            .ok_or(GrantError::UnknownCookie)?;
        // Nothing about the grant is revealed until the cookie is proven genuine.
        if !g.cookie.matches(&cookie.digest(&g.binding())) {
            return Err(GrantError::UnknownCookie);
        }
        if &g.grantee != presenter {
            return Err(GrantError::WrongPartition);
        }
        if g.accepted_at.is_some() {
            return Err(GrantError::CookieUsed);
        }
        match g.state {
            GrantState::Issued => {}
            GrantState::Expired => return Err(GrantError::CookieExpired),
            _ => return Err(GrantError::Revoked(g.id)),
        }
        if now >= g.cookie_expires_at {
            return Err(GrantError::CookieExpired);
        }
        if self.resources.get(&g.resource).map(|e| e.generation) != Some(g.generation) {
            return Err(GrantError::Stale(g.id));
        }
        if let Some(p) = g.parent {
            // Ending a parent ends its children, so this holds unless the table was
            // edited by hand; refuse rather than map through a dead chain.
            if self.grants.get(&p).map(|p| p.state) != Some(GrantState::Accepted) {
                return Err(GrantError::Revoked(g.id));
            }
        }
        let effect = Effect::Map {
            holder: presenter.clone(),
            grant: g.id,
            resource: g.resource.clone(),
            access: g.access,
        };
        let id = g.id;
        let g = self.grants.get_mut(&id).expect("looked up above");
        g.state = GrantState::Accepted;
        g.accepted_at = Some(now);
        Ok(Outcome::logged(
            id,
            vec![effect],
            now,
            Actor::Partition(presenter.clone()),
            Action::Accepted { grant: id },
        ))
    }

    /// The grantee lets go of `grant` (or declines it before accepting); everything
    /// re-granted from it ends too.
    pub fn release(
        &mut self,
        by: &PartitionId,
        grant: GrantId,
        now: Timestamp,
    ) -> Result<Outcome<()>, GrantError> {
        let actor = Actor::Partition(by.clone());
        self.end_one(actor, grant, GrantState::Released, now, |g| {
            (&g.grantee == by)
                .then_some(())
                .ok_or_else(|| GrantError::NotHolder {
                    by: by.clone(),
                    grant,
                })
        })
    }

    /// Revokes `grant` and every grant derived from it. Allowed to the resource's
    /// owner, to any partition upstream of the grant (its granter, their granter…),
    /// and to administrators.
    pub fn revoke(
        &mut self,
        by: &Actor,
        grant: GrantId,
        now: Timestamp,
    ) -> Result<Outcome<()>, GrantError> {
        let allowed = match by {
            Actor::Partition(p) => self.upstream_of(grant).any(|a| &a.granter == p),
            Actor::Admin | Actor::Manager => true,
        };
        self.end_one(by.clone(), grant, GrantState::Revoked, now, |_| {
            allowed.then_some(()).ok_or(GrantError::NotAllowed(grant))
        })
    }

    /// Release and revoke: `permitted` checks the actor, then a live `grant` ends
    /// with its descendants.
    fn end_one(
        &mut self,
        actor: Actor,
        grant: GrantId,
        state: GrantState,
        now: Timestamp,
        permitted: impl FnOnce(&Grant) -> Result<(), GrantError>,
    ) -> Result<Outcome<()>, GrantError> {
        let g = self
            .grants
            .get(&grant)
            .ok_or(GrantError::UnknownGrant(grant))?;
        permitted(g)?;
        if !g.state.is_live() {
            return Err(GrantError::Ended {
                grant,
                state: g.state,
            });
        }
        let mut effects = Vec::new();
        let ended = self.end_trees(&[grant], state, now, &mut effects);
        let action = match state {
            GrantState::Released => Action::Released { grant, ended },
            _ => Action::Revoked { grant, ended },
        };
        Ok(Outcome::logged((), effects, now, actor, action))
    }

    /// `p` stopped: everything it owns or granted is revoked, its own holdings end,
    /// and so does everything derived from them. Its resources stay registered.
    pub fn partition_stopped(&mut self, p: &PartitionId, now: Timestamp) -> Outcome<()> {
        let roots: Vec<GrantId> = self
            .grants
            .values()
            .filter(|g| {
                g.state.is_live() && (&g.resource.owner == p || &g.granter == p || &g.grantee == p)
            })
            .map(|g| g.id)
            .collect();
        let mut effects = Vec::new();
        let ended = self.end_trees(&roots, GrantState::Revoked, now, &mut effects);
        let action = Action::PartitionStopped {
            partition: p.clone(),
            ended,
        };
        Outcome::logged((), effects, now, Actor::Manager, action)
    }

    /// `p` is destroyed: as [`partition_stopped`](Self::partition_stopped), and its
    /// resources are removed.
    pub fn partition_destroyed(&mut self, p: &PartitionId, now: Timestamp) -> Outcome<()> {
        let mut out = self.partition_stopped(p, now);
        let owned: Vec<ResourceId> = self
            .resources
            .keys()
            .filter(|r| &r.owner == p)
            .cloned()
            .collect();
        for id in owned {
            let removed = self
                .remove_resource(&Actor::Manager, &id, now)
                .expect("admin may remove a resource that exists");
            out.effects.extend(removed.effects);
            out.events.extend(removed.events);
        }
        out
    }

    /// Ends every grant whose cookie (if not accepted) or lifetime ran out by `now`.
    pub fn expire(&mut self, now: Timestamp) -> Outcome<()> {
        let due: Vec<GrantId> = self
            .grants
            .values()
            .filter(|g| deadline(g).is_some_and(|d| d <= now))
            .map(|g| g.id)
            .collect();
        let mut effects = Vec::new();
        let mut events = Vec::new();
        for id in due {
            // An earlier root of this pass may have ended it already.
            if self.grants[&id].state.is_live() {
                let ended = self.end_trees(&[id], GrantState::Expired, now, &mut effects);
                events.push(Event {
                    at: now,
                    actor: Actor::Manager,
                    action: Action::Expired { grant: id, ended },
                });
            }
        }
        Outcome {
            value: (),
            effects,
            events,
        }
    }

    /// Forgets ended grants that ended before `before` (the log keeps their story).
    pub fn prune(&mut self, before: Timestamp) -> usize {
        let n = self.grants.len();
        self.grants
            .retain(|_, g| g.ended_at.is_none_or(|t| t >= before));
        n - self.grants.len()
    }

    /// The grant `by` holds as `gid`: it must be the grantee and have accepted it.
    /// A grant past its end counts as expired even before `expire` has run.
    fn held_by(
        &self,
        by: &PartitionId,
        gid: GrantId,
        now: Timestamp,
    ) -> Result<&Grant, GrantError> {
        let g = self.grants.get(&gid).ok_or(GrantError::UnknownGrant(gid))?;
        if &g.grantee != by {
            return Err(GrantError::NotHolder {
                by: by.clone(),
                grant: gid,
            });
        }
        match g.state {
            GrantState::Accepted if g.expires_at.is_some_and(|e| e <= now) => {
                Err(GrantError::Ended {
                    grant: gid,
                    state: GrantState::Expired,
                })
            }
            GrantState::Accepted => Ok(g),
            GrantState::Issued => Err(GrantError::NotHolder {
                by: by.clone(),
                grant: gid,
            }),
            state => Err(GrantError::Ended { grant: gid, state }),
        }
    }

    /// `grant` and its ancestors, nearest first.
    fn upstream_of(&self, grant: GrantId) -> impl Iterator<Item = &Grant> {
        let mut next = Some(grant);
        std::iter::from_fn(move || {
            let g = self.grants.get(&next?)?;
            next = g.parent;
            Some(g)
        })
    }

    /// Ends each live root and its live descendants: roots get `root_state`,
    /// descendants `Revoked` (or `Expired` when the roots expired). Pushes an
    /// [`Effect::Unmap`] per accepted grant, deepest first, and returns the ended ids
    /// in that order.
    fn end_trees(
        &mut self,
        roots: &[GrantId],
        root_state: GrantState,
        now: Timestamp,
        effects: &mut Vec<Effect>,
    ) -> Vec<GrantId> {
        let mut children: BTreeMap<GrantId, Vec<GrantId>> = BTreeMap::new();
        for g in self.grants.values().filter(|g| g.state.is_live()) {
            if let Some(p) = g.parent {
                children.entry(p).or_default().push(g.id);
            }
        }
        let roots: BTreeSet<GrantId> = roots
            .iter()
            .copied()
            .filter(|r| self.grants[r].state.is_live())
            .collect();
        let mut seen = BTreeSet::new();
        let mut stack: Vec<GrantId> = roots.iter().copied().collect();
        while let Some(id) = stack.pop() {
            if seen.insert(id) {
                stack.extend(children.get(&id).into_iter().flatten().copied());
            }
        }
        let mut ended: Vec<GrantId> = seen.into_iter().collect();
        ended.sort_by_key(|id| std::cmp::Reverse(self.grants[id].depth));
        let child_state = if root_state == GrantState::Expired {
            GrantState::Expired
        } else {
            GrantState::Revoked
        };
        for id in &ended {
            let g = self.grants.get_mut(id).expect("collected from the table");
            if g.state == GrantState::Accepted {
                effects.push(Effect::Unmap {
                    holder: g.grantee.clone(),
                    grant: *id,
                });
            }
            g.state = if roots.contains(id) {
                root_state
            } else {
                child_state
            };
            g.ended_at = Some(now);
        }
        ended
    }
}

/// When a live grant next needs [`GrantTable::expire`].
fn deadline(g: &Grant) -> Option<Timestamp> {
    match g.state {
        GrantState::Issued => Some(
            g.expires_at
                .map_or(g.cookie_expires_at, |e| e.min(g.cookie_expires_at)),
        ),
        GrantState::Accepted => g.expires_at,
        _ => None,
    }
}

fn check_owner_or_admin(by: &Actor, id: &ResourceId) -> Result<(), GrantError> {
    match by {
        Actor::Partition(p) if p != &id.owner => Err(GrantError::NotOwner {
            by: p.clone(),
            resource: id.clone(),
        }),
        _ => Ok(()),
    }
}

//! The table's invariants, checked on a table read back from the store, and its
//! persisted layout.

use std::collections::BTreeMap;

use super::{GrantState, GrantTable, ResourceEntry};
use crate::types::{ResourceId, Timestamp};

impl GrantTable {
    /// Checks the table's invariants; run it on a table read back from the store.
    pub fn check(&self) -> Result<(), String> {
        for g in self.grants.values() {
            let fail = |why: &str| Err(format!("grant {}: {why}", g.id));
            if g.state.is_live() == g.ended_at.is_some() {
                return fail("ended_at set iff the grant ended");
            }
            if (g.state == GrantState::Accepted && g.accepted_at.is_none())
                || (g.state == GrantState::Issued && g.accepted_at.is_some())
            {
                return fail("accepted_at disagrees with the state");
            }
            if g.depth == 0 || g.depth > self.config.max_depth || g.grantee == g.granter {
                return fail("bad depth, or granted to itself");
            }
            match g.parent.and_then(|p| self.grants.get(&p)) {
                Some(p) => {
                    if g.depth != p.depth + 1
                        || g.resource != p.resource
                        || g.granter != p.grantee
                        || g.access > p.access
                        || g.generation != p.generation
                    {
                        return fail("does not derive from its parent");
                    }
                    if g.state.is_live()
                        && (p.state != GrantState::Accepted || !ends_by(g.expires_at, p.expires_at))
                    {
                        return fail("outlives its parent");
                    }
                }
                None if g.parent.is_some() && g.state.is_live() => {
                    return fail("live grant with a missing parent")
                }
                None if g.parent.is_none() && (g.depth != 1 || g.granter != g.resource.owner) => {
                    return fail("a root grant comes from the owner")
                }
                None => {}
            }
            if g.state.is_live() {
                match self.resources.get(&g.resource) {
                    Some(e)
                        if e.generation == g.generation && g.access <= e.resource.max_access() => {}
                    _ => {
                        return fail(
                            "live grant of a missing resource, another generation, or too wide",
                        )
                    }
                }
            }
        }
        for (id, e) in &self.resources {
            if &e.resource.id() != id || e.generation > self.next_generation {
                return Err(format!("resource {id}: inconsistent entry"));
            }
        }
        Ok(())
    }
}

/// Whether a lifetime ending at `child` ends no later than one ending at `parent`
/// (`None`: never ends).
fn ends_by(child: Option<Timestamp>, parent: Option<Timestamp>) -> bool {
    match (child, parent) {
        (_, None) => true,
        (Some(c), Some(p)) => c <= p,
        (None, Some(_)) => false,
    }
}

/// JSON map keys must be strings: the resources persist as a list of entries, each
/// carrying its own id.
pub(super) mod resource_list {
    use super::*;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(
        m: &BTreeMap<ResourceId, ResourceEntry>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        s.collect_seq(m.values())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<BTreeMap<ResourceId, ResourceEntry>, D::Error> {
        let list = Vec::<ResourceEntry>::deserialize(d)?;
        let n = list.len();
        let m: BTreeMap<_, _> = list.into_iter().map(|e| (e.resource.id(), e)).collect();
        if m.len() != n {
            return Err(serde::de::Error::custom("a resource is listed twice"));
        }
        Ok(m)
    }
}

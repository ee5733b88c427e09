//! Host loss and fencing (issue 12 items 2 and 4). A host whose membership
//! lease is gone is lost; one orchestrator, elected through the store (a
//! lease-bound role), claims each of its partitions whose `ha` policy is not
//! `none` once `takeover_margin_ms` has passed, and restarts it on an up host
//! with room: resumed from its hibernation data (`resume`) or booted from its
//! LUs (`reboot`). A host that cannot renew its lease kills its own
//! partitions after `self_fence_ms` (and stops feeding its watchdog), before
//! the others may claim them; the claim's revision is a fencing token every
//! record write and LU attach checks (docs/cluster.md, "Fencing").
//!
//! Here: the timings and their rule, the API command and the CLI, and the
//! choice of a target host (pure). The daemon's side is
//! `manager/ha.rs` (orchestrator, self-fence, rejoin).

pub mod api;
pub mod cli;

use crate::config::ClusterConfig;
use bulkhead_store::{HaPolicy, PartitionRecord, PartitionState};
use std::time::Duration;

/// Clock rate drift allowed between any two hosts (and etcd's leader):
/// 1 %, far above what NTP-disciplined or even free-running quartz clocks
/// show (tens of ppm).
pub const DRIFT_PERMILLE: u64 = 10;

/// What killing the partitions takes once the self-fence decides: SIGKILL
/// and the wait for each QEMU's exit (a few ms each), with room for a
/// loaded host's scheduling.
pub const KILL_SLACK: Duration = Duration::from_millis(500);

/// How often the self-fence checks the time since the last renewal.
pub const FENCE_TICK: Duration = Duration::from_millis(50);

/// The three durations fencing rests on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timings {
    pub lease: Duration,
    pub self_fence: Duration,
    pub margin: Duration,
}

impl Timings {
    pub fn of(c: &ClusterConfig) -> Self {
        Self {
            lease: Duration::from_millis(c.lease_ms),
            self_fence: Duration::from_millis(c.self_fence_ms.unwrap_or(c.lease_ms * 5 / 6)),
            margin: Duration::from_millis(
                c.takeover_margin_ms.unwrap_or((c.lease_ms / 3).max(500)),
            ),
        }
    }

    /// The rule of docs/cluster.md: the holder has killed its partitions
    /// (its deadline stretched by the drift, plus the kill) before anyone
    /// may claim them (the lease shrunk by the drift, plus the margin); and
    /// the self-fence waits longer than one renewal period, so a single
    /// slow renewal does not fence a healthy host.
    pub fn check(&self) -> anyhow::Result<()> {
        let ms = |d: Duration| d.as_millis() as u64;
        let fence_end = ms(self.self_fence) * (1000 + DRIFT_PERMILLE) / 1000 + ms(KILL_SLACK);
        let claim_start = ms(self.lease) * (1000 - DRIFT_PERMILLE) / 1000 + ms(self.margin);
        if fence_end >= claim_start {
            anyhow::bail!(
                "cluster.self_fence_ms ({} ms) + {DRIFT_PERMILLE}‰ drift + {} ms kill slack must end before cluster.lease_ms ({} ms) - drift + cluster.takeover_margin_ms ({} ms): a host cut off could still run its partitions when another restarts them (docs/cluster.md, \"Fencing\")",
                ms(self.self_fence),
                ms(KILL_SLACK),
                ms(self.lease),
                ms(self.margin)
            );
        }
        if self.self_fence <= self.lease / 3 + FENCE_TICK {
            anyhow::bail!(
                "cluster.self_fence_ms ({} ms) must be longer than one renewal period (lease_ms / 3 = {} ms), or one slow renewal fences a healthy host",
                ms(self.self_fence),
                ms(self.lease / 3)
            );
        }
        Ok(())
    }
}

/// What the orchestrator does with a lost host's partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Moved to the target hibernated, then resumed there.
    Resume,
    /// Moved to the target stopped, then booted there.
    Reboot,
}

/// The action for `rec` of a lost host, if any: partitions that ran (or
/// were being saved or restored) are restarted by their policy; a
/// hibernated one is resumed only under `resume`; defined, stopped or
/// failed ones stay where they are.
pub fn action(rec: &PartitionRecord) -> Option<Action> {
    // A claimed partition not yet restarted counts as running: its new
    // host was lost before it could restart it.
    let ran = rec.state.is_active() || rec.ha_pending;
    let saved = rec.hibernation.is_some();
    match rec.ha {
        HaPolicy::None => None,
        HaPolicy::Resume if saved && (ran || rec.state == PartitionState::Hibernated) => {
            Some(Action::Resume)
        }
        HaPolicy::Resume | HaPolicy::Reboot if ran => Some(Action::Reboot),
        _ => None,
    }
}

/// One candidate host: its id, name, and what it has left.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Room {
    pub id: String,
    pub name: String,
    pub free_vcpus: i64,
    pub free_memory_mib: i64,
}

/// The up host with the most free memory that fits `rec` (vCPUs and
/// memory, as `cluster hosts` counts them); ties by name.
pub fn pick_target<'a>(rec: &PartitionRecord, rooms: &'a [Room]) -> Option<&'a Room> {
    rooms
        .iter()
        .filter(|r| r.free_vcpus >= rec.vcpus as i64 && r.free_memory_mib >= rec.memory_mib as i64)
        .max_by(|a, b| {
            a.free_memory_mib
                .cmp(&b.free_memory_mib)
                .then_with(|| b.name.cmp(&a.name))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(lease: u64, fence: Option<u64>, margin: Option<u64>) -> ClusterConfig {
        ClusterConfig {
            lease_ms: lease,
            self_fence_ms: fence,
            takeover_margin_ms: margin,
            ..Default::default()
        }
    }

    #[test]
    fn default_timings_keep_the_rule_for_every_lease() {
        for lease in [1000, 2000, 3000, 5000, 60_000, 3_600_000] {
            let t = Timings::of(&cfg(lease, None, None));
            t.check().unwrap_or_else(|e| panic!("{lease}: {e}"));
        }
    }

    #[test]
    fn timings_that_allow_two_runners_are_refused() {
        // Fencing after the lease would be gone, with no margin.
        let e = Timings::of(&cfg(3000, Some(3000), Some(0)))
            .check()
            .unwrap_err();
        assert!(e.to_string().contains("self_fence_ms"), "{e}");
        // Just inside: 2000 + 1 % + 500 < 2970 + 0.
        Timings::of(&cfg(3000, Some(2000), Some(0)))
            .check()
            .unwrap();
        // A self-fence shorter than one renewal period.
        let e = Timings::of(&cfg(3000, Some(900), None))
            .check()
            .unwrap_err();
        assert!(e.to_string().contains("renewal"), "{e}");
    }

    fn rec(state: PartitionState, ha: HaPolicy, saved: bool) -> PartitionRecord {
        let mut r = bulkhead_store::conformance::record("p");
        r.state = state;
        r.ha = ha;
        r.hibernation = saved.then(|| bulkhead_store::HibernationRecord {
            location: "x".into(),
            bytes: 1,
            sha256: String::new(),
            saved_at: 0,
            reason: bulkhead_store::HibernateReason::Manual,
            config: serde_json::Value::Null,
        });
        r
    }

    /// A claim whose restart never happened is acted on again when its new
    /// host is lost in turn; nothing else stopped is.
    #[test]
    fn a_pending_claim_counts_as_running() {
        let mut r = rec(PartitionState::Stopped, HaPolicy::Reboot, false);
        assert_eq!(action(&r), None);
        r.ha_pending = true;
        assert_eq!(action(&r), Some(Action::Reboot));
        r.ha = HaPolicy::None;
        assert_eq!(action(&r), None);
    }

    #[test]
    fn actions_follow_the_policy() {
        use PartitionState::*;
        let cases = [
            (Running, HaPolicy::None, true, None),
            (Running, HaPolicy::Reboot, false, Some(Action::Reboot)),
            (Running, HaPolicy::Reboot, true, Some(Action::Reboot)),
            (Running, HaPolicy::Resume, true, Some(Action::Resume)),
            (Running, HaPolicy::Resume, false, Some(Action::Reboot)),
            (Hibernated, HaPolicy::Resume, true, Some(Action::Resume)),
            (Hibernated, HaPolicy::Reboot, true, None),
            (Stopped, HaPolicy::Reboot, false, None),
            (Defined, HaPolicy::Resume, false, None),
        ];
        for (state, ha, saved, want) in cases {
            assert_eq!(action(&rec(state, ha, saved)), want, "{state} {ha} {saved}");
        }
    }

    #[test]
    fn the_target_fits_and_has_the_most_memory() {
        let room = |name: &str, cpus, mem| Room {
            id: format!("id-{name}"),
            name: name.into(),
            free_vcpus: cpus,
            free_memory_mib: mem,
        };
        let r = rec(PartitionState::Running, HaPolicy::Reboot, false);
        let rooms = [room("b", 4, 1000), room("c", 4, 3000), room("d", 0, 9000)];
        assert_eq!(pick_target(&r, &rooms).unwrap().name, "c");
        assert!(pick_target(&r, &[room("b", 4, 64)]).is_none());
        let tie = [room("c", 2, 500), room("b", 2, 500)];
        assert_eq!(pick_target(&r, &tie).unwrap().name, "b");
    }
}

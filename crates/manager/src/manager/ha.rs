//! The daemon's side of host loss and fencing (issue 12; the rules are in
//! `crate::ha` and docs/cluster.md, "Fencing"):
//!
//! - the self-fence: a host whose last successful lease renewal started
//!   more than `self_fence_ms` ago kills every QEMU it runs (SIGKILL, then
//!   the wait for its exit), stops feeding its watchdog and writes nothing
//!   more until it is a member again;
//! - the rejoin: a host that registers again kills what it still runs for
//!   partitions that are no longer its own, cleans their adapters up,
//!   releases its locks, and records its own fenced partitions as failed;
//!   it restarts and resumes nothing;
//! - the orchestrator: one host at a time (the store's lease-bound role)
//!   claims the partitions of hosts lost for longer than the takeover
//!   margin and restarts them elsewhere by their policy.

use super::*;
use crate::ha::{Action, Room, Timings};
use bulkhead_store::{HaPolicy, HostState};
use std::collections::HashMap;
use std::io::Write as _;
use std::time::Instant;

/// The store role the orchestrator holds.
const ROLE: &str = "orchestrator";

/// Tries of a restart on the target when the store was unavailable
/// (an etcd leader change): each waits a little longer.
const RESTART_TRIES: u32 = 4;

/// `BULKHEAD_FAILPOINT` value (debug builds) at which a failover stops
/// right after its claim, as if the orchestrator had died there.
pub const FAILPOINT_AFTER_CLAIM: &str = "ha-after-claim";

fn stops_after_claim() -> bool {
    cfg!(debug_assertions)
        && std::env::var(super::hibernate::FAILPOINT_ENV).is_ok_and(|v| v == FAILPOINT_AFTER_CLAIM)
}

/// What the self-fence and the rejoin share.
#[derive(Default)]
pub(crate) struct HaState {
    /// When the renewal that last succeeded was sent.
    renewed: Mutex<Option<Instant>>,
    /// Set from the self-fence until the rejoin: nothing is written.
    fenced: AtomicBool,
    /// The partitions the self-fence killed, for the rejoin.
    killed: Mutex<HashSet<String>>,
    /// Failovers this daemon runs as orchestrator, by partition.
    running: Mutex<HashSet<String>>,
}

impl HaState {
    pub(crate) fn fenced(&self) -> bool {
        self.fenced.load(Ordering::SeqCst)
    }
}

impl Manager {
    pub(super) async fn set_ha(
        &self,
        name: &str,
        ha: HaPolicy,
    ) -> Result<PartitionRecord, ApiError> {
        self.modify(name, &format!("ha {ha}"), |r| r.ha = ha).await
    }

    pub(super) fn ha_killed(&self, name: &str) {
        self.ha.killed.lock().unwrap().insert(name.to_string());
    }

    /// The membership renewal that was sent at `at` succeeded.
    pub fn lease_renewed(&self, at: Instant) {
        let mut r = self.ha.renewed.lock().unwrap();
        if r.is_none_or(|prev| prev < at) {
            *r = Some(at);
        }
    }

    /// True while this host is fenced (until it is a member again).
    pub fn fenced(&self) -> bool {
        self.ha.fenced()
    }

    /// Refuses what a fenced host is asked: it writes nothing until it
    /// has rejoined.
    pub(super) fn check_not_fenced(&self) -> Result<(), ApiError> {
        match self.fenced() {
            true => Err(ApiError::Unavailable(
                "this host lost its cluster lease and fenced itself (its partitions were killed); it serves nothing until it is a member again".into(),
            )),
            false => Ok(()),
        }
    }

    /// Starts the self-fence (and the watchdog feeding), checking every
    /// [`crate::ha::FENCE_TICK`]. It ends with the manager.
    pub fn spawn_self_fence(self: &Arc<Self>) {
        let t = Timings::of(&self.cfg.cluster);
        let mut dog = self.cfg.cluster.watchdog.as_ref().and_then(|p| {
            std::fs::OpenOptions::new()
                .write(true)
                .open(p)
                .map_err(|e| tracing::warn!(path = %p.display(), error = %e, "watchdog not fed"))
                .ok()
        });
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(crate::ha::FENCE_TICK);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(m) = weak.upgrade() else { return };
                let Some(at) = *m.ha.renewed.lock().unwrap() else {
                    continue;
                };
                let since = at.elapsed();
                if since < t.self_fence {
                    if let Some(d) = dog.as_mut() {
                        // Any byte feeds it; never the magic 'V' that disarms it.
                        let _ = d.write_all(b"\0").and_then(|_| d.flush());
                    }
                    continue;
                }
                if !m.ha.fenced.swap(true, Ordering::SeqCst) {
                    m.self_fence(since).await;
                }
            }
        });
    }

    /// Kills every QEMU of this host, each SIGKILL then the wait for its
    /// exit (the supervisors see `fenced` and write nothing).
    async fn self_fence(&self, since: Duration) {
        let live: Vec<(String, Arc<Partition>)> = self
            .live
            .lock()
            .unwrap()
            .iter()
            .map(|(n, l)| (n.clone(), l.partition.clone()))
            .collect();
        let t0 = Instant::now();
        for (name, p) in &live {
            self.ha.killed.lock().unwrap().insert(name.clone());
            if let Err(e) = p.kill().await {
                tracing::error!(partition = %name, error = %e, "self-fence: kill failed");
            }
        }
        tracing::error!(
            lease_unrenewed_ms = since.as_millis() as u64,
            killed = live.len(),
            kill_ms = t0.elapsed().as_millis() as u64,
            "self-fenced: the cluster lease was not renewed in time; every partition of this host was killed"
        );
    }

    /// After this host registered again: what it still runs or holds for
    /// partitions that are not its own any more is ended and cleaned up;
    /// its own fenced partitions are recorded failed. Nothing is restarted.
    pub async fn rejoin(self: &Arc<Self>) {
        let recs = match self.store.list(Scope::All).await {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(error = %e, "rejoin: listing records; trying at the next renewal");
                return;
            }
        };
        let by_name: HashMap<&str, &PartitionRecord> =
            recs.iter().map(|r| (r.name.as_str(), r)).collect();
        // QEMUs still running here for a partition another host claimed.
        let foreign: Vec<(String, Arc<Partition>)> = self
            .live
            .lock()
            .unwrap()
            .iter()
            .filter(|(n, _)| by_name.get(n.as_str()).is_none_or(|r| r.host != self.host))
            .map(|(n, l)| (n.clone(), l.partition.clone()))
            .collect();
        let was_fenced = self.fenced();
        self.ha.fenced.store(true, Ordering::SeqCst);
        for (name, p) in &foreign {
            tracing::warn!(partition = %name, "rejoin: claimed by another host; killing the copy left here");
            self.ha.killed.lock().unwrap().insert(name.clone());
            let _ = p.kill().await;
        }
        let killed: Vec<String> = self.ha.killed.lock().unwrap().drain().collect();
        let locks = self.store.lu_locks(None).await.unwrap_or_default();
        for name in &killed {
            // The supervisor wrote nothing: the local leftovers go here.
            self.live.lock().unwrap().remove(name);
            match by_name.get(name.as_str()) {
                Some(rec) if rec.host == self.host => {
                    self.cleanup(rec).await;
                    self.release_lus(name).await;
                    let why = "self-fenced: this host lost its cluster lease (not restarted)";
                    let r = self
                        .set_state(name, PartitionState::Failed, why, |r| {
                            r.pid = None;
                            r.last_exit = Some(why.into());
                        })
                        .await;
                    if let Err(e) = r {
                        tracing::warn!(partition = %name, error = %e, "rejoin: recording the fence");
                    }
                }
                other => {
                    if let Some(rec) = other {
                        self.cleanup(rec).await;
                    } else {
                        let _ = self.cgroups.open(name).remove_off_reactor().await;
                    }
                    // Only locks still naming this host; the claimer's
                    // replaced ours under the same key.
                    for l in locks
                        .iter()
                        .filter(|l| l.partition == *name && l.host == self.host)
                    {
                        self.release_adapter(name, &l.adapter).await;
                    }
                    tracing::info!(partition = %name, "rejoin: cleaned up a partition another host now runs");
                }
            }
        }
        self.ha.fenced.store(false, Ordering::SeqCst);
        self.collect_ended_operations().await;
        if was_fenced || !killed.is_empty() {
            tracing::warn!(
                cleaned = killed.len(),
                "rejoined the cluster after a fence; nothing was restarted"
            );
        }
    }

    /// Starts the orchestrator loop: every host runs it; the one holding
    /// the store's role acts. With a store of one host (SQLite) the role is
    /// never granted and the loop does nothing.
    pub fn spawn_orchestrator(self: &Arc<Self>) {
        let t = Timings::of(&self.cfg.cluster);
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            let every = (t.lease / 6).clamp(Duration::from_millis(100), Duration::from_secs(2));
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut lost_since: HashMap<String, Instant> = HashMap::new();
            let mut leading = false;
            loop {
                tick.tick().await;
                let Some(m) = weak.upgrade() else { return };
                if m.fenced() {
                    leading = false;
                    continue;
                }
                let lead = m.store.campaign(ROLE, &m.host, t.lease).await;
                let lead = lead.unwrap_or_else(|e| {
                    tracing::debug!(error = %e, "orchestrator campaign");
                    false
                });
                if lead != leading {
                    tracing::info!(
                        lead,
                        "orchestrator role {}",
                        if lead { "taken" } else { "lost" }
                    );
                    leading = lead;
                }
                if !lead {
                    // A new orchestrator counts the margin from its own view.
                    lost_since.clear();
                    continue;
                }
                if let Err(e) = m.orchestrate(&t, &mut lost_since).await {
                    tracing::warn!(error = %e, "orchestrator round");
                }
            }
        });
    }

    /// One round: note which hosts are lost since when, and fail over the
    /// partitions of those lost for longer than the margin.
    async fn orchestrate(
        self: &Arc<Self>,
        t: &Timings,
        lost_since: &mut HashMap<String, Instant>,
    ) -> Result<(), ApiError> {
        // One read of the records serves the whole round.
        let members = self.store.hosts().await?;
        let recs = self.store.list(Scope::All).await?;
        let hosts = crate::cluster::hosts_of(members, &recs);
        let now = Instant::now();
        lost_since.retain(|id, _| {
            hosts
                .iter()
                .any(|h| h.id == *id && h.state == HostState::Lost)
        });
        for h in hosts.iter().filter(|h| h.state == HostState::Lost) {
            lost_since.entry(h.id.clone()).or_insert(now);
        }
        let due: Vec<&str> = lost_since
            .iter()
            .filter(|(_, since)| since.elapsed() >= t.margin)
            .map(|(id, _)| id.as_str())
            .collect();
        self.finish_pending(&hosts, &recs).await;
        if due.is_empty() {
            return Ok(());
        }
        let mut rooms: Vec<Room> = hosts
            .iter()
            .filter(|h| h.state == HostState::Up)
            .map(|h| Room {
                id: h.id.clone(),
                name: h.name.clone(),
                free_vcpus: h.capacity.cpus as i64 - h.allocated.vcpus as i64,
                free_memory_mib: h.capacity.memory_mib as i64 - h.allocated.memory_mib as i64,
            })
            .collect();
        let name_of = |id: &str| {
            hosts
                .iter()
                .find(|h| h.id == id)
                .map_or_else(|| id.to_string(), |h| h.name.clone())
        };
        for rec in recs {
            if !due.contains(&rec.host.as_str()) {
                continue;
            }
            let Some(action) = crate::ha::action(&rec) else {
                continue;
            };
            if self.ha.running.lock().unwrap().contains(&rec.name) {
                continue;
            }
            if let Err(why) = self.lus_attachable(&rec).await {
                tracing::warn!(partition = %rec.name, %why, "not restartable elsewhere");
                continue;
            }
            let Some(target) = crate::ha::pick_target(&rec, &rooms).cloned() else {
                tracing::warn!(partition = %rec.name, "no up host has room for it; it waits");
                continue;
            };
            for r in rooms.iter_mut().filter(|r| r.id == target.id) {
                r.free_vcpus -= rec.vcpus as i64;
                r.free_memory_mib -= rec.memory_mib as i64;
            }
            self.ha.running.lock().unwrap().insert(rec.name.clone());
            let m = self.clone();
            let lost = name_of(&rec.host);
            tokio::spawn(async move {
                let name = rec.name.clone();
                if let Err(e) = m.fail_over(rec, action, &lost, &target).await {
                    tracing::warn!(partition = %name, error = %e, "failover");
                }
                m.ha.running.lock().unwrap().remove(&name);
            });
        }
        Ok(())
    }

    /// Claimed partitions whose restart did not happen (the orchestrator
    /// that claimed them died, or the store was unavailable throughout) are
    /// restarted on their host, when it is up; those running again by any
    /// means lose the mark.
    async fn finish_pending(
        self: &Arc<Self>,
        hosts: &[crate::cluster::ClusterHost],
        recs: &[PartitionRecord],
    ) {
        for rec in recs {
            if !rec.ha_pending || self.ha.running.lock().unwrap().contains(&rec.name) {
                continue;
            }
            if rec.state.is_active() {
                let _ = self
                    .modify(&rec.name, "restarted after the host loss", |r| {
                        r.ha_pending = false
                    })
                    .await;
                continue;
            }
            let Some(host) = hosts
                .iter()
                .find(|h| h.id == rec.host && h.state == HostState::Up)
            else {
                continue;
            };
            let action = match rec.state {
                PartitionState::Hibernated if rec.hibernation.is_some() => Action::Resume,
                _ => Action::Reboot,
            };
            tracing::warn!(partition = %rec.name, host = %host.name, ?action, "a claimed partition was never restarted; restarting it");
            self.ha.running.lock().unwrap().insert(rec.name.clone());
            let (m, name, target) = (self.clone(), rec.name.clone(), host.name.clone());
            tokio::spawn(async move {
                if let Err(e) = m
                    .restart_claimed(&name, action, &target, Instant::now())
                    .await
                {
                    tracing::warn!(partition = %name, error = %e, "restarting a claimed partition");
                }
                m.ha.running.lock().unwrap().remove(&name);
            });
        }
    }

    /// Every LU of `rec` is known and its client's (the repository is the
    /// same on every member, so what attaches on one attaches on all).
    async fn lus_attachable(&self, rec: &PartitionRecord) -> Result<(), String> {
        for lu in rec.disks.iter().filter_map(|d| d.lu.as_deref()) {
            match self.store.lu_get(lu).await {
                Ok(Some(l)) if l.client == rec.client() => {}
                Ok(Some(l)) => return Err(format!("LU {lu:?} is client {:?}'s", l.client)),
                Ok(None) => return Err(format!("LU {lu:?} is gone")),
                Err(e) => return Err(e.to_string()),
            }
        }
        Ok(())
    }

    /// Claims `rec` (lost with host `lost`) for `target` and restarts it
    /// there: the events say each step.
    async fn fail_over(
        self: &Arc<Self>,
        rec: PartitionRecord,
        action: Action,
        lost: &str,
        target: &Room,
    ) -> Result<(), ApiError> {
        let t0 = Instant::now();
        let name = rec.name.clone();
        let lost_id = rec.host.clone();
        // The event first, under the holder's token (nothing else changes).
        let rec = self
            .store
            .update(&rec, &format!("host {lost} lost"))
            .await?;
        let token = self
            .store
            .claim(&name, &lost_id, &target.id, rec.revision, rec.fence)
            .await?;
        let mut moved = rec.clone();
        moved.host = target.id.clone();
        moved.fence = Some(token);
        moved.pid = None;
        moved.started_at = None;
        moved.state_since = now_ms();
        moved.last_exit = Some(format!("host {lost} lost"));
        moved.ha_pending = true;
        let discard = match action {
            Action::Resume => {
                moved.state = PartitionState::Hibernated;
                None
            }
            Action::Reboot => {
                moved.state = PartitionState::Stopped;
                moved.hibernation.take()
            }
        };
        let ev = format!("claimed by {}, token {token}", target.name);
        self.store.update(&moved, &ev).await?;
        if let Some(h) = discard {
            // A reboot makes the saved memory stale: it can never be resumed.
            if let Ok(dir) = self.image_dir_of(&h) {
                let _ = std::fs::remove_dir_all(dir);
            }
        }
        tracing::info!(partition = %name, target = %target.name, token, ?action, "claimed");
        if stops_after_claim() {
            tracing::error!(partition = %name, "failpoint {FAILPOINT_AFTER_CLAIM}: the failover stops after the claim");
            return Ok(());
        }
        self.restart_claimed(&name, action, &target.name, t0).await
    }

    /// Restarts a claimed partition on its new host `target` by `action`,
    /// and records how it went; the claim stays pending while the store was
    /// unavailable throughout (the next orchestrator round tries again).
    async fn restart_claimed(
        self: &Arc<Self>,
        name: &str,
        action: Action,
        target: &str,
        t0: Instant,
    ) -> Result<(), ApiError> {
        let name = name.to_string();
        let req = || match action {
            Action::Resume => ApiRequest::Resume {
                name: name.clone(),
                opts: ResumeOptions {
                    host: Some(target.to_string()),
                    // Automatic promotion by an HA policy is not asked for.
                    promote_mirror: false,
                },
            },
            Action::Reboot => ApiRequest::Start {
                name: name.clone(),
                opts: StartOptions { wait: true },
            },
        };
        let mut last = None;
        for i in 0..RESTART_TRIES {
            match self.handle(req()).await {
                Ok(_) => {
                    last = None;
                    break;
                }
                Err(e @ ApiError::Unavailable(_)) => {
                    tracing::warn!(partition = %name, error = %e, "restart on the target; trying again");
                    last = Some(e);
                    tokio::time::sleep(Duration::from_millis(500 << i)).await;
                }
                Err(e) => {
                    last = Some(e);
                    break;
                }
            }
        }
        let ev = match &last {
            None => format!(
                "running on {target} ({} ms after the claim)",
                t0.elapsed().as_millis()
            ),
            Some(e) => format!("restart on {target} failed: {e}"),
        };
        let pending = matches!(last, Some(ApiError::Unavailable(_)));
        if let Err(e) = self.modify(&name, &ev, |r| r.ha_pending = pending).await {
            tracing::warn!(partition = %name, error = %e, "recording the failover");
        }
        last.map_or(Ok(()), Err)
    }
}

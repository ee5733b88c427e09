//! The allocator: pools of partitions, the FIFO wait queue, sessions. Pure logic: the
//! caller passes `now`, carries out the returned [`Action`]s and reports their outcome
//! (`partition_ready`, `partition_failed`, `cleanup_done`).

use crate::types::*;
use bulkhead_pool_proto::{check_name, ErrorCode, RefuseReason, SessionId};
use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

/// Consecutive failed starts after which a partition stays `Failed` until an
/// administrator retries it (no boot loop on a broken image).
pub const MAX_START_FAILURES: u32 = 3;

#[derive(Debug)]
struct Pool {
    spec: PoolSpec,
    template: bool,
}

#[derive(Debug)]
struct Session {
    partition: String,
    user: String,
    max_sessions: u32,
    confirm: bool,
}

#[derive(Debug)]
struct Waiter {
    id: RequestId,
    program: String,
    user: String,
    max_sessions: u32,
    deadline: Instant,
}

/// A request for a partition, already authenticated by the gateway.
#[derive(Debug, Clone)]
pub struct Request {
    pub program: String,
    /// Becomes the session's alternate id.
    pub user: String,
    /// The user's limit on concurrent sessions (queued requests count too).
    pub max_sessions: u32,
    /// How long the request may wait in the queue; zero refuses at once when none is idle.
    pub wait: Duration,
}

#[derive(Debug, Default)]
pub struct Allocator {
    pools: BTreeMap<String, Pool>,
    partitions: BTreeMap<String, Partition>,
    sessions: BTreeMap<SessionId, Session>,
    queue: VecDeque<Waiter>,
    next_request: u64,
    next_session: u64,
}

impl Allocator {
    pub fn new() -> Self {
        Self::default()
    }

    /// Session ids start after `last` (the highest a previous daemon handed out).
    pub fn with_last_session(last: u64) -> Self {
        Self {
            next_session: last,
            ..Self::default()
        }
    }

    // ---- views -------------------------------------------------------------------

    pub fn pool(&self, name: &str) -> Option<&PoolSpec> {
        self.pools.get(name).map(|p| &p.spec)
    }

    pub fn pools(&self) -> impl Iterator<Item = &PoolSpec> {
        self.pools.values().map(|p| &p.spec)
    }

    pub fn partition(&self, primary_id: &str) -> Option<&Partition> {
        self.partitions.get(primary_id)
    }

    /// A pool's partitions in primary-id order (`pool show`).
    pub fn partitions_of<'a>(&'a self, pool: &'a str) -> impl Iterator<Item = &'a Partition> {
        self.partitions.values().filter(move |p| p.pool == pool)
    }

    pub fn session_partition(&self, session: SessionId) -> Option<&str> {
        self.sessions.get(&session).map(|s| s.partition.as_str())
    }

    pub fn session_count(&self) -> usize {
        self.sessions.len()
    }

    pub fn queue_len(&self) -> usize {
        self.queue.len()
    }

    /// The program each queued request waits for, in queue order (metrics).
    pub fn queued_programs(&self) -> impl Iterator<Item = &str> {
        self.queue.iter().map(|w| w.program.as_str())
    }

    /// When `tick` next has work (the earliest queued deadline).
    pub fn next_deadline(&self) -> Option<Instant> {
        self.queue.iter().map(|w| w.deadline).min()
    }

    // ---- pools -------------------------------------------------------------------

    /// Adds a pool and returns the boots of `NAME-1..=NAME-size`.
    pub fn add_pool(&mut self, spec: PoolSpec) -> Result<Vec<Action>, AllocError> {
        spec.validate()?;
        if self.pools.contains_key(&spec.name) {
            return Err(AllocError::PoolExists(spec.name));
        }
        let name = spec.name.clone();
        self.pools.insert(
            name.clone(),
            Pool {
                spec,
                template: false,
            },
        );
        let mut actions = Vec::new();
        let size = self.pools[&name].spec.size;
        for _ in 0..size {
            self.grow(&name, &mut actions);
        }
        self.settle(&mut actions);
        Ok(actions)
    }

    /// Records that the pool has (or no longer has) a saved state to restore
    /// partitions from; later starts are `Restore`s rather than cold boots.
    pub fn set_template(&mut self, pool: &str, ready: bool) -> Result<(), AllocError> {
        self.pool_mut(pool)?.template = ready;
        Ok(())
    }

    /// Changes a pool's size and max; the next decisions grow or shrink toward them.
    pub fn resize(&mut self, pool: &str, size: u32, max: u32) -> Result<Vec<Action>, AllocError> {
        let p = self.pool_mut(pool)?;
        let spec = PoolSpec {
            size,
            max,
            ..p.spec.clone()
        };
        spec.validate()?;
        p.spec = spec;
        let mut actions = Vec::new();
        while self.partitions_of(pool).count() < size as usize {
            self.grow(pool, &mut actions);
        }
        self.settle(&mut actions);
        Ok(actions)
    }

    /// Removes a pool: its sessions end (`Shutdown`), its partitions are destroyed,
    /// and waiters whose program no pool serves any more are refused.
    pub fn remove_pool(&mut self, pool: &str) -> Result<Vec<Action>, AllocError> {
        if self.pools.remove(pool).is_none() {
            return Err(AllocError::UnknownPool(pool.into()));
        }
        let mut actions = Vec::new();
        let ids: Vec<String> = self
            .partitions_of(pool)
            .map(|p| p.primary_id.clone())
            .collect();
        for id in ids {
            let p = self.partitions.remove(&id).expect("listed");
            self.end_session(p.state, ErrorCode::Shutdown, &mut actions);
            actions.push(Action::Destroy { partition: id });
        }
        let served: Vec<String> = self
            .pools
            .values()
            .map(|p| p.spec.program.clone())
            .collect();
        let (keep, gone): (VecDeque<Waiter>, VecDeque<Waiter>) = std::mem::take(&mut self.queue)
            .into_iter()
            .partition(|w| served.contains(&w.program));
        self.queue = keep;
        for w in gone {
            actions.push(refuse(w.id, RefuseReason::UnknownProgram));
        }
        self.settle(&mut actions);
        Ok(actions)
    }

    // ---- requests and sessions ---------------------------------------------------

    /// Takes an ALLOCATE. Its answer is among the returned actions, or a later
    /// call's (when it had to wait); every request is answered exactly once, unless
    /// the caller cancels it.
    pub fn request(&mut self, req: Request, now: Instant) -> (RequestId, Vec<Action>) {
        self.next_request += 1;
        let id = RequestId(self.next_request);
        let mut actions = Vec::new();
        if !self.pools.values().any(|p| p.spec.program == req.program) {
            actions.push(refuse(id, RefuseReason::UnknownProgram));
        } else if self.user_load(&req.user) >= req.max_sessions as usize {
            actions.push(refuse(id, RefuseReason::UserLimit));
        } else if let Some(part) = self.idle_for(&req.program) {
            // No waiter can be ahead: `settle` never leaves one beside an idle partition.
            self.start_session(id, part, req.user, req.max_sessions, &mut actions);
        } else if req.wait.is_zero() {
            actions.push(refuse(id, RefuseReason::PoolExhausted));
        } else {
            self.queue.push_back(Waiter {
                id,
                program: req.program,
                user: req.user,
                max_sessions: req.max_sessions,
                deadline: now + req.wait,
            });
        }
        self.settle(&mut actions);
        (id, actions)
    }

    /// The requester went away while waiting; true if it was still queued (it gets
    /// no answer then).
    pub fn cancel(&mut self, id: RequestId) -> bool {
        let before = self.queue.len();
        self.queue.retain(|w| w.id != id);
        before != self.queue.len()
    }

    /// Refuses the waiters whose deadline has come (`PoolExhausted`).
    pub fn tick(&mut self, now: Instant) -> Vec<Action> {
        let mut actions = Vec::new();
        let (expired, keep): (VecDeque<Waiter>, VecDeque<Waiter>) = std::mem::take(&mut self.queue)
            .into_iter()
            .partition(|w| w.deadline <= now);
        self.queue = keep;
        for w in expired {
            actions.push(refuse(w.id, RefuseReason::PoolExhausted));
        }
        self.settle(&mut actions);
        actions
    }

    /// Ends a session: the partition's cleanup is asked for. With `confirm` a
    /// `Confirmed` follows when it succeeds; without (the client vanished or idled
    /// out) nothing is sent to the client.
    pub fn deallocate(
        &mut self,
        session: SessionId,
        confirm: bool,
    ) -> Result<Vec<Action>, AllocError> {
        let s = self
            .sessions
            .get_mut(&session)
            .ok_or(AllocError::UnknownSession(session))?;
        let part = self
            .partitions
            .get_mut(&s.partition)
            .expect("session partition");
        if part.state != PartitionState::InSession(session) {
            return Err(AllocError::NotInSession(session));
        }
        s.confirm = confirm;
        part.state = PartitionState::Cleaning(session);
        Ok(vec![Action::Cleanup {
            partition: part.primary_id.clone(),
            session,
        }])
    }

    /// The cleanup of `session` finished (`ok`: exited 0). The alternate id is cleared
    /// and the partition is idle again, or recycled when its count is reached or the
    /// cleanup failed (its state can no longer be trusted).
    pub fn cleanup_done(
        &mut self,
        session: SessionId,
        ok: bool,
    ) -> Result<Vec<Action>, AllocError> {
        let s = self
            .sessions
            .get(&session)
            .ok_or(AllocError::UnknownSession(session))?;
        let id = s.partition.clone();
        if self.partitions[&id].state != PartitionState::Cleaning(session) {
            return Err(AllocError::NotCleaning(session));
        }
        let s = self.sessions.remove(&session).expect("checked");
        let mut actions = Vec::new();
        if s.confirm {
            actions.push(if ok {
                Action::Confirmed { session }
            } else {
                Action::EndSession {
                    session,
                    code: ErrorCode::CleanupFailed,
                }
            });
        }
        let recycle_after = self.pools[&self.partitions[&id].pool].spec.recycle_after;
        let part = self.partitions.get_mut(&id).expect("exists");
        part.alternate_id = None;
        part.sessions_served += 1;
        part.since_recycle += 1;
        if !ok || recycle_after.is_some_and(|k| part.since_recycle >= k) {
            self.recycle(&id, &mut actions);
        } else {
            part.state = PartitionState::Idle;
        }
        self.settle(&mut actions);
        Ok(actions)
    }

    // ---- partition life ----------------------------------------------------------

    /// A boot, restore or recycle finished: the program answers on its port.
    pub fn partition_ready(&mut self, id: &str) -> Result<Vec<Action>, AllocError> {
        let part = self.partition_mut(id)?;
        if !matches!(
            part.state,
            PartitionState::Booting | PartitionState::Recycling
        ) {
            return Err(AllocError::NotStarting(id.into()));
        }
        part.state = PartitionState::Idle;
        part.start_failures = 0;
        let mut actions = Vec::new();
        self.settle(&mut actions);
        Ok(actions)
    }

    /// The partition died, or its start failed. A session on it ends (`ProgramDied`)
    /// and it is recycled, unless its starts keep failing: then it stays `Failed`.
    pub fn partition_failed(&mut self, id: &str) -> Result<Vec<Action>, AllocError> {
        let part = self.partition_mut(id)?;
        if part.state == PartitionState::Failed {
            return Ok(Vec::new());
        }
        let starting = matches!(
            part.state,
            PartitionState::Booting | PartitionState::Recycling
        );
        let mut actions = Vec::new();
        let state = part.state;
        self.end_session(state, ErrorCode::ProgramDied, &mut actions);
        let part = self.partitions.get_mut(id).expect("exists");
        part.alternate_id = None;
        if starting {
            part.start_failures += 1;
        }
        if part.start_failures >= MAX_START_FAILURES {
            part.state = PartitionState::Failed;
        } else {
            self.recycle(id, &mut actions);
        }
        self.settle(&mut actions);
        Ok(actions)
    }

    /// An administrator retries a `Failed` partition.
    pub fn retry(&mut self, id: &str) -> Result<Vec<Action>, AllocError> {
        let part = self.partition_mut(id)?;
        if part.state != PartitionState::Failed {
            return Err(AllocError::NotFailed(id.into()));
        }
        part.start_failures = 0;
        let mut actions = Vec::new();
        self.recycle(id, &mut actions);
        Ok(actions)
    }

    // ---- internals ---------------------------------------------------------------

    fn partition_mut(&mut self, id: &str) -> Result<&mut Partition, AllocError> {
        self.partitions
            .get_mut(id)
            .ok_or_else(|| AllocError::UnknownPartition(id.into()))
    }

    fn pool_mut(&mut self, name: &str) -> Result<&mut Pool, AllocError> {
        self.pools
            .get_mut(name)
            .ok_or_else(|| AllocError::UnknownPool(name.into()))
    }

    fn start_of(&self, pool: &str) -> Start {
        if self.pools[pool].template {
            Start::Template
        } else {
            Start::Cold
        }
    }

    fn recycle(&mut self, id: &str, actions: &mut Vec<Action>) {
        let from = self.start_of(&self.partitions[id].pool);
        let part = self.partitions.get_mut(id).expect("exists");
        part.state = PartitionState::Recycling;
        part.since_recycle = 0;
        part.alternate_id = None;
        actions.push(Action::Recycle {
            partition: id.to_owned(),
            from,
        });
    }

    /// Adds a partition under the lowest free `NAME-i`.
    fn grow(&mut self, pool: &str, actions: &mut Vec<Action>) {
        let index = (1..)
            .find(|i| !self.partitions.contains_key(&primary_id(pool, *i)))
            .expect("a free index");
        let id = primary_id(pool, index);
        self.partitions
            .insert(id.clone(), Partition::new(pool, &id));
        actions.push(Action::Boot {
            partition: id,
            from: self.start_of(pool),
        });
    }

    fn user_load(&self, user: &str) -> usize {
        self.sessions.values().filter(|s| s.user == user).count()
            + self.queue.iter().filter(|w| w.user == user).count()
    }

    fn idle_for(&self, program: &str) -> Option<String> {
        self.partitions
            .values()
            .find(|p| {
                p.state == PartitionState::Idle && self.pools[&p.pool].spec.program == program
            })
            .map(|p| p.primary_id.clone())
    }

    fn start_session(
        &mut self,
        request: RequestId,
        partition: String,
        user: String,
        max_sessions: u32,
        actions: &mut Vec<Action>,
    ) {
        self.next_session += 1;
        let session = SessionId(self.next_session);
        let part = self.partitions.get_mut(&partition).expect("idle partition");
        part.state = PartitionState::InSession(session);
        part.alternate_id = Some(user.clone());
        actions.push(Action::Answer {
            request,
            result: Ok(Allocation {
                session,
                partition: partition.clone(),
                program: self.pools[&part.pool].spec.program.clone(),
                alternate_id: user.clone(),
            }),
        });
        self.sessions.insert(
            session,
            Session {
                partition,
                user,
                max_sessions,
                confirm: false,
            },
        );
    }

    /// Ends the session a partition in `state` holds, telling its client unless it
    /// is gone (it deallocated without confirm; only the cleanup was left).
    fn end_session(&mut self, state: PartitionState, code: ErrorCode, actions: &mut Vec<Action>) {
        let Some(id) = state.session() else { return };
        if let Some(session) = self.sessions.remove(&id) {
            if state == PartitionState::InSession(id) || session.confirm {
                actions.push(Action::EndSession { session: id, code });
            }
        }
    }

    /// After every change: serve waiters from idle partitions in FIFO order, then
    /// grow or shrink each pool toward its idle target.
    fn settle(&mut self, actions: &mut Vec<Action>) {
        let mut i = 0;
        while i < self.queue.len() {
            match self.idle_for(&self.queue[i].program) {
                Some(part) => {
                    let w = self.queue.remove(i).expect("index in range");
                    self.start_session(w.id, part, w.user, w.max_sessions, actions);
                }
                None => i += 1,
            }
        }
        let names: Vec<String> = self.pools.keys().cloned().collect();
        // Waiters not yet covered by a partition on its way up, per program.
        let mut uncovered: BTreeMap<String, usize> = BTreeMap::new();
        for w in &self.queue {
            *uncovered.entry(w.program.clone()).or_default() += 1;
        }
        for name in &names {
            let program = &self.pools[name].spec.program;
            let starting = self.count(name, |s| {
                matches!(s, PartitionState::Booting | PartitionState::Recycling)
            });
            if let Some(u) = uncovered.get_mut(program) {
                *u = u.saturating_sub(starting);
            }
        }
        for name in &names {
            let spec = self.pools[name].spec.clone();
            let total = self.count(name, |_| true);
            let spare = self.count(name, |s| {
                matches!(
                    s,
                    PartitionState::Idle | PartitionState::Booting | PartitionState::Recycling
                )
            });
            let waiting = uncovered.get(&spec.program).copied().unwrap_or(0);
            let want = (spec.min_idle as usize).saturating_sub(spare) + waiting;
            let grow = want.min((spec.max as usize).saturating_sub(total));
            for _ in 0..grow {
                self.grow(name, actions);
            }
            if let Some(u) = uncovered.get_mut(&spec.program) {
                *u = u.saturating_sub(grow);
            }
            if waiting == 0 || total > spec.max as usize {
                self.shrink(name, &spec, actions);
            }
        }
    }

    /// Destroys idle partitions above the minimum idle while the pool is above its
    /// size, and any idle one while it is above its max (after `resize`).
    fn shrink(&mut self, pool: &str, spec: &PoolSpec, actions: &mut Vec<Action>) {
        let mut total = self.count(pool, |_| true);
        let mut idle: Vec<String> = self
            .partitions_of(pool)
            .filter(|p| p.state == PartitionState::Idle)
            .map(|p| p.primary_id.clone())
            .collect();
        // Highest index first, so the lowest names stay.
        idle.sort_by_key(|id| std::cmp::Reverse(index_of(id)));
        for id in idle {
            let idle_now = self.count(pool, |s| *s == PartitionState::Idle);
            let over_max = total > spec.max as usize;
            if !over_max && (total <= spec.size as usize || idle_now <= spec.min_idle as usize) {
                break;
            }
            self.partitions.remove(&id);
            total -= 1;
            actions.push(Action::Destroy { partition: id });
        }
    }

    fn count(&self, pool: &str, f: impl Fn(&PartitionState) -> bool) -> usize {
        self.partitions_of(pool).filter(|p| f(&p.state)).count()
    }

    /// Checks the allocator's invariants; tests call it after every step.
    pub fn check(&self) -> Result<(), String> {
        let mut seen = BTreeMap::new();
        for (sid, s) in &self.sessions {
            let p = self
                .partitions
                .get(&s.partition)
                .ok_or(format!("{sid}: no partition"))?;
            if p.state.session() != Some(*sid) {
                return Err(format!("{sid} on {} in state {:?}", p.primary_id, p.state));
            }
            if p.alternate_id.as_deref() != Some(&s.user) {
                return Err(format!(
                    "{}: alternate id {:?}",
                    p.primary_id, p.alternate_id
                ));
            }
            if let Some(other) = seen.insert(&s.partition, sid) {
                return Err(format!("{} in sessions {other} and {sid}", s.partition));
            }
            if self.user_load(&s.user) > s.max_sessions as usize {
                return Err(format!("{} over its limit", s.user));
            }
        }
        for p in self.partitions.values() {
            if let Some(s) = p.state.session() {
                if !self.sessions.contains_key(&s) {
                    return Err(format!("{} holds ended session {s}", p.primary_id));
                }
            } else if p.alternate_id.is_some() {
                return Err(format!("{}: alternate id outside a session", p.primary_id));
            }
        }
        for w in &self.queue {
            if self.idle_for(&w.program).is_some() {
                return Err(format!("{:?} waits beside an idle partition", w.id));
            }
        }
        for (name, pool) in &self.pools {
            // Above max only while the partitions over it are busy or still starting
            // (after a resize); an idle one over max is destroyed at once.
            let over = self.count(name, |_| true) > pool.spec.max as usize;
            if over && self.count(name, |s| *s == PartitionState::Idle) > 0 {
                return Err(format!("{name} above its max with idle partitions"));
            }
        }
        Ok(())
    }
}

fn refuse(request: RequestId, reason: RefuseReason) -> Action {
    Action::Answer {
        request,
        result: Err(reason),
    }
}

/// `NAME-i`: a pool partition's primary id.
pub fn primary_id(pool: &str, index: u32) -> String {
    format!("{pool}-{index}")
}

fn index_of(id: &str) -> u32 {
    id.rsplit('-')
        .next()
        .and_then(|i| i.parse().ok())
        .unwrap_or(0)
}

impl PoolSpec {
    fn validate(&self) -> Result<(), AllocError> {
        let bad = |why: &str| Err(AllocError::BadSpec(format!("{}: {why}", self.name)));
        if !check_name(&self.name) {
            return bad("pool name must be 1-64 of [A-Za-z0-9._@-]");
        }
        if !check_name(&self.program) {
            return bad("program name must be 1-64 of [A-Za-z0-9._@-]");
        }
        if self.size == 0 || self.size > self.max {
            return bad("need 1 <= size <= max");
        }
        if self.min_idle > self.max {
            return bad("min idle above max");
        }
        if self.recycle_after == Some(0) {
            return bad("recycle-after must be at least 1");
        }
        Ok(())
    }
}

//! The manager's side of remote restart (issue 12, `crate::remote_restart`).
//!
//! The operation record (store, one per partition, compare-and-swap) is the
//! lock: while it holds, administrators' start, resume, stop, restart,
//! hibernate and destroy of the partition are refused. The restore is the
//! resume's (`claim_image` + `run_claimed`) with the image kept until the
//! `stop`, so a failed operation leaves the partition hibernated with its
//! data on its source's record.

use super::*;
use crate::remote_restart::api::{RemoteRestartCommand, RemoteRestartReply, StartRemoteRestart};
use crate::remote_restart::{caps, check_token, new_token, OperationView, StopState, MAX_DETAIL};
use bulkhead_store::{OperationRecord, OperationState};

/// `BULKHEAD_FAILPOINT` value at which a target stops in the middle of a
/// restore (image claimed, nothing restored) until it is killed: the tests'
/// "target lost mid-restore".
pub const FAILPOINT_MID_RESTORE: &str = "remote-restart-mid-restore";

/// Where a remote restart's restore stops under [`FAILPOINT_MID_RESTORE`]:
/// QEMU restored with its TAP and LU locks, the guest not yet running.
pub(super) async fn failpoint_mid_restore() {
    if std::env::var(super::hibernate::FAILPOINT_ENV).is_ok_and(|v| v == FAILPOINT_MID_RESTORE) {
        tracing::error!("failpoint {FAILPOINT_MID_RESTORE}: waiting to be killed");
        std::future::pending::<()>().await;
    }
}

impl Manager {
    pub(crate) async fn remote_restart(
        self: &Arc<Self>,
        c: RemoteRestartCommand,
    ) -> Result<RemoteRestartReply, ApiError> {
        use RemoteRestartCommand as C;
        use RemoteRestartReply as R;
        Ok(match c {
            C::Start(s) => R::Started(self.view(&self.rr_start(s).await?).await?),
            C::Stop { token, req } => {
                R::Operation(self.view(&self.rr_stop(&token, req.state).await?).await?)
            }
            C::StopCollect { token } => {
                R::Operation(self.view(&self.rr_collect(&token).await?).await?)
            }
            C::Show { token } => {
                R::Operation(self.view(&self.operation_by_token(&token).await?).await?)
            }
            C::List => {
                let mut v = Vec::new();
                for op in self.store.operation_list().await? {
                    v.push(self.view(&op).await?);
                }
                R::Operations(v)
            }
        })
    }

    /// The capability value of this host (`crate::remote_restart::caps`).
    pub fn capabilities(&self) -> u64 {
        let vlan = match self.cfg.cluster.underlay {
            Some(_) => caps::VLAN_ACROSS_HOSTS,
            None => 0,
        };
        caps::HIBERNATION | caps::LU | caps::REMOTE_RESTART | vlan
    }

    /// The operation a token names; an unknown one is refused (403).
    pub(crate) async fn operation_by_token(
        &self,
        token: &str,
    ) -> Result<OperationRecord, ApiError> {
        check_token(token).map_err(ApiError::Forbidden)?;
        self.store
            .operation_list()
            .await?
            .into_iter()
            .find(|o| o.token == token)
            .ok_or_else(|| {
                ApiError::Forbidden(format!(
                    "no remote-restart operation has token {token:?}; nothing was changed"
                ))
            })
    }

    /// Refuses an administrator's command on a partition an operation holds.
    pub(crate) async fn operation_guard(&self, req: &ApiRequest) -> Result<(), ApiError> {
        use ApiRequest as R;
        let (name, what) = match req {
            R::Start { name, .. } => (name, "start"),
            R::Resume { name, .. } => (name, "resume"),
            R::Stop { name, .. } => (name, "stop"),
            R::Restart { name, .. } => (name, "restart"),
            R::Hibernate { name } => (name, "hibernate"),
            R::Destroy { name, .. } => (name, "destroy"),
            _ => return Ok(()),
        };
        match self.store.operation_get(name).await? {
            Some(op) if op.state.holds() => Err(ApiError::Conflict(format!(
                "partition {name:?} is held by remote-restart operation {} ({}); {what} is refused until it is stopped",
                op.token, op.state
            ))),
            _ => Ok(()),
        }
    }

    async fn view(&self, op: &OperationRecord) -> Result<OperationView, ApiError> {
        let hosts = self.store.hosts().await.unwrap_or_default();
        let name_of = |id: &str| {
            hosts
                .iter()
                .find(|h| h.record.id == id)
                .map_or_else(|| id.to_string(), |h| h.record.name.clone())
        };
        let config = match op.detail >= 2 {
            true => self
                .store
                .get(&op.partition)
                .await?
                .and_then(|r| r.hibernation.map(|h| h.config)),
            false => None,
        };
        Ok(OperationView::of(op, name_of, config))
    }

    /// Writes `op` (compare-and-swap); a lost race is a 409.
    async fn put_op(&self, op: &OperationRecord) -> Result<OperationRecord, ApiError> {
        let mut op = op.clone();
        op.updated_at = now_ms();
        self.store.operation_put(&op).await.map_err(|e| match e {
            StoreError::Conflict { .. } => ApiError::Conflict(format!(
                "the remote-restart operation of partition {:?} changed meanwhile ({e})",
                op.partition
            )),
            e => e.into(),
        })
    }

    /// The source's adapters as the record has them: (AdapterID, what).
    fn gather(&self, rec: &PartitionRecord) -> Vec<(String, String)> {
        let mut out = vec![("agent".to_string(), "agent channel".to_string())];
        for (i, d) in rec.disks.iter().enumerate() {
            let mode = if d.readonly { "ro" } else { "rw" };
            let what = match &d.lu {
                Some(lu) => format!("LU {lu} ({mode})"),
                None => format!("disk {} ({mode})", d.path),
            };
            out.push((format!("disk{i}"), what));
        }
        if let Some(n) = &rec.net {
            out.push(("net0".into(), format!("VLAN {} {}", n.ip, n.mac)));
        }
        out
    }

    async fn rr_start(
        self: &Arc<Self>,
        s: StartRemoteRestart,
    ) -> Result<OperationRecord, ApiError> {
        let here = crate::cluster::host_name(self);
        let token = match s.token {
            Some(t) => {
                check_token(&t).map_err(ApiError::BadRequest)?;
                t
            }
            None => new_token(),
        };
        if s.detail > MAX_DETAIL {
            return Err(ApiError::BadRequest(format!(
                "detail must be 0-{MAX_DETAIL}, got {}",
                s.detail
            )));
        }
        let timeout = s
            .timeout_secs
            .unwrap_or(self.cfg.cluster.remote_restart_timeout_secs);
        if !(1..=MAX_TIMEOUT_SECS).contains(&timeout) {
            return Err(ApiError::BadRequest(format!(
                "timeout_secs must be 1-{MAX_TIMEOUT_SECS}, got {timeout}"
            )));
        }
        let missing = s.capabilities & !self.capabilities();
        if missing != 0 {
            return Err(ApiError::Conflict(format!(
                "host {here} lacks capabilities {missing:#x} ({}) that were asked for",
                caps::names(missing).join(", ")
            )));
        }
        check_name(&s.partition)?;
        let name = s.partition.as_str();
        let rec = self.get(name).await?;
        let ops = self.store.operation_list().await?;
        if let Some(o) = ops.iter().find(|o| o.token == token) {
            return Err(ApiError::Conflict(format!(
                "token {token:?} is already the token of the remote-restart operation of partition {:?} ({}); use another",
                o.partition, o.state
            )));
        }
        let existing = ops.into_iter().find(|o| o.partition == name);
        if let Some(o) = existing.as_ref().filter(|o| o.state.holds()) {
            return Err(ApiError::Conflict(format!(
                "partition {name:?} is held by remote-restart operation {} ({})",
                o.token, o.state
            )));
        }
        let h = match (&rec.state, &rec.hibernation) {
            (PartitionState::Hibernated, Some(h)) => h.clone(),
            _ => {
                return Err(ApiError::Conflict(format!(
                    "partition {name:?} is {}, not hibernated with its data; only a hibernated partition is remote-restarted",
                    rec.state
                )))
            }
        };
        // Before the operation is recorded: a refusal changes nothing.
        if s.promote_mirror {
            self.check_promotable(&rec).await?;
        }
        let adapters = self.gather(&rec);
        let mut locks = vec![format!("hibernation:{}", h.location)];
        for side in [("source", &rec.host), ("target", &self.host)] {
            locks.extend(
                adapters
                    .iter()
                    .map(|(id, what)| format!("{}:{}:{id} {what}", side.0, side.1)),
            );
        }
        let now = now_ms();
        let op = OperationRecord {
            token,
            partition: name.to_string(),
            source: rec.host.clone(),
            target: self.host.clone(),
            state: OperationState::Starting,
            locks,
            created: Vec::new(),
            detail: s.detail,
            capabilities: s.capabilities,
            started_at: now,
            deadline: now + timeout * 1000,
            updated_at: now,
            collected: false,
            message: None,
            revision: existing.map_or(0, |o| o.revision),
        };
        // The lock: of two operations racing for this partition one write wins.
        let mut op = self.put_op(&op).await?;
        tracing::info!(partition = name, token = %op.token, "remote restart: locked");
        let lock = self.op_lock(name);
        let _g = lock.lock().await;
        match self.rr_restore(&mut op, &rec, s.promote_mirror).await {
            Ok(()) => {
                self.arm_timeout(&op);
                Ok(op)
            }
            Err(e) => {
                op.state = OperationState::Failed;
                op.message = Some(format!("start failed: {e}"));
                if let Err(w) = self.put_op(&op).await {
                    tracing::warn!(token = %op.token, error = %w, "recording a failed remote restart");
                }
                Err(e)
            }
        }
    }

    /// Checks that this host serves the source's adapters, creates the
    /// missing ones and restores the partition (the resume's code), the
    /// mirrored LUs promoted first when `promote` (inside the operation,
    /// before its LU locks: a promotion refuses a held LU).
    async fn rr_restore(
        self: &Arc<Self>,
        op: &mut OperationRecord,
        rec: &PartitionRecord,
        promote: bool,
    ) -> Result<(), ApiError> {
        let name = &rec.name;
        // Image, disks and their roots as this host sees them; LUs are
        // checked for ownership when they are locked by the restore.
        self.checked_spec(rec)?;
        let mut created = vec!["qemu".to_string(), format!("cgroup:{name}")];
        if rec.net.is_some() {
            created.push(format!("tap:{}", net::tap_name(&self.instance, name)));
        }
        for (i, d) in rec.disks.iter().enumerate() {
            if let Some(lu) = &d.lu {
                created.push(format!("lu:{lu}@disk{i}"));
            }
        }
        created.push("agent".into());
        op.created = created;
        op.state = OperationState::Restoring;
        *op = self.put_op(op).await?;
        let Some((claimed, from)) = self.claim_image(name, false).await? else {
            return Err(ApiError::Conflict(format!(
                "partition {name:?} is not hibernated"
            )));
        };
        self.run_claimed(&claimed, &from, true, promote).await?;
        op.state = OperationState::Restored;
        *op = self.put_op(op).await?;
        tracing::info!(partition = %name, token = %op.token, "remote restart: restored");
        Ok(())
    }

    /// A target that gets no `stop` before the deadline unlocks by itself
    /// and removes nothing: the partition runs on, its image is discarded.
    fn arm_timeout(self: &Arc<Self>, op: &OperationRecord) {
        let weak = Arc::downgrade(self);
        let (name, token) = (op.partition.clone(), op.token.clone());
        let wait = Duration::from_millis(op.deadline.saturating_sub(now_ms()));
        tokio::spawn(async move {
            tokio::time::sleep(wait).await;
            let Some(m) = weak.upgrade() else { return };
            let lock = m.op_lock(&name);
            let _g = lock.lock().await;
            let op = match m.store.operation_get(&name).await {
                Ok(Some(op)) if op.token == token && op.state.holds() => op,
                _ => return,
            };
            let mut op = op;
            if let Err(e) = m.end_succeeded(&name).await {
                tracing::warn!(partition = %name, error = %e, "remote restart timeout");
            }
            op.state = OperationState::TimedOut;
            op.message = Some("no stop came within the timeout: unlocked, nothing removed".into());
            match m.put_op(&op).await {
                Ok(_) => tracing::info!(partition = %name, %token, "remote restart timed out"),
                Err(e) => tracing::warn!(partition = %name, error = %e, "recording a timeout"),
            }
        });
    }

    /// The guest runs here for good: the image it came from is discarded.
    async fn end_succeeded(&self, name: &str) -> Result<(), ApiError> {
        let rec = self.get(name).await?;
        self.modify(name, "", |r| r.hibernation = None).await?;
        self.discard_hibernation(&rec);
        Ok(())
    }

    async fn rr_stop(
        self: &Arc<Self>,
        token: &str,
        state: StopState,
    ) -> Result<OperationRecord, ApiError> {
        let op = self.operation_by_token(token).await?;
        let name = op.partition.clone();
        let lock = self.op_lock(&name);
        let _g = lock.lock().await;
        // Re-read under the lock: a timeout may have ended it meanwhile.
        let mut op = self.operation_by_token(token).await?;
        if !op.state.holds() {
            return Err(ApiError::Conflict(format!(
                "remote-restart operation {token} has already ended ({}); nothing was changed",
                op.state
            )));
        }
        let here = op.target == self.host;
        match state {
            StopState::Succeeded => {
                if !here || op.state != OperationState::Restored {
                    return Err(ApiError::Conflict(format!(
                        "remote-restart operation {token} is {}; only a restored one succeeds",
                        op.state
                    )));
                }
                self.end_succeeded(&name).await?;
                op.message = Some("succeeded: the partition runs on the target".into());
            }
            StopState::Failed => {
                if !here && op.state == OperationState::Restored {
                    // Its guest ran there and may run on: only the host-loss
                    // recovery with fencing may decide it is gone.
                    return Err(ApiError::Conflict(format!(
                        "remote-restart operation {token} restored the partition on its target, which is now lost; it may still run there, so it is not put back (nothing was changed)"
                    )));
                }
                self.undo(&op, here).await?;
                op.message = Some(match here {
                    true => "failed: what the operation created is removed; hibernated on the source".into(),
                    false => "failed with the target lost: hibernated on the source; the target removes its leftovers when it is back".into(),
                });
            }
        }
        op.state = state.into();
        let op = self.put_op(&op).await?;
        tracing::info!(partition = %name, token, state = %op.state, "remote restart stopped");
        Ok(op)
    }

    /// A failed operation: the partition hibernated again on its source
    /// with its data, and what the operation created on the target removed
    /// (when `here`, this is the target; else the target is lost and only
    /// the store is left to put right).
    async fn undo(self: &Arc<Self>, op: &OperationRecord, here: bool) -> Result<(), ApiError> {
        let name = &op.partition;
        let source = op.source.clone();
        let back = |r: &mut PartitionRecord| {
            r.host = source.clone();
            r.pid = None;
            r.started_at = None;
        };
        let ev = format!(
            "remote restart {} failed: hibernated again on its source",
            op.token
        );
        let live = self.live.lock().unwrap().get(name.as_str()).map(|l| {
            (
                l.partition.clone(),
                l.stop_requested.clone(),
                l.done.clone(),
            )
        });
        let rec = self.get(name).await?;
        if rec.hibernation.is_none() {
            return Err(ApiError::Conflict(format!(
                "partition {name:?} has no hibernation data any more; it cannot be put back"
            )));
        }
        // On the target in whatever state (resuming, running, or failed by
        // a restart's recovery): it goes back.
        let moved = rec.host == op.target;
        match (here, live) {
            (true, Some((p, flag, mut done))) => {
                // Recorded hibernated first: the supervisor keeps that state.
                flag.store(true, Ordering::SeqCst);
                self.set_state(name, PartitionState::Hibernated, &ev, back)
                    .await?;
                p.kill().await.map_err(engine_err)?;
                let _ = done.wait_for(|d| *d).await;
            }
            _ if moved => {
                self.set_state(name, PartitionState::Hibernated, &ev, back)
                    .await?;
            }
            _ => {}
        }
        if here {
            self.cleanup(&rec).await;
            self.release_lus(name).await;
        } else {
            self.release_host_locks(name, &op.target).await?;
        }
        Ok(())
    }

    /// Releases the LU locks `host` holds for `partition`.
    async fn release_host_locks(&self, partition: &str, host: &str) -> Result<usize, ApiError> {
        let mut n = 0;
        for l in self.store.lu_locks(None).await? {
            if l.partition == partition && l.host == host {
                n += self.store.lu_unlock(partition, Some(&l.adapter)).await?;
            }
        }
        Ok(n)
    }

    /// `stop-collect` on the source: its locks and stale adapters released.
    async fn rr_collect(self: &Arc<Self>, token: &str) -> Result<OperationRecord, ApiError> {
        let mut op = self.operation_by_token(token).await?;
        if op.source != self.host {
            return Err(ApiError::Conflict(format!(
                "remote-restart operation {token} is collected by its source host {}",
                op.source
            )));
        }
        if op.state.holds() {
            return Err(ApiError::Conflict(format!(
                "remote-restart operation {token} is {}: the target has not stopped it yet",
                op.state
            )));
        }
        if op.collected {
            return Err(ApiError::Conflict(format!(
                "remote-restart operation {token} was already collected"
            )));
        }
        let name = op.partition.clone();
        let lock = self.op_lock(&name);
        let _g = lock.lock().await;
        let rec = self.get(&name).await?;
        let runs_here = self.running(&name).is_some();
        let mut released = 0;
        if !runs_here {
            // Nothing of it runs here: whatever it left (TAP, cgroup) is stale.
            self.cleanup(&rec).await;
            released = self.release_host_locks(&name, &self.host).await?;
        }
        op.collected = true;
        let note = format!("collected on the source ({released} LU locks released)");
        op.message = Some(match &op.message {
            Some(m) => format!("{m}; {note}"),
            None => note,
        });
        self.put_op(&op).await
    }

    /// After this host rejoined: the remote restarts it was the source of
    /// that ended (on the target, or by its timeout) while it was away are
    /// collected, as `stop-collect` would: what they left here goes, and
    /// this host's locks on the partition's LUs are released.
    pub(super) async fn collect_ended_operations(self: &Arc<Self>) {
        let ops = match self.store.operation_list().await {
            Ok(o) => o,
            Err(e) => {
                tracing::warn!(error = %e, "rejoin: listing remote restarts");
                return;
            }
        };
        for op in ops {
            if op.source != self.host || op.state.holds() || op.collected {
                continue;
            }
            match self.rr_collect(&op.token).await {
                Ok(_) => tracing::info!(partition = %op.partition, token = %op.token,
                    "rejoin: collected a remote restart that ended while this host was away"),
                Err(e) => tracing::warn!(partition = %op.partition, token = %op.token,
                    error = %e, "rejoin: collecting a remote restart"),
            }
        }
    }

    /// After a daemon restart: operations this host was the target of.
    /// One interrupted by the restart (starting, restoring) fails, with the
    /// partition hibernated on its source; a restored one gets its timer
    /// again if it still runs, else fails the same way. (What a failed one left here while this host was lost, its TAP
    /// and cgroup, goes with the generic clean-up of what nobody owns.)
    pub(super) async fn recover_operations(self: &Arc<Self>) -> anyhow::Result<()> {
        for op in self.store.operation_list().await? {
            if op.target != self.host || !op.state.holds() {
                continue;
            }
            let runs_here = self.running(&op.partition).is_some();
            let why = match op.state {
                OperationState::Restored if runs_here => {
                    self.arm_timeout(&op);
                    continue;
                }
                OperationState::Restored => {
                    "the partition ended on the target while its bulkheadd was down"
                }
                _ => "interrupted by a bulkheadd restart on the target",
            };
            // One operation that cannot be put right does not keep the
            // daemon from starting: it stays held, and is logged.
            if let Err(e) = self.fail_here(op.clone(), why).await {
                tracing::warn!(partition = %op.partition, token = %op.token, error = %e,
                    "remote restart left held after a restart");
            }
        }
        Ok(())
    }

    /// Fails an operation this host is the target of: the partition back
    /// on its source with its data, what was created here removed.
    async fn fail_here(
        self: &Arc<Self>,
        mut op: OperationRecord,
        why: &str,
    ) -> Result<(), ApiError> {
        let lock = self.op_lock(&op.partition);
        let _g = lock.lock().await;
        self.undo(&op, true).await?;
        op.state = OperationState::Failed;
        op.message = Some(why.to_string());
        self.put_op(&op).await?;
        tracing::info!(partition = %op.partition, token = %op.token, why, "remote restart failed");
        Ok(())
    }
}

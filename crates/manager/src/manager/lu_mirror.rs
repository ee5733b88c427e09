//! Redundant LUs (issue 12 item 5): `lu mirror`, `lu unmirror`,
//! `lu promote`; the mirror jobs a writable attach starts; and the read
//! redirect that serves a read-only attach of a locked LU from its copy.
//!
//! The relation lives in the two LU records (`mirror` on the primary,
//! `mirror_of` on the copy), always written together (`lu_put_pair`). The
//! copy is a sparse raw file (`Repository::copy_rel_path`, and why in
//! `Partition::mirror_start`). Promotion makes a new qcow2 of the copy's
//! data the primary's file, so partitions keep naming the primary and find
//! the promoted data under that name; the old file is dropped and the copy,
//! equal to the new file, stays in step.

use super::*;
use crate::lu::mirror::MirrorCommand;
use crate::lu::types::LuView;
use crate::lu::{self, Repository};
use bulkhead_engine::MirrorJob;
use bulkhead_store::{LockMode, LuLock, LuMirror, LuRecord, MirrorState};

/// How long an attach waits for the first full copy before it is refused.
pub(super) const MIRROR_READY_TIMEOUT: Duration = Duration::from_secs(600);

fn conflict(msg: String) -> ApiError {
    ApiError::Conflict(msg)
}

fn mirror_state(
    state: MirrorState,
    reason: Option<String>,
    host: Option<String>,
) -> impl FnOnce(&LuMirror) -> LuMirror {
    move |m| LuMirror {
        copy: m.copy.clone(),
        state,
        reason,
        host,
        since: now_ms(),
    }
}

/// A copy's sparse file. A size the repository's file system cannot hold
/// in one file (ext4: 16 TiB) is the repository's limit, not a fault: 409.
fn make_sparse(path: &Path, bytes: u64) -> Result<(), ApiError> {
    lu::create_sparse(path, bytes).map_err(|e| match e.raw_os_error() {
        Some(libc::EFBIG) => conflict(format!(
            "the repository's file system cannot hold a copy of {bytes} bytes in one file ({e}); a redundant copy is a raw file of the LU's virtual size"
        )),
        _ => ApiError::Engine(format!("{}: {e}", path.display())),
    })
}

impl Manager {
    pub(super) async fn lu_mirror_command(&self, c: MirrorCommand) -> Result<LuView, ApiError> {
        // An LU name that breaks the rule names no LU: 404, as for `lu show`.
        let r = match c {
            MirrorCommand::Mirror { lu, req } => self.lu_mirror(&lu, req.copy).await?,
            MirrorCommand::Unmirror { lu } => self.lu_unmirror(&lu).await?,
            MirrorCommand::Promote { lu, req } => self.lu_promote(&lu, req.force).await?,
        };
        self.lu_show(&r.name).await
    }

    async fn lu_get_or_404(&self, name: &str) -> Result<LuRecord, ApiError> {
        self.store
            .lu_get(name)
            .await?
            .ok_or_else(|| StoreError::LuNotFound(name.to_string()).into())
    }

    /// The partition of this host holding `lu` writable, with its adapter.
    async fn writer_here(&self, lu: &str) -> Result<Option<(LuLock, Arc<Partition>)>, ApiError> {
        let locks = self.store.lu_locks(Some(lu)).await?;
        let Some(w) = locks
            .into_iter()
            .find(|l| l.mode == LockMode::Rw && !l.partition.contains(':'))
        else {
            return Ok(None);
        };
        if w.host != self.host {
            // Forwarded to that host before it got here; it moved meanwhile.
            return Err(conflict(format!(
                "LU {lu:?} is held writable by partition {:?} on host {}; send the command there",
                w.partition, w.host
            )));
        }
        match self.running(&w.partition) {
            Some(p) => Ok(Some((w, p))),
            None => Err(conflict(format!(
                "LU {lu:?} is locked by partition {:?}, which is not running here yet; try again",
                w.partition
            ))),
        }
    }

    /// Sets the primary's mirror state (the copy's record is unchanged).
    async fn set_mirror(
        &self,
        primary: &str,
        f: impl FnOnce(&LuMirror) -> LuMirror,
    ) -> Result<LuRecord, ApiError> {
        let mut r = self.lu_get_or_404(primary).await?;
        let Some(m) = &r.mirror else {
            return Err(conflict(format!("LU {primary:?} is no longer mirrored")));
        };
        r.mirror = Some(f(m));
        Ok(self.store.lu_update(&r).await?)
    }

    /// `lu mirror LU [--copy NAME]`: records the copy, makes it, and brings it
    /// in step; any failure takes both records back and removes the file.
    async fn lu_mirror(&self, name: &str, copy: Option<String>) -> Result<LuRecord, ApiError> {
        let r = self.lu_get_or_404(name).await?;
        // The default fits the name rule whatever the LU's length (a clash is a 409).
        let copy = copy.unwrap_or_else(|| format!("{:.41}-mirror", r.name));
        lu::check_name("copy LU", &copy).map_err(ApiError::BadRequest)?;
        if let Some(p) = &r.mirror_of {
            return Err(conflict(format!(
                "LU {name:?} is the redundant copy of LU {p:?}; a copy is not mirrored again"
            )));
        }
        if let Some(m) = &r.mirror {
            return Err(conflict(format!(
                "LU {name:?} is already mirrored onto LU {:?}",
                m.copy
            )));
        }
        let writer = self.writer_here(name).await?;
        let copy_rec = LuRecord {
            name: copy.clone(),
            client: r.client.clone(),
            size_bytes: r.size_bytes,
            path: Repository::copy_rel_path(&r.client, &copy),
            purpose: r.purpose.clone(),
            created_at: now_ms(),
            revision: 0,
            mirror: None,
            mirror_of: Some(name.to_string()),
        };
        let mut linked = r.clone();
        linked.mirror = Some(LuMirror {
            copy: copy.clone(),
            state: MirrorState::Syncing,
            reason: None,
            host: Some(self.host.clone()),
            since: now_ms(),
        });
        // The name is refused here if any LU (of any client) has it.
        let [copy_rec, linked] =
            self.store
                .lu_put_pair(&[copy_rec, linked])
                .await
                .map_err(|e| match e {
                    StoreError::LuExists(n) => conflict(format!(
                    "LU {n:?} already exists: a copy is always a new LU (choose another --copy)"
                )),
                    e => e.into(),
                })?;
        // The host whose QEMU runs the job, when one runs.
        let job_host = writer.is_some().then(|| self.host.clone());
        let made = self.make_copy(&r, &copy_rec, writer).await;
        match made {
            Ok(()) => {
                tracing::info!(lu = name, copy = %copy, "LU mirrored");
                self.set_mirror(name, mirror_state(MirrorState::Synced, None, job_host))
                    .await
            }
            Err(e) => {
                self.undo_mirror(&linked, &copy_rec).await;
                Err(e)
            }
        }
    }

    /// The copy's file made and in step: by the writer's QEMU (a mirror job)
    /// or, with no writer, by qemu-img under a read lock of the manager's.
    async fn make_copy(
        &self,
        primary: &LuRecord,
        copy: &LuRecord,
        writer: Option<(LuLock, Arc<Partition>)>,
    ) -> Result<(), ApiError> {
        let src = self.repo.path_of(&primary.path);
        let dst = self.repo.path_of(&copy.path);
        make_sparse(&dst, copy.size_bytes)?;
        if let Some((lock, p)) = writer {
            return self.run_mirror(&p, &lock.adapter, copy).await;
        }
        let holder = self.hold(primary, LockMode::Ro).await?;
        let copied = tokio::task::spawn_blocking(move || lu::copy_into(&src, &dst))
            .await
            .map_err(internal);
        self.release(&holder).await;
        copied?.map_err(ApiError::Engine)
    }

    /// A lock of the manager's own on `lu` for a copy it makes (the holder
    /// name has a ':' no partition name has); returns the holder.
    async fn hold(&self, lu: &LuRecord, mode: LockMode) -> Result<String, ApiError> {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let holder = format!("lu:{}:mirror:{}:{n}", lu.name, std::process::id());
        let lock = LuLock {
            lu: lu.name.clone(),
            host: self.host.clone(),
            partition: holder.clone(),
            adapter: "mirror".into(),
            adapter_id: 0,
            mode,
            since: 0,
        };
        self.store.lu_lock(&lock, &lu.client).await?;
        Ok(holder)
    }

    async fn release(&self, holder: &str) {
        if let Err(e) = self.store.lu_unlock(holder, None).await {
            tracing::warn!(holder, error = %e, "releasing a mirror lock");
        }
    }

    /// Starts the mirror job of `adapter` into `copy`'s file and waits until
    /// it is in step; a job that fails is stopped before the error returns.
    async fn run_mirror(
        &self,
        p: &Partition,
        adapter: &str,
        copy: &LuRecord,
    ) -> Result<(), ApiError> {
        let target = self.confine_copy(copy)?;
        let format = lu::format_of(&copy.path);
        p.mirror_start(adapter, &target, format)
            .await
            .map_err(|e| {
                ApiError::Engine(format!("starting the mirror into LU {:?}: {e}", copy.name))
            })?;
        if let Err(e) = p.mirror_wait_ready(adapter, MIRROR_READY_TIMEOUT).await {
            let _ = p.mirror_stop(adapter).await;
            return Err(ApiError::Engine(format!(
                "the copy LU {:?} could not be brought in step: {e}",
                copy.name
            )));
        }
        Ok(())
    }

    /// The copy's file, inside its client's area (made if missing, as after
    /// an unmirror that removed it by hand).
    fn confine_copy(&self, copy: &LuRecord) -> Result<PathBuf, ApiError> {
        let file = self.repo.path_of(&copy.path);
        if std::fs::symlink_metadata(&file).is_err() {
            make_sparse(&file, copy.size_bytes)?;
        }
        Ok(self.confine_lu(copy)?.path)
    }

    /// Takes a failed `lu mirror` back: the copy's record and file go, the
    /// primary is unmirrored.
    async fn undo_mirror(&self, linked: &LuRecord, copy: &LuRecord) {
        let mut primary = match self.store.lu_get(&linked.name).await {
            Ok(Some(r)) => r,
            _ => linked.clone(),
        };
        primary.mirror = None;
        let mut plain_copy = copy.clone();
        plain_copy.mirror_of = None;
        let undone = async {
            let [c, _] = self.store.lu_put_pair(&[plain_copy, primary]).await?;
            self.store.lu_delete(&c.name, c.revision).await
        };
        if let Err(e) = undone.await {
            tracing::warn!(lu = %linked.name, copy = %copy.name, error = %e, "taking a failed mirror back");
        }
        let _ = std::fs::remove_file(self.repo.path_of(&copy.path));
    }

    /// `lu unmirror LU`: the job (if one runs here) is stopped, the two
    /// records unlinked and the copy deleted (record and file); refused while
    /// a partition reads the copy.
    async fn lu_unmirror(&self, name: &str) -> Result<LuRecord, ApiError> {
        let r = self.lu_get_or_404(name).await?;
        let Some(m) = r.mirror.clone() else {
            return Err(conflict(format!("LU {name:?} is not mirrored")));
        };
        if let Some((lock, p)) = self.writer_here(name).await? {
            p.mirror_stop(&lock.adapter)
                .await
                .map_err(|e| ApiError::Engine(format!("stopping the mirror job: {e}")))?;
        }
        let mut copy = self.lu_get_or_404(&m.copy).await?;
        copy.mirror_of = None;
        let mut primary = r;
        primary.mirror = None;
        let [copy, primary] = self.store.lu_put_pair(&[copy, primary]).await?;
        // A reader's lock keeps the (now ordinary) copy; deleting it later is `lu delete`.
        match self.store.lu_delete(&copy.name, copy.revision).await {
            Ok(()) => {
                let _ = std::fs::remove_file(self.repo.path_of(&copy.path));
            }
            Err(e) => tracing::warn!(copy = %copy.name, error = %e, "the copy stays as an LU"),
        }
        tracing::info!(lu = name, copy = %m.copy, "LU unmirrored");
        Ok(primary)
    }

    /// `lu promote LU`: a new qcow2 made from the copy's data becomes the
    /// LU's file, the old file is dropped, and the copy (equal to the new
    /// file) stays in step. Refused while any partition holds the LU (a lost
    /// host's locks are released by the host-loss path first) or reads the
    /// copy, and (without `force`) while the copy is not in step. The method
    /// a host-loss policy calls.
    pub async fn lu_promote(&self, name: &str, force: bool) -> Result<LuRecord, ApiError> {
        let r = self.lu_get_or_404(name).await?;
        let Some(m) = r.mirror.clone() else {
            return Err(conflict(format!(
                "LU {name:?} is not mirrored: there is no copy to promote"
            )));
        };
        let state = self.effective(&r, &m).await;
        if state.state != MirrorState::Synced && !force {
            return Err(conflict(format!(
                "the copy LU {:?} is {}{}: promoting it would lose writes (force to promote anyway)",
                m.copy,
                state.state.as_str(),
                state.reason.map(|r| format!(" ({r})")).unwrap_or_default()
            )));
        }
        let copy = self.lu_get_or_404(&m.copy).await?;
        // Both held by the manager while it copies: no attach meanwhile.
        let held = self.hold(&r, LockMode::Rw).await.map_err(|e| {
            conflict(format!(
                "LU {name:?} cannot be promoted while it is attached: {e}"
            ))
        })?;
        let promoted = self.promote_held(&r, &copy).await;
        self.release(&held).await;
        let (primary, old) = promoted?;
        let _ = std::fs::remove_file(self.repo.path_of(&old));
        self.repoint_disks(name, &primary.path).await;
        tracing::info!(lu = name, copy = %m.copy, file = %primary.path, "redundant copy promoted");
        Ok(primary)
    }

    /// Partition records keep the file of each LU disk (for `show` and the
    /// checks before a start or resume; the file used is resolved again at
    /// lock time): after a promotion they name the new file, else a
    /// partition made before it would refer to the dropped one.
    async fn repoint_disks(&self, lu: &str, rel: &str) {
        let file = self.repo.path_of(rel).to_string_lossy().into_owned();
        let recs = match self.store.list(bulkhead_store::Scope::All).await {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(lu, error = %e, "listing partitions to repoint a promoted LU");
                return;
            }
        };
        let names_it = |r: &PartitionRecord| r.disks.iter().any(|d| d.lu.as_deref() == Some(lu));
        for rec in recs.iter().filter(|r| names_it(r)) {
            let repoint = |r: &mut PartitionRecord| {
                for d in r.disks.iter_mut().filter(|d| d.lu.as_deref() == Some(lu)) {
                    d.path = file.clone();
                }
            };
            if let Err(e) = self.modify(&rec.name, "", repoint).await {
                tracing::warn!(lu, partition = %rec.name, error = %e, "repointing a promoted LU's disk");
            }
        }
    }

    /// With the primary held: the copy's data into a new qcow2, then the
    /// record pointed at it. Returns the record and the old file to drop.
    async fn promote_held(
        &self,
        r: &LuRecord,
        copy: &LuRecord,
    ) -> Result<(LuRecord, String), ApiError> {
        let reading = self.hold(copy, LockMode::Ro).await.map_err(|e| {
            conflict(format!(
                "the copy LU {:?} cannot be promoted now: {e}",
                copy.name
            ))
        })?;
        if let Some(l) = self
            .store
            .lu_locks(Some(&copy.name))
            .await?
            .into_iter()
            .find(|l| l.partition != reading)
        {
            self.release(&reading).await;
            return Err(conflict(format!(
                "the copy LU {:?} is being read by partition {:?}; detach it before promoting",
                copy.name, l.partition
            )));
        }
        let rel = Repository::lu_rel_path(&r.client, &format!("{}.promoted-{}", r.name, now_ms()));
        let (src, dst) = (self.repo.path_of(&copy.path), self.repo.path_of(&rel));
        let made = tokio::task::spawn_blocking(move || lu::copy_to(&src, &dst))
            .await
            .map_err(internal);
        self.release(&reading).await;
        made?.map_err(ApiError::Engine)?;
        let mut primary = self.lu_get_or_404(&r.name).await?;
        let old = std::mem::replace(&mut primary.path, rel.clone());
        primary.mirror = Some(LuMirror {
            copy: copy.name.clone(),
            state: MirrorState::Synced,
            reason: None,
            host: None,
            since: now_ms(),
        });
        match self.store.lu_update(&primary).await {
            Ok(p) => Ok((p, old)),
            Err(e) => {
                let _ = std::fs::remove_file(self.repo.path_of(&rel));
                Err(e.into())
            }
        }
    }

    /// The mirror as it stands now: a job recorded as running whose writer
    /// is gone left the copy behind (stale) unless it was in step; a job of
    /// this host is asked directly.
    pub(super) async fn effective(&self, r: &LuRecord, m: &LuMirror) -> LuMirror {
        let mut out = m.clone();
        if m.host.is_none() || !matches!(m.state, MirrorState::Syncing | MirrorState::Synced) {
            return out;
        }
        let writer = self
            .store
            .lu_locks(Some(&r.name))
            .await
            .ok()
            .and_then(|ls| {
                ls.into_iter()
                    .find(|l| l.mode == LockMode::Rw && !l.partition.contains(':'))
            });
        match writer {
            None => {
                out.host = None;
                if m.state == MirrorState::Syncing {
                    out.state = MirrorState::Stale;
                    out.reason = Some("the mirror job ended before the copy was in step".into());
                }
            }
            Some(w) if w.host == self.host => {
                let Some(p) = self.running(&w.partition) else {
                    return out;
                };
                match p.mirror_status(&w.adapter).await {
                    Ok(MirrorJob::Ready) => out.state = MirrorState::Synced,
                    Ok(MirrorJob::Syncing { done, total }) => {
                        out.state = MirrorState::Syncing;
                        out.reason = Some(format!("{done} of {total} bytes copied"));
                    }
                    Ok(MirrorJob::Failed(e)) => {
                        out.state = MirrorState::Broken;
                        out.reason = Some(e);
                    }
                    Ok(MirrorJob::Absent) => {
                        out.state = MirrorState::Broken;
                        out.reason = Some("no mirror job runs for the attached LU".into());
                    }
                    Err(_) => {}
                }
            }
            Some(_) => {}
        }
        out
    }

    /// After a partition's QEMU launched: a mirror job for each LU it holds
    /// writable that has a copy, each in step before this returns. The first
    /// that cannot be is the start's error (the copy's state says why).
    pub(super) async fn start_mirrors(
        &self,
        rec: &PartitionRecord,
        p: &Partition,
    ) -> Result<(), ApiError> {
        for (i, d) in rec.disks.iter().enumerate() {
            let Some(name) = &d.lu else { continue };
            if !d.readonly {
                self.mirror_attached(name, &format!("disk{i}"), p).await?;
            }
        }
        Ok(())
    }

    /// Starts the mirror of LU `name`, attached writable as `adapter` of
    /// `p`, if it has a copy; records syncing, then synced or broken.
    pub(super) async fn mirror_attached(
        &self,
        name: &str,
        adapter: &str,
        p: &Partition,
    ) -> Result<(), ApiError> {
        let r = self.lu_get_or_404(name).await?;
        let Some(m) = &r.mirror else { return Ok(()) };
        let here = Some(self.host.clone());
        self.set_mirror(name, mirror_state(MirrorState::Syncing, None, here.clone()))
            .await?;
        let copy = self.lu_get_or_404(&m.copy).await?;
        match self.run_mirror(p, adapter, &copy).await {
            Ok(()) => {
                self.set_mirror(name, mirror_state(MirrorState::Synced, None, here))
                    .await?;
                tracing::info!(lu = name, copy = %copy.name, "mirror in step");
                Ok(())
            }
            Err(e) => {
                let why = Some(e.to_string());
                if let Err(e) = self
                    .set_mirror(name, mirror_state(MirrorState::Broken, why, None))
                    .await
                {
                    tracing::warn!(lu = name, error = %e, "recording a broken mirror");
                }
                Err(ApiError::Engine(format!(
                    "LU {name:?} is mirrored and its copy cannot be kept: {e}; the attach is refused (lu unmirror {name} to attach it without the copy)"
                )))
            }
        }
    }

    /// Takes a lock for an LU attach; a read-only attach refused because
    /// another holder writes the LU is served from its in-step copy instead
    /// (the copy is locked read-only for the same holder). The ownership
    /// check comes first in the store: another client gets the ordinary
    /// refusal. Returns the record locked and whether it is the copy.
    pub(super) async fn lock_or_redirect(
        &self,
        lock: &LuLock,
        client: &str,
        fence: Option<u64>,
    ) -> Result<(LuRecord, bool), ApiError> {
        // Under the partition's fencing token: a stale holder is refused.
        let refusal = match self.store.lu_lock_fenced(lock, client, fence).await {
            Ok(r) => return Ok((r, false)),
            Err(StoreError::Locked(msg)) if lock.mode == LockMode::Ro => msg,
            Err(e) => return Err(e.into()),
        };
        let r = self.lu_get_or_404(&lock.lu).await?;
        let Some(m) = &r.mirror else {
            return Err(StoreError::Locked(refusal).into());
        };
        let now = self.effective(&r, m).await;
        if now.state != MirrorState::Synced {
            return Err(StoreError::Locked(format!(
                "{refusal}; its redundant copy {:?} is {}, so it cannot serve the read",
                m.copy,
                now.state.as_str()
            ))
            .into());
        }
        let copy_lock = LuLock {
            lu: m.copy.clone(),
            ..lock.clone()
        };
        let copy = self.store.lu_lock_fenced(&copy_lock, client, fence).await?;
        tracing::info!(lu = %r.name, copy = %copy.name, partition = %lock.partition, "read served from the redundant copy");
        Ok((copy, true))
    }

    /// The LUs `rec` writes that are mirrored: (adapter, LU, its mirror).
    async fn mirrored_disks(
        &self,
        rec: &PartitionRecord,
    ) -> Result<Vec<(String, LuRecord, LuMirror)>, ApiError> {
        let mut out = Vec::new();
        for (i, d) in rec.disks.iter().enumerate() {
            let Some(name) = d.lu.as_deref().filter(|_| !d.readonly) else {
                continue;
            };
            let r = self.lu_get_or_404(name).await?;
            if let Some(m) = r.mirror.clone() {
                out.push((format!("disk{i}"), r, m));
            }
        }
        Ok(out)
    }

    /// `--promote-mirror` (resume, remote restart), before anything is
    /// claimed or recorded, so a refusal (409) changes nothing: every copy
    /// in step and unheld, and no checkpoint image, whose disk point lives
    /// in the primary's own file (the copy has none).
    pub(super) async fn check_promotable(&self, rec: &PartitionRecord) -> Result<(), ApiError> {
        let disks = self.mirrored_disks(rec).await?;
        let checkpoint = rec
            .hibernation
            .as_ref()
            .is_some_and(|h| h.reason == HibernateReason::Checkpoint);
        if checkpoint && !disks.is_empty() {
            return Err(conflict(format!(
                "partition {:?} is hibernated from a checkpoint, whose disk point is in the LUs' own files, not in their copies: it is not resumed with --promote-mirror (nothing was changed)",
                rec.name
            )));
        }
        for (adapter, r, m) in &disks {
            let now = self.effective(r, m).await;
            if now.state != MirrorState::Synced {
                return Err(conflict(format!(
                    "{adapter}: the copy LU {:?} of LU {:?} is {}{}: promoting it would lose writes, so --promote-mirror is refused (nothing was changed); resume without it, or `lu promote --force` first",
                    m.copy,
                    r.name,
                    now.state.as_str(),
                    now.reason.map(|r| format!(" ({r})")).unwrap_or_default()
                )));
            }
            for lu in [&r.name, &m.copy] {
                if let Some(l) = self.store.lu_locks(Some(lu)).await?.first() {
                    return Err(conflict(format!(
                        "{adapter}: LU {lu:?} is held by {:?} on host {}, so LU {:?} cannot be promoted (nothing was changed)",
                        l.partition, l.host, r.name
                    )));
                }
            }
        }
        Ok(())
    }

    /// Promotes the copy of every mirrored LU `rec` writes (not forced),
    /// each an event of the partition. Before its LU locks, so the records
    /// they resolve name the promoted files; a promotion is not undone by a
    /// later failure (the data is the same), it only renames the file.
    pub(super) async fn promote_disks(&self, rec: &PartitionRecord) -> Result<(), ApiError> {
        let disks = self.mirrored_disks(rec).await?;
        if disks.is_empty() {
            let ev = "promote-mirror: no LU the partition writes is mirrored; nothing promoted";
            self.record_event(&rec.name, ev).await;
        }
        for (adapter, r, m) in disks {
            let p = self.lu_promote(&r.name, false).await?;
            let ev = format!(
                "{adapter}: LU {} promoted from its copy {} (file {})",
                r.name, m.copy, p.path
            );
            self.record_event(&rec.name, &ev).await;
        }
        Ok(())
    }

    /// Refuses to delete or grow one side of a mirror.
    pub(super) fn check_unmirrored(r: &LuRecord, what: &str) -> Result<(), ApiError> {
        if let Some(m) = &r.mirror {
            return Err(conflict(format!(
                "LU {:?} is mirrored onto LU {:?}; {what} it after `lu unmirror {}`",
                r.name, m.copy, r.name
            )));
        }
        if let Some(p) = &r.mirror_of {
            return Err(conflict(format!(
                "LU {:?} is the redundant copy of LU {p:?}; {what} it after `lu unmirror {p}`",
                r.name
            )));
        }
        Ok(())
    }
}

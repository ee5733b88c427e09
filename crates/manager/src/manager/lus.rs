//! LUs: create, show, resize, delete, request by capacity; and their
//! attachment to partitions (ownership and the lock in the store, then the
//! file confined to its client's area of the repository).

use super::*;
use crate::lu::types::*;
use crate::lu::{self, Repository, PURPOSES};
use bulkhead_store::{LockMode, LuLock, LuRecord};

/// The holder name of the manager's own use of an LU (a resize): a colon
/// keeps it apart from every partition name.
fn maintenance(lu: &str) -> String {
    // One holder per operation: a lock of the same holder and adapter would
    // replace this one, and two grows of one LU would both run qemu-img.
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("lu:{lu}:{}:{n}", std::process::id())
}

fn bad(e: String) -> ApiError {
    ApiError::BadRequest(e)
}

fn purpose(p: Option<&str>) -> Result<String, ApiError> {
    let p = p.unwrap_or("data");
    if PURPOSES.contains(&p) {
        return Ok(p.to_string());
    }
    Err(bad(format!(
        "LU purpose {p:?} must be one of {}",
        PURPOSES.join(", ")
    )))
}

/// Gives a record the ids it lacks, inside the store's transaction (so
/// `others` is every other record of the cluster as the write sees it): a
/// ClientID one above the highest in use, and an AdapterID per adapter.
pub(super) fn assign_ids(others: &[PartitionRecord], rec: &mut PartitionRecord) {
    if rec.client_id == 0 {
        rec.client_id = others.iter().map(|r| r.client_id).max().unwrap_or(0) + 1;
    }
    let mut adapters = vec!["agent".to_string()];
    adapters.extend((0..rec.disks.len()).map(|i| format!("disk{i}")));
    if rec.net.is_some() {
        adapters.push("net0".into());
    }
    for a in adapters {
        next_adapter_id(rec, &a);
    }
}

/// The AdapterID of `adapter`, given one (the next free) if it has none.
pub(super) fn next_adapter_id(rec: &mut PartitionRecord, adapter: &str) -> u32 {
    if let Some(id) = rec.adapter_ids.get(adapter) {
        return *id;
    }
    let id = rec.adapter_ids.values().max().copied().unwrap_or(0) + 1;
    rec.adapter_ids.insert(adapter.to_string(), id);
    id
}

/// An admission that also gives the record its ids.
pub(super) fn with_ids(check: Admission) -> Admission {
    Arc::new(move |others, rec| {
        check(others, rec)?;
        assign_ids(others, rec);
        Ok(())
    })
}

impl Manager {
    pub fn repository(&self) -> &Repository {
        &self.repo
    }

    async fn lu_record(&self, name: &str) -> Result<LuRecord, ApiError> {
        self.store
            .lu_get(name)
            .await?
            .ok_or_else(|| StoreError::LuNotFound(name.to_string()).into())
    }

    async fn lu_view(&self, record: LuRecord) -> Result<LuView, ApiError> {
        let mut record = record;
        if let Some(m) = &record.mirror {
            record.mirror = Some(self.effective(&record, m).await);
        }
        let file = self.repo.path_of(&record.path);
        let (path, area) = (file.clone(), self.repo.client_dir(&record.client));
        // Only a file inside the client's area is read: a symlink swapped in
        // must not make the manager describe a file elsewhere.
        let usage = tokio::task::spawn_blocking(move || {
            let inside = std::fs::canonicalize(&path)
                .ok()
                .zip(std::fs::canonicalize(&area).ok())
                .is_some_and(|(p, a)| p.starts_with(a));
            if !inside {
                return Err(format!(
                    "{} is missing or resolves outside the client's area",
                    path.display()
                ));
            }
            lu::usage(&path)
        })
        .await
        .map_err(internal)?;
        // A file being made, or removed behind the manager's back, is
        // reported in the view, not as a failure of the call.
        let (u, problem) = match usage {
            Ok(u) => (u, None),
            Err(e) => {
                let none = lu::Usage {
                    virtual_bytes: record.size_bytes,
                    allocated_bytes: 0,
                };
                (none, Some(e))
            }
        };
        Ok(LuView {
            locks: self.store.lu_locks(Some(&record.name)).await?,
            file: file.to_string_lossy().into_owned(),
            virtual_bytes: u.virtual_bytes,
            allocated_bytes: u.allocated_bytes,
            problem,
            record,
        })
    }

    pub(super) async fn lu_create(&self, req: CreateLu) -> Result<LuView, ApiError> {
        lu::check_name("LU", &req.name).map_err(bad)?;
        lu::check_name("client", &req.client).map_err(bad)?;
        lu::check_size(req.size_bytes).map_err(bad)?;
        let purpose = purpose(req.purpose.as_deref())?;
        self.new_lu(&req.name, &req.client, req.size_bytes, purpose)
            .await
    }

    /// Records the LU (so the name is the caller's), then makes its file;
    /// a file that cannot be made takes the record back.
    async fn new_lu(
        &self,
        name: &str,
        client: &str,
        size_bytes: u64,
        purpose: String,
    ) -> Result<LuView, ApiError> {
        let rec = LuRecord {
            name: name.to_string(),
            client: client.to_string(),
            size_bytes,
            path: Repository::lu_rel_path(client, name),
            purpose,
            created_at: now_ms(),
            revision: 0,
            mirror: None,
            mirror_of: None,
        };
        // The record appears locked by its maker until the file exists: a
        // concurrent request, grow or attach meets a 409, never a missing
        // file.
        let holder = maintenance(name);
        let lock = LuLock {
            lu: name.to_string(),
            host: self.host.clone(),
            partition: holder.clone(),
            adapter: "create".into(),
            adapter_id: 0,
            mode: LockMode::Rw,
            since: 0,
        };
        let rec = self.store.lu_insert_locked(&rec, &lock).await?;
        let file = self.repo.path_of(&rec.path);
        let made = tokio::task::spawn_blocking(move || lu::create_thin(&file, size_bytes))
            .await
            .map_err(internal);
        let unlocked = self.store.lu_unlock(&holder, None).await;
        let made = made.and_then(|m| m.map_err(|e| ApiError::Engine(format!("LU {name:?}: {e}"))));
        if let Err(e) = made {
            let _ = self.store.lu_delete(name, rec.revision).await;
            return Err(e);
        }
        unlocked?;
        tracing::info!(lu = name, client, size_bytes, "LU created");
        self.lu_view(rec).await
    }

    pub(super) async fn lu_list(&self) -> Result<Vec<LuView>, ApiError> {
        let mut out = Vec::new();
        for r in self.store.lu_list().await? {
            out.push(self.lu_view(r).await?);
        }
        Ok(out)
    }

    pub(super) async fn lu_show(&self, name: &str) -> Result<LuView, ApiError> {
        let r = self.lu_record(name).await?;
        self.lu_view(r).await
    }

    pub(super) async fn lu_resize(&self, name: &str, size_bytes: u64) -> Result<LuView, ApiError> {
        lu::check_size(size_bytes).map_err(bad)?;
        let r = self.lu_record(name).await?;
        if size_bytes < r.size_bytes {
            // The request is valid; the LU's state (its size) is what refuses it.
            return Err(ApiError::Conflict(format!(
                "LU {name:?} is {} bytes; shrinking to {size_bytes} would cut its data off, so LUs only grow",
                r.size_bytes
            )));
        }
        let r = self.grow(r, size_bytes).await?;
        self.lu_view(r).await
    }

    /// Grows an LU under a write lock of the manager's own: no partition
    /// attaches it meanwhile, and one that holds it makes this a 409.
    async fn grow(&self, r: LuRecord, size_bytes: u64) -> Result<LuRecord, ApiError> {
        if size_bytes == r.size_bytes {
            return Ok(r);
        }
        Self::check_unmirrored(&r, "grow")?;
        let holder = maintenance(&r.name);
        let lock = LuLock {
            lu: r.name.clone(),
            host: self.host.clone(),
            partition: holder.clone(),
            adapter: "resize".into(),
            adapter_id: 0,
            mode: LockMode::Rw,
            since: 0,
        };
        let locked = self.store.lu_lock(&lock, &r.client).await?;
        let grown = async {
            // Mirrored since `r` was read: the copy would be left smaller.
            Self::check_unmirrored(&locked, "grow")?;
            let file = self.repo.path_of(&locked.path);
            tokio::task::spawn_blocking(move || lu::grow_to(&file, size_bytes))
                .await
                .map_err(internal)?
                .map_err(ApiError::Engine)?;
            let mut new = locked.clone();
            new.size_bytes = size_bytes;
            Ok::<_, ApiError>(self.store.lu_update(&new).await?)
        }
        .await;
        if let Err(e) = self.store.lu_unlock(&holder, None).await {
            tracing::warn!(lu = %r.name, error = %e, "releasing the resize lock");
        }
        let grown = grown?;
        tracing::info!(lu = %r.name, size_bytes, "LU grown");
        Ok(grown)
    }

    pub(super) async fn lu_delete(&self, name: &str) -> Result<LuDeleted, ApiError> {
        let r = self.lu_record(name).await?;
        Self::check_unmirrored(&r, "delete")?;
        self.store.lu_delete(name, r.revision).await?;
        let file = self.repo.path_of(&r.path);
        if let Err(e) = std::fs::remove_file(&file) {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(lu = name, file = %file.display(), error = %e, "removing LU file");
            }
        }
        tracing::info!(lu = name, "LU deleted");
        Ok(LuDeleted {
            deleted: name.to_string(),
        })
    }

    /// An LU of the client with at least `min_bytes`, as the design document
    /// allocates paging space: reuse, else grow, else create.
    pub(super) async fn lu_request(&self, req: RequestLu) -> Result<LuRequested, ApiError> {
        lu::check_name("client", &req.client).map_err(bad)?;
        lu::check_size(req.min_bytes).map_err(bad)?;
        let purpose = purpose(req.purpose.as_deref())?;
        let locked: HashSet<String> = self
            .store
            .lu_locks(None)
            .await?
            .into_iter()
            .map(|l| l.lu)
            .collect();
        let mut free: Vec<LuRecord> = self
            .store
            .lu_list()
            .await?
            .into_iter()
            .filter(|l| l.client == req.client && l.purpose == purpose)
            // A redundant copy is written by its mirror only.
            .filter(|l| l.mirror_of.is_none())
            .filter(|l| !locked.contains(&l.name))
            .collect();
        // The smallest that fits wastes least; else the largest needs least growth.
        free.sort_by_key(|l| (l.size_bytes, l.name.clone()));
        let (outcome, grown_by, rec) =
            if let Some(r) = free.iter().find(|l| l.size_bytes >= req.min_bytes) {
                (LuOutcome::Reused, 0, r.clone())
            } else if let Some(r) = free.pop() {
                let by = req.min_bytes - r.size_bytes;
                (LuOutcome::Grown, by, self.grow(r, req.min_bytes).await?)
            } else {
                let names: HashSet<String> = self
                    .store
                    .lu_list()
                    .await?
                    .into_iter()
                    .map(|l| l.name)
                    .collect();
                let name = (1..)
                    .map(|n: u32| requested_name(&req.client, &purpose, n))
                    .find(|n| !names.contains(n))
                    .expect("a free name among infinitely many");
                lu::check_name("LU", &name).map_err(|e| {
                    bad(format!(
                        "{e}: choose a shorter client name or create the LU by name"
                    ))
                })?;
                let view = self
                    .new_lu(&name, &req.client, req.min_bytes, purpose)
                    .await?;
                return Ok(LuRequested {
                    outcome: LuOutcome::Created,
                    grown_by_bytes: 0,
                    lu: view,
                });
            };
        Ok(LuRequested {
            outcome,
            grown_by_bytes: grown_by,
            lu: self.lu_view(rec).await?,
        })
    }

    /// The disk records of the LUs a create names, each checked to exist
    /// and to belong to the partition's client (403 otherwise).
    pub(super) async fn lu_disks(
        &self,
        client: &str,
        lus: &[LuAttach],
    ) -> Result<Vec<DiskRecord>, ApiError> {
        let mut out = Vec::new();
        for a in lus {
            let r = self.lu_record(&a.name).await?;
            if r.client != client {
                return Err(ApiError::Forbidden(format!(
                    "LU {:?} belongs to client {:?}, not to client {client:?}: only its own client's partitions may attach it",
                    r.name, r.client
                )));
            }
            out.push(DiskRecord {
                path: self.repo.path_of(&r.path).to_string_lossy().into_owned(),
                format: "qcow2".into(),
                readonly: a.readonly,
                lu: Some(a.name.clone()),
            });
        }
        Ok(out)
    }

    /// Locks every LU disk of `rec` for this host (ownership checked by the
    /// store in the same transaction), then confines each file and its
    /// backing chain to the client's area and pins them in `spec`. On any
    /// refusal the locks taken are released and nothing else changed.
    pub(super) async fn lock_lus(
        &self,
        rec: &PartitionRecord,
        spec: &mut PartitionSpec,
    ) -> Result<(), ApiError> {
        let r = self.lock_lus_inner(rec, spec).await;
        if r.is_err() {
            self.release_lus(&rec.name).await;
        }
        r
    }

    async fn lock_lus_inner(
        &self,
        rec: &PartitionRecord,
        spec: &mut PartitionSpec,
    ) -> Result<(), ApiError> {
        for (i, d) in rec.disks.iter().enumerate() {
            let Some(name) = &d.lu else { continue };
            let adapter = format!("disk{i}");
            let lock = LuLock {
                lu: name.clone(),
                host: self.host.clone(),
                partition: rec.name.clone(),
                adapter_id: rec.adapter_ids.get(&adapter).copied().unwrap_or(0),
                adapter: adapter.clone(),
                mode: if d.readonly {
                    LockMode::Ro
                } else {
                    LockMode::Rw
                },
                since: 0,
            };
            let (lu, redirected) = self
                .lock_or_redirect(&lock, rec.client(), rec.fence)
                .await?;
            let checked = self.confine_lu(&lu)?;
            for a in spec.adapters.iter_mut() {
                if let AdapterSpec::Disk(disk) = a {
                    if disk.id == adapter {
                        disk.path = checked.path.clone();
                        disk.backing = checked.backing.clone();
                        disk.format = lu::format_of(&lu.path);
                        disk.shared_read = redirected;
                    }
                }
            }
            if redirected {
                let ev = format!(
                    "{adapter}: LU {name} is written by another holder; read from its redundant copy {}",
                    lu.name
                );
                self.record_event(&rec.name, &ev).await;
            }
        }
        Ok(())
    }

    /// Locks an LU for a disk being hot-plugged as adapter `id` (given an
    /// AdapterID in the partition's record first), then confines its file.
    /// Returns the file and, for a read served from the LU's redundant copy,
    /// the copy's name.
    pub(super) async fn lock_hotplugged_lu(
        &self,
        rec: &PartitionRecord,
        id: &str,
        lu: &str,
        readonly: bool,
    ) -> Result<(crate::storage::CheckedDisk, Option<String>), ApiError> {
        let rec = self
            .modify(&rec.name, "", |r| {
                next_adapter_id(r, id);
            })
            .await?;
        let lock = LuLock {
            lu: lu.to_string(),
            host: self.host.clone(),
            partition: rec.name.clone(),
            adapter: id.to_string(),
            adapter_id: rec.adapter_ids.get(id).copied().unwrap_or(0),
            mode: if readonly { LockMode::Ro } else { LockMode::Rw },
            since: 0,
        };
        let (lu, redirected) = self
            .lock_or_redirect(&lock, rec.client(), rec.fence)
            .await?;
        let checked = self.confine_lu(&lu);
        if checked.is_err() {
            self.release_adapter(&rec.name, id).await;
        }
        Ok((checked?, redirected.then_some(lu.name)))
    }

    /// Releases the lock of one adapter (a hot-plugged LU removed).
    pub(super) async fn release_adapter(&self, partition: &str, adapter: &str) {
        if let Err(e) = self.store.lu_unlock(partition, Some(adapter)).await {
            tracing::warn!(partition, adapter, error = %e, "releasing an LU lock");
        }
    }

    /// The LU's file, resolved, inside its client's area with its whole
    /// backing chain (nothing is opened before its link is checked).
    pub(super) fn confine_lu(
        &self,
        lu: &LuRecord,
    ) -> Result<crate::storage::CheckedDisk, ApiError> {
        let area = self.repo.client_dir(&lu.client);
        let roots = Roots::open(&[area], &self.cfg.data_dir, &self.cfg.image_dir)
            .map_err(|e| internal(format!("client area of {:?}: {e}", lu.client)))?;
        let file = self.repo.path_of(&lu.path);
        roots
            .check_disk(&file.to_string_lossy(), lu::format_of(&lu.path).as_str())
            .map_err(|e| bad(format!("LU {:?} of client {:?}: {e}", lu.name, lu.client)))
    }

    /// Releases every LU lock the partition holds; a failure is logged (the
    /// next start of the partition, or a daemon restart, releases them).
    pub(super) async fn release_lus(&self, partition: &str) {
        match self.store.lu_unlock(partition, None).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(partition, locks = n, "LU locks released"),
            Err(e) => tracing::warn!(partition, error = %e, "releasing LU locks"),
        }
    }

    /// As [`Manager::release_lus`], from a place that cannot wait.
    pub(super) fn release_lus_later(self: &Arc<Self>, partition: &str) {
        let (m, p) = (self.clone(), partition.to_string());
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move { m.release_lus(&p).await });
        }
    }

    /// After a restart: locks this host holds for partitions that no longer
    /// run here (they died with the previous daemon, or were removed) are
    /// released; so are resize and create locks of this host left by a
    /// crash.
    pub(super) async fn release_stale_locks(&self) {
        let locks = match self.store.lu_locks(None).await {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(error = %e, "listing LU locks; stale ones left");
                return;
            }
        };
        let live: HashSet<String> = self.live.lock().unwrap().keys().cloned().collect();
        let stale: Vec<LuLock> = locks
            .into_iter()
            .filter(|l| l.host == self.host && !live.contains(&l.partition))
            .collect();
        // A create the crash cut short before the file was made: the record
        // goes too (its name is free again).
        for l in stale.iter().filter(|l| l.adapter == "create") {
            if let Ok(Some(r)) = self.store.lu_get(&l.lu).await {
                if !self.repo.path_of(&r.path).exists() {
                    self.release_lus(&l.partition).await;
                    match self.store.lu_delete(&r.name, r.revision).await {
                        Ok(()) => {
                            tracing::info!(lu = %r.name, "removed an LU whose create a crash cut short")
                        }
                        Err(e) => {
                            tracing::warn!(lu = %r.name, error = %e, "removing a half-created LU")
                        }
                    }
                }
            }
        }
        let stale: HashSet<String> = stale.into_iter().map(|l| l.partition).collect();
        for p in stale {
            tracing::info!(holder = %p, "releasing stale LU locks");
            self.release_lus(&p).await;
        }
    }
}

/// The name `lu request` gives a new LU: `CLIENT-PURPOSE-N`. Where that would
/// pass an LU name's 48 characters, the client's part is shortened and a
/// hash of the whole client name added, so two long client names sharing a
/// prefix still get different LUs.
fn requested_name(client: &str, purpose: &str, n: u32) -> String {
    use sha2::{Digest, Sha256};
    let tail = format!("-{purpose}-{n}");
    if client.len() + tail.len() <= bulkhead_engine::spec::NAME_MAX {
        return format!("{client}{tail}");
    }
    let hash: String = Sha256::digest(client.as_bytes())[..4]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    // Client names are ASCII (checked before), so any byte index is a boundary.
    let keep = bulkhead_engine::spec::NAME_MAX.saturating_sub(tail.len() + hash.len() + 1);
    let head = client[..keep.min(client.len())].trim_end_matches('-');
    format!("{head}-{hash}{tail}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requested_names_fit_and_long_clients_stay_apart() {
        assert_eq!(requested_name("acme", "data", 1), "acme-data-1");
        let long_a = format!("{}a", "x".repeat(47));
        let long_b = format!("{}b", "x".repeat(47));
        let (a, b) = (
            requested_name(&long_a, "hibernation", 12),
            requested_name(&long_b, "hibernation", 12),
        );
        assert_ne!(a, b);
        for n in [&a, &b] {
            assert!(n.len() <= bulkhead_engine::spec::NAME_MAX, "{n}");
            assert!(n.ends_with("-hibernation-12"), "{n}");
            lu::check_name("LU", n).unwrap();
        }
    }
}

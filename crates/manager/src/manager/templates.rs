//! Service pools' saved templates (issue 17). One partition of a pool (its
//! *source*) boots with its RAM in a file, its program started, and is saved
//! once the program answers; the pool's partitions are then restored from
//! that image as clones mapping the file copy-on-write, not booted. This
//! module owns where templates live on the host.
//!
//! A template is built aside and renamed into place. The files of one that
//! is replaced are unlinked, never rewritten: clones of it still map its
//! memory file.

use super::*;
use bulkhead_engine::snapshot::{read_manifest, SaveOptions};
use bulkhead_store::TemplateLink;

/// The memory file of a template, beside its state and manifest.
const MEMORY_FILE: &str = "memory";

impl Manager {
    fn templates_root(&self) -> PathBuf {
        self.cfg.data_dir.join("templates")
    }

    /// Where the template of `pool` is, once built.
    pub(crate) fn template_dir(&self, pool: &str) -> PathBuf {
        self.templates_root().join(pool)
    }

    /// Where the template of `pool` is built (pool names have no dots).
    fn template_build_dir(&self, pool: &str) -> PathBuf {
        self.templates_root().join(format!("{pool}.building"))
    }

    /// The memory file a partition linked to a template maps.
    pub(super) fn template_memory(&self, link: &TemplateLink) -> PathBuf {
        match link {
            TemplateLink::Source(pool) => self.template_build_dir(pool).join(MEMORY_FILE),
            TemplateLink::Clone(pool) => self.template_dir(pool).join(MEMORY_FILE),
        }
    }

    /// Whether `pool` has a complete template (its manifest reads and its
    /// memory file is there; a restore checks the rest).
    pub(crate) fn template_ready(&self, pool: &str) -> bool {
        let dir = self.template_dir(pool);
        read_manifest(&dir).is_ok() && dir.join(MEMORY_FILE).is_file()
    }

    /// Clears what an earlier build of `pool`'s template left, for a new
    /// source to boot into.
    pub(crate) fn begin_template(&self, pool: &str) -> Result<(), ApiError> {
        let dir = self.template_build_dir(pool);
        match std::fs::remove_dir_all(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(internal(e)),
        }
        std::fs::create_dir_all(&dir).map_err(internal)?;
        // The memory file is QEMU's user's from the start: the source and
        // every clone open it as theirs, and no partition's end hands it
        // back to root while another clone is opening it.
        let mem = dir.join(MEMORY_FILE);
        std::fs::File::create(&mem).map_err(internal)?;
        let user = bulkhead_engine::jail::lookup_user(&self.cfg.qemu.user).map_err(engine_err)?;
        std::os::unix::fs::chown(&mem, Some(user.uid), Some(user.gid)).map_err(internal)
    }

    /// Removes `pool`'s template and any build of it (the pool is gone).
    pub(crate) fn discard_template(&self, pool: &str) {
        let _ = std::fs::remove_dir_all(self.template_build_dir(pool));
        let _ = std::fs::remove_dir_all(self.template_dir(pool));
    }

    /// Saves the running template source `name` as its pool's template and
    /// ends its QEMU (asked, so no restart); the record stays, stopped.
    pub(crate) async fn save_template(self: &Arc<Self>, name: &str) -> Result<(), ApiError> {
        let lock = self.op_lock(name);
        let _g = lock.lock().await;
        let rec = self.get(name).await?;
        self.check_owned(&rec)?;
        let Some(TemplateLink::Source(pool)) = rec.template.clone() else {
            return Err(ApiError::Conflict(format!(
                "partition {name:?} is no template source"
            )));
        };
        let p = self.ready_partition(name).await?;
        let (flag, mut done) = self.stop_handles(name)?;
        let build = self.template_build_dir(&pool);
        let t0 = std::time::Instant::now();
        let saved = p.save(&build, SaveOptions::default()).await;
        // Saved or not, the source has served its purpose; the exit is asked for.
        flag.store(true, Ordering::SeqCst);
        let _ = p.kill().await;
        let _ = done.wait_for(|d| *d).await;
        let m = saved.map_err(engine_err)?;
        let dir = self.template_dir(&pool);
        match std::fs::remove_dir_all(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(internal(e)),
        }
        std::fs::rename(&build, &dir).map_err(internal)?;
        let ev = format!(
            "saved as the template of pool {pool} ({} KiB of device state, {} ms)",
            m.state.len >> 10,
            t0.elapsed().as_millis()
        );
        self.modify(name, &ev, |_| {}).await?;
        tracing::info!(%pool, source = name, ms = t0.elapsed().as_millis() as u64, "template saved");
        Ok(())
    }

    /// Restores the clone `spec` (its record's machine) from its pool's template.
    pub(super) async fn restore_clone(
        &self,
        pool: &str,
        spec: PartitionSpec,
        opts: LaunchOptions,
    ) -> Result<Arc<Partition>, ApiError> {
        let timeout = Duration::from_secs(self.cfg.partitions.ready_timeout_secs);
        Partition::restore_clone_onto(&self.template_dir(pool), spec, opts, timeout)
            .await
            .map(Arc::new)
            .map_err(engine_err)
    }
}

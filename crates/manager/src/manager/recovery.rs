//! A new daemon taking over: re-adopting the partitions a previous one left
//! running, removing what nobody owns, and periodic housekeeping.

use super::*;

impl Manager {
    /// Re-adopts what a previous daemon left running and removes what
    /// nobody owns any more (cgroups, TAPs, run directories).
    pub(super) async fn recover(self: &Arc<Self>) -> anyhow::Result<()> {
        // Only this host's partitions: another host's QEMUs are not ours to adopt.
        let recs = self.store.list(Scope::Host(&self.host)).await?;
        for rec in &recs {
            if self.recover_hibernation(rec).await? {
                continue;
            }
            if !rec.state.is_active() {
                self.cleanup(rec).await;
                continue;
            }
            let spec = self.spec_for(rec);
            let opts = self.launch_options(&rec.name);
            match Partition::adopt(spec, opts).await {
                Ok(p) => {
                    if rec.state == PartitionState::Running {
                        // A checkpoint the previous daemon left midway.
                        self.discard_stray_checkpoints(rec);
                        match p.end_interrupted_checkpoint().await {
                            Ok(true) => {
                                tracing::info!(partition = %rec.name, "interrupted checkpoint ended; running on")
                            }
                            Ok(false) => {}
                            Err(e) => {
                                tracing::warn!(partition = %rec.name, error = %e, "ending an interrupted checkpoint")
                            }
                        }
                    }
                    let p = Arc::new(p);
                    tracing::info!(partition = %rec.name, pid = p.pid(), state = %rec.state, "re-adopted");
                    let _ = self
                        .modify(&rec.name, "re-adopted by a new bulkheadd", |r| {
                            r.pid = Some(p.pid())
                        })
                        .await;
                    let starting = rec.state == PartitionState::Starting;
                    self.supervise(&rec.name, p.clone(), starting);
                    if rec.state == PartitionState::Stopping {
                        // Finish the stop the previous daemon began.
                        let m = self.clone();
                        let name = rec.name.clone();
                        tokio::spawn(async move {
                            let _ = m.stop(&name, StopOptions::default()).await;
                        });
                    }
                }
                Err(e) => {
                    tracing::info!(partition = %rec.name, error = %e, "not re-adoptable; cleaning up");
                    self.cleanup(rec).await;
                    let (state, why) = match rec.state {
                        PartitionState::Running => (
                            PartitionState::Failed,
                            format!("QEMU ended while bulkheadd was down ({e})"),
                        ),
                        _ => (
                            PartitionState::Stopped,
                            format!("{} interrupted by a bulkheadd restart", rec.state),
                        ),
                    };
                    self.set_state(&rec.name, state, &why, |r| {
                        r.pid = None;
                        r.last_exit = Some(why.clone());
                    })
                    .await?;
                    if state == PartitionState::Failed && rec.restart_policy != RestartPolicy::Never
                    {
                        tokio::spawn(
                            self.clone()
                                .restart_by_policy(rec.name.clone(), rec.restarts),
                        );
                    }
                }
            }
        }
        self.reconcile().await;
        self.release_stale_locks().await;
        Ok(())
    }

    /// Removes host objects under this daemon's names that no live partition
    /// owns, on the blocking pool (cgroup removal waits, netlink, nft).
    pub(super) async fn reconcile(&self) {
        let live: HashSet<String> = self.live.lock().unwrap().keys().cloned().collect();
        let known: HashSet<String> = match self.store.list(Scope::Host(&self.host)).await {
            Ok(v) => v.into_iter().map(|r| r.name).collect(),
            // Removing run directories on a read failure would lose live ones.
            Err(e) => {
                tracing::warn!(error = %e, "listing partitions; orphans left as they are");
                return;
            }
        };
        let cgroups = self.cgroups.clone();
        let (instance, bridge) = (self.instance.clone(), self.cfg.network.bridge.clone());
        let run = self.cfg.data_dir.join("run");
        bulkhead_hostnet::blocking(move || {
            for name in cgroups.list() {
                if !live.contains(&name) {
                    tracing::info!(cgroup = %name, "removing orphan cgroup");
                    let _ = cgroups.open(&name).remove();
                }
            }
            let owned: HashSet<String> = live.iter().map(|n| net::tap_name(&instance, n)).collect();
            let ports = net::bridge_ports(&bridge).unwrap_or_else(|e| {
                tracing::warn!(%bridge, error = %e, "listing bridge ports");
                Vec::new()
            });
            for port in ports {
                if net::is_our_tap(&instance, &port) && !owned.contains(&port) {
                    tracing::info!(tap = %port, "removing orphan TAP");
                    let _ = net::delete_link(&port);
                    net::unguard_tap(&instance, &port);
                }
            }
            if let Ok(dirs) = std::fs::read_dir(run) {
                for d in dirs.flatten() {
                    let n = d.file_name().to_string_lossy().into_owned();
                    if !known.contains(&n) {
                        let _ = std::fs::remove_dir_all(d.path());
                    }
                }
            }
        })
        .await
    }

    /// Rotates console logs that grew past the limit (copy, then truncate:
    /// QEMU appends, so it keeps writing at the new end).
    pub fn rotate_console_logs(&self) {
        let max = self.cfg.partitions.console_log_max_bytes;
        let names: Vec<String> = self.live.lock().unwrap().keys().cloned().collect();
        for n in names {
            let log = self.run_dir(&n).join("console.log");
            if let Err(e) = rotate_if_larger(&log, max) {
                tracing::warn!(partition = %n, error = %e, "rotating console log");
            }
        }
    }
}

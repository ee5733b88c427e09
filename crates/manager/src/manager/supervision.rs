//! Watching running partitions: the supervisor task that records how a QEMU
//! ended and applies the restart policy, and what is read from a running guest
//! (exec, stats).

use super::*;

impl Manager {
    /// Starts the supervisor of a launched (or adopted) partition. The
    /// returned channel reports the agent's ready or the start's failure.
    pub(super) fn supervise(
        self: &Arc<Self>,
        name: &str,
        partition: Arc<Partition>,
        wait_ready: bool,
    ) -> watch::Receiver<Option<Result<(), String>>> {
        let (ready_tx, ready_rx) = watch::channel(if wait_ready { None } else { Some(Ok(())) });
        let (done_tx, done_rx) = watch::channel(false);
        let stop_requested = Arc::new(AtomicBool::new(false));
        self.live.lock().unwrap().insert(
            name.to_string(),
            Live {
                partition: partition.clone(),
                stop_requested: stop_requested.clone(),
                ready: ready_rx.clone(),
                done: done_rx,
            },
        );
        // The partition's own grant requests, answered as the API's are.
        crate::grants::serve_calls(self, name, &partition);
        let m = self.clone();
        let name = name.to_string();
        tokio::spawn(async move {
            let mut start_error = None;
            if wait_ready {
                let timeout = Duration::from_secs(m.cfg.partitions.ready_timeout_secs);
                let t0 = std::time::Instant::now();
                let ready = match partition.wait_ready(timeout).await {
                    // The partition serves once what its devices need runs.
                    Ok(info) => m
                        .start_device_services(&name, &partition)
                        .await
                        .map(|()| info),
                    Err(e) => Err(e.to_string()),
                };
                match ready {
                    Ok(info) => {
                        tracing::info!(partition = %name, ready_ms = t0.elapsed().as_millis() as u64, guest_boot_ms = info.boot_ms, "agent ready");
                        let ev = format!("running (guest boot {} ms)", info.boot_ms);
                        let r = m
                            .modify(&name, &ev, |r| {
                                // A stop may have begun meanwhile; it owns the state then.
                                if r.state == PartitionState::Starting {
                                    r.state = PartitionState::Running;
                                    r.state_since = now_ms();
                                }
                            })
                            .await;
                        if let Err(e) = r {
                            tracing::warn!(partition = %name, error = %e, "recording ready");
                        }
                        let _ = ready_tx.send(Some(Ok(())));
                        // An owner started again gets its regions back.
                        let r = m.clone();
                        tokio::spawn(async move { r.grants_reconcile().await });
                    }
                    Err(e) => {
                        tracing::warn!(partition = %name, error = %e, "start failed");
                        let _ = partition.kill().await;
                        start_error = Some(e);
                    }
                }
            }
            let exit = partition.wait_exit().await;
            if m.ha.fenced() {
                // Killed by the self-fence (or the rejoin): nothing is
                // written; the rejoin cleans up what is left here.
                m.ha_killed(&name);
                let _ = ready_tx.send(Some(Err("self-fenced".into())));
                let _ = done_tx.send(true);
                return;
            }
            let requested = stop_requested.load(Ordering::SeqCst);
            let failed = !requested && (start_error.is_some() || exit.is_failure());
            let reason = match &start_error {
                Some(e) => format!("start failed: {e}"),
                None => exit.reason.to_string(),
            };
            let state = if failed {
                PartitionState::Failed
            } else {
                PartitionState::Stopped
            };
            // Clean up before recording the state, so a stopped partition has nothing left.
            // A hibernated partition's QEMU ends once its image is recorded:
            // it stays hibernated.
            let mut hibernated = false;
            match m.store.get(&name).await {
                Ok(Some(rec)) => {
                    hibernated = rec.state == PartitionState::Hibernated;
                    m.cleanup(&rec).await
                }
                _ => {
                    let _ = m.cgroups.open(&name).remove_off_reactor().await;
                }
            }
            m.release_lus(&name).await;
            m.live.lock().unwrap().remove(&name);
            // What it gave and held ends; the others' devices are unplugged.
            m.grants_partition_ended(&name, false).await;
            let (state, ev) = match hibernated {
                true => (PartitionState::Hibernated, String::new()),
                false => (state, format!("{state}: {reason}")),
            };
            let rec = m
                .modify(&name, &ev, |r| {
                    r.pid = None;
                    if r.state != PartitionState::Hibernated {
                        r.state = state;
                        r.state_since = now_ms();
                        r.last_exit = Some(reason.clone());
                    }
                })
                .await;
            tracing::info!(partition = %name, %state, %reason, "partition ended");
            let _ = ready_tx.send(Some(Err(reason.clone())));
            let _ = done_tx.send(true);
            let Ok(rec) = rec else { return };
            let restart = !requested
                && match rec.restart_policy {
                    RestartPolicy::Never => false,
                    RestartPolicy::OnFailure => failed,
                    RestartPolicy::Always => true,
                };
            if restart {
                m.clone().restart_by_policy(name, rec.restarts).await;
            }
        });
        ready_rx
    }

    pub(super) async fn restart_by_policy(self: Arc<Self>, name: String, restarts: u32) {
        if restarts >= self.cfg.partitions.max_restarts {
            let _ = self
                .modify(&name, "restart policy gave up: too many restarts", |_| {})
                .await;
            return;
        }
        // Back off a little more each time, so a crash loop does not eat the host.
        let delay = Duration::from_millis(500u64 << restarts.min(6));
        tokio::time::sleep(delay).await;
        let lock = self.op_lock(&name);
        let _g = lock.lock().await;
        // A user may have stopped, started or destroyed it meanwhile.
        match self.store.get(&name).await {
            Ok(Some(r))
                if r.state == PartitionState::Failed || r.state == PartitionState::Stopped => {}
            _ => return,
        }
        let _ = self.modify(&name, "", |r| r.restarts = restarts + 1).await;
        if let Err(e) = self.start_locked(&name, false, true).await {
            tracing::warn!(partition = %name, error = %e, "policy restart failed");
        }
    }

    pub(super) async fn exec(&self, name: &str, req: ExecRequest) -> Result<ExecResult, ApiError> {
        if req.argv.is_empty() || req.argv[0].is_empty() {
            return Err(ApiError::BadRequest("exec needs a command".into()));
        }
        let p = self.ready_partition(name).await?;
        let t = Duration::from_secs(req.timeout_secs.unwrap_or(60).clamp(1, 3600));
        let out = p
            .agent()
            .exec(&req.argv, None, t)
            .await
            .map_err(engine_err)?;
        Ok(ExecResult {
            code: out.code,
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        })
    }

    pub(super) async fn stats(&self, name: &str) -> Result<Stats, ApiError> {
        let rec = self.get(name).await?;
        let cg = self.cgroups.open(name);
        let live = self.running(name);
        let mut s = Stats {
            name: name.to_string(),
            state: rec.state,
            cpu_entitlement_percent: rec.cpu_percent,
            cpu_time_ns: 0,
            cpu_avg_percent: 0.0,
            cpu_recent_percent: 0.0,
            cpu_limit_percent: None,
            memory_bytes: 0,
            memory_limit_bytes: self.memory_limit_mib(&rec) << 20,
            rss_bytes: 0,
            uptime_ms: 0,
            pid: rec.pid,
            guest: None,
        };
        let Some(p) = live else { return Ok(s) };
        if cg.exists() {
            let t0 = std::time::Instant::now();
            let u0 = cg.cpu_usage_ns().map_err(internal)?;
            // Recent use: CPU time over a short window.
            tokio::time::sleep(Duration::from_millis(500)).await;
            let u1 = cg.cpu_usage_ns().map_err(internal)?;
            let dt = t0.elapsed().as_nanos().max(1) as f64;
            s.cpu_time_ns = u1;
            s.cpu_recent_percent = round1((u1 - u0) as f64 * 100.0 / dt);
            s.cpu_limit_percent = cg.cpu_limit_percent().ok().flatten();
            s.memory_bytes = cg.memory_bytes().unwrap_or(0);
        }
        s.uptime_ms = rec
            .started_at
            .map(|t| now_ms().saturating_sub(t))
            .unwrap_or(0);
        if s.uptime_ms > 0 {
            s.cpu_avg_percent = round1(s.cpu_time_ns as f64 / 1e4 / s.uptime_ms as f64);
        }
        s.rss_bytes = rss_bytes(p.pid()).unwrap_or(0);
        if let Ok(Ok(info)) = tokio::time::timeout(Duration::from_secs(2), p.agent().info()).await {
            s.guest = serde_json::to_value(info).ok();
        }
        Ok(s)
    }
}

//! Plain QEMU saving and restoring a guest by hand (QMP `stop`, `getfd`,
//! `migrate fd:`, then a new QEMU with `-incoming defer`,
//! `migrate-incoming fd:`, `cont`): the peer of the engine's save and
//! restore (snapshot_bench) and of the manager's hibernate and resume
//! (hibernate_bench, which includes this module by path).

use std::path::Path;
use std::time::{Duration, Instant};

use bulkhead_engine::AgentClient;
use bulkhead_qmp::QmpClient;
use bulkhead_testbed::{connect_unix, image_dir, GuestQemu};
use serde_json::json;

const READY: Duration = Duration::from_secs(300);

/// Plain QEMU with the engine's CPU model and a QMP socket of its own.
pub fn plain(dir: &Path, mib: u64, incoming: bool) -> GuestQemu {
    let mut g = GuestQemu::new(&image_dir(), dir);
    g.memory_mib = mib;
    g.extra = vec![
        "-cpu".into(),
        bulkhead_engine::CpuModel::default().qemu_cpu(),
        "-qmp".into(),
        format!("unix:{},server=on,wait=off", dir.join("qmp.sock").display()),
    ];
    if incoming {
        g.extra
            .extend(["-S", "-incoming", "defer"].map(String::from));
    }
    g
}

pub async fn qmp_of(dir: &Path) -> anyhow::Result<QmpClient> {
    Ok(QmpClient::handshake(connect_unix(&dir.join("qmp.sock"), READY).await?).await?)
}

pub async fn agent_of(dir: &Path) -> anyhow::Result<AgentClient> {
    let a = AgentClient::from_stream(connect_unix(&dir.join("agent.sock"), READY).await?);
    a.wait_ready(READY).await?;
    Ok(a)
}

/// QMP `migrate` of the (stopped) guest into a new file at `path`, waited for.
pub async fn migrate_to_file(qmp: &QmpClient, path: &Path) -> anyhow::Result<()> {
    qmp.get_fd("s", std::fs::File::create(path)?.into()).await?;
    qmp.migrate("fd:s").await?;
    loop {
        let m = qmp.query_migrate().await?;
        match m.status.as_deref() {
            Some("completed") => return Ok(()),
            Some("failed") | Some("cancelled") => anyhow::bail!("plain save: {m:?}"),
            _ => tokio::time::sleep(Duration::from_millis(5)).await,
        }
    }
}

/// The same by hand: boot, then save and restore with raw QMP.
pub async fn plain_run(dir: &Path, i: usize, mib: u64) -> anyhow::Result<(Duration, Duration)> {
    let d1 = dir.join(format!("p-{i}"));
    let d2 = dir.join(format!("p2-{i}"));
    std::fs::create_dir_all(&d1)?;
    std::fs::create_dir_all(&d2)?;
    let mut src = plain(&d1, mib, false).spawn()?;
    let qmp = qmp_of(&d1).await?;
    agent_of(&d1).await?;
    let state = d1.join("state.bin");
    let t0 = Instant::now();
    qmp.migrate_set_parameters(json!({"max-bandwidth": 10u64 << 30}))
        .await?;
    qmp.stop().await?;
    migrate_to_file(&qmp, &state).await?;
    let save = t0.elapsed();
    src.kill().await?;

    let t0 = Instant::now();
    let mut dst = plain(&d2, mib, true).spawn()?;
    let qmp = qmp_of(&d2).await?;
    qmp.get_fd("r", std::fs::File::open(&state)?.into()).await?;
    qmp.migrate_incoming("fd:r").await?;
    while qmp.query_status().await?.status == "inmigrate" {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    qmp.cont().await?;
    agent_of(&d2).await?;
    let restore = t0.elapsed();
    dst.kill().await?;
    std::fs::remove_dir_all(&d1)?;
    std::fs::remove_dir_all(&d2)?;
    Ok((save, restore))
}

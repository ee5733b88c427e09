//! TAP devices on the host bridge, made with iproute2, in the host's network
//! namespace or a named one. The engine creates a partition's TAPs before QEMU
//! starts and removes them when it exits.

use std::process::Command;

use crate::EngineError;

fn ip(netns: Option<&str>, args: &[&str]) -> Result<(), EngineError> {
    let mut cmd = Command::new("ip");
    if let Some(ns) = netns {
        cmd.args(["-n", ns]);
    }
    let out = cmd
        .args(args)
        .output()
        .map_err(|e| EngineError::Host(format!("running ip {}: {e}", args.join(" "))))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(EngineError::Host(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

pub fn exists(name: &str, netns: Option<&str>) -> bool {
    match netns {
        None => std::path::Path::new("/sys/class/net").join(name).exists(),
        Some(_) => ip(netns, &["link", "show", "dev", name]).is_ok(),
    }
}

/// Creates `tap` (removing a stale one left by a crash) and enslaves it to `bridge`.
pub fn create(
    tap: &str,
    bridge: &str,
    owner: Option<&str>,
    netns: Option<&str>,
) -> Result<(), EngineError> {
    if !exists(bridge, netns) {
        return Err(EngineError::InvalidSpec(format!(
            "bridge {bridge} does not exist{}",
            netns
                .map(|n| format!(" in network namespace {n}"))
                .unwrap_or_default()
        )));
    }
    if exists(tap, netns) {
        tracing::warn!(tap, "removing stale TAP");
        remove(tap, netns)?;
    }
    // One `ip -batch` for both steps: a partition start pays one exec per TAP.
    let user = owner.map(|u| format!(" user {u}")).unwrap_or_default();
    let script =
        format!("tuntap add dev {tap} mode tap{user}\nlink set dev {tap} master {bridge} up\n");
    if let Err(e) = ip_batch(netns, &script) {
        let _ = remove(tap, netns);
        return Err(e);
    }
    Ok(())
}

fn ip_batch(netns: Option<&str>, script: &str) -> Result<(), EngineError> {
    use std::io::Write;
    let mut cmd = Command::new("ip");
    if let Some(ns) = netns {
        cmd.args(["-n", ns]);
    }
    let mut child = cmd
        .args(["-batch", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| EngineError::Host(format!("running ip -batch: {e}")))?;
    child
        .stdin
        .take()
        .expect("piped stdin")
        .write_all(script.as_bytes())
        .map_err(|e| EngineError::Host(format!("writing to ip -batch: {e}")))?;
    let out = child
        .wait_with_output()
        .map_err(|e| EngineError::Host(format!("waiting for ip -batch: {e}")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(EngineError::Host(format!(
            "ip: {}: {}",
            script.trim().replace('\n', "; "),
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

pub fn remove(tap: &str, netns: Option<&str>) -> Result<(), EngineError> {
    if !exists(tap, netns) {
        return Ok(());
    }
    ip(netns, &["link", "del", "dev", tap])
}

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
    let mut args = vec!["tuntap", "add", "dev", tap, "mode", "tap"];
    if let Some(u) = owner {
        args.extend(["user", u]);
    }
    ip(netns, &args)?;
    if let Err(e) = ip(netns, &["link", "set", "dev", tap, "master", bridge, "up"]) {
        let _ = remove(tap, netns);
        return Err(e);
    }
    Ok(())
}

pub fn remove(tap: &str, netns: Option<&str>) -> Result<(), EngineError> {
    if !exists(tap, netns) {
        return Ok(());
    }
    ip(netns, &["link", "del", "dev", tap])
}

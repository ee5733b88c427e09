//! A release bulkheadd of its own for the manager's benchmark examples: data
//! directory, socket, bridge, cgroup instance, extra TOML.
#![allow(dead_code)]

use bulkhead_manager::client::Client;
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

pub struct Daemon {
    child: std::process::Child,
    pub socket: PathBuf,
    bridge: String,
    _dir: tempfile::TempDir,
}

impl Daemon {
    /// `tag` names the bridge, the cgroup instance and the temp directory;
    /// `subnet` is the VLAN's; `extra` is appended to the configuration.
    pub fn start(tag: &str, subnet: &str, extra: &str) -> anyhow::Result<Daemon> {
        let dir = tempfile::Builder::new()
            .prefix(&format!("bh{tag}"))
            .tempdir()?;
        let socket = dir.path().join("api.sock");
        let bridge = format!("bh{tag}{}", std::process::id() % 100_000);
        let cfg = dir.path().join("c.toml");
        std::fs::write(
            &cfg,
            format!(
                "data_dir = {:?}\nsocket = {socket:?}\nimage_dir = {:?}\n\
                 [network]\nbridge = {bridge:?}\nsubnet = {subnet:?}\n\
                 [capacity]\ncpu_overcommit = 20.0\n[cgroup]\ninstance = \"{tag}bench\"\n{extra}",
                dir.path().join("data"),
                bulkhead_testbed::image_dir(),
            ),
        )?;
        let exe = std::env::current_exe()?;
        let bin = exe
            .parent()
            .and_then(Path::parent)
            .map(|d| d.join("bulkheadd"))
            .ok_or_else(|| anyhow::anyhow!("no target directory"))?;
        let mut child = Command::new(&bin)
            .arg("--config")
            .arg(&cfg)
            .env("RUST_LOG", "warn,bulkhead_manager::server=info")
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| anyhow::anyhow!("{} (cargo build --release first): {e}", bin.display()))?;
        let err = child.stderr.take().expect("piped");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut tx = Some(tx);
            for l in std::io::BufReader::new(err).lines().map_while(Result::ok) {
                match tx.take() {
                    Some(t) if l.contains("API listening") => {
                        let _ = t.send(());
                    }
                    t => {
                        tx = t;
                        if !l.contains("INFO") {
                            eprintln!("bulkheadd: {l}");
                        }
                    }
                }
            }
        });
        rx.recv_timeout(Duration::from_secs(60))
            .map_err(|_| anyhow::anyhow!("bulkheadd did not start"))?;
        Ok(Daemon {
            child,
            socket,
            bridge,
            _dir: dir,
        })
    }

    pub fn client(&self) -> Client {
        Client::unix(&self.socket)
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = bulkhead_hostnet::delete_link(&self.bridge, None);
    }
}

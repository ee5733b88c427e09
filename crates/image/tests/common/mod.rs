//! Shared by the image tests that boot what they built: a microvm QEMU
//! started by hand with the agent's port on a unix socket. (The engine sits
//! above this crate's concerns; these tests check the image, not the engine.)
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use bulkhead_agent::AgentClient;
use bulkhead_testbed::{connect_unix, GuestQemu};

pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// A booting guest: its QEMU (killed on drop) and its agent client.
pub struct Guest {
    pub qemu: tokio::process::Child,
    pub agent: AgentClient,
}

impl Guest {
    /// Powers off through the agent; QEMU must exit cleanly within a minute.
    pub async fn power_off(mut self) {
        self.agent
            .shutdown(bulkhead_agent::PowerAction::Poweroff)
            .await
            .unwrap();
        let st = tokio::time::timeout(Duration::from_secs(60), self.qemu.wait())
            .await
            .expect("powers off")
            .unwrap();
        assert!(st.success());
    }
}

/// Boots `img`'s vmlinux + initramfs.cpio.gz under TCG microvm, 256 MiB,
/// console to `dir/console.log`, with `cmdline` appended to the base kernel
/// command line and `extra` QEMU arguments (disks), and connects the agent.
pub async fn boot(dir: &Path, img: &Path, cmdline: &str, extra: &[String]) -> Guest {
    let mut q = GuestQemu::new(img, dir);
    q.append = cmdline.into();
    q.extra = extra.to_vec();
    let qemu = q.spawn().expect("qemu-system-x86_64");
    let stream = connect_unix(&q.agent_socket, Duration::from_secs(30))
        .await
        .unwrap();
    Guest {
        qemu,
        agent: AgentClient::from_stream(stream),
    }
}

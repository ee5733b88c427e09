//! QEMU that dies with its caller (`LaunchOptions::die_with_parent`).
//!
//! PR_SET_PDEATHSIG fires when the *thread* that forked the child exits, not
//! the process: a child forked from a tokio worker or blocking-pool thread
//! would be killed when that thread is retired. So such children are forked
//! from one thread kept for the life of the process.

use std::sync::mpsc;
use std::sync::{Mutex, OnceLock};

type Job = Box<dyn FnOnce() + Send>;

fn spawner() -> &'static Mutex<mpsc::Sender<Job>> {
    static SPAWNER: OnceLock<Mutex<mpsc::Sender<Job>>> = OnceLock::new();
    SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name("bulkhead-spawner".into())
            .spawn(move || {
                for job in rx {
                    job();
                }
            })
            .expect("spawning the spawner thread");
        Mutex::new(tx)
    })
}

/// Makes `cmd`'s child get SIGKILL when this process dies, however it dies.
pub(crate) fn die_with_parent(cmd: &mut tokio::process::Command) {
    let parent = std::process::id() as libc::pid_t;
    // SAFETY: runs in the forked child before exec; prctl and getppid are
    // async-signal-safe and touch no memory.
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            // The parent may have died before the prctl took effect.
            if libc::getppid() != parent {
                return Err(std::io::Error::other("parent exited during spawn"));
            }
            Ok(())
        });
    }
}

/// Spawns `cmd` from the long-lived spawner thread (in the caller's tokio
/// runtime, so the child is reaped by it as usual).
pub(crate) async fn spawn(
    mut cmd: tokio::process::Command,
) -> std::io::Result<tokio::process::Child> {
    let handle = tokio::runtime::Handle::current();
    let (tx, rx) = tokio::sync::oneshot::channel();
    let job: Job = Box::new(move || {
        let _rt = handle.enter();
        let _ = tx.send(cmd.spawn());
    });
    spawner()
        .lock()
        .expect("spawner lock")
        .send(job)
        .map_err(|_| std::io::Error::other("spawner thread is gone"))?;
    rx.await
        .map_err(|_| std::io::Error::other("spawner thread dropped the spawn"))?
}

//! Child processes: the PID 1 zombie reaper and `exec` requests.
//!
//! As PID 1 the agent inherits every orphan and must reap it, but a blanket
//! `waitpid(-1)` would steal the exit status of the programs `exec` runs (and
//! std's `Command::spawn` waits on a child whose exec failed). So the reaper
//! only *peeks* (`waitid(WNOWAIT)`) and reaps a zombie itself only when no exec
//! request owns it; owned children are reaped by their own `Child::wait`.
//! Spawning happens under the same lock, so the reaper never sees a pid that
//! is about to be registered.

use std::collections::HashSet;
use std::io::{Read, Write};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Command, Stdio};
use std::sync::{mpsc, Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use crate::proto::{ExecOutput, MAX_EXEC_OUTPUT};

#[derive(Default)]
struct State {
    owned: HashSet<i32>,
    /// Bumped on every spawn so the reaper knows a child may exist again.
    spawns: u64,
}

/// Shared between the reaper thread and exec workers.
#[derive(Default)]
pub struct Children {
    state: Mutex<State>,
    cv: Condvar,
}

/// How long output pipes held open by a command's background processes
/// are still read after the command itself exited.
const BACKGROUND_GRACE: Duration = Duration::from_millis(200);

/// Why an exec failed before producing an exit status.
#[derive(Debug)]
pub enum ExecError {
    Spawn(String),
    Timeout(Duration),
}

impl Children {
    pub fn new() -> Arc<Children> {
        Arc::new(Children::default())
    }

    /// Starts the reaper thread (only meaningful as PID 1 or a subreaper).
    pub fn spawn_reaper(self: &Arc<Self>) {
        let me = self.clone();
        std::thread::Builder::new()
            .name("reaper".into())
            .spawn(move || me.reap_forever())
            .expect("spawn reaper thread");
    }

    fn reap_forever(&self) {
        loop {
            let seen = self.state.lock().unwrap().spawns;
            // SAFETY: siginfo_t is plain data; waitid fills it.
            let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
            // SAFETY: info is valid and writable; P_ALL ignores the id.
            let rc =
                unsafe { libc::waitid(libc::P_ALL, 0, &mut info, libc::WEXITED | libc::WNOWAIT) };
            if rc < 0 {
                let err = std::io::Error::last_os_error().raw_os_error();
                if err == Some(libc::EINTR) {
                    continue;
                }
                // ECHILD: no children at all, hence no descendants that could be
                // orphaned onto us; sleep until we spawn one.
                let mut st = self.state.lock().unwrap();
                while st.spawns == seen {
                    st = self.cv.wait(st).unwrap();
                }
                continue;
            }
            // SAFETY: waitid succeeded with WEXITED, so si_pid is valid.
            let pid = unsafe { info.si_pid() };
            let mut st = self.state.lock().unwrap();
            if st.owned.contains(&pid) {
                // Its exec worker reaps it; wait until it has.
                while st.owned.contains(&pid) {
                    st = self.cv.wait(st).unwrap();
                }
            } else {
                // SAFETY: reaping a zombie that nobody else owns.
                unsafe { libc::waitpid(pid, std::ptr::null_mut(), libc::WNOHANG) };
            }
        }
    }

    /// Runs `argv` to completion (or `timeout`, after which its process group
    /// is killed), feeding `stdin` and collecting stdout and stderr.
    pub fn exec(
        &self,
        argv: &[String],
        stdin: Option<Vec<u8>>,
        timeout: Duration,
    ) -> Result<ExecOutput, ExecError> {
        let Some((prog, args)) = argv.split_first() else {
            return Err(ExecError::Spawn("empty argv".into()));
        };
        let deadline = Instant::now() + timeout;
        let mut cmd = Command::new(prog);
        cmd.args(args)
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // Its own group, so a timeout kills what it started too.
            .process_group(0);
        let mut child = {
            let mut st = self.state.lock().unwrap();
            let child = cmd
                .spawn()
                .map_err(|e| ExecError::Spawn(format!("{prog}: {e}")))?;
            st.owned.insert(child.id() as i32);
            st.spawns += 1;
            self.cv.notify_all();
            child
        };
        let pid = child.id() as i32;

        let (tx, rx) = mpsc::channel::<()>();
        if let (Some(mut w), Some(data)) = (child.stdin.take(), stdin) {
            std::thread::spawn(move || {
                // A child that exits without reading gives EPIPE: not our error.
                let _ = w.write_all(&data);
            });
        }
        // Readers fill shared buffers, so output can be taken while a
        // background process still holds a pipe open.
        let bufs = [
            Arc::new(Mutex::new(Vec::new())),
            Arc::new(Mutex::new(Vec::new())),
        ];
        let sources = [
            child
                .stdout
                .take()
                .map(|s| Box::new(s) as Box<dyn Read + Send>),
            child
                .stderr
                .take()
                .map(|s| Box::new(s) as Box<dyn Read + Send>),
        ];
        let mut readers = 0;
        for (src, buf) in sources.into_iter().zip(bufs.iter()) {
            let Some(mut src) = src else { continue };
            let (tx, buf) = (tx.clone(), buf.clone());
            readers += 1;
            std::thread::spawn(move || {
                let mut chunk = [0u8; 16384];
                loop {
                    match src.read(&mut chunk) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            let mut b = buf.lock().unwrap();
                            let room = MAX_EXEC_OUTPUT.saturating_sub(b.len());
                            b.extend_from_slice(&chunk[..n.min(room)]);
                        }
                    }
                }
                let _ = tx.send(());
            });
        }
        drop(tx);

        // Watchdog: kill the group at the deadline unless the child is done.
        let done = Arc::new((Mutex::new(false), Condvar::new()));
        let timed_out = Arc::new(std::sync::atomic::AtomicBool::new(false));
        {
            let done = done.clone();
            let timed_out = timed_out.clone();
            std::thread::spawn(move || {
                let (lock, cv) = &*done;
                let mut finished = lock.lock().unwrap();
                while !*finished {
                    let now = Instant::now();
                    if now >= deadline {
                        timed_out.store(true, std::sync::atomic::Ordering::SeqCst);
                        // SAFETY: signalling our child's process group.
                        unsafe { libc::kill(-pid, libc::SIGKILL) };
                        break;
                    }
                    finished = cv.wait_timeout(finished, deadline - now).unwrap().0;
                }
            });
        }
        let status = child.wait();
        {
            let mut st = self.state.lock().unwrap();
            st.owned.remove(&pid);
            self.cv.notify_all();
        }
        {
            let (lock, cv) = &*done;
            *lock.lock().unwrap() = true;
            cv.notify_all();
        }
        let status = status.map_err(|e| ExecError::Spawn(format!("wait: {e}")))?;

        // Output: until both pipes close. A background process started by
        // the command (`sh -c "server &"`) may keep them open: then take what
        // was written within a short grace period and leave it running.
        let grace = deadline.min(Instant::now() + BACKGROUND_GRACE);
        for _ in 0..readers {
            let left = grace.saturating_duration_since(Instant::now());
            if rx.recv_timeout(left).is_err() {
                break;
            }
        }
        let stdout = std::mem::take(&mut *bufs[0].lock().unwrap());
        let stderr = std::mem::take(&mut *bufs[1].lock().unwrap());
        if timed_out.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(ExecError::Timeout(timeout));
        }
        let code = match (status.code(), status.signal()) {
            (Some(c), _) => c,
            (None, Some(sig)) => 128 + sig,
            _ => -1,
        };
        Ok(ExecOutput {
            code,
            stdout,
            stderr,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn exec_collects_output_and_code() {
        let c = Children::new();
        let r = c
            .exec(
                &argv(&["sh", "-c", "cat; echo err >&2; exit 7"]),
                Some(b"hello\n".to_vec()),
                Duration::from_secs(20),
            )
            .unwrap();
        assert_eq!(r.code, 7);
        assert_eq!(r.stdout, b"hello\n");
        assert_eq!(r.stderr, b"err\n");
    }

    #[test]
    fn exec_reports_signal_and_missing_program() {
        let c = Children::new();
        let r = c
            .exec(
                &argv(&["sh", "-c", "kill -9 $$"]),
                None,
                Duration::from_secs(20),
            )
            .unwrap();
        assert_eq!(r.code, 128 + 9);
        match c.exec(&argv(&["/nonexistent/prog"]), None, Duration::from_secs(5)) {
            Err(ExecError::Spawn(m)) => assert!(m.contains("/nonexistent/prog"), "{m}"),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            c.exec(&[], None, Duration::from_secs(1)),
            Err(ExecError::Spawn(_))
        ));
    }

    #[test]
    fn exec_returns_while_background_child_holds_pipes() {
        let c = Children::new();
        let t0 = Instant::now();
        let r = c
            .exec(
                &argv(&["sh", "-c", "echo started; sleep 5 & exit 0"]),
                None,
                Duration::from_secs(20),
            )
            .unwrap();
        assert_eq!(r.code, 0);
        assert_eq!(r.stdout, b"started\n");
        assert!(t0.elapsed() < Duration::from_secs(10));
    }

    #[test]
    fn exec_timeout_kills_the_group() {
        let c = Children::new();
        let t0 = Instant::now();
        let r = c.exec(
            &argv(&["sh", "-c", "sleep 30 & sleep 30"]),
            None,
            Duration::from_millis(300),
        );
        assert!(matches!(r, Err(ExecError::Timeout(_))), "{r:?}");
        assert!(t0.elapsed() < Duration::from_secs(20));
    }
}

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
use std::sync::{Arc, Condvar, Mutex};
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

    /// Spawns `cmd` as a child the reaper leaves alone: its owner reaps it
    /// with [`Children::wait_owned`].
    pub fn spawn_owned(&self, cmd: &mut Command) -> std::io::Result<std::process::Child> {
        let mut st = self.state.lock().unwrap();
        let child = cmd.spawn()?;
        st.owned.insert(child.id() as i32);
        st.spawns += 1;
        self.cv.notify_all();
        Ok(child)
    }

    /// Waits for a child from [`Children::spawn_owned`] and hands it back to
    /// the reaper's care.
    pub fn wait_owned(
        &self,
        child: &mut std::process::Child,
    ) -> std::io::Result<std::process::ExitStatus> {
        let status = child.wait();
        let mut st = self.state.lock().unwrap();
        st.owned.remove(&(child.id() as i32));
        self.cv.notify_all();
        status
    }

    /// Runs `argv` to completion (or `timeout`, after which its process group
    /// is killed), feeding `stdin` and collecting stdout and stderr.
    ///
    /// One thread does it all with poll(2) over the pipes and a pidfd (no
    /// reader or watchdog threads: thread creation is slow under TCG).
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
        let mut child = self
            .spawn_owned(&mut cmd)
            .map_err(|e| ExecError::Spawn(format!("{prog}: {e}")))?;
        let pid = child.id() as i32;
        let result = self.drive(&mut child, stdin, deadline);
        // Reap (if drive did not) and release ownership in every case.
        if !matches!(result, Ok((_, _, _, true))) {
            // SAFETY: signalling our own child's process group.
            unsafe { libc::kill(-pid, libc::SIGKILL) };
        }
        let status = self.wait_owned(&mut child);
        let (stdout, stderr, timed_out, _) = result?;
        if timed_out {
            return Err(ExecError::Timeout(timeout));
        }
        let status = status.map_err(|e| ExecError::Spawn(format!("wait: {e}")))?;
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

    /// Pumps stdin/stdout/stderr until the child exited and its pipes closed
    /// (or a short grace after its exit, or the deadline). Returns
    /// (stdout, stderr, timed_out, exited).
    fn drive(
        &self,
        child: &mut std::process::Child,
        stdin: Option<Vec<u8>>,
        deadline: Instant,
    ) -> Result<(Vec<u8>, Vec<u8>, bool, bool), ExecError> {
        use std::os::fd::AsRawFd;
        // SAFETY: pidfd_open takes a pid and flags; it returns a new fd or -1.
        let pidfd = unsafe { libc::syscall(libc::SYS_pidfd_open, child.id() as libc::c_int, 0) };
        if pidfd < 0 {
            return Err(ExecError::Spawn(format!(
                "pidfd_open: {}",
                std::io::Error::last_os_error()
            )));
        }
        // SAFETY: pidfd is a fresh fd owned here.
        let pidfd =
            unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(pidfd as i32) };
        let mut stdin_pipe = child.stdin.take();
        let stdin_data = stdin.unwrap_or_default();
        let mut stdin_off = 0;
        let mut outs: [Option<std::fs::File>; 2] = [
            child
                .stdout
                .take()
                .map(|s| std::os::fd::OwnedFd::from(s).into()),
            child
                .stderr
                .take()
                .map(|s| std::os::fd::OwnedFd::from(s).into()),
        ];
        let mut bufs = [Vec::new(), Vec::new()];
        for f in outs.iter().flatten() {
            set_nonblocking(f.as_raw_fd());
        }
        if let Some(p) = &stdin_pipe {
            set_nonblocking(p.as_raw_fd());
        }
        let mut exited = false;
        let mut until = deadline;
        let mut chunk = [0u8; 16384];
        loop {
            if stdin_pipe.is_some() && stdin_off >= stdin_data.len() {
                stdin_pipe = None; // EOF for the child
            }
            let mut fds: Vec<libc::pollfd> = Vec::with_capacity(4);
            let mut roles: Vec<usize> = Vec::with_capacity(4);
            for (i, o) in outs.iter().enumerate() {
                if let Some(f) = o {
                    fds.push(libc::pollfd {
                        fd: f.as_raw_fd(),
                        events: libc::POLLIN,
                        revents: 0,
                    });
                    roles.push(i);
                }
            }
            if let Some(p) = &stdin_pipe {
                fds.push(libc::pollfd {
                    fd: p.as_raw_fd(),
                    events: libc::POLLOUT,
                    revents: 0,
                });
                roles.push(2);
            }
            if !exited {
                fds.push(libc::pollfd {
                    fd: pidfd.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                });
                roles.push(3);
            }
            if exited && outs.iter().all(Option::is_none) {
                break;
            }
            let now = Instant::now();
            if now >= until {
                // Past the deadline: timed out. Past the grace after exit:
                // a background process holds the pipes; keep what we have.
                return Ok((
                    std::mem::take(&mut bufs[0]),
                    std::mem::take(&mut bufs[1]),
                    !exited,
                    exited,
                ));
            }
            let ms = (until - now).as_millis().min(i32::MAX as u128) as i32;
            // SAFETY: fds is a valid array of fds.len() pollfd entries.
            let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, ms.max(1)) };
            if n < 0 {
                continue; // EINTR
            }
            for (pfd, role) in fds.iter().zip(roles.iter().copied()) {
                if pfd.revents == 0 {
                    continue;
                }
                match role {
                    0 | 1 => {
                        let src = outs[role].as_mut().expect("open pipe");
                        loop {
                            match src.read(&mut chunk) {
                                Ok(0) => {
                                    outs[role] = None;
                                    break;
                                }
                                Ok(k) => {
                                    let room = MAX_EXEC_OUTPUT.saturating_sub(bufs[role].len());
                                    bufs[role].extend_from_slice(&chunk[..k.min(room)]);
                                }
                                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                                Err(_) => {
                                    outs[role] = None;
                                    break;
                                }
                            }
                        }
                    }
                    2 => {
                        let p = stdin_pipe.as_mut().expect("open stdin");
                        match p.write(&stdin_data[stdin_off..]) {
                            Ok(k) => stdin_off += k,
                            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                            // The child closed its stdin (EPIPE): not our error.
                            Err(_) => stdin_pipe = None,
                        }
                    }
                    _ => {
                        exited = true;
                        until = deadline.min(Instant::now() + BACKGROUND_GRACE);
                    }
                }
            }
        }
        Ok((
            std::mem::take(&mut bufs[0]),
            std::mem::take(&mut bufs[1]),
            false,
            exited,
        ))
    }
}

fn set_nonblocking(fd: i32) {
    // SAFETY: fcntl on an fd we own; no pointers.
    unsafe {
        let fl = libc::fcntl(fd, libc::F_GETFL);
        libc::fcntl(fd, libc::F_SETFL, fl | libc::O_NONBLOCK);
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
    fn exec_streams_large_stdin_and_stdout_without_deadlock() {
        let c = Children::new();
        let data: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
        let r = c
            .exec(
                &argv(&["sh", "-c", "cat; head -c 200000 /dev/zero >&2"]),
                Some(data.clone()),
                Duration::from_secs(60),
            )
            .unwrap();
        assert_eq!(r.code, 0);
        assert_eq!(r.stdout, data);
        assert_eq!(r.stderr.len(), 200_000);
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

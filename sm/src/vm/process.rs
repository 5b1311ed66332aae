//! The processes behind one VM (backends, sm-vmm): found next to `sm` or on `PATH`,
//! started in their own process groups (a terminal's Ctrl-C reaches `sm`, which stops them
//! in order; a group is killed whole), a backend with the listening socket sm bound for it.

use std::fs::File;
use std::os::fd::RawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, killpg, Signal};
use nix::unistd::Pid;

/// Errors starting or waiting for a process.
#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    /// The program could not be started.
    #[error("cannot start {0}: {1}")]
    Spawn(String, std::io::Error),
    /// It exited before it was ready.
    #[error("{name} exited ({status}) before it was ready{log}")]
    Died {
        /// Program name.
        name: String,
        /// How it exited.
        status: std::process::ExitStatus,
        /// The end of its log, if any.
        log: String,
    },
    /// It did not become ready in time.
    #[error("{0} was not ready within {1:?}")]
    Timeout(String, Duration),
}

/// The path of one of sm's programs: `$SM_BIN_DIR`, then beside the running executable,
/// then `PATH`.
pub fn tool(name: &str) -> PathBuf {
    let dirs = std::env::var_os("SM_BIN_DIR")
        .map(PathBuf::from)
        .into_iter()
        .chain(
            std::env::current_exe()
                .ok()
                .and_then(|e| e.parent().map(Path::to_path_buf)),
        );
    for dir in dirs {
        let p = dir.join(name);
        if p.is_file() {
            return p;
        }
    }
    PathBuf::from(name)
}

/// One started process.
#[derive(Debug)]
pub struct Proc {
    /// What it is, for messages.
    pub name: String,
    /// The process.
    pub child: Child,
    /// Where its stderr goes.
    pub log: PathBuf,
}

/// Where an inherited listening socket is in the child (`--fd 3`).
pub const INHERITED_FD: RawFd = 3;

/// The environment of systemd's service protocol (notify, watchdog, socket activation).
const SERVICE_PROTOCOL_ENV: [&str; 6] = [
    "NOTIFY_SOCKET",
    "WATCHDOG_USEC",
    "WATCHDOG_PID",
    "LISTEN_FDS",
    "LISTEN_PID",
    "LISTEN_FDNAMES",
];

impl Proc {
    /// Starts `cmd` in its own process group, stdout and stderr to `log`.
    pub fn spawn(name: &str, cmd: Command, log: PathBuf) -> Result<Self, ProcessError> {
        Self::spawn_with(name, cmd, log, &[], &[])
    }

    /// As [`Proc::spawn`], with `inherit` (a listening socket, then a state memfd) at
    /// descriptors 3, 4, ... and `env` (sm's own service-protocol variables) set.
    pub fn spawn_with(
        name: &str,
        mut cmd: Command,
        log: PathBuf,
        inherit: &[RawFd],
        env: &[(&str, String)],
    ) -> Result<Self, ProcessError> {
        // Appended to: a restarted backend's log keeps what the crashed run said.
        let out = File::options()
            .create(true)
            .append(true)
            .open(&log)
            .map_err(|e| ProcessError::Spawn(name.into(), e))?;
        let err = out
            .try_clone()
            .map_err(|e| ProcessError::Spawn(name.into(), e))?;
        // systemd's service protocol is between a service manager and its own child: sm's
        // processes must not answer for sm (or take its sockets) should sm run as a service.
        for var in SERVICE_PROTOCOL_ENV {
            cmd.env_remove(var);
        }
        cmd.envs(env.iter().map(|(k, v)| (k, v)));
        // sm blocks the stop signals (and SIGWINCH) to wait for them on a thread: unreset,
        // vhost-device-vsock and passt never saw the supervisor's SIGTERM and every stop
        // waited 2 s per backend for the SIGKILL.
        // SAFETY: the hook is async-signal-safe (see `clear_signal_mask`).
        unsafe { cmd.pre_exec(sm_launch::clear_signal_mask) };
        if !inherit.is_empty() {
            let fds: Vec<RawFd> = inherit.to_vec();
            // SAFETY: the closure only calls fcntl and dup2, which are async-signal-safe, and
            // allocates nothing (sm has threads: nothing that allocates or locks may run
            // between fork and exec).
            unsafe {
                cmd.pre_exec(move || {
                    // First out of the way (above any target), so no dup2 overwrites a source.
                    let mut moved = [0 as RawFd; 8];
                    for (i, &fd) in fds.iter().enumerate().take(moved.len()) {
                        moved[i] = libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 64);
                        if moved[i] < 0 {
                            return Err(std::io::Error::last_os_error());
                        }
                    }
                    for (i, &fd) in moved.iter().enumerate().take(fds.len()) {
                        if libc::dup2(fd, INHERITED_FD + i as RawFd) < 0 {
                            return Err(std::io::Error::last_os_error());
                        }
                    }
                    Ok(())
                })
            };
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .process_group(0)
            .spawn()
            .map_err(|e| ProcessError::Spawn(name.into(), e))?;
        Ok(Proc {
            name: name.into(),
            child,
            log,
        })
    }

    /// Fails with the end of its log if the process has exited.
    pub fn check_alive(&mut self) -> Result<(), ProcessError> {
        match self.child.try_wait() {
            Ok(Some(status)) => Err(ProcessError::Died {
                name: self.name.clone(),
                status,
                log: log_tail(&self.log),
            }),
            _ => Ok(()),
        }
    }

    /// The process ID.
    pub fn pid(&self) -> Pid {
        Pid::from_raw(self.child.id() as i32)
    }

    /// Stops its whole process group (a sandboxed backend's server runs in a PID namespace
    /// under it): `signal` to the group, up to `grace` for it to go, then SIGKILL, then until
    /// no process of the group is left (at most [`GROUP_GONE_LIMIT`]). Returns how the
    /// leader ended, if it was reaped here.
    pub fn stop_group(&mut self, signal: Signal, grace: Duration) -> Option<ExitStatus> {
        let pgid = self.pid();
        let _ = killpg(pgid, signal);
        let mut status = self.child.try_wait().ok().flatten();
        let start = Instant::now();
        while signal != Signal::SIGKILL && start.elapsed() < grace {
            status = status.or_else(|| self.child.try_wait().ok().flatten());
            if status.is_some() && !group_alive(pgid) {
                return status;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        let _ = killpg(pgid, Signal::SIGKILL);
        let status = status.or_else(|| self.child.wait().ok());
        kill_group(pgid);
        status
    }

    /// Asks it to stop (SIGTERM), waits up to `grace`, then kills it.
    pub fn stop(&mut self, grace: Duration) {
        if matches!(self.child.try_wait(), Ok(Some(_))) {
            return;
        }
        let _ = kill(self.pid(), Signal::SIGTERM);
        let start = Instant::now();
        while start.elapsed() < grace {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Whether `pid` runs (an exited process waiting to be reaped does not count).
pub fn alive(pid: Pid) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rsplit_once(") ").map(|(_, rest)| !rest.starts_with('Z')))
        .unwrap_or(false)
}

/// How long a killed process group may take to be gone.
pub const GROUP_GONE_LIMIT: Duration = Duration::from_secs(5);

/// Kills process group `pgid` (SIGKILL) and waits until none of it is left, at most
/// [`GROUP_GONE_LIMIT`].
pub fn kill_group(pgid: Pid) {
    let _ = killpg(pgid, Signal::SIGKILL);
    wait_group_gone(pgid, GROUP_GONE_LIMIT);
}

/// Waits up to `limit` until no process of group `pgid` is left; whether none is.
pub fn wait_group_gone(pgid: Pid, limit: Duration) -> bool {
    let start = Instant::now();
    while group_alive(pgid) {
        if start.elapsed() >= limit {
            return false;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    true
}

/// Whether process group `pgid` has a process that is not a zombie (an orphaned zombie
/// waits for the host's init to reap it but holds nothing any more).
pub fn group_alive(pgid: Pid) -> bool {
    if killpg(pgid, None) == Err(nix::errno::Errno::ESRCH) {
        return false;
    }
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return true;
    };
    entries.flatten().any(|e| {
        std::fs::read_to_string(e.path().join("stat"))
            .ok()
            .and_then(|s| {
                // After the command's closing parenthesis: state, ppid, pgrp.
                let rest = s.rsplit_once(") ")?.1.to_owned();
                let mut f = rest.split_whitespace();
                let state = f.next()?.to_owned();
                let pgrp: i32 = f.nth(1)?.parse().ok()?;
                Some(pgrp == pgid.as_raw() && state != "Z")
            })
            .unwrap_or(false)
    })
}

/// The last line of a log file, as ": <line>" (or nothing).
pub fn log_tail(log: &Path) -> String {
    last_line(log).map(|l| format!(": {l}")).unwrap_or_default()
}

/// The last non-empty line of a log file, if it has one.
pub fn last_line(log: &Path) -> Option<String> {
    let text = std::fs::read_to_string(log).ok()?;
    text.lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .map(str::to_owned)
}

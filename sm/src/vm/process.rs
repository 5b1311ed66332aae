//! The processes behind one VM (backends, sm-vmm): found next to `sm` or on `PATH`,
//! started in their own process groups (a terminal's Ctrl-C reaches `sm`, which stops them
//! in order), waited for by their sockets, and stopped VMM first, then backends.

use std::fs::File;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
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

/// How long a backend may take to listen on its socket.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

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
    pub fn spawn(name: &str, mut cmd: Command, log: PathBuf) -> Result<Self, ProcessError> {
        let out = File::create(&log).map_err(|e| ProcessError::Spawn(name.into(), e))?;
        let err = out
            .try_clone()
            .map_err(|e| ProcessError::Spawn(name.into(), e))?;
        // systemd's service protocol is between a service manager and its own child: sm's
        // processes must not answer for sm (or take its sockets) should sm run as a service.
        for var in SERVICE_PROTOCOL_ENV {
            cmd.env_remove(var);
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

    /// Waits until `socket` exists (the backend listens), or fails if it exits first.
    pub fn wait_for_socket(&mut self, socket: &Path) -> Result<(), ProcessError> {
        use sm_launch::readiness::{wait_for_socket, NotReady};
        match wait_for_socket(&mut self.child, socket, READY_TIMEOUT, || true) {
            Ok(()) => Ok(()),
            Err(NotReady::Exited(status)) => Err(ProcessError::Died {
                name: self.name.clone(),
                status,
                log: log_tail(&self.log),
            }),
            Err(NotReady::TimedOut(limit)) => Err(ProcessError::Timeout(self.name.clone(), limit)),
            Err(NotReady::Wait(e)) => Err(ProcessError::Spawn(self.name.clone(), e)),
        }
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

/// The last line of a log file, as ": <line>" (or nothing).
fn log_tail(log: &Path) -> String {
    std::fs::read_to_string(log)
        .ok()
        .and_then(|t| {
            t.lines()
                .rev()
                .find(|l| !l.trim().is_empty())
                .map(str::to_owned)
        })
        .map(|l| format!(": {l}"))
        .unwrap_or_default()
}

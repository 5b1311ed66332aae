//! One supervised backend: its listening socket, bound by sm once so that its inode never
//! changes across restarts and handed over as descriptor 3 (`--fd 3`, see
//! [`super::process::INHERITED_FD`]); its own
//! `NOTIFY_SOCKET` (`READY=1`, `WATCHDOG=1`, `STATUS=`); the process of its current run; and
//! what a restart needs to know (history, the image's identity). The supervisor's thread
//! sleeps on [`Service::wait_fds`] until [`Service::deadline`].

use std::ffi::OsString;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::UnixListener;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::time::{Duration, Instant, SystemTime};

use nix::sys::memfd::{memfd_create, MFdFlags};
use nix::sys::signal::Signal;
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};
use sm_launch::notify::{Notification, NotifySocket};

use super::process::{log_tail, Proc, ProcessError};
use super::restart::History;

/// How long a (re)started backend may take to be ready.
pub const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How often a [`Readiness::SocketFile`] backend is looked at while it starts: nothing
/// tells sm when its socket file appears.
const SOCKET_FILE_LOOK: Duration = Duration::from_millis(20);
/// How often a running backend is looked at when nothing can tell sm of its exit (no
/// pidfd: Linux before 5.3, or out of descriptors).
pub(super) const UNWATCHED_LOOK: Duration = Duration::from_millis(100);

/// How sm learns that a backend serves.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Readiness {
    /// sm binds the socket and passes it as `--fd 3`; the backend says `READY=1`.
    Notify,
    /// The backend binds the socket itself and speaks no sd_notify (vhost-device-vsock):
    /// ready once the socket file exists.
    SocketFile,
}

/// What to run for one backend.
#[derive(Clone, Debug)]
pub struct ServiceSpec {
    /// What it is, for messages (`volume ./pg.img`).
    pub name: String,
    /// The program.
    pub program: PathBuf,
    /// Its arguments (for [`Readiness::Notify`], with `--fd 3`).
    pub args: Vec<OsString>,
    /// The vhost-user socket it serves.
    pub socket: PathBuf,
    /// How readiness is seen.
    pub readiness: Readiness,
    /// The image file it serves, whose identity must not change across a restart.
    pub image: Option<PathBuf>,
    /// Files a previous run may have left that a new run must not find (a
    /// [`Readiness::SocketFile`] backend's sockets).
    pub stale: Vec<PathBuf>,
    /// It keeps state across its runs in a memfd sm holds, inherited as descriptor 4 (the
    /// fs backend's crash journal, `--state-fd 4`), as systemd's file-descriptor store does.
    pub keeps_state: bool,
}

/// A supervised process's state, as `sm ps` shows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    /// Started, not ready yet.
    Starting,
    /// Ready and serving.
    Running,
    /// Failed; started again after the backoff.
    Restarting,
    /// Given up on.
    Failed,
    /// Being stopped with the VM.
    Stopping,
}

/// Why a run of a backend ended.
#[derive(Debug)]
pub enum Failure {
    /// It exited or was killed (the end of its log, as ": line", or empty).
    Exited(ExitStatus, String),
    /// It was not ready within [`READY_TIMEOUT`].
    NotReady,
    /// No `WATCHDOG=1` came within the interval.
    Watchdog(Duration),
    /// It could not be started.
    Spawn(String),
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            // A process that exits says why last; a killed one's last line is unrelated.
            Failure::Exited(status, log) if status.code().is_some() => {
                write!(f, "{}{log}", describe(*status))
            }
            Failure::Exited(status, _) => write!(f, "{}", describe(*status)),
            Failure::NotReady => write!(f, "not ready within {READY_TIMEOUT:?}"),
            Failure::Watchdog(d) => write!(f, "missed its watchdog ({d:?})"),
            Failure::Spawn(e) => write!(f, "{e}"),
        }
    }
}

/// `exited with status 1`, `killed by SIGKILL`.
pub fn describe(status: ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(c), _) => format!("exited with status {c}"),
        (None, Some(s)) => match Signal::try_from(s) {
            Ok(sig) => format!("killed by {}", sig.as_str()),
            Err(_) => format!("killed by signal {s}"),
        },
        _ => status.to_string(),
    }
}

/// What a check of a running backend found.
#[derive(Debug)]
pub enum Event {
    /// It became ready.
    Ready,
    /// Something was noted (a status line).
    Changed,
    /// Its run ended or must end.
    Failed(Failure),
}

/// One backend under supervision.
#[derive(Debug)]
pub struct Service {
    pub(super) spec: ServiceSpec,
    listener: Option<UnixListener>,
    notify: Option<NotifySocket>,
    log: PathBuf,
    watchdog: Duration,
    pub(super) proc: Option<Proc>,
    /// The memfd every run inherits ([`ServiceSpec::keeps_state`]).
    state_fd: Option<OwnedFd>,
    /// Readable once `proc` exits.
    pidfd: Option<OwnedFd>,
    pub(super) state: State,
    pub(super) restarts: u32,
    pub(super) last_exit: Option<(String, SystemTime)>,
    pub(super) status: Option<String>,
    pub(super) history: History,
    pub(super) next_start: Option<Instant>,
    ready_deadline: Instant,
    ready_at: Option<Instant>,
    watchdog_deadline: Option<Instant>,
    image_id: Option<(u64, u64)>,
}

impl Service {
    /// Binds what `spec` needs in `dir` (`index` names the notification socket); `watchdog`
    /// is the interval asked of a [`Readiness::Notify`] backend (zero: none).
    pub fn new(
        spec: ServiceSpec,
        dir: &Path,
        index: usize,
        watchdog: Duration,
    ) -> Result<Service, ProcessError> {
        let bind_err = |e| ProcessError::Spawn(format!("{}: binding its socket", spec.name), e);
        let (listener, notify) = match spec.readiness {
            Readiness::Notify => {
                match std::fs::remove_file(&spec.socket) {
                    Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(bind_err(e)),
                    _ => {}
                }
                let listener = UnixListener::bind(&spec.socket).map_err(bind_err)?;
                let notify = NotifySocket::bind(&dir.join(format!("notify-{index}.sock")))
                    .map_err(bind_err)?;
                (Some(listener), Some(notify))
            }
            Readiness::SocketFile => (None, None),
        };
        let state_fd = if spec.keeps_state {
            let name = c"sm-backend-state";
            let fd = memfd_create(name, MFdFlags::MFD_CLOEXEC).map_err(|e| {
                ProcessError::Spawn(format!("{}: its state memfd", spec.name), e.into())
            })?;
            Some(fd)
        } else {
            None
        };
        Ok(Service {
            log: dir.join(format!("backend-{index}.log")),
            spec,
            listener,
            notify,
            watchdog,
            proc: None,
            state_fd,
            pidfd: None,
            state: State::Starting,
            restarts: 0,
            last_exit: None,
            status: None,
            history: History::default(),
            next_start: None,
            ready_deadline: Instant::now(),
            ready_at: None,
            watchdog_deadline: None,
            image_id: None,
        })
    }

    /// What it is, for messages.
    pub fn name(&self) -> &str {
        &self.spec.name
    }

    /// The current run's process ID.
    pub fn pid(&self) -> Option<i32> {
        self.proc.as_ref().map(|p| p.pid().as_raw())
    }

    /// Starts a run; [`Service::check`] then sees it become ready.
    pub fn spawn(&mut self) -> Result<(), ProcessError> {
        for f in &self.spec.stale {
            let _ = std::fs::remove_file(f);
        }
        if let Some(n) = &self.notify {
            n.drain(); // What the previous run sent last.
        }
        let mut cmd = Command::new(&self.spec.program);
        cmd.args(&self.spec.args);
        let mut env = vec![];
        if let Some(n) = &self.notify {
            env.push(("NOTIFY_SOCKET", n.path().to_string_lossy().into_owned()));
            if !self.watchdog.is_zero() {
                env.push(("WATCHDOG_USEC", self.watchdog.as_micros().to_string()));
            }
        }
        let mut fds: Vec<_> = self.listener.iter().map(|l| l.as_raw_fd()).collect();
        fds.extend(self.state_fd.iter().map(|s| s.as_raw_fd()));
        let p = Proc::spawn_with(&self.spec.name, cmd, self.log.clone(), &fds, &env)?;
        self.pidfd = pidfd_open(p.pid()).ok();
        self.proc = Some(p);
        self.state = State::Starting;
        self.ready_deadline = Instant::now() + READY_TIMEOUT;
        self.ready_at = None;
        self.watchdog_deadline = None;
        Ok(())
    }

    /// Reads its notifications and its process's state.
    pub fn check(&mut self, now: Instant) -> Option<Event> {
        let mut event = None;
        let seen: Vec<_> = self.notify.iter().flat_map(NotifySocket::drain).collect();
        for n in seen {
            match n {
                Notification::Ready if self.state == State::Starting => {
                    self.ready(now);
                    event = Some(Event::Ready);
                }
                Notification::Watchdog if !self.watchdog.is_zero() => {
                    self.watchdog_deadline = Some(now + self.watchdog);
                }
                Notification::Status(s) => {
                    self.status = Some(s);
                    event = event.or(Some(Event::Changed));
                }
                _ => {}
            }
        }
        let Some(p) = self.proc.as_mut() else {
            return event;
        };
        match p.child.try_wait() {
            Ok(Some(status)) => {
                return Some(Event::Failed(Failure::Exited(status, log_tail(&p.log))))
            }
            Ok(None) => {}
            // Reaped elsewhere (SIGCHLD ignored): its pidfd would wake the supervisor forever.
            Err(_) => self.pidfd = None,
        }
        if self.state == State::Starting
            && self.spec.readiness == Readiness::SocketFile
            && self.spec.socket.exists()
        {
            self.ready(now);
            return Some(Event::Ready);
        }
        if self.state == State::Starting && now > self.ready_deadline {
            return Some(Event::Failed(Failure::NotReady));
        }
        if self.watchdog_deadline.is_some_and(|d| now > d) {
            return Some(Event::Failed(Failure::Watchdog(self.watchdog)));
        }
        event
    }

    /// What wakes the supervisor for this backend: its notifications and its process's exit,
    /// while it runs.
    pub(super) fn wait_fds(&self) -> impl Iterator<Item = BorrowedFd<'_>> {
        let live = self.proc.is_some() && matches!(self.state, State::Starting | State::Running);
        let notify = self.notify.as_ref().map(AsFd::as_fd);
        let exit = self.pidfd.as_ref().map(AsFd::as_fd);
        notify.into_iter().chain(exit).filter(move |_| live)
    }

    /// When it must be looked at even if none of [`Service::wait_fds`] wakes the supervisor.
    pub(super) fn deadline(&self, now: Instant) -> Option<Instant> {
        let starting = self.state == State::Starting;
        match self.state {
            State::Restarting => self.next_start,
            State::Starting | State::Running if self.proc.is_some() => {
                let look = if starting && self.spec.readiness == Readiness::SocketFile {
                    Some(now + SOCKET_FILE_LOOK)
                } else {
                    self.pidfd.is_none().then(|| now + UNWATCHED_LOOK)
                };
                let ready = starting.then_some(self.ready_deadline);
                [look, ready, self.watchdog_deadline]
                    .into_iter()
                    .flatten()
                    .min()
            }
            _ => None,
        }
    }

    /// Moves its deadlines `by` later: sm itself did not run for that long (a stopped or
    /// descheduled host), so it could not have heard the pings sent meanwhile.
    pub fn postpone(&mut self, by: Duration) {
        self.ready_deadline += by;
        if let Some(d) = &mut self.watchdog_deadline {
            *d += by;
        }
    }

    fn ready(&mut self, now: Instant) {
        self.state = State::Running;
        self.ready_at = Some(now);
        if !self.watchdog.is_zero() && self.notify.is_some() {
            self.watchdog_deadline = Some(now + self.watchdog);
        }
        if self.image_id.is_none() {
            self.image_id = self.spec.image.as_deref().and_then(identity);
        }
    }

    /// Ends the current run (SIGKILL to its process group, until it is gone) and records
    /// `failure` as its last exit; returns how long it had been ready.
    pub fn kill(&mut self, failure: &Failure) -> Option<Duration> {
        self.pidfd = None;
        if let Some(mut p) = self.proc.take() {
            p.stop_group(Signal::SIGKILL, Duration::ZERO);
        }
        self.last_exit = Some((failure.to_string(), SystemTime::now()));
        self.watchdog_deadline = None;
        self.ready_at.take().map(|r| r.elapsed())
    }

    /// Stops the current run with the VM: SIGTERM to its group, `grace`, then SIGKILL.
    pub fn stop(&mut self, grace: Duration) {
        self.state = State::Stopping;
        self.pidfd = None;
        if let Some(mut p) = self.proc.take() {
            let start = Instant::now();
            let how = p.stop_group(Signal::SIGTERM, grace).map(describe);
            crate::trace::step(format_args!(
                "{} stopped in {:?}: {}",
                self.name(),
                start.elapsed(),
                how.as_deref().unwrap_or("no status")
            ));
            if let Some(how) = how {
                self.last_exit = Some((how, SystemTime::now()));
            }
        }
    }

    /// Whether the image file is still the one the first run served (a missing writable
    /// image would be created empty by the backend, under the guest's file system).
    pub fn image_unchanged(&self) -> bool {
        match (&self.spec.image, self.image_id) {
            (Some(path), Some(id)) => identity(path) == Some(id),
            _ => true,
        }
    }
}

/// A descriptor that becomes readable when `pid`, a child not reaped yet, exits.
fn pidfd_open(pid: Pid) -> std::io::Result<OwnedFd> {
    // SAFETY: pidfd_open(2) takes a PID and flags and touches no memory of this process.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid.as_raw(), 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: the kernel just returned this descriptor (close-on-exec); nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// A file's (device, inode).
fn identity(path: &Path) -> Option<(u64, u64)> {
    std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino()))
}

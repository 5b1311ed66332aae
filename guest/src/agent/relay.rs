//! The exec relay: one thread copies a command's output to the host as frames, applies the
//! host's signals and window sizes, waits for the command's exit and enforces its timeout,
//! all with poll(2) instead of a thread per pipe (each thread is a stack to map and a task
//! to create per exec, which the guest pays for on every `exec`).

use std::fs::File;
use std::io::Read;
use std::os::fd::{AsFd, FromRawFd, OwnedFd, RawFd};
use std::sync::mpsc::{Receiver, TryRecvError};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{killpg, Signal};
use nix::sys::wait::WaitStatus;
use nix::unistd::Pid;
use sm_agent::frame::{read_frame, write_frame, Kind, DATA_CHUNK};

use super::exec::Input;

/// How long output still in a terminal is read after the command ends: processes it left
/// in the background may hold the terminal open for ever.
const TTY_DRAIN: Duration = Duration::from_millis(500);

/// How often the exit is looked for when no pidfd could be opened to wake poll.
const EXIT_LOOK: Duration = Duration::from_millis(10);

/// A command's exit: the status the reaper hands over, a pidfd that wakes poll when the
/// command exits, and the deadline of its timeout.
pub struct ExitWatch {
    pid: Pid,
    exited: Receiver<WaitStatus>,
    pidfd: Option<OwnedFd>,
    deadline: Option<Instant>,
    status: Option<WaitStatus>,
    timed_out: bool,
    /// The reaper dropped its end: no status will come.
    lost: bool,
}

impl ExitWatch {
    /// Watches `pid`, whose status comes on `exited`, killing its process group once
    /// `timeout_ms` after `start` have passed.
    pub fn new(
        pid: Pid,
        exited: Receiver<WaitStatus>,
        timeout_ms: Option<u64>,
        start: Instant,
    ) -> ExitWatch {
        ExitWatch {
            pid,
            exited,
            pidfd: pidfd_open(pid).ok(),
            deadline: timeout_ms.map(|ms| start + Duration::from_millis(ms)),
            status: None,
            timed_out: false,
            lost: false,
        }
    }

    fn ended(&self) -> bool {
        self.status.is_some() || self.lost
    }

    /// Takes the status if the reaper has sent it.
    fn look(&mut self) {
        if self.ended() {
            return;
        }
        match self.exited.try_recv() {
            Ok(s) => self.status = Some(s),
            Err(TryRecvError::Disconnected) => self.lost = true,
            Err(TryRecvError::Empty) => return,
        }
        self.pidfd = None; // Readable from now on: polling it would spin.
    }

    /// The pidfd said the command exited: the reaper's status follows at once.
    fn exited_now(&mut self) {
        self.pidfd = None;
        if !self.ended() {
            match self.exited.recv() {
                Ok(s) => self.status = Some(s),
                Err(_) => self.lost = true,
            }
        }
    }

    /// Kills the command's process group once its time has run out.
    fn enforce(&mut self, now: Instant) {
        if !self.ended() && self.deadline.is_some_and(|d| now >= d) {
            self.deadline = None;
            self.timed_out = true;
            let _ = killpg(self.pid, Signal::SIGKILL);
        }
    }

    /// When poll has to return next for this watch.
    fn wake_at(&self, now: Instant) -> Option<Instant> {
        if self.ended() {
            return None;
        }
        let look = self.pidfd.is_none().then(|| now + EXIT_LOOK);
        [self.deadline, look].into_iter().flatten().min()
    }
}

/// Relays until the command has exited and its outputs are closed (a terminal is read for
/// at most [`TTY_DRAIN`] after the exit); `controls`, if given, takes the host's frames
/// meanwhile. Returns the command's status (if the reaper reported one) and whether it
/// timed out. Once the host has left (a detached workload, a restored clone whose
/// connections were reset), output is read and dropped: the command runs on as with output
/// to /dev/null instead of dying of SIGPIPE or blocking on a full pipe.
pub fn relay(
    conn: &mut File,
    outputs: Vec<(OwnedFd, Kind)>,
    mut controls: Option<Input>,
    mut exit: ExitWatch,
    tty: bool,
) -> (Option<WaitStatus>, bool) {
    let mut outputs: Vec<(File, Kind)> = outputs
        .into_iter()
        .map(|(fd, kind)| (File::from(fd), kind))
        .collect();
    let mut buf = vec![0u8; DATA_CHUNK];
    let mut host_left = false;
    let mut drain_until = None;
    loop {
        exit.look();
        let now = Instant::now();
        exit.enforce(now);
        if exit.ended() {
            if outputs.is_empty() {
                break;
            }
            if tty && now >= *drain_until.get_or_insert(now + TTY_DRAIN) {
                break;
            }
        }
        let wake = [exit.wake_at(now), drain_until].into_iter().flatten().min();
        let timeout = wake.map_or(PollTimeout::NONE, |t| {
            let ms = t.saturating_duration_since(now).as_millis().max(1);
            PollTimeout::try_from(ms).unwrap_or(PollTimeout::MAX)
        });
        let ready = {
            let mut fds: Vec<PollFd> = outputs
                .iter()
                .map(|(f, _)| f.as_fd())
                .chain(exit.pidfd.as_ref().map(AsFd::as_fd))
                .chain(controls.as_ref().map(|_| conn.as_fd()))
                .map(|fd| PollFd::new(fd, PollFlags::POLLIN))
                .collect();
            match poll(&mut fds, timeout) {
                Ok(_) => {}
                Err(Errno::EINTR) => continue,
                Err(_) => {
                    std::thread::sleep(EXIT_LOOK);
                    continue;
                }
            }
            let ready: Vec<bool> = fds
                .iter()
                .map(|f| f.revents().is_some_and(|r| !r.is_empty()))
                .collect();
            ready
        };
        let n = outputs.len();
        if controls.is_some() && ready.last() == Some(&true) {
            let more = read_frame(conn)
                .ok()
                .is_some_and(|f| controls.as_mut().is_some_and(|c| c.handle(f)));
            if !more {
                controls = None; // The host closed its end (or broke the protocol).
            }
        }
        if exit.pidfd.is_some() && ready.get(n) == Some(&true) {
            exit.exited_now();
        }
        for i in (0..n).rev().filter(|&i| ready[i]) {
            let (pipe, kind) = &mut outputs[i];
            match pipe.read(&mut buf) {
                Ok(0) => drop(outputs.remove(i)),
                Ok(len) if !host_left => {
                    host_left = write_frame(conn, *kind, &buf[..len]).is_err();
                }
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                // A terminal nothing holds any more reads EIO.
                Err(_) => drop(outputs.remove(i)),
            }
        }
    }
    (exit.status, exit.timed_out)
}

/// A descriptor that becomes readable when `pid` (a child) exits.
fn pidfd_open(pid: Pid) -> std::io::Result<OwnedFd> {
    // SAFETY: pidfd_open(2) takes a PID and flags and touches no memory of this process.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid.as_raw(), 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: the kernel just returned this descriptor (close-on-exec); nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

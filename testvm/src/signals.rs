//! Signals as file-descriptor events: SIGINT/SIGTERM/SIGHUP ask the runner to stop,
//! SIGCHLD says a child may have exited.

use crate::{Context, Result};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use std::os::fd::AsFd;
use std::time::Duration;

/// The signals the runner handles, blocked and read from a signalfd.
pub struct Signals {
    fd: SignalFd,
}

/// What woke the runner up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// A request to stop (SIGINT, SIGTERM or SIGHUP).
    Stop(Signal),
    /// Some child changed state.
    Child,
    /// The timeout passed.
    Timeout,
}

impl Signals {
    /// Blocks the handled signals in the calling thread (call it before starting threads, so
    /// they inherit the mask; spawned processes get a clean mask from std) and opens the fd.
    pub fn block() -> Result<Self> {
        let mut set = SigSet::empty();
        for s in [
            Signal::SIGINT,
            Signal::SIGTERM,
            Signal::SIGHUP,
            Signal::SIGCHLD,
        ] {
            set.add(s);
        }
        set.thread_block()
            .context(|| "blocking signals".to_string())?;
        let fd = SignalFd::with_flags(&set, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)
            .context(|| "creating a signalfd".to_string())?;
        Ok(Signals { fd })
    }

    /// Waits up to `timeout` (forever if `None`) for a signal; a stop request wins over SIGCHLD.
    pub fn wait(&self, timeout: Option<Duration>) -> Result<Event> {
        let timeout = match timeout {
            None => PollTimeout::NONE,
            Some(d) => PollTimeout::try_from(d).unwrap_or(PollTimeout::MAX),
        };
        let mut fds = [PollFd::new(self.fd.as_fd(), PollFlags::POLLIN)];
        match poll(&mut fds, timeout) {
            Ok(0) | Err(nix::errno::Errno::EINTR) => return Ok(Event::Timeout),
            Ok(_) => {}
            Err(e) => return Err(e).context(|| "waiting for signals".to_string()),
        }
        let mut event = Event::Timeout;
        while let Some(info) = self
            .fd
            .read_signal()
            .context(|| "reading the signalfd".to_string())?
        {
            match Signal::try_from(info.ssi_signo as i32) {
                Ok(Signal::SIGCHLD) if event == Event::Timeout => event = Event::Child,
                Ok(Signal::SIGCHLD) | Err(_) => {}
                Ok(sig) => event = Event::Stop(sig),
            }
        }
        Ok(event)
    }
}

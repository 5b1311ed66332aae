//! A deadline on a backend's setup: a backend that accepts the connection and then stops
//! answering (or never reads) must not hang sm-vmm before the guest even boots. The vhost
//! crate's frontend retries timed-out socket reads forever, so a socket timeout cannot
//! bound it; instead a watchdog thread shuts the socket down when the deadline passes,
//! which fails the blocked read or write, and the error is then reported as a timeout.

use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError, Sender};
use std::sync::Arc;
use std::time::Duration;

/// A running deadline; dropping it (or [`SetupDeadline::finish`]) stops the watchdog.
pub struct SetupDeadline {
    fired: Arc<AtomicBool>,
    _stop: Sender<()>,
}

impl SetupDeadline {
    /// Starts a watchdog that shuts the socket `fd` down if setup takes longer than `limit`.
    pub fn start(fd: RawFd, limit: Duration) -> std::io::Result<SetupDeadline> {
        // SAFETY: `fd` is the caller's open socket; the watchdog works on its own duplicate
        // (the same socket), so the caller closing `fd` can never make it hit another file.
        let socket: OwnedFd = unsafe { BorrowedFd::borrow_raw(fd) }.try_clone_to_owned()?;
        let fired = Arc::new(AtomicBool::new(false));
        let (stop, stopped) = mpsc::channel::<()>();
        let flag = fired.clone();
        std::thread::Builder::new()
            .name("vhost-user-setup".into())
            .spawn(move || {
                if let Err(RecvTimeoutError::Timeout) = stopped.recv_timeout(limit) {
                    flag.store(true, Ordering::SeqCst);
                    // SAFETY: shutting down our own duplicate of the socket; a failure only
                    // means it is already unusable.
                    unsafe { libc::shutdown(socket.as_raw_fd(), libc::SHUT_RDWR) };
                }
            })?;
        Ok(SetupDeadline { fired, _stop: stop })
    }

    /// Whether the deadline passed and the socket was shut down.
    pub fn fired(&self) -> bool {
        self.fired.load(Ordering::SeqCst)
    }

    /// A handle that tells, later, whether the deadline fired.
    pub fn flag(&self) -> Arc<AtomicBool> {
        self.fired.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::os::unix::net::UnixStream;
    use std::time::Instant;

    #[test]
    fn a_read_blocked_past_the_deadline_fails_and_a_finished_setup_is_left_alone() {
        let (mut a, _b) = UnixStream::pair().unwrap();
        let deadline = SetupDeadline::start(a.as_raw_fd(), Duration::from_millis(200)).unwrap();
        let t = Instant::now();
        let mut buf = [0u8; 1];
        assert_eq!(
            a.read(&mut buf).unwrap(),
            0,
            "the shut-down socket reads EOF"
        );
        assert!(t.elapsed() < Duration::from_secs(5));
        assert!(deadline.fired());

        let (c, mut d) = UnixStream::pair().unwrap();
        let deadline = SetupDeadline::start(c.as_raw_fd(), Duration::from_millis(100)).unwrap();
        drop(deadline);
        std::thread::sleep(Duration::from_millis(300));
        d.set_nonblocking(true).unwrap();
        let e = d.read(&mut buf).unwrap_err();
        assert_eq!(
            e.kind(),
            std::io::ErrorKind::WouldBlock,
            "socket still open"
        );
    }
}

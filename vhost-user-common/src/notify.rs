//! systemd's service notification protocol (`sd_notify`), as the backends speak it: `READY=1`
//! once they serve, `STATUS=` lines at each step, `STOPPING=1` when they stop, and
//! `WATCHDOG=1` pings when `WATCHDOG_USEC` asks for them.
//!
//! The sandbox closes the file system and the network namespace off after start-up, so
//! [`init`] connects a datagram socket to `$NOTIFY_SOCKET` (a path or, with a leading `@`, an
//! abstract name) before it; sending then needs only `sendto` on that descriptor, which the
//! seccomp allow-list has. The sd-notify crate formats the messages and reads
//! `WATCHDOG_USEC`/`WATCHDOG_PID`; it would connect anew on every message, which the sandbox
//! forbids.
//!
//! The watchdog is fed from the queue threads, the ones doing the work: a ticker thread
//! writes to one eventfd per queue thread every quarter of the interval, each queue thread
//! answers it from its epoll loop ([`WATCHDOG_EVENT`]), and `WATCHDOG=1` goes out, from the
//! queue thread that answers last, only once every queue thread has answered. One hung queue
//! thread stops the pings, and the service manager's watchdog fires.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, RawFd};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::sync::atomic::{AtomicI32, AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use sd_notify::NotifyState;
use tracing::{debug, warn};
use vmm_sys_util::eventfd::EventFd;

/// The epoll event id under which each queue thread gets its watchdog tick: above every
/// queue and exit event (vhost-user-backend reserves `0..=num_queues`).
pub const WATCHDOG_EVENT: u16 = u16::MAX;

/// The connected notification socket, if the service manager gave one.
struct Notifier {
    socket: Option<UnixDatagram>,
    watchdog: Option<Duration>,
}

static NOTIFIER: OnceLock<Notifier> = OnceLock::new();

/// The socket's descriptor for the signal handler (-1: none).
static NOTIFY_FD: AtomicI32 = AtomicI32::new(-1);

/// Connects to `$NOTIFY_SOCKET` and reads the watchdog interval; call once, before the
/// sandbox. Without `NOTIFY_SOCKET` every later call does nothing. An error (a socket that
/// does not answer) is returned and notifications stay off.
pub fn init() -> io::Result<()> {
    let mut result = Ok(());
    NOTIFIER.get_or_init(|| {
        let watchdog = sd_notify::watchdog_enabled().filter(|d| !d.is_zero());
        let socket = match std::env::var_os("NOTIFY_SOCKET") {
            Some(path) => match connect(path.as_bytes()) {
                Ok(s) => Some(s),
                Err(e) => {
                    result = Err(io::Error::new(
                        e.kind(),
                        format!("NOTIFY_SOCKET {}: {e}", path.to_string_lossy()),
                    ));
                    None
                }
            },
            None => None,
        };
        if let Some(s) = &socket {
            NOTIFY_FD.store(s.as_raw_fd(), Ordering::Relaxed);
        }
        Notifier { socket, watchdog }
    });
    result
}

/// A datagram socket connected to `path` (`@name`: the abstract name `name`).
pub fn connect(path: &[u8]) -> io::Result<UnixDatagram> {
    let socket = UnixDatagram::unbound()?;
    match path.strip_prefix(b"@") {
        Some(name) => socket.connect_addr(&SocketAddr::from_abstract_name(name)?)?,
        None => socket.connect(std::ffi::OsStr::from_bytes(path))?,
    }
    Ok(socket)
}

/// Sends `states` as one datagram, if there is a notification socket. Failures are logged
/// at debug level only: the service runs on without its manager hearing from it.
pub fn notify(states: &[NotifyState]) {
    let Some(socket) = NOTIFIER.get().and_then(|n| n.socket.as_ref()) else {
        return;
    };
    let msg: String = states.iter().map(|s| format!("{s}\n")).collect();
    if let Err(e) = socket.send(msg.as_bytes()) {
        debug!("sd_notify {msg:?}: {e}");
    }
}

/// Hands `fd` to the service manager's file-descriptor store under `name` (`FDSTORE=1`,
/// `FDNAME=`, the descriptor in SCM_RIGHTS), so it comes back in `LISTEN_FDS` after a
/// restart. An error when there is no notification socket or the send fails.
pub fn store_fd(name: &str, fd: BorrowedFd<'_>) -> io::Result<()> {
    let Some(socket) = NOTIFIER.get().and_then(|n| n.socket.as_ref()) else {
        return Err(io::Error::new(
            io::ErrorKind::NotFound,
            "no NOTIFY_SOCKET to store a descriptor with",
        ));
    };
    let msg = format!("FDSTORE=1\nFDNAME={name}\n");
    let fds = [fd.as_raw_fd()];
    let cmsg = [nix::sys::socket::ControlMessage::ScmRights(&fds)];
    let iov = [std::io::IoSlice::new(msg.as_bytes())];
    nix::sys::socket::sendmsg::<()>(
        socket.as_raw_fd(),
        &iov,
        &cmsg,
        nix::sys::socket::MsgFlags::empty(),
        None,
    )
    .map_err(io::Error::from)?;
    Ok(())
}

/// `READY=1` with a status line.
pub fn ready(status: &str) {
    notify(&[NotifyState::Ready, NotifyState::Status(status)]);
}

/// A `STATUS=` line.
pub fn status(status: &str) {
    notify(&[NotifyState::Status(status)]);
}

/// `STOPPING=1` with a status line.
pub fn stopping(status: &str) {
    notify(&[NotifyState::Stopping, NotifyState::Status(status)]);
}

/// The watchdog interval the service manager asked for (`WATCHDOG_USEC`, for this process
/// when `WATCHDOG_PID` is set), if any.
pub fn watchdog_interval() -> Option<Duration> {
    NOTIFIER.get().and_then(|n| n.watchdog)
}

/// What a queue thread last did about the watchdog.
struct Watchdog {
    /// One tick eventfd per queue thread of the current connection's daemon.
    ticks: Vec<EventFd>,
    /// Which queue threads answered since the last ping.
    answered: Vec<bool>,
}

static WATCHDOG: Mutex<Option<Watchdog>> = Mutex::new(None);

/// The shortest time between two ticks, whatever `WATCHDOG_USEC` says.
const MIN_TICK: Duration = Duration::from_millis(10);

/// New tick eventfds for `threads` queue threads (a new daemon's); the caller registers
/// each with its thread's epoll loop under [`WATCHDOG_EVENT`]. Replaces the previous
/// daemon's. Starts the ticker thread the first time. `None` without a watchdog.
pub fn watchdog_ticks(threads: usize) -> io::Result<Option<Vec<RawFd>>> {
    let Some(interval) = watchdog_interval() else {
        return Ok(None);
    };
    static TICKER: OnceLock<()> = OnceLock::new();
    let ticks = (0..threads)
        .map(|_| EventFd::new(libc::EFD_NONBLOCK | libc::EFD_CLOEXEC))
        .collect::<io::Result<Vec<_>>>()?;
    let fds = ticks.iter().map(|t| t.as_raw_fd()).collect();
    *WATCHDOG.lock().unwrap_or_else(|e| e.into_inner()) = Some(Watchdog {
        answered: vec![false; threads],
        ticks,
    });
    let mut spawned = Ok(());
    TICKER.get_or_init(|| {
        spawned = std::thread::Builder::new()
            .name("watchdog-tick".into())
            .spawn(move || loop {
                std::thread::sleep((interval / 4).max(MIN_TICK));
                tick();
            })
            .map(drop);
    });
    spawned?;
    Ok(Some(fds))
}

/// Asks every queue thread to answer (the ticker thread's work).
fn tick() {
    let guard = WATCHDOG.lock().unwrap_or_else(|e| e.into_inner());
    for t in guard.iter().flat_map(|w| &w.ticks) {
        if let Err(e) = t.write(1) {
            warn!("watchdog tick: {e}");
        }
    }
}

impl Watchdog {
    /// Queue thread `thread` answers its tick; true when it was the last of them to answer
    /// (a ping is due), and every thread must answer again before the next.
    fn answer(&mut self, thread: usize) -> bool {
        let (Some(tick), Some(answered)) = (self.ticks.get(thread), self.answered.get_mut(thread))
        else {
            return false;
        };
        // Clears the eventfd (it is level-triggered); EAGAIN when it was read already.
        let _ = tick.read();
        *answered = true;
        if self.answered.iter().all(|&a| a) {
            self.answered.iter_mut().for_each(|a| *a = false);
            return true;
        }
        false
    }
}

/// A queue thread's answer to its tick ([`WATCHDOG_EVENT`] on thread `thread`); the last
/// thread to answer sends `WATCHDOG=1`.
pub fn watchdog_answer(thread: usize) {
    let due = WATCHDOG
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .as_mut()
        .is_some_and(|w| w.answer(thread));
    if due {
        notify(&[NotifyState::Watchdog]);
    }
}

/// The signals that stop a backend.
const STOP_SIGNALS: [libc::c_int; 3] = [libc::SIGTERM, libc::SIGINT, libc::SIGHUP];

/// The handlers that were in place before [`stop_on_signals`], by index in `STOP_SIGNALS`.
static PREVIOUS: [AtomicUsize; 3] = [const { AtomicUsize::new(libc::SIG_DFL) }; 3];

/// Sends `STOPPING=1` when a stop signal (SIGTERM, SIGINT, SIGHUP) arrives, then does what
/// was in place before: the sandbox's handler (exit with 128 + the signal), or the default
/// action. Call after the sandbox is entered (it installs handlers of its own).
pub fn stop_on_signals() -> io::Result<()> {
    for (i, &sig) in STOP_SIGNALS.iter().enumerate() {
        // SAFETY: a zeroed sigaction is a valid value; sigaction only reads `new` and fills
        // `old`; the handler only makes async-signal-safe calls (send, sigaction, raise,
        // _exit) or calls the handler that was in place.
        unsafe {
            let mut new: libc::sigaction = std::mem::zeroed();
            new.sa_sigaction = on_stop_signal as extern "C" fn(libc::c_int) as usize;
            new.sa_flags = libc::SA_RESTART;
            libc::sigemptyset(&mut new.sa_mask);
            let mut old: libc::sigaction = std::mem::zeroed();
            if libc::sigaction(sig, &new, &mut old) != 0 {
                return Err(io::Error::last_os_error());
            }
            let previous = if old.sa_flags & libc::SA_SIGINFO != 0 {
                libc::SIG_DFL // Never the case in these processes; fall back to the default.
            } else {
                old.sa_sigaction
            };
            PREVIOUS[i].store(previous, Ordering::Relaxed);
        }
    }
    Ok(())
}

extern "C" fn on_stop_signal(sig: libc::c_int) {
    const MSG: &[u8] = b"STOPPING=1\nSTATUS=stopping on a signal\n";
    let fd = NOTIFY_FD.load(Ordering::Relaxed);
    if fd >= 0 {
        // SAFETY: send on a descriptor this process owns, from a static buffer; it is
        // async-signal-safe.
        unsafe {
            libc::send(
                fd,
                MSG.as_ptr().cast(),
                MSG.len(),
                libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
            )
        };
    }
    let previous = STOP_SIGNALS
        .iter()
        .position(|&s| s == sig)
        .map_or(libc::SIG_DFL, |i| PREVIOUS[i].load(Ordering::Relaxed));
    match previous {
        libc::SIG_IGN => {}
        libc::SIG_DFL => {
            // SAFETY: signal and raise are async-signal-safe. The signal is blocked while
            // this handler runs, so it is delivered, with its default action, on return.
            // (A PID namespace's init ignores a default action; the sandbox's handler is
            // never SIG_DFL there.)
            unsafe {
                libc::signal(sig, libc::SIG_DFL);
                libc::raise(sig);
            }
        }
        handler => {
            // SAFETY: `handler` was installed with sigaction as a one-argument handler (not
            // SA_SIGINFO, see `stop_on_signals`), so it has this type.
            let handler: extern "C" fn(libc::c_int) = unsafe { std::mem::transmute(handler) };
            handler(sig);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connects_to_a_path_and_an_abstract_name() {
        let dir = tempfile_dir();
        let path = dir.join("notify.sock");
        let server = UnixDatagram::bind(&path).unwrap();
        connect(path.as_os_str().as_bytes())
            .unwrap()
            .send(b"READY=1\n")
            .unwrap();
        let mut buf = [0u8; 64];
        let n = server.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1\n");

        let name = format!("sm-notify-test-{}", std::process::id());
        let addr = SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let server = UnixDatagram::bind_addr(&addr).unwrap();
        connect(format!("@{name}").as_bytes())
            .unwrap()
            .send(b"WATCHDOG=1\n")
            .unwrap();
        let n = server.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"WATCHDOG=1\n");
        std::fs::remove_dir_all(dir).unwrap();
    }

    /// A ping is due only once every queue thread has answered; a thread that answers
    /// twice (or a stray thread number) does not make up for one that does not.
    #[test]
    fn a_ping_needs_every_queue_thread() {
        let mut w = Watchdog {
            ticks: (0..3)
                .map(|_| EventFd::new(libc::EFD_NONBLOCK).unwrap())
                .collect(),
            answered: vec![false; 3],
        };
        for t in &w.ticks {
            t.write(1).unwrap();
        }
        assert!(!w.answer(0));
        assert!(!w.answer(0));
        assert!(!w.answer(7));
        assert!(!w.answer(2));
        assert!(w.ticks[0].read().is_err(), "the tick was not read");
        assert!(w.answer(1), "all three answered");
        // The next ping needs all three again.
        assert!(!w.answer(1));
        assert!(!w.answer(2));
        assert!(w.answer(0));
    }

    fn tempfile_dir() -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("sm-notify-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }
}

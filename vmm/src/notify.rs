//! systemd's service notification protocol (`sd_notify`) for sm-vmm: `READY=1` once the VM
//! runs, `STATUS=` lines (running, paused), `STOPPING=1` when it stops, and `WATCHDOG=1`
//! pings from the main loop, the one thread that owns the VM (a hung main loop misses them).
//! The sd-notify crate formats the messages and reads `WATCHDOG_USEC`; the socket is
//! connected once, here (a path, or an abstract name after `@`). The backends' counterpart is
//! `sm_vhost_user_common::notify`.

use std::io;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::sync::mpsc::{Receiver, RecvError, RecvTimeoutError};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use sd_notify::NotifyState;

static SOCKET: OnceLock<Option<UnixDatagram>> = OnceLock::new();

/// Connects to `$NOTIFY_SOCKET`, once; without it every notification does nothing.
pub fn init() -> io::Result<()> {
    let mut result = Ok(());
    SOCKET.get_or_init(|| {
        let path = std::env::var_os("NOTIFY_SOCKET")?;
        let connect = || -> io::Result<UnixDatagram> {
            let socket = UnixDatagram::unbound()?;
            match path.as_bytes().strip_prefix(b"@") {
                Some(name) => socket.connect_addr(&SocketAddr::from_abstract_name(name)?)?,
                None => socket.connect(&path)?,
            }
            Ok(socket)
        };
        connect()
            .map_err(|e| result = Err(io::Error::new(e.kind(), format!("NOTIFY_SOCKET: {e}"))))
            .ok()
    });
    result
}

/// Sends `states` as one datagram, if there is a notification socket (failures are ignored:
/// the VM runs on without its manager hearing from it).
pub fn notify(states: &[NotifyState]) {
    if let Some(Some(socket)) = SOCKET.get() {
        let msg: String = states.iter().map(|s| format!("{s}\n")).collect();
        let _ = socket.send(msg.as_bytes());
    }
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

/// Feeds the service manager's watchdog (`WATCHDOG_USEC`) from the thread that calls
/// [`Watchdog::recv`]: a ping every half interval, between the events it waits for.
pub struct Watchdog {
    ping: Option<(Duration, UnixDatagram)>,
    next: Instant,
}

impl Watchdog {
    /// Pings every half `WATCHDOG_USEC` (for this process when `WATCHDOG_PID` is set) on the
    /// socket [`init`] connected, or never.
    pub fn from_env() -> Watchdog {
        let period = sd_notify::watchdog_enabled().filter(|d| !d.is_zero());
        let socket = SOCKET.get().and_then(Option::as_ref);
        let ping = period
            .zip(socket.and_then(|s| s.try_clone().ok()))
            .map(|(d, s)| (d / 2, s));
        Watchdog {
            ping,
            next: Instant::now(),
        }
    }

    /// Pings on `socket` every `period`.
    pub fn every(period: Duration, socket: UnixDatagram) -> Watchdog {
        Watchdog {
            ping: Some((period, socket)),
            next: Instant::now(),
        }
    }

    /// The next event from `rx`, sending `WATCHDOG=1` whenever one is due meanwhile.
    pub fn recv<T>(&mut self, rx: &Receiver<T>) -> Result<T, RecvError> {
        let Some((period, socket)) = &self.ping else {
            return rx.recv();
        };
        loop {
            let now = Instant::now();
            if now >= self.next {
                let _ = socket.send(format!("{}\n", NotifyState::Watchdog).as_bytes());
                self.next = now + *period;
            }
            match rx.recv_timeout(self.next.saturating_duration_since(Instant::now())) {
                Ok(v) => return Ok(v),
                Err(RecvTimeoutError::Timeout) => continue,
                Err(RecvTimeoutError::Disconnected) => return Err(RecvError),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The thread waiting for events pings while it waits, and events still come through.
    #[test]
    fn watchdog_pings_while_the_loop_waits() {
        let (manager, socket) = UnixDatagram::pair().unwrap();
        manager
            .set_read_timeout(Some(Duration::from_secs(2)))
            .unwrap();
        let mut watchdog = Watchdog::every(Duration::from_millis(20), socket);
        let (tx, rx) = std::sync::mpsc::channel();
        let sender = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(150));
            tx.send(42).unwrap();
        });
        assert_eq!(watchdog.recv(&rx), Ok(42));
        sender.join().unwrap();
        let mut buf = [0u8; 64];
        let mut pings = 0;
        manager.set_nonblocking(true).unwrap();
        while let Ok(n) = manager.recv(&mut buf) {
            assert_eq!(&buf[..n], b"WATCHDOG=1\n");
            pings += 1;
        }
        // About 8 (one every 20 ms for 150 ms); fewer when a loaded machine wakes the loop late.
        assert!(pings >= 3, "{pings} pings in 150 ms");
        assert_eq!(watchdog.recv(&rx), Err(RecvError), "sender gone");
    }

    /// Without a watchdog, `recv` is the channel's.
    #[test]
    fn no_watchdog_no_pings() {
        let mut watchdog = Watchdog {
            ping: None,
            next: Instant::now(),
        };
        let (tx, rx) = std::sync::mpsc::channel();
        tx.send(1).unwrap();
        assert_eq!(watchdog.recv(&rx), Ok(1));
    }
}

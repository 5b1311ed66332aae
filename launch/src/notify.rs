//! The service manager's end of systemd's notification protocol: a datagram socket bound for
//! one service (its `NOTIFY_SOCKET`), and the parser of what the service sends on it
//! (`READY=1`, `STATUS=...`, `STOPPING=1`, `WATCHDOG=1`, one assignment a line).
//!
//! One socket per service means the socket names the sender: no credentials are checked.

use std::io;
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};

/// The largest datagram read (systemd accepts messages up to this size too).
const MAX_DATAGRAM: usize = 4096;

/// One line a service sent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Notification {
    /// `READY=1`: the service serves.
    Ready,
    /// `STOPPING=1`: the service is stopping.
    Stopping,
    /// `WATCHDOG=1`: the service is alive.
    Watchdog,
    /// `STATUS=...`: what the service is doing, for people.
    Status(String),
    /// Any other assignment (`MAINPID=`, `ERRNO=`, ...), kept as sent.
    Other(String),
}

/// Parses one datagram: one `KEY=VALUE` a line; empty lines and lines without `=` are
/// dropped, as sd_notify's receivers do.
pub fn parse(datagram: &[u8]) -> Vec<Notification> {
    String::from_utf8_lossy(datagram)
        .lines()
        .filter_map(|line| {
            let (key, value) = line.split_once('=')?;
            Some(match (key, value) {
                ("READY", "1") => Notification::Ready,
                ("STOPPING", "1") => Notification::Stopping,
                ("WATCHDOG", "1") => Notification::Watchdog,
                ("STATUS", s) => Notification::Status(s.to_owned()),
                _ => Notification::Other(line.to_owned()),
            })
        })
        .collect()
}

/// A bound, non-blocking notification socket for one service.
#[derive(Debug)]
pub struct NotifySocket {
    socket: UnixDatagram,
    path: PathBuf,
}

impl NotifySocket {
    /// Binds `path` (a stale socket left there is replaced).
    pub fn bind(path: &Path) -> io::Result<NotifySocket> {
        match std::fs::remove_file(path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        let socket = UnixDatagram::bind(path)?;
        socket.set_nonblocking(true)?;
        Ok(NotifySocket {
            socket,
            path: path.to_owned(),
        })
    }

    /// The path to give the service as `NOTIFY_SOCKET`.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Every notification waiting on the socket, oldest first (none: an empty list).
    pub fn drain(&self) -> Vec<Notification> {
        let mut seen = Vec::new();
        let mut buf = [0u8; MAX_DATAGRAM];
        while let Ok(n) = self.socket.recv(&mut buf) {
            seen.extend(parse(&buf[..n]));
        }
        seen
    }
}

impl AsFd for NotifySocket {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.socket.as_fd()
    }
}

impl Drop for NotifySocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_datagram_is_one_assignment_a_line() {
        let got = parse(b"READY=1\nSTATUS=waiting for the frontend\n");
        assert_eq!(
            got,
            [
                Notification::Ready,
                Notification::Status("waiting for the frontend".into())
            ]
        );
        assert_eq!(
            parse(b"STOPPING=1\nSTATUS=a=b\nWATCHDOG=1"),
            [
                Notification::Stopping,
                Notification::Status("a=b".into()),
                Notification::Watchdog
            ]
        );
    }

    #[test]
    fn other_values_and_junk_are_not_taken_for_states() {
        let got = parse(b"READY=0\nMAINPID=7\n\nno equals sign\nWATCHDOG=trigger\n");
        assert_eq!(
            got,
            [
                Notification::Other("READY=0".into()),
                Notification::Other("MAINPID=7".into()),
                Notification::Other("WATCHDOG=trigger".into())
            ]
        );
        assert!(parse(b"").is_empty());
        // Invalid UTF-8 does not lose the valid lines.
        assert_eq!(parse(b"\xff\xfe\nREADY=1\n"), [Notification::Ready]);
    }

    #[test]
    fn the_socket_receives_what_a_service_sends_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify.sock");
        std::fs::write(&path, b"stale").unwrap();
        let n = NotifySocket::bind(&path).unwrap();
        assert!(n.drain().is_empty(), "nothing sent yet, and no blocking");
        let service = UnixDatagram::unbound().unwrap();
        service.send_to(b"STATUS=starting\n", &path).unwrap();
        service.send_to(b"READY=1\nWATCHDOG=1\n", &path).unwrap();
        assert_eq!(
            n.drain(),
            [
                Notification::Status("starting".into()),
                Notification::Ready,
                Notification::Watchdog
            ]
        );
        drop(n);
        assert!(!path.exists(), "the socket goes with its owner");
    }
}

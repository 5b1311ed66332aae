//! When a started process that does not speak sd_notify serves: when its listening socket
//! exists (vhost-device-vsock; sm's own processes say `READY=1`, see [`crate::notify`]).
//! `sm` and the tests wait the same way.

use std::path::Path;
use std::process::{Child, ExitStatus};
use std::time::{Duration, Instant};

/// How often the socket is looked for.
const POLL: Duration = Duration::from_millis(5);

/// Why a process did not become ready.
#[derive(Debug, thiserror::Error)]
pub enum NotReady {
    /// It exited first.
    #[error("exited ({0}) before it was ready")]
    Exited(ExitStatus),
    /// It was not ready in time (it still runs).
    #[error("was not ready within {0:?}")]
    TimedOut(Duration),
    /// Its state could not be read.
    #[error("cannot wait for it: {0}")]
    Wait(std::io::Error),
}

/// Waits up to `limit` until `child` has created `socket` and `ready()` holds too (for a
/// server whose socket alone does not mean it serves); fails as soon as the child exits.
pub fn wait_for_socket(
    child: &mut Child,
    socket: &Path,
    limit: Duration,
    mut ready: impl FnMut() -> bool,
) -> Result<(), NotReady> {
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().map_err(NotReady::Wait)? {
            return Err(NotReady::Exited(status));
        }
        if socket.exists() && ready() {
            return Ok(());
        }
        if start.elapsed() > limit {
            return Err(NotReady::TimedOut(limit));
        }
        std::thread::sleep(POLL);
    }
}

#[cfg(test)]
mod tests {
    use std::process::Command;

    use super::*;

    #[test]
    fn a_process_that_creates_its_socket_is_ready() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("s");
        let mut child = Command::new("sh")
            .args(["-c", "sleep 0.2; : > \"$0\"; sleep 5"])
            .arg(&sock)
            .spawn()
            .unwrap();
        let r = wait_for_socket(&mut child, &sock, Duration::from_secs(10), || true);
        let _ = child.kill();
        let _ = child.wait();
        assert!(r.is_ok(), "{r:?}");
    }

    #[test]
    fn a_process_that_exits_first_is_reported_with_its_status() {
        let dir = tempfile::tempdir().unwrap();
        let mut child = Command::new("sh").args(["-c", "exit 7"]).spawn().unwrap();
        let r = wait_for_socket(
            &mut child,
            &dir.path().join("s"),
            Duration::from_secs(10),
            || true,
        );
        match r {
            Err(NotReady::Exited(s)) => assert_eq!(s.code(), Some(7)),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_process_that_never_listens_times_out_and_still_runs() {
        let dir = tempfile::tempdir().unwrap();
        let mut child = Command::new("sleep").arg("5").spawn().unwrap();
        let r = wait_for_socket(
            &mut child,
            &dir.path().join("s"),
            Duration::from_millis(200),
            || true,
        );
        assert!(matches!(r, Err(NotReady::TimedOut(_))), "{r:?}");
        assert!(child.try_wait().unwrap().is_none());
        let _ = child.kill();
        let _ = child.wait();
    }

    #[test]
    fn the_extra_condition_must_hold_too() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("s");
        std::fs::write(&sock, b"").unwrap();
        let mut child = Command::new("sleep").arg("5").spawn().unwrap();
        let r = wait_for_socket(&mut child, &sock, Duration::from_millis(200), || false);
        assert!(matches!(r, Err(NotReady::TimedOut(_))), "{r:?}");
        let _ = child.kill();
        let _ = child.wait();
    }
}

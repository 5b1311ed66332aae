//! Child processes in tests and benchmarks: start a server and wait until its socket is
//! there, wait for an exit with a limit, and stop with a signal (then SIGKILL).

use std::path::Path;
use std::process::{Child, Command, ExitStatus};
use std::time::{Duration, Instant};

/// How long [`spawn_listening`] waits for the socket.
pub const LISTEN_TIMEOUT: Duration = Duration::from_secs(30);

/// Spawns `cmd` (its stdio as the caller set it) after removing a stale `socket`, and waits
/// up to [`LISTEN_TIMEOUT`] until the process has created `socket`; panics if it cannot be
/// started, exits first or never listens.
pub fn spawn_listening(cmd: &mut Command, socket: &Path) -> Child {
    let name = cmd.get_program().to_string_lossy().into_owned();
    let _ = std::fs::remove_file(socket);
    let mut child = cmd.spawn().unwrap_or_else(|e| {
        panic!("cannot start {name} ({e}); scripts/install-deps.sh installs the test tools")
    });
    wait_listening(
        &mut child,
        &name,
        socket,
        LISTEN_TIMEOUT,
        || true,
        String::new,
    );
    child
}

/// Waits up to `limit` until `child` (called `name` in messages) has created `socket` and
/// `ready()` holds too (for a server whose socket alone does not mean it serves); panics
/// with `log()` if the child exits first or time runs out. The child is killed before a
/// panic, so a failed start leaves nothing running.
pub fn wait_listening(
    child: &mut Child,
    name: &str,
    socket: &Path,
    limit: Duration,
    ready: impl FnMut() -> bool,
    log: impl Fn() -> String,
) {
    use sm_launch::readiness::{wait_for_socket, NotReady};
    match wait_for_socket(child, socket, limit, ready) {
        Ok(()) => {}
        Err(NotReady::Exited(status)) => panic!(
            "{name} exited ({status}) before it listened on {}: {}",
            socket.display(),
            log()
        ),
        Err(e) => {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "{name} did not listen on {}: {e}: {}",
                socket.display(),
                log()
            );
        }
    }
}

/// Waits up to `limit` for `child` to exit: its status, or `None` if it still runs.
pub fn wait_timeout(child: &mut Child, limit: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().expect("waiting for a child") {
            return Some(status);
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// How a child ended after [`signal_and_wait`].
#[derive(Debug, Clone, Copy)]
pub struct Stopped {
    /// Its exit status.
    pub status: ExitStatus,
    /// Whether it ended within the limit (else it was SIGKILLed).
    pub in_time: bool,
}

/// Sends `signal` to `child` and waits up to `limit` for it to exit; SIGKILLs it if it has
/// not by then.
pub fn signal_and_wait(child: &mut Child, signal: libc::c_int, limit: Duration) -> Stopped {
    // SAFETY: kill() on our own child; it has not been reaped (we reap only below), so the
    // PID cannot have been reused.
    unsafe { libc::kill(child.id() as libc::pid_t, signal) };
    match wait_timeout(child, limit) {
        Some(status) => Stopped {
            status,
            in_time: true,
        },
        None => {
            let _ = child.kill();
            Stopped {
                status: child.wait().expect("waiting for a killed child"),
                in_time: false,
            }
        }
    }
}

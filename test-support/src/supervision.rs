//! What the backends' supervision tests share: starting a backend with its listening socket
//! handed over the way socket activation or `--fd N` does it, and reading the notifications
//! it sends to a `NOTIFY_SOCKET` the test binds, as a service manager would.

use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::{UnixDatagram, UnixListener};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::process::signal_and_wait;

/// How the listening socket reaches the backend.
pub enum Handover<'a> {
    /// At descriptor 3 with `LISTEN_FDS=1` and `LISTEN_PID` set to the backend's PID.
    Activation(&'a UnixListener),
    /// Descriptor `fd` at descriptor `n`, named by `--fd n`.
    Fd(RawFd, RawFd),
}

/// Starts the backend `program` with `args`, the socket handed over as `handover` says, and
/// `env`; its stderr goes to `dir/backend.log`.
pub fn spawn_backend(
    program: &str,
    dir: &Path,
    args: &[&str],
    handover: Handover,
    env: &[(&str, &str)],
) -> Child {
    let (listener, target, activated) = match handover {
        Handover::Activation(l) => (l.as_raw_fd(), 3, true),
        Handover::Fd(fd, n) => (fd, n, false),
    };
    let mut cmd = if activated {
        // LISTEN_PID must name the backend: the shell's PID, which exec keeps.
        let mut c = Command::new("sh");
        c.arg("-c")
            .arg(r#"LISTEN_PID=$$ exec "$0" "$@""#)
            .arg(program)
            .env("LISTEN_FDS", "1");
        c
    } else {
        Command::new(program)
    };
    cmd.args(args)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("backend.log")).unwrap());
    // SAFETY: the closure only calls dup2 and fcntl, which are async-signal-safe.
    unsafe {
        cmd.pre_exec(move || {
            if listener == target {
                if libc::fcntl(target, libc::F_SETFD, 0) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            } else if libc::dup2(listener, target) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        })
    };
    cmd.spawn()
        .unwrap_or_else(|e| panic!("spawn {program}: {e}"))
}

/// The notification socket a service manager would bind in `dir`, and its path.
pub fn notify_socket(dir: &Path) -> (UnixDatagram, String) {
    let path = dir.join("notify.sock");
    let sock = UnixDatagram::bind(&path).unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    (sock, crate::s(&path).to_owned())
}

/// Notification lines received within `d`, or until one equals `until`.
pub fn lines(sock: &UnixDatagram, d: Duration, until: Option<&str>) -> Vec<String> {
    let deadline = Instant::now() + d;
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    while Instant::now() < deadline {
        if let Ok(n) = sock.recv(&mut buf) {
            seen.extend(
                String::from_utf8_lossy(&buf[..n])
                    .lines()
                    .map(str::to_owned),
            );
            if until.is_some_and(|u| seen.iter().any(|l| l == u)) {
                break;
            }
        }
    }
    seen
}

/// Notification lines received until one equals `want`; panics with the backend's log
/// (`dir/backend.log`) if none does within `secs`.
pub fn wait_line(sock: &UnixDatagram, want: &str, secs: u64, dir: &Path) -> Vec<String> {
    let seen = lines(sock, Duration::from_secs(secs), Some(want));
    if !seen.iter().any(|l| l == want) {
        let log = std::fs::read_to_string(dir.join("backend.log")).unwrap_or_default();
        panic!("no {want:?} in {secs} s; got {seen:?}\n--- backend log\n{log}");
    }
    seen
}

/// Stops the backend with SIGTERM: it says `STOPPING=1` and ends by that signal.
pub fn stop(child: &mut Child, notify: &UnixDatagram, dir: &Path) {
    // SAFETY: kill() on our own child, not yet reaped.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    wait_line(notify, "STOPPING=1", 5, dir);
    let exit = signal_and_wait(child, libc::SIGTERM, Duration::from_secs(5)).status;
    assert_eq!(exit.signal(), Some(libc::SIGTERM), "{exit:?}");
}

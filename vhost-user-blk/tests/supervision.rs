//! The backend as a systemd service, without systemd: a listening socket handed over the way
//! socket activation does it (`LISTEN_FDS=1`, `LISTEN_PID`, descriptor 3) and with `--fd N`
//! serves a real vhost-user frontend (a block written and read back through a virtqueue);
//! `READY=1`, `STATUS=`, `WATCHDOG=1` (fed by the queue thread) and `STOPPING=1` arrive on a
//! `NOTIFY_SOCKET` the test binds; a wrong choice of socket is one line and exit status 2.

#[allow(unused_imports)] // The shared module re-exports what other test binaries use.
mod common;

use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::{UnixDatagram, UnixListener};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{Blk, Program};
use sm_test_support::process::signal_and_wait;
use sm_test_support::s;
use sm_vhost_user_common::testing::{GuestMemory, TestFrontend};

const T_IN: u32 = 0;
const T_OUT: u32 = 1;

fn header(kind: u32, sector: u64) -> Vec<u8> {
    let mut h = vec![0u8; 16];
    h[0..4].copy_from_slice(&kind.to_le_bytes());
    h[8..16].copy_from_slice(&sector.to_le_bytes());
    h
}

/// How the listening socket reaches the backend.
enum Handover<'a> {
    /// At descriptor 3 with `LISTEN_FDS=1` and `LISTEN_PID` set to the backend's PID.
    Activation(&'a UnixListener),
    /// Descriptor `fd` at descriptor `n`, named by `--fd n`.
    Fd(RawFd, RawFd),
}

/// Starts the backend with `args`, the socket handed over as `handover` says, and `env`.
fn spawn(dir: &Path, args: &[&str], handover: Handover, env: &[(&str, &str)]) -> Child {
    let (listener, target, activated) = match handover {
        Handover::Activation(l) => (l.as_raw_fd(), 3, true),
        Handover::Fd(fd, n) => (fd, n, false),
    };
    let mut cmd = if activated {
        // LISTEN_PID must name the backend: the shell's PID, which exec keeps.
        let mut c = Command::new("sh");
        c.arg("-c")
            .arg(r#"LISTEN_PID=$$ exec "$0" "$@""#)
            .arg(Blk::PATH)
            .env("LISTEN_FDS", "1");
        c
    } else {
        Command::new(Blk::PATH)
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
    cmd.spawn().expect("spawn sm-vhost-user-blk")
}

/// The notification socket a service manager would bind.
fn notify_socket(dir: &Path) -> (UnixDatagram, String) {
    let path = dir.join("notify.sock");
    let sock = UnixDatagram::bind(&path).unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    (sock, s(&path).to_owned())
}

/// Notification lines received until one equals `want` (or `secs` pass: then panics).
fn wait_line(sock: &UnixDatagram, want: &str, secs: u64, dir: &Path) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(secs);
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    while Instant::now() < deadline {
        if let Ok(n) = sock.recv(&mut buf) {
            let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
            seen.extend(msg.lines().map(str::to_owned));
            if msg.lines().any(|l| l == want) {
                return seen;
            }
        }
    }
    let log = std::fs::read_to_string(dir.join("backend.log")).unwrap_or_default();
    panic!("no {want:?} in {secs} s; got {seen:?}\n--- backend log\n{log}");
}

/// Every notification line received within `d`.
fn lines_within(sock: &UnixDatagram, d: Duration) -> Vec<String> {
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
        }
    }
    seen
}

/// Writes a sector through a real virtqueue and reads it back.
fn write_and_read_back(socket: &Path) {
    let mem = GuestMemory::new();
    let (mut fe, _) = TestFrontend::connect(socket, 1);
    fe.start(&mem, &[0]);
    let mut write = header(T_OUT, 5);
    write.extend(std::iter::repeat_n(0xa5u8, 512));
    let reply = fe.request(&mem, 0, &write, 1);
    assert_eq!(reply.bytes, [0], "write status");
    let reply = fe.request(&mem, 0, &header(T_IN, 5), 513);
    assert_eq!(reply.len, 513);
    assert_eq!(reply.bytes[512], 0, "read status");
    assert!(reply.bytes[..512].iter().all(|&b| b == 0xa5), "read back");
}

fn stop(child: &mut Child, notify: &UnixDatagram, dir: &Path) {
    // SAFETY: kill() on our own child, not yet reaped.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    wait_line(notify, "STOPPING=1", 5, dir);
    let exit = signal_and_wait(child, libc::SIGTERM, Duration::from_secs(5)).status;
    assert_eq!(exit.signal(), Some(libc::SIGTERM), "{exit:?}");
}

#[test]
fn socket_activated_backend_serves_and_notifies() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let socket = d.join("blk.sock");
    let listener = UnixListener::bind(&socket).unwrap();
    let (notify, notify_path) = notify_socket(d);
    let img = d.join("vol.img");
    let mut child = spawn(
        d,
        &["--file", s(&img), "--size-mib", "4"],
        Handover::Activation(&listener),
        &[("NOTIFY_SOCKET", &notify_path)],
    );
    let lines = wait_line(&notify, "READY=1", 10, d);
    assert!(
        lines.iter().any(|l| l == "STATUS=waiting for the frontend"),
        "{lines:?}"
    );
    // The test's own copy goes away: the backend alone holds the socket.
    drop(listener);
    write_and_read_back(&socket);
    wait_line(&notify, "STATUS=serving", 5, d);
    stop(&mut child, &notify, d);
}

#[test]
fn fd_flag_backend_serves_a_frontend() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let socket = d.join("blk.sock");
    let listener = UnixListener::bind(&socket).unwrap();
    let (notify, notify_path) = notify_socket(d);
    let img = d.join("vol.img");
    let mut child = spawn(
        d,
        &["--fd", "7", "--file", s(&img), "--size-mib", "4"],
        Handover::Fd(listener.as_raw_fd(), 7),
        &[("NOTIFY_SOCKET", &notify_path)],
    );
    wait_line(&notify, "READY=1", 10, d);
    drop(listener);
    write_and_read_back(&socket);
    // A second frontend after the first hangs up: the socket is served on.
    wait_line(
        &notify,
        "STATUS=frontend disconnected; waiting for the frontend",
        5,
        d,
    );
    write_and_read_back(&socket);
    stop(&mut child, &notify, d);
}

#[test]
fn watchdog_pings_stop_while_the_backend_is_stopped() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let socket = d.join("blk.sock");
    let listener = UnixListener::bind(&socket).unwrap();
    let (notify, notify_path) = notify_socket(d);
    let img = d.join("vol.img");
    let mut child = spawn(
        d,
        &["--file", s(&img), "--size-mib", "4", "--num-queues", "2"],
        Handover::Activation(&listener),
        &[("NOTIFY_SOCKET", &notify_path), ("WATCHDOG_USEC", "200000")],
    );
    wait_line(&notify, "READY=1", 10, d);
    let pings = |lines: &[String]| lines.iter().filter(|l| *l == "WATCHDOG=1").count();
    // Every 50 ms (a quarter of the interval), once both queue threads answered.
    let lines = lines_within(&notify, Duration::from_secs(1));
    assert!(pings(&lines) >= 5, "{lines:?}");
    // Serving a frontend keeps them coming.
    write_and_read_back(&socket);
    let lines = lines_within(&notify, Duration::from_millis(500));
    assert!(pings(&lines) >= 2, "{lines:?}");
    // A stopped (hung) backend sends none; resumed, it pings again.
    let server = sandboxed_child(child.id() as i32).expect("sandboxed child");
    // SAFETY: kill() on the backend's own child, which is alive (it just pinged).
    unsafe { libc::kill(server, libc::SIGSTOP) };
    std::thread::sleep(Duration::from_millis(100));
    // What was sent before the stop took hold.
    lines_within(&notify, Duration::from_millis(150));
    let lines = lines_within(&notify, Duration::from_millis(600));
    assert_eq!(pings(&lines), 0, "{lines:?}");
    // SAFETY: as above.
    unsafe { libc::kill(server, libc::SIGCONT) };
    wait_line(&notify, "WATCHDOG=1", 2, d);
    stop(&mut child, &notify, d);
}

/// The first child of `pid` (the sandboxed server).
fn sandboxed_child(pid: i32) -> Option<i32> {
    let children = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).ok()?;
    children.split_whitespace().next()?.parse().ok()
}

#[test]
fn exactly_one_socket_source() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let img = d.join("vol.img");
    let sock = d.join("s.sock");
    let assert_usage = |out: &std::process::Output, words: &[&str]| {
        Blk::assert_one_line_error(out, words);
        assert_eq!(out.status.code(), Some(2), "{out:?}");
    };
    assert_usage(
        &Blk::run(&["--socket", s(&sock), "--fd", "3", "--file", s(&img)]),
        &["exactly one", "--socket and --fd"],
    );
    assert_usage(
        &Blk::run(&["--file", s(&img)]),
        &["--socket", "--fd", "LISTEN_FDS"],
    );
    // LISTEN_FDS with --socket: two sources.
    let listener = UnixListener::bind(d.join("a.sock")).unwrap();
    let child = spawn(
        d,
        &["--socket", s(&sock), "--file", s(&img)],
        Handover::Activation(&listener),
        &[],
    );
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let log = std::fs::read_to_string(d.join("backend.log")).unwrap();
    assert_eq!(log.lines().count(), 1, "{log}");
    assert!(log.contains("--socket and LISTEN_FDS"), "{log}");
    // Descriptors that are not listening Unix sockets.
    Blk::assert_one_line_error(
        &Blk::run(&["--fd", "9", "--file", s(&img)]),
        &["--fd 9", "no such open descriptor"],
    );
    let file = std::fs::File::open(&img).unwrap();
    let datagram = UnixDatagram::unbound().unwrap();
    for (fd, why) in [
        (file.as_raw_fd(), "not a socket"),
        (datagram.as_raw_fd(), "not a stream socket"),
    ] {
        let child = spawn(
            d,
            &["--fd", "5", "--file", s(&img)],
            Handover::Fd(fd, 5),
            &[],
        );
        assert_eq!(child.wait_with_output().unwrap().status.code(), Some(1));
        let log = std::fs::read_to_string(d.join("backend.log")).unwrap();
        assert_eq!(log.lines().count(), 1, "{log}");
        assert!(log.contains(&format!("--fd 5: {why}")), "{log}");
    }
}

/// A backend that cannot start says why to its service manager too, before it exits.
#[test]
fn a_failed_start_is_stopping_with_the_error_line() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (notify, notify_path) = notify_socket(d);
    let out = Command::new(Blk::PATH)
        .args(["--socket", s(&d.join("s.sock")), "--file"])
        .arg(d.join("none.img"))
        .arg("--read-only")
        .env("NOTIFY_SOCKET", &notify_path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let lines = wait_line(&notify, "STOPPING=1", 5, d);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        lines.iter().any(|l| *l == format!("STATUS={}", err.trim())),
        "{lines:?} vs {err}"
    );
    assert!(!lines.iter().any(|l| l == "READY=1"), "{lines:?}");
}

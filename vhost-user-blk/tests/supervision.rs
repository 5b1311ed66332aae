//! The backend as a systemd service, without systemd: a listening socket handed over the way
//! socket activation does it (`LISTEN_FDS=1`, `LISTEN_PID`, descriptor 3) and with `--fd N`
//! serves a real vhost-user frontend (a block written and read back through a virtqueue);
//! `READY=1`, `STATUS=`, `WATCHDOG=1` (fed by the queue thread) and `STOPPING=1` arrive on a
//! `NOTIFY_SOCKET` the test binds; a wrong choice of socket is one line and exit status 2.

#[allow(unused_imports)] // The shared module re-exports what other test binaries use.
mod common;

use std::os::fd::AsRawFd;
use std::os::unix::net::{UnixDatagram, UnixListener};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::{Blk, Program};
use sm_test_support::s;
use sm_test_support::supervision::{
    lines, notify_socket, spawn_backend, stop, wait_line, Handover,
};
use sm_vhost_user_common::testing::{GuestMemory, TestFrontend};

const T_IN: u32 = 0;
const T_OUT: u32 = 1;

fn header(kind: u32, sector: u64) -> Vec<u8> {
    let mut h = vec![0u8; 16];
    h[0..4].copy_from_slice(&kind.to_le_bytes());
    h[8..16].copy_from_slice(&sector.to_le_bytes());
    h
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

#[test]
fn socket_activated_backend_serves_and_notifies() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let socket = d.join("blk.sock");
    let listener = UnixListener::bind(&socket).unwrap();
    let (notify, notify_path) = notify_socket(d);
    let img = d.join("vol.img");
    let mut child = spawn_backend(
        Blk::PATH,
        d,
        &["--file", s(&img), "--size-mib", "4"],
        Handover::Activation(&listener),
        &[("NOTIFY_SOCKET", &notify_path)],
    );
    let seen = wait_line(&notify, "READY=1", 10, d);
    assert!(
        seen.iter().any(|l| l == "STATUS=waiting for the frontend"),
        "{seen:?}"
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
    let mut child = spawn_backend(
        Blk::PATH,
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
    let mut child = spawn_backend(
        Blk::PATH,
        d,
        &["--file", s(&img), "--size-mib", "4", "--num-queues", "2"],
        Handover::Activation(&listener),
        &[("NOTIFY_SOCKET", &notify_path), ("WATCHDOG_USEC", "200000")],
    );
    wait_line(&notify, "READY=1", 10, d);
    let pings = |seen: &[String]| seen.iter().filter(|l| *l == "WATCHDOG=1").count();
    // Every 50 ms (a quarter of the interval), once both queue threads answered.
    let seen = lines(&notify, Duration::from_secs(1), None);
    assert!(pings(&seen) >= 5, "{seen:?}");
    // Serving a frontend keeps them coming.
    write_and_read_back(&socket);
    let seen = lines(&notify, Duration::from_millis(500), None);
    assert!(pings(&seen) >= 2, "{seen:?}");
    // A stopped (hung) backend sends none; resumed, it pings again.
    let server = sandboxed_child(child.id() as i32).expect("sandboxed child");
    // SAFETY: kill() on the backend's own child, which is alive (it just pinged).
    unsafe { libc::kill(server, libc::SIGSTOP) };
    std::thread::sleep(Duration::from_millis(100));
    // What was sent before the stop took hold.
    lines(&notify, Duration::from_millis(150), None);
    let seen = lines(&notify, Duration::from_millis(600), None);
    assert_eq!(pings(&seen), 0, "{seen:?}");
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
    let child = spawn_backend(
        Blk::PATH,
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
    // Descriptors that are not listening Unix sockets. A closed one is numbered high: a
    // low number can be a descriptor the test process inherited and passes on (its own are
    // close-on-exec, the shell's or service manager's above 2 need not be).
    Blk::assert_one_line_error(
        &Blk::run(&["--fd", "900", "--file", s(&img)]),
        &["--fd 900", "no such open descriptor"],
    );
    let file = std::fs::File::open(&img).unwrap();
    let datagram = UnixDatagram::unbound().unwrap();
    for (fd, why) in [
        (file.as_raw_fd(), "not a socket"),
        (datagram.as_raw_fd(), "not a stream socket"),
    ] {
        let child = spawn_backend(
            Blk::PATH,
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
    let seen = wait_line(&notify, "STOPPING=1", 5, d);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        seen.iter().any(|l| *l == format!("STATUS={}", err.trim())),
        "{seen:?} vs {err}"
    );
    assert!(!seen.iter().any(|l| l == "READY=1"), "{seen:?}");
}

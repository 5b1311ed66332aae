//! The backend as a systemd service, without systemd: a listening socket handed over the way
//! socket activation does it (`LISTEN_FDS=1`, `LISTEN_PID`, descriptor 3) and with `--fd N`
//! serves a real vhost-user frontend (FUSE INIT and a LOOKUP through the request queue);
//! `READY=1`, `STATUS=`, `WATCHDOG=1` and `STOPPING=1` arrive on a `NOTIFY_SOCKET` the test
//! binds; a wrong choice of socket is one line and exit status 2.

#[allow(unused_imports)] // The shared module re-exports what other test binaries use.
mod common;

use std::os::fd::AsRawFd;
use std::os::unix::net::UnixListener;
use std::path::Path;
use std::time::Duration;

use common::{fuse, session, Fs, Program, FUSE_LOOKUP};
use sm_test_support::s;
use sm_test_support::supervision::{
    lines, notify_socket, spawn_backend, stop, wait_line, Handover,
};
use sm_vhost_user_common::testing::GuestMemory;

/// FUSE INIT, then LOOKUP of `present` (found) and of a missing name (ENOENT).
fn init_and_lookup(socket: &Path, present: &str) {
    let mem = GuestMemory::new();
    let mut fe = session(socket, &mem);
    let name = [present.as_bytes(), b"\0"].concat();
    assert_eq!(fuse(&mut fe, &mem, FUSE_LOOKUP, 1, &name), 0, "LOOKUP");
    assert_eq!(
        fuse(&mut fe, &mem, FUSE_LOOKUP, 1, b"missing\0"),
        -libc::ENOENT,
        "LOOKUP of a missing name"
    );
}

/// A temporary directory with a share holding one file.
fn share() -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let shared = dir.path().join("share");
    std::fs::create_dir(&shared).unwrap();
    std::fs::write(shared.join("hello"), b"hi\n").unwrap();
    (dir, shared)
}

#[test]
fn socket_activated_backend_serves_and_notifies() {
    let (dir, shared) = share();
    let d = dir.path();
    let socket = d.join("fs.sock");
    let listener = UnixListener::bind(&socket).unwrap();
    let (notify, notify_path) = notify_socket(d);
    let mut child = spawn_backend(
        Fs::PATH,
        d,
        &["--shared-dir", s(&shared)],
        Handover::Activation(&listener),
        &[("NOTIFY_SOCKET", &notify_path)],
    );
    let seen = wait_line(&notify, "READY=1", 10, d);
    assert!(
        seen.iter().any(|l| l == "STATUS=waiting for the frontend"),
        "{seen:?}"
    );
    drop(listener);
    init_and_lookup(&socket, "hello");
    wait_line(&notify, "STATUS=serving", 5, d);
    stop(&mut child, &notify, d);
}

#[test]
fn fd_flag_backend_serves_and_feeds_the_watchdog() {
    let (dir, shared) = share();
    let d = dir.path();
    let socket = d.join("fs.sock");
    let listener = UnixListener::bind(&socket).unwrap();
    let (notify, notify_path) = notify_socket(d);
    let mut child = spawn_backend(
        Fs::PATH,
        d,
        &[
            "--fd",
            "9",
            "--shared-dir",
            s(&shared),
            "--thread-pool-size",
            "2",
        ],
        Handover::Fd(listener.as_raw_fd(), 9),
        &[("NOTIFY_SOCKET", &notify_path), ("WATCHDOG_USEC", "200000")],
    );
    wait_line(&notify, "READY=1", 10, d);
    drop(listener);
    let pings = |l: &[String]| l.iter().filter(|l| *l == "WATCHDOG=1").count();
    let seen = lines(&notify, Duration::from_secs(1), None);
    assert!(pings(&seen) >= 5, "{seen:?}");
    init_and_lookup(&socket, "hello");
    let seen = lines(&notify, Duration::from_millis(500), None);
    assert!(pings(&seen) >= 2, "{seen:?}");
    stop(&mut child, &notify, d);
}

#[test]
fn exactly_one_socket_source() {
    let (dir, shared) = share();
    let d = dir.path();
    let sock = d.join("s.sock");
    for (args, words) in [
        (
            vec![
                "--socket",
                s(&sock),
                "--fd",
                "3",
                "--shared-dir",
                s(&shared),
            ],
            vec!["exactly one", "--socket and --fd"],
        ),
        (
            vec!["--shared-dir", s(&shared)],
            vec!["--socket", "--fd", "LISTEN_FDS"],
        ),
    ] {
        let out = Fs::run(&args);
        Fs::assert_one_line_error(&out, &words);
        assert_eq!(out.status.code(), Some(2), "{out:?}");
    }
    let listener = UnixListener::bind(d.join("a.sock")).unwrap();
    let child = spawn_backend(
        Fs::PATH,
        d,
        &["--fd", "3", "--shared-dir", s(&shared)],
        Handover::Activation(&listener),
        &[],
    );
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let log = std::fs::read_to_string(d.join("backend.log")).unwrap();
    assert_eq!(log.lines().count(), 1, "{log}");
    assert!(log.contains("--fd and LISTEN_FDS"), "{log}");
    Fs::assert_one_line_error(
        &Fs::run(&["--fd", "12", "--shared-dir", s(&shared)]),
        &["--fd 12", "no such open descriptor"],
    );
}

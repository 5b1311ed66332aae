//! The backend as a systemd service, without systemd: a listening socket handed over the way
//! socket activation does it (`LISTEN_FDS=1`, `LISTEN_PID`, descriptor 3) and with `--fd N`
//! serves a real vhost-user frontend (FUSE INIT and a LOOKUP through the request queue);
//! `READY=1`, `STATUS=`, `WATCHDOG=1` and `STOPPING=1` arrive on a `NOTIFY_SOCKET` the test
//! binds; a wrong choice of socket is one line and exit status 2.

#[allow(unused_imports)] // The shared module re-exports what other test binaries use.
mod common;

use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::{UnixDatagram, UnixListener};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{Fs, Program};
use sm_test_support::process::signal_and_wait;
use sm_test_support::s;
use sm_vhost_user_common::testing::{GuestMemory, TestFrontend};

/// The request queue (0 is high priority).
const REQ: usize = 1;
const FUSE_LOOKUP: u32 = 1;
const FUSE_INIT: u32 = 26;

/// Starts the backend with `args`, `listener` at descriptor `target` (with `LISTEN_FDS=1`
/// and `LISTEN_PID` when `activated`), and `env`.
fn spawn(
    dir: &Path,
    args: &[&str],
    listener: RawFd,
    target: RawFd,
    activated: bool,
    env: &[(&str, &str)],
) -> Child {
    let mut cmd = if activated {
        // LISTEN_PID must name the backend: the shell's PID, which exec keeps.
        let mut c = Command::new("sh");
        c.arg("-c")
            .arg(r#"LISTEN_PID=$$ exec "$0" "$@""#)
            .arg(Fs::PATH)
            .env("LISTEN_FDS", "1");
        c
    } else {
        Command::new(Fs::PATH)
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
    cmd.spawn().expect("spawn sm-vhost-user-fs")
}

/// The notification socket a service manager would bind.
fn notify_socket(dir: &Path) -> (UnixDatagram, String) {
    let path = dir.join("notify.sock");
    let sock = UnixDatagram::bind(&path).unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    (sock, s(&path).to_owned())
}

/// Notification lines received within `d`, or until one equals `until`.
fn lines(sock: &UnixDatagram, d: Duration, until: Option<&str>) -> Vec<String> {
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

fn wait_line(sock: &UnixDatagram, want: &str, secs: u64, dir: &Path) -> Vec<String> {
    let seen = lines(sock, Duration::from_secs(secs), Some(want));
    if !seen.iter().any(|l| l == want) {
        let log = std::fs::read_to_string(dir.join("backend.log")).unwrap_or_default();
        panic!("no {want:?} in {secs} s; got {seen:?}\n--- backend log\n{log}");
    }
    seen
}

/// One FUSE request on the request queue: (error, reply body).
fn fuse(fe: &mut TestFrontend, mem: &GuestMemory, opcode: u32, node: u64, body: &[u8]) -> i32 {
    let mut req = Vec::new();
    req.extend_from_slice(&(40 + body.len() as u32).to_le_bytes());
    req.extend_from_slice(&opcode.to_le_bytes());
    req.extend_from_slice(&7u64.to_le_bytes()); // unique
    req.extend_from_slice(&node.to_le_bytes());
    req.extend_from_slice(&[0u8; 16]); // uid, gid, pid, extlen, padding
    req.extend_from_slice(body);
    let reply = fe.request(mem, REQ, &req, 8192);
    assert!(
        reply.len >= 16,
        "opcode {opcode}: reply of {} bytes",
        reply.len
    );
    i32::from_le_bytes(reply.bytes[4..8].try_into().unwrap())
}

/// FUSE INIT, then LOOKUP of `present` (found) and of a missing name (ENOENT).
fn init_and_lookup(socket: &Path, present: &str) {
    let mem = GuestMemory::new();
    let (mut fe, _) = TestFrontend::connect(socket, 2);
    fe.start(&mem, &[0, 0]);
    let init: Vec<u8> = [7u32, 31, 0, 0]
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect();
    assert_eq!(fuse(&mut fe, &mem, FUSE_INIT, 0, &init), 0, "INIT");
    let name = [present.as_bytes(), b"\0"].concat();
    assert_eq!(fuse(&mut fe, &mem, FUSE_LOOKUP, 1, &name), 0, "LOOKUP");
    assert_eq!(
        fuse(&mut fe, &mem, FUSE_LOOKUP, 1, b"missing\0"),
        -libc::ENOENT,
        "LOOKUP of a missing name"
    );
}

fn stop(child: &mut Child, notify: &UnixDatagram, dir: &Path) {
    // SAFETY: kill() on our own child, not yet reaped.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    wait_line(notify, "STOPPING=1", 5, dir);
    let exit = signal_and_wait(child, libc::SIGTERM, Duration::from_secs(5)).status;
    assert_eq!(exit.signal(), Some(libc::SIGTERM), "{exit:?}");
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
    let mut child = spawn(
        d,
        &["--shared-dir", s(&shared)],
        listener.as_raw_fd(),
        3,
        true,
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
    let mut child = spawn(
        d,
        &[
            "--fd",
            "9",
            "--shared-dir",
            s(&shared),
            "--thread-pool-size",
            "2",
        ],
        listener.as_raw_fd(),
        9,
        false,
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
    let child = spawn(
        d,
        &["--fd", "3", "--shared-dir", s(&shared)],
        listener.as_raw_fd(),
        3,
        true,
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

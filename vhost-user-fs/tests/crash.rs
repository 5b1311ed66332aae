//! A backend killed with SIGKILL and started again on the same socket with the same journal
//! memfd (`--state-fd`, as sm's supervisor keeps it) takes over the guest's node IDs and
//! open handles: a real vhost-user frontend restarts its rings at the used index, sends no
//! FUSE INIT, and reads and writes through the handles it opened before the crash, by node
//! IDs whose paths it renamed. A descriptor that holds no journal is one line.

#[allow(unused_imports)] // The shared module re-exports what other test binaries use.
mod common;

use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::os::unix::net::UnixListener;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{
    fuse, fuse_reply, session, Fs, Program, FUSE_GETATTR, FUSE_LOOKUP, FUSE_OPEN, FUSE_READ,
    FUSE_RENAME, FUSE_WRITE,
};
use sm_test_support::process::wait_timeout;
use sm_test_support::s;
use sm_vhost_user_common::testing::{GuestMemory, TestFrontend};

/// A memfd for the journal.
fn memfd() -> File {
    // SAFETY: memfd_create takes a C string and flags; the result is checked.
    let fd = unsafe { libc::memfd_create(c"journal".as_ptr(), libc::MFD_CLOEXEC) };
    assert!(fd >= 0, "memfd_create");
    // SAFETY: `fd` was just created and nothing else owns it.
    unsafe { File::from_raw_fd(fd) }
}

/// Starts the backend on `listener` (`--fd 3`) with `journal` (`--state-fd 4`); its stderr
/// goes to `log`.
fn start(listener: &UnixListener, journal: &File, shared: &Path, log: &Path) -> Child {
    let mut cmd = Command::new(Fs::PATH);
    cmd.args(["--fd", "3", "--state-fd", "4", "--shared-dir", s(shared)]);
    spawn(cmd, &[listener.as_raw_fd(), journal.as_raw_fd()], log)
}

/// Starts the backend as systemd would with socket activation and a file-descriptor store:
/// `fds` at 3, 4, ... (`LISTEN_FDS`, named `names`), `FDSTORE=1`, `NOTIFY_SOCKET`.
fn start_activated(fds: &[RawFd], names: &str, notify: &str, shared: &Path, log: &Path) -> Child {
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg(r#"LISTEN_PID=$$ exec "$0" "$@""#)
        .arg(Fs::PATH)
        .args(["--shared-dir", s(shared)])
        .env("LISTEN_FDS", fds.len().to_string())
        .env("LISTEN_FDNAMES", names)
        .env("FDSTORE", "1")
        .env("NOTIFY_SOCKET", notify);
    spawn(cmd, fds, log)
}

/// Spawns `cmd` with `fds` at descriptors 3, 4, ...
fn spawn(mut cmd: Command, fds: &[RawFd], log: &Path) -> Child {
    let fds = fds.to_vec();
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(File::options().create(true).append(true).open(log).unwrap());
    // SAFETY: the closure calls only fcntl and dup2 (async-signal-safe) and allocates nothing.
    unsafe {
        cmd.pre_exec(move || {
            let mut moved: [RawFd; 2] = [0; 2];
            for (m, &fd) in moved.iter_mut().zip(&fds) {
                *m = libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 64);
                if *m < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            for (i, m) in moved.iter().enumerate().take(fds.len()) {
                if libc::dup2(*m, 3 + i as RawFd) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        })
    };
    cmd.spawn().expect("start sm-vhost-user-fs")
}

fn kill(mut child: Child) {
    child.kill().unwrap();
    child.wait().unwrap();
}

fn lookup(fe: &mut TestFrontend, mem: &GuestMemory, dir: u64, name: &str) -> u64 {
    let (e, out) = fuse_reply(
        fe,
        mem,
        FUSE_LOOKUP,
        dir,
        &[name.as_bytes(), b"\0"].concat(),
    );
    assert_eq!(e, 0, "LOOKUP {name}");
    u64::from_le_bytes(out[..8].try_into().unwrap())
}

fn open(fe: &mut TestFrontend, mem: &GuestMemory, node: u64, flags: i32) -> u64 {
    let body: Vec<u8> = [flags as u32, 0]
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect();
    let (e, out) = fuse_reply(fe, mem, FUSE_OPEN, node, &body);
    assert_eq!(e, 0, "OPEN {node}");
    u64::from_le_bytes(out[..8].try_into().unwrap())
}

/// `fuse_read_in` / `fuse_write_in`: fh, offset, size, flags, lock owner, flags, padding.
fn io_in(fh: u64, offset: u64, size: u32) -> Vec<u8> {
    let mut b = Vec::new();
    b.extend_from_slice(&fh.to_le_bytes());
    b.extend_from_slice(&offset.to_le_bytes());
    b.extend_from_slice(&size.to_le_bytes());
    b.extend_from_slice(&[0u8; 20]);
    b
}

fn read(fe: &mut TestFrontend, mem: &GuestMemory, node: u64, fh: u64) -> Result<Vec<u8>, i32> {
    match fuse_reply(fe, mem, FUSE_READ, node, &io_in(fh, 0, 4096)) {
        (0, data) => Ok(data),
        (e, _) => Err(e),
    }
}

fn write(fe: &mut TestFrontend, mem: &GuestMemory, node: u64, fh: u64, at: u64, data: &[u8]) {
    let body = [io_in(fh, at, data.len() as u32), data.to_vec()].concat();
    assert_eq!(fuse(fe, mem, FUSE_WRITE, node, &body), 0, "WRITE");
}

/// A new connection after a crash: the rings restart at the used index, no FUSE INIT.
fn reconnect(socket: &Path, mem: &GuestMemory, before: &mut TestFrontend) -> TestFrontend {
    let used = [before.used_idx(mem, 0), before.used_idx(mem, 1)];
    let (mut fe, _) = TestFrontend::connect(socket, 2);
    fe.start(mem, &used);
    fe
}

/// A share with `files` (paths below it, made with their directories), a bound socket, a
/// journal memfd, guest memory and the backend's log.
struct Fixture {
    /// Removed when the fixture goes.
    _dir: tempfile::TempDir,
    shared: std::path::PathBuf,
    socket: std::path::PathBuf,
    log: std::path::PathBuf,
    listener: UnixListener,
    journal: File,
    mem: GuestMemory,
}

impl Fixture {
    fn new(files: &[(&str, &[u8])]) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let shared = dir.path().join("share");
        std::fs::create_dir(&shared).unwrap();
        for (path, data) in files {
            let path = shared.join(path);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, data).unwrap();
        }
        let socket = dir.path().join("fs.sock");
        Fixture {
            log: dir.path().join("backend.log"),
            listener: UnixListener::bind(&socket).unwrap(),
            journal: memfd(),
            mem: GuestMemory::new(),
            _dir: dir,
            shared,
            socket,
        }
    }

    /// A backend run on the socket and journal.
    fn start(&self) -> Child {
        start(&self.listener, &self.journal, &self.shared, &self.log)
    }

    /// What the backends logged.
    fn said(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap()
    }
}

#[test]
fn a_backend_started_after_a_crash_takes_over_the_guests_nodes_and_open_files() {
    let x = Fixture::new(&[("f", b"hello, journal\n"), ("d/g", b"in d\n")]);
    let (mem, socket) = (&x.mem, &x.socket);

    let first = x.start();
    let mut fe = session(socket, mem);
    let f = lookup(&mut fe, mem, 1, "f");
    let d = lookup(&mut fe, mem, 1, "d");
    let g = lookup(&mut fe, mem, d, "g");
    let fh = open(&mut fe, mem, f, libc::O_RDWR);
    // The guest renames the directory: g's path is now e/g.
    let rename = [&1u64.to_le_bytes()[..], b"d\0e\0"].concat();
    assert_eq!(fuse(&mut fe, mem, FUSE_RENAME, 1, &rename), 0, "RENAME");
    write(&mut fe, mem, f, fh, 0, b"HELLO");
    kill(first);

    let second = x.start();
    let mut fe = reconnect(socket, mem, &mut fe);
    assert_eq!(
        read(&mut fe, mem, f, fh).as_deref(),
        Ok(&b"HELLO, journal\n"[..]),
        "the handle opened before the crash reads"
    );
    write(&mut fe, mem, f, fh, 15, b"after\n");
    let gh = open(&mut fe, mem, g, libc::O_RDONLY);
    assert_eq!(read(&mut fe, mem, g, gh).as_deref(), Ok(&b"in d\n"[..]));
    assert_eq!(
        fuse(&mut fe, mem, FUSE_GETATTR, d, &[0u8; 16]),
        0,
        "GETATTR d"
    );
    assert_eq!(
        lookup(&mut fe, mem, 1, "e"),
        d,
        "the same node ID for the same file"
    );
    assert_eq!(
        std::fs::read(x.shared.join("f")).unwrap(),
        b"HELLO, journal\nafter\n"
    );
    kill(second);

    // Once more: what the second backend took over and added is in the journal too.
    let third = x.start();
    let mut fe = reconnect(socket, mem, &mut fe);
    assert_eq!(read(&mut fe, mem, g, gh).as_deref(), Ok(&b"in d\n"[..]));
    assert_eq!(
        read(&mut fe, mem, f, fh).as_deref(),
        Ok(&b"HELLO, journal\nafter\n"[..])
    );
    // A handle the guest never had is still refused.
    assert_eq!(read(&mut fe, mem, f, fh + 100), Err(-libc::EBADF));
    kill(third);

    let said = x.said();
    assert!(
        said.contains("took over 3 nodes and 1 open files")
            && said.contains("took over 3 nodes and 2 open files"),
        "{said}"
    );
}

#[test]
fn a_file_removed_from_the_host_while_the_backend_was_down_is_dropped_alone() {
    let x = Fixture::new(&[("kept", b"kept\n"), ("gone", b"gone\n")]);
    let (mem, socket) = (&x.mem, &x.socket);

    let first = x.start();
    let mut fe = session(socket, mem);
    let kept = lookup(&mut fe, mem, 1, "kept");
    let gone = lookup(&mut fe, mem, 1, "gone");
    let kh = open(&mut fe, mem, kept, libc::O_RDONLY);
    let gh = open(&mut fe, mem, gone, libc::O_RDONLY);
    kill(first);
    std::fs::remove_file(x.shared.join("gone")).unwrap();

    let second = x.start();
    let mut fe = reconnect(socket, mem, &mut fe);
    assert_eq!(read(&mut fe, mem, kept, kh).as_deref(), Ok(&b"kept\n"[..]));
    assert_eq!(read(&mut fe, mem, gone, gh), Err(-libc::EBADF));
    kill(second);
    let said = x.said();
    assert!(
        said.contains("\"gone\" no longer exists; dropped")
            && said.contains("(1 nodes and 1 files could not be reopened)"),
        "{said}"
    );
}

#[test]
fn a_descriptor_that_holds_no_journal_is_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("fs.sock");
    let log = dir.path().join("backend.log");
    let listener = UnixListener::bind(&socket).unwrap();
    let journal = memfd();
    std::os::unix::fs::FileExt::write_all_at(&journal, b"something else entirely", 0).unwrap();
    let mut child = start(&listener, &journal, dir.path(), &log);
    let status = wait_timeout(&mut child, Duration::from_secs(10)).expect("exits");
    assert_eq!(status.code(), Some(1));
    let said = std::fs::read_to_string(&log).unwrap();
    let lines: Vec<&str> = said.lines().collect();
    assert_eq!(
        lines,
        ["sm-vhost-user-fs: --state-fd 4: state journal: the descriptor holds no journal (bad magic)"],
        "{said}"
    );

    let out = Command::new(Fs::PATH)
        .args(["--socket", s(&socket), "--shared-dir", s(dir.path())])
        .args(["--state-fd", "4", "--thread-pool-size", "2"])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(2),
        "a journal needs in-order completion"
    );
}

/// A backend that loaded a snapshot's state (SET_DEVICE_STATE_FD) records those tables in
/// its journal, so a crash right after a restore loses nothing either.
#[test]
fn a_restored_backend_that_crashes_keeps_the_snapshots_open_files() {
    let dir = tempfile::tempdir().unwrap();
    let shared = dir.path().join("share");
    std::fs::create_dir_all(shared.join("d")).unwrap();
    std::fs::write(shared.join("d/f"), b"from the snapshot\n").unwrap();
    let log = dir.path().join("backend.log");
    let mem = GuestMemory::new();

    let a_socket = dir.path().join("a.sock");
    let a_listener = UnixListener::bind(&a_socket).unwrap();
    let a = start(&a_listener, &memfd(), &shared, &log);
    let mut fe = session(&a_socket, &mem);
    let d = lookup(&mut fe, &mem, 1, "d");
    let f = lookup(&mut fe, &mem, d, "f");
    let fh = open(&mut fe, &mem, f, libc::O_RDONLY);
    let bases = fe.stop();
    let (state, check) = fe.save();
    check.expect("SAVE");
    kill(a);

    let socket = dir.path().join("b.sock");
    let listener = UnixListener::bind(&socket).unwrap();
    let journal = memfd();
    let b = start(&listener, &journal, &shared, &log);
    let (mut fe, _) = TestFrontend::connect(&socket, 2);
    fe.load(&state).expect("LOAD");
    fe.start(&mem, &bases);
    assert_eq!(
        read(&mut fe, &mem, f, fh).as_deref(),
        Ok(&b"from the snapshot\n"[..])
    );
    kill(b);

    let c = start(&listener, &journal, &shared, &log);
    let mut fe = reconnect(&socket, &mem, &mut fe);
    assert_eq!(
        read(&mut fe, &mem, f, fh).as_deref(),
        Ok(&b"from the snapshot\n"[..]),
        "the snapshot's handle after a crash of the restored backend"
    );
    assert_eq!(lookup(&mut fe, &mem, d, "f"), f);
    kill(c);
}

/// Under systemd (`FileDescriptorStoreMax=`, so `FDSTORE` is set): the backend makes its
/// journal memfd itself and stores it (`FDSTORE=1`, `FDNAME=state`); the next run gets it
/// back beside its socket in `LISTEN_FDS` (`LISTEN_FDNAMES=socket:state`) and takes over.
#[test]
fn under_systemd_the_journal_lives_in_the_file_descriptor_store() {
    use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};
    let dir = tempfile::tempdir().unwrap();
    let shared = dir.path().join("share");
    std::fs::create_dir(&shared).unwrap();
    std::fs::write(shared.join("f"), b"stored\n").unwrap();
    let socket = dir.path().join("fs.sock");
    let log = dir.path().join("backend.log");
    let listener = UnixListener::bind(&socket).unwrap();
    let notify_path = dir.path().join("notify.sock");
    let notify = std::os::unix::net::UnixDatagram::bind(&notify_path).unwrap();
    notify
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mem = GuestMemory::new();

    let first = start_activated(
        &[listener.as_raw_fd()],
        "socket",
        s(&notify_path),
        &shared,
        &log,
    );
    // What the store would keep: the descriptor sent with FDSTORE=1.
    let stored = loop {
        let mut buf = [0u8; 512];
        let mut iov = [std::io::IoSliceMut::new(&mut buf)];
        let mut space = nix::cmsg_space!([RawFd; 2]);
        let msg = recvmsg::<()>(
            notify.as_raw_fd(),
            &mut iov,
            Some(&mut space),
            MsgFlags::empty(),
        )
        .expect("a notification within 10 s");
        let fd = msg.cmsgs().unwrap().find_map(|c| match c {
            ControlMessageOwned::ScmRights(fds) => fds.first().copied(),
            _ => None,
        });
        let text = String::from_utf8_lossy(&buf).to_string();
        if let Some(fd) = fd {
            assert!(text.contains("FDSTORE=1\nFDNAME=state\n"), "{text}");
            // SAFETY: the descriptor just arrived in SCM_RIGHTS; nothing else owns it.
            break unsafe { File::from_raw_fd(fd) };
        }
    };
    let mut fe = session(&socket, &mem);
    let f = lookup(&mut fe, &mem, 1, "f");
    let fh = open(&mut fe, &mem, f, libc::O_RDONLY);
    kill(first);

    let second = start_activated(
        &[listener.as_raw_fd(), stored.as_raw_fd()],
        "socket:state",
        s(&notify_path),
        &shared,
        &log,
    );
    let mut fe = reconnect(&socket, &mem, &mut fe);
    assert_eq!(
        read(&mut fe, &mem, f, fh).as_deref(),
        Ok(&b"stored\n"[..]),
        "the handle from before the restart, from the stored journal"
    );
    kill(second);
    let said = std::fs::read_to_string(&log).unwrap();
    assert!(
        said.contains("took over 1 nodes and 1 open files"),
        "{said}"
    );
}

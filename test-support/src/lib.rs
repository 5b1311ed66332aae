//! sm-test-support holds the helpers that the integration tests of sm's vhost-user backends
//! (sm-vhost-user-blk, sm-vhost-user-fs) share instead of copying: starting a backend binary
//! and waiting until its sandbox is in force ([`Backend`]), checks of its command line and of
//! the vhost-user socket ([`cli`]), booting the project's guest in QEMU against it
//! ([`qemu`]), starting and stopping any server process ([`process`]), the registry, token
//! server and image layout builders of the image tests ([`oci`]), the fuzz tests' proptest
//! settings ([`fuzz`]), and skipping a test loudly ([`skip`]). It is a test helper only and
//! never published.
//!
//! Each test crate names its binary once with a [`Program`] and uses
//! `Backend<ThatProgram>`; what is particular to a device (QEMU's `-device`, image or share
//! checks) stays in the backend's own `tests/common`.

#![warn(missing_docs)]

pub mod cli;
pub mod fuzz;
pub mod oci;
pub mod process;
pub mod qemu;
pub mod skip;
pub mod supervision;

pub use skip::{is_root, require, skip_or_fail};

use std::marker::PhantomData;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

/// A backend binary under test.
pub trait Program {
    /// Its path: `env!("CARGO_BIN_EXE_<name>")` in the test crate.
    const PATH: &'static str;

    /// Its path as a `PathBuf`.
    fn path() -> PathBuf {
        PathBuf::from(Self::PATH)
    }

    /// Its file name, which prefixes its error lines.
    fn name() -> &'static str {
        let path = Self::PATH;
        path.rsplit('/').next().unwrap_or(path)
    }

    /// Runs it to completion with `args` and no stdin.
    fn run(args: &[&str]) -> Output {
        Command::new(Self::path())
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("run {}: {e}", Self::name()))
    }

    /// Asserts a failed run with exactly one stderr line, `NAME: ...`, that contains every
    /// one of `words`, and nothing on stdout.
    fn assert_one_line_error(out: &Output, words: &[&str]) {
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "succeeded: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "not one line:\n{stderr}");
        assert!(
            stderr.starts_with(&format!("{}: ", Self::name())),
            "{stderr}"
        );
        for w in words {
            assert!(stderr.contains(w), "{w:?} missing from: {stderr}");
        }
        assert!(out.stdout.is_empty(), "stdout: {:?}", out.stdout);
    }
}

/// The path as a `&str` (test paths are UTF-8).
pub fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Polls `f` every 20 ms until it returns `Some`, or panics after `secs` seconds.
pub fn wait_for<T>(what: &str, secs: u64, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `/proc/PID/status`, or an empty string.
pub fn proc_status(pid: i32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default()
}

/// Asserts that `pid` has its own mount, PID, network, IPC and UTS namespaces.
pub fn assert_own_namespaces(pid: i32) {
    for ns in ["mnt", "pid", "net", "ipc", "uts"] {
        let theirs = std::fs::read_link(format!("/proc/{pid}/ns/{ns}")).unwrap();
        let ours = std::fs::read_link(format!("/proc/self/ns/{ns}")).unwrap();
        assert_ne!(theirs, ours, "{ns} namespace is shared with the host");
    }
}

/// Lowercase hex SHA-256 of `data`.
pub fn sha256_hex(data: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A running backend; killed (SIGTERM, then SIGKILL) when dropped.
pub struct Backend<P: Program> {
    child: Option<Child>,
    /// Its vhost-user socket.
    pub socket: PathBuf,
    log: PathBuf,
    program: PhantomData<P>,
}

impl<P: Program> Backend<P> {
    /// Starts the backend with `args` plus `--socket DIR/NAME.sock`; returns once the socket
    /// exists and, with the namespace sandbox, the sandboxed child is under seccomp.
    pub fn start(dir: &Path, name: &str, args: &[&str]) -> Backend<P> {
        Backend::start_wrapped(dir, name, args, &[])
    }

    /// As [`Backend::start`], run through `wrapper` (e.g. `setpriv ...`), which must exec.
    pub fn start_wrapped(dir: &Path, name: &str, args: &[&str], wrapper: &[&str]) -> Backend<P> {
        let socket = dir.join(format!("{name}.sock"));
        let log = dir.join(format!("{name}.log"));
        let mut cmd = match wrapper.split_first() {
            Some((first, rest)) => {
                let mut c = Command::new(first);
                c.args(rest).arg(P::path());
                c
            }
            None => Command::new(P::path()),
        };
        let mut child = cmd
            .arg("--socket")
            .arg(&socket)
            .args(args)
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(log.with_extension("stdout")).unwrap())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", P::name()));
        // `none` and `chroot` do not fork a sandboxed child.
        let sandboxed = !args
            .windows(2)
            .any(|w| w == ["--sandbox", "none"] || w == ["--sandbox", "chroot"]);
        let pid = child.id() as i32;
        process::wait_listening(
            &mut child,
            P::name(),
            &socket,
            Duration::from_secs(10),
            || !sandboxed || sandboxed_child(pid).is_some(),
            || std::fs::read_to_string(&log).unwrap_or_default(),
        );
        Backend {
            child: Some(child),
            socket,
            log,
            program: PhantomData,
        }
    }

    /// PID of the process started.
    pub fn pid(&self) -> i32 {
        self.child.as_ref().unwrap().id() as i32
    }

    /// PID of the sandboxed serving process, once it is under seccomp.
    pub fn sandboxed_pid(&self) -> Option<i32> {
        sandboxed_child(self.pid())
    }

    /// What the backend wrote to stdout so far (it should write nothing).
    pub fn stdout(&self) -> String {
        std::fs::read_to_string(self.log.with_extension("stdout")).unwrap_or_default()
    }

    /// What the backend wrote to stderr so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Sends SIGTERM and waits for the exit.
    pub fn stop(mut self) -> ExitStatus {
        self.terminate()
    }

    /// Asserts that `pid` is still the serving process and stdout stayed silent, then stops
    /// the backend and asserts that SIGTERM ended it.
    pub fn assert_stops_cleanly(self, pid: i32) {
        assert_eq!(
            self.sandboxed_pid(),
            Some(pid),
            "the serving process changed"
        );
        assert_eq!(self.stdout(), "", "stdout must stay silent");
        let log = self.log();
        let exit = self.stop();
        assert_eq!(exit.signal(), Some(libc::SIGTERM), "{exit:?}\n{log}");
    }

    fn terminate(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("running");
        // On SIGKILL the sandboxed child follows (PDEATHSIG).
        process::signal_and_wait(&mut child, libc::SIGTERM, Duration::from_secs(5)).status
    }
}

/// The first child of `pid`, once it is under seccomp (a backend's sandboxed server).
fn sandboxed_child(pid: i32) -> Option<i32> {
    let children = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).ok()?;
    let child: i32 = children.split_whitespace().next()?.parse().ok()?;
    proc_status(child)
        .contains("\nSeccomp:\t2\n")
        .then_some(child)
}

impl<P: Program> Drop for Backend<P> {
    fn drop(&mut self) {
        if self.child.is_some() {
            if std::thread::panicking() {
                eprintln!("--- backend log\n{}", self.log());
            }
            self.terminate();
        }
    }
}

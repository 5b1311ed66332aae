//! Exec: runs a command with its stdout and stderr streamed back as separate frames (or
//! on a pseudo-terminal, when asked), stdin fed from the host, signals and window sizes
//! forwarded, and a timeout that kills its process group.

use std::ffi::{CStr, CString};
use std::fs::File;
use std::io::Write;
use std::os::fd::OwnedFd;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::Instant;

use nix::sys::signal::{kill, Signal};
use nix::sys::wait::WaitStatus;
use nix::unistd::Pid;
use sm_agent::frame::{read_frame, Frame, Kind};
use sm_agent::message::{Control, ExecRequest, ExitInfo, Response};

use super::relay::{relay, ExitWatch};
use super::tty::{self, Pty};
use crate::command::DEFAULT_PATH;

/// Runs `req`; streams output on `conn` and returns the final response.
pub fn run(conn: &mut File, req: ExecRequest) -> Response {
    let Some(program) = req.argv.first() else {
        return Response::Failed("exec needs a program".into());
    };
    let mut cmd = Command::new(program);
    cmd.args(&req.argv[1..]);
    let pty = match attach_stdio(&mut cmd, &req) {
        Ok(p) => p,
        Err(e) => return Response::Failed(format!("agent: opening a terminal: {e}")),
    };
    set_env(&mut cmd, &req);
    if let Err(e) = set_place(&mut cmd, &req) {
        return Response::Failed(e);
    }
    let start = Instant::now();
    let spawned = crate::reaper::spawn(&mut cmd);
    // The command's copies of the terminal are its own now: with ours closed, reading the
    // terminal ends once the command (and whatever it left holding it) is gone.
    drop(cmd);
    let master = pty.map(Pty::close_slave);
    let (mut child, exited) = match spawned {
        Ok(c) => c,
        Err(e) => return Response::Failed(format!("cannot run '{program}': {e}")),
    };
    let pid = Pid::from_raw(child.id() as i32);
    // At once: a pidfd opened after the reaper collected the command cannot wake poll.
    let exit = ExitWatch::new(pid, exited, req.timeout_ms, start);
    let mut outputs = Vec::with_capacity(2);
    if let Some(p) = child.stdout.take() {
        outputs.push((OwnedFd::from(p), Kind::Stdout));
    }
    if let Some(p) = child.stderr.take() {
        outputs.push((OwnedFd::from(p), Kind::Stderr));
    }
    let tty = master.is_some();
    let terminal = match master.as_ref().map(File::try_clone).transpose() {
        Ok(t) => t,
        Err(e) => {
            let _ = kill(pid, Signal::SIGKILL);
            return Response::Failed(format!("agent: {e}"));
        }
    };
    if let Some(t) = terminal {
        outputs.push((OwnedFd::from(t), Kind::Stdout));
    }
    let input = Input {
        stdin: child
            .stdin
            .take()
            .map(|s| Box::new(s) as Box<dyn Write + Send>),
        terminal: master,
        pid,
    };
    // Writing to the command's stdin (or terminal) may block until it reads: that needs a
    // thread of its own, or a command blocked on full output would never be read. Signals
    // and window sizes alone are handled between outputs, on this thread.
    let controls = if input.stdin.is_some() || input.terminal.is_some() {
        if let Ok(conn) = conn.try_clone() {
            // Detached: it ends when the host closes the connection.
            std::thread::spawn(move || input.feed(conn));
        }
        None
    } else {
        Some(input)
    };
    let (status, timed_out) = relay(conn, outputs, controls, exit, tty);
    drop(child); // Never waited on: the reaper collected it.
    Response::Exited(exit_info(status, timed_out, start))
}

/// Gives the command a pseudo-terminal (returned) when asked for one, else pipes for its
/// output, its stdin piped or null, in a process group of its own.
fn attach_stdio(cmd: &mut Command, req: &ExecRequest) -> std::io::Result<Option<Pty>> {
    let Some(size) = req.tty else {
        cmd.stdin(if req.stdin {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
        return Ok(None);
    };
    let p = Pty::open(size)?;
    cmd.stdin(p.slave_stdio()?)
        .stdout(p.slave_stdio()?)
        .stderr(p.slave_stdio()?);
    // SAFETY: between fork and exec the closure only calls setsid and ioctl.
    unsafe { cmd.pre_exec(tty::make_controlling) };
    Ok(Some(p))
}

/// The command's environment: exactly the request's, or a minimal default.
fn set_env(cmd: &mut Command, req: &ExecRequest) {
    cmd.env_clear();
    match &req.env {
        Some(env) => {
            cmd.envs(env.iter().map(|(k, v)| (k, v)));
        }
        None => {
            cmd.env("PATH", DEFAULT_PATH)
                .env("HOME", "/root")
                .env("TERM", "linux");
        }
    }
}

/// Where and as whom the command runs: its root, working directory, user and group.
fn set_place(cmd: &mut Command, req: &ExecRequest) -> Result<(), String> {
    let cwd = req.cwd.clone().unwrap_or_else(|| "/".into());
    let Some(root) = &req.root else {
        // Already there (the agent runs in `/`): leaving the directory alone keeps std on
        // posix_spawn (vfork, no copy of the agent's page tables) instead of fork.
        if std::env::current_dir().map_or(true, |here| here != std::path::Path::new(&cwd)) {
            cmd.current_dir(cwd);
        }
        if let Some(gid) = req.gid {
            cmd.gid(gid);
        }
        if let Some(uid) = req.uid {
            cmd.uid(uid);
        }
        return Ok(());
    };
    // std changes directory and user before pre_exec runs: inside a root, all of that has
    // to happen after the chroot, in this order.
    let (Ok(root), Ok(cwd)) = (CString::new(root.as_str()), CString::new(cwd)) else {
        return Err("exec: a path contains NUL".into());
    };
    let (uid, gid) = (req.uid, req.gid);
    // SAFETY: between fork and exec the closure only makes async-signal-safe system calls
    // (chroot, chdir, setgroups, setgid, setuid) on data prepared beforehand.
    unsafe {
        cmd.pre_exec(move || enter_root(&root, &cwd, uid, gid));
    }
    Ok(())
}

/// The final report of a command that ended with `status`.
fn exit_info(status: Option<WaitStatus>, timed_out: bool, start: Instant) -> ExitInfo {
    let (code, signal) = match status {
        Some(WaitStatus::Exited(_, c)) => (Some(c), None),
        Some(WaitStatus::Signaled(_, s, _)) => (None, Some(s as i32)),
        _ => (None, None),
    };
    ExitInfo {
        code,
        signal,
        timed_out,
        duration_us: start.elapsed().as_micros() as u64,
    }
}

/// In the child: chroot into `root`, change to `cwd` there, then drop to `gid`/`uid`.
fn enter_root(root: &CStr, cwd: &CStr, uid: Option<u32>, gid: Option<u32>) -> std::io::Result<()> {
    let check = |r: libc::c_int| {
        if r == 0 {
            Ok(())
        } else {
            Err(std::io::Error::last_os_error())
        }
    };
    // SAFETY: plain system calls on NUL-terminated strings that outlive them.
    unsafe {
        check(libc::chroot(root.as_ptr()))?;
        check(libc::chdir(cwd.as_ptr()))?;
        if let Some(g) = gid {
            check(libc::setgroups(0, std::ptr::null()))?;
            check(libc::setgid(g))?;
        }
        if let Some(u) = uid {
            check(libc::setuid(u))?;
        }
    }
    Ok(())
}

/// Where the host's stdin frames and controls go.
pub struct Input {
    /// The command's stdin pipe, when it has one.
    stdin: Option<Box<dyn Write + Send>>,
    /// The agent's end of the command's terminal, when it has one.
    terminal: Option<File>,
    pid: Pid,
}

impl Input {
    /// Feeds stdin frames to the command and applies controls, until the host closes.
    fn feed(mut self, mut conn: File) {
        while let Ok(f) = read_frame(&mut conn) {
            if !self.handle(f) {
                return;
            }
        }
    }

    /// Applies one frame from the host; false for a frame that has no place here.
    pub fn handle(&mut self, f: Frame) -> bool {
        match f.kind {
            Kind::Stdin => self.stdin(&f.body),
            Kind::Control => match f.json() {
                Ok(Control::Signal(n)) => {
                    if let Ok(sig) = Signal::try_from(n) {
                        let _ = kill(self.pid, sig);
                    }
                }
                Ok(Control::Resize(size)) => {
                    if let Some(t) = &self.terminal {
                        tty::resize(t, size);
                    }
                }
                Err(_) => {}
            },
            _ => return false,
        }
        true
    }

    /// Writes stdin bytes; an empty frame closes stdin (on a terminal: the EOF character).
    fn stdin(&mut self, data: &[u8]) {
        if let Some(t) = self.terminal.as_mut() {
            let _ = t.write_all(if data.is_empty() { b"\x04" } else { data });
            return;
        }
        if data.is_empty() {
            self.stdin = None;
        } else if let Some(s) = self.stdin.as_mut() {
            if s.write_all(data).is_err() {
                self.stdin = None;
            }
        }
    }
}

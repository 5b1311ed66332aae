//! Exec: runs a command with its stdout and stderr streamed back as separate frames (or
//! on a pseudo-terminal, when asked), stdin fed from the host, signals and window sizes
//! forwarded, and a timeout that kills its process group.

use std::ffi::{CStr, CString};
use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::sync::mpsc::{channel, Receiver};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, killpg, Signal};
use nix::sys::wait::WaitStatus;
use nix::unistd::Pid;
use sm_agent::frame::{read_frame, write_frame, Kind, DATA_CHUNK};
use sm_agent::message::{Control, ExecRequest, ExitInfo, Response};

use super::tty::{self, Pty};
use crate::command::DEFAULT_PATH;

/// How long output still in a terminal is read after the command ends: processes it left
/// in the background may hold the terminal open for ever.
const TTY_DRAIN: Duration = Duration::from_millis(500);

/// The connection as the output pumps share it; `None` once the response is due, so a
/// late pump cannot write after it.
type Output = Arc<Mutex<Option<File>>>;

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
    let shared = conn
        .try_clone()
        .and_then(|out| Ok((out, master.as_ref().map(File::try_clone).transpose()?)));
    let (out, terminal) = match shared {
        Ok((out, terminal)) => (Arc::new(Mutex::new(Some(out))), terminal),
        Err(e) => {
            let _ = kill(pid, Signal::SIGKILL);
            return Response::Failed(format!("agent: {e}"));
        }
    };
    let boxed = |r: Option<Box<dyn Read + Send>>, kind| (r, kind);
    let outputs = [
        boxed(child.stdout.take().map(|p| Box::new(p) as _), Kind::Stdout),
        boxed(child.stderr.take().map(|p| Box::new(p) as _), Kind::Stderr),
        boxed(terminal.map(|t| Box::new(t) as _), Kind::Stdout),
    ];
    let pumps = Pumps::start(outputs, &out);
    let input = Input {
        stdin: child
            .stdin
            .take()
            .map(|s| Box::new(s) as Box<dyn Write + Send>),
        terminal: master,
        pid,
    };
    if let Ok(conn) = conn.try_clone() {
        // Detached: it ends when the host closes the connection.
        std::thread::spawn(move || input.feed(conn));
    }
    let (status, timed_out) = wait_for_exit(&exited, pid, req.timeout_ms, start);
    pumps.drain(req.tty.is_some());
    // From here on only the response is written on the connection.
    out.lock().unwrap_or_else(|e| e.into_inner()).take();
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
        cmd.current_dir(cwd);
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

/// Waits for the command's exit status, killing its process group when `timeout_ms` runs
/// out; returns the status (if the reaper reported one) and whether it timed out.
fn wait_for_exit(
    exited: &Receiver<WaitStatus>,
    pid: Pid,
    timeout_ms: Option<u64>,
    start: Instant,
) -> (Option<WaitStatus>, bool) {
    let Some(limit) = timeout_ms.map(Duration::from_millis) else {
        return (exited.recv().ok(), false);
    };
    match exited.recv_timeout(limit.saturating_sub(start.elapsed())) {
        Ok(s) => (Some(s), false),
        Err(_) => {
            let _ = killpg(pid, Signal::SIGKILL);
            (exited.recv().ok(), true)
        }
    }
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

/// The threads copying the command's output to the connection.
struct Pumps {
    count: usize,
    ended: Receiver<()>,
}

impl Pumps {
    /// One thread per output that exists, each writing frames of its kind to `out`.
    fn start(outputs: [(Option<Box<dyn Read + Send>>, Kind); 3], out: &Output) -> Pumps {
        let (ended_tx, ended) = channel();
        let mut count = 0;
        for (pipe, kind) in outputs {
            let Some(pipe) = pipe else { continue };
            let (out, ended_tx) = (out.clone(), ended_tx.clone());
            count += 1;
            std::thread::spawn(move || {
                pump(pipe, kind, &out);
                let _ = ended_tx.send(());
            });
        }
        Pumps { count, ended }
    }

    /// Waits until every output has been copied; a terminal only for [`TTY_DRAIN`], since
    /// processes the command left behind may keep it open.
    fn drain(self, tty: bool) {
        for _ in 0..self.count {
            let ended = if tty {
                self.ended.recv_timeout(TTY_DRAIN).is_ok()
            } else {
                self.ended.recv().is_ok()
            };
            if !ended {
                break;
            }
        }
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

/// Copies one output pipe (or the terminal) into frames of `kind` until end of file (or,
/// for a terminal, EIO once nothing holds it).
fn pump(mut pipe: Box<dyn Read + Send>, kind: Kind, out: &Mutex<Option<File>>) {
    let mut buf = vec![0u8; DATA_CHUNK];
    // Once the host has left (a detached workload, a restored clone whose connections were
    // reset), output is read and dropped: the command runs on as with output to /dev/null
    // instead of dying of SIGPIPE or blocking on a full pipe.
    let mut host_left = false;
    loop {
        match pipe.read(&mut buf) {
            Ok(0) => return,
            Ok(_) if host_left => {}
            Ok(n) => {
                let mut conn = out.lock().unwrap_or_else(|e| e.into_inner());
                let Some(conn) = conn.as_mut() else { return };
                if write_frame(conn, kind, &buf[..n]).is_err() {
                    host_left = true;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return,
        }
    }
}

/// Where the host's stdin frames and controls go.
struct Input {
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
                _ => return,
            }
        }
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

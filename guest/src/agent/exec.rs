//! Exec: runs a command with its stdout and stderr streamed back as separate frames (or
//! on a pseudo-terminal, when asked), stdin fed from the host, signals and window sizes
//! forwarded, and a timeout that kills its process group.

use std::ffi::{CStr, CString};
use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::sync::mpsc::channel;
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
    let pty = match req.tty {
        Some(size) => match Pty::open(size).and_then(|p| {
            cmd.stdin(p.slave_stdio()?)
                .stdout(p.slave_stdio()?)
                .stderr(p.slave_stdio()?);
            Ok(p)
        }) {
            Ok(p) => {
                // SAFETY: between fork and exec the closure only calls setsid and ioctl.
                unsafe { cmd.pre_exec(tty::make_controlling) };
                Some(p)
            }
            Err(e) => return Response::Failed(format!("agent: opening a terminal: {e}")),
        },
        None => {
            cmd.stdin(if req.stdin {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0);
            None
        }
    };
    match &req.env {
        Some(env) => {
            cmd.env_clear().envs(env.iter().map(|(k, v)| (k, v)));
        }
        None => {
            cmd.env_clear()
                .env("PATH", DEFAULT_PATH)
                .env("HOME", "/root")
                .env("TERM", "linux");
        }
    }
    let cwd = req.cwd.clone().unwrap_or_else(|| "/".into());
    match &req.root {
        // std changes directory and user before pre_exec runs: inside a root, all of that
        // has to happen after the chroot, in this order.
        Some(root) => {
            let (root, cwd) = match (CString::new(root.as_str()), CString::new(cwd)) {
                (Ok(r), Ok(c)) => (r, c),
                _ => return Response::Failed("exec: a path contains NUL".into()),
            };
            let (uid, gid) = (req.uid, req.gid);
            // SAFETY: between fork and exec the closure only makes async-signal-safe system
            // calls (chroot, chdir, setgroups, setgid, setuid) on data prepared beforehand.
            unsafe {
                cmd.pre_exec(move || enter_root(&root, &cwd, uid, gid));
            }
        }
        None => {
            cmd.current_dir(cwd);
            if let Some(gid) = req.gid {
                cmd.gid(gid);
            }
            if let Some(uid) = req.uid {
                cmd.uid(uid);
            }
        }
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
    let out: Output = match conn.try_clone() {
        Ok(c) => Arc::new(Mutex::new(Some(c))),
        Err(e) => {
            let _ = kill(pid, Signal::SIGKILL);
            return Response::Failed(format!("agent: {e}"));
        }
    };
    let terminal = match master.as_ref().map(File::try_clone).transpose() {
        Ok(t) => t,
        Err(e) => {
            let _ = kill(pid, Signal::SIGKILL);
            return Response::Failed(format!("agent: {e}"));
        }
    };
    let (pumped_tx, pumped) = channel();
    let pipes = [
        (
            child
                .stdout
                .take()
                .map(|p| Box::new(p) as Box<dyn Read + Send>),
            Kind::Stdout,
        ),
        (
            child
                .stderr
                .take()
                .map(|p| Box::new(p) as Box<dyn Read + Send>),
            Kind::Stderr,
        ),
        (
            terminal.map(|t| Box::new(t) as Box<dyn Read + Send>),
            Kind::Stdout,
        ),
    ];
    let mut pumps = 0;
    for (pipe, kind) in pipes {
        let Some(pipe) = pipe else { continue };
        let (out, pumped_tx) = (out.clone(), pumped_tx.clone());
        pumps += 1;
        std::thread::spawn(move || {
            pump(pipe, kind, &out);
            let _ = pumped_tx.send(());
        });
    }
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

    let mut timed_out = false;
    let status = match req.timeout_ms.map(Duration::from_millis) {
        Some(limit) => match exited.recv_timeout(limit.saturating_sub(start.elapsed())) {
            Ok(s) => Some(s),
            Err(_) => {
                timed_out = true;
                let _ = killpg(pid, Signal::SIGKILL);
                exited.recv().ok()
            }
        },
        None => exited.recv().ok(),
    };
    for _ in 0..pumps {
        let ended = if req.tty.is_some() {
            pumped.recv_timeout(TTY_DRAIN).is_ok()
        } else {
            pumped.recv().is_ok()
        };
        if !ended {
            break;
        }
    }
    // From here on only the response is written on the connection.
    out.lock().unwrap_or_else(|e| e.into_inner()).take();
    let (code, signal) = match status {
        Some(WaitStatus::Exited(_, c)) => (Some(c), None),
        Some(WaitStatus::Signaled(_, s, _)) => (None, Some(s as i32)),
        _ => (None, None),
    };
    drop(child); // Never waited on: the reaper collected it.
    Response::Exited(ExitInfo {
        code,
        signal,
        timed_out,
        duration_us: start.elapsed().as_micros() as u64,
    })
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
    loop {
        match pipe.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => {
                let mut conn = out.lock().unwrap_or_else(|e| e.into_inner());
                let Some(conn) = conn.as_mut() else { return };
                if write_frame(conn, kind, &buf[..n]).is_err() {
                    return; // The host left; the pipe is drained no further.
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

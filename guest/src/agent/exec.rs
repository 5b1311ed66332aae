//! Exec: runs a command with its stdout and stderr streamed back as separate frames,
//! stdin fed from the host, signals forwarded, and a timeout that kills its process group.

use std::ffi::{CStr, CString};
use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, killpg, Signal};
use nix::sys::wait::WaitStatus;
use nix::unistd::Pid;
use sm_agent::frame::{read_frame, write_frame, Kind, DATA_CHUNK};
use sm_agent::message::{Control, ExecRequest, ExitInfo, Response};

use crate::command::DEFAULT_PATH;

/// Runs `req`; streams output on `conn` and returns the final response.
pub fn run(conn: &mut File, req: ExecRequest) -> Response {
    let Some(program) = req.argv.first() else {
        return Response::Failed("exec needs a program".into());
    };
    let mut cmd = Command::new(program);
    cmd.args(&req.argv[1..])
        .stdin(if req.stdin {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
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
    let (mut child, exited) = match crate::reaper::spawn(&mut cmd) {
        Ok(c) => c,
        Err(e) => return Response::Failed(format!("cannot run '{program}': {e}")),
    };
    let pid = Pid::from_raw(child.id() as i32);
    let out = match conn.try_clone() {
        Ok(c) => Arc::new(Mutex::new(c)),
        Err(e) => {
            let _ = kill(pid, Signal::SIGKILL);
            return Response::Failed(format!("agent: {e}"));
        }
    };
    let pumps: Vec<_> = [
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
    ]
    .into_iter()
    .filter_map(|(pipe, kind)| pipe.map(|p| (p, kind)))
    .map(|(pipe, kind)| {
        let out = out.clone();
        std::thread::spawn(move || pump(pipe, kind, &out))
    })
    .collect();
    let stdin = child.stdin.take();
    if let Ok(input) = conn.try_clone() {
        // Detached: it ends when the host closes the connection.
        std::thread::spawn(move || feed(input, stdin, pid));
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
    for p in pumps {
        let _ = p.join();
    }
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

/// Copies one output pipe into frames of `kind` until end of file.
fn pump(mut pipe: Box<dyn Read + Send>, kind: Kind, out: &Mutex<File>) {
    let mut buf = vec![0u8; DATA_CHUNK];
    loop {
        match pipe.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => {
                let mut conn = out.lock().unwrap_or_else(|e| e.into_inner());
                if write_frame(&mut *conn, kind, &buf[..n]).is_err() {
                    return; // The host left; the pipe is drained no further.
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return,
        }
    }
}

/// Feeds stdin frames to the command and forwards signals, until the host closes.
fn feed(mut conn: File, mut stdin: Option<std::process::ChildStdin>, pid: Pid) {
    while let Ok(f) = read_frame(&mut conn) {
        match f.kind {
            Kind::Stdin if f.body.is_empty() => stdin = None,
            Kind::Stdin => {
                if let Some(s) = stdin.as_mut() {
                    if s.write_all(&f.body).is_err() {
                        stdin = None;
                    }
                }
            }
            Kind::Control => {
                if let Ok(Control::Signal(n)) = f.json() {
                    if let Ok(sig) = Signal::try_from(n) {
                        let _ = kill(pid, sig);
                    }
                }
            }
            _ => return,
        }
    }
}

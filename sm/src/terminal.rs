//! The user's terminal attached to a command in the guest (`sm run` and `sm exec` when
//! stdin is a terminal): the guest command gets a pseudo-terminal of the same size, the
//! host terminal goes raw (so Ctrl-C, Ctrl-D and arrow keys reach the guest as bytes),
//! window changes follow, and the terminal is restored however the command ends.

use std::io::{IsTerminal, Read, Write};
use std::os::fd::AsFd;
use std::sync::Mutex;

use nix::sys::signal::{SigSet, Signal};
use nix::sys::termios::{cfmakeraw, tcgetattr, tcsetattr, SetArg, Termios};
use sm::{ChildControl, ExecBuilder, ExitInfo, WindowSize};

/// The running command's control handle, for window changes.
static CONTROL: Mutex<Option<ChildControl>> = Mutex::new(None);

/// Whether stdin and stdout are both terminals (then the command gets a tty).
pub fn attached() -> bool {
    std::io::stdin().is_terminal() && std::io::stdout().is_terminal()
}

/// The size of the terminal on stdout (24x80 if it cannot be read).
pub fn window_size() -> WindowSize {
    let mut ws = libc::winsize {
        ws_row: 0,
        ws_col: 0,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCGWINSZ writes one `winsize` through a valid pointer.
    let ok = unsafe { libc::ioctl(libc::STDOUT_FILENO, libc::TIOCGWINSZ, &mut ws) } == 0;
    if ok && ws.ws_row > 0 && ws.ws_col > 0 {
        WindowSize {
            rows: ws.ws_row,
            cols: ws.ws_col,
        }
    } else {
        WindowSize { rows: 24, cols: 80 }
    }
}

/// Sends the current window size to the running command (on SIGWINCH).
pub fn window_changed() {
    if let Some(c) = CONTROL.lock().unwrap_or_else(|e| e.into_inner()).as_ref() {
        let _ = c.resize(window_size());
    }
}

/// Blocks SIGWINCH and follows it on a thread; call before any other thread exists.
pub fn watch_window_changes() -> Result<(), String> {
    let mut set = SigSet::empty();
    set.add(Signal::SIGWINCH);
    set.thread_block()
        .map_err(|e| format!("blocking SIGWINCH: {e}"))?;
    std::thread::Builder::new()
        .name("winch".into())
        .spawn(move || loop {
            if set.wait().is_ok() {
                window_changed();
            }
        })
        .map_err(|e| format!("starting the SIGWINCH thread: {e}"))?;
    Ok(())
}

/// Puts stdin's terminal in raw mode until dropped.
struct RawMode(Termios);

impl RawMode {
    fn enter() -> Result<RawMode, String> {
        let stdin = std::io::stdin();
        let saved = tcgetattr(stdin.as_fd()).map_err(|e| format!("reading the terminal: {e}"))?;
        let mut raw = saved.clone();
        cfmakeraw(&mut raw);
        tcsetattr(stdin.as_fd(), SetArg::TCSANOW, &raw)
            .map_err(|e| format!("setting the terminal raw: {e}"))?;
        Ok(RawMode(saved))
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        let _ = tcsetattr(std::io::stdin().as_fd(), SetArg::TCSANOW, &self.0);
    }
}

/// Runs `exec` on a guest tty wired to this terminal; returns how it ended.
pub fn run(exec: ExecBuilder<'_>) -> Result<ExitInfo, String> {
    let mut child = exec.tty(window_size()).spawn().map_err(|e| e.to_string())?;
    *CONTROL.lock().unwrap_or_else(|e| e.into_inner()) =
        Some(child.control().map_err(|e| e.to_string())?);
    let raw = RawMode::enter()?;
    if let Some(mut input) = child.stdin.take() {
        // Not joined: it sits in a read of the terminal; its next write fails.
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = std::io::stdin().read(&mut buf) {
                if n == 0 || input.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
        });
    }
    if let Some(mut output) = child.stdout.take() {
        let mut out = std::io::stdout().lock();
        let mut buf = [0u8; 16 << 10];
        while let Ok(n) = output.read(&mut buf) {
            if n == 0 || out.write_all(&buf[..n]).and_then(|()| out.flush()).is_err() {
                break;
            }
        }
    }
    let exit = child.wait();
    CONTROL.lock().unwrap_or_else(|e| e.into_inner()).take();
    drop(raw);
    exit.map_err(|e| e.to_string())
}

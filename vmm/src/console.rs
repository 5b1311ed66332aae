//! The host side of the serial console: stdin pumped into COM1's receive FIFO, the host
//! terminal in raw mode for interactive shells (restored on every exit path), and the
//! `Ctrl-A x` escape that leaves an interactive session.

use std::io::Read;
use std::os::fd::AsFd;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nix::sys::termios::{self, SetArg, Termios};

use crate::devices::serial::SerialPort;

/// Ctrl-A, the escape prefix (as in QEMU).
const ESCAPE: u8 = 0x01;
/// The terminal's end-of-file character, sent when host stdin ends.
const VEOF: u8 = 0x04;

/// Puts the host terminal in raw mode and restores it when dropped.
pub struct RawTerminal {
    saved: Termios,
}

impl RawTerminal {
    /// Raw mode on stdin if it is a terminal; `None` otherwise.
    pub fn enable() -> Option<Self> {
        let stdin = std::io::stdin();
        let saved = termios::tcgetattr(stdin.as_fd()).ok()?;
        let mut raw = saved.clone();
        termios::cfmakeraw(&mut raw);
        termios::tcsetattr(stdin.as_fd(), SetArg::TCSANOW, &raw).ok()?;
        Some(RawTerminal { saved })
    }
}

impl Drop for RawTerminal {
    fn drop(&mut self) {
        let _ = termios::tcsetattr(std::io::stdin().as_fd(), SetArg::TCSANOW, &self.saved);
    }
}

/// What the input pump saw that ends the session.
pub enum ConsoleEvent {
    /// The user typed the escape sequence `Ctrl-A x`.
    Quit,
}

/// Feeds `bytes` to the UART, waiting until the guest console is ready and while its FIFO
/// is full (the guest drains it).
fn feed(port: &Mutex<SerialPort>, mut bytes: &[u8]) {
    while !bytes.is_empty() {
        let n = {
            let mut port = port.lock().unwrap();
            if port.accepts_input() {
                port.enqueue_input(bytes)
            } else {
                0
            }
        };
        bytes = &bytes[n..];
        if !bytes.is_empty() {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}

/// Copies host stdin into COM1 until stdin ends. With `escape`, `Ctrl-A x` quits and
/// `Ctrl-A Ctrl-A` sends one Ctrl-A. At end of input the guest gets an EOF character (two
/// if a partial line is pending) so a command reading its stdin sees end of file.
pub fn pump_stdin(port: Arc<Mutex<SerialPort>>, escape: bool, on_quit: impl FnOnce()) {
    let mut stdin = std::io::stdin().lock();
    let mut buf = [0u8; 4096];
    let mut pending_escape = false;
    let mut last = b'\n';
    loop {
        let n = match stdin.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => break,
        };
        let mut out = Vec::with_capacity(n);
        for &b in &buf[..n] {
            if escape && pending_escape {
                pending_escape = false;
                match b {
                    b'x' | b'X' => {
                        feed(&port, &out);
                        on_quit();
                        return;
                    }
                    ESCAPE => out.push(ESCAPE),
                    other => out.extend_from_slice(&[ESCAPE, other]),
                }
            } else if escape && b == ESCAPE {
                pending_escape = true;
            } else {
                out.push(b);
            }
        }
        if let Some(b) = out.last() {
            last = *b;
        }
        feed(&port, &out);
    }
    if !escape {
        let eof: &[u8] = if last == b'\n' {
            &[VEOF]
        } else {
            &[VEOF, VEOF]
        };
        feed(&port, eof);
    }
}

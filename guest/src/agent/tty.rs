//! Pseudo-terminals for exec requests that ask for a tty: the command gets the terminal
//! as its controlling tty and stdin, stdout and stderr; the agent keeps the other end.

use std::fs::File;
use std::os::fd::{AsRawFd, OwnedFd};
use std::process::Stdio;

use nix::pty::{openpty, Winsize};
use sm_agent::message::WindowSize;

/// The agent's end of a command's terminal, and the command's end until it is spawned.
pub struct Pty {
    /// The agent's end: what the command writes is read here, its input written here.
    pub master: File,
    slave: OwnedFd,
}

fn winsize(size: WindowSize) -> Winsize {
    Winsize {
        ws_row: size.rows,
        ws_col: size.cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    }
}

impl Pty {
    /// A new terminal of `size`.
    pub fn open(size: WindowSize) -> std::io::Result<Pty> {
        let p = openpty(Some(&winsize(size)), None)?;
        Ok(Pty {
            master: File::from(p.master),
            slave: p.slave,
        })
    }

    /// The command's end, for one of its standard streams.
    pub fn slave_stdio(&self) -> std::io::Result<Stdio> {
        Ok(Stdio::from(self.slave.try_clone()?))
    }

    /// Closes the agent's copy of the command's end, so reading `master` ends (EIO) once
    /// every process holding the terminal has closed it.
    pub fn close_slave(self) -> File {
        self.master
    }
}

/// Sets the terminal size (the foreground process group gets SIGWINCH).
pub fn resize(master: &File, size: WindowSize) {
    let ws = winsize(size);
    // SAFETY: TIOCSWINSZ reads one `winsize` from a valid pointer on an open descriptor.
    unsafe {
        libc::ioctl(master.as_raw_fd(), libc::TIOCSWINSZ, &ws);
    }
}

/// In the child, before exec: a new session with stdin's terminal as its controlling tty.
pub fn make_controlling() -> std::io::Result<()> {
    // SAFETY: setsid and ioctl are async-signal-safe and touch only this process.
    unsafe {
        if libc::setsid() < 0 {
            return Err(std::io::Error::last_os_error());
        }
        if libc::ioctl(0, libc::TIOCSCTTY, 0) < 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

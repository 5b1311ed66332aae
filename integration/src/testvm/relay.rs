//! Copies the guest's serial output to the runner's stdout/stderr as it arrives.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::OwnedFd;
use std::thread::{self, JoinHandle};

/// Where relayed bytes go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sink {
    /// The runner's stdout.
    Stdout,
    /// The runner's stderr.
    Stderr,
}

/// Copies everything read from `from` to `to` on a new thread until end of file. If `to`
/// stops taking data (say a closed pipe), the rest is read and dropped so QEMU never blocks.
pub fn spawn(from: OwnedFd, to: Sink) -> io::Result<JoinHandle<()>> {
    thread::Builder::new()
        .name(format!("relay-{to:?}"))
        .spawn(move || copy(File::from(from), to))
}

fn copy(mut from: File, to: Sink) {
    let mut buf = vec![0u8; 64 * 1024];
    let mut open = true;
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => return,
        };
        if open {
            open = write(to, &buf[..n]).is_ok();
        }
    }
}

fn write(to: Sink, bytes: &[u8]) -> io::Result<()> {
    match to {
        Sink::Stdout => {
            let mut out = io::stdout().lock();
            out.write_all(bytes)?;
            out.flush()
        }
        Sink::Stderr => io::stderr().lock().write_all(bytes),
    }
}

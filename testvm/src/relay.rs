//! Copies the guest's serial output to the runner's stdout/stderr as it arrives.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::Instant;

/// When a relay last carried a byte: milliseconds since a fixed start, shared by relays.
#[derive(Debug, Clone)]
pub struct Activity {
    start: Instant,
    last_ms: Arc<AtomicU64>,
}

impl Activity {
    /// A tracker whose clock starts now, with activity "now".
    pub fn new() -> Self {
        Activity {
            start: Instant::now(),
            last_ms: Arc::new(AtomicU64::new(0)),
        }
    }

    /// Records activity now.
    pub fn touch(&self) {
        let ms = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_ms.fetch_max(ms, Ordering::Relaxed);
    }

    /// Time since the last activity.
    pub fn idle(&self) -> std::time::Duration {
        let last = std::time::Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
        self.start.elapsed().saturating_sub(last)
    }
}

impl Default for Activity {
    fn default() -> Self {
        Self::new()
    }
}

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
/// Every read is recorded in `activity`.
pub fn spawn(from: OwnedFd, to: Sink, activity: Activity) -> io::Result<JoinHandle<()>> {
    thread::Builder::new()
        .name(format!("relay-{to:?}"))
        .spawn(move || copy(File::from(from), to, &activity))
}

fn copy(mut from: File, to: Sink, activity: &Activity) {
    let mut buf = vec![0u8; 64 * 1024];
    let mut open = true;
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => return,
        };
        activity.touch();
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

//! One Rust virtiofsd per shared directory, each on its own vhost-user socket.

use crate::process::supervise;
use crate::{Context, Error, Result};
use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

/// How a directory is shared.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// The host's `/`: read-only, submounts not announced (overlay refuses them), cached.
    ReadOnlyRoot,
    /// A directory the guest writes.
    Writable,
}

/// A running virtiofsd; killed when dropped.
pub struct Virtiofsd {
    /// The virtio-fs tag the guest mounts.
    pub tag: String,
    /// The shared host directory.
    pub dir: PathBuf,
    /// The vhost-user socket QEMU connects to.
    pub socket: PathBuf,
    log: PathBuf,
    child: Child,
    exit: Option<ExitStatus>,
}

impl Virtiofsd {
    /// Starts `bin` sharing `dir` as `tag`, with its socket and log in `run_dir`.
    pub fn spawn(bin: &Path, tag: &str, dir: &Path, mode: Mode, run_dir: &Path) -> Result<Self> {
        let socket = run_dir.join(format!("fs-{tag}.sock"));
        let log = run_dir.join(format!("fs-{tag}.log"));
        let log_file = File::create(&log).context(|| format!("creating {}", log.display()))?;
        let mut cmd = Command::new(bin);
        cmd.arg("--socket-path")
            .arg(&socket)
            .arg("--shared-dir")
            .arg(dir)
            .args([
                "--sandbox",
                "none",
                "--seccomp",
                "none",
                "--log-level",
                "warn",
            ]);
        let mode_args: &[&str] = match mode {
            Mode::ReadOnlyRoot => &["--readonly", "--no-announce-submounts", "--cache", "always"],
            Mode::Writable => &["--cache", "auto"],
        };
        cmd.args(mode_args);
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file);
        supervise(&mut cmd, &[]);
        let child = cmd
            .spawn()
            .context(|| format!("starting {}", bin.display()))?;
        Ok(Virtiofsd {
            tag: tag.to_string(),
            dir: dir.to_path_buf(),
            socket,
            log,
            child,
            exit: None,
        })
    }

    /// Polls until the socket listens; fails if virtiofsd exits or `deadline` passes.
    pub fn wait_ready(&mut self, deadline: Instant) -> Result<()> {
        loop {
            if is_listening(&self.socket) {
                return Ok(());
            }
            if self.has_exited() {
                return Err(self.died());
            }
            if Instant::now() >= deadline {
                return Err(Error::new(format!(
                    "virtiofsd for {} did not create {} in time",
                    self.dir.display(),
                    self.socket.display()
                )));
            }
            sleep(Duration::from_millis(5));
        }
    }

    /// Whether the process has exited (reaps it if so).
    pub fn has_exited(&mut self) -> bool {
        if self.exit.is_none() {
            self.exit = self.child.try_wait().unwrap_or(None);
        }
        self.exit.is_some()
    }

    /// The error for an unexpected exit, with the last line virtiofsd logged.
    pub fn died(&self) -> Error {
        let log = fs::read_to_string(&self.log).unwrap_or_default();
        let last = log.lines().rev().find(|l| !l.trim().is_empty());
        let status = self.exit.map_or("exited".to_string(), |s| s.to_string());
        Error::new(format!(
            "virtiofsd for {} stopped ({status}): {}",
            self.dir.display(),
            last.unwrap_or("no message")
        ))
    }
}

impl Drop for Virtiofsd {
    fn drop(&mut self) {
        if !self.has_exited() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Whether a Unix socket bound at `path` is listening (per /proc/net/unix), without
/// connecting: virtiofsd serves only its first connection.
fn is_listening(path: &Path) -> bool {
    const ACCEPTING: &str = "00010000";
    let Some(path) = path.to_str() else {
        return path.exists();
    };
    let Ok(table) = fs::read_to_string("/proc/net/unix") else {
        return Path::new(path).exists();
    };
    let suffix = format!(" {path}");
    table
        .lines()
        .any(|l| l.ends_with(&suffix) && l.split_whitespace().nth(3) == Some(ACCEPTING))
}

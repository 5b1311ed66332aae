//! The per-run host directory (sockets, logs and the `ctl` share), removed when dropped.
//! A runner killed by SIGKILL cannot remove its own, so each run sweeps those of dead runners.

use crate::{Context, Result};
use nix::errno::Errno;
use nix::sys::signal::kill;
use nix::unistd::Pid;
use std::env;
use std::fs;
use std::path::Path;
use tempfile::TempDir;

const PREFIX: &str = "sm-testvm-";
const OWNER: &str = "owner.pid";

/// Creates this run's directory under `$TMPDIR`, recording our pid as its owner.
pub fn create() -> Result<TempDir> {
    sweep();
    let dir = tempfile::Builder::new()
        .prefix(PREFIX)
        .tempdir()
        .context(|| "creating a run directory".to_string())?;
    fs::write(dir.path().join(OWNER), std::process::id().to_string())
        .context(|| format!("writing {}", dir.path().display()))?;
    Ok(dir)
}

/// Removes run directories whose owner process no longer exists (best effort).
fn sweep() {
    let Ok(entries) = fs::read_dir(env::temp_dir()) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        if name.to_string_lossy().starts_with(PREFIX) && owner_is_dead(&entry.path()) {
            let _ = fs::remove_dir_all(entry.path());
        }
    }
}

fn owner_is_dead(dir: &Path) -> bool {
    let pid = fs::read_to_string(dir.join(OWNER)).ok();
    match pid.and_then(|p| p.trim().parse::<i32>().ok()) {
        Some(pid) if pid > 0 => kill(Pid::from_raw(pid), None) == Err(Errno::ESRCH),
        _ => false,
    }
}

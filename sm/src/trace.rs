//! Progress lines: each step of starting, driving and stopping a VM, with the time since
//! the process started, so a slow or stuck step can be named. They go to `sm.log` in the
//! VM's runtime directory (left there if sm is killed or hangs), and through `tracing` at
//! debug level, so `SM_LOG=debug` (or the shortcut `SM_DEBUG=1`) shows them on stderr;
//! then sm-vmm also logs the guest kernel's and sm-init's messages (into `sm-vmm.log`
//! there), and the logs of every process are copied to stderr when the VM stops.

use std::fs::File;
use std::io::Write;
use std::path::Path;
use std::sync::{Mutex, OnceLock};
use std::time::Instant;

fn start() -> Instant {
    static START: OnceLock<Instant> = OnceLock::new();
    *START.get_or_init(Instant::now)
}

/// Where steps are logged once a VM has a runtime directory.
static LOG: Mutex<Option<File>> = Mutex::new(None);

/// sm's log filter when neither `SM_LOG` nor `SM_DEBUG` is set: sm's own warnings only
/// (the libraries underneath stay quiet; their errors reach the user as sm's one line).
pub const DEFAULT_FILTER: &str = "sm=warn,sm_oci=warn,sm_agent=warn";

/// Whether debugging output is on (`SM_LOG` or `SM_DEBUG` enables debug for sm).
pub fn enabled() -> bool {
    tracing::enabled!(target: "sm", tracing::Level::DEBUG)
}

/// Logs steps to `path` from now on (the VM's `sm.log`).
pub fn log_to(path: &Path) {
    let file = File::options().create(true).append(true).open(path).ok();
    *LOG.lock().unwrap_or_else(|e| e.into_inner()) = file;
}

/// Records one step: `[+S.mmms] what`.
pub fn step(what: impl std::fmt::Display) {
    let line = format!("[+{:.3}s] {what}", start().elapsed().as_secs_f64());
    if let Some(f) = LOG.lock().unwrap_or_else(|e| e.into_inner()).as_mut() {
        let _ = writeln!(f, "{line}");
    }
    tracing::debug!(target: "sm", "{line}");
}

/// Copies every `*.log` in a VM's runtime directory to stderr when debugging is on
/// (called just before the directory is removed).
pub fn dump_logs(dir: &Path) {
    LOG.lock().unwrap_or_else(|e| e.into_inner()).take();
    if !enabled() {
        return;
    }
    let mut logs: Vec<_> = std::fs::read_dir(dir)
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    logs.retain(|p| p.extension().is_some_and(|e| e == "log"));
    logs.sort();
    for log in logs {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        eprintln!("sm: ---- {} ----\n{}", log.display(), text.trim_end());
    }
}

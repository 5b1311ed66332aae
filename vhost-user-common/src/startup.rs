//! What a backend's `main` does around its own work: parse flags with errors as one stderr
//! line, find its listening socket, close the other inherited descriptors, log to stderr,
//! connect to the service manager's notification socket, and turn the outcome into an exit
//! code.

use std::fmt::Display;
use std::os::fd::RawFd;
use std::path::Path;
use std::process::ExitCode;

use clap::Parser;
use tracing::warn;

use crate::notify;
use crate::serve::ListenSource;

/// A backend's flags that say where its listening socket comes from.
pub trait ListenArgs {
    /// `--socket PATH`.
    fn socket(&self) -> Option<&Path>;
    /// `--fd N`.
    fn fd(&self) -> Option<RawFd>;
    /// Other inherited descriptors the backend keeps (a state memfd).
    fn kept_fds(&self) -> Vec<RawFd> {
        Vec::new()
    }
}

/// Runs a backend binary called `name`: parses `A` from the command line (a usage error is
/// one stderr line and exit status 2), finds the listening socket (exactly one of `--socket`,
/// `--fd` and `LISTEN_FDS`, else one line and exit status 2), closes every other inherited
/// descriptor, logs to stderr with `default_filter` unless `SM_LOG` or `SM_DEBUG` says
/// otherwise, connects to `$NOTIFY_SOCKET`, then calls `run`; its error is one stderr line,
/// a `STATUS=` and `STOPPING=1` notification, and exit status 1. Stdout stays silent.
pub fn main<A: Parser + ListenArgs, E: Display>(
    name: &str,
    default_filter: &str,
    run: impl FnOnce(A, ListenSource) -> Result<(), E>,
) -> ExitCode {
    // Parsing opens nothing, so the inherited descriptors are still as they came.
    let args = match sm_launch::parse_args::<A>(name) {
        Ok(a) => a,
        Err(code) => {
            sm_sandbox::close_inherited_fds();
            return ExitCode::from(code);
        }
    };
    let source = match ListenSource::resolve(args.socket(), args.fd()) {
        Ok(s) => s,
        Err(e) => {
            sm_sandbox::close_inherited_fds();
            eprintln!("{name}: {e}");
            return ExitCode::from(2);
        }
    };
    let mut keep = args.kept_fds();
    keep.extend(source.inherited_fd());
    keep.extend(crate::serve::activated_state_fd());
    close_inherited_fds_but(&keep);
    sm_launch::init_logging(default_filter);
    if let Err(e) = notify::init() {
        warn!("no service manager notifications: {e}");
    }
    match run(args, source) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let line = format!("{name}: {e}");
            notify::stopping(&line);
            eprintln!("{line}");
            ExitCode::FAILURE
        }
    }
}

/// Closes every descriptor above stderr except those in `keep`.
fn close_inherited_fds_but(keep: &[RawFd]) {
    let mut keep: Vec<u32> = keep
        .iter()
        .filter(|&&fd| fd > 2)
        .map(|&fd| fd as u32)
        .collect();
    keep.sort_unstable();
    keep.dedup();
    let mut from = 3u32;
    for fd in keep {
        if fd > from {
            // SAFETY: close_range takes integers only; nothing of this process is open above
            // 2 yet but the inherited descriptors, of which those in `keep` stay open.
            unsafe { libc::syscall(libc::SYS_close_range, from, fd - 1, 0u32) };
        }
        from = fd + 1;
    }
    // SAFETY: as above.
    unsafe { libc::syscall(libc::SYS_close_range, from, u32::MAX, 0u32) };
}

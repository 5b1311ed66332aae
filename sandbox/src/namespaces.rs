//! New namespaces and the fork into the PID namespace.
//!
//! `unshare(CLONE_NEWPID)` only affects children, so the process forks: the child is PID 1 of
//! the new namespace and carries on; the parent becomes a supervisor that forwards SIGTERM,
//! SIGINT, SIGHUP and SIGQUIT to the child and exits with the child's status (re-raising the
//! signal that killed it). The child dies with SIGKILL if the supervisor dies. As PID 1 the
//! child would ignore signals it has no handler for, so it installs handlers that exit.

use std::io;
use std::sync::atomic::{AtomicI32, Ordering};

use nix::sched::CloneFlags;
use nix::sys::signal::{self, SaFlags, SigAction, SigHandler, SigSet, SigmaskHow, Signal};
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::{ForkResult, Pid};

/// Errors creating namespaces or forking.
#[derive(Debug, thiserror::Error)]
pub enum NamespaceError {
    /// `fork` is only safe before any thread exists.
    #[error("the sandbox must be entered before any thread starts ({0} threads running)")]
    Threaded(usize),
    /// Counting threads failed.
    #[error("cannot count threads: {0}")]
    Threads(io::Error),
    /// `unshare` failed.
    #[error("cannot create namespaces: {0}")]
    Unshare(nix::Error),
    /// Writing the user namespace ID maps failed.
    #[error("cannot map user and group IDs in the new user namespace: {0}")]
    IdMap(io::Error),
    /// `fork` or the signal setup around it failed.
    #[error("cannot fork into the PID namespace: {0}")]
    Fork(nix::Error),
}

/// Signals the supervisor passes on to the sandboxed child.
pub(crate) const FORWARDED: [Signal; 4] = [
    Signal::SIGTERM,
    Signal::SIGINT,
    Signal::SIGHUP,
    Signal::SIGQUIT,
];

/// PID of the sandboxed child, for the supervisor's signal handler.
static CHILD: AtomicI32 = AtomicI32::new(0);
/// PID of a helper the caller started before the sandbox (0: none): it gets the forwarded
/// signals too, and SIGTERM when the child ends.
pub(crate) static COMPANION: AtomicI32 = AtomicI32::new(0);
/// The last signal the supervisor forwarded (0: none).
static FORWARDED_SIGNAL: AtomicI32 = AtomicI32::new(0);

/// Fails unless the calling process has exactly one thread.
pub fn ensure_single_threaded() -> Result<(), NamespaceError> {
    let n = std::fs::read_dir("/proc/self/task")
        .map_err(NamespaceError::Threads)?
        .count();
    if n != 1 {
        return Err(NamespaceError::Threaded(n));
    }
    Ok(())
}

/// Unshares mount, PID, network, IPC and UTS namespaces, plus a user namespace (mapping the
/// caller's own IDs) when the caller lacks CAP_SYS_ADMIN; returns whether it made one.
pub fn unshare_all() -> Result<bool, NamespaceError> {
    let mut flags = CloneFlags::CLONE_NEWNS
        | CloneFlags::CLONE_NEWPID
        | CloneFlags::CLONE_NEWNET
        | CloneFlags::CLONE_NEWIPC
        | CloneFlags::CLONE_NEWUTS;
    let privileged = caps::has_cap(
        None,
        caps::CapSet::Effective,
        caps::Capability::CAP_SYS_ADMIN,
    )
    .unwrap_or(false);
    if !privileged {
        flags |= CloneFlags::CLONE_NEWUSER;
    }
    let (uid, gid) = (nix::unistd::getuid(), nix::unistd::getgid());
    nix::sched::unshare(flags).map_err(NamespaceError::Unshare)?;
    if !privileged {
        let write = |file: &str, text: String| std::fs::write(format!("/proc/self/{file}"), text);
        write("setgroups", "deny".into()).map_err(NamespaceError::IdMap)?;
        write("uid_map", format!("{uid} {uid} 1\n")).map_err(NamespaceError::IdMap)?;
        write("gid_map", format!("{gid} {gid} 1\n")).map_err(NamespaceError::IdMap)?;
    }
    Ok(!privileged)
}

/// Forks; returns in the child (PID 1 of the new namespace). The parent never returns.
pub fn fork_supervised() -> Result<(), NamespaceError> {
    let mut forwarded = SigSet::empty();
    FORWARDED.iter().for_each(|s| forwarded.add(*s));
    // Block the forwarded signals across the fork so neither side dies of one before its
    // handlers are in place.
    let mut old = SigSet::empty();
    signal::sigprocmask(SigmaskHow::SIG_BLOCK, Some(&forwarded), Some(&mut old))
        .map_err(NamespaceError::Fork)?;
    // SAFETY: the process is single-threaded (checked by `ensure_single_threaded`), so the
    // child is a complete copy and may run arbitrary code.
    match unsafe { nix::unistd::fork() }.map_err(NamespaceError::Fork)? {
        ForkResult::Parent { child } => supervise(child, &old),
        ForkResult::Child => {
            // SAFETY: prctl with integer arguments only.
            unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) };
            for sig in FORWARDED {
                set_handler(sig, SigHandler::Handler(exit_on_signal))
                    .map_err(NamespaceError::Fork)?;
            }
            signal::sigprocmask(SigmaskHow::SIG_SETMASK, Some(&old), None)
                .map_err(NamespaceError::Fork)?;
            Ok(())
        }
    }
}

fn set_handler(sig: Signal, handler: SigHandler) -> nix::Result<()> {
    let action = SigAction::new(handler, SaFlags::SA_RESTART, SigSet::empty());
    // SAFETY: both handlers only call async-signal-safe functions (kill, _exit).
    unsafe { signal::sigaction(sig, &action) }.map(|_| ())
}

/// The child's handler: PID 1 exits with the shell's code for "killed by `sig`".
extern "C" fn exit_on_signal(sig: libc::c_int) {
    // SAFETY: _exit is async-signal-safe.
    unsafe { libc::_exit(128 + sig) }
}

/// The supervisor's handler: pass the signal on to the child (and the companion).
extern "C" fn forward(sig: libc::c_int) {
    FORWARDED_SIGNAL.store(sig, Ordering::Relaxed);
    for pid in [
        CHILD.load(Ordering::Relaxed),
        COMPANION.load(Ordering::Relaxed),
    ] {
        if pid > 0 {
            // SAFETY: kill is async-signal-safe.
            unsafe { libc::kill(pid, sig) };
        }
    }
}

/// Waits for the child and exits the way it did.
fn supervise(child: Pid, old_mask: &SigSet) -> ! {
    CHILD.store(child.as_raw(), Ordering::Relaxed);
    for sig in FORWARDED {
        let _ = set_handler(sig, SigHandler::Handler(forward));
    }
    let _ = signal::sigprocmask(SigmaskHow::SIG_SETMASK, Some(old_mask), None);
    // The child alone holds the image, its lock and the socket from now on.
    // SAFETY: close_range on fds this process no longer uses (stdio is kept).
    unsafe { libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32) };
    crate::privileges::drop_all_quietly();
    loop {
        let status = waitpid(child, None);
        if matches!(
            status,
            Ok(WaitStatus::Exited(..)) | Ok(WaitStatus::Signaled(..))
        ) {
            let companion = COMPANION.load(Ordering::Relaxed);
            if companion > 0 {
                // The helper is of no use without the child (a no-op if it was forwarded
                // the stop signal already or is gone).
                let _ = signal::kill(Pid::from_raw(companion), Signal::SIGTERM);
            }
            reap_others();
        }
        match status {
            Ok(WaitStatus::Exited(_, code)) => {
                // The child's exit-on-signal handler turns a forwarded signal into 128 + sig;
                // turn it back into death by that signal, as if there were no supervisor.
                let forwarded = FORWARDED_SIGNAL.load(Ordering::Relaxed);
                match Signal::try_from(code - 128) {
                    Ok(sig) if forwarded == code - 128 => die_by(sig, code),
                    _ => exit_now(code),
                }
            }
            Ok(WaitStatus::Signaled(_, sig, _)) => die_by(sig, 128 + sig as i32),
            Err(nix::errno::Errno::EINTR) | Ok(_) => continue,
            Err(_) => exit_now(1),
        }
    }
}

/// Reaps the supervisor's other children: a helper the backend started before entering the
/// sandbox (sm-vhost-user-net's passt) gets the same stop signal, and is collected here
/// rather than left a zombie for init, which keeps the process group alive for whoever waits
/// on it. Waits at most 500 ms for those still exiting.
fn reap_others() {
    let deadline = std::time::Instant::now() + std::time::Duration::from_millis(500);
    loop {
        match waitpid(None, Some(nix::sys::wait::WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) if std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(2));
            }
            Ok(WaitStatus::StillAlive) | Err(_) => return,
            Ok(_) => {}
        }
    }
}

/// Ends the supervisor by `sig` (or with `code` if the signal does not kill).
fn die_by(sig: Signal, code: i32) -> ! {
    let _ = set_handler(sig, SigHandler::SigDfl);
    let _ = signal::sigprocmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::empty()), None);
    let _ = signal::raise(sig);
    exit_now(code)
}

fn exit_now(code: i32) -> ! {
    // SAFETY: ends the process without running the forked copy's destructors.
    unsafe { libc::_exit(code) }
}

//! Entering the sandbox (through sm-sandbox) and opening, from inside it, what the file
//! system serves: the shared directory and `/proc/self/fd`.

use std::io;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use sm_sandbox::{Capability, Policy, SandboxError};
use tracing::warn;

use crate::fs::FsConfig;
use crate::sys::{self, ProcFds, FS_SYSCALLS, FS_WORKER_SYSCALLS};

/// How the backend isolates itself (`--sandbox`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Isolation {
    /// New namespaces; the shared directory (and a PID-only `/proc`) is the whole tree, or
    /// under `--symlinks follow` the host's tree read-only with the share writable.
    Namespace,
    /// `chroot` into the shared directory, no namespaces.
    Chroot,
    /// Nothing (debugging only).
    None,
}

/// Capabilities a root backend keeps, and why: CHOWN gives new files the guest caller's
/// owner and serves chown; DAC_OVERRIDE and DAC_READ_SEARCH let it act on files whatever
/// their mode (the guest kernel has already checked the caller's permissions); FOWNER serves
/// chmod, utimes and xattrs on files the backend does not own; FSETID keeps set-group-ID
/// bits a guest sets. Not kept: MKNOD (unless `--allow-devices`), SETUID/SETGID (requests
/// never run under the caller's IDs), and everything else.
pub const KEPT_CAPS: &[Capability] = &[
    Capability::CAP_CHOWN,
    Capability::CAP_DAC_OVERRIDE,
    Capability::CAP_DAC_READ_SEARCH,
    Capability::CAP_FOWNER,
    Capability::CAP_FSETID,
];

/// Errors confining the process or opening the share from inside.
#[derive(Debug, thiserror::Error)]
pub enum ConfineError {
    /// sm-sandbox failed.
    #[error("sandbox: {0} (--sandbox none runs without isolation, for debugging)")]
    Sandbox(#[from] SandboxError),
    /// `/proc/self/fd` could not be opened.
    #[error("/proc/self/fd: {0}")]
    Proc(io::Error),
    /// `--symlinks follow` was asked for with a sandbox that cannot show targets outside
    /// the share.
    #[error(
        "--symlinks follow needs --sandbox namespace: a chroot into the share cannot reach the \
         targets outside it that follow exists for"
    )]
    FollowInChroot,
    /// The shared directory could not be opened.
    #[error("--shared-dir {path}: {source}")]
    Root {
        /// The directory.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
}

/// What the file system needs once confined.
pub struct Confined {
    /// `O_PATH` descriptor of the shared directory, as seen from inside.
    pub root: OwnedFd,
    /// `/proc/self/fd`.
    pub proc: ProcFds,
}

/// Confines the process to `shared` (canonical) and opens it again from inside. Must be
/// called single-threaded; with [`Isolation::Namespace`] it returns in a forked child.
///
/// Under `--symlinks follow` the namespace sandbox shows the host's whole tree read-only
/// (so a symlink to `~/.cache` or a toolchain finds its target), while writes stay confined
/// to the share by the read-only mounts and by Landlock; a chroot cannot, and is refused.
pub fn confine(how: Isolation, shared: &Path, fs: &FsConfig) -> Result<Confined, ConfineError> {
    check_isolation(how, fs)?;
    // The guest's mode bits arrive with the guest caller's umask already applied; the
    // process's own umask (022 from a shell) must not clear more of them, or a guest's
    // `mkdir -m 777` under umask 0 becomes 755 on the host (virtiofsd clears it too).
    // SAFETY: umask only sets this process's file creation mask.
    unsafe { libc::umask(0) };
    let follow = fs.symlinks.follows();
    let mut policy = Policy::default()
        .allow_syscalls(FS_SYSCALLS)
        .worker_syscalls(&[FS_SYSCALLS, FS_WORKER_SYSCALLS].concat());
    if follow {
        policy = policy.show_host_tree_read_only();
    }
    policy = if fs.read_only {
        policy.expose_read_only(shared)
    } else {
        policy.expose_writable(shared)
    };
    // SAFETY: geteuid has no arguments and cannot fail.
    if unsafe { libc::geteuid() } == 0 {
        for cap in KEPT_CAPS {
            policy = policy.keep_capability(*cap);
        }
        if fs.allow_devices {
            policy = policy.keep_capability(Capability::CAP_MKNOD);
        }
    }
    let proc_path = c"/proc/self/fd";
    let (root, proc) = match how {
        Isolation::Namespace => {
            sm_sandbox::enter(&policy.mount_proc())?;
            (
                shared,
                ProcFds::open(proc_path).map_err(ConfineError::Proc)?,
            )
        }
        Isolation::Chroot => {
            // /proc is not inside the new root: open it first (no fork, same process).
            let proc = ProcFds::open(proc_path).map_err(ConfineError::Proc)?;
            sm_sandbox::enter_chroot(&policy, shared)?;
            (Path::new("/"), proc)
        }
        Isolation::None => {
            warn!(
                "--sandbox none: NOT SANDBOXED. This process keeps the host file system, \
                 network and all its privileges; a guest exploiting it owns them too"
            );
            (
                shared,
                ProcFds::open(proc_path).map_err(ConfineError::Proc)?,
            )
        }
    };
    let root = sys::open_dir_path(root).map_err(|source| ConfineError::Root {
        path: shared.to_owned(),
        source,
    })?;
    Ok(Confined { root, proc })
}

/// Whether `how` can serve `fs`: `--symlinks follow` cannot be served from a chroot into
/// the share. Checked before anything is bound, and again by [`confine`].
pub fn check_isolation(how: Isolation, fs: &FsConfig) -> Result<(), ConfineError> {
    if fs.symlinks.follows() && how == Isolation::Chroot {
        return Err(ConfineError::FollowInChroot);
    }
    Ok(())
}

/// The most descriptors the backend asks for (virtiofsd's choice too: a guest walking a
/// large tree keeps one `O_PATH` descriptor per inode it knows alive here).
const WANTED_FDS: libc::rlim_t = 1 << 20;

/// Raises the descriptor limit: both limits to `min(fs.nr_open, 2^20)` when allowed (root),
/// else the soft limit to the hard one. The backend holds one `O_PATH` descriptor per inode
/// the guest knows, and 1024, or the 4096 hard limit a process may inherit, runs out at the
/// first `npm install`.
pub fn raise_fd_limit() {
    let nr_open = std::fs::read_to_string("/proc/sys/fs/nr_open")
        .ok()
        .and_then(|s| s.trim().parse::<libc::rlim_t>().ok())
        .unwrap_or(WANTED_FDS);
    let want = nr_open.min(WANTED_FDS);
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit read and write one rlimit struct we own.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 || lim.rlim_cur >= want {
            return;
        }
        let raised = libc::rlimit {
            rlim_cur: want,
            rlim_max: lim.rlim_max.max(want),
        };
        if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
            return;
        }
        // Not allowed to raise the hard limit: take what it allows.
        lim.rlim_cur = lim.rlim_max;
        if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
            warn!(
                "cannot raise the descriptor limit: {}",
                io::Error::last_os_error()
            );
        }
    }
}

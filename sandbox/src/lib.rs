//! sm-sandbox confines a vhost-user backend process once it holds what it needs (its image
//! or shared directory, its listening socket). Both of sm's backends call [`enter`] with a
//! [`Policy`]; afterwards the process lives in new mount, PID, network, IPC and UTS
//! namespaces (and a user namespace when started unprivileged), sees an empty read-only
//! tmpfs (or, when asked, the host's tree read-only) as its root with the policy's paths
//! bound in, has no capabilities beyond the
//! policy's, has `no_new_privs` set, is confined by Landlock to the policy's paths, and runs
//! under a seccomp allowlist whose violations are logged and end the process.
//!
//! Entering a PID namespace needs a fork: the process that called [`enter`] stays outside as a
//! small supervisor that forwards termination signals and exits with the child's status, and
//! [`enter`] returns only in the child, which is PID 1 of the new namespace.

mod landlock_rules;
mod mounts;
mod namespaces;
mod privileges;
mod syscalls;

use std::path::{Path, PathBuf};

pub use caps::Capability;
pub use syscalls::{QUEUE_WORKER_SYSCALLS, VHOST_USER_SYSCALLS};

/// Errors entering the sandbox; each names the step that failed.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    /// A policy path could not be resolved.
    #[error("policy path {path}: {source}")]
    Path {
        /// The path as given.
        path: PathBuf,
        /// Why it could not be resolved.
        source: std::io::Error,
    },
    /// Creating namespaces or the supervisor fork failed.
    #[error(transparent)]
    Namespace(#[from] namespaces::NamespaceError),
    /// Building the empty root failed.
    #[error(transparent)]
    Mount(#[from] mounts::MountError),
    /// Dropping privileges failed.
    #[error(transparent)]
    Privileges(#[from] privileges::PrivilegeError),
    /// Landlock refused the ruleset.
    #[error(transparent)]
    Landlock(#[from] landlock_rules::LandlockError),
    /// The seccomp filter could not be built or installed.
    #[error(transparent)]
    Seccomp(#[from] syscalls::SeccompError),
}

/// A host path made visible inside the sandbox, at the same absolute path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PathRule {
    /// Absolute, canonical host path (file or directory).
    pub path: PathBuf,
    /// Whether the sandbox may modify it.
    pub writable: bool,
}

/// What the sandboxed process keeps.
#[derive(Clone, Debug, Default)]
pub struct Policy {
    paths: Vec<PathRule>,
    syscalls: Vec<libc::c_long>,
    keep_caps: Vec<Capability>,
    proc: bool,
    host_tree: bool,
    companion: Option<u32>,
    worker_syscalls: Option<Vec<libc::c_long>>,
}

impl Policy {
    /// Also allows these system calls (on top of [`VHOST_USER_SYSCALLS`] and
    /// [`QUEUE_WORKER_SYSCALLS`]).
    pub fn allow_syscalls(mut self, syscalls: &[libc::c_long]) -> Self {
        self.syscalls.extend_from_slice(syscalls);
        self
    }

    /// Makes `path` visible, read-only.
    pub fn expose_read_only(mut self, path: impl AsRef<Path>) -> Self {
        self.paths.push(PathRule {
            path: path.as_ref().to_owned(),
            writable: false,
        });
        self
    }

    /// Makes `path` visible and writable.
    pub fn expose_writable(mut self, path: impl AsRef<Path>) -> Self {
        self.paths.push(PathRule {
            path: path.as_ref().to_owned(),
            writable: true,
        });
        self
    }

    /// Keeps one capability (effective and permitted) after the drop.
    pub fn keep_capability(mut self, cap: Capability) -> Self {
        self.keep_caps.push(cap);
        self
    }

    /// A helper process started before the sandbox (sm-vhost-user-net's passt): the
    /// supervisor passes the stop signals on to it too, and sends it SIGTERM when the
    /// sandboxed child ends, so the whole service stops at once.
    pub fn companion(mut self, pid: u32) -> Self {
        self.companion = Some(pid);
        self
    }

    /// Mounts a procfs at `/proc` that shows only the sandboxed process (`subset=pid`), so
    /// it can reopen its own `O_PATH` descriptors through `/proc/self/fd`.
    pub fn mount_proc(mut self) -> Self {
        self.proc = true;
        self
    }

    /// Shows the whole host tree, read-only, nosuid and nodev, as the sandbox's root instead
    /// of an empty tmpfs (the policy's paths are bound over it, writable ones writable), and
    /// lets Landlock allow reading everywhere, writing still only beneath writable paths.
    /// For a backend that follows host symlinks to wherever they point. [`enter`] only: a
    /// chroot cannot show what lies outside its root.
    pub fn show_host_tree_read_only(mut self) -> Self {
        self.host_tree = true;
        self
    }

    /// Queue worker threads narrow themselves to these system calls (on top of
    /// [`QUEUE_WORKER_SYSCALLS`]) when they call [`narrow_worker_thread`].
    pub fn worker_syscalls(mut self, syscalls: &[libc::c_long]) -> Self {
        let mut all = QUEUE_WORKER_SYSCALLS.to_vec();
        all.extend_from_slice(syscalls);
        all.sort_unstable();
        all.dedup();
        self.worker_syscalls = Some(all);
        self
    }

    /// The system calls the filter allows.
    pub fn syscalls(&self) -> Vec<libc::c_long> {
        let mut all = VHOST_USER_SYSCALLS.to_vec();
        all.extend(QUEUE_WORKER_SYSCALLS);
        all.extend(&self.syscalls);
        all.sort_unstable();
        all.dedup();
        all
    }

    /// The policy's paths, made absolute and canonical.
    fn resolved_paths(&self) -> Result<Vec<PathRule>, SandboxError> {
        self.paths
            .iter()
            .map(|r| {
                let path = r.path.canonicalize().map_err(|source| SandboxError::Path {
                    path: r.path.clone(),
                    source,
                })?;
                Ok(PathRule {
                    path,
                    writable: r.writable,
                })
            })
            .collect()
    }
}

/// Closes every descriptor above stderr that the process inherited from whoever started it
/// (a shell's stray pipes, an editor's files), so none of them leaks into the sandbox. Call
/// it first thing in `main`, before opening anything.
pub fn close_inherited_fds() {
    // SAFETY: close_range takes integers only; nothing of this process is open above 2 yet.
    unsafe { libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32) };
}

/// A lighter confinement for hosts without namespaces: `chroot(root)`, then the same
/// `no_new_privs`, Landlock (to the policy's paths, resolved before the chroot), capability
/// drop and seccomp as [`enter`]. No fork, no new namespaces; needs CAP_SYS_CHROOT.
pub fn enter_chroot(policy: &Policy, root: &Path) -> Result<(), SandboxError> {
    let paths = policy.resolved_paths()?;
    privileges::set_no_new_privs()?;
    let landlock = landlock_rules::restrict(&paths)?;
    mounts::chroot(root)?;
    privileges::drop_capabilities(&policy.keep_caps)?;
    syscalls::install(&policy.syscalls())?;
    keep_worker_syscalls(policy);
    tracing::info!(
        "sandboxed: chroot {}; capabilities kept: {:?}; landlock {landlock}; seccomp allowlist \
         of {} syscalls",
        root.display(),
        policy.keep_caps,
        policy.syscalls().len()
    );
    Ok(())
}

/// The allowlist of queue worker threads, once the process is sandboxed with one.
static WORKER_SYSCALLS: std::sync::OnceLock<Vec<libc::c_long>> = std::sync::OnceLock::new();

thread_local! {
    /// Whether this thread has narrowed its filter already.
    static NARROWED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Called by a queue worker thread as it handles an event: the first call on each thread
/// narrows that thread to the policy's worker allowlist ([`Policy::worker_syscalls`]).
/// Does nothing outside a sandbox, or when the policy has none.
pub fn narrow_worker_thread() -> Result<(), SandboxError> {
    let Some(allowed) = WORKER_SYSCALLS.get() else {
        return Ok(());
    };
    if NARROWED.get() {
        return Ok(());
    }
    syscalls::narrow_this_thread(allowed, &namespaces::FORWARDED)?;
    NARROWED.set(true);
    tracing::info!(
        "queue worker thread {} narrowed to {} system calls",
        std::thread::current().name().unwrap_or("?"),
        allowed.len()
    );
    Ok(())
}

fn keep_worker_syscalls(policy: &Policy) {
    if let Some(list) = &policy.worker_syscalls {
        let _ = WORKER_SYSCALLS.set(list.clone());
    }
}

/// Moves the calling process into the sandbox described by `policy`.
///
/// Must be called while the process is single-threaded (it forks). Returns in the sandboxed
/// child only; the original process supervises it and exits with its status. On error the
/// child should report it and exit non-zero, which the supervisor passes on.
pub fn enter(policy: &Policy) -> Result<(), SandboxError> {
    let paths = policy.resolved_paths()?;
    namespaces::ensure_single_threaded()?;
    let user_ns = namespaces::unshare_all()?;
    if let Some(pid) = policy.companion {
        namespaces::COMPANION.store(pid as i32, std::sync::atomic::Ordering::Relaxed);
    }
    namespaces::fork_supervised()?;
    // From here on, this is the child: PID 1 of the new PID namespace.
    mounts::new_root(&paths, policy.proc, policy.host_tree)?;
    privileges::set_no_new_privs()?;
    let mut landlock_paths = paths.clone();
    if policy.host_tree {
        landlock_paths.push(PathRule {
            path: "/".into(),
            writable: false,
        });
    }
    let landlock = landlock_rules::restrict(&landlock_paths)?;
    privileges::drop_capabilities(&policy.keep_caps)?;
    syscalls::install(&policy.syscalls())?;
    keep_worker_syscalls(policy);
    tracing::info!(
        "sandboxed: namespaces mnt,pid,net,ipc,uts{}; {} root with {} path(s); capabilities \
         kept: {:?}; landlock {landlock}; seccomp allowlist of {} syscalls",
        if user_ns { ",user" } else { "" },
        if policy.host_tree {
            "read-only host"
        } else {
            "empty"
        },
        paths.len(),
        policy.keep_caps,
        policy.syscalls().len()
    );
    Ok(())
}

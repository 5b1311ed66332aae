//! The new root: a small read-only tmpfs (or a read-only copy of the host's tree) becomes
//! `/`, the host's own tree is detached, and the policy's paths are bound in, each at its
//! own absolute path.
//!
//! Bind sources are cloned (`open_tree`) before the tmpfs is mounted, so a policy path under
//! the scratch mount point is still reachable. Read-only binds get their flags on the
//! detached clone (`mount_setattr`), which works in a user namespace without restating
//! locked flags.

use std::ffi::CString;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use nix::mount::{mount, umount2, MntFlags, MsFlags};

use crate::PathRule;

/// Errors building the empty root.
#[derive(Debug, thiserror::Error)]
pub enum MountError {
    /// A mount-related system call failed.
    #[error("{step}: {source}")]
    Syscall {
        /// What was being done.
        step: String,
        /// The system call's error.
        source: io::Error,
    },
    /// No directory to mount the new root's tmpfs on.
    #[error("no scratch directory (/tmp, /mnt or /run) to build the new root on")]
    NoScratch,
}

fn err(step: impl Into<String>) -> impl FnOnce(nix::Error) -> MountError {
    let step = step.into();
    move |e| MountError::Syscall {
        step,
        source: e.into(),
    }
}

fn io_err(step: impl Into<String>) -> impl FnOnce(io::Error) -> MountError {
    let step = step.into();
    move |source| MountError::Syscall { step, source }
}

/// `struct mount_attr` for `mount_setattr(2)`.
#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

const MOUNT_ATTR_RDONLY: u64 = 0x1;
const MOUNT_ATTR_NOSUID: u64 = 0x2;
const MOUNT_ATTR_NODEV: u64 = 0x4;
const OPEN_TREE_CLONE: libc::c_uint = 1;
const MOVE_MOUNT_F_EMPTY_PATH: libc::c_uint = 0x4;

/// Replaces the root with an empty read-only tmpfs holding only `paths`, or with `host_tree`
/// a read-only, nosuid, nodev copy of the host's whole mount tree with `paths` bound over
/// it. With `proc`, a procfs showing only this PID namespace's processes is mounted at
/// `/proc`.
pub fn new_root(paths: &[PathRule], proc: bool, host_tree: bool) -> Result<(), MountError> {
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .map_err(err("make mounts private"))?;
    // Clone the sources (and note which are directories) while the host tree is in view.
    let trees = paths
        .iter()
        .map(|r| Ok((clone_tree(r)?, r, r.path.is_dir())))
        .collect::<Result<Vec<_>, MountError>>()?;
    let host = if host_tree {
        Some(clone_tree(&PathRule {
            path: "/".into(),
            writable: false,
        })?)
    } else {
        None
    };

    let scratch = ["/tmp", "/mnt", "/run"]
        .into_iter()
        .find(|d| Path::new(d).is_dir())
        .ok_or(MountError::NoScratch)?;
    match host {
        Some(host) => move_tree(&host, Path::new(scratch))?,
        None => mount(
            Some("sm-sandbox"),
            scratch,
            Some("tmpfs"),
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
            Some("mode=0755,size=64k,nr_inodes=256"),
        )
        .map_err(err("mount tmpfs root"))?,
    }
    for (tree, rule, is_dir) in &trees {
        let target = Path::new(scratch).join(rule.path.strip_prefix("/").unwrap_or(&rule.path));
        make_mount_point(&target, *is_dir)?;
        move_tree(tree, &target)?;
    }
    drop(trees);
    if proc {
        let target = Path::new(scratch).join("proc");
        make_mount_point(&target, true)?;
        mount(
            Some("proc"),
            &target,
            Some("proc"),
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
            Some("subset=pid"),
        )
        .map_err(err("mount /proc"))?;
    }

    nix::unistd::chdir(scratch).map_err(err("enter new root"))?;
    // pivot_root(".", "."): the old root ends up stacked on the new one, then is detached.
    nix::unistd::pivot_root(".", ".").map_err(err("pivot_root"))?;
    umount2(".", MntFlags::MNT_DETACH).map_err(err("detach old root"))?;
    nix::unistd::chdir("/").map_err(err("chdir /"))?;
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REMOUNT
            | MsFlags::MS_BIND
            | MsFlags::MS_RDONLY
            | MsFlags::MS_NOSUID
            | MsFlags::MS_NODEV
            | MsFlags::MS_NOEXEC,
        None::<&str>,
    )
    .map_err(err("make new root read-only"))
}

/// `chroot(root)` and `chdir("/")`.
pub fn chroot(root: &Path) -> Result<(), MountError> {
    let step = format!("chroot {}", root.display());
    nix::unistd::chroot(root).map_err(err(&step))?;
    nix::unistd::chdir("/").map_err(err(step))
}

/// A detached copy of the mount tree at `rule.path` (recursive when writable, and for `/`,
/// the whole host tree), made read-only, nosuid and nodev as the rule says.
fn clone_tree(rule: &PathRule) -> Result<OwnedFd, MountError> {
    let step = format!("bind {}", rule.path.display());
    let path = cstr(&rule.path).map_err(io_err(&step))?;
    let recursive = if rule.writable || rule.path == Path::new("/") {
        libc::AT_RECURSIVE
    } else {
        0
    };
    let flags = OPEN_TREE_CLONE | libc::O_CLOEXEC as libc::c_uint | recursive as libc::c_uint;
    // SAFETY: open_tree reads a NUL-terminated path and returns a new fd or -1.
    let fd = unsafe { libc::syscall(libc::SYS_open_tree, libc::AT_FDCWD, path.as_ptr(), flags) };
    if fd < 0 {
        return Err(io_err(step)(io::Error::last_os_error()));
    }
    // SAFETY: `fd` is a fresh descriptor that nothing else owns.
    let tree = unsafe { OwnedFd::from_raw_fd(fd as libc::c_int) };
    let mut attr = MountAttr {
        attr_set: MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV,
        attr_clr: 0,
        propagation: 0,
        userns_fd: 0,
    };
    if !rule.writable {
        attr.attr_set |= MOUNT_ATTR_RDONLY;
    }
    let empty = c"";
    // SAFETY: mount_setattr reads `attr` (of the size passed) and an empty path.
    let r = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            tree.as_raw_fd(),
            empty.as_ptr(),
            (libc::AT_EMPTY_PATH | recursive) as libc::c_uint,
            &mut attr as *mut MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    if r < 0 {
        return Err(io_err(step)(io::Error::last_os_error()));
    }
    Ok(tree)
}

/// Attaches a detached tree at `target`.
fn move_tree(tree: &OwnedFd, target: &Path) -> Result<(), MountError> {
    let step = format!("attach {}", target.display());
    let to = cstr(target).map_err(io_err(&step))?;
    let empty = c"";
    // SAFETY: move_mount reads two NUL-terminated paths; the fd is a detached tree we own.
    let r = unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            tree.as_raw_fd(),
            empty.as_ptr(),
            libc::AT_FDCWD,
            to.as_ptr(),
            MOVE_MOUNT_F_EMPTY_PATH,
        )
    };
    if r < 0 {
        return Err(io_err(step)(io::Error::last_os_error()));
    }
    Ok(())
}

/// Creates an empty directory or file to mount over (one already there is used as it is:
/// the read-only host tree holds every policy path already).
fn make_mount_point(target: &Path, dir: bool) -> Result<(), MountError> {
    if target.symlink_metadata().is_ok_and(|m| m.is_dir() == dir) {
        return Ok(());
    }
    let step = format!("create mount point {}", target.display());
    let parent: PathBuf = if dir {
        target.to_owned()
    } else {
        target.parent().unwrap_or(Path::new("/")).to_owned()
    };
    std::fs::create_dir_all(&parent).map_err(io_err(&step))?;
    if !dir {
        File::create(target).map_err(io_err(&step))?;
    }
    Ok(())
}

fn cstr(p: &Path) -> io::Result<CString> {
    CString::new(p.as_os_str().as_bytes()).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))
}

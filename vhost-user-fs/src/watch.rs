//! Host change detection: an inotify instance watching the directories whose position in
//! the tree the backend has cached, so that a host rename, move or delete drops that cache.
//!
//! The guest learns of host changes through short entry and attribute timeouts
//! (`--cache auto`): the Linux virtio-fs driver has no notification queue, so FUSE
//! invalidation messages cannot be pushed to it. What the backend itself caches (the depth
//! of each directory below the root, used to judge symlink targets) is dropped whenever
//! inotify reports a change. The watcher is polled, never blocks and needs no thread; a
//! kqueue (`EVFILT_VNODE`) watcher with the same two methods would serve macOS.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

/// Events that move a watched directory or change which names a directory holds.
const MASK: u32 = libc::IN_MOVE_SELF
    | libc::IN_DELETE_SELF
    | libc::IN_MOVED_FROM
    | libc::IN_MOVED_TO
    | libc::IN_CREATE
    | libc::IN_DELETE
    | libc::IN_ONLYDIR;

/// Watches host directories for changes (Linux: inotify).
#[derive(Debug)]
pub struct Watcher {
    fd: OwnedFd,
}

impl Watcher {
    /// A new watcher, or an error where inotify is unavailable.
    pub fn new() -> io::Result<Watcher> {
        // SAFETY: inotify_init1 takes flags only; the result is checked.
        let fd = unsafe { libc::inotify_init1(libc::IN_NONBLOCK | libc::IN_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a new descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(Watcher { fd })
    }

    /// Watches the directory `dir` (any descriptor of it, `O_PATH` included), naming it
    /// through `/proc/self/fd`, which must exist in this process's view.
    pub fn watch(&self, dir: BorrowedFd<'_>) -> io::Result<()> {
        let path = CString::new(format!("/proc/self/fd/{}", dir.as_raw_fd()))
            .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
        // SAFETY: `path` is NUL-terminated; the result is checked.
        let wd = unsafe { libc::inotify_add_watch(self.fd.as_raw_fd(), path.as_ptr(), MASK) };
        if wd < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Whether anything was reported since the last call (drains the queue).
    pub fn changed(&self) -> bool {
        let mut buf = [0u8; 4096];
        let mut any = false;
        loop {
            // SAFETY: the kernel writes at most `buf.len()` bytes into `buf`.
            let n = unsafe { libc::read(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
            if n <= 0 {
                // EAGAIN: drained. Any other error: assume a change, to be safe.
                let drained =
                    n < 0 && io::Error::last_os_error().raw_os_error() == Some(libc::EAGAIN);
                return any || !drained;
            }
            any = true;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    #[test]
    fn reports_host_moves_and_creates() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("a")).unwrap();
        let w = Watcher::new().unwrap();
        let a = std::fs::File::open(dir.path().join("a")).unwrap();
        w.watch(a.as_fd()).unwrap();
        assert!(!w.changed());
        std::fs::rename(dir.path().join("a"), dir.path().join("b")).unwrap();
        assert!(w.changed(), "move of a watched directory");
        assert!(!w.changed(), "drained");
        std::fs::write(dir.path().join("b/f"), b"x").unwrap();
        assert!(w.changed(), "create inside");
    }
}

//! The inode table: FUSE node IDs mapped to `O_PATH` descriptors of host files, one entry per
//! host inode (keyed by device and inode number), with the kernel's lookup counts.
//!
//! A node ID is never reused, so a stale ID from the guest finds nothing (EBADF) rather than
//! some other file.

use std::collections::HashMap;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::{Arc, RwLock};

use fuse_backend_rs::api::filesystem::ROOT_ID;

/// A host inode's identity.
pub type InodeKey = (u64, u64);

/// One host file the guest knows about.
#[derive(Debug)]
pub struct InodeData {
    fd: OwnedFd,
    /// Device and inode number on the host.
    pub key: InodeKey,
    /// The `S_IFMT` bits (never change for a given host inode).
    pub kind: u32,
}

impl InodeData {
    /// An entry for the `O_PATH` descriptor `fd` whose `stat` is `st`.
    pub fn new(fd: OwnedFd, st: &libc::stat64) -> InodeData {
        InodeData {
            fd,
            key: (st.st_dev, st.st_ino),
            kind: st.st_mode & libc::S_IFMT,
        }
    }

    /// The `O_PATH` descriptor.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// Whether this is a directory.
    pub fn is_dir(&self) -> bool {
        self.kind == libc::S_IFDIR
    }

    /// Whether this is a symlink.
    pub fn is_symlink(&self) -> bool {
        self.kind == libc::S_IFLNK
    }

    /// Whether this is a regular file.
    pub fn is_file(&self) -> bool {
        self.kind == libc::S_IFREG
    }
}

struct Slot {
    data: Arc<InodeData>,
    refs: u64,
}

#[derive(Default)]
struct Inner {
    by_id: HashMap<u64, Slot>,
    by_key: HashMap<InodeKey, u64>,
    next: u64,
}

/// Node IDs to host inodes.
pub struct InodeTable {
    inner: RwLock<Inner>,
}

fn ebadf() -> io::Error {
    io::Error::from_raw_os_error(libc::EBADF)
}

impl InodeTable {
    /// A table holding only the root (the shared directory), as [`ROOT_ID`].
    pub fn new(root: OwnedFd, st: &libc::stat64) -> InodeTable {
        let table = InodeTable {
            inner: RwLock::new(Inner::default()),
        };
        table.reset(root, st);
        table
    }

    /// Forgets every inode and starts over with `root` (a new FUSE session).
    pub fn reset(&self, root: OwnedFd, st: &libc::stat64) {
        let key = (st.st_dev, st.st_ino);
        let data = Arc::new(InodeData {
            fd: root,
            key,
            kind: st.st_mode & libc::S_IFMT,
        });
        let mut inner = self.inner.write().unwrap_or_else(|e| e.into_inner());
        inner.by_id.clear();
        inner.by_key.clear();
        inner.by_id.insert(ROOT_ID, Slot { data, refs: 1 });
        inner.by_key.insert(key, ROOT_ID);
        inner.next = ROOT_ID + 1;
    }

    /// The inode with node ID `id`.
    pub fn get(&self, id: u64) -> io::Result<Arc<InodeData>> {
        let inner = self.inner.read().unwrap_or_else(|e| e.into_inner());
        inner
            .by_id
            .get(&id)
            .map(|s| s.data.clone())
            .ok_or_else(ebadf)
    }

    /// The root's identity.
    pub fn root_key(&self) -> io::Result<InodeKey> {
        self.get(ROOT_ID).map(|d| d.key)
    }

    /// Records one more kernel reference to the host inode `fd` (whose `stat` is `st`) and
    /// returns its node ID; an inode already known keeps its ID and its first descriptor.
    pub fn insert(&self, fd: OwnedFd, st: &libc::stat64) -> u64 {
        let key = (st.st_dev, st.st_ino);
        let mut inner = self.inner.write().unwrap_or_else(|e| e.into_inner());
        if let Some(&id) = inner.by_key.get(&key) {
            if let Some(slot) = inner.by_id.get_mut(&id) {
                slot.refs = slot.refs.saturating_add(1);
                return id;
            }
        }
        let id = inner.next;
        inner.next += 1;
        let data = Arc::new(InodeData {
            fd,
            key,
            kind: st.st_mode & libc::S_IFMT,
        });
        inner.by_id.insert(id, Slot { data, refs: 1 });
        inner.by_key.insert(key, id);
        id
    }

    /// Drops `count` kernel references to `id`; the entry goes when none are left. The root
    /// stays whatever the guest says.
    pub fn forget(&self, id: u64, count: u64) {
        if id == ROOT_ID {
            return;
        }
        let mut inner = self.inner.write().unwrap_or_else(|e| e.into_inner());
        let Some(slot) = inner.by_id.get_mut(&id) else {
            return;
        };
        slot.refs = slot.refs.saturating_sub(count);
        if slot.refs == 0 {
            let key = slot.data.key;
            inner.by_id.remove(&id);
            if inner.by_key.get(&key) == Some(&id) {
                inner.by_key.remove(&key);
            }
        }
    }

    /// Every inode but the root, as (node ID, entry, kernel references), in node ID order,
    /// and the next node ID to hand out.
    pub fn entries(&self) -> (Vec<(u64, Arc<InodeData>, u64)>, u64) {
        let inner = self.inner.read().unwrap_or_else(|e| e.into_inner());
        let mut all: Vec<_> = inner
            .by_id
            .iter()
            .filter(|(&id, _)| id != ROOT_ID)
            .map(|(&id, slot)| (id, slot.data.clone(), slot.refs))
            .collect();
        all.sort_by_key(|e| e.0);
        (all, inner.next)
    }

    /// Starts over with `root` and the given (node ID, entry, kernel references), handing
    /// out IDs from `next` on (a snapshot's table, reopened). IDs must be unique, above
    /// the root's and below `next`.
    pub fn restore(
        &self,
        root: OwnedFd,
        st: &libc::stat64,
        entries: Vec<(u64, InodeData, u64)>,
        next: u64,
    ) {
        self.reset(root, st);
        let mut inner = self.inner.write().unwrap_or_else(|e| e.into_inner());
        for (id, data, refs) in entries {
            inner.by_key.entry(data.key).or_insert(id);
            let data = Arc::new(data);
            inner.by_id.insert(id, Slot { data, refs });
        }
        inner.next = inner.next.max(next);
    }

    /// How many inodes are known (root included).
    pub fn count(&self) -> usize {
        self.inner
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .by_id
            .len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sys;

    #[test]
    fn lookup_counts_and_stale_ids() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("f"), b"x").unwrap();
        let root = std::fs::File::open(dir.path()).unwrap();
        let root: OwnedFd = root.into();
        let st = sys::fstat(root.as_fd()).unwrap();
        let table = InodeTable::new(root, &st);
        let open = || {
            let fd = sys::open_path(table.get(ROOT_ID).unwrap().fd(), c"f", false).unwrap();
            let st = sys::fstat(fd.as_fd()).unwrap();
            (fd, st)
        };
        let (fd, st) = open();
        let id = table.insert(fd, &st);
        let (fd, st) = open();
        assert_eq!(table.insert(fd, &st), id, "same host inode, same ID");
        assert_eq!(table.count(), 2);
        table.forget(id, 1);
        assert!(table.get(id).unwrap().is_file());
        table.forget(id, u64::MAX);
        assert_eq!(table.get(id).unwrap_err().raw_os_error(), Some(libc::EBADF));
        let (fd, st) = open();
        assert_ne!(table.insert(fd, &st), id, "IDs are never reused");
        table.forget(ROOT_ID, 100);
        assert!(table.get(ROOT_ID).unwrap().is_dir());
        assert_eq!(table.get(0).unwrap_err().raw_os_error(), Some(libc::EBADF));
    }
}

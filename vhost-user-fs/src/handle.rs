//! Open files and directories: FUSE handles mapped to real descriptors.

use std::collections::{HashMap, VecDeque};
use std::fs::File;
use std::io;
use std::sync::{Arc, Mutex, MutexGuard, RwLock};

use crate::inode::InodeData;

/// How many files opened for single requests stay open for the next ones.
const TRANSIENT_KEPT: usize = 8;

/// One open file or directory.
#[derive(Debug)]
pub struct HandleData {
    /// Node ID it was opened from.
    pub inode: u64,
    file: File,
    /// Serialises seek + getdents on directory handles, and keeps their read-ahead.
    dir_pos: Mutex<DirCursor>,
}

/// Where a directory handle's descriptor stands: getdents64 records read from the host but
/// not yet given to the guest, and the guest offset they follow. Continuing from there
/// needs no seek, which matters where directory offsets are positions (tmpfs): seeking
/// back after the guest removed entries would skip as many others.
#[derive(Debug, Default)]
pub struct DirCursor {
    /// The offset a READDIR continuing this listing asks for.
    pub at: Option<u64>,
    /// Raw getdents64 records after that offset, read but not delivered.
    pub pending: Vec<u8>,
}

impl HandleData {
    /// `file`, opened from node `inode`, with no directory position yet.
    fn new(inode: u64, file: File) -> HandleData {
        HandleData {
            inode,
            file,
            dir_pos: Mutex::new(DirCursor::default()),
        }
    }

    /// The open file.
    pub fn file(&self) -> &File {
        &self.file
    }

    /// Exclusive use of the descriptor's position and read-ahead (directories).
    pub fn lock_position(&self) -> MutexGuard<'_, DirCursor> {
        self.dir_pos.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Handle numbers to open files.
#[derive(Default)]
pub struct HandleTable {
    inner: RwLock<(HashMap<u64, Arc<HandleData>>, u64)>,
}

impl HandleTable {
    /// Registers an open file of node `inode`; returns its handle number.
    pub fn insert(&self, inode: u64, file: File) -> u64 {
        let mut inner = self.inner.write().unwrap_or_else(|e| e.into_inner());
        inner.1 += 1;
        let id = inner.1;
        inner.0.insert(id, Arc::new(HandleData::new(inode, file)));
        id
    }

    /// The open file behind `handle`, which must belong to `inode`.
    pub fn get(&self, handle: u64, inode: u64) -> io::Result<Arc<HandleData>> {
        let inner = self.inner.read().unwrap_or_else(|e| e.into_inner());
        match inner.0.get(&handle) {
            Some(h) if h.inode == inode => Ok(h.clone()),
            _ => Err(io::Error::from_raw_os_error(libc::EBADF)),
        }
    }

    /// Closes `handle` (once every request using it is done).
    pub fn remove(&self, handle: u64, inode: u64) -> io::Result<()> {
        let mut inner = self.inner.write().unwrap_or_else(|e| e.into_inner());
        match inner.0.get(&handle) {
            Some(h) if h.inode == inode => {
                inner.0.remove(&handle);
                Ok(())
            }
            _ => Err(io::Error::from_raw_os_error(libc::EBADF)),
        }
    }

    /// Every open handle as (handle number, data), in handle order, and the last number
    /// handed out.
    pub fn entries(&self) -> (Vec<(u64, Arc<HandleData>)>, u64) {
        let inner = self.inner.read().unwrap_or_else(|e| e.into_inner());
        let mut all: Vec<_> = inner.0.iter().map(|(&h, d)| (h, d.clone())).collect();
        all.sort_by_key(|e| e.0);
        (all, inner.1)
    }

    /// Replaces every handle with the given (handle number, node ID, open file), numbering
    /// new ones after `last` (a snapshot's table, reopened).
    pub fn restore(&self, entries: Vec<(u64, u64, File)>, last: u64) {
        let mut inner = self.inner.write().unwrap_or_else(|e| e.into_inner());
        inner.0.clear();
        for (handle, inode, file) in entries {
            inner
                .0
                .insert(handle, Arc::new(HandleData::new(inode, file)));
        }
        inner.1 = inner.1.max(last);
    }

    /// Closes everything (end of a FUSE session).
    pub fn clear(&self) {
        self.inner
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .0
            .clear();
    }
}

/// Files opened for requests that name no handle (FUSE's no-open mode: a READ or WRITE
/// with handle 0). The last few stay open, so a stream of reads of one file opens it once.
#[derive(Default)]
pub struct TransientFiles {
    recent: Mutex<VecDeque<Transient>>,
}

/// One kept file: the node it was opened from (the same node, not just the same ID: IDs
/// start again with a new session), its open flags and the file.
struct Transient {
    node: Arc<InodeData>,
    id: u64,
    flags: i32,
    data: Arc<HandleData>,
}

impl TransientFiles {
    /// The file of node `id` (`node`) opened with `flags`: a kept one, or `open()`'s.
    pub fn get_or_open(
        &self,
        id: u64,
        node: &Arc<InodeData>,
        flags: i32,
        open: impl FnOnce() -> io::Result<File>,
    ) -> io::Result<Arc<HandleData>> {
        let same = |t: &Transient| t.id == id && t.flags == flags && Arc::ptr_eq(&t.node, node);
        if let Some(t) = self.lock().iter().find(|t| same(t)) {
            return Ok(t.data.clone());
        }
        // Opened without the lock: another request may open the same file meanwhile, and
        // both copies are as good.
        Ok(self.keep(id, node, flags, open()?))
    }

    /// Keeps `file`, node `id`'s opened with `flags`, for the next requests; returns it.
    pub fn keep(&self, id: u64, node: &Arc<InodeData>, flags: i32, file: File) -> Arc<HandleData> {
        let data = Arc::new(HandleData::new(id, file));
        let mut recent = self.lock();
        if recent.len() == TRANSIENT_KEPT {
            recent.pop_front();
        }
        recent.push_back(Transient {
            node: node.clone(),
            id,
            flags,
            data: data.clone(),
        });
        data
    }

    /// Closes node `id`'s kept files (the guest forgot it: a removed file's space is
    /// given back once nothing holds it).
    pub fn forget(&self, id: u64) {
        self.lock().retain(|t| t.id != id);
    }

    /// Closes every kept file (end of a FUSE session).
    pub fn clear(&self) {
        self.lock().clear();
    }

    fn lock(&self) -> MutexGuard<'_, VecDeque<Transient>> {
        self.recent.lock().unwrap_or_else(|e| e.into_inner())
    }
}

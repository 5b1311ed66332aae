//! Open files and attributes: OPEN/CREATE (reopening through `/proc/self/fd`, never by
//! path), READ/WRITE straight between guest memory and the file, SETATTR, FSYNC, FALLOCATE,
//! LSEEK and STATFS.

use std::ffi::CStr;
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd};
use std::sync::Arc;

use fuse_backend_rs::abi::fuse_abi::{stat64, statvfs64, CreateIn};
use fuse_backend_rs::api::filesystem::{
    Context, Entry, OpenOptions, SetattrValid, ZeroCopyReader, ZeroCopyWriter,
};

use fuse_backend_rs::transport::FsCacheReqHandler;

use super::{errno, SharedFs};
use crate::handle::HandleData;
use crate::journal::Record;
use crate::policy::CacheMode;
use crate::sys::{self, FileView, RESOLVE_BENEATH, RESOLVE_NO_SYMLINKS};

/// Open flags passed on from the guest; everything else (O_CREAT, O_NOFOLLOW, O_PATH,
/// O_DIRECT, O_NOATIME, O_TMPFILE, ...) is the backend's business or refused by omission.
const PASSED_FLAGS: i32 = libc::O_ACCMODE
    | libc::O_APPEND
    | libc::O_TRUNC
    | libc::O_SYNC
    | libc::O_DSYNC
    | libc::O_NONBLOCK;

/// The guest's open flags, filtered.
pub(super) fn open_flags(flags: u32) -> i32 {
    flags as i32 & PASSED_FLAGS
}

/// The flags a file opened for requests with handle 0 is kept under: `O_RDONLY` for
/// reads, `O_WRONLY` and the guest's O_APPEND and sync flags for writes.
fn transient_flags(guest_flags: i32, write: bool) -> i32 {
    if write {
        libc::O_WRONLY | (guest_flags & (libc::O_APPEND | libc::O_SYNC | libc::O_DSYNC))
    } else {
        libc::O_RDONLY
    }
}

/// Whether `flags` may change the file.
fn mutating(flags: i32) -> bool {
    flags & libc::O_ACCMODE != libc::O_RDONLY || flags & libc::O_TRUNC != 0
}

/// Seconds and nanoseconds for utimensat, from a setattr time (or "now").
fn timespec(sec: i64, nsec: i64, now: bool, set: bool) -> libc::timespec {
    let (tv_sec, tv_nsec) = match (set, now) {
        (false, _) => (0, libc::UTIME_OMIT),
        (true, true) => (0, libc::UTIME_NOW),
        (true, false) => (sec, nsec),
    };
    libc::timespec { tv_sec, tv_nsec }
}

impl SharedFs {
    /// FOPEN flags for files under the cache mode.
    pub(super) fn open_options(&self) -> OpenOptions {
        match self.cfg.cache {
            CacheMode::Auto => OpenOptions::empty(),
            CacheMode::Always => OpenOptions::KEEP_CACHE,
            CacheMode::Never => OpenOptions::DIRECT_IO,
        }
    }

    /// SETUPMAPPING: maps `len` bytes of the file at `foffset` into the DAX window at
    /// `moffset`. The Linux driver sends no file handle, so the file is reopened here,
    /// read-write only when the guest will write through the mapping.
    pub(super) fn do_setupmapping(
        &self,
        inode: u64,
        foffset: u64,
        len: u64,
        flags: u64,
        moffset: u64,
        vu_req: &mut dyn FsCacheReqHandler,
    ) -> io::Result<()> {
        let write = crate::dax::wants_write(flags);
        if write {
            self.writable()?;
        }
        let node = self.inodes.get(inode)?;
        if !node.is_file() {
            return Err(errno(libc::EINVAL));
        }
        let mode = if write { libc::O_RDWR } else { libc::O_RDONLY };
        let file = self.proc.reopen(node.fd(), mode)?;
        if write {
            self.drop_privilege_for_write(file.as_fd())?;
        }
        vu_req.map(foffset, moffset, len, flags, file.as_raw_fd())
    }

    /// OPEN: a regular file, reopened from its `O_PATH` descriptor.
    pub(super) fn do_open(&self, inode: u64, flags: u32) -> io::Result<u64> {
        let flags = open_flags(flags);
        if mutating(flags) {
            self.writable()?;
        }
        let node = self.inodes.get(inode)?;
        if !node.is_file() {
            return Err(errno(if node.is_dir() {
                libc::EISDIR
            } else {
                libc::ENXIO
            }));
        }
        let fd = self.proc.reopen(node.fd(), flags)?;
        if flags & libc::O_TRUNC != 0 {
            self.drop_privilege_for_write(fd.as_fd())?;
        }
        let handle = self.handles.insert(inode, File::from(fd));
        self.note(|| Record::Open {
            h: handle,
            id: inode,
            flags,
        });
        Ok(handle)
    }

    /// CREATE: a new (or, without O_EXCL, existing) regular file, opened: its handle, or
    /// none in no-open mode.
    pub(super) fn do_create(
        &self,
        ctx: &Context,
        parent: u64,
        name: &CStr,
        args: &CreateIn,
    ) -> io::Result<(Entry, Option<u64>)> {
        self.writable()?;
        let dir = self.dir(parent)?;
        let flags = open_flags(args.flags) | libc::O_NOFOLLOW;
        let mode = self.guest_mode(args.mode & !args.umask, libc::S_IFREG);
        let resolve = RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS;
        let excl = libc::O_CREAT | libc::O_EXCL;
        let (file, created) = match sys::openat2(dir.fd(), name, flags | excl, mode, resolve) {
            Ok(f) => (f, true),
            Err(e)
                if e.raw_os_error() == Some(libc::EEXIST)
                    && args.flags as i32 & libc::O_EXCL == 0 =>
            {
                (sys::openat2(dir.fd(), name, flags, 0, resolve)?, false)
            }
            Err(e) => return Err(e),
        };
        let st = sys::fstat(file.as_fd())?;
        if st.st_mode & libc::S_IFMT != libc::S_IFREG {
            return Err(errno(libc::EISDIR));
        }
        if !created && flags & libc::O_TRUNC != 0 {
            self.drop_privilege_for_write(file.as_fd())?;
        }
        if created && self.cfg.chown_new {
            if let Err(e) = sys::fchown(file.as_fd(), ctx.uid, ctx.gid) {
                tracing::debug!("cannot give {name:?} to {}:{}: {e}", ctx.uid, ctx.gid);
            }
            // chown cleared the setuid and setgid bits `--allow-setuid` lets the guest set.
            if mode & (libc::S_ISUID | libc::S_ISGID) != 0 {
                let (dir, name) = self.proc.at(file.as_fd());
                sys::fchmodat(dir, &name, mode, 0)?;
            }
        }
        let path = self.proc.reopen(file.as_fd(), libc::O_PATH)?;
        let entry = self.entry(path, false, parent, name)?;
        if self.no_open_agreed() {
            // In no-open mode Linux 6.1 sends no RELEASE, not even for a file it CREATEd: a
            // handle would never be closed. The file waits for the requests with handle 0.
            let node = self.inodes.get(entry.inode)?;
            let write = flags & libc::O_ACCMODE != libc::O_RDONLY;
            let kept = transient_flags(flags, write);
            self.transient
                .keep(entry.inode, &node, kept, File::from(file));
            return Ok((entry, None));
        }
        let handle = self.handles.insert(entry.inode, File::from(file));
        self.note(|| Record::Open {
            h: handle,
            id: entry.inode,
            flags: flags & !(libc::O_CREAT | libc::O_EXCL | libc::O_TRUNC),
        });
        Ok((entry, Some(handle)))
    }

    /// The open file behind `handle`. Handle 0 (FUSE's no-open mode: the guest opened the
    /// file without a request) opens the node's file for this request: read-only, or, when
    /// `write` gives the guest's open flags, write-only with its O_APPEND and sync flags.
    fn handle_or_open(
        &self,
        inode: u64,
        handle: u64,
        write: Option<u32>,
    ) -> io::Result<Arc<HandleData>> {
        if handle != 0 {
            return self.handles.get(handle, inode);
        }
        let node = self.inodes.get(inode)?;
        if !node.is_file() {
            return Err(errno(libc::EBADF));
        }
        // WRITE and FALLOCATE checked `writable()` already.
        let flags = transient_flags(open_flags(write.unwrap_or(0)), write.is_some());
        self.transient.get_or_open(inode, &node, flags, || {
            Ok(File::from(self.proc.reopen(node.fd(), flags)?))
        })
    }

    /// READ: file to guest memory, no copy through a buffer of ours.
    pub(super) fn do_read(
        &self,
        inode: u64,
        handle: u64,
        w: &mut dyn ZeroCopyWriter,
        size: u32,
        offset: u64,
    ) -> io::Result<usize> {
        let h = self.handle_or_open(inode, handle, None)?;
        let mut f = FileView::of(h.file());
        w.write_from(&mut *f, size as usize, offset)
    }

    /// WRITE: guest memory to file.
    pub(super) fn do_write(
        &self,
        inode: u64,
        handle: u64,
        r: &mut dyn ZeroCopyReader,
        size: u32,
        offset: u64,
        flags: u32,
    ) -> io::Result<usize> {
        let h = self.handle_or_open(inode, handle, Some(flags))?;
        self.drop_privilege_for_write(h.file().as_fd())?;
        let mut f = FileView::of(h.file());
        r.read_to(&mut *f, size as usize, offset)
    }

    /// FSYNC and FSYNCDIR.
    pub(super) fn do_fsync(&self, inode: u64, datasync: bool, handle: u64) -> io::Result<()> {
        let h = self.handle_or_open(inode, handle, None)?;
        if datasync {
            h.file().sync_data()
        } else {
            h.file().sync_all()
        }
    }

    /// FALLOCATE.
    pub(super) fn do_fallocate(
        &self,
        inode: u64,
        handle: u64,
        mode: u32,
        offset: u64,
        length: u64,
    ) -> io::Result<()> {
        let h = self.handle_or_open(inode, handle, Some(0))?;
        let off = i64::try_from(offset).map_err(|_| errno(libc::EINVAL))?;
        let len = i64::try_from(length).map_err(|_| errno(libc::EINVAL))?;
        self.drop_privilege_for_write(h.file().as_fd())?;
        sys::fallocate(h.file().as_fd(), mode as i32, off, len)
    }

    /// LSEEK (SEEK_DATA / SEEK_HOLE; the guest tracks plain positions itself).
    pub(super) fn do_lseek(
        &self,
        inode: u64,
        handle: u64,
        offset: u64,
        whence: u32,
    ) -> io::Result<u64> {
        let h = self.handle_or_open(inode, handle, None)?;
        let off = i64::try_from(offset).map_err(|_| errno(libc::EINVAL))?;
        let _pos = h.lock_position();
        sys::lseek(h.file().as_fd(), off, whence as i32)
    }

    /// STATFS of the file system holding `inode`.
    pub(super) fn do_statfs(&self, inode: u64) -> io::Result<statvfs64> {
        let node = self.inodes.get(inode)?;
        sys::fstatvfs(node.fd())
    }

    /// SETATTR: mode, owner, size and times, each only if asked.
    pub(super) fn do_setattr(
        &self,
        inode: u64,
        attr: &stat64,
        handle: Option<u64>,
        valid: SetattrValid,
    ) -> io::Result<()> {
        let node = self.inodes.get(inode)?;
        if valid.contains(SetattrValid::MODE) {
            if node.is_symlink() {
                return Err(errno(libc::EOPNOTSUPP));
            }
            let kind = sys::fstat(node.fd())?.st_mode & libc::S_IFMT;
            let mode = self.guest_mode(attr.st_mode, kind);
            let (dir, name) = self.proc.at(node.fd());
            sys::fchmodat(dir, &name, mode, 0)?;
        }
        if valid.intersects(SetattrValid::UID | SetattrValid::GID) {
            let uid = if valid.contains(SetattrValid::UID) {
                attr.st_uid
            } else {
                u32::MAX
            };
            let gid = if valid.contains(SetattrValid::GID) {
                attr.st_gid
            } else {
                u32::MAX
            };
            let flags = libc::AT_EMPTY_PATH | libc::AT_SYMLINK_NOFOLLOW;
            sys::fchownat(node.fd(), c"", uid, gid, flags)?;
        }
        if valid.contains(SetattrValid::SIZE) {
            if !node.is_file() {
                return Err(errno(if node.is_dir() {
                    libc::EISDIR
                } else {
                    libc::EINVAL
                }));
            }
            let held = handle.and_then(|h| self.handles.get(h, inode).ok());
            // The guest's own handle first (it may have been opened before a chmod); a
            // read-only handle fails with EINVAL or EBADF and a writable reopen follows.
            let via_handle = held.map(|h| sys::ftruncate(h.file().as_fd(), attr.st_size));
            if !matches!(via_handle, Some(Ok(()))) {
                let f = self.proc.reopen(node.fd(), libc::O_WRONLY)?;
                sys::ftruncate(f.as_fd(), attr.st_size)?;
            }
            // After the size changed (a refused truncate keeps the bits, as on a host).
            self.drop_privilege_for_write(node.fd())?;
        }
        let times = SetattrValid::ATIME | SetattrValid::MTIME;
        if valid.intersects(times) {
            let ts = [
                timespec(
                    attr.st_atime,
                    attr.st_atime_nsec,
                    valid.contains(SetattrValid::ATIME_NOW),
                    valid.contains(SetattrValid::ATIME),
                ),
                timespec(
                    attr.st_mtime,
                    attr.st_mtime_nsec,
                    valid.contains(SetattrValid::MTIME_NOW),
                    valid.contains(SetattrValid::MTIME),
                ),
            ];
            if node.is_symlink() {
                let flags = libc::AT_EMPTY_PATH | libc::AT_SYMLINK_NOFOLLOW;
                sys::utimensat(node.fd(), c"", &ts, flags)?;
            } else {
                let (dir, name) = self.proc.at(node.fd());
                sys::utimensat(dir, &name, &ts, 0)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::MetadataExt;

    use fuse_backend_rs::api::filesystem::{FileSystem, ROOT_ID};

    use super::*;

    #[test]
    fn flags_are_filtered() {
        let f =
            open_flags((libc::O_RDWR | libc::O_CREAT | libc::O_NOFOLLOW | libc::O_DIRECT) as u32);
        assert_eq!(f, libc::O_RDWR);
        assert!(!mutating(libc::O_RDONLY));
        assert!(mutating(libc::O_WRONLY));
        assert!(mutating(libc::O_RDONLY | libc::O_TRUNC));
        assert_eq!(
            open_flags(libc::O_PATH as u32 | libc::O_TMPFILE as u32) & libc::O_ACCMODE,
            0
        );
    }

    fn open_fs(dir: &std::path::Path, cfg: crate::fs::FsConfig) -> SharedFs {
        let root = File::open(dir).unwrap().into();
        let proc = sys::ProcFds::open(c"/proc/self/fd").unwrap();
        SharedFs::new(root, proc, cfg).unwrap()
    }

    /// SETATTR changes mode, owner, size and times as the host sees them; on a symlink it
    /// changes the symlink's own times (never its target's) and refuses a mode. STATFS
    /// reports the host file system.
    #[test]
    fn setattr_and_statfs_act_on_the_host() {
        let tmp = tempfile::tempdir().unwrap();
        let host = tmp.path();
        std::fs::write(host.join("f"), b"0123456789").unwrap();
        std::os::unix::fs::symlink("f", host.join("l")).unwrap();
        let fs = open_fs(host, crate::fs::FsConfig::default());
        let ctx = Context::new();
        let f = fs.lookup(&ctx, ROOT_ID, c"f").unwrap().inode;
        let l = fs.lookup(&ctx, ROOT_ID, c"l").unwrap().inode;
        let meta = |name: &str| std::fs::symlink_metadata(host.join(name)).unwrap();

        let mut attr = fs.getattr(&ctx, f, None).unwrap().0;
        attr.st_mode = 0o640;
        fs.setattr(&ctx, f, attr, None, SetattrValid::MODE).unwrap();
        assert_eq!(meta("f").mode() & 0o7777, 0o640);

        // Root gives the file away; anyone may "give" it to themselves.
        let (uid, gid) = if sm_test_support::is_root() {
            (1234, 5678)
        } else {
            (meta("f").uid(), meta("f").gid())
        };
        (attr.st_uid, attr.st_gid) = (uid, gid);
        let owner = SetattrValid::UID | SetattrValid::GID;
        fs.setattr(&ctx, f, attr, None, owner).unwrap();
        assert_eq!((meta("f").uid(), meta("f").gid()), (uid, gid));

        attr.st_size = 3;
        fs.setattr(&ctx, f, attr, None, SetattrValid::SIZE).unwrap();
        assert_eq!(std::fs::read(host.join("f")).unwrap(), b"012");

        (attr.st_atime, attr.st_atime_nsec) = (1_000_000_000, 5);
        (attr.st_mtime, attr.st_mtime_nsec) = (1_100_000_000, 7);
        let times = SetattrValid::ATIME | SetattrValid::MTIME;
        fs.setattr(&ctx, f, attr, None, times).unwrap();
        let m = meta("f");
        assert_eq!((m.atime(), m.atime_nsec()), (1_000_000_000, 5));
        assert_eq!((m.mtime(), m.mtime_nsec()), (1_100_000_000, 7));

        let mut link_attr = fs.getattr(&ctx, l, None).unwrap().0;
        (link_attr.st_mtime, link_attr.st_mtime_nsec) = (1_200_000_000, 0);
        fs.setattr(&ctx, l, link_attr, None, SetattrValid::MTIME)
            .unwrap();
        assert_eq!(meta("l").mtime(), 1_200_000_000);
        assert_eq!(meta("f").mtime(), 1_100_000_000, "the target was changed");
        let chmod_link = fs.setattr(&ctx, l, link_attr, None, SetattrValid::MODE);
        assert_eq!(
            chmod_link.unwrap_err().raw_os_error(),
            Some(libc::EOPNOTSUPP)
        );

        let now = SetattrValid::MTIME | SetattrValid::MTIME_NOW;
        fs.setattr(&ctx, f, attr, None, now).unwrap();
        assert!(meta("f").mtime() > 1_100_000_000);

        let st = fs.statfs(&ctx, ROOT_ID).unwrap();
        assert!(st.f_bsize > 0 && st.f_blocks > 0 && st.f_namemax > 0);
    }
}

//! Names: lookup, creating and removing entries, rename and hard links. Each takes a parent
//! node and one validated name and acts relative to the parent's descriptor.

use std::ffi::CStr;
use std::io;
use std::os::fd::AsFd;

use fuse_backend_rs::api::filesystem::{Context, Entry};

use super::{errno, SharedFs};
use crate::inode::InodeData;
use crate::sys;

/// rename(2) flags a guest may pass on (RENAME_WHITEOUT would need CAP_MKNOD).
const RENAME_ALLOWED: u32 = libc::RENAME_NOREPLACE | libc::RENAME_EXCHANGE;

impl SharedFs {
    /// LOOKUP: finds `name` in `parent` under the symlink policy.
    pub(super) fn do_lookup(&self, parent: u64, name: &CStr) -> io::Result<Entry> {
        let dir = self.dir(parent)?;
        self.lookup_in(&dir, name)
    }

    /// LOOKUP of the validated `name` in the directory `dir`; an entry returned is one more
    /// kernel reference to its node (undone by FORGET).
    pub(super) fn lookup_in(&self, dir: &InodeData, name: &CStr) -> io::Result<Entry> {
        let fd = sys::open_path(dir.fd(), name, self.cfg.symlinks.follows())?;
        let st = sys::fstat(fd.as_fd())?;
        if st.st_mode & libc::S_IFMT == libc::S_IFLNK && self.cfg.symlinks.hides_escaping_symlinks()
        {
            let inside = self.symlink_inside(dir, &fd)?;
            self.cfg.symlinks.check_lookup_symlink(inside)?;
        }
        self.entry(fd, false)
    }

    /// The entry for `name`, just created in `dir` by the guest (never followed).
    fn created(&self, ctx: &Context, dir: &InodeData, name: &CStr) -> io::Result<Entry> {
        self.set_owner(ctx, dir, name);
        let fd = sys::open_path(dir.fd(), name, false)?;
        let st = sys::fstat(fd.as_fd())?;
        let hidden = st.st_mode & libc::S_IFMT == libc::S_IFLNK
            && self.cfg.symlinks.hides_escaping_symlinks()
            && !self.symlink_inside(dir, &fd)?;
        self.entry(fd, hidden)
    }

    /// Gives a new entry the guest caller's owner, when the backend may (it ran as root).
    fn set_owner(&self, ctx: &Context, dir: &InodeData, name: &CStr) {
        if !self.cfg.chown_new {
            return;
        }
        let r = sys::fchownat(dir.fd(), name, ctx.uid, ctx.gid, libc::AT_SYMLINK_NOFOLLOW);
        if let Err(e) = r {
            tracing::debug!("cannot give {name:?} to {}:{}: {e}", ctx.uid, ctx.gid);
        }
    }

    /// SYMLINK: stores `link` byte for byte (never interpreted on the host).
    pub(super) fn do_symlink(
        &self,
        ctx: &Context,
        link: &CStr,
        parent: u64,
        name: &CStr,
    ) -> io::Result<Entry> {
        self.writable()?;
        self.cfg.symlinks.check_create_symlink()?;
        let dir = self.dir(parent)?;
        sys::symlinkat(link, dir.fd(), name)?;
        self.created(ctx, &dir, name)
    }

    /// MKNOD: regular files, FIFOs and sockets; device nodes only with `--allow-devices`
    /// (else EPERM), as a guest could otherwise plant one on the host when the backend runs
    /// with full privileges.
    pub(super) fn do_mknod(
        &self,
        ctx: &Context,
        parent: u64,
        name: &CStr,
        mode: u32,
        rdev: u32,
    ) -> io::Result<Entry> {
        self.writable()?;
        // No device nodes unless allowed, whatever capabilities the process has
        // (`--sandbox none`).
        match mode & libc::S_IFMT {
            libc::S_IFREG | libc::S_IFIFO | libc::S_IFSOCK => {}
            libc::S_IFCHR | libc::S_IFBLK if self.cfg.allow_devices => {}
            _ => return Err(errno(libc::EPERM)),
        }
        let dir = self.dir(parent)?;
        sys::mknodat(dir.fd(), name, mode as libc::mode_t, rdev.into())?;
        self.created(ctx, &dir, name)
    }

    /// MKDIR.
    pub(super) fn do_mkdir(
        &self,
        ctx: &Context,
        parent: u64,
        name: &CStr,
        mode: u32,
    ) -> io::Result<Entry> {
        self.writable()?;
        let dir = self.dir(parent)?;
        sys::mkdirat(dir.fd(), name, mode as libc::mode_t)?;
        self.created(ctx, &dir, name)
    }

    /// UNLINK (`flags` 0) and RMDIR (`AT_REMOVEDIR`).
    pub(super) fn do_remove(&self, parent: u64, name: &CStr, flags: i32) -> io::Result<()> {
        self.writable()?;
        let dir = self.dir(parent)?;
        sys::unlinkat(dir.fd(), name, flags)
    }

    /// RENAME and RENAME2.
    pub(super) fn do_rename(
        &self,
        olddir: u64,
        oldname: &CStr,
        newdir: u64,
        newname: &CStr,
        flags: u32,
    ) -> io::Result<()> {
        self.writable()?;
        if flags & !RENAME_ALLOWED != 0 {
            return Err(errno(libc::EINVAL));
        }
        let (from, to) = (self.dir(olddir)?, self.dir(newdir)?);
        sys::renameat2(from.fd(), oldname, to.fd(), newname, flags)
    }

    /// LINK: a new name for `inode` in `newparent`.
    pub(super) fn do_link(&self, inode: u64, newparent: u64, newname: &CStr) -> io::Result<Entry> {
        self.writable()?;
        self.cfg.symlinks.check_create_link()?;
        let node = self.inodes.get(inode)?;
        let dir = self.dir(newparent)?;
        if node.is_dir() {
            return Err(errno(libc::EPERM));
        }
        if node.is_symlink() {
            sys::linkat(node.fd(), c"", dir.fd(), newname, libc::AT_EMPTY_PATH)?;
        } else {
            // linkat(AT_EMPTY_PATH) needs CAP_DAC_READ_SEARCH; the /proc name does not.
            let (procdir, procname) = self.proc.at(node.fd());
            sys::linkat(
                procdir,
                &procname,
                dir.fd(),
                newname,
                libc::AT_SYMLINK_FOLLOW,
            )?;
        }
        let fd = sys::open_path(dir.fd(), newname, false)?;
        self.entry(fd, false)
    }
}

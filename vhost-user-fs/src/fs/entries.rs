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
        self.lookup_in(parent, &dir, name)
    }

    /// LOOKUP of the validated `name` in the directory `dir`; an entry returned is one more
    /// kernel reference to its node (undone by FORGET).
    pub(super) fn lookup_in(&self, parent: u64, dir: &InodeData, name: &CStr) -> io::Result<Entry> {
        let (fd, _) = self.resolve_in(dir, name)?;
        self.entry(fd, false, parent, name)
    }

    /// What LOOKUP finds for the validated `name` in `dir` under the symlink policy, with
    /// its `stat`, without registering it (also how a snapshot's paths are reopened).
    pub(super) fn resolve_in(
        &self,
        dir: &InodeData,
        name: &CStr,
    ) -> io::Result<(std::os::fd::OwnedFd, libc::stat64)> {
        let fd = sys::open_path(dir.fd(), name, self.cfg.symlinks.follows())?;
        let st = sys::fstat(fd.as_fd())?;
        if st.st_mode & libc::S_IFMT == libc::S_IFLNK && self.cfg.symlinks.hides_escaping_symlinks()
        {
            let inside = self.symlink_inside(dir, &fd)?;
            self.cfg.symlinks.check_lookup_symlink(inside)?;
        }
        Ok((fd, st))
    }

    /// The entry for `name`, just created in `dir` by the guest (never followed).
    fn created(
        &self,
        ctx: &Context,
        parent: u64,
        dir: &InodeData,
        name: &CStr,
    ) -> io::Result<Entry> {
        self.set_owner(ctx, dir, name);
        let fd = sys::open_path(dir.fd(), name, false)?;
        let st = sys::fstat(fd.as_fd())?;
        let hidden = st.st_mode & libc::S_IFMT == libc::S_IFLNK
            && self.cfg.symlinks.hides_escaping_symlinks()
            && !self.symlink_inside(dir, &fd)?;
        self.entry(fd, hidden, parent, name)
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
        self.created(ctx, parent, &dir, name)
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
        let mode = (mode & libc::S_IFMT) | self.guest_mode(mode, mode & libc::S_IFMT);
        sys::mknodat(dir.fd(), name, mode as libc::mode_t, rdev.into())?;
        self.created(ctx, parent, &dir, name)
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
        let mode = self.guest_mode(mode, libc::S_IFDIR);
        sys::mkdirat(dir.fd(), name, mode as libc::mode_t)?;
        self.created(ctx, parent, &dir, name)
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
        self.entry(fd, false, newparent, newname)
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::MetadataExt;
    use std::path::Path;

    use fuse_backend_rs::api::filesystem::{Context, FileSystem, ROOT_ID};

    use super::*;
    use crate::fs::FsConfig;
    use crate::sys::ProcFds;

    fn open_fs(dir: &Path, cfg: FsConfig) -> SharedFs {
        let root = std::fs::File::open(dir).unwrap().into();
        let proc = ProcFds::open(c"/proc/self/fd").unwrap();
        SharedFs::new(root, proc, cfg).unwrap()
    }

    fn errno_of<T>(r: io::Result<T>) -> Option<i32> {
        r.err().and_then(|e| e.raw_os_error())
    }

    /// MKDIR, SYMLINK, LINK, RENAME (plain, RENAME_NOREPLACE, RENAME_EXCHANGE; others
    /// refused), UNLINK and RMDIR change the host directory as the guest asked.
    #[test]
    fn names_change_on_the_host_as_asked() {
        let tmp = tempfile::tempdir().unwrap();
        let host = tmp.path();
        std::fs::write(host.join("f"), b"file").unwrap();
        std::fs::write(host.join("g"), b"other").unwrap();
        let fs = open_fs(host, FsConfig::default());
        let ctx = Context::new();

        let d = fs.mkdir(&ctx, ROOT_ID, c"d", 0o777, 0o022).unwrap();
        let meta = std::fs::symlink_metadata(host.join("d")).unwrap();
        assert!(meta.is_dir());
        assert_eq!(meta.mode() & 0o7777, 0o755);

        fs.symlink(&ctx, c"/etc/passwd", d.inode, c"escape")
            .unwrap();
        let target = std::fs::read_link(host.join("d/escape")).unwrap();
        assert_eq!(target, Path::new("/etc/passwd"));

        let f = fs.lookup(&ctx, ROOT_ID, c"f").unwrap();
        fs.link(&ctx, f.inode, d.inode, c"hard").unwrap();
        let (a, b) = (
            std::fs::metadata(host.join("f")).unwrap(),
            std::fs::metadata(host.join("d/hard")).unwrap(),
        );
        assert_eq!((b.ino(), b.nlink()), (a.ino(), 2));

        let noreplace = fs.rename(&ctx, ROOT_ID, c"f", ROOT_ID, c"g", libc::RENAME_NOREPLACE);
        assert_eq!(errno_of(noreplace), Some(libc::EEXIST));
        fs.rename(&ctx, ROOT_ID, c"f", ROOT_ID, c"g", libc::RENAME_EXCHANGE)
            .unwrap();
        assert_eq!(std::fs::read(host.join("f")).unwrap(), b"other");
        assert_eq!(std::fs::read(host.join("g")).unwrap(), b"file");
        let whiteout = fs.rename(&ctx, ROOT_ID, c"f", ROOT_ID, c"h", libc::RENAME_WHITEOUT);
        assert_eq!(errno_of(whiteout), Some(libc::EINVAL));
        fs.rename(&ctx, ROOT_ID, c"g", d.inode, c"moved", 0)
            .unwrap();
        assert_eq!(std::fs::read(host.join("d/moved")).unwrap(), b"file");
        assert!(!host.join("g").exists());

        assert_eq!(
            errno_of(fs.rmdir(&ctx, ROOT_ID, c"d")),
            Some(libc::ENOTEMPTY)
        );
        for name in [c"escape", c"hard", c"moved"] {
            fs.unlink(&ctx, d.inode, name).unwrap();
        }
        fs.rmdir(&ctx, ROOT_ID, c"d").unwrap();
        assert!(!host.join("d").exists());
    }

    /// As root: a hard link to a symlink is a second name of the symlink itself (never of
    /// its target), and with `chown_new` every new entry belongs to the guest's caller.
    #[test]
    fn symlink_links_and_new_owners_as_root() {
        if !sm_test_support::require(sm_test_support::is_root(), "root (linkat AT_EMPTY_PATH)") {
            return;
        }
        let tmp = tempfile::tempdir().unwrap();
        let host = tmp.path();
        let cfg = FsConfig {
            chown_new: true,
            ..FsConfig::default()
        };
        let fs = open_fs(host, cfg);
        let ctx = Context {
            uid: 1234,
            gid: 5678,
            pid: 1,
        };
        let link = fs
            .symlink(&ctx, c"/etc/passwd", ROOT_ID, c"escape")
            .unwrap();
        fs.link(&ctx, link.inode, ROOT_ID, c"second").unwrap();
        let second = std::fs::symlink_metadata(host.join("second")).unwrap();
        assert!(second.is_symlink());
        assert_eq!(second.nlink(), 2);
        let target = std::fs::read_link(host.join("second")).unwrap();
        assert_eq!(target, Path::new("/etc/passwd"));

        fs.mkdir(&ctx, ROOT_ID, c"d", 0o755, 0).unwrap();
        let fifo = libc::S_IFIFO | 0o644;
        fs.mknod(&ctx, ROOT_ID, c"fifo", fifo, 0, 0).unwrap();
        for name in ["escape", "d", "fifo"] {
            let meta = std::fs::symlink_metadata(host.join(name)).unwrap();
            assert_eq!((meta.uid(), meta.gid()), (1234, 5678), "{name}");
        }
    }
}

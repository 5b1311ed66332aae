//! The file system the guest sees: a FUSE [`FileSystem`] over one host directory that
//! enforces [`crate::policy`] itself instead of trusting paths.
//!
//! Every host operation starts from an `O_PATH | O_NOFOLLOW` descriptor in the
//! [`InodeTable`] and names at most one validated component, opened with
//! `RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS` (except under `--symlinks follow`), so neither
//! `..`, nor a rename race, nor a planted symlink gets the backend outside the shared
//! directory. Files are reopened for I/O through `/proc/self/fd` ([`ProcFds`]), never by path.
//!
//! The operations are split by concern: [`entries`] (names: lookup, create, remove, rename,
//! links), [`files`] (open files and attributes), [`dirs`] (directory listing, with LOOKUP's answers for READDIRPLUS) and
//! [`xattrs`]; this module holds the shared state and the trait's dispatch. [`state`] saves
//! and reopens the inode and handle tables for snapshots.

mod dirs;
mod entries;
mod files;
pub mod state;
mod xattrs;

use std::collections::HashMap;
use std::ffi::CStr;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fuse_backend_rs::abi::fuse_abi::{stat64, statvfs64, CreateIn};
use fuse_backend_rs::api::filesystem::{
    Context, DirEntry, Entry, FileSystem, FsOptions, GetxattrReply, ListxattrReply, OpenOptions,
    SetattrValid, ZeroCopyReader, ZeroCopyWriter,
};

use fuse_backend_rs::abi::virtio_fs::RemovemappingOne;
use fuse_backend_rs::transport::FsCacheReqHandler;

use crate::handle::{HandleTable, TransientFiles};
use crate::idmap::IdMaps;
use crate::inode::{InodeData, InodeKey, InodeTable};
use crate::journal::{Journal, Record};
use crate::policy::{self, CacheMode, SymlinkPolicy, ALWAYS_TIMEOUT_SECS, AUTO_TIMEOUT_MS};
use crate::sys::{self, ProcFds};
use crate::watch::Watcher;

/// Deepest directory (below the root) whose symlinks can be judged; deeper ones are hidden.
const MAX_DEPTH: usize = 4096;

/// How the file system behaves; fixed for the life of the process.
#[derive(Clone, Copy, Debug)]
pub struct FsConfig {
    /// `--symlinks`.
    pub symlinks: SymlinkPolicy,
    /// `--read-only`: every change fails with EROFS.
    pub read_only: bool,
    /// `--cache`.
    pub cache: CacheMode,
    /// Give new files the guest caller's owner (the backend runs as root on the host).
    pub chown_new: bool,
    /// `--allow-devices`: MKNOD may make character and block device nodes (trusted guests
    /// only: a guest-made `/dev/mem` node on a host directory is a host escalation).
    pub allow_devices: bool,
    /// `--allow-setuid`: keep the setuid and setgid bits the guest sets (trusted guests
    /// only). Without it they are cleared, as a `nosuid` mount makes them inert: a guest
    /// cannot leave a setuid-root program (or file capabilities) on the host.
    pub allow_setuid: bool,
    /// FUSE's no-open mode (on unless `--open-requests` or a DAX window): OPEN of a regular
    /// file is declined, so the guest opens files without a request and its READs and
    /// WRITEs (handle 0) open the file for themselves. Only with a writable share (a read-only one must fail an
    /// open for writing) and cache `auto` or `always` (`never` needs OPEN's DIRECT_IO).
    pub no_open: bool,
}

impl Default for FsConfig {
    /// The binary's defaults: symlinks `opaque`, writable, cache `auto`, no-open mode.
    fn default() -> FsConfig {
        FsConfig {
            symlinks: SymlinkPolicy::default(),
            read_only: false,
            cache: CacheMode::default(),
            chown_new: false,
            allow_devices: false,
            allow_setuid: false,
            no_open: true,
        }
    }
}

/// The shared directory as a FUSE file system.
pub struct SharedFs {
    cfg: FsConfig,
    root: OwnedFd,
    inodes: InodeTable,
    handles: HandleTable,
    /// Files opened for requests with handle 0 (no-open mode).
    transient: TransientFiles,
    proc: ProcFds,
    /// Depth below the root of directories whose symlinks were judged; valid until the
    /// watcher reports a host change (without a watcher nothing is cached).
    depths: Mutex<HashMap<InodeKey, usize>>,
    watcher: Option<Watcher>,
    /// What the last FUSE INIT agreed (or a snapshot's), as `FsOptions` bits.
    fuse_options: Mutex<Option<u64>>,
    /// `--translate-uid` and `--translate-gid`.
    ids: IdMaps,
    /// `--state-fd`: where every table change is recorded for a backend after a crash.
    journal: Option<Arc<Journal>>,
}

/// Shorthand for an errno as an `io::Error`.
fn errno(e: i32) -> io::Error {
    io::Error::from_raw_os_error(e)
}

impl SharedFs {
    /// Serves the directory `root` (an `O_PATH` directory descriptor) with `proc` open on
    /// this process's `/proc/self/fd`.
    pub fn new(root: OwnedFd, proc: ProcFds, cfg: FsConfig) -> io::Result<SharedFs> {
        let st = sys::fstat(root.as_fd())?;
        if st.st_mode & libc::S_IFMT != libc::S_IFDIR {
            return Err(errno(libc::ENOTDIR));
        }
        let inodes = InodeTable::new(root.try_clone()?, &st);
        Ok(SharedFs {
            cfg,
            root,
            inodes,
            handles: HandleTable::default(),
            transient: TransientFiles::default(),
            proc,
            depths: Mutex::new(HashMap::new()),
            watcher: None,
            fuse_options: Mutex::new(None),
            ids: IdMaps::default(),
            journal: None,
        })
    }

    /// Serves the directory at path `dir` without a sandbox (tests): opens it and `/proc/self/fd`.
    pub fn open_dir(dir: &Path, cfg: FsConfig) -> io::Result<SharedFs> {
        let root = sys::open_dir_path(dir)?;
        let proc = ProcFds::open(c"/proc/self/fd")?;
        SharedFs::new(root, proc, cfg)
    }

    /// Caches directory depths, dropping them whenever `watcher` sees a host change.
    pub fn with_watcher(mut self, watcher: Watcher) -> SharedFs {
        self.watcher = Some(watcher);
        self
    }

    /// Records every change to the tables in `journal`.
    pub fn with_journal(mut self, journal: Arc<Journal>) -> SharedFs {
        self.journal = Some(journal);
        self
    }

    /// Appends the record `rec` builds to the journal, if there is one.
    fn note(&self, rec: impl FnOnce() -> Record) {
        if let Some(j) = &self.journal {
            j.record(rec());
        }
    }

    /// Drops `count` kernel references to node `id`.
    fn forget_node(&self, id: u64, count: u64) {
        self.inodes.forget(id, count);
        self.transient.forget(id);
        self.note(|| Record::Forget { id, n: count });
    }

    /// Translates owners between guest and host IDs by `ids`.
    pub fn with_id_maps(mut self, ids: IdMaps) -> SharedFs {
        self.ids = ids;
        self
    }

    /// The guest caller's context with host IDs (EPERM for an ID the guest may not use).
    fn host_ctx(&self, ctx: &Context) -> io::Result<Context> {
        let uid = self.ids.uids.to_host(ctx.uid);
        let gid = self.ids.gids.to_host(ctx.gid);
        match (uid, gid) {
            (Some(uid), Some(gid)) => Ok(Context {
                uid,
                gid,
                pid: ctx.pid,
            }),
            _ => Err(errno(libc::EPERM)),
        }
    }

    /// Host attributes with the owner the guest sees.
    fn guest_attr(&self, mut st: stat64) -> stat64 {
        st.st_uid = self.ids.uids.to_guest(st.st_uid);
        st.st_gid = self.ids.gids.to_guest(st.st_gid);
        st
    }

    /// An entry with the owner the guest sees.
    fn guest_entry(&self, mut e: Entry) -> Entry {
        e.attr = self.guest_attr(e.attr);
        e
    }

    /// The configuration.
    pub fn config(&self) -> FsConfig {
        self.cfg
    }

    /// Forgets every inode and handle (a new FUSE session or its end).
    fn reset(&self) {
        self.handles.clear();
        self.transient.clear();
        match self.root.try_clone().and_then(|fd| {
            let st = sys::fstat(fd.as_fd())?;
            Ok((fd, st))
        }) {
            Ok((fd, st)) => self.inodes.reset(fd, &st),
            Err(e) => tracing::warn!("cannot reset the inode table: {e}"),
        }
    }

    /// The FUSE options this file system asks for at INIT (the kernel agrees to a subset).
    fn wanted(&self) -> FsOptions {
        // ASYNC_DIO: the guest sends the pieces of one large O_DIRECT request together
        // instead of waiting for each (a 1 MiB read is two requests at 252 pages each).
        let mut want = FsOptions::ASYNC_READ
            | FsOptions::ASYNC_DIO
            | FsOptions::BIG_WRITES
            | FsOptions::PARALLEL_DIROPS
            | FsOptions::MAX_PAGES
            | FsOptions::ATOMIC_O_TRUNC
            | FsOptions::DO_READDIRPLUS
            | FsOptions::READDIRPLUS_AUTO;
        if self.cfg.cache == CacheMode::Auto {
            want |= FsOptions::AUTO_INVAL_DATA;
        }
        if self.no_open_wanted() {
            // The kernel takes an ENOSYS from OPEN as "no-open mode" (see `init`).
            want |= FsOptions::ZERO_MESSAGE_OPEN;
        }
        want
    }

    /// Whether this file system declines OPEN (see [`FsConfig::no_open`]).
    fn no_open_wanted(&self) -> bool {
        self.cfg.no_open && !self.cfg.read_only && self.cfg.cache != CacheMode::Never
    }

    /// Whether this session runs in no-open mode (asked for, and the kernel can).
    pub(super) fn no_open_agreed(&self) -> bool {
        self.fuse_options
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_some_and(|o| o & FsOptions::ZERO_MESSAGE_OPEN.bits() != 0)
    }

    /// How long the guest may trust a name or attributes.
    fn timeout(&self) -> Duration {
        match self.cfg.cache {
            CacheMode::Auto => Duration::from_millis(AUTO_TIMEOUT_MS),
            CacheMode::Always => Duration::from_secs(ALWAYS_TIMEOUT_SECS),
            CacheMode::Never => Duration::ZERO,
        }
    }

    /// `mode` as the guest may set it on a node of type `kind` (`S_IFDIR`, `S_IFREG`, ...):
    /// without `--allow-setuid`, no setuid bit, and no setgid bit except on a directory
    /// (there it only makes new entries inherit the directory's group, as on any host).
    pub(crate) fn guest_mode(&self, mode: u32, kind: u32) -> u32 {
        policy::strip_privilege(mode, kind, self.cfg.allow_setuid)
    }

    /// Before the guest changes a file's data (write, truncate, O_TRUNC, fallocate, a
    /// writable DAX mapping): clears the setuid bit, and the setgid bit of a
    /// group-executable file, as the kernel does when a process without CAP_FSETID does so;
    /// the backend itself usually has that capability, so it must do this on the guest's
    /// behalf (unless `--allow-setuid`). `fd` is the file, open or `O_PATH`.
    pub(crate) fn drop_privilege_for_write(&self, fd: BorrowedFd<'_>) -> io::Result<()> {
        if self.cfg.allow_setuid {
            return Ok(());
        }
        if let Some(kept) = policy::kill_privilege_on_write(sys::fstat(fd)?.st_mode) {
            let (dir, name) = self.proc.at(fd);
            match sys::fchmodat(dir, &name, kept, 0) {
                // Not the owner and no CAP_FOWNER: then no CAP_FSETID either (the usual
                // unprivileged backend), and the kernel clears the bits itself as it writes.
                Err(e) if e.raw_os_error() == Some(libc::EPERM) => {
                    tracing::debug!("cannot clear setuid/setgid before a write: {e}");
                }
                r => r?,
            }
        }
        Ok(())
    }

    /// EROFS under `--read-only`.
    fn writable(&self) -> io::Result<()> {
        policy::check_writable(self.cfg.read_only)
    }

    /// The directory with node ID `id` (ENOTDIR for anything else).
    fn dir(&self, id: u64) -> io::Result<Arc<InodeData>> {
        let d = self.inodes.get(id)?;
        if !d.is_dir() {
            return Err(errno(libc::ENOTDIR));
        }
        Ok(d)
    }

    /// Registers `fd` (an `O_PATH` descriptor), found as `name` in directory `parent`, and
    /// answers with its entry; a `hidden` entry is not cached by the guest, so its next
    /// LOOKUP meets the policy.
    fn entry(&self, fd: OwnedFd, hidden: bool, parent: u64, name: &CStr) -> io::Result<Entry> {
        let st = sys::fstat(fd.as_fd())?;
        let inode = self.inodes.insert(fd, &st);
        self.note(|| Record::Node {
            id: inode,
            parent,
            name: name.to_bytes().to_vec(),
            kind: st.st_mode & libc::S_IFMT,
            ino: st.st_ino,
            n: 1,
        });
        Ok(Entry {
            inode,
            generation: 0,
            attr: st,
            attr_flags: 0,
            attr_timeout: self.timeout(),
            entry_timeout: if hidden {
                Duration::ZERO
            } else {
                self.timeout()
            },
        })
    }

    /// How many levels below the root directory `dir` is, from the cache or by walking `..`.
    fn depth(&self, dir: &InodeData) -> Option<usize> {
        let Some(watcher) = &self.watcher else {
            return self.walk_depth(dir, None);
        };
        let mut cache = self.depths.lock().unwrap_or_else(|e| e.into_inner());
        if watcher.changed() {
            cache.clear();
        }
        if let Some(d) = cache.get(&dir.key) {
            return Some(*d);
        }
        drop(cache);
        let depth = self.walk_depth(dir, Some(watcher))?;
        self.depths
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(dir.key, depth);
        Some(depth)
    }

    /// Walks `..` on the host from `dir` to the root; `None` when the walk never meets the
    /// root (the directory was moved out of the tree). With a watcher, each directory on the
    /// way is watched before its parent is opened, so a later move is always reported.
    fn walk_depth(&self, dir: &InodeData, watcher: Option<&Watcher>) -> Option<usize> {
        let root = self.inodes.root_key().ok()?;
        if dir.key == root {
            return Some(0);
        }
        let watch = |fd: BorrowedFd<'_>| watcher.map_or(Some(()), |w| w.watch(fd).ok());
        watch(dir.fd())?;
        let mut cur = sys::parent_of(dir.fd()).ok()?;
        let mut prev = dir.key;
        for depth in 1..=MAX_DEPTH {
            let st = sys::fstat(cur.as_fd()).ok()?;
            let key = (st.st_dev, st.st_ino);
            if key == root {
                return Some(depth);
            }
            if key == prev {
                return None; // "/" is its own parent: the root was never met.
            }
            prev = key;
            watch(cur.as_fd())?;
            cur = sys::parent_of(cur.as_fd()).ok()?;
        }
        None
    }

    /// Whether the symlink `link` (an `O_PATH` descriptor) in `dir` points inside the tree.
    fn symlink_inside(&self, dir: &InodeData, link: &OwnedFd) -> io::Result<bool> {
        let target = sys::readlink(link.as_fd())?;
        Ok(self
            .depth(dir)
            .is_some_and(|d| policy::target_stays_inside(d, &target)))
    }
}

/// Splits a guest name into a validated `CStr`.
fn name_ok(name: &CStr) -> io::Result<&CStr> {
    policy::validate_name(name.to_bytes())?;
    Ok(name)
}

impl FileSystem for SharedFs {
    type Inode = u64;
    type Handle = u64;

    fn init(&self, capable: FsOptions) -> io::Result<FsOptions> {
        self.reset();
        let mut agreed = self.wanted() & capable;
        if agreed.contains(FsOptions::ZERO_MESSAGE_OPEN) {
            // Without an OPEN, O_TRUNC must come as a SETATTR.
            agreed -= FsOptions::ATOMIC_O_TRUNC;
            tracing::info!("no-open mode: the guest opens files without a request");
        }
        *self.fuse_options.lock().unwrap_or_else(|e| e.into_inner()) = Some(agreed.bits());
        self.note(|| Record::Session {
            options: Some(agreed.bits()),
        });
        Ok(agreed)
    }

    fn destroy(&self) {
        self.reset();
        *self.fuse_options.lock().unwrap_or_else(|e| e.into_inner()) = None;
        self.note(|| Record::Session { options: None });
    }

    fn lookup(&self, _ctx: &Context, parent: u64, name: &CStr) -> io::Result<Entry> {
        self.do_lookup(parent, name_ok(name)?)
            .map(|e| self.guest_entry(e))
    }

    fn forget(&self, _ctx: &Context, inode: u64, count: u64) {
        self.forget_node(inode, count);
    }

    fn getattr(
        &self,
        _ctx: &Context,
        inode: u64,
        _handle: Option<u64>,
    ) -> io::Result<(stat64, Duration)> {
        let node = self.inodes.get(inode)?;
        Ok((self.guest_attr(sys::fstat(node.fd())?), self.timeout()))
    }

    fn setattr(
        &self,
        _ctx: &Context,
        inode: u64,
        attr: stat64,
        handle: Option<u64>,
        valid: SetattrValid,
    ) -> io::Result<(stat64, Duration)> {
        self.writable()?;
        let mut attr = attr;
        let forbidden = || errno(libc::EPERM);
        if valid.contains(SetattrValid::UID) {
            attr.st_uid = self.ids.uids.to_host(attr.st_uid).ok_or_else(forbidden)?;
        }
        if valid.contains(SetattrValid::GID) {
            attr.st_gid = self.ids.gids.to_host(attr.st_gid).ok_or_else(forbidden)?;
        }
        self.do_setattr(inode, &attr, handle, valid)?;
        let node = self.inodes.get(inode)?;
        Ok((self.guest_attr(sys::fstat(node.fd())?), self.timeout()))
    }

    fn readlink(&self, _ctx: &Context, inode: u64) -> io::Result<Vec<u8>> {
        let node = self.inodes.get(inode)?;
        if !node.is_symlink() {
            return Err(errno(libc::EINVAL));
        }
        sys::readlink(node.fd())
    }

    fn symlink(&self, ctx: &Context, link: &CStr, parent: u64, name: &CStr) -> io::Result<Entry> {
        let ctx = self.host_ctx(ctx)?;
        self.do_symlink(&ctx, link, parent, name_ok(name)?)
            .map(|e| self.guest_entry(e))
    }

    fn mknod(
        &self,
        ctx: &Context,
        parent: u64,
        name: &CStr,
        mode: u32,
        rdev: u32,
        umask: u32,
    ) -> io::Result<Entry> {
        let ctx = self.host_ctx(ctx)?;
        self.do_mknod(&ctx, parent, name_ok(name)?, mode & !umask, rdev)
            .map(|e| self.guest_entry(e))
    }

    fn mkdir(
        &self,
        ctx: &Context,
        parent: u64,
        name: &CStr,
        mode: u32,
        umask: u32,
    ) -> io::Result<Entry> {
        let ctx = self.host_ctx(ctx)?;
        self.do_mkdir(&ctx, parent, name_ok(name)?, mode & !umask)
            .map(|e| self.guest_entry(e))
    }

    fn unlink(&self, _ctx: &Context, parent: u64, name: &CStr) -> io::Result<()> {
        self.do_remove(parent, name_ok(name)?, 0)?;
        self.note(|| Record::Remove {
            dir: parent,
            name: name.to_bytes().to_vec(),
        });
        Ok(())
    }

    fn rmdir(&self, _ctx: &Context, parent: u64, name: &CStr) -> io::Result<()> {
        self.do_remove(parent, name_ok(name)?, libc::AT_REMOVEDIR)?;
        self.note(|| Record::Remove {
            dir: parent,
            name: name.to_bytes().to_vec(),
        });
        Ok(())
    }

    fn rename(
        &self,
        _ctx: &Context,
        olddir: u64,
        oldname: &CStr,
        newdir: u64,
        newname: &CStr,
        flags: u32,
    ) -> io::Result<()> {
        self.do_rename(olddir, name_ok(oldname)?, newdir, name_ok(newname)?, flags)?;
        self.note(|| Record::Rename {
            old_dir: olddir,
            old_name: oldname.to_bytes().to_vec(),
            new_dir: newdir,
            new_name: newname.to_bytes().to_vec(),
            exchange: flags & libc::RENAME_EXCHANGE != 0,
        });
        Ok(())
    }

    fn link(
        &self,
        _ctx: &Context,
        inode: u64,
        newparent: u64,
        newname: &CStr,
    ) -> io::Result<Entry> {
        self.do_link(inode, newparent, name_ok(newname)?)
            .map(|e| self.guest_entry(e))
    }

    fn open(
        &self,
        _ctx: &Context,
        inode: u64,
        flags: u32,
        _fuse_flags: u32,
    ) -> io::Result<(Option<u64>, OpenOptions, Option<u32>)> {
        // The kernel takes ENOSYS as "no-open mode" and sends no more OPENs of files.
        if self.no_open_agreed() && self.inodes.get(inode)?.is_file() {
            return Err(errno(libc::ENOSYS));
        }
        let handle = self.do_open(inode, flags)?;
        Ok((Some(handle), self.open_options(), None))
    }

    fn create(
        &self,
        ctx: &Context,
        parent: u64,
        name: &CStr,
        args: CreateIn,
    ) -> io::Result<(Entry, Option<u64>, OpenOptions, Option<u32>)> {
        let ctx = self.host_ctx(ctx)?;
        let (entry, handle) = self.do_create(&ctx, parent, name_ok(name)?, &args)?;
        Ok((self.guest_entry(entry), handle, self.open_options(), None))
    }

    fn read(
        &self,
        _ctx: &Context,
        inode: u64,
        handle: u64,
        w: &mut dyn ZeroCopyWriter,
        size: u32,
        offset: u64,
        _lock_owner: Option<u64>,
        _flags: u32,
    ) -> io::Result<usize> {
        self.do_read(inode, handle, w, size, offset)
    }

    fn setupmapping(
        &self,
        _ctx: &Context,
        inode: u64,
        _handle: u64,
        foffset: u64,
        len: u64,
        flags: u64,
        moffset: u64,
        vu_req: &mut dyn FsCacheReqHandler,
    ) -> io::Result<()> {
        self.do_setupmapping(inode, foffset, len, flags, moffset, vu_req)
    }

    fn removemapping(
        &self,
        _ctx: &Context,
        _inode: u64,
        requests: Vec<RemovemappingOne>,
        vu_req: &mut dyn FsCacheReqHandler,
    ) -> io::Result<()> {
        vu_req.unmap(requests)
    }

    fn write(
        &self,
        _ctx: &Context,
        inode: u64,
        handle: u64,
        r: &mut dyn ZeroCopyReader,
        size: u32,
        offset: u64,
        _lock_owner: Option<u64>,
        _delayed_write: bool,
        flags: u32,
        _fuse_flags: u32,
    ) -> io::Result<usize> {
        self.writable()?;
        self.do_write(inode, handle, r, size, offset, flags)
    }

    /// Not implemented, on purpose: FLUSH (sent on every close, and waited for) would
    /// only release POSIX locks, which stay in the guest's kernel since this file system
    /// does not ask for `POSIX_LOCKS`; written data is already on the host (no writeback
    /// cache). ENOSYS once makes the guest stop sending it: one round trip less per close.
    fn flush(&self, _ctx: &Context, _inode: u64, _handle: u64, _owner: u64) -> io::Result<()> {
        Err(io::Error::from_raw_os_error(libc::ENOSYS))
    }

    fn fsync(&self, _ctx: &Context, inode: u64, datasync: bool, handle: u64) -> io::Result<()> {
        self.do_fsync(inode, datasync, handle)
    }

    fn fallocate(
        &self,
        _ctx: &Context,
        inode: u64,
        handle: u64,
        mode: u32,
        offset: u64,
        length: u64,
    ) -> io::Result<()> {
        self.writable()?;
        self.do_fallocate(inode, handle, mode, offset, length)
    }

    fn release(
        &self,
        _ctx: &Context,
        inode: u64,
        _flags: u32,
        handle: u64,
        _flush: bool,
        _flock_release: bool,
        _lock_owner: Option<u64>,
    ) -> io::Result<()> {
        if handle == 0 {
            // A file CREATEd in no-open mode (kernels after 6.1 release those): no handle.
            return Ok(());
        }
        self.handles.remove(handle, inode)?;
        self.note(|| Record::Close { h: handle });
        Ok(())
    }

    fn statfs(&self, _ctx: &Context, inode: u64) -> io::Result<statvfs64> {
        self.do_statfs(inode)
    }

    fn setxattr(
        &self,
        _ctx: &Context,
        inode: u64,
        name: &CStr,
        value: &[u8],
        flags: u32,
    ) -> io::Result<()> {
        self.writable()?;
        self.do_setxattr(inode, name, value, flags)
    }

    fn getxattr(
        &self,
        _ctx: &Context,
        inode: u64,
        name: &CStr,
        size: u32,
    ) -> io::Result<GetxattrReply> {
        self.do_getxattr(inode, name, size)
    }

    fn listxattr(&self, _ctx: &Context, inode: u64, size: u32) -> io::Result<ListxattrReply> {
        self.do_listxattr(inode, size)
    }

    fn removexattr(&self, _ctx: &Context, inode: u64, name: &CStr) -> io::Result<()> {
        self.writable()?;
        self.do_removexattr(inode, name)
    }

    fn opendir(
        &self,
        _ctx: &Context,
        inode: u64,
        _flags: u32,
    ) -> io::Result<(Option<u64>, OpenOptions)> {
        let handle = self.do_opendir(inode)?;
        let opts = if self.cfg.cache == CacheMode::Always {
            OpenOptions::KEEP_CACHE | OpenOptions::CACHE_DIR
        } else {
            OpenOptions::empty()
        };
        Ok((Some(handle), opts))
    }

    fn readdir(
        &self,
        _ctx: &Context,
        inode: u64,
        handle: u64,
        _size: u32,
        offset: u64,
        add_entry: &mut dyn FnMut(DirEntry) -> io::Result<usize>,
    ) -> io::Result<()> {
        self.do_readdir(inode, handle, offset, add_entry)
    }

    fn readdirplus(
        &self,
        _ctx: &Context,
        inode: u64,
        handle: u64,
        _size: u32,
        offset: u64,
        add_entry: &mut dyn FnMut(DirEntry, Entry) -> io::Result<usize>,
    ) -> io::Result<()> {
        self.do_readdirplus(inode, handle, offset, &mut |d, e| {
            // Node ID 0: an entry not looked up, which the kernel ignores.
            let e = if e.inode == 0 { e } else { self.guest_entry(e) };
            add_entry(d, e)
        })
    }

    fn fsyncdir(&self, ctx: &Context, inode: u64, datasync: bool, handle: u64) -> io::Result<()> {
        self.fsync(ctx, inode, datasync, handle)
    }

    fn releasedir(&self, _ctx: &Context, inode: u64, _flags: u32, handle: u64) -> io::Result<()> {
        self.handles.remove(handle, inode)?;
        self.note(|| Record::Close { h: handle });
        Ok(())
    }

    fn access(&self, _ctx: &Context, inode: u64, mask: u32) -> io::Result<()> {
        // The guest kernel checks permissions itself (virtio-fs mounts use
        // default_permissions); what is left is the read-only rule and existence.
        if mask & libc::W_OK as u32 != 0 {
            self.writable()?;
        }
        self.inodes.get(inode).map(|_| ())
    }

    fn lseek(
        &self,
        _ctx: &Context,
        inode: u64,
        handle: u64,
        offset: u64,
        whence: u32,
    ) -> io::Result<u64> {
        self.do_lseek(inode, handle, offset, whence)
    }
}

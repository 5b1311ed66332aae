//! Thin, checked wrappers around the system calls the file system uses. Every call that
//! takes a name works relative to a directory descriptor; none takes an absolute path except
//! [`open_dir_path`], which opens the shared directory itself, and [`ProcFds`], which only
//! ever names this process's own descriptors.

use std::ffi::{CStr, CString};
use std::fs::File;
use std::io;
use std::marker::PhantomData;
use std::mem::ManuallyDrop;
use std::ops::{Deref, DerefMut};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// `RESOLVE_NO_MAGICLINKS`: no `/proc/*/fd`-style jumps during resolution.
pub const RESOLVE_NO_MAGICLINKS: u64 = 0x02;
/// `RESOLVE_NO_SYMLINKS`: no symlink is followed during resolution.
pub const RESOLVE_NO_SYMLINKS: u64 = 0x04;
/// `RESOLVE_BENEATH`: resolution may not leave the starting directory.
pub const RESOLVE_BENEATH: u64 = 0x08;

/// `struct open_how` for `openat2(2)`.
#[repr(C)]
struct OpenHow {
    flags: u64,
    mode: u64,
    resolve: u64,
}

/// Turns a -1 return into the thread's errno.
fn check(r: libc::c_long) -> io::Result<libc::c_long> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

/// Takes ownership of a descriptor a system call just returned.
fn owned(fd: libc::c_long) -> io::Result<OwnedFd> {
    let fd = check(fd)?;
    // SAFETY: a non-negative return from an open call is a new descriptor nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// Opens `path` as an `O_PATH` directory descriptor.
pub fn open_dir_path(path: &Path) -> io::Result<OwnedFd> {
    let c = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: `c` is NUL-terminated; the result is checked before use.
    let fd = unsafe {
        libc::open(
            c.as_ptr(),
            libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC,
        )
    };
    owned(fd.into())
}

/// `openat2(dir, name, flags | O_CLOEXEC, mode, resolve)`.
pub fn openat2(
    dir: BorrowedFd<'_>,
    name: &CStr,
    flags: i32,
    mode: u32,
    resolve: u64,
) -> io::Result<OwnedFd> {
    let how = OpenHow {
        flags: (flags | libc::O_CLOEXEC) as u32 as u64,
        mode: mode.into(),
        resolve,
    };
    // SAFETY: `name` is NUL-terminated and `how` lives across the call; the size matches.
    owned(unsafe {
        libc::syscall(
            libc::SYS_openat2,
            dir.as_raw_fd(),
            name.as_ptr(),
            &how as *const OpenHow,
            std::mem::size_of::<OpenHow>(),
        )
    })
}

/// Opens `name` in `dir` as an `O_PATH` descriptor without following a final symlink and
/// without leaving `dir` (or, with `follow`, following symlinks anywhere).
pub fn open_path(dir: BorrowedFd<'_>, name: &CStr, follow: bool) -> io::Result<OwnedFd> {
    if follow {
        openat2(dir, name, libc::O_PATH, 0, 0)
    } else {
        openat2(
            dir,
            name,
            libc::O_PATH | libc::O_NOFOLLOW,
            0,
            RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS,
        )
    }
}

/// The parent of directory `dir` (`..`, not following symlinks).
pub fn parent_of(dir: BorrowedFd<'_>) -> io::Result<OwnedFd> {
    openat2(
        dir,
        c"..",
        libc::O_PATH | libc::O_DIRECTORY | libc::O_NOFOLLOW,
        0,
        RESOLVE_NO_MAGICLINKS,
    )
}

/// Opens directory `dir` itself for reading (`.`), for getdents and xattrs.
pub fn open_dir(dir: BorrowedFd<'_>) -> io::Result<OwnedFd> {
    openat2(
        dir,
        c".",
        libc::O_RDONLY | libc::O_DIRECTORY,
        0,
        RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS,
    )
}

/// `fstatat(fd, "", AT_EMPTY_PATH | AT_SYMLINK_NOFOLLOW)`: works on `O_PATH` descriptors.
pub fn fstat(fd: BorrowedFd<'_>) -> io::Result<libc::stat64> {
    let mut st = std::mem::MaybeUninit::<libc::stat64>::zeroed();
    // SAFETY: the kernel writes at most one stat64 into `st`; the path is an empty C string.
    check(unsafe {
        libc::fstatat64(
            fd.as_raw_fd(),
            c"".as_ptr(),
            st.as_mut_ptr(),
            libc::AT_EMPTY_PATH | libc::AT_SYMLINK_NOFOLLOW,
        )
    } as libc::c_long)?;
    // SAFETY: fstatat succeeded, so `st` is initialised (it was zeroed before anyway).
    Ok(unsafe { st.assume_init() })
}

/// The target of the symlink `fd` refers to (an `O_PATH | O_NOFOLLOW` descriptor).
pub fn readlink(fd: BorrowedFd<'_>) -> io::Result<Vec<u8>> {
    readlink_at(fd, c"")
}

/// `readlinkat(dir, name)`: the target of the symlink `name` in `dir` (`""`: `dir` itself).
pub fn readlink_at(dir: BorrowedFd<'_>, name: &CStr) -> io::Result<Vec<u8>> {
    let fd = dir;
    let mut buf = vec![0u8; libc::PATH_MAX as usize + 1];
    // SAFETY: the kernel writes at most `buf.len()` bytes into `buf`.
    let n = check(unsafe {
        libc::readlinkat(
            fd.as_raw_fd(),
            name.as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    } as libc::c_long)? as usize;
    if n >= buf.len() {
        return Err(io::Error::from_raw_os_error(libc::ENAMETOOLONG));
    }
    buf.truncate(n);
    Ok(buf)
}

/// Runs a call that returns 0 or -1 and maps -1 to the errno.
fn unit(r: libc::c_int) -> io::Result<()> {
    check(r.into()).map(|_| ())
}

/// Runs a call that returns a size or -1.
fn size(r: libc::ssize_t) -> io::Result<usize> {
    check(r as libc::c_long).map(|n| n as usize)
}

/// `getdents64(dir, buf)`: raw `linux_dirent64` records of the open directory `dir` from its
/// current position; 0 at the end.
pub fn getdents64(dir: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: the kernel writes at most `buf.len()` bytes into `buf`.
    let n = check(unsafe {
        libc::syscall(
            libc::SYS_getdents64,
            dir.as_raw_fd(),
            buf.as_mut_ptr(),
            buf.len(),
        )
    })?;
    Ok(n as usize)
}

/// `lseek(fd, offset, whence)`: the new position.
pub fn lseek(fd: BorrowedFd<'_>, offset: i64, whence: libc::c_int) -> io::Result<u64> {
    // SAFETY: integer arguments only; the descriptor is borrowed, so it is open.
    let pos = unsafe { libc::lseek64(fd.as_raw_fd(), offset, whence) };
    check(pos).map(|pos| pos as u64)
}

/// `ftruncate(fd, size)`.
pub fn ftruncate(fd: BorrowedFd<'_>, size: i64) -> io::Result<()> {
    // SAFETY: integer arguments only; the descriptor is borrowed, so it is open.
    unit(unsafe { libc::ftruncate64(fd.as_raw_fd(), size) })
}

/// `fallocate(fd, mode, offset, len)`.
pub fn fallocate(fd: BorrowedFd<'_>, mode: libc::c_int, offset: i64, len: i64) -> io::Result<()> {
    // SAFETY: integer arguments only; the descriptor is borrowed, so it is open.
    unit(unsafe { libc::fallocate64(fd.as_raw_fd(), mode, offset, len) })
}

/// `fstatvfs(fd)`: works on `O_PATH` descriptors (it is `fstatfs` underneath).
pub fn fstatvfs(fd: BorrowedFd<'_>) -> io::Result<libc::statvfs64> {
    let mut out = std::mem::MaybeUninit::<libc::statvfs64>::zeroed();
    // SAFETY: the kernel fills at most one statvfs64 into `out`.
    unit(unsafe { libc::fstatvfs64(fd.as_raw_fd(), out.as_mut_ptr()) })?;
    // SAFETY: the call succeeded, so `out` is initialised (it was zeroed before anyway).
    Ok(unsafe { out.assume_init() })
}

/// `fchownat(dir, name, uid, gid, flags)`; `u32::MAX` leaves an id as it is.
pub fn fchownat(
    dir: BorrowedFd<'_>,
    name: &CStr,
    uid: libc::uid_t,
    gid: libc::gid_t,
    flags: libc::c_int,
) -> io::Result<()> {
    // SAFETY: `name` is NUL-terminated and outlives the call; the rest are integers.
    unit(unsafe { libc::fchownat(dir.as_raw_fd(), name.as_ptr(), uid, gid, flags) })
}

/// `fchown(fd, uid, gid)`.
pub fn fchown(fd: BorrowedFd<'_>, uid: libc::uid_t, gid: libc::gid_t) -> io::Result<()> {
    // SAFETY: integer arguments only; the descriptor is borrowed, so it is open.
    unit(unsafe { libc::fchown(fd.as_raw_fd(), uid, gid) })
}

/// `symlinkat(target, dir, name)`: stores `target` as given, never resolving it.
pub fn symlinkat(target: &CStr, dir: BorrowedFd<'_>, name: &CStr) -> io::Result<()> {
    // SAFETY: both strings are NUL-terminated and outlive the call.
    unit(unsafe { libc::symlinkat(target.as_ptr(), dir.as_raw_fd(), name.as_ptr()) })
}

/// `mknodat(dir, name, mode, rdev)`.
pub fn mknodat(
    dir: BorrowedFd<'_>,
    name: &CStr,
    mode: libc::mode_t,
    rdev: libc::dev_t,
) -> io::Result<()> {
    // SAFETY: `name` is NUL-terminated and outlives the call; the rest are integers.
    unit(unsafe { libc::mknodat(dir.as_raw_fd(), name.as_ptr(), mode, rdev) })
}

/// `mkdirat(dir, name, mode)`.
pub fn mkdirat(dir: BorrowedFd<'_>, name: &CStr, mode: libc::mode_t) -> io::Result<()> {
    // SAFETY: `name` is NUL-terminated and outlives the call.
    unit(unsafe { libc::mkdirat(dir.as_raw_fd(), name.as_ptr(), mode) })
}

/// `unlinkat(dir, name, flags)` (`AT_REMOVEDIR` for a directory).
pub fn unlinkat(dir: BorrowedFd<'_>, name: &CStr, flags: libc::c_int) -> io::Result<()> {
    // SAFETY: `name` is NUL-terminated and outlives the call.
    unit(unsafe { libc::unlinkat(dir.as_raw_fd(), name.as_ptr(), flags) })
}

/// `renameat2(from_dir, from, to_dir, to, flags)` (the raw system call: `RENAME_*` flags
/// pass through unchanged).
pub fn renameat2(
    from_dir: BorrowedFd<'_>,
    from: &CStr,
    to_dir: BorrowedFd<'_>,
    to: &CStr,
    flags: libc::c_uint,
) -> io::Result<()> {
    // SAFETY: both names are NUL-terminated and outlive the call; the rest are integers.
    check(unsafe {
        libc::syscall(
            libc::SYS_renameat2,
            from_dir.as_raw_fd(),
            from.as_ptr(),
            to_dir.as_raw_fd(),
            to.as_ptr(),
            flags,
        )
    })
    .map(|_| ())
}

/// `linkat(from_dir, from, to_dir, to, flags)`.
pub fn linkat(
    from_dir: BorrowedFd<'_>,
    from: &CStr,
    to_dir: BorrowedFd<'_>,
    to: &CStr,
    flags: libc::c_int,
) -> io::Result<()> {
    // SAFETY: both names are NUL-terminated and outlive the call; the rest are integers.
    unit(unsafe {
        libc::linkat(
            from_dir.as_raw_fd(),
            from.as_ptr(),
            to_dir.as_raw_fd(),
            to.as_ptr(),
            flags,
        )
    })
}

/// `fchmodat(dir, name, mode, flags)`.
pub fn fchmodat(
    dir: BorrowedFd<'_>,
    name: &CStr,
    mode: libc::mode_t,
    flags: libc::c_int,
) -> io::Result<()> {
    // SAFETY: `name` is NUL-terminated and outlives the call; the rest are integers.
    unit(unsafe { libc::fchmodat(dir.as_raw_fd(), name.as_ptr(), mode, flags) })
}

/// `utimensat(dir, name, [atime, mtime], flags)`.
pub fn utimensat(
    dir: BorrowedFd<'_>,
    name: &CStr,
    times: &[libc::timespec; 2],
    flags: libc::c_int,
) -> io::Result<()> {
    // SAFETY: `name` is NUL-terminated; `times` points at the two timespecs the kernel reads.
    unit(unsafe { libc::utimensat(dir.as_raw_fd(), name.as_ptr(), times.as_ptr(), flags) })
}

/// `fgetxattr(fd, name, buf)`: the value's length (with an empty `buf`, only the length).
pub fn fgetxattr(fd: BorrowedFd<'_>, name: &CStr, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: the kernel writes at most `buf.len()` bytes into `buf`; `name` is NUL-terminated.
    size(unsafe {
        libc::fgetxattr(
            fd.as_raw_fd(),
            name.as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    })
}

/// `flistxattr(fd, buf)`: the name list's length (with an empty `buf`, only the length).
pub fn flistxattr(fd: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: the kernel writes at most `buf.len()` bytes into `buf`.
    size(unsafe { libc::flistxattr(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) })
}

/// `fsetxattr(fd, name, value, flags)`.
pub fn fsetxattr(
    fd: BorrowedFd<'_>,
    name: &CStr,
    value: &[u8],
    flags: libc::c_int,
) -> io::Result<()> {
    // SAFETY: the kernel reads `value.len()` bytes of `value`; `name` is NUL-terminated.
    unit(unsafe {
        libc::fsetxattr(
            fd.as_raw_fd(),
            name.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            flags,
        )
    })
}

/// `fremovexattr(fd, name)`.
pub fn fremovexattr(fd: BorrowedFd<'_>, name: &CStr) -> io::Result<()> {
    // SAFETY: `name` is NUL-terminated and outlives the call.
    unit(unsafe { libc::fremovexattr(fd.as_raw_fd(), name.as_ptr()) })
}

/// A `File` over a descriptor owned by another `File`, for the I/O traits that want
/// `&mut File`; it never closes the descriptor and cannot outlive its owner.
#[derive(Debug)]
pub struct FileView<'a> {
    /// The view; ManuallyDrop keeps it from closing the owner's descriptor.
    file: ManuallyDrop<File>,
    /// Ties the view to the owner's lifetime.
    owner: PhantomData<&'a File>,
}

impl<'a> FileView<'a> {
    /// A view of `owner`'s descriptor.
    pub fn of(owner: &'a File) -> FileView<'a> {
        // SAFETY: the descriptor stays open while `owner` lives, which the lifetime makes
        // outlive the view; ManuallyDrop keeps the view from closing it.
        let file = ManuallyDrop::new(unsafe { File::from_raw_fd(owner.as_raw_fd()) });
        FileView {
            file,
            owner: PhantomData,
        }
    }
}

impl Deref for FileView<'_> {
    type Target = File;

    fn deref(&self) -> &File {
        &self.file
    }
}

impl DerefMut for FileView<'_> {
    fn deref_mut(&mut self) -> &mut File {
        &mut self.file
    }
}

/// `/proc/self/fd` of this process, for reopening `O_PATH` descriptors with real access
/// modes (the kernel offers no other way to turn an `O_PATH` file into an open file).
#[derive(Debug)]
pub struct ProcFds {
    dir: OwnedFd,
}

impl ProcFds {
    /// Opens `path`, which must be this process's `/proc/self/fd` directory.
    pub fn open(path: &CStr) -> io::Result<ProcFds> {
        // SAFETY: `path` is NUL-terminated; the result is checked.
        let fd = unsafe {
            libc::open(
                path.as_ptr(),
                libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC,
            )
        };
        let dir = owned(fd.into())?;
        Ok(ProcFds { dir })
    }

    /// A second handle on the same directory.
    pub fn try_clone(&self) -> io::Result<ProcFds> {
        Ok(ProcFds {
            dir: self.dir.try_clone()?,
        })
    }

    /// The name of `fd` in this directory.
    fn name(fd: BorrowedFd<'_>) -> CString {
        CString::new(fd.as_raw_fd().to_string()).unwrap_or_default()
    }

    /// Reopens `fd` (which must not be a symlink) with `flags`.
    pub fn reopen(&self, fd: BorrowedFd<'_>, flags: i32) -> io::Result<OwnedFd> {
        let name = Self::name(fd);
        // SAFETY: `name` is NUL-terminated; the result is checked.
        owned(
            unsafe { libc::openat(self.dir.as_raw_fd(), name.as_ptr(), flags | libc::O_CLOEXEC) }
                .into(),
        )
    }

    /// The host path the kernel records for `fd` (as this process sees the file system;
    /// `" (deleted)"` appended once unlinked).
    pub fn path_of(&self, fd: BorrowedFd<'_>) -> io::Result<Vec<u8>> {
        readlink_at(self.dir.as_fd(), &Self::name(fd))
    }

    /// `(directory, name)` naming `fd` through this directory, for the `*at` calls that have
    /// no `AT_EMPTY_PATH` form (chmod, utimensat, link). `fd` must not be a symlink.
    pub fn at(&self, fd: BorrowedFd<'_>) -> (BorrowedFd<'_>, CString) {
        (self.dir.as_fd(), Self::name(fd))
    }
}

/// What a queue worker thread needs on top of sm-sandbox's queue worker list and
/// [`FS_SYSCALLS`]: DAX map requests to the frontend and their replies (sent with fds), and
/// the descriptor calls the file system makes on open files. No accepting, no threads.
pub const FS_WORKER_SYSCALLS: &[libc::c_long] = &[
    libc::SYS_sendmsg,
    libc::SYS_recvmsg,
    libc::SYS_fcntl,
    libc::SYS_fstat,
    libc::SYS_statx,
    libc::SYS_lseek,
];

/// System calls the file system makes on top of sm-sandbox's serving-loop list.
pub const FS_SYSCALLS: &[libc::c_long] = &[
    libc::SYS_openat,
    libc::SYS_openat2,
    libc::SYS_newfstatat,
    libc::SYS_fstatfs,
    libc::SYS_readlinkat,
    libc::SYS_symlinkat,
    libc::SYS_mknodat,
    libc::SYS_mkdirat,
    libc::SYS_unlinkat,
    libc::SYS_renameat2,
    libc::SYS_linkat,
    libc::SYS_fchownat,
    libc::SYS_fchown,
    libc::SYS_fchmodat,
    libc::SYS_utimensat,
    libc::SYS_ftruncate,
    libc::SYS_fallocate,
    libc::SYS_fsync,
    libc::SYS_fdatasync,
    libc::SYS_pread64,
    libc::SYS_pwrite64,
    libc::SYS_preadv,
    libc::SYS_pwritev,
    libc::SYS_preadv2,
    libc::SYS_pwritev2,
    libc::SYS_readv,
    libc::SYS_getdents64,
    libc::SYS_fgetxattr,
    libc::SYS_fsetxattr,
    libc::SYS_flistxattr,
    libc::SYS_fremovexattr,
    libc::SYS_inotify_init1,
    libc::SYS_inotify_add_watch,
];

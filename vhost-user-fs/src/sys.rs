//! Thin, checked wrappers around the system calls the file system uses. Every call that
//! takes a name works relative to a directory descriptor; none takes an absolute path except
//! through [`ProcFds`], which only ever names this process's own descriptors.

use std::ffi::{CStr, CString};
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

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
    let mut buf = vec![0u8; libc::PATH_MAX as usize + 1];
    // SAFETY: the kernel writes at most `buf.len()` bytes into `buf`.
    let n = check(unsafe {
        libc::readlinkat(
            fd.as_raw_fd(),
            c"".as_ptr(),
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
pub fn unit(r: libc::c_int) -> io::Result<()> {
    check(r.into()).map(|_| ())
}

/// Runs a call that returns a size or -1.
pub fn size(r: libc::ssize_t) -> io::Result<usize> {
    check(r as libc::c_long).map(|n| n as usize)
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

    /// `(directory, name)` naming `fd` through this directory, for the `*at` calls that have
    /// no `AT_EMPTY_PATH` form (chmod, utimensat, link). `fd` must not be a symlink.
    pub fn at(&self, fd: BorrowedFd<'_>) -> (RawFd, CString) {
        (self.dir.as_raw_fd(), Self::name(fd))
    }
}

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

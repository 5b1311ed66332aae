//! The file system driven directly through `fuse_backend_rs`'s `FileSystem` trait on a real
//! directory (no guest): extended attributes (busybox in the guest has no getfattr), names
//! the guest kernel would never send, stale node IDs, and read-only.

use std::ffi::CStr;
use std::os::fd::{FromRawFd, OwnedFd};

use fuse_backend_rs::api::filesystem::{
    Context, FileSystem, GetxattrReply, ListxattrReply, ROOT_ID,
};
use sm_vhost_user_fs::fs::{FsConfig, SharedFs};
use sm_vhost_user_fs::policy::SymlinkPolicy;
use sm_vhost_user_fs::sys::ProcFds;

fn open_fs(dir: &std::path::Path, cfg: FsConfig) -> SharedFs {
    let c = std::ffi::CString::new(dir.to_str().unwrap()).unwrap();
    // SAFETY: NUL-terminated path; the result is checked.
    let fd = unsafe {
        libc::open(
            c.as_ptr(),
            libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC,
        )
    };
    assert!(fd >= 0);
    // SAFETY: a new descriptor nothing else owns.
    let root = unsafe { OwnedFd::from_raw_fd(fd) };
    SharedFs::new(root, ProcFds::open(c"/proc/self/fd").unwrap(), cfg).unwrap()
}

fn errno<T>(r: std::io::Result<T>) -> i32 {
    match r {
        Ok(_) => 0,
        Err(e) => e.raw_os_error().unwrap_or(-1),
    }
}

const fn n(s: &'static CStr) -> &'static CStr {
    s
}

#[test]
fn xattrs_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("f"), b"x").unwrap();
    let fs = open_fs(dir.path(), FsConfig::default());
    let ctx = Context::new();
    let f = fs.lookup(&ctx, ROOT_ID, n(c"f")).unwrap().inode;
    for inode in [f, ROOT_ID] {
        let set = fs.setxattr(&ctx, inode, n(c"user.sm"), b"value\0bytes", 0);
        if errno(set) == libc::EOPNOTSUPP {
            eprintln!("this file system has no user xattrs; skipping");
            return;
        }
        match fs.getxattr(&ctx, inode, n(c"user.sm"), 0).unwrap() {
            GetxattrReply::Count(c) => assert_eq!(c, 11),
            GetxattrReply::Value(_) => panic!("size 0 must return a count"),
        }
        match fs.getxattr(&ctx, inode, n(c"user.sm"), u32::MAX).unwrap() {
            GetxattrReply::Value(v) => assert_eq!(v, b"value\0bytes"),
            GetxattrReply::Count(_) => panic!("expected the value"),
        }
        assert_eq!(
            errno(fs.getxattr(&ctx, inode, n(c"user.sm"), 3)),
            libc::ERANGE
        );
        match fs.listxattr(&ctx, inode, 4096).unwrap() {
            ListxattrReply::Names(v) => assert!(v.windows(8).any(|w| w == b"user.sm\0")),
            ListxattrReply::Count(_) => panic!("expected names"),
        }
        fs.removexattr(&ctx, inode, n(c"user.sm")).unwrap();
        assert_eq!(
            errno(fs.getxattr(&ctx, inode, n(c"user.sm"), 64)),
            libc::ENODATA
        );
    }
}

#[test]
fn hostile_requests_fail_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let shared = dir.path().join("shared");
    std::fs::create_dir_all(shared.join("sub")).unwrap();
    std::fs::write(dir.path().join("outside"), b"secret").unwrap();
    let fs = open_fs(&shared, FsConfig::default());
    let ctx = Context::new();
    for name in [n(c".."), n(c"."), n(c"a/b"), n(c"../outside"), n(c"")] {
        assert_eq!(
            errno(fs.lookup(&ctx, ROOT_ID, name)),
            libc::EINVAL,
            "{name:?}"
        );
        assert_eq!(errno(fs.mkdir(&ctx, ROOT_ID, name, 0o755, 0)), libc::EINVAL);
    }
    let sub = fs.lookup(&ctx, ROOT_ID, n(c"sub")).unwrap().inode;
    assert_eq!(errno(fs.lookup(&ctx, sub, n(c".."))), libc::EINVAL);
    assert_eq!(errno(fs.lookup(&ctx, 9999, n(c"sub"))), libc::EBADF);
    assert_eq!(errno(fs.getattr(&ctx, 9999, None)), libc::EBADF);
    assert_eq!(errno(fs.readlink(&ctx, sub)), libc::EINVAL);
    fs.forget(&ctx, 9999, u64::MAX);
    fs.forget(&ctx, ROOT_ID, u64::MAX);
    assert!(fs.getattr(&ctx, ROOT_ID, None).is_ok());
    assert_eq!(
        errno(fs.rename(
            &ctx,
            ROOT_ID,
            n(c"sub"),
            ROOT_ID,
            n(c"x"),
            libc::RENAME_WHITEOUT
        )),
        libc::EINVAL
    );
    assert_eq!(errno(fs.releasedir(&ctx, ROOT_ID, 0, 12345)), libc::EBADF);
    // A symlink swapped in for a directory after LOOKUP does not redirect creation: the
    // node still names the directory that was looked up (now moved, still inside).
    std::fs::rename(shared.join("sub"), shared.join("moved")).unwrap();
    std::os::unix::fs::symlink(dir.path(), shared.join("sub")).unwrap();
    fs.mkdir(&ctx, sub, n(c"made"), 0o755, 0).unwrap();
    assert!(shared.join("moved/made").is_dir());
    assert!(!dir.path().join("made").exists());
    // And the planted symlink is refused at LOOKUP (absolute target).
    assert_eq!(errno(fs.lookup(&ctx, ROOT_ID, n(c"sub"))), libc::EACCES);
}

#[test]
fn read_only_and_deny_refuse_changes() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("f"), b"x").unwrap();
    let ro = open_fs(
        dir.path(),
        FsConfig {
            read_only: true,
            ..FsConfig::default()
        },
    );
    let ctx = Context::new();
    let f = ro.lookup(&ctx, ROOT_ID, n(c"f")).unwrap().inode;
    assert_eq!(
        errno(ro.mkdir(&ctx, ROOT_ID, n(c"d"), 0o755, 0)),
        libc::EROFS
    );
    assert_eq!(errno(ro.unlink(&ctx, ROOT_ID, n(c"f"))), libc::EROFS);
    assert_eq!(
        errno(ro.setxattr(&ctx, f, n(c"user.x"), b"1", 0)),
        libc::EROFS
    );
    assert_eq!(errno(ro.open(&ctx, f, libc::O_RDWR as u32, 0)), libc::EROFS);
    assert_eq!(
        errno(ro.open(&ctx, f, (libc::O_RDONLY | libc::O_TRUNC) as u32, 0)),
        libc::EROFS
    );
    assert!(ro.open(&ctx, f, libc::O_RDONLY as u32, 0).is_ok());
    assert_eq!(
        errno(ro.symlink(&ctx, n(c"f"), ROOT_ID, n(c"l"))),
        libc::EROFS
    );

    let deny = open_fs(
        dir.path(),
        FsConfig {
            symlinks: SymlinkPolicy::Deny,
            ..FsConfig::default()
        },
    );
    let f = deny.lookup(&ctx, ROOT_ID, n(c"f")).unwrap().inode;
    assert_eq!(
        errno(deny.symlink(&ctx, n(c"f"), ROOT_ID, n(c"l"))),
        libc::EPERM
    );
    assert_eq!(errno(deny.link(&ctx, f, ROOT_ID, n(c"h"))), libc::EPERM);
    assert!(!dir.path().join("l").exists() && !dir.path().join("h").exists());
}

/// A symlink judged inside the tree is judged again after the host moves its directory
/// up a level (the cached depth is dropped on the inotify event), and is then refused.
#[test]
fn host_moves_drop_cached_depths() {
    let dir = tempfile::tempdir().unwrap();
    let shared = dir.path().join("shared");
    std::fs::create_dir_all(shared.join("a/b")).unwrap();
    std::fs::write(shared.join("x"), b"x").unwrap();
    std::os::unix::fs::symlink("../../x", shared.join("a/b/l")).unwrap();
    let fs = open_fs(&shared, FsConfig::default())
        .with_watcher(sm_vhost_user_fs::watch::Watcher::new().unwrap());
    let ctx = Context::new();
    let a = fs.lookup(&ctx, ROOT_ID, n(c"a")).unwrap().inode;
    let b = fs.lookup(&ctx, a, n(c"b")).unwrap().inode;
    assert!(
        fs.lookup(&ctx, b, n(c"l")).is_ok(),
        "a/b/l -> ../../x is inside"
    );
    assert!(fs.lookup(&ctx, b, n(c"l")).is_ok(), "and stays so (cached)");
    std::fs::rename(shared.join("a/b"), shared.join("b")).unwrap();
    assert_eq!(
        errno(fs.lookup(&ctx, b, n(c"l"))),
        libc::EACCES,
        "b/l -> ../../x leaves"
    );
}

/// FALLOCATE, LSEEK (SEEK_DATA / SEEK_HOLE) and FSYNC on an open handle.
#[test]
fn fallocate_lseek_fsync() {
    let dir = tempfile::tempdir().unwrap();
    let fs = open_fs(dir.path(), FsConfig::default());
    let ctx = Context::new();
    let args = fuse_backend_rs::abi::fuse_abi::CreateIn {
        flags: libc::O_RDWR as u32,
        mode: 0o644,
        umask: 0o022,
        fuse_flags: 0,
    };
    let (entry, handle, _, _) = fs.create(&ctx, ROOT_ID, n(c"sparse"), args).unwrap();
    let (ino, fh) = (entry.inode, handle.unwrap());
    assert_eq!(entry.attr.st_mode & 0o777, 0o644);
    fs.fallocate(&ctx, ino, fh, 0, 1 << 20, 4096).unwrap();
    assert_eq!(
        std::fs::metadata(dir.path().join("sparse")).unwrap().len(),
        (1 << 20) + 4096
    );
    let data = fs.lseek(&ctx, ino, fh, 0, libc::SEEK_DATA as u32);
    let hole = fs.lseek(&ctx, ino, fh, 0, libc::SEEK_HOLE as u32).unwrap();
    assert_eq!(hole, 0, "the file starts with a hole");
    assert!(matches!(data, Ok(d) if d >= 4096) || errno(data) == libc::ENXIO);
    fs.fsync(&ctx, ino, false, fh).unwrap();
    fs.fsync(&ctx, ino, true, fh).unwrap();
    assert_eq!(
        errno(fs.fallocate(&ctx, ino, fh, 0, u64::MAX, 1)),
        libc::EINVAL
    );
    assert_eq!(errno(fs.lseek(&ctx, ino, fh, 0, 99)), libc::EINVAL);
    fs.release(&ctx, ino, 0, fh, false, false, None).unwrap();
    assert_eq!(errno(fs.fsync(&ctx, ino, false, fh)), libc::EBADF);
}

/// MKNOD makes FIFOs but never device nodes, whatever the process's capabilities.
#[test]
fn mknod_refuses_device_nodes() {
    let dir = tempfile::tempdir().unwrap();
    let fs = open_fs(dir.path(), FsConfig::default());
    let ctx = Context::new();
    let fifo = fs
        .mknod(&ctx, ROOT_ID, n(c"p"), libc::S_IFIFO | 0o644, 0, 0)
        .unwrap();
    assert_eq!(fifo.attr.st_mode & libc::S_IFMT, libc::S_IFIFO);
    let null = libc::makedev(1, 3) as u32;
    for kind in [libc::S_IFCHR, libc::S_IFBLK] {
        assert_eq!(
            errno(fs.mknod(&ctx, ROOT_ID, n(c"dev"), kind | 0o666, null, 0)),
            libc::EPERM
        );
    }
    assert!(!dir.path().join("dev").exists());
}

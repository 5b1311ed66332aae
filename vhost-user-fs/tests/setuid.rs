//! A guest cannot plant privilege on the host: setuid and setgid bits the guest asks for
//! (CREATE, MKNOD, MKDIR, SETATTR) are cleared by default, a write or truncate by the guest
//! clears those a file already had (as the kernel does for a writer without CAP_FSETID), and
//! file capabilities cannot be set; `allow_setuid` (`--allow-setuid`) keeps them all. Run on
//! a real directory, through the `FileSystem` trait and through the real queue loop.

#[path = "common/wire.rs"]
mod wire;

use std::ffi::CStr;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use fuse_backend_rs::abi::fuse_abi::CreateIn;
use fuse_backend_rs::api::filesystem::{Context, FileSystem, SetattrValid, ROOT_ID};
use sm_vhost_user_fs::fs::{FsConfig, SharedFs};

fn open_fs(dir: &Path, allow_setuid: bool) -> SharedFs {
    open_fs_with(
        dir,
        FsConfig {
            allow_setuid,
            ..FsConfig::default()
        },
    )
}

fn open_fs_with(dir: &Path, cfg: FsConfig) -> SharedFs {
    SharedFs::open_dir(dir, cfg).unwrap()
}

fn mode_of(path: &Path) -> u32 {
    std::fs::symlink_metadata(path).unwrap().mode() & 0o7777
}

/// What the guest does in the attack: create 04755, chown to root, chmod 06755, mkdir and
/// mknod with the bits; returns the host modes of the file, the directory and the node.
fn plant(host: &Path, allow_setuid: bool) -> (u32, u32, u32, u32) {
    let fs = open_fs(host, allow_setuid);
    let ctx = Context::new();
    let args = CreateIn {
        flags: libc::O_RDWR as u32,
        mode: libc::S_IFREG | 0o4755,
        umask: 0o022,
        fuse_flags: 0,
    };
    let (entry, _, _, _) = fs.create(&ctx, ROOT_ID, c"prog", args).unwrap();
    let created = mode_of(&host.join("prog"));

    let mut attr = entry.attr;
    (attr.st_uid, attr.st_gid) = (0, 0);
    let owner = SetattrValid::UID | SetattrValid::GID;
    fs.setattr(&ctx, entry.inode, attr, None, owner).unwrap();
    attr.st_mode = libc::S_IFREG | 0o6755;
    fs.setattr(&ctx, entry.inode, attr, None, SetattrValid::MODE)
        .unwrap();
    let chmodded = mode_of(&host.join("prog"));

    fs.mkdir(&ctx, ROOT_ID, c"dir", 0o6775, 0).unwrap();
    let node = libc::S_IFREG | 0o6755;
    fs.mknod(&ctx, ROOT_ID, c"node", node, 0, 0).unwrap();
    (
        created,
        chmodded,
        mode_of(&host.join("dir")),
        mode_of(&host.join("node")),
    )
}

#[test]
fn setuid_and_setgid_from_the_guest_are_cleared_by_default() {
    let tmp = tempfile::tempdir().unwrap();
    let (created, chmodded, dir, node) = plant(tmp.path(), false);
    assert_eq!(created, 0o755, "CREATE 04755");
    assert_eq!(chmodded, 0o755, "SETATTR 06755");
    // Linux's mkdir takes neither bit from the mode (setgid only from a setgid parent,
    // which the backend leaves alone: on a directory it is group inheritance, not privilege).
    assert_eq!(dir & 0o6000, 0, "MKDIR 06775");
    assert_eq!(node, 0o755, "MKNOD 06755");
    if sm_test_support::is_root() {
        let m = std::fs::metadata(tmp.path().join("prog")).unwrap();
        assert_eq!((m.uid(), m.gid()), (0, 0));
    }
}

#[test]
fn allow_setuid_keeps_them() {
    let tmp = tempfile::tempdir().unwrap();
    let (created, chmodded, dir, node) = plant(tmp.path(), true);
    assert_eq!(created, 0o4755);
    assert_eq!(chmodded, 0o6755);
    assert_eq!(dir & 0o6000, 0, "mkdir(2) ignores them on Linux");
    assert_eq!(node, 0o6755);
}

/// A setuid file already on the host (the host made it) loses the bit when the guest writes
/// to it or truncates it, and setgid too when group-executable; a group-less setgid (the
/// mandatory-locking mark) stays, as with the kernel. With `allow_setuid` nothing changes
/// (the guest kernel then clears them itself for its unprivileged writers).
#[test]
fn guest_writes_and_truncates_clear_the_bits_a_file_had() {
    for allow in [false, true] {
        let tmp = tempfile::tempdir().unwrap();
        let host = tmp.path();
        for name in ["w", "t", "o", "lock"] {
            std::fs::write(host.join(name), b"#!/bin/sh\n").unwrap();
        }
        let set = |name: &str, mode: u32| {
            std::fs::set_permissions(host.join(name), std::fs::Permissions::from_mode(mode))
                .unwrap()
        };
        for name in ["w", "t", "o"] {
            set(name, 0o6755);
        }
        set("lock", 0o2644);

        let mut wire = wire::Wire::new(open_fs(host, allow));
        wire.init();
        let w = wire.lookup(ROOT_ID, b"w").unwrap();
        let fh = wire.open(w, libc::O_RDWR as u32).unwrap();
        assert_eq!(wire.write(w, fh, 0, b"#!/bin/sh\nid\n"), Ok(13));
        let lock = wire.lookup(ROOT_ID, b"lock").unwrap();
        let fh = wire.open(lock, libc::O_WRONLY as u32).unwrap();
        assert_eq!(wire.write(lock, fh, 0, b"x"), Ok(1));
        let o = wire.lookup(ROOT_ID, b"o").unwrap();
        wire.open(o, (libc::O_WRONLY | libc::O_TRUNC) as u32)
            .unwrap();

        let fs = open_fs(host, allow);
        let ctx = Context::new();
        let t = fs.lookup(&ctx, ROOT_ID, c"t").unwrap();
        let mut attr = t.attr;
        attr.st_size = 1;
        fs.setattr(&ctx, t.inode, attr, None, SetattrValid::SIZE)
            .unwrap();

        let expect = if allow { 0o6755 } else { 0o755 };
        for name in ["w", "t", "o"] {
            assert_eq!(mode_of(&host.join(name)), expect, "{name}, allow {allow}");
        }
        assert_eq!(mode_of(&host.join("lock")), 0o2644);
        assert_eq!(std::fs::read(host.join("w")).unwrap(), b"#!/bin/sh\nid\n");
    }
}

/// File capabilities are setuid's finer-grained form: refused by default.
#[test]
fn file_capabilities_cannot_be_set_by_default() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(tmp.path().join("f"), b"x").unwrap();
    let fs = open_fs(tmp.path(), false);
    let ctx = Context::new();
    let f = fs.lookup(&ctx, ROOT_ID, c"f").unwrap().inode;
    // VFS_CAP_REVISION_2 with CAP_SETUID permitted and effective.
    let mut cap = vec![0u8; 20];
    cap[0..4].copy_from_slice(&0x0200_0001u32.to_le_bytes());
    const CAP_SETUID: u32 = 7;
    cap[4..8].copy_from_slice(&(1u32 << CAP_SETUID).to_le_bytes());
    const NAME: &CStr = c"security.capability";
    let r = fs.setxattr(&ctx, f, NAME, &cap, 0);
    assert_eq!(r.unwrap_err().raw_os_error(), Some(libc::EPERM));
    let mut buf = [0u8; 64];
    let c = std::ffi::CString::new(tmp.path().join("f").to_str().unwrap()).unwrap();
    // SAFETY: NUL-terminated strings and a buffer of the given length.
    let n = unsafe { libc::getxattr(c.as_ptr(), NAME.as_ptr(), buf.as_mut_ptr().cast(), 64) };
    assert!(n < 0, "the host file has capabilities");
}

/// As root (the backend then gives new files to the guest's caller): the chown that does so
/// would clear the bits, so under `allow_setuid` they are put back; by default they stay off.
#[test]
fn new_files_given_to_the_caller_keep_the_bits_only_when_allowed() {
    if !sm_test_support::require(sm_test_support::is_root(), "root (chown to the caller)") {
        return;
    }
    for allow_setuid in [false, true] {
        let tmp = tempfile::tempdir().unwrap();
        let cfg = FsConfig {
            allow_setuid,
            chown_new: true,
            ..FsConfig::default()
        };
        let fs = open_fs_with(tmp.path(), cfg);
        let ctx = Context {
            uid: 1234,
            gid: 5678,
            pid: 1,
        };
        let args = CreateIn {
            flags: libc::O_RDWR as u32,
            mode: libc::S_IFREG | 0o6755,
            umask: 0,
            fuse_flags: 0,
        };
        fs.create(&ctx, ROOT_ID, c"prog", args).unwrap();
        let m = std::fs::metadata(tmp.path().join("prog")).unwrap();
        assert_eq!((m.uid(), m.gid()), (1234, 5678));
        let want = if allow_setuid { 0o6755 } else { 0o755 };
        assert_eq!(m.mode() & 0o7777, want, "allow {allow_setuid}");
    }
}

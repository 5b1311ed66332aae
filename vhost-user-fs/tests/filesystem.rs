//! The file system driven directly through `fuse_backend_rs`'s `FileSystem` trait on a real
//! directory (no guest): extended attributes (busybox in the guest has no getfattr), names
//! the guest kernel would never send, stale node IDs, read-only, and READDIRPLUS against
//! READDIR and LOOKUP.

use std::ffi::{CStr, CString};
use std::os::unix::fs::{MetadataExt, PermissionsExt};

use fuse_backend_rs::api::filesystem::{
    Context, Entry, FileSystem, FsOptions, GetxattrReply, ListxattrReply, SetattrValid, ROOT_ID,
};
use sm_vhost_user_fs::fs::{FsConfig, SharedFs};
use sm_vhost_user_fs::policy::{CacheMode, SymlinkPolicy};

fn open_fs(dir: &std::path::Path, cfg: FsConfig) -> SharedFs {
    SharedFs::open_dir(dir, cfg).unwrap()
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
            sm_test_support::skip_or_fail("the test directory's file system has no user xattrs");
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
    // And the planted symlink is a symlink to the guest (absolute target, never followed).
    let planted = fs.lookup(&ctx, ROOT_ID, n(c"sub")).unwrap();
    assert_eq!(planted.attr.st_mode & libc::S_IFMT, libc::S_IFLNK);
    assert_eq!(
        errno(fs.mkdir(&ctx, planted.inode, n(c"made2"), 0o755, 0)),
        libc::ENOTDIR
    );
    assert!(!dir.path().join("made2").exists());
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
/// up a level (the cached depth is dropped on the inotify event), and is then hidden
/// (`deny`, the policy that hides escaping symlinks).
#[test]
fn host_moves_drop_cached_depths() {
    let dir = tempfile::tempdir().unwrap();
    let shared = dir.path().join("shared");
    std::fs::create_dir_all(shared.join("a/b")).unwrap();
    std::fs::write(shared.join("x"), b"x").unwrap();
    std::os::unix::fs::symlink("../../x", shared.join("a/b/l")).unwrap();
    let deny = FsConfig {
        symlinks: SymlinkPolicy::Deny,
        ..FsConfig::default()
    };
    let fs = open_fs(&shared, deny).with_watcher(sm_vhost_user_fs::watch::Watcher::new().unwrap());
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

/// Under `opaque` (the default) every symlink is visible as a symlink whatever its target:
/// the guest's own `ln -s /usr/bin/python3 venv/bin/python` (what `python -m venv` does),
/// `escape -> /etc/passwd`, a host-made one climbing out. READDIR lists them, readlink gives
/// their bytes, rename, lchown and unlink act on the link; and the backend never follows
/// one on the host: opening `escape` does not read the host's /etc/passwd.
#[test]
fn opaque_shows_every_symlink_and_never_follows_one() {
    let dir = tempfile::tempdir().unwrap();
    let shared = dir.path().join("shared");
    std::fs::create_dir_all(shared.join("venv/bin")).unwrap();
    std::fs::write(dir.path().join("outside"), b"secret").unwrap();
    std::os::unix::fs::symlink("../outside", shared.join("climb")).unwrap();
    let fs = open_fs(&shared, FsConfig::default());
    let ctx = Context::new();
    let venv = fs.lookup(&ctx, ROOT_ID, n(c"venv")).unwrap().inode;
    let bin = fs.lookup(&ctx, venv, n(c"bin")).unwrap().inode;
    let python = fs
        .symlink(&ctx, n(c"/usr/bin/python3"), bin, n(c"python"))
        .unwrap();
    let escape = fs
        .symlink(&ctx, n(c"/etc/passwd"), ROOT_ID, n(c"escape"))
        .unwrap();
    for (e, target) in [(&python, "/usr/bin/python3"), (&escape, "/etc/passwd")] {
        assert_eq!(e.attr.st_mode & libc::S_IFMT, libc::S_IFLNK, "{target}");
        assert_ne!(
            e.entry_timeout,
            std::time::Duration::ZERO,
            "cached like any name"
        );
    }
    for (parent, name, target) in [
        (bin, n(c"python"), &b"/usr/bin/python3"[..]),
        (ROOT_ID, n(c"escape"), b"/etc/passwd"),
        (ROOT_ID, n(c"climb"), b"../outside"),
    ] {
        let e = fs.lookup(&ctx, parent, name).unwrap();
        assert_eq!(e.attr.st_mode & libc::S_IFMT, libc::S_IFLNK, "{name:?}");
        assert_eq!(fs.readlink(&ctx, e.inode).unwrap(), target, "{name:?}");
        // Never followed on the host: not opened, not a directory to look into.
        for flags in [libc::O_RDONLY, libc::O_RDWR] {
            assert_ne!(
                errno(fs.open(&ctx, e.inode, flags as u32, 0)),
                0,
                "{name:?}"
            );
        }
        assert_eq!(
            errno(fs.lookup(&ctx, e.inode, n(c"x"))),
            libc::ENOTDIR,
            "{name:?}"
        );
    }
    let names = readdir_names(&fs, ROOT_ID);
    assert!(names.contains(&b"escape".to_vec()) && names.contains(&b"climb".to_vec()));
    assert_eq!(readdir_names(&fs, bin), vec![&b"."[..], b"..", b"python"]);
    assert_eq!(
        std::fs::read_link(shared.join("venv/bin/python")).unwrap(),
        std::path::Path::new("/usr/bin/python3")
    );
    // lchown acts on the link itself (to its own owner: allowed without privileges).
    let meta = std::fs::symlink_metadata(shared.join("escape")).unwrap();
    let mut attr = escape.attr;
    (attr.st_uid, attr.st_gid) = (meta.uid(), meta.gid());
    fs.setattr(
        &ctx,
        escape.inode,
        attr,
        None,
        SetattrValid::UID | SetattrValid::GID,
    )
    .unwrap();
    // rename and unlink act on the links, never on what they name.
    fs.rename(&ctx, ROOT_ID, n(c"escape"), ROOT_ID, n(c"moved"), 0)
        .unwrap();
    assert_eq!(
        std::fs::read_link(shared.join("moved")).unwrap(),
        std::path::Path::new("/etc/passwd")
    );
    fs.unlink(&ctx, ROOT_ID, n(c"moved")).unwrap();
    fs.unlink(&ctx, ROOT_ID, n(c"climb")).unwrap();
    assert!(!shared.join("moved").exists() && !shared.join("climb").is_symlink());
    assert_eq!(
        std::fs::read(dir.path().join("outside")).unwrap(),
        b"secret"
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

/// With `--allow-devices` (trusted guests) MKNOD makes the character and block device nodes
/// the guest asks for, with their device numbers.
#[test]
fn mknod_makes_device_nodes_when_allowed() {
    if !sm_test_support::require(sm_test_support::is_root(), "root (CAP_MKNOD)") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let fs = open_fs(
        dir.path(),
        FsConfig {
            allow_devices: true,
            ..FsConfig::default()
        },
    );
    let ctx = Context::new();
    let null = libc::makedev(1, 3);
    for (name, kind) in [(n(c"chr"), libc::S_IFCHR), (n(c"blk"), libc::S_IFBLK)] {
        let e = fs
            .mknod(&ctx, ROOT_ID, name, kind | 0o600, null as u32, 0)
            .unwrap();
        assert_eq!(e.attr.st_mode & libc::S_IFMT, kind, "{name:?}");
        let host = std::fs::symlink_metadata(dir.path().join(name.to_str().unwrap())).unwrap();
        assert_eq!((host.mode() & libc::S_IFMT, host.rdev()), (kind, null));
    }
}

/// One READDIR listing of `dir` from offset 0: the names.
fn readdir_names(fs: &SharedFs, dir: u64) -> Vec<Vec<u8>> {
    let ctx = Context::new();
    let (h, _) = fs.opendir(&ctx, dir, 0).unwrap();
    let h = h.unwrap();
    let mut names = Vec::new();
    fs.readdir(&ctx, dir, h, 4096, 0, &mut |d| {
        names.push(d.name.to_vec());
        Ok(1)
    })
    .unwrap();
    fs.releasedir(&ctx, dir, 0, h).unwrap();
    names.sort();
    names
}

/// One READDIRPLUS listing of `dir` from offset 0: name, `d_ino` and entry, by name (the
/// first if a name a host change re-created shows up twice); `during` runs once, after the
/// first entry was looked up and before the others are.
fn readdirplus_entries(
    fs: &SharedFs,
    dir: u64,
    mut during: impl FnMut(&[u8]),
) -> std::collections::BTreeMap<Vec<u8>, (u64, Entry)> {
    let ctx = Context::new();
    let (h, _) = fs.opendir(&ctx, dir, 0).unwrap();
    let h = h.unwrap();
    let mut out = std::collections::BTreeMap::new();
    fs.readdirplus(&ctx, dir, h, 4096, 0, &mut |d, e| {
        if out.is_empty() {
            during(d.name);
        }
        out.entry(d.name.to_vec()).or_insert((d.ino, e));
        Ok(1)
    })
    .unwrap();
    fs.releasedir(&ctx, dir, 0, h).unwrap();
    out
}

/// INIT asks for READDIRPLUS (adaptive) only when the kernel offers it.
#[test]
fn init_requests_readdirplus_and_async_direct_io() {
    let dir = tempfile::tempdir().unwrap();
    let fs = open_fs(dir.path(), FsConfig::default());
    let wanted = FsOptions::DO_READDIRPLUS | FsOptions::READDIRPLUS_AUTO | FsOptions::ASYNC_DIO;
    assert!(fs.init(FsOptions::all()).unwrap().contains(wanted));
    assert!(!fs
        .init(FsOptions::all() - wanted)
        .unwrap()
        .intersects(wanted));
}

/// READDIRPLUS lists READDIR's names, each with LOOKUP's answer (same node, attributes and
/// timeouts), under every symlink policy; `.` and `..` carry no node, and after one FORGET
/// per node returned the nodes are gone (each entry was exactly one reference).
#[test]
fn readdirplus_is_readdir_plus_lookup() {
    let dir = tempfile::tempdir().unwrap();
    let shared = dir.path().join("shared");
    std::fs::create_dir_all(shared.join("sub")).unwrap();
    std::fs::write(dir.path().join("outside"), b"outside!").unwrap();
    std::fs::write(shared.join("f"), b"hello").unwrap();
    std::fs::set_permissions(shared.join("f"), std::fs::Permissions::from_mode(0o640)).unwrap();
    std::fs::hard_link(shared.join("f"), shared.join("hard")).unwrap();
    std::os::unix::fs::symlink("f", shared.join("in")).unwrap();
    std::os::unix::fs::symlink("../outside", shared.join("out")).unwrap();
    std::os::unix::fs::symlink(dir.path().join("outside"), shared.join("abs")).unwrap();
    std::os::unix::fs::symlink("missing", shared.join("dangling")).unwrap();
    let ctx = Context::new();
    for (policy, cache) in [
        (SymlinkPolicy::Deny, CacheMode::Auto),
        (SymlinkPolicy::Opaque, CacheMode::Always),
        (SymlinkPolicy::Follow, CacheMode::Never),
    ] {
        let cfg = FsConfig {
            symlinks: policy,
            cache,
            ..FsConfig::default()
        };
        let fs = open_fs(&shared, cfg);
        let sub = fs.lookup(&ctx, ROOT_ID, n(c"sub")).unwrap().inode;
        for (dir_id, host_dir) in [(ROOT_ID, shared.clone()), (sub, shared.join("sub"))] {
            let plus = readdirplus_entries(&fs, dir_id, |_| {});
            let names: Vec<_> = plus.keys().cloned().collect();
            assert_eq!(names, readdir_names(&fs, dir_id), "{policy:?}");
            for (name, (d_ino, e)) in &plus {
                let shown = String::from_utf8_lossy(name);
                if name == b"." || name == b".." {
                    assert_eq!(e.inode, 0, "{policy:?} {shown}");
                    continue;
                }
                let path = host_dir.join(std::str::from_utf8(name).unwrap());
                let lookup = fs.lookup(&ctx, dir_id, &CString::new(name.clone()).unwrap());
                let Ok(lookup) = lookup else {
                    // Followed, the dangling symlink is ENOENT (else it is the link itself).
                    assert_eq!(
                        (policy, &name[..]),
                        (SymlinkPolicy::Follow, &b"dangling"[..])
                    );
                    assert_eq!(e.inode, 0);
                    continue;
                };
                assert_eq!(e.inode, lookup.inode, "{policy:?} {shown}");
                fs.forget(&ctx, lookup.inode, 1);
                let meta = if policy == SymlinkPolicy::Follow {
                    std::fs::metadata(&path).unwrap()
                } else {
                    std::fs::symlink_metadata(&path).unwrap()
                };
                assert_eq!(e.attr.st_ino, meta.ino(), "{policy:?} {shown}");
                assert_eq!(e.attr.st_size as u64, meta.size(), "{policy:?} {shown}");
                assert_eq!(e.attr.st_mode, meta.mode(), "{policy:?} {shown}");
                assert_eq!(
                    e.attr.st_nlink,
                    meta.nlink() as libc::nlink_t,
                    "{policy:?} {shown}"
                );
                assert_eq!(
                    *d_ino,
                    std::fs::symlink_metadata(&path).unwrap().ino(),
                    "d_ino is READDIR's"
                );
                assert_eq!(
                    (e.entry_timeout, e.attr_timeout),
                    (lookup.entry_timeout, lookup.attr_timeout)
                );
            }
            if dir_id == ROOT_ID {
                let has = |n: &[u8]| plus.contains_key(n);
                assert!(has(b"f") && has(b"hard") && has(b"in") && has(b"dangling"));
                assert_eq!(
                    has(b"out") && has(b"abs"),
                    !policy.hides_escaping_symlinks(),
                    "{policy:?}"
                );
                let f = &plus[&b"f"[..]].1;
                assert_eq!((f.attr.st_size, f.attr.st_mode & 0o7777), (5, 0o640));
                assert_eq!(
                    f.inode,
                    plus[&b"hard"[..]].1.inode,
                    "one node per host inode"
                );
                if policy.follows() {
                    assert_eq!(
                        plus[&b"out"[..]].1.attr.st_size,
                        8,
                        "the target's attributes"
                    );
                }
            }
            // One FORGET per entry returned, and nothing is left of them: each was one
            // reference (stale node IDs answer EBADF).
            for (_, e) in plus.values() {
                if e.inode != 0 {
                    fs.forget(&ctx, e.inode, 1);
                }
            }
            for (name, (_, e)) in &plus {
                if e.inode != 0 && e.inode != sub {
                    assert_eq!(
                        errno(fs.getattr(&ctx, e.inode, None)),
                        libc::EBADF,
                        "{policy:?} {}",
                        String::from_utf8_lossy(name)
                    );
                }
            }
        }
        assert!(
            fs.getattr(&ctx, sub, None).is_ok(),
            "LOOKUP's reference stays"
        );
    }
}

/// A name listed by READDIR that LOOKUP then refuses (under `deny` it became a symlink
/// leaving the tree, or it vanished, after getdents read it) is listed with node ID 0, and
/// LOOKUP gives the error.
#[test]
fn readdirplus_gives_no_node_where_lookup_fails() {
    let policy = SymlinkPolicy::Deny;
    let dir = tempfile::tempdir().unwrap();
    let shared = dir.path().join("shared");
    std::fs::create_dir(&shared).unwrap();
    std::fs::write(dir.path().join("outside"), b"secret").unwrap();
    let names = ["esc1", "esc2", "gone1", "gone2", "keep1", "keep2", "inlink"];
    for name in names {
        std::fs::write(shared.join(name), b"x").unwrap();
    }
    let fs = open_fs(
        &shared,
        FsConfig {
            symlinks: policy,
            ..FsConfig::default()
        },
    );
    let ctx = Context::new();
    let mut first = Vec::new();
    let plus = readdirplus_entries(&fs, ROOT_ID, |name| {
        first = name.to_vec();
        for other in names.iter().filter(|o| o.as_bytes() != name) {
            let path = shared.join(other);
            if other.starts_with("esc") {
                std::fs::remove_file(&path).unwrap();
                std::os::unix::fs::symlink("../outside", &path).unwrap();
            } else if other.starts_with("gone") {
                std::fs::remove_file(&path).unwrap();
            } else if *other == "inlink" {
                std::fs::remove_file(&path).unwrap();
                std::os::unix::fs::symlink("keep1", &path).unwrap();
            }
        }
    });
    let mut listed: Vec<_> = plus.keys().map(|k| k.as_slice()).collect();
    listed.retain(|k| *k != b"." && *k != b"..");
    let mut all: Vec<_> = names.iter().map(|n| n.as_bytes()).collect();
    all.sort();
    assert_eq!(listed, all, "{policy:?}: every name is listed");
    for name in names {
        let (_, e) = &plus[name.as_bytes()];
        if name.as_bytes() == first {
            continue; // Looked up before anything changed.
        }
        let c = CString::new(name).unwrap();
        match name {
            n if n.starts_with("esc") => {
                assert_eq!(e.inode, 0, "{policy:?} {n}");
                assert_eq!(errno(fs.lookup(&ctx, ROOT_ID, &c)), libc::EACCES);
            }
            n if n.starts_with("gone") => {
                assert_eq!(e.inode, 0, "{policy:?} {n}");
                assert_eq!(errno(fs.lookup(&ctx, ROOT_ID, &c)), libc::ENOENT);
            }
            n => {
                assert_ne!(e.inode, 0, "{policy:?} {n}");
                let want = if n == "inlink" {
                    libc::S_IFLNK
                } else {
                    libc::S_IFREG
                };
                assert_eq!(e.attr.st_mode & libc::S_IFMT, want, "{policy:?} {n}");
            }
        }
    }
    // And a symlink already leaving the tree is hidden from both listings alike.
    for esc in ["esc1", "esc2"] {
        let path = shared.join(esc);
        if !path.is_symlink() {
            std::fs::remove_file(&path).unwrap();
            std::os::unix::fs::symlink("../outside", &path).unwrap();
        }
    }
    let plus = readdirplus_entries(&fs, ROOT_ID, |_| {});
    assert!(!plus.keys().any(|k| k.starts_with(b"esc")), "{policy:?}");
    let names: Vec<_> = plus.keys().cloned().collect();
    assert_eq!(names, readdir_names(&fs, ROOT_ID));
}

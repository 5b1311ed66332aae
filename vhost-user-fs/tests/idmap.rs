//! Ownership translation (`--translate-uid`, `--translate-gid`) on a real directory, without
//! a guest: FUSE requests as bytes through the real queue loop (CREATE, GETATTR, LOOKUP,
//! SETATTR with the caller's IDs in the header) and the `FileSystem` trait for the rest.
//! The backend must run as root, as it does in production, to give files to other owners.

#[path = "common/wire.rs"]
mod wire;

use std::ffi::{CStr, CString};
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use fuse_backend_rs::abi::fuse_abi::CreateIn;
use fuse_backend_rs::api::filesystem::{Context, FileSystem, SetattrValid, ROOT_ID};
use sm_vhost_user_fs::fs::{FsConfig, SharedFs};
use sm_vhost_user_fs::idmap::{IdMap, IdMaps, OVERFLOW_ID};
use wire::{Reply, Wire, OUT_HEADER};

const CREATE: u32 = 35;
const SETATTR: u32 = 4;
const FATTR_UID: u32 = 1 << 1;
const FATTR_GID: u32 = 1 << 2;
/// Where `struct fuse_attr` starts in a `fuse_entry_out` and in a `fuse_attr_out`.
const ENTRY_ATTR: usize = 40;
const ATTR_OUT_ATTR: usize = 16;
/// Where the owner is in `struct fuse_attr`.
const ATTR_UID: usize = 68;

fn root_or_skip() -> bool {
    sm_test_support::require(sm_test_support::is_root(), "root (files of other owners)")
}

fn maps(uids: &[&str], gids: &[&str]) -> IdMaps {
    let map = |rules: &[&str]| {
        let rules: Vec<_> = rules.iter().map(|r| r.parse().unwrap()).collect();
        IdMap::new(&rules).unwrap()
    };
    IdMaps {
        uids: map(uids),
        gids: map(gids),
    }
}

fn open_fs(dir: &Path, ids: IdMaps) -> SharedFs {
    let cfg = FsConfig {
        chown_new: true,
        ..FsConfig::default()
    };
    SharedFs::open_dir(dir, cfg).unwrap().with_id_maps(ids)
}

/// The errno of a failure (`None` on success).
fn errno_of<T>(r: std::io::Result<T>) -> Option<i32> {
    r.err().and_then(|e| e.raw_os_error())
}

fn owner(path: &Path) -> (u32, u32) {
    let m = std::fs::symlink_metadata(path).unwrap();
    (m.uid(), m.gid())
}

/// The owner in a reply whose body holds a `struct fuse_attr` at `at`.
fn reply_owner(r: &Reply, at: usize) -> (u32, u32) {
    assert_eq!(r.error(), Some(0), "request failed");
    let b = r.body();
    let word = |o: usize| u32::from_le_bytes(b[o..o + 4].try_into().unwrap());
    (word(at + ATTR_UID), word(at + ATTR_UID + 4))
}

/// A request from the guest caller `uid`:`gid` (the in header's IDs).
fn request_as(wire: &mut Wire, uid: u32, gid: u32, opcode: u32, node: u64, body: &[u8]) -> Reply {
    let mut req = wire::header(body.len(), opcode, 1000 + u64::from(opcode), node, body);
    req[24..28].copy_from_slice(&uid.to_le_bytes());
    req[28..32].copy_from_slice(&gid.to_le_bytes());
    let r = wire.send(&req);
    assert!(r.bytes.len() >= OUT_HEADER, "no reply to {opcode}");
    r
}

fn getattr(wire: &mut Wire, node: u64) -> (u32, u32) {
    let r = wire.request(wire::op::GETATTR, node, &[0u8; 16]);
    reply_owner(&r, ATTR_OUT_ATTR)
}

/// The guest's root is host 100000: what it creates belongs to 100000 on the host and to
/// 0 in the guest; host files show their guest owner, or `nobody` outside the range.
#[test]
fn guest_root_is_an_unprivileged_host_user() {
    if !root_or_skip() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let host = tmp.path();
    for (name, uid, gid) in [("mapped", 100005, 100007), ("hosts", 0, 0)] {
        std::fs::write(host.join(name), b"x").unwrap();
        std::os::unix::fs::chown(host.join(name), Some(uid), Some(gid)).unwrap();
    }
    let ids = maps(&["map:0:100000:65536"], &["map:0:100000:65536"]);
    let mut wire = Wire::new(open_fs(host, ids));
    wire.init();

    // CREATE as the guest's root: fuse_create_in (flags, mode, umask, open_flags), name.
    let mut body = Vec::new();
    for v in [libc::O_RDWR as u32, libc::S_IFREG | 0o644, 0o022, 0] {
        body.extend_from_slice(&v.to_le_bytes());
    }
    body.extend_from_slice(b"made\0");
    let r = request_as(&mut wire, 0, 0, CREATE, ROOT_ID, &body);
    assert_eq!(reply_owner(&r, ENTRY_ATTR), (0, 0), "CREATE's reply");
    assert_eq!(owner(&host.join("made")), (100000, 100000), "on the host");
    let made = r.u64_at(0);
    assert_eq!(getattr(&mut wire, made), (0, 0), "GETATTR");

    let mapped = wire.lookup(ROOT_ID, b"mapped").unwrap();
    assert_eq!(getattr(&mut wire, mapped), (5, 7));
    let hosts = wire.lookup(ROOT_ID, b"hosts").unwrap();
    assert_eq!(getattr(&mut wire, hosts), (OVERFLOW_ID, OVERFLOW_ID));

    // SETATTR chown to guest 42:43 is host 100042:100043, and the reply says 42:43.
    let mut setattr = vec![0u8; 88];
    setattr[0..4].copy_from_slice(&(FATTR_UID | FATTR_GID).to_le_bytes());
    setattr[76..80].copy_from_slice(&42u32.to_le_bytes());
    setattr[80..84].copy_from_slice(&43u32.to_le_bytes());
    let r = request_as(&mut wire, 0, 0, SETATTR, made, &setattr);
    assert_eq!(reply_owner(&r, ATTR_OUT_ATTR), (42, 43), "SETATTR's reply");
    assert_eq!(owner(&host.join("made")), (100042, 100043));
}

/// Every entry point that makes a node gives it the caller's host IDs, and every reply
/// (LOOKUP, READDIRPLUS, MKDIR, SYMLINK, MKNOD, LINK) shows guest IDs.
#[test]
fn new_nodes_and_listings_use_translated_owners() {
    if !root_or_skip() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let host = tmp.path();
    let fs = open_fs(host, maps(&["map:0:100000:65536"], &["map:0:200000:65536"]));
    let ctx = Context {
        uid: 1000,
        gid: 1001,
        pid: 1,
    };
    let want_host = (101000, 201001);
    let want_guest = (1000, 1001);
    let guest_owner = |e: &fuse_backend_rs::api::filesystem::Entry| (e.attr.st_uid, e.attr.st_gid);

    let d = fs.mkdir(&ctx, ROOT_ID, c"d", 0o755, 0).unwrap();
    assert_eq!(guest_owner(&d), want_guest);
    let l = fs.symlink(&ctx, c"target", d.inode, c"l").unwrap();
    assert_eq!(guest_owner(&l), want_guest);
    let fifo = fs
        .mknod(&ctx, d.inode, c"p", libc::S_IFIFO | 0o600, 0, 0)
        .unwrap();
    assert_eq!(guest_owner(&fifo), want_guest);
    let hard = fs.link(&ctx, fifo.inode, d.inode, c"p2").unwrap();
    assert_eq!(guest_owner(&hard), want_guest);
    for name in ["d", "d/l", "d/p", "d/p2"] {
        assert_eq!(owner(&host.join(name)), want_host, "{name}");
    }
    assert_eq!(
        guest_owner(&fs.lookup(&ctx, d.inode, c"l").unwrap()),
        want_guest
    );

    let h = fs.opendir(&ctx, d.inode, 0).unwrap().0.unwrap();
    let mut seen = Vec::new();
    fs.readdirplus(&ctx, d.inode, h, 4096, 0, &mut |dirent, e| {
        if e.inode != 0 {
            seen.push((dirent.name.to_vec(), guest_owner(&e)));
        }
        Ok(1)
    })
    .unwrap();
    seen.sort();
    let names: Vec<_> = seen.iter().map(|(n, _)| n.as_slice()).collect();
    assert_eq!(names, [b"l".as_slice(), b"p", b"p2"]);
    assert!(seen.iter().all(|(_, o)| *o == want_guest), "{seen:?}");
}

/// `squash-guest` gives many guest users one host user; `forbid-guest` refuses a caller or a
/// chown target with EPERM and changes nothing on the host.
#[test]
fn squash_and_forbid() {
    if !root_or_skip() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let host = tmp.path();
    let ids = maps(
        &["squash-guest:0:1000:5000", "forbid-guest:1000:1"],
        &["squash-guest:0:1000:5000"],
    );
    let fs = open_fs(host, ids);
    let args = || CreateIn {
        flags: libc::O_RDWR as u32,
        mode: libc::S_IFREG | 0o644,
        umask: 0,
        fuse_flags: 0,
    };
    let as_user = |uid| Context {
        uid,
        gid: 0,
        pid: 1,
    };
    for (uid, name) in [(0, c"a"), (999, c"b")] {
        fs.create(&as_user(uid), ROOT_ID, name, args()).unwrap();
        let path = host.join(name.to_str().unwrap());
        assert_eq!(owner(&path), (5000, 5000), "{name:?}");
    }
    // No host-to-guest rule: host IDs show as they are.
    let a = fs.lookup(&as_user(0), ROOT_ID, c"a").unwrap();
    assert_eq!((a.attr.st_uid, a.attr.st_gid), (5000, 5000));

    let forbidden = as_user(1000);
    assert_eq!(
        errno_of(fs.create(&forbidden, ROOT_ID, c"c", args())),
        Some(libc::EPERM)
    );
    assert_eq!(
        errno_of(fs.mkdir(&forbidden, ROOT_ID, c"e", 0o755, 0)),
        Some(libc::EPERM)
    );
    assert!(!host.join("c").exists() && !host.join("e").exists());
    let mut attr = a.attr;
    attr.st_uid = 1000;
    let chown = fs.setattr(&as_user(0), a.inode, attr, None, SetattrValid::UID);
    assert_eq!(errno_of(chown), Some(libc::EPERM));
    assert_eq!(owner(&host.join("a")), (5000, 5000));
    // Not forbidden: the guest's 1001 has no rule and passes unchanged.
    attr.st_uid = 1001;
    fs.setattr(&as_user(0), a.inode, attr, None, SetattrValid::UID)
        .unwrap();
    assert_eq!(owner(&host.join("a")), (1001, 5000));
}

/// POSIX ACL entries name users and groups too: translated both ways, forbidden ones refused.
#[test]
fn acl_entries_are_translated() {
    if !root_or_skip() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let host = tmp.path();
    std::fs::write(host.join("f"), b"x").unwrap();
    let fs = open_fs(
        host,
        maps(&["map:0:100000:65536", "forbid-guest:70000:1"], &[]),
    );
    let ctx = Context::new();
    let f = fs.lookup(&ctx, ROOT_ID, c"f").unwrap().inode;
    // Version 2; USER_OBJ rw, USER 5 r, GROUP_OBJ r, MASK r, OTHER none.
    let acl = |user: u32| {
        let mut v = 2u32.to_le_bytes().to_vec();
        for (tag, perm, id) in [
            (0x01u16, 6u16, u32::MAX),
            (0x02, 4, user),
            (0x04, 4, u32::MAX),
            (0x10, 4, u32::MAX),
            (0x20, 0, u32::MAX),
        ] {
            v.extend_from_slice(&tag.to_le_bytes());
            v.extend_from_slice(&perm.to_le_bytes());
            v.extend_from_slice(&id.to_le_bytes());
        }
        v
    };
    const NAME: &CStr = c"system.posix_acl_access";
    match fs.setxattr(&ctx, f, NAME, &acl(5), 0) {
        Err(e) if e.raw_os_error() == Some(libc::EOPNOTSUPP) => {
            sm_test_support::skip_or_fail("the test directory has no POSIX ACLs");
            return;
        }
        r => r.unwrap(),
    }
    let mut buf = [0u8; 256];
    let path = CString::new(host.join("f").to_str().unwrap()).unwrap();
    // SAFETY: NUL-terminated strings and a buffer of the given length.
    let n = unsafe { libc::getxattr(path.as_ptr(), NAME.as_ptr(), buf.as_mut_ptr().cast(), 256) };
    assert_eq!(&buf[..n as usize], acl(100005), "the host's ACL");
    match fs.getxattr(&ctx, f, NAME, 256).unwrap() {
        fuse_backend_rs::api::filesystem::GetxattrReply::Value(v) => assert_eq!(v, acl(5)),
        _ => panic!("expected the value"),
    }
    let r = fs.setxattr(&ctx, f, NAME, &acl(70000), 0);
    assert_eq!(r.unwrap_err().raw_os_error(), Some(libc::EPERM));
}

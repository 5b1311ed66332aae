//! FUSE's no-open mode on a real directory, as the guest kernel drives it: FUSE requests as
//! bytes through the backend's real queue loop. Once the kernel offers it at INIT, OPEN of a
//! file answers ENOSYS (the kernel then opens files without a request) and READ and WRITE
//! with handle 0 reach the host file; a read-only share, cache `never`, `--open-requests`
//! and a kernel that cannot do it keep OPEN.

#[path = "common/wire.rs"]
mod wire;

use std::path::{Path, PathBuf};

use fuse_backend_rs::api::filesystem::ROOT_ID;
use sm_vhost_user_fs::fs::{FsConfig, SharedFs};
use sm_vhost_user_fs::policy::CacheMode;
use wire::op::{self, RELEASE};
use wire::Wire;

/// FUSE_ATOMIC_O_TRUNC: the kernel sends O_TRUNC in OPEN.
const ATOMIC_O_TRUNC: u32 = 1 << 3;
/// FUSE_NO_OPEN_SUPPORT: the kernel takes ENOSYS from OPEN as "no more OPENs".
const NO_OPEN_SUPPORT: u32 = 1 << 17;
/// What Linux 6.1 offers of the flags these tests look at.
const KERNEL: u32 = ATOMIC_O_TRUNC | NO_OPEN_SUPPORT;
/// FOPEN_DIRECT_IO in an OPEN reply.
const FOPEN_DIRECT_IO: u32 = 1;
const ENOSYS: i32 = -libc::ENOSYS;
/// FUSE_CREATE.
const CREATE: u32 = 35;
const EROFS: i32 = -libc::EROFS;

/// A share holding `f` ("0123456789") and the directory `d`, served with `cfg`.
fn share(cfg: FsConfig) -> (tempfile::TempDir, Wire) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("f"), "0123456789").unwrap();
    std::fs::create_dir(dir.path().join("d")).unwrap();
    let fs = SharedFs::open_dir(dir.path(), cfg).unwrap();
    (dir, Wire::new(fs))
}

/// The defaults: no-open mode, cache auto, writable.
fn defaults() -> FsConfig {
    let cfg = FsConfig::default();
    assert!(cfg.no_open, "no-open mode is the default");
    cfg
}

/// `--open-requests`.
fn open_requests() -> FsConfig {
    FsConfig {
        no_open: false,
        ..FsConfig::default()
    }
}

/// A share served with `cfg`, after an INIT offering `offered`, which must keep OPEN (and so
/// `ATOMIC_O_TRUNC`, when offered) because of `what`; and the node of `f`.
fn open_kept(what: &str, cfg: FsConfig, offered: u32) -> (tempfile::TempDir, Wire, u64) {
    let (dir, mut wire) = share(cfg);
    let took = wire.init_with(offered);
    assert_eq!(
        took & NO_OPEN_SUPPORT,
        0,
        "{what} must keep OPEN: {took:#x}"
    );
    assert_eq!(
        took & ATOMIC_O_TRUNC,
        offered & ATOMIC_O_TRUNC,
        "{what}: O_TRUNC stays in OPEN: {took:#x}"
    );
    let f = wire.lookup(ROOT_ID, b"f").unwrap();
    (dir, wire, f)
}

/// READ of `size` bytes at `offset` through `fh`: the data, or the negative errno.
fn read(wire: &mut Wire, node: u64, fh: u64, offset: u64, size: u32) -> Result<Vec<u8>, i32> {
    let mut body = Vec::new();
    body.extend_from_slice(&fh.to_le_bytes());
    body.extend_from_slice(&offset.to_le_bytes());
    body.extend_from_slice(&size.to_le_bytes());
    body.extend_from_slice(&[0u8; 4 + 8 + 4 + 4]); // read_flags, lock_owner, flags, padding
    let r = wire.request(op::READ, node, &body);
    match r.error() {
        Some(0) => Ok(r.body().to_vec()),
        Some(e) => Err(e),
        None => Err(i32::MIN),
    }
}

/// CREATE of `name` in the root with `flags`: the new node and the handle, or the errno.
fn create(wire: &mut Wire, name: &[u8], flags: u32) -> Result<(u64, u64), i32> {
    let mut body = Vec::new();
    for v in [flags, 0o644, 0o022, 0] {
        body.extend_from_slice(&v.to_le_bytes()); // flags, mode, umask, open_flags
    }
    body.extend_from_slice(name);
    body.push(0);
    let r = wire.request(CREATE, ROOT_ID, &body);
    match r.error() {
        // fuse_entry_out (128 bytes), then fuse_open_out.
        Some(0) => Ok((r.u64_at(0), r.u64_at(128))),
        Some(e) => Err(e),
        None => Err(i32::MIN),
    }
}

/// The `open_flags` of an OPEN reply (after the handle), or the negative errno.
fn open_reply_flags(wire: &mut Wire, node: u64, flags: u32) -> Result<u32, i32> {
    let mut body = flags.to_le_bytes().to_vec();
    body.extend_from_slice(&0u32.to_le_bytes());
    let r = wire.request(op::OPEN, node, &body);
    match r.error() {
        Some(0) => Ok(u32::from_le_bytes(r.body()[8..12].try_into().unwrap())),
        Some(e) => Err(e),
        None => Err(i32::MIN),
    }
}

/// How many of this process's descriptors (the backend runs in the test) name the file
/// at `path`, a canonical path, or the same file after its removal.
fn fds_on(path: &Path) -> usize {
    let deleted = PathBuf::from(format!("{} (deleted)", path.display()));
    std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter(|target| *target == path || *target == deleted)
        .count()
}

#[test]
fn open_is_declined_and_reads_and_writes_with_handle_zero_reach_the_file() {
    let (dir, mut wire) = share(defaults());
    let took = wire.init_with(KERNEL);
    assert_ne!(
        took & NO_OPEN_SUPPORT,
        0,
        "no-open mode not taken: {took:#x}"
    );
    assert_eq!(
        took & ATOMIC_O_TRUNC,
        0,
        "O_TRUNC must come as a SETATTR: {took:#x}"
    );

    let f = wire.lookup(ROOT_ID, b"f").unwrap();
    assert_eq!(wire.open(f, libc::O_RDONLY as u32), Err(ENOSYS));
    assert_eq!(read(&mut wire, f, 0, 2, 4).unwrap(), b"2345");

    assert_eq!(wire.write(f, 0, 4, b"ab"), Ok(2));
    assert_eq!(wire.write_with(f, 0, 0, libc::O_APPEND as u32, b"Z"), Ok(1));
    let host = std::fs::read_to_string(dir.path().join("f")).unwrap();
    assert_eq!(
        host, "0123ab6789Z",
        "writes at an offset and an O_APPEND write"
    );
    assert_eq!(read(&mut wire, f, 0, 0, 64).unwrap(), b"0123ab6789Z");

    // Directories keep OPENDIR (READDIR needs its position); handle 0 is no directory's.
    let d = wire.lookup(ROOT_ID, b"d").unwrap();
    let r = wire.request(op::OPENDIR, d, &[0u8; 8]);
    assert_eq!(r.error(), Some(0), "OPENDIR");
    assert_eq!(read(&mut wire, d, 0, 0, 64), Err(-libc::EBADF));
}

#[test]
fn a_created_file_gets_no_handle_and_its_writes_land() {
    // Linux 6.1 sends no RELEASE in no-open mode, even for a file it created: a handle
    // would stay open for ever.
    let (dir, mut wire) = share(defaults());
    wire.init_with(KERNEL);
    let flags = (libc::O_WRONLY | libc::O_CREAT | libc::O_TRUNC) as u32;
    let (n, fh) = create(&mut wire, b"new", flags).unwrap();
    assert_eq!(fh, 0, "no handle in no-open mode");
    assert_eq!(wire.write(n, 0, 0, b"hello"), Ok(5));
    let path = dir.path().join("new").canonicalize().unwrap();
    assert_eq!(std::fs::read_to_string(&path).unwrap(), "hello");
    // A RELEASE of handle 0 (later kernels send one for a created file) is no error.
    let r = wire.request(RELEASE, n, &[0u8; 24]);
    assert_eq!(r.error(), Some(0));
    // The node, and the file kept from the CREATE (the write used it: no second one).
    assert_eq!(fds_on(&path), 2);
    wire.request(op::FORGET, n, &1u64.to_le_bytes());
    assert_eq!(fds_on(&path), 0, "descriptors left on the created file");

    // With --open-requests, CREATE issues a handle.
    let (_dir, mut wire) = share(open_requests());
    wire.init_with(KERNEL);
    let (_, fh) = create(&mut wire, b"new", flags).unwrap();
    assert_ne!(fh, 0);
}

#[test]
fn a_forgotten_file_is_closed() {
    let (dir, mut wire) = share(defaults());
    wire.init_with(KERNEL);
    let path = dir.path().join("f").canonicalize().unwrap();
    let f = wire.lookup(ROOT_ID, b"f").unwrap();
    read(&mut wire, f, 0, 0, 4).unwrap();
    wire.write(f, 0, 0, b"x").unwrap();
    // The node's O_PATH descriptor, and the files opened for the read and the write.
    assert_eq!(fds_on(&path), 3);
    // Removed (by the guest, say), then forgotten: nothing may keep its space on the host.
    std::fs::remove_file(&path).unwrap();
    wire.request(op::FORGET, f, &1u64.to_le_bytes()); // nlookup
    assert_eq!(fds_on(&path), 0, "descriptors left on the removed file");
}

#[test]
fn a_read_only_share_keeps_open_and_refuses_writes_with_erofs() {
    let cfg = FsConfig {
        read_only: true,
        ..defaults()
    };
    let (dir, mut wire, f) = open_kept("read-only", cfg, KERNEL);
    assert_eq!(wire.open(f, libc::O_WRONLY as u32), Err(EROFS));
    assert!(wire.open(f, libc::O_RDONLY as u32).unwrap() > 0);
    assert_eq!(wire.write(f, 0, 0, b"x"), Err(EROFS));
    let host = std::fs::read_to_string(dir.path().join("f")).unwrap();
    assert_eq!(host, "0123456789");
}

#[test]
fn cache_never_keeps_open_for_direct_io() {
    let cfg = FsConfig {
        cache: CacheMode::Never,
        ..defaults()
    };
    let (_dir, mut wire, f) = open_kept("cache never", cfg, KERNEL);
    let flags = open_reply_flags(&mut wire, f, libc::O_RDONLY as u32).unwrap();
    assert_ne!(flags & FOPEN_DIRECT_IO, 0, "OPEN reply flags {flags:#x}");
}

#[test]
fn without_no_open_or_with_an_older_kernel_open_stays() {
    let cases = [
        ("with --open-requests", open_requests(), KERNEL),
        ("a kernel without no-open", defaults(), ATOMIC_O_TRUNC),
    ];
    for (what, cfg, offered) in cases {
        let (_dir, mut wire, f) = open_kept(what, cfg, offered);
        let fh = wire.open(f, libc::O_RDWR as u32).unwrap();
        assert_eq!(read(&mut wire, f, fh, 0, 3).unwrap(), b"012", "{what}");
    }
}

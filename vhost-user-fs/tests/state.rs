//! The snapshot state of the shared file system at the library level, on a real directory:
//! what SAVE records (paths after renames, lookup counts, open flags, unlinked files), that a
//! fresh file system LOADs it with the same node IDs and handles, and that LOAD reopens each
//! path with LOOKUP's rules and refuses, naming the inode, whatever no longer fits.

use std::ffi::CStr;
use std::path::Path;

use fuse_backend_rs::api::filesystem::{Context, FileSystem, FsOptions, ROOT_ID};
use sm_vhost_user_fs::fs::state::{FsState, HostPath};
use sm_vhost_user_fs::fs::{FsConfig, SharedFs};
use sm_vhost_user_fs::policy::SymlinkPolicy;

fn open_fs(dir: &Path, cfg: FsConfig) -> SharedFs {
    SharedFs::open_dir(dir, cfg).unwrap()
}

/// Symlinks `deny`, OPEN answered (`--open-requests`): file handles are what SAVE records.
fn deny() -> FsConfig {
    FsConfig {
        symlinks: SymlinkPolicy::Deny,
        no_open: false,
        ..FsConfig::default()
    }
}

fn lookup(fs: &SharedFs, parent: u64, name: &CStr) -> u64 {
    fs.lookup(&Context::new(), parent, name).unwrap().inode
}

fn open(fs: &SharedFs, node: u64, flags: i32) -> u64 {
    let ctx = Context::new();
    fs.open(&ctx, node, flags as u32, 0).unwrap().0.unwrap()
}

fn path_of(state: &FsState, id: u64) -> Option<String> {
    let node = state.inodes.iter().find(|i| i.id == id).unwrap();
    node.path.as_ref().map(|p| match p {
        HostPath::Text(s) => s.clone(),
        HostPath::Bytes(b) => String::from_utf8_lossy(b).into_owned(),
    })
}

/// A tree with d/f and d/sub/x, the file system after INIT, LOOKUPs of all four (f twice),
/// f open for appending, d/sub open as a directory, and `tmp` created, opened and unlinked.
struct Setup {
    _tmp: tempfile::TempDir,
    shared: std::path::PathBuf,
    fs: SharedFs,
    d: u64,
    f: u64,
    sub: u64,
    x: u64,
    tmp_node: u64,
    f_handle: u64,
    sub_handle: u64,
    tmp_handle: u64,
}

fn setup(cfg: FsConfig) -> Setup {
    let tmp = tempfile::tempdir().unwrap();
    let shared = tmp.path().join("shared");
    std::fs::create_dir_all(shared.join("d/sub")).unwrap();
    std::fs::write(shared.join("d/f"), b"f").unwrap();
    std::fs::write(shared.join("d/sub/x"), b"x").unwrap();
    std::fs::write(shared.join("tmp"), b"t").unwrap();
    let fs = open_fs(&shared, cfg);
    let ctx = Context::new();
    fs.init(FsOptions::all()).unwrap();
    let d = lookup(&fs, ROOT_ID, c"d");
    let f = lookup(&fs, d, c"f");
    lookup(&fs, d, c"f");
    let sub = lookup(&fs, d, c"sub");
    let x = lookup(&fs, sub, c"x");
    let tmp_node = lookup(&fs, ROOT_ID, c"tmp");
    let f_handle = open(&fs, f, libc::O_WRONLY | libc::O_APPEND);
    let sub_handle = fs.opendir(&ctx, sub, 0).unwrap().0.unwrap();
    let tmp_handle = open(&fs, tmp_node, libc::O_RDONLY);
    fs.unlink(&ctx, ROOT_ID, c"tmp").unwrap();
    Setup {
        _tmp: tmp,
        shared,
        fs,
        d,
        f,
        sub,
        x,
        tmp_node,
        f_handle,
        sub_handle,
        tmp_handle,
    }
}

/// SAVE records each node's current path (after a rename on the host), its lookup count,
/// the open flags, and no path for an unlinked file; LOAD in a fresh file system keeps every
/// node ID and handle, drops the unlinked one, and numbers new nodes after the saved ones.
#[test]
fn a_fresh_file_system_loads_the_same_ids_and_handles() {
    let s = setup(deny());
    std::fs::rename(s.shared.join("d/sub"), s.shared.join("d/renamed")).unwrap();
    let state = s.fs.save_state().unwrap();
    assert_eq!(path_of(&state, s.d).as_deref(), Some("d"));
    assert_eq!(path_of(&state, s.f).as_deref(), Some("d/f"));
    assert_eq!(path_of(&state, s.sub).as_deref(), Some("d/renamed"));
    assert_eq!(path_of(&state, s.x).as_deref(), Some("d/renamed/x"));
    assert_eq!(path_of(&state, s.tmp_node), None, "unlinked");
    let f = state.inodes.iter().find(|i| i.id == s.f).unwrap();
    assert_eq!((f.kind.as_str(), f.lookups), ("file", 2));
    let h = state
        .handles
        .iter()
        .find(|h| h.handle == s.f_handle)
        .unwrap();
    assert_eq!(h.flags, libc::O_WRONLY | libc::O_APPEND);
    assert!(state.fuse_options.is_some());

    let bytes = s.fs.save_state_bytes().unwrap();
    let b = open_fs(&s.shared, deny());
    b.load_state_bytes(&bytes).unwrap();
    assert_eq!(b.fuse_options(), state.fuse_options);
    assert_eq!(b.inode_count(), 5, "root, d, f, sub, x");
    assert!(b.has_handle(s.f_handle, s.f));
    assert!(b.has_handle(s.sub_handle, s.sub));
    assert!(!b.has_handle(s.tmp_handle, s.tmp_node), "dropped");
    let ctx = Context::new();
    let (st, _) = b.getattr(&ctx, s.x, None).unwrap();
    let host = std::fs::metadata(s.shared.join("d/renamed/x")).unwrap();
    assert_eq!(st.st_ino, std::os::unix::fs::MetadataExt::ino(&host));
    assert_eq!(lookup(&b, s.sub, c"x"), s.x, "LOOKUP finds the saved node");
    std::fs::write(s.shared.join("new"), b"n").unwrap();
    assert!(lookup(&b, ROOT_ID, c"new") >= state.next_inode);
    b.release(&ctx, s.f, 0, s.f_handle, false, false, None)
        .unwrap();
    assert!(!b.has_handle(s.f_handle, s.f));
}

/// Each refusal names the inode, its path and why; a refused LOAD changes nothing.
#[test]
fn load_refuses_what_no_longer_fits_and_names_it() {
    let refuse = |s: &Setup, cfg: FsConfig, state: &FsState| -> String {
        let b = open_fs(&s.shared, cfg);
        let e = b.load_state(state).unwrap_err().to_string();
        assert_eq!(b.inode_count(), 1, "a refused LOAD left nodes behind");
        e
    };

    // Under deny, d replaced by a symlink out of the share (to a copy with the same names).
    let s = setup(deny());
    let state = s.fs.save_state().unwrap();
    let outside = s._tmp.path().join("outside");
    std::fs::create_dir_all(&outside).unwrap();
    std::fs::rename(s.shared.join("d"), outside.join("d")).unwrap();
    std::os::unix::fs::symlink(outside.join("d"), s.shared.join("d")).unwrap();
    assert_eq!(
        refuse(&s, deny(), &state),
        format!(
            "inode {} (d): \"d\" is a symlink leaving the shared directory (--symlinks deny)",
            s.d
        )
    );
    // Under opaque (never followed), even a symlink inside the share is no directory: d
    // itself is refused, and so is a path through it.
    std::fs::remove_file(s.shared.join("d")).unwrap();
    std::os::unix::fs::symlink(".", s.shared.join("d")).unwrap();
    let opaque = FsConfig {
        no_open: false,
        ..FsConfig::default()
    };
    let mut same_cfg = state.clone();
    same_cfg.config.symlinks = "opaque".into();
    assert_eq!(
        refuse(&s, opaque, &same_cfg),
        format!("inode {} (d): was a dir, is now a symlink", s.d)
    );
    same_cfg.inodes.retain(|i| i.id != s.d);
    assert_eq!(
        refuse(&s, opaque, &same_cfg),
        format!("inode {} (d/f): \"d\" is no longer a directory", s.f)
    );

    // A file gone, a file turned into a directory.
    let s = setup(deny());
    let state = s.fs.save_state().unwrap();
    std::fs::remove_file(s.shared.join("d/sub/x")).unwrap();
    assert_eq!(
        refuse(&s, deny(), &state),
        format!("inode {} (d/sub/x): \"d/sub/x\" no longer exists", s.x)
    );
    std::fs::create_dir(s.shared.join("d/sub/x")).unwrap();
    assert_eq!(
        refuse(&s, deny(), &state),
        format!("inode {} (d/sub/x): was a file, is now a dir", s.x)
    );

    // A crafted path may not climb out, whatever the host tree holds.
    let mut crafted = state.clone();
    crafted.inodes[0].path = Some(HostPath::Text("../shared/d".into()));
    let e = refuse(&s, deny(), &crafted);
    assert!(
        e.ends_with("\"..\" is not a plain name (path not below the share)"),
        "{e}"
    );
    let mut crafted = state.clone();
    crafted.inodes[0].path = Some(HostPath::Text("/etc".into()));
    let e = refuse(&s, deny(), &crafted);
    assert!(e.contains("is not a plain name"), "{e}");

    // Other flags, another version, garbage.
    let ro = FsConfig {
        read_only: true,
        ..deny()
    };
    let e = refuse(&s, ro, &state);
    assert!(e.starts_with("state was saved with ConfigState"), "{e}");
    let mut v2 = state.clone();
    v2.version = 2;
    assert_eq!(
        refuse(&s, deny(), &v2),
        "state is \"sm-vhost-user-fs\" version 2, this backend reads \"sm-vhost-user-fs\" version 1"
    );
    let b = open_fs(&s.shared, deny());
    let e = b.load_state_bytes(b"[1, 2").unwrap_err().to_string();
    assert!(
        e.starts_with("not an sm-vhost-user-fs state document: "),
        "{e}"
    );
}

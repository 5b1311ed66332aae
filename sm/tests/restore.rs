//! `sm restore` and `sm snapshot` as a user runs them, for the bad input that needs no
//! guest: an altered, truncated or incomplete snapshot, another format version, a name in
//! use, a volume in use. Each is one line, a non-zero exit, and nothing left: no runtime
//! directory, no process. (Clones of real guests: integration/tests/guest/clone.rs.)

use std::os::fd::AsFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use sm::vm::record::{volume_file_name, RunRecord, RECORD_FILE};
use sm::VmConfig;
use sm_snapshot::{MemoryLayout, MemoryRegion, SnapshotInfo, SnapshotWriter};

/// `sm ARGS` with its runtime directory under `runtime`.
fn sm(runtime: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_sm"))
        .args(args)
        .env("XDG_RUNTIME_DIR", runtime)
        .env("SM_BIN_DIR", runtime.join("no-binaries-here"))
        .output()
        .unwrap()
}

/// Asserts failure with exactly one `sm: ...` line on stderr containing `needle`, and
/// nothing left under the runtime directory.
fn assert_refused(o: &Output, needle: &str, runtime: &Path) {
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "expected failure; stderr: {e}");
    assert_eq!(e.lines().count(), 1, "want one error line, got: {e}");
    assert!(
        e.starts_with("sm: ") && e.contains(needle),
        "want {needle:?} in: {e}"
    );
    let left: Vec<_> = std::fs::read_dir(runtime.join("sm"))
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "left behind: {left:?}");
    let mut procs = vec![];
    for p in std::fs::read_dir("/proc").unwrap().flatten() {
        if let Ok(cmd) = std::fs::read(p.path().join("cmdline")) {
            let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
            if cmd.contains(&*runtime.to_string_lossy()) {
                procs.push(cmd);
            }
        }
    }
    assert!(procs.is_empty(), "processes left behind: {procs:?}");
}

/// A snapshot as `sm snapshot` writes one: memory, a volume copy and the run record of a
/// VM with a volume at /cache.
fn snapshot(dir: &Path) -> PathBuf {
    let target = dir.join("snap");
    let mut w = SnapshotWriter::create(&target).unwrap();
    w.write_file("memory", &[7u8; 4096]).unwrap();
    w.write_file(&volume_file_name(0), b"an ext4 volume, as it was")
        .unwrap();
    let config = VmConfig {
        volumes: vec!["/nowhere/cache.img:/cache".parse().unwrap()],
        ..VmConfig::default()
    };
    let record = serde_json::to_vec(&RunRecord::new(&config)).unwrap();
    w.write_file(RECORD_FILE, &record).unwrap();
    w.finish(SnapshotInfo {
        memory: MemoryLayout {
            file: "memory".into(),
            regions: vec![MemoryRegion {
                guest_addr: 0,
                size: 4096,
                file_offset: 0,
            }],
        },
        ..SnapshotInfo::default()
    })
    .unwrap();
    target
}

#[test]
fn a_damaged_snapshot_is_one_line_and_nothing_starts() {
    let tmp = tempfile::tempdir().unwrap();
    let runtime = tmp.path().join("run");
    std::fs::create_dir(&runtime).unwrap();
    let snap = snapshot(tmp.path());
    let s = snap.to_str().unwrap();

    // Altered: one byte of the volume copy flipped.
    let vol = snap.join(volume_file_name(0));
    let f = std::fs::OpenOptions::new().write(true).open(&vol).unwrap();
    f.write_all_at(b"A", 0).unwrap();
    for args in [
        &["restore", s, "--name", "b", "-d"][..],
        &["restore", s, "--", "true"][..],
    ] {
        assert_refused(&sm(&runtime, args), "sha256 does not match", &runtime);
    }
    f.write_all_at(b"a", 0).unwrap();

    // Truncated memory.
    let mem = snap.join("memory");
    let m = std::fs::OpenOptions::new().write(true).open(&mem).unwrap();
    m.set_len(100).unwrap();
    assert_refused(&sm(&runtime, &["restore", s, "-d"]), "truncated", &runtime);
    m.set_len(0).unwrap();
    m.write_all_at(&[7u8; 4096], 0).unwrap();

    // A missing file.
    let rec = std::fs::read(snap.join(RECORD_FILE)).unwrap();
    std::fs::remove_file(snap.join(RECORD_FILE)).unwrap();
    assert_refused(&sm(&runtime, &["restore", s, "-d"]), "missing", &runtime);
    std::fs::write(snap.join(RECORD_FILE), rec).unwrap();

    // Another format version.
    let manifest = snap.join("manifest.json");
    let text = std::fs::read_to_string(&manifest).unwrap();
    let mut v: serde_json::Value = serde_json::from_str(&text).unwrap();
    v["format_version"] = 999.into();
    std::fs::write(&manifest, serde_json::to_vec(&v).unwrap()).unwrap();
    assert_refused(
        &sm(&runtime, &["restore", s, "-d"]),
        "format version 999",
        &runtime,
    );
    std::fs::write(&manifest, text).unwrap();

    // Not a snapshot at all.
    assert_refused(
        &sm(&runtime, &["restore", tmp.path().to_str().unwrap(), "-d"]),
        "no manifest.json",
        &runtime,
    );
}

#[test]
fn a_name_or_a_volume_in_use_is_refused_before_anything_starts() {
    let tmp = tempfile::tempdir().unwrap();
    let runtime = tmp.path().join("run");
    let snap = snapshot(tmp.path());
    let s = snap.to_str().unwrap();

    // A volume file another process serves (the lock sm-vhost-user-blk holds).
    let vol = tmp.path().join("b.img");
    std::fs::write(&vol, b"b's volume").unwrap();
    let held = std::fs::OpenOptions::new().write(true).open(&vol).unwrap();
    let fl = libc::flock {
        l_type: libc::F_WRLCK as libc::c_short,
        l_whence: libc::SEEK_SET as libc::c_short,
        l_start: 0,
        l_len: 0,
        l_pid: 0,
    };
    nix::fcntl::fcntl(held.as_fd(), nix::fcntl::FcntlArg::F_OFD_SETLK(&fl)).unwrap();
    let volume = format!("{}:/cache", vol.display());
    assert_refused(
        &sm(&runtime, &["restore", s, "-d", "--volume", &volume]),
        "in use",
        &runtime,
    );
    drop(held);

    // A --volume for a guest path the snapshot has no volume at.
    let volume = format!("{}:/elsewhere", vol.display());
    assert_refused(
        &sm(&runtime, &["restore", s, "-d", "--volume", &volume]),
        "no volume at /elsewhere",
        &runtime,
    );

    // Neither -d nor a command.
    assert_refused(&sm(&runtime, &["restore", s]), "give -d", &runtime);

    // A name a running VM has.
    let taken = runtime.join("sm").join("a");
    std::fs::create_dir_all(&taken).unwrap();
    std::fs::write(taken.join("vm.vsock"), b"").unwrap();
    let o = sm(&runtime, &["restore", s, "--name", "a", "-d"]);
    std::fs::remove_dir_all(runtime.join("sm")).unwrap();
    assert_refused(&o, "a VM named a is already running", &runtime);

    // A snapshot of a VM that is not running.
    let out = tmp.path().join("snap2");
    assert_refused(
        &sm(&runtime, &["snapshot", "nosuch", out.to_str().unwrap()]),
        "no running VM named nosuch",
        &runtime,
    );
    assert!(!out.exists());
}

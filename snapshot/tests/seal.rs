//! Verification seals (`verify_sealed`) on real files: a snapshot verified once is trusted by
//! its metadata, and any change to a file after that, even one that puts the size and the
//! modification time back, is still caught.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

use sm_snapshot::{
    verify_sealed, HostFingerprint, MemoryLayout, SnapshotInfo, SnapshotWriter, VerifyError,
};

fn write_snapshot(target: &Path) {
    let mut writer = SnapshotWriter::create(target).unwrap();
    writer.write_file("memory", &vec![7u8; 8192]).unwrap();
    writer.write_file("vm.json", br#"{"vcpus":[]}"#).unwrap();
    writer
        .finish(SnapshotInfo {
            host: HostFingerprint::of_this_host(),
            kernel_sha256: None,
            initramfs_sha256: None,
            memory: MemoryLayout {
                file: "memory".into(),
                regions: vec![],
            },
            devices: vec![],
        })
        .unwrap();
}

#[test]
fn a_sealed_snapshot_still_catches_a_change_that_restores_size_and_mtime() {
    let runtime = tempfile::tempdir().unwrap();
    // This test binary has one test: no other thread reads the environment.
    std::env::set_var("XDG_RUNTIME_DIR", runtime.path());
    let dir = tempfile::tempdir().unwrap();
    let snap = dir.path().join("snap");
    write_snapshot(&snap);

    verify_sealed(&snap).expect("a whole snapshot verifies");
    let seals = runtime.path().join("sm-snapshot");
    assert_eq!(
        std::fs::read_dir(&seals).unwrap().count(),
        1,
        "one seal written"
    );
    verify_sealed(&snap).expect("sealed: verifies again");

    // Same size, same modification time, other bytes: the change time still moves.
    let path = snap.join("memory");
    let mtime = std::fs::metadata(&path).unwrap().modified().unwrap();
    std::thread::sleep(std::time::Duration::from_millis(20));
    let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    f.write_all_at(b"x", 100).unwrap();
    f.set_modified(mtime).unwrap();
    drop(f);
    match verify_sealed(&snap) {
        Err(VerifyError::Checksum(p)) => assert_eq!(p, path),
        other => panic!("the altered file must be caught, got {other:?}"),
    }
    // A seal directory others may write is not used at all.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&seals, std::fs::Permissions::from_mode(0o777)).unwrap();
    assert_eq!(sm_snapshot::seal_dir(), None);
    drop(File::open(&seals).unwrap());
}

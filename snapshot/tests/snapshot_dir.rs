//! Snapshot directories on real files: the writer's atomicity, and `sm-snapshot verify` and
//! `inspect` run as a process against good and damaged snapshots.

use std::fs::{self, File};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::{Command, Output};

use nix::sys::memfd::{memfd_create, MFdFlags};
use sm_snapshot::{
    save_memory, verify, DeviceEntry, DeviceKind, HostFingerprint, Manifest, MemoryLayout,
    MemoryRegion, SnapshotInfo, SnapshotWriter, WriteError, MANIFEST_FILE,
};

const MIB: u64 = 1 << 20;

/// Writes a small but complete snapshot at `target`: 4 MiB of guest RAM with two pages
/// written, a vCPU state file, a device state file.
fn write_snapshot(target: &Path) -> Manifest {
    let ram = File::from(memfd_create(c"test-ram", MFdFlags::MFD_CLOEXEC).expect("memfd"));
    ram.set_len(4 * MIB).unwrap();
    ram.write_all_at(b"guest page one", 4096).unwrap();
    ram.write_all_at(b"guest page two", 3 * MIB).unwrap();
    let regions = vec![MemoryRegion {
        guest_addr: 0,
        size: 4 * MIB,
        file_offset: 0,
    }];

    let mut writer = SnapshotWriter::create(target).expect("start the snapshot");
    let mem = File::create_new(writer.file_path("memory").unwrap()).unwrap();
    save_memory(&ram, &regions, &mem).expect("save memory");
    drop(mem);
    writer.add_file("memory").expect("add memory");
    writer
        .write_file("vm.json", br#"{"vcpus":[]}"#)
        .expect("vm state");
    writer
        .write_file("fs0.state", b"backend state bytes")
        .expect("device state");
    let info = SnapshotInfo {
        host: HostFingerprint::of_this_host(),
        kernel_sha256: Some("ab".repeat(32)),
        initramfs_sha256: None,
        memory: MemoryLayout {
            file: "memory".into(),
            regions,
        },
        devices: vec![
            DeviceEntry {
                kind: DeviceKind::VirtioFs,
                tag: Some("work".into()),
                socket_role: Some("fs0".into()),
                backend: Some("sm-vhost-user-fs".into()),
                state_file: Some("fs0.state".into()),
            },
            DeviceEntry {
                kind: DeviceKind::Serial,
                tag: None,
                socket_role: None,
                backend: None,
                state_file: None,
            },
        ],
    };
    writer.finish(info).expect("finish the snapshot")
}

/// Entries of `dir` whose name says they are a partial snapshot.
fn partials(dir: &Path) -> Vec<String> {
    fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".partial-"))
        .collect()
}

fn sm_snapshot(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_sm-snapshot"))
        .args(args)
        .output()
        .expect("run sm-snapshot")
}

/// Runs `sm-snapshot verify DIR`, asserts it fails with one stderr line, and returns the line.
fn verify_fails(dir: &Path) -> String {
    let out = sm_snapshot(&["verify", dir.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        !out.status.success(),
        "verify accepted a damaged snapshot: {stderr}"
    );
    assert_eq!(stderr.lines().count(), 1, "not one line: {stderr:?}");
    assert!(out.stdout.is_empty(), "stdout on failure: {:?}", out.stdout);
    stderr.trim_end().to_owned()
}

#[test]
fn a_written_snapshot_verifies_and_inspects() {
    let parent = tempfile::tempdir().unwrap();
    let snap = parent.path().join("snap");
    let written = write_snapshot(&snap);
    assert_eq!(
        verify(&snap).expect("verify"),
        written,
        "the manifest reads back as written"
    );
    assert!(
        partials(parent.path()).is_empty(),
        "partial directory left behind"
    );
    let names: Vec<&str> = written.files.iter().map(|f| f.name.as_str()).collect();
    assert_eq!(names, ["memory", "vm.json", "fs0.state"]);

    let out = sm_snapshot(&["verify", snap.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!("{}: ok\n", snap.display())
    );

    let out = sm_snapshot(&["inspect", snap.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    for expected in [
        "format version  1",
        "memory",
        &format!("{}", 4 * MIB),
        "fs0.state",
        "guest 0x000000000000..0x000000400000       4 MiB  at file offset 0x0",
        "virtio-fs     tag=work socket=fs0 backend=sm-vhost-user-fs state=fs0.state",
        "serial",
    ] {
        assert!(
            text.contains(expected),
            "inspect lacks {expected:?}:\n{text}"
        );
    }
}

#[test]
fn damaged_snapshots_fail_verify_with_one_line_naming_the_file() {
    let parent = tempfile::tempdir().unwrap();
    let make = |name: &str| {
        let dir = parent.path().join(name);
        write_snapshot(&dir);
        dir
    };

    // One byte flipped in the middle of the memory file (a hole: reads as zero).
    let dir = make("flipped");
    let mem = fs::OpenOptions::new()
        .write(true)
        .open(dir.join("memory"))
        .unwrap();
    mem.write_all_at(&[1], 2 * MIB).unwrap();
    let line = verify_fails(&dir);
    assert!(line.contains("memory") && line.contains("sha256"), "{line}");

    let dir = make("truncated");
    let state = fs::OpenOptions::new()
        .write(true)
        .open(dir.join("vm.json"))
        .unwrap();
    state.set_len(3).unwrap();
    let line = verify_fails(&dir);
    assert!(
        line.contains("vm.json") && line.contains("size 3 bytes"),
        "{line}"
    );

    let dir = make("missing");
    fs::remove_file(dir.join("fs0.state")).unwrap();
    let line = verify_fails(&dir);
    assert!(
        line.contains("fs0.state") && line.contains("missing"),
        "{line}"
    );

    let dir = make("extra");
    fs::write(dir.join("stray.bin"), b"not part of it").unwrap();
    let line = verify_fails(&dir);
    assert!(
        line.contains("stray.bin") && line.contains("not listed"),
        "{line}"
    );

    let dir = make("other-version");
    let path = dir.join(MANIFEST_FILE);
    let mut manifest: serde_json::Value =
        serde_json::from_slice(&fs::read(&path).unwrap()).unwrap();
    manifest["format_version"] = 99.into();
    fs::write(&path, serde_json::to_vec(&manifest).unwrap()).unwrap();
    let line = verify_fails(&dir);
    assert!(
        line.contains("version 99") && line.contains("reads version 1"),
        "{line}"
    );
    // inspect refuses it the same way.
    let out = sm_snapshot(&["inspect", dir.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("version 99"));

    // A listed file replaced by a symlink to the same content is refused, not followed.
    let dir = make("symlink");
    fs::rename(dir.join("vm.json"), parent.path().join("outside.json")).unwrap();
    std::os::unix::fs::symlink(parent.path().join("outside.json"), dir.join("vm.json")).unwrap();
    let line = verify_fails(&dir);
    assert!(line.contains("vm.json: not a regular file"), "{line}");

    // A manifest edited so a memory region overruns the memory file, or a device's state
    // file is not one of the snapshot's files.
    let edit_manifest = |dir: &Path, edit: &dyn Fn(&mut serde_json::Value)| {
        let path = dir.join(MANIFEST_FILE);
        let mut manifest: serde_json::Value =
            serde_json::from_slice(&fs::read(&path).unwrap()).unwrap();
        edit(&mut manifest);
        fs::write(&path, serde_json::to_vec(&manifest).unwrap()).unwrap();
    };
    let dir = make("region-overrun");
    edit_manifest(&dir, &|m| {
        m["memory"]["regions"][0]["size"] = (8 * MIB).into()
    });
    let line = verify_fails(&dir);
    assert!(
        line.contains("memory: memory region at guest 0x0 ends beyond"),
        "{line}"
    );
    let dir = make("unknown-state-file");
    edit_manifest(&dir, &|m| {
        m["devices"][0]["state_file"] = "gone.state".into()
    });
    let line = verify_fails(&dir);
    assert!(
        line.contains("\"gone.state\": named in the manifest's devices"),
        "{line}"
    );

    let dir = make("no-manifest");
    fs::remove_file(dir.join(MANIFEST_FILE)).unwrap();
    let line = verify_fails(&dir);
    assert!(line.contains("no manifest.json"), "{line}");

    let dir = make("garbled-manifest");
    fs::write(
        dir.join(MANIFEST_FILE),
        b"{\"format_version\": 1, \"files\": 7}",
    )
    .unwrap();
    let line = verify_fails(&dir);
    assert!(
        line.contains("manifest.json: not a valid manifest"),
        "{line}"
    );

    let line = verify_fails(&parent.path().join("does-not-exist"));
    assert!(line.contains("no manifest.json"), "{line}");
}

#[test]
fn a_bad_flag_is_one_line_and_exit_2() {
    let out = sm_snapshot(&["verify", "--bogus", "x"]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr:?}");
    assert!(stderr.starts_with("sm-snapshot: "), "{stderr:?}");
    let out = sm_snapshot(&["create"]);
    assert_eq!(out.status.code(), Some(2), "create is not a command yet");
}

#[test]
fn a_writer_dropped_halfway_leaves_nothing() {
    let parent = tempfile::tempdir().unwrap();
    let snap = parent.path().join("snap");
    let result = (|| -> Result<(), WriteError> {
        let mut writer = SnapshotWriter::create(&snap)?;
        writer.write_file("vm.json", b"{}")?;
        assert_eq!(
            partials(parent.path()).len(),
            1,
            "the writer works beside the target"
        );
        // A later step fails, as a backend that cannot hand over its state would.
        writer.write_file("../escape", b"x")?;
        writer.finish(SnapshotInfo::default())?;
        Ok(())
    })();
    assert!(
        matches!(result, Err(WriteError::BadFileName(_))),
        "{result:?}"
    );
    assert!(
        !snap.exists(),
        "a failed snapshot left a directory at the target"
    );
    assert!(
        partials(parent.path()).is_empty(),
        "a failed snapshot left {:?}",
        partials(parent.path())
    );
    assert!(!parent.path().join("escape").exists());

    // finish itself failing (the memory file was never added) leaves nothing either.
    let writer = SnapshotWriter::create(&snap).unwrap();
    let info = SnapshotInfo {
        memory: MemoryLayout {
            file: "memory".into(),
            regions: vec![],
        },
        ..SnapshotInfo::default()
    };
    let err = writer.finish(info).unwrap_err();
    assert_eq!(
        err.to_string(),
        "memory: named as the memory file or a device's state file but not one of the snapshot's files"
    );
    assert!(!snap.exists());
    assert!(partials(parent.path()).is_empty());

    // Nor does a memory layout that overruns its memory file.
    let mut writer = SnapshotWriter::create(&snap).unwrap();
    writer.write_file("memory", &[7; 4096]).unwrap();
    let info = SnapshotInfo {
        memory: MemoryLayout {
            file: "memory".into(),
            regions: vec![MemoryRegion {
                guest_addr: 0x1000,
                size: 8192,
                file_offset: 0,
            }],
        },
        ..SnapshotInfo::default()
    };
    let err = writer.finish(info).unwrap_err();
    assert_eq!(
        err.to_string(),
        "memory: memory region at guest 0x1000 ends beyond the file"
    );
    assert!(!snap.exists());
    assert!(partials(parent.path()).is_empty());
}

#[test]
fn a_partial_directory_is_not_a_snapshot() {
    // What a crash mid-write leaves: the partial directory, without its manifest until the end.
    let parent = tempfile::tempdir().unwrap();
    let snap = parent.path().join("snap");
    let mut writer = SnapshotWriter::create(&snap).unwrap();
    writer.write_file("vm.json", b"{}").unwrap();
    let partial = writer.partial_dir().to_owned();
    assert!(partial
        .file_name()
        .unwrap()
        .to_string_lossy()
        .starts_with(".snap.partial-"));
    let line = verify_fails(&partial);
    assert!(line.contains("no manifest.json"), "{line}");
    assert!(!snap.exists());
}

#[test]
fn an_existing_target_is_refused() {
    let parent = tempfile::tempdir().unwrap();
    let snap = parent.path().join("snap");
    fs::create_dir(&snap).unwrap();
    let err = SnapshotWriter::create(&snap).unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "{}: already exists; remove it or choose another directory",
            snap.display()
        )
    );
    assert!(partials(parent.path()).is_empty());

    // A target whose parent does not exist: the error names the parent.
    let orphan = parent.path().join("no-such-dir/snap");
    let err = SnapshotWriter::create(&orphan).unwrap_err();
    assert!(
        err.to_string().starts_with(&format!(
            "{}: ",
            parent.path().join("no-such-dir").display()
        )),
        "{err}"
    );

    // A target that appears while the snapshot is written is not replaced, even when empty
    // (a plain rename would replace an empty directory).
    fs::remove_dir(&snap).unwrap();
    let mut writer = SnapshotWriter::create(&snap).unwrap();
    writer.write_file("vm.json", b"{}").unwrap();
    fs::create_dir(&snap).unwrap();
    let err = writer.finish(SnapshotInfo::default()).unwrap_err();
    assert!(matches!(err, WriteError::TargetExists(_)), "{err}");
    assert_eq!(
        fs::read_dir(&snap).unwrap().count(),
        0,
        "the empty target was replaced"
    );
    assert!(partials(parent.path()).is_empty());
}

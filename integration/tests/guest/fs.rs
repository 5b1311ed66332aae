//! Host directories through sm-vmm's generic vhost-user frontend, with virtiofsd (the Rust
//! virtio-fs daemon, a backend nobody here wrote) on the other end of the socket.

use crate::common::*;
use std::process::Command;

fn virtiofsd(dir: &std::path::Path, socket: &std::path::Path) -> Backend {
    let mut cmd = Command::new("virtiofsd");
    cmd.arg("--socket-path")
        .arg(socket)
        .arg("--shared-dir")
        .arg(dir);
    // The test VM's own file systems stand in for the host; virtiofsd's sandbox is not
    // what is under test here.
    cmd.args(["--sandbox", "none", "--seccomp", "none"]);
    Backend::start(cmd, socket)
}

#[test]
fn a_virtiofsd_share_is_mounted_by_tag_and_writable() {
    let work = tempfile::tempdir().unwrap();
    let shared = work.path().join("shared");
    std::fs::create_dir(&shared).unwrap();
    std::fs::write(shared.join("hello"), "hello from the host\n").unwrap();
    let fs = virtiofsd(&shared, &work.path().join("fs.sock"));
    let flag = format!("workspace={}", fs.socket_str());
    let script = "mount -t virtiofs workspace /mnt && cat /mnt/hello && \
                  echo written-in-guest > /mnt/out && umount /mnt";
    let out = boot(&["--fs-socket", &flag], &["sh", "-c", script]);
    assert_eq!(out.status.code(), Some(0), "stderr: {}", stderr(&out));
    assert_eq!(stdout(&out), "hello from the host\n");
    assert_eq!(
        std::fs::read_to_string(shared.join("out")).unwrap(),
        "written-in-guest\n"
    );
}

#[test]
fn block_and_file_system_devices_attach_together() {
    let work = tempfile::tempdir().unwrap();
    let shared = work.path().join("shared");
    std::fs::create_dir(&shared).unwrap();
    let image = work.path().join("vol.img");
    std::fs::write(&image, vec![0u8; 8 << 20]).unwrap();
    let fs = virtiofsd(&shared, &work.path().join("fs.sock"));
    let blk = storage_daemon(&image, &work.path().join("vol.sock"), true);
    let flag = format!("w={}", fs.socket_str());
    let script = "mount -t virtiofs w /mnt && cat /sys/block/vda/size > /mnt/sectors";
    let out = boot(
        &["--blk-socket", blk.socket_str(), "--fs-socket", &flag],
        &["sh", "-c", script],
    );
    assert_eq!(out.status.code(), Some(0), "stderr: {}", stderr(&out));
    assert_eq!(
        std::fs::read_to_string(shared.join("sectors")).unwrap(),
        "16384\n"
    );
}

//! Block devices through sm-vmm's generic vhost-user frontend, with qemu-storage-daemon (a
//! backend nobody here wrote) on the other end of the socket.

use crate::common::*;

fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 + i / 4096) as u8).collect()
}

#[test]
fn a_qemu_storage_daemon_volume_round_trips_a_pattern() {
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("vol.img");
    let data = pattern(1 << 20);
    let mut contents = data.clone();
    contents.resize(64 << 20, 0);
    std::fs::write(&image, &contents).unwrap();
    let qsd = storage_daemon(&image, &dir.path().join("vol.sock"), true);
    // In the guest: capacity, read the host's pattern, overwrite the second MiB with it.
    let script = "cat /sys/block/vda/size; \
                  dd if=/dev/vda bs=65536 count=16 2>/dev/null | sha256sum; \
                  dd if=/dev/vda of=/dev/vda bs=65536 count=16 seek=16 2>/dev/null && sync";
    let out = boot(
        &["--blk-socket", qsd.socket.to_str().unwrap()],
        &["sh", "-c", script],
    );
    assert_eq!(out.status.code(), Some(0), "stderr: {}", stderr(&out));
    let text = stdout(&out);
    let mut lines = text.lines();
    assert_eq!(
        lines.next(),
        Some("131072"),
        "capacity in 512-byte sectors: {text}"
    );
    let host_sum = sha256_hex(&data);
    assert_eq!(
        lines.next().map(|l| l.split_whitespace().next().unwrap()),
        Some(host_sum.as_str())
    );
    drop(qsd);
    let written = std::fs::read(&image).unwrap();
    assert_eq!(
        &written[1 << 20..2 << 20],
        &data[..],
        "the guest's write reached the host file"
    );
}

#[test]
fn a_missing_backend_socket_is_one_clear_error() {
    let out = boot(&["--blk-socket", "/nonexistent/vol.sock"], &["true"]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert_eq!(
        err.trim(),
        "sm-vmm: vhost-user socket /nonexistent/vol.sock does not exist (is the backend running?)"
    );
}

fn sha256_hex(data: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The project's own backend, sandboxed as it runs by default.
fn sm_backend(image: &std::path::Path, socket: &std::path::Path, extra: &[&str]) -> Backend {
    let mut cmd = std::process::Command::new(sm_integration::bin_dir().join("sm-vhost-user-blk"));
    cmd.arg("--socket")
        .arg(socket)
        .arg("--file")
        .arg(image)
        .args(extra);
    Backend::start(cmd, socket)
}

#[test]
fn a_file_system_on_our_backend_survives_a_second_boot() {
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("vol.img");
    let socket = dir.path().join("vol.sock");
    let backend = sm_backend(&image, &socket, &["--size-mib", "64"]);
    let first =
        "cat /sys/block/vda/size && mke2fs -q /dev/vda >/dev/null && mount -t ext4 /dev/vda /mnt && \
                 echo persisted > /mnt/f && umount /mnt";
    let out = boot(
        &["--blk-socket", backend.socket_str()],
        &["sh", "-c", first],
    );
    assert_eq!(out.status.code(), Some(0), "stderr: {}", stderr(&out));
    assert_eq!(stdout(&out), "131072\n", "capacity equals --size-mib 64");
    let second = "mount -t ext4 -o ro /dev/vda /mnt && cat /mnt/f";
    let out = boot(
        &["--blk-socket", backend.socket_str()],
        &["sh", "-c", second],
    );
    assert_eq!(out.status.code(), Some(0), "stderr: {}", stderr(&out));
    assert_eq!(stdout(&out), "persisted\n");
    assert_eq!(std::fs::metadata(&image).unwrap().len(), 64 << 20);
}

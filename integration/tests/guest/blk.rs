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

/// Allocated bytes of a host file (st_blocks is in 512-byte units).
pub(crate) fn allocated(path: &std::path::Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).unwrap().blocks() * 512
}

#[test]
fn a_read_only_volume_refuses_writes_and_stays_unchanged() {
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("ro.img");
    let mut contents = pattern(1 << 20);
    contents.resize(16 << 20, 0);
    std::fs::write(&image, &contents).unwrap();
    let backend = sm_backend(&image, &dir.path().join("ro.sock"), &["--read-only"]);
    // The kernel knows the device is read-only; a write that bypasses that (O_DIRECT with the
    // ro flag cleared) reaches the backend and must fail there too.
    let script = "cat /sys/block/vda/ro; \
                  dd if=/dev/vda bs=1M count=1 2>/dev/null | sha256sum; \
                  if dd if=/dev/zero of=/dev/vda bs=4096 count=1 2>/dev/null; then echo wrote; else echo refused; fi; \
                  blockdev --setrw /dev/vda; \
                  if dd if=/dev/zero of=/dev/vda bs=4096 count=1 oflag=direct 2>/dev/null; then echo wrote; else echo refused; fi";
    let out = boot(
        &["--blk-socket", backend.socket_str()],
        &["sh", "-c", script],
    );
    assert_eq!(out.status.code(), Some(0), "stderr: {}", stderr(&out));
    let sum = sha256_hex(&contents[..1 << 20]);
    assert_eq!(
        stdout(&out),
        format!("1\n{sum}  -\nrefused\nrefused\n"),
        "stderr: {}",
        stderr(&out)
    );
    drop(backend);
    assert!(
        std::fs::read(&image).unwrap() == contents,
        "the read-only image changed"
    );
}

#[test]
fn discard_returns_space_to_the_host() {
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("vol.img");
    let backend = sm_backend(&image, &dir.path().join("vol.sock"), &["--size-mib", "64"]);
    assert!(allocated(&image) < 1 << 20, "a new volume starts sparse");
    let fill = "dd if=/dev/zero of=/dev/vda bs=1M count=32 oflag=direct 2>/dev/null && sync";
    let out = boot(&["--blk-socket", backend.socket_str()], &["sh", "-c", fill]);
    assert_eq!(out.status.code(), Some(0), "stderr: {}", stderr(&out));
    let filled = allocated(&image);
    assert!(
        filled >= 32 << 20,
        "32 MiB written, {filled} bytes allocated"
    );
    let out = boot(
        &["--blk-socket", backend.socket_str()],
        &[
            "sh",
            "-c",
            "cat /sys/block/vda/queue/discard_max_bytes && blkdiscard /dev/vda",
        ],
    );
    assert_eq!(out.status.code(), Some(0), "stderr: {}", stderr(&out));
    assert_ne!(stdout(&out).trim(), "0", "the device offers discard");
    let after = allocated(&image);
    assert!(
        after < 1 << 20,
        "after blkdiscard the host file holds {after} bytes (was {filled})"
    );
    assert_eq!(std::fs::metadata(&image).unwrap().len(), 64 << 20);
}

#[test]
fn a_second_vm_cannot_open_a_volume_another_vm_writes() {
    use std::io::Write;
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("shared.img");
    let first = sm_backend(&image, &dir.path().join("one.sock"), &["--size-mib", "16"]);
    // The first VM stays up, holding its volume, until its stdin closes.
    let mut vm = sm_vmm()
        .args(["--blk-socket", first.socket_str(), "--"])
        .args([
            "sh",
            "-c",
            "echo up; read line; echo $line | dd of=/dev/vda 2>/dev/null && sync",
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut vm_out = std::io::BufReader::new(vm.stdout.take().unwrap());
    let mut line = String::new();
    std::io::BufRead::read_line(&mut vm_out, &mut line).unwrap();
    assert_eq!(line, "up\n", "the first VM booted");

    let second = std::process::Command::new(sm_integration::bin_dir().join("sm-vhost-user-blk"))
        .arg("--socket")
        .arg(dir.path().join("two.sock"))
        .arg("--file")
        .arg(&image)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&second.stderr);
    assert_eq!(second.status.code(), Some(1), "stderr: {err}");
    assert!(
        err.contains("is in use") && err.contains("one writer per volume"),
        "one clear line: {err}"
    );
    assert!(!dir.path().join("two.sock").exists());

    // The first VM is unharmed and still writes to its volume.
    vm.stdin.take().unwrap().write_all(b"still-mine\n").unwrap();
    let out = wait_with_timeout(vm, std::time::Duration::from_secs(120));
    assert_eq!(out.status.code(), Some(0), "stderr: {}", stderr(&out));
    drop(first);
    assert!(std::fs::read(&image).unwrap().starts_with(b"still-mine\n"));
}

#[test]
fn fio_verify_passes_and_the_data_survives_a_second_boot() {
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("fio.img");
    let backend = sm_backend(&image, &dir.path().join("fio.sock"), &["--size-mib", "64"]);
    let job = "fio --name=v --filename=/dev/vda --direct=1 --ioengine=libaio --iodepth=16 \
               --rw=randwrite --bs=4k --size=32M --verify=crc32c --verify_fatal=1 \
               --output-format=terse --terse-version=3";
    let out = boot(&["--blk-socket", backend.socket_str()], &["sh", "-c", job]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "stdout: {}\nstderr: {}",
        stdout(&out),
        stderr(&out)
    );
    assert_fio_verified(&stdout(&out), 32768);
    // A fresh boot reads every block back and checks it against the headers fio wrote.
    let reread = format!("{job} --verify_only=1");
    let out = boot(
        &["--blk-socket", backend.socket_str()],
        &["sh", "-c", &reread],
    );
    assert_eq!(
        out.status.code(),
        Some(0),
        "stdout: {}\nstderr: {}",
        stdout(&out),
        stderr(&out)
    );
}

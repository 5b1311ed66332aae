//! Interop with QEMU as the vhost-user frontend: the project's guest (kernel + sm-init
//! initramfs) boots in TCG under `-M microvm` and drives the backend; results are checked
//! inside the guest and against the image file on the host. QEMU must be installed.

mod common;

use std::os::unix::fs::FileExt;
use std::path::Path;

use common::{blocks, proc_status, run_guest, sha256_range, Backend};
use sm_test_support::assert_own_namespaces;

const MIB: u64 = 1 << 20;

/// The guest prints `KEY=sha256` of `count` MiB of /dev/vda from MiB `skip`, read with O_DIRECT.
fn guest_sha(key: &str, skip: u64, count: u64) -> String {
    format!(
        "echo {key}=$(dd if=/dev/vda bs=1M skip={skip} count={count} iflag=direct 2>/dev/null \
         | sha256sum | cut -d' ' -f1)\n"
    )
}

#[test]
fn sandboxed_backend_serves_qemu_with_two_queues() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("vol.img");
    let img_arg = img.to_str().unwrap();
    let backend = Backend::start(
        dir.path(),
        "blk",
        &["--file", img_arg, "--size-mib", "64", "--num-queues", "2"],
    );

    // (c) The serving process: confined before any frontend has connected.
    let pid = backend.sandboxed_pid().expect("sandboxed serving process");
    let status = proc_status(pid);
    for line in [
        "Seccomp:\t2",
        "NoNewPrivs:\t1",
        "CapEff:\t0000000000000000",
        "CapPrm:\t0000000000000000",
        "CapBnd:\t0000000000000000",
        "CapAmb:\t0000000000000000",
    ] {
        assert!(status.contains(line), "missing {line:?} in\n{status}");
    }
    assert_own_namespaces(pid);
    let root: Vec<_> = std::fs::read_dir(format!("/proc/{pid}/root"))
        .unwrap()
        .collect();
    assert!(root.is_empty(), "the sandbox root is not empty: {root:?}");
    let mounts = std::fs::read_to_string(format!("/proc/{pid}/mountinfo")).unwrap();
    assert_eq!(
        mounts.lines().count(),
        1,
        "more than the root is mounted:\n{mounts}"
    );

    // (b) And it still serves: a random pattern written through the guest reads back the
    // same in the guest and on the host; capacity and queue count are what was asked.
    let script = format!(
        "set -e\n\
         echo sectors=$(cat /sys/block/vda/size)\n\
         echo queues=$(ls /sys/block/vda/mq | wc -l)\n\
         dd if=/dev/urandom of=/tmp/p bs=1M count=1 2>/dev/null\n\
         dd if=/tmp/p of=/dev/vda bs=1M seek=48 oflag=direct 2>/dev/null\n\
         echo written=$(sha256sum /tmp/p | cut -d' ' -f1)\n{}",
        guest_sha("read", 48, 1)
    );
    let run = run_guest(dir.path(), &backend.socket, &script, 2, 2);
    assert_eq!(run.status, 0, "{run}");
    assert_eq!(run.value("sectors"), (64 * MIB / 512).to_string(), "{run}");
    assert_eq!(run.value("queues"), "2", "{run}");
    assert_eq!(run.value("read"), run.value("written"), "{run}");
    assert_eq!(
        sha256_range(&img, 48 * MIB, MIB as usize),
        run.value("written")
    );

    backend.assert_stops_cleanly(pid);
}

#[test]
fn filesystem_and_discard() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("vol.img");
    // A 64 MiB image whose last 8 MiB hold data, for the guest to discard.
    let f = std::fs::File::create(&img).unwrap();
    f.set_len(64 * MIB).unwrap();
    f.write_all_at(&vec![0xa5; 8 * MIB as usize], 56 * MIB)
        .unwrap();
    f.sync_all().unwrap();
    drop(f);
    let before = blocks(&img);
    assert!(
        before >= 8 * MIB / 512,
        "prefill not allocated: {before} blocks"
    );

    let backend = Backend::start(dir.path(), "blk", &["--file", img.to_str().unwrap()]);
    // busybox has no mkfs.ext4: mke2fs makes ext2, which the kernel's ext4 driver mounts.
    let script = format!(
        "set -e\n\
         mke2fs -q /dev/vda 32768\n\
         mount -t ext4 /dev/vda /mnt\n\
         echo hello-ext4 > /mnt/f\n\
         umount /mnt\n\
         mount -t ext4 -o ro /dev/vda /mnt\n\
         echo file=$(cat /mnt/f)\n\
         umount /mnt\n\
         blkdiscard -o $((56 << 20)) -l $((8 << 20)) /dev/vda\n\
         {}echo zeros=$(dd if=/dev/zero bs=1M count=8 2>/dev/null | sha256sum | cut -d' ' -f1)\n",
        guest_sha("discarded", 56, 8)
    );
    let run = run_guest(dir.path(), &backend.socket, &script, 1, 1);
    assert_eq!(run.status, 0, "{run}");
    assert_eq!(run.value("file"), "hello-ext4", "{run}");
    assert_eq!(run.value("discarded"), run.value("zeros"), "{run}");
    drop(backend);

    let after = blocks(&img);
    assert!(
        after < before,
        "discard left {after} blocks (before: {before})"
    );
    // Nothing is allocated from 56 MiB on: SEEK_DATA finds no data there.
    let f = std::fs::File::open(&img).unwrap();
    // SAFETY: lseek on an fd we own.
    let data = unsafe {
        use std::os::fd::AsRawFd;
        libc::lseek(f.as_raw_fd(), (56 * MIB) as libc::off_t, libc::SEEK_DATA)
    };
    assert_eq!(
        data, -1,
        "data found at {data} after the discarded range's start"
    );
    assert_eq!(
        std::fs::metadata(&img).unwrap().len(),
        64 * MIB,
        "the file changed size"
    );
}

#[test]
fn read_only_device() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("ro.img");
    let pattern: Vec<u8> = (0..4 * MIB as u32).map(|i| (i * 31 % 251) as u8).collect();
    std::fs::write(&img, &pattern).unwrap();
    let whole = sha256_range(&img, 0, pattern.len());

    let backend = Backend::start(
        dir.path(),
        "blk",
        &["--file", img.to_str().unwrap(), "--read-only"],
    );
    let script = format!(
        "echo ro=$(cat /sys/block/vda/ro)\n\
         echo sectors=$(cat /sys/block/vda/size)\n\
         if dd if=/dev/zero of=/dev/vda bs=4096 count=1 oflag=direct 2>/dev/null; \
         then echo write=accepted; else echo write=refused; fi\n{}",
        guest_sha("read", 0, 1)
    );
    let run = run_guest(dir.path(), &backend.socket, &script, 1, 1);
    assert_eq!(run.value("ro"), "1", "{run}");
    assert_eq!(run.value("sectors"), (4 * MIB / 512).to_string(), "{run}");
    assert_eq!(run.value("write"), "refused", "{run}");
    assert_eq!(
        run.value("read"),
        sha256_range(&img, 0, MIB as usize),
        "{run}"
    );
    drop(backend);
    assert_eq!(
        sha256_range(&img, 0, pattern.len()),
        whole,
        "a read-only image changed"
    );
    assert!(Path::new(&img).exists());
}

//! Host directories through sm-vmm's generic vhost-user frontend: with virtiofsd (the Rust
//! virtio-fs daemon, a backend nobody here wrote) on the other end of the socket, and with
//! our own sm-vhost-user-fs, sandboxed as it runs by default.

use crate::common::*;
use std::process::Command;

fn virtiofsd(dir: &std::path::Path, socket: &std::path::Path) -> Backend {
    Backend::start(virtiofsd_command(dir, socket), socket)
}

/// virtiofsd sharing `dir` on `socket`. It serves one frontend and exits when that one
/// hangs up, so a boot retried after a stall needs a new one ([`boot_with`]).
fn virtiofsd_command(dir: &std::path::Path, socket: &std::path::Path) -> Command {
    let mut cmd = Command::new("virtiofsd");
    cmd.arg("--socket-path")
        .arg(socket)
        .arg("--shared-dir")
        .arg(dir);
    // The test VM's own file systems stand in for the host; virtiofsd's sandbox is not
    // what is under test here.
    cmd.args(["--sandbox", "none", "--seccomp", "none"]);
    cmd
}

/// For [`boot_with`]: a new virtiofsd in `fs`'s place before each retry.
fn new_virtiofsd_on_retry<'a>(
    fs: &'a mut Backend,
    dir: &'a std::path::Path,
    socket: &'a std::path::Path,
) -> impl FnMut(u32) + 'a {
    move |attempt| {
        if attempt > 1 {
            fs.restart(virtiofsd_command(dir, socket));
        }
    }
}

#[test]
fn a_virtiofsd_share_is_mounted_by_tag_and_writable() {
    let work = tempfile::tempdir().unwrap();
    let shared = work.path().join("shared");
    std::fs::create_dir(&shared).unwrap();
    std::fs::write(shared.join("hello"), "hello from the host\n").unwrap();
    let socket = work.path().join("fs.sock");
    let mut fs = virtiofsd(&shared, &socket);
    let flag = format!("workspace={}", socket.display());
    let script = "mount -t virtiofs workspace /mnt && cat /mnt/hello && \
                  echo written-in-guest > /mnt/out && umount /mnt";
    let out = boot_with(
        &["--fs-socket", &flag],
        &["sh", "-c", script],
        new_virtiofsd_on_retry(&mut fs, &shared, &socket),
    );
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
    let socket = work.path().join("fs.sock");
    let mut fs = virtiofsd(&shared, &socket);
    let blk = storage_daemon(&image, &work.path().join("vol.sock"), true);
    let flag = format!("w={}", socket.display());
    let script = "mount -t virtiofs w /mnt && cat /sys/block/vda/size > /mnt/sectors";
    let out = boot_with(
        &["--blk-socket", blk.socket_str(), "--fs-socket", &flag],
        &["sh", "-c", script],
        new_virtiofsd_on_retry(&mut fs, &shared, &socket),
    );
    assert_eq!(out.status.code(), Some(0), "stderr: {}", stderr(&out));
    assert_eq!(
        std::fs::read_to_string(shared.join("sectors")).unwrap(),
        "16384\n"
    );
}

/// `key=value` lines of a guest script's output.
fn values(out: &str) -> std::collections::HashMap<String, String> {
    out.lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

fn sha256(data: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[test]
fn our_backend_serves_posix_operations_and_big_files_to_an_sm_vmm_guest() {
    let work = tempfile::tempdir().unwrap();
    let shared = work.path().join("shared");
    std::fs::create_dir(&shared).unwrap();
    std::fs::write(shared.join("hello"), "hello from the host\n").unwrap();
    let big: Vec<u8> = (0..100u64 << 20)
        .map(|i| (i * 7 + i / 4099) as u8)
        .collect();
    std::fs::write(shared.join("big.bin"), &big).unwrap();
    let socket = work.path().join("fs.sock");
    let mut cmd = Command::new(sm_integration::bin_dir().join("sm-vhost-user-fs"));
    cmd.arg("--socket")
        .arg(&socket)
        .arg("--shared-dir")
        .arg(&shared)
        .args(["--tag", "work"]);
    let fs = Backend::start(cmd, &socket);
    let script = r#"set -e; mount -t virtiofs work /mnt; cd /mnt
t() { n=$1; shift; if "$@" >/dev/null 2>&1; then echo "$n=ok"; else echo "$n=fail"; fi; }
echo hello=$(cat hello)
echo big=$(sha256sum big.bin | cut -d' ' -f1)
printf 'one\n' > f; printf 'two\n' >> f; echo append=$(tr '\n' , < f)
truncate -s 3 f; echo truncated=$(cat f)
mv f f2; echo renamed=$(cat f2); t oldname test -e f
mkdir -p d/e; echo x > d/e/y; echo listing=$(ls d/e); t rmdir_full rmdir d/e
rm d/e/y; rmdir d/e; echo left=$(ls d | wc -l)
chmod 640 f2; echo mode=$(stat -c %a f2)
ln f2 hard; echo nlink=$(stat -c %h f2); rm hard; echo nlink_after=$(stat -c %h f2)
ln -s ../f2 d/link; echo link=$(readlink d/link); echo through=$(cat d/link)
mkdir many; for i in $(seq 300); do : > many/file-$i; done; rm -r many; echo rm_r=$(ls | grep -c many)
echo readdir=$(ls | tr '\n' ,)
dd if=/dev/urandom of=out.bin bs=1M count=20 2>/dev/null
echo out=$(sha256sum out.bin | cut -d' ' -f1)
cd /; umount /mnt; echo umount=ok
"#;
    let flag = format!("work={}", fs.socket_str());
    let out = boot(&["--fs-socket", &flag], &["sh", "-c", script]);
    assert_eq!(out.status.code(), Some(0), "stderr: {}", stderr(&out));
    let v = values(&stdout(&out));
    let get = |k: &str| v.get(k).map(String::as_str).unwrap_or("<missing>");
    let big_sum = sha256(&big);
    let expected = [
        ("hello", "hello from the host"),
        ("big", big_sum.as_str()),
        ("append", "one,two,"),
        ("truncated", "one"),
        ("renamed", "one"),
        ("oldname", "fail"),
        ("listing", "y"),
        ("rmdir_full", "fail"),
        ("left", "0"),
        ("mode", "640"),
        ("nlink", "2"),
        ("nlink_after", "1"),
        ("link", "../f2"),
        ("through", "one"),
        // rm -r unlinks while it lists: the listing must not skip names (it did on
        // tmpfs, whose directory offsets are positions on the test VM's kernel).
        ("rm_r", "0"),
        ("readdir", "big.bin,d,f2,hello,"),
        ("umount", "ok"),
    ];
    for (k, want) in expected {
        assert_eq!(get(k), want, "{k}; guest output:\n{}", stdout(&out));
    }
    // What the guest wrote is on the host, byte for byte.
    let written = std::fs::read(shared.join("out.bin")).unwrap();
    assert_eq!(written.len(), 20 << 20);
    assert_eq!(get("out"), sha256(&written));
    assert_eq!(std::fs::read(shared.join("f2")).unwrap(), b"one");
    assert_eq!(
        std::fs::read_link(shared.join("d/link")).unwrap(),
        std::path::Path::new("../f2")
    );
}

#[test]
fn a_dax_mount_reads_and_maps_the_host_page_cache() {
    let work = tempfile::tempdir().unwrap();
    let shared = work.path().join("shared");
    std::fs::create_dir(&shared).unwrap();
    let big: Vec<u8> = (0..64u64 << 20)
        .map(|i| (i * 13 + i / 4093) as u8)
        .collect();
    std::fs::write(shared.join("big.bin"), &big).unwrap();
    let start = |name: &str, dax_mib: &str| {
        let socket = work.path().join(format!("{name}.sock"));
        let mut cmd = Command::new(sm_integration::bin_dir().join("sm-vhost-user-fs"));
        cmd.arg("--socket")
            .arg(&socket)
            .arg("--shared-dir")
            .arg(&shared)
            .args(["--tag", name, "--dax-window-mib", dax_mib]);
        Backend::start(cmd, &socket)
    };
    let (dax, plain) = (start("dax", "256"), start("plain", "0"));
    // Page-cache growth while reading the file shows whether reads bypassed the guest's
    // page cache (DAX) or filled it (no DAX); fio's mmap engine writes a file through a
    // shared mapping of the window and verifies it by reading it back the same way.
    let script = r#"set -e
cached() { awk '/^Cached:/{print $2}' /proc/meminfo; }
mkdir -p /p /d
if mount -t virtiofs -o dax=always plain /p 2>/dev/null; then echo plain_dax=ok; else echo plain_dax=refused; fi
mount -t virtiofs plain /p
mount -t virtiofs -o dax=always dax /d
echo options=$(grep ' /d ' /proc/mounts | grep -o 'dax=always')
sync; echo 3 > /proc/sys/vm/drop_caches; c0=$(cached)
echo big=$(sha256sum /d/big.bin | cut -d' ' -f1)
c1=$(cached); echo dax_cached_kib=$((c1 - c0))
sync; echo 3 > /proc/sys/vm/drop_caches; c0=$(cached)
cat /p/big.bin > /dev/null
c1=$(cached); echo plain_cached_kib=$((c1 - c0))
fio --name=m --filename=/d/mapped.bin --size=8M --bs=64k --rw=write --ioengine=mmap \
    --verify=sha256 --do_verify=1 --output-format=terse >/dev/null
echo mmap=ok
echo mapped=$(sha256sum /d/mapped.bin | cut -d' ' -f1)
umount /d; umount /p; echo umount=ok
"#;
    let out = boot(
        &[
            "--mem",
            "512",
            "--fs-socket",
            &format!("dax={}", dax.socket_str()),
            "--fs-socket",
            &format!("plain={}", plain.socket_str()),
        ],
        &["sh", "-c", script],
    );
    assert_eq!(
        out.status.code(),
        Some(0),
        "stderr: {}\nstdout: {}",
        stderr(&out),
        stdout(&out)
    );
    let v = values(&stdout(&out));
    let get = |k: &str| v.get(k).map(String::as_str).unwrap_or("<missing>");
    let kib = |k: &str| -> i64 {
        get(k)
            .parse()
            .unwrap_or_else(|_| panic!("{k}: {}", stdout(&out)))
    };
    assert_eq!(
        get("plain_dax"),
        "refused",
        "a backend without a window offered DAX"
    );
    assert_eq!(get("options"), "dax=always");
    assert_eq!(get("big"), sha256(&big), "DAX read of the 64 MiB file");
    assert!(
        kib("dax_cached_kib") < 16 << 10,
        "reading 64 MiB through DAX grew the guest page cache by {} KiB",
        kib("dax_cached_kib")
    );
    assert!(
        kib("plain_cached_kib") > 48 << 10,
        "the control read without DAX grew the page cache by only {} KiB",
        kib("plain_cached_kib")
    );
    assert_eq!(get("mmap"), "ok");
    let mapped = std::fs::read(shared.join("mapped.bin")).unwrap();
    assert_eq!(
        mapped.len(),
        8 << 20,
        "the file written through the mapping"
    );
    assert_eq!(
        get("mapped"),
        sha256(&mapped),
        "guest and host see the same bytes"
    );
    assert_eq!(get("umount"), "ok");
}

//! A backend that dies is replaced while the guest runs: sm-vmm notices the hang-up,
//! connects to the new backend on the same socket and replays the device's set-up, and the
//! guest's requests that were in flight complete with no error.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;

use crate::common::*;

/// Allocated bytes of a host file (st_blocks is in 512-byte units).
fn allocated(path: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path)
        .map(|m| m.blocks() * 512)
        .unwrap_or(0)
}

/// Our block backend in its own process group (its sandbox forks a child), serving `image`.
fn start_blk(image: &Path, socket: &Path) -> Child {
    let _ = std::fs::remove_file(socket);
    let child = Command::new(sm_integration::bin_dir().join("sm-vhost-user-blk"))
        .arg("--socket")
        .arg(socket)
        .arg("--file")
        .arg(image)
        .args(["--size-mib", "64"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
        .expect("start sm-vhost-user-blk");
    wait_until(Duration::from_secs(30), "the backend's socket", || {
        socket.exists()
    });
    child
}

/// Kills the backend's whole process group and waits until none of it is left (so the
/// image's lock is free for the next one).
fn kill_group(child: &mut Child) {
    let group = Pid::from_raw(child.id() as i32);
    let _ = killpg(group, Signal::SIGKILL);
    let _ = child.wait();
    wait_until(
        Duration::from_secs(10),
        "the backend's group to be gone",
        || killpg(group, None).is_err(),
    );
}

/// What the killer thread did.
struct Kills {
    /// When each kill happened, from the test's start.
    at: Vec<Duration>,
    /// The backend serving when the guest finished.
    last: Child,
}

#[test]
fn a_block_backend_killed_during_fio_is_replaced_and_nothing_is_lost() {
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("vol.img");
    let socket: PathBuf = dir.path().join("vol.sock");
    let first = start_blk(&image, &socket);
    let t0 = Instant::now();
    let (img, sock) = (image.clone(), socket.clone());
    let killer = std::thread::spawn(move || {
        let mut serving = first;
        let mut at = Vec::new();
        // fio has started writing once the sparse image has blocks.
        let deadline = Instant::now() + Duration::from_secs(240);
        while allocated(&img) == 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
        }
        for _ in 0..3 {
            std::thread::sleep(Duration::from_millis(1500));
            kill_group(&mut serving);
            at.push(t0.elapsed());
            serving = start_blk(&img, &sock);
        }
        Kills { at, last: serving }
    });
    let job = "fio --name=v --filename=/dev/vda --direct=1 --ioengine=libaio --iodepth=16 \
               --rw=randwrite --bs=4k --size=48M --verify=crc32c --verify_fatal=1 \
               --output-format=terse --terse-version=3 && dmesg | grep -ci 'i/o error' ; true";
    let out = run_retrying_stall(
        || {
            let mut cmd = sm_vmm();
            cmd.env("SM_LOG", "sm_vmm=info")
                .args(["--blk-socket", socket.to_str().unwrap()])
                .args(["--", "sh", "-c", job]);
            cmd
        },
        Duration::from_secs(300),
    );
    let finished = t0.elapsed();
    let mut kills = killer.join().expect("the killer thread");
    let log = stderr(&out);
    assert_eq!(
        out.status.code(),
        Some(0),
        "stdout: {}\nstderr: {log}",
        stdout(&out)
    );
    assert_eq!(kills.at.len(), 3);
    assert!(
        kills.at.iter().all(|k| *k < finished),
        "every kill must land while the guest runs (kills at {:?}, guest done at {finished:?}): make the job longer",
        kills.at
    );
    assert_eq!(
        log.matches("hung up").count(),
        3,
        "sm-vmm saw each hang-up: {log}"
    );
    assert_eq!(log.matches("is back").count(), 3, "and each return: {log}");
    // Terse v3: field 5 is the error count; field 6 the read KiB (the verify pass); then
    // the guest's count of I/O errors in its kernel log.
    let text = stdout(&out);
    let mut lines = text.lines();
    let terse = lines.next().unwrap_or_default();
    let fields: Vec<&str> = terse.trim().split(';').collect();
    assert_eq!(fields.get(4), Some(&"0"), "fio errors: {text}");
    assert_eq!(fields.get(5), Some(&"49152"), "verified KiB: {text}");
    assert_eq!(
        lines.next(),
        Some("0"),
        "I/O errors in the guest's log: {text}"
    );
    kill_group(&mut kills.last);
}

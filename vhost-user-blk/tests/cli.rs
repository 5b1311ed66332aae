//! The binary without a guest: flag and file errors, the one-writer lock, `--sandbox none`,
//! and a frontend that sends garbage.

mod common;

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use common::{bin, proc_status, Backend};

fn run(args: &[&str]) -> Output {
    Command::new(bin())
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run sm-vhost-user-blk")
}

/// Asserts a failed run with exactly one stderr line that contains every one of `words`.
fn assert_one_line_error(out: &Output, words: &[&str]) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "succeeded: {stderr}");
    assert_eq!(stderr.lines().count(), 1, "not one line:\n{stderr}");
    assert!(stderr.starts_with("sm-vhost-user-blk: "), "{stderr}");
    for w in words {
        assert!(stderr.contains(w), "{w:?} missing from: {stderr}");
    }
    assert!(out.stdout.is_empty(), "stdout: {:?}", out.stdout);
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn bad_input_gives_one_line_and_nonzero_exit() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let img = d.join("v.img");
    let sock = d.join("s.sock");
    let missing_dir_sock = d.join("nope/s.sock");
    std::fs::write(&img, vec![0u8; 3 << 20]).unwrap();

    assert_one_line_error(&run(&["--bogus"]), &["--bogus"]);
    assert_one_line_error(&run(&["--socket", s(&sock)]), &["--file"]);
    assert_one_line_error(
        &run(&["--socket", s(&sock), "--file", s(&img), "--num-queues", "0"]),
        &["--num-queues"],
    );
    assert_one_line_error(
        &run(&[
            "--socket",
            s(&sock),
            "--file",
            s(&img),
            "--sandbox",
            "maybe",
        ]),
        &["--sandbox"],
    );
    assert_one_line_error(
        &run(&["--socket", s(&missing_dir_sock), "--file", s(&img)]),
        &["cannot listen", "nope/s.sock"],
    );
    assert_one_line_error(
        &run(&["--socket", s(&sock), "--file", s(&img), "--size-mib", "2"]),
        &["v.img", "3 MiB", "--size-mib 2"],
    );
    assert_one_line_error(
        &run(&[
            "--socket",
            s(&sock),
            "--file",
            s(&d.join("none.img")),
            "--read-only",
        ]),
        &["none.img", "does not exist"],
    );
    assert_one_line_error(
        &run(&["--socket", s(&img), "--file", s(&d.join("w.img"))]),
        &["not a socket"],
    );
    assert_one_line_error(
        &run(&["--socket", s(&sock), "--file", s(d)]),
        &["Is a directory"],
    );
    assert_one_line_error(
        &run(&["--socket", s(&sock), "--file", s(d), "--read-only"]),
        &["not a regular file"],
    );
    assert!(!d.join("none.img").exists());
    assert_eq!(
        std::fs::metadata(&img).unwrap().len(),
        3 << 20,
        "image touched"
    );
}

#[test]
fn one_writer_per_volume_readers_share() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("vol.img");
    let writer = Backend::start(dir.path(), "w", &["--file", s(&img), "--size-mib", "8"]);
    let second = run(&[
        "--socket",
        s(&dir.path().join("w2.sock")),
        "--file",
        s(&img),
    ]);
    assert_one_line_error(&second, &["vol.img", "in use"]);
    let reader = run(&[
        "--socket",
        s(&dir.path().join("r.sock")),
        "--file",
        s(&img),
        "--read-only",
    ]);
    assert_one_line_error(&reader, &["vol.img", "in use"]);
    drop(writer);

    let r1 = Backend::start(dir.path(), "r1", &["--file", s(&img), "--read-only"]);
    let r2 = Backend::start(dir.path(), "r2", &["--file", s(&img), "--read-only"]);
    let writer = run(&[
        "--socket",
        s(&dir.path().join("w3.sock")),
        "--file",
        s(&img),
    ]);
    assert_one_line_error(&writer, &["vol.img", "in use"]);
    assert!(r1.sandboxed_pid().is_some() && r2.sandboxed_pid().is_some());
}

#[test]
fn sandbox_none_warns_loudly_and_stays_unconfined() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("vol.img");
    let b = Backend::start(
        dir.path(),
        "b",
        &["--file", s(&img), "--size-mib", "4", "--sandbox", "none"],
    );
    std::thread::sleep(Duration::from_millis(200));
    assert!(b.log().contains("NOT SANDBOXED"), "{}", b.log());
    assert!(proc_status(b.pid()).contains("Seccomp:\t0"));
    assert!(b.sandboxed_pid().is_none());
}

/// A vhost-user message header: request, flags (version 1), payload size.
fn header(request: u32, size: u32) -> Vec<u8> {
    [request, 1, size]
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect()
}

/// Sends VHOST_USER_GET_FEATURES and returns the feature bits.
fn get_features(sock: &Path) -> u64 {
    let mut c = UnixStream::connect(sock).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    c.write_all(&header(1, 0)).unwrap();
    let mut reply = [0u8; 20];
    c.read_exact(&mut reply).unwrap();
    u64::from_le_bytes(reply[12..20].try_into().unwrap())
}

#[test]
fn garbage_from_a_frontend_does_not_stop_the_backend() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("vol.img");
    let b = Backend::start(
        dir.path(),
        "b",
        &["--file", s(&img), "--size-mib", "4", "--num-queues", "4"],
    );
    let pid = b.sandboxed_pid().unwrap();
    let fds = || {
        std::fs::read_dir(format!("/proc/{pid}/fd"))
            .unwrap()
            .count()
    };
    // Let the first connection's state settle, then count descriptors.
    drop(UnixStream::connect(&b.socket).unwrap());
    std::thread::sleep(Duration::from_millis(100));
    let fds_before = fds();
    // An unknown request, a huge payload size, a truncated header, a bogus memory table.
    for msg in [
        header(9999, 0),
        header(1, u32::MAX),
        vec![1, 2, 3],
        [header(5, 8), vec![0xff; 8]].concat(),
    ] {
        let mut c = UnixStream::connect(&b.socket).unwrap();
        let _ = c.write_all(&msg);
        drop(c);
        std::thread::sleep(Duration::from_millis(50));
    }
    // Still the same sandboxed process, and it answers a well-formed request.
    assert_eq!(b.sandboxed_pid(), Some(pid), "{}", b.log());
    let features = get_features(&b.socket);
    assert_ne!(
        features & (1 << 32),
        0,
        "VIRTIO_F_VERSION_1 missing: {features:#x}"
    );
    assert_ne!(
        features & (1 << 30),
        0,
        "vhost-user protocol features bit missing"
    );
    // Connections come and go without leaking descriptors.
    for _ in 0..10 {
        drop(UnixStream::connect(&b.socket).unwrap());
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(fds(), fds_before, "descriptors leaked across connections");
}

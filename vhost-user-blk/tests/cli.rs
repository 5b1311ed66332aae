//! The binary without a guest: flag and file errors, the one-writer lock, `--sandbox none`,
//! and a frontend that sends garbage.

mod common;

use std::process::Output;
use std::time::Duration;

use common::{proc_status, Backend, Blk, Program};
use sm_test_support::cli::survives_garbage;
use sm_test_support::s;

fn run(args: &[&str]) -> Output {
    Blk::run(args)
}

fn assert_one_line_error(out: &Output, words: &[&str]) {
    Blk::assert_one_line_error(out, words)
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

#[test]
fn garbage_from_a_frontend_does_not_stop_the_backend() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("vol.img");
    let b = Backend::start(
        dir.path(),
        "b",
        &["--file", s(&img), "--size-mib", "4", "--num-queues", "4"],
    );
    let features = survives_garbage(&b);
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
}

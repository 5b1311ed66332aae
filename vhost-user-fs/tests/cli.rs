//! The binary without a guest: flag and directory errors, `--sandbox none` and `chroot`,
//! and a frontend that sends garbage.

mod common;

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::process::Output;
use std::time::Duration;

use common::{proc_status, wait_for, Backend, Fs, Program};
use sm_test_support::cli::{header, survives_garbage};
use sm_test_support::s;

fn run(args: &[&str]) -> Output {
    Fs::run(args)
}

fn assert_one_line_error(out: &Output, words: &[&str]) {
    Fs::assert_one_line_error(out, words)
}

#[test]
fn bad_input_gives_one_line_and_nonzero_exit() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let sock = d.join("s.sock");
    let file = d.join("file");
    std::fs::write(&file, b"x").unwrap();
    let base = ["--socket", s(&sock), "--shared-dir", s(d)];
    let with = |extra: &[&str]| {
        let mut v = base.to_vec();
        v.extend_from_slice(extra);
        run(&v)
    };

    assert_one_line_error(&run(&["--bogus"]), &["--bogus"]);
    assert_one_line_error(&run(&["--socket", s(&sock)]), &["--shared-dir"]);
    assert_one_line_error(&run(&["--shared-dir", s(d)]), &["--socket"]);
    assert_one_line_error(&with(&["--symlinks", "sometimes"]), &["--symlinks"]);
    assert_one_line_error(&with(&["--cache", "maybe"]), &["--cache"]);
    assert_one_line_error(&with(&["--sandbox", "maybe"]), &["--sandbox"]);
    assert_one_line_error(
        &with(&["--symlinks", "follow", "--sandbox", "chroot"]),
        &["--symlinks follow", "--sandbox namespace"],
    );
    assert_one_line_error(
        &with(&["--thread-pool-size", "1000"]),
        &["--thread-pool-size"],
    );
    assert_one_line_error(&with(&["--tag", &"t".repeat(37)]), &["--tag", "37"]);
    let uid = with(&["--translate-uid", "map:0:100000"]);
    assert_one_line_error(&uid, &["--translate-uid", "map:0:100000"]);
    assert_eq!(uid.status.code(), Some(2), "a bad rule is a usage error");
    assert_one_line_error(
        &with(&["--translate-gid", "squash-guest:0:0:5"]),
        &["--translate-gid", "count"],
    );
    assert_one_line_error(
        &with(&[
            "--translate-uid=map:0:1000:10",
            "--translate-uid=forbid-guest:9:1",
        ]),
        &["--translate-uid", "forbid-guest:9:1 overlaps map:0:1000:10"],
    );
    assert_one_line_error(
        &run(&["--socket", s(&sock), "--shared-dir", s(&d.join("nope"))]),
        &["--shared-dir", "nope", "No such file"],
    );
    assert_one_line_error(
        &run(&["--socket", s(&sock), "--shared-dir", s(&file)]),
        &["--shared-dir", "not a directory"],
    );
    assert_one_line_error(
        &run(&["--socket", s(&d.join("nope/s.sock")), "--shared-dir", s(d)]),
        &["cannot listen", "nope/s.sock"],
    );
    assert_one_line_error(
        &run(&["--socket", s(&file), "--shared-dir", s(d)]),
        &["not a socket"],
    );
}

#[test]
fn sandbox_none_warns_loudly_and_stays_unconfined() {
    let dir = tempfile::tempdir().unwrap();
    let b = Backend::start(
        dir.path(),
        "b",
        &["--shared-dir", s(dir.path()), "--sandbox", "none"],
    );
    std::thread::sleep(Duration::from_millis(200));
    assert!(b.log().contains("NOT SANDBOXED"), "{}", b.log());
    assert!(proc_status(b.pid()).contains("Seccomp:\t0"));
    assert!(b.sandboxed_pid().is_none());
}

#[test]
fn sandbox_chroot_confines_the_process_itself() {
    let dir = tempfile::tempdir().unwrap();
    let shared = dir.path().join("shared");
    std::fs::create_dir(&shared).unwrap();
    let b = Backend::start(
        dir.path(),
        "b",
        &["--shared-dir", s(&shared), "--sandbox", "chroot"],
    );
    let pid = b.pid();
    wait_for("seccomp", 10, || {
        proc_status(pid).contains("Seccomp:\t2").then_some(())
    });
    let status = proc_status(pid);
    assert!(status.contains("NoNewPrivs:\t1"), "{status}");
    assert!(status.contains("CapBnd:\t0000000000000000"), "{status}");
    let root = std::fs::read_link(format!("/proc/{pid}/root")).unwrap();
    assert_eq!(root, shared.canonicalize().unwrap());
}

#[test]
fn garbage_from_a_frontend_does_not_stop_the_backend() {
    let dir = tempfile::tempdir().unwrap();
    let b = Backend::start(dir.path(), "b", &["--shared-dir", s(dir.path())]);
    let features = survives_garbage(&b);
    assert_ne!(
        features & (1 << 32),
        0,
        "VIRTIO_F_VERSION_1 missing: {features:#x}"
    );
}

/// Sends one vhost-user message (version 1 flags) and, if `reply_len` > 0, returns the
/// reply's payload.
fn exchange(c: &mut UnixStream, request: u32, payload: &[u8], reply_len: usize) -> Vec<u8> {
    let mut msg = header(request, payload.len() as u32);
    msg.extend_from_slice(payload);
    c.write_all(&msg).unwrap();
    if reply_len == 0 {
        return Vec::new();
    }
    let mut reply = vec![0u8; 12 + reply_len];
    c.read_exact(&mut reply).unwrap();
    assert_eq!(u32::from_le_bytes(reply[0..4].try_into().unwrap()), request);
    reply.split_off(12)
}

/// The tag reaches the device config (VHOST_USER_GET_CONFIG) when one is given; without
/// one the backend does not offer a config space at all.
#[test]
fn tag_is_served_as_device_config() {
    const CONFIG: u64 = 1 << 9; // VHOST_USER_PROTOCOL_F_CONFIG
    let dir = tempfile::tempdir().unwrap();
    let tagged = Backend::start(
        dir.path(),
        "t",
        &["--shared-dir", s(dir.path()), "--tag", "myshare"],
    );
    let mut c = UnixStream::connect(&tagged.socket).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let features = u64::from_le_bytes(exchange(&mut c, 1, &[], 8).try_into().unwrap());
    assert_ne!(features & (1 << 30), 0, "no protocol features bit");
    let proto = u64::from_le_bytes(exchange(&mut c, 15, &[], 8).try_into().unwrap());
    assert_ne!(proto & CONFIG, 0, "CONFIG not offered with a tag");
    exchange(&mut c, 16, &CONFIG.to_le_bytes(), 0);
    // struct VhostUserConfig { offset, size, flags, payload[size] }
    let mut req = Vec::new();
    for v in [0u32, 40, 0] {
        req.extend_from_slice(&v.to_le_bytes());
    }
    req.extend_from_slice(&[0u8; 40]);
    let reply = exchange(&mut c, 24, &req, 12 + 40);
    let config = &reply[12..];
    assert_eq!(&config[..7], b"myshare");
    assert!(config[7..36].iter().all(|b| *b == 0));
    assert_eq!(u32::from_le_bytes(config[36..40].try_into().unwrap()), 1);
    drop(c);

    let untagged = Backend::start(dir.path(), "u", &["--shared-dir", s(dir.path())]);
    let mut c = UnixStream::connect(&untagged.socket).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    exchange(&mut c, 1, &[], 8);
    let proto = u64::from_le_bytes(exchange(&mut c, 15, &[], 8).try_into().unwrap());
    assert_eq!(proto & CONFIG, 0, "CONFIG offered without a tag");
}

#[test]
fn the_descriptor_limit_is_raised_for_large_trees() {
    let dir = tempfile::tempdir().unwrap();
    let b = Backend::start(dir.path(), "b", &["--shared-dir", s(dir.path())]);
    let open_files = || -> (u64, u64, String) {
        let limits = std::fs::read_to_string(format!("/proc/{}/limits", b.pid())).unwrap();
        let line = limits
            .lines()
            .find(|l| l.starts_with("Max open files"))
            .expect("a Max open files line")
            .to_owned();
        let nums: Vec<u64> = line
            .split_whitespace()
            .filter_map(|w| w.parse().ok())
            .collect();
        (nums[0], nums[1], line)
    };
    // Raising the hard limit takes CAP_SYS_RESOURCE (root on a user's host has it; some
    // containers' root does not): with it, the backend asks for min(nr_open, 2^20).
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let cap_eff = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .map(|v| u64::from_str_radix(v.trim(), 16).unwrap())
        .unwrap();
    const CAP_SYS_RESOURCE: u32 = 24;
    let want = if cap_eff & (1 << CAP_SYS_RESOURCE) != 0 {
        let nr_open: u64 = std::fs::read_to_string("/proc/sys/fs/nr_open")
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        nr_open.min(1 << 20)
    } else {
        open_files().1
    };
    // The socket is up a moment before the limit is raised: give it a few seconds.
    let started = std::time::Instant::now();
    let mut last = open_files();
    while last.0 != want && started.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(50));
        last = open_files();
    }
    assert_eq!(last.0, want, "{}", last.2);
}

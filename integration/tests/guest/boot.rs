//! Real-guest tests: sm-vmm boots sm's own kernel (PVH) on KVM into sm-init and runs a
//! command; one test boots the Debian cloud kernel (bzImage, modules from the initramfs).
//! Run through `scripts/test` (inside sm-testvm where the host KVM is PVM).

use crate::common::*;
use sm_test_support::process::signal_and_wait;
use std::io::Write;
use std::os::unix::process::ExitStatusExt;
use std::process::Stdio;
use std::time::Duration;

#[test]
fn uname_prints_the_guest_kernel_and_nothing_else() {
    let out = boot(&[], &["uname", "-a"]);
    assert_eq!(out.status.code(), Some(0), "stderr: {}", stderr(&out));
    let text = stdout(&out);
    // sm's kernel: Debian's 6.1 source, LOCALVERSION -sm.
    assert!(
        text.starts_with("Linux sm 6.1.") && text.contains("-sm "),
        "stdout: {text:?}"
    );
    assert!(
        text.contains("x86_64") && text.ends_with('\n') && text.lines().count() == 1,
        "{text:?}"
    );
    assert!(
        out.stderr.is_empty(),
        "kernel noise on stderr: {}",
        stderr(&out)
    );
}

#[test]
fn sm_kernel_has_its_drivers_built_in_and_loads_no_modules() {
    // No /proc/modules: the kernel cannot load modules, and sm-init tried none (it would
    // say so on stderr). The virtio-mmio devices were found through ACPI all the same.
    let out = boot(
        &[],
        &[
            "sh",
            "-c",
            "test ! -e /proc/modules && ls -1 /sys/bus/virtio/drivers",
        ],
    );
    assert_eq!(out.status.code(), Some(0), "stderr: {}", stderr(&out));
    let drivers = stdout(&out);
    for d in [
        "virtio_blk",
        "virtio_net",
        "virtiofs",
        "vmw_vsock_virtio_transport",
    ] {
        assert!(
            drivers.lines().any(|l| l == d),
            "no {d} driver in {drivers:?}"
        );
    }
    assert!(out.stderr.is_empty(), "stderr: {}", stderr(&out));
}

#[test]
fn the_debian_kernel_still_boots_with_its_modules() {
    let debian = sm_vmm::config::debian_kernel();
    let out = boot(
        &["--kernel", debian.to_str().unwrap()],
        &["sh", "-c", "uname -r; grep -c . /proc/modules"],
    );
    assert_eq!(out.status.code(), Some(0), "stderr: {}", stderr(&out));
    let text = stdout(&out);
    let mut lines = text.lines();
    let release = lines.next().unwrap_or_default();
    assert!(
        release.starts_with("6.1.0-") && release.ends_with("-cloud-amd64"),
        "{text:?}"
    );
    let modules: u32 = lines.next().unwrap_or_default().parse().unwrap_or(0);
    assert!(modules >= 5, "sm-init loaded {modules} modules: {text:?}");
    assert!(out.stderr.is_empty(), "stderr: {}", stderr(&out));
}

#[test]
fn exit_codes_propagate() {
    for code in [0, 3, 255] {
        let out = boot(&[], &["sh", "-c", &format!("exit {code}")]);
        assert_eq!(out.status.code(), Some(code), "stderr: {}", stderr(&out));
    }
}

#[test]
fn a_command_killed_by_a_signal_exits_128_plus_signal() {
    let out = boot(&[], &["sh", "-c", "kill -9 $$"]);
    assert_eq!(out.status.code(), Some(128 + 9), "stderr: {}", stderr(&out));
}

#[test]
fn vcpus_and_exit_code_together() {
    let out = boot(
        &["--vcpus", "2", "--mem", "512"],
        &["sh", "-c", "nproc; exit 3"],
    );
    assert_eq!(stdout(&out), "2\n", "stderr: {}", stderr(&out));
    assert_eq!(out.status.code(), Some(3));
}

#[test]
fn one_vcpu_by_default() {
    let out = boot(&[], &["nproc"]);
    assert_eq!(stdout(&out), "1\n", "stderr: {}", stderr(&out));
}

#[test]
fn memory_size_is_what_was_asked() {
    let out = boot(
        &["--mem", "512"],
        &["sh", "-c", "grep MemTotal /proc/meminfo"],
    );
    let kib: u64 = stdout(&out)
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{}", stdout(&out)));
    // The kernel keeps its own image and reserved areas out of MemTotal.
    assert!(
        (400 * 1024..=512 * 1024).contains(&kib),
        "MemTotal {kib} kB for --mem 512"
    );
}

#[test]
fn argv_round_trips_byte_for_byte() {
    let args = [
        "a b",
        "'single'",
        "\"double\"",
        "x=y",
        "",
        "back\\slash",
        "new\nline",
        "tab\there",
        "ünïcødé",
        "$HOME",
        "-- --",
    ];
    let mut cmd = vec!["sh", "-c", "printf '%s\\0' \"$@\"", "sh"];
    cmd.extend(args);
    let out = boot(&[], &cmd);
    assert_eq!(out.status.code(), Some(0), "stderr: {}", stderr(&out));
    let got: Vec<&[u8]> = out.stdout.split(|b| *b == 0).collect();
    let want: Vec<&[u8]> = args
        .iter()
        .map(|a| a.as_bytes())
        .chain([&b""[..]])
        .collect();
    assert_eq!(got, want);
}

#[test]
fn stdout_and_stderr_stay_apart() {
    let out = boot(&[], &["sh", "-c", "echo out; echo err >&2; echo out2"]);
    assert_eq!(stdout(&out), "out\nout2\n");
    assert_eq!(stderr(&out), "err\n");
}

#[test]
fn all_256_byte_values_pass_through_stdout() {
    let script = (0..=255u32)
        .map(|b| format!("\\{b:03o}"))
        .collect::<String>();
    let out = boot(&[], &["printf", &script]);
    assert_eq!(out.status.code(), Some(0), "stderr: {}", stderr(&out));
    assert_eq!(out.stdout, (0..=255u8).collect::<Vec<u8>>());
}

fn with_stdin(args: &[&str], input: &[u8]) -> std::process::Output {
    let mut cmd = sm_vmm();
    cmd.arg("--")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    let _deadline = kill_after(child.id(), Duration::from_secs(120));
    child.stdin.take().unwrap().write_all(input).unwrap();
    child.wait_with_output().unwrap()
}

#[test]
fn stdin_reaches_the_command_and_ends() {
    let out = with_stdin(&["wc", "-l"], b"one\ntwo\nthree\n");
    assert_eq!(out.status.code(), Some(0), "stderr: {}", stderr(&out));
    assert_eq!(stdout(&out).trim(), "3");
    // A last line without a newline still arrives, and EOF still follows it. The input goes
    // in once the command runs (input queued before it starts is the `wc` case above).
    let mut child = sm_vmm()
        .args(["--", "sh", "-c", "echo ready; cat"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let _deadline = kill_after(child.id(), Duration::from_secs(120));
    let mut reader = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    std::io::BufRead::read_line(&mut reader, &mut line).unwrap();
    assert_eq!(line, "ready\n");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"line 1\nline 2 'quoted' x=y\nno newline")
        .unwrap();
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut reader, &mut rest).unwrap();
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(0));
    assert_eq!(rest, "line 1\nline 2 'quoted' x=y\nno newline");
}

#[test]
fn a_missing_command_is_exit_127_with_a_message() {
    let out = boot(&[], &["no-such-command", "x"]);
    assert_eq!(out.status.code(), Some(127));
    assert!(
        stderr(&out).contains("cannot run 'no-such-command'"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn orphans_are_reaped_and_do_not_keep_the_vm_alive() {
    let script = "for i in 1 2 3 4 5 6 7 8 9 10; do (true &); done; (sleep 600 &); sleep 1; \
                  awk '$3 == \"Z\"' /proc/[0-9]*/stat | wc -l";
    let out = boot(&[], &["sh", "-c", script]);
    assert_eq!(out.status.code(), Some(0), "stderr: {}", stderr(&out));
    assert_eq!(stdout(&out).trim(), "0", "zombies left unreaped");
}

#[test]
fn guest_poweroff_and_reboot_end_sm_vmm() {
    let out = boot(&[], &["poweroff", "-f"]);
    assert_eq!(out.status.code(), Some(0), "stderr: {}", stderr(&out));
    let out = boot(&[], &["reboot", "-f"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("reset"), "{}", stderr(&out));
}

#[test]
fn sigterm_and_sigint_stop_sm_vmm() {
    for (sig, code) in [(libc::SIGTERM, 143), (libc::SIGINT, 130)] {
        let mut child = sm_vmm()
            .args(["--", "sh", "-c", "echo ready; sleep 600"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        std::io::BufRead::read_line(
            &mut std::io::BufReader::new(child.stdout.as_mut().unwrap()),
            &mut line,
        )
        .unwrap();
        assert_eq!(line, "ready\n");
        let stopped = signal_and_wait(&mut child, sig, Duration::from_secs(10));
        assert!(stopped.in_time, "sm-vmm ignored signal {sig}");
        let status = stopped.status;
        assert_eq!(
            status.code(),
            Some(code),
            "signal {sig}: {status:?} (signal {:?})",
            status.signal()
        );
    }
}

#[test]
fn interactive_shell_reads_the_console() {
    let mut child = sm_vmm()
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .as_mut()
        .unwrap()
        .write_all(b"echo hi-$((6*7))\nexit 5\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(stdout(&out).contains("hi-42"), "stdout: {}", stdout(&out));
    assert_eq!(out.status.code(), Some(5), "stderr: {}", stderr(&out));
}

#[test]
fn verbose_shows_the_boot_log_on_stderr() {
    let out = boot(&["--verbose"], &["true"]);
    let log = stderr(&out);
    let tail: Vec<&str> = log.lines().rev().take(40).collect();
    assert_eq!(
        out.status.code(),
        Some(0),
        "end of the boot log:\n{}",
        tail.into_iter().rev().collect::<Vec<_>>().join("\n")
    );
    assert!(
        stderr(&out).contains("Linux version 6.1.") && stderr(&out).contains("Run /init"),
        "{}",
        stderr(&out)
    );
    assert!(out.stdout.is_empty());
}

#[test]
fn bad_kernel_files_are_one_clear_error() {
    let not_kernel = std::env::temp_dir().join(format!("sm-not-a-kernel-{}", std::process::id()));
    std::fs::write(&not_kernel, vec![0u8; 8192]).unwrap();
    let cases: [(&[&str], &str); 2] = [
        (
            &["--kernel", "/nonexistent/vmlinuz"],
            "kernel /nonexistent/vmlinuz does not exist",
        ),
        (
            &["--kernel", not_kernel.to_str().unwrap()],
            "is not a Linux x86_64 kernel sm-vmm can boot",
        ),
    ];
    for (flags, msg) in cases {
        let out = boot(flags, &["true"]);
        let err = stderr(&out);
        assert_eq!(
            out.status.code(),
            Some(if msg.contains("does not exist") { 2 } else { 1 }),
            "{err}"
        );
        assert!(
            err.contains(msg) && err.lines().count() == 1 && !err.contains("panicked"),
            "{err}"
        );
    }
    let _ = std::fs::remove_file(not_kernel);
}

//! What sm-vmm says on this host before any guest boots: KVM it cannot use is one clear
//! line, never a hang. Runs on the host itself (not in the test VM).

use sm_testvm::stall::rerun_stalled;
use std::path::{Path, PathBuf};
use std::process::Command;

// The README's parser, shared with the guest suite's README test (which runs every other
// example line inside the test VM); only part of it is used here.
#[allow(dead_code)]
#[path = "guest/readme/parse.rs"]
mod readme_parse;

// systemd units and sm-vmm's notifications (issue 13).
#[path = "host/supervision.rs"]
mod supervision;

fn sm_vmm() -> PathBuf {
    sm_integration::bin_dir().join("sm-vmm")
}

#[test]
fn kvm_that_cannot_boot_a_stock_kernel_is_refused_plainly() {
    let out = Command::new(sm_vmm())
        .args(["--", "true"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    if sm_integration::host_kvm_is_pvm_only() {
        assert_eq!(out.status.code(), Some(1), "{err}");
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(
            err.contains("/dev/kvm is PVM") && err.contains("sm-testvm"),
            "{err}"
        );
    } else if !Path::new("/dev/kvm").exists() {
        assert!(err.contains("/dev/kvm does not exist"), "{err}");
    } else {
        // Hardware KVM: the guest boots and `true` succeeds.
        assert_eq!(out.status.code(), Some(0), "{err}");
    }
}

#[test]
fn no_permission_on_dev_kvm_is_one_clear_line() {
    // In a private mount namespace, a root-only node stands in for /dev/kvm (whatever the
    // host's own permissions are), and sm-vmm runs as `nobody`.
    if !sm_test_support::require(
        sm_test_support::is_root(),
        "root, to set up the mount namespace",
    ) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let node = dir.path().join("kvm");
    let script = format!(
        "mknod -m 600 {node} c 10 232 && mount --bind {node} /dev/kvm && \
         exec setpriv --reuid=65534 --regid=65534 --clear-groups {bin} -- true",
        node = node.display(),
        bin = sm_vmm().display()
    );
    let out = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c", &script])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert_eq!(err.trim(), "sm-vmm: permission denied opening /dev/kvm (add this user to the 'kvm' group or run as root)");
}

/// The README's `sm-testvm` example lines boot the test VM themselves, so they run here on
/// the host, as written (the guest suite's README test checks every other line and that these
/// are the only ones left to this test).
#[test]
fn readme_sm_testvm_examples_run_as_written() {
    let readme = std::fs::read_to_string(readme_parse::readme_path()).unwrap();
    let lines: Vec<_> = readme_parse::fenced_blocks(&readme)
        .iter()
        .filter(|b| b.marker.as_deref() == Some(readme_parse::RUN_MARKER))
        .flat_map(readme_parse::command_lines)
        .filter(|l| l.command.starts_with("sm-testvm "))
        .collect();
    assert!(!lines.is_empty(), "README.md shows no sm-testvm example");
    let path = format!(
        "{}:{}",
        sm_integration::bin_dir().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    for line in lines {
        let out = run_retrying_testvm_stall(&line.command, &path);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert_eq!(
            out.status.code(),
            Some(line.claimed_exit()),
            "README.md:{}: {:?}: {}",
            line.line,
            line.command,
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            stdout.starts_with("Linux "),
            "README.md:{}: {:?} printed {stdout:?}, not the guest's uname",
            line.line,
            line.command
        );
    }
}

/// Runs an `sm-testvm` command line; a run whose test VM stalled (the nested emulation's
/// livelock, which sm-testvm reports with exit 124) is run again, loudly, as the guest suite
/// reruns a module whose test VM stalled ([`rerun_stalled`]).
fn run_retrying_testvm_stall(command: &str, path: &str) -> std::process::Output {
    rerun_stalled(
        command,
        |_| true,
        || {
            Command::new("bash")
                .args(["-e", "-o", "pipefail", "-c", command])
                .env("PATH", path)
                .stdin(std::process::Stdio::null())
                .output()
                .unwrap()
        },
    )
}

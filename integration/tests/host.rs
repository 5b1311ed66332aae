//! What sm-vmm says on this host before any guest boots: KVM it cannot use is one clear
//! line, never a hang. Runs on the host itself (not in the test VM).

use std::path::{Path, PathBuf};
use std::process::Command;

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
    assert!(
        nix::unistd::geteuid().is_root(),
        "this test needs root (to set up the mount namespace)"
    );
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

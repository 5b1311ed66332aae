//! Flag validation: each bad value gives one clear line on stderr and a non-zero exit
//! before any VM exists (so these need no KVM).

use crate::common::*;

fn refused(flags: &[&str], expect: &str) {
    let out = sm_vmm_nokvm()
        .args(flags)
        .args(["--", "true"])
        .output()
        .unwrap();
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{flags:?}: {err}");
    assert_eq!(err.lines().count(), 1, "{flags:?}: {err}");
    assert!(
        err.starts_with("sm-vmm: ") && err.contains(expect),
        "{flags:?}: {err}"
    );
}

#[test]
fn vcpu_count_is_checked() {
    refused(
        &["--vcpus", "0"],
        "--vcpus must be between 1 and 254, not 0",
    );
    refused(&["--vcpus", "300"], "not 300");
    refused(&["--vcpus", "two"], "invalid value 'two'");
}

#[test]
fn memory_size_is_checked() {
    refused(&["--mem", "16"], "--mem 16 MiB is too small");
    refused(&["--mem", "100000000"], "more than this host's");
}

#[test]
fn missing_kernel_and_initrd_are_named() {
    refused(
        &["--kernel", "/nonexistent/k"],
        "kernel /nonexistent/k does not exist",
    );
    refused(
        &["--initrd", "/nonexistent/i"],
        "initramfs /nonexistent/i does not exist",
    );
}

#[test]
fn unknown_flags_are_refused() {
    refused(&["--bogus"], "unexpected argument '--bogus'");
}

//! Shared by the integration tests: the backend under test, and booting the project's guest
//! in QEMU against it, the share mounted at /mnt (the harness itself is sm-test-support's).

#![allow(dead_code)] // Each test binary uses a different part.

use std::path::Path;

pub use sm_test_support::qemu::GuestRun;
pub use sm_test_support::{proc_status, wait_for, Program};

/// The backend binary under test.
pub enum Fs {}

impl Program for Fs {
    const PATH: &'static str = env!("CARGO_BIN_EXE_sm-vhost-user-fs");
}

/// A running sm-vhost-user-fs; killed (SIGTERM, then SIGKILL) when dropped.
pub type Backend = sm_test_support::Backend<Fs>;

/// Lowercase hex SHA-256 of a file.
pub fn sha256_file(path: &Path) -> String {
    sm_test_support::sha256_hex(&std::fs::read(path).unwrap())
}

/// Tag the guest mounts.
pub const TAG: &str = "share";

/// Boots the guest in QEMU (TCG) with one vhost-user-fs device (tag [`TAG`]) on `socket`,
/// runs `sh -c SCRIPT`, and returns its output once the VM exits.
pub fn run_guest(dir: &Path, socket: &Path, script: &str) -> GuestRun {
    let device = format!("vhost-user-fs-device,tag={TAG}");
    sm_test_support::qemu::run_guest(dir, socket, &device, script, 1)
}

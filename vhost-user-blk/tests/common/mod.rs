//! Shared by the integration tests: the backend under test, image checks, and booting the
//! project's guest in QEMU against it (the harness itself is sm-test-support's).

#![allow(dead_code)] // Each test binary uses a different part.

use std::os::unix::fs::MetadataExt;
use std::path::Path;

pub use sm_test_support::qemu::GuestRun;
pub use sm_test_support::{proc_status, Program};

/// The backend binary under test.
pub enum Blk {}

impl Program for Blk {
    const PATH: &'static str = env!("CARGO_BIN_EXE_sm-vhost-user-blk");
}

/// A running sm-vhost-user-blk; killed (SIGTERM, then SIGKILL) when dropped.
pub type Backend = sm_test_support::Backend<Blk>;

/// Allocated 512-byte blocks of a file.
pub fn blocks(path: &Path) -> u64 {
    std::fs::metadata(path).unwrap().blocks()
}

/// Lowercase hex SHA-256 of `len` bytes of `path` from `offset`.
pub fn sha256_range(path: &Path, offset: u64, len: usize) -> String {
    use std::os::unix::fs::FileExt;
    let mut buf = vec![0u8; len];
    std::fs::File::open(path)
        .unwrap()
        .read_exact_at(&mut buf, offset)
        .unwrap();
    sm_test_support::sha256_hex(&buf)
}

/// Boots the guest in QEMU (TCG) with one vhost-user-blk device on `socket`, runs
/// `sh -c SCRIPT`, and returns its output once the VM exits.
pub fn run_guest(dir: &Path, socket: &Path, script: &str, vcpus: u32, queues: u16) -> GuestRun {
    let device = format!("vhost-user-blk,num-queues={queues}");
    sm_test_support::qemu::run_guest(dir, socket, &device, script, vcpus)
}

//! Shared by the integration tests: the backend under test, and booting the project's guest
//! in QEMU against it, the share mounted at /mnt (the harness itself is sm-test-support's).

#![allow(dead_code)] // Each test binary uses a different part.

use std::path::Path;

pub use sm_test_support::qemu::GuestRun;
pub use sm_test_support::{proc_status, wait_for, Program};
use sm_vhost_user_common::testing::{GuestMemory, TestFrontend};

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

/// The request queue (0 is high priority).
pub const REQ: usize = 1;
/// FUSE_LOOKUP.
pub const FUSE_LOOKUP: u32 = 1;
/// FUSE_GETATTR.
pub const FUSE_GETATTR: u32 = 3;
/// FUSE_RENAME.
pub const FUSE_RENAME: u32 = 12;
/// FUSE_OPEN.
pub const FUSE_OPEN: u32 = 14;
/// FUSE_READ.
pub const FUSE_READ: u32 = 15;
/// FUSE_WRITE.
pub const FUSE_WRITE: u32 = 16;
/// FUSE_INIT.
pub const FUSE_INIT: u32 = 26;
/// FUSE_OPENDIR.
pub const FUSE_OPENDIR: u32 = 27;

/// One FUSE request on the request queue, through a real virtqueue; its error.
pub fn fuse(fe: &mut TestFrontend, mem: &GuestMemory, opcode: u32, node: u64, body: &[u8]) -> i32 {
    fuse_reply(fe, mem, opcode, node, body).0
}

/// One FUSE request on the request queue; its error and the reply's body (after the header).
pub fn fuse_reply(
    fe: &mut TestFrontend,
    mem: &GuestMemory,
    opcode: u32,
    node: u64,
    body: &[u8],
) -> (i32, Vec<u8>) {
    let mut req = Vec::new();
    req.extend_from_slice(&(40 + body.len() as u32).to_le_bytes());
    req.extend_from_slice(&opcode.to_le_bytes());
    req.extend_from_slice(&7u64.to_le_bytes()); // unique
    req.extend_from_slice(&node.to_le_bytes());
    req.extend_from_slice(&[0u8; 16]); // uid, gid, pid, extlen, padding
    req.extend_from_slice(body);
    let reply = fe.request(mem, REQ, &req, 8192);
    assert!(
        reply.len >= 16,
        "opcode {opcode}: reply of {} bytes",
        reply.len
    );
    let error = i32::from_le_bytes(reply.bytes[4..8].try_into().unwrap());
    (error, reply.bytes[16..reply.len as usize].to_vec())
}

/// A new connection to the backend on `socket`, its queues started and FUSE INIT done.
pub fn session(socket: &Path, mem: &GuestMemory) -> TestFrontend {
    let (mut fe, _) = TestFrontend::connect(socket, 2);
    fe.start(mem, &[0, 0]);
    let init: Vec<u8> = [7u32, 31, 0, 0]
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect();
    assert_eq!(fuse(&mut fe, mem, FUSE_INIT, 0, &init), 0, "INIT");
    fe
}

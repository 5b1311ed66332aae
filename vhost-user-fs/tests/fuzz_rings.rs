//! Property-based fuzzing of the split ring itself (issue 17): hostile descriptor tables
//! (loops, chains past the table, nested, misaligned, empty and too-long indirect tables,
//! buffers outside guest memory, heads past the queue, an avail index that lies) carrying
//! FUSE requests, published on either queue of the real sm-vhost-user-fs process, sandboxed (with and without a worker pool),
//! over real vhost-user, after the connection's FUSE INIT.
//!
//! The property: the backend neither dies nor hangs, and nothing outside the shared
//! directory changes. After each hostile ring its frontend hangs up and the next frontend's
//! INIT and LOOKUP are answered within the harness's 10 s. Cases come from
//! `PROPTEST_CASES` (small by default); `scripts/fuzz fs-rings 10m` runs more.

#[allow(unused_imports)] // The shared module re-exports what other test binaries use.
mod common;

use std::path::Path;
use std::time::Duration;

use common::{fuse, session, Backend, FUSE_LOOKUP};
use proptest::prelude::*;
use proptest::test_runner::TestRunner;
use sm_test_support::fuzz::config;
use sm_test_support::s;
use sm_vhost_user_common::testing::hostile::{hostile_ring, HostileRing};
use sm_vhost_user_common::testing::GuestMemory;

/// A FUSE request: a header whose length may lie, an opcode the file system acts on (or
/// any), a node ID that is the root or anything, and a body that may hold a name.
fn request() -> impl Strategy<Value = Vec<u8>> {
    let opcode = prop_oneof![
        Just(1u32), // LOOKUP
        Just(3),    // GETATTR
        Just(9),    // MKDIR
        Just(14),   // OPEN
        Just(15),   // READ
        Just(16),   // WRITE
        Just(28),   // READDIR
        Just(35),   // CREATE
        Just(2),    // FORGET
        Just(26),   // INIT
        any::<u32>()
    ];
    let node = prop_oneof![Just(1u64), 0..8u64, any::<u64>()];
    let body = prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..96),
        Just(b"x\0".to_vec()),
        Just(b"..\0".to_vec()),
    ];
    let lie = prop_oneof![4 => Just(None), 1 => any::<u32>().prop_map(Some)];
    (opcode, node, body, lie).prop_map(|(opcode, node, body, lie)| {
        let mut r = Vec::new();
        r.extend_from_slice(&lie.unwrap_or(40 + body.len() as u32).to_le_bytes());
        r.extend_from_slice(&opcode.to_le_bytes());
        r.extend_from_slice(&9u64.to_le_bytes()); // unique
        r.extend_from_slice(&node.to_le_bytes());
        r.extend_from_slice(&[0u8; 16]); // uid, gid, pid, extlen, padding
        r.extend(body);
        r
    })
}

/// Publishes `ring` on queue `q` of a fresh session, hangs up, and has the next frontend
/// look up a file.
fn survives(b: &Backend, q: usize, ring: &HostileRing) -> Result<(), TestCaseError> {
    let mem = GuestMemory::new();
    let mut fe = session(&b.socket, &mem);
    fe.publish_hostile(&mem, q, ring);
    // Time for the queue thread to take what it can.
    std::thread::sleep(Duration::from_millis(10));
    drop(fe);

    let mem = GuestMemory::new();
    let mut fe = session(&b.socket, &mem);
    prop_assert_eq!(fuse(&mut fe, &mem, FUSE_LOOKUP, 1, b"hello\0"), 0, "LOOKUP");
    Ok(())
}

/// Every entry under `dir`, with its contents.
fn tree(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut all: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            let data = std::fs::read(e.path()).unwrap_or_default();
            (e.file_name().to_string_lossy().into_owned(), data)
        })
        .collect();
    all.sort();
    all
}

#[test]
fn hostile_rings_neither_kill_nor_hang_the_backend() {
    let dir = tempfile::tempdir().unwrap();
    let (shared, outside) = (dir.path().join("share"), dir.path().join("outside"));
    std::fs::create_dir(&shared).unwrap();
    std::fs::create_dir(&outside).unwrap();
    std::fs::write(shared.join("hello"), b"hi\n").unwrap();
    std::fs::write(outside.join("secret"), b"host secret\n").unwrap();
    let before = tree(&outside);
    // In order on the queue's thread, and out of order on a worker pool.
    for extra in [&[][..], &["--thread-pool-size", "2"]] {
        let args = [&["--shared-dir", s(&shared)][..], extra].concat();
        let b = Backend::start(dir.path(), "fs", &args);
        TestRunner::new(config(32))
            .run(&(0..2usize, hostile_ring(request())), |(q, ring)| {
                survives(&b, q, &ring)
            })
            .unwrap_or_else(|e| panic!("{args:?}: {e}\n--- backend log\n{}", b.log()));
    }
    assert_eq!(
        tree(&outside),
        before,
        "something outside the share changed"
    );
}

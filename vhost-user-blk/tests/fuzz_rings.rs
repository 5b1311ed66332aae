//! Property-based fuzzing of the split ring itself (issue 17): hostile descriptor tables
//! (loops, chains past the table, nested, misaligned, empty and too-long indirect tables,
//! buffers outside guest memory, heads past the queue, an avail index that lies) published
//! to the real sm-vhost-user-blk process, sandboxed, over real vhost-user.
//!
//! The property: the backend neither dies nor hangs. After each hostile ring its frontend
//! hangs up and the next frontend's read is served within the harness's 10 s, with status
//! OK and the whole sector. Cases come from `PROPTEST_CASES` (small by default);
//! `scripts/fuzz blk-rings 10m` runs more.

#[allow(unused_imports)] // The shared module re-exports what other test binaries use.
mod common;

use std::time::Duration;

use common::Backend;
use proptest::prelude::*;
use proptest::test_runner::TestRunner;
use sm_test_support::fuzz::config;
use sm_test_support::s;
use sm_vhost_user_common::testing::hostile::{hostile_ring, HostileRing};
use sm_vhost_user_common::testing::{GuestMemory, TestFrontend};

const T_IN: u32 = 0;

/// A virtio-blk request header (type, sector) and what may follow it.
fn request() -> impl Strategy<Value = Vec<u8>> {
    let kind = prop_oneof![
        Just(0u32),
        Just(1),
        Just(4),
        Just(8),
        Just(11),
        Just(13),
        any::<u32>()
    ];
    let sector = prop_oneof![0..2048u64, any::<u64>()];
    (kind, sector, proptest::collection::vec(any::<u8>(), 0..64)).prop_map(|(k, s, tail)| {
        let mut r = vec![0u8; 16];
        r[0..4].copy_from_slice(&k.to_le_bytes());
        r[8..16].copy_from_slice(&s.to_le_bytes());
        r.extend(tail);
        r
    })
}

/// Publishes `ring` on a fresh connection, hangs up, and has the next frontend read a
/// sector.
fn survives(b: &Backend, ring: &HostileRing) -> Result<(), TestCaseError> {
    let mem = GuestMemory::new();
    let (mut fe, _) = TestFrontend::connect(&b.socket, 1);
    fe.start(&mem, &[0]);
    fe.publish_hostile(&mem, 0, ring);
    // Time for the queue thread to take what it can.
    std::thread::sleep(Duration::from_millis(10));
    drop(fe);

    let mem = GuestMemory::new();
    let (mut fe, _) = TestFrontend::connect(&b.socket, 1);
    fe.start(&mem, &[0]);
    let mut read = vec![0u8; 16];
    read[0..4].copy_from_slice(&T_IN.to_le_bytes());
    let reply = fe.request(&mem, 0, &read, 513);
    prop_assert_eq!(reply.len, 513);
    prop_assert_eq!(reply.bytes[512], 0, "read status");
    Ok(())
}

#[test]
fn hostile_rings_neither_kill_nor_hang_the_backend() {
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("disk.img");
    let b = Backend::start(dir.path(), "blk", &["--file", s(&image), "--size-mib", "1"]);
    TestRunner::new(config(48))
        .run(&hostile_ring(request()), |ring| survives(&b, &ring))
        .unwrap_or_else(|e| panic!("{e}\n--- backend log\n{}", b.log()));
}

//! Snapshot and restore over vhost-user (SET_DEVICE_STATE_FD / CHECK_DEVICE_STATE) with the
//! real backend binary and real block requests through a real virtqueue: backend A writes a
//! sector, stops its ring and saves; it serves on afterwards; a fresh backend B on the same
//! image loads the state and reads the sector back. A backend on an image of another size,
//! and garbage, are refused.

#[allow(unused_imports)] // The shared module re-exports what other test binaries use.
mod common;

use std::path::Path;

use common::Backend;
use sm_test_support::s;
use sm_vhost_user_common::testing::{GuestMemory, TestFrontend, MEM_SIZE};
use vhost::vhost_user::message::VhostUserProtocolFeatures;

const T_IN: u32 = 0;
const T_OUT: u32 = 1;
const SECTOR: u64 = 3;

fn header(kind: u32, sector: u64) -> Vec<u8> {
    let mut h = vec![0u8; 16];
    h[0..4].copy_from_slice(&kind.to_le_bytes());
    h[8..16].copy_from_slice(&sector.to_le_bytes());
    h
}

fn start(dir: &Path, name: &str, image: &Path, mib: &str) -> Backend {
    Backend::start(dir, name, &["--file", s(image), "--size-mib", mib])
}

/// Reads sector [`SECTOR`]: (status, data).
fn read_sector(fe: &mut TestFrontend, mem: &GuestMemory) -> (u8, Vec<u8>) {
    let reply = fe.request(mem, 0, &header(T_IN, SECTOR), 513);
    assert_eq!(reply.len, 513);
    (reply.bytes[512], reply.bytes[..512].to_vec())
}

#[test]
fn a_fresh_backend_loads_the_state_and_serves_the_image() {
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("disk.img");
    let a = start(dir.path(), "a", &image, "1");
    let mem = GuestMemory::new();
    let (mut fe, offered) = TestFrontend::connect(&a.socket, 1);
    assert!(offered.contains(VhostUserProtocolFeatures::DEVICE_STATE));
    fe.start(&mem, &[0]);
    let write = [header(T_OUT, SECTOR), vec![0xab; 512]].concat();
    let reply = fe.request(&mem, 0, &write, 1);
    assert_eq!((reply.len, reply.bytes[0]), (1, 0), "write status");

    let bases = fe.stop();
    assert_eq!(bases, [1]);
    let memory = mem.read(0, MEM_SIZE);
    let (state, check) = fe.save();
    check.unwrap_or_else(|e| panic!("CHECK after SAVE: {e}\n{}", a.log()));
    let doc: serde_json::Value = serde_json::from_slice(&state).unwrap();
    let mut fields: Vec<_> = doc.as_object().unwrap().keys().cloned().collect();
    fields.sort();
    assert_eq!(
        fields,
        [
            "acked_features",
            "capacity_bytes",
            "device_id",
            "format",
            "read_only",
            "version"
        ]
    );
    assert_eq!(doc["capacity_bytes"], 1 << 20);
    assert_eq!(doc["acked_features"], (1u64 << 32) | (1 << 30));
    let on_disk = std::fs::read(&image).unwrap();
    assert_eq!(&on_disk[3 * 512..4 * 512], &[0xab; 512][..]);

    // The source serves on after the snapshot, from the same ring.
    fe.start(&mem, &bases);
    assert_eq!(read_sector(&mut fe, &mem), (0, vec![0xab; 512]));
    drop(fe);
    a.stop(); // The image's one-writer lock passes to B.

    let b = start(dir.path(), "b", &image, "1");
    let mem = GuestMemory::new();
    mem.write(0, &memory);
    let (mut fe, _) = TestFrontend::connect(&b.socket, 1);
    fe.load(&state)
        .unwrap_or_else(|e| panic!("LOAD: {e}\n{}", b.log()));
    fe.start(&mem, &bases);
    assert_eq!(read_sector(&mut fe, &mem), (0, vec![0xab; 512]));
    drop(fe);
    drop(b);

    // Another size, garbage: refused, each with one line in the log.
    let other = dir.path().join("other.img");
    let c = start(dir.path(), "c", &other, "2");
    let (mut fe, _) = TestFrontend::connect(&c.socket, 1);
    assert!(fe.load(&state).is_err());
    assert!(fe.load(b"not json").is_err());
    let log = c.log();
    assert!(
        log.contains(
            "cannot load the device state: image is 2097152 bytes but the state was saved with a 1048576-byte image"
        ),
        "{log}"
    );
    assert!(
        log.contains("cannot load the device state: not an sm-vhost-user-blk state document"),
        "{log}"
    );
}

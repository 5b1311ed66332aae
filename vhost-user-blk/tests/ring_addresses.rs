//! Ring addresses outside the guest memory a frontend shared (SET_VRING_ADDR with addresses
//! no SET_MEM_TABLE region covers): the real backend refuses each (an error reply or none),
//! ends that connection and serves the next frontend. sm-vmm never sends such addresses (it
//! refuses rings outside guest RAM itself); this is the backend's own line of defence.

#[allow(unused_imports)] // The shared module re-exports what other test binaries use.
mod common;

use common::Backend;
use sm_test_support::s;
use sm_vhost_user_common::testing::{GuestMemory, QUEUE_SIZE};
use vhost::vhost_user::message::{VhostUserHeaderFlag, VhostUserProtocolFeatures};
use vhost::vhost_user::{Frontend, VhostUserFrontend};
use vhost::{VhostBackend, VringConfigData};

fn rings(desc: u64, avail: u64, used: u64) -> VringConfigData {
    VringConfigData {
        queue_max_size: QUEUE_SIZE,
        queue_size: QUEUE_SIZE,
        flags: 0,
        desc_table_addr: desc,
        used_ring_addr: used,
        avail_ring_addr: avail,
        log_addr: None,
    }
}

/// A fresh connection to `b` set up to SET_VRING_NUM of queue 0 with `mem` as the memory
/// table, with REPLY_ACK so every step is answered.
fn connect(b: &Backend, mem: &GuestMemory) -> Frontend {
    let mut fe = Frontend::connect(&b.socket, 1).expect("connect");
    fe.set_owner().unwrap();
    let features = fe.get_features().unwrap();
    let offered = fe.get_protocol_features().unwrap();
    assert!(offered.contains(VhostUserProtocolFeatures::REPLY_ACK));
    fe.set_protocol_features(offered & VhostUserProtocolFeatures::REPLY_ACK)
        .unwrap();
    fe.set_hdr_flags(VhostUserHeaderFlag::NEED_REPLY);
    fe.set_features(features).unwrap();
    fe.set_mem_table(&[mem.region()]).expect("SET_MEM_TABLE");
    fe.set_vring_num(0, QUEUE_SIZE).unwrap();
    fe
}

#[test]
fn ring_addresses_outside_shared_memory_are_refused_and_the_backend_serves_on() {
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("disk.img");
    let b = Backend::start(dir.path(), "blk", &["--file", s(&image), "--size-mib", "1"]);
    let pid = b.sandboxed_pid();
    let mem = GuestMemory::new();
    let region = mem.region();
    let va = region.userspace_addr;
    let end = va + region.memory_size;
    for (what, config) in [
        (
            "desc below the memory",
            rings(va - 0x1000, va + 0x100, va + 0x200),
        ),
        ("avail past the end", rings(va, end, va + 0x200)),
        ("used far away", rings(va, va + 0x100, 0x1000)),
        (
            "used whose index lies past the end",
            rings(va, va + 0x100, end - 2),
        ),
        (
            "all at the top of the address space",
            rings(u64::MAX - 0xfff, u64::MAX - 0xff, u64::MAX - 0x7f),
        ),
    ] {
        // An error reply (or, for a used ring whose index the backend cannot read, none),
        // then the backend ends this connection, as it does for any request it refuses,
        // and waits for the next frontend.
        let fe = connect(&b, &mem);
        let e = fe.set_vring_addr(0, &config).expect_err(what).to_string();
        assert!(
            e.contains("backend internal error") || e.contains("partial message"),
            "{what}: {e}"
        );
    }
    // The same sandboxed process serves the next frontend, and proper rings are accepted.
    let fe = connect(&b, &mem);
    fe.set_vring_addr(0, &rings(va, va + 0x100, va + 0x200))
        .unwrap_or_else(|e| panic!("good rings after the bad ones: {e}\n{}", b.log()));
    fe.set_vring_base(0, 0).unwrap();
    assert_eq!(b.sandboxed_pid(), pid, "{}", b.log());
}

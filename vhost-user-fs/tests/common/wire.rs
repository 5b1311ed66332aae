//! FUSE requests as bytes through the backend's real queue loop: each request is one
//! descriptor chain (a readable buffer, then a writable one) in a mock split queue over real
//! guest memory, handed to `FsBackend::handle_event` as a kick from the guest would be.

#![allow(dead_code)] // Each test binary uses a different part.

use std::sync::Arc;

use sm_vhost_user_fs::backend::{FsBackend, Vring};
use sm_vhost_user_fs::config::DeviceConfig;
use sm_vhost_user_fs::fs::SharedFs;
use vhost_user_backend::{VhostUserBackend, VringT};
use virtio_bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::desc::{split::Descriptor, RawDescriptor};
use virtio_queue::mock::MockSplitQueue;
use vm_memory::{Bytes, GuestAddress, GuestMemoryAtomic, GuestMemoryMmap};
use vmm_sys_util::epoll::EventSet;

/// FUSE opcodes used by name in the tests.
pub mod op {
    /// FUSE_LOOKUP.
    pub const LOOKUP: u32 = 1;
    /// FUSE_FORGET.
    pub const FORGET: u32 = 2;
    /// FUSE_GETATTR.
    pub const GETATTR: u32 = 3;
    /// FUSE_OPEN.
    pub const OPEN: u32 = 14;
    /// FUSE_READ.
    pub const READ: u32 = 15;
    /// FUSE_WRITE.
    pub const WRITE: u32 = 16;
    /// FUSE_RELEASE.
    pub const RELEASE: u32 = 18;
    /// FUSE_INIT.
    pub const INIT: u32 = 26;
    /// FUSE_OPENDIR.
    pub const OPENDIR: u32 = 27;
}

/// Length of `struct fuse_in_header`.
pub const IN_HEADER: usize = 40;
/// Length of `struct fuse_out_header`.
pub const OUT_HEADER: usize = 16;
/// Where the request goes in guest memory, and its largest size.
const REQ_AT: u64 = 0x10_0000;
const REQ_MAX: usize = 0x8_0000;
/// Where the reply goes, and its size.
const REPLY_AT: u64 = 0x18_0000;
const REPLY_MAX: u32 = 0x4_0000;

/// What came back for one request.
#[derive(Debug)]
pub struct Reply {
    /// Bytes the device said it wrote (0: no reply at all).
    pub used: u32,
    /// The reply, `used` bytes of it.
    pub bytes: Vec<u8>,
}

impl Reply {
    /// The out header's error (0 or a negative errno); `None` without a whole header.
    pub fn error(&self) -> Option<i32> {
        (self.bytes.len() >= OUT_HEADER)
            .then(|| i32::from_le_bytes(self.bytes[4..8].try_into().unwrap()))
    }

    /// The out header's `len` field.
    pub fn len_field(&self) -> Option<u32> {
        (self.bytes.len() >= OUT_HEADER)
            .then(|| u32::from_le_bytes(self.bytes[0..4].try_into().unwrap()))
    }

    /// The out header's `unique`.
    pub fn unique(&self) -> Option<u64> {
        (self.bytes.len() >= OUT_HEADER)
            .then(|| u64::from_le_bytes(self.bytes[8..16].try_into().unwrap()))
    }

    /// The reply's body (after the out header).
    pub fn body(&self) -> &[u8] {
        self.bytes.get(OUT_HEADER..).unwrap_or(&[])
    }

    /// A little-endian u64 of the body at `at`.
    pub fn u64_at(&self, at: usize) -> u64 {
        u64::from_le_bytes(self.body()[at..at + 8].try_into().unwrap())
    }
}

/// A backend serving one `SharedFs`, fed raw requests.
pub struct Wire {
    backend: FsBackend,
    unique: u64,
}

impl Wire {
    /// The device around `fs` (no thread pool: requests run on the caller's thread).
    pub fn new(fs: SharedFs) -> Wire {
        let backend = FsBackend::new(Arc::new(fs), DeviceConfig::new(None).unwrap(), 0).unwrap();
        Wire { backend, unique: 0 }
    }

    /// Sends `req` as it is (header included, whatever it says) on the request queue and
    /// returns what the device put in the used ring. Panics if the chain never comes back.
    pub fn send(&mut self, req: &[u8]) -> Reply {
        assert!(req.len() <= REQ_MAX, "request too large for the harness");
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x20_0000)]).unwrap();
        let vq = MockSplitQueue::new(&mem, 16);
        mem.write_slice(req, GuestAddress(REQ_AT)).unwrap();
        let descs: [RawDescriptor; 2] = [
            Descriptor::new(REQ_AT, req.len() as u32, VRING_DESC_F_NEXT as u16, 1).into(),
            Descriptor::new(REPLY_AT, REPLY_MAX, VRING_DESC_F_WRITE as u16, 0).into(),
        ];
        vq.add_desc_chains(&descs, 0).unwrap();
        let atomic = GuestMemoryAtomic::new(mem.clone());
        self.backend.update_memory(atomic.clone()).unwrap();
        let vring = Vring::new(atomic, 16).unwrap();
        vring
            .set_queue_info(vq.desc_table_addr().0, vq.avail_addr().0, vq.used_addr().0)
            .unwrap();
        vring.set_queue_size(16);
        vring.set_queue_ready(true);
        vring.set_enabled(true);
        self.backend
            .handle_event(1, EventSet::IN, &[vring.clone(), vring.clone()], 0)
            .unwrap();
        assert_eq!(vq.used().idx().load(), 1, "the chain was not returned");
        let used = vq.used().ring().ref_at(0).unwrap().load().len();
        let mut bytes = vec![0u8; (used as usize).min(REPLY_MAX as usize)];
        mem.read_slice(&mut bytes, GuestAddress(REPLY_AT)).unwrap();
        Reply { used, bytes }
    }

    /// A well-formed request: header (right length, a fresh `unique`, root's IDs) and body.
    pub fn request(&mut self, opcode: u32, nodeid: u64, body: &[u8]) -> Reply {
        self.unique += 1;
        let req = header(body.len(), opcode, self.unique, nodeid, body);
        let reply = self.send(&req);
        if opcode != op::FORGET {
            assert_eq!(reply.unique(), Some(self.unique), "reply to {opcode}");
        }
        reply
    }

    /// FUSE_INIT as Linux 6.x sends it (7.31, no optional flags).
    pub fn init(&mut self) {
        self.init_with(0);
    }

    /// FUSE_INIT (7.31) offering the capability bits `flags`: the flags the backend took.
    pub fn init_with(&mut self, flags: u32) -> u32 {
        let mut body = Vec::new();
        for v in [7u32, 31, 128 << 10, flags] {
            body.extend_from_slice(&v.to_le_bytes());
        }
        let r = self.request(op::INIT, 0, &body);
        assert_eq!(r.error(), Some(0), "INIT failed");
        u32::from_le_bytes(r.body()[12..16].try_into().unwrap())
    }

    /// LOOKUP of `name` in `parent`: the node ID, or the negative errno.
    pub fn lookup(&mut self, parent: u64, name: &[u8]) -> Result<u64, i32> {
        let mut body = name.to_vec();
        body.push(0);
        let r = self.request(op::LOOKUP, parent, &body);
        match r.error() {
            Some(0) => Ok(r.u64_at(0)),
            Some(e) => Err(e),
            None => Err(i32::MIN),
        }
    }

    /// OPEN of `node` with `flags`: the file handle, or the negative errno.
    pub fn open(&mut self, node: u64, flags: u32) -> Result<u64, i32> {
        let mut body = flags.to_le_bytes().to_vec();
        body.extend_from_slice(&0u32.to_le_bytes());
        let r = self.request(op::OPEN, node, &body);
        match r.error() {
            Some(0) => Ok(r.u64_at(0)),
            Some(e) => Err(e),
            None => Err(i32::MIN),
        }
    }

    /// WRITE of `data` at `offset` through handle `fh`: bytes written, or the negative errno.
    pub fn write(&mut self, node: u64, fh: u64, offset: u64, data: &[u8]) -> Result<u32, i32> {
        self.write_with(node, fh, offset, 0, data)
    }

    /// WRITE as from a file the guest opened with `flags` (O_APPEND...).
    pub fn write_with(
        &mut self,
        node: u64,
        fh: u64,
        offset: u64,
        flags: u32,
        data: &[u8],
    ) -> Result<u32, i32> {
        let mut body = Vec::new();
        body.extend_from_slice(&fh.to_le_bytes());
        body.extend_from_slice(&offset.to_le_bytes());
        body.extend_from_slice(&(data.len() as u32).to_le_bytes());
        body.extend_from_slice(&[0u8; 4 + 8]); // write_flags, lock_owner
        body.extend_from_slice(&flags.to_le_bytes());
        body.extend_from_slice(&[0u8; 4]); // padding
        body.extend_from_slice(data);
        let r = self.request(op::WRITE, node, &body);
        match r.error() {
            Some(0) => Ok(u32::from_le_bytes(r.body()[0..4].try_into().unwrap())),
            Some(e) => Err(e),
            None => Err(i32::MIN),
        }
    }
}

/// A request's bytes: `struct fuse_in_header` (uid, gid and pid 0) followed by `body`.
pub fn header(body_len: usize, opcode: u32, unique: u64, nodeid: u64, body: &[u8]) -> Vec<u8> {
    let mut req = Vec::with_capacity(IN_HEADER + body.len());
    req.extend_from_slice(&((IN_HEADER + body_len) as u32).to_le_bytes());
    req.extend_from_slice(&opcode.to_le_bytes());
    req.extend_from_slice(&unique.to_le_bytes());
    req.extend_from_slice(&nodeid.to_le_bytes());
    req.extend_from_slice(&[0u8; 16]); // uid, gid, pid, total_extlen, padding
    req.extend_from_slice(body);
    req
}

//! A minimal vhost-user frontend for the backends' tests (feature `testing`): guest memory in
//! a memfd shared with the backend, split virtqueues laid out in it, one request at a time,
//! and the snapshot messages (GET_VRING_BASE, SET_DEVICE_STATE_FD, CHECK_DEVICE_STATE) in
//! the order sm-vmm sends them. Real vhost-user over a real socket, through `vhost`'s
//! [`Frontend`]; the backend cannot tell it from a VMM.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;
use std::time::{Duration, Instant};

use vhost::vhost_user::message::{
    VhostTransferStateDirection, VhostTransferStatePhase, VhostUserProtocolFeatures,
};
use vhost::vhost_user::{Frontend, VhostUserFrontend};
use vhost::{VhostBackend, VhostUserMemoryRegionInfo, VringConfigData};
use vmm_sys_util::eventfd::EventFd;

pub mod hostile;

/// Size of the guest memory.
pub const MEM_SIZE: usize = 4 << 20;
/// Entries per queue.
pub const QUEUE_SIZE: u16 = 16;
/// Where each queue's rings start (queue `q` at `RINGS + q * 0x1000`).
const RINGS: u64 = 0x1000;
/// Where request buffers start.
pub const DATA: u64 = 0x10_0000;
/// Where reply buffers start.
pub const REPLY: u64 = 0x20_0000;
/// VIRTIO_F_VERSION_1.
const VERSION_1: u64 = 1 << 32;
/// VHOST_USER_F_PROTOCOL_FEATURES.
const PROTOCOL_FEATURES: u64 = 1 << 30;
/// VRING_DESC_F_NEXT.
const F_NEXT: u16 = 1;
/// VRING_DESC_F_WRITE.
const F_WRITE: u16 = 2;

/// Guest memory: a memfd mapped in this process, handed to each backend.
pub struct GuestMemory {
    file: File,
    ptr: *mut u8,
}

// SAFETY: the mapping is plain shared memory owned by this struct; every access copies bytes.
unsafe impl Send for GuestMemory {}

impl GuestMemory {
    /// [`MEM_SIZE`] bytes of zeroed shared memory.
    pub fn new() -> GuestMemory {
        // SAFETY: a NUL-terminated name; the result is checked.
        let fd = unsafe { libc::memfd_create(c"guest".as_ptr(), libc::MFD_CLOEXEC) };
        assert!(fd >= 0, "memfd_create: {}", std::io::Error::last_os_error());
        // SAFETY: a new descriptor nothing else owns.
        let file = unsafe { File::from_raw_fd(fd) };
        file.set_len(MEM_SIZE as u64).expect("size the memfd");
        // SAFETY: maps the whole file shared; the result is checked.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                MEM_SIZE,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                0,
            )
        };
        assert_ne!(ptr, libc::MAP_FAILED, "mmap guest memory");
        GuestMemory {
            file,
            ptr: ptr.cast(),
        }
    }

    fn check(addr: u64, len: usize) -> usize {
        let a = addr as usize;
        assert!(a + len <= MEM_SIZE, "{addr:#x}+{len} outside guest memory");
        a
    }

    /// Writes `data` at guest address `addr`.
    pub fn write(&self, addr: u64, data: &[u8]) {
        let a = Self::check(addr, data.len());
        // SAFETY: inside the mapping (checked); the backend may read it concurrently, which
        // is what a guest does too.
        unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), self.ptr.add(a), data.len()) };
        std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
    }

    /// Reads `len` bytes at guest address `addr`.
    pub fn read(&self, addr: u64, len: usize) -> Vec<u8> {
        let a = Self::check(addr, len);
        std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
        let mut out = vec![0u8; len];
        // SAFETY: inside the mapping (checked).
        unsafe { std::ptr::copy_nonoverlapping(self.ptr.add(a), out.as_mut_ptr(), len) };
        out
    }

    fn read_u16(&self, addr: u64) -> u16 {
        let a = Self::check(addr, 2);
        // SAFETY: inside the mapping; a volatile read sees the backend's update.
        let v = unsafe { std::ptr::read_volatile(self.ptr.add(a).cast::<u16>()) };
        u16::from_le(v)
    }

    /// The memory table entry that shares all of it at guest address 0.
    pub fn region(&self) -> VhostUserMemoryRegionInfo {
        VhostUserMemoryRegionInfo {
            guest_phys_addr: 0,
            memory_size: MEM_SIZE as u64,
            userspace_addr: self.ptr as u64,
            mmap_offset: 0,
            mmap_handle: self.file.as_raw_fd(),
        }
    }
}

impl Default for GuestMemory {
    fn default() -> GuestMemory {
        GuestMemory::new()
    }
}

impl Drop for GuestMemory {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping made in `new`.
        unsafe { libc::munmap(self.ptr.cast(), MEM_SIZE) };
    }
}

/// One queue as the driver sees it.
struct Queue {
    kick: EventFd,
    call: EventFd,
    next_avail: u16,
    used_seen: u16,
}

/// A connected frontend with its queues.
pub struct TestFrontend {
    fe: Frontend,
    queues: Vec<Queue>,
}

/// A completed request: the bytes the device wrote and the length it reported.
pub struct Reply {
    /// The used length.
    pub len: u32,
    /// The reply buffer's first `len` bytes.
    pub bytes: Vec<u8>,
}

fn desc_addr(q: usize) -> u64 {
    RINGS + q as u64 * 0x1000
}
fn avail_addr(q: usize) -> u64 {
    desc_addr(q) + 0x100
}
fn used_addr(q: usize) -> u64 {
    desc_addr(q) + 0x200
}

impl TestFrontend {
    /// Connects to `socket` and negotiates VERSION_1 and the protocol features the backend
    /// offers among CONFIG, MQ, REPLY_ACK and DEVICE_STATE; returns the offered protocol
    /// features too. Nothing else is set up yet.
    pub fn connect(socket: &Path, queues: usize) -> (TestFrontend, VhostUserProtocolFeatures) {
        let mut fe = Frontend::connect(socket, queues as u64).expect("connect to the backend");
        fe.set_owner().expect("SET_OWNER");
        let features = fe.get_features().expect("GET_FEATURES");
        assert!(features & PROTOCOL_FEATURES != 0, "no protocol features");
        let offered = fe.get_protocol_features().expect("GET_PROTOCOL_FEATURES");
        let wanted = VhostUserProtocolFeatures::CONFIG
            | VhostUserProtocolFeatures::MQ
            | VhostUserProtocolFeatures::REPLY_ACK
            | VhostUserProtocolFeatures::DEVICE_STATE;
        fe.set_protocol_features(offered & wanted)
            .expect("SET_PROTOCOL_FEATURES");
        let queues = (0..queues)
            .map(|_| Queue {
                kick: EventFd::new(libc::EFD_NONBLOCK).unwrap(),
                call: EventFd::new(libc::EFD_NONBLOCK).unwrap(),
                next_avail: 0,
                used_seen: 0,
            })
            .collect();
        (TestFrontend { fe, queues }, offered)
    }

    /// SET_FEATURES, SET_MEM_TABLE and every queue started from `bases` (0 for a new device):
    /// NUM, ADDR, BASE, CALL, KICK, ENABLE, as sm-vmm does after a restore.
    pub fn start(&mut self, mem: &GuestMemory, bases: &[u16]) {
        let features = self.fe.get_features().unwrap();
        self.fe
            .set_features(features & (VERSION_1 | PROTOCOL_FEATURES))
            .expect("SET_FEATURES");
        self.fe
            .set_mem_table(&[mem.region()])
            .expect("SET_MEM_TABLE");
        let va = mem.ptr as u64;
        for (q, queue) in self.queues.iter_mut().enumerate() {
            let base = bases.get(q).copied().unwrap_or(0);
            self.fe.set_vring_num(q, QUEUE_SIZE).expect("SET_VRING_NUM");
            let config = VringConfigData {
                queue_max_size: QUEUE_SIZE,
                queue_size: QUEUE_SIZE,
                flags: 0,
                desc_table_addr: va + desc_addr(q),
                used_ring_addr: va + used_addr(q),
                avail_ring_addr: va + avail_addr(q),
                log_addr: None,
            };
            self.fe.set_vring_addr(q, &config).expect("SET_VRING_ADDR");
            self.fe.set_vring_base(q, base).expect("SET_VRING_BASE");
            self.fe
                .set_vring_call(q, &queue.call)
                .expect("SET_VRING_CALL");
            self.fe
                .set_vring_kick(q, &queue.kick)
                .expect("SET_VRING_KICK");
            self.fe.set_vring_enable(q, true).expect("SET_VRING_ENABLE");
            // The driver's own indices are what guest memory holds, whatever the device's
            // base (requests not yet taken stay in the ring).
            queue.next_avail = mem.read_u16(avail_addr(q) + 2);
            queue.used_seen = mem.read_u16(used_addr(q) + 2);
        }
    }

    /// Sends one request on queue `q`: `request` readable, then `reply_len` writable bytes;
    /// waits (up to 10 s) for the device to return it.
    pub fn request(
        &mut self,
        mem: &GuestMemory,
        q: usize,
        request: &[u8],
        reply_len: u32,
    ) -> Reply {
        let queue = &mut self.queues[q];
        let mut desc = Vec::with_capacity(32);
        desc.extend_from_slice(&DATA.to_le_bytes());
        desc.extend_from_slice(&(request.len() as u32).to_le_bytes());
        desc.extend_from_slice(&F_NEXT.to_le_bytes());
        desc.extend_from_slice(&1u16.to_le_bytes());
        desc.extend_from_slice(&REPLY.to_le_bytes());
        desc.extend_from_slice(&reply_len.to_le_bytes());
        desc.extend_from_slice(&F_WRITE.to_le_bytes());
        desc.extend_from_slice(&0u16.to_le_bytes());
        mem.write(DATA, request);
        mem.write(REPLY, &vec![0u8; reply_len as usize]);
        mem.write(desc_addr(q), &desc);
        let slot = u64::from(queue.next_avail % QUEUE_SIZE);
        mem.write(avail_addr(q) + 4 + 2 * slot, &0u16.to_le_bytes());
        queue.next_avail = queue.next_avail.wrapping_add(1);
        mem.write(avail_addr(q) + 2, &queue.next_avail.to_le_bytes());
        queue.kick.write(1).expect("kick");
        let start = Instant::now();
        while mem.read_u16(used_addr(q) + 2) == queue.used_seen {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "queue {q}: no reply in 10 s"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
        let slot = u64::from(queue.used_seen % QUEUE_SIZE);
        queue.used_seen = queue.used_seen.wrapping_add(1);
        let elem = mem.read(used_addr(q) + 4 + 8 * slot, 8);
        let len = u32::from_le_bytes(elem[4..8].try_into().unwrap());
        Reply {
            len,
            bytes: mem.read(REPLY, len as usize),
        }
    }

    /// Publishes `requests` on queue `q` at once (each with `reply_len` writable bytes; at
    /// most 8, each at most 4 KiB) and kicks, without waiting for any reply.
    pub fn submit(&mut self, mem: &GuestMemory, q: usize, requests: &[Vec<u8>], reply_len: u32) {
        assert!(requests.len() <= 8 && reply_len as u64 <= 0x2_0000);
        let queue = &mut self.queues[q];
        for (i, request) in requests.iter().enumerate() {
            assert!(request.len() <= 0x1000);
            let (head, data, reply) = (
                2 * i as u16,
                DATA + i as u64 * 0x1000,
                REPLY + i as u64 * 0x2_0000,
            );
            let mut desc = Vec::with_capacity(32);
            desc.extend_from_slice(&data.to_le_bytes());
            desc.extend_from_slice(&(request.len() as u32).to_le_bytes());
            desc.extend_from_slice(&F_NEXT.to_le_bytes());
            desc.extend_from_slice(&(head + 1).to_le_bytes());
            desc.extend_from_slice(&reply.to_le_bytes());
            desc.extend_from_slice(&reply_len.to_le_bytes());
            desc.extend_from_slice(&F_WRITE.to_le_bytes());
            desc.extend_from_slice(&0u16.to_le_bytes());
            mem.write(data, request);
            mem.write(desc_addr(q) + 16 * u64::from(head), &desc);
            let slot = u64::from(queue.next_avail.wrapping_add(i as u16) % QUEUE_SIZE);
            mem.write(avail_addr(q) + 4 + 2 * slot, &head.to_le_bytes());
        }
        queue.next_avail = queue.next_avail.wrapping_add(requests.len() as u16);
        mem.write(avail_addr(q) + 2, &queue.next_avail.to_le_bytes());
        queue.kick.write(1).expect("kick");
    }

    /// Publishes one chain on queue `q` and kicks, without waiting: `readable` bytes (no
    /// descriptor when empty) then `writable` bytes (none when 0, at most 4 KiB), in
    /// descriptors `2 * slot` and `2 * slot + 1` (`slot` < 8) with buffers of their own per
    /// queue and slot. Returns the writable buffer's address. For devices whose queues carry
    /// one-way buffers (virtio-net's rx and tx); a slot is free again once its chain is used.
    pub fn post(
        &mut self,
        mem: &GuestMemory,
        q: usize,
        slot: u16,
        readable: &[u8],
        writable: u32,
    ) -> u64 {
        assert!(slot < 8 && q < 16 && readable.len() <= 0x1000 && writable <= 0x1000);
        let queue = &mut self.queues[q];
        let page = (q as u64 * 8 + u64::from(slot)) * 0x1000;
        let (data, reply, head) = (DATA + page, REPLY + page, 2 * slot);
        let mut descs = Vec::new();
        if !readable.is_empty() {
            mem.write(data, readable);
            descs.push((data, readable.len() as u32, 0));
        }
        if writable > 0 {
            mem.write(reply, &vec![0u8; writable as usize]);
            descs.push((reply, writable, F_WRITE));
        }
        assert!(!descs.is_empty(), "a chain needs a buffer");
        let last = descs.len() - 1;
        for (i, (addr, len, flags)) in descs.into_iter().enumerate() {
            let index = head + i as u16;
            let (flags, next) = if i < last {
                (flags | F_NEXT, index + 1)
            } else {
                (flags, 0)
            };
            let mut desc = Vec::with_capacity(16);
            desc.extend_from_slice(&addr.to_le_bytes());
            desc.extend_from_slice(&len.to_le_bytes());
            desc.extend_from_slice(&flags.to_le_bytes());
            desc.extend_from_slice(&next.to_le_bytes());
            mem.write(desc_addr(q) + 16 * u64::from(index), &desc);
        }
        let avail_slot = u64::from(queue.next_avail % QUEUE_SIZE);
        mem.write(avail_addr(q) + 4 + 2 * avail_slot, &head.to_le_bytes());
        queue.next_avail = queue.next_avail.wrapping_add(1);
        mem.write(avail_addr(q) + 2, &queue.next_avail.to_le_bytes());
        queue.kick.write(1).expect("kick");
        reply
    }

    /// The next element the device put in queue `q`'s used ring, as (chain head, length),
    /// waiting up to `timeout`; `None` if none came.
    pub fn next_used(
        &mut self,
        mem: &GuestMemory,
        q: usize,
        timeout: Duration,
    ) -> Option<(u16, u32)> {
        let queue = &mut self.queues[q];
        let start = Instant::now();
        while mem.read_u16(used_addr(q) + 2) == queue.used_seen {
            if start.elapsed() >= timeout {
                return None;
            }
            std::thread::sleep(Duration::from_micros(200));
        }
        let slot = u64::from(queue.used_seen % QUEUE_SIZE);
        queue.used_seen = queue.used_seen.wrapping_add(1);
        let elem = mem.read(used_addr(q) + 4 + 8 * slot, 8);
        let id = u32::from_le_bytes(elem[0..4].try_into().unwrap());
        let len = u32::from_le_bytes(elem[4..8].try_into().unwrap());
        Some((id as u16, len))
    }

    /// Kicks queue `q` (after a restart, so the device looks at what is already there).
    pub fn kick(&self, q: usize) {
        self.queues[q].kick.write(1).expect("kick");
    }

    /// The used ring's index of queue `q` as the device last wrote it; what was submitted is
    /// now considered seen.
    pub fn used_idx(&mut self, mem: &GuestMemory, q: usize) -> u16 {
        let idx = mem.read_u16(used_addr(q) + 2);
        self.queues[q].used_seen = idx;
        idx
    }

    /// GET_VRING_BASE of every queue (stops them), as before a snapshot.
    pub fn stop(&mut self) -> Vec<u16> {
        (0..self.queues.len())
            .map(|q| self.fe.get_vring_base(q).expect("GET_VRING_BASE") as u16)
            .collect()
    }

    /// SET_DEVICE_STATE_FD(SAVE) then the state read to EOF, then CHECK_DEVICE_STATE's
    /// outcome.
    pub fn save(&mut self) -> (Vec<u8>, Result<(), vhost::Error>) {
        let (r, w) = pipe();
        let reply = self
            .fe
            .set_device_state_fd(
                VhostTransferStateDirection::SAVE,
                VhostTransferStatePhase::STOPPED,
                w,
            )
            .expect("SET_DEVICE_STATE_FD(SAVE)");
        assert!(reply.is_none(), "the backend must use the frontend's pipe");
        let mut state = Vec::new();
        File::from(r)
            .read_to_end(&mut state)
            .expect("read the state");
        (state, self.fe.check_device_state())
    }

    /// SET_DEVICE_STATE_FD(LOAD) with `state`, then CHECK_DEVICE_STATE's outcome.
    pub fn load(&mut self, state: &[u8]) -> Result<(), vhost::Error> {
        let (r, w) = pipe();
        self.fe
            .set_device_state_fd(
                VhostTransferStateDirection::LOAD,
                VhostTransferStatePhase::STOPPED,
                r,
            )
            .expect("SET_DEVICE_STATE_FD(LOAD)");
        let mut w = File::from(w);
        w.write_all(state).expect("write the state");
        drop(w);
        self.fe.check_device_state()
    }
}

/// A pipe (read end, write end).
fn pipe() -> (OwnedFd, OwnedFd) {
    let mut fds = [0; 2];
    // SAFETY: pipe2 writes two new descriptors into `fds`; the result is checked.
    assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
    // SAFETY: both descriptors are new and owned by nothing else.
    unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) }
}

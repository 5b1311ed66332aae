//! The vhost-user device: feature and config answers for the frontend, and the queue loop
//! that turns each descriptor chain into one FUSE request for [`fuse_backend_rs`]'s server
//! (which decodes it and calls [`SharedFs`]) and returns the reply to the guest.
//!
//! Each queue has its own worker thread. A request the server cannot decode is logged and
//! returned with no reply bytes; nothing a guest sends ends a queue thread.
//!
//! Snapshots: the device offers VHOST_USER_PROTOCOL_F_DEVICE_STATE and hands over the inode
//! and handle tables ([`crate::fs::state`]). Every request taken from a ring, including those
//! running on the `--thread-pool-size` pool, holds the ring busy until its reply is in the
//! used ring, and GET_VRING_BASE waits for that (sm-vhost-user-common's [`Vring`]), so a
//! stopped ring has nothing in flight.

use std::fs::File;
use std::io;
use std::sync::Arc;

use fuse_backend_rs::api::server::Server;
use fuse_backend_rs::transport::{FsCacheReqHandler, Reader, VirtioFsWriter};
use sm_vhost_user_common::queue::{handle_queue_event, one_queue_per_thread, QueueState};
use sm_vhost_user_common::serve::ServedBackend;
use sm_vhost_user_common::state::StateTransfer;
use tracing::{debug, warn};
use vhost::vhost_user::message::{
    VhostTransferStateDirection, VhostTransferStatePhase, VhostUserProtocolFeatures,
    VhostUserShMemConfig,
};
use vhost::vhost_user::Backend;
use vhost_user_backend::{VhostUserBackend, VringT};
use virtio_bindings::virtio_config::VIRTIO_F_IN_ORDER;
use virtio_queue::DescriptorChain;
use vm_memory::{GuestAddressSpace, GuestMemoryMmap};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::event::{EventConsumer, EventNotifier};

use crate::config::{DeviceConfig, MAX_QUEUE_SIZE, NUM_QUEUES};
use crate::dax::DaxWindow;
use crate::fs::SharedFs;
use crate::pool::Pool;

/// Index of the high-priority queue (FORGET, INTERRUPT); always served inline.
const HIPRIO_QUEUE: usize = 0;

pub use sm_vhost_user_common::queue::{GuestMem, Vring};
/// A descriptor chain holding its own snapshot of guest memory.
type Chain = DescriptorChain<Arc<GuestMemoryMmap>>;

/// The virtio-fs device state for one frontend connection.
pub struct FsBackend {
    fs: Arc<SharedFs>,
    server: Arc<Server<Arc<SharedFs>>>,
    pool: Option<Pool>,
    config: DeviceConfig,
    queues: QueueState,
    dax: Option<DaxWindow>,
    transfer: StateTransfer,
}

impl FsBackend {
    /// A device serving `fs`; with `pool_size` > 0 the request queue's requests run on that
    /// many worker threads.
    pub fn new(fs: Arc<SharedFs>, config: DeviceConfig, pool_size: usize) -> io::Result<FsBackend> {
        let pool = match pool_size {
            0 => None,
            n => Some(Pool::new(n)?),
        };
        let dax = config.dax_window().map(DaxWindow::new);
        Ok(FsBackend {
            server: Arc::new(Server::new(fs.clone())),
            fs,
            pool,
            config,
            queues: QueueState::new(),
            dax,
            transfer: StateTransfer::new(),
        })
    }

    /// Runs every request in the available ring (or hands it to the pool) and notifies
    /// the guest once for those run here.
    fn process_available(&self, vring: &Vring, atomic: &GuestMem, queue: usize) -> io::Result<()> {
        // An owned snapshot of guest memory, so chains can move to worker threads.
        let mem = atomic.memory().into_inner();
        // `busy` keeps GET_VRING_BASE waiting until every chain taken here is returned; each
        // pool job holds a clone.
        let (chains, busy) = match vring.take_available(mem.clone()) {
            Ok(taken) => taken,
            Err(e) => {
                warn!("cannot read the available ring: {e}");
                return Ok(());
            }
        };
        if chains.is_empty() {
            return Ok(());
        }
        let pool = self.pool.as_ref().filter(|_| queue != HIPRIO_QUEUE);
        for chain in chains {
            let head = chain.head_index();
            match pool {
                Some(pool) => {
                    let (server, vring) = (self.server.clone(), vring.clone());
                    let dax = self.dax.clone();
                    let busy = busy.clone();
                    pool.submit(Box::new(move || {
                        let used = run_request(&server, chain, dax.as_ref());
                        complete(&vring, head, used);
                        if vring.needs_notification().unwrap_or(true) {
                            if let Err(e) = vring.signal_used_queue() {
                                warn!("cannot notify the guest: {e}");
                            }
                        }
                        drop(busy);
                    }));
                }
                None => {
                    let used = run_request(&self.server, chain, self.dax.as_ref());
                    complete(vring, head, used);
                }
            }
        }
        if pool.is_none() && vring.needs_notification().map_err(io::Error::other)? {
            vring.signal_used_queue()?;
        }
        Ok(())
    }
}

/// One descriptor chain through the FUSE server (with the DAX window's mapper, if the
/// frontend opened one); returns the bytes written for the guest.
fn run_request(server: &Server<Arc<SharedFs>>, chain: Chain, dax: Option<&DaxWindow>) -> u32 {
    let head = chain.head_index();
    let mem = chain.memory();
    let reader = Reader::from_descriptor_chain(mem, chain.clone());
    let writer = VirtioFsWriter::new(mem, chain.clone());
    let mut mapper = dax.and_then(DaxWindow::mapper);
    let mapper = mapper.as_mut().map(|m| m as &mut dyn FsCacheReqHandler);
    match (reader, writer) {
        (Ok(r), Ok(w)) => match server.handle_message(r, w.into(), mapper, None) {
            Ok(n) => n as u32,
            Err(e) => {
                debug!("request {head}: {e}");
                0
            }
        },
        (Err(e), _) | (_, Err(e)) => {
            warn!("request {head}: bad descriptor chain: {e}");
            0
        }
    }
}

/// Returns a chain to the guest.
fn complete(vring: &Vring, head: u16, used: u32) {
    if let Err(e) = vring.add_used(head, used) {
        warn!("cannot return descriptor {head} to the guest: {e}");
    }
}

impl ServedBackend for FsBackend {
    fn queue_state(&self) -> &QueueState {
        &self.queues
    }
}

impl VhostUserBackend for FsBackend {
    type Bitmap = ();
    type Vring = Vring;

    fn num_queues(&self) -> usize {
        NUM_QUEUES
    }

    fn max_queue_size(&self) -> usize {
        MAX_QUEUE_SIZE.into()
    }

    fn features(&self) -> u64 {
        // Without a pool every request completes in the order it was taken, which lets a
        // frontend replay a crashed backend's unfinished requests from the used index.
        let in_order = if self.pool.is_none() {
            1 << VIRTIO_F_IN_ORDER
        } else {
            0
        };
        self.config.features() | in_order
    }

    fn protocol_features(&self) -> VhostUserProtocolFeatures {
        // The config space only carries the tag: without one, frontends bring their own
        // (QEMU's vhost-user-fs always does, and warns about a CONFIG it does not use).
        let config = if self.config.has_tag() {
            VhostUserProtocolFeatures::CONFIG
        } else {
            VhostUserProtocolFeatures::empty()
        };
        // The DAX window is a shared memory region the frontend maps files into on
        // request, over the backend-request channel.
        let dax = if self.dax.is_some() {
            VhostUserProtocolFeatures::SHMEM | VhostUserProtocolFeatures::BACKEND_REQ
        } else {
            VhostUserProtocolFeatures::empty()
        };
        config
            | dax
            | VhostUserProtocolFeatures::MQ
            | VhostUserProtocolFeatures::REPLY_ACK
            | VhostUserProtocolFeatures::DEVICE_STATE
    }

    fn set_device_state_fd(
        &self,
        direction: VhostTransferStateDirection,
        phase: VhostTransferStatePhase,
        file: File,
    ) -> io::Result<Option<File>> {
        if self.dax.is_some() {
            // The guest's DAX mappings live in the frontend's window and cannot be rebuilt.
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "no snapshots with a DAX window (--dax-window-mib)",
            ));
        }
        let (fs, fs2) = (self.fs.clone(), self.fs.clone());
        let save = move || fs.save_state_bytes();
        let load = move |bytes: Vec<u8>| fs2.load_state_bytes(&bytes);
        self.transfer.start(direction, phase, file, save, load)
    }

    fn check_device_state(&self) -> io::Result<()> {
        self.transfer.check()
    }

    fn get_shmem_config(&self) -> io::Result<VhostUserShMemConfig> {
        match &self.dax {
            Some(dax) => Ok(dax.shmem_config()),
            None => Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "no DAX window (--dax-window-mib)",
            )),
        }
    }

    fn set_backend_req_fd(&self, backend: Backend) {
        if let Some(dax) = &self.dax {
            dax.set_channel(backend);
        }
    }

    fn set_event_idx(&self, enabled: bool) {
        self.queues.set_event_idx(enabled);
    }

    fn get_config(&self, offset: u32, size: u32) -> Vec<u8> {
        self.config.read(offset, size)
    }

    fn update_memory(&self, mem: GuestMem) -> io::Result<()> {
        self.queues.update_memory(mem)
    }

    fn queues_per_thread(&self) -> Vec<u64> {
        one_queue_per_thread(NUM_QUEUES)
    }

    fn exit_event(&self, _thread_index: usize) -> Option<(EventConsumer, EventNotifier)> {
        self.queues.exit_events().create()
    }

    fn handle_event(
        &self,
        device_event: u16,
        evset: EventSet,
        vrings: &[Vring],
        thread_id: usize,
    ) -> io::Result<()> {
        // The first event on a worker thread narrows its seccomp filter (in a sandbox).
        sm_sandbox::narrow_worker_thread().map_err(io::Error::other)?;
        handle_queue_event(device_event, evset, vrings, thread_id, |vring, queue| {
            self.queues
                .drain(vring, |mem| self.process_available(vring, mem, queue))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fs::FsConfig;
    use crate::sys::ProcFds;
    use std::os::fd::OwnedFd;
    use virtio_bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
    use virtio_queue::desc::{split::Descriptor, RawDescriptor};
    use virtio_queue::mock::MockSplitQueue;
    use vm_memory::{Bytes, GuestAddress, GuestMemoryAtomic};

    /// Thousands of random FUSE requests (valid headers, random opcodes, node IDs and
    /// bodies) through the real queue loop: every chain comes back, nothing panics, and
    /// nothing appears outside the shared directory.
    #[test]
    fn random_requests_neither_panic_nor_escape() {
        let dir = tempfile::tempdir().unwrap();
        let shared = dir.path().join("shared");
        std::fs::create_dir_all(shared.join("d")).unwrap();
        std::fs::write(shared.join("f"), b"data").unwrap();
        std::os::unix::fs::symlink("/etc", shared.join("l")).unwrap();
        let root: OwnedFd = std::fs::File::open(&shared).unwrap().into();
        let fs = SharedFs::new(
            root,
            ProcFds::open(c"/proc/self/fd").unwrap(),
            FsConfig::default(),
        )
        .unwrap();
        let backend = FsBackend::new(Arc::new(fs), DeviceConfig::new(None).unwrap(), 0).unwrap();
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let mut replied = 0;
        let names: [&[u8]; 6] = [b"f\0", b"d\0", b"l\0", b"..\0", b"x/y\0", b"new\0"];
        for i in 0..2000u32 {
            let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x20_0000)]).unwrap();
            let vq = MockSplitQueue::new(&mem, 16);
            let body_len = (next() % 300) as usize;
            let mut req = vec![0u8; 40 + body_len];
            let total = if i % 7 == 0 {
                next() as u32
            } else {
                req.len() as u32
            };
            req[0..4].copy_from_slice(&total.to_le_bytes());
            let opcode = if i == 0 { 26 } else { (next() % 52) as u32 }; // 26: INIT first
            req[4..8].copy_from_slice(&opcode.to_le_bytes());
            req[8..16].copy_from_slice(&u64::from(i).to_le_bytes());
            let node = [0, 1, 1, 2, 3, u64::MAX][(next() % 6) as usize];
            req[16..24].copy_from_slice(&node.to_le_bytes());
            for b in req[40..].iter_mut() {
                *b = next() as u8;
            }
            if i == 0 {
                req[40..44].copy_from_slice(&7u32.to_le_bytes()); // major
                req[44..48].copy_from_slice(&31u32.to_le_bytes()); // minor
            } else if body_len > 8 && next() % 2 == 0 {
                // Often a plausible name at the end, so name-taking opcodes get further.
                let name = names[(next() % names.len() as u64) as usize];
                let at = req.len() - name.len().min(body_len);
                req[at..].copy_from_slice(&name[..name.len().min(body_len)]);
            }
            mem.write_slice(&req, GuestAddress(0x10_0000)).unwrap();
            let descs: [RawDescriptor; 2] = [
                Descriptor::new(0x10_0000, req.len() as u32, VRING_DESC_F_NEXT as u16, 1).into(),
                Descriptor::new(0x11_0000, 4096, VRING_DESC_F_WRITE as u16, 0).into(),
            ];
            vq.add_desc_chains(&descs, 0).unwrap();
            let atomic = GuestMemoryAtomic::new(mem.clone());
            backend.update_memory(atomic.clone()).unwrap();
            let vring = Vring::new(atomic, 16).unwrap();
            vring
                .set_queue_info(vq.desc_table_addr().0, vq.avail_addr().0, vq.used_addr().0)
                .unwrap();
            vring.set_queue_size(16);
            vring.set_queue_ready(true);
            vring.set_enabled(true);
            backend
                .handle_event(1, EventSet::IN, &[vring.clone(), vring.clone()], 0)
                .unwrap();
            assert_eq!(
                vq.used().idx().load(),
                1,
                "request {i} (opcode {opcode}) not returned"
            );
            if vq.used().ring().ref_at(0).unwrap().load().len() > 0 {
                replied += 1;
            }
        }
        // Most requests were decoded and answered (an error reply is still a reply).
        assert!(
            replied > 1000,
            "only {replied} of 2000 requests got a reply"
        );
        let outside: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(outside.len(), 1, "something appeared outside: {outside:?}");
    }
}

//! The vhost-user device: feature and config answers for the frontend, and the queue loop
//! that pops descriptor chains, runs them through [`crate::request`], and signals the guest.
//!
//! Each queue gets its own worker thread (`queues_per_thread`), so queues never contend for a
//! lock. With VIRTIO_RING_F_EVENT_IDX the loop keeps draining until the ring stays empty
//! after notifications are re-enabled, so no kick is lost.
//!
//! Snapshots: the device offers VHOST_USER_PROTOCOL_F_DEVICE_STATE ([`crate::state`]).
//! A request taken from a ring is completed before GET_VRING_BASE answers (the common
//! [`Vring`] waits for it), and the image is flushed then, so a stopped ring has nothing
//! in flight and nothing unwritten.

use std::fs::File;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use sm_vhost_user_common::queue::{handle_queue_event, one_queue_per_thread, QueueState};
use sm_vhost_user_common::serve::ServedBackend;
use sm_vhost_user_common::state::StateTransfer;
use tracing::{trace, warn};
use vhost::vhost_user::message::{
    VhostTransferStateDirection, VhostTransferStatePhase, VhostUserProtocolFeatures,
};
use vhost_user_backend::{VhostUserBackend, VringT};
use vm_memory::GuestAddressSpace;
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::event::{EventConsumer, EventNotifier};

use crate::config::{DeviceConfig, MAX_QUEUE_SIZE};
use crate::image::Image;
use crate::request::{self, Segment};
use crate::state::BlkState;

pub use sm_vhost_user_common::queue::{GuestMem, Vring};

/// The virtio-blk device state for one frontend connection.
pub struct BlkBackend {
    image: Arc<Image>,
    config: DeviceConfig,
    queues: QueueState,
    acked_features: Arc<AtomicU64>,
    transfer: StateTransfer,
}

impl BlkBackend {
    /// A device serving `image` with `num_queues` queues.
    pub fn new(image: Arc<Image>, num_queues: u16) -> BlkBackend {
        let config = DeviceConfig {
            capacity_sectors: image.capacity() / crate::config::SECTOR_SIZE,
            read_only: image.read_only(),
            num_queues,
        };
        BlkBackend {
            image,
            config,
            queues: QueueState::new(),
            acked_features: Arc::new(AtomicU64::new(0)),
            transfer: StateTransfer::new(),
        }
    }

    /// Runs every request currently in the available ring and notifies the guest once.
    fn process_available(&self, vring: &Vring, atomic: &GuestMem) -> io::Result<()> {
        let mem = atomic.memory();
        // `_busy` keeps GET_VRING_BASE waiting until every chain taken here is returned.
        let (chains, _busy) = match vring.take_available(mem.clone()) {
            Ok(taken) => taken,
            Err(e) => {
                // A corrupt available index: leave the ring alone rather than guess.
                warn!("cannot read the available ring: {e}");
                return Ok(());
            }
        };
        if chains.is_empty() {
            return Ok(());
        }
        let taken = chains.len();
        for chain in chains {
            let head = chain.head_index();
            let segments = chain.map(|d| Segment {
                addr: d.addr(),
                len: d.len(),
                writable: d.is_write_only(),
            });
            let used = request::handle(&*mem, &self.image, segments);
            if let Err(e) = vring.add_used(head, used) {
                warn!("cannot return descriptor {head} to the guest: {e}");
            }
        }
        let notify = vring.needs_notification().map_err(io::Error::other)?;
        if notify {
            vring.signal_used_queue()?;
        }
        trace!(taken, notify, "requests completed");
        Ok(())
    }
}

impl ServedBackend for BlkBackend {
    fn queue_state(&self) -> &QueueState {
        &self.queues
    }
}

impl VhostUserBackend for BlkBackend {
    type Bitmap = ();
    type Vring = Vring;

    fn num_queues(&self) -> usize {
        self.config.num_queues.into()
    }

    fn max_queue_size(&self) -> usize {
        MAX_QUEUE_SIZE.into()
    }

    fn features(&self) -> u64 {
        self.config.features()
    }

    fn protocol_features(&self) -> VhostUserProtocolFeatures {
        VhostUserProtocolFeatures::CONFIG
            | VhostUserProtocolFeatures::MQ
            | VhostUserProtocolFeatures::REPLY_ACK
            | VhostUserProtocolFeatures::DEVICE_STATE
    }

    fn acked_features(&self, features: u64) {
        self.acked_features.store(features, Ordering::Relaxed);
    }

    fn set_device_state_fd(
        &self,
        direction: VhostTransferStateDirection,
        phase: VhostTransferStatePhase,
        file: File,
    ) -> io::Result<Option<File>> {
        let (image, config, acked) = (self.image.clone(), self.config, self.acked_features.clone());
        let save = move || BlkState::save(&image, &config, acked.load(Ordering::Relaxed));
        let (image, config) = (self.image.clone(), self.config);
        let load = move |bytes: Vec<u8>| BlkState::load(&bytes, &image, &config).map(|_| ());
        self.transfer.start(direction, phase, file, save, load)
    }

    fn check_device_state(&self) -> io::Result<()> {
        self.transfer.check()
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
        one_queue_per_thread(self.config.num_queues.into())
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
        handle_queue_event(device_event, evset, vrings, thread_id, |vring, _| {
            vring.set_stop_hook(|| {
                let image = self.image.clone();
                Arc::new(move || {
                    if let Err(e) = image.flush() {
                        warn!("cannot flush the image as the ring stops: {e}");
                    }
                })
            });
            self.queues
                .drain(vring, |mem| self.process_available(vring, mem))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::ImageOptions;
    use virtio_bindings::virtio_blk::{VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT};
    use virtio_bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
    use virtio_queue::desc::{split::Descriptor, RawDescriptor};
    use virtio_queue::mock::MockSplitQueue;
    use vm_memory::{Bytes, GuestAddress, GuestMemoryAtomic, GuestMemoryMmap};

    const NEXT: u16 = VRING_DESC_F_NEXT as u16;
    const WRITE: u16 = VRING_DESC_F_WRITE as u16;

    fn desc(addr: u64, len: u32, flags: u16, next: u16) -> RawDescriptor {
        Descriptor::new(addr, len, flags, next).into()
    }

    fn header(kind: u32, sector: u64) -> [u8; 16] {
        let mut h = [0u8; 16];
        h[0..4].copy_from_slice(&kind.to_le_bytes());
        h[8..16].copy_from_slice(&sector.to_le_bytes());
        h
    }

    /// Three chains through the real queue machinery: a write, a read of it back, and a
    /// chain without a status byte, which must still be returned (with length 0).
    #[test]
    fn queue_loop_completes_every_chain() {
        for event_idx in [false, true] {
            let dir = tempfile::tempdir().unwrap();
            let image = Image::open(&ImageOptions {
                path: dir.path().join("v.img"),
                size_mib: None,
                default_size_mib: 1,
                read_only: false,
            })
            .unwrap();
            let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x20_0000)]).unwrap();
            let vq = MockSplitQueue::new(&mem, 16);
            mem.write_slice(&header(VIRTIO_BLK_T_OUT, 1), GuestAddress(0x10_0000))
                .unwrap();
            mem.write_slice(&header(VIRTIO_BLK_T_IN, 1), GuestAddress(0x10_0010))
                .unwrap();
            mem.write_slice(&[0x42; 512], GuestAddress(0x11_0000))
                .unwrap();
            mem.write_slice(&[0xff; 2], GuestAddress(0x12_0000))
                .unwrap();
            vq.add_desc_chains(
                &[
                    desc(0x10_0000, 16, NEXT, 1),
                    desc(0x11_0000, 512, NEXT, 2),
                    desc(0x12_0000, 1, WRITE, 0),
                    desc(0x10_0010, 16, NEXT, 4),
                    desc(0x11_1000, 512, NEXT | WRITE, 5),
                    desc(0x12_0001, 1, WRITE, 0),
                    desc(0x10_0020, 16, 0, 0),
                ],
                0,
            )
            .unwrap();

            let atomic = GuestMemoryAtomic::new(mem.clone());
            let backend = BlkBackend::new(Arc::new(image), 1);
            backend.update_memory(atomic.clone()).unwrap();
            backend.set_event_idx(event_idx);
            let vring = Vring::new(atomic, 16).unwrap();
            vring
                .set_queue_info(vq.desc_table_addr().0, vq.avail_addr().0, vq.used_addr().0)
                .unwrap();
            vring.set_queue_size(16);
            vring.set_queue_event_idx(event_idx);
            vring.set_queue_ready(true);
            vring.set_enabled(true);
            backend
                .handle_event(0, EventSet::IN, std::slice::from_ref(&vring), 0)
                .unwrap();

            assert_eq!(vq.used().idx().load(), 3);
            let used: Vec<(u32, u32)> = (0..3)
                .map(|i| {
                    let e = vq.used().ring().ref_at(i).unwrap().load();
                    (e.id(), e.len())
                })
                .collect();
            assert_eq!(used, [(0, 1), (3, 513), (6, 0)]);
            let mut status = [0xffu8; 2];
            mem.read_slice(&mut status, GuestAddress(0x12_0000))
                .unwrap();
            assert_eq!(status, [0, 0]);
            let mut back = [0u8; 512];
            mem.read_slice(&mut back, GuestAddress(0x11_1000)).unwrap();
            assert_eq!(back, [0x42; 512]);
        }
    }
}

//! The vhost-user device: feature and config answers for the frontend, and the queue loop
//! that pops descriptor chains, runs them through [`crate::request`], and signals the guest.
//!
//! Each queue gets its own worker thread (`queues_per_thread`), so queues never contend for a
//! lock. With VIRTIO_RING_F_EVENT_IDX the loop keeps draining until the ring stays empty
//! after notifications are re-enabled, so no kick is lost.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use tracing::{debug, warn};
use vhost::vhost_user::message::VhostUserProtocolFeatures;
use vhost_user_backend::{VhostUserBackend, VringRwLock, VringT};
use virtio_queue::QueueOwnedT;
use vm_memory::{GuestAddressSpace, GuestMemoryAtomic, GuestMemoryMmap};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::event::{
    new_event_consumer_and_notifier, EventConsumer, EventFlag, EventNotifier,
};

use crate::config::{DeviceConfig, MAX_QUEUE_SIZE};
use crate::image::Image;
use crate::request::{self, Segment};

/// Guest memory as the backend sees it.
pub type GuestMem = GuestMemoryAtomic<GuestMemoryMmap>;
/// One virtqueue with its kick and call eventfds.
pub type Vring = VringRwLock<GuestMem>;

/// Lowest descriptor number for the queue threads' exit eventfds. vhost-user-backend 0.22
/// turns each into a raw fd it never closes (one leak per queue per connection); keeping them
/// above every other descriptor this process opens lets [`BlkBackend::close_exit_events`]
/// close them without any risk of hitting a number reused for something else.
const EXIT_FD_BASE: RawFd = 512;

/// The virtio-blk device state for one frontend connection.
pub struct BlkBackend {
    image: Arc<Image>,
    config: DeviceConfig,
    event_idx: AtomicBool,
    mem: RwLock<Option<GuestMem>>,
    exit_fds: Mutex<Vec<RawFd>>,
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
            event_idx: AtomicBool::new(false),
            mem: RwLock::new(None),
            exit_fds: Mutex::new(Vec::new()),
        }
    }

    /// Closes the exit eventfds the library leaked; call once its daemon is dropped (every
    /// queue thread joined), before the next connection.
    pub fn close_exit_events(&self) {
        let fds = std::mem::take(&mut *self.exit_fds.lock().unwrap_or_else(|e| e.into_inner()));
        for fd in fds {
            // SAFETY: `fd` was duplicated above EXIT_FD_BASE by `exit_event` for a daemon
            // that is gone; nothing else uses it, and no other descriptor can have its number.
            unsafe { libc::close(fd) };
        }
    }

    /// Drains one queue, re-checking after re-enabling notifications under EVENT_IDX.
    fn process_queue(&self, vring: &Vring) -> io::Result<()> {
        let Some(atomic) = self.mem.read().map_err(|_| poisoned())?.clone() else {
            return Ok(()); // No memory table yet: nothing can be in the ring.
        };
        let event_idx = self.event_idx.load(Ordering::Relaxed);
        loop {
            if event_idx {
                vring.disable_notification().map_err(queue_err)?;
            }
            self.process_available(vring, &atomic)?;
            if !event_idx || !vring.enable_notification().map_err(queue_err)? {
                return Ok(());
            }
        }
    }

    /// Runs every request currently in the available ring and notifies the guest once.
    fn process_available(&self, vring: &Vring, atomic: &GuestMem) -> io::Result<()> {
        let mem = atomic.memory();
        let chains: Vec<_> = match vring.get_mut().get_queue_mut().iter(mem.clone()) {
            Ok(iter) => iter.collect(),
            Err(e) => {
                // A corrupt available index: leave the ring alone rather than guess.
                warn!("cannot read the available ring: {e}");
                return Ok(());
            }
        };
        if chains.is_empty() {
            return Ok(());
        }
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
        if vring.needs_notification().map_err(queue_err)? {
            vring.signal_used_queue()?;
        }
        Ok(())
    }
}

fn poisoned() -> io::Error {
    io::Error::other("guest memory lock poisoned")
}

fn queue_err(e: virtio_queue::Error) -> io::Error {
    io::Error::other(e)
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
    }

    fn set_event_idx(&self, enabled: bool) {
        self.event_idx.store(enabled, Ordering::Relaxed);
    }

    fn get_config(&self, offset: u32, size: u32) -> Vec<u8> {
        self.config.read(offset, size)
    }

    fn update_memory(&self, mem: GuestMem) -> io::Result<()> {
        *self.mem.write().map_err(|_| poisoned())? = Some(mem);
        Ok(())
    }

    fn queues_per_thread(&self) -> Vec<u64> {
        (0..self.config.num_queues).map(|q| 1u64 << q).collect()
    }

    fn exit_event(&self, _thread_index: usize) -> Option<(EventConsumer, EventNotifier)> {
        // Without an exit event the library cannot stop (or join) the worker threads.
        let (consumer, notifier) =
            new_event_consumer_and_notifier(EventFlag::NONBLOCK | EventFlag::CLOEXEC).ok()?;
        // SAFETY: F_DUPFD_CLOEXEC duplicates a descriptor we own; no memory is involved.
        let high =
            unsafe { libc::fcntl(consumer.as_raw_fd(), libc::F_DUPFD_CLOEXEC, EXIT_FD_BASE) };
        if high < 0 {
            return Some((consumer, notifier)); // Over the fd limit: leak rather than fail.
        }
        self.exit_fds
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(high);
        // SAFETY: `high` is a new descriptor that nothing else owns.
        Some((unsafe { EventConsumer::from_raw_fd(high) }, notifier))
    }

    fn handle_event(
        &self,
        device_event: u16,
        evset: EventSet,
        vrings: &[Vring],
        thread_id: usize,
    ) -> io::Result<()> {
        if evset != EventSet::IN {
            debug!("queue thread {thread_id}: ignoring event set {evset:?}");
            return Ok(());
        }
        // Each thread owns exactly one queue, so the event is that queue's kick.
        // Errors are logged, never returned: an error would end this queue's thread.
        match vrings.get(usize::from(device_event)) {
            Some(vring) => {
                if let Err(e) = self.process_queue(vring) {
                    warn!("queue thread {thread_id}: {e}");
                }
            }
            None => debug!("queue thread {thread_id}: unknown event {device_event}"),
        }
        Ok(())
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
    use vm_memory::{Bytes, GuestAddress};

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

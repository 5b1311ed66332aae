//! The vhost-user device: two queues (0 = rx, 1 = tx) served by one worker thread, whose
//! epoll also watches passt's socket (edge-triggered, event [`PASST_EVENT`]).
//!
//! TX: every chain the guest posts is gathered into one frame (after the 12-byte
//! `virtio_net_hdr_v1`, capped at 64 KiB), judged by [`crate::policy::check`]; an allowed
//! frame goes to passt (a blocking write), a refused one's answer waits for an rx buffer;
//! the chain is completed with length 0, in the order it was taken.
//!
//! RX: frames from passt (and refusal answers, first) each fill one rx chain: a zeroed
//! header with `num_buffers = 1`, then the frame. passt's socket is read only while no frame
//! is waiting, so a guest that posts no rx buffers leaves passt's frames in the socket and
//! the thread asleep (edge-triggered: only new bytes wake it) until its next rx kick. A
//! frame bigger than the chain it would go in is dropped (the chain stays for the next).
//! Both queues complete in order (VIRTIO_F_IN_ORDER), so sm-vmm can replay after a restart.

use std::collections::VecDeque;
use std::fs::File;
use std::io;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use sm_vhost_user_common::notify;
use sm_vhost_user_common::queue::QueueState;
use sm_vhost_user_common::serve::ServedBackend;
use sm_vhost_user_common::state::StateTransfer;
use tracing::{debug, trace, warn};
use vhost::vhost_user::message::{
    VhostTransferStateDirection, VhostTransferStatePhase, VhostUserProtocolFeatures,
    VhostUserVirtioFeatures,
};
use vhost_user_backend::{VhostUserBackend, VringT};
use virtio_bindings::virtio_config::{VIRTIO_F_IN_ORDER, VIRTIO_F_VERSION_1};
use virtio_bindings::virtio_net::{VIRTIO_NET_F_MAC, VIRTIO_NET_F_MTU, VIRTIO_NET_F_STATUS};
use virtio_bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX;
use virtio_queue::{QueueOwnedT, QueueT};
use vm_memory::{Bytes, GuestAddressSpace};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::event::{EventConsumer, EventNotifier};

use crate::passt::{self, Deframer, PasstError, MAX_FRAME};
use crate::policy::{self, Policy, Verdict};
use crate::state::NetState;

pub use sm_vhost_user_common::queue::{GuestMem, Vring};

/// The receive queue's index.
pub const RX_QUEUE: usize = 0;
/// The transmit queue's index.
pub const TX_QUEUE: usize = 1;
/// Number of queues.
pub const NUM_QUEUES: usize = 2;
/// Largest queue size offered.
pub const MAX_QUEUE_SIZE: u16 = 256;
/// The worker's event for passt's socket (beyond the queues and the exit event).
pub const PASST_EVENT: u16 = NUM_QUEUES as u16 + 1;
/// Size of `virtio_net_hdr_v1`, which starts every buffer.
pub const VNET_HDR_LEN: usize = 12;
/// Refusal answers kept while the guest posts no rx buffer; more are dropped.
const MAX_PENDING: usize = 256;

/// The virtio features offered.
pub fn features() -> u64 {
    [
        VIRTIO_F_VERSION_1,
        VIRTIO_NET_F_MAC,
        VIRTIO_NET_F_MTU,
        VIRTIO_NET_F_STATUS,
        VIRTIO_RING_F_EVENT_IDX,
        VIRTIO_F_IN_ORDER,
    ]
    .iter()
    .fold(VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits(), |f, b| {
        f | 1 << b
    })
}

/// What outlives a frontend connection: passt's socket with the frames read from it and not
/// yet given to the guest, and the policy.
pub struct Link {
    stream: UnixStream,
    policy: Policy,
    rx: Mutex<RxFrames>,
}

struct RxFrames {
    deframer: Deframer,
    pending: VecDeque<Vec<u8>>,
}

impl Link {
    /// The link over passt's `stream`, judging frames with `policy`.
    pub fn new(stream: UnixStream, policy: Policy) -> Link {
        Link {
            stream,
            policy,
            rx: Mutex::new(RxFrames {
                deframer: Deframer::new(),
                pending: VecDeque::new(),
            }),
        }
    }

    /// passt's socket.
    pub fn stream(&self) -> &UnixStream {
        &self.stream
    }

    fn frames(&self) -> std::sync::MutexGuard<'_, RxFrames> {
        self.rx.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The next frame for the guest: a waiting one, else whatever passt has sent.
    fn next_frame(&self) -> Option<Vec<u8>> {
        let mut rx = self.frames();
        if rx.pending.is_empty() {
            let RxFrames { deframer, pending } = &mut *rx;
            match deframer.read_from(&self.stream) {
                Ok(frames) => pending.extend(frames),
                Err(e) => passt::gone(&e),
            }
        }
        rx.pending.pop_front()
    }

    fn put_back(&self, frame: Vec<u8>) {
        self.frames().pending.push_front(frame);
    }

    fn queue_answer(&self, frame: Vec<u8>) {
        let mut rx = self.frames();
        if rx.pending.len() < MAX_PENDING {
            rx.pending.push_back(frame);
        } else {
            debug!("no rx buffers: refusal answer dropped");
        }
    }
}

/// What became of one frame offered to the rx queue.
enum Delivery {
    Done,
    NoBuffer,
    Dropped,
}

/// The virtio-net device state for one frontend connection.
pub struct NetBackend {
    link: Arc<Link>,
    queues: QueueState,
    mem: RwLock<Option<GuestMem>>,
    event_idx: AtomicBool,
    acked_features: Arc<AtomicU64>,
    transfer: StateTransfer,
}

impl NetBackend {
    /// A device on `link`.
    pub fn new(link: Arc<Link>) -> NetBackend {
        NetBackend {
            link,
            queues: QueueState::new(),
            mem: RwLock::new(None),
            event_idx: AtomicBool::new(false),
            acked_features: Arc::new(AtomicU64::new(0)),
            transfer: StateTransfer::new(),
        }
    }

    /// Takes every tx chain, judges and forwards its frame, completes it with length 0.
    fn process_tx(&self, vring: &Vring, atomic: &GuestMem) -> io::Result<()> {
        let mem = atomic.memory();
        let (chains, _busy) = match vring.take_available(mem.clone()) {
            Ok(taken) => taken,
            Err(e) => {
                warn!("cannot read the tx ring: {e}");
                return Ok(());
            }
        };
        if chains.is_empty() {
            return Ok(());
        }
        for chain in chains {
            let head = chain.head_index();
            match gather(&*mem, chain) {
                Ok(frame) => self.transmit(&frame),
                Err(why) => debug!("tx chain {head} dropped: {why}"),
            }
            if let Err(e) = vring.add_used(head, 0) {
                warn!("cannot return tx descriptor {head} to the guest: {e}");
            }
        }
        if vring.needs_notification().map_err(io::Error::other)? {
            vring.signal_used_queue()?;
        }
        Ok(())
    }

    fn transmit(&self, frame: &[u8]) {
        match policy::check(&self.link.policy, frame) {
            Verdict::Allow => {
                if let Err(e) = passt::write_frame(&self.link.stream, frame) {
                    passt::gone(&PasstError::Io(e));
                }
            }
            Verdict::Deny(answer) => {
                trace!("frame refused");
                if let Some(a) = answer {
                    self.link.queue_answer(a);
                }
            }
            Verdict::Drop(why) => debug!("tx frame dropped: {why}"),
        }
    }

    /// Gives the guest every frame there is while it has rx buffers.
    fn process_rx(&self, vring: &Vring) -> io::Result<()> {
        {
            let state = vring.get_ref();
            if !state.is_enabled() || !state.get_queue().ready() {
                return Ok(());
            }
        }
        let Some(atomic) = self.mem.read().unwrap_or_else(|e| e.into_inner()).clone() else {
            return Ok(());
        };
        let mem = atomic.memory();
        let mut delivered = 0usize;
        let mut rechecked = false;
        while let Some(frame) = self.link.next_frame() {
            match deliver(vring, &mem, &frame) {
                Delivery::Done => delivered += 1,
                Delivery::Dropped => {}
                Delivery::NoBuffer => {
                    self.link.put_back(frame);
                    // Ask for a kick when buffers come; take them if some came meanwhile.
                    if !rechecked && vring.enable_notification().map_err(io::Error::other)? {
                        rechecked = true;
                        continue;
                    }
                    break;
                }
            }
        }
        if delivered > 0 && vring.needs_notification().map_err(io::Error::other)? {
            vring.signal_used_queue()?;
        }
        trace!(delivered, "rx");
        Ok(())
    }
}

/// The frame of one tx chain: its readable bytes after the virtio-net header.
fn gather<M: vm_memory::GuestMemory>(
    mem: &M,
    chain: virtio_queue::DescriptorChain<impl std::ops::Deref<Target = M>>,
) -> Result<Vec<u8>, &'static str> {
    let mut bytes = Vec::new();
    for d in chain {
        if d.is_write_only() {
            continue;
        }
        let len = d.len() as usize;
        if bytes.len() + len > VNET_HDR_LEN + MAX_FRAME {
            return Err("frame too big");
        }
        let at = bytes.len();
        bytes.resize(at + len, 0);
        mem.read_slice(&mut bytes[at..], d.addr())
            .map_err(|_| "descriptor outside guest memory")?;
    }
    if bytes.len() < VNET_HDR_LEN {
        return Err("no virtio-net header");
    }
    bytes.drain(..VNET_HDR_LEN);
    Ok(bytes)
}

/// Puts `frame` in the next rx chain and completes it.
fn deliver<M>(vring: &Vring, mem: &M, frame: &[u8]) -> Delivery
where
    M: Clone + std::ops::Deref,
    M::Target: vm_memory::GuestMemory + Sized,
{
    let mut state = vring.get_mut();
    let queue = state.get_queue_mut();
    let Some(chain) = queue.pop_descriptor_chain(mem.clone()) else {
        return Delivery::NoBuffer;
    };
    let head = chain.head_index();
    let buffers: Vec<_> = chain
        .filter(|d| d.is_write_only())
        .map(|d| (d.addr(), d.len() as usize))
        .collect();
    let mut data = vec![0u8; VNET_HDR_LEN];
    data[10] = 1; // num_buffers
    data.extend_from_slice(frame);
    if buffers.iter().map(|b| b.1).sum::<usize>() < data.len() {
        debug!(
            "rx frame of {} bytes dropped: larger than the guest's buffer",
            frame.len()
        );
        queue.go_to_previous_position();
        return Delivery::Dropped;
    }
    let mut written = 0;
    for (addr, len) in buffers {
        let n = len.min(data.len() - written);
        if n == 0 {
            break;
        }
        if mem.write_slice(&data[written..written + n], addr).is_err() {
            debug!("rx chain {head} outside guest memory: frame dropped");
            written = 0;
            break;
        }
        written += n;
    }
    if let Err(e) = queue.add_used(&**mem, head, written as u32) {
        warn!("cannot return rx descriptor {head} to the guest: {e}");
    }
    if written == 0 {
        Delivery::Dropped
    } else {
        Delivery::Done
    }
}

impl ServedBackend for NetBackend {
    fn queue_state(&self) -> &QueueState {
        &self.queues
    }

    /// passt's socket, edge-triggered: [`NetBackend::process_rx`] reads it to `EAGAIN`.
    fn own_listeners(&self) -> Vec<(std::os::fd::RawFd, EventSet, u64)> {
        use std::os::fd::AsRawFd;
        vec![(
            self.link.stream().as_raw_fd(),
            EventSet::IN | EventSet::EDGE_TRIGGERED,
            PASST_EVENT.into(),
        )]
    }
}

impl VhostUserBackend for NetBackend {
    type Bitmap = ();
    type Vring = Vring;

    fn num_queues(&self) -> usize {
        NUM_QUEUES
    }

    fn max_queue_size(&self) -> usize {
        MAX_QUEUE_SIZE.into()
    }

    fn features(&self) -> u64 {
        features()
    }

    fn protocol_features(&self) -> VhostUserProtocolFeatures {
        // The frontend owns the MAC and the rest of the config space: no CONFIG.
        VhostUserProtocolFeatures::MQ
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
        let acked = self.acked_features.clone();
        let save = move || NetState::save(acked.load(Ordering::Relaxed));
        let load = |bytes: Vec<u8>| NetState::load(&bytes, features()).map(|_| ());
        self.transfer.start(direction, phase, file, save, load)
    }

    fn check_device_state(&self) -> io::Result<()> {
        self.transfer.check()
    }

    fn set_event_idx(&self, enabled: bool) {
        self.event_idx.store(enabled, Ordering::Relaxed);
        self.queues.set_event_idx(enabled);
    }

    fn update_memory(&self, mem: GuestMem) -> io::Result<()> {
        *self.mem.write().unwrap_or_else(|e| e.into_inner()) = Some(mem.clone());
        self.queues.update_memory(mem)
    }

    fn queues_per_thread(&self) -> Vec<u64> {
        // One thread for both queues and passt's socket: a refusal goes from tx to rx
        // without crossing threads, and nothing contends for the link.
        vec![(1 << NUM_QUEUES) - 1]
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
        if device_event == notify::WATCHDOG_EVENT {
            notify::watchdog_answer(thread_id);
            return Ok(());
        }
        let (Some(rx), Some(tx)) = (vrings.get(RX_QUEUE), vrings.get(TX_QUEUE)) else {
            return Ok(());
        };
        let outcome = match usize::from(device_event) {
            RX_QUEUE => self.process_rx(rx),
            TX_QUEUE => self
                .queues
                .drain(tx, |mem| self.process_tx(tx, mem))
                .and_then(|()| self.process_rx(rx)),
            _ if device_event == PASST_EVENT => {
                if evset.intersects(EventSet::ERROR) {
                    passt::gone(&PasstError::Closed);
                }
                self.process_rx(rx)
            }
            _ => {
                debug!("unknown event {device_event}");
                Ok(())
            }
        };
        // An error here would end the queue thread: log it instead.
        if let Err(e) = outcome {
            warn!("queue thread {thread_id}: {e}");
        }
        Ok(())
    }
}

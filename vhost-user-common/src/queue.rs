//! Device glue shared by the backends' queue loops: the guest memory and vring types, the
//! per-connection queue state with its EVENT_IDX drain loop, the queue event dispatch, and
//! the queue threads' exit eventfds.

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, RwLock};
use std::time::Duration;

use tracing::{debug, warn};

use vhost_user_backend::{VringRwLock, VringStateGuard, VringStateMutGuard, VringT};
use virtio_queue::{DescriptorChain, Error as VirtQueError, QueueOwnedT};
use vm_memory::{GuestMemoryAtomic, GuestMemoryMmap};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::event::{
    new_event_consumer_and_notifier, EventConsumer, EventFlag, EventNotifier,
};

/// Guest memory as the backend sees it.
pub type GuestMem = GuestMemoryAtomic<GuestMemoryMmap>;

/// How long GET_VRING_BASE waits for requests still running before it answers anyway.
const STOP_WAIT: Duration = Duration::from_secs(30);

/// A hook run when a ring stops (GET_VRING_BASE), after its last request completed.
pub type StopHook = Arc<dyn Fn() + Send + Sync>;

/// Requests taken from one ring and not yet returned to the guest.
#[derive(Default)]
struct InFlight {
    count: Mutex<usize>,
    idle: Condvar,
    on_stop: Mutex<Option<StopHook>>,
}

/// One virtqueue with its kick and call eventfds: vhost-user-backend's [`VringRwLock`] plus a
/// count of the requests taken from it and not yet completed.
///
/// vhost-user-backend 0.22 answers GET_VRING_BASE with the ring's next available index
/// without waiting for the device: a request already taken from the ring but still running
/// (on a queue thread or a worker pool) would be neither in the saved index nor in the used
/// ring. Here [`VringT::queue_next_avail`] (which only GET_VRING_BASE calls, after marking
/// the queue not ready) first waits until every request taken with
/// [`Vring::take_available`] is done, then runs the stop hook (blk: fsync the image).
#[derive(Clone)]
pub struct Vring {
    inner: VringRwLock<GuestMem>,
    inflight: Arc<InFlight>,
}

/// Keeps its ring busy (GET_VRING_BASE waits) until the last clone is dropped; hand a clone
/// to every worker that completes a request taken from the ring.
pub struct Busy {
    inflight: Arc<InFlight>,
}

impl Clone for Busy {
    fn clone(&self) -> Busy {
        Busy::new(self.inflight.clone())
    }
}

impl Busy {
    fn new(inflight: Arc<InFlight>) -> Busy {
        *inflight.count.lock().unwrap_or_else(|e| e.into_inner()) += 1;
        Busy { inflight }
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        let mut count = self
            .inflight
            .count
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        *count -= 1;
        if *count == 0 {
            self.inflight.idle.notify_all();
        }
    }
}

impl Vring {
    /// Takes every chain in the available ring, with a [`Busy`] token that must live until
    /// each of them is returned to the guest. Once the ring is stopped nothing more is taken.
    pub fn take_available<M>(&self, mem: M) -> Result<(Vec<DescriptorChain<M>>, Busy), VirtQueError>
    where
        M: Clone + std::ops::Deref,
        M::Target: vm_memory::GuestMemory,
    {
        let mut state = self.inner.get_mut();
        // Counted under the ring's lock: GET_VRING_BASE marks the queue not ready under the
        // same lock, so a chain is either counted here or never taken.
        let busy = Busy::new(self.inflight.clone());
        let chains = state.get_queue_mut().iter(mem)?.collect();
        Ok((chains, busy))
    }

    /// Sets the hook run each time the ring stops, once its requests are done; `make` is
    /// only called when the ring has no hook yet (later calls keep the first hook).
    pub fn set_stop_hook(&self, make: impl FnOnce() -> StopHook) {
        let mut slot = self
            .inflight
            .on_stop
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if slot.is_none() {
            *slot = Some(make());
        }
    }

    /// Waits (at most [`STOP_WAIT`]) until no request taken from this ring is running.
    fn wait_idle(&self) {
        let count = self
            .inflight
            .count
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let (count, timeout) = self
            .inflight
            .idle
            .wait_timeout_while(count, STOP_WAIT, |c| *c > 0)
            .unwrap_or_else(|e| e.into_inner());
        if timeout.timed_out() {
            warn!("ring stopped with {} requests still running", *count);
        }
    }
}

impl<'a> VringStateGuard<'a, GuestMem> for Vring {
    type G = <VringRwLock<GuestMem> as VringStateGuard<'a, GuestMem>>::G;
}

impl<'a> VringStateMutGuard<'a, GuestMem> for Vring {
    type G = <VringRwLock<GuestMem> as VringStateMutGuard<'a, GuestMem>>::G;
}

impl VringT<GuestMem> for Vring {
    fn new(mem: GuestMem, max_queue_size: u16) -> Result<Self, VirtQueError> {
        Ok(Vring {
            inner: VringRwLock::new(mem, max_queue_size)?,
            inflight: Arc::new(InFlight::default()),
        })
    }

    fn get_ref(&self) -> <Self as VringStateGuard<'_, GuestMem>>::G {
        self.inner.get_ref()
    }

    fn get_mut(&self) -> <Self as VringStateMutGuard<'_, GuestMem>>::G {
        self.inner.get_mut()
    }

    fn add_used(&self, desc_index: u16, len: u32) -> Result<(), VirtQueError> {
        self.inner.add_used(desc_index, len)
    }

    fn signal_used_queue(&self) -> io::Result<()> {
        self.inner.signal_used_queue()
    }

    fn enable_notification(&self) -> Result<bool, VirtQueError> {
        self.inner.enable_notification()
    }

    fn disable_notification(&self) -> Result<(), VirtQueError> {
        self.inner.disable_notification()
    }

    fn needs_notification(&self) -> Result<bool, VirtQueError> {
        self.inner.needs_notification()
    }

    fn set_enabled(&self, enabled: bool) {
        self.inner.set_enabled(enabled)
    }

    fn set_queue_info(
        &self,
        desc_table: u64,
        avail_ring: u64,
        used_ring: u64,
    ) -> Result<(), VirtQueError> {
        self.inner.set_queue_info(desc_table, avail_ring, used_ring)
    }

    /// GET_VRING_BASE's answer: waits for the requests still running, runs the stop hook,
    /// then reads the index.
    fn queue_next_avail(&self) -> u16 {
        self.wait_idle();
        let hook = self
            .inflight
            .on_stop
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        if let Some(hook) = hook {
            hook();
        }
        self.inner.queue_next_avail()
    }

    fn set_queue_next_avail(&self, base: u16) {
        self.inner.set_queue_next_avail(base)
    }

    fn set_queue_next_used(&self, idx: u16) {
        self.inner.set_queue_next_used(idx)
    }

    fn queue_used_idx(&self) -> Result<u16, VirtQueError> {
        self.inner.queue_used_idx()
    }

    fn set_queue_size(&self, num: u16) {
        self.inner.set_queue_size(num)
    }

    fn set_queue_event_idx(&self, enabled: bool) {
        self.inner.set_queue_event_idx(enabled)
    }

    fn set_queue_ready(&self, ready: bool) {
        self.inner.set_queue_ready(ready)
    }

    fn set_kick(&self, file: Option<File>) {
        self.inner.set_kick(file)
    }

    fn read_kick(&self) -> io::Result<bool> {
        self.inner.read_kick()
    }

    fn set_call(&self, file: Option<File>) {
        self.inner.set_call(file)
    }

    fn set_err(&self, file: Option<File>) {
        self.inner.set_err(file)
    }
}

/// Lowest descriptor number for the queue threads' exit eventfds. vhost-user-backend 0.22
/// turns each into a raw fd it never closes (one leak per queue per connection); keeping them
/// above every other descriptor this process opens lets [`ExitEvents::close_all`] close them
/// without any risk of hitting a number reused for something else.
const EXIT_FD_BASE: RawFd = 512;

/// The exit eventfds handed to one connection's queue threads, closed once they are gone.
#[derive(Debug, Default)]
pub struct ExitEvents {
    fds: Mutex<Vec<RawFd>>,
}

impl ExitEvents {
    /// No exit eventfds yet.
    pub fn new() -> ExitEvents {
        ExitEvents::default()
    }

    /// A new exit event for a queue thread: the answer to
    /// [`VhostUserBackend::exit_event`](vhost_user_backend::VhostUserBackend::exit_event).
    pub fn create(&self) -> Option<(EventConsumer, EventNotifier)> {
        // Without an exit event the library cannot stop (or join) the worker threads.
        let (consumer, notifier) =
            new_event_consumer_and_notifier(EventFlag::NONBLOCK | EventFlag::CLOEXEC).ok()?;
        // SAFETY: F_DUPFD_CLOEXEC duplicates a descriptor we own; no memory is involved.
        let high =
            unsafe { libc::fcntl(consumer.as_raw_fd(), libc::F_DUPFD_CLOEXEC, EXIT_FD_BASE) };
        if high < 0 {
            return Some((consumer, notifier)); // Over the fd limit: leak rather than fail.
        }
        self.fds
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(high);
        // SAFETY: `high` is a new descriptor that nothing else owns.
        Some((unsafe { EventConsumer::from_raw_fd(high) }, notifier))
    }

    /// Closes the exit eventfds the library leaked; call once its daemon is dropped (every
    /// queue thread joined), before the next connection.
    pub fn close_all(&self) {
        let fds = std::mem::take(&mut *self.fds.lock().unwrap_or_else(|e| e.into_inner()));
        for fd in fds {
            // SAFETY: `fd` was duplicated above EXIT_FD_BASE by `create` for a daemon that
            // is gone; nothing else uses it, and no other descriptor can have its number.
            unsafe { libc::close(fd) };
        }
    }
}

/// What every device keeps per frontend connection for its queues: the guest memory, whether
/// VIRTIO_RING_F_EVENT_IDX was negotiated, and the queue threads' exit events.
#[derive(Debug, Default)]
pub struct QueueState {
    mem: RwLock<Option<GuestMem>>,
    event_idx: AtomicBool,
    exit_events: ExitEvents,
}

impl QueueState {
    /// No memory table yet, no EVENT_IDX.
    pub fn new() -> QueueState {
        QueueState::default()
    }

    /// The answer to
    /// [`VhostUserBackend::set_event_idx`](vhost_user_backend::VhostUserBackend::set_event_idx).
    pub fn set_event_idx(&self, enabled: bool) {
        self.event_idx.store(enabled, Ordering::Relaxed);
    }

    /// Replaces the guest memory: the answer to
    /// [`VhostUserBackend::update_memory`](vhost_user_backend::VhostUserBackend::update_memory).
    pub fn update_memory(&self, mem: GuestMem) -> io::Result<()> {
        *self.mem.write().map_err(|_| poisoned())? = Some(mem);
        Ok(())
    }

    /// The exit events handed to this connection's queue threads.
    pub fn exit_events(&self) -> &ExitEvents {
        &self.exit_events
    }

    /// Drains one queue with `process` (which runs what is in the available ring, in the
    /// guest memory it is given), re-checking after re-enabling notifications under
    /// EVENT_IDX so that no kick is lost. Before a memory table nothing can be in the ring.
    pub fn drain(
        &self,
        vring: &Vring,
        mut process: impl FnMut(&GuestMem) -> io::Result<()>,
    ) -> io::Result<()> {
        let Some(mem) = self.mem.read().map_err(|_| poisoned())?.clone() else {
            return Ok(());
        };
        let event_idx = self.event_idx.load(Ordering::Relaxed);
        loop {
            if event_idx {
                vring.disable_notification().map_err(io::Error::other)?;
            }
            process(&mem)?;
            if !event_idx || !vring.enable_notification().map_err(io::Error::other)? {
                return Ok(());
            }
        }
    }
}

fn poisoned() -> io::Error {
    io::Error::other("guest memory lock poisoned")
}

/// The body of
/// [`VhostUserBackend::handle_event`](vhost_user_backend::VhostUserBackend::handle_event) for
/// a device with one queue per thread: a kick runs `process` on the thread's vring with the
/// device's queue index (`thread_id`); a watchdog tick is answered ([`crate::notify`]).
/// Errors are logged, never returned: an error would end the queue's thread.
pub fn handle_queue_event(
    device_event: u16,
    evset: EventSet,
    vrings: &[Vring],
    thread_id: usize,
    process: impl FnOnce(&Vring, usize) -> io::Result<()>,
) -> io::Result<()> {
    if device_event == crate::notify::WATCHDOG_EVENT {
        crate::notify::watchdog_answer(thread_id);
        return Ok(());
    }
    if evset != EventSet::IN {
        debug!("queue thread {thread_id}: ignoring event set {evset:?}");
        return Ok(());
    }
    // Each thread owns exactly one queue (`one_queue_per_thread`). The library numbers
    // events and `vrings` within the thread's own queues, so the event picks the vring and
    // the device's queue index is the thread's index.
    match vrings.get(usize::from(device_event)) {
        Some(vring) => {
            if let Err(e) = process(vring, thread_id) {
                warn!("queue thread {thread_id}: {e}");
            }
        }
        None => debug!("queue thread {thread_id}: unknown event {device_event}"),
    }
    Ok(())
}

/// A queue mask per worker thread, one queue each, so queues never contend for a lock.
pub fn one_queue_per_thread(num_queues: usize) -> Vec<u64> {
    (0..num_queues).map(|q| 1u64 << q).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn is_open(fd: RawFd) -> bool {
        // SAFETY: F_GETFD only reads the descriptor's flags.
        unsafe { libc::fcntl(fd, libc::F_GETFD) >= 0 }
    }

    /// Exit eventfds sit at or above the base, stay open when their owner forgets them (as
    /// vhost-user-backend 0.22 does), and are closed by `close_all`.
    #[test]
    fn exit_events_are_high_and_closed_after_the_connection() {
        let events = ExitEvents::new();
        let fds: Vec<RawFd> = (0..3)
            .map(|_| {
                let (consumer, _notifier) = events.create().unwrap();
                let fd = consumer.as_raw_fd();
                std::mem::forget(consumer);
                fd
            })
            .collect();
        for &fd in &fds {
            assert!(fd >= EXIT_FD_BASE, "exit eventfd {fd} below the base");
            assert!(is_open(fd));
        }
        events.close_all();
        for &fd in &fds {
            assert!(!is_open(fd), "exit eventfd {fd} still open");
        }
    }

    /// GET_VRING_BASE's read of the index waits until every request taken from the ring
    /// (here one held by a "worker" for 200 ms) is done, then runs the stop hook.
    #[test]
    fn next_avail_waits_for_requests_in_flight() {
        use std::sync::atomic::AtomicUsize;
        use std::time::Instant;
        let mem = GuestMemoryAtomic::new(GuestMemoryMmap::new());
        let vring = Vring::new(mem, 16).unwrap();
        let done = Arc::new(AtomicBool::new(false));
        let hooks = Arc::new(AtomicUsize::new(0));
        let (d, h) = (done.clone(), hooks.clone());
        vring.set_stop_hook(move || {
            Arc::new(move || {
                assert!(
                    d.load(Ordering::SeqCst),
                    "hook ran before the request finished"
                );
                h.fetch_add(1, Ordering::SeqCst);
            })
        });
        vring.set_stop_hook(|| panic!("a second hook is never made"));
        let busy = Busy::new(vring.inflight.clone());
        let worker = busy.clone();
        drop(busy);
        let d = done.clone();
        let t = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(200));
            d.store(true, Ordering::SeqCst);
            drop(worker);
        });
        let start = Instant::now();
        assert_eq!(vring.queue_next_avail(), 0);
        assert!(start.elapsed() >= Duration::from_millis(200));
        assert!(done.load(Ordering::SeqCst));
        assert_eq!(hooks.load(Ordering::SeqCst), 1);
        t.join().unwrap();
        // Idle: answers at once.
        let start = Instant::now();
        vring.queue_next_avail();
        assert!(start.elapsed() < Duration::from_millis(100));
    }

    #[test]
    fn one_queue_per_thread_masks() {
        assert_eq!(one_queue_per_thread(3), [1, 2, 4]);
    }
}

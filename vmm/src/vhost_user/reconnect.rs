//! A backend that hangs up is waited for, not fatal: a supervisor (sm, systemd) restarts it
//! on the same socket, and sm-vmm connects again and replays the device's set-up while the
//! guest keeps running (its requests to that device just wait).
//!
//! One thread per device (`vhost-user-watch-N`) polls the connection for a hang-up only, so
//! it never takes a reply meant for a vCPU thread. Once the backend is back, each started
//! ring restarts at its **used index** in guest memory: a backend that completes in avail
//! order (it offers VIRTIO_F_IN_ORDER, as ours do) has then finished exactly the requests
//! before it, so every request the guest submitted and never saw completed is taken again,
//! and none twice. A backend that does not promise that order cannot be replayed: the VM
//! stops with one line instead (vsock excepted: its requests mean nothing to a new backend
//! anyway, and the guest is told its connections are gone). virtio-fs stops the VM too, as
//! its state (the guest's node IDs and open files) dies with the backend, unless
//! `--fs-replay TAG` says the backend keeps that state across a restart.

use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use vhost::vhost_user::message::{VhostUserConfigFlags, VhostUserProtocolFeatures};
use vhost::vhost_user::VhostUserFrontend;
use virtio_queue::{Queue, QueueT};

use super::link::{Identity, Link};
use super::{DeviceConfig, DeviceKind, VhostUserDevice, VhostUserError, VIRTIO_F_IN_ORDER};
use crate::devices::virtio_mmio::{MmioTransport, QueueConfig, VirtioDevice};
use crate::devices::MmioBus;

/// How long a backend that hung up may take to come back before the VM stops.
pub const RECONNECT_TIMEOUT: Duration = Duration::from_secs(60);
/// First pause between connection attempts (doubling up to [`MAX_BACKOFF`]).
const FIRST_BACKOFF: Duration = Duration::from_millis(50);
const MAX_BACKOFF: Duration = Duration::from_secs(1);

/// Starts a watch thread for every vhost-user device on `mmio`; a backend that is lost for
/// good calls `lost` with the one line that says why (the VM should then stop).
pub fn watch_all(
    mmio: &Arc<MmioBus>,
    lost: impl Fn(String) + Clone + Send + 'static,
) -> std::io::Result<()> {
    for index in 0..mmio.devices.len() {
        let (mmio, lost) = (mmio.clone(), lost.clone());
        std::thread::Builder::new()
            .name(format!("vhost-user-watch-{index}"))
            .spawn(move || {
                if let Err(line) = watch(&mmio.devices[index].1) {
                    lost(line);
                }
            })?;
    }
    Ok(())
}

fn lock(t: &Mutex<MmioTransport>) -> MutexGuard<'_, MmioTransport> {
    // A vCPU thread that panicked holding the lock leaves the registers as they were.
    t.lock().unwrap_or_else(|e| e.into_inner())
}

/// Follows one device's backend for the life of the VM; returns only when the backend is
/// lost for good (or the device is not a vhost-user one).
fn watch(transport: &Mutex<MmioTransport>) -> Result<(), String> {
    loop {
        let Some((connection, socket, kind, source)) = ({
            let mut t = lock(transport);
            t.device
                .vhost_user()
                .map(|d| (d.frontend_dup(), d.socket(), d.kind, d.source.clone()))
        }) else {
            return Ok(());
        };
        let connection = connection.map_err(|e| {
            format!(
                "vhost-user: cannot watch the connection to {}: {e}",
                socket.display()
            )
        })?;
        wait_for_hangup(&connection);
        drop(connection);
        {
            let mut t = lock(transport);
            let device = t.device.vhost_user().expect("checked above");
            device.down = true;
            device.replayable()?;
        }
        tracing::warn!(
            "vhost-user backend at {} hung up; waiting up to {} s for it to come back",
            socket.display(),
            RECONNECT_TIMEOUT.as_secs()
        );
        let link = connect_again(&socket, kind, &source)?;
        let mut t = lock(transport);
        let device = t.device.vhost_user().expect("checked above");
        device.reconnect(link).map_err(|e| {
            format!(
                "vhost-user backend at {} came back, but {e}",
                socket.display()
            )
        })?;
        tracing::info!("vhost-user backend at {} is back", socket.display());
    }
}

/// Blocks until the peer closes the connection. No event is asked for: a Unix stream socket
/// whose peer is gone reports `POLLHUP` regardless, and asking for `POLLIN` would wake on
/// every reply a vCPU thread is waiting for.
fn wait_for_hangup(connection: &OwnedFd) {
    loop {
        let mut fds = [PollFd::new(connection.as_fd(), PollFlags::empty())];
        match poll(&mut fds, PollTimeout::NONE) {
            Ok(_) => {
                let events = fds[0].revents().unwrap_or(PollFlags::empty());
                if events.intersects(PollFlags::POLLHUP | PollFlags::POLLERR | PollFlags::POLLNVAL)
                {
                    return;
                }
            }
            Err(nix::errno::Errno::EINTR) => {}
            // Nothing can be watched on a descriptor poll refuses: treat it as lost.
            Err(_) => return,
        }
    }
}

/// Connects to the backend at `socket` until it answers set-up or [`RECONNECT_TIMEOUT`]
/// passes.
fn connect_again(socket: &Path, kind: DeviceKind, source: &DeviceConfig) -> Result<Link, String> {
    let started = Instant::now();
    let mut pause = FIRST_BACKOFF;
    loop {
        let last: VhostUserError = match Link::negotiate(socket, kind, source) {
            Ok(link) => return Ok(link),
            Err(e) => e,
        };
        if started.elapsed() >= RECONNECT_TIMEOUT {
            return Err(format!(
                "vhost-user backend at {} hung up and did not come back within {} s (last: {last})",
                socket.display(),
                RECONNECT_TIMEOUT.as_secs()
            ));
        }
        tracing::debug!("reconnecting to {}: {last}", socket.display());
        std::thread::sleep(pause);
        pause = (pause * 2).min(MAX_BACKOFF);
    }
}

/// Whether a backend that came back (`new`) can serve the device the guest knows: it
/// offers every feature the guest was offered (`offered`) and in-order completion if the
/// first did, as many queues, the same config space and shared memory.
fn compatible(offered: u64, first: &Identity, new: &Identity) -> Result<(), String> {
    let wanted = offered | (first.backend_features & VIRTIO_F_IN_ORDER);
    let missing = wanted & !new.backend_features;
    if missing != 0 {
        return Err(format!("it no longer offers feature bits {missing:#x}"));
    }
    if new.queues < first.queues {
        return Err(format!(
            "it serves {} queues, not {}",
            new.queues, first.queues
        ));
    }
    if new.config != first.config {
        return Err("its config space differs (another disk or tag?)".into());
    }
    if new.shmem_sizes != first.shmem_sizes {
        return Err("it asks for other shared memory regions".into());
    }
    Ok(())
}

impl VhostUserDevice {
    /// A second descriptor for the backend connection, to poll for a hang-up.
    fn frontend_dup(&self) -> std::io::Result<OwnedFd> {
        // SAFETY: the frontend's socket is open for as long as `self` lives; the duplicate
        // is a new descriptor this function's caller owns.
        let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(self.frontend.as_raw_fd()) };
        fd.try_clone_to_owned()
    }

    /// Whether a lost backend's requests can be replayed on a new one: none were started,
    /// or it completes them in order, or it is vsock (whose connections reset anyway). For
    /// virtio-fs only with `--fs-replay`: the guest's node IDs and open file handles live
    /// in the backend's tables, so a new backend without them would fail the open files
    /// and the requests in flight with EBADF (the mount itself would go on working); unless
    /// the backend keeps them (sm-vhost-user-fs's crash journal), stopping the VM with one
    /// line is the honest answer.
    fn replayable(&self) -> Result<(), String> {
        if self.kind == DeviceKind::FS && !self.fs_replay {
            return Err(format!(
                "virtio-fs backend at {} hung up; a new one cannot take over the guest's open files (they lived in its tables), so the VM stops",
                self.name
            ));
        }
        if self.acked.is_none()
            || self.kind == DeviceKind::VSOCK
            || self.identity.backend_features & VIRTIO_F_IN_ORDER != 0
        {
            return Ok(());
        }
        Err(format!(
            "vhost-user backend at {} hung up, and the requests it had taken cannot be given to another (it does not offer VIRTIO_F_IN_ORDER)",
            self.name
        ))
    }

    /// Takes over a new connection to the backend and restarts what the guest started:
    /// the features, memory table and each ring at its used index, the backend-request
    /// channel for shared memory, the driver's config writes; then one kick per ring and
    /// one interrupt (for completions the old backend wrote but never signalled).
    pub(super) fn reconnect(&mut self, link: Link) -> Result<(), String> {
        compatible(self.features(), &self.identity, &link.identity)?;
        self.frontend = link.frontend;
        self.protocol_features = link.protocol_features;
        self.reply_ack = self
            .protocol_features
            .contains(VhostUserProtocolFeatures::REPLY_ACK);
        self.deadline = Some(link.deadline);
        self.down = false;
        if self.shmem.iter().any(Option::is_some) {
            let channel = super::shmem::serve_backend_requests(
                &self.name,
                self.shmem.clone(),
                self.reply_ack,
            )
            .map_err(|e| format!("backend channel: {e}"))?;
            self.frontend
                .set_backend_request_fd(&channel)
                .map_err(|e| format!("SET_BACKEND_REQ_FD: {e}"))?;
        }
        if let Some(features) = self.acked {
            self.set_features_and_memory(features)?;
            for (i, q) in self.rings.clone() {
                let used = self.used_index(&q, features)?;
                let base = self.post_vsock_reset(i, &q, used, features)?;
                self.program_ring(i, &q, base)?;
            }
        }
        for (offset, data) in self.config_writes.clone() {
            self.frontend
                .set_config(offset, VhostUserConfigFlags::WRITABLE, &data)
                .map_err(|e| format!("SET_CONFIG: {e}"))?;
        }
        self.finish_setup().map_err(|e| e.to_string())?;
        for i in self.started.clone() {
            self.kick(i)?;
        }
        self.irq.write(1).map_err(|e| format!("interrupt: {e}"))
    }

    /// The used index of the guest's ring `q`, read from guest memory.
    fn used_index(&self, q: &QueueConfig, features: u64) -> Result<u16, String> {
        let ring = self.guest_ring(q, features)?;
        ring.used_idx(self.memory.as_ref(), std::sync::atomic::Ordering::Acquire)
            .map(|w| w.0)
            .map_err(|e| format!("ring used index: {e}"))
    }

    /// A view of the guest's ring `q` in guest memory, as the driver set it up.
    pub(super) fn guest_ring(&self, q: &QueueConfig, features: u64) -> Result<Queue, String> {
        let mut ring = Queue::new(q.size).map_err(|e| e.to_string())?;
        ring.set_size(q.size);
        ring.set_desc_table_address(Some(q.desc as u32), Some((q.desc >> 32) as u32));
        ring.set_avail_ring_address(Some(q.avail as u32), Some((q.avail >> 32) as u32));
        ring.set_used_ring_address(Some(q.used as u32), Some((q.used >> 32) as u32));
        ring.set_event_idx(features & (1 << 29) != 0);
        ring.set_ready(true);
        if !ring.is_valid(self.memory.as_ref()) {
            return Err("the ring is not inside guest RAM".into());
        }
        Ok(ring)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn blk() -> Identity {
        Identity {
            backend_features: (1 << 32) | VIRTIO_F_IN_ORDER | (1 << 9) | (1 << 30),
            queues: 1,
            config: vec![0, 0, 2, 0, 0, 0, 0, 0],
            shmem_sizes: vec![],
        }
    }

    #[test]
    fn only_a_backend_serving_the_same_device_is_taken_back() {
        let offered = (1 << 32) | (1 << 9);
        assert_eq!(compatible(offered, &blk(), &blk()), Ok(()));
        let richer = Identity {
            backend_features: blk().backend_features | (1 << 5),
            queues: 4,
            ..blk()
        };
        assert_eq!(
            compatible(offered, &blk(), &richer),
            Ok(()),
            "an upgrade may add"
        );
        let cases = [
            Identity {
                backend_features: blk().backend_features & !(1 << 9),
                ..blk()
            },
            Identity {
                backend_features: blk().backend_features & !VIRTIO_F_IN_ORDER,
                ..blk()
            },
            Identity { queues: 0, ..blk() },
            Identity {
                config: vec![0, 0, 4, 0, 0, 0, 0, 0],
                ..blk()
            },
            Identity {
                shmem_sizes: vec![1 << 30],
                ..blk()
            },
        ];
        for new in cases {
            assert!(compatible(offered, &blk(), &new).is_err(), "{new:?}");
        }
    }
}

//! A vhost-user device's part of a snapshot. Saving stops each running ring where it is
//! (GET_VRING_BASE: the backend has finished every request it took) and takes the backend's
//! own state over a pipe (SET_DEVICE_STATE_FD SAVE, then CHECK_DEVICE_STATE); the source VM
//! then goes on with its rings restarted at the same positions. Restoring talks to a fresh
//! backend in Cloud Hypervisor's and virtiofsd's order: LOAD and CHECK first, then features,
//! memory table and each ring at its saved base (RAM is already in place, since SET_VRING_ADDR
//! reads the used index from it).
//!
//! vsock backends keep no state: the restored guest gets a transport reset event, so it drops
//! the connections the new backend never heard of, and its agent answers new ones.

use std::fs::File;
use std::io::{Read, Write};

use vhost::vhost_user::message::{
    VhostTransferStateDirection, VhostTransferStatePhase, VhostUserProtocolFeatures,
};
use vhost::vhost_user::VhostUserFrontend;
use vhost::VhostBackend;
use virtio_queue::QueueT;
use vm_memory::{Bytes, GuestAddress};

use super::{DeviceKind, VhostUserDevice};
use crate::devices::virtio_mmio::{DeviceHandover, QueueConfig};

/// Largest backend state sm-vmm accepts (a guard against a backend that never stops writing).
const MAX_BACKEND_STATE: u64 = 256 << 20;
/// virtio-vsock's event queue.
const VSOCK_EVENT_QUEUE: usize = 2;
/// VIRTIO_VSOCK_EVENT_TRANSPORT_RESET.
const VSOCK_EVENT_TRANSPORT_RESET: u32 = 0;

impl VhostUserDevice {
    /// Why this device cannot be snapshotted, if it cannot.
    pub(super) fn snapshot_refusal(&self) -> Result<(), String> {
        if self.down {
            return Err(format!(
                "vhost-user backend at {} hung up and has not come back yet",
                self.name
            ));
        }
        if self.shmem.iter().any(Option::is_some) {
            return Err(format!(
                "virtio-fs at {}: a DAX window cannot be snapshotted yet (mount it without dax)",
                self.name
            ));
        }
        let keeps_state = self.kind != DeviceKind::VSOCK;
        if keeps_state
            && !self
                .protocol_features
                .contains(VhostUserProtocolFeatures::DEVICE_STATE)
        {
            return Err(format!(
                "vhost-user backend at {} cannot hand over its state (it does not offer VHOST_USER_PROTOCOL_F_DEVICE_STATE)",
                self.name
            ));
        }
        Ok(())
    }

    /// Stops every running ring and takes the backend's state. Rings stopped before a failure
    /// are remembered, so [`Self::restart_stopped_rings`] brings them back either way.
    pub(super) fn save(&mut self) -> Result<DeviceHandover, String> {
        self.snapshot_refusal()?;
        for i in self.started.clone() {
            let base = self
                .frontend
                .get_vring_base(i)
                .map_err(|e| format!("GET_VRING_BASE({i}): {e}"))?;
            let base = u16::try_from(base)
                .map_err(|_| format!("GET_VRING_BASE({i}) answered {base}, not a ring index"))?;
            self.stopped.push((i, base));
        }
        let backend_state = if self.kind == DeviceKind::VSOCK {
            None
        } else {
            Some(self.transfer_out()?)
        };
        Ok(DeviceHandover {
            vring_bases: self.stopped.clone(),
            backend_state,
        })
    }

    /// SET_DEVICE_STATE_FD (SAVE) and CHECK_DEVICE_STATE: the backend's state, read to EOF.
    fn transfer_out(&mut self) -> Result<Vec<u8>, String> {
        let (read_end, write_end) =
            nix::unistd::pipe().map_err(|e| format!("cannot create a pipe: {e}"))?;
        let answer = self
            .frontend
            .set_device_state_fd(
                VhostTransferStateDirection::SAVE,
                VhostTransferStatePhase::STOPPED,
                write_end,
            )
            .map_err(|e| format!("SET_DEVICE_STATE_FD (save): {e}"))?;
        // The backend may hand back its own descriptor to read from instead of the pipe.
        let source = answer.unwrap_or_else(|| File::from(read_end));
        let mut state = Vec::new();
        source
            .take(MAX_BACKEND_STATE + 1)
            .read_to_end(&mut state)
            .map_err(|e| format!("reading its state: {e}"))?;
        if state.len() as u64 > MAX_BACKEND_STATE {
            return Err(format!(
                "its state is larger than {} MiB",
                MAX_BACKEND_STATE >> 20
            ));
        }
        self.frontend.check_device_state().map_err(|e| {
            format!("CHECK_DEVICE_STATE after saving: {e} (the backend's log says why)")
        })?;
        Ok(state)
    }

    /// SET_DEVICE_STATE_FD (LOAD) and CHECK_DEVICE_STATE: `state` written to the backend.
    fn transfer_in(&mut self, state: &[u8]) -> Result<(), String> {
        if !self
            .protocol_features
            .contains(VhostUserProtocolFeatures::DEVICE_STATE)
        {
            return Err(
                "the snapshot holds backend state, but this backend does not offer VHOST_USER_PROTOCOL_F_DEVICE_STATE".into(),
            );
        }
        let (read_end, write_end) =
            nix::unistd::pipe().map_err(|e| format!("cannot create a pipe: {e}"))?;
        let answer = self
            .frontend
            .set_device_state_fd(
                VhostTransferStateDirection::LOAD,
                VhostTransferStatePhase::STOPPED,
                read_end,
            )
            .map_err(|e| format!("SET_DEVICE_STATE_FD (load): {e}"))?;
        let mut sink = answer.unwrap_or_else(|| File::from(write_end));
        // The backend reads on its own thread; closing the sink is its end of file.
        sink.write_all(state)
            .map_err(|e| format!("writing its state: {e}"))?;
        drop(sink);
        self.frontend.check_device_state().map_err(|e| {
            format!("CHECK_DEVICE_STATE after loading: {e} (the backend's log says why)")
        })
    }

    /// Restarts the rings a snapshot stopped, each at the position it stopped at.
    pub(super) fn restart_stopped_rings(&mut self) -> Result<(), String> {
        let stopped = std::mem::take(&mut self.stopped);
        let rings = std::mem::take(&mut self.rings);
        self.started.clear();
        let mut first_error = None;
        for (i, q) in rings {
            match stopped.iter().find(|(s, _)| *s == i) {
                Some((_, base)) => {
                    if let Err(e) = self.start_ring(i, &q, *base).and_then(|()| self.kick(i)) {
                        first_error.get_or_insert(e);
                    }
                }
                // Never stopped (the save failed first): it still runs.
                None => {
                    self.started.push(i);
                    self.rings.push((i, q));
                }
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// Starts a device restored from a snapshot on a fresh backend: its saved state, then the
    /// driver's features, the memory table and each ring at its saved base.
    pub(super) fn restore(
        &mut self,
        features: u64,
        queues: &[QueueConfig],
        saved: &DeviceHandover,
    ) -> Result<(), String> {
        if let Some(state) = &saved.backend_state {
            self.transfer_in(state)?;
        }
        self.acked = Some(features);
        self.set_features_and_memory(features)?;
        for (i, q) in queues.iter().enumerate().filter(|(_, q)| q.ready) {
            let base = saved
                .vring_bases
                .iter()
                .find(|(s, _)| *s == i)
                .map(|(_, b)| *b)
                .ok_or_else(|| format!("the snapshot has no position for ring {i}"))?;
            let base = self.post_vsock_reset(i, q, base, features)?;
            self.start_ring(i, q, base)?;
            self.kick(i)?;
        }
        // The guest hears of a vsock reset event through `notify_guest`, called once the
        // vCPUs (and their local APICs) are restored: an interrupt raised now would reach a
        // local APIC whose saved state then overwrites it, and the guest would process the
        // reset only at the device's next interrupt, cutting a connection made meanwhile.
        Ok(())
    }

    /// Kicks ring `i`: requests the guest queued before the ring stopped, which the backend
    /// had not taken, would otherwise wait for the guest's next kick (which may never come).
    pub(super) fn kick(&self, i: usize) -> Result<(), String> {
        self.kicks[i]
            .write(1)
            .map_err(|e| format!("kicking ring {i}: {e}"))
    }

    /// For a vsock device's event ring (`i`), puts a VIRTIO_VSOCK_EVENT_TRANSPORT_RESET into
    /// its next buffer (taken at `base`) and returns the position the backend goes on from;
    /// any other ring goes on from `base`. A guest that left no event buffer gets none (it
    /// had no connections to reset).
    pub(super) fn post_vsock_reset(
        &self,
        i: usize,
        q: &QueueConfig,
        base: u16,
        features: u64,
    ) -> Result<u16, String> {
        if self.kind != DeviceKind::VSOCK || i != VSOCK_EVENT_QUEUE {
            return Ok(base);
        }
        let fail = |e: &dyn std::fmt::Display| format!("vsock event ring: {e}");
        let mem = self.memory.as_ref();
        let mut ring = self.guest_ring(q, features).map_err(|e| fail(&e))?;
        let used = ring
            .used_idx(mem, std::sync::atomic::Ordering::Acquire)
            .map_err(|e| fail(&e))?;
        ring.set_next_avail(base);
        ring.set_next_used(used.0);
        let Some(chain) = ring.pop_descriptor_chain(mem) else {
            return Ok(base);
        };
        let head = chain.head_index();
        let desc = chain
            .clone()
            .next()
            .ok_or_else(|| fail(&"an empty descriptor chain"))?;
        if !desc.is_write_only() || desc.len() < 4 {
            return Err(fail(
                &"the guest's event buffer is not a writable 4-byte buffer",
            ));
        }
        mem.write_obj(
            VSOCK_EVENT_TRANSPORT_RESET.to_le(),
            GuestAddress(desc.addr().0),
        )
        .map_err(|e| fail(&e))?;
        ring.add_used(mem, head, 4).map_err(|e| fail(&e))?;
        Ok(ring.next_avail())
    }
}

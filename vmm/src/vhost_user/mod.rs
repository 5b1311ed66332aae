//! The generic vhost-user frontend: one virtio device whose work is done by a backend
//! process on a Unix socket. sm-vmm negotiates features, hands the backend the guest memory
//! (the memfd) and the rings, and wires the queue kick ioeventfds and the interrupt irqfd
//! straight to it; config space goes through GET_CONFIG/SET_CONFIG. A backend that offers
//! shared memory regions (virtio-fs DAX) gets them as guest-physical windows it fills
//! through its backend-request channel ([`shmem`]). Written once for every device type.

mod deadline;
mod handover;
mod link;
pub mod reconnect;
pub mod shmem;

use std::collections::BTreeMap;
use std::os::fd::{AsRawFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use deadline::SetupDeadline;
use link::Link;
use shmem::{SharedMemoryRegion, ShmemError};

use vhost::vhost_user::message::{
    VhostUserConfigFlags, VhostUserProtocolFeatures, VhostUserVirtioFeatures,
};
use vhost::vhost_user::{Frontend, VhostUserFrontend};
use vhost::{VhostBackend, VhostUserMemoryRegionInfo, VringConfigData};
use vm_memory::{GuestAddress, GuestMemory, GuestMemoryMmap, GuestMemoryRegion};
use vmm_sys_util::eventfd::EventFd;

use crate::devices::virtio_mmio::{DeviceHandover, QueueConfig, VirtioDevice, VIRTIO_F_VERSION_1};

/// Errors connecting to or negotiating with a backend.
#[derive(Debug, thiserror::Error)]
pub enum VhostUserError {
    /// The socket path does not exist.
    #[error("vhost-user socket {0} does not exist (is the backend running?)")]
    NoSocket(String),
    /// Connecting failed.
    #[error("cannot connect to vhost-user backend at {0}: {1}")]
    Connect(String, vhost::Error),
    /// A protocol step failed.
    #[error("vhost-user backend at {0}: {1} failed: {2}")]
    Protocol(String, &'static str, vhost::Error),
    /// The backend cannot serve a modern virtio device the way sm-vmm drives it.
    #[error("vhost-user backend at {0} {1}")]
    Unsupported(String, &'static str),
    /// A shared memory region the backend asks for cannot be set up.
    #[error("vhost-user backend at {0}: {1}")]
    SharedMemory(String, ShmemError),
    /// The backend did not finish setup in time.
    #[error(
        "vhost-user backend at {0}: no answer to {1} within {2} s of setup (is the backend stuck?)"
    )]
    Timeout(String, &'static str, u64),
    /// The backend hung up (or sent half a message and hung up) during setup.
    #[error("vhost-user backend at {0} closed the connection during {1}")]
    Closed(String, &'static str),
    /// The backend's shared memory regions are not ones sm-vmm can place.
    #[error("vhost-user backend at {0} asks for {1}")]
    BadShmemConfig(String, String),
}

/// What kind of device a backend serves, and what the VMM may pass through of it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeviceKind {
    /// Virtio device ID.
    pub device_type: u32,
    /// Size of the device's configuration space.
    pub config_size: u32,
    /// Queues to use at most (the backend may offer fewer).
    pub max_queues: usize,
    /// Queues the device type defines, used when the backend does not negotiate MQ.
    pub fixed_queues: usize,
}

impl DeviceKind {
    /// virtio-blk (`struct virtio_blk_config` up to `write_zeroes_may_unmap`).
    pub const BLOCK: DeviceKind = DeviceKind {
        device_type: 2,
        config_size: 60,
        max_queues: 16,
        fixed_queues: 1,
    };
    /// virtio-fs (`struct virtio_fs_config`: a 36-byte tag and the request queue count);
    /// one high-priority queue and one request queue.
    pub const FS: DeviceKind = DeviceKind {
        device_type: 26,
        config_size: 40,
        max_queues: 2,
        fixed_queues: 2,
    };
    /// virtio-vsock (`struct virtio_vsock_config`: the guest CID); rx, tx and event queues.
    pub const VSOCK: DeviceKind = DeviceKind {
        device_type: 19,
        config_size: 8,
        max_queues: 3,
        fixed_queues: 3,
    };
    /// virtio-net (`struct virtio_net_config` up to `mtu`); one rx and one tx queue.
    pub const NET: DeviceKind = DeviceKind {
        device_type: 1,
        config_size: 12,
        max_queues: 2,
        fixed_queues: 2,
    };

    /// The short name of virtio device ID `device_type` (`block`, `fs`, `vsock`, `net`),
    /// if it is one of these kinds.
    pub fn name_of(device_type: u32) -> Option<&'static str> {
        [
            (Self::BLOCK, "block"),
            (Self::FS, "fs"),
            (Self::VSOCK, "vsock"),
            (Self::NET, "net"),
        ]
        .into_iter()
        .find(|(k, _)| k.device_type == device_type)
        .map(|(_, name)| name)
    }
}

/// Longest virtio-fs tag the config space holds.
pub const FS_TAG_MAX: usize = 36;

/// Where a device's configuration space comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DeviceConfig {
    /// The backend serves it (GET_CONFIG; needs VHOST_USER_PROTOCOL_F_CONFIG).
    FromBackend,
    /// sm-vmm builds a virtio-fs config from this tag and the negotiated request queues.
    FsTag(String),
    /// sm-vmm builds a virtio-net config with this MAC address (link up, one queue pair).
    NetMac([u8; 6]),
}

/// A `struct virtio_fs_config`: the tag, NUL-padded, then the request queue count.
pub fn fs_config(tag: &str, request_queues: u32) -> Vec<u8> {
    let mut config = vec![0u8; FS_TAG_MAX];
    let n = tag.len().min(FS_TAG_MAX);
    config[..n].copy_from_slice(&tag.as_bytes()[..n]);
    config.extend_from_slice(&request_queues.to_le_bytes());
    config
}

/// The MTU a virtio-net config space states (the backends and the guest agree on 1500).
pub const NET_MTU: u16 = 1500;

/// A `struct virtio_net_config`: the MAC, `VIRTIO_NET_S_LINK_UP`, one queue pair, the MTU.
pub fn net_config(mac: [u8; 6]) -> Vec<u8> {
    let mut config = mac.to_vec();
    config.extend_from_slice(&1u16.to_le_bytes());
    config.extend_from_slice(&1u16.to_le_bytes());
    config.extend_from_slice(&NET_MTU.to_le_bytes());
    config
}

/// Transport feature bits sm-vmm can honour: indirect descriptors, event index, VERSION_1.
/// Device-specific bits (0-23) pass through; everything else (packed rings, IOMMU, ...) is
/// withheld from the guest.
const TRANSPORT_FEATURES: u64 = (1 << 28) | (1 << 29) | VIRTIO_F_VERSION_1;
const DEVICE_FEATURES: u64 = (1 << 24) - 1;
/// VIRTIO_F_IN_ORDER: the device uses buffers in the order they were made available.
const VIRTIO_F_IN_ORDER: u64 = 1 << 35;
/// Size of every queue sm-vmm offers.
const QUEUE_SIZE: u16 = 256;
/// Guest-physical alignment of each shared memory region (so the guest can map it with
/// large pages and its memory hotplug code accepts it).
pub const SHMEM_ALIGN: u64 = 1 << 30;

/// Most shared memory regions a backend may ask for (each takes a KVM memory slot; virtio-fs
/// uses one).
pub const MAX_SHMEM_REGIONS: usize = 8;
/// Largest shared memory region: x86-64's 52-bit physical address limit, so placement
/// arithmetic cannot overflow (the guest's own limit is checked when placing).
pub const MAX_SHMEM_SIZE: u64 = 1 << 52;
/// How long a backend's whole setup (connect to shared memory) may take: a backend that
/// stops answering must not hang sm-vmm before the guest even boots.
pub const SETUP_TIMEOUT: Duration = Duration::from_secs(10);

/// Guest-physical space a region of `size` bytes takes: whole [`SHMEM_ALIGN`] units
/// (`u64::MAX` if that overflows, which no address space holds).
fn placed_size(size: u64) -> u64 {
    size.checked_next_multiple_of(SHMEM_ALIGN)
        .unwrap_or(u64::MAX)
}

/// Checks the region sizes a backend's GET_SHMEM_CONFIG reply gives (0: no region with
/// that ID) and returns them.
fn shmem_sizes(nregions: u32, sizes: &[u64]) -> Result<Vec<u64>, String> {
    let n = nregions as usize;
    if n > MAX_SHMEM_REGIONS {
        return Err(format!(
            "{nregions} shared memory regions (sm-vmm places at most {MAX_SHMEM_REGIONS})"
        ));
    }
    let sizes = &sizes[..n.min(sizes.len())];
    for (id, size) in sizes.iter().enumerate() {
        if *size > MAX_SHMEM_SIZE || size % shmem::PAGE_SIZE != 0 {
            return Err(format!(
                "shared memory region {id} of {size:#x} bytes (must be whole 4 KiB pages, at most {MAX_SHMEM_SIZE:#x})"
            ));
        }
    }
    Ok(sizes.to_vec())
}

/// The error for a failed setup `step`: a timeout if the setup deadline had fired (and so
/// shut the socket).
fn step_error(name: &str, step: &'static str, timed_out: bool, e: vhost::Error) -> VhostUserError {
    use vhost::vhost_user::Error as E;
    let name = name.to_string();
    if timed_out {
        return VhostUserError::Timeout(name, step, SETUP_TIMEOUT.as_secs());
    }
    match e {
        vhost::Error::VhostUserProtocol(E::Disconnected | E::PartialMessage) => {
            VhostUserError::Closed(name, step)
        }
        e => VhostUserError::Protocol(name, step, e),
    }
}

/// Host address of the guest's ring at `gpa` of `len` bytes, which must lie inside one
/// region of guest RAM: a ring the guest places elsewhere (MMIO, a DAX window, past RAM)
/// is refused here and never reaches the backend.
fn ring_host_address(memory: &GuestMemoryMmap, gpa: u64, len: u64) -> Result<u64, String> {
    let end = gpa.checked_add(len).ok_or("ring address overflows")?;
    let in_one_region = memory
        .iter()
        .any(|r| r.start_addr().0 <= gpa && end <= r.start_addr().0 + r.len());
    if !in_one_region {
        return Err(format!("ring at {gpa:#x}+{len:#x} is not inside guest RAM"));
    }
    memory
        .get_host_address(GuestAddress(gpa))
        .map(|p| p as u64)
        .map_err(|e| e.to_string())
}

/// A virtio device served by a vhost-user backend.
pub struct VhostUserDevice {
    name: String,
    kind: DeviceKind,
    /// Where the config space comes from (to negotiate again after a hang-up).
    source: DeviceConfig,
    frontend: Frontend,
    /// The backend's features, queues, config and shared memory as first negotiated (a
    /// returning backend must match them).
    identity: link::Identity,
    config: Vec<u8>,
    /// The driver's writes to a backend-owned config space, by offset (replayed to a
    /// returning backend).
    config_writes: BTreeMap<u32, Vec<u8>>,
    /// Config space writes go to the backend (it owns the config).
    backend_config: bool,
    memory: Arc<GuestMemoryMmap>,
    memfd: RawFd,
    kicks: Vec<EventFd>,
    irq: EventFd,
    /// The driver's features while the device is started.
    acked: Option<u64>,
    started: Vec<usize>,
    /// Each started ring's set-up, so a snapshot can restart it.
    rings: Vec<(usize, QueueConfig)>,
    /// Next available index of each ring a snapshot stopped, until it restarts them.
    stopped: Vec<(usize, u16)>,
    /// Protocol features both sides agreed on.
    protocol_features: VhostUserProtocolFeatures,
    /// The regions, once placed in the guest-physical address space.
    shmem: Vec<Option<Arc<SharedMemoryRegion>>>,
    /// The setup deadline, until [`Self::finish_setup`].
    deadline: Option<SetupDeadline>,
    reply_ack: bool,
    /// The backend hung up: the rings wait for it to come back ([`reconnect`]).
    down: bool,
    /// virtio-fs only: the backend keeps the guest's tables across a restart, so its
    /// requests may be replayed on the next one (`--fs-replay`).
    fs_replay: bool,
}

impl VhostUserDevice {
    /// Connects to the backend at `path`, negotiates features and reads its config space.
    /// `memfd` backs `memory` (offsets as laid out by [`crate::memory`]).
    pub fn connect(
        path: &Path,
        kind: DeviceKind,
        source: &DeviceConfig,
        memory: Arc<GuestMemoryMmap>,
        memfd: RawFd,
    ) -> Result<Self, VhostUserError> {
        let name = path.display().to_string();
        let link = Link::negotiate(path, kind, source)?;
        let kicks = (0..link.identity.queues)
            .map(|_| EventFd::new(libc::EFD_NONBLOCK))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| {
                VhostUserError::Protocol(name.clone(), "eventfd", vhost::Error::IOError(e))
            })?;
        let irq = EventFd::new(libc::EFD_NONBLOCK).map_err(|e| {
            VhostUserError::Protocol(name.clone(), "eventfd", vhost::Error::IOError(e))
        })?;
        let reply_ack = link
            .protocol_features
            .contains(VhostUserProtocolFeatures::REPLY_ACK);
        Ok(VhostUserDevice {
            name,
            kind,
            source: source.clone(),
            frontend: link.frontend,
            config: link.identity.config.clone(),
            config_writes: BTreeMap::new(),
            backend_config: *source == DeviceConfig::FromBackend,
            memory,
            memfd,
            kicks,
            irq,
            acked: None,
            started: vec![],
            rings: vec![],
            stopped: vec![],
            protocol_features: link.protocol_features,
            identity: link.identity,
            shmem: vec![],
            deadline: Some(link.deadline),
            reply_ack,
            down: false,
            fs_replay: false,
        })
    }

    /// Lets a virtio-fs device's requests be replayed on a new backend after a hang-up
    /// (`--fs-replay`): its backend keeps the guest's tables across a restart.
    pub fn replay_after_hangup(&mut self) {
        self.fs_replay = true;
    }

    /// Guest-physical space the device's shared memory regions take, each aligned to
    /// [`SHMEM_ALIGN`] (0: the device has none; `u64::MAX` if the sum overflows, which no
    /// guest address space holds).
    pub fn shared_memory_span(&self) -> u64 {
        self.identity
            .shmem_sizes
            .iter()
            .try_fold(0u64, |sum, s| sum.checked_add(placed_size(*s)))
            .unwrap_or(u64::MAX)
    }

    /// Ends setup: replies from here on (activation, snapshots) may take as long as the
    /// backend needs.
    pub fn finish_setup(&mut self) -> Result<(), VhostUserError> {
        match self.deadline.take() {
            Some(d) if d.fired() => Err(VhostUserError::Timeout(
                self.name.clone(),
                "setup",
                SETUP_TIMEOUT.as_secs(),
            )),
            _ => Ok(()),
        }
    }

    /// Places the device's shared memory regions from guest-physical address `base` on
    /// (a [`SHMEM_ALIGN`]-aligned span of [`Self::shared_memory_span`] bytes), opens the
    /// backend-request channel the backend maps files through, and returns the regions for
    /// the VMM to register as memory slots.
    pub fn attach_shared_memory(
        &mut self,
        base: u64,
    ) -> Result<Vec<Arc<SharedMemoryRegion>>, VhostUserError> {
        let mut next = base;
        let mut placed = Vec::new();
        for size in self.identity.shmem_sizes.clone() {
            if size == 0 {
                self.shmem.push(None);
                continue;
            }
            let region = SharedMemoryRegion::new(next, size)
                .map_err(|e| VhostUserError::SharedMemory(self.name.clone(), e))?;
            let region = Arc::new(region);
            // Cannot overflow: the caller checked that the whole span fits the guest.
            next = next.saturating_add(placed_size(size));
            self.shmem.push(Some(region.clone()));
            placed.push(region);
        }
        if placed.is_empty() {
            return Ok(placed);
        }
        let channel = shmem::serve_backend_requests(&self.name, self.shmem.clone(), self.reply_ack)
            .map_err(|e| {
                VhostUserError::Protocol(
                    self.name.clone(),
                    "backend channel",
                    vhost::Error::IOError(e),
                )
            })?;
        self.frontend
            .set_backend_request_fd(&channel)
            .map_err(|e| {
                let timed_out = self.deadline.as_ref().is_some_and(SetupDeadline::fired);
                step_error(&self.name, "SET_BACKEND_REQ_FD", timed_out, e)
            })?;
        Ok(placed)
    }

    /// The eventfds the guest's QueueNotify writes signal (register them as ioeventfds).
    pub fn kick_eventfds(&self) -> &[EventFd] {
        &self.kicks
    }

    /// The eventfd the backend signals on completion (register it as the device's irqfd).
    pub fn irq_eventfd(&self) -> &EventFd {
        &self.irq
    }

    /// The device's configuration space as the guest sees it.
    pub fn config_space(&self) -> &[u8] {
        &self.config
    }

    /// Socket path, for messages.
    pub fn socket(&self) -> PathBuf {
        PathBuf::from(&self.name)
    }

    fn host_address(&self, gpa: u64, len: u64) -> Result<u64, String> {
        ring_host_address(&self.memory, gpa, len)
    }

    fn memory_table(&self) -> Vec<VhostUserMemoryRegionInfo> {
        self.memory
            .iter()
            .map(|r| VhostUserMemoryRegionInfo {
                guest_phys_addr: r.start_addr().0,
                memory_size: r.len(),
                userspace_addr: r.as_ptr() as u64,
                mmap_offset: r.file_offset().map(|f| f.start()).unwrap_or(0),
                mmap_handle: self.memfd,
            })
            .collect()
    }

    /// SET_FEATURES and SET_MEM_TABLE: what every ring start needs first. The driver's
    /// `features`, plus the vhost-user protocol bit and, if the backend offers it,
    /// VIRTIO_F_IN_ORDER: the guest is never offered in-order rings (sm-vmm gains nothing
    /// from them), but the backend's promise to complete in order is what lets sm-vmm
    /// replay its unfinished requests after a crash ([`reconnect`]).
    fn set_features_and_memory(&mut self, features: u64) -> Result<(), String> {
        let protocol_bit = VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits();
        let in_order = self.identity.backend_features & VIRTIO_F_IN_ORDER;
        self.frontend
            .set_features(features | protocol_bit | in_order)
            .map_err(|e| format!("SET_FEATURES: {e}"))?;
        self.frontend
            .set_mem_table(&self.memory_table())
            .map_err(|e| format!("SET_MEM_TABLE: {e}"))
    }

    /// Starts ring `i` as the driver set it up, the backend taking the next request at `base`.
    fn start_ring(&mut self, i: usize, q: &QueueConfig, base: u16) -> Result<(), String> {
        self.program_ring(i, q, base)?;
        self.started.push(i);
        self.rings.push((i, *q));
        Ok(())
    }

    /// Hands ring `i` to the backend: its size, addresses, `base`, interrupt and kick.
    fn program_ring(&mut self, i: usize, q: &QueueConfig, base: u16) -> Result<(), String> {
        let fail = |step: &str, e: vhost::Error| format!("{step}: {e}");
        let size = u64::from(q.size);
        let config = VringConfigData {
            queue_max_size: q.max_size,
            queue_size: q.size,
            flags: 0,
            desc_table_addr: self.host_address(q.desc, 16 * size)?,
            used_ring_addr: self.host_address(q.used, 6 + 8 * size)?,
            avail_ring_addr: self.host_address(q.avail, 6 + 2 * size)?,
            log_addr: None,
        };
        self.frontend
            .set_vring_num(i, q.size)
            .map_err(|e| fail("SET_VRING_NUM", e))?;
        self.frontend
            .set_vring_addr(i, &config)
            .map_err(|e| fail("SET_VRING_ADDR", e))?;
        self.frontend
            .set_vring_base(i, base)
            .map_err(|e| fail("SET_VRING_BASE", e))?;
        self.frontend
            .set_vring_call(i, &self.irq)
            .map_err(|e| fail("SET_VRING_CALL", e))?;
        self.frontend
            .set_vring_kick(i, &self.kicks[i])
            .map_err(|e| fail("SET_VRING_KICK", e))?;
        self.frontend
            .set_vring_enable(i, true)
            .map_err(|e| fail("SET_VRING_ENABLE", e))
    }

    fn start(&mut self, features: u64, queues: &[QueueConfig]) -> Result<(), String> {
        self.acked = Some(features);
        if self.down {
            // Started with the backend, when it is back.
            for (i, q) in queues.iter().enumerate().filter(|(_, q)| q.ready) {
                self.started.push(i);
                self.rings.push((i, *q));
            }
            return Ok(());
        }
        self.set_features_and_memory(features)?;
        for (i, q) in queues.iter().enumerate().filter(|(_, q)| q.ready) {
            self.start_ring(i, q, 0)?;
        }
        Ok(())
    }
}

impl VirtioDevice for VhostUserDevice {
    fn device_type(&self) -> u32 {
        self.kind.device_type
    }

    fn features(&self) -> u64 {
        self.identity.backend_features & (TRANSPORT_FEATURES | DEVICE_FEATURES)
    }

    fn queue_max_sizes(&self) -> Vec<u16> {
        vec![QUEUE_SIZE; self.identity.queues]
    }

    fn read_config(&mut self, offset: u64, data: &mut [u8]) {
        let start = offset as usize;
        match self.config.get(start..start + data.len()) {
            Some(src) => data.copy_from_slice(src),
            None => data.fill(0),
        }
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        let start = offset as usize;
        let Some(dst) = self.config.get_mut(start..start + data.len()) else {
            return;
        };
        dst.copy_from_slice(data);
        if !self.backend_config {
            return;
        }
        self.config_writes.insert(offset as u32, data.to_vec());
        if self.down {
            return;
        }
        if let Err(e) =
            self.frontend
                .set_config(offset as u32, VhostUserConfigFlags::WRITABLE, data)
        {
            tracing::warn!("{}: SET_CONFIG failed: {e}", self.name);
        }
    }

    fn activate(&mut self, features: u64, queues: &[QueueConfig]) -> Result<(), String> {
        self.start(features, queues)
            .map_err(|e| format!("vhost-user backend at {}: {e}", self.name))
    }

    fn shared_memory_region(&self, id: u8) -> Option<(u64, u64)> {
        let region = self.shmem.get(usize::from(id))?.as_ref()?;
        Some((region.guest_addr(), region.len()))
    }

    fn check_snapshot(&self) -> Result<(), String> {
        self.snapshot_refusal()
    }

    fn save_state(&mut self) -> Result<DeviceHandover, String> {
        self.save()
            .map_err(|e| format!("vhost-user backend at {}: {e}", self.name))
    }

    fn resume_after_save(&mut self) -> Result<(), String> {
        self.restart_stopped_rings()
            .map_err(|e| format!("vhost-user backend at {}: {e}", self.name))
    }

    fn restore_state(
        &mut self,
        features: u64,
        queues: &[QueueConfig],
        saved: &DeviceHandover,
    ) -> Result<(), String> {
        self.restore(features, queues, saved)
            .map_err(|e| format!("vhost-user backend at {}: {e}", self.name))
    }

    fn vhost_user(&mut self) -> Option<&mut VhostUserDevice> {
        Some(self)
    }

    fn notify_guest(&self) -> Result<(), String> {
        // A spurious interrupt is harmless (the driver scans its used rings); a missed one
        // (a vsock reset event, a completion) is not.
        self.irq
            .write(1)
            .map_err(|e| format!("vhost-user backend at {}: interrupt: {e}", self.name))
    }

    fn reset(&mut self) {
        self.rings.clear();
        self.acked = None;
        let started = std::mem::take(&mut self.started);
        if self.down {
            return;
        }
        for i in started {
            // GET_VRING_BASE stops the ring in the backend.
            if let Err(e) = self.frontend.get_vring_base(i) {
                tracing::warn!("{}: GET_VRING_BASE({i}) failed: {e}", self.name);
            }
        }
    }
}

impl AsRawFd for VhostUserDevice {
    fn as_raw_fd(&self) -> RawFd {
        self.frontend.as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rings_the_guest_places_outside_ram_never_reach_the_backend() {
        // Two adjacent regions and a hole, as guest RAM split around the 32-bit MMIO gap.
        let memory = GuestMemoryMmap::<()>::from_ranges(&[
            (GuestAddress(0), 0x10000),
            (GuestAddress(0x10000), 0x10000),
            (GuestAddress(0x100000), 0x10000),
        ])
        .unwrap();
        let host = |gpa| memory.get_host_address(GuestAddress(gpa)).unwrap() as u64;
        assert_eq!(ring_host_address(&memory, 0x1000, 4096), Ok(host(0x1000)));
        assert_eq!(
            ring_host_address(&memory, 0x100000, 0x10000),
            Ok(host(0x100000))
        );
        for (gpa, len) in [
            (0x20000, 16),      // in the hole
            (0x1fff0, 0x20),    // runs off RAM into the hole
            (0xfff0, 0x20),     // spans two regions (not contiguous on the host)
            (0x10f000, 0x2000), // past the end of RAM
            (0xd000_0000, 16),  // a virtio-mmio window
            (1 << 40, 16),      // a DAX window
            (u64::MAX - 8, 16), // the end address overflows
            (0x1000, u64::MAX), // so does an absurd length
        ] {
            let e = ring_host_address(&memory, gpa, len).unwrap_err();
            assert!(
                e.contains("guest RAM") || e.contains("overflows"),
                "{gpa:#x}: {e}"
            );
        }
    }

    #[test]
    fn shared_memory_sizes_that_cannot_be_placed_are_refused() {
        let gib = 1 << 30;
        assert_eq!(shmem_sizes(2, &[gib, 0, 5]), Ok(vec![gib, 0]));
        assert_eq!(shmem_sizes(0, &[gib]), Ok(vec![]));
        for (n, sizes) in [
            (1, &[u64::MAX][..]),
            (1, &[u64::MAX - 4095]),
            (1, &[MAX_SHMEM_SIZE + 4096]),
            (1, &[4097]),
            (9, &[4096; 9]),
            (u32::MAX, &[4096]),
        ] {
            assert!(shmem_sizes(n, sizes).is_err(), "{n} {sizes:x?}");
        }
        // Placement saturates instead of wrapping to a small span.
        assert_eq!(placed_size(1), SHMEM_ALIGN);
        assert_eq!(placed_size(u64::MAX - 4095), u64::MAX);
    }

    #[test]
    fn net_config_states_mac_link_up_one_pair_and_mtu() {
        let c = net_config([2, 0x73, 0x6d, 0, 0, 1]);
        assert_eq!(c.len(), DeviceKind::NET.config_size as usize);
        assert_eq!(c, [2, 0x73, 0x6d, 0, 0, 1, 1, 0, 1, 0, 0xdc, 0x05]);
    }

    #[test]
    fn fs_config_pads_the_tag_and_counts_request_queues() {
        let c = fs_config("workspace", 1);
        assert_eq!(c.len(), DeviceKind::FS.config_size as usize);
        assert_eq!(&c[..9], b"workspace");
        assert!(c[9..36].iter().all(|b| *b == 0));
        assert_eq!(&c[36..], &1u32.to_le_bytes());
        let full = "t".repeat(FS_TAG_MAX);
        assert_eq!(
            &fs_config(&full, 3)[..36],
            full.as_bytes(),
            "a 36-byte tag has no NUL"
        );
    }
}

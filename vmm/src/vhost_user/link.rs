//! One connection to a backend, negotiated up to the point where rings can start: owner,
//! features, protocol features, queue count, config space and shared memory sizes, all
//! under the setup deadline. A device makes one when it is created and another each time
//! its backend comes back after hanging up ([`super::reconnect`]).

use std::os::fd::AsRawFd;
use std::path::Path;
use std::sync::atomic::Ordering;

use vhost::vhost_user::message::{
    VhostUserConfigFlags, VhostUserHeaderFlag, VhostUserProtocolFeatures, VhostUserVirtioFeatures,
};
use vhost::vhost_user::{Frontend, VhostUserFrontend};
use vhost::VhostBackend;

use super::deadline::SetupDeadline;
use super::{
    fs_config, net_config, shmem_sizes, step_error, DeviceConfig, DeviceKind, VhostUserError,
    SETUP_TIMEOUT,
};
use crate::devices::virtio_mmio::VIRTIO_F_VERSION_1;

/// What the guest sees of a backend: a backend that comes back must show the same.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Identity {
    /// Feature bits the backend offers.
    pub backend_features: u64,
    /// Queues to use.
    pub queues: usize,
    /// The config space as the backend (or the tag) gives it.
    pub config: Vec<u8>,
    /// Sizes of the shared memory regions the backend asks for, by ID (0: none).
    pub shmem_sizes: Vec<u64>,
}

/// A negotiated connection, its setup deadline still running.
pub(super) struct Link {
    /// The connection.
    pub frontend: Frontend,
    /// Protocol features both sides agreed on.
    pub protocol_features: VhostUserProtocolFeatures,
    /// The device it serves.
    pub identity: Identity,
    /// Bounds the rest of setup until the device ends it.
    pub deadline: SetupDeadline,
}

impl Link {
    /// Connects to the backend at `path` and negotiates everything but the rings.
    pub fn negotiate(
        path: &Path,
        kind: DeviceKind,
        source: &DeviceConfig,
    ) -> Result<Link, VhostUserError> {
        let name = path.display().to_string();
        if !path.exists() {
            return Err(VhostUserError::NoSocket(name));
        }
        let mut frontend = Frontend::connect(path, kind.max_queues as u64)
            .map_err(|e| VhostUserError::Connect(name.clone(), e))?;
        // Bounded until the device ends setup: run-time requests (state transfer) may
        // legitimately take longer.
        let deadline = SetupDeadline::start(frontend.as_raw_fd(), SETUP_TIMEOUT).map_err(|e| {
            VhostUserError::Protocol(name.clone(), "setup watchdog", vhost::Error::IOError(e))
        })?;
        let fired = deadline.flag();
        let err = |step| {
            let name = name.clone();
            let fired = fired.clone();
            move |e| step_error(&name, step, fired.load(Ordering::SeqCst), e)
        };
        frontend.set_owner().map_err(err("SET_OWNER"))?;
        let backend_features = frontend.get_features().map_err(err("GET_FEATURES"))?;
        if backend_features & VIRTIO_F_VERSION_1 == 0 {
            return Err(VhostUserError::Unsupported(
                name,
                "does not offer VIRTIO_F_VERSION_1 (sm-vmm drives modern devices only)",
            ));
        }
        if backend_features & VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits() == 0 {
            return Err(VhostUserError::Unsupported(
                name,
                "does not offer VHOST_USER_F_PROTOCOL_FEATURES",
            ));
        }
        let offered = frontend
            .get_protocol_features()
            .map_err(err("GET_PROTOCOL_FEATURES"))?;
        let backend_config = *source == DeviceConfig::FromBackend;
        // DEVICE_STATE: the backend can hand over its state for a snapshot.
        let mut wanted = VhostUserProtocolFeatures::MQ
            | VhostUserProtocolFeatures::REPLY_ACK
            | VhostUserProtocolFeatures::DEVICE_STATE;
        if backend_config {
            wanted |= VhostUserProtocolFeatures::CONFIG;
        }
        // Shared memory regions need the backend-request channel for their map requests.
        let shmem = VhostUserProtocolFeatures::SHMEM | VhostUserProtocolFeatures::BACKEND_REQ;
        if offered.contains(shmem) {
            wanted |= shmem;
        }
        let protocol_features = offered & wanted;
        if backend_config && !protocol_features.contains(VhostUserProtocolFeatures::CONFIG) {
            return Err(VhostUserError::Unsupported(name, "does not offer VHOST_USER_PROTOCOL_F_CONFIG (needed for the device's config space)"));
        }
        frontend
            .set_protocol_features(protocol_features)
            .map_err(err("SET_PROTOCOL_FEATURES"))?;
        if protocol_features.contains(VhostUserProtocolFeatures::REPLY_ACK) {
            frontend.set_hdr_flags(VhostUserHeaderFlag::NEED_REPLY);
        }
        let queues = if protocol_features.contains(VhostUserProtocolFeatures::MQ) {
            (frontend.get_queue_num().map_err(err("GET_QUEUE_NUM"))? as usize)
                .clamp(1, kind.max_queues)
        } else {
            kind.fixed_queues
        };
        let config = match source {
            DeviceConfig::FsTag(tag) => fs_config(tag, queues.saturating_sub(1) as u32),
            DeviceConfig::NetMac(mac) => net_config(*mac),
            DeviceConfig::FromBackend => {
                let size = kind.config_size;
                let empty = vec![0u8; size as usize];
                frontend
                    .get_config(0, size, VhostUserConfigFlags::WRITABLE, &empty)
                    .map_err(err("GET_CONFIG"))?
                    .1
            }
        };
        let shmem_sizes = if protocol_features.contains(VhostUserProtocolFeatures::SHMEM) {
            let c = frontend
                .get_shmem_config()
                .map_err(err("GET_SHMEM_CONFIG"))?;
            let sizes = c.memory_sizes;
            shmem_sizes(c.nregions, &sizes)
                .map_err(|what| VhostUserError::BadShmemConfig(name.clone(), what))?
        } else {
            vec![]
        };
        Ok(Link {
            frontend,
            protocol_features,
            identity: Identity {
                backend_features,
                queues,
                config,
                shmem_sizes,
            },
            deadline,
        })
    }
}

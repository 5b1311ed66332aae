//! What the device tells the driver: virtio feature bits and the virtio-fs config space
//! (`struct virtio_fs_config`: a 36-byte tag and the number of request queues).

use vhost::vhost_user::message::VhostUserVirtioFeatures;
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_ring::{VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC};

/// Longest tag (`virtio_fs_config.tag`).
pub const TAG_MAX: usize = 36;
/// Queues: one high-priority queue (FORGET, INTERRUPT) and one request queue.
pub const NUM_QUEUES: usize = 2;
/// Largest queue the backend accepts.
pub const MAX_QUEUE_SIZE: u16 = 1024;
/// Length of the config space.
pub const CONFIG_LEN: usize = TAG_MAX + 4;

/// Errors in the device configuration.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    /// The tag is empty or longer than 36 bytes.
    #[error("--tag must be 1 to {TAG_MAX} bytes, got {0}")]
    TagLength(usize),
    /// The DAX window is not a positive multiple of 2 MiB, or too large.
    #[error("--dax-window-mib must be a multiple of 2 from 2 to {DAX_WINDOW_MAX_MIB}, got {0}")]
    DaxWindow(u64),
}

/// Largest DAX window, in MiB (64 GiB: far more than any guest maps at once, small enough
/// to fit any host's address space and a guest's physical address width).
pub const DAX_WINDOW_MAX_MIB: u64 = 64 << 10;

/// The device's shape, fixed for the life of the process.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DeviceConfig {
    tag: Option<Vec<u8>>,
    dax_window: Option<u64>,
}

impl DeviceConfig {
    /// A device announcing `tag` (or no tag: the frontend then brings its own).
    pub fn new(tag: Option<&str>) -> Result<DeviceConfig, ConfigError> {
        if let Some(t) = tag {
            if t.is_empty() || t.len() > TAG_MAX {
                return Err(ConfigError::TagLength(t.len()));
            }
        }
        Ok(DeviceConfig {
            tag: tag.map(|t| t.as_bytes().to_vec()),
            dax_window: None,
        })
    }

    /// The same device with a DAX window of `mib` MiB (0: none).
    pub fn with_dax_window(self, mib: u64) -> Result<DeviceConfig, ConfigError> {
        if mib == 0 {
            return Ok(DeviceConfig {
                dax_window: None,
                ..self
            });
        }
        if mib % 2 != 0 || mib > DAX_WINDOW_MAX_MIB {
            return Err(ConfigError::DaxWindow(mib));
        }
        Ok(DeviceConfig {
            dax_window: Some(mib << 20),
            ..self
        })
    }

    /// Size of the DAX window in bytes, if there is one.
    pub fn dax_window(&self) -> Option<u64> {
        self.dax_window
    }

    /// Whether there is a config space worth offering (a tag was given).
    pub fn has_tag(&self) -> bool {
        self.tag.is_some()
    }

    /// The virtio feature bits offered, including vhost-user's protocol bit.
    pub fn features(&self) -> u64 {
        let bits = [
            VIRTIO_F_VERSION_1,
            VIRTIO_RING_F_INDIRECT_DESC,
            VIRTIO_RING_F_EVENT_IDX,
        ];
        bits.iter().fold(0u64, |acc, bit| acc | (1 << bit))
            | VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits()
    }

    /// The config space, little-endian.
    pub fn to_bytes(&self) -> [u8; CONFIG_LEN] {
        let mut b = [0u8; CONFIG_LEN];
        if let Some(tag) = &self.tag {
            b[..tag.len()].copy_from_slice(tag);
        }
        b[TAG_MAX..].copy_from_slice(&((NUM_QUEUES - 1) as u32).to_le_bytes());
        b
    }

    /// `size` bytes of config space from `offset`, zero beyond its end.
    pub fn read(&self, offset: u32, size: u32) -> Vec<u8> {
        let bytes = self.to_bytes();
        let mut out = vec![0u8; (size as usize).min(4096)];
        let start = (offset as usize).min(CONFIG_LEN);
        let end = (offset as usize).saturating_add(out.len()).min(CONFIG_LEN);
        out[..end - start].copy_from_slice(&bytes[start..end]);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tag_and_queue_count() {
        let c = DeviceConfig::new(Some("work")).unwrap();
        let b = c.read(0, CONFIG_LEN as u32);
        assert_eq!(&b[..4], b"work");
        assert!(b[4..TAG_MAX].iter().all(|x| *x == 0));
        assert_eq!(u32::from_le_bytes(b[TAG_MAX..].try_into().unwrap()), 1);
        assert_eq!(c.read(TAG_MAX as u32, 8), vec![1, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(c.read(u32::MAX, 4), vec![0; 4]);
        assert_eq!(DeviceConfig::new(Some("")), Err(ConfigError::TagLength(0)));
        assert_eq!(
            DeviceConfig::new(Some(&"x".repeat(37))),
            Err(ConfigError::TagLength(37))
        );
        assert!(DeviceConfig::new(None).unwrap().to_bytes()[..TAG_MAX]
            .iter()
            .all(|x| *x == 0));
    }

    #[test]
    fn dax_window_is_whole_2_mib_granules() {
        let c = || DeviceConfig::new(None).unwrap();
        assert_eq!(c().with_dax_window(0).unwrap().dax_window(), None);
        assert_eq!(
            c().with_dax_window(1024).unwrap().dax_window(),
            Some(1 << 30)
        );
        assert_eq!(c().with_dax_window(3), Err(ConfigError::DaxWindow(3)));
        let too_big = DAX_WINDOW_MAX_MIB + 2;
        assert_eq!(
            c().with_dax_window(too_big),
            Err(ConfigError::DaxWindow(too_big))
        );
    }
}

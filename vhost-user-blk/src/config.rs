//! What the device tells the driver: virtio feature bits and the virtio-blk config space.
//!
//! The limits here are also the limits the request parser enforces, so a driver that
//! ignores them gets an error status rather than more work than advertised.

use vhost::vhost_user::message::VhostUserVirtioFeatures;
use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_F_BLK_SIZE, VIRTIO_BLK_F_DISCARD, VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_F_MQ,
    VIRTIO_BLK_F_RO, VIRTIO_BLK_F_SEG_MAX, VIRTIO_BLK_F_SIZE_MAX, VIRTIO_BLK_F_WRITE_ZEROES,
};
use virtio_bindings::virtio_config::{VIRTIO_F_IN_ORDER, VIRTIO_F_VERSION_1};
use virtio_bindings::virtio_ring::{VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC};

/// Bytes per virtio-blk sector; sector numbers in requests always count these.
pub const SECTOR_SIZE: u64 = 512;
/// Largest queue the backend accepts (QEMU's virtio-mmio offers the guest 1024 entries).
pub const MAX_QUEUE_SIZE: u16 = 1024;
/// Most data segments in one request (VIRTIO_BLK_F_SEG_MAX); fits a 128-entry ring.
pub const SEG_MAX: u32 = 126;
/// Largest single data segment (VIRTIO_BLK_F_SIZE_MAX).
pub const SIZE_MAX: u32 = 1 << 20;
/// Largest data payload of one read or write request.
pub const MAX_REQUEST_BYTES: u64 = SEG_MAX as u64 * SIZE_MAX as u64;
/// Largest range, in sectors, of one discard or write-zeroes segment (2 GiB).
pub const MAX_RANGE_SECTORS: u32 = 1 << 22;
/// Most ranges in one discard or write-zeroes request.
pub const MAX_RANGE_SEGMENTS: u32 = 32;
/// Discard granularity, in sectors (4 KiB, the host file system's usual block).
pub const DISCARD_ALIGNMENT_SECTORS: u32 = 8;
/// Logical block size reported to the guest.
pub const BLOCK_SIZE: u32 = 512;
/// Length of the config space this device defines (up to `write_zeroes_may_unmap` and padding).
pub const CONFIG_LEN: usize = 60;

/// The device's shape, fixed for the life of the process.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeviceConfig {
    /// Capacity in 512-byte sectors.
    pub capacity_sectors: u64,
    /// Whether the device is read-only (VIRTIO_BLK_F_RO).
    pub read_only: bool,
    /// Number of request queues (VIRTIO_BLK_F_MQ).
    pub num_queues: u16,
}

impl DeviceConfig {
    /// The virtio feature bits offered to the driver, including vhost-user's protocol bit.
    pub fn features(&self) -> u64 {
        let bits = [
            VIRTIO_F_VERSION_1,
            VIRTIO_RING_F_INDIRECT_DESC,
            VIRTIO_RING_F_EVENT_IDX,
            VIRTIO_BLK_F_SIZE_MAX,
            VIRTIO_BLK_F_SEG_MAX,
            VIRTIO_BLK_F_BLK_SIZE,
            VIRTIO_BLK_F_FLUSH,
            VIRTIO_BLK_F_DISCARD,
            VIRTIO_BLK_F_WRITE_ZEROES,
            VIRTIO_BLK_F_MQ,
            // Each queue's thread completes its requests in the order it took them, so a
            // frontend can replay a crashed backend's unfinished requests from the used
            // index (`process_available`).
            VIRTIO_F_IN_ORDER,
        ];
        let mut features = bits.iter().fold(0u64, |acc, bit| acc | (1 << bit));
        if self.read_only {
            features |= 1 << VIRTIO_BLK_F_RO;
        }
        features | VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits()
    }

    /// The config space (`struct virtio_blk_config`), little-endian.
    pub fn to_bytes(&self) -> [u8; CONFIG_LEN] {
        let mut b = [0u8; CONFIG_LEN];
        let mut put = |off: usize, v: &[u8]| b[off..off + v.len()].copy_from_slice(v);
        put(0, &self.capacity_sectors.to_le_bytes());
        put(8, &SIZE_MAX.to_le_bytes());
        put(12, &SEG_MAX.to_le_bytes());
        // 16..20: geometry, not offered.
        put(20, &BLOCK_SIZE.to_le_bytes());
        // 24..32: topology, not offered. 32: writeback, not offered.
        put(34, &self.num_queues.to_le_bytes());
        put(36, &MAX_RANGE_SECTORS.to_le_bytes());
        put(40, &MAX_RANGE_SEGMENTS.to_le_bytes());
        put(44, &DISCARD_ALIGNMENT_SECTORS.to_le_bytes());
        put(48, &MAX_RANGE_SECTORS.to_le_bytes());
        put(52, &MAX_RANGE_SEGMENTS.to_le_bytes());
        put(56, &[1]); // write_zeroes_may_unmap
        b
    }

    /// `size` bytes of config space from `offset`, zero beyond what the device defines (the
    /// answer to VHOST_USER_GET_CONFIG, which must be exactly as long as asked).
    pub fn read(&self, offset: u32, size: u32) -> Vec<u8> {
        let bytes = self.to_bytes();
        let mut out = vec![0u8; size as usize];
        let start = (offset as usize).min(CONFIG_LEN);
        let end = (offset as usize)
            .saturating_add(size as usize)
            .min(CONFIG_LEN);
        out[..end - start].copy_from_slice(&bytes[start..end]);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(read_only: bool) -> DeviceConfig {
        DeviceConfig {
            capacity_sectors: 2048,
            read_only,
            num_queues: 2,
        }
    }

    #[test]
    fn layout_matches_virtio_blk_config() {
        let b = cfg(false).to_bytes();
        assert_eq!(u64::from_le_bytes(b[0..8].try_into().unwrap()), 2048);
        assert_eq!(u32::from_le_bytes(b[12..16].try_into().unwrap()), SEG_MAX);
        assert_eq!(u32::from_le_bytes(b[20..24].try_into().unwrap()), 512);
        assert_eq!(u16::from_le_bytes(b[34..36].try_into().unwrap()), 2);
        assert_eq!(b[56], 1);
    }

    #[test]
    fn read_pads_and_clips() {
        let c = cfg(false);
        assert_eq!(c.read(0, 8), 2048u64.to_le_bytes());
        let tail = c.read(56, 16);
        assert_eq!(tail.len(), 16);
        assert_eq!(tail[0], 1);
        assert!(tail[1..].iter().all(|b| *b == 0));
        assert_eq!(c.read(1000, 4), vec![0; 4]);
        assert_eq!(c.read(u32::MAX, 4), vec![0; 4]);
    }

    #[test]
    fn read_only_sets_ro_bit() {
        assert_eq!(cfg(false).features() & (1 << VIRTIO_BLK_F_RO), 0);
        assert_ne!(cfg(true).features() & (1 << VIRTIO_BLK_F_RO), 0);
        assert_ne!(cfg(true).features() & (1 << VIRTIO_F_VERSION_1), 0);
    }
}

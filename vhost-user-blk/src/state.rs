//! What sm-vhost-user-blk hands over for a snapshot (vhost-user SET_DEVICE_STATE_FD).
//!
//! The data lives in the image file, so the state is small: a versioned JSON document
//!
//! ```json
//! {"format": "sm-vhost-user-blk", "version": 1, "capacity_bytes": 67108864,
//!  "read_only": false, "acked_features": 5100273664, "device_id": "..."}
//! ```
//!
//! SAVE first flushes the image (fsync), so what the guest wrote is durable before the
//! snapshot is taken. LOAD refuses an image of another size or another read-only mode (the
//! guest's view of the disk would change under it) and features this device does not offer.
//! The device ID (VIRTIO_BLK_T_GET_ID) is informational: it follows the image's path.
//! Rings themselves (their indices) are the frontend's part, not this document's.

use serde::{Deserialize, Serialize};

use crate::config::DeviceConfig;
use crate::image::Image;

/// The `format` field of every state document.
pub const FORMAT: &str = "sm-vhost-user-blk";
/// The state version this backend writes and reads.
pub const VERSION: u32 = 1;

/// The device state carried across a snapshot.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BlkState {
    /// Always [`FORMAT`].
    pub format: String,
    /// Always [`VERSION`].
    pub version: u32,
    /// The image's size in bytes.
    pub capacity_bytes: u64,
    /// Whether the device was read-only.
    pub read_only: bool,
    /// The virtio features the driver acknowledged (0 before SET_FEATURES).
    pub acked_features: u64,
    /// The device ID the guest was given.
    pub device_id: String,
}

/// Why a state document was refused.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// Not a JSON state document of this backend.
    #[error("not an sm-vhost-user-blk state document: {0}")]
    Parse(#[from] serde_json::Error),
    /// Another backend's document, or a version this one does not know.
    #[error(
        "state is {format:?} version {version}, this backend reads {FORMAT:?} version {VERSION}"
    )]
    Version {
        /// The document's format.
        format: String,
        /// The document's version.
        version: u32,
    },
    /// The image is not the size the guest saw.
    #[error("image is {actual} bytes but the state was saved with a {saved}-byte image")]
    Size {
        /// Size in the state.
        saved: u64,
        /// Size of the image now.
        actual: u64,
    },
    /// The read-only mode differs.
    #[error("state was saved with read_only={saved}, this backend has read_only={actual}")]
    ReadOnly {
        /// Mode in the state.
        saved: bool,
        /// Mode now.
        actual: bool,
    },
    /// The driver acknowledged features this device does not offer.
    #[error(
        "state has acknowledged features {saved:#x} that this device does not offer ({offered:#x})"
    )]
    Features {
        /// Features in the state.
        saved: u64,
        /// Features offered now.
        offered: u64,
    },
    /// The image could not be flushed before SAVE.
    #[error("cannot flush the image: {0}")]
    Flush(std::io::Error),
}

impl BlkState {
    /// The state of a device serving `image` as `config` with `acked_features`.
    pub fn of(image: &Image, config: &DeviceConfig, acked_features: u64) -> BlkState {
        BlkState {
            format: FORMAT.to_owned(),
            version: VERSION,
            capacity_bytes: image.capacity(),
            read_only: config.read_only,
            acked_features,
            device_id: String::from_utf8_lossy(image.id())
                .trim_end_matches('\0')
                .to_owned(),
        }
    }

    /// SAVE: flushes `image`, then serializes its state.
    pub fn save(image: &Image, config: &DeviceConfig, acked: u64) -> Result<Vec<u8>, StateError> {
        image.flush().map_err(StateError::Flush)?;
        Ok(serde_json::to_vec(&BlkState::of(image, config, acked))?)
    }

    /// LOAD: parses `bytes` and checks them against this device (`image` as `config`).
    pub fn load(
        bytes: &[u8],
        image: &Image,
        config: &DeviceConfig,
    ) -> Result<BlkState, StateError> {
        let state: BlkState = serde_json::from_slice(bytes)?;
        if state.format != FORMAT || state.version != VERSION {
            return Err(StateError::Version {
                format: state.format,
                version: state.version,
            });
        }
        if state.capacity_bytes != image.capacity() {
            return Err(StateError::Size {
                saved: state.capacity_bytes,
                actual: image.capacity(),
            });
        }
        if state.read_only != config.read_only {
            return Err(StateError::ReadOnly {
                saved: state.read_only,
                actual: config.read_only,
            });
        }
        let offered = config.features();
        if state.acked_features & !offered != 0 {
            return Err(StateError::Features {
                saved: state.acked_features,
                offered,
            });
        }
        Ok(state)
    }
}

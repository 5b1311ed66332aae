//! What sm-vhost-user-blk hands over for a snapshot (vhost-user SET_DEVICE_STATE_FD).
//!
//! The data lives in the image file, so the state is small: a versioned JSON document
//! (sm-vhost-user-common's [`document`])
//!
//! ```json
//! {"format": "sm-vhost-user-blk", "version": 1, "capacity_bytes": 67108864,
//!  "read_only": false, "acked_features": 5100273664, "device_id": "..."}
//! ```
//!
//! SAVE first flushes the image (fsync), so what the guest wrote is durable before the
//! snapshot is taken. LOAD refuses another backend's document, an image of another size or
//! another read-only mode (the guest's view of the disk would change under it) and features
//! this device does not offer. The device ID (VIRTIO_BLK_T_GET_ID) is informational: it
//! follows the image's path. Rings themselves (their indices) are the frontend's part, not
//! this document's.

use serde::{Deserialize, Serialize};
use sm_vhost_user_common::document::{self, DeviceState, DocumentError};

use crate::config::DeviceConfig;
use crate::image::Image;

/// The device state carried across a snapshot (the document's body).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BlkState {
    /// The image's size in bytes.
    pub capacity_bytes: u64,
    /// Whether the device was read-only.
    pub read_only: bool,
    /// The virtio features the driver acknowledged (0 before SET_FEATURES).
    pub acked_features: u64,
    /// The device ID the guest was given.
    pub device_id: String,
}

impl DeviceState for BlkState {
    const FORMAT: &'static str = "sm-vhost-user-blk";
    const VERSION: u32 = 1;
}

/// Why a state document was refused.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// Not this backend's document, format or version.
    #[error(transparent)]
    Document(#[from] DocumentError),
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
        Ok(document::save(&BlkState::of(image, config, acked))?)
    }

    /// LOAD: parses `bytes` and checks them against this device (`image` as `config`).
    pub fn load(
        bytes: &[u8],
        image: &Image,
        config: &DeviceConfig,
    ) -> Result<BlkState, StateError> {
        let state: BlkState = document::load(bytes)?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::ImageOptions;

    /// A document written before the envelope moved to sm-vhost-user-common.
    const SAVED: &[u8] = br#"{"format":"sm-vhost-user-blk","version":1,"capacity_bytes":1048576,"read_only":false,"acked_features":5368709120,"device_id":"smfe00-9ca062"}"#;

    /// A 1 MiB image in `dir` and its device shape.
    fn device(dir: &std::path::Path, read_only: bool) -> (Image, DeviceConfig) {
        let image = Image::open(&ImageOptions {
            path: dir.join("disk.img"),
            size_mib: Some(1),
            default_size_mib: 1,
            read_only: false,
        })
        .unwrap();
        let config = DeviceConfig {
            capacity_sectors: 2048,
            read_only,
            num_queues: 1,
        };
        (image, config)
    }

    /// The current format loads; SAVE writes the same fields in the same order.
    #[test]
    fn loads_and_writes_the_current_format() {
        let dir = tempfile::tempdir().unwrap();
        let (image, config) = device(dir.path(), false);
        let state = BlkState::load(SAVED, &image, &config).unwrap();
        assert_eq!(
            state,
            BlkState {
                capacity_bytes: 1 << 20,
                read_only: false,
                acked_features: 5368709120,
                device_id: "smfe00-9ca062".into(),
            }
        );
        // The device ID follows the image's path, here a temporary one.
        let id = BlkState::of(&image, &config, 0).device_id;
        let expected = std::str::from_utf8(SAVED)
            .unwrap()
            .replace("smfe00-9ca062", &id);
        let saved = BlkState::save(&image, &config, 5368709120).unwrap();
        assert_eq!(std::str::from_utf8(&saved).unwrap(), expected);
    }

    /// Another backend's document, an unknown field, another size or mode are refused.
    #[test]
    fn refusals() {
        let dir = tempfile::tempdir().unwrap();
        let (image, config) = device(dir.path(), false);
        let refuse = |bytes: &[u8], config: &DeviceConfig| {
            BlkState::load(bytes, &image, config)
                .unwrap_err()
                .to_string()
        };
        let net = br#"{"format":"sm-vhost-user-net","version":1,"acked_features":5100273696}"#;
        assert_eq!(
            refuse(net, &config),
            r#"state is "sm-vhost-user-net" version 1, this backend reads "sm-vhost-user-blk" version 1"#
        );
        let text = std::str::from_utf8(SAVED).unwrap();
        let extra = text.replace(r#""read_only""#, r#""discard":true,"read_only""#);
        let e = refuse(extra.as_bytes(), &config);
        assert!(
            e.starts_with("not an sm-vhost-user-blk state document: unknown field `discard`"),
            "{e}"
        );
        let bigger = text.replace("1048576", "2097152");
        assert_eq!(
            refuse(bigger.as_bytes(), &config),
            "image is 1048576 bytes but the state was saved with a 2097152-byte image"
        );
        let ro = DeviceConfig {
            read_only: true,
            ..config
        };
        assert_eq!(
            refuse(SAVED, &ro),
            "state was saved with read_only=false, this backend has read_only=true"
        );
    }
}

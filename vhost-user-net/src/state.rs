//! What sm-vhost-user-net hands over for a snapshot (vhost-user SET_DEVICE_STATE_FD).
//!
//! The device has no state beyond its rings (the frontend's part) and passt's connections
//! (which a new backend cannot take over), so the document only pins what the driver
//! negotiated:
//!
//! ```json
//! {"format": "sm-vhost-user-net", "version": 1, "acked_features": 4899946528}
//! ```
//!
//! LOAD refuses another backend's document and features this device does not offer. Frames
//! in flight between passt and the guest at the snapshot are lost, as on a real link.

use serde::{Deserialize, Serialize};

/// The `format` field of every state document.
pub const FORMAT: &str = "sm-vhost-user-net";
/// The state version this backend writes and reads.
pub const VERSION: u32 = 1;

/// The device state carried across a snapshot.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetState {
    /// Always [`FORMAT`].
    pub format: String,
    /// Always [`VERSION`].
    pub version: u32,
    /// The virtio features the driver acknowledged (0 before SET_FEATURES).
    pub acked_features: u64,
}

/// Why a state document was refused.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// Not a JSON state document.
    #[error("not an sm-vhost-user-net state document: {0}")]
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
}

impl NetState {
    /// SAVE: the document for `acked_features`.
    pub fn save(acked_features: u64) -> Result<Vec<u8>, StateError> {
        Ok(serde_json::to_vec(&NetState {
            format: FORMAT.to_owned(),
            version: VERSION,
            acked_features,
        })?)
    }

    /// LOAD: parses `bytes` and checks them against the `offered` features.
    pub fn load(bytes: &[u8], offered: u64) -> Result<NetState, StateError> {
        let state: NetState = serde_json::from_slice(bytes)?;
        if state.format != FORMAT || state.version != VERSION {
            return Err(StateError::Version {
                format: state.format,
                version: state.version,
            });
        }
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

    #[test]
    fn round_trip_and_refusals() {
        let bytes = NetState::save(0b101).unwrap();
        assert_eq!(NetState::load(&bytes, 0b111).unwrap().acked_features, 0b101);
        assert!(matches!(
            NetState::load(&bytes, 0b011),
            Err(StateError::Features { .. })
        ));
        let other = br#"{"format":"sm-vhost-user-blk","version":1,"acked_features":0}"#;
        assert!(matches!(
            NetState::load(other, 0),
            Err(StateError::Version { .. })
        ));
        assert!(matches!(NetState::load(b"{", 0), Err(StateError::Parse(_))));
    }
}

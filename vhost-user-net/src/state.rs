//! What sm-vhost-user-net hands over for a snapshot (vhost-user SET_DEVICE_STATE_FD).
//!
//! The device has no state beyond its rings (the frontend's part) and passt's connections
//! (which a new backend cannot take over), so the document (sm-vhost-user-common's
//! [`document`]) only pins what the driver negotiated:
//!
//! ```json
//! {"format": "sm-vhost-user-net", "version": 1, "acked_features": 4899946528}
//! ```
//!
//! LOAD refuses another backend's document and features this device does not offer. Frames
//! in flight between passt and the guest at the snapshot are lost, as on a real link.

use serde::{Deserialize, Serialize};
use sm_vhost_user_common::document::{self, DeviceState, DocumentError};

/// The device state carried across a snapshot (the document's body).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetState {
    /// The virtio features the driver acknowledged (0 before SET_FEATURES).
    pub acked_features: u64,
}

impl DeviceState for NetState {
    const FORMAT: &'static str = "sm-vhost-user-net";
    const VERSION: u32 = 1;
}

/// Why a state document was refused.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// Not this backend's document, format or version.
    #[error(transparent)]
    Document(#[from] DocumentError),
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
        Ok(document::save(&NetState { acked_features })?)
    }

    /// LOAD: parses `bytes` and checks them against the `offered` features.
    pub fn load(bytes: &[u8], offered: u64) -> Result<NetState, StateError> {
        let state: NetState = document::load(bytes)?;
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

    /// A document written before the envelope moved to sm-vhost-user-common.
    const SAVED: &[u8] =
        br#"{"format":"sm-vhost-user-net","version":1,"acked_features":5100273696}"#;

    #[test]
    fn round_trip_and_refusals() {
        let bytes = NetState::save(0b101).unwrap();
        assert_eq!(NetState::load(&bytes, 0b111).unwrap().acked_features, 0b101);
        assert!(matches!(
            NetState::load(&bytes, 0b011),
            Err(StateError::Features { .. })
        ));
        assert!(matches!(
            NetState::load(b"{", 0),
            Err(StateError::Document(DocumentError::Parse { .. }))
        ));
    }

    /// The same bytes as before, both ways; an unknown field is still refused.
    #[test]
    fn loads_and_writes_the_current_format() {
        let state = NetState::load(SAVED, u64::MAX).unwrap();
        assert_eq!(state.acked_features, 5100273696);
        assert_eq!(NetState::save(5100273696).unwrap(), SAVED);
        let extra = br#"{"format":"sm-vhost-user-net","version":1,"acked_features":0,"mtu":1500}"#;
        let e = NetState::load(extra, 0).unwrap_err().to_string();
        assert!(
            e.starts_with("not an sm-vhost-user-net state document: unknown field `mtu`"),
            "{e}"
        );
    }

    /// Another backend's document is refused as such, naming both sides.
    #[test]
    fn refuses_another_backends_format() {
        let other = br#"{"format":"sm-vhost-user-blk","version":1,"capacity_bytes":1048576,"read_only":false,"acked_features":0,"device_id":""}"#;
        assert_eq!(
            NetState::load(other, 0).unwrap_err().to_string(),
            r#"state is "sm-vhost-user-blk" version 1, this backend reads "sm-vhost-user-net" version 1"#
        );
    }
}

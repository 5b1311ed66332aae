//! The versioned JSON document a backend hands over for a snapshot: one envelope for every
//! backend, with the backend's own fields (its body) beside `format` and `version`:
//!
//! ```json
//! {"format": "sm-vhost-user-net", "version": 1, "acked_features": 4899946528}
//! ```
//!
//! [`save`] writes the envelope around a body; [`load`] refuses a document of another
//! backend or version (naming both sides) before it reads the body, so the body type's
//! `#[serde(deny_unknown_fields)]` still refuses any field it does not know. What the body
//! must match on the running device (features, sizes, tables) stays the backend's check.

use std::ops::{Deref, DerefMut};

use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::{Map, Value};

/// A backend's state body: a struct whose fields sit beside `format` and `version` (it must
/// have neither field itself).
pub trait DeviceState: Serialize + DeserializeOwned {
    /// The `format` field: the backend's name, e.g. `sm-vhost-user-net`.
    const FORMAT: &'static str;
    /// The state version this backend writes and reads.
    const VERSION: u32;
}

/// Why a state document was not written or was refused; each is one line naming the cause.
#[derive(Debug, thiserror::Error)]
pub enum DocumentError {
    /// Not JSON, no envelope, or a body this backend cannot read.
    #[error("not an {expected} state document: {source}")]
    Parse {
        /// The format this backend reads.
        expected: &'static str,
        /// What did not parse.
        source: serde_json::Error,
    },
    /// Another backend's document, or a version this one does not know.
    #[error(
        "state is {format:?} version {version}, this backend reads {expected:?} version {expected_version}"
    )]
    Version {
        /// The document's format.
        format: String,
        /// The document's version.
        version: u32,
        /// The format this backend reads.
        expected: &'static str,
        /// The version this backend reads.
        expected_version: u32,
    },
    /// The body could not be written as JSON fields (it is not a struct).
    #[error("cannot write the {format} state document: {source}")]
    Write {
        /// The format being written.
        format: &'static str,
        /// Why not.
        source: serde_json::Error,
    },
}

/// A document held as a value: `format` and `version` as they are (a test may change them,
/// [`Document::check`] refuses them then) and the body, reachable through `Deref`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Document<T> {
    /// The document's format.
    pub format: String,
    /// The document's version.
    pub version: u32,
    /// The backend's fields.
    pub body: T,
}

impl<T: DeviceState> Document<T> {
    /// `body` in this backend's envelope.
    pub fn new(body: T) -> Document<T> {
        Document {
            format: T::FORMAT.to_owned(),
            version: T::VERSION,
            body,
        }
    }

    /// Whether the envelope is this backend's format and version.
    pub fn check(&self) -> Result<(), DocumentError> {
        check::<T>(self.format.clone(), self.version)
    }
}

impl<T> Deref for Document<T> {
    type Target = T;

    fn deref(&self) -> &T {
        &self.body
    }
}

impl<T> DerefMut for Document<T> {
    fn deref_mut(&mut self) -> &mut T {
        &mut self.body
    }
}

/// The envelope as written: `format`, `version`, then the body's fields in their order.
#[derive(Serialize)]
struct Envelope<'a, T> {
    format: &'static str,
    version: u32,
    #[serde(flatten)]
    body: &'a T,
}

/// The envelope as read.
#[derive(serde::Deserialize)]
struct Header {
    format: String,
    version: u32,
}

/// Refuses an envelope other than `T`'s format and version.
fn check<T: DeviceState>(format: String, version: u32) -> Result<(), DocumentError> {
    if format != T::FORMAT || version != T::VERSION {
        return Err(DocumentError::Version {
            format,
            version,
            expected: T::FORMAT,
            expected_version: T::VERSION,
        });
    }
    Ok(())
}

/// SAVE: `body` as a document of its backend's format and version.
pub fn save<T: DeviceState>(body: &T) -> Result<Vec<u8>, DocumentError> {
    serde_json::to_vec(&Envelope {
        format: T::FORMAT,
        version: T::VERSION,
        body,
    })
    .map_err(|source| DocumentError::Write {
        format: T::FORMAT,
        source,
    })
}

/// LOAD: parses `bytes` as a document of `T`'s format and version and returns its body.
/// The envelope is checked before the body is read, so another backend's document is
/// refused as such rather than for its fields.
pub fn load<T: DeviceState>(bytes: &[u8]) -> Result<T, DocumentError> {
    let parse_err = |source| DocumentError::Parse {
        expected: T::FORMAT,
        source,
    };
    let mut fields: Map<String, Value> = serde_json::from_slice(bytes).map_err(parse_err)?;
    let mut envelope = Map::new();
    for key in ["format", "version"] {
        if let Some(value) = fields.remove(key) {
            envelope.insert(key.to_owned(), value);
        }
    }
    let header: Header = serde_json::from_value(Value::Object(envelope)).map_err(parse_err)?;
    check::<T>(header.format, header.version)?;
    serde_json::from_value(Value::Object(fields)).map_err(parse_err)
}

#[cfg(test)]
mod tests {
    use serde::{Deserialize, Serialize};

    use super::*;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Net {
        acked_features: u64,
        note: Option<String>,
    }

    impl DeviceState for Net {
        const FORMAT: &'static str = "sm-test-net";
        const VERSION: u32 = 2;
    }

    #[derive(Debug, Serialize, Deserialize)]
    struct NotAStruct(u64);

    impl DeviceState for NotAStruct {
        const FORMAT: &'static str = "sm-test-bad";
        const VERSION: u32 = 1;
    }

    /// The envelope comes first, then the body's fields in order; LOAD gives the body back.
    #[test]
    fn save_writes_the_envelope_and_load_reads_it_back() {
        let net = Net {
            acked_features: 5,
            note: None,
        };
        let bytes = save(&net).unwrap();
        assert_eq!(
            bytes,
            br#"{"format":"sm-test-net","version":2,"acked_features":5,"note":null}"#
        );
        assert_eq!(load::<Net>(&bytes).unwrap(), net);
        let doc = Document::new(net);
        assert_eq!((doc.format.as_str(), doc.version), ("sm-test-net", 2));
        assert_eq!(doc.acked_features, 5, "the body through Deref");
        doc.check().unwrap();
    }

    /// Each refusal is one line naming the cause; the envelope before the body's fields.
    #[test]
    fn load_refuses_other_formats_versions_fields_and_garbage() {
        let refuse = |json: &str| load::<Net>(json.as_bytes()).unwrap_err().to_string();
        assert_eq!(
            refuse(r#"{"format":"sm-test-blk","version":1,"capacity_bytes":0}"#),
            r#"state is "sm-test-blk" version 1, this backend reads "sm-test-net" version 2"#
        );
        assert_eq!(
            refuse(r#"{"format":"sm-test-net","version":1,"acked_features":0,"note":null}"#),
            r#"state is "sm-test-net" version 1, this backend reads "sm-test-net" version 2"#
        );
        let e =
            refuse(r#"{"format":"sm-test-net","version":2,"acked_features":0,"note":null,"x":1}"#);
        assert!(
            e.starts_with("not an sm-test-net state document: unknown field `x`"),
            "{e}"
        );
        let e = refuse(r#"{"version":2,"acked_features":0,"note":null}"#);
        assert!(e.contains("missing field `format`"), "{e}");
        let e = refuse(r#"{"format":"sm-test-net","version":"2"}"#);
        assert!(e.starts_with("not an sm-test-net state document: "), "{e}");
        assert!(refuse("[1, 2").starts_with("not an sm-test-net state document: "));
        let mut doc = Document::new(Net {
            acked_features: 0,
            note: None,
        });
        doc.version = 3;
        assert!(matches!(
            doc.check(),
            Err(DocumentError::Version { version: 3, .. })
        ));
        let e = save(&NotAStruct(1)).unwrap_err().to_string();
        assert!(
            e.starts_with("cannot write the sm-test-bad state document: "),
            "{e}"
        );
    }
}

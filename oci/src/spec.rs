//! The JSON documents of OCI and Docker v2 images: index, manifest, config, and the run
//! configuration (Entrypoint, Cmd, Env, WorkingDir, User) the runner needs.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use crate::digest::Digest;
use crate::platform::Platform;

/// OCI image index media type.
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
/// OCI image manifest media type.
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// Docker manifest list media type.
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
/// Docker v2 schema 2 manifest media type.
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
/// Docker image config media type.
pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
/// Docker uncompressed layer media type.
pub const DOCKER_LAYER_TAR: &str = "application/vnd.docker.image.rootfs.diff.tar";
/// Annotation naming a manifest's tag inside an OCI layout.
pub const REF_NAME: &str = "org.opencontainers.image.ref.name";
/// Largest manifest or index accepted (bytes).
pub const MAX_MANIFEST: u64 = 4 << 20;
/// Largest image config accepted (bytes).
pub const MAX_CONFIG: u64 = 16 << 20;

/// Errors from decoding image documents.
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    /// Not valid JSON for the expected document.
    #[error("malformed {what}: {source}")]
    Json {
        /// Which document.
        what: &'static str,
        /// The decoder's complaint.
        source: serde_json::Error,
    },
    /// A media type sm does not handle.
    #[error("unsupported manifest media type {0:?}")]
    MediaType(String),
}

/// A content descriptor.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    /// Media type of the referenced content.
    pub media_type: String,
    /// Digest of the referenced content.
    pub digest: Digest,
    /// Size in bytes of the referenced content.
    pub size: u64,
    /// Platform of an index entry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<Platform>,
    /// Annotations (the tag of a layout entry lives here).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<HashMap<String, String>>,
}

/// An image index or Docker manifest list.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Index {
    /// Always 2.
    pub schema_version: u32,
    /// Media type, when present.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    /// The entries.
    pub manifests: Vec<Descriptor>,
}

/// An image manifest (OCI or Docker v2 schema 2).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Manifest {
    /// Always 2.
    pub schema_version: u32,
    /// Media type, when present.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    /// The image config blob.
    pub config: Descriptor,
    /// The layers, lowest first.
    pub layers: Vec<Descriptor>,
}

/// What a manifest-typed document turned out to be.
#[derive(Debug)]
pub enum AnyManifest {
    /// An index: pick a platform and follow it.
    Index(Index),
    /// An image manifest.
    Image(Manifest),
}

impl AnyManifest {
    /// Decodes a manifest or index, using `media_type` (e.g. a Content-Type header) when known.
    pub fn parse(bytes: &[u8], media_type: Option<&str>) -> Result<AnyManifest, SpecError> {
        #[derive(Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct Probe {
            media_type: Option<String>,
            manifests: Option<serde_json::Value>,
            schema_version: Option<u32>,
        }
        let json = |what, e| SpecError::Json { what, source: e };
        let probe: Probe = serde_json::from_slice(bytes).map_err(|e| json("manifest", e))?;
        let mt = probe.media_type.as_deref().or(media_type);
        if probe.schema_version == Some(1) {
            return Err(SpecError::MediaType(
                "application/vnd.docker.distribution.manifest.v1+json (schema 1)".into(),
            ));
        }
        match mt {
            Some(OCI_INDEX | DOCKER_LIST) => {}
            Some(OCI_MANIFEST | DOCKER_MANIFEST) => {}
            None => {}
            Some(other) => return Err(SpecError::MediaType(other.to_string())),
        }
        if matches!(mt, Some(OCI_INDEX | DOCKER_LIST)) || probe.manifests.is_some() {
            Ok(AnyManifest::Index(
                serde_json::from_slice(bytes).map_err(|e| json("image index", e))?,
            ))
        } else {
            Ok(AnyManifest::Image(
                serde_json::from_slice(bytes).map_err(|e| json("image manifest", e))?,
            ))
        }
    }
}

/// The image config blob (only the parts sm uses).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct ImageConfig {
    /// CPU architecture.
    #[serde(default)]
    pub architecture: String,
    /// Operating system.
    #[serde(default)]
    pub os: String,
    /// CPU variant (`v8`), if any.
    #[serde(default)]
    pub variant: Option<String>,
    /// How to run the image.
    #[serde(default)]
    pub config: Option<RunConfig>,
    /// Uncompressed layer digests.
    #[serde(default)]
    pub rootfs: Option<RootFs>,
}

impl ImageConfig {
    /// Decodes a config blob.
    pub fn parse(bytes: &[u8]) -> Result<ImageConfig, SpecError> {
        serde_json::from_slice(bytes).map_err(|e| SpecError::Json {
            what: "image config",
            source: e,
        })
    }
}

/// The `rootfs` section of an image config.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct RootFs {
    /// Digests of the uncompressed layer tars, lowest first.
    #[serde(default)]
    pub diff_ids: Vec<Digest>,
}

/// How the image wants to be run.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct RunConfig {
    /// Program and leading arguments.
    #[serde(default)]
    pub entrypoint: Option<Vec<String>>,
    /// Default arguments (or the command, without an entrypoint).
    #[serde(default)]
    pub cmd: Option<Vec<String>>,
    /// `KEY=value` environment.
    #[serde(default)]
    pub env: Option<Vec<String>>,
    /// Working directory.
    #[serde(default)]
    pub working_dir: Option<String>,
    /// `user[:group]`, by name or number.
    #[serde(default)]
    pub user: Option<String>,
}

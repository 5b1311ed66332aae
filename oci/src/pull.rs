//! `pull`: brings any [`ImageRef`] into the cache and records it in the refs index.

use crate::cache::{Cache, CacheError};
use crate::digest::Digest;
use crate::local::{self, LocalError};
use crate::platform::Platform;
use crate::progress::Progress;
use crate::reference::ImageRef;
use crate::refs::ImageRecord;
use crate::registry::{self, RegistryError};
use crate::spec::{ImageConfig, Manifest, SpecError, MAX_CONFIG};

/// Errors from a pull.
#[derive(Debug, thiserror::Error)]
pub enum PullError {
    /// Pulling from a registry failed.
    #[error(transparent)]
    Registry(#[from] RegistryError),
    /// Importing a local layout or archive failed.
    #[error(transparent)]
    Local(#[from] LocalError),
    /// The cache failed.
    #[error(transparent)]
    Cache(#[from] CacheError),
    /// The async runtime could not start.
    #[error("cannot start async runtime: {0}")]
    Runtime(std::io::Error),
}

/// How to pull.
#[derive(Clone, Debug, Default)]
pub struct PullOptions {
    /// Platform to pick from an image index (default linux/amd64).
    pub platform: Platform,
    /// Allow plain HTTP to a non-loopback registry.
    pub insecure: bool,
}

/// Pulls or imports `image` into `cache`, verifying every blob, and records it under its
/// reference. Blobs already in the cache are not fetched again; partial downloads resume.
pub fn pull(
    cache: &Cache,
    image: &ImageRef,
    opts: &PullOptions,
    progress: &Progress,
) -> Result<ImageRecord, PullError> {
    let _lock = cache.lock(false)?;
    let mut rec = match image {
        ImageRef::Registry(r) => {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(PullError::Runtime)?;
            rt.block_on(registry::pull(cache, r, opts, progress))?
        }
        ImageRef::OciLayout { path, tag } => {
            local::import_layout(cache, path, tag.as_deref(), &opts.platform)?
        }
        ImageRef::OciArchive(path) => local::import_oci_archive(cache, path, &opts.platform)?,
        ImageRef::DockerArchive(path) => local::import_docker_archive(cache, path)?,
    };
    rec.reference = image.key();
    cache.put_record(&rec)?;
    Ok(rec)
}

/// Why a pulled image could not be recorded.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    /// A blob could not be read back from the cache.
    #[error(transparent)]
    Cache(#[from] CacheError),
    /// The image config is malformed.
    #[error(transparent)]
    Spec(#[from] SpecError),
}

/// Builds the record for a manifest whose blobs are all in the cache.
pub fn record_for(
    cache: &Cache,
    reference: String,
    index: Option<Digest>,
    manifest_digest: Digest,
    m: &Manifest,
) -> Result<ImageRecord, RecordError> {
    let config = ImageConfig::parse(&cache.read_blob(&m.config.digest, MAX_CONFIG)?)?;
    let manifest_size = cache
        .open_blob(&manifest_digest)?
        .metadata()
        .map(|md| md.len())
        .unwrap_or(0);
    Ok(ImageRecord {
        reference,
        manifest: manifest_digest,
        index,
        config: m.config.digest.clone(),
        layers: m.layers.iter().map(|l| l.digest.clone()).collect(),
        size: manifest_size + m.config.size + m.layers.iter().map(|l| l.size).sum::<u64>(),
        platform: (!config.os.is_empty()).then_some(Platform {
            os: config.os,
            architecture: config.architecture,
            variant: config.variant,
        }),
    })
}

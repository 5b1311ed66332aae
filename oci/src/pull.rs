//! `pull`: brings any [`ImageRef`] into the cache and records it in the refs index;
//! [`ensure`] does so only when a [`PullPolicy`] says the cached record may be stale.

use crate::cache::{Cache, CacheError};
use crate::digest::Digest;
use crate::local::{self, LocalError};
use crate::platform::Platform;
use crate::progress::Progress;
use crate::reference::ImageRef;
use crate::refs::{ImageRecord, SourceStamp};
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
    /// The image is not in the store and the policy forbids reading its source.
    #[error("image {0} is not in the image store (pull policy: never)")]
    NotInStore(String),
}

/// When [`ensure`] reads an image's source, as docker's `--pull` says.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum PullPolicy {
    /// Always: pull from the registry, re-read the local source.
    Always,
    /// When the store does not have it; a local source also when it changed.
    #[default]
    Missing,
    /// Never: only what the store has.
    Never,
}

impl std::str::FromStr for PullPolicy {
    type Err = String;

    fn from_str(s: &str) -> Result<PullPolicy, String> {
        match s {
            "always" => Ok(PullPolicy::Always),
            "missing" => Ok(PullPolicy::Missing),
            "never" => Ok(PullPolicy::Never),
            _ => Err(format!(
                "{s:?} is not a pull policy (always, missing, never)"
            )),
        }
    }
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
    let stamp = |path: &std::path::Path| {
        SourceStamp::of(path).map_err(|e| LocalError::Read(path.to_path_buf(), e))
    };
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
        // Stamped before reading: a file rewritten during the import is read again next time.
        ImageRef::OciArchive(path) => {
            let source = stamp(path)?;
            ImageRecord {
                source: Some(source),
                ..local::import_oci_archive(cache, path, &opts.platform)?
            }
        }
        ImageRef::DockerArchive(path) => {
            let source = stamp(path)?;
            ImageRecord {
                source: Some(source),
                ..local::import_docker_archive(cache, path)?
            }
        }
    };
    rec.reference = image.key();
    cache.put_record(&rec)?;
    Ok(rec)
}

/// Makes `image` available in `cache` as `policy` says and returns its record. A registry
/// reference is pulled under [`PullPolicy::Always`], or under [`PullPolicy::Missing`] when
/// the store has no record of it. A local source is read again under `Missing` when it may
/// have changed: an OCI layout every time (its index.json names the manifest, and blobs
/// the store has are not copied again), an archive when its file is not the one recorded
/// ([`SourceStamp`]). [`PullPolicy::Never`] uses only the store.
pub fn ensure(
    cache: &Cache,
    image: &ImageRef,
    opts: &PullOptions,
    policy: PullPolicy,
    progress: &Progress,
) -> Result<ImageRecord, PullError> {
    let recorded = cache.record(&image.key())?;
    let current = match (policy, recorded) {
        (PullPolicy::Always, _) => None,
        (PullPolicy::Never, None) => return Err(PullError::NotInStore(image.to_string())),
        (PullPolicy::Never, Some(rec)) => Some(rec),
        (PullPolicy::Missing, rec) => rec.filter(|rec| match image {
            ImageRef::Registry(_) => true,
            ImageRef::OciLayout { .. } => false,
            ImageRef::OciArchive(path) | ImageRef::DockerArchive(path) => {
                rec.source.is_some() && SourceStamp::of(path).ok() == rec.source
            }
        }),
    };
    match current {
        Some(rec) => Ok(rec),
        None => pull(cache, image, opts, progress),
    }
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
        source: None,
    })
}

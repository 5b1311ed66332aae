//! Pulling from a registry over the distribution v2 API with `oci-client`: anonymous bearer
//! tokens or basic auth from docker's config, HTTPS except for loopback registries or
//! `--insecure`, concurrent blob downloads that resume with HTTP Range requests, and a digest
//! check on every manifest and blob before it enters the cache.

use futures_util::{StreamExt, TryStreamExt};
use oci_client::client::{BlobResponse, ClientConfig, ClientProtocol, LayerDescriptor};
use oci_client::secrets::RegistryAuth;
use oci_client::Client;

use crate::auth::{self, AuthError};
use crate::cache::{Cache, CacheError};
use crate::digest::{Digest, DigestError};
use crate::platform::PlatformError;
use crate::progress::Progress;
use crate::pull::{record_for, PullOptions};
use crate::reference::RegistryRef;
use crate::refs::ImageRecord;
use crate::spec::{
    AnyManifest, Descriptor, SpecError, DOCKER_LIST, DOCKER_MANIFEST, MAX_MANIFEST, OCI_INDEX,
    OCI_MANIFEST,
};

/// Errors from a registry pull.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// The registry refused or failed a request.
    #[error("{registry}: {what}: {detail}")]
    Request {
        /// The registry host.
        registry: String,
        /// What was requested.
        what: String,
        /// The client's error with its chain of causes.
        detail: String,
    },
    /// The blob stream broke off.
    #[error(
        "{registry}: download of {digest} interrupted: {source} (run the pull again to resume)"
    )]
    Stream {
        /// The registry host.
        registry: String,
        /// The blob.
        digest: Digest,
        /// The transport error.
        source: std::io::Error,
    },
    /// A manifest whose content does not hash to its digest.
    #[error("manifest {what}: {source}")]
    ManifestDigest {
        /// Which manifest.
        what: String,
        /// The mismatch.
        source: DigestError,
    },
    /// The registry's manifest does not hash to the digest it was served under.
    #[error("manifest {what}: digest mismatch: {detail}")]
    ManifestMismatch {
        /// Which manifest.
        what: String,
        /// The client's report of expected and actual digests.
        detail: String,
    },
    /// A manifest larger than [`MAX_MANIFEST`] or of another size than its descriptor says.
    #[error("manifest {0}: size differs from its descriptor or exceeds {MAX_MANIFEST} bytes")]
    ManifestSize(String),
    /// An index entry that is itself an index.
    #[error("index entry {0} for the platform is another index (not supported)")]
    NestedIndex(Digest),
    /// Credentials could not be read.
    #[error(transparent)]
    Auth(#[from] AuthError),
    /// A malformed document.
    #[error(transparent)]
    Spec(#[from] SpecError),
    /// No entry for the platform.
    #[error(transparent)]
    Platform(#[from] PlatformError),
    /// The cache refused a blob (digest or size mismatch, I/O).
    #[error(transparent)]
    Cache(#[from] CacheError),
    /// The pulled image could not be recorded (malformed config).
    #[error(transparent)]
    Record(#[from] crate::pull::RecordError),
    /// Building the HTTP client failed.
    #[error("cannot set up HTTP client: {0}")]
    Client(String),
}

/// The accepted manifest media types.
const ACCEPT: &[&str] = &[OCI_INDEX, OCI_MANIFEST, DOCKER_LIST, DOCKER_MANIFEST];

/// Blobs downloaded at once.
const PARALLEL_BLOBS: usize = 4;

/// Pulls `r` into the cache and returns its record (not yet stored in the refs index).
pub async fn pull(
    cache: &Cache,
    r: &RegistryRef,
    opts: &PullOptions,
    progress: &Progress,
) -> Result<ImageRecord, RegistryError> {
    let protocol = if opts.insecure || r.is_loopback() {
        ClientProtocol::HttpsExcept(vec![r.registry.clone()])
    } else {
        ClientProtocol::Https
    };
    let config = ClientConfig {
        protocol,
        connect_timeout: Some(std::time::Duration::from_secs(30)),
        read_timeout: Some(std::time::Duration::from_secs(120)),
        max_concurrent_download: PARALLEL_BLOBS,
        ..Default::default()
    };
    let client = Client::try_from(config).map_err(|e| RegistryError::Client(e.to_string()))?;
    let auth = match auth::lookup(&r.registry)? {
        Some(c) => RegistryAuth::Basic(c.username, c.password),
        None => RegistryAuth::Anonymous,
    };
    let puller = Puller {
        client,
        auth,
        cache,
        r,
        progress,
    };

    let top = puller.manifest(r, r.digest.as_ref(), None).await?;
    let (index, digest, manifest) = match AnyManifest::parse(&top.1, None)? {
        AnyManifest::Image(m) => (None, top.0, m),
        AnyManifest::Index(ix) => {
            let desc = opts.platform.select(&ix)?;
            let (d, bytes) = puller
                .manifest(
                    &r.with_digest(desc.digest.clone()),
                    Some(&desc.digest),
                    Some(desc.size),
                )
                .await?;
            match AnyManifest::parse(&bytes, Some(&desc.media_type))? {
                AnyManifest::Image(m) => (Some(top.0), d, m),
                AnyManifest::Index(_) => return Err(RegistryError::NestedIndex(d)),
            }
        }
    };
    let descs: Vec<&Descriptor> = std::iter::once(&manifest.config)
        .chain(manifest.layers.iter())
        .collect();
    futures_util::stream::iter(descs.into_iter().map(|d| puller.blob(d)))
        .buffer_unordered(PARALLEL_BLOBS)
        .try_collect::<Vec<()>>()
        .await?;
    Ok(record_for(cache, String::new(), index, digest, &manifest)?)
}

struct Puller<'a> {
    client: Client,
    auth: RegistryAuth,
    cache: &'a Cache,
    r: &'a RegistryRef,
    progress: &'a Progress,
}

impl Puller<'_> {
    fn request_err(
        &self,
        what: String,
    ) -> impl FnOnce(oci_client::errors::OciDistributionError) -> RegistryError + '_ {
        move |e| RegistryError::Request {
            registry: self.r.registry.clone(),
            what,
            detail: chain(&e),
        }
    }

    /// Fetches a manifest, checks it against `expected` (and its size), stores it.
    async fn manifest(
        &self,
        r: &RegistryRef,
        expected: Option<&Digest>,
        size: Option<u64>,
    ) -> Result<(Digest, Vec<u8>), RegistryError> {
        let (bytes, served) = self
            .client
            .pull_manifest_raw(&r.to_oci(), &self.auth, ACCEPT)
            .await
            .map_err(|e| match e {
                // oci-client's own check of the served manifest against its digest.
                oci_client::errors::OciDistributionError::DigestError(d) => {
                    RegistryError::ManifestMismatch {
                        what: r.to_string(),
                        detail: d.to_string(),
                    }
                }
                e => self.request_err(format!("manifest {r}"))(e),
            })?;
        if bytes.len() as u64 > MAX_MANIFEST || size.is_some_and(|s| s != bytes.len() as u64) {
            return Err(RegistryError::ManifestSize(r.to_string()));
        }
        let actual = Digest::of(&bytes);
        // A pinned reference or index entry names the digest; otherwise the registry's
        // Docker-Content-Digest header does (oci-client returns it, or its own hash).
        let served = served.parse::<Digest>().ok();
        for want in expected.into_iter().chain(served.as_ref()) {
            want.check(actual.clone())
                .map_err(|source| RegistryError::ManifestDigest {
                    what: r.to_string(),
                    source,
                })?;
        }
        self.cache.put_blob(&actual, &bytes)?;
        Ok((actual, bytes.to_vec()))
    }

    /// Downloads one blob into the cache unless present, resuming a partial download.
    async fn blob(&self, d: &Descriptor) -> Result<(), RegistryError> {
        let (cache, digest, size) = (self.cache.clone(), d.digest.clone(), d.size);
        let begun = tokio::task::spawn_blocking(move || cache.begin_blob(&digest, Some(size)))
            .await
            .expect("begin_blob does not panic")?;
        let Some(mut w) = begun else { return Ok(()) };
        if w.len() < d.size {
            let bar = self.progress.bar(d.digest.short(), d.size);
            bar.set_position(w.len());
            let dstr = d.digest.to_string();
            let ld = LayerDescriptor {
                digest: &dstr,
                urls: &None,
            };
            let oref = self.r.to_oci();
            let what = format!("blob {}", d.digest);
            let mut stream = if w.is_empty() {
                self.client
                    .pull_blob_stream(&oref, &ld)
                    .await
                    .map_err(self.request_err(what))?
                    .stream
            } else {
                match self
                    .client
                    .pull_blob_stream_partial(&oref, &ld, w.len(), None)
                    .await
                    .map_err(self.request_err(what))?
                {
                    BlobResponse::Partial(s) => s.stream,
                    BlobResponse::Full(s) => {
                        w.restart()?;
                        bar.set_position(0);
                        s.stream
                    }
                }
            };
            while let Some(chunk) = stream.next().await {
                let chunk = match chunk {
                    Ok(c) => c,
                    // oci-client's own digest check fails after the last byte: ours below
                    // reports the mismatch and discards the partial file.
                    Err(_) if w.len() >= d.size => break,
                    Err(source) => {
                        return Err(RegistryError::Stream {
                            registry: self.r.registry.clone(),
                            digest: d.digest.clone(),
                            source,
                        })
                    }
                };
                w.write(&chunk)?;
                bar.inc(chunk.len() as u64);
            }
            bar.finish_and_clear();
        }
        tokio::task::spawn_blocking(move || w.finish())
            .await
            .expect("finish does not panic")?;
        Ok(())
    }
}

/// An error and its causes on one line (reqwest hides the interesting part in `source()`).
fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let s = c.to_string();
        if !out.contains(&s) {
            out.push_str(": ");
            out.push_str(&s);
        }
        cur = c.source();
    }
    out.replace('\n', " ")
}

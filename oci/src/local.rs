//! Local image sources: OCI image layout directories, OCI archives (a tar of a layout) and
//! `docker save` archives. Every blob is copied into the cache through the same digest and
//! size checks as a registry pull.

use std::collections::HashMap;
use std::fs::File;
use std::io::Read;
use std::path::{Component, Path, PathBuf};

use serde::Deserialize;

use crate::cache::{Cache, CacheError};
use crate::digest::Digest;
use crate::platform::{Platform, PlatformError};
use crate::pull::record_for;
use crate::refs::ImageRecord;
use crate::spec::{
    AnyManifest, Descriptor, Index, Manifest, SpecError, DOCKER_CONFIG, DOCKER_LAYER_TAR,
    DOCKER_MANIFEST, MAX_MANIFEST, REF_NAME,
};

/// Errors from importing a local image.
#[derive(Debug, thiserror::Error)]
pub enum LocalError {
    /// The source cannot be read.
    #[error("cannot read {0}: {1}")]
    Read(PathBuf, std::io::Error),
    /// The layout or archive lacks a required part.
    #[error("{0}: {1}")]
    Invalid(PathBuf, String),
    /// A malformed document.
    #[error("{0}: {1}")]
    Spec(PathBuf, SpecError),
    /// No entry for the platform.
    #[error(transparent)]
    Platform(#[from] PlatformError),
    /// The cache refused a blob (digest or size mismatch, I/O).
    #[error(transparent)]
    Cache(#[from] CacheError),
    /// The pulled image could not be recorded (malformed config).
    #[error(transparent)]
    Record(#[from] crate::pull::RecordError),
}

/// Imports the manifest tagged `tag` (or the only one) from an OCI layout directory.
pub fn import_layout(
    cache: &Cache,
    dir: &Path,
    tag: Option<&str>,
    platform: &Platform,
) -> Result<ImageRecord, LocalError> {
    let index_path = dir.join("index.json");
    let bytes = read_limited(&index_path)?;
    let index: Index = match AnyManifest::parse(&bytes, None)
        .map_err(|e| LocalError::Spec(index_path.clone(), e))?
    {
        AnyManifest::Index(ix) => ix,
        AnyManifest::Image(_) => {
            return Err(LocalError::Invalid(
                index_path,
                "index.json is not an image index".into(),
            ))
        }
    };
    let fetch = |d: &Descriptor| -> Result<(), LocalError> {
        if cache.has_blob(&d.digest) {
            return Ok(());
        }
        let p = dir.join("blobs/sha256").join(d.digest.hex());
        let f = File::open(&p).map_err(|e| LocalError::Read(p.clone(), e))?;
        Ok(cache.put_blob_from(&d.digest, Some(d.size), f)?)
    };
    resolve(cache, dir, &index, tag, platform, fetch)
}

/// Imports the only manifest of an OCI archive (a tar of an OCI layout).
pub fn import_oci_archive(
    cache: &Cache,
    path: &Path,
    platform: &Platform,
) -> Result<ImageRecord, LocalError> {
    let mut index_bytes = None;
    for_each_entry(path, |name, entry| {
        if name == Path::new("index.json") {
            let mut b = Vec::new();
            entry
                .take(MAX_MANIFEST + 1)
                .read_to_end(&mut b)
                .map_err(|e| LocalError::Read(path.into(), e))?;
            index_bytes = Some(b);
        } else if let Ok(rest) = name.strip_prefix("blobs/sha256") {
            if let Some(d) = rest.to_str().and_then(|h| Digest::from_hex(h).ok()) {
                let size = entry.header().size().ok();
                cache.put_blob_from(&d, size, entry)?;
            }
        }
        Ok(())
    })?;
    let bytes = index_bytes
        .ok_or_else(|| LocalError::Invalid(path.into(), "no index.json in OCI archive".into()))?;
    let index: Index =
        match AnyManifest::parse(&bytes, None).map_err(|e| LocalError::Spec(path.into(), e))? {
            AnyManifest::Index(ix) => ix,
            AnyManifest::Image(_) => {
                return Err(LocalError::Invalid(
                    path.into(),
                    "index.json is not an image index".into(),
                ))
            }
        };
    let present = |d: &Descriptor| {
        if cache.has_blob(&d.digest) {
            Ok(())
        } else {
            Err(LocalError::Invalid(
                path.into(),
                format!("blob {} missing from archive", d.digest),
            ))
        }
    };
    resolve(cache, path, &index, None, platform, present)
}

/// Picks the tagged (or only) entry, follows an index to the platform, fetches every blob.
fn resolve(
    cache: &Cache,
    src: &Path,
    index: &Index,
    tag: Option<&str>,
    platform: &Platform,
    fetch: impl Fn(&Descriptor) -> Result<(), LocalError>,
) -> Result<ImageRecord, LocalError> {
    let invalid = |m: String| LocalError::Invalid(src.to_path_buf(), m);
    let top = match tag {
        Some(t) => index
            .manifests
            .iter()
            .find(|d| {
                d.annotations
                    .as_ref()
                    .and_then(|a| a.get(REF_NAME))
                    .is_some_and(|n| n == t || n.strip_suffix(t).is_some_and(|r| r.ends_with(':')))
            })
            .ok_or_else(|| invalid(format!("no manifest tagged {t:?}")))?,
        None if index.manifests.len() == 1 => &index.manifests[0],
        None => {
            return Err(invalid(format!(
                "{} manifests; name one with oci-layout:PATH:TAG",
                index.manifests.len()
            )))
        }
    };
    let load = |d: &Descriptor| -> Result<AnyManifest, LocalError> {
        fetch(d)?;
        let b = cache.read_blob(&d.digest, MAX_MANIFEST)?;
        AnyManifest::parse(&b, Some(&d.media_type))
            .map_err(|e| LocalError::Spec(src.to_path_buf(), e))
    };
    let (ix, digest, manifest) = match load(top)? {
        AnyManifest::Image(m) => (None, top.digest.clone(), m),
        AnyManifest::Index(ix) => {
            let d = platform.select(&ix)?;
            match load(d)? {
                AnyManifest::Image(m) => (Some(top.digest.clone()), d.digest.clone(), m),
                AnyManifest::Index(_) => {
                    return Err(invalid(format!(
                        "{} is a nested index (not supported)",
                        d.digest
                    )))
                }
            }
        }
    };
    fetch(&manifest.config)?;
    for l in &manifest.layers {
        fetch(l)?;
    }
    Ok(record_for(cache, String::new(), ix, digest, &manifest)?)
}

/// One image in a `docker save` manifest.json.
#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct DockerEntry {
    config: String,
    layers: Vec<String>,
}

/// Imports the first image of a `docker save` archive, synthesizing a Docker v2 manifest
/// whose layer digests must match the config's `rootfs.diff_ids`.
pub fn import_docker_archive(cache: &Cache, path: &Path) -> Result<ImageRecord, LocalError> {
    let invalid = |m: String| LocalError::Invalid(path.to_path_buf(), m);
    let mut files: HashMap<PathBuf, (Digest, u64)> = HashMap::new();
    let mut links: HashMap<PathBuf, PathBuf> = HashMap::new();
    let mut manifest_json = None;
    for_each_entry(path, |name, entry| {
        let kind = entry.header().entry_type();
        if name == Path::new("manifest.json") {
            let mut b = Vec::new();
            entry
                .take(MAX_MANIFEST + 1)
                .read_to_end(&mut b)
                .map_err(|e| LocalError::Read(path.into(), e))?;
            manifest_json = Some(b);
        } else if kind.is_symlink() || kind.is_hard_link() {
            if let Ok(Some(t)) = entry.link_name() {
                let t = if kind.is_symlink() {
                    name.parent().unwrap_or(Path::new("")).join(t)
                } else {
                    t.into_owned()
                };
                links.insert(name.to_path_buf(), normalize(&t));
            }
        } else if kind.is_file() {
            files.insert(name.to_path_buf(), cache.put_blob_unknown(entry)?);
        }
        Ok(())
    })?;
    let lookup = |p: &str| -> Result<(Digest, u64), LocalError> {
        let mut p = normalize(Path::new(p));
        for _ in 0..8 {
            if let Some(f) = files.get(&p) {
                return Ok(f.clone());
            }
            p = links
                .get(&p)
                .cloned()
                .ok_or_else(|| invalid(format!("{} missing from archive", p.display())))?;
        }
        Err(invalid(format!("{} is a link loop", p.display())))
    };
    let mj = manifest_json
        .ok_or_else(|| invalid("no manifest.json (not a docker save archive)".into()))?;
    let entries: Vec<DockerEntry> = serde_json::from_slice(&mj)
        .map_err(|e| invalid(format!("malformed manifest.json: {e}")))?;
    let entry = entries
        .first()
        .ok_or_else(|| invalid("manifest.json lists no images".into()))?;
    let (config_digest, config_size) = lookup(&entry.config)?;
    check_named_digest(&entry.config, &config_digest).map_err(invalid)?;
    let config =
        crate::spec::ImageConfig::parse(&cache.read_blob(&config_digest, crate::spec::MAX_CONFIG)?)
            .map_err(|e| LocalError::Spec(path.to_path_buf(), e))?;
    let diff_ids = config.rootfs.map(|r| r.diff_ids).unwrap_or_default();
    if diff_ids.len() != entry.layers.len() {
        return Err(invalid(format!(
            "{} layers but config lists {} diff_ids",
            entry.layers.len(),
            diff_ids.len()
        )));
    }
    let mut layers = Vec::new();
    for (name, diff_id) in entry.layers.iter().zip(&diff_ids) {
        let (d, size) = lookup(name)?;
        if &d != diff_id && check_named_digest(name, &d).is_err() {
            return Err(invalid(format!(
                "layer {name}: content {d} does not match diff_id {diff_id}"
            )));
        }
        layers.push(Descriptor {
            media_type: DOCKER_LAYER_TAR.into(),
            digest: d,
            size,
            platform: None,
            annotations: None,
        });
    }
    let manifest = Manifest {
        schema_version: 2,
        media_type: Some(DOCKER_MANIFEST.into()),
        config: Descriptor {
            media_type: DOCKER_CONFIG.into(),
            digest: config_digest,
            size: config_size,
            platform: None,
            annotations: None,
        },
        layers,
    };
    let bytes = serde_json::to_vec(&manifest).expect("manifest serializes");
    let digest = Digest::of(&bytes);
    cache.put_blob(&digest, &bytes)?;
    Ok(record_for(cache, String::new(), None, digest, &manifest)?)
}

/// When a file is named by its digest (`<hex>.json`, `blobs/sha256/<hex>`), it must match.
fn check_named_digest(name: &str, d: &Digest) -> Result<(), String> {
    let stem = Path::new(name)
        .file_name()
        .and_then(|s| s.to_str())
        .unwrap_or("");
    let stem = stem.strip_suffix(".json").unwrap_or(stem);
    match Digest::from_hex(stem) {
        Ok(named) if &named != d => Err(format!("{name}: content hashes to {d}")),
        Ok(_) => Ok(()),
        Err(_) => Err(format!("{name}: not named by its digest")),
    }
}

/// Lexically normalizes an archive path (drops `.`, resolves `..`, strips leading `/`).
fn normalize(p: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::ParentDir => {
                out.pop();
            }
            _ => {}
        }
    }
    out
}

/// Calls `f` with each entry of a tar archive and its normalized path.
fn for_each_entry(
    path: &Path,
    mut f: impl FnMut(&Path, &mut tar::Entry<'_, File>) -> Result<(), LocalError>,
) -> Result<(), LocalError> {
    let file = File::open(path).map_err(|e| LocalError::Read(path.into(), e))?;
    let mut ar = tar::Archive::new(file);
    let read = |e| LocalError::Read(path.into(), e);
    for entry in ar.entries().map_err(read)? {
        let mut entry = entry.map_err(read)?;
        let name = normalize(&entry.path().map_err(read)?);
        f(&name, &mut entry)?;
    }
    Ok(())
}

fn read_limited(path: &Path) -> Result<Vec<u8>, LocalError> {
    let f = File::open(path).map_err(|e| LocalError::Read(path.into(), e))?;
    let mut b = Vec::new();
    f.take(MAX_MANIFEST + 1)
        .read_to_end(&mut b)
        .map_err(|e| LocalError::Read(path.into(), e))?;
    if b.len() as u64 > MAX_MANIFEST {
        return Err(LocalError::Invalid(
            path.into(),
            "larger than the manifest limit".into(),
        ));
    }
    Ok(b)
}

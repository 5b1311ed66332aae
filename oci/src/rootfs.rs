//! The read-only root image: layers applied in order into a scratch directory, checked
//! against the config's `diff_ids`, then packed by Debian's `mkfs.erofs` into
//! `rootfs/<manifest hex>.erofs`. A second request for the same manifest reuses the file.
//! When the layers themselves are refused (an unsafe entry, a damaged stream, content that
//! does not match its diff_id), the reason is kept as `rootfs/<manifest hex>.refused`, so
//! `sm images` can say the image is unusable and why.

use std::fs;
use std::io::{self, BufRead, BufReader, Read};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use nix::fcntl::{Flock, FlockArg};
use sha2::{Digest as _, Sha256};

use crate::blob::{sync_dir, write_atomic};
use crate::cache::{Cache, CacheError};
use crate::digest::Digest;
use crate::reference::ImageRef;
use crate::refs::ImageRecord;
use crate::spec::{ImageConfig, RunConfig, SpecError, MAX_CONFIG};
use crate::unpack::{UnpackError, Unpacker};

/// The program that packs the tree.
pub const MKFS_EROFS: &str = "mkfs.erofs";

/// Errors from building a root image.
#[derive(Debug, thiserror::Error)]
pub enum RootfsError {
    /// The image is not in the refs index.
    #[error("image {0} is not pulled (run `sm pull {0}` first)")]
    NotPulled(String),
    /// The cache failed.
    #[error(transparent)]
    Cache(#[from] CacheError),
    /// The config blob is malformed.
    #[error(transparent)]
    Spec(#[from] SpecError),
    /// A layer could not be applied.
    #[error("layer {index} ({digest}): {source}")]
    Layer {
        /// Position of the layer, from 1 (lowest).
        index: usize,
        /// The layer blob.
        digest: Digest,
        /// What went wrong.
        source: UnpackError,
    },
    /// An uncompressed layer does not match the config's `diff_ids`.
    #[error("layer {index} ({digest}): uncompressed content is {actual}, config says {expected}")]
    DiffId {
        /// Position of the layer, from 1.
        index: usize,
        /// The layer blob.
        digest: Digest,
        /// The config's diff_id.
        expected: Digest,
        /// What the content hashes to.
        actual: Digest,
    },
    /// A file operation failed.
    #[error("{what} {path}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The path involved.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// `mkfs.erofs` failed or is missing.
    #[error("mkfs.erofs: {0}")]
    Mkfs(String),
}

impl RootfsError {
    /// True when the image's own content was refused (it will not build anywhere), as
    /// opposed to this host failing (I/O, a missing `mkfs.erofs`, no right to `mknod`).
    pub fn is_refusal(&self) -> bool {
        matches!(
            self,
            RootfsError::DiffId { .. }
                | RootfsError::Layer {
                    source: UnpackError::Unsafe { .. } | UnpackError::Read(_),
                    ..
                }
        )
    }
}

impl Cache {
    fn refusal_path(&self, manifest: &Digest) -> PathBuf {
        self.rootfs_dir()
            .join(format!("{}.refused", manifest.hex()))
    }

    /// Why the root image of `manifest` could not be built, if its layers were refused.
    pub fn refusal(&self, manifest: &Digest) -> Option<String> {
        fs::read_to_string(self.refusal_path(manifest))
            .ok()
            .map(|s| s.trim_end().to_string())
    }
}

fn io_err<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> RootfsError + 'a {
    move |source| RootfsError::Io {
        what,
        path: path.to_path_buf(),
        source,
    }
}

/// The recorded image for a reference, or [`RootfsError::NotPulled`].
pub fn image_record(cache: &Cache, image: &ImageRef) -> Result<ImageRecord, RootfsError> {
    cache
        .record(&image.key())?
        .ok_or_else(|| RootfsError::NotPulled(image.to_string()))
}

/// The run configuration (Entrypoint, Cmd, Env, WorkingDir, User) of a pulled image.
pub fn image_config(cache: &Cache, image: &ImageRef) -> Result<RunConfig, RootfsError> {
    let rec = image_record(cache, image)?;
    let cfg = ImageConfig::parse(&cache.read_blob(&rec.config, MAX_CONFIG)?)?;
    Ok(cfg.config.unwrap_or_default())
}

/// The EROFS root image of a pulled image, built on first use.
pub fn rootfs_image(cache: &Cache, image: &ImageRef) -> Result<PathBuf, RootfsError> {
    build(cache, &image_record(cache, image)?)
}

/// Builds (or finds) the EROFS root image for a record.
pub fn build(cache: &Cache, rec: &ImageRecord) -> Result<PathBuf, RootfsError> {
    let _cache_lock = cache.lock(false)?;
    let out = cache
        .rootfs_dir()
        .join(format!("{}.erofs", rec.manifest.hex()));
    if out.is_file() {
        return Ok(out);
    }
    let lock_path = cache
        .tmp_dir()
        .join(format!("rootfs-{}.lock", rec.manifest.hex()));
    let lock_file = fs::File::create(&lock_path).map_err(io_err("create", &lock_path))?;
    let _lock =
        Flock::lock(lock_file, FlockArg::LockExclusive).map_err(|(_, e)| RootfsError::Io {
            what: "lock",
            path: lock_path.clone(),
            source: e.into(),
        })?;
    if out.is_file() {
        return Ok(out);
    }
    let work = TempDir::create(cache.tmp_path("unpack"))?;
    if let Err(e) = unpack_layers(cache, rec, &work.0) {
        if e.is_refusal() {
            // Best effort: the refusal itself is what the caller must hear about.
            let _ = write_atomic(
                &cache.tmp_path("refused"),
                &cache.refusal_path(&rec.manifest),
                format!("{e}\n").as_bytes(),
            );
        }
        return Err(e);
    }
    let img = TempFile(cache.tmp_path("erofs"));
    mkfs(&work.0, &img.0)?;
    drop(work);
    fs::File::open(&img.0)
        .and_then(|f| f.sync_all())
        .map_err(io_err("fsync", &img.0))?;
    fs::rename(&img.0, &out).map_err(io_err("rename into", &out))?;
    // A refusal recorded by an older sm that this one no longer makes.
    let _ = fs::remove_file(cache.refusal_path(&rec.manifest));
    sync_dir(&cache.rootfs_dir())?;
    Ok(out)
}

/// Applies every layer of `rec`, lowest first, into the empty directory `dir`.
pub fn unpack_layers(cache: &Cache, rec: &ImageRecord, dir: &Path) -> Result<(), RootfsError> {
    let cfg = ImageConfig::parse(&cache.read_blob(&rec.config, MAX_CONFIG)?)?;
    let diff_ids = cfg.rootfs.map(|r| r.diff_ids).unwrap_or_default();
    let unpacker = Unpacker::new(dir).map_err(|source| RootfsError::Layer {
        index: 0,
        digest: rec.manifest.clone(),
        source,
    })?;
    for (i, layer) in rec.layers.iter().enumerate() {
        let layer_err = |source| RootfsError::Layer {
            index: i + 1,
            digest: layer.clone(),
            source,
        };
        let blob = BufReader::with_capacity(1 << 20, cache.open_blob(layer)?);
        let mut r = HashReader {
            inner: decompress(blob).map_err(|e| layer_err(UnpackError::Read(e)))?,
            hasher: Sha256::new(),
        };
        unpacker.apply_layer(&mut r).map_err(layer_err)?;
        io::copy(&mut r, &mut io::sink()).map_err(|e| layer_err(UnpackError::Read(e)))?;
        let actual = Digest::from_hasher(r.hasher);
        if let Some(expected) = diff_ids.get(i) {
            if *expected != actual {
                return Err(RootfsError::DiffId {
                    index: i + 1,
                    digest: layer.clone(),
                    expected: expected.clone(),
                    actual,
                });
            }
        }
    }
    Ok(())
}

/// Picks the decoder from the stream's magic bytes: gzip, zstd or plain tar.
fn decompress<R: BufRead + 'static>(mut r: R) -> io::Result<Box<dyn Read>> {
    let head = r.fill_buf()?;
    if head.starts_with(&[0x1f, 0x8b]) {
        Ok(Box::new(flate2::bufread::MultiGzDecoder::new(r)))
    } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Ok(Box::new(zstd::stream::read::Decoder::with_buffer(r)?))
    } else {
        Ok(Box::new(r))
    }
}

/// Runs `mkfs.erofs` on `dir`, writing `out`.
fn mkfs(dir: &Path, out: &Path) -> Result<(), RootfsError> {
    let res = Command::new(MKFS_EROFS)
        .arg("--quiet")
        .arg(out)
        .arg(dir)
        .output();
    match res {
        Ok(o) if o.status.success() => Ok(()),
        Ok(o) => Err(RootfsError::Mkfs(format!(
            "{} ({})",
            String::from_utf8_lossy(&o.stderr).trim(),
            o.status
        ))),
        Err(e) => Err(RootfsError::Mkfs(format!(
            "cannot run {MKFS_EROFS}: {e} (install erofs-utils)"
        ))),
    }
}

/// Hashes what is read through it.
struct HashReader<R> {
    inner: R,
    hasher: Sha256,
}

impl<R: Read> Read for HashReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

/// A scratch directory removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn create(path: PathBuf) -> Result<TempDir, RootfsError> {
        fs::create_dir(&path).map_err(io_err("create", &path))?;
        fs::set_permissions(&path, fs::Permissions::from_mode(0o755))
            .map_err(io_err("chmod", &path))?;
        Ok(TempDir(path))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// A scratch file removed when dropped (a no-op once renamed away).
struct TempFile(PathBuf);

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.0);
    }
}

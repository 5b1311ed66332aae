//! The content-addressed store: `blobs/sha256/<hex>` (complete, verified blobs),
//! `blobs/sha256/<hex>.partial` (interrupted downloads, resumed later), `refs/` (one JSON
//! record per pulled reference, see [`crate::refs`]), `rootfs/<manifest hex>.erofs` (built
//! root images), `rootfs/<manifest hex>.refused` (why a root image could not be built) and
//! `tmp/`. It lives in `oci/` under sm's home ([`home`]). Every file appears by temp write + fsync + atomic rename; a blob being written
//! is guarded by an exclusive lock on its `.partial` file, so concurrent pulls share work;
//! pulls hold a shared lock on the cache and garbage collection an exclusive one.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use nix::fcntl::{Flock, FlockArg};
use sha2::{Digest as _, Sha256};

use crate::blob::{sync_dir, BlobWriter, HashWriter};
use crate::digest::{Digest, DigestError};

/// The variable that moves everything sm keeps (the `sm --root DIR` flag sets it).
pub const HOME_ENV: &str = "SM_HOME";
/// sm's home for root when [`HOME_ENV`] is not set.
pub const SYSTEM_HOME: &str = "/var/lib/sm";
/// The image store's directory inside sm's home.
pub const STORE_DIR: &str = "oci";

/// sm's home: `$SM_HOME` when set, else (as podman does) [`SYSTEM_HOME`] for root and
/// `$XDG_DATA_HOME/sm` (else `~/.local/share/sm`) for other users.
pub fn home() -> PathBuf {
    match std::env::var_os(HOME_ENV).filter(|v| !v.is_empty()) {
        Some(dir) => PathBuf::from(dir),
        None => default_home(),
    }
}

/// sm's home when [`HOME_ENV`] is not set (see [`home`]).
pub fn default_home() -> PathBuf {
    let uid = nix::unistd::getuid();
    if uid.is_root() {
        return SYSTEM_HOME.into();
    }
    // The XDG base directory spec ignores a relative XDG_DATA_HOME.
    if let Some(data) = std::env::var_os("XDG_DATA_HOME")
        .map(PathBuf::from)
        .filter(|d| d.is_absolute())
    {
        return data.join("sm");
    }
    let user_home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .filter(|d| d.is_absolute())
        .or_else(|| {
            nix::unistd::User::from_uid(uid)
                .ok()
                .flatten()
                .map(|u| u.dir)
        })
        .unwrap_or_else(|| PathBuf::from("/"));
    user_home.join(".local/share/sm")
}

/// Errors from the cache.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    /// A file operation failed.
    #[error("{what} {path}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The file involved.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// A blob's content does not match its digest.
    #[error("blob {digest}: {source}")]
    Digest {
        /// The blob.
        digest: Digest,
        /// The mismatch.
        source: DigestError,
    },
    /// A blob is longer or shorter than its descriptor says.
    #[error("blob {digest}: size {actual} bytes, descriptor says {expected}")]
    Size {
        /// The blob.
        digest: Digest,
        /// The descriptor's size.
        expected: u64,
        /// The bytes received.
        actual: u64,
    },
    /// A blob larger than sm accepts for its kind.
    #[error("blob {digest} is {size} bytes, over the {limit}-byte limit for its kind")]
    TooLarge {
        /// The blob.
        digest: Digest,
        /// Its size.
        size: u64,
        /// The limit.
        limit: u64,
    },
    /// The image store cannot be created or written (a user without access to it).
    #[error("cannot use the image store {}: {} (set SM_HOME or --root)", home.display(), reason(source))]
    Store {
        /// sm's home, the directory the user can move.
        home: PathBuf,
        /// Why it is unusable.
        source: io::Error,
    },
    /// A refs record that cannot be decoded.
    #[error("corrupt refs record {0}: {1}")]
    Record(PathBuf, serde_json::Error),
}

/// An OS error as a short lower-case phrase ("permission denied"), for one-line messages.
fn reason(e: &io::Error) -> String {
    let text = match e.raw_os_error() {
        Some(n) => nix::errno::Errno::from_raw(n).desc().to_string(),
        None => e.to_string(),
    };
    let mut chars = text.chars();
    match chars.next() {
        Some(first) => first.to_lowercase().chain(chars).collect(),
        None => text,
    }
}

pub(crate) fn io_err<'a>(
    what: &'static str,
    path: &'a Path,
) -> impl FnOnce(io::Error) -> CacheError + 'a {
    move |source| CacheError::Io {
        what,
        path: path.to_path_buf(),
        source,
    }
}

/// A lock on the whole cache (shared for pulls and builds, exclusive for garbage collection).
pub struct CacheLock(#[allow(dead_code)] Flock<File>);

/// The on-disk image cache.
#[derive(Clone, Debug)]
pub struct Cache {
    root: PathBuf,
}

static TMP_COUNTER: AtomicU64 = AtomicU64::new(0);

impl Cache {
    /// Opens (creating if needed) the image store in sm's [`home`]; a store this user cannot
    /// create or write is [`CacheError::Store`].
    pub fn open_default() -> Result<Cache, CacheError> {
        Cache::open_in_home(&home())
    }

    /// Opens (creating if needed) the image store in the home directory `home`.
    pub fn open_in_home(home: &Path) -> Result<Cache, CacheError> {
        let unusable = |source| CacheError::Store {
            home: home.to_path_buf(),
            source,
        };
        let cache = Cache::open(home.join(STORE_DIR)).map_err(|e| match e {
            CacheError::Io { source, .. } => unusable(source),
            e => e,
        })?;
        // Directories that exist but belong to someone else open fine; say so now rather
        // than at the first lock or blob write.
        nix::unistd::access(cache.root(), nix::unistd::AccessFlags::W_OK)
            .map_err(|e| unusable(e.into()))?;
        Ok(cache)
    }

    /// Opens (creating if needed) the cache rooted at `root`.
    pub fn open(root: impl Into<PathBuf>) -> Result<Cache, CacheError> {
        let cache = Cache { root: root.into() };
        for d in [
            cache.blob_dir(),
            cache.root.join("refs"),
            cache.rootfs_dir(),
            cache.tmp_dir(),
        ] {
            fs::create_dir_all(&d).map_err(io_err("create cache directory", &d))?;
        }
        Ok(cache)
    }

    /// The cache's root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Directory of complete and partial blobs.
    pub fn blob_dir(&self) -> PathBuf {
        self.root.join("blobs/sha256")
    }

    /// Directory of built root images.
    pub fn rootfs_dir(&self) -> PathBuf {
        self.root.join("rootfs")
    }

    /// Scratch directory (same file system as the blobs, so renames are atomic).
    pub fn tmp_dir(&self) -> PathBuf {
        self.root.join("tmp")
    }

    /// Path of a complete blob.
    pub fn blob_path(&self, d: &Digest) -> PathBuf {
        self.blob_dir().join(d.hex())
    }

    /// Path of a partially downloaded blob.
    pub fn partial_path(&self, d: &Digest) -> PathBuf {
        self.blob_dir().join(format!("{}.partial", d.hex()))
    }

    /// True when the complete blob is present.
    pub fn has_blob(&self, d: &Digest) -> bool {
        self.blob_path(d).is_file()
    }

    /// Takes the cache lock shared (pulls, builds) or exclusive (garbage collection).
    pub fn lock(&self, exclusive: bool) -> Result<CacheLock, CacheError> {
        let path = self.root.join("lock");
        let f = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(io_err("open lock", &path))?;
        let arg = if exclusive {
            FlockArg::LockExclusive
        } else {
            FlockArg::LockShared
        };
        Flock::lock(f, arg)
            .map(CacheLock)
            .map_err(|(_, e)| CacheError::Io {
                what: "lock",
                path,
                source: e.into(),
            })
    }

    /// Starts writing a blob, resuming a `.partial` left by an interrupted pull. Returns
    /// `None` when the complete blob is already present (possibly finished by a concurrent
    /// pull while this one waited for the blob's lock).
    pub fn begin_blob(
        &self,
        digest: &Digest,
        size: Option<u64>,
    ) -> Result<Option<BlobWriter>, CacheError> {
        if self.has_blob(digest) {
            return Ok(None);
        }
        let partial = self.partial_path(digest);
        let mut f = loop {
            let f = OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(&partial)
                .map_err(io_err("open", &partial))?;
            let f = Flock::lock(f, FlockArg::LockExclusive).map_err(|(_, e)| CacheError::Io {
                what: "lock",
                path: partial.clone(),
                source: e.into(),
            })?;
            if self.has_blob(digest) {
                if f.metadata().map(|m| m.len() == 0).unwrap_or(false) {
                    let _ = fs::remove_file(&partial);
                }
                return Ok(None);
            }
            // The holder we waited for may have renamed or discarded the file: only a lock
            // on the inode still at the path counts.
            let ours = f.metadata().map_err(io_err("stat", &partial))?;
            match fs::metadata(&partial) {
                Ok(m) if m.ino() == ours.ino() && m.dev() == ours.dev() => break f,
                _ => continue,
            }
        };
        let mut hasher = Sha256::new();
        let mut len = f.metadata().map_err(io_err("stat", &partial))?.len();
        if size.is_some_and(|s| len > s) {
            f.set_len(0).map_err(io_err("truncate", &partial))?;
            len = 0;
        }
        if len > 0 {
            f.seek(SeekFrom::Start(0))
                .map_err(io_err("read", &partial))?;
            let n = io::copy(&mut (&mut *f).take(len), &mut HashWriter(&mut hasher))
                .map_err(io_err("read", &partial))?;
            len = n;
        }
        f.seek(SeekFrom::Start(len))
            .map_err(io_err("seek", &partial))?;
        Ok(Some(BlobWriter {
            file: f,
            partial,
            dest: self.blob_path(digest),
            digest: digest.clone(),
            size,
            hasher,
            len,
        }))
    }

    /// Stores `bytes` as the blob `digest` after checking the digest.
    pub fn put_blob(&self, digest: &Digest, bytes: &[u8]) -> Result<(), CacheError> {
        digest.verify(bytes).map_err(|source| CacheError::Digest {
            digest: digest.clone(),
            source,
        })?;
        if let Some(mut w) = self.begin_blob(digest, Some(bytes.len() as u64))? {
            w.restart()?;
            w.write(bytes)?;
            w.finish()?;
        }
        Ok(())
    }

    /// Copies a stream into the blob `digest`, checking size and digest.
    pub fn put_blob_from(
        &self,
        digest: &Digest,
        size: Option<u64>,
        mut r: impl Read,
    ) -> Result<(), CacheError> {
        if let Some(mut w) = self.begin_blob(digest, size)? {
            w.restart()?;
            let mut buf = vec![0u8; 256 << 10];
            loop {
                let n = r.read(&mut buf).map_err(|e| CacheError::Io {
                    what: "read source of",
                    path: w.dest.clone(),
                    source: e,
                })?;
                if n == 0 {
                    break;
                }
                w.write(&buf[..n])?;
            }
            w.finish()?;
        }
        Ok(())
    }

    /// Stores a stream whose digest is not known in advance; returns its digest and size.
    pub fn put_blob_unknown(&self, mut r: impl Read) -> Result<(Digest, u64), CacheError> {
        let tmp = self.tmp_path("blob");
        let mut f = File::create(&tmp).map_err(io_err("create", &tmp))?;
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; 256 << 10];
        let mut size = 0u64;
        let res = (|| loop {
            let n = r.read(&mut buf)?;
            if n == 0 {
                return f.sync_all();
            }
            hasher.update(&buf[..n]);
            f.write_all(&buf[..n])?;
            size += n as u64;
        })();
        if let Err(e) = res {
            let _ = fs::remove_file(&tmp);
            return Err(CacheError::Io {
                what: "write",
                path: tmp,
                source: e,
            });
        }
        let digest = Digest::from_hasher(hasher);
        if self.has_blob(&digest) {
            let _ = fs::remove_file(&tmp);
        } else {
            let dest = self.blob_path(&digest);
            fs::rename(&tmp, &dest).map_err(io_err("rename into", &dest))?;
            sync_dir(&self.blob_dir())?;
        }
        Ok((digest, size))
    }

    /// Reads a whole (small) blob, re-checking its digest and refusing more than `limit` bytes.
    pub fn read_blob(&self, digest: &Digest, limit: u64) -> Result<Vec<u8>, CacheError> {
        let path = self.blob_path(digest);
        let f = File::open(&path).map_err(io_err("open blob", &path))?;
        let size = f.metadata().map_err(io_err("stat", &path))?.len();
        if size > limit {
            return Err(CacheError::TooLarge {
                digest: digest.clone(),
                size,
                limit,
            });
        }
        let mut bytes = Vec::with_capacity(size as usize);
        f.take(limit)
            .read_to_end(&mut bytes)
            .map_err(io_err("read", &path))?;
        digest.verify(&bytes).map_err(|source| CacheError::Digest {
            digest: digest.clone(),
            source,
        })?;
        Ok(bytes)
    }

    /// Opens a complete blob for reading.
    pub fn open_blob(&self, digest: &Digest) -> Result<File, CacheError> {
        let path = self.blob_path(digest);
        File::open(&path).map_err(io_err("open blob", &path))
    }

    /// A fresh path under `tmp/`.
    pub fn tmp_path(&self, what: &str) -> PathBuf {
        let n = TMP_COUNTER.fetch_add(1, Ordering::Relaxed);
        self.tmp_dir()
            .join(format!("{what}-{}-{n}", std::process::id()))
    }
}

//! Writing one blob: a `.partial` file under an exclusive lock, hashed as it grows,
//! checked against its digest and size, then fsynced and renamed into place.

use std::fs::{self, File};
use std::io::{self, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use nix::fcntl::Flock;
use sha2::{Digest as _, Sha256};

use crate::cache::{io_err, CacheError};
use crate::digest::Digest;

/// A blob being written to its `.partial` file under an exclusive lock.
pub struct BlobWriter {
    pub(crate) file: Flock<File>,
    pub(crate) partial: PathBuf,
    pub(crate) dest: PathBuf,
    pub(crate) digest: Digest,
    pub(crate) size: Option<u64>,
    pub(crate) hasher: Sha256,
    pub(crate) len: u64,
}

impl BlobWriter {
    /// Bytes already present (where a resumed download continues).
    pub fn len(&self) -> u64 {
        self.len
    }

    /// True when nothing has been written yet.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Discards what was written (the source restarted from byte 0).
    pub fn restart(&mut self) -> Result<(), CacheError> {
        if self.len > 0 {
            self.file
                .set_len(0)
                .map_err(io_err("truncate", &self.partial))?;
            self.file
                .seek(SeekFrom::Start(0))
                .map_err(io_err("seek", &self.partial))?;
            self.len = 0;
            self.hasher = Sha256::new();
        }
        Ok(())
    }

    /// Appends bytes; more than the descriptor's size is an error.
    pub fn write(&mut self, bytes: &[u8]) -> Result<(), CacheError> {
        self.len += bytes.len() as u64;
        if let Some(size) = self.size.filter(|s| self.len > *s) {
            let actual = self.len;
            self.abandon();
            return Err(CacheError::Size {
                digest: self.digest.clone(),
                expected: size,
                actual,
            });
        }
        self.hasher.update(bytes);
        self.file
            .write_all(bytes)
            .map_err(io_err("write", &self.partial))
    }

    /// Checks size and digest, then makes the blob visible with fsync + atomic rename. A
    /// digest mismatch deletes the partial file: nothing unverified enters the cache.
    pub fn finish(mut self) -> Result<(), CacheError> {
        if let Some(size) = self.size.filter(|s| self.len != *s) {
            return Err(CacheError::Size {
                digest: self.digest.clone(),
                expected: size,
                actual: self.len,
            });
        }
        let actual = Digest::from_hasher(std::mem::take(&mut self.hasher));
        if let Err(source) = self.digest.check(actual) {
            self.abandon();
            return Err(CacheError::Digest {
                digest: self.digest.clone(),
                source,
            });
        }
        self.file
            .sync_all()
            .map_err(io_err("fsync", &self.partial))?;
        fs::rename(&self.partial, &self.dest).map_err(io_err("rename into", &self.dest))?;
        sync_dir(self.dest.parent().expect("blob has a directory"))
    }

    fn abandon(&mut self) {
        let _ = fs::remove_file(&self.partial);
    }
}

/// Feeds written bytes into a hasher.
pub(crate) struct HashWriter<'a>(pub(crate) &'a mut Sha256);

impl Write for HashWriter<'_> {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        self.0.update(b);
        Ok(b.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Writes `bytes` to `tmp`, fsyncs, renames over `dest` and fsyncs the directory.
pub fn write_atomic(tmp: &Path, dest: &Path, bytes: &[u8]) -> Result<(), CacheError> {
    let mut f = File::create(tmp).map_err(io_err("create", tmp))?;
    f.write_all(bytes)
        .and_then(|_| f.sync_all())
        .map_err(io_err("write", tmp))?;
    fs::rename(tmp, dest).map_err(io_err("rename into", dest))?;
    sync_dir(dest.parent().expect("file has a directory"))
}

/// fsyncs a directory so a rename in it is durable.
pub fn sync_dir(dir: &Path) -> Result<(), CacheError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err("fsync", dir))
}

//! Copying a volume file for a snapshot or a clone: a reflink (`FICLONE`) where the file
//! system shares extents (btrfs, XFS, bcachefs), else a sparse copy of the data extents
//! only (`SEEK_DATA`/`SEEK_HOLE`), so a mostly empty volume stays mostly holes.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::fs::FileExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::unistd::{lseek, Whence};

/// Bytes copied per read in a sparse copy.
const CHUNK: usize = 1 << 20;

/// How a file was copied.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CloneKind {
    /// The file system shares the extents (`FICLONE`): no data was copied.
    Reflink,
    /// The data extents were copied; holes stay holes.
    Sparse,
}

/// Why a file could not be copied.
#[derive(Debug, thiserror::Error)]
pub enum CloneError {
    /// Opening or reading the source failed.
    #[error("{0}: {1}")]
    Source(PathBuf, io::Error),
    /// Creating or writing the destination failed (an existing destination is refused).
    #[error("{0}: {1}")]
    Destination(PathBuf, io::Error),
}

/// Copies `src` to the new file `dst` (which must not exist), by reflink where the file
/// system can, else sparsely; on failure `dst` is removed.
pub fn clone_file(src: &Path, dst: &Path) -> Result<CloneKind, CloneError> {
    let s = File::open(src).map_err(|e| CloneError::Source(src.into(), e))?;
    let meta = s
        .metadata()
        .map_err(|e| CloneError::Source(src.into(), e))?;
    if !meta.is_file() {
        return Err(CloneError::Source(
            src.into(),
            io::Error::new(io::ErrorKind::InvalidInput, "not a regular file"),
        ));
    }
    let d = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(dst)
        .map_err(|e| CloneError::Destination(dst.into(), e))?;
    let result = copy_into(&s, &d, meta.len(), src, dst);
    if result.is_err() {
        let _ = std::fs::remove_file(dst);
    }
    result
}

fn copy_into(
    s: &File,
    d: &File,
    len: u64,
    src: &Path,
    dst: &Path,
) -> Result<CloneKind, CloneError> {
    let derr = |e| CloneError::Destination(dst.into(), e);
    // SAFETY: FICLONE takes the source fd as its argument and only reads the two open
    // descriptors, both valid for the duration of the call.
    let r = unsafe { libc::ioctl(d.as_raw_fd(), libc::FICLONE, s.as_raw_fd()) };
    if r == 0 {
        return Ok(CloneKind::Reflink);
    }
    let e = io::Error::last_os_error();
    match Errno::from_raw(e.raw_os_error().unwrap_or(0)) {
        // Not a file system that shares extents, or not across these two.
        Errno::EOPNOTSUPP | Errno::EXDEV | Errno::EINVAL | Errno::ENOTTY | Errno::EPERM => {}
        _ => return Err(derr(e)),
    }
    sparse_copy(s, d, len, src, dst)?;
    Ok(CloneKind::Sparse)
}

/// Copies the data extents of `s` (`len` bytes) into `d`, leaving holes as holes.
fn sparse_copy(s: &File, d: &File, len: u64, src: &Path, dst: &Path) -> Result<(), CloneError> {
    let derr = |e| CloneError::Destination(dst.into(), e);
    d.set_len(len).map_err(derr)?;
    let mut buf = vec![0u8; CHUNK];
    let mut pos = 0u64;
    while pos < len {
        let start = match lseek(s.as_fd(), pos as i64, Whence::SeekData) {
            Ok(o) => o as u64,
            Err(Errno::ENXIO) => break,
            Err(e) => return Err(CloneError::Source(src.into(), e.into())),
        };
        if start >= len {
            break;
        }
        let end = lseek(s.as_fd(), start as i64, Whence::SeekHole)
            .map_err(|e| CloneError::Source(src.into(), e.into()))? as u64;
        let end = end.min(len);
        let mut off = start;
        while off < end {
            let n = ((end - off) as usize).min(CHUNK);
            s.read_exact_at(&mut buf[..n], off)
                .map_err(|e| CloneError::Source(src.into(), e))?;
            d.write_all_at(&buf[..n], off).map_err(derr)?;
            off += n as u64;
        }
        pos = end;
    }
    d.sync_all().map_err(derr)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    /// A 64 MiB file with data at 0, at 20 MiB and in its last bytes, holes between.
    fn sparse_source(dir: &Path) -> PathBuf {
        let p = dir.join("src.img");
        let f = File::create(&p).unwrap();
        f.set_len(64 << 20).unwrap();
        f.write_all_at(&[0xab; 8192], 0).unwrap();
        f.write_all_at(b"in the middle", 20 << 20).unwrap();
        f.write_all_at(b"at the end", (64 << 20) - 10).unwrap();
        f.sync_all().unwrap();
        p
    }

    #[test]
    fn a_clone_has_the_same_bytes_and_keeps_the_holes() {
        let dir = tempfile::tempdir().unwrap();
        let src = sparse_source(dir.path());
        let dst = dir.path().join("dst.img");
        let kind = clone_file(&src, &dst).unwrap();
        assert_eq!(std::fs::read(&src).unwrap(), std::fs::read(&dst).unwrap());
        let (sm, dm) = (
            std::fs::metadata(&src).unwrap(),
            std::fs::metadata(&dst).unwrap(),
        );
        assert_eq!(dm.len(), 64 << 20);
        // Allocated blocks (512 B each): a few extents, not 64 MiB.
        assert!(
            dm.blocks() * 512 < 4 << 20,
            "{kind:?}: {} blocks",
            dm.blocks()
        );
        assert!(dm.blocks() <= sm.blocks() + 64, "{kind:?}");
        // The copy is its own file: writing it leaves the source as it was.
        let before = std::fs::read(&src).unwrap();
        let f = OpenOptions::new().write(true).open(&dst).unwrap();
        f.write_all_at(b"only in the clone", 0).unwrap();
        assert_eq!(std::fs::read(&src).unwrap(), before);
    }

    #[test]
    fn the_sparse_copy_itself_keeps_the_holes() {
        // Called directly, so it runs even where the file system could reflink.
        let dir = tempfile::tempdir().unwrap();
        let src = sparse_source(dir.path());
        let dst = dir.path().join("dst.img");
        let (s, d) = (File::open(&src).unwrap(), File::create(&dst).unwrap());
        sparse_copy(&s, &d, 64 << 20, &src, &dst).unwrap();
        assert_eq!(std::fs::read(&src).unwrap(), std::fs::read(&dst).unwrap());
        let blocks = std::fs::metadata(&dst).unwrap().blocks();
        assert!(blocks * 512 < 4 << 20, "{blocks} blocks");
    }

    #[test]
    fn an_existing_destination_or_a_missing_source_is_refused_and_nothing_is_left() {
        let dir = tempfile::tempdir().unwrap();
        let src = sparse_source(dir.path());
        let dst = dir.path().join("dst.img");
        std::fs::write(&dst, b"mine").unwrap();
        let e = clone_file(&src, &dst).unwrap_err();
        assert!(matches!(e, CloneError::Destination(..)), "{e}");
        assert_eq!(std::fs::read(&dst).unwrap(), b"mine");
        let missing = dir.path().join("missing.img");
        let other = dir.path().join("other.img");
        let e = clone_file(&missing, &other).unwrap_err();
        assert!(e.to_string().contains("missing.img"), "{e}");
        assert!(!other.exists());
    }
}

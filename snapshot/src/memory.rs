//! Guest RAM as a sparse file.
//!
//! Saving copies only the extents the guest populated (`SEEK_DATA`/`SEEK_HOLE` on the memfd),
//! and skips pages that are all zeros, so the file's allocated size follows what the guest
//! used, not its RAM size. Restoring fills a fresh memfd from the file's data extents: the
//! VMM and every vhost-user backend map guest RAM from that fd, so a clone needs a shared
//! mapping of its own; a private copy-on-write mapping of the snapshot file would hide the
//! backends' writes (and theirs from the guest).

use std::fs::File;
use std::io;
use std::os::fd::AsFd;
use std::os::unix::fs::FileExt;

use nix::errno::Errno;
use nix::sys::memfd::{memfd_create, MFdFlags};
use nix::unistd::{lseek, Whence};

use crate::manifest::MemoryRegion;

/// Granularity of the all-zeros check: a page.
const PAGE: usize = 4096;
/// Bytes copied per read.
const CHUNK: usize = 1 << 20;

/// Why guest memory could not be saved or restored.
#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    /// Finding the data extents of the source failed.
    #[error("cannot find the populated extents of guest memory: {0}")]
    Seek(Errno),
    /// Reading the source failed.
    #[error("reading guest memory: {0}")]
    Read(io::Error),
    /// Writing the destination failed.
    #[error("writing guest memory: {0}")]
    Write(io::Error),
    /// The memfd for a restore could not be created or sized.
    #[error("creating the guest memory memfd: {0}")]
    Memfd(io::Error),
}

/// The next data extent `[start, end)` of `file` at or after `from`, clipped to `limit`.
fn next_extent(file: &File, from: u64, limit: u64) -> Result<Option<(u64, u64)>, MemoryError> {
    if from >= limit {
        return Ok(None);
    }
    let start = match lseek(file.as_fd(), from as i64, Whence::SeekData) {
        Ok(s) => s as u64,
        // ENXIO: no data at or after `from`.
        Err(Errno::ENXIO) => return Ok(None),
        Err(e) => return Err(MemoryError::Seek(e)),
    };
    if start >= limit {
        return Ok(None);
    }
    let end = lseek(file.as_fd(), start as i64, Whence::SeekHole).map_err(MemoryError::Seek)?;
    Ok(Some((start, (end as u64).min(limit))))
}

/// Copies the data extents of `src` within `[begin, end)` to the same offsets of `dst`,
/// leaving all-zero pages unwritten. Returns the bytes written.
fn copy_extents(src: &File, dst: &File, begin: u64, end: u64) -> Result<u64, MemoryError> {
    let mut buf = vec![0u8; CHUNK];
    let mut written = 0;
    let mut pos = begin;
    while let Some((start, stop)) = next_extent(src, pos, end)? {
        let mut off = start;
        while off < stop {
            let len = ((stop - off) as usize).min(CHUNK);
            src.read_exact_at(&mut buf[..len], off)
                .map_err(MemoryError::Read)?;
            for (i, page) in buf[..len].chunks(PAGE).enumerate() {
                if page.iter().any(|&b| b != 0) {
                    dst.write_all_at(page, off + (i * PAGE) as u64)
                        .map_err(MemoryError::Write)?;
                    written += page.len() as u64;
                }
            }
            off += len as u64;
        }
        pos = stop;
    }
    Ok(written)
}

/// Saves the `regions` of guest memory `src` (the VM's memfd, or any file) into `out`, at the
/// same offsets, copying only populated non-zero pages; `out` is truncated first and ends up
/// as long as the furthest region end, with holes elsewhere. Returns the bytes of data written.
pub fn save_memory(src: &File, regions: &[MemoryRegion], out: &File) -> Result<u64, MemoryError> {
    out.set_len(0).map_err(MemoryError::Write)?;
    let mut written = 0;
    let mut len = 0;
    for region in regions {
        let end = region.file_offset + region.size;
        written += copy_extents(src, out, region.file_offset, end)?;
        len = len.max(end);
    }
    out.set_len(len).map_err(MemoryError::Write)?;
    Ok(written)
}

/// Restores a memory file written by [`save_memory`] into a fresh memfd of the same length,
/// copying only the file's data extents (the rest of the memfd stays unpopulated zeros).
pub fn restore_memory(file: &File) -> Result<File, MemoryError> {
    let len = file.metadata().map_err(MemoryError::Read)?.len();
    let memfd = memfd_create(c"sm-guest-ram", MFdFlags::MFD_CLOEXEC)
        .map_err(|e| MemoryError::Memfd(e.into()))?;
    let memfd = File::from(memfd);
    memfd.set_len(len).map_err(MemoryError::Memfd)?;
    // The file holds no all-zero pages (save_memory skipped them), so each data extent is
    // copied whole, by the kernel: one copy from the page cache, none through user space.
    let mut pos = 0;
    while let Some((start, stop)) = next_extent(file, pos, len)? {
        if !send_extent(file, &memfd, start, stop)? {
            copy_extents(file, &memfd, start, stop)?;
        }
        pos = stop;
    }
    Ok(memfd)
}

/// Copies `[start, stop)` of `src` to the same offsets of `dst` with sendfile(2); false if
/// the kernel cannot do it for these files (the caller then copies through user space).
fn send_extent(src: &File, dst: &File, start: u64, stop: u64) -> Result<bool, MemoryError> {
    use std::os::fd::AsRawFd;
    lseek(dst.as_fd(), start as i64, Whence::SeekSet).map_err(MemoryError::Seek)?;
    let mut offset = start as libc::off64_t;
    while (offset as u64) < stop {
        let want = ((stop - offset as u64) as usize).min(1 << 30);
        // SAFETY: both descriptors are open files owned by the caller for the whole call, and
        // `offset` is a live local the kernel updates; sendfile touches no other memory.
        let n = unsafe { libc::sendfile64(dst.as_raw_fd(), src.as_raw_fd(), &mut offset, want) };
        match n {
            n if n > 0 => {}
            0 => {
                return Err(MemoryError::Read(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the memory file ended inside a data extent",
                )))
            }
            _ => {
                let e = io::Error::last_os_error();
                match e.raw_os_error() {
                    Some(libc::EINVAL | libc::ENOSYS | libc::EOPNOTSUPP)
                        if offset as u64 == start =>
                    {
                        return Ok(false)
                    }
                    Some(libc::EINTR) => {}
                    _ => return Err(MemoryError::Write(e)),
                }
            }
        }
    }
    Ok(true)
}

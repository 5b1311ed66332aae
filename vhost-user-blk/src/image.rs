//! The raw image file behind the device: creation, size rules, the one-writer lock, and the
//! positioned I/O the request handler needs.
//!
//! Size rules: a missing file is created sparse at the requested size; an existing file keeps
//! its size, and asking for less than it holds is an error (shrinking would silently drop
//! data). Only whole sectors are addressable, so a tail shorter than a sector is ignored.
//!
//! One writer per volume: a writable image holds an exclusive open-file-description lock
//! (`F_OFD_SETLK`) for as long as the process lives; a read-only image holds a shared one, so
//! read-only users coexist with each other but never with a writer.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use crate::config::SECTOR_SIZE;

/// Bytes in a MiB, the unit of `--size-mib`.
const MIB: u64 = 1 << 20;
/// Length of a virtio-blk device ID (VIRTIO_BLK_ID_BYTES).
pub const ID_LEN: usize = 20;
/// System calls the image needs once the sandbox is up, beyond the vhost-user basics.
pub const IMAGE_SYSCALLS: &[libc::c_long] = &[
    libc::SYS_pread64,
    libc::SYS_preadv,
    libc::SYS_pwrite64,
    libc::SYS_pwritev,
    libc::SYS_fallocate,
    libc::SYS_fdatasync,
    libc::SYS_fsync,
];

/// Errors opening or preparing the image file.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// The file could not be opened or created.
    #[error("cannot open image {path}: {source}")]
    Open {
        /// The image path.
        path: PathBuf,
        /// The error from open(2).
        source: io::Error,
    },
    /// A read-only image must already exist.
    #[error("image {0} does not exist (a read-only image is never created)")]
    Missing(PathBuf),
    /// Block devices, directories and the like are not served.
    #[error("image {0} is not a regular file")]
    NotRegular(PathBuf),
    /// Another process holds a conflicting lock.
    #[error("image {path} is in use: {holder} (one writer per volume)")]
    Locked {
        /// The image path.
        path: PathBuf,
        /// Who holds the conflicting lock, in words.
        holder: &'static str,
    },
    /// The lock call itself failed.
    #[error("cannot lock image {path}: {source}")]
    Lock {
        /// The image path.
        path: PathBuf,
        /// The error from fcntl(2).
        source: io::Error,
    },
    /// The requested size is below what the file already holds.
    #[error("image {path} is {actual_mib} MiB, larger than --size-mib {requested_mib}; shrinking would lose data")]
    SizeTooSmall {
        /// The image path.
        path: PathBuf,
        /// The file's size, rounded up to MiB.
        actual_mib: u64,
        /// The `--size-mib` given.
        requested_mib: u64,
    },
    /// Setting the size of a new image failed.
    #[error("cannot size image {path} to {mib} MiB: {source}")]
    Resize {
        /// The image path.
        path: PathBuf,
        /// The size asked for.
        mib: u64,
        /// The error from ftruncate(2).
        source: io::Error,
    },
    /// The image has no whole sector.
    #[error("image {0} is smaller than one 512-byte sector")]
    Empty(PathBuf),
}

/// How to open an image.
#[derive(Clone, Debug)]
pub struct ImageOptions {
    /// Path of the raw image.
    pub path: PathBuf,
    /// Size for a new image, and the least an existing image may have when `Some`.
    pub size_mib: Option<u64>,
    /// Size for a new image when `size_mib` is `None`.
    pub default_size_mib: u64,
    /// Open read-only with a shared lock.
    pub read_only: bool,
}

/// An open, locked image file of a fixed size.
#[derive(Debug)]
pub struct Image {
    file: File,
    path: PathBuf,
    capacity: u64,
    read_only: bool,
    id: [u8; ID_LEN],
}

impl Image {
    /// Opens (or creates) and locks the image according to `opts`.
    pub fn open(opts: &ImageOptions) -> Result<Image, ImageError> {
        let path = opts.path.clone();
        let open_err = |source| ImageError::Open {
            path: path.clone(),
            source,
        };
        let file = if opts.read_only {
            match File::open(&path) {
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    return Err(ImageError::Missing(path))
                }
                r => r.map_err(open_err)?,
            }
        } else {
            OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(&path)
                .map_err(open_err)?
        };
        let meta = file.metadata().map_err(open_err)?;
        if !meta.file_type().is_file() || meta.file_type().is_block_device() {
            return Err(ImageError::NotRegular(path));
        }
        lock(&file, &path, opts.read_only)?;

        // Size only after locking, so two racing creators cannot both resize.
        let mut len = file.metadata().map_err(open_err)?.len();
        if let Some(mib) = opts.size_mib {
            if len > mib.saturating_mul(MIB) {
                return Err(ImageError::SizeTooSmall {
                    path,
                    actual_mib: len.div_ceil(MIB),
                    requested_mib: mib,
                });
            }
        }
        if len == 0 && !opts.read_only {
            let mib = opts.size_mib.unwrap_or(opts.default_size_mib);
            let bytes = mib.checked_mul(MIB).ok_or(ImageError::Resize {
                path: path.clone(),
                mib,
                source: io::Error::from_raw_os_error(libc::EFBIG),
            })?;
            file.set_len(bytes).map_err(|source| ImageError::Resize {
                path: path.clone(),
                mib,
                source,
            })?;
            len = bytes;
        }
        let capacity = len - len % SECTOR_SIZE;
        if capacity == 0 {
            return Err(ImageError::Empty(path));
        }
        Ok(Image {
            id: device_id(meta.dev(), meta.ino()),
            file,
            path,
            capacity,
            read_only: opts.read_only,
        })
    }

    /// Addressable size in bytes (a whole number of sectors).
    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    /// Whether the image refuses writes.
    pub fn read_only(&self) -> bool {
        self.read_only
    }

    /// Path the image was opened from (for messages).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The device ID answered to VIRTIO_BLK_T_GET_ID (stable for one file).
    pub fn id(&self) -> &[u8; ID_LEN] {
        &self.id
    }

    /// Reads exactly `len` bytes at `offset` into the buffers described by `iov`.
    ///
    /// # Safety
    /// Every `iov` entry must describe memory valid for writes for the whole call.
    pub unsafe fn read_vectored_at(&self, iov: &mut [libc::iovec], offset: u64) -> io::Result<()> {
        // SAFETY: the caller guarantees the buffers; preadv only writes inside them.
        unsafe { transfer_all(iov, offset, |v, n, off| libc::preadv(self.fd(), v, n, off)) }
    }

    /// Writes the buffers described by `iov` at `offset`.
    ///
    /// # Safety
    /// Every `iov` entry must describe memory valid for reads for the whole call.
    pub unsafe fn write_vectored_at(&self, iov: &mut [libc::iovec], offset: u64) -> io::Result<()> {
        // SAFETY: the caller guarantees the buffers; pwritev only reads them.
        unsafe { transfer_all(iov, offset, |v, n, off| libc::pwritev(self.fd(), v, n, off)) }
    }

    /// Makes written data durable (VIRTIO_BLK_T_FLUSH).
    pub fn flush(&self) -> io::Result<()> {
        self.file.sync_data()
    }

    /// Deallocates a byte range: the host file's allocated blocks drop, reads return zeroes.
    pub fn discard(&self, offset: u64, len: u64) -> io::Result<()> {
        self.fallocate(
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            offset,
            len,
        )
    }

    /// Zeroes a byte range, deallocating it when `unmap` allows.
    pub fn write_zeroes(&self, offset: u64, len: u64, unmap: bool) -> io::Result<()> {
        if unmap {
            return self.discard(offset, len);
        }
        match self.fallocate(
            libc::FALLOC_FL_ZERO_RANGE | libc::FALLOC_FL_KEEP_SIZE,
            offset,
            len,
        ) {
            Err(e) if e.raw_os_error() == Some(libc::EOPNOTSUPP) => self.discard(offset, len),
            r => r,
        }
    }

    fn fallocate(&self, mode: libc::c_int, offset: u64, len: u64) -> io::Result<()> {
        let (off, len) = (to_off(offset)?, to_off(len)?);
        loop {
            // SAFETY: fallocate on an fd we own; no memory is passed.
            let r = unsafe { libc::fallocate(self.fd(), mode, off, len) };
            if r == 0 {
                return Ok(());
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
    }

    fn fd(&self) -> libc::c_int {
        self.file.as_raw_fd()
    }
}

fn to_off(v: u64) -> io::Result<libc::off_t> {
    libc::off_t::try_from(v).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))
}

/// Repeats a vectored transfer until every byte has moved, advancing `iov` in place.
///
/// # Safety
/// `op` must only touch memory inside the `iov` buffers, which must stay valid.
unsafe fn transfer_all(
    iov: &mut [libc::iovec],
    offset: u64,
    op: impl Fn(*const libc::iovec, libc::c_int, libc::off_t) -> isize,
) -> io::Result<()> {
    let mut off = offset;
    let mut rest = iov;
    while !rest.is_empty() {
        let n = rest.len().min(libc::UIO_MAXIOV as usize) as libc::c_int;
        let done = op(rest.as_ptr(), n, to_off(off)?);
        if done < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if done == 0 {
            // The file shrank under us (someone truncated it): refuse rather than spin.
            return Err(io::Error::from(io::ErrorKind::UnexpectedEof));
        }
        let mut done = done as usize;
        off += done as u64;
        while let Some(first) = rest.first_mut() {
            if done < first.iov_len {
                // SAFETY: advancing within the same buffer, `done` < its length.
                first.iov_base = unsafe { (first.iov_base as *mut u8).add(done) }.cast();
                first.iov_len -= done;
                break;
            }
            done -= first.iov_len;
            rest = &mut rest[1..];
        }
    }
    Ok(())
}

/// Takes the whole-file OFD lock: exclusive for writers, shared for readers.
fn lock(file: &File, path: &Path, read_only: bool) -> Result<(), ImageError> {
    let fl = libc::flock {
        l_type: if read_only {
            libc::F_RDLCK
        } else {
            libc::F_WRLCK
        } as libc::c_short,
        l_whence: libc::SEEK_SET as libc::c_short,
        l_start: 0,
        l_len: 0,
        l_pid: 0,
    };
    match nix::fcntl::fcntl(file, nix::fcntl::FcntlArg::F_OFD_SETLK(&fl)) {
        Ok(_) => Ok(()),
        Err(nix::errno::Errno::EAGAIN | nix::errno::Errno::EACCES) => Err(ImageError::Locked {
            path: path.to_owned(),
            holder: if read_only {
                "another process has it open for writing"
            } else {
                "another process has it open"
            },
        }),
        Err(e) => Err(ImageError::Lock {
            path: path.to_owned(),
            source: e.into(),
        }),
    }
}

/// A 20-byte ID from the file's device and inode: stable across restarts of one volume.
fn device_id(dev: u64, ino: u64) -> [u8; ID_LEN] {
    let text = format!("sm{dev:x}-{ino:x}");
    let mut id = [0u8; ID_LEN];
    let n = text.len().min(ID_LEN);
    id[..n].copy_from_slice(&text.as_bytes()[..n]);
    id
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(path: &Path, size_mib: Option<u64>, read_only: bool) -> ImageOptions {
        ImageOptions {
            path: path.to_owned(),
            size_mib,
            default_size_mib: 4,
            read_only,
        }
    }

    #[test]
    fn creates_sparse_at_default_size() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("v.img");
        let img = Image::open(&opts(&p, None, false)).unwrap();
        assert_eq!(img.capacity(), 4 << 20);
        let meta = std::fs::metadata(&p).unwrap();
        assert_eq!(meta.len(), 4 << 20);
        assert_eq!(meta.blocks(), 0, "a new image must be sparse");
    }

    #[test]
    fn existing_file_keeps_size_and_refuses_shrink() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("v.img");
        std::fs::write(&p, vec![1u8; 3 << 20]).unwrap();
        let img = Image::open(&opts(&p, Some(8), false)).unwrap();
        assert_eq!(img.capacity(), 3 << 20);
        drop(img);
        let err = Image::open(&opts(&p, Some(2), false)).unwrap_err();
        assert!(matches!(err, ImageError::SizeTooSmall { .. }), "{err}");
    }

    #[test]
    fn read_only_never_creates() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("none.img");
        let err = Image::open(&opts(&p, None, true)).unwrap_err();
        assert!(matches!(err, ImageError::Missing(_)), "{err}");
        assert!(!p.exists());
    }

    #[test]
    fn one_writer_many_readers() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("v.img");
        let w = Image::open(&opts(&p, None, false)).unwrap();
        let err = Image::open(&opts(&p, None, false)).unwrap_err();
        assert!(err.to_string().contains("v.img"), "{err}");
        assert!(matches!(err, ImageError::Locked { .. }));
        assert!(matches!(
            Image::open(&opts(&p, None, true)).unwrap_err(),
            ImageError::Locked { .. }
        ));
        drop(w);
        let r1 = Image::open(&opts(&p, None, true)).unwrap();
        let _r2 = Image::open(&opts(&p, None, true)).unwrap();
        assert!(Image::open(&opts(&p, None, false)).is_err());
        drop(r1);
    }

    #[test]
    fn vectored_io_and_discard() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("v.img");
        let img = Image::open(&opts(&p, Some(1), false)).unwrap();
        let mut a = vec![0xaau8; 4096];
        let mut b = vec![0xbbu8; 8192];
        let mut iov = [
            libc::iovec {
                iov_base: a.as_mut_ptr().cast(),
                iov_len: a.len(),
            },
            libc::iovec {
                iov_base: b.as_mut_ptr().cast(),
                iov_len: b.len(),
            },
        ];
        // SAFETY: both buffers outlive the call.
        unsafe { img.write_vectored_at(&mut iov, 65536).unwrap() };
        img.flush().unwrap();
        let data = std::fs::read(&p).unwrap();
        assert!(data[65536..65536 + 4096].iter().all(|x| *x == 0xaa));
        assert!(data[65536 + 4096..65536 + 12288].iter().all(|x| *x == 0xbb));
        let allocated = std::fs::metadata(&p).unwrap().blocks();
        assert!(allocated > 0);
        img.discard(65536, 12288).unwrap();
        assert!(std::fs::metadata(&p).unwrap().blocks() < allocated);
        let mut back = vec![1u8; 4096];
        let mut iov = [libc::iovec {
            iov_base: back.as_mut_ptr().cast(),
            iov_len: back.len(),
        }];
        // SAFETY: `back` outlives the call.
        unsafe { img.read_vectored_at(&mut iov, 65536).unwrap() };
        assert!(back.iter().all(|x| *x == 0));
    }
}

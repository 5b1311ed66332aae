//! Shared memory regions of vhost-user devices (virtio 1.2, "Shared Memory Regions"): a
//! range of guest-physical addresses outside RAM that the backend fills with file mappings
//! through SHMEM_MAP/SHMEM_UNMAP on its backend-request channel. virtio-fs uses region 0
//! as its DAX window: the guest maps file pages from it and reads the host's page cache
//! directly.
//!
//! sm-vmm reserves each region as inaccessible anonymous memory and registers it as a KVM
//! memory slot once; a backend's map request replaces part of the reservation with the
//! file (`MAP_FIXED`), an unmap puts the reservation back. KVM follows the host mappings
//! through its MMU notifier, so no memory slot changes at run time.

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;

use vhost::vhost_user::message::{VhostUserMMap, VhostUserMMapFlags};
use vhost::vhost_user::{FrontendReqHandler, HandlerResult, VhostUserFrontendReqHandler};

/// Alignment of a map request's offsets and length.
pub const PAGE_SIZE: u64 = 4096;

/// Errors setting a shared memory region up.
#[derive(Debug, thiserror::Error)]
pub enum ShmemError {
    /// The size is zero or not a whole number of pages.
    #[error("shared memory region of {0:#x} bytes is not a whole number of pages")]
    BadSize(u64),
    /// Reserving host address space failed.
    #[error("cannot reserve {0:#x} bytes of address space for a shared memory region: {1}")]
    Reserve(u64, io::Error),
}

/// One shared memory region: its guest-physical placement and the host address range
/// that backs it.
#[derive(Debug)]
pub struct SharedMemoryRegion {
    host: usize,
    len: u64,
    guest_addr: u64,
}

impl SharedMemoryRegion {
    /// Reserves `len` bytes of host address space for a region the guest sees at
    /// `guest_addr`; until the backend maps something, guest accesses fault.
    pub fn new(guest_addr: u64, len: u64) -> Result<Self, ShmemError> {
        if len == 0 || len % PAGE_SIZE != 0 {
            return Err(ShmemError::BadSize(len));
        }
        let size = usize::try_from(len).map_err(|_| ShmemError::BadSize(len))?;
        // SAFETY: a new anonymous mapping at an address the kernel picks touches no
        // existing memory; the result is checked below.
        let host = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                size,
                libc::PROT_NONE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if host == libc::MAP_FAILED {
            return Err(ShmemError::Reserve(len, io::Error::last_os_error()));
        }
        Ok(SharedMemoryRegion {
            host: host as usize,
            len,
            guest_addr,
        })
    }

    /// Guest-physical address of the region.
    pub fn guest_addr(&self) -> u64 {
        self.guest_addr
    }

    /// Length of the region in bytes.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether the region is empty (never: regions have at least one page).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Host address of the region's first byte (for the KVM memory slot).
    pub fn host_addr(&self) -> u64 {
        self.host as u64
    }

    /// Checks that `[offset, offset + len)` is a page-aligned range inside the region and
    /// returns its host address and length.
    fn range(&self, offset: u64, len: u64) -> io::Result<(*mut libc::c_void, usize)> {
        let end = offset.checked_add(len).ok_or_else(einval)?;
        if len == 0 || offset % PAGE_SIZE != 0 || len % PAGE_SIZE != 0 || end > self.len {
            return Err(einval());
        }
        // In range of a usize: `end` is within the region, whose size is a usize.
        Ok((
            (self.host + offset as usize) as *mut libc::c_void,
            len as usize,
        ))
    }

    /// Maps `len` bytes of `fd` from `fd_offset` at `offset` in the region.
    pub fn map(
        &self,
        offset: u64,
        len: u64,
        fd: RawFd,
        fd_offset: u64,
        writable: bool,
    ) -> io::Result<()> {
        let (addr, size) = self.range(offset, len)?;
        if fd_offset % PAGE_SIZE != 0 {
            return Err(einval());
        }
        let fd_offset = libc::off_t::try_from(fd_offset).map_err(|_| einval())?;
        let prot = if writable {
            libc::PROT_READ | libc::PROT_WRITE
        } else {
            libc::PROT_READ
        };
        // SAFETY: `range` keeps [addr, addr + size) inside this region's reservation, which
        // only this struct owns and no Rust reference points into (the guest reaches it
        // through KVM), so replacing those pages affects nothing else in this process.
        let got = unsafe {
            libc::mmap(
                addr,
                size,
                prot,
                libc::MAP_SHARED | libc::MAP_FIXED,
                fd,
                fd_offset,
            )
        };
        if got == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Puts the reservation back over `len` bytes at `offset` (`u64::MAX`: to the end).
    pub fn unmap(&self, offset: u64, len: u64) -> io::Result<()> {
        let len = if len == u64::MAX {
            self.len.checked_sub(offset).ok_or_else(einval)?
        } else {
            len
        };
        let (addr, size) = self.range(offset, len)?;
        // SAFETY: as in `map`: the range lies inside this region's own reservation.
        let got = unsafe {
            libc::mmap(
                addr,
                size,
                libc::PROT_NONE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE | libc::MAP_FIXED,
                -1,
                0,
            )
        };
        if got == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

impl Drop for SharedMemoryRegion {
    fn drop(&mut self) {
        // SAFETY: the reservation (and whatever was mapped into it) belongs to this struct;
        // the VM that used it is gone once the last reference drops.
        unsafe { libc::munmap(self.host as *mut libc::c_void, self.len as usize) };
    }
}

fn einval() -> io::Error {
    io::Error::from_raw_os_error(libc::EINVAL)
}

/// Serves one backend's SHMEM_MAP/SHMEM_UNMAP requests on its regions (indexed by
/// shared memory ID).
pub struct RegionMapper {
    regions: Vec<Option<Arc<SharedMemoryRegion>>>,
    name: String,
}

impl RegionMapper {
    fn region(&self, id: u8) -> io::Result<&SharedMemoryRegion> {
        self.regions
            .get(usize::from(id))
            .and_then(|r| r.as_deref())
            .ok_or_else(einval)
    }
}

impl VhostUserFrontendReqHandler for RegionMapper {
    fn shmem_map(&self, req: &VhostUserMMap, fd: &dyn AsRawFd) -> HandlerResult<u64> {
        let writable = VhostUserMMapFlags::from_bits_truncate(req.flags)
            .contains(VhostUserMMapFlags::WRITABLE);
        let (offset, len, fd_offset) = (req.shm_offset, req.len, req.fd_offset);
        self.region(req.shmid)?
            .map(offset, len, fd.as_raw_fd(), fd_offset, writable)
            .inspect_err(|e| {
                tracing::warn!(
                    "{}: SHMEM_MAP {offset:#x}+{len:#x} from file offset {fd_offset:#x}: {e}",
                    self.name
                )
            })?;
        Ok(0)
    }

    fn shmem_unmap(&self, req: &VhostUserMMap) -> HandlerResult<u64> {
        let (offset, len) = (req.shm_offset, req.len);
        self.region(req.shmid)?
            .unmap(offset, len)
            .inspect_err(|e| {
                tracing::warn!("{}: SHMEM_UNMAP {offset:#x}+{len:#x}: {e}", self.name)
            })?;
        Ok(0)
    }
}

/// Starts the thread serving a backend's requests for `regions`; returns the handler's
/// socket end to pass to the backend with SET_BACKEND_REQ_FD. The thread ends when the
/// backend closes the channel or breaks the protocol.
pub fn serve_backend_requests(
    name: &str,
    regions: Vec<Option<Arc<SharedMemoryRegion>>>,
    reply_ack: bool,
) -> io::Result<std::os::fd::OwnedFd> {
    let mapper = Arc::new(RegionMapper {
        regions,
        name: name.to_string(),
    });
    let mut handler = FrontendReqHandler::new(mapper).map_err(io::Error::other)?;
    handler.set_reply_ack_flag(reply_ack);
    // SAFETY: the raw fd is the handler's live socket; dup'ing it gives the caller its own
    // descriptor, which stays valid however long the handler lives.
    let tx = unsafe { std::os::fd::BorrowedFd::borrow_raw(handler.get_tx_raw_fd()) }
        .try_clone_to_owned()?;
    let name = name.to_string();
    std::thread::Builder::new()
        .name("vhost-user-shmem".into())
        .spawn(move || loop {
            match handler.handle_request() {
                Ok(_) => {}
                // The request failed and the backend got the error; keep serving.
                Err(vhost::vhost_user::Error::ReqHandlerError(_)) => {}
                Err(vhost::vhost_user::Error::Disconnected) => break,
                Err(e) => {
                    tracing::warn!("{name}: backend request channel closed: {e}");
                    break;
                }
            }
        })?;
    Ok(tx)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn read_host(region: &SharedMemoryRegion, offset: u64, len: usize) -> Vec<u8> {
        let mut buf = vec![0u8; len];
        // SAFETY: the test mapped [offset, offset + len) readable just before.
        unsafe {
            std::ptr::copy_nonoverlapping(
                (region.host + offset as usize) as *const u8,
                buf.as_mut_ptr(),
                len,
            )
        };
        buf
    }

    #[test]
    fn a_mapped_file_shows_through_the_region_and_bad_ranges_are_refused() {
        let mut file = tempfile::tempfile().unwrap();
        let data: Vec<u8> = (0..3 * PAGE_SIZE).map(|i| (i % 251) as u8).collect();
        file.write_all(&data).unwrap();
        let region = SharedMemoryRegion::new(0x1_4000_0000, 16 * PAGE_SIZE).unwrap();
        let fd = file.as_raw_fd();
        region
            .map(4 * PAGE_SIZE, 2 * PAGE_SIZE, fd, PAGE_SIZE, false)
            .unwrap();
        assert_eq!(
            read_host(&region, 4 * PAGE_SIZE, 2 * PAGE_SIZE as usize),
            &data[PAGE_SIZE as usize..3 * PAGE_SIZE as usize]
        );
        for (offset, len, fd_offset) in [
            (15 * PAGE_SIZE, 2 * PAGE_SIZE, 0), // runs past the end
            (1, PAGE_SIZE, 0),                  // unaligned offset
            (0, 100, 0),                        // unaligned length
            (0, PAGE_SIZE, 7),                  // unaligned file offset
            (0, 0, 0),                          // empty
            (u64::MAX - PAGE_SIZE + 1, PAGE_SIZE, 0),
        ] {
            let e = region.map(offset, len, fd, fd_offset, false).unwrap_err();
            assert_eq!(e.raw_os_error(), Some(libc::EINVAL), "{offset:#x}+{len:#x}");
        }
        region.unmap(4 * PAGE_SIZE, u64::MAX).unwrap();
        assert!(region.unmap(17 * PAGE_SIZE, PAGE_SIZE).is_err());
        assert!(SharedMemoryRegion::new(0, 100).is_err());
    }
}

//! One virtio-blk request: split a descriptor chain into header, data and status, check it
//! against the device's limits and capacity, run it on the image, and write the status.
//!
//! Everything here comes from an untrusted guest. The layout is not assumed (VIRTIO_F_ANY_LAYOUT
//! is implied by virtio 1.x): the header is the first 16 device-readable bytes wherever they
//! lie, the status is the last device-writable byte, and the data is what is left in between.
//! A request that is wrong in any way gets an error status; a chain that has no place to put a
//! status is returned to the driver with a used length of 0. Nothing here panics.

use std::collections::VecDeque;
use std::io;

use tracing::{debug, warn};
use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK, VIRTIO_BLK_S_UNSUPP, VIRTIO_BLK_T_DISCARD,
    VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT,
    VIRTIO_BLK_T_WRITE_ZEROES,
};
use vm_memory::bitmap::Bitmap;
use vm_memory::{Address, Bytes, GuestAddress, GuestMemory, GuestMemoryError, VolatileSlice};

use crate::config::{
    MAX_RANGE_SECTORS, MAX_RANGE_SEGMENTS, MAX_REQUEST_BYTES, SECTOR_SIZE, SEG_MAX,
};
use crate::image::Image;

/// Most descriptors in one chain: the data segments plus a header and a status.
pub const MAX_DESCRIPTORS: usize = SEG_MAX as usize + 2;
/// Size of `struct virtio_blk_outhdr`.
const HEADER_LEN: u64 = 16;
/// Size of one `struct virtio_blk_discard_write_zeroes`.
const RANGE_LEN: u64 = 16;
/// The only flag a write-zeroes range may carry.
const WRITE_ZEROES_UNMAP: u32 = 1;

/// One descriptor of a chain, as the device sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Segment {
    /// Guest physical address of the buffer.
    pub addr: GuestAddress,
    /// Length of the buffer in bytes.
    pub len: u32,
    /// Whether the device may write the buffer (VIRTQ_DESC_F_WRITE).
    pub writable: bool,
}

/// What can be wrong with a request; each maps to a status for the driver.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    /// No device-writable byte to put the status in.
    #[error("descriptor chain has no device-writable status byte")]
    NoStatus,
    /// Device-readable buffers must all come before device-writable ones.
    #[error("device-readable descriptor after a device-writable one")]
    Order,
    /// More descriptors than the advertised segment limit allows.
    #[error("descriptor chain longer than {MAX_DESCRIPTORS} descriptors")]
    TooManyDescriptors,
    /// The device-readable part cannot hold a header.
    #[error("request header is {0} bytes, needs 16")]
    ShortHeader(u64),
    /// A request type this device does not implement.
    #[error("unsupported request type {0}")]
    Unsupported(u32),
    /// Read and write payloads are whole sectors.
    #[error("data length {0} is not a whole number of sectors")]
    Unaligned(u64),
    /// The payload exceeds SEG_MAX * SIZE_MAX.
    #[error("request of {0} bytes exceeds the {MAX_REQUEST_BYTES}-byte limit")]
    TooLarge(u64),
    /// The request addresses bytes past the end of the device.
    #[error("sector {sector} + {bytes} bytes is past the capacity of {capacity} bytes")]
    OutOfRange {
        /// First sector of the request.
        sector: u64,
        /// Length of the request in bytes.
        bytes: u64,
        /// Capacity of the device in bytes.
        capacity: u64,
    },
    /// Writes to a read-only device fail.
    #[error("write to a read-only device")]
    ReadOnly,
    /// A discard or write-zeroes range list that breaks the advertised limits.
    #[error("bad discard/write-zeroes ranges: {0}")]
    BadRanges(&'static str),
    /// Discard or write-zeroes flags this device does not implement.
    #[error("unsupported range flags {0:#x}")]
    RangeFlags(u32),
    /// A buffer outside guest memory.
    #[error("guest memory: {0}")]
    Memory(#[from] GuestMemoryError),
    /// The host file failed.
    #[error("image I/O: {0}")]
    Io(#[from] io::Error),
}

impl RequestError {
    /// The virtio-blk status byte that reports this error.
    pub fn status(&self) -> u8 {
        match self {
            RequestError::Unsupported(_) | RequestError::RangeFlags(_) => VIRTIO_BLK_S_UNSUPP as u8,
            _ => VIRTIO_BLK_S_IOERR as u8,
        }
    }
}

/// A list of guest buffers seen as one byte stream.
#[derive(Debug, Default)]
struct Buffers {
    parts: VecDeque<(GuestAddress, u64)>,
    total: u64,
}

impl Buffers {
    fn push(&mut self, addr: GuestAddress, len: u64) {
        if len > 0 {
            self.parts.push_back((addr, len));
            self.total += len;
        }
    }

    /// Removes the first `n` bytes, or returns `None` (and leaves `self` alone) if shorter.
    fn take_front(&mut self, mut n: u64) -> Option<Buffers> {
        if n > self.total {
            return None;
        }
        let mut out = Buffers::default();
        while n > 0 {
            let (addr, len) = self.parts.pop_front()?;
            let take = len.min(n);
            out.push(addr, take);
            if take < len {
                self.parts.push_front((addr.checked_add(take)?, len - take));
            }
            self.total -= take;
            n -= take;
        }
        Some(out)
    }

    /// Removes the last byte and returns its address.
    fn take_last_byte(&mut self) -> Option<GuestAddress> {
        let (addr, len) = self.parts.pop_back()?;
        self.total -= 1;
        if len > 1 {
            self.parts.push_back((addr, len - 1));
        }
        addr.checked_add(len - 1)
    }

    /// Copies the whole contents out of guest memory.
    fn read<M: GuestMemory>(&self, mem: &M) -> Result<Vec<u8>, GuestMemoryError> {
        let mut out = vec![0u8; self.total as usize];
        let mut at = 0usize;
        for (addr, len) in &self.parts {
            let len = *len as usize;
            mem.read_slice(&mut out[at..at + len], *addr)?;
            at += len;
        }
        Ok(out)
    }

    /// Copies `data` into the start of the buffers; returns how many bytes fit.
    fn write<M: GuestMemory>(&self, mem: &M, data: &[u8]) -> Result<usize, GuestMemoryError> {
        let mut at = 0usize;
        for (addr, len) in &self.parts {
            let n = (*len as usize).min(data.len() - at);
            mem.write_slice(&data[at..at + n], *addr)?;
            at += n;
        }
        Ok(at)
    }

    /// The host mappings of the buffers, in order.
    fn slices<'m, M: GuestMemory>(
        &self,
        mem: &'m M,
    ) -> Result<Vec<VolatileSlice<'m, vm_memory::bitmap::MS<'m, M>>>, GuestMemoryError> {
        let mut out = Vec::with_capacity(self.parts.len());
        for (addr, len) in &self.parts {
            for s in mem.get_slices(*addr, *len as usize) {
                out.push(s?);
            }
        }
        Ok(out)
    }
}

/// Runs the request carried by one descriptor chain and returns the used length to report
/// (bytes written into device-writable buffers, status included).
pub fn handle<M: GuestMemory>(
    mem: &M,
    image: &Image,
    chain: impl IntoIterator<Item = Segment>,
) -> u32 {
    let (readable, mut writable) = match split(chain) {
        Ok(parts) => parts,
        Err(e) => {
            debug!("dropping malformed request: {e}");
            return 0;
        }
    };
    let Some(status_addr) = writable.take_last_byte() else {
        debug!("dropping request: {}", RequestError::NoStatus);
        return 0;
    };
    // A request that cannot report its outcome must not run: the driver would see it
    // dropped while a write, discard or write-zeroes had changed the image.
    if !mem.address_in_range(status_addr) {
        debug!("dropping request whose status byte is outside guest memory");
        return 0;
    }
    let (status, written) = match execute(mem, image, readable, writable) {
        Ok(n) => (VIRTIO_BLK_S_OK as u8, n),
        Err(e) => {
            match &e {
                RequestError::Io(_) => warn!("request failed: {e}"),
                _ => debug!("request refused: {e}"),
            }
            (e.status(), 0)
        }
    };
    if let Err(e) = mem.write_obj(status, status_addr) {
        debug!("dropping request whose status byte is outside guest memory: {e}");
        return 0;
    }
    written.saturating_add(1)
}

/// Separates the device-readable and device-writable halves of a chain.
fn split(chain: impl IntoIterator<Item = Segment>) -> Result<(Buffers, Buffers), RequestError> {
    let (mut readable, mut writable) = (Buffers::default(), Buffers::default());
    for (i, seg) in chain.into_iter().enumerate() {
        if i >= MAX_DESCRIPTORS {
            return Err(RequestError::TooManyDescriptors);
        }
        if seg.writable {
            writable.push(seg.addr, seg.len.into());
        } else if writable.total > 0 {
            return Err(RequestError::Order);
        } else {
            readable.push(seg.addr, seg.len.into());
        }
    }
    Ok((readable, writable))
}

/// Runs a parsed request; returns the number of data bytes written to the guest.
fn execute<M: GuestMemory>(
    mem: &M,
    image: &Image,
    mut readable: Buffers,
    writable: Buffers,
) -> Result<u32, RequestError> {
    let header = readable
        .take_front(HEADER_LEN)
        .ok_or(RequestError::ShortHeader(readable.total))?
        .read(mem)?;
    let kind = u32::from_le_bytes(header[0..4].try_into().expect("4 bytes"));
    let sector = u64::from_le_bytes(header[8..16].try_into().expect("8 bytes"));
    let writes = matches!(
        kind,
        VIRTIO_BLK_T_OUT | VIRTIO_BLK_T_DISCARD | VIRTIO_BLK_T_WRITE_ZEROES
    );
    if writes && image.read_only() {
        return Err(RequestError::ReadOnly);
    }
    match kind {
        VIRTIO_BLK_T_IN => {
            let offset = check_rw(image, sector, writable.total)?;
            let slices = writable.slices(mem)?;
            let guards: Vec<_> = slices.iter().map(|s| s.ptr_guard_mut()).collect();
            let mut iov: Vec<libc::iovec> = guards
                .iter()
                .map(|g| libc::iovec {
                    iov_base: g.as_ptr().cast(),
                    iov_len: g.len(),
                })
                .collect();
            // SAFETY: every iovec is a guest memory mapping borrowed from `mem` (through
            // `slices` and `guards`) for the length of the slice, alive until this returns.
            unsafe { image.read_vectored_at(&mut iov, offset)? };
            for s in &slices {
                s.bitmap().mark_dirty(0, s.len());
            }
            Ok(writable.total as u32)
        }
        VIRTIO_BLK_T_OUT => {
            let offset = check_rw(image, sector, readable.total)?;
            let slices = readable.slices(mem)?;
            let guards: Vec<_> = slices.iter().map(|s| s.ptr_guard()).collect();
            let mut iov: Vec<libc::iovec> = guards
                .iter()
                .map(|g| libc::iovec {
                    iov_base: g.as_ptr() as *mut libc::c_void,
                    iov_len: g.len(),
                })
                .collect();
            // SAFETY: as for reads; pwritev only reads from these guest mappings.
            unsafe { image.write_vectored_at(&mut iov, offset)? };
            Ok(0)
        }
        VIRTIO_BLK_T_FLUSH => {
            if !image.read_only() {
                image.flush()?;
            }
            Ok(0)
        }
        VIRTIO_BLK_T_GET_ID => Ok(writable.write(mem, image.id())? as u32),
        VIRTIO_BLK_T_DISCARD | VIRTIO_BLK_T_WRITE_ZEROES => {
            let ranges = ranges(mem, image, &readable)?;
            // Every range is checked before any is applied: a refused request changes nothing.
            let allowed = match kind {
                VIRTIO_BLK_T_DISCARD => 0,
                _ => WRITE_ZEROES_UNMAP,
            };
            if let Some(&(_, _, flags)) = ranges.iter().find(|r| r.2 & !allowed != 0) {
                return Err(RequestError::RangeFlags(flags));
            }
            // An empty range is nothing to do (fallocate would refuse a length of 0).
            for (offset, len, flags) in ranges.into_iter().filter(|r| r.1 > 0) {
                if kind == VIRTIO_BLK_T_DISCARD {
                    image.discard(offset, len)?;
                } else {
                    image.write_zeroes(offset, len, flags & WRITE_ZEROES_UNMAP != 0)?;
                }
            }
            Ok(0)
        }
        other => Err(RequestError::Unsupported(other)),
    }
}

/// Checks a read or write and returns its byte offset in the image.
fn check_rw(image: &Image, sector: u64, len: u64) -> Result<u64, RequestError> {
    if len % SECTOR_SIZE != 0 {
        return Err(RequestError::Unaligned(len));
    }
    if len > MAX_REQUEST_BYTES {
        return Err(RequestError::TooLarge(len));
    }
    check_range(image, sector, len)
}

/// Checks that `len` bytes from `sector` lie inside the image; returns the byte offset.
fn check_range(image: &Image, sector: u64, len: u64) -> Result<u64, RequestError> {
    let out_of_range = || RequestError::OutOfRange {
        sector,
        bytes: len,
        capacity: image.capacity(),
    };
    let offset = sector.checked_mul(SECTOR_SIZE).ok_or_else(out_of_range)?;
    match offset.checked_add(len) {
        Some(end) if end <= image.capacity() => Ok(offset),
        _ => Err(out_of_range()),
    }
}

/// Parses and checks the ranges of a discard or write-zeroes request: (offset, len, flags).
fn ranges<M: GuestMemory>(
    mem: &M,
    image: &Image,
    data: &Buffers,
) -> Result<Vec<(u64, u64, u32)>, RequestError> {
    if data.total == 0 || data.total % RANGE_LEN != 0 {
        return Err(RequestError::BadRanges(
            "length is not a positive multiple of 16",
        ));
    }
    if data.total / RANGE_LEN > u64::from(MAX_RANGE_SEGMENTS) {
        return Err(RequestError::BadRanges("more ranges than max_discard_seg"));
    }
    let bytes = data.read(mem)?;
    let mut out = Vec::new();
    for r in bytes.chunks_exact(RANGE_LEN as usize) {
        let sector = u64::from_le_bytes(r[0..8].try_into().expect("8 bytes"));
        let num = u32::from_le_bytes(r[8..12].try_into().expect("4 bytes"));
        let flags = u32::from_le_bytes(r[12..16].try_into().expect("4 bytes"));
        if num > MAX_RANGE_SECTORS {
            return Err(RequestError::BadRanges(
                "range longer than the advertised maximum",
            ));
        }
        let len = u64::from(num) * SECTOR_SIZE;
        out.push((check_range(image, sector, len)?, len, flags));
    }
    Ok(out)
}

#[cfg(test)]
#[path = "request_tests.rs"]
mod tests;

//! Guest RAM: one memfd, mapped below and above the 32-bit MMIO gap, and the e820 map that
//! describes it to the guest. The memfd is what vhost-user backends will map too.

use std::fs::File;
use std::os::fd::OwnedFd;

use nix::sys::memfd::{memfd_create, MFdFlags};
use vm_memory::{FileOffset, GuestAddress, GuestMemory, GuestMemoryMmap, GuestMemoryRegion};

use crate::layout::{ACPI_END, EBDA_START, KERNEL_START, MMIO_GAP_END, MMIO_GAP_START};

/// Errors creating guest memory.
#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    /// memfd_create or ftruncate failed.
    #[error("cannot create {0} MiB of guest memory: {1}")]
    Memfd(u64, std::io::Error),
    /// Mapping the memfd failed.
    #[error("cannot map guest memory: {0}")]
    Mmap(vm_memory::mmap::FromRangesError),
}

/// Kind of an e820 entry (the values of the boot protocol).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum E820Kind {
    /// Usable RAM.
    Ram = 1,
    /// Reserved (BIOS area, ACPI tables).
    Reserved = 2,
}

/// One entry of the e820 memory map.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct E820Entry {
    /// First byte of the range.
    pub addr: u64,
    /// Length in bytes.
    pub size: u64,
    /// What the range is.
    pub kind: E820Kind,
}

/// The guest RAM ranges for `mem_bytes` of memory: (guest address, length, memfd offset).
pub fn ram_ranges(mem_bytes: u64) -> Vec<(u64, u64, u64)> {
    if mem_bytes <= MMIO_GAP_START {
        vec![(0, mem_bytes, 0)]
    } else {
        vec![
            (0, MMIO_GAP_START, 0),
            (MMIO_GAP_END, mem_bytes - MMIO_GAP_START, MMIO_GAP_START),
        ]
    }
}

/// First guest-physical address past the RAM of a `mem_bytes` guest.
pub fn ram_end(mem_bytes: u64) -> u64 {
    ram_ranges(mem_bytes)
        .iter()
        .map(|(addr, len, _)| addr + len)
        .max()
        .unwrap_or(0)
}

/// The e820 map the guest sees: low RAM, the reserved BIOS/ACPI area, and RAM from 1 MiB up,
/// split around the MMIO gap.
pub fn e820_map(mem_bytes: u64) -> Vec<E820Entry> {
    let mut map = vec![
        E820Entry {
            addr: 0,
            size: EBDA_START,
            kind: E820Kind::Ram,
        },
        E820Entry {
            addr: EBDA_START,
            size: ACPI_END - EBDA_START,
            kind: E820Kind::Reserved,
        },
    ];
    for (addr, size, _) in ram_ranges(mem_bytes) {
        let (start, end) = (addr.max(KERNEL_START), addr + size);
        if end > start {
            map.push(E820Entry {
                addr: start,
                size: end - start,
                kind: E820Kind::Ram,
            });
        }
    }
    map
}

/// Guest RAM backed by a memfd, so that other processes can map the same pages.
pub struct GuestRam {
    /// The mapping used by this process.
    pub memory: std::sync::Arc<GuestMemoryMmap>,
    /// The memfd behind it (shared with vhost-user backends).
    pub memfd: OwnedFd,
    /// Total RAM in bytes.
    pub size: u64,
}

impl GuestRam {
    /// Creates `mib` MiB of guest RAM in a fresh memfd and maps it.
    pub fn new(mib: u64) -> Result<Self, MemoryError> {
        let size = mib << 20;
        let memfd = memfd_create(c"sm-guest-ram", MFdFlags::MFD_CLOEXEC)
            .map_err(|e| MemoryError::Memfd(mib, e.into()))?;
        let file = File::from(memfd);
        file.set_len(size).map_err(|e| MemoryError::Memfd(mib, e))?;
        Self::map(file, mib, true)
    }

    /// Maps `mib` MiB of guest RAM from `file`, a memfd already that long holding a
    /// restored snapshot's memory. No huge pages here: a clone's memfd holds only the pages
    /// the snapshot had data in, and a huge page on the guest's first touch of a hole would
    /// allocate 2 MiB where 4 KiB do (a pooled clone of an idle 256 MiB guest held twice
    /// the memory with them).
    pub fn from_memfd(file: File, mib: u64) -> Result<Self, MemoryError> {
        Self::map(file, mib, false)
    }

    /// Maps `mib` MiB of guest RAM from the memfd `file`, advised for transparent huge
    /// pages when `huge`.
    fn map(file: File, mib: u64, huge: bool) -> Result<Self, MemoryError> {
        let size = mib << 20;
        let mut ranges = Vec::new();
        for (addr, len, offset) in ram_ranges(size) {
            let fd = file.try_clone().map_err(|e| MemoryError::Memfd(mib, e))?;
            ranges.push((
                GuestAddress(addr),
                len as usize,
                Some(FileOffset::new(fd, offset)),
            ));
        }
        let memory = GuestMemoryMmap::from_ranges_with_files(ranges).map_err(MemoryError::Mmap)?;
        for region in memory.iter().filter(|_| huge) {
            // Transparent huge pages cut the guest's page-table and EPT/NPT faults (boot is
            // ~40% faster nested). For a memfd they apply when the host allows it
            // (/sys/kernel/mm/transparent_hugepage/shmem_enabled = advise or always).
            // SAFETY: the range is exactly one live mapping owned by `memory`; MADV_HUGEPAGE
            // only changes how the kernel backs it, never its contents.
            let rc = unsafe {
                libc::madvise(
                    region.as_ptr().cast(),
                    region.len() as usize,
                    libc::MADV_HUGEPAGE,
                )
            };
            if rc != 0 {
                tracing::debug!(
                    "madvise(MADV_HUGEPAGE): {}",
                    std::io::Error::last_os_error()
                );
            }
        }
        Ok(GuestRam {
            memory: std::sync::Arc::new(memory),
            memfd: file.into(),
            size,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_memory_is_one_range_below_the_gap() {
        let map = e820_map(256 << 20);
        assert_eq!(map.len(), 3);
        assert_eq!(
            map[0],
            E820Entry {
                addr: 0,
                size: 0x9fc00,
                kind: E820Kind::Ram
            }
        );
        assert_eq!(map[1].kind, E820Kind::Reserved);
        assert_eq!(map[1].addr + map[1].size, 0x10_0000);
        assert_eq!(
            map[2],
            E820Entry {
                addr: 0x10_0000,
                size: (256 << 20) - 0x10_0000,
                kind: E820Kind::Ram
            }
        );
    }

    #[test]
    fn large_memory_splits_around_the_mmio_gap() {
        let mem = 4u64 << 30;
        let map = e820_map(mem);
        assert_eq!(map.len(), 4);
        assert_eq!(map[2].addr + map[2].size, MMIO_GAP_START);
        assert_eq!(map[3].addr, MMIO_GAP_END);
        let ram: u64 = map
            .iter()
            .filter(|e| e.kind == E820Kind::Ram)
            .map(|e| e.size)
            .sum();
        // Everything but the BIOS hole is RAM.
        assert_eq!(ram, mem - (ACPI_END - EBDA_START));
        let ranges = ram_ranges(mem);
        assert_eq!(
            ranges[1],
            (MMIO_GAP_END, mem - MMIO_GAP_START, MMIO_GAP_START)
        );
    }

    #[test]
    fn entries_never_overlap_the_gap() {
        for mib in [128u64, 3327, 3328, 3329, 8192] {
            for e in e820_map(mib << 20) {
                let end = e.addr + e.size;
                assert!(
                    end <= MMIO_GAP_START || e.addr >= MMIO_GAP_END,
                    "{mib} MiB: {e:?}"
                );
            }
        }
    }
}

#[cfg(test)]
mod vmgenid_tests {
    use super::*;
    use crate::layout::VMGENID_PAGE;

    #[test]
    fn the_vm_generation_id_page_is_reserved_never_ram() {
        for mib in [128u64, 3328, 8192] {
            let map = e820_map(mib << 20);
            let (start, end) = (VMGENID_PAGE, VMGENID_PAGE + 0x1000);
            assert!(
                map.iter().any(|e| e.kind == E820Kind::Reserved
                    && e.addr <= start
                    && end <= e.addr + e.size),
                "{mib} MiB: {map:?}"
            );
            assert!(
                map.iter()
                    .filter(|e| e.kind == E820Kind::Ram)
                    .all(|e| e.addr + e.size <= start || e.addr >= end),
                "{mib} MiB: {map:?}"
            );
            // It is in guest memory all the same, so a snapshot keeps it.
            assert!(ram_ranges(mib << 20)
                .iter()
                .any(|(a, len, _)| *a <= start && end <= a + len));
        }
    }
}

#[cfg(test)]
mod ram_tests {
    use super::*;

    #[test]
    fn guest_ram_is_a_memfd_mapping_advised_for_huge_pages() {
        let ram = GuestRam::new(64).unwrap();
        let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
        let mut lines = smaps.lines();
        let mut found = false;
        while let Some(l) = lines.next() {
            if l.contains("/memfd:sm-guest-ram") {
                let flags = lines.by_ref().find(|l| l.starts_with("VmFlags:")).unwrap();
                assert!(flags.split_whitespace().any(|f| f == "hg"), "{flags}");
                found = true;
            }
        }
        assert!(found, "no memfd mapping");
        assert_eq!(ram.size, 64 << 20);
    }
}

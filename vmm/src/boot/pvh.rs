//! The PVH boot protocol: an uncompressed ELF kernel (`vmlinux`) entered in 32-bit protected
//! mode without paging at the address its `XEN_ELFNOTE_PHYS32_ENTRY` note gives, with the
//! guest-physical address of an `hvm_start_info` in EBX. It skips the bzImage's
//! decompressor and real-mode setup, which is why sm's own kernel boots this way.

use std::fs::File;

use linux_loader::configurator::pvh::PvhBootConfigurator;
use linux_loader::configurator::{BootConfigurator, BootParams};
use linux_loader::loader::elf::start_info::{
    hvm_memmap_table_entry, hvm_modlist_entry, hvm_start_info,
};
use linux_loader::loader::elf::{Elf, PvhBootCapability};
use linux_loader::loader::KernelLoader;
use vm_memory::{GuestAddress, GuestMemoryMmap};

use super::{BootError, KernelEntry, LoadedKernel};
use crate::layout::{ACPI_START, KERNEL_START, PVH_MEMMAP_START, PVH_MODLIST_START};
use crate::memory::e820_map;

/// `hvm_start_info.magic`: "xEn3" with the top bit set, as the protocol defines it.
const HVM_START_MAGIC: u32 = 0x336e_c578;
/// Version 1 of the start info has the memory map fields.
const HVM_START_VERSION: u32 = 1;

/// Loads an ELF kernel where its program headers say and finds its PVH entry.
pub fn load(mem: &GuestMemoryMmap, file: &mut File, name: &str) -> Result<LoadedKernel, BootError> {
    let not_kernel = |why: String| BootError::NotAKernel(name.to_owned(), why);
    // No offset: PVH requires the kernel at its link address (CONFIG_PHYSICAL_START).
    let loaded = Elf::load(mem, None, file, Some(GuestAddress(KERNEL_START)))
        .map_err(|e| not_kernel(format!("ELF: {e}")))?;
    match loaded.pvh_boot_cap {
        PvhBootCapability::PvhEntryPresent(entry) => Ok(LoadedKernel {
            entry: entry.0,
            kind: KernelEntry::Pvh,
            end: loaded.kernel_end,
        }),
        _ => Err(not_kernel(
            "an ELF kernel without a PVH entry note; build it with CONFIG_PVH=y".into(),
        )),
    }
}

/// Writes the start info at `at`, the initramfs as its one module, and the e820 map as the
/// PVH memory map.
pub fn write_start_info(
    mem: &GuestMemoryMmap,
    mem_bytes: u64,
    at: u64,
    cmdline: u64,
    initrd: (u64, u64),
) -> Result<(), BootError> {
    let map: Vec<hvm_memmap_table_entry> = e820_map(mem_bytes)
        .iter()
        .map(|e| hvm_memmap_table_entry {
            addr: e.addr,
            size: e.size,
            type_: e.kind as u32,
            reserved: 0,
        })
        .collect();
    let info = hvm_start_info {
        magic: HVM_START_MAGIC,
        version: HVM_START_VERSION,
        nr_modules: 1,
        modlist_paddr: PVH_MODLIST_START,
        cmdline_paddr: cmdline,
        rsdp_paddr: ACPI_START,
        memmap_paddr: PVH_MEMMAP_START,
        memmap_entries: map.len() as u32,
        ..Default::default()
    };
    let module = hvm_modlist_entry {
        paddr: initrd.0,
        size: initrd.1,
        ..Default::default()
    };
    let mut params = BootParams::new(&info, GuestAddress(at));
    params.set_sections(&map, GuestAddress(PVH_MEMMAP_START));
    params.set_modules(&[module], GuestAddress(PVH_MODLIST_START));
    PvhBootConfigurator::write_bootparams::<GuestMemoryMmap>(&params, mem)
        .map_err(|e| BootError::GuestMemory("PVH start info", e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::Bytes;

    #[test]
    fn start_info_points_at_the_map_the_module_and_the_command_line() {
        let mem_bytes = 256u64 << 20;
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), mem_bytes as usize)]).unwrap();
        write_start_info(&mem, mem_bytes, 0x7000, 0x20000, (0x800_0000, 0x1234)).unwrap();
        let info: hvm_start_info = mem.read_obj(GuestAddress(0x7000)).unwrap();
        assert_eq!((info.magic, info.version), (HVM_START_MAGIC, 1));
        assert_eq!((info.cmdline_paddr, info.rsdp_paddr), (0x20000, ACPI_START));
        let module: hvm_modlist_entry = mem.read_obj(GuestAddress(info.modlist_paddr)).unwrap();
        assert_eq!((module.paddr, module.size), (0x800_0000, 0x1234));
        let map = e820_map(mem_bytes);
        assert_eq!(info.memmap_entries as usize, map.len());
        let last: hvm_memmap_table_entry = mem
            .read_obj(GuestAddress(
                info.memmap_paddr + 24 * (map.len() as u64 - 1),
            ))
            .unwrap();
        let want = map.last().unwrap();
        assert_eq!(
            (last.addr, last.size, last.type_),
            (want.addr, want.size, 1)
        );
    }
}

//! Loading a Linux guest: the kernel (linux-loader; a bzImage entered in 64-bit mode, or an
//! ELF `vmlinux` entered through PVH, see [`pvh`]), the initramfs with the init configuration
//! appended, the command line, the boot parameters ("zero page" or PVH start info), the ACPI
//! tables, and the GDT (and for 64-bit entry the identity page tables) the boot vCPU starts
//! with.

pub mod pvh;

use std::fs::File;
use std::io::Read;
use std::path::Path;

use linux_loader::bootparam::{boot_e820_entry, boot_params, setup_header};
use linux_loader::configurator::linux::LinuxBootConfigurator;
use linux_loader::configurator::{BootConfigurator, BootParams};
use linux_loader::loader::{bzimage::BzImage, load_cmdline, KernelLoader};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::acpi::AcpiBlob;
use crate::layout::*;
use crate::memory::{e820_map, ram_ranges};

/// The kernel's own command-line limit on x86 (COMMAND_LINE_SIZE).
pub const CMDLINE_MAX: usize = 2048;
/// Offset of the 64-bit entry point from the protected-mode kernel's load address.
const STARTUP_64_OFFSET: u64 = 0x200;
/// Boot protocol: the kernel can be entered in 64-bit mode.
const XLF_KERNEL_64: u16 = 1 << 0;
/// Boot protocol: "loader type undefined".
const LOADER_TYPE_UNDEFINED: u8 = 0xff;
/// Boot protocol: heap_end_ptr is valid.
const CAN_USE_HEAP: u8 = 1 << 7;

/// Errors loading the guest.
#[derive(Debug, thiserror::Error)]
pub enum BootError {
    /// The kernel file cannot be opened.
    #[error("cannot open kernel {0}: {1}")]
    OpenKernel(String, std::io::Error),
    /// The file is neither a bzImage the 64-bit boot protocol can start nor a PVH ELF.
    #[error("{0} is not a Linux x86_64 kernel sm-vmm can boot ({1})")]
    NotAKernel(String, String),
    /// The initramfs cannot be read.
    #[error("cannot read initramfs {0}: {1}")]
    ReadInitrd(String, std::io::Error),
    /// Kernel, initramfs and the kernel's working space do not fit in guest RAM.
    #[error("--mem {mem_mib} MiB is too small for this kernel and initramfs (they need about {need_mib} MiB)")]
    MemoryTooSmall {
        /// Configured guest memory.
        mem_mib: u64,
        /// Rough minimum.
        need_mib: u64,
    },
    /// The command line is longer than the kernel accepts.
    #[error("kernel command line is {0} bytes, the kernel accepts at most {CMDLINE_MAX}")]
    CmdlineTooLong(usize),
    /// Building or writing the command line failed.
    #[error("invalid kernel command line: {0}")]
    Cmdline(String),
    /// Writing to guest memory failed (a bug in the layout).
    #[error("cannot write {0} into guest memory: {1}")]
    GuestMemory(&'static str, String),
}

/// How the boot vCPU enters the kernel.
#[derive(Clone, Copy, Debug)]
pub enum KernelEntry {
    /// A bzImage: 64-bit mode at `startup_64`, the zero page (with this header) in RSI.
    Linux64(setup_header),
    /// An ELF with a PVH note: 32-bit protected mode, paging off, the start info in EBX.
    Pvh,
}

/// Where the kernel landed and how to enter it.
#[derive(Clone, Copy, Debug)]
pub struct LoadedKernel {
    /// Entry point (64-bit `startup_64`, or the 32-bit PVH entry).
    pub entry: u64,
    /// Which boot protocol the entry point speaks.
    pub kind: KernelEntry,
    /// End of the loaded image.
    pub end: u64,
}

/// Loads the kernel: an ELF (`vmlinux`) through PVH, anything else as a bzImage at
/// [`KERNEL_START`].
pub fn load_kernel(mem: &GuestMemoryMmap, path: &Path) -> Result<LoadedKernel, BootError> {
    let name = path.display().to_string();
    let mut file = File::open(path).map_err(|e| BootError::OpenKernel(name.clone(), e))?;
    let mut magic = [0u8; 4];
    let is_elf = file.read_exact(&mut magic).is_ok() && magic == *b"\x7fELF";
    if is_elf {
        return pvh::load(mem, &mut file, &name);
    }
    let not_kernel = |why: String| BootError::NotAKernel(name.clone(), why);
    let loaded = BzImage::load(mem, Some(GuestAddress(KERNEL_START)), &mut file, None)
        .map_err(|e| not_kernel(e.to_string()))?;
    let header = loaded
        .setup_header
        .ok_or_else(|| not_kernel("no setup header".into()))?;
    if header.xloadflags & XLF_KERNEL_64 == 0 {
        return Err(not_kernel("it has no 64-bit entry point".into()));
    }
    Ok(LoadedKernel {
        entry: loaded.kernel_load.0 + STARTUP_64_OFFSET,
        kind: KernelEntry::Linux64(header),
        end: loaded.kernel_end,
    })
}

/// Chooses where the initramfs goes: page-aligned, as high as possible in low RAM and below
/// the kernel's `initrd_addr_max`, and clear of the kernel's image and (for a bzImage) its
/// decompression space.
pub fn initrd_placement(
    mem_bytes: u64,
    kernel: &LoadedKernel,
    initrd_len: u64,
) -> Result<u64, BootError> {
    let low_end = ram_ranges(mem_bytes)[0].1;
    // The first address the initramfs may not reach, and the end of the kernel's own space.
    let (limit, image_top) = match kernel.kind {
        KernelEntry::Linux64(header) => (
            match header.initrd_addr_max {
                0 => 0x3800_0000,
                m => u64::from(m) + 1,
            },
            KERNEL_START + u64::from(header.init_size),
        ),
        // The PVH kernel takes the module wherever RAM is; it is already decompressed.
        KernelEntry::Pvh => (u64::MAX, kernel.end),
    };
    let top = low_end.min(limit);
    let kernel_top = image_top.max(KERNEL_START + (64 << 20));
    let too_small = || BootError::MemoryTooSmall {
        mem_mib: mem_bytes >> 20,
        need_mib: (kernel_top + initrd_len + (32 << 20)) >> 20,
    };
    let addr = top.checked_sub(initrd_len).ok_or_else(too_small)? & !0xfff;
    // Leave the kernel room to run: its image, its decompression space, and some RAM.
    if addr < kernel_top + (32 << 20) {
        return Err(too_small());
    }
    Ok(addr)
}

/// Copies the initramfs, then the init configuration archive (4-byte aligned, as the
/// kernel requires between concatenated archives), into guest memory.
pub fn load_initrd(
    mem: &GuestMemoryMmap,
    mem_bytes: u64,
    kernel: &LoadedKernel,
    path: &Path,
    extra: &[u8],
) -> Result<(u64, u64), BootError> {
    let image =
        std::fs::read(path).map_err(|e| BootError::ReadInitrd(path.display().to_string(), e))?;
    let image = initrd_image(image, extra);
    let addr = initrd_placement(mem_bytes, kernel, image.len() as u64)?;
    mem.write_slice(&image, GuestAddress(addr))
        .map_err(|e| BootError::GuestMemory("initramfs", e.to_string()))?;
    Ok((addr, image.len() as u64))
}

/// The initramfs the guest sees: `base` padded to 4 bytes (newc archives concatenate on
/// 4-byte boundaries) followed by `extra` (the init configuration archive).
pub fn initrd_image(mut base: Vec<u8>, extra: &[u8]) -> Vec<u8> {
    base.resize(base.len().next_multiple_of(4), 0);
    base.extend_from_slice(extra);
    base
}

/// The kernel command line: quiet by default (every serial byte costs a VM exit), the
/// kernel log on COM2 (stderr) when verbose, no PCI probing (devices are virtio-mmio), and
/// a panic resets the VM so that sm-vmm exits instead of hanging.
pub fn kernel_cmdline(verbose: bool, append: Option<&str>) -> Result<String, BootError> {
    let mut parts = vec![
        "console=ttyS1",
        "reboot=a",
        "panic=-1",
        "pci=off",
        "nomodeset",
        "8250.nr_uarts=2",
        "rdinit=/init",
    ];
    // `quiet` alone still shows errors; loglevel=0 (after it) silences the console entirely,
    // so stderr carries only the command's output. A panic shows with --verbose.
    parts.extend(if verbose {
        ["loglevel=7", "sm.verbose=1"]
    } else {
        ["quiet", "loglevel=0"]
    });
    if let Some(a) = append.filter(|a| !a.trim().is_empty()) {
        parts.push(a);
    }
    let line = parts.join(" ");
    if line.len() >= CMDLINE_MAX {
        return Err(BootError::CmdlineTooLong(line.len()));
    }
    Ok(line)
}

/// Writes the command line at [`CMDLINE_START`] and the zero page (or the PVH start info) at
/// [`ZERO_PAGE_START`].
pub fn write_boot_params(
    mem: &GuestMemoryMmap,
    mem_bytes: u64,
    kernel: &LoadedKernel,
    cmdline: &str,
    initrd: (u64, u64),
) -> Result<(), BootError> {
    let mut cl = linux_loader::cmdline::Cmdline::new(CMDLINE_MAX)
        .map_err(|e| BootError::Cmdline(e.to_string()))?;
    cl.insert_str(cmdline)
        .map_err(|e| BootError::Cmdline(e.to_string()))?;
    load_cmdline(mem, GuestAddress(CMDLINE_START), &cl)
        .map_err(|e| BootError::Cmdline(e.to_string()))?;
    let header = match kernel.kind {
        KernelEntry::Linux64(header) => header,
        KernelEntry::Pvh => {
            return pvh::write_start_info(mem, mem_bytes, ZERO_PAGE_START, CMDLINE_START, initrd)
        }
    };
    let mut params = boot_params {
        hdr: header,
        ..Default::default()
    };
    params.hdr.type_of_loader = LOADER_TYPE_UNDEFINED;
    params.hdr.loadflags |= CAN_USE_HEAP;
    params.hdr.heap_end_ptr = 0xfe00;
    params.hdr.cmd_line_ptr = CMDLINE_START as u32;
    params.hdr.cmdline_size = cmdline.len() as u32 + 1;
    params.hdr.ramdisk_image = initrd.0 as u32;
    params.hdr.ramdisk_size = initrd.1 as u32;
    params.hdr.vid_mode = 0xffff;
    params.acpi_rsdp_addr = ACPI_START;
    let map = e820_map(mem_bytes);
    for (slot, e) in params.e820_table.iter_mut().zip(&map) {
        *slot = boot_e820_entry {
            addr: e.addr,
            size: e.size,
            type_: e.kind as u32,
        };
    }
    params.e820_entries = map.len() as u8;
    LinuxBootConfigurator::write_bootparams::<GuestMemoryMmap>(
        &BootParams::new(&params, GuestAddress(ZERO_PAGE_START)),
        mem,
    )
    .map_err(|e| BootError::GuestMemory("boot parameters", e.to_string()))
}

/// Copies the ACPI tables into the reserved BIOS area.
pub fn write_acpi(mem: &GuestMemoryMmap, tables: &[AcpiBlob]) -> Result<(), BootError> {
    for t in tables {
        mem.write_slice(&t.bytes, GuestAddress(t.addr))
            .map_err(|e| BootError::GuestMemory("ACPI tables", e.to_string()))?;
    }
    Ok(())
}

/// The boot GDT: null, 64-bit code, data, TSS (the layout Linux's boot code expects).
pub const BOOT_GDT: [u64; 4] = [
    0,
    gdt_entry(0xa09b, 0, 0xfffff),
    gdt_entry(0xc093, 0, 0xfffff),
    gdt_entry(0x808b, 0, 0xfffff),
];

/// The PVH boot GDT: null, flat 32-bit code, data, TSS (the entry code loads its own next).
pub const PVH_GDT: [u64; 4] = [
    0,
    gdt_entry(0xc09b, 0, 0xfffff),
    gdt_entry(0xc093, 0, 0xfffff),
    gdt_entry(0x808b, 0, 0xfffff),
];

impl KernelEntry {
    /// The GDT the boot vCPU starts with.
    pub fn gdt(&self) -> &'static [u64; 4] {
        match self {
            KernelEntry::Linux64(_) => &BOOT_GDT,
            KernelEntry::Pvh => &PVH_GDT,
        }
    }
}

/// Encodes one GDT descriptor from flags, base and limit.
pub const fn gdt_entry(flags: u16, base: u32, limit: u32) -> u64 {
    ((base as u64 & 0xff00_0000) << (56 - 24))
        | ((flags as u64 & 0x0000_f0ff) << 40)
        | ((limit as u64 & 0x000f_0000) << (48 - 16))
        | ((base as u64 & 0x00ff_ffff) << 16)
        | (limit as u64 & 0x0000_ffff)
}

/// Writes the GDT for `kind`, an empty IDT, and page tables identity-mapping the first 1 GiB
/// with 2 MiB pages (enough for a 64-bit entry's early boot, which builds its own; PVH
/// starts with paging off and ignores them).
pub fn write_boot_structures(mem: &GuestMemoryMmap, kind: KernelEntry) -> Result<(), BootError> {
    let w = |what, v: u64, a: u64| {
        mem.write_obj(v, GuestAddress(a))
            .map_err(|e| BootError::GuestMemory(what, e.to_string()))
    };
    for (i, e) in kind.gdt().iter().enumerate() {
        w("GDT", *e, BOOT_GDT_START + 8 * i as u64)?;
    }
    w("IDT", 0, BOOT_IDT_START)?;
    w("page tables", PDPTE_START | 0x03, PML4_START)?;
    w("page tables", PDE_START | 0x03, PDPTE_START)?;
    for i in 0..512u64 {
        w("page tables", (i << 21) | 0x83, PDE_START + i * 8)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(init_size: u32, initrd_addr_max: u32) -> LoadedKernel {
        LoadedKernel {
            entry: KERNEL_START + STARTUP_64_OFFSET,
            kind: KernelEntry::Linux64(setup_header {
                init_size,
                initrd_addr_max,
                ..Default::default()
            }),
            end: KERNEL_START + (10 << 20),
        }
    }

    #[test]
    fn a_pvh_initrd_goes_high_and_clear_of_the_image() {
        let kernel = LoadedKernel {
            entry: 0x100_0000,
            kind: KernelEntry::Pvh,
            end: 0x600_0000,
        };
        let mem = 256u64 << 20;
        let addr = initrd_placement(mem, &kernel, 1 << 20).unwrap();
        assert_eq!(addr, mem - (1 << 20));
        let err = initrd_placement(128 << 20, &kernel, 40 << 20).unwrap_err();
        assert!(matches!(err, BootError::MemoryTooSmall { .. }), "{err}");
    }

    #[test]
    fn initrd_goes_high_and_page_aligned() {
        let mem = 256u64 << 20;
        let addr = initrd_placement(mem, &header(30 << 20, 0x7fff_ffff), 10_000_001).unwrap();
        assert_eq!(addr % 4096, 0);
        assert!(addr + 10_000_001 <= mem);
        assert!(mem - (addr + 10_000_001) < 4096);
    }

    #[test]
    fn initrd_respects_the_mmio_gap_and_addr_max() {
        let addr = initrd_placement(8 << 30, &header(30 << 20, 0x7fff_ffff), 1 << 20).unwrap();
        assert!(addr + (1 << 20) <= 0x8000_0000);
        let addr = initrd_placement(8 << 30, &header(30 << 20, 0xffff_ffff), 1 << 20).unwrap();
        assert!(addr + (1 << 20) <= MMIO_GAP_START);
    }

    #[test]
    fn too_little_memory_is_an_error() {
        let err = initrd_placement(64 << 20, &header(40 << 20, 0x7fff_ffff), 20 << 20).unwrap_err();
        assert!(
            matches!(err, BootError::MemoryTooSmall { mem_mib: 64, .. }),
            "{err}"
        );
    }

    #[test]
    fn cmdline_is_quiet_unless_verbose() {
        let quiet = kernel_cmdline(false, None).unwrap();
        assert!(quiet.contains(" quiet loglevel=0"), "{quiet}");
        let verbose = kernel_cmdline(true, Some("foo=bar")).unwrap();
        assert!(!verbose.contains("quiet") && verbose.ends_with(" foo=bar"));
        assert!(matches!(
            kernel_cmdline(false, Some(&"x".repeat(3000))),
            Err(BootError::CmdlineTooLong(_))
        ));
    }

    #[test]
    fn gdt_entries_match_the_architecture() {
        // The well-known encodings of a flat 64-bit code and data segment.
        assert_eq!(BOOT_GDT[1], 0x00af_9b00_0000_ffff);
        assert_eq!(BOOT_GDT[2], 0x00cf_9300_0000_ffff);
        // Flat 32-bit code (D/B set, L clear) for PVH.
        assert_eq!(PVH_GDT[1], 0x00cf_9b00_0000_ffff);
    }
}

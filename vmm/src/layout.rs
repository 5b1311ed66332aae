//! The guest physical address map of an sm-vmm x86_64 VM.

/// GDT used while entering 64-bit mode.
pub const BOOT_GDT_START: u64 = 0x500;
/// Empty IDT used while entering 64-bit mode.
pub const BOOT_IDT_START: u64 = 0x520;
/// Linux boot parameters ("zero page"), or the PVH start info in its place.
pub const ZERO_PAGE_START: u64 = 0x7000;
/// PVH: the module list (the initramfs), after the 56-byte start info.
pub const PVH_MODLIST_START: u64 = 0x7040;
/// PVH: the memory map, after the one module entry (room for 160 entries below 0x8000).
pub const PVH_MEMMAP_START: u64 = 0x7080;
/// Initial stack pointer of the boot vCPU.
pub const BOOT_STACK_POINTER: u64 = 0x8ff0;
/// Identity-mapping page tables: PML4, PDPT and PD, one page each.
pub const PML4_START: u64 = 0x9000;
/// Page directory pointer table of the boot identity map.
pub const PDPTE_START: u64 = 0xa000;
/// Page directory of the boot identity map (2 MiB pages).
pub const PDE_START: u64 = 0xb000;
/// Kernel command line.
pub const CMDLINE_START: u64 = 0x20000;
/// Start of the Extended BIOS Data Area: RAM below this is usable by the guest.
pub const EBDA_START: u64 = 0x9fc00;
/// The 4 KiB page holding the VM generation ID (devices::vmgenid): in the BIOS area the
/// e820 map reserves (0x9FC00-0xFFFFF), so the guest never takes it for RAM; a whole page
/// away from RAM, so `/dev/mem` shows it under STRICT_DEVMEM; below the ACPI tables.
pub const VMGENID_PAGE: u64 = 0xdf000;
/// Guest-physical address of the 16-byte VM generation ID (what the DSDT's `VGEN.ADDR`
/// returns), 16 bytes into its page: off the 2 KiB boundaries where Linux probes for
/// option ROM signatures.
pub const VMGENID_ADDR: u64 = VMGENID_PAGE + 0x10;
/// ACPI tables live in the BIOS area the kernel scans for the RSDP (0xE0000-0xFFFFF).
pub const ACPI_START: u64 = 0xe0000;
/// End of the legacy BIOS area.
pub const ACPI_END: u64 = 0x10_0000;
/// Where a bzImage's protected-mode kernel is loaded (its 64-bit entry point is 0x200
/// further), and the lowest address an ELF kernel may load at.
pub const KERNEL_START: u64 = 0x10_0000;
/// Start of the 32-bit MMIO gap (virtio-mmio devices, IOAPIC, LAPIC): RAM stops here.
pub const MMIO_GAP_START: u64 = 0xd000_0000;
/// End of the 32-bit MMIO gap; RAM above the gap resumes here.
pub const MMIO_GAP_END: u64 = 0x1_0000_0000;
/// Base of the virtio-mmio device windows, one 4 KiB window per device.
pub const VIRTIO_MMIO_START: u64 = MMIO_GAP_START;
/// Size of one virtio-mmio device window.
pub const VIRTIO_MMIO_SIZE: u64 = 0x1000;
/// IOAPIC base (architectural default).
pub const IOAPIC_START: u64 = 0xfec0_0000;
/// Local APIC base (architectural default).
pub const LAPIC_START: u64 = 0xfee0_0000;

/// COM1: console and the command's stdout/stdin.
pub const COM1_PORT: u16 = 0x3f8;
/// GSI of COM1.
pub const COM1_GSI: u32 = 4;
/// COM2: the command's stderr (and the kernel log with `--verbose`).
pub const COM2_PORT: u16 = 0x2f8;
/// GSI of COM2.
pub const COM2_GSI: u32 = 3;
/// CMOS RTC index/data ports.
pub const RTC_PORT: u16 = 0x70;
/// i8042 command/status port (writing 0xFE resets the machine).
pub const I8042_PORT: u16 = 0x64;
/// ACPI hardware-reduced sleep control register (1 byte), status register is next.
pub const ACPI_SLEEP_CONTROL_PORT: u16 = 0x600;
/// ACPI sleep status register.
pub const ACPI_SLEEP_STATUS_PORT: u16 = 0x601;
/// ACPI reset register (FADT RESET_REG).
pub const ACPI_RESET_PORT: u16 = 0x604;
/// Value the guest writes to the ACPI reset register.
pub const ACPI_RESET_VALUE: u8 = 0x1;
/// Guest exit-status register: sm-init writes the command's exit status (one byte) here
/// before powering off (the same port as QEMU's isa-debug-exit).
pub const EXIT_STATUS_PORT: u16 = 0xf4;
/// First GSI handed to virtio-mmio devices (up to [`GED_GSI`], exclusive).
pub const VIRTIO_GSI_START: u32 = 5;
/// GSI of the ACPI Generic Event Device (the last IOAPIC pin): raised once to tell the
/// guest its VM generation ID changed (its `_EVT` notifies `VGEN`).
pub const GED_GSI: u32 = 23;

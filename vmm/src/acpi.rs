//! ACPI tables: how the guest learns its CPUs (MADT), its interrupt controller, how to power
//! off and reset (hardware-reduced FADT sleep/reset registers), and where its virtio-mmio
//! devices are (DSDT `LNRO0005` devices: Debian's kernel finds virtio-mmio only this way or
//! through a device tree), and the VM generation ID (`VGEN`, `_HID "VMGENCTR"`) with the
//! Generic Event Device (`ACPI0013`) whose interrupt announces a new one.

use acpi_tables::aml;
use acpi_tables::fadt::{FADTBuilder, Flags};
use acpi_tables::gas::{AccessSize, AddressSpace, GAS};
use acpi_tables::madt::{
    EnabledStatus, IoApic, LocalInterruptController, ProcessorLocalApic, MADT,
};
use acpi_tables::rsdp::Rsdp;
use acpi_tables::sdt::Sdt;
use acpi_tables::xsdt::XSDT;
use acpi_tables::{Aml, AmlSink};

use crate::layout::{
    ACPI_END, ACPI_RESET_PORT, ACPI_RESET_VALUE, ACPI_SLEEP_CONTROL_PORT, ACPI_SLEEP_STATUS_PORT,
    ACPI_START, COM1_GSI, COM1_PORT, COM2_GSI, COM2_PORT, GED_GSI, IOAPIC_START, LAPIC_START,
    RTC_PORT, VMGENID_ADDR,
};

const OEM_ID: [u8; 6] = *b"SMVMM ";
const OEM_TABLE_ID: [u8; 8] = *b"SMVMMTBL";
const OEM_REVISION: u32 = 1;
/// IA-PC boot architecture flags: no VGA (bit 2), no MSI (bit 3), and — by leaving bit 1
/// clear — no i8042, so the guest does not spend time probing a keyboard controller.
const IAPC_BOOT_ARCH: u16 = (1 << 2) | (1 << 3);

/// Errors building the ACPI tables.
#[derive(Debug, thiserror::Error)]
pub enum AcpiError {
    /// The tables do not fit in the BIOS area reserved for them.
    #[error("ACPI tables need {0} bytes, more than the {1} bytes reserved for them")]
    TooLarge(u64, u64),
    /// ACPI's MADT names CPUs with 8-bit APIC IDs.
    #[error("ACPI supports at most 254 vCPUs here, not {0}")]
    TooManyVcpus(u32),
}

/// A virtio-mmio device window to describe in the DSDT.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VirtioMmioSlot {
    /// Base guest-physical address of the register window.
    pub base: u64,
    /// Length of the window.
    pub size: u64,
    /// The GSI (IOAPIC pin) of its interrupt.
    pub gsi: u32,
}

/// One table to copy into guest memory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AcpiBlob {
    /// Guest-physical address.
    pub addr: u64,
    /// The table bytes, checksummed.
    pub bytes: Vec<u8>,
}

struct Bytes(Vec<u8>);

impl AmlSink for Bytes {
    fn byte(&mut self, byte: u8) {
        self.0.push(byte);
    }
}

fn aml_bytes(item: &dyn Aml) -> Vec<u8> {
    let mut sink = Bytes(Vec::new());
    item.to_aml_bytes(&mut sink);
    sink.0
}

/// A legacy ISA device (UART, RTC) with its ports and, if any, its interrupt. Describing it
/// is what maps its ISA IRQ to an IOAPIC pin: a hardware-reduced ACPI guest has no legacy
/// PIC and so no default ISA IRQ routing.
fn isa_device(name: &str, hid: &str, uid: u32, port: u16, len: u8, gsi: Option<u32>) -> Vec<u8> {
    let hid = aml::Name::new("_HID".into(), &aml::EISAName::new(hid));
    let uid = aml::Name::new("_UID".into(), &uid);
    let io = aml::IO::new(port, port, 1, len);
    let irq = gsi.map(|g| aml::Interrupt::new(true, true, false, false, g));
    let mut res: Vec<&dyn Aml> = vec![&io];
    if let Some(irq) = &irq {
        res.push(irq);
    }
    let crs = aml::Name::new("_CRS".into(), &aml::ResourceTemplate::new(res));
    aml_bytes(&aml::Device::new(
        format!("_SB_.{name}").as_str().into(),
        vec![&hid, &uid, &crs],
    ))
}

/// `\_SB.VGEN`, the VM generation ID device as QEMU's docs/specs/vmgenid.rst describe it
/// (Linux's drivers/virt/vmgenid.c binds to it): `ADDR` returns the ID's guest-physical
/// address as a package of two DWORDs, low then high. And `\_SB.GED_`, a Generic Event
/// Device whose edge-triggered interrupt on [`GED_GSI`] runs `_EVT`, which notifies `VGEN`
/// (0x80) that the ID changed.
fn vmgenid_devices() -> Vec<u8> {
    let hid = aml::Name::new("_HID".into(), &"VMGENCTR");
    let cid = aml::Name::new("_CID".into(), &"VM_Gen_Counter");
    let ddn = aml::Name::new("_DDN".into(), &"VM_Gen_Counter");
    let (low, high) = (VMGENID_ADDR as u32, (VMGENID_ADDR >> 32) as u32);
    let addr = aml::Package::new(vec![&low, &high]);
    let ret = aml::Return::new(&addr);
    let addr_method = aml::Method::new("ADDR".into(), 0, false, vec![&ret]);
    let mut body = aml_bytes(&aml::Device::new(
        "_SB_.VGEN".into(),
        vec![&hid, &cid, &ddn, &addr_method],
    ));

    let hid = aml::Name::new("_HID".into(), &"ACPI0013");
    let uid = aml::Name::new("_UID".into(), &aml::ZERO);
    let irq = aml::Interrupt::new(true, true, false, false, GED_GSI);
    let crs = aml::Name::new("_CRS".into(), &aml::ResourceTemplate::new(vec![&irq]));
    let vgen = aml::Path::new("\\_SB_.VGEN");
    let notify = aml::Notify::new(&vgen, &0x80u8);
    let is_ours = aml::Equal::new(&aml::Arg(0), &GED_GSI);
    let when = aml::If::new(&is_ours, vec![&notify]);
    let evt = aml::Method::new("_EVT".into(), 1, true, vec![&when]);
    body.extend(aml_bytes(&aml::Device::new(
        "_SB_.GED_".into(),
        vec![&hid, &uid, &crs, &evt],
    )));
    body
}

fn dsdt(virtio: &[VirtioMmioSlot]) -> Vec<u8> {
    let mut body = Vec::new();
    // \_S5_ lets the guest power off through the FADT sleep control register.
    body.extend(aml_bytes(&aml::Name::new(
        "_S5_".into(),
        &aml::Package::new(vec![&5u8, &0u8]),
    )));
    body.extend(isa_device(
        "COM1",
        "PNP0501",
        1,
        COM1_PORT,
        8,
        Some(COM1_GSI),
    ));
    body.extend(isa_device(
        "COM2",
        "PNP0501",
        2,
        COM2_PORT,
        8,
        Some(COM2_GSI),
    ));
    body.extend(isa_device("RTC_", "PNP0B00", 0, RTC_PORT, 2, None));
    body.extend(vmgenid_devices());
    for (i, dev) in virtio.iter().enumerate() {
        let uid = i as u32;
        let hid = aml::Name::new("_HID".into(), &"LNRO0005");
        let uid_name = aml::Name::new("_UID".into(), &uid);
        let cca = aml::Name::new("_CCA".into(), &aml::ONE);
        let mem = aml::Memory32Fixed::new(true, dev.base as u32, dev.size as u32);
        let irq = aml::Interrupt::new(true, true, false, false, dev.gsi);
        let crs = aml::Name::new("_CRS".into(), &aml::ResourceTemplate::new(vec![&mem, &irq]));
        let path = format!("_SB_.V{i:03X}");
        body.extend(aml_bytes(&aml::Device::new(
            path.as_str().into(),
            vec![&hid, &uid_name, &cca, &crs],
        )));
    }
    let mut sdt = Sdt::new(*b"DSDT", 36, 6, OEM_ID, OEM_TABLE_ID, OEM_REVISION);
    sdt.append_slice(&body);
    sdt.as_slice().to_vec()
}

fn fadt(dsdt_addr: u64) -> Vec<u8> {
    let io_reg = |port: u16| {
        GAS::new(
            AddressSpace::SystemIo,
            8,
            0,
            AccessSize::ByteAccess,
            port.into(),
        )
    };
    let mut fadt = FADTBuilder::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION)
        .dsdt_64(dsdt_addr)
        .flag(Flags::HwReducedAcpi)
        .flag(Flags::ResetRegSup)
        .flag(Flags::PwrButton)
        .flag(Flags::SlpButton);
    fadt.iapc_boot_arch = IAPC_BOOT_ARCH.into();
    fadt.sleep_control_reg = io_reg(ACPI_SLEEP_CONTROL_PORT);
    fadt.sleep_status_reg = io_reg(ACPI_SLEEP_STATUS_PORT);
    fadt.reset_reg = io_reg(ACPI_RESET_PORT);
    fadt.reset_value = ACPI_RESET_VALUE;
    aml_bytes(&fadt.finalize())
}

fn madt(vcpus: u8) -> Vec<u8> {
    let mut madt = MADT::new(
        OEM_ID,
        OEM_TABLE_ID,
        OEM_REVISION,
        LocalInterruptController::Address(LAPIC_START as u32),
    );
    for id in 0..vcpus {
        madt.add_structure(ProcessorLocalApic::new(id, id, EnabledStatus::Enabled));
    }
    madt.add_structure(IoApic::new(vcpus, IOAPIC_START as u32, 0));
    aml_bytes(&madt)
}

fn align16(x: u64) -> u64 {
    (x + 15) & !15
}

/// Builds RSDP, XSDT, FADT, DSDT and MADT for `vcpus` CPUs and the given virtio-mmio
/// devices, laid out from [`ACPI_START`](crate::layout::ACPI_START) (the RSDP first, where
/// the kernel scans for it).
pub fn build_tables(vcpus: u32, virtio: &[VirtioMmioSlot]) -> Result<Vec<AcpiBlob>, AcpiError> {
    let vcpus = u8::try_from(vcpus)
        .ok()
        .filter(|v| *v <= 254)
        .ok_or(AcpiError::TooManyVcpus(vcpus))?;
    let rsdp_addr = ACPI_START;
    let dsdt_addr = align16(rsdp_addr + Rsdp::len() as u64);
    let dsdt = dsdt(virtio);
    let fadt_addr = align16(dsdt_addr + dsdt.len() as u64);
    let fadt = fadt(dsdt_addr);
    let madt_addr = align16(fadt_addr + fadt.len() as u64);
    let madt = madt(vcpus);
    let xsdt_addr = align16(madt_addr + madt.len() as u64);
    let mut xsdt = XSDT::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION);
    xsdt.add_entry(fadt_addr);
    xsdt.add_entry(madt_addr);
    let xsdt = aml_bytes(&xsdt);
    let end = xsdt_addr + xsdt.len() as u64;
    if end > ACPI_END {
        return Err(AcpiError::TooLarge(end - ACPI_START, ACPI_END - ACPI_START));
    }
    Ok(vec![
        AcpiBlob {
            addr: rsdp_addr,
            bytes: aml_bytes(&Rsdp::new(OEM_ID, xsdt_addr)),
        },
        AcpiBlob {
            addr: dsdt_addr,
            bytes: dsdt,
        },
        AcpiBlob {
            addr: fadt_addr,
            bytes: fadt,
        },
        AcpiBlob {
            addr: madt_addr,
            bytes: madt,
        },
        AcpiBlob {
            addr: xsdt_addr,
            bytes: xsdt,
        },
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn checksum_ok(b: &[u8]) -> bool {
        b.iter().fold(0u8, |a, x| a.wrapping_add(*x)) == 0
    }

    fn find<'a>(tables: &'a [AcpiBlob], sig: &[u8]) -> &'a AcpiBlob {
        tables.iter().find(|t| t.bytes.starts_with(sig)).unwrap()
    }

    #[test]
    fn tables_are_checksummed_and_linked() {
        let tables = build_tables(2, &[]).unwrap();
        let rsdp = &tables[0];
        assert_eq!(rsdp.addr, 0xe0000);
        assert!(rsdp.bytes.starts_with(b"RSD PTR "));
        assert!(checksum_ok(&rsdp.bytes[..20]) && checksum_ok(&rsdp.bytes));
        let xsdt_addr = u64::from_le_bytes(rsdp.bytes[24..32].try_into().unwrap());
        let xsdt = find(&tables, b"XSDT");
        assert_eq!(xsdt.addr, xsdt_addr);
        for t in &tables[1..] {
            assert!(checksum_ok(&t.bytes), "{:?}", &t.bytes[..4]);
            let len = u32::from_le_bytes(t.bytes[4..8].try_into().unwrap()) as usize;
            assert_eq!(len, t.bytes.len());
            assert_eq!(t.addr % 16, 0);
        }
        let entries: Vec<u64> = xsdt.bytes[36..]
            .chunks(8)
            .map(|c| u64::from_le_bytes(c.try_into().unwrap()))
            .collect();
        assert_eq!(
            entries,
            vec![find(&tables, b"FACP").addr, find(&tables, b"APIC").addr]
        );
        // FADT points at the DSDT through X_DSDT (offset 140).
        let fadt = &find(&tables, b"FACP").bytes;
        assert_eq!(
            u64::from_le_bytes(fadt[140..148].try_into().unwrap()),
            find(&tables, b"DSDT").addr
        );
    }

    #[test]
    fn madt_lists_every_vcpu_and_the_ioapic() {
        for n in [1u32, 2, 8, 254] {
            let tables = build_tables(n, &[]).unwrap();
            let madt = &find(&tables, b"APIC").bytes;
            let mut cpus = 0;
            let mut ioapics = 0;
            let mut off = 44;
            while off < madt.len() {
                match madt[off] {
                    0 => {
                        assert_eq!(madt[off + 3], cpus as u8, "APIC id");
                        cpus += 1
                    }
                    1 => ioapics += 1,
                    t => panic!("unexpected MADT entry {t}"),
                }
                off += madt[off + 1] as usize;
            }
            assert_eq!((cpus, ioapics), (n, 1));
        }
        assert!(matches!(
            build_tables(255, &[]),
            Err(AcpiError::TooManyVcpus(255))
        ));
        assert!(matches!(
            build_tables(0x1_00, &[]),
            Err(AcpiError::TooManyVcpus(256))
        ));
    }

    #[test]
    fn dsdt_describes_virtio_mmio_devices() {
        let slots: Vec<_> = (0..3)
            .map(|i| VirtioMmioSlot {
                base: 0xd000_0000 + i * 0x1000,
                size: 0x1000,
                gsi: 5 + i as u32,
            })
            .collect();
        let tables = build_tables(1, &slots).unwrap();
        let dsdt = &find(&tables, b"DSDT").bytes;
        let count = dsdt.windows(8).filter(|w| w == b"LNRO0005").count();
        assert_eq!(count, 3);
        assert!(dsdt.windows(4).any(|w| w == b"_S5_"));
        // The UARTs and the RTC are described, so their IRQs get routed.
        for name in [b"COM1", b"COM2", b"RTC_"] {
            assert!(
                dsdt.windows(4).any(|w| w == name),
                "{}",
                String::from_utf8_lossy(name)
            );
        }
        // The second device's register window base appears as a Memory32Fixed field.
        assert!(dsdt.windows(4).any(|w| w == 0xd000_1000u32.to_le_bytes()));
    }

    #[test]
    fn dsdt_describes_the_vm_generation_id_and_its_event_device() {
        let tables = build_tables(1, &[]).unwrap();
        let dsdt = &find(&tables, b"DSDT").bytes;
        assert!(checksum_ok(dsdt));
        let at = |needle: &[u8]| {
            dsdt.windows(needle.len())
                .position(|w| w == needle)
                .unwrap_or_else(|| panic!("{} not in the DSDT", String::from_utf8_lossy(needle)))
        };
        // Device (\_SB.VGEN): DeviceOp, then (after the length) DualNamePrefix _SB_ VGEN.
        let vgen = at(b"\x2e_SB_VGEN");
        let device_op_before = |name: usize| {
            (1..=4).any(|len| {
                let op = name - len - 2;
                dsdt[op..op + 2] == [0x5b, 0x82] && usize::from(dsdt[op + 2] >> 6) + 1 == len
            })
        };
        assert!(device_op_before(vgen), "VGEN is a Device");
        // Name (_HID, "VMGENCTR"), Name (_CID, "VM_Gen_Counter"), Name (_DDN, ...).
        for (name, value) in [
            (b"_HID", &b"VMGENCTR"[..]),
            (b"_CID", b"VM_Gen_Counter"),
            (b"_DDN", b"VM_Gen_Counter"),
        ] {
            let mut want = vec![0x08];
            want.extend_from_slice(name);
            want.push(0x0d);
            want.extend_from_slice(value);
            want.push(0);
            assert!(at(&want) > vgen, "{}", String::from_utf8_lossy(name));
        }
        // Method (ADDR, 0) { Return (Package (2) { low DWORD, high }) }.
        let addr = at(b"ADDR");
        assert_eq!(dsdt[addr - 2], 0x14, "MethodOp");
        assert_eq!(dsdt[addr + 4], 0, "no arguments");
        assert_eq!(
            &dsdt[addr + 5..addr + 8],
            &[0xa4, 0x12, 8],
            "Return (Package, PkgLength 8"
        );
        assert_eq!(dsdt[addr + 8], 2, "of 2 elements");
        assert_eq!(dsdt[addr + 9], 0x0c, "DWordPrefix");
        let low = u32::from_le_bytes(dsdt[addr + 10..addr + 14].try_into().unwrap());
        assert_eq!(u64::from(low), VMGENID_ADDR);
        assert_eq!(dsdt[addr + 14], 0x00, "high DWORD is Zero");
        // The Generic Event Device: its edge-triggered interrupt on GED_GSI and an _EVT
        // that notifies \_SB.VGEN with 0x80 when that GSI fires.
        let ged = at(b"\x2e_SB_GED_");
        assert!(device_op_before(ged), "GED_ is a Device");
        assert!(
            at(b"\x0d\x41\x43\x50\x49\x30\x30\x31\x33\x00") > ged,
            "_HID ACPI0013"
        );
        let mut irq = vec![0x89, 6, 0, 0x03, 1];
        irq.extend_from_slice(&GED_GSI.to_le_bytes());
        assert!(
            at(&irq) > ged,
            "Interrupt (consumer, edge, active high) {{ GED_GSI }}"
        );
        let evt = at(b"_EVT");
        assert_eq!(dsdt[evt + 4], 0x09, "one argument, serialized");
        let mut body = vec![0xa0];
        let cond = [0x93, 0x68, 0x0a, GED_GSI as u8];
        let notify = [&[0x86, b'\\', 0x2e][..], b"_SB_VGEN", &[0x0a, 0x80]].concat();
        body.push((1 + cond.len() + notify.len()) as u8);
        body.extend_from_slice(&cond);
        body.extend_from_slice(&notify);
        assert_eq!(
            &dsdt[evt + 5..evt + 5 + body.len()],
            &body[..],
            "If (Arg0 == GSI) Notify"
        );
    }

    #[test]
    fn fadt_has_the_sleep_and_reset_registers() {
        let tables = build_tables(1, &[]).unwrap();
        let fadt = &find(&tables, b"FACP").bytes;
        let flags = u32::from_le_bytes(fadt[112..116].try_into().unwrap());
        assert_ne!(flags & (1 << 20), 0, "HW_REDUCED_ACPI");
        assert_ne!(flags & (1 << 10), 0, "RESET_REG_SUP");
        // RESET_REG is a GAS at offset 116; its address at +4.
        assert_eq!(
            u64::from_le_bytes(fadt[120..128].try_into().unwrap()),
            ACPI_RESET_PORT as u64
        );
        assert_eq!(fadt[128], ACPI_RESET_VALUE);
        // SLEEP_CONTROL_REG at offset 244.
        assert_eq!(fadt[244], 1, "system I/O space");
        assert_eq!(
            u64::from_le_bytes(fadt[248..256].try_into().unwrap()),
            ACPI_SLEEP_CONTROL_PORT as u64
        );
    }
}

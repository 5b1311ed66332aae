//! The VM generation ID (Microsoft's "Virtual Machine Generation ID", as QEMU, Firecracker
//! and Cloud Hypervisor offer it): a random 128-bit ID at a fixed guest-physical address
//! ([`VMGENID_ADDR`]) that the DSDT's `VGEN` device (`_HID "VMGENCTR"`) names through its
//! `ADDR` method. Each time the VM may have been duplicated (a snapshot restored) the host
//! writes a new ID ([`regenerate`]) and raises the ACPI Generic Event Device's interrupt
//! ([`notify`]), whose `_EVT` does `Notify(VGEN, 0x80)`; Linux's vmgenid driver then reseeds
//! its random number generator and tells user space (`NEW_VMGENID=1` uevent).

use kvm_ioctls::VmFd;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::layout::{ACPI_START, GED_GSI, VMGENID_ADDR, VMGENID_PAGE};

/// Length of the generation ID.
pub const VMGENID_LEN: usize = 16;

// The ID is 8-byte aligned inside its reserved page, off the option ROM probe boundaries,
// and the page is below the ACPI tables.
const _: () = assert!(
    VMGENID_ADDR >= VMGENID_PAGE
        && VMGENID_ADDR + VMGENID_LEN as u64 <= VMGENID_PAGE + 0x1000
        && VMGENID_PAGE + 0x1000 <= ACPI_START
        && VMGENID_ADDR % 8 == 0
        && VMGENID_ADDR % 2048 != 0
);

/// Errors setting or announcing the generation ID.
#[derive(Debug, thiserror::Error)]
pub enum VmGenIdError {
    /// getrandom failed.
    #[error("cannot draw a VM generation ID from getrandom: {0}")]
    Random(std::io::Error),
    /// The ID's address is not in guest memory (a bug in the layout).
    #[error("cannot write the VM generation ID at guest address {VMGENID_ADDR:#x}: {0}")]
    Memory(vm_memory::GuestMemoryError),
    /// KVM refused to raise the Generic Event Device's interrupt line.
    #[error("KVM_IRQ_LINE on GSI {GED_GSI} (VM generation ID change) failed: {0}")]
    Irq(kvm_ioctls::Error),
}

/// A new random generation ID, shaped as a version 4 (random) UUID in the byte order the
/// ACPI buffer holds it.
pub fn new_id() -> Result<[u8; VMGENID_LEN], VmGenIdError> {
    let mut id = [0u8; VMGENID_LEN];
    let mut filled = 0;
    while filled < id.len() {
        let rest = &mut id[filled..];
        // SAFETY: the pointer and length describe `rest`, a live writable slice the kernel
        // fills with at most `rest.len()` bytes; flags 0 is the blocking urandom source.
        let n = unsafe { libc::getrandom(rest.as_mut_ptr().cast(), rest.len(), 0) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() != std::io::ErrorKind::Interrupted {
                return Err(VmGenIdError::Random(e));
            }
        } else {
            filled += n as usize;
        }
    }
    // Microsoft's GUID layout: time_hi_and_version is the little-endian u16 at bytes 6-7,
    // the variant the top bits of byte 8.
    id[7] = (id[7] & 0x0f) | 0x40;
    id[8] = (id[8] & 0x3f) | 0x80;
    Ok(id)
}

/// The generation ID as the guest sees it now.
pub fn read(mem: &GuestMemoryMmap) -> Result<[u8; VMGENID_LEN], VmGenIdError> {
    let mut id = [0u8; VMGENID_LEN];
    mem.read_slice(&mut id, GuestAddress(VMGENID_ADDR))
        .map_err(VmGenIdError::Memory)?;
    Ok(id)
}

/// Writes a new random generation ID into guest memory at [`VMGENID_ADDR`] and returns it.
/// Called at boot (so the guest never reads an all-zero ID) and, before its vCPUs run, on
/// every VM restored from a snapshot; a restored guest also needs [`notify`].
pub fn regenerate(mem: &GuestMemoryMmap) -> Result<[u8; VMGENID_LEN], VmGenIdError> {
    let id = new_id()?;
    mem.write_slice(&id, GuestAddress(VMGENID_ADDR))
        .map_err(VmGenIdError::Memory)?;
    Ok(id)
}

/// Tells the guest its generation ID changed: one edge on the Generic Event Device's GSI
/// ([`GED_GSI`]). Call it after the VM's irqchip and every vCPU's state are restored
/// (restoring a local APIC would drop the pending interrupt) and before the vCPUs run.
pub fn notify(vm: &VmFd) -> Result<(), VmGenIdError> {
    vm.set_irq_line(GED_GSI, true)
        .and_then(|()| vm.set_irq_line(GED_GSI, false))
        .map_err(VmGenIdError::Irq)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::GuestRam;

    #[test]
    fn regenerate_writes_a_new_v4_id_where_the_guest_reads_it() {
        let ram = GuestRam::new(128).unwrap();
        assert_eq!(read(&ram.memory).unwrap(), [0u8; VMGENID_LEN]);
        let first = regenerate(&ram.memory).unwrap();
        assert_eq!(read(&ram.memory).unwrap(), first);
        assert_ne!(first, [0u8; VMGENID_LEN]);
        assert_eq!(first[7] >> 4, 4, "version 4");
        assert_eq!(first[8] >> 6, 0b10, "RFC 4122 variant");
        let second = regenerate(&ram.memory).unwrap();
        assert_ne!(first, second);
        assert_eq!(read(&ram.memory).unwrap(), second);
        // Nothing around the ID is touched.
        let mut around = [0u8; 32];
        ram.memory
            .read_slice(&mut around, GuestAddress(VMGENID_ADDR - 16))
            .unwrap();
        assert_eq!(&around[..16], &[0u8; 16]);
        assert_eq!(&around[16..], &second);
    }
}

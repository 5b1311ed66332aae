//! Per-VM KVM state: the in-kernel PIT, the kvmclock and the irqchips.

use kvm_bindings::{
    kvm_clock_data, kvm_irqchip, kvm_pit_state2, KVM_CLOCK_REALTIME, KVM_IRQCHIP_IOAPIC,
    KVM_IRQCHIP_PIC_MASTER, KVM_IRQCHIP_PIC_SLAVE,
};
use kvm_ioctls::VmFd;
use serde::{Deserialize, Serialize};

use super::{ioctl, PersistError};

/// Everything KVM holds for a VM outside its vCPUs (sm-vmm uses the in-kernel irqchip and PIT).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VmState {
    /// The i8254 PIT's channels.
    pub pit: kvm_pit_state2,
    /// The kvmclock: guest nanoseconds at the save.
    pub clock: kvm_clock_data,
    /// The master i8259 PIC.
    pub pic_master: kvm_irqchip,
    /// The slave i8259 PIC.
    pub pic_slave: kvm_irqchip,
    /// The IOAPIC's redirection table.
    pub ioapic: kvm_irqchip,
}

/// Reads one irqchip's state.
fn get_irqchip(vm: &VmFd, chip_id: u32, name: &'static str) -> Result<kvm_irqchip, PersistError> {
    let mut chip = kvm_irqchip {
        chip_id,
        ..Default::default()
    };
    vm.get_irqchip(&mut chip).map_err(ioctl(name))?;
    Ok(chip)
}

/// Reads the VM's state. Its vCPUs must be paused, so the clock and irqchips hold still.
pub fn save_vm(vm: &VmFd) -> Result<VmState, PersistError> {
    Ok(VmState {
        pit: vm.get_pit2().map_err(ioctl("KVM_GET_PIT2"))?,
        clock: vm.get_clock().map_err(ioctl("KVM_GET_CLOCK"))?,
        pic_master: get_irqchip(vm, KVM_IRQCHIP_PIC_MASTER, "KVM_GET_IRQCHIP (PIC master)")?,
        pic_slave: get_irqchip(vm, KVM_IRQCHIP_PIC_SLAVE, "KVM_GET_IRQCHIP (PIC slave)")?,
        ioapic: get_irqchip(vm, KVM_IRQCHIP_IOAPIC, "KVM_GET_IRQCHIP (IOAPIC)")?,
    })
}

/// How the guest's kvmclock resumes after a restore.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClockRestore {
    /// From the saved value, as if the VM had only been paused (the guest sees no gap).
    Paused,
    /// Advanced by the host wall-clock time since the save (`KVM_CLOCK_REALTIME`), so guest
    /// time is right after a restore; needs the flag in the saved clock.
    Realtime,
}

/// Writes `state` into `vm`, which must already have its irqchip and PIT2 created, before any of
/// its vCPUs is restored.
pub fn restore_vm(vm: &VmFd, state: &VmState, clock: ClockRestore) -> Result<(), PersistError> {
    vm.set_pit2(&state.pit).map_err(ioctl("KVM_SET_PIT2"))?;
    // KVM_SET_CLOCK takes only KVM_CLOCK_REALTIME of the flags GET reports (TSC_STABLE and
    // HOST_TSC are informational).
    let flags = match clock {
        ClockRestore::Paused => 0,
        ClockRestore::Realtime if state.clock.flags & KVM_CLOCK_REALTIME != 0 => KVM_CLOCK_REALTIME,
        ClockRestore::Realtime => return Err(PersistError::NoRealtimeClock),
    };
    let clock = kvm_clock_data {
        flags,
        ..state.clock
    };
    vm.set_clock(&clock).map_err(ioctl("KVM_SET_CLOCK"))?;
    vm.set_irqchip(&state.pic_master)
        .map_err(ioctl("KVM_SET_IRQCHIP (PIC master)"))?;
    vm.set_irqchip(&state.pic_slave)
        .map_err(ioctl("KVM_SET_IRQCHIP (PIC slave)"))?;
    vm.set_irqchip(&state.ioapic)
        .map_err(ioctl("KVM_SET_IRQCHIP (IOAPIC)"))?;
    Ok(())
}

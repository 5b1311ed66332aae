//! The VM generation ID's change notification on this host's real /dev/kvm: one edge on the
//! Generic Event Device's GSI is accepted by a VM with sm-vmm's in-kernel irqchip, and a VM
//! without one is refused in one line naming the GSI.

use std::path::Path;

use kvm_ioctls::Kvm;
use sm_vmm::devices::vmgenid::{notify, VmGenIdError};
use sm_vmm::layout::GED_GSI;

/// `Some(kvm)` when this host has a usable /dev/kvm, else a loud skip.
fn kvm_or_skip() -> Option<Kvm> {
    if !sm_test_support::require(Path::new("/dev/kvm").exists(), "/dev/kvm") {
        return None;
    }
    Some(Kvm::new().expect("open /dev/kvm"))
}

#[test]
fn notify_raises_the_event_device_gsi_on_the_in_kernel_ioapic() {
    let Some(kvm) = kvm_or_skip() else { return };
    let vm = kvm.create_vm().expect("KVM_CREATE_VM");
    vm.create_irq_chip().expect("KVM_CREATE_IRQCHIP");
    notify(&vm).expect("notify on a VM with an irqchip");
    // Again: each change is its own edge.
    notify(&vm).expect("a second notify");

    let bare = kvm.create_vm().expect("KVM_CREATE_VM");
    let err = notify(&bare).unwrap_err();
    assert!(matches!(err, VmGenIdError::Irq(_)), "{err:?}");
    let msg = err.to_string();
    assert!(
        msg.contains(&format!("GSI {GED_GSI}")) && !msg.contains('\n'),
        "{msg}"
    );
}

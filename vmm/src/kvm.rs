//! Opening /dev/kvm with errors a user can act on, and recognising hosts whose KVM cannot
//! boot a stock kernel.

use std::path::Path;

use kvm_ioctls::{Cap, Kvm};

/// Errors opening or checking KVM.
#[derive(Debug, thiserror::Error)]
pub enum KvmError {
    /// No /dev/kvm at all.
    #[error("/dev/kvm does not exist: this host has no KVM (load kvm_intel or kvm_amd; on a host without hardware virtualization, run through sm-testvm)")]
    Missing,
    /// /dev/kvm exists but we may not open it.
    #[error(
        "permission denied opening /dev/kvm (add this user to the 'kvm' group or run as root)"
    )]
    PermissionDenied,
    /// Other open failures.
    #[error("cannot open /dev/kvm: {0}")]
    Open(std::io::Error),
    /// The host's KVM is PVM, which boots only CONFIG_PVM_GUEST kernels.
    #[error("this host's /dev/kvm is PVM (kvm_pvm), which cannot boot a stock Linux kernel; run inside the test VM: sm-testvm -- sm-vmm ...")]
    PvmOnly,
    /// A capability sm-vmm relies on is missing.
    #[error("KVM lacks a required capability: {0}")]
    MissingCap(&'static str),
    /// Too many vCPUs for this host's KVM.
    #[error("--vcpus {0} is above this host's KVM limit of {1}")]
    TooManyVcpus(u32, usize),
}

/// Whether the host's KVM is PVM-only (no VMX/SVM module loaded beside kvm_pvm).
pub fn is_pvm_only(sys_module: &Path) -> bool {
    sys_module.join("kvm_pvm").exists()
        && !sys_module.join("kvm_intel").exists()
        && !sys_module.join("kvm_amd").exists()
}

/// Refuses a host whose KVM cannot boot a stock kernel. PVM offers the ordinary KVM API,
/// but a stock kernel would fall into its instruction emulator and die: sm-vmm says so
/// plainly instead of hanging. Asked once the VM and its devices are set up (the API works),
/// so a broken backend is reported first on every host.
pub fn refuse_pvm_only() -> Result<(), KvmError> {
    if is_pvm_only(Path::new("/sys/module")) {
        return Err(KvmError::PvmOnly);
    }
    Ok(())
}

/// Opens /dev/kvm and checks it has the API sm-vmm uses for `vcpus` vCPUs (whether it can
/// boot the guest is [`refuse_pvm_only`]'s question).
pub fn open(vcpus: u32) -> Result<Kvm, KvmError> {
    let kvm = Kvm::new().map_err(|e| match e.errno() {
        libc::ENOENT => KvmError::Missing,
        libc::EACCES | libc::EPERM => KvmError::PermissionDenied,
        _ => KvmError::Open(std::io::Error::from_raw_os_error(e.errno())),
    })?;
    for (cap, name) in [
        (Cap::Irqchip, "in-kernel irqchip"),
        (Cap::Pit2, "in-kernel PIT"),
        (Cap::Irqfd, "irqfd"),
        (Cap::Ioeventfd, "ioeventfd"),
        (Cap::UserMemory, "user memory"),
        (Cap::ExtCpuid, "CPUID"),
    ] {
        if !kvm.check_extension(cap) {
            return Err(KvmError::MissingCap(name));
        }
    }
    let max = kvm.get_max_vcpus();
    if vcpus as usize > max {
        return Err(KvmError::TooManyVcpus(vcpus, max));
    }
    Ok(kvm)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pvm_is_recognised_only_without_a_hardware_module() {
        let dir = tempdir();
        std::fs::create_dir(dir.join("kvm")).unwrap();
        assert!(!is_pvm_only(&dir));
        std::fs::create_dir(dir.join("kvm_pvm")).unwrap();
        assert!(is_pvm_only(&dir));
        std::fs::create_dir(dir.join("kvm_amd")).unwrap();
        assert!(!is_pvm_only(&dir));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    fn tempdir() -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("sm-kvm-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }
}

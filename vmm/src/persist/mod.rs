//! The KVM state a restored guest needs to continue exactly where it was, as serializable types
//! with save and restore functions (the KVM half of a snapshot; devices and memory live
//! elsewhere).
//!
//! **What is saved.** Per VM ([`vm::VmState`]): the in-kernel PIT (`KVM_GET_PIT2`), the kvmclock
//! (`KVM_GET_CLOCK`) and the three irqchips (PIC master, PIC slave, IOAPIC). Per vCPU
//! ([`vcpu::VcpuState`]): MP_STATE, REGS, SREGS, XSAVE (`KVM_GET_XSAVE2` sized by
//! `KVM_CAP_XSAVE2` where the kernel has it, else the 4 KiB `KVM_GET_XSAVE`), XCRS, DEBUGREGS,
//! LAPIC, the TSC frequency, CPUID, the MSRs KVM reports as saveable (`KVM_GET_MSR_INDEX_LIST`
//! filtered to architectural state, read in chunks of at most 256) and VCPU_EVENTS.
//!
//! **In which order, and why** (the order Firecracker ships and tests):
//! - before saving, each paused vCPU finishes the exit it stopped at ([`finish_pending_exit`]):
//!   KVM completes a port or MMIO read only on the next `KVM_RUN`.
//! - save: MP_STATE first, because `KVM_GET_MP_STATE` lets the LAPIC accept pending INIT/SIPI
//!   events and so changes other state; then REGS, SREGS, XSAVE, XCRS, DEBUGREGS, LAPIC, TSC
//!   frequency, CPUID, MSRs; VCPU_EVENTS last, since the other GETs may still change what is
//!   pending.
//! - restore: the TSC frequency (scaled only if it differs), CPUID (other SETs consult it), then
//!   MP_STATE, REGS (which drops a pending exception), SREGS (which sets the APIC base the LAPIC
//!   needs), XSAVE, XCRS, DEBUGREGS, LAPIC (before the MSRs: the TSC-deadline MSR only sticks with
//!   the LAPIC in place), the MSRs with IA32_TSC_DEADLINE in a chunk after IA32_TSC (KVM decides
//!   whether to arm the deadline timer from the TSC it sees; a zero deadline is restored as the
//!   saved TSC so a tick lost at the save still comes), VCPU_EVENTS last (it restores the
//!   pending exception REGS cleared); finally `KVM_KVMCLOCK_CTRL` tells a kvmclock guest it was
//!   paused, so its soft-lockup watchdog does not fire.
//! - The kvmclock resumes either from the saved value or advanced by the wall-clock time since
//!   the save ([`ClockRestore`]), so a restored guest's clock is right.
//! - The VM state is restored before any vCPU's; VCPU_EVENTS must only be read or written while
//!   no other vCPU of the VM runs.
//!
//! Everything is wrapped in [`KvmSnapshot`], which carries [`SNAPSHOT_FORMAT_VERSION`]; state of
//! any other version is refused with one error rather than half-restored.

pub mod compat;
pub mod devices;
pub mod vcpu;
pub mod vm;

use serde::{Deserialize, Serialize};

pub use vcpu::{
    finish_pending_exit, msrs_to_save, restore_vcpu, save_vcpu, VcpuSaveContext, VcpuState,
};
pub use vm::{restore_vm, save_vm, ClockRestore, VmState};

/// Version of the serialized KVM state; bumped whenever a field changes meaning or layout.
pub const SNAPSHOT_FORMAT_VERSION: u32 = 1;

/// Errors saving, restoring or (de)serializing KVM state.
#[derive(Debug, thiserror::Error)]
pub enum PersistError {
    /// A KVM ioctl failed.
    #[error("KVM {ioctl} failed: {source}")]
    Ioctl {
        /// The ioctl, e.g. `KVM_GET_SREGS`.
        ioctl: &'static str,
        /// The errno KVM returned.
        source: kvm_ioctls::Error,
    },
    /// This host's KVM lacks a capability the state needs.
    #[error("this host's KVM lacks {0}, which saving or restoring vCPU state needs")]
    MissingCap(&'static str),
    /// `KVM_GET_MSRS`/`KVM_SET_MSRS` handled fewer MSRs than asked.
    #[error("KVM {ioctl} stopped at MSR {index:#x} ({done} of {asked} handled)")]
    MsrIncomplete {
        /// `KVM_GET_MSRS` or `KVM_SET_MSRS`.
        ioctl: &'static str,
        /// The first MSR KVM refused.
        index: u32,
        /// How many MSRs KVM handled.
        done: usize,
        /// How many were asked for.
        asked: usize,
    },
    /// A variable-size KVM structure could not be built (more entries than KVM allows).
    #[error("KVM state has too many {0} entries")]
    TooManyEntries(&'static str),
    /// The saved TSC frequency differs from this host's and KVM cannot scale the guest's TSC.
    #[error("the snapshot's TSC runs at {saved_khz} kHz, this host's at {host_khz} kHz, and KVM cannot scale it: {source}")]
    TscScaling {
        /// Frequency recorded in the snapshot.
        saved_khz: u32,
        /// This vCPU's frequency.
        host_khz: u32,
        /// Why `KVM_SET_TSC_KHZ` failed.
        source: kvm_ioctls::Error,
    },
    /// `KVM_RUN` with `immediate_exit` set ran guest code instead of returning EINTR.
    #[error(
        "KVM_RUN ran the guest although immediate_exit was set, so its state is not quiescent"
    )]
    RanGuest,
    /// A realtime clock restore was asked of state saved without `KVM_CLOCK_REALTIME`.
    #[error("the saved kvmclock carries no host wall-clock time (KVM_CLOCK_REALTIME), so it cannot be advanced by the time since the snapshot")]
    NoRealtimeClock,
    /// A field has an impossible shape (the file was altered or truncated).
    #[error("KVM state is malformed: {0}")]
    Malformed(&'static str),
    /// The state was written by another format version.
    #[error("KVM state has format version {found}, this sm-vmm reads only version {expected}")]
    Version {
        /// Version in the file.
        found: u32,
        /// [`SNAPSHOT_FORMAT_VERSION`].
        expected: u32,
    },
    /// The bytes are not KVM state at all (truncated, altered, another file).
    #[error("KVM state is not readable: {0}")]
    Decode(serde_json::Error),
}

/// Shorthand for mapping a kvm-ioctls error to [`PersistError::Ioctl`].
fn ioctl(name: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> PersistError {
    move |source| PersistError::Ioctl {
        ioctl: name,
        source,
    }
}

/// The KVM state of a whole VM, tagged with the format version it was written in.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct KvmSnapshot {
    /// [`SNAPSHOT_FORMAT_VERSION`] of the writer.
    pub version: u32,
    /// Per-VM state.
    pub vm: VmState,
    /// Per-vCPU state, indexed by vCPU id.
    pub vcpus: Vec<VcpuState>,
}

/// Just the version field, read first so another version is refused before its fields are.
#[derive(Deserialize)]
struct VersionOnly {
    version: u32,
}

impl KvmSnapshot {
    /// Wraps VM and vCPU state in the current format version.
    pub fn new(vm: VmState, vcpus: Vec<VcpuState>) -> Self {
        KvmSnapshot {
            version: SNAPSHOT_FORMAT_VERSION,
            vm,
            vcpus,
        }
    }

    /// Serializes the state (JSON).
    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("KVM state always serializes")
    }

    /// Reads state written by [`Self::to_bytes`], refusing any other format version.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, PersistError> {
        let head: VersionOnly = serde_json::from_slice(bytes).map_err(PersistError::Decode)?;
        if head.version != SNAPSHOT_FORMAT_VERSION {
            return Err(PersistError::Version {
                found: head.version,
                expected: SNAPSHOT_FORMAT_VERSION,
            });
        }
        serde_json::from_slice(bytes).map_err(PersistError::Decode)
    }
}

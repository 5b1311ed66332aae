//! Per-vCPU KVM state: what [`save_vcpu`] reads and [`restore_vcpu`] writes back, in the order
//! explained in the module above.

use kvm_bindings::{
    kvm_cpuid_entry2, kvm_debugregs, kvm_lapic_state, kvm_mp_state, kvm_msr_entry, kvm_regs,
    kvm_sregs, kvm_vcpu_events, kvm_xcrs, kvm_xsave, CpuId, Msrs, Xsave, KVM_MAX_CPUID_ENTRIES,
    KVM_MAX_MSR_ENTRIES,
};
use kvm_ioctls::{Cap, Kvm, VcpuFd, VmFd};
use serde::{Deserialize, Serialize};

use super::{ioctl, PersistError};

/// IA32_TSC: the guest's time stamp counter.
pub const MSR_IA32_TSC: u32 = 0x10;
/// IA32_TSC_DEADLINE: the LAPIC timer's deadline, compared against IA32_TSC.
pub const MSR_IA32_TSC_DEADLINE: u32 = 0x6e0;

/// MSR ranges (first index, count) that hold guest-visible architectural state worth carrying
/// across a snapshot: the same selection Firecracker makes from `KVM_GET_MSR_INDEX_LIST`, which
/// leaves out what KVM recomputes from CPUID (PMU, VMX capabilities, ARCH_CAPABILITIES,
/// PERF_CAPABILITIES) and Hyper-V MSRs sm-vmm never enables.
const SERIALIZABLE_MSR_RANGES: &[(u32, u32)] = &[
    (0x0, 2),             // IA32_P5_MC_ADDR, IA32_P5_MC_TYPE
    (0x10, 1),            // IA32_TSC
    (0x17, 1),            // IA32_PLATFORM_ID
    (0x1b, 1),            // IA32_APICBASE
    (0x2a, 1),            // IA32_EBL_CR_POWERON
    (0x2c, 1),            // EBC_FREQUENCY_ID
    (0x34, 1),            // SMI_COUNT
    (0x3a, 2),            // IA32_FEAT_CTL, IA32_TSC_ADJUST
    (0x48, 2),            // IA32_SPEC_CTRL, IA32_PRED_CMD
    (0x79, 1),            // IA32_UCODE_WRITE
    (0x8b, 1),            // IA32_UCODE_REV
    (0x9e, 1),            // IA32_SMBASE
    (0xcd, 2),            // FSB_FREQ, PLATFORM_INFO
    (0xe2, 1),            // PKG_CST_CONFIG_CONTROL
    (0xe7, 2),            // IA32_MPERF, IA32_APERF
    (0xfe, 1),            // MTRRcap
    (0x11e, 1),           // IA32_BBL_CR_CTL3
    (0x122, 1),           // IA32_TSX_CTRL
    (0x140, 1),           // MISC_FEATURES_ENABLES
    (0x174, 3),           // IA32_SYSENTER_CS/ESP/EIP
    (0x179, 2), // IA32_MCG_CAP, IA32_MCG_STATUS (not IA32_MCG_CTL: Linux does not export it)
    (0x198, 1), // IA32_PERF_STATUS
    (0x1a0, 1), // IA32_MISC_ENABLE
    (0x1a4, 1), // MISC_FEATURE_CONTROL
    (0x1aa, 1), // MISC_PWR_MGMT
    (0x1ad, 2), // TURBO_RATIO_LIMIT, TURBO_RATIO_LIMIT1
    (0x1d9, 1), // IA32_DEBUGCTL
    (0x1db, 4), // last branch / last interrupt from and to IPs
    (0x1fc, 1), // IA32_POWER_CTL
    (0x200, 0x100), // MTRR bases/masks, fixed MTRRs, PAT, MTRR default type
    (0x3fc, 3), // CORE_C3/C6/C7_RESIDENCY
    (0x400, 0x80), // machine-check banks IA32_MCi_CTL/STATUS/ADDR/MISC
    (0x606, 1), // RAPL_POWER_UNIT
    (0x60a, 3), // PKGC3/6/7_IRTL
    (0x610, 2), // PKG_POWER_LIMIT, PKG_ENERGY_STATUS
    (0x613, 2), // PKG_PERF_STATUS, PKG_POWER_INFO
    (0x618, 2), // DRAM_POWER_LIMIT, DRAM_ENERGY_STATUS
    (0x61b, 2), // DRAM_PERF_STATUS, DRAM_POWER_INFO
    (0x648, 5), // CONFIG_TDP_NOMINAL/LEVEL_1/LEVEL_2/CONTROL, TURBO_ACTIVATION_RATIO
    (0x6e0, 1), // IA32_TSC_DEADLINE
    (0x800, 0x400), // x2APIC registers
    (0xda0, 1), // IA32_XSS: without it XRSTORS of supervisor XSTATE faults
    (0xc000_0080, 5), // EFER, STAR, LSTAR, CSTAR, SYSCALL_MASK
    (0xc000_0100, 4), // FS_BASE, GS_BASE, KERNEL_GS_BASE, TSC_AUX
    (0xc001_0015, 1), // K7_HWCR
    (0x4b56_4d00, 0x100), // KVM paravirtual MSRs (kvmclock, async PF, steal time, PV EOI...)
];

/// Whether MSR `index` is carried across a snapshot.
pub fn msr_should_serialize(index: u32) -> bool {
    SERIALIZABLE_MSR_RANGES
        .iter()
        .any(|&(base, count)| index >= base && index - base < count)
}

/// The MSRs this host's KVM can save (`KVM_GET_MSR_INDEX_LIST`) that hold guest state, with
/// IA32_TSC_DEADLINE moved to the end so it is restored after IA32_TSC.
pub fn msrs_to_save(kvm: &Kvm) -> Result<Vec<u32>, PersistError> {
    let list = kvm
        .get_msr_index_list()
        .map_err(ioctl("KVM_GET_MSR_INDEX_LIST"))?;
    let mut msrs: Vec<u32> = list
        .as_slice()
        .iter()
        .copied()
        .filter(|&i| msr_should_serialize(i))
        .collect();
    // A stable sort keeping everything else in KVM's order.
    msrs.sort_by_key(|&i| i == MSR_IA32_TSC_DEADLINE);
    Ok(msrs)
}

/// What saving a vCPU needs to know about the host's KVM, computed once per VM.
#[derive(Debug, Clone)]
pub struct VcpuSaveContext {
    /// MSRs to save, from [`msrs_to_save`].
    pub msrs: Vec<u32>,
    /// Size in bytes of `struct kvm_xsave` as `KVM_CAP_XSAVE2` reports it; `None` on kernels
    /// without it (then the fixed 4 KiB `KVM_GET_XSAVE` is used).
    pub xsave2_size: Option<usize>,
}

impl VcpuSaveContext {
    /// Asks `kvm` and `vm` which MSRs to save and how large XSAVE state is.
    pub fn new(kvm: &Kvm, vm: &VmFd) -> Result<Self, PersistError> {
        let xsave2 = vm.check_extension_int(Cap::Xsave2);
        Ok(VcpuSaveContext {
            msrs: msrs_to_save(kvm)?,
            xsave2_size: usize::try_from(xsave2).ok().filter(|&s| s > 0),
        })
    }
}

/// XSAVE state as 32-bit words: the legacy 4 KiB `kvm_xsave` region, then the dynamically sized
/// tail (AMX tile data and the like) that only `KVM_GET_XSAVE2` returns.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct XsaveState {
    /// The fixed region (1024 words).
    pub region: Vec<u32>,
    /// The words beyond it (empty without `KVM_CAP_XSAVE2` or without large components).
    pub extra: Vec<u32>,
}

/// Everything KVM holds for one vCPU.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VcpuState {
    /// Runnable, halted, waiting for SIPI...
    pub mp_state: kvm_mp_state,
    /// General-purpose registers, RIP, RFLAGS.
    pub regs: kvm_regs,
    /// Segment, control and descriptor-table registers, EFER, APIC base, pending interrupt.
    pub sregs: kvm_sregs,
    /// FPU/SSE/AVX... state.
    pub xsave: XsaveState,
    /// Extended control registers (XCR0).
    pub xcrs: kvm_xcrs,
    /// DR0-DR3, DR6, DR7.
    pub debugregs: kvm_debugregs,
    /// The local APIC's register page.
    pub lapic: kvm_lapic_state,
    /// The guest TSC frequency; `None` where KVM cannot report it.
    pub tsc_khz: Option<u32>,
    /// The CPUID the guest sees.
    pub cpuid: Vec<kvm_cpuid_entry2>,
    /// MSR values in restore order (IA32_TSC_DEADLINE last).
    pub msrs: Vec<kvm_msr_entry>,
    /// Pending exceptions, interrupts, NMIs, SMM and interrupt-shadow state.
    pub vcpu_events: kvm_vcpu_events,
}

/// Relative TSC frequency difference (in parts per million) under which no scaling is done:
/// frequencies calibrated at boot differ a little between identical hosts.
const TSC_KHZ_TOLERANCE_PPM: u64 = 250;

/// Lets KVM finish the exit the vCPU last returned to userspace without running guest code:
/// `KVM_RUN` with `immediate_exit` set completes it and returns EINTR. Call it before
/// [`save_vcpu`] on a vCPU stopped at an exit: KVM writes the data of a port or MMIO read into
/// the registers only on the next `KVM_RUN`, so state saved before that would lose it.
pub fn finish_pending_exit(fd: &mut VcpuFd) -> Result<(), PersistError> {
    fd.set_kvm_immediate_exit(1);
    let result = fd.run().map(|_| ());
    fd.set_kvm_immediate_exit(0);
    match result {
        Err(e) if e.errno() == libc::EINTR => Ok(()),
        Err(source) => Err(PersistError::Ioctl {
            ioctl: "KVM_RUN (immediate exit)",
            source,
        }),
        Ok(()) => Err(PersistError::RanGuest),
    }
}

/// Reads the state of the vCPU `fd`. No other vCPU of its VM may be running.
pub fn save_vcpu(fd: &VcpuFd, ctx: &VcpuSaveContext) -> Result<VcpuState, PersistError> {
    let mp_state = fd.get_mp_state().map_err(ioctl("KVM_GET_MP_STATE"))?;
    let regs = fd.get_regs().map_err(ioctl("KVM_GET_REGS"))?;
    let sregs = fd.get_sregs().map_err(ioctl("KVM_GET_SREGS"))?;
    let xsave = get_xsave(fd, ctx.xsave2_size)?;
    let xcrs = fd.get_xcrs().map_err(ioctl("KVM_GET_XCRS"))?;
    let debugregs = fd.get_debug_regs().map_err(ioctl("KVM_GET_DEBUGREGS"))?;
    let lapic = fd.get_lapic().map_err(ioctl("KVM_GET_LAPIC"))?;
    // Without KVM_CAP_GET_TSC_KHZ the snapshot can still restore on the same host model.
    let tsc_khz = fd.get_tsc_khz().ok();
    let cpuid = fd
        .get_cpuid2(KVM_MAX_CPUID_ENTRIES)
        .map_err(ioctl("KVM_GET_CPUID2"))?
        .as_slice()
        .to_vec();
    let msrs = get_msrs(fd, &ctx.msrs)?;
    let vcpu_events = fd.get_vcpu_events().map_err(ioctl("KVM_GET_VCPU_EVENTS"))?;
    Ok(VcpuState {
        mp_state,
        regs,
        sregs,
        xsave,
        xcrs,
        debugregs,
        lapic,
        tsc_khz,
        cpuid,
        msrs,
        vcpu_events,
    })
}

/// Writes `state` into the vCPU `fd` (freshly created, never run). No other vCPU of its VM may be
/// running; the VM's own state goes first ([`super::restore_vm`]).
pub fn restore_vcpu(fd: &VcpuFd, state: &VcpuState) -> Result<(), PersistError> {
    if let Some(saved_khz) = state.tsc_khz {
        scale_tsc(fd, saved_khz)?;
    }
    let cpuid =
        CpuId::from_entries(&state.cpuid).map_err(|_| PersistError::TooManyEntries("CPUID"))?;
    fd.set_cpuid2(&cpuid).map_err(ioctl("KVM_SET_CPUID2"))?;
    fd.set_mp_state(state.mp_state)
        .map_err(ioctl("KVM_SET_MP_STATE"))?;
    fd.set_regs(&state.regs).map_err(ioctl("KVM_SET_REGS"))?;
    fd.set_sregs(&state.sregs).map_err(ioctl("KVM_SET_SREGS"))?;
    set_xsave(fd, &state.xsave)?;
    fd.set_xcrs(&state.xcrs).map_err(ioctl("KVM_SET_XCRS"))?;
    fd.set_debug_regs(&state.debugregs)
        .map_err(ioctl("KVM_SET_DEBUGREGS"))?;
    fd.set_lapic(&state.lapic).map_err(ioctl("KVM_SET_LAPIC"))?;
    set_msrs(fd, &state.msrs)?;
    fd.set_vcpu_events(&state.vcpu_events)
        .map_err(ioctl("KVM_SET_VCPU_EVENTS"))?;
    kvmclock_ctrl(fd)
}

/// Tells a kvmclock guest it was paused so its watchdogs discount the gap. EINVAL means the
/// guest never enabled kvmclock (nothing to tell); KVM without the ioctl has no such guests.
fn kvmclock_ctrl(fd: &VcpuFd) -> Result<(), PersistError> {
    match fd.kvmclock_ctrl() {
        Ok(()) => Ok(()),
        Err(e) if e.errno() == libc::EINVAL || e.errno() == libc::ENOTTY => Ok(()),
        Err(source) => Err(PersistError::Ioctl {
            ioctl: "KVM_KVMCLOCK_CTRL",
            source,
        }),
    }
}

/// Sets the vCPU's TSC frequency to `saved_khz` when this host's differs by more than the
/// tolerance, so guest time keeps its pace.
fn scale_tsc(fd: &VcpuFd, saved_khz: u32) -> Result<(), PersistError> {
    let Ok(host_khz) = fd.get_tsc_khz() else {
        // Cannot compare: trust it is the same host model, as without a recorded frequency.
        return Ok(());
    };
    let diff = u64::from(host_khz.abs_diff(saved_khz));
    if diff * 1_000_000 <= u64::from(saved_khz) * TSC_KHZ_TOLERANCE_PPM {
        return Ok(());
    }
    fd.set_tsc_khz(saved_khz)
        .map_err(|source| PersistError::TscScaling {
            saved_khz,
            host_khz,
            source,
        })
}

/// Reads XSAVE state with `KVM_GET_XSAVE2` at the size KVM reported, else `KVM_GET_XSAVE`.
fn get_xsave(fd: &VcpuFd, xsave2_size: Option<usize>) -> Result<XsaveState, PersistError> {
    let Some(size) = xsave2_size else {
        let xsave = fd.get_xsave().map_err(ioctl("KVM_GET_XSAVE"))?;
        return Ok(XsaveState {
            region: xsave.region.to_vec(),
            extra: Vec::new(),
        });
    };
    let words = size
        .saturating_sub(std::mem::size_of::<kvm_xsave>())
        .div_ceil(std::mem::size_of::<u32>());
    let mut xsave = Xsave::new(words).map_err(|_| PersistError::TooManyEntries("XSAVE"))?;
    // SAFETY: `xsave` holds `size` bytes, the size KVM_CAP_XSAVE2 says KVM_GET_XSAVE2 writes.
    unsafe { fd.get_xsave2(&mut xsave) }.map_err(ioctl("KVM_GET_XSAVE2"))?;
    Ok(XsaveState {
        region: xsave.as_fam_struct_ref().xsave.region.to_vec(),
        extra: xsave.as_slice().to_vec(),
    })
}

/// Writes XSAVE state back; `KVM_SET_XSAVE` accepts the larger layout on kernels with XSAVE2.
fn set_xsave(fd: &VcpuFd, state: &XsaveState) -> Result<(), PersistError> {
    let mut xsave =
        Xsave::new(state.extra.len()).map_err(|_| PersistError::TooManyEntries("XSAVE"))?;
    // SAFETY: only the fixed-size region is written; the length field stays as `new` set it.
    let region = unsafe { &mut xsave.as_mut_fam_struct().xsave.region };
    if state.region.len() != region.len() {
        return Err(PersistError::Malformed("the XSAVE region is not 4 KiB"));
    }
    region.copy_from_slice(&state.region);
    xsave.as_mut_slice().copy_from_slice(&state.extra);
    // SAFETY: `xsave` is as large as the state it carries, which KVM_GET_XSAVE(2) produced for
    // the same CPU features (CPUID is restored before this).
    unsafe { fd.set_xsave2(&xsave) }.map_err(ioctl("KVM_SET_XSAVE"))
}

/// Reads `indices` with `KVM_GET_MSRS` in chunks KVM accepts, keeping their order.
fn get_msrs(fd: &VcpuFd, indices: &[u32]) -> Result<Vec<kvm_msr_entry>, PersistError> {
    let mut out = Vec::with_capacity(indices.len());
    for chunk in indices.chunks(KVM_MAX_MSR_ENTRIES) {
        let entries: Vec<kvm_msr_entry> = chunk
            .iter()
            .map(|&index| kvm_msr_entry {
                index,
                ..Default::default()
            })
            .collect();
        let mut msrs =
            Msrs::from_entries(&entries).map_err(|_| PersistError::TooManyEntries("MSR"))?;
        let done = fd.get_msrs(&mut msrs).map_err(ioctl("KVM_GET_MSRS"))?;
        if done != chunk.len() {
            return Err(PersistError::MsrIncomplete {
                ioctl: "KVM_GET_MSRS",
                index: chunk[done],
                done,
                asked: chunk.len(),
            });
        }
        out.extend_from_slice(msrs.as_slice());
    }
    Ok(out)
}

/// The MSRs to write on restore: as saved, except that a zero IA32_TSC_DEADLINE becomes the saved
/// IA32_TSC. Firecracker saw snapshots taken just as the deadline fired, with the MSR cleared but
/// the interrupt not yet delivered: restored as zero, that vCPU never gets another timer tick. A
/// deadline already reached fires once at once, which a guest takes as an early tick; KVM ignores
/// it unless the LAPIC timer is in TSC-deadline mode.
fn msrs_for_restore(saved: &[kvm_msr_entry]) -> Vec<kvm_msr_entry> {
    let tsc = saved
        .iter()
        .find(|e| e.index == MSR_IA32_TSC)
        .map(|e| e.data);
    saved
        .iter()
        .map(|&e| match tsc {
            Some(tsc) if e.index == MSR_IA32_TSC_DEADLINE && e.data == 0 => {
                kvm_msr_entry { data: tsc, ..e }
            }
            _ => e,
        })
        .collect()
}

/// Writes MSRs in their saved order, IA32_TSC_DEADLINE in a chunk of its own after the rest.
fn set_msrs(fd: &VcpuFd, saved: &[kvm_msr_entry]) -> Result<(), PersistError> {
    let (deferred, first): (Vec<kvm_msr_entry>, Vec<kvm_msr_entry>) = msrs_for_restore(saved)
        .into_iter()
        .partition(|e| e.index == MSR_IA32_TSC_DEADLINE);
    for chunk in first
        .chunks(KVM_MAX_MSR_ENTRIES)
        .chain(std::iter::once(deferred.as_slice()))
    {
        if chunk.is_empty() {
            continue;
        }
        let msrs = Msrs::from_entries(chunk).map_err(|_| PersistError::TooManyEntries("MSR"))?;
        let done = fd.set_msrs(&msrs).map_err(ioctl("KVM_SET_MSRS"))?;
        if done != chunk.len() {
            return Err(PersistError::MsrIncomplete {
                ioctl: "KVM_SET_MSRS",
                index: chunk[done].index,
                done,
                asked: chunk.len(),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msr(index: u32, data: u64) -> kvm_msr_entry {
        kvm_msr_entry {
            index,
            data,
            ..Default::default()
        }
    }

    #[test]
    fn a_cleared_tsc_deadline_is_restored_as_the_saved_tsc() {
        let restored = msrs_for_restore(&[msr(0x10, 1234), msr(0x174, 8), msr(0x6e0, 0)]);
        assert_eq!(restored[2].data, 1234);
        assert_eq!(restored[1].data, 8);
        let armed = msrs_for_restore(&[msr(0x10, 1234), msr(0x6e0, 5000)]);
        assert_eq!(armed[1].data, 5000, "an armed deadline is kept");
    }

    #[test]
    fn filter_keeps_architectural_msrs_and_drops_capability_ones() {
        for kept in [
            0x10,
            0x6e0,
            0x277,
            0xc000_0080,
            0xc000_0102,
            0x4b56_4d00,
            0x830,
        ] {
            assert!(msr_should_serialize(kept), "{kept:#x} should be saved");
        }
        // IA32_MCG_CTL, ARCH_CAPABILITIES, PERF_CAPABILITIES, VMX_BASIC, a PMU counter.
        for dropped in [0x17b, 0x10a, 0x345, 0x480, 0xc1, 0x4000_0000] {
            assert!(
                !msr_should_serialize(dropped),
                "{dropped:#x} should not be saved"
            );
        }
    }
}

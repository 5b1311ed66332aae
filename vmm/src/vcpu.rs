//! vCPU set-up (CPUID, MSRs, LAPIC, and for the boot vCPU the 64-bit register state the
//! Linux boot protocol expects) and the run loop that dispatches port I/O exits.

use std::cell::Cell;
use std::sync::mpsc::Sender;
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use kvm_bindings::{kvm_fpu, kvm_msr_entry, kvm_regs, kvm_run, kvm_segment, CpuId, Msrs};
use kvm_ioctls::{VcpuExit, VcpuFd, VmFd};
use vmm_sys_util::signal::Killable;

use crate::boot::{KernelEntry, LoadedKernel};
use crate::devices::{GuestStop, MmioBus, PioBus};
use crate::layout::*;
use crate::persist::{self, PersistError, VcpuSaveContext, VcpuState};

/// Errors setting up or running a vCPU.
#[derive(Debug, thiserror::Error)]
pub enum VcpuError {
    /// A KVM ioctl failed.
    #[error("vCPU {0}: {1} failed: {2}")]
    Kvm(u32, &'static str, kvm_ioctls::Error),
    /// KVM could not enter the guest or hit an internal error.
    #[error("vCPU {0}: KVM cannot run the guest ({1})")]
    Fatal(u32, String),
}

/// What ends a vCPU's run loop.
#[derive(Debug)]
pub enum VcpuEvent {
    /// The guest powered off or reset.
    Stop(GuestStop),
    /// The vCPU failed.
    Error(VcpuError),
}

/// Why the vCPUs could not be paused or resumed.
#[derive(Debug, thiserror::Error)]
pub enum PauseError {
    /// A pause of a paused VM.
    #[error("the VM is already paused")]
    AlreadyPaused,
    /// A resume of a running VM.
    #[error("the VM is not paused")]
    NotPaused,
    /// Some vCPU did not leave KVM_RUN in time; the VM keeps running.
    #[error("only {parked} of {running} vCPUs stopped within 5 s; the VM keeps running")]
    Timeout {
        /// vCPUs that did stop.
        parked: usize,
        /// vCPUs still running guest code.
        running: usize,
    },
}

/// How long a pause waits for every vCPU to leave KVM_RUN.
const PAUSE_TIMEOUT: Duration = Duration::from_secs(5);

thread_local! {
    /// This thread's vCPU `kvm_run` area, for the kick signal's handler (null outside
    /// [`Vcpu::run`]).
    static KVM_RUN: Cell<*mut kvm_run> = const { Cell::new(std::ptr::null_mut()) };
}

/// The real-time signal that kicks a vCPU thread out of KVM_RUN, as Firecracker does.
fn kick_signal() -> libc::c_int {
    libc::SIGRTMIN()
}

/// Sets `immediate_exit` on this thread's vCPU, so KVM_RUN returns EINTR now or, if the
/// signal came just before KVM_RUN, as soon as it is entered.
extern "C" fn handle_kick(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    let run = KVM_RUN.with(Cell::get);
    if !run.is_null() {
        // SAFETY: `run` is this thread's own vCPU mapping, set by `Vcpu::run` while it owns
        // the `VcpuFd` that keeps it mapped and cleared before the fd can go; one byte write.
        unsafe { std::ptr::addr_of_mut!((*run).immediate_exit).write_volatile(1) };
    }
}

/// Installs the handler of the signal that kicks vCPUs (once, before any pause).
pub fn install_kick_handler() -> Result<(), std::io::Error> {
    // SAFETY: a zeroed sigaction is a valid empty one; the handler only writes one byte
    // through a thread-local pointer, which is async-signal-safe. SA_RESTART keeps other
    // blocking calls of a vCPU thread (vhost-user messages) from failing with EINTR; KVM_RUN
    // still returns EINTR.
    let ok = unsafe {
        let mut act: libc::sigaction = std::mem::zeroed();
        act.sa_sigaction = handle_kick as *const () as usize;
        act.sa_flags = libc::SA_SIGINFO | libc::SA_RESTART;
        libc::sigemptyset(&mut act.sa_mask);
        libc::sigaction(kick_signal(), &act, std::ptr::null_mut())
    };
    if ok == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Pauses and resumes the vCPU threads: a paused vCPU waits outside KVM_RUN until resumed.
#[derive(Debug, Default)]
pub struct VcpuPause {
    state: Mutex<PauseState>,
    changed: Condvar,
}

#[derive(Debug, Default)]
struct PauseState {
    paused: bool,
    parked: usize,
    save: Option<SaveJob>,
}

/// A request to every parked vCPU to save its KVM state (only a vCPU's own thread holds its fd).
#[derive(Debug)]
struct SaveJob {
    ctx: Arc<VcpuSaveContext>,
    /// One slot per vCPU id, filled by that vCPU's thread.
    states: Vec<Option<Result<VcpuState, PersistError>>>,
}

/// Why the vCPUs' state could not be saved.
#[derive(Debug, thiserror::Error)]
pub enum VcpuSaveError {
    /// The vCPUs run.
    #[error("the VM is not paused")]
    NotPaused,
    /// Some vCPU thread did not answer (it stopped).
    #[error("not every vCPU saved its state within 5 s")]
    Timeout,
    /// KVM refused a GET.
    #[error("vCPU {0}: {1}")]
    Kvm(usize, PersistError),
}

impl VcpuPause {
    /// Whether a pause is in effect.
    pub fn is_paused(&self) -> bool {
        self.lock().paused
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, PauseState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Kicks every vCPU thread out of KVM_RUN and returns once all that still run are parked.
    pub fn pause(&self, threads: &[JoinHandle<()>]) -> Result<(), PauseError> {
        let mut state = self.lock();
        if state.paused {
            return Err(PauseError::AlreadyPaused);
        }
        state.paused = true;
        let deadline = Instant::now() + PAUSE_TIMEOUT;
        loop {
            let running = threads.iter().filter(|t| !t.is_finished()).count();
            if state.parked >= running {
                return Ok(());
            }
            if Instant::now() >= deadline {
                let parked = state.parked;
                state.paused = false;
                self.changed.notify_all();
                return Err(PauseError::Timeout { parked, running });
            }
            // Kicked again each round: a thread still starting has no kvm_run to mark yet.
            for t in threads {
                let _ = t.kill(kick_signal());
            }
            state = self
                .changed
                .wait_timeout(state, Duration::from_millis(20))
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// Lets the parked vCPUs run again.
    pub fn resume(&self) -> Result<(), PauseError> {
        let mut state = self.lock();
        if !state.paused {
            return Err(PauseError::NotPaused);
        }
        state.paused = false;
        self.changed.notify_all();
        Ok(())
    }

    /// Has every parked vCPU (`count` of them) finish its pending exit and save its KVM
    /// state, in vCPU id order. The VM must be paused and stays so.
    pub fn save_vcpus(
        &self,
        ctx: VcpuSaveContext,
        count: usize,
    ) -> Result<Vec<VcpuState>, VcpuSaveError> {
        let mut state = self.lock();
        if !state.paused {
            return Err(VcpuSaveError::NotPaused);
        }
        state.save = Some(SaveJob {
            ctx: Arc::new(ctx),
            states: (0..count).map(|_| None).collect(),
        });
        self.changed.notify_all();
        let deadline = Instant::now() + PAUSE_TIMEOUT;
        loop {
            let done = state
                .save
                .as_ref()
                .is_some_and(|job| job.states.iter().all(Option::is_some));
            if done {
                let job = state.save.take().expect("a save job");
                return job
                    .states
                    .into_iter()
                    .enumerate()
                    .map(|(id, s)| s.expect("filled").map_err(|e| VcpuSaveError::Kvm(id, e)))
                    .collect();
            }
            if Instant::now() >= deadline {
                state.save = None;
                return Err(VcpuSaveError::Timeout);
            }
            state = self
                .changed
                .wait_timeout(state, Duration::from_millis(20))
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// Called by vCPU `id`'s thread outside KVM_RUN: waits while a pause is in effect,
    /// saving the vCPU's state when asked to.
    fn park_while_paused(&self, fd: &mut VcpuFd, id: u32) {
        let mut state = self.lock();
        if !state.paused {
            return;
        }
        state.parked += 1;
        self.changed.notify_all();
        while state.paused {
            if let Some(job) = state.save.as_mut() {
                if let Some(slot) = job.states.get_mut(id as usize).filter(|s| s.is_none()) {
                    // KVM completes a port or MMIO read only on the next KVM_RUN: let it,
                    // without running guest code, before reading the registers.
                    *slot = Some(
                        persist::finish_pending_exit(fd)
                            .and_then(|()| persist::save_vcpu(fd, &job.ctx)),
                    );
                    self.changed.notify_all();
                    continue;
                }
            }
            state = self.changed.wait(state).unwrap_or_else(|e| e.into_inner());
        }
        state.parked -= 1;
    }
}

const MSR_IA32_SYSENTER_CS: u32 = 0x174;
const MSR_IA32_SYSENTER_ESP: u32 = 0x175;
const MSR_IA32_SYSENTER_EIP: u32 = 0x176;
const MSR_STAR: u32 = 0xc000_0081;
const MSR_LSTAR: u32 = 0xc000_0082;
const MSR_CSTAR: u32 = 0xc000_0083;
const MSR_SYSCALL_MASK: u32 = 0xc000_0084;
const MSR_KERNEL_GS_BASE: u32 = 0xc000_0102;
const MSR_IA32_TSC: u32 = 0x10;
const MSR_IA32_MISC_ENABLE: u32 = 0x1a0;
const MSR_MTRR_DEF_TYPE: u32 = 0x2ff;
const MISC_ENABLE_FAST_STRING: u64 = 1;
/// MTRRs enabled, default type write-back.
const MTRR_ENABLE_WB: u64 = (1 << 11) | 6;

const APIC_LVT0: usize = 0x350;
const APIC_LVT1: usize = 0x360;
const APIC_MODE_EXTINT: u32 = 0x7;
const APIC_MODE_NMI: u32 = 0x4;

/// Segment type of a busy 64-bit TSS.
const TSS_BUSY_64: u8 = 0xb;
/// Segment type of an available 64-bit TSS.
const TSS_AVAILABLE_64: u8 = 0x9;

/// Whether `cpuid` (leaf 0) names a vendor whose CPUs virtualize with SVM (AMD, Hygon).
fn svm_vendor(cpuid: &[kvm_bindings::kvm_cpuid_entry2]) -> bool {
    cpuid
        .iter()
        .find(|e| e.function == 0 && e.index == 0)
        .is_some_and(|e| {
            // "AuthenticAMD" and "HygonGenuine": EBX holds the first four bytes.
            e.ebx == u32::from_le_bytes(*b"Auth") || e.ebx == u32::from_le_bytes(*b"Hygo")
        })
}

/// Host CPUID, adjusted per vCPU: APIC IDs and the topology that matches the MADT.
pub fn vcpu_cpuid(base: &CpuId, id: u32, count: u32) -> CpuId {
    let mut cpuid = base.clone();
    let shift = 32 - count.next_power_of_two().leading_zeros() - 1;
    for e in cpuid.as_mut_slice() {
        match e.function {
            1 => {
                e.ebx = (e.ebx & 0x0000_ffff) | (id << 24) | (count.min(255) << 16);
                if count > 1 {
                    e.edx |= 1 << 28; // HTT: the package has more than one logical CPU.
                }
                // KVM does not set the hypervisor bit; without it the guest never looks
                // for the KVM leaves, so it has no kvmclock and cannot calibrate its TSC.
                e.ecx |= 1 << 31;
            }
            0xb | 0x1f => {
                // Level 0 (SMT): one thread per core; level 1 (core): `count` cores.
                e.edx = id;
                match e.index {
                    0 => (e.eax, e.ebx, e.ecx) = (0, 1, 0x100),
                    1 => (e.eax, e.ebx, e.ecx) = (shift, count, 0x201),
                    i => (e.eax, e.ebx, e.ecx) = (0, 0, i),
                }
            }
            0x8000_001e => e.eax = id,
            _ => {}
        }
    }
    cpuid
}

fn segment(gdt: &[u64; 4], index: u16) -> kvm_segment {
    let e = gdt[index as usize];
    let g = ((e >> 55) & 1) as u8;
    let raw_limit = ((e & 0xffff) | ((e >> 32) & 0xf_0000)) as u32;
    let present = ((e >> 47) & 1) as u8;
    kvm_segment {
        base: ((e >> 16) & 0xff_ffff) | ((e >> 32) & 0xff00_0000),
        limit: if g == 1 {
            (raw_limit << 12) | 0xfff
        } else {
            raw_limit
        },
        selector: index * 8,
        type_: ((e >> 40) & 0xf) as u8,
        present,
        dpl: ((e >> 45) & 3) as u8,
        db: ((e >> 54) & 1) as u8,
        s: ((e >> 44) & 1) as u8,
        l: ((e >> 53) & 1) as u8,
        g,
        avl: ((e >> 52) & 1) as u8,
        unusable: u8::from(present == 0),
        padding: 0,
    }
}

/// One vCPU and what it needs to run.
pub struct Vcpu {
    fd: VcpuFd,
    id: u32,
}

impl Vcpu {
    /// Creates vCPU `id` of `count` with CPUID (from `base`, KVM's supported CPUID), MSRs
    /// and LAPIC set up.
    pub fn new(base: &CpuId, vm: &VmFd, id: u32, count: u32) -> Result<Self, VcpuError> {
        let err = |what| move |e| VcpuError::Kvm(id, what, e);
        let fd = vm
            .create_vcpu(u64::from(id))
            .map_err(err("KVM_CREATE_VCPU"))?;
        fd.set_cpuid2(&vcpu_cpuid(base, id, count))
            .map_err(err("KVM_SET_CPUID2"))?;
        let msr = |index, data| kvm_msr_entry {
            index,
            data,
            ..Default::default()
        };
        let msrs = Msrs::from_entries(&[
            msr(MSR_IA32_SYSENTER_CS, 0),
            msr(MSR_IA32_SYSENTER_ESP, 0),
            msr(MSR_IA32_SYSENTER_EIP, 0),
            msr(MSR_STAR, 0),
            msr(MSR_CSTAR, 0),
            msr(MSR_KERNEL_GS_BASE, 0),
            msr(MSR_SYSCALL_MASK, 0),
            msr(MSR_LSTAR, 0),
            msr(MSR_IA32_TSC, 0),
            msr(MSR_IA32_MISC_ENABLE, MISC_ENABLE_FAST_STRING),
            msr(MSR_MTRR_DEF_TYPE, MTRR_ENABLE_WB),
        ])
        .map_err(|e| VcpuError::Fatal(id, format!("MSR list: {e:?}")))?;
        let set = fd.set_msrs(&msrs).map_err(err("KVM_SET_MSRS"))?;
        if set != msrs.as_slice().len() {
            return Err(VcpuError::Fatal(
                id,
                format!(
                    "KVM accepted only {set} of {} boot MSRs",
                    msrs.as_slice().len()
                ),
            ));
        }
        // LINT0 delivers the legacy PIC's ExtINT, LINT1 NMIs, as on a PC.
        let mut lapic = fd.get_lapic().map_err(err("KVM_GET_LAPIC"))?;
        for (reg, mode) in [(APIC_LVT0, APIC_MODE_EXTINT), (APIC_LVT1, APIC_MODE_NMI)] {
            let bytes: [u8; 4] = std::array::from_fn(|i| lapic.regs[reg + i] as u8);
            let v = (u32::from_le_bytes(bytes) & !0x700) | (mode << 8);
            for (i, b) in v.to_le_bytes().iter().enumerate() {
                lapic.regs[reg + i] = *b as _;
            }
        }
        fd.set_lapic(&lapic).map_err(err("KVM_SET_LAPIC"))?;
        fd.set_fpu(&kvm_fpu {
            fcw: 0x37f,
            mxcsr: 0x1f80,
            ..Default::default()
        })
        .map_err(err("KVM_SET_FPU"))?;
        Ok(Vcpu { fd, id })
    }

    /// Writes saved KVM state into this (never run) vCPU.
    pub fn restore(&self, state: &VcpuState) -> Result<(), PersistError> {
        // KVM on AMD reports the TR as busy (type 11) whatever the VMCB holds, as VMX wants
        // it; written back, a busy TR makes nested SVM emulation (QEMU's, under the test VM)
        // refuse every user-mode port access the guest's I/O bitmap allows, as if no guest
        // `ltr` had loaded it. The VMCB held the available type (9) before the save.
        if svm_vendor(&state.cpuid) && state.sregs.tr.type_ == TSS_BUSY_64 {
            let mut state = state.clone();
            state.sregs.tr.type_ = TSS_AVAILABLE_64;
            return persist::restore_vcpu(&self.fd, &state);
        }
        persist::restore_vcpu(&self.fd, state)
    }

    /// Puts the boot vCPU at the kernel's entry: in 64-bit mode with the zero page in RSI
    /// (bzImage), or in 32-bit protected mode, paging off, with the start info in EBX (PVH).
    pub fn set_boot_state(&self, kernel: &LoadedKernel) -> Result<(), VcpuError> {
        let err = |what| move |e| VcpuError::Kvm(self.id, what, e);
        let gdt = kernel.kind.gdt();
        let mut sregs = self.fd.get_sregs().map_err(err("KVM_GET_SREGS"))?;
        sregs.gdt.base = BOOT_GDT_START;
        sregs.gdt.limit = (std::mem::size_of_val(gdt) - 1) as u16;
        sregs.idt.base = BOOT_IDT_START;
        sregs.idt.limit = 7;
        sregs.cs = segment(gdt, 1);
        let data = segment(gdt, 2);
        (sregs.ds, sregs.es, sregs.fs, sregs.gs, sregs.ss) = (data, data, data, data, data);
        sregs.tr = segment(gdt, 3);
        let mut regs = kvm_regs {
            rflags: 0x2,
            rip: kernel.entry,
            ..Default::default()
        };
        match kernel.kind {
            KernelEntry::Linux64(_) => {
                sregs.cr0 |= 1 | (1 << 31); // PE, PG
                sregs.cr3 = PML4_START;
                sregs.cr4 |= 1 << 5; // PAE
                sregs.efer |= (1 << 8) | (1 << 10); // LME, LMA
                regs.rsp = BOOT_STACK_POINTER;
                regs.rbp = BOOT_STACK_POINTER;
                regs.rsi = ZERO_PAGE_START;
            }
            KernelEntry::Pvh => {
                sregs.cr0 = 1 | (1 << 4); // PE, ET: protected mode, caches on, no paging
                sregs.cr3 = 0;
                sregs.cr4 = 0;
                sregs.efer = 0;
                regs.rbx = ZERO_PAGE_START;
            }
        }
        self.fd.set_sregs(&sregs).map_err(err("KVM_SET_SREGS"))?;
        self.fd.set_regs(&regs).map_err(err("KVM_SET_REGS"))
    }

    /// Runs the vCPU until the guest stops or KVM fails, then reports why on `events`;
    /// parks it while `pause` says so.
    pub fn run(
        mut self,
        bus: Arc<PioBus>,
        mmio: Arc<MmioBus>,
        events: Sender<VcpuEvent>,
        pause: Arc<VcpuPause>,
    ) {
        KVM_RUN.with(|run| run.set(self.fd.get_kvm_run()));
        let event = loop {
            match self.fd.run() {
                Ok(VcpuExit::IoIn(port, data)) => bus.read(port, data),
                Ok(VcpuExit::IoOut(port, data)) => {
                    if let Some(stop) = bus.write(port, data) {
                        break VcpuEvent::Stop(stop);
                    }
                }
                Ok(VcpuExit::MmioRead(addr, data)) => mmio.read(addr, data),
                Ok(VcpuExit::MmioWrite(addr, data)) => mmio.write(addr, data),
                Ok(VcpuExit::Shutdown) => break VcpuEvent::Stop(GuestStop::Reset),
                Ok(VcpuExit::SystemEvent(kind, _)) => {
                    break VcpuEvent::Stop(match kind {
                        kvm_bindings::KVM_SYSTEM_EVENT_SHUTDOWN => GuestStop::PowerOff,
                        _ => GuestStop::Reset,
                    })
                }
                Ok(VcpuExit::Hlt) => break VcpuEvent::Stop(GuestStop::PowerOff),
                Ok(VcpuExit::FailEntry(reason, cpu)) => {
                    break VcpuEvent::Error(VcpuError::Fatal(
                        self.id,
                        format!("entry failed, reason {reason:#x} on host CPU {cpu}"),
                    ))
                }
                Ok(VcpuExit::InternalError) => {
                    break VcpuEvent::Error(VcpuError::Fatal(
                        self.id,
                        "internal error (emulation failure)".into(),
                    ))
                }
                Ok(other) => tracing::debug!("vCPU {}: ignoring exit {other:?}", self.id),
                Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
                    self.fd.set_kvm_immediate_exit(0);
                    pause.park_while_paused(&mut self.fd, self.id);
                }
                Err(e) => break VcpuEvent::Error(VcpuError::Kvm(self.id, "KVM_RUN", e)),
            }
        };
        KVM_RUN.with(|run| run.set(std::ptr::null_mut()));
        let _ = events.send(event);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pvh_segments_are_flat_32_bit() {
        let cs = segment(&crate::boot::PVH_GDT, 1);
        assert_eq!(
            (cs.base, cs.limit, cs.l, cs.db, cs.type_),
            (0, 0xffff_ffff, 0, 1, 0xb)
        );
        let ds = segment(&crate::boot::PVH_GDT, 2);
        assert_eq!((ds.db, ds.type_, ds.present), (1, 0x3, 1));
    }

    #[test]
    fn boot_segments_are_flat_64_bit() {
        let cs = segment(&crate::boot::BOOT_GDT, 1);
        assert_eq!(
            (
                cs.base,
                cs.limit,
                cs.selector,
                cs.l,
                cs.db,
                cs.present,
                cs.s
            ),
            (0, 0xffff_ffff, 8, 1, 0, 1, 1)
        );
        let ds = segment(&crate::boot::BOOT_GDT, 2);
        assert_eq!((ds.selector, ds.type_, ds.db, ds.l), (16, 3, 1, 0));
        assert_eq!(
            segment(&crate::boot::BOOT_GDT, 3).type_,
            0xb,
            "busy 64-bit TSS"
        );
    }

    #[test]
    fn svm_vendors_are_recognised_from_cpuid_leaf_0() {
        let leaf0 = |vendor: &[u8; 12]| kvm_bindings::kvm_cpuid_entry2 {
            function: 0,
            ebx: u32::from_le_bytes(vendor[0..4].try_into().unwrap()),
            edx: u32::from_le_bytes(vendor[4..8].try_into().unwrap()),
            ecx: u32::from_le_bytes(vendor[8..12].try_into().unwrap()),
            ..Default::default()
        };
        assert!(svm_vendor(&[leaf0(b"AuthenticAMD")]));
        assert!(svm_vendor(&[leaf0(b"HygonGenuine")]));
        assert!(!svm_vendor(&[leaf0(b"GenuineIntel")]));
        assert!(!svm_vendor(&[]));
    }
}

//! Saving and restoring KVM state on this host's real /dev/kvm: a tiny real-mode guest counts
//! and reports each count on an I/O port; its state moves to a fresh VM, which must carry on
//! with the next count, and state of another format version is refused.

use std::path::Path;

use kvm_bindings::kvm_userspace_memory_region;
use kvm_ioctls::{Cap, Kvm, VcpuExit, VcpuFd, VmFd};
use sm_vmm::persist::{
    finish_pending_exit, restore_vcpu, restore_vm, save_vcpu, save_vm, ClockRestore, KvmSnapshot,
    PersistError, VcpuSaveContext, SNAPSHOT_FORMAT_VERSION,
};

/// Guest memory size: 64 KiB, all real mode needs here.
const MEM_SIZE: usize = 0x10000;
/// Where the guest code sits (CS = 0).
const CODE_ADDR: usize = 0x1000;
/// Where the guest stores its counter after each increment.
const COUNTER_ADDR: usize = 0x2000;
/// The port the guest reports the counter on.
const PORT: u16 = 0x10;
/// `inc ax; add bx, ax; mov [0x2000], ax; out 0x10, ax; jmp back to inc`, 16-bit code.
const GUEST_CODE: [u8; 10] = [0x40, 0x01, 0xc3, 0xa3, 0x00, 0x20, 0xe7, 0x10, 0xeb, 0xf6];

/// One VM with one vCPU and its guest memory, as sm-vmm sets them up (irqchip, PIT).
struct Guest {
    mem: *mut u8,
    vm: VmFd,
    vcpu: VcpuFd,
}

impl Guest {
    /// A VM whose memory starts as a copy of `contents`.
    fn new(kvm: &Kvm, contents: &[u8]) -> Guest {
        // SAFETY: a fresh anonymous mapping; no existing memory is affected.
        let mem = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                MEM_SIZE,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        assert_ne!(mem, libc::MAP_FAILED, "mmap guest memory");
        let mem = mem.cast::<u8>();
        // SAFETY: `contents` fits (asserted) in the MEM_SIZE bytes just mapped.
        unsafe {
            assert!(contents.len() <= MEM_SIZE);
            std::ptr::copy_nonoverlapping(contents.as_ptr(), mem, contents.len());
        }
        let vm = kvm.create_vm().expect("KVM_CREATE_VM");
        let region = kvm_userspace_memory_region {
            slot: 0,
            flags: 0,
            guest_phys_addr: 0,
            memory_size: MEM_SIZE as u64,
            userspace_addr: mem as u64,
        };
        // SAFETY: the mapping lives until `Drop`, after the VM fd is gone with `self`.
        unsafe { vm.set_user_memory_region(region) }.expect("KVM_SET_USER_MEMORY_REGION");
        vm.create_irq_chip().expect("KVM_CREATE_IRQCHIP");
        vm.create_pit2(kvm_bindings::kvm_pit_config::default())
            .expect("KVM_CREATE_PIT2");
        let vcpu = vm.create_vcpu(0).expect("KVM_CREATE_VCPU");
        let cpuid = kvm
            .get_supported_cpuid(kvm_bindings::KVM_MAX_CPUID_ENTRIES)
            .expect("KVM_GET_SUPPORTED_CPUID");
        vcpu.set_cpuid2(&cpuid).expect("KVM_SET_CPUID2");
        Guest { mem, vm, vcpu }
    }

    /// The guest memory as it is now.
    fn memory(&self) -> Vec<u8> {
        // SAFETY: `mem` is MEM_SIZE mapped bytes, alive as long as `self`.
        unsafe { std::slice::from_raw_parts(self.mem, MEM_SIZE) }.to_vec()
    }

    /// Runs until the next write to PORT and returns the 16-bit value written.
    fn next_count(&mut self) -> u16 {
        match self.vcpu.run().expect("KVM_RUN") {
            VcpuExit::IoOut(port, data) => {
                assert_eq!(port, PORT, "guest wrote to an unexpected port");
                u16::from_le_bytes([data[0], data[1]])
            }
            other => panic!("unexpected vCPU exit {other:?}"),
        }
    }

    /// The counter the guest last stored in its memory.
    fn stored_counter(&self) -> u16 {
        let mem = self.memory();
        u16::from_le_bytes([mem[COUNTER_ADDR], mem[COUNTER_ADDR + 1]])
    }
}

impl Drop for Guest {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping made in `new`; the VM is torn down with its fds
        // (dropped right after this), and KVM holds its own references to the pages.
        unsafe { libc::munmap(self.mem.cast(), MEM_SIZE) };
    }
}

/// A booted counting guest, after `exits` port writes.
fn counting_guest(kvm: &Kvm, exits: u16) -> Guest {
    let mut guest = real_mode_guest(kvm, &GUEST_CODE);
    for n in 1..=exits {
        assert_eq!(guest.next_count(), n, "guest counts from 1");
    }
    guest
}

/// A guest about to run the 16-bit `code` at CODE_ADDR.
fn real_mode_guest(kvm: &Kvm, code: &[u8]) -> Guest {
    let mut image = vec![0u8; MEM_SIZE];
    image[CODE_ADDR..CODE_ADDR + code.len()].copy_from_slice(code);
    let guest = Guest::new(kvm, &image);
    let mut sregs = guest.vcpu.get_sregs().unwrap();
    sregs.cs.base = 0;
    sregs.cs.selector = 0;
    guest.vcpu.set_sregs(&sregs).unwrap();
    let mut regs = guest.vcpu.get_regs().unwrap();
    regs.rip = CODE_ADDR as u64;
    regs.rflags = 2;
    regs.rax = 0;
    regs.rbx = 0;
    guest.vcpu.set_regs(&regs).unwrap();
    guest
}

/// `x` as JSON, to compare KVM structures that have no `PartialEq`.
fn json<T: serde::Serialize>(x: &T) -> serde_json::Value {
    serde_json::to_value(x).unwrap()
}

/// `Some(kvm)` when this host has a usable /dev/kvm, else a loud skip.
fn kvm_or_skip() -> Option<Kvm> {
    if !sm_test_support::require(Path::new("/dev/kvm").exists(), "/dev/kvm") {
        return None;
    }
    Some(Kvm::new().expect("open /dev/kvm"))
}

/// Prints which optional KVM features this host's KVM has, so a run on PVM says what it lacks.
fn report_caps(kvm: &Kvm) {
    for (cap, name) in [
        (Cap::Xsave2, "KVM_CAP_XSAVE2"),
        (Cap::KvmclockCtrl, "KVM_CAP_KVMCLOCK_CTRL"),
        (Cap::GetTscKhz, "KVM_CAP_GET_TSC_KHZ"),
        (
            Cap::TscControl,
            "KVM_CAP_TSC_CONTROL (TSC scaling on restore)",
        ),
    ] {
        let v = kvm.check_extension_int(cap);
        eprintln!("{name}: {}", if v > 0 { "yes" } else { "NO" });
    }
}

#[test]
fn restored_guest_continues_with_the_next_count() {
    let Some(kvm) = kvm_or_skip() else { return };
    report_caps(&kvm);
    let mut source = counting_guest(&kvm, 5);

    // Save, as a paused VMM would: finish the exit in flight, then VM and vCPU state.
    finish_pending_exit(&mut source.vcpu).expect("finish the port write in flight");
    let ctx = VcpuSaveContext::new(&kvm, &source.vm).expect("ask KVM what to save");
    assert!(
        ctx.msrs.contains(&0x10),
        "IA32_TSC is among the MSRs saved: {:x?}",
        ctx.msrs
    );
    if let Some(pos) = ctx.msrs.iter().position(|&i| i == 0x6e0) {
        assert_eq!(
            pos,
            ctx.msrs.len() - 1,
            "IA32_TSC_DEADLINE is restored last"
        );
    }
    let vcpu_state = save_vcpu(&source.vcpu, &ctx).expect("save vCPU state");
    let vm_state = save_vm(&source.vm).expect("save VM state");
    assert_eq!(vcpu_state.regs.rax, 5, "saved RAX holds the last count");
    let bytes = KvmSnapshot::new(vm_state.clone(), vec![vcpu_state.clone()]).to_bytes();
    let memory = source.memory();

    // A fresh VM with the same memory and the state read back from bytes.
    let snapshot = KvmSnapshot::from_bytes(&bytes).expect("read KVM state back");
    let mut clone = Guest::new(&kvm, &memory);
    restore_vm(&clone.vm, &snapshot.vm, ClockRestore::Paused).expect("restore VM state");
    restore_vcpu(&clone.vcpu, &snapshot.vcpus[0]).expect("restore vCPU state");

    // Everything the vCPU holds reads back as saved (the TSC and kvmclock move on by design).
    let reread = save_vcpu(&clone.vcpu, &ctx).expect("save the restored vCPU");
    assert_eq!(reread.regs, vcpu_state.regs, "REGS");
    assert_eq!(reread.sregs, vcpu_state.sregs, "SREGS");
    assert_eq!(reread.xsave, vcpu_state.xsave, "XSAVE");
    assert_eq!(reread.xcrs.xcrs, vcpu_state.xcrs.xcrs, "XCRS");
    assert_eq!(reread.debugregs, vcpu_state.debugregs, "DEBUGREGS");
    assert_eq!(reread.mp_state, vcpu_state.mp_state, "MP_STATE");
    assert_eq!(reread.lapic.regs, vcpu_state.lapic.regs, "LAPIC");
    assert_eq!(reread.cpuid.len(), vcpu_state.cpuid.len(), "CPUID entries");
    for (got, saved) in reread.msrs.iter().zip(&vcpu_state.msrs) {
        assert_eq!(got.index, saved.index, "MSR order");
        if got.index != 0x10 {
            assert_eq!(got.data, saved.data, "MSR {:#x}", got.index);
        }
    }
    let vm_reread = save_vm(&clone.vm).expect("save the restored VM");
    assert_eq!(
        json(&vm_reread.pic_master),
        json(&vm_state.pic_master),
        "PIC master"
    );
    assert_eq!(
        json(&vm_reread.pic_slave),
        json(&vm_state.pic_slave),
        "PIC slave"
    );
    assert_eq!(json(&vm_reread.ioapic), json(&vm_state.ioapic), "IOAPIC");

    // The clone carries on exactly where the source was; so does the source.
    for n in 6..=10 {
        assert_eq!(clone.next_count(), n, "restored guest's next count");
        assert_eq!(clone.stored_counter(), n, "restored guest's memory");
    }
    let regs = clone.vcpu.get_regs().unwrap();
    assert_eq!(regs.rbx, (1..=10).sum::<u64>(), "running sum in BX");
    assert_eq!(source.next_count(), 6, "source guest's next count");
}

#[test]
fn state_of_another_format_version_is_refused() {
    let Some(kvm) = kvm_or_skip() else { return };
    let mut source = counting_guest(&kvm, 1);
    finish_pending_exit(&mut source.vcpu).unwrap();
    let ctx = VcpuSaveContext::new(&kvm, &source.vm).unwrap();
    let snapshot = KvmSnapshot::new(
        save_vm(&source.vm).unwrap(),
        vec![save_vcpu(&source.vcpu, &ctx).unwrap()],
    );
    let mut value: serde_json::Value = serde_json::from_slice(&snapshot.to_bytes()).unwrap();
    value["version"] = (SNAPSHOT_FORMAT_VERSION + 1).into();
    let err = KvmSnapshot::from_bytes(&serde_json::to_vec(&value).unwrap()).unwrap_err();
    assert!(matches!(err, PersistError::Version { .. }), "{err:?}");
    let message = err.to_string();
    assert_eq!(
        message,
        format!(
            "KVM state has format version {}, this sm-vmm reads only version {SNAPSHOT_FORMAT_VERSION}",
            SNAPSHOT_FORMAT_VERSION + 1
        )
    );
    assert!(!message.contains('\n'), "one line: {message}");

    let err = KvmSnapshot::from_bytes(b"{\"vm\": 1").unwrap_err();
    assert!(matches!(err, PersistError::Decode(_)), "{err:?}");
}

#[test]
fn restore_scales_a_different_tsc_or_says_it_cannot() {
    let Some(kvm) = kvm_or_skip() else { return };
    let mut source = counting_guest(&kvm, 3);
    finish_pending_exit(&mut source.vcpu).unwrap();
    let ctx = VcpuSaveContext::new(&kvm, &source.vm).unwrap();
    let mut state = save_vcpu(&source.vcpu, &ctx).unwrap();
    let Some(host_khz) = state.tsc_khz else {
        sm_test_support::skip_or_fail("KVM_GET_TSC_KHZ (this KVM cannot report the TSC rate)");
        return;
    };
    // As if saved on a host whose TSC runs 10% slower: KVM without TSC scaling can only emulate
    // a faster TSC (by catching up), never a slower one.
    let saved_khz = host_khz - host_khz / 10;
    state.tsc_khz = Some(saved_khz);
    let clone = Guest::new(&kvm, &source.memory());
    let result = restore_vcpu(&clone.vcpu, &state);
    if kvm.check_extension(Cap::TscControl) {
        result.expect("KVM with TSC scaling restores a slower TSC");
        assert_eq!(
            clone.vcpu.get_tsc_khz().unwrap(),
            saved_khz,
            "guest TSC rate"
        );
    } else {
        // PVM has no KVM_CAP_TSC_CONTROL: the restore must refuse, not run the guest's clock
        // at the wrong pace.
        eprintln!("this KVM lacks KVM_CAP_TSC_CONTROL: checking the refusal instead");
        let err = result.expect_err("a TSC rate this KVM cannot scale to is refused");
        assert!(matches!(err, PersistError::TscScaling { .. }), "{err:?}");
        let message = err.to_string();
        assert!(message.contains(&format!("{saved_khz} kHz")), "{message}");
        assert!(!message.contains('\n'), "one line: {message}");
    }
}

#[test]
fn realtime_restore_advances_the_guest_clock_by_the_time_since_the_save() {
    let Some(kvm) = kvm_or_skip() else { return };
    let source = counting_guest(&kvm, 1);
    let state = save_vm(&source.vm).unwrap();
    if state.clock.flags & kvm_bindings::KVM_CLOCK_REALTIME == 0 {
        sm_test_support::skip_or_fail("KVM_CLOCK_REALTIME in KVM_GET_CLOCK (kernel before 5.16)");
        return;
    }
    let gap = std::time::Duration::from_millis(300);
    std::thread::sleep(gap);

    let paused = Guest::new(&kvm, &source.memory());
    restore_vm(&paused.vm, &state, ClockRestore::Paused).unwrap();
    let paused_ns = paused.vm.get_clock().unwrap().clock - state.clock.clock;
    let realtime = Guest::new(&kvm, &source.memory());
    restore_vm(&realtime.vm, &state, ClockRestore::Realtime).unwrap();
    let realtime_ns = realtime.vm.get_clock().unwrap().clock - state.clock.clock;

    let gap_ns = gap.as_nanos() as u64;
    assert!(paused_ns < gap_ns / 2, "paused clock moved {paused_ns} ns");
    assert!(
        realtime_ns >= gap_ns,
        "realtime clock moved only {realtime_ns} ns over a {gap_ns} ns gap"
    );

    let mut no_realtime = state.clone();
    no_realtime.clock.flags &= !kvm_bindings::KVM_CLOCK_REALTIME;
    let err = restore_vm(&realtime.vm, &no_realtime, ClockRestore::Realtime).unwrap_err();
    assert!(matches!(err, PersistError::NoRealtimeClock), "{err:?}");
}

#[test]
fn a_port_read_answered_before_the_save_reaches_the_restored_guest() {
    let Some(kvm) = kvm_or_skip() else { return };
    // `in ax, 0x11; out 0x10, ax; hlt`
    let mut source = real_mode_guest(&kvm, &[0xe5, 0x11, 0xe7, 0x10, 0xf4]);
    match source.vcpu.run().expect("KVM_RUN") {
        VcpuExit::IoIn(0x11, data) => data.copy_from_slice(&0xbeef_u16.to_le_bytes()),
        other => panic!("unexpected vCPU exit {other:?}"),
    }
    // KVM puts the answer into AX only when it completes the IN, on the next KVM_RUN.
    finish_pending_exit(&mut source.vcpu).expect("finish the port read");
    let ctx = VcpuSaveContext::new(&kvm, &source.vm).unwrap();
    let state = save_vcpu(&source.vcpu, &ctx).unwrap();
    assert_eq!(
        state.regs.rax & 0xffff,
        0xbeef,
        "AX holds the answer when saved"
    );

    let mut clone = Guest::new(&kvm, &source.memory());
    restore_vm(
        &clone.vm,
        &save_vm(&source.vm).unwrap(),
        ClockRestore::Paused,
    )
    .unwrap();
    restore_vcpu(&clone.vcpu, &state).unwrap();
    assert_eq!(
        clone.next_count(),
        0xbeef,
        "the restored guest writes what it read"
    );
}

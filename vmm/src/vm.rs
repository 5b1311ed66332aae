//! Building and running a VM: KVM VM with in-kernel irqchip and PIT, memfd guest RAM, the
//! guest loaded per the boot protocol, one thread per vCPU, the console, and the signals
//! that stop it.

use std::fs::File;
use std::os::fd::{AsFd, AsRawFd};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::Arc;

use kvm_bindings::{
    kvm_pit_config, kvm_userspace_memory_region, CpuId, KVM_CLOCK_REALTIME, KVM_MAX_CPUID_ENTRIES,
    KVM_PIT_SPEAKER_DUMMY,
};
use kvm_ioctls::{IoEventAddress, VmFd};
use nix::sys::signal::{SigSet, Signal};
use vm_memory::{Bytes, GuestMemory, GuestMemoryRegion};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::acpi::{self, AcpiError};
use crate::api::{Answer, ApiCall, ApiError, ApiSocket, DeviceStatus, Request, VmState, VmStatus};
use crate::boot::{self, BootError};
use crate::config::VmConfig;
use crate::console::{self, RawTerminal};
use crate::devices::serial::SerialPort;
use crate::devices::virtio_mmio::{MmioTransport, QUEUE_NOTIFY_OFFSET};
use crate::devices::vmgenid::{self, VmGenIdError};
use crate::devices::{GuestStop, MmioBus, PioBus};
use crate::initcfg::{InitConfig, InitConfigError};
use crate::kvm::{self, KvmError};
use crate::layout::*;
use crate::memory::{ram_end, GuestRam, MemoryError};
use crate::notify;
use crate::persist::devices::{BackendRecord, DeviceStateError, DeviceStates, VringBase};
use crate::persist::{self, ClockRestore, KvmSnapshot, PersistError, VcpuSaveContext};
use crate::snapshot::{self, BootHashes, IncludeFile, LoadedSnapshot, SnapshotError, VmShape};
use crate::vcpu::{self, Vcpu, VcpuError, VcpuEvent, VcpuPause};
use crate::vhost_user::{DeviceConfig, DeviceKind, VhostUserDevice, VhostUserError, SHMEM_ALIGN};
use sm_snapshot::SnapshotWriter;

/// Where the identity-map page and TSS go (Intel needs them below 4 GiB, outside RAM).
const TSS_ADDRESS: usize = 0xfffb_d000;

/// Errors building or running the VM.
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    /// KVM unavailable or unsuitable.
    #[error(transparent)]
    Kvm(#[from] KvmError),
    /// Guest RAM.
    #[error(transparent)]
    Memory(#[from] MemoryError),
    /// Loading the guest.
    #[error(transparent)]
    Boot(#[from] BootError),
    /// ACPI tables.
    #[error(transparent)]
    Acpi(#[from] AcpiError),
    /// The command cannot be passed to the guest.
    #[error(transparent)]
    InitConfig(#[from] InitConfigError),
    /// A vhost-user backend.
    #[error(transparent)]
    VhostUser(#[from] VhostUserError),
    /// A vCPU failed.
    #[error(transparent)]
    Vcpu(#[from] VcpuError),
    /// Restoring saved KVM state failed.
    #[error("restoring KVM state: {0}")]
    Restore(#[from] PersistError),
    /// Restoring saved device state failed.
    #[error("restoring device state: {0}")]
    RestoreDevices(#[from] DeviceStateError),
    /// A restored device's backend refused its state or rings.
    #[error("restoring a device: {0}")]
    RestoreDevice(String),
    /// This host cannot run the snapshot's guest.
    #[error(transparent)]
    HostMismatch(#[from] persist::compat::CpuMismatch),
    /// The snapshot does not fit the restoring VM (its devices).
    #[error(transparent)]
    Snapshot(#[from] SnapshotError),
    /// A VM-level KVM ioctl failed.
    #[error("{0} failed: {1}")]
    VmIoctl(&'static str, kvm_ioctls::Error),
    /// Setting or announcing the VM generation ID.
    #[error(transparent)]
    VmGenId(#[from] VmGenIdError),
    /// A device's shared memory does not fit below the guest's physical address limit.
    #[error("the shared memory of the backend at {socket} ends at {end:#x}, beyond the guest's {bits}-bit physical address space (use a smaller window)")]
    AddressSpace {
        /// Backend socket.
        socket: String,
        /// First address past the regions.
        end: u64,
        /// Physical address bits the vCPUs report.
        bits: u32,
    },
    /// A backend hung up and did not come back as the same device.
    #[error("{0}")]
    BackendLost(String),
    /// Host resources (fds, threads) ran out.
    #[error("{0}: {1}")]
    Host(&'static str, std::io::Error),
    /// The vsock backend serves a CID the guest cannot use or that `--cid` did not ask for.
    #[error("vsock backend at {socket} serves guest CID {served}, not {wanted} (guest CIDs are 3 to 4294967294; start the backend with the CID you pass to --cid)")]
    VsockCid {
        /// Backend socket.
        socket: String,
        /// CID in the backend's config space.
        served: u64,
        /// CID asked for.
        wanted: u64,
    },
}

/// How a VM run ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VmOutcome {
    /// The guest powered off or reset; `status` is what sm-init reported, if anything.
    Stopped {
        /// Poweroff or reset.
        stop: GuestStop,
        /// The command's exit status.
        status: Option<u8>,
    },
    /// A signal asked sm-vmm to stop.
    Signalled(i32),
    /// The user left the console with `Ctrl-A x`.
    Quit,
}

enum Event {
    Vcpu(VcpuEvent),
    /// A backend hung up and could not be brought back: the line that says why.
    BackendLost(String),
    Signal(i32),
    Quit,
    Api(ApiCall),
}

fn create_vm(kvm: &kvm_ioctls::Kvm, ram: &GuestRam) -> Result<VmFd, VmError> {
    let vm = kvm
        .create_vm()
        .map_err(|e| VmError::VmIoctl("KVM_CREATE_VM", e))?;
    vm.set_tss_address(TSS_ADDRESS)
        .map_err(|e| VmError::VmIoctl("KVM_SET_TSS_ADDR", e))?;
    vm.create_irq_chip()
        .map_err(|e| VmError::VmIoctl("KVM_CREATE_IRQCHIP", e))?;
    let pit = kvm_pit_config {
        flags: KVM_PIT_SPEAKER_DUMMY,
        ..Default::default()
    };
    vm.create_pit2(pit)
        .map_err(|e| VmError::VmIoctl("KVM_CREATE_PIT2", e))?;
    for (slot, region) in ram.memory.iter().enumerate() {
        // SAFETY: the region is a live mapping owned by `ram`, which outlives the VM (run()
        // keeps it until the process exits), and regions never overlap.
        unsafe {
            add_memory_slot(
                &vm,
                slot as u32,
                region.start_addr().0,
                region.len(),
                region.as_ptr() as u64,
            )
        }?;
    }
    Ok(vm)
}

/// Maps `size` bytes of this process at `host_addr` into the guest at `guest_addr`, as
/// memory slot `slot`.
///
/// # Safety
/// The host range must stay mapped for as long as the VM runs and must not overlap another
/// slot's guest range.
unsafe fn add_memory_slot(
    vm: &VmFd,
    slot: u32,
    guest_addr: u64,
    size: u64,
    host_addr: u64,
) -> Result<(), VmError> {
    let region_desc = kvm_userspace_memory_region {
        slot,
        guest_phys_addr: guest_addr,
        memory_size: size,
        userspace_addr: host_addr,
        flags: 0,
    };
    // SAFETY: the caller keeps the host range mapped for the VM's life and the guest
    // ranges apart.
    unsafe { vm.set_user_memory_region(region_desc) }
        .map_err(|e| VmError::VmIoctl("KVM_SET_USER_MEMORY_REGION", e))
}

fn serial(vm: &VmFd, gsi: u32, out: std::os::fd::BorrowedFd<'_>) -> Result<SerialPort, VmError> {
    let irq = EventFd::new(EFD_NONBLOCK).map_err(|e| VmError::Host("eventfd", e))?;
    vm.register_irqfd(&irq, gsi)
        .map_err(|e| VmError::VmIoctl("KVM_IRQFD", e))?;
    let out = out
        .try_clone_to_owned()
        .map_err(|e| VmError::Host("dup", e))?;
    Ok(SerialPort::new(irq, out))
}

/// The port I/O bus with the two UARTs: COM1 writes to sm-vmm's stdout, COM2 to its stderr.
fn console_bus(vm: &VmFd) -> Result<Arc<PioBus>, VmError> {
    let com1 = serial(vm, COM1_GSI, std::io::stdout().as_fd())?;
    let com2 = serial(vm, COM2_GSI, std::io::stderr().as_fd())?;
    Ok(Arc::new(PioBus::new(com1, com2)))
}

/// What this host's KVM supports, the base of every vCPU's CPUID (fetched once per VM).
fn supported_cpuid(kvm: &kvm_ioctls::Kvm) -> Result<CpuId, VmError> {
    kvm.get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
        .map_err(|e| VmError::VmIoctl("KVM_GET_SUPPORTED_CPUID", e))
}

/// Creates the VM's `count` vCPUs.
fn create_vcpus(cpuid: &CpuId, vm: &VmFd, count: u32) -> Result<Vec<Vcpu>, VmError> {
    Ok((0..count)
        .map(|id| Vcpu::new(cpuid, vm, id, count))
        .collect::<Result<Vec<_>, _>>()?)
}

/// Connects every vhost-user backend and puts its virtio-mmio window on the bus, with
/// its queue kicks as ioeventfds and its interrupt as an irqfd.
fn attach_devices(
    vm: &VmFd,
    ram: &GuestRam,
    config: &VmConfig,
    phys_bits: u32,
) -> Result<(MmioBus, Vec<acpi::VirtioMmioSlot>), VmError> {
    let mut bus = MmioBus::default();
    let mut slots = Vec::new();
    // Shared memory regions go above RAM (and above the 32-bit MMIO gap).
    let mut shmem_next = ram_end(ram.size)
        .max(MMIO_GAP_END)
        .next_multiple_of(SHMEM_ALIGN);
    let mut memory_slot = ram.memory.num_regions() as u32;
    let blk = config
        .blk_sockets
        .iter()
        .map(|s| (s, DeviceKind::BLOCK, DeviceConfig::FromBackend));
    let fs = config
        .fs_sockets
        .iter()
        .map(|(tag, s)| (s, DeviceKind::FS, DeviceConfig::FsTag(tag.clone())));
    let replay = |source: &DeviceConfig| matches!(source, DeviceConfig::FsTag(tag) if config.fs_replay.contains(tag));
    let vsock = config
        .vsock_socket
        .iter()
        .map(|s| (s, DeviceKind::VSOCK, DeviceConfig::FromBackend));
    // The network device comes last so that snapshots taken without one keep their order.
    let net = config
        .net_socket
        .iter()
        .map(|s| (s, DeviceKind::NET, DeviceConfig::NetMac(config.mac)));
    for (i, (socket, kind, source)) in blk.chain(fs).chain(vsock).chain(net).enumerate() {
        let base = VIRTIO_MMIO_START + i as u64 * VIRTIO_MMIO_SIZE;
        let gsi = VIRTIO_GSI_START + i as u32;
        let mut device = VhostUserDevice::connect(
            socket,
            kind,
            &source,
            ram.memory.clone(),
            ram.memfd.as_raw_fd(),
        )?;
        if replay(&source) {
            device.replay_after_hangup();
        }
        let span = device.shared_memory_span();
        let end = shmem_next.saturating_add(span);
        if span > 0 && end > 1u64 << phys_bits {
            return Err(VmError::AddressSpace {
                socket: device.socket().display().to_string(),
                end,
                bits: phys_bits,
            });
        }
        for region in device.attach_shared_memory(shmem_next)? {
            // SAFETY: the region's reservation lives as long as its device, which the MMIO
            // bus holds for the life of the VM (run() never drops it); regions are placed
            // above RAM and after one another, so slots never overlap.
            unsafe {
                add_memory_slot(
                    vm,
                    memory_slot,
                    region.guest_addr(),
                    region.len(),
                    region.host_addr(),
                )
            }?;
            memory_slot += 1;
        }
        device.finish_setup()?;
        shmem_next += span;
        if kind == DeviceKind::VSOCK {
            check_cid(&device, config.cid)?;
        }
        vm.register_irqfd(device.irq_eventfd(), gsi)
            .map_err(|e| VmError::VmIoctl("KVM_IRQFD", e))?;
        for (q, kick) in device.kick_eventfds().iter().enumerate() {
            vm.register_ioevent(
                kick,
                &IoEventAddress::Mmio(base + QUEUE_NOTIFY_OFFSET),
                q as u32,
            )
            .map_err(|e| VmError::VmIoctl("KVM_IOEVENTFD", e))?;
        }
        bus.add(base, MmioTransport::new(Box::new(device)));
        slots.push(acpi::VirtioMmioSlot {
            base,
            size: VIRTIO_MMIO_SIZE,
            gsi,
        });
    }
    Ok((bus, slots))
}

/// Physical address bits the vCPUs will report (CPUID 0x80000008 of `cpuid`), 36 if it
/// does not say.
fn guest_phys_bits(cpuid: &CpuId) -> u32 {
    cpuid
        .as_slice()
        .iter()
        .find(|e| e.function == 0x8000_0008)
        .map(|e| e.eax & 0xff)
        .filter(|bits| (32..=52).contains(bits))
        .unwrap_or(36)
}

/// Refuses a vsock backend serving another CID than `--cid` asks for (the guest would
/// take the backend's CID and connections to the asked one would go nowhere).
fn check_cid(device: &VhostUserDevice, wanted: Option<u64>) -> Result<(), VmError> {
    let space = device.config_space();
    let served = space
        .get(..8)
        .map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")))
        .unwrap_or(0);
    match wanted {
        Some(cid) if cid != served => Err(VmError::VsockCid {
            socket: device.socket().display().to_string(),
            served,
            wanted: cid,
        }),
        _ if served < 3 || served >= u64::from(u32::MAX) => Err(VmError::VsockCid {
            socket: device.socket().display().to_string(),
            served,
            wanted: wanted.unwrap_or(served),
        }),
        _ => Ok(()),
    }
}

/// A built VM whose vCPUs have not run yet (booted or restored).
struct Machine {
    kvm: kvm_ioctls::Kvm,
    ram: GuestRam,
    vm: VmFd,
    mmio: Arc<MmioBus>,
    bus: Arc<PioBus>,
    vcpus: Vec<Vcpu>,
    shape: VmShape,
    /// Where the kernel and initramfs hashes for a snapshot's manifest come from.
    boot: BootSource,
}

/// The kernel and initramfs a VM booted: files hashed when a snapshot is taken (so a boot
/// pays nothing for them), or the hashes a restored VM's snapshot recorded.
enum BootSource {
    Files { kernel: PathBuf, initramfs: PathBuf },
    Recorded(BootHashes),
}

impl BootSource {
    fn hashes(&self) -> BootHashes {
        match self {
            BootSource::Files { kernel, initramfs } => BootHashes::of_files(kernel, initramfs),
            BootSource::Recorded(hashes) => hashes.clone(),
        }
    }
}

/// Blocks the stop signals (SIGINT, SIGTERM, SIGHUP) in this thread and every thread it
/// spawns; [`run_machine`] waits for them on one thread.
fn block_stop_signals() -> Result<SigSet, VmError> {
    let mut stop_signals = SigSet::empty();
    for s in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP] {
        stop_signals.add(s);
    }
    stop_signals
        .thread_block()
        .map_err(|e| VmError::Host("sigprocmask", e.into()))?;
    Ok(stop_signals)
}

/// Boots the VM described by `config` and runs it until the guest stops, a vCPU fails, a
/// signal (SIGINT, SIGTERM, SIGHUP) arrives, the user quits the console, or the control API
/// (served on `api`, whose file is removed on return) shuts it down.
pub fn run(config: &VmConfig, api: Option<ApiSocket>) -> Result<VmOutcome, VmError> {
    let started = std::time::Instant::now();
    let init = InitConfig {
        argv: config.command.clone(),
        env: config.env.clone(),
    }
    .to_cpio()?;
    let stop_signals = block_stop_signals()?;

    let kvm = kvm::open(config.vcpus)?;
    let ram = GuestRam::new(config.mem_mib)?;
    let vm = create_vm(&kvm, &ram)?;

    let kernel = boot::load_kernel(&ram.memory, &config.kernel)?;
    let initrd = boot::load_initrd(&ram.memory, ram.size, &kernel, &config.initrd, &init)?;
    tracing::debug!(
        "boot: kernel and initramfs loaded at {:?}",
        started.elapsed()
    );
    let cmdline = boot::kernel_cmdline(config.verbose, config.cmdline_append.as_deref())?;
    boot::write_boot_params(&ram.memory, ram.size, &kernel, &cmdline, initrd)?;
    // Fetched once: it shapes every vCPU's CPUID and where shared memory may go.
    let cpuid = supported_cpuid(&kvm)?;
    let (mmio, slots) = attach_devices(&vm, &ram, config, guest_phys_bits(&cpuid))?;
    kvm::refuse_pvm_only()?;
    let mmio = Arc::new(mmio);
    boot::write_acpi(&ram.memory, &acpi::build_tables(config.vcpus, &slots)?)?;
    vmgenid::regenerate(&ram.memory)?;
    boot::write_boot_structures(&ram.memory, kernel.kind)?;

    let bus = console_bus(&vm)?;
    let vcpus = create_vcpus(&cpuid, &vm, config.vcpus)?;
    vcpus[0].set_boot_state(&kernel)?;

    let machine = Machine {
        kvm,
        ram,
        vm,
        mmio,
        bus,
        vcpus,
        shape: VmShape::new(
            config.vcpus,
            config.mem_mib,
            config.command.is_none(),
            snapshot::device_shapes(config),
        ),
        boot: BootSource::Files {
            kernel: config.kernel.clone(),
            initramfs: config.initrd.clone(),
        },
    };
    run_machine(machine, stop_signals, api, started)
}

/// Rebuilds the VM of a loaded snapshot (same vCPUs and RAM, no kernel load) with the
/// vhost-user backends of `devices` (the snapshotted VM's devices, in order, each a fresh
/// backend), in this order: vCPUs created, VM state, device registers, each backend handed
/// its state and rings, then each vCPU's state; then runs it as [`run`] does, the guest
/// continuing where it was.
pub fn restore(
    snapshot: LoadedSnapshot,
    devices: &VmConfig,
    api: Option<ApiSocket>,
) -> Result<VmOutcome, VmError> {
    let started = std::time::Instant::now();
    let stop_signals = block_stop_signals()?;
    let LoadedSnapshot {
        shape,
        kvm: state,
        devices: device_states,
        memory,
        handovers,
        boot,
    } = snapshot;
    snapshot::check_devices(&shape.devices, &snapshot::device_shapes(devices))?;
    let kvm = kvm::open(shape.vcpus)?;
    let ram = GuestRam::from_memfd(memory, shape.mem_mib)?;
    let vm = create_vm(&kvm, &ram)?;
    let cpuid = supported_cpuid(&kvm)?;
    if let Some(first) = state.vcpus.first() {
        persist::compat::check_cpuid(&first.cpuid, &cpuid)?;
    }
    tracing::debug!("restore: VM created at {:?}", started.elapsed());
    let (mmio, _slots) = attach_devices(&vm, &ram, devices, guest_phys_bits(&cpuid))?;
    kvm::refuse_pvm_only()?;
    let mmio = Arc::new(mmio);
    tracing::debug!("restore: backends connected at {:?}", started.elapsed());
    let bus = console_bus(&vm)?;
    // Firecracker's order: vCPUs exist before the VM state (the irqchips) is set.
    let vcpus = create_vcpus(&cpuid, &vm, shape.vcpus)?;
    // The guest clock is right after a restore where KVM can say what time it was saved at.
    let clock = if state.vm.clock.flags & KVM_CLOCK_REALTIME != 0 {
        ClockRestore::Realtime
    } else {
        ClockRestore::Paused
    };
    persist::restore_vm(&vm, &state.vm, clock)?;
    device_states.restore(&bus, &mmio)?;
    tracing::debug!(
        "restore: VM and device state set at {:?}",
        started.elapsed()
    );
    for ((_, t), handover) in mmio.devices.iter().zip(&handovers) {
        t.lock()
            .unwrap()
            .restore_backend(handover.as_ref())
            .map_err(VmError::RestoreDevice)?;
    }
    tracing::debug!("restore: backends loaded at {:?}", started.elapsed());
    for (vcpu, saved) in vcpus.iter().zip(&state.vcpus) {
        vcpu.restore(saved)?;
    }
    tracing::debug!("restore: vCPUs set at {:?}", started.elapsed());
    // Only now: an interrupt raised before the local APICs were set would be overwritten.
    for (_, t) in mmio.devices.iter() {
        t.lock()
            .unwrap()
            .notify_restored()
            .map_err(VmError::RestoreDevice)?;
    }
    // Every restore is a new generation: a guest with the vmgenid driver reseeds its RNG.
    vmgenid::regenerate(&ram.memory)?;
    vmgenid::notify(&vm)?;
    let machine = Machine {
        kvm,
        ram,
        vm,
        mmio,
        bus,
        vcpus,
        shape,
        boot: BootSource::Recorded(boot),
    };
    run_machine(machine, stop_signals, api, started)
}

/// Saves the paused VM `m` into a new snapshot directory `destination`, with the `include`
/// files copied in while its devices are stopped; the VM stays paused, its devices running
/// again.
fn take_snapshot(
    m: &Machine,
    pause: &VcpuPause,
    destination: &Path,
    include: &[IncludeFile],
) -> Result<(), SnapshotError> {
    if !pause.is_paused() {
        return Err(SnapshotError::NotPaused);
    }
    // Asked of every device before any ring stops: a refusal changes nothing.
    for (_, t) in &m.mmio.devices {
        t.lock()
            .unwrap()
            .check_snapshot()
            .map_err(SnapshotError::Device)?;
    }
    // Created first: an existing destination is refused before any state is read.
    let writer = SnapshotWriter::create(destination)?;
    let saved = save_stopped(m, pause, writer, destination, include);
    // Every device runs again whatever happened (the vCPUs stay paused).
    let mut restarted = Ok(());
    for (_, t) in &m.mmio.devices {
        if let Err(e) = t.lock().unwrap().resume_backend() {
            tracing::error!("after the snapshot: {e}");
            if restarted.is_ok() {
                restarted = Err(SnapshotError::Device(format!(
                    "the snapshot was taken, but a device did not restart: {e}"
                )));
            }
        }
    }
    saved.and(restarted)
}

/// Each device's kind, backend socket and requests in flight (available but not used, read
/// from the rings in guest memory).
fn device_status(m: &Machine) -> Vec<DeviceStatus> {
    let idx = |addr: u64| -> u16 {
        m.ram
            .memory
            .read_obj::<u16>(vm_memory::GuestAddress(addr + 2))
            .unwrap_or(0)
    };
    m.mmio
        .devices
        .iter()
        .map(|(_, t)| {
            let mut t = t.lock().unwrap();
            let in_flight = t
                .queues
                .iter()
                .filter(|q| q.ready)
                .map(|q| u32::from(idx(q.avail).wrapping_sub(idx(q.used))))
                .sum();
            let id = t.device.device_type();
            let kind = DeviceKind::name_of(id).map_or_else(|| id.to_string(), str::to_owned);
            let socket = t
                .device
                .vhost_user()
                .map(|d| d.socket().display().to_string());
            DeviceStatus {
                kind,
                socket,
                in_flight,
            }
        })
        .collect()
}

/// The part of [`take_snapshot`] done with the devices' rings stopped.
fn save_stopped(
    m: &Machine,
    pause: &VcpuPause,
    mut writer: SnapshotWriter,
    destination: &Path,
    include: &[IncludeFile],
) -> Result<(), SnapshotError> {
    let mut handovers = Vec::new();
    for (_, t) in &m.mmio.devices {
        handovers.push(
            t.lock()
                .unwrap()
                .save_backend()
                .map_err(SnapshotError::Device)?,
        );
    }
    snapshot::include_files(&mut writer, include)?;
    let ctx = VcpuSaveContext::new(&m.kvm, &m.vm)?;
    let vcpus = pause.save_vcpus(ctx, m.shape.vcpus as usize)?;
    let vm = persist::save_vm(&m.vm)?;
    let mut devices = DeviceStates::save(&m.bus, &m.mmio);
    let mut backend_states = Vec::new();
    for (index, (slot, handover)) in devices.virtio.iter_mut().zip(handovers).enumerate() {
        let Some(handover) = handover else { continue };
        let state_file = handover.backend_state.map(|bytes| {
            let name = snapshot::backend_state_file(index);
            backend_states.push((name.clone(), bytes));
            name
        });
        slot.backend = Some(BackendRecord {
            vring_bases: handover
                .vring_bases
                .iter()
                .map(|&(queue, next_avail)| VringBase { queue, next_avail })
                .collect(),
            state_file,
        });
    }
    let memfd = m
        .ram
        .memfd
        .try_clone()
        .map(File::from)
        .map_err(|e| SnapshotError::Io(destination.to_owned(), e))?;
    snapshot::write(
        writer,
        &m.shape,
        &KvmSnapshot::new(vm, vcpus),
        &devices,
        &backend_states,
        &m.boot.hashes(),
        &memfd,
    )
}

/// Runs a built VM's vCPUs, console, signal and API threads until it stops.
fn run_machine(
    mut m: Machine,
    stop_signals: SigSet,
    api: Option<ApiSocket>,
    started: std::time::Instant,
) -> Result<VmOutcome, VmError> {
    let (tx, rx) = mpsc::channel::<Event>();
    let (vcpu_tx, vcpu_rx) = mpsc::channel::<VcpuEvent>();
    vcpu::install_kick_handler().map_err(|e| VmError::Host("sigaction", e))?;
    let pause = Arc::new(VcpuPause::default());
    let mut vcpu_threads = Vec::new();
    for (id, vcpu) in std::mem::take(&mut m.vcpus).into_iter().enumerate() {
        let (bus, mmio, tx, pause) = (
            m.bus.clone(),
            m.mmio.clone(),
            vcpu_tx.clone(),
            pause.clone(),
        );
        let thread = std::thread::Builder::new()
            .name(format!("vcpu{id}"))
            .spawn(move || vcpu.run(bus, mmio, tx, pause))
            .map_err(|e| VmError::Host("spawning a vCPU thread", e))?;
        vcpu_threads.push(thread);
    }
    let fwd = tx.clone();
    std::thread::spawn(move || {
        while let Ok(ev) = vcpu_rx.recv() {
            let _ = fwd.send(Event::Vcpu(ev));
        }
    });
    let lost_tx = tx.clone();
    crate::vhost_user::reconnect::watch_all(&m.mmio, move |line| {
        let _ = lost_tx.send(Event::BackendLost(line));
    })
    .map_err(|e| VmError::Host("spawning a backend watch thread", e))?;
    let sig_tx = tx.clone();
    std::thread::spawn(move || {
        if let Ok(sig) = stop_signals.wait() {
            let _ = sig_tx.send(Event::Signal(sig as i32));
        }
    });

    let interactive = m.shape.interactive;
    let _raw = if interactive {
        RawTerminal::enable()
    } else {
        None
    };
    let com1 = m.bus.com1.clone();
    let quit_tx = tx.clone();
    std::thread::spawn(move || {
        console::pump_stdin(com1, interactive, move || {
            let _ = quit_tx.send(Event::Quit);
        })
    });

    let api_tx = tx.clone();
    let _api_file = api
        .map(|api| api.serve(move |call| drop(api_tx.send(Event::Api(call)))))
        .transpose()
        .map_err(|e| VmError::Host("spawning the API thread", e))?;

    tracing::debug!("vCPUs running at {:?}", started.elapsed());
    notify::ready("running");
    let mut watchdog = notify::Watchdog::from_env();
    let outcome = loop {
        match watchdog.recv(&rx) {
            Ok(Event::Vcpu(VcpuEvent::Stop(stop))) => {
                break VmOutcome::Stopped {
                    stop,
                    status: m.bus.exit_status(),
                }
            }
            Ok(Event::Vcpu(VcpuEvent::Error(e))) => return Err(e.into()),
            Ok(Event::BackendLost(line)) => return Err(VmError::BackendLost(line)),
            Ok(Event::Signal(sig)) => break VmOutcome::Signalled(sig),
            Ok(Event::Quit) | Err(_) => break VmOutcome::Quit,
            // Like a power-off: the command's status if sm-init reported one, else success.
            Ok(Event::Api(ApiCall {
                request: Request::Shutdown,
                ..
            })) => {
                break VmOutcome::Stopped {
                    stop: GuestStop::PowerOff,
                    status: m.bus.exit_status(),
                }
            }
            Ok(Event::Api(call)) => {
                let answer: Result<Answer, ApiError> = match call.request {
                    Request::Pause => pause
                        .pause(&vcpu_threads)
                        .map(|()| notify::status("paused"))
                        .map(|()| Answer::Done)
                        .map_err(Into::into),
                    Request::Resume => pause
                        .resume()
                        .map(|()| notify::status("running"))
                        .map(|()| Answer::Done)
                        .map_err(Into::into),
                    Request::Snapshot {
                        destination,
                        include,
                    } => take_snapshot(&m, &pause, &destination, &include)
                        .map(|()| Answer::Done)
                        .map_err(Into::into),
                    _ => Ok(Answer::Status(VmStatus {
                        state: if pause.is_paused() {
                            VmState::Paused
                        } else {
                            VmState::Running
                        },
                        vcpus: m.shape.vcpus,
                        memory_mib: m.shape.mem_mib,
                        uptime_ms: started.elapsed().as_millis() as u64,
                        version: env!("CARGO_PKG_VERSION").to_string(),
                        devices: device_status(&m),
                    })),
                };
                let _ = call.reply.send(answer);
            }
        }
    };
    tracing::debug!("guest stopped at {:?}: {outcome:?}", started.elapsed());
    // Guest RAM and the VM are released when the process exits; the vCPU threads are
    // blocked in KVM_RUN or on the bus and need no orderly join for that.
    std::mem::forget(m);
    Ok(outcome)
}

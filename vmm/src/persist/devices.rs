//! The state of sm-vmm's emulated devices as serializable types with save and restore, so a
//! restored guest finds its UARTs, CMOS RTC and virtio-mmio transports as it left them (the
//! device half of a snapshot; KVM state is in [`super::KvmSnapshot`], memory elsewhere).
//!
//! **Not captured here** (the caller's job, or later work):
//! - the vhost-user side of each virtio device: negotiated features and protocol features,
//!   memory table, vring bases (GET_VRING_BASE), kick/call eventfds, ioeventfd/irqfd wiring and
//!   the backend's own state (device state transfer). [`MmioTransport::restore`] only puts the
//!   register file back;
//! - bytes the guest wrote to a UART that the host has not read yet (they already left sm-vmm),
//!   and the UART's irqfd (the restored VM supplies its own);
//! - the RTC's time registers, which are views of the host clock: a restored guest reads the
//!   host's current time, as a guest resumed after a suspend would;
//! - the exit status register (a guest that reported one has finished).

use std::io;

use serde::{Deserialize, Serialize};
use vm_superio::serial::{NoEvents, SerialState};
use vm_superio::Serial;

use super::SNAPSHOT_FORMAT_VERSION;
use crate::devices::rtc::CmosRtc;
use crate::devices::serial::{FdWriter, IrqTrigger, SerialPort};
use crate::devices::virtio_mmio::{DeviceHandover, MmioTransport, QueueConfig};
use crate::devices::{MmioBus, PioBus};

/// Errors restoring or (de)serializing device state.
#[derive(Debug, thiserror::Error)]
pub enum DeviceStateError {
    /// The saved transport fronted another kind of virtio device.
    #[error(
        "virtio-mmio state is for device type {saved}, this transport's device is type {found}"
    )]
    DeviceType {
        /// Device type in the state.
        saved: u32,
        /// Device type behind the transport.
        found: u32,
    },
    /// The saved transport had another number of queues.
    #[error("virtio-mmio state has {saved} queues, this device has {found}")]
    QueueCount {
        /// Queues in the state.
        saved: usize,
        /// Queues the device has.
        found: usize,
    },
    /// A saved queue is larger than the device supports.
    #[error(
        "virtio-mmio state sets queue {queue} to size {size}, above the device's maximum of {max}"
    )]
    QueueSize {
        /// Queue index.
        queue: usize,
        /// Size in the state.
        size: u16,
        /// The device's maximum.
        max: u16,
    },
    /// The driver acknowledged features this device does not offer.
    #[error(
        "virtio-mmio state acknowledges features {acked:#x}, this device offers only {offered:#x}"
    )]
    Features {
        /// Features in the state.
        acked: u64,
        /// Features the device offers.
        offered: u64,
    },
    /// The device's shared-memory (DAX) regions are not where the guest saw them.
    #[error("virtio-mmio state has shared memory regions {saved:?}, this device has {found:?}")]
    SharedMemory {
        /// Regions in the state.
        saved: Vec<SharedMemoryRegionState>,
        /// Regions the device reports.
        found: Vec<SharedMemoryRegionState>,
    },
    /// The virtio-mmio windows differ from the VM's (another device layout).
    #[error("the snapshot has virtio-mmio devices at {saved:#x?}, this VM at {found:#x?}")]
    MmioLayout {
        /// Window bases in the state.
        saved: Vec<u64>,
        /// Window bases of this VM.
        found: Vec<u64>,
    },
    /// The RTC state has an impossible shape.
    #[error("RTC state is malformed: {0}")]
    Rtc(&'static str),
    /// vm-superio refused the UART state (more input bytes than its FIFO holds).
    #[error("UART state refused: {0}")]
    Uart(vm_superio::serial::Error<io::Error>),
    /// Duplicating the UART's irqfd or output descriptor failed.
    #[error("cannot duplicate the UART's descriptors: {0}")]
    UartFd(io::Error),
    /// The state was written by another format version.
    #[error("device state has format version {found}, this sm-vmm reads only version {expected}")]
    Version {
        /// Version in the file.
        found: u32,
        /// [`SNAPSHOT_FORMAT_VERSION`].
        expected: u32,
    },
    /// The bytes are not device state at all (truncated, altered, another file).
    #[error("device state is not readable: {0}")]
    Decode(serde_json::Error),
}

/// One virtqueue as the driver configured it (its maximum size is the device's, not saved).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VirtqueueState {
    /// QueueNum: the size the driver chose.
    pub size: u16,
    /// QueueReady.
    pub ready: bool,
    /// QueueDesc: guest-physical address of the descriptor table.
    pub desc: u64,
    /// QueueDriver: guest-physical address of the available (driver) ring.
    pub avail: u64,
    /// QueueDevice: guest-physical address of the used (device) ring.
    pub used: u64,
}

/// A shared-memory region (the virtio-fs DAX window) as the device reports it to the guest.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SharedMemoryRegionState {
    /// SHMSel value naming the region.
    pub id: u8,
    /// SHMBase: guest-physical base.
    pub base: u64,
    /// SHMLen: length in bytes.
    pub len: u64,
}

/// The register file of one virtio-mmio transport.
///
/// InterruptStatus is not stored: with irqfds nothing is latched in the transport, which reports
/// a used-buffer notification exactly when the device is activated (`device_activated`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VirtioMmioState {
    /// DeviceID of the device behind the transport, checked on restore.
    pub device_type: u32,
    /// Status register.
    pub status: u32,
    /// DeviceFeaturesSel.
    pub device_features_select: u32,
    /// DriverFeaturesSel.
    pub driver_features_select: u32,
    /// Features the driver acknowledged (DriverFeatures, both halves).
    pub driver_features: u64,
    /// QueueSel.
    pub queue_select: u32,
    /// Every queue, by index.
    pub queues: Vec<VirtqueueState>,
    /// SHMSel.
    pub shared_memory_select: u32,
    /// The shared-memory regions the device reported, checked on restore (the guest has
    /// mapped them where they were).
    pub shared_memory_regions: Vec<SharedMemoryRegionState>,
    /// ConfigGeneration.
    pub config_generation: u32,
    /// The driver set DRIVER_OK and the device started.
    pub device_activated: bool,
}

/// The shared-memory regions `transport`'s device reports, by ID.
fn shared_memory_regions(transport: &MmioTransport) -> Vec<SharedMemoryRegionState> {
    (0..=u8::MAX)
        .filter_map(|id| {
            let (base, len) = transport.device.shared_memory_region(id)?;
            Some(SharedMemoryRegionState { id, base, len })
        })
        .collect()
}

impl MmioTransport {
    /// The transport's register state.
    pub fn save(&self) -> VirtioMmioState {
        VirtioMmioState {
            device_type: self.device.device_type(),
            status: self.status,
            device_features_select: self.device_features_sel,
            driver_features_select: self.driver_features_sel,
            driver_features: self.driver_features,
            queue_select: self.queue_sel,
            queues: self
                .queues
                .iter()
                .map(|q| VirtqueueState {
                    size: q.size,
                    ready: q.ready,
                    desc: q.desc,
                    avail: q.avail,
                    used: q.used,
                })
                .collect(),
            shared_memory_select: self.shm_sel,
            shared_memory_regions: shared_memory_regions(self),
            config_generation: self.config_generation,
            device_activated: self.active,
        }
    }

    /// Refuses `state` if it cannot describe this transport's device; changes nothing.
    fn check_restorable(&self, state: &VirtioMmioState) -> Result<(), DeviceStateError> {
        let found = self.device.device_type();
        if state.device_type != found {
            return Err(DeviceStateError::DeviceType {
                saved: state.device_type,
                found,
            });
        }
        if state.queues.len() != self.queues.len() {
            return Err(DeviceStateError::QueueCount {
                saved: state.queues.len(),
                found: self.queues.len(),
            });
        }
        for (queue, (saved, ours)) in state.queues.iter().zip(&self.queues).enumerate() {
            if saved.size > ours.max_size {
                return Err(DeviceStateError::QueueSize {
                    queue,
                    size: saved.size,
                    max: ours.max_size,
                });
            }
        }
        let offered = self.device.features();
        if state.driver_features & !offered != 0 {
            return Err(DeviceStateError::Features {
                acked: state.driver_features,
                offered,
            });
        }
        let found = shared_memory_regions(self);
        if state.shared_memory_regions != found {
            return Err(DeviceStateError::SharedMemory {
                saved: state.shared_memory_regions.clone(),
                found,
            });
        }
        Ok(())
    }

    /// Puts the register file back as `state` describes it, so every register the guest can
    /// read returns what it did at the save; a state this device cannot have (another device
    /// type, queue count, a queue above its maximum size, features it does not offer, other
    /// shared-memory regions) is refused and the transport left unchanged.
    ///
    /// The device behind the transport is not told: an activated device is marked active
    /// without [`VirtioDevice::activate`](crate::devices::virtio_mmio::VirtioDevice::activate). Re-establishing
    /// the vhost-user side (features, memory table, vring addresses and bases, kick and call
    /// eventfds, the backend's device state) is later work and the caller's job.
    pub fn restore(&mut self, state: &VirtioMmioState) -> Result<(), DeviceStateError> {
        self.check_restorable(state)?;
        self.status = state.status;
        self.device_features_sel = state.device_features_select;
        self.driver_features_sel = state.driver_features_select;
        self.driver_features = state.driver_features;
        self.queue_sel = state.queue_select;
        for (q, saved) in self.queues.iter_mut().zip(&state.queues) {
            *q = QueueConfig {
                max_size: q.max_size,
                size: saved.size,
                ready: saved.ready,
                desc: saved.desc,
                avail: saved.avail,
                used: saved.used,
            };
        }
        self.shm_sel = state.shared_memory_select;
        self.config_generation = state.config_generation;
        self.active = state.device_activated;
        Ok(())
    }
}

/// An 8250 UART's registers and receive FIFO (vm-superio's [`SerialState`], which has no serde).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UartState {
    /// Divisor latch, low byte.
    pub baud_divisor_low: u8,
    /// Divisor latch, high byte.
    pub baud_divisor_high: u8,
    /// IER.
    pub interrupt_enable: u8,
    /// IIR.
    pub interrupt_identification: u8,
    /// LCR.
    pub line_control: u8,
    /// LSR.
    pub line_status: u8,
    /// MCR.
    pub modem_control: u8,
    /// MSR.
    pub modem_status: u8,
    /// Scratch register (sm-init's console-ready mark).
    pub scratch: u8,
    /// Host input the guest has not read yet.
    pub in_buffer: Vec<u8>,
}

impl From<SerialState> for UartState {
    fn from(s: SerialState) -> Self {
        UartState {
            baud_divisor_low: s.baud_divisor_low,
            baud_divisor_high: s.baud_divisor_high,
            interrupt_enable: s.interrupt_enable,
            interrupt_identification: s.interrupt_identification,
            line_control: s.line_control,
            line_status: s.line_status,
            modem_control: s.modem_control,
            modem_status: s.modem_status,
            scratch: s.scratch,
            in_buffer: s.in_buffer,
        }
    }
}

impl From<&UartState> for SerialState {
    fn from(s: &UartState) -> Self {
        SerialState {
            baud_divisor_low: s.baud_divisor_low,
            baud_divisor_high: s.baud_divisor_high,
            interrupt_enable: s.interrupt_enable,
            interrupt_identification: s.interrupt_identification,
            line_control: s.line_control,
            line_status: s.line_status,
            modem_control: s.modem_control,
            modem_status: s.modem_status,
            scratch: s.scratch,
            in_buffer: s.in_buffer.clone(),
        }
    }
}

impl SerialPort {
    /// The UART's state.
    pub fn save(&self) -> UartState {
        self.uart.state().into()
    }

    /// Puts the UART back in `state`, keeping its irqfd and output; an interrupt pending in
    /// `state` is raised again. Input beyond the FIFO's size is refused, the UART unchanged.
    pub fn restore(&mut self, state: &UartState) -> Result<(), DeviceStateError> {
        // vm-superio builds a UART from state only together with its trigger and writer, which
        // the old one owns: give the new one duplicates of the same descriptors.
        let irq = self
            .uart
            .interrupt_evt()
            .0
            .try_clone()
            .map_err(DeviceStateError::UartFd)?;
        let out = self
            .uart
            .writer()
            .0
            .try_clone()
            .map_err(DeviceStateError::UartFd)?;
        self.uart = Serial::from_state(&state.into(), IrqTrigger(irq), NoEvents, FdWriter(out))
            .map_err(DeviceStateError::Uart)?;
        Ok(())
    }
}

/// The CMOS RTC's index register and NVRAM.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RtcState {
    /// The register the next data-port access reaches (bit 7, the NMI mask, is not kept).
    pub index: u8,
    /// All 128 bytes of NVRAM (the time registers in it are unused: time comes from the host).
    pub nvram: Vec<u8>,
}

impl CmosRtc {
    /// The RTC's state.
    pub fn save(&self) -> RtcState {
        RtcState {
            index: self.index,
            nvram: self.nvram.to_vec(),
        }
    }

    /// Puts the RTC back in `state`; a state of the wrong shape is refused, the RTC unchanged.
    pub fn restore(&mut self, state: &RtcState) -> Result<(), DeviceStateError> {
        let nvram: [u8; 128] = state
            .nvram
            .as_slice()
            .try_into()
            .map_err(|_| DeviceStateError::Rtc("NVRAM is not 128 bytes"))?;
        if state.index > 0x7f {
            return Err(DeviceStateError::Rtc("index register above 0x7f"));
        }
        self.index = state.index;
        self.nvram = nvram;
        Ok(())
    }
}

/// One virtio-mmio transport and the window it answers at.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VirtioMmioSlot {
    /// Guest-physical base of the device window.
    pub base: u64,
    /// The transport's registers.
    pub state: VirtioMmioState,
    /// What the device's backend handed over, if the device was started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backend: Option<BackendRecord>,
}

/// A started device's backend at the snapshot: where its rings stood and where its own
/// state is kept.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackendRecord {
    /// Next available index of each ring that ran, by queue index.
    pub vring_bases: Vec<VringBase>,
    /// The snapshot file holding the backend's own state, if it keeps any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state_file: Option<String>,
}

/// Where one ring stood: the backend takes its next request at `next_avail`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VringBase {
    /// Queue index.
    pub queue: usize,
    /// GET_VRING_BASE's answer.
    pub next_avail: u16,
}

impl MmioTransport {
    /// Why the device cannot be snapshotted, if it is started and cannot.
    pub fn check_snapshot(&self) -> Result<(), String> {
        if self.active {
            self.device.check_snapshot()
        } else {
            Ok(())
        }
    }

    /// Stops a started device's rings and takes its backend's state (None: not started).
    pub fn save_backend(&mut self) -> Result<Option<DeviceHandover>, String> {
        if self.active {
            self.device.save_state().map(Some)
        } else {
            Ok(None)
        }
    }

    /// Restarts what [`Self::save_backend`] stopped.
    pub fn resume_backend(&mut self) -> Result<(), String> {
        if self.active {
            self.device.resume_after_save()
        } else {
            Ok(())
        }
    }

    /// Raises a started restored device's interrupt once (after the vCPUs are restored).
    pub fn notify_restored(&self) -> Result<(), String> {
        if self.active {
            self.device.notify_guest()
        } else {
            Ok(())
        }
    }

    /// Starts a restored device that was started at the snapshot, from what its backend
    /// handed over; a transport the guest had not started is left for the guest to start.
    pub fn restore_backend(&mut self, saved: Option<&DeviceHandover>) -> Result<(), String> {
        if !self.active {
            return Ok(());
        }
        let saved = saved.ok_or("the snapshot has no backend record for a started device")?;
        self.device
            .restore_state(self.driver_features, &self.queues, saved)
    }
}

/// The state of every emulated device of a VM, tagged with the format version it was written in.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceStates {
    /// [`SNAPSHOT_FORMAT_VERSION`] of the writer.
    pub version: u32,
    /// COM1 (console, command stdin/stdout).
    pub com1: UartState,
    /// COM2 (command stderr, kernel log).
    pub com2: UartState,
    /// The CMOS RTC.
    pub rtc: RtcState,
    /// The virtio-mmio transports, in bus order.
    pub virtio: Vec<VirtioMmioSlot>,
}

/// Just the version field, read first so another version is refused before its fields are.
#[derive(Deserialize)]
struct VersionOnly {
    version: u32,
}

impl DeviceStates {
    /// Saves every device on `pio` and `mmio`; the vCPUs must be paused.
    pub fn save(pio: &PioBus, mmio: &MmioBus) -> Self {
        DeviceStates {
            version: SNAPSHOT_FORMAT_VERSION,
            com1: pio.com1.lock().unwrap().save(),
            com2: pio.com2.lock().unwrap().save(),
            rtc: pio.rtc.lock().unwrap().save(),
            virtio: mmio
                .devices
                .iter()
                .map(|(base, t)| VirtioMmioSlot {
                    base: *base,
                    state: t.lock().unwrap().save(),
                    backend: None,
                })
                .collect(),
        }
    }

    /// Restores every device on `pio` and `mmio`, built for the same VM layout, before any vCPU
    /// runs. The virtio-mmio states are all checked before any device changes; should a UART
    /// still refuse its state, the VM is partly restored and must be discarded.
    pub fn restore(&self, pio: &PioBus, mmio: &MmioBus) -> Result<(), DeviceStateError> {
        let saved: Vec<u64> = self.virtio.iter().map(|s| s.base).collect();
        let found: Vec<u64> = mmio.devices.iter().map(|(base, _)| *base).collect();
        if saved != found {
            return Err(DeviceStateError::MmioLayout { saved, found });
        }
        for (slot, (_, t)) in self.virtio.iter().zip(&mmio.devices) {
            t.lock().unwrap().check_restorable(&slot.state)?;
        }
        pio.rtc.lock().unwrap().restore(&self.rtc)?;
        pio.com1.lock().unwrap().restore(&self.com1)?;
        pio.com2.lock().unwrap().restore(&self.com2)?;
        for (slot, (_, t)) in self.virtio.iter().zip(&mmio.devices) {
            t.lock().unwrap().restore(&slot.state)?;
        }
        Ok(())
    }

    /// Serializes the state (JSON).
    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("device state always serializes")
    }

    /// Reads state written by [`Self::to_bytes`], refusing any other format version.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, DeviceStateError> {
        let head: VersionOnly = serde_json::from_slice(bytes).map_err(DeviceStateError::Decode)?;
        if head.version != SNAPSHOT_FORMAT_VERSION {
            return Err(DeviceStateError::Version {
                found: head.version,
                expected: SNAPSHOT_FORMAT_VERSION,
            });
        }
        serde_json::from_slice(bytes).map_err(DeviceStateError::Decode)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::virtio_mmio::{VirtioDevice, VIRTIO_F_VERSION_1};
    use std::os::fd::OwnedFd;
    use std::sync::{Arc, Mutex};
    use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

    const ACKNOWLEDGE: u32 = 1;
    const DRIVER: u32 = 2;
    const DRIVER_OK: u32 = 4;
    const FEATURES_OK: u32 = 8;

    /// A virtio-fs-like device: two queues, a DAX window as region 1, and a record of whether
    /// the transport ever started it.
    #[derive(Default)]
    struct FsLike {
        activations: Arc<Mutex<u32>>,
    }

    impl VirtioDevice for FsLike {
        fn device_type(&self) -> u32 {
            26
        }
        fn features(&self) -> u64 {
            VIRTIO_F_VERSION_1 | 0b101
        }
        fn queue_max_sizes(&self) -> Vec<u16> {
            vec![1024, 256]
        }
        fn read_config(&mut self, offset: u64, data: &mut [u8]) {
            data.fill(offset as u8);
        }
        fn write_config(&mut self, _: u64, _: &[u8]) {}
        fn activate(&mut self, _: u64, _: &[QueueConfig]) -> Result<(), String> {
            *self.activations.lock().unwrap() += 1;
            Ok(())
        }
        fn reset(&mut self) {}
        fn shared_memory_region(&self, id: u8) -> Option<(u64, u64)> {
            (id == 1).then_some((0x1_4000_0000, 0x4000_0000))
        }
    }

    fn rd(t: &mut MmioTransport, off: u64) -> u32 {
        let mut b = [0u8; 4];
        t.read(off, &mut b);
        u32::from_le_bytes(b)
    }

    fn wr(t: &mut MmioTransport, off: u64, v: u32) {
        t.write(off, &v.to_le_bytes());
    }

    /// Sets up queue `index` as a driver does: select, size, ring addresses, ready.
    fn set_up_queue(t: &mut MmioTransport, index: u32, size: u32, base: u64) {
        wr(t, 0x30, index);
        wr(t, 0x38, size);
        for (off, addr) in [(0x80, base), (0x90, base + 0x4000), (0xa0, base + 0x8000)] {
            wr(t, off, addr as u32);
            wr(t, off + 4, (addr >> 32) as u32);
        }
        wr(t, 0x44, 1);
    }

    /// Every register the guest can read, under every value of the selectors that change what
    /// the registers show; the selectors are left as they were.
    fn guest_view(t: &mut MmioTransport) -> Vec<(u64, u32, u32)> {
        let plain: Vec<_> = (0..0x104u64)
            .step_by(4)
            .map(|off| (off, u32::MAX, rd(t, off)))
            .collect();
        let saved = t.save();
        let mut view = plain;
        for sel in 0..3u32 {
            for (select, shown) in [(0x14u64, 0x10u64), (0x30, 0x34), (0x30, 0x44), (0xac, 0xb0)] {
                wr(t, select, sel);
                view.push((shown, sel, rd(t, shown)));
                if select == 0xac {
                    for off in [0xb4, 0xb8, 0xbc] {
                        view.push((off, sel, rd(t, off)));
                    }
                }
            }
        }
        wr(t, 0x14, saved.device_features_select);
        wr(t, 0x30, saved.queue_select);
        wr(t, 0xac, saved.shared_memory_select);
        view
    }

    /// A transport a driver took through virtio initialization (virtio 1.2, 3.1.1), with the
    /// selectors left at non-default values.
    fn initialized_transport() -> MmioTransport {
        let mut t = MmioTransport::new(Box::new(FsLike::default()));
        wr(&mut t, 0x70, 0);
        wr(&mut t, 0x70, ACKNOWLEDGE);
        wr(&mut t, 0x70, ACKNOWLEDGE | DRIVER);
        let features = VIRTIO_F_VERSION_1 | 0b100;
        wr(&mut t, 0x14, 1);
        assert_eq!(rd(&mut t, 0x10), 1);
        wr(&mut t, 0x24, 0);
        wr(&mut t, 0x20, features as u32);
        wr(&mut t, 0x24, 1);
        wr(&mut t, 0x20, (features >> 32) as u32);
        wr(&mut t, 0x70, ACKNOWLEDGE | DRIVER | FEATURES_OK);
        assert_ne!(rd(&mut t, 0x70) & FEATURES_OK, 0, "features accepted");
        set_up_queue(&mut t, 0, 512, 0x1_0000_0000);
        set_up_queue(&mut t, 1, 64, 0x20_0000);
        wr(&mut t, 0xac, 1);
        wr(&mut t, 0x70, ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK);
        t
    }

    #[test]
    fn a_restored_transport_shows_the_guest_every_register_as_saved() {
        let mut original = initialized_transport();
        let state = original.save();
        assert_eq!(state.queues[0].size, 512);
        assert_eq!(state.queues[0].desc, 0x1_0000_0000);
        assert_eq!(state.queues[1].used, 0x20_8000);
        assert_eq!(state.driver_features, VIRTIO_F_VERSION_1 | 0b100);
        assert!(state.device_activated);
        let state: VirtioMmioState =
            serde_json::from_slice(&serde_json::to_vec(&state).unwrap()).unwrap();

        let device = FsLike::default();
        let activations = device.activations.clone();
        let mut restored = MmioTransport::new(Box::new(device));
        restored.restore(&state).unwrap();

        assert_eq!(guest_view(&mut restored), guest_view(&mut original));
        assert_eq!(rd(&mut restored, 0x60), 1, "used-buffer interrupt reported");
        assert_eq!(restored.save(), original.save());
        assert_eq!(
            *activations.lock().unwrap(),
            0,
            "restore does not talk to the backend"
        );
        // The queues stay frozen under DRIVER_OK, as they were before the save.
        wr(&mut restored, 0x30, 0);
        wr(&mut restored, 0x38, 16);
        assert_eq!(restored.save().queues[0].size, 512);
    }

    #[test]
    fn a_queue_larger_than_the_device_allows_is_refused() {
        let mut state = initialized_transport().save();
        state.queues[1].size = 512;
        let mut fresh = MmioTransport::new(Box::new(FsLike::default()));
        let before = fresh.save();
        let err = fresh.restore(&state).unwrap_err();
        assert_eq!(
            err.to_string(),
            "virtio-mmio state sets queue 1 to size 512, above the device's maximum of 256"
        );
        assert_eq!(fresh.save(), before, "a refused state changes nothing");
    }

    fn uart() -> SerialPort {
        let out: OwnedFd = std::fs::OpenOptions::new()
            .write(true)
            .open("/dev/null")
            .unwrap()
            .into();
        SerialPort::new(EventFd::new(EFD_NONBLOCK).unwrap(), out)
    }

    #[test]
    fn uart_registers_and_pending_input_survive() {
        let mut original = uart();
        original.write(3, 0x80); // DLAB: offsets 0 and 1 reach the divisor latch.
        original.write(0, 0x0c);
        original.write(1, 0x00);
        original.write(3, 0x1b); // 8 data bits, 1 stop bit, even parity, DLAB clear.
        original.write(1, 0x01); // Receive-data interrupt.
        original.write(4, 0x0b); // DTR, RTS, OUT2.
        original.write(7, 0x53);
        assert_eq!(original.enqueue_input(b"hi"), 2);
        let state: UartState =
            serde_json::from_slice(&serde_json::to_vec(&original.save()).unwrap()).unwrap();

        let mut restored = uart();
        let irq = restored.uart.interrupt_evt().0.try_clone().unwrap();
        restored.restore(&state).unwrap();
        assert!(
            irq.read().is_ok(),
            "the pending receive interrupt is raised again on the old irqfd"
        );
        assert_eq!(restored.save(), original.save());
        assert!(restored.accepts_input(), "console-ready mark and IER kept");
        let regs = |p: &mut SerialPort| [1, 2, 3, 4, 5, 7].map(|off| p.read(off));
        assert_eq!(regs(&mut restored), regs(&mut original));
        assert_eq!([restored.read(0), restored.read(0)], *b"hi");
        restored.write(3, 0x9b);
        assert_eq!([restored.read(0), restored.read(1)], [0x0c, 0x00]);
    }

    #[test]
    fn uart_input_beyond_the_fifo_is_refused() {
        let mut state = uart().save();
        state.in_buffer = vec![b'x'; 65];
        let mut port = uart();
        assert!(matches!(
            port.restore(&state),
            Err(DeviceStateError::Uart(_))
        ));
        assert_eq!(port.save().in_buffer, b"");
    }

    #[test]
    fn rtc_index_and_nvram_survive() {
        let mut original = CmosRtc::default();
        original.write(0, 0x20);
        original.write(1, 0xa5);
        original.write(0, 0x7f);
        original.write(1, 0x5a);
        original.write(0, 0x80 | 0x20); // NMI masked, index 0x20.
        let state: RtcState =
            serde_json::from_slice(&serde_json::to_vec(&original.save()).unwrap()).unwrap();

        let mut restored = CmosRtc::default();
        restored.restore(&state).unwrap();
        assert_eq!(restored.read(0), 0x20);
        assert_eq!(restored.read(1), 0xa5);
        restored.write(0, 0x7f);
        assert_eq!(restored.read(1), 0x5a);

        let short = RtcState {
            index: 0,
            nvram: vec![0; 64],
        };
        assert_eq!(
            restored.restore(&short).unwrap_err().to_string(),
            "RTC state is malformed: NVRAM is not 128 bytes"
        );
    }

    #[test]
    fn all_devices_round_trip_and_another_version_is_refused() {
        let pio = PioBus::new(uart(), uart());
        pio.write(crate::layout::COM1_PORT + 7, &[0x53]);
        pio.write(crate::layout::RTC_PORT, &[0x30]);
        pio.write(crate::layout::RTC_PORT + 1, &[0x42]);
        let mut mmio = MmioBus::default();
        mmio.add(0xd000_0000, initialized_transport());
        let bytes = DeviceStates::save(&pio, &mmio).to_bytes();

        let states = DeviceStates::from_bytes(&bytes).unwrap();
        let fresh_pio = PioBus::new(uart(), uart());
        let mut fresh_mmio = MmioBus::default();
        fresh_mmio.add(0xd000_0000, MmioTransport::new(Box::new(FsLike::default())));
        states.restore(&fresh_pio, &fresh_mmio).unwrap();
        assert_eq!(DeviceStates::save(&fresh_pio, &fresh_mmio), states);

        let mut elsewhere = MmioBus::default();
        elsewhere.add(0xd000_1000, MmioTransport::new(Box::new(FsLike::default())));
        assert!(matches!(
            states.restore(&PioBus::new(uart(), uart()), &elsewhere),
            Err(DeviceStateError::MmioLayout { .. })
        ));

        let mut other = states.clone();
        other.version = SNAPSHOT_FORMAT_VERSION + 1;
        assert_eq!(
            DeviceStates::from_bytes(&other.to_bytes())
                .unwrap_err()
                .to_string(),
            format!(
                "device state has format version {}, this sm-vmm reads only version {SNAPSHOT_FORMAT_VERSION}",
                SNAPSHOT_FORMAT_VERSION + 1
            )
        );
    }
}

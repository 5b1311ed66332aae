//! The virtio-mmio transport (virtio 1.x, "modern" register layout, version 2): the register
//! file the guest driver programs. What sits behind it is a [`VirtioDevice`]; in sm-vmm that
//! is always a vhost-user backend, so queue notifications and interrupts bypass this code
//! (ioeventfd / irqfd) and only set-up and status flow through here.

/// Magic value "virt".
const MAGIC: u32 = 0x7472_6976;
/// Modern (virtio 1.x) virtio-mmio.
const VERSION: u32 = 2;
/// Vendor ID reported to the guest ("SM").
const VENDOR_ID: u32 = 0x0000_534d;
/// VIRTIO_F_VERSION_1: the driver must accept it on a modern transport.
pub const VIRTIO_F_VERSION_1: u64 = 1 << 32;
/// Offset of the QueueNotify register (kick ioeventfds match writes here).
pub const QUEUE_NOTIFY_OFFSET: u64 = 0x50;
/// Offset where device-specific configuration space starts.
const CONFIG_OFFSET: u64 = 0x100;

const STATUS_ACKNOWLEDGE: u32 = 1;
const STATUS_DRIVER: u32 = 2;
const STATUS_DRIVER_OK: u32 = 4;
const STATUS_FEATURES_OK: u32 = 8;
const STATUS_NEEDS_RESET: u32 = 0x40;
const STATUS_FAILED: u32 = 0x80;
/// InterruptStatus bit: used buffer notification.
const INT_VRING: u32 = 1;

/// One virtqueue as the driver configured it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct QueueConfig {
    /// Largest size the device supports.
    pub max_size: u16,
    /// Size the driver chose.
    pub size: u16,
    /// The driver enabled the queue.
    pub ready: bool,
    /// Guest-physical address of the descriptor table.
    pub desc: u64,
    /// Guest-physical address of the available (driver) ring.
    pub avail: u64,
    /// Guest-physical address of the used (device) ring.
    pub used: u64,
}

/// A device behind the transport.
pub trait VirtioDevice: Send {
    /// Virtio device ID (2 block, 19 vsock, 26 file system).
    fn device_type(&self) -> u32;
    /// Feature bits offered to the driver (VIRTIO_F_VERSION_1 included).
    fn features(&self) -> u64;
    /// Maximum size of each queue; the length is the queue count.
    fn queue_max_sizes(&self) -> Vec<u16>;
    /// Reads device configuration space at `offset`.
    fn read_config(&mut self, offset: u64, data: &mut [u8]);
    /// Writes device configuration space at `offset`.
    fn write_config(&mut self, offset: u64, data: &[u8]);
    /// Starts the device with the negotiated features and the queues the driver set up.
    fn activate(&mut self, features: u64, queues: &[QueueConfig]) -> Result<(), String>;
    /// Stops the device (driver reset).
    fn reset(&mut self);
    /// Guest-physical base and length of shared memory region `id`, if the device has it.
    fn shared_memory_region(&self, _id: u8) -> Option<(u64, u64)> {
        None
    }
    /// Says why the started device cannot hand over its state for a snapshot, if it cannot;
    /// asked of every device before any is stopped.
    fn check_snapshot(&self) -> Result<(), String> {
        Err(format!(
            "virtio device type {} cannot be snapshotted",
            self.device_type()
        ))
    }
    /// Stops the started device's rings and takes its state (the vCPUs are paused).
    fn save_state(&mut self) -> Result<DeviceHandover, String> {
        Err(format!(
            "virtio device type {} cannot be snapshotted",
            self.device_type()
        ))
    }
    /// The vhost-user device behind the transport, if it is one (to follow its backend's
    /// connection: [`crate::vhost_user::reconnect`]).
    fn vhost_user(&mut self) -> Option<&mut crate::vhost_user::VhostUserDevice> {
        None
    }
    /// Raises the device's interrupt once: after a restore, for what the restore put in its
    /// used rings (the vCPUs' interrupt state must be set first, or it would be lost).
    fn notify_guest(&self) -> Result<(), String> {
        Ok(())
    }
    /// Restarts the rings [`Self::save_state`] stopped, where they were.
    fn resume_after_save(&mut self) -> Result<(), String> {
        Ok(())
    }
    /// Starts a restored device that was started at the snapshot: its saved state, then its
    /// rings at their saved positions.
    fn restore_state(
        &mut self,
        features: u64,
        queues: &[QueueConfig],
        _saved: &DeviceHandover,
    ) -> Result<(), String> {
        self.activate(features, queues)
    }
}

/// What a started device hands over at a snapshot besides its transport registers.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DeviceHandover {
    /// Next available index of each ring that was running, by queue index.
    pub vring_bases: Vec<(usize, u16)>,
    /// The backend's own state (vhost-user device state transfer), if it keeps any.
    pub backend_state: Option<Vec<u8>>,
}

/// The register state of one virtio-mmio device.
/// (Fields are crate-visible so `persist::devices` can save and restore them.)
pub struct MmioTransport {
    pub(crate) device: Box<dyn VirtioDevice>,
    pub(crate) device_features_sel: u32,
    pub(crate) driver_features_sel: u32,
    pub(crate) driver_features: u64,
    pub(crate) queue_sel: u32,
    pub(crate) queues: Vec<QueueConfig>,
    pub(crate) shm_sel: u32,
    pub(crate) status: u32,
    pub(crate) config_generation: u32,
    pub(crate) active: bool,
}

fn set_half(v: &mut u64, high: bool, value: u32) {
    if high {
        *v = (*v & 0xffff_ffff) | (u64::from(value) << 32);
    } else {
        *v = (*v & !0xffff_ffff) | u64::from(value);
    }
}

impl MmioTransport {
    /// A transport in reset state in front of `device`.
    pub fn new(device: Box<dyn VirtioDevice>) -> Self {
        let queues = device
            .queue_max_sizes()
            .into_iter()
            .map(|max_size| QueueConfig {
                max_size,
                ..Default::default()
            })
            .collect();
        MmioTransport {
            device,
            device_features_sel: 0,
            driver_features_sel: 0,
            driver_features: 0,
            queue_sel: 0,
            queues,
            shm_sel: 0,
            status: 0,
            config_generation: 0,
            active: false,
        }
    }

    /// Number of queues.
    pub fn queue_count(&self) -> usize {
        self.queues.len()
    }

    fn queue(&mut self) -> Option<&mut QueueConfig> {
        // Queues are frozen once the driver says DRIVER_OK.
        if self.status & STATUS_DRIVER_OK != 0 {
            return None;
        }
        self.queues.get_mut(self.queue_sel as usize)
    }

    /// Guest read at `offset` in the device window.
    pub fn read(&mut self, offset: u64, data: &mut [u8]) {
        if offset >= CONFIG_OFFSET {
            self.device.read_config(offset - CONFIG_OFFSET, data);
            return;
        }
        let q = self
            .queues
            .get(self.queue_sel as usize)
            .copied()
            .unwrap_or_default();
        let v = match offset {
            0x00 => MAGIC,
            0x04 => VERSION,
            0x08 => self.device.device_type(),
            0x0c => VENDOR_ID,
            0x10 => match self.device_features_sel {
                0 => self.device.features() as u32,
                1 => (self.device.features() >> 32) as u32,
                _ => 0,
            },
            0x34 => u32::from(q.max_size),
            0x44 => u32::from(q.ready),
            // Completions arrive through an irqfd, so the VMM cannot know which interrupt
            // fired: report a used-buffer notification and let the driver check its rings.
            0x60 if self.active => INT_VRING,
            0x70 => self.status,
            // SHMLen/SHMBase of the region SHMSel names; all ones means "no such region"
            // (a length of 0 would claim an empty region, which virtio-fs then fails to
            // reserve).
            0xb0 | 0xb4 | 0xb8 | 0xbc => {
                let region = u8::try_from(self.shm_sel)
                    .ok()
                    .and_then(|id| self.device.shared_memory_region(id));
                match region {
                    Some((base, len)) => {
                        let v = if offset < 0xb8 { len } else { base };
                        (v >> if offset & 4 != 0 { 32 } else { 0 }) as u32
                    }
                    None => u32::MAX,
                }
            }
            0xfc => self.config_generation,
            _ => 0,
        };
        let bytes = v.to_le_bytes();
        let n = data.len().min(4);
        data[..n].copy_from_slice(&bytes[..n]);
    }

    /// Guest write at `offset`.
    pub fn write(&mut self, offset: u64, data: &[u8]) {
        if offset >= CONFIG_OFFSET {
            self.device.write_config(offset - CONFIG_OFFSET, data);
            return;
        }
        if data.len() != 4 {
            return; // Registers below the config space are 32-bit only.
        }
        let v = u32::from_le_bytes([data[0], data[1], data[2], data[3]]);
        match offset {
            0x14 => self.device_features_sel = v,
            // The features are fixed once FEATURES_OK is accepted: a later write would
            // otherwise reach `activate` unchecked at DRIVER_OK.
            0x20 if self.status & STATUS_FEATURES_OK != 0 => {}
            0x20 => match self.driver_features_sel {
                0 => set_half(&mut self.driver_features, false, v),
                1 => set_half(&mut self.driver_features, true, v),
                _ => {}
            },
            0x24 => self.driver_features_sel = v,
            0x30 => self.queue_sel = v,
            0xac => self.shm_sel = v,
            0x38 => {
                if let Some(q) = self.queue() {
                    q.size = v.min(u32::from(q.max_size)) as u16;
                }
            }
            0x44 => {
                if let Some(q) = self.queue() {
                    q.ready = v == 1;
                }
            }
            0x64 => {} // InterruptACK: nothing latched here (irqfd is edge-triggered).
            0x70 => self.set_status(v),
            0x80 | 0x84 | 0x90 | 0x94 | 0xa0 | 0xa4 => {
                let high = offset & 4 != 0;
                if let Some(q) = self.queue() {
                    let field = match offset & !4 {
                        0x80 => &mut q.desc,
                        0x90 => &mut q.avail,
                        _ => &mut q.used,
                    };
                    set_half(field, high, v);
                }
            }
            _ => {}
        }
    }

    fn set_status(&mut self, v: u32) {
        if v == 0 {
            if self.active {
                self.device.reset();
            }
            self.device_features_sel = 0;
            self.driver_features_sel = 0;
            self.driver_features = 0;
            self.queue_sel = 0;
            self.shm_sel = 0;
            for q in &mut self.queues {
                *q = QueueConfig {
                    max_size: q.max_size,
                    ..Default::default()
                };
            }
            self.status = 0;
            self.active = false;
            return;
        }
        let mut v = v;
        let newly = v & !self.status;
        if newly & STATUS_FEATURES_OK != 0 {
            let offered = self.device.features();
            if self.driver_features & !offered != 0
                || self.driver_features & VIRTIO_F_VERSION_1 == 0
            {
                v &= !STATUS_FEATURES_OK; // The driver reads it back and gives up.
            }
        }
        if newly & STATUS_DRIVER_OK != 0 && v & STATUS_FEATURES_OK != 0 && !self.active {
            match self.device.activate(self.driver_features, &self.queues) {
                Ok(()) => self.active = true,
                Err(e) => {
                    tracing::error!(
                        "virtio device {} failed to start: {e}",
                        self.device.device_type()
                    );
                    v |= STATUS_NEEDS_RESET;
                }
            }
        }
        self.status = v
            & (STATUS_ACKNOWLEDGE
                | STATUS_DRIVER
                | STATUS_DRIVER_OK
                | STATUS_FEATURES_OK
                | STATUS_NEEDS_RESET
                | STATUS_FAILED);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    /// Features and queues a device was activated with.
    type Activation = Arc<Mutex<Option<(u64, Vec<QueueConfig>)>>>;

    /// Records what the transport asks of the device behind it.
    #[derive(Default)]
    struct Recorder {
        activated: Activation,
        resets: Arc<Mutex<u32>>,
    }

    impl VirtioDevice for Recorder {
        fn device_type(&self) -> u32 {
            2
        }
        fn features(&self) -> u64 {
            VIRTIO_F_VERSION_1 | 0b110
        }
        fn queue_max_sizes(&self) -> Vec<u16> {
            vec![256, 128]
        }
        fn read_config(&mut self, offset: u64, data: &mut [u8]) {
            data.fill(offset as u8);
        }
        fn write_config(&mut self, _: u64, _: &[u8]) {}
        fn activate(&mut self, features: u64, queues: &[QueueConfig]) -> Result<(), String> {
            *self.activated.lock().unwrap() = Some((features, queues.to_vec()));
            Ok(())
        }
        fn reset(&mut self) {
            *self.resets.lock().unwrap() += 1;
        }
    }

    /// A device with one shared memory region, ID 1.
    struct WithWindow;

    impl VirtioDevice for WithWindow {
        fn device_type(&self) -> u32 {
            26
        }
        fn features(&self) -> u64 {
            VIRTIO_F_VERSION_1
        }
        fn queue_max_sizes(&self) -> Vec<u16> {
            vec![256]
        }
        fn read_config(&mut self, _: u64, _: &mut [u8]) {}
        fn write_config(&mut self, _: u64, _: &[u8]) {}
        fn activate(&mut self, _: u64, _: &[QueueConfig]) -> Result<(), String> {
            Ok(())
        }
        fn reset(&mut self) {}
        fn shared_memory_region(&self, id: u8) -> Option<(u64, u64)> {
            (id == 1).then_some((0x1_4000_0000, 0x2_4000_0000))
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

    fn negotiate(t: &mut MmioTransport, features: u64) {
        wr(t, 0x70, STATUS_ACKNOWLEDGE | STATUS_DRIVER);
        wr(t, 0x24, 0);
        wr(t, 0x20, features as u32);
        wr(t, 0x24, 1);
        wr(t, 0x20, (features >> 32) as u32);
        wr(
            t,
            0x70,
            STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK,
        );
    }

    #[test]
    fn identifies_as_a_modern_device() {
        let mut t = MmioTransport::new(Box::new(Recorder::default()));
        assert_eq!(rd(&mut t, 0), MAGIC);
        assert_eq!(rd(&mut t, 4), 2);
        assert_eq!(rd(&mut t, 8), 2);
        wr(&mut t, 0x14, 1);
        assert_eq!(rd(&mut t, 0x10), 1, "VERSION_1 in the high word");
        wr(&mut t, 0x30, 1);
        assert_eq!(rd(&mut t, 0x34), 128);
        let mut cfg = [0u8; 2];
        t.read(0x108, &mut cfg);
        assert_eq!(
            cfg,
            [8, 8],
            "config space reads go to the device at their offset"
        );
        wr(&mut t, 0xac, 0);
        assert_eq!(
            (rd(&mut t, 0xb0), rd(&mut t, 0xb4)),
            (u32::MAX, u32::MAX),
            "no shared memory"
        );
    }

    #[test]
    fn shared_memory_registers_describe_the_selected_region() {
        let mut t = MmioTransport::new(Box::new(WithWindow));
        let region = |t: &mut MmioTransport| [0xb0, 0xb4, 0xb8, 0xbc].map(|off| rd(t, off));
        assert_eq!(region(&mut t), [u32::MAX; 4], "region 0 does not exist");
        wr(&mut t, 0xac, 1);
        assert_eq!(region(&mut t), [0x4000_0000, 2, 0x4000_0000, 1]);
        wr(&mut t, 0xac, 256);
        assert_eq!(region(&mut t), [u32::MAX; 4], "IDs are 8 bits");
    }

    #[test]
    fn driver_ok_activates_with_the_programmed_queues() {
        let dev = Recorder::default();
        let activated = dev.activated.clone();
        let mut t = MmioTransport::new(Box::new(dev));
        negotiate(&mut t, VIRTIO_F_VERSION_1 | 0b100);
        assert_ne!(rd(&mut t, 0x70) & STATUS_FEATURES_OK, 0);
        wr(&mut t, 0x30, 0);
        wr(&mut t, 0x38, 1000); // Clamped to the maximum.
        wr(&mut t, 0x80, 0x1000);
        wr(&mut t, 0x84, 0x1);
        wr(&mut t, 0x90, 0x2000);
        wr(&mut t, 0xa0, 0x3000);
        wr(&mut t, 0x44, 1);
        assert_eq!(rd(&mut t, 0x60), 0, "no interrupts before activation");
        wr(
            &mut t,
            0x70,
            STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK | STATUS_DRIVER_OK,
        );
        let (features, queues) = activated.lock().unwrap().clone().expect("activated");
        assert_eq!(features, VIRTIO_F_VERSION_1 | 0b100);
        assert_eq!(
            queues[0],
            QueueConfig {
                max_size: 256,
                size: 256,
                ready: true,
                desc: 0x1_0000_1000,
                avail: 0x2000,
                used: 0x3000
            }
        );
        assert!(!queues[1].ready);
        assert_eq!(rd(&mut t, 0x60), INT_VRING);
        // Queues cannot change under a running device.
        wr(&mut t, 0x80, 0xdead);
        assert_eq!(
            activated.lock().unwrap().as_ref().unwrap().1[0].desc,
            0x1_0000_1000
        );
    }

    #[test]
    fn unknown_features_or_no_version_1_fail_features_ok() {
        let mut t = MmioTransport::new(Box::new(Recorder::default()));
        negotiate(&mut t, VIRTIO_F_VERSION_1 | (1 << 20));
        assert_eq!(rd(&mut t, 0x70) & STATUS_FEATURES_OK, 0);
        let mut t = MmioTransport::new(Box::new(Recorder::default()));
        negotiate(&mut t, 0b10);
        assert_eq!(rd(&mut t, 0x70) & STATUS_FEATURES_OK, 0);
    }

    #[test]
    fn reset_stops_the_device_and_clears_the_queues() {
        let dev = Recorder::default();
        let resets = dev.resets.clone();
        let mut t = MmioTransport::new(Box::new(dev));
        negotiate(&mut t, VIRTIO_F_VERSION_1);
        wr(&mut t, 0x44, 1);
        wr(
            &mut t,
            0x70,
            STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK | STATUS_DRIVER_OK,
        );
        wr(&mut t, 0x70, 0);
        assert_eq!(*resets.lock().unwrap(), 1);
        assert_eq!(rd(&mut t, 0x70), 0);
        assert_eq!(rd(&mut t, 0x44), 0);
        assert_eq!(rd(&mut t, 0x34), 256);
    }
}

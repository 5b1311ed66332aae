//! The few emulated devices a Linux guest needs to boot fast, on the port I/O bus: two 8250
//! UARTs, a CMOS RTC, the ACPI sleep/reset registers, the i8042 reset line, and the exit
//! status register sm-init writes the command's status to; and the VM generation ID
//! ([`vmgenid`]), a buffer in guest memory.

pub mod rtc;
pub mod serial;
pub mod virtio_mmio;
pub mod vmgenid;

use std::sync::{Arc, Mutex};

use crate::layout::*;
use rtc::CmosRtc;
use serial::SerialPort;

/// Why the guest stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GuestStop {
    /// ACPI S5 (poweroff).
    PowerOff,
    /// ACPI reset, i8042 reset, or a triple fault.
    Reset,
}

/// Everything on the port I/O bus, shared by all vCPU threads.
pub struct PioBus {
    /// COM1: console, command stdin/stdout.
    pub com1: Arc<Mutex<SerialPort>>,
    /// COM2: command stderr, kernel log.
    pub com2: Arc<Mutex<SerialPort>>,
    pub(crate) rtc: Mutex<CmosRtc>,
    exit_status: Mutex<Option<u8>>,
}

impl PioBus {
    /// A bus with the given UARTs.
    pub fn new(com1: SerialPort, com2: SerialPort) -> Self {
        PioBus {
            com1: Arc::new(Mutex::new(com1)),
            com2: Arc::new(Mutex::new(com2)),
            rtc: Mutex::new(CmosRtc::default()),
            exit_status: Mutex::new(None),
        }
    }

    /// The exit status the guest reported, if any.
    pub fn exit_status(&self) -> Option<u8> {
        *self.exit_status.lock().unwrap()
    }

    /// Handles a guest `in`; unclaimed ports read as all ones, like an empty ISA bus.
    pub fn read(&self, port: u16, data: &mut [u8]) {
        data.fill(0xff);
        let Some(first) = data.first_mut() else {
            return;
        };
        match port {
            p if (COM1_PORT..COM1_PORT + 8).contains(&p) => {
                *first = self.com1.lock().unwrap().read((p - COM1_PORT) as u8)
            }
            p if (COM2_PORT..COM2_PORT + 8).contains(&p) => {
                *first = self.com2.lock().unwrap().read((p - COM2_PORT) as u8)
            }
            p if p == RTC_PORT || p == RTC_PORT + 1 => {
                *first = self.rtc.lock().unwrap().read((p - RTC_PORT) as u8)
            }
            I8042_PORT | ACPI_SLEEP_STATUS_PORT | ACPI_SLEEP_CONTROL_PORT => *first = 0,
            _ => {}
        }
    }

    /// Handles a guest `out`; returns a stop request when the guest powers off or resets.
    pub fn write(&self, port: u16, data: &[u8]) -> Option<GuestStop> {
        let value = *data.first()?;
        match port {
            p if (COM1_PORT..COM1_PORT + 8).contains(&p) => self
                .com1
                .lock()
                .unwrap()
                .write((p - COM1_PORT) as u8, value),
            p if (COM2_PORT..COM2_PORT + 8).contains(&p) => self
                .com2
                .lock()
                .unwrap()
                .write((p - COM2_PORT) as u8, value),
            p if p == RTC_PORT || p == RTC_PORT + 1 => {
                self.rtc.lock().unwrap().write((p - RTC_PORT) as u8, value)
            }
            EXIT_STATUS_PORT => *self.exit_status.lock().unwrap() = Some(value),
            ACPI_SLEEP_CONTROL_PORT => return sleep_request(value),
            ACPI_RESET_PORT if value == ACPI_RESET_VALUE => return Some(GuestStop::Reset),
            I8042_PORT if value == 0xfe => return Some(GuestStop::Reset),
            _ => {}
        }
        None
    }
}

/// The virtio-mmio device windows, by base address.
#[derive(Default)]
pub struct MmioBus {
    pub(crate) devices: Vec<(u64, Mutex<virtio_mmio::MmioTransport>)>,
}

impl MmioBus {
    /// Adds a device window at `base` ([`VIRTIO_MMIO_SIZE`] long).
    pub fn add(&mut self, base: u64, transport: virtio_mmio::MmioTransport) {
        self.devices.push((base, Mutex::new(transport)));
    }

    fn find(&self, addr: u64) -> Option<(u64, &Mutex<virtio_mmio::MmioTransport>)> {
        self.devices
            .iter()
            .find(|(base, _)| (*base..*base + VIRTIO_MMIO_SIZE).contains(&addr))
            .map(|(base, t)| (addr - base, t))
    }

    /// Handles a guest MMIO read; unclaimed addresses read as all ones.
    pub fn read(&self, addr: u64, data: &mut [u8]) {
        match self.find(addr) {
            Some((offset, t)) => t.lock().unwrap().read(offset, data),
            None => data.fill(0xff),
        }
    }

    /// Handles a guest MMIO write; unclaimed addresses ignore it.
    pub fn write(&self, addr: u64, data: &[u8]) {
        if let Some((offset, t)) = self.find(addr) {
            t.lock().unwrap().write(offset, data);
        }
    }
}

/// Decodes a write to the hardware-reduced ACPI sleep control register: SLP_EN (bit 5)
/// with SLP_TYP (bits 2-4) = 5, the `\_S5_` value our DSDT declares, is a poweroff.
pub fn sleep_request(value: u8) -> Option<GuestStop> {
    let slp_en = value & (1 << 5) != 0;
    let slp_typ = (value >> 2) & 0x7;
    (slp_en && slp_typ == 5).then_some(GuestStop::PowerOff)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_s5_with_slp_en_powers_off() {
        assert_eq!(
            sleep_request((5 << 2) | (1 << 5)),
            Some(GuestStop::PowerOff)
        );
        assert_eq!(sleep_request(5 << 2), None);
        assert_eq!(sleep_request((3 << 2) | (1 << 5)), None);
    }
}

//! A hostile guest against sm-vmm's port I/O bus (issue 17): the two 8250 UARTs, the CMOS
//! RTC, the ACPI sleep and reset registers, the i8042 reset line and the exit status
//! register, through the same `PioBus` the vCPU threads call on every `in` and `out`.
//!
//! Exhaustive: every port 0..=0xffff, at widths 0, 1, 2, 4 and 8, with values that mean
//! something to one device or another, read and written. Only the documented writes stop
//! the VM (S5 with SLP_EN at the sleep control port, 1 at the reset port, 0xfe at the i8042),
//! only the exit status port sets the exit status, unclaimed ports read as all ones, and the
//! bytes past the first of a wide read are all ones. Random: sequences of accesses to the
//! claimed ports, after which a driver that sets the UART up again prints through it and the
//! RTC still tells the time. Cases come from `PROPTEST_CASES`; `scripts/fuzz vmm-pio 10m`
//! runs more.

use std::io::Read;
use std::os::fd::OwnedFd;

use proptest::prelude::*;
use sm_test_support::fuzz::config;
use sm_vmm::devices::serial::SerialPort;
use sm_vmm::devices::{sleep_request, GuestStop, PioBus};
use sm_vmm::layout::*;
use vmm_sys_util::eventfd::EventFd;

/// A UART whose output goes to `out`.
fn uart(out: OwnedFd) -> SerialPort {
    SerialPort::new(EventFd::new(libc::EFD_NONBLOCK).unwrap(), out)
}

/// A bus whose UARTs write to /dev/null.
fn quiet_bus() -> PioBus {
    let null = || OwnedFd::from(std::fs::File::create("/dev/null").unwrap());
    PioBus::new(uart(null()), uart(null()))
}

/// Whether `port` belongs to a device.
fn claimed(port: u16) -> bool {
    (COM1_PORT..COM1_PORT + 8).contains(&port)
        || (COM2_PORT..COM2_PORT + 8).contains(&port)
        || port == RTC_PORT
        || port == RTC_PORT + 1
        || [
            I8042_PORT,
            ACPI_SLEEP_STATUS_PORT,
            ACPI_SLEEP_CONTROL_PORT,
            ACPI_RESET_PORT,
            EXIT_STATUS_PORT,
        ]
        .contains(&port)
}

/// The stop a write of `value` (its first byte) to `port` must cause.
fn expected_stop(port: u16, value: u8) -> Option<GuestStop> {
    match port {
        ACPI_SLEEP_CONTROL_PORT => sleep_request(value),
        ACPI_RESET_PORT if value == ACPI_RESET_VALUE => Some(GuestStop::Reset),
        I8042_PORT if value == 0xfe => Some(GuestStop::Reset),
        _ => None,
    }
}

const VALUES: [u8; 9] = [
    0x00,
    0x01,
    0x03,
    0x34,
    0x80,
    0x83,
    0xfe,
    0xff,
    (5 << 2) | (1 << 5),
];
const WIDTHS: [usize; 5] = [0, 1, 2, 4, 8];

#[test]
fn every_port_at_every_width_does_only_what_it_documents() {
    let bus = quiet_bus();
    let mut status = None;
    for port in 0..=u16::MAX {
        for width in WIDTHS {
            for value in VALUES {
                let data: Vec<u8> =
                    [value, 0x5a, 0xa5, 0x11, 0x22, 0x33, 0x44, 0x55][..width].to_vec();
                let stop = bus.write(port, &data);
                let want = if width == 0 {
                    None
                } else {
                    expected_stop(port, value)
                };
                assert_eq!(stop, want, "out {port:#x} width {width} value {value:#x}");
                if port == EXIT_STATUS_PORT && width > 0 {
                    status = Some(value);
                }
                assert_eq!(bus.exit_status(), status, "exit status after out {port:#x}");

                let mut read = vec![0u8; width];
                bus.read(port, &mut read);
                let rest = if claimed(port) { 1 } else { 0 };
                assert!(
                    read.iter().skip(rest).all(|&b| b == 0xff),
                    "in {port:#x} width {width}: {read:x?}"
                );
            }
        }
    }
}

/// One access to a claimed port (or, sometimes, any port).
#[derive(Debug, Clone)]
struct Access {
    port: u16,
    write: bool,
    data: Vec<u8>,
}

fn access() -> impl Strategy<Value = Access> {
    let port = prop_oneof![
        4 => (0..8u16).prop_map(|o| COM1_PORT + o),
        2 => (0..8u16).prop_map(|o| COM2_PORT + o),
        3 => (0..2u16).prop_map(|o| RTC_PORT + o),
        1 => Just(ACPI_SLEEP_STATUS_PORT),
        1 => any::<u16>(),
    ];
    (
        port,
        any::<bool>(),
        proptest::collection::vec(any::<u8>(), 0..=8),
    )
        .prop_map(|(port, write, data)| Access { port, write, data })
}

proptest! {
    #![proptest_config(config(300))]

    /// Any sequence of accesses leaves the devices working: a driver that sets COM1 up
    /// again (no loopback, 8N1, no divisor latch) prints through it, and the RTC tells the
    /// time in BCD once register B asks for it.
    #[test]
    fn random_accesses_leave_the_uart_and_the_rtc_working(seq in proptest::collection::vec(access(), 0..200)) {
        let (mut rx, tx) = std::io::pipe().unwrap();
        let null = OwnedFd::from(std::fs::File::create("/dev/null").unwrap());
        let bus = PioBus::new(uart(OwnedFd::from(tx)), uart(null));
        for a in &seq {
            if a.write {
                let stop = bus.write(a.port, &a.data);
                let want = a.data.first().and_then(|&v| expected_stop(a.port, v));
                prop_assert_eq!(stop, want);
            } else {
                let mut data = a.data.clone();
                bus.read(a.port, &mut data);
            }
        }
        // COM1 set up again: MCR without loopback, LCR 8N1 with DLAB clear, then a byte.
        bus.write(COM1_PORT + 4, &[0x03]);
        bus.write(COM1_PORT + 3, &[0x03]);
        bus.write(COM1_PORT, b"Z");
        drop(bus);
        let mut out = Vec::new();
        rx.read_to_end(&mut out).unwrap();
        prop_assert_eq!(out.last(), Some(&b'Z'), "COM1 output: {:?}", out);

        // The RTC in BCD, 24-hour: seconds and minutes are valid BCD under 0x60.
        let bus = quiet_bus();
        for a in &seq {
            if a.write && (a.port == RTC_PORT || a.port == RTC_PORT + 1) {
                bus.write(a.port, &a.data);
            }
        }
        bus.write(RTC_PORT, &[0x0b]);
        bus.write(RTC_PORT + 1, &[0x02]);
        for reg in [0x00u8, 0x02] {
            bus.write(RTC_PORT, &[reg]);
            let mut v = [0u8];
            bus.read(RTC_PORT + 1, &mut v);
            prop_assert!(v[0] < 0x60 && v[0] & 0x0f < 10, "register {:#x} reads {:#x}", reg, v[0]);
        }
    }
}

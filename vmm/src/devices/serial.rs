//! 8250 UARTs (vm-superio) whose output goes straight to one of sm-vmm's file descriptors
//! and whose interrupt is an irqfd.

use std::io::{self, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use vm_superio::serial::NoEvents;
use vm_superio::{Serial, Trigger};
use vmm_sys_util::eventfd::EventFd;

/// Raises the UART's interrupt by signalling its irqfd.
pub struct IrqTrigger(pub EventFd);

impl Trigger for IrqTrigger {
    type E = io::Error;

    fn trigger(&self) -> io::Result<()> {
        self.0.write(1)
    }
}

/// Unbuffered writes to a host file descriptor (a duplicate of stdout or stderr), so each
/// byte the guest sends is visible at once. A closed reader (EPIPE) drops output silently:
/// the guest must not stall because nobody listens.
pub struct FdWriter(pub OwnedFd);

impl Write for FdWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        loop {
            match nix::unistd::write(self.0.as_fd(), buf) {
                Ok(n) => return Ok(n),
                Err(nix::errno::Errno::EINTR) => continue,
                Err(nix::errno::Errno::EAGAIN) => wait_writable(self.0.as_fd()),
                Err(nix::errno::Errno::EPIPE) => return Ok(buf.len()),
                Err(e) => return Err(e.into()),
            }
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fn wait_writable(fd: BorrowedFd<'_>) {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    let mut fds = [PollFd::new(fd, PollFlags::POLLOUT)];
    let _ = poll(&mut fds, PollTimeout::from(100u16));
}

/// Written by sm-init to COM1's scratch register once the guest console is configured:
/// until then host input would be lost to the driver's FIFO reset or echoed back.
pub const CONSOLE_READY: u8 = 0x53;

/// One UART.
/// (The UART is crate-visible so `persist::devices` can save and restore it.)
pub struct SerialPort {
    pub(crate) uart: Serial<IrqTrigger, NoEvents, FdWriter>,
}

impl SerialPort {
    /// A UART writing to `out` and interrupting through `irq`.
    pub fn new(irq: EventFd, out: OwnedFd) -> Self {
        SerialPort {
            uart: Serial::new(IrqTrigger(irq), FdWriter(out)),
        }
    }

    /// Guest read of register `offset`.
    pub fn read(&mut self, offset: u8) -> u8 {
        self.uart.read(offset)
    }

    /// Guest write of register `offset`; output errors are dropped (see [`FdWriter`]).
    pub fn write(&mut self, offset: u8, value: u8) {
        if let Err(e) = self.uart.write(offset, value) {
            tracing::debug!("serial write: {e:?}");
        }
    }

    /// Whether the guest is ready for input: its driver enabled the receive interrupt and
    /// sm-init marked the console configured.
    pub fn accepts_input(&self) -> bool {
        let state = self.uart.state();
        state.scratch == CONSOLE_READY && state.interrupt_enable & 1 != 0
    }

    /// Queues host input for the guest; returns how many bytes fit in the receive FIFO.
    pub fn enqueue_input(&mut self, bytes: &[u8]) -> usize {
        let room = self.uart.fifo_capacity().min(bytes.len());
        if room == 0 {
            return 0;
        }
        self.uart.enqueue_raw_bytes(&bytes[..room]).unwrap_or(0)
    }
}

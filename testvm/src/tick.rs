//! The host's tick: one byte every [`INTERVAL`] on the virtio-serial port `sm.tick`, which the
//! test VM's init reads and drops, so that L1 gets a device interrupt at least that often.
//!
//! QEMU 7.2 (Debian 12's) clears `CPU_INTERRUPT_VIRQ` on every nested #VMEXIT with an unlocked
//! read-modify-write of the vCPU's `interrupt_request` (`do_vmexit`, svm_helper.c; later QEMU
//! uses the locked `cpu_reset_interrupt`), which races with the I/O thread raising
//! `CPU_INTERRUPT_POLL` for a new APIC interrupt: the interrupt stays in the APIC's IRR and the
//! vCPU is never told. When that interrupt is L1's one-shot timer and L1 is idle, L1 halts for
//! good (the "frozen" test VM: `info lapic` shows the timer vector in IRR, `info registers` an
//! idle `HLT=1` with IF set). Any later interrupt through the APIC raises the POLL again and
//! delivers both, so with this tick a lost interrupt waits at most one interval, while L1 keeps
//! its high-resolution, tickless timers (a periodic L1 tick, `highres=off nohz=off`, recovered
//! too, but gave everything measured in the test VM Debian's 4 ms timer granularity).

use std::io::{ErrorKind, Write};
use std::os::unix::net::UnixStream;
use std::thread;
use std::time::Duration;

/// How long an interrupt QEMU lost waits at most for the next byte.
pub const INTERVAL: Duration = Duration::from_millis(10);

/// Writes a byte into `host_end` (the peer of QEMU's `sm.tick` chardev) every [`INTERVAL`]
/// until QEMU closes its end. Nothing ever blocks on a test VM that does not read: a full
/// socket buffer drops the byte.
pub fn spawn(host_end: UnixStream) -> std::io::Result<()> {
    host_end.set_nonblocking(true)?;
    thread::Builder::new()
        .name("tick".into())
        .spawn(move || loop {
            thread::sleep(INTERVAL);
            match (&host_end).write(&[0]) {
                Ok(_) => {}
                Err(e)
                    if e.kind() == ErrorKind::WouldBlock || e.kind() == ErrorKind::Interrupted => {}
                Err(_) => return, // QEMU exited.
            }
        })?;
    Ok(())
}

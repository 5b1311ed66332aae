//! Talking to sm-vmm through I/O ports: the console-ready mark (so host input is not lost
//! to the UART's FIFO reset or echoed before the console is configured) and the exit status,
//! then poweroff.

/// The exit-status port sm-vmm listens on (layout::EXIT_STATUS_PORT in sm-vmm).
const EXIT_STATUS_PORT: u16 = 0xf4;
/// COM1's scratch register.
const COM1_SCRATCH_PORT: u16 = 0x3f8 + 7;
/// What sm-init writes to COM1's scratch register once the console is configured
/// (devices::serial::CONSOLE_READY in sm-vmm).
const CONSOLE_READY: u8 = 0x53;
/// Status reported when sm-init itself could not start the command.
pub const STATUS_INIT_FAILED: u8 = 125;

/// Writes one byte to an I/O port. sm-init is root, so it grants itself port access with
/// iopl(3) (Debian's kernel has no /dev/port). The write happens in a short-lived child: if
/// the platform faults it (seen with BIOS-booted guests under nested software emulation),
/// the child dies, not PID 1.
fn outb(port: u16, value: u8) {
    use nix::sys::wait::{waitpid, WaitStatus};
    use nix::unistd::{fork, ForkResult};
    // SAFETY: sm-init is single-threaded, so the child may run any code; it only calls
    // iopl, executes one `out` and exits.
    match unsafe { fork() } {
        Ok(ForkResult::Child) => {
            // SAFETY: iopl only changes this process's I/O privilege level; we are root.
            if unsafe { libc::iopl(3) } == 0 {
                // SAFETY: iopl(3) granted port access; an `out` touches no memory of ours.
                unsafe {
                    std::arch::asm!("out dx, al", in("dx") port, in("al") value, options(nomem, nostack, preserves_flags));
                }
                std::process::exit(0);
            }
            std::process::exit(1);
        }
        Ok(ForkResult::Parent { child }) => match waitpid(child, None) {
            Ok(WaitStatus::Exited(_, 0)) => {}
            other => {
                crate::setup::log_error(&format!("cannot write I/O port {port:#x}: {other:?}"))
            }
        },
        Err(e) => crate::setup::log_error(&format!("cannot write I/O port {port:#x}: fork: {e}")),
    }
}

/// Tells sm-vmm the console is configured and may receive host input.
pub fn console_ready() {
    outb(COM1_SCRATCH_PORT, CONSOLE_READY);
}

/// Kills what is left, syncs, reports `status` and powers the VM off. Never returns.
pub fn power_off(status: u8) -> ! {
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(-1),
        nix::sys::signal::Signal::SIGKILL,
    );
    while nix::sys::wait::wait().is_ok() {}
    nix::unistd::sync();
    outb(EXIT_STATUS_PORT, status);
    let _ = nix::sys::reboot::reboot(nix::sys::reboot::RebootMode::RB_POWER_OFF);
    // reboot() only returns on failure; there is nothing left to do but wait.
    loop {
        std::thread::park();
    }
}

//! Ending the guest: report the exit status through sm-vmm's exit-status port, flush file
//! systems, power off.

/// The exit-status port sm-vmm listens on (layout::EXIT_STATUS_PORT in sm-vmm).
const EXIT_STATUS_PORT: u16 = 0xf4;
/// Status reported when sm-init itself could not start the command.
pub const STATUS_INIT_FAILED: u8 = 125;

fn report_status(status: u8) {
    // SAFETY: ioperm only changes this process's I/O permission bitmap; we are root (PID 1).
    if unsafe { libc::ioperm(EXIT_STATUS_PORT.into(), 1, 1) } != 0 {
        crate::setup::log_error("cannot report the exit status: ioperm failed");
        return;
    }
    // SAFETY: ioperm above granted access to exactly this port; writing it has no effect on
    // this process's memory. sm-vmm records the byte.
    unsafe {
        std::arch::asm!("out dx, al", in("dx") EXIT_STATUS_PORT, in("al") status, options(nomem, nostack, preserves_flags));
    }
}

/// Kills what is left, syncs, reports `status` and powers the VM off. Never returns.
pub fn power_off(status: u8) -> ! {
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(-1), nix::sys::signal::Signal::SIGKILL);
    while nix::sys::wait::wait().is_ok() {}
    nix::unistd::sync();
    report_status(status);
    let _ = nix::sys::reboot::reboot(nix::sys::reboot::RebootMode::RB_POWER_OFF);
    // reboot() only returns on failure; there is nothing left to do but wait.
    loop {
        std::thread::park();
    }
}

//! `sm-init`: PID 1 of an sm guest. It mounts the kernel file systems, loads the modules
//! the initramfs lists, configures the network sm asked for, runs the command sm-vmm passed (or an interactive shell) with its
//! stdout on COM1 and stderr on COM2, reaps every orphan, reports the command's exit status
//! to sm-vmm through the exit-status port, and powers the VM off. Meanwhile it serves the
//! host's agent requests over vsock (exec, files, TCP).

mod agent;
mod command;
mod hostio;
mod network;
mod reaper;
mod setup;

use std::process::ExitCode;

fn main() -> ExitCode {
    if std::process::id() != 1 {
        eprintln!(
            "sm-init: must run as PID 1 (the guest's init), not as PID {}",
            std::process::id()
        );
        return ExitCode::from(2);
    }
    // The boot-time clock starts with the kernel's timekeeping: this is the kernel's share
    // of the boot, on the clock the command's /proc/uptime reads too.
    let since_boot = nix::time::clock_gettime(nix::time::ClockId::CLOCK_BOOTTIME);
    let verbose = setup::verbose();
    if let Ok(t) = since_boot {
        let ms = t.tv_sec() as f64 * 1e3 + t.tv_nsec() as f64 / 1e6;
        setup::log_verbose(verbose, &format!("PID 1 at {ms:.1} ms of boot time"));
    }
    if let Err(e) = setup::mount_kernel_filesystems() {
        setup::log_error(&format!("mounting kernel file systems: {e}"));
    }
    setup::load_modules(verbose);
    let _ = nix::unistd::sethostname("sm");
    if let Err(e) = setup::loopback_up() {
        setup::log_error(&format!("bringing up the loopback interface: {e}"));
    }
    if let Err(e) = network::configure() {
        setup::log_error(&e);
    }
    agent::start(verbose);
    let status = match command::Launch::from_init_config() {
        Ok(launch) => launch.run(verbose),
        Err(e) => {
            setup::log_error(&e);
            hostio::STATUS_INIT_FAILED
        }
    };
    hostio::power_off(status)
}

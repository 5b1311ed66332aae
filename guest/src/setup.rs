//! Early guest set-up: kernel file systems, modules, logging to the console.

use std::fs::File;
use std::io::Write;

use nix::mount::{mount, MsFlags};

/// Where the initramfs lists modules to load, in dependency order, one path per line.
const MODULE_LIST: &str = "/etc/sm/modules";

/// Whether sm-vmm asked for verbose output (`sm.verbose=1` on the kernel command line).
pub fn verbose() -> bool {
    let _ = std::fs::create_dir_all("/proc");
    let _ = mount(
        Some("proc"),
        "/proc",
        Some("proc"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        None::<&str>,
    );
    std::fs::read_to_string("/proc/cmdline")
        .map(|c| c.split_whitespace().any(|w| w == "sm.verbose=1"))
        .unwrap_or(false)
}

/// Writes an error line to the guest's stderr port (COM2), which sm-vmm copies to its stderr.
pub fn log_error(msg: &str) {
    if let Ok(mut f) = File::options().write(true).open("/dev/ttyS1") {
        let _ = writeln!(f, "sm-init: {msg}");
    } else {
        eprintln!("sm-init: {msg}");
    }
}

/// Writes a progress line to the kernel console, only when verbose.
pub fn log_verbose(verbose: bool, msg: &str) {
    if verbose {
        log_error(msg);
    }
}

/// Mounts /proc, /sys, /dev (+ /dev/pts, /dev/shm), /tmp and /run.
pub fn mount_kernel_filesystems() -> nix::Result<()> {
    let nosuid = MsFlags::MS_NOSUID | MsFlags::MS_NODEV;
    let table: [(&str, &str, &str, MsFlags, Option<&str>); 6] = [
        ("sysfs", "/sys", "sysfs", nosuid | MsFlags::MS_NOEXEC, None),
        (
            "devtmpfs",
            "/dev",
            "devtmpfs",
            MsFlags::MS_NOSUID,
            Some("mode=0755"),
        ),
        (
            "devpts",
            "/dev/pts",
            "devpts",
            MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
            Some("gid=5,mode=620,ptmxmode=666"),
        ),
        ("tmpfs", "/dev/shm", "tmpfs", nosuid, Some("mode=1777")),
        ("tmpfs", "/tmp", "tmpfs", nosuid, Some("mode=1777")),
        ("tmpfs", "/run", "tmpfs", nosuid, Some("mode=0755")),
    ];
    for (src, target, fstype, flags, data) in table {
        let _ = std::fs::create_dir_all(target);
        match mount(Some(src), target, Some(fstype), flags, data) {
            Ok(()) | Err(nix::errno::Errno::EBUSY) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Loads each module listed in [`MODULE_LIST`] that was built for the running kernel; one
/// that fails is reported and skipped so the command still runs. The initramfs carries the
/// Debian kernel's modules under `/lib/modules/RELEASE/`; sm's own kernel has every driver
/// built in and another release, so on it nothing is loaded and nothing is tried.
pub fn load_modules(verbose: bool) {
    let Ok(list) = std::fs::read_to_string(MODULE_LIST) else {
        return;
    };
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let ours = format!("/lib/modules/{}/", release.trim());
    let (wanted, others): (Vec<&str>, Vec<&str>) = list
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .partition(|p| p.starts_with(&ours));
    if wanted.is_empty() && !others.is_empty() {
        log_verbose(
            verbose,
            &format!("kernel {} has no modules here: none loaded", release.trim()),
        );
    }
    for path in wanted {
        let result = File::open(path)
            .map_err(|e| nix::errno::Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO)))
            .and_then(|f| nix::kmod::finit_module(&f, c"", nix::kmod::ModuleInitFlags::empty()));
        match result {
            Ok(()) => log_verbose(verbose, &format!("loaded {path}")),
            Err(nix::errno::Errno::EEXIST) => {}
            Err(e) => log_error(&format!("cannot load module {path}: {e}")),
        }
    }
}

/// Brings the loopback interface up (the kernel leaves it down), so guest services can
/// listen on 127.0.0.1 and the agent can forward host connections to them.
pub fn loopback_up() -> std::io::Result<()> {
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    // SAFETY: plain socket(2); the result is checked before use.
    let raw = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if raw < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `raw` is a new descriptor nothing else owns.
    let sock = unsafe { OwnedFd::from_raw_fd(raw) };
    // SAFETY: ifreq is plain data; all-zero is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(b"lo\0") {
        *dst = *src as libc::c_char;
    }
    // SAFETY: SIOCGIFFLAGS/SIOCSIFFLAGS read and write only `req`, which outlives the calls;
    // the flags union member is the one these requests use.
    unsafe {
        if libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) < 0 {
            return Err(std::io::Error::last_os_error());
        }
        req.ifr_ifru.ifru_flags |= (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
        if libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &req) < 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

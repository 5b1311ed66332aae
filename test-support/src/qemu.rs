//! Booting the project's guest in QEMU (TCG, `-M microvm`) against a backend, with a shell
//! script as the guest's command.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use sm_vmm::initcfg::InitConfig;

/// Kernel command line for the guest (plus `tsc_early_khz`, measured).
const CMDLINE: &str =
    "console=ttyS1 reboot=a panic=-1 nomodeset 8250.nr_uarts=2 rdinit=/init quiet loglevel=4";

/// Longest a guest may run (TCG boots take 3-5 s, the longest test's guest 20 s).
const GUEST_TIMEOUT_SECS: u64 = 120;

/// Boots of a guest before a stall fails the test.
const BOOTS: u32 = 3;

/// What a guest run produced.
pub struct GuestRun {
    /// Exit status of the guest command (from sm-init via isa-debug-exit).
    pub status: i32,
    /// The command's stdout (ttyS0).
    pub stdout: String,
    /// The command's stderr (ttyS1, which is also the kernel console).
    pub stderr: String,
}

impl GuestRun {
    /// The value of the first `KEY=value` line of stdout.
    pub fn value(&self, key: &str) -> &str {
        let prefix = format!("{key}=");
        self.stdout
            .lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .unwrap_or_else(|| panic!("guest printed no {key}=: {self}"))
            .trim()
    }
}

impl std::fmt::Display for GuestRun {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "guest exit {}\n--- stdout\n{}\n--- stderr\n{}",
            self.status, self.stdout, self.stderr
        )
    }
}

/// The project's initramfs with `sh -c SCRIPT` appended as sm-init's command.
fn initrd_running(script: &str, out: &Path) {
    let base = sm_vmm::config::data_dir().join("guest/initramfs.img");
    let mut image =
        std::fs::read(&base).unwrap_or_else(|e| panic!("guest initramfs {}: {e}", base.display()));
    image.resize(image.len().next_multiple_of(4), 0);
    // With two vCPUs the guest's last line of output sometimes never reaches the host if
    // the VM exits right after it (seen without this backend too), so pause before exiting.
    let wrapped = format!("(\n{script}\n)\nstatus=$?\nsleep 0.3\nexit $status\n");
    let cfg = InitConfig {
        argv: Some(vec!["sh".into(), "-c".into(), wrapped.into()]),
        env: vec![],
    };
    image.extend(cfg.to_cpio().unwrap());
    std::fs::write(out, image).unwrap();
}

/// The host's TSC rate in kHz. A TCG guest reads the host's TSC; telling its kernel the rate
/// (`tsc_early_khz`) spares it the PIT calibration, which fails when the host is busy (microvm
/// has no HPET or ACPI PM timer to fall back on) and leaves the guest hung without a clock.
fn host_tsc_khz() -> u64 {
    let start = Instant::now();
    // SAFETY: rdtsc only reads the time-stamp counter.
    let c0 = unsafe { std::arch::x86_64::_rdtsc() };
    std::thread::sleep(Duration::from_millis(50));
    // SAFETY: as above.
    let c1 = unsafe { std::arch::x86_64::_rdtsc() };
    ((c1 - c0) as f64 / start.elapsed().as_secs_f64() / 1000.0) as u64
}

/// Fails loudly when QEMU is missing: these tests must not pass by skipping.
fn require_qemu() {
    let found = Command::new("qemu-system-x86_64")
        .arg("--version")
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        found,
        "qemu-system-x86_64 is required for this test (Debian: apt-get install qemu-system-x86)"
    );
}

/// Most guests running at once. One: with two, CI twice saw a guest print nothing at all
/// for minutes on this two-core machine (kernel warnings now reach the guest's stderr, so a
/// repeat shows where it stalls).
const MAX_GUESTS: usize = 1;

static GUESTS: (std::sync::Mutex<usize>, std::sync::Condvar) =
    (std::sync::Mutex::new(0), std::sync::Condvar::new());

/// One of [`MAX_GUESTS`] slots, held while a guest runs.
struct GuestSlot;

impl GuestSlot {
    fn take() -> GuestSlot {
        let mut n = GUESTS.0.lock().unwrap_or_else(|e| e.into_inner());
        while *n >= MAX_GUESTS {
            n = GUESTS.1.wait(n).unwrap_or_else(|e| e.into_inner());
        }
        *n += 1;
        GuestSlot
    }
}

impl Drop for GuestSlot {
    fn drop(&mut self) {
        *GUESTS.0.lock().unwrap_or_else(|e| e.into_inner()) -= 1;
        GUESTS.1.notify_one();
    }
}

/// Boots the guest in QEMU (TCG) with `vcpus` vCPUs and one vhost-user device on `socket`
/// (`device` is QEMU's `-device` value without its `chardev=`), runs `sh -c SCRIPT`, and
/// returns its output once the VM exits.
///
/// A guest that does not finish within [`GUEST_TIMEOUT_SECS`] is booted again, loudly
/// (`RETRY:` on stderr, with what QEMU's monitor says of it), up to [`BOOTS`] boots: TCG
/// guests on these machines have been seen to stop right after their virtio device
/// started, with no output at all, and stay stopped. The last timeout fails the test.
pub fn run_guest(dir: &Path, socket: &Path, device: &str, script: &str, vcpus: u32) -> GuestRun {
    require_qemu();
    let _slot = GuestSlot::take();
    let initrd = dir.join("initrd.img");
    initrd_running(script, &initrd);
    for attempt in 1..=BOOTS {
        match boot(dir, socket, device, &initrd, vcpus) {
            Ok(run) => return run,
            Err(stalled) if attempt < BOOTS => {
                eprintln!("RETRY: {stalled}\nRETRY: booting the guest once more");
            }
            Err(stalled) => panic!("{stalled} (boot {attempt} of {BOOTS})"),
        }
    }
    unreachable!("BOOTS is at least 1")
}

/// What QEMU's monitor says of a stalled guest: run state, vCPU registers (`HLT=1` is a
/// halted vCPU), the interrupt controllers, and each virtio device's rings as QEMU and the
/// backend see them. Best effort: an empty string when the monitor does not answer.
fn monitor_report(monitor: &Path) -> String {
    let Some(mut qemu) = sm_testvm::monitor::Monitor::connect(monitor) else {
        return String::new();
    };
    let mut report = qemu.report(sm_testvm::monitor::CPU_STATE);
    let devices = qemu.ask("info virtio");
    report += &devices;
    for path in devices
        .split_whitespace()
        .filter(|w| w.starts_with("/machine/"))
    {
        for queue in 0..2 {
            report += &qemu.ask(&format!("info virtio-queue-status {path} {queue}"));
        }
    }
    report
}

/// QEMU in TCG as `-M MACHINE` with the project's guest kernel, no default devices, and
/// its QMP monitor on `monitor` (for [`monitor_report`]). One TCG thread runs every vCPU:
/// with multi-threaded TCG, a two-vCPU guest stopped right after its first requests in four
/// CI runs. That is a guess, not a fix (one-vCPU guests have stalled too); it costs nothing,
/// and a two-vCPU guest still uses two queues, served by two backend threads.
fn microvm(machine: &str, monitor: &Path) -> Command {
    let mut qemu = Command::new("qemu-system-x86_64");
    qemu.args(["-M", machine, "-accel", "tcg,thread=single"])
        .args(["-nodefaults", "-no-user-config", "-nographic", "-no-reboot"])
        .arg("-qmp")
        .arg(format!("unix:{},server=on,wait=off", monitor.display()))
        .arg("-kernel")
        .arg(sm_vmm::config::data_dir().join("kernel/vmlinuz"));
    qemu
}

/// QEMU trace events written to its log (and so into a stalled guest's report): every
/// vhost-user message QEMU sends and reads (`req` is the message number: 11 GET_VRING_BASE,
/// 12 SET_VRING_KICK, 13 SET_VRING_CALL), the backend socket's events, the device's start
/// and stop, and the guest's status writes. Guests here have stalled with the backend
/// holding guest memory but no kick or call eventfd; this says which side stopped. A
/// handful of lines per boot: none of them is on the data path.
const VHOST_USER_TRACE: [&str; 6] = [
    "enable=vhost_user_write",
    "enable=vhost_user_read",
    "enable=vhost_user_event",
    "enable=vhost_dev_start",
    "enable=vhost_dev_stop",
    "enable=virtio_set_status",
];

/// One QEMU boot of `initrd`; `Err` (with the guest's output) if it did not finish in time.
fn boot(
    dir: &Path,
    socket: &Path,
    device: &str,
    initrd: &Path,
    vcpus: u32,
) -> Result<GuestRun, String> {
    let (out, err) = (dir.join("ttyS0.txt"), dir.join("ttyS1.txt"));
    let qemu_log = dir.join("qemu.log");
    let monitor = dir.join("qmp.sock");
    let _ = std::fs::remove_file(&monitor);
    let chardev = |id: &str, p: &Path| format!("file,id={id},path={}", p.display());
    let mut qemu = microvm("microvm,memory-backend=mem", &monitor)
        .args(["-smp", &vcpus.to_string(), "-m", "256"])
        .args(["-object", "memory-backend-memfd,id=mem,size=256M,share=on"])
        .args(["-chardev", &chardev("s0", &out), "-serial", "chardev:s0"])
        .args([
            "-chardev",
            &chardev("s1", &err),
            "-device",
            "isa-serial,chardev=s1",
        ])
        .args(["-device", "isa-debug-exit,iobase=0xf4,iosize=1"])
        .args([
            "-chardev",
            &format!("socket,id=c,path={}", socket.display()),
        ])
        .args(["-device", &format!("{device},chardev=c")])
        .args(VHOST_USER_TRACE.iter().flat_map(|e| ["-trace", e]))
        .arg("-initrd")
        .arg(initrd)
        .args([
            "-append",
            &format!("{CMDLINE} tsc_early_khz={}", host_tsc_khz()),
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        // A file, not a pipe: nobody reads QEMU's stderr until it exits, and a full pipe
        // would stop QEMU (and the guest) mid-run.
        .stderr(std::fs::File::create(&qemu_log).expect("creating the QEMU log"))
        .spawn()
        .expect("spawn qemu-system-x86_64");
    let status = match crate::process::wait_timeout(
        &mut qemu,
        Duration::from_secs(GUEST_TIMEOUT_SECS),
    ) {
        Some(status) => status,
        None => {
            let state = monitor_report(&monitor);
            let _ = qemu.kill();
            let _ = qemu.wait();
            let stdout = std::fs::read_to_string(&out).unwrap_or_default();
            let stderr = std::fs::read_to_string(&err).unwrap_or_default();
            let log = std::fs::read_to_string(&qemu_log).unwrap_or_default();
            return Err(format!("guest did not finish within {GUEST_TIMEOUT_SECS} s\n--- stdout\n{stdout}\n--- stderr\n{stderr}\n--- qemu\n{log}\n--- qemu monitor\n{state}"));
        }
    };
    let qemu_err = std::fs::read_to_string(&qemu_log).unwrap_or_default();
    let run = GuestRun {
        status: -1,
        stdout: std::fs::read_to_string(&out).unwrap_or_default(),
        stderr: std::fs::read_to_string(&err).unwrap_or_default(),
    };
    // isa-debug-exit: QEMU exits with (status << 1) | 1.
    match status.code() {
        Some(code) if code % 2 == 1 => Ok(GuestRun {
            status: code >> 1,
            ..run
        }),
        _ => panic!("QEMU ended with {status} without a guest status: {qemu_err}\n{run}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The report a stalled guest's failure carries reads QEMU's state through QMP: a
    /// guest whose kernel has no root to mount (and so waits for ever) is `running`, its
    /// vCPU registers and interrupt controllers show, and so do its virtio device's rings.
    #[test]
    fn a_stalled_guest_is_described_by_the_monitor() {
        require_qemu();
        let dir = tempfile::tempdir().unwrap();
        let monitor = dir.path().join("qmp.sock");
        let mut cmd = microvm("microvm", &monitor);
        cmd.args(["-m", "128", "-device", "virtio-rng-device"])
            .args(["-append", "panic=0 quiet"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let mut qemu = crate::process::spawn_listening(&mut cmd, &monitor);
        // Into the kernel's wait for a root file system.
        std::thread::sleep(Duration::from_secs(3));
        let report = monitor_report(&monitor);
        let _ = qemu.kill();
        let _ = qemu.wait();
        for want in [
            "VM status: running",
            "HLT=",
            "IRR",
            "[virtio-rng]",
            "queue_index:          0",
        ] {
            assert!(
                report.contains(want),
                "no {want:?} in the report:\n{report}"
            );
        }
    }
}

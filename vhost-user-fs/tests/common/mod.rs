//! Shared by the integration tests: start and stop the backend, and boot the project's guest
//! in QEMU (TCG, `-M microvm`) against it with a shell script as the guest's command.
//! (Adapted from sm-vhost-user-blk's test harness; the guest mounts the share at /mnt.)

#![allow(dead_code)] // Each test binary uses a different part.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use sm_vmm::initcfg::InitConfig;

/// Kernel command line for the guest (plus `tsc_early_khz`, measured).
const CMDLINE: &str =
    "console=ttyS1 reboot=a panic=-1 nomodeset 8250.nr_uarts=2 rdinit=/init quiet loglevel=0";

/// Longest a guest may run (TCG boots take 3-5 s; several may share two cores).
const GUEST_TIMEOUT_SECS: u64 = 60;

/// The backend binary under test.
pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_sm-vhost-user-fs"))
}

/// Polls `f` every 20 ms until it returns `Some`, or panics after `secs` seconds.
pub fn wait_for<T>(what: &str, secs: u64, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A running backend; killed (SIGTERM, then SIGKILL) when dropped.
pub struct Backend {
    child: Option<Child>,
    /// Its vhost-user socket.
    pub socket: PathBuf,
    log: PathBuf,
}

impl Backend {
    /// Starts the backend with `args` plus `--socket DIR/NAME.sock`; returns once the socket
    /// exists and, with the namespace sandbox, the sandboxed child is under seccomp.
    pub fn start(dir: &Path, name: &str, args: &[&str]) -> Backend {
        Backend::start_wrapped(dir, name, args, &[])
    }

    /// As [`Backend::start`], run through `wrapper` (e.g. `setpriv ...`), which must exec.
    pub fn start_wrapped(dir: &Path, name: &str, args: &[&str], wrapper: &[&str]) -> Backend {
        let socket = dir.join(format!("{name}.sock"));
        let log = dir.join(format!("{name}.log"));
        let mut cmd = match wrapper.split_first() {
            Some((first, rest)) => {
                let mut c = Command::new(first);
                c.args(rest).arg(bin());
                c
            }
            None => Command::new(bin()),
        };
        let child = cmd
            .arg("--socket")
            .arg(&socket)
            .args(args)
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(log.with_extension("stdout")).unwrap())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("spawn sm-vhost-user-fs");
        let mut b = Backend {
            child: Some(child),
            socket,
            log,
        };
        // `none` and `chroot` do not fork a sandboxed child.
        let sandboxed = !args
            .windows(2)
            .any(|w| w == ["--sandbox", "none"] || w == ["--sandbox", "chroot"]);
        wait_for("the backend to listen", 10, || {
            if let Some(status) = b.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("backend exited early ({status}): {}", b.log());
            }
            let ready = b.socket.exists() && (!sandboxed || b.sandboxed_pid().is_some());
            ready.then_some(())
        });
        b
    }

    /// PID of the process started.
    pub fn pid(&self) -> i32 {
        self.child.as_ref().unwrap().id() as i32
    }

    /// PID of the sandboxed serving process, once it is under seccomp.
    pub fn sandboxed_pid(&self) -> Option<i32> {
        let pid = self.pid();
        let children = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).ok()?;
        let child: i32 = children.split_whitespace().next()?.parse().ok()?;
        proc_status(child)
            .contains("\nSeccomp:\t2\n")
            .then_some(child)
    }

    /// What the backend wrote to stdout so far (it should write nothing).
    pub fn stdout(&self) -> String {
        std::fs::read_to_string(self.log.with_extension("stdout")).unwrap_or_default()
    }

    /// What the backend wrote to stderr so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Sends SIGTERM and waits for the exit.
    pub fn stop(mut self) -> ExitStatus {
        self.terminate()
    }

    fn terminate(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("running");
        // SAFETY: signalling our own child process.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status;
            }
            if Instant::now() > deadline {
                let _ = child.kill(); // The sandboxed child follows (PDEATHSIG).
                return child.wait().unwrap();
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- backend log\n{}", self.log());
        }
        if self.child.is_some() {
            self.terminate();
        }
    }
}

/// `/proc/PID/status`, or an empty string.
pub fn proc_status(pid: i32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default()
}

/// Lowercase hex SHA-256 of a file.
pub fn sha256_file(path: &Path) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(std::fs::read(path).unwrap())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

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

/// Most guests booting at once: TCG guests on a two-core machine time out when every test
/// boots one in parallel.
const MAX_GUESTS: usize = 2;

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

/// Tag the guest mounts.
pub const TAG: &str = "share";

/// Boots the guest in QEMU (TCG) with one vhost-user-fs device (tag [`TAG`]) on `socket`,
/// runs `sh -c SCRIPT`, and returns its output once the VM exits.
pub fn run_guest(dir: &Path, socket: &Path, script: &str) -> GuestRun {
    let vcpus = 1;
    require_qemu();
    let _slot = GuestSlot::take();
    let kernel = sm_vmm::config::data_dir().join("kernel/vmlinuz");
    let initrd = dir.join("initrd.img");
    initrd_running(script, &initrd);
    let (out, err) = (dir.join("ttyS0.txt"), dir.join("ttyS1.txt"));
    let chardev = |id: &str, p: &Path| format!("file,id={id},path={}", p.display());
    let mut qemu = Command::new("qemu-system-x86_64")
        .args(["-M", "microvm,memory-backend=mem", "-accel", "tcg"])
        .args(["-smp", &vcpus.to_string(), "-m", "256"])
        .args(["-object", "memory-backend-memfd,id=mem,size=256M,share=on"])
        .args(["-nodefaults", "-no-user-config", "-nographic", "-no-reboot"])
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
        .args([
            "-device",
            &format!("vhost-user-fs-device,chardev=c,tag={TAG}"),
        ])
        .arg("-kernel")
        .arg(&kernel)
        .arg("-initrd")
        .arg(&initrd)
        .args([
            "-append",
            &format!("{CMDLINE} tsc_early_khz={}", host_tsc_khz()),
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn qemu-system-x86_64");
    let deadline = Instant::now() + Duration::from_secs(GUEST_TIMEOUT_SECS);
    let status = loop {
        if let Some(s) = qemu.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = qemu.kill();
            let _ = qemu.wait();
            let stdout = std::fs::read_to_string(&out).unwrap_or_default();
            let stderr = std::fs::read_to_string(&err).unwrap_or_default();
            panic!("guest did not finish within {GUEST_TIMEOUT_SECS} s\n--- stdout\n{stdout}\n--- stderr\n{stderr}");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut qemu_err = String::new();
    std::io::Read::read_to_string(&mut qemu.stderr.take().unwrap(), &mut qemu_err).unwrap();
    let run = GuestRun {
        status: -1,
        stdout: std::fs::read_to_string(&out).unwrap_or_default(),
        stderr: std::fs::read_to_string(&err).unwrap_or_default(),
    };
    // isa-debug-exit: QEMU exits with (status << 1) | 1.
    match status.code() {
        Some(code) if code % 2 == 1 => GuestRun {
            status: code >> 1,
            ..run
        },
        _ => panic!("QEMU ended with {status} without a guest status: {qemu_err}\n{run}"),
    }
}

//! Cold start: `sm-vmm -- true` with sm's own kernel (PVH, everything built in) against
//! sm-vmm with the Debian cloud kernel (bzImage, modules from the initramfs) and QEMU
//! (`-M microvm` with each kernel, `-M pc` with Debian's), same initramfs and memory,
//! interleaved, 10 runs each. Prints min / median / max and the ratios of medians, then the
//! guest's own view for each kernel booted by sm-vmm: from the kernel's start to PID 1 and
//! to the first command (both on the guest's boot-time clock).
//! Needs hardware-style KVM: `scripts/bench` runs it inside the test VM where the host's KVM
//! is PVM.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use sm_integration::bin_dir;
use sm_vmm::initcfg::InitConfig;

/// Runs per contender (`SM_BENCH_RUNS` overrides).
const RUNS: usize = 10;
const MEM_MIB: &str = "256";

fn data_dir() -> PathBuf {
    sm_vmm::config::data_dir()
}

/// The initramfs with `true` appended as the init configuration, which QEMU loads as a file
/// (sm-vmm appends the same archive in memory).
fn initrd_running_true(base: &Path, out: &Path) -> std::io::Result<()> {
    let cfg = InitConfig {
        argv: Some(vec!["true".into()]),
        env: vec![],
    };
    let extra = cfg.to_cpio().map_err(std::io::Error::other)?;
    std::fs::write(
        out,
        sm_vmm::boot::initrd_image(std::fs::read(base)?, &extra),
    )
}

struct Contender {
    name: &'static str,
    cmd: Command,
    /// Exit code of a successful run (QEMU's isa-debug-exit reports (status << 1) | 1).
    ok_code: i32,
    times: Vec<Duration>,
}

/// `sm-vmm` booting `kernel` with the benchmark's memory and `flags` to run `argv`.
fn sm_vmm(kernel: &Path, flags: &[&str], argv: &[&str]) -> Command {
    let mut c = Command::new(bin_dir().join("sm-vmm"));
    c.args(["--mem", MEM_MIB])
        .args(flags)
        .arg("--kernel")
        .arg(kernel)
        .arg("--")
        .args(argv);
    c
}

fn qemu(machine: &str, kernel: &Path, initrd: &Path) -> Command {
    let cmdline = sm_vmm::boot::kernel_cmdline(false, None).expect("cmdline");
    let mut c = Command::new("qemu-system-x86_64");
    c.args([
        "-M", machine, "-accel", "kvm", "-cpu", "host", "-m", MEM_MIB, "-smp", "1",
    ])
    .args(["-nodefaults", "-no-user-config", "-nographic", "-no-reboot"])
    .args(["-chardev", "null,id=s0", "-chardev", "null,id=s1"])
    .args([
        "-device",
        "isa-serial,chardev=s0",
        "-device",
        "isa-serial,chardev=s1",
    ])
    .args(["-device", "isa-debug-exit,iobase=0xf4,iosize=1"])
    .arg("-kernel")
    .arg(kernel)
    .arg("-initrd")
    .arg(initrd)
    .args(["-append", &cmdline]);
    c
}

fn stats(times: &[Duration]) -> (f64, f64, f64) {
    let mut ms: Vec<f64> = times.iter().map(|d| d.as_secs_f64() * 1000.0).collect();
    ms.sort_by(|a, b| a.partial_cmp(b).unwrap());
    (ms[0], ms[ms.len() / 2], ms[ms.len() - 1])
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return; // cargo bench --list / test discovery.
    }
    let ours = sm_vmm::config::default_kernel();
    let debian = sm_vmm::config::debian_kernel();
    let initrd = data_dir().join("guest/initramfs.img");
    let work = tempfile::tempdir().expect("tempdir");
    let qemu_initrd = work.path().join("initrd-true.img");
    initrd_running_true(&initrd, &qemu_initrd).expect("build QEMU initrd");

    let contender = |name, cmd, ok_code| Contender {
        name,
        cmd,
        ok_code,
        times: vec![],
    };
    let mut contenders = vec![
        contender("sm-vmm, sm kernel", sm_vmm(&ours, &[], &["true"]), 0),
        contender("sm-vmm, Debian", sm_vmm(&debian, &[], &["true"]), 0),
        contender(
            "microvm, sm kernel",
            qemu("microvm,acpi=off", &ours, &qemu_initrd),
            1,
        ),
        contender(
            "microvm, Debian",
            qemu("microvm,acpi=off", &debian, &qemu_initrd),
            1,
        ),
        // Under the test VM's nested emulation a BIOS-booted guest faults on user-mode port
        // I/O, so sm-init cannot report the status there and the guest just powers off.
        contender("qemu -M pc, Debian", qemu("pc", &debian, &qemu_initrd), 0),
    ];
    let runs = std::env::var("SM_BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(RUNS);
    for run in 0..runs {
        eprintln!("run {}/{runs}", run + 1);
        for c in contenders.iter_mut() {
            let start = Instant::now();
            let out = c.cmd.stdin(Stdio::null()).output().expect("spawn");
            let t = start.elapsed();
            assert_eq!(
                out.status.code(),
                Some(c.ok_code),
                "{} run {run} failed: {}",
                c.name,
                String::from_utf8_lossy(&out.stderr)
            );
            c.times.push(t);
        }
    }
    println!("cold start of `true` ({runs} runs each, interleaved, {MEM_MIB} MiB, 1 vCPU)");
    println!(
        "{:<20} {:>10} {:>10} {:>10}",
        "", "min ms", "median ms", "max ms"
    );
    for c in &contenders {
        let (min, med, max) = stats(&c.times);
        println!("{:<20} {min:>10.0} {med:>10.0} {max:>10.0}", c.name);
    }
    let med = |name: &str| stats(&contenders.iter().find(|c| c.name == name).unwrap().times).1;
    for (a, b) in [
        ("sm-vmm, sm kernel", "sm-vmm, Debian"),
        ("sm-vmm, sm kernel", "microvm, sm kernel"),
        ("sm-vmm, Debian", "microvm, Debian"),
        ("sm-vmm, Debian", "qemu -M pc, Debian"),
    ] {
        println!("ratio {a:<18} / {b:<20} {:.2}", med(a) / med(b));
    }
    guest_view(runs, &[("sm kernel", &ours), ("Debian", &debian)]);
}

/// The guest's own clock, for each kernel booted by sm-vmm: from the kernel's start to
/// PID 1 (sm-init's first look at the boot-time clock, which it logs with `sm.verbose=1`)
/// and to the command (its `/proc/uptime`), both on the boot-time clock, which starts with
/// the kernel's timekeeping; medians of `runs` boots each. The command is timed in quiet
/// boots of its own: the verbose lines cost UART exits. (printk timestamps are another
/// clock, sched_clock, which jumps when it is marked stable under nested virtualization.)
fn guest_view(runs: usize, kernels: &[(&str, &Path)]) {
    println!("guest's own clock (medians of {runs} boots by sm-vmm each)");
    println!("{:<20} {:>16} {:>16}", "", "to PID 1 ms", "to command ms");
    for (name, kernel) in kernels {
        let (mut to_init, mut to_cmd) = (vec![], vec![]);
        for _ in 0..runs {
            let out = sm_vmm(kernel, &[], &["cat", "/proc/uptime"])
                .stdin(Stdio::null())
                .output()
                .expect("spawn sm-vmm");
            let text = String::from_utf8_lossy(&out.stdout);
            let Some(uptime) = text
                .split_whitespace()
                .next()
                .and_then(|v| v.parse::<f64>().ok())
            else {
                panic!(
                    "{name}: no uptime in {text:?} ({})",
                    String::from_utf8_lossy(&out.stderr)
                );
            };
            to_cmd.push(Duration::from_secs_f64(uptime));
            // The kernel quiet, sm-init verbose.
            let out = sm_vmm(kernel, &["--cmdline-append", "sm.verbose=1"], &["true"])
                .stdin(Stdio::null())
                .output()
                .expect("spawn sm-vmm");
            let log = String::from_utf8_lossy(&out.stderr);
            let ms = log
                .lines()
                .find_map(|l| l.split("sm-init: PID 1 at ").nth(1))
                .and_then(|rest| rest.split_whitespace().next())
                .and_then(|v| v.parse::<f64>().ok());
            let Some(ms) = ms else {
                panic!("{name}: sm-init did not log its start: {log}");
            };
            to_init.push(Duration::from_secs_f64(ms / 1e3));
        }
        println!(
            "{name:<20} {:>16.0} {:>16.0}",
            stats(&to_init).1,
            stats(&to_cmd).1
        );
    }
}

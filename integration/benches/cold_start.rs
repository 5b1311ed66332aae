//! Cold start: `sm-vmm -- true` against QEMU (`-M microvm` and `-M pc`) booting the same
//! kernel and initramfs with the same memory, interleaved, 10 runs each. Prints min /
//! median / max and the ratio of medians. Needs hardware-style KVM: `scripts/bench` runs it
//! inside the test VM where the host's KVM is PVM.

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
    let kernel = data_dir().join("kernel/vmlinuz");
    let initrd = data_dir().join("guest/initramfs.img");
    let work = tempfile::tempdir().expect("tempdir");
    let qemu_initrd = work.path().join("initrd-true.img");
    initrd_running_true(&initrd, &qemu_initrd).expect("build QEMU initrd");

    let mut sm = Command::new(bin_dir().join("sm-vmm"));
    sm.args(["--mem", MEM_MIB, "--", "true"]);
    let mut contenders = vec![
        Contender {
            name: "sm-vmm",
            cmd: sm,
            ok_code: 0,
            times: vec![],
        },
        Contender {
            name: "qemu -M microvm",
            cmd: qemu("microvm,acpi=off", &kernel, &qemu_initrd),
            ok_code: 1,
            times: vec![],
        },
        // Under the test VM's nested emulation a BIOS-booted guest faults on user-mode port
        // I/O, so sm-init cannot report the status there and the guest just powers off.
        Contender {
            name: "qemu -M pc",
            cmd: qemu("pc", &kernel, &qemu_initrd),
            ok_code: 0,
            times: vec![],
        },
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
        "{:<18} {:>10} {:>10} {:>10}",
        "", "min ms", "median ms", "max ms"
    );
    for c in &contenders {
        let (min, med, max) = stats(&c.times);
        println!("{:<18} {min:>10.0} {med:>10.0} {max:>10.0}", c.name);
    }
    let sm_med = stats(&contenders[0].times).1;
    for c in &contenders[1..] {
        println!(
            "ratio sm-vmm / {:<16} {:.2}",
            c.name,
            sm_med / stats(&c.times).1
        );
    }
}

//! Footprint: the resident memory of one idle VM's processes, guest RAM not counted. One VM
//! (1 vCPU, 128 MiB) with one volume and one shared directory, its guest idle in
//! `sleep`, two ways, interleaved over a few rounds (medians):
//! - sm: sm-vmm, sm-vhost-user-blk, sm-vhost-user-fs (sandboxed as they run by default: the
//!   sandboxed child serves, the parent waits for it; both are shown);
//! - the peers: `qemu-system-x86_64 -M microvm` with the same kernel, initramfs, command
//!   line and devices (virtio-mmio), served by qemu-storage-daemon and virtiofsd.
//!
//! Rss and Pss are summed from `/proc/PID/smaps` over every mapping but the guest RAM: the
//! memfd both VMMs map it from (QEMU's `memory-backend-memfd`, which vhost-user needs), which
//! the backends map too. For each of sm's processes, where the memory is: heap, other
//! anonymous mappings (thread stacks, allocator arenas), the binary and libraries.
//!
//! Needs hardware-style KVM: `scripts/bench footprint` runs it inside the test VM where the
//! host's KVM is PVM. `SM_BENCH_RUNS` sets the rounds (default 3).

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use sm_integration::bench::{env_or, median};
use sm_integration::bin_dir;
use sm_test_support::process::spawn_listening;
use sm_vmm::initcfg::InitConfig;

const MEM_MIB: u64 = 128;
/// The goal for each process, KiB.
const GOAL_KIB: u64 = 5 * 1024;
/// The guest's command: a line once it runs, then idle.
const GUEST: [&str; 3] = ["sh", "-c", "echo up; exec sleep 100000"];
/// How long a boot may take (the test VM runs nested guests slowly).
const BOOT_LIMIT: Duration = Duration::from_secs(120);
/// How long an idle guest is left before its processes are read.
const SETTLE: Duration = Duration::from_secs(2);

/// Resident memory of one process, guest RAM excluded, KiB.
#[derive(Clone, Default)]
struct Footprint {
    rss: u64,
    pss: u64,
    /// Rss by kind of mapping (`[heap]`, `anon`, `file`, `[stack]`...).
    by_kind: BTreeMap<String, u64>,
    threads: u64,
}

/// Reads `/proc/PID/smaps`, leaving out memfd mappings (guest RAM).
fn footprint(pid: u32) -> Footprint {
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps"))
        .unwrap_or_else(|e| panic!("/proc/{pid}/smaps: {e}"));
    let mut f = Footprint::default();
    let mut kind = String::new();
    let mut skip = false;
    for line in smaps.lines() {
        let mut words = line.split_whitespace();
        let first = words.next().unwrap_or("");
        if first.contains('-') && !first.ends_with(':') {
            // A mapping's header: range perms offset dev inode [path].
            let path = line.split_whitespace().nth(5).unwrap_or("");
            skip = path.starts_with("/memfd:");
            kind = match path {
                "" => "anon".into(),
                p if p.starts_with('[') => p.into(),
                _ => "file".into(),
            };
            continue;
        }
        if skip {
            continue;
        }
        let kib = || words.clone().next().and_then(|v| v.parse::<u64>().ok());
        match first {
            "Rss:" => {
                let v = kib().unwrap_or(0);
                f.rss += v;
                *f.by_kind.entry(kind.clone()).or_default() += v;
            }
            "Pss:" => f.pss += kib().unwrap_or(0),
            _ => {}
        }
    }
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    f.threads = status
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    f
}

/// The first child of `pid` (a sandboxed backend's serving process).
fn child_of(pid: u32) -> Option<u32> {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Processes killed when dropped.
struct Procs(Vec<Child>);

impl Drop for Procs {
    fn drop(&mut self) {
        for c in self.0.iter_mut().rev() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn backend(mut cmd: Command, socket: &Path) -> Child {
    spawn_listening(
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
        socket,
    )
}

/// Waits until `poll` sees the guest's line, then lets the guest settle; false if the line
/// did not come within [`BOOT_LIMIT`].
fn wait_up(what: &str, mut poll: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while !poll() {
        if start.elapsed() > BOOT_LIMIT {
            eprintln!("{what}: the guest did not print its line within {BOOT_LIMIT:?}");
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(SETTLE);
    true
}

/// Boots with `stack` until a guest comes up: nested guests in the test VM now and then
/// hang at boot (README, "Where guests run"); a third hang panics.
fn sample(what: &str, mut stack: impl FnMut() -> Option<Sample>) -> Sample {
    for attempt in 1..=3 {
        if let Some(s) = stack() {
            return s;
        }
        eprintln!("RETRIED (not counted): {what}, attempt {attempt}");
    }
    panic!("{what}: no guest came up in 3 attempts")
}

/// One stack's processes by role, measured once its guest is idle.
type Sample = Vec<(&'static str, Footprint)>;

fn sm_stack(dir: &Path) -> Option<Sample> {
    let blk_sock = dir.join("blk.sock");
    let fs_sock = dir.join("fs.sock");
    let mut blk = Command::new(bin_dir().join("sm-vhost-user-blk"));
    blk.arg("--socket")
        .arg(&blk_sock)
        .arg("--file")
        .arg(dir.join("vol.img"))
        .args(["--size-mib", "64"]);
    let mut fs = Command::new(bin_dir().join("sm-vhost-user-fs"));
    fs.arg("--socket")
        .arg(&fs_sock)
        .arg("--shared-dir")
        .arg(dir.join("shared"))
        .args(["--tag", "shared"]);
    let mut procs = Procs(vec![backend(blk, &blk_sock), backend(fs, &fs_sock)]);
    let vmm = Command::new(bin_dir().join("sm-vmm"))
        .args(["--vcpus", "1", "--mem", &MEM_MIB.to_string()])
        .arg("--blk-socket")
        .arg(&blk_sock)
        .arg("--fs-socket")
        .arg(format!("shared={}", fs_sock.display()))
        .arg("--")
        .args(GUEST)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn sm-vmm");
    procs.0.push(vmm);
    let stdout = procs.0[2].stdout.take().expect("sm-vmm stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if line.trim() == "up" {
                let _ = tx.send(());
            }
        }
    });
    if !wait_up("sm-vmm", || rx.try_recv().is_ok()) {
        return None;
    }
    let pid = |i: usize| procs.0[i].id();
    let sandboxed = |i: usize| child_of(pid(i)).expect("the backend's sandboxed child");
    Some(vec![
        ("sm-vmm", footprint(pid(2))),
        ("sm-vhost-user-blk", footprint(sandboxed(0))),
        ("sm-vhost-user-blk parent", footprint(pid(0))),
        ("sm-vhost-user-fs", footprint(sandboxed(1))),
        ("sm-vhost-user-fs parent", footprint(pid(1))),
    ])
}

fn qemu_stack(dir: &Path, kernel: &Path, initrd: &Path) -> Option<Sample> {
    let blk_sock = dir.join("qsd.sock");
    let fs_sock = dir.join("virtiofsd.sock");
    let mut qsd = Command::new("qemu-storage-daemon");
    qsd.arg("--blockdev")
        .arg(format!(
            "file,filename={},node-name=d",
            dir.join("vol.img").display()
        ))
        .arg("--export")
        .arg(format!(
            "type=vhost-user-blk,id=e,node-name=d,addr.type=unix,addr.path={},writable=on",
            blk_sock.display()
        ));
    let mut fs = Command::new("virtiofsd");
    // Its own sandbox needs privileges the test VM's root has; `none` keeps it one process
    // like qemu-storage-daemon (a namespace sandbox adds a small waiting parent).
    fs.arg("--socket-path")
        .arg(&fs_sock)
        .arg("--shared-dir")
        .arg(dir.join("shared"))
        .args(["--sandbox", "none", "--seccomp", "none"]);
    let mut procs = Procs(vec![backend(qsd, &blk_sock), backend(fs, &fs_sock)]);
    let console = dir.join("qemu-ttyS0.txt");
    let _ = std::fs::remove_file(&console);
    let cmdline = sm_vmm::boot::kernel_cmdline(false, None).expect("cmdline");
    let chardev = |id: &str, p: &Path| format!("file,id={id},path={}", p.display());
    let qemu = Command::new("qemu-system-x86_64")
        .args(["-M", "microvm,acpi=off,memory-backend=mem", "-accel", "kvm"])
        .args(["-cpu", "host", "-smp", "1", "-m", &MEM_MIB.to_string()])
        .args([
            "-object",
            &format!("memory-backend-memfd,id=mem,size={MEM_MIB}M,share=on"),
        ])
        .args(["-nodefaults", "-no-user-config", "-nographic", "-no-reboot"])
        // virtio-mmio version 2, as sm-vmm's: on the legacy transport (microvm's default)
        // sm's kernel offers no VERSION_1 and qemu-storage-daemon's libvhost-user refuses
        // the device, so the guest never came up.
        .args(["-global", "virtio-mmio.force-legacy=false"])
        .args(["-chardev", &chardev("s0", &console)])
        .args(["-chardev", "null,id=s1"])
        .args(["-device", "isa-serial,chardev=s0"])
        .args(["-device", "isa-serial,chardev=s1"])
        .arg("-chardev")
        .arg(format!("socket,id=blk,path={}", blk_sock.display()))
        .args(["-device", "vhost-user-blk,chardev=blk"])
        .arg("-chardev")
        .arg(format!("socket,id=fs,path={}", fs_sock.display()))
        .args(["-device", "vhost-user-fs-device,chardev=fs,tag=shared"])
        .arg("-kernel")
        .arg(kernel)
        .arg("-initrd")
        .arg(initrd)
        .args(["-append", &cmdline])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn qemu-system-x86_64");
    procs.0.push(qemu);
    let up = wait_up("qemu", || {
        std::fs::read_to_string(&console).is_ok_and(|s| s.lines().any(|l| l.trim() == "up"))
    });
    if !up {
        return None;
    }
    let pid = |i: usize| procs.0[i].id();
    Some(vec![
        ("qemu -M microvm", footprint(pid(2))),
        ("qemu-storage-daemon", footprint(pid(0))),
        ("virtiofsd", footprint(pid(1))),
    ])
}

/// The initramfs with the guest command appended, which QEMU loads as a file (sm-vmm
/// appends the same archive in memory).
fn initrd_running_guest(out: &Path) {
    let base = sm_vmm::config::data_dir().join("guest/initramfs.img");
    let cfg = InitConfig {
        argv: Some(GUEST.iter().map(|a| (*a).into()).collect()),
        env: vec![],
    };
    let extra = cfg.to_cpio().expect("init config");
    let image = std::fs::read(&base).unwrap_or_else(|e| panic!("{}: {e}", base.display()));
    std::fs::write(out, sm_vmm::boot::initrd_image(image, &extra)).expect("write initrd");
}

/// Median of each field over the rounds, by process.
fn medians(rounds: &[Sample], name: &str) -> Footprint {
    let all: Vec<&Footprint> = rounds
        .iter()
        .flat_map(|r| r.iter().filter(|(n, _)| *n == name).map(|(_, f)| f))
        .collect();
    let med = |get: &dyn Fn(&Footprint) -> u64| {
        median(all.iter().map(|f| get(f) as f64).collect()) as u64
    };
    let kinds: std::collections::BTreeSet<&String> =
        all.iter().flat_map(|f| f.by_kind.keys()).collect();
    Footprint {
        rss: med(&|f| f.rss),
        pss: med(&|f| f.pss),
        threads: med(&|f| f.threads),
        by_kind: kinds
            .into_iter()
            .map(|k| (k.clone(), med(&|f| f.by_kind.get(k).copied().unwrap_or(0))))
            .collect(),
    }
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return; // cargo bench --list / test discovery.
    }
    let rounds: usize = env_or("SM_BENCH_RUNS", 3);
    let kernel = sm_vmm::config::default_kernel();
    let work = tempfile::tempdir().expect("tempdir");
    let dir = work.path();
    std::fs::create_dir(dir.join("shared")).expect("shared dir");
    std::fs::write(dir.join("shared/hello"), "hello\n").expect("shared file");
    std::fs::File::create(dir.join("vol.img"))
        .and_then(|f| f.set_len(64 << 20))
        .expect("volume");
    let initrd = dir.join("initrd-idle.img");
    initrd_running_guest(&initrd);

    let (mut sm, mut peers) = (vec![], vec![]);
    for round in 0..rounds {
        eprintln!("round {}/{rounds}", round + 1);
        sm.push(sample("sm", || sm_stack(dir)));
        peers.push(sample("qemu", || qemu_stack(dir, &kernel, &initrd)));
    }

    println!(
        "footprint of one idle VM ({MEM_MIB} MiB, 1 vCPU, one volume, one share), guest RAM \
         excluded; medians of {rounds} rounds"
    );
    println!(
        "{:<26} {:>8} {:>8} {:>4}   {:<20} {:>8} {:>8} {:>6} {:>6}",
        "process", "Rss KiB", "Pss KiB", "thr", "peer", "Rss KiB", "Pss KiB", "ratio", "goal"
    );
    let pairs = [
        ("sm-vmm", Some("qemu -M microvm")),
        ("sm-vhost-user-blk", Some("qemu-storage-daemon")),
        ("sm-vhost-user-blk parent", None),
        ("sm-vhost-user-fs", Some("virtiofsd")),
        ("sm-vhost-user-fs parent", None),
    ];
    let (mut over, mut all) = (vec![], vec![]);
    for (name, peer) in pairs {
        let m = medians(&sm, name);
        let ok = m.rss <= GOAL_KIB;
        if !ok {
            over.push(name);
        }
        all.push((name, m.clone()));
        let (peer_name, peer_rss, peer_pss, ratio) = match peer {
            Some(p) => {
                let pm = medians(&peers, p);
                all.push((p, pm.clone()));
                let ratio = format!("{:.2}", m.rss as f64 / pm.rss.max(1) as f64);
                (p, pm.rss.to_string(), pm.pss.to_string(), ratio)
            }
            None => ("", String::new(), String::new(), String::new()),
        };
        println!(
            "{name:<26} {:>8} {:>8} {:>4}   {peer_name:<20} {peer_rss:>8} {peer_pss:>8} {ratio:>6} {:>6}",
            m.rss,
            m.pss,
            m.threads,
            if ok { "ok" } else { "over" }
        );
    }
    // The whole VM: the sum of each round's processes, median over the rounds.
    let total = |rounds: &[Sample], f: &dyn Fn(&Footprint) -> u64| {
        median(
            rounds
                .iter()
                .map(|r| r.iter().map(|(_, p)| f(p)).sum::<u64>() as f64)
                .collect(),
        ) as u64
    };
    let (sm_rss, qemu_rss) = (total(&sm, &|f| f.rss), total(&peers, &|f| f.rss));
    println!(
        "{:<26} {sm_rss:>8} {:>8} {:>4}   {:<20} {qemu_rss:>8} {:>8} {:>6.2}",
        "whole VM (sum)",
        total(&sm, &|f| f.pss),
        "",
        "qemu + both daemons",
        total(&peers, &|f| f.pss),
        sm_rss as f64 / qemu_rss.max(1) as f64
    );
    println!("(ratio: Rss / the peer's Rss; goal: Rss <= {GOAL_KIB} KiB)");
    for (name, m) in &all {
        let kinds: Vec<String> = m
            .by_kind
            .iter()
            .filter(|(_, v)| **v > 0)
            .map(|(k, v)| format!("{k} {v}"))
            .collect();
        println!(
            "{name}: Rss KiB by mapping: {} ({} threads)",
            kinds.join(", "),
            m.threads
        );
    }
    if over.is_empty() {
        println!("verdict: every process is within {GOAL_KIB} KiB");
    } else {
        println!(
            "verdict: above {GOAL_KIB} KiB: {} (see the mappings above)",
            over.join(", ")
        );
    }
}

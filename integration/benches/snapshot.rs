//! Snapshot and restore against a cold boot, side by side in one run. Every VM is
//! `sm-vmm --mem 256` with a fresh `vhost-device-vsock` and sm's agent, running
//! `sh -c 'sleep 3600'`:
//! - cold: backend and VM started until the first agent exec of `true` returns;
//! - the snapshot of a running VM: downtime (pause sent to resume answered), the
//!   `PUT /vm/snapshot` alone, its size on disk (allocated) and its memory file's apparent size;
//! - restore: a fresh backend and `sm-vmm --restore` until the first exec of `true` returns,
//!   interleaved with the cold boots (with the part until sm-vmm's API answers, and the two
//!   steps of it that grow with the guest's RAM timed on their own: `sm_snapshot::verify`
//!   and `sm_snapshot::restore_memory`), and 1, 4 and 8 restores started at once;
//! - memory: PSS (`/proc/PID/smaps_rollup`) of sm-vmm and of its backend, and the pages of
//!   sm-vmm's guest RAM memfd (PSS counts only those a process has touched through its
//!   mapping, so a restored clone's RAM is mostly missing from it), for a cold-booted VM, a
//!   restored one alone, and each of 4 clones running together.
//!
//! Needs hardware-style KVM: `scripts/bench snapshot` runs it inside the test VM where the
//! host's KVM is PVM. Environment: `SM_BENCH_RUNS` (cold boots and restores, default 20; at
//! most 5 snapshots and verifies), `SM_BENCH_VERBOSE` (guest consoles, backend debug logs).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use sm_agent::client::{Agent, ReadySignal};
use sm_agent::message::ExecRequest;
use sm_integration::bench::{env_or, memfd_kib, percentile};
use sm_integration::bin_dir;
use sm_snapshot::api::ApiClient;
use sm_test_support::process::spawn_listening;

/// Guest memory of every VM, in MiB (small, so 8 clones fit in the test VM).
const MEM_MIB: &str = "256";
/// How long a cold boot may take to answer its first exec.
const BOOT_LIMIT: Duration = Duration::from_secs(180);
/// How long a restore may take to answer its first exec.
const RESTORE_LIMIT: Duration = Duration::from_secs(60);
/// Pause between exec attempts on a VM that is being restored.
const RETRY: Duration = Duration::from_millis(5);

/// A process killed (and reaped) when dropped.
struct Proc(Child);

impl Proc {
    fn pid(&self) -> u32 {
        self.0.id()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// One running VM: its sm-vmm, its vsock backend and the agent behind the backend.
struct Vm {
    // Field order is drop order: the VM goes before its backend.
    vmm: Proc,
    backend: Proc,
    agent: Agent,
}

impl Vm {
    /// What sm-vmm and its backend use.
    fn memory(&self) -> Memory {
        let (vmm_pss, vmm_shmem) = pss_kib(self.vmm.pid());
        let (vsock_pss, vsock_shmem) = pss_kib(self.backend.pid());
        Memory {
            vmm_pss,
            vsock_pss,
            ram: memfd_kib(self.vmm.pid()),
            other: vmm_pss - vmm_shmem + vsock_pss - vsock_shmem,
        }
    }
}

/// A fresh vhost-device-vsock for the VM named `name` in `dir`; returns it and the agent's
/// Unix socket.
fn vsock_backend(dir: &Path, name: &str) -> (Proc, PathBuf) {
    let socket = dir.join(format!("{name}-vsock.sock"));
    let uds = dir.join(format!("{name}.vsock"));
    let mut cmd = Command::new("vhost-device-vsock");
    if verbose() {
        cmd.env("RUST_LOG", "debug");
    }
    cmd.args(["--guest-cid", "3", "--socket"])
        .arg(&socket)
        .arg("--uds-path")
        .arg(&uds)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join(format!("{name}-vsock.log"))).expect("log"));
    (Proc(spawn_listening(&mut cmd, &socket)), uds)
}

/// Whether `SM_BENCH_VERBOSE` asks for the guests' console and the backends' debug log (the
/// latter is shown when a restore fails).
fn verbose() -> bool {
    std::env::var_os("SM_BENCH_VERBOSE").is_some()
}

fn sm_vmm() -> Command {
    let mut cmd = Command::new(bin_dir().join("sm-vmm"));
    if verbose() {
        cmd.arg("--verbose");
    }
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
    cmd
}

fn exec_true(agent: &Agent) -> Result<(), String> {
    let out = agent
        .exec(
            &ExecRequest {
                argv: vec!["true".into()],
                ..Default::default()
            },
            None,
        )
        .map_err(|e| e.to_string())?;
    match out.exit.code {
        Some(0) => Ok(()),
        _ => Err(format!("`true` ended {:?}", out.exit)),
    }
}

/// Boots VM `name` (with the control API at `api`, if given) and returns it once the first
/// exec of `true` has returned, with the time that took from starting its backend.
fn cold_boot(dir: &Path, name: &str, api: Option<&Path>) -> (Vm, Duration) {
    let start = Instant::now();
    // The agent's ready signal must listen before the guest boots.
    let ready = ReadySignal::bind(&dir.join(format!("{name}.vsock"))).expect("ready signal");
    let (backend, uds) = vsock_backend(dir, name);
    let mut cmd = sm_vmm();
    cmd.args(["--mem", MEM_MIB, "--vsock-socket"])
        .arg(dir.join(format!("{name}-vsock.sock")));
    if let Some(api) = api {
        cmd.arg("--api-socket").arg(api);
    }
    cmd.args(["--", "sh", "-c", "sleep 3600"]);
    let vmm = Proc(cmd.spawn().expect("spawn sm-vmm"));
    ready
        .wait(BOOT_LIMIT)
        .unwrap_or_else(|e| panic!("cold boot {name}: {e}"));
    let agent = Agent::new(uds).with_io_timeout(Duration::from_secs(60));
    exec_true(&agent).unwrap_or_else(|e| panic!("cold boot {name}: {e}"));
    let took = start.elapsed();
    (
        Vm {
            vmm,
            backend,
            agent,
        },
        took,
    )
}

/// The memory of one VM, in KiB.
#[derive(Clone, Copy)]
struct Memory {
    /// sm-vmm's PSS (guest RAM counts only where mapped pages were touched through it).
    vmm_pss: u64,
    /// vhost-device-vsock's PSS.
    vsock_pss: u64,
    /// Pages allocated in sm-vmm's memfds (guest RAM), mapped or not.
    ram: u64,
    /// Both processes' PSS without shared memory (the memfds).
    other: u64,
}

impl Memory {
    /// What the VM costs: its guest RAM plus the two processes' own memory.
    fn total(&self) -> u64 {
        self.ram + self.other
    }
}

/// What one restore took, besides the time to its first exec.
struct Restore {
    vm: Vm,
    /// From its start to the first exec of `true` returning.
    took: Duration,
    /// From its start to sm-vmm's API answering (the restore done, vCPUs running).
    served: Duration,
    /// Exec attempts that failed before one answered.
    retries: u32,
}

/// Restores `snap` as VM `name` (a fresh backend and `sm-vmm --restore`) and returns it
/// once the first exec of `true` has returned; `start` is when the clock started.
fn restore(dir: &Path, name: &str, snap: &Path, start: Instant) -> Restore {
    let (backend, uds) = vsock_backend(dir, name);
    let api = dir.join(format!("{name}-api.sock"));
    let mut vmm = Proc(
        sm_vmm()
            .arg("--restore")
            .arg(snap)
            .arg("--vsock-socket")
            .arg(dir.join(format!("{name}-vsock.sock")))
            .arg("--api-socket")
            .arg(&api)
            .spawn()
            .expect("spawn sm-vmm --restore"),
    );
    // vhost-device-vsock loses a host connection that arrives before sm-vmm has handed it
    // the rings (it logs "Received a backend event before vring initialization" and never
    // answers a CONNECT again), so the first try waits for sm-vmm's API to answer: it is
    // served once the devices are restored and the vCPUs run.
    // (Connecting fails until the socket exists and listens.)
    while let Err(e) = ApiClient::new(&api).status() {
        if let Ok(Some(status)) = vmm.0.try_wait() {
            panic!("restore {name}: sm-vmm ended {status}");
        }
        assert!(start.elapsed() < RESTORE_LIMIT, "restore {name}: {e}");
        std::thread::sleep(Duration::from_millis(1));
    }
    let served = start.elapsed();
    let agent = Agent::new(uds).with_io_timeout(Duration::from_secs(60));
    let mut retries = 0;
    let mut errors: Vec<String> = vec![];
    // Right after the restore the guest's vsock device is reset: connections fail until the
    // agent's listener is reachable again.
    loop {
        match exec_true(&agent) {
            Ok(()) => break,
            Err(e) => {
                let e = format!("{:?}: {e}", start.elapsed());
                if errors.len() < 10 {
                    errors.push(e);
                } else {
                    errors[9] = e;
                }
                retries += 1;
                let exited = vmm.0.try_wait().ok().flatten();
                if exited.is_some() || start.elapsed() > RESTORE_LIMIT {
                    let log = std::fs::read_to_string(dir.join(format!("{name}-vsock.log")))
                        .unwrap_or_default();
                    let tail: Vec<&str> = log.lines().rev().take(20).collect();
                    panic!(
                        "restore {name}: no exec answered (sm-vmm {}); tries: {errors:#?}; \
                         vsock backend log, newest first: {tail:#?}",
                        exited.map_or("runs".to_string(), |s| s.to_string())
                    );
                }
                std::thread::sleep(RETRY);
            }
        }
    }
    let took = start.elapsed();
    Restore {
        vm: Vm {
            vmm,
            backend,
            agent,
        },
        took,
        served,
        retries,
    }
}

/// `n` restores of `snap` started at once; each one's time to its first exec.
fn restore_batch(dir: &Path, snap: &Path, n: usize) -> Vec<Restore> {
    let start = Instant::now();
    let threads: Vec<_> = (0..n)
        .map(|i| {
            let dir = dir.to_path_buf();
            let snap = snap.to_path_buf();
            std::thread::spawn(move || restore(&dir, &format!("batch{n}-{i}"), &snap, start))
        })
        .collect();
    // Every thread joined before any failure counts, so a failed restore still has the
    // others' VMs dropped (killed) here rather than left running.
    let joined: Vec<_> = threads.into_iter().map(|t| t.join()).collect();
    if joined.iter().any(Result::is_err) {
        drop(joined);
        panic!("a restore of the batch of {n} failed");
    }
    joined.into_iter().map(Result::unwrap).collect()
}

/// The `Pss:` and `Pss_Shmem:` lines of `/proc/PID/smaps_rollup`, in KiB.
fn pss_kib(pid: u32) -> (u64, u64) {
    let rollup = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))
        .unwrap_or_else(|e| panic!("/proc/{pid}/smaps_rollup: {e}"));
    let field = |name: &str| {
        rollup
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
    };
    let pss = field("Pss:").unwrap_or_else(|| panic!("no Pss in /proc/{pid}/smaps_rollup"));
    (pss, field("Pss_Shmem:").unwrap_or(0))
}

/// (allocated bytes, apparent bytes) of every file in `dir`, and of its memory file, and the
/// memory file's name.
fn snapshot_size(dir: &Path) -> ((u64, u64), (u64, u64), String) {
    use std::os::unix::fs::MetadataExt;
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("manifest.json")).expect("manifest"))
            .expect("manifest JSON");
    let memory = manifest["memory"]["file"]
        .as_str()
        .expect("manifest names its memory file")
        .to_string();
    let (mut total, mut mem) = ((0, 0), (0, 0));
    for entry in std::fs::read_dir(dir).expect("snapshot directory") {
        let entry = entry.expect("snapshot directory entry");
        let md = entry.metadata().expect("metadata");
        let size = (md.blocks() * 512, md.len());
        total = (total.0 + size.0, total.1 + size.1);
        if entry.file_name().to_str() == Some(memory.as_str()) {
            mem = size;
        }
    }
    (total, mem, memory)
}

fn median_u64(mut v: Vec<u64>) -> u64 {
    v.sort();
    v[v.len() / 2]
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return; // cargo bench --list / test discovery.
    }
    let runs: usize = env_or("SM_BENCH_RUNS", 20).max(1);
    let dir = tempfile::tempdir().expect("tempdir");
    let dir = dir.path();

    // The source: a cold boot too, untimed (the first guest in a test VM pays for warming
    // up QEMU's translation of the nested paths).
    eprintln!("booting the source VM");
    let api = dir.join("api.sock");
    let (source, _) = cold_boot(dir, "source", Some(&api));
    let client = ApiClient::new(&api);
    let (mut downtime, mut put_snapshot) = (vec![], vec![]);
    let mut snaps = vec![];
    for i in 0..runs.min(5) {
        let snap = dir.join(format!("snap{i}"));
        let t0 = Instant::now();
        client.pause().expect("PUT /vm/pause");
        let t1 = Instant::now();
        client.snapshot(&snap, &[]).expect("PUT /vm/snapshot");
        let t2 = Instant::now();
        client.resume().expect("PUT /vm/resume");
        downtime.push(t0.elapsed());
        put_snapshot.push(t2 - t1);
        exec_true(&source.agent).expect("the source runs on after its snapshot");
        snaps.push(snap);
    }
    drop(source);
    let snap = snaps[0].clone();
    let ((disk, apparent), (mem_disk, mem_apparent), memory_file) = snapshot_size(&snap);
    for other in &snaps[1..] {
        std::fs::remove_dir_all(other).expect("removing an extra snapshot");
    }

    // The two steps of sm-vmm's restore that grow with the guest's RAM, in this process: the
    // sha256 check of every file, and filling a fresh memfd with the memory file's extents.
    let (mut verify, mut fill) = (vec![], vec![]);
    for _ in 0..runs.min(5) {
        let t = Instant::now();
        sm_snapshot::verify(&snap).expect("the snapshot verifies");
        verify.push(t.elapsed());
        let memory = std::fs::File::open(snap.join(&memory_file)).expect("memory file");
        let t = Instant::now();
        let memfd = sm_snapshot::restore_memory(&memory).expect("filling a memfd");
        fill.push(t.elapsed());
        drop(memfd);
    }

    // Cold boots and restores, interleaved.
    let (mut cold, mut warm, mut served, mut retries) = (vec![], vec![], vec![], vec![]);
    let (mut cold_pss, mut warm_pss) = (vec![], vec![]);
    for run in 0..runs {
        eprintln!("run {}/{runs}", run + 1);
        let (vm, took) = cold_boot(dir, &format!("cold{run}"), None);
        cold.push(took);
        cold_pss.push(vm.memory());
        drop(vm);
        let r = restore(dir, &format!("warm{run}"), &snap, Instant::now());
        warm.push(r.took);
        served.push(r.served);
        retries.push(r.retries as u64);
        warm_pss.push(r.vm.memory());
    }

    // Restores at once.
    let mut batches = vec![];
    let mut clone_pss = vec![];
    for n in [1, 4, 8] {
        eprintln!("{n} restores at once");
        let batch = restore_batch(dir, &snap, n);
        if n == 4 {
            clone_pss = batch.iter().map(|r| r.vm.memory()).collect();
        }
        let times: Vec<Duration> = batch.iter().map(|r| r.took).collect();
        batches.push((n, times));
    }

    let cold_p50 = percentile(&cold, 0.5);
    println!(
        "snapshot and restore against a cold boot ({runs} runs, interleaved; sm-vmm --mem {MEM_MIB}, \
         1 vCPU, vhost-device-vsock, agent exec of `true`)"
    );
    println!(
        "{:<38} {:>5} {:>9} {:>9} {:>9}",
        "", "runs", "p50 ms", "p99 ms", "x cold"
    );
    println!(
        "{:<38} {:>5} {:>9.0} {:>9.0} {:>9.2}",
        "cold boot -> first exec",
        cold.len(),
        cold_p50,
        percentile(&cold, 0.99),
        1.0
    );
    println!(
        "{:<38} {:>5} {:>9.0} {:>9.0} {:>9.3}",
        "restore -> first exec",
        warm.len(),
        percentile(&warm, 0.5),
        percentile(&warm, 0.99),
        percentile(&warm, 0.5) / cold_p50
    );
    println!(
        "{:<38} {:>5} {:>9.0} {:>9.0}",
        "  of which until sm-vmm's API answers",
        served.len(),
        percentile(&served, 0.5),
        percentile(&served, 0.99)
    );
    println!(
        "{:<38} {:>5} {:>9.0} {:>9.0}",
        "    sha256 of the snapshot (verify)",
        verify.len(),
        percentile(&verify, 0.5),
        percentile(&verify, 0.99)
    );
    println!(
        "{:<38} {:>5} {:>9.0} {:>9.0}",
        "    filling a memfd from it",
        fill.len(),
        percentile(&fill, 0.5),
        percentile(&fill, 0.99)
    );
    println!(
        "{:<38} {:>5} {:>9.0} {:>9.0}",
        "snapshot downtime (pause..resume)",
        downtime.len(),
        percentile(&downtime, 0.5),
        percentile(&downtime, 0.99)
    );
    println!(
        "{:<38} {:>5} {:>9.0} {:>9.0}",
        "  of which PUT /vm/snapshot",
        put_snapshot.len(),
        percentile(&put_snapshot, 0.5),
        percentile(&put_snapshot, 0.99)
    );
    println!(
        "restore retries before the first exec answered: median {}, max {}",
        median_u64(retries.clone()),
        retries.iter().max().unwrap()
    );
    println!();
    println!(
        "{:<38} {:>9} {:>9} {:>9}",
        "restores at once", "p50 ms", "max ms", "p50 x cold"
    );
    for (n, times) in &batches {
        println!(
            "{:<38} {:>9.0} {:>9.0} {:>9.3}",
            format!("{n}"),
            percentile(times, 0.5),
            percentile(times, 1.0),
            percentile(times, 0.5) / cold_p50
        );
    }
    println!();
    println!(
        "snapshot size: {:.1} MiB on disk (allocated), {:.1} MiB apparent; memory file {:.1} MiB \
         allocated of {:.1} MiB",
        mib(disk),
        mib(apparent),
        mib(mem_disk),
        mib(mem_apparent)
    );
    println!();
    println!(
        "{:<36} {:>11} {:>10} {:>10} {:>10}",
        "memory per VM, MiB (median)", "sm-vmm PSS", "vsock PSS", "guest RAM", "total"
    );
    let row = |name: &str, mem: &[Memory]| {
        let median =
            |f: fn(&Memory) -> u64| median_u64(mem.iter().map(f).collect()) as f64 / 1024.0;
        println!(
            "{name:<36} {:>11.1} {:>10.1} {:>10.1} {:>10.1}",
            median(|m| m.vmm_pss),
            median(|m| m.vsock_pss),
            median(|m| m.ram),
            median(Memory::total),
        );
    };
    row("cold-booted VM", &cold_pss);
    row("restored VM alone", &warm_pss);
    row("each of 4 clones running", &clone_pss);
}

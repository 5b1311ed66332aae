//! Bake and pools against a cold `sm run`, side by side in one run. Every VM has 256 MiB
//! and 1 vCPU and runs the guest's own minimal root; the baked image runs `sleep 100000`
//! with a 64 MiB volume at /cache that its warm-up (library callback) fills with 500 files:
//! - bake: `sm::Image::build` the first time, and again with the same inputs (a cache hit);
//! - start to the first exec: `sm run --mem 256 -- true` (cold) and
//!   `sm run --snapshot NAME -- true` (a clone of the bake), each also without a network
//!   (`--net none`, and the same bake with `Network::None`: what passt and sm-vhost-user-net
//!   add to a boot and to a restore), a few runs each since each takes
//!   seconds, interleaved with each other and with pool cycles (acquire, exec of `true` until
//!   its output, release) from one caller; then pool cycles from 4 and 8 callers at once
//!   (threads sharing one pool, max 8). Two pools: one that hands a released VM out again
//!   as it was left (`restore_on_release: false`: paused, resumed by the next acquire),
//!   measured over many cycles; one that replaces each released VM with a fresh clone
//!   (`restore_on_release: true`), measured in rounds, each started once all 8 are ready
//!   again (a replacement restore takes seconds);
//! - how long `release()` blocks its caller, in both pools;
//! - memory: PSS (`/proc/PID/smaps_rollup`) of each pooled VM's processes (sm-vmm and its
//!   backends, and what runs under them, grouped by their runtime directory) with 8 VMs
//!   ready, and the pages of sm-vmm's guest RAM memfd (PSS counts only those touched
//!   through its mapping).
//!
//! Needs hardware-style KVM: `scripts/bench pool` runs it inside the test VM where the
//! host's KVM is PVM. Environment: `SM_BENCH_ACQUIRES` (pool cycles per caller count,
//! default 100; the `sm run` runs are an eighth of it, at least 3, and the fresh-clone
//! cycles a quarter of it, in rounds). A pool cycle also times `acquire()` alone and a
//! second exec in the same VM, to tell resuming from the exec itself.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Barrier, OnceLock};
use std::time::{Duration, Instant};

use sm_integration::bench::{env_or, memfd_kib, percentile};
use sm_integration::bin_dir;

/// Guest memory of every VM, in MiB.
const MEM_MIB: u64 = 256;
/// VMs of each pool (and the most callers at once).
const POOL_MAX: usize = 8;
/// Callers at once.
const CALLERS: [usize; 3] = [1, 4, 8];
/// How long an acquire, or a pool filling up, may take.
const LIMIT: Duration = Duration::from_secs(600);
/// The snapshot's name in the store.
const NAME: &str = "poolbench";
/// The same bake with `--net none`.
const OFFLINE: &str = "poolbench-offline";

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn median_u64(mut v: Vec<u64>) -> u64 {
    v.sort();
    v[v.len() / 2]
}

/// Runs `sm ARGS` to its end and returns how long it took. A run that fails is said on
/// stderr and run again, twice at most (nested guests in the test VM now and then wait
/// forever for an interrupt: README, "Where guests run"); a third failure panics.
fn sm_cli(args: &[&str]) -> Duration {
    for attempt in 1..=3 {
        let start = Instant::now();
        let out = Command::new(bin_dir().join("sm"))
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("spawn sm");
        let took = start.elapsed();
        progressed(BEGAN.get().copied().unwrap_or(start));
        if out.status.success() {
            return took;
        }
        let why = format!(
            "sm {args:?}: {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
        assert!(attempt < 3, "{why} (3 times)");
        eprintln!("RETRIED (not counted): {why}");
    }
    unreachable!()
}

/// What one pool cycle took.
#[derive(Clone, Copy)]
struct Cycle {
    /// From calling `acquire()` to the output of the first exec of `true`.
    first: Duration,
    /// `acquire()` alone (resuming a paused VM).
    acquire: Duration,
    /// A second exec of `true` in the same VM, once the first returned.
    second: Duration,
    /// How long `release()` blocked.
    release: Duration,
}

fn exec_true(vm: &sm::PooledVm) {
    let out = vm
        .exec(&["true"])
        .timeout(Duration::from_secs(60))
        .output()
        .expect("exec in a pooled VM");
    assert_eq!(out.exit.code, Some(0), "`true` in a pooled VM");
}

/// Seconds since the bench began at which something last finished (a cycle, an `sm` run).
static PROGRESS: AtomicU64 = AtomicU64::new(0);
/// When the bench began.
static BEGAN: OnceLock<Instant> = OnceLock::new();

/// Something finished `since` the bench began.
fn progressed(since: Instant) {
    PROGRESS.store(since.elapsed().as_secs(), Ordering::Relaxed);
}

/// If nothing finishes for `limit`, says what every process under `root` is doing (their
/// states and each VM's `sm.log`) and ends the bench, before the test VM's own stall timeout
/// stops it without a word.
fn watch_progress(began: Instant, root: PathBuf, limit: Duration) {
    std::thread::spawn(move || loop {
        std::thread::sleep(Duration::from_secs(5));
        let last = Duration::from_secs(PROGRESS.load(Ordering::Relaxed));
        if began.elapsed().saturating_sub(last) < limit {
            continue;
        }
        eprintln!("STALLED: nothing finished for {limit:?}; processes:");
        let _ = Command::new("ps")
            .args(["-eo", "pid,ppid,stat,etime,wchan:24,args"])
            .status();
        for dir in std::fs::read_dir(&root).into_iter().flatten().flatten() {
            let log = std::fs::read_to_string(dir.path().join("sm.log")).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(8).collect();
            eprintln!(
                "--- {}: {}",
                dir.path().display(),
                tail.into_iter().rev().collect::<Vec<_>>().join(" | ")
            );
        }
        std::process::exit(3);
    });
}

/// One pool cycle: acquire, exec `true` until its output (and once more), release.
fn cycle(pool: &sm::Pool) -> Cycle {
    let start = Instant::now();
    let vm = pool.acquire().expect("acquire");
    let acquire = start.elapsed();
    exec_true(&vm);
    let first = start.elapsed();
    let t = Instant::now();
    exec_true(&vm);
    let second = t.elapsed();
    let t = Instant::now();
    vm.release();
    progressed(BEGAN.get().copied().unwrap_or(start));
    Cycle {
        first,
        acquire,
        second,
        release: t.elapsed(),
    }
}

/// `per_caller` cycles from each of `n` threads at once; every cycle's times.
fn cycles_at_once(pool: &sm::Pool, n: usize, per_caller: usize) -> Vec<Cycle> {
    let barrier = Barrier::new(n);
    std::thread::scope(|s| {
        let threads: Vec<_> = (0..n)
            .map(|_| {
                s.spawn(|| {
                    barrier.wait();
                    (0..per_caller).map(|_| cycle(pool)).collect::<Vec<_>>()
                })
            })
            .collect();
        threads
            .into_iter()
            .flat_map(|t| t.join().expect("a caller failed"))
            .collect()
    })
}

/// Waits until `pool` has `n` VMs ready; returns how long that took.
fn wait_ready(pool: &sm::Pool, n: usize) -> Duration {
    let start = Instant::now();
    while pool.counts().0 < n {
        assert!(
            start.elapsed() < LIMIT,
            "the pool has {:?} (ready, in use, restoring) after {LIMIT:?}",
            pool.counts()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    start.elapsed()
}

fn pool(image: &sm::Image, restore_on_release: bool) -> sm::Pool {
    image
        .pool(sm::PoolOptions {
            min: POOL_MAX,
            max: POOL_MAX,
            restore_on_release,
            acquire_timeout: LIMIT,
            idle_timeout: Duration::from_secs(3600),
            egress: None,
        })
        .expect("pool")
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

/// The memory of one pooled VM, in KiB.
#[derive(Clone, Copy, Default)]
struct Memory {
    /// sm-vmm's PSS.
    vmm_pss: u64,
    /// Its backends' PSS, together.
    backends_pss: u64,
    /// Backend processes.
    backends: u64,
    /// Pages allocated in sm-vmm's memfds (guest RAM), mapped or not.
    ram: u64,
    /// Every process's PSS without shared memory (the memfds).
    other: u64,
}

impl Memory {
    fn pss(&self) -> u64 {
        self.vmm_pss + self.backends_pss
    }
    /// What the VM costs: its guest RAM plus its processes' own memory.
    fn total(&self) -> u64 {
        self.ram + self.other
    }
}

/// The memory of every VM whose processes descend from this process and whose process
/// started here names a directory under `root` (the pool's VMs: sm-vmm and the backends,
/// with what runs under them: a sandboxed backend's server and sm-vhost-user-net's passt),
/// by VM.
fn pooled_memory(root: &Path) -> BTreeMap<String, Memory> {
    let me = std::process::id();
    let prefix = format!("{}/", root.display());
    // Every process's parent; the parent is the 4th field of stat, after the command name.
    let mut parent: BTreeMap<u32, u32> = BTreeMap::new();
    let mut zombies = vec![];
    for entry in std::fs::read_dir("/proc").expect("/proc").flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let fields: Vec<&str> = stat
            .rsplit_once(')')
            .map_or(vec![], |(_, rest)| rest.split_whitespace().collect());
        if let Some(ppid) = fields.get(1).and_then(|p| p.parse().ok()) {
            parent.insert(pid, ppid);
        }
        if fields.first() == Some(&"Z") {
            zombies.push(pid);
        }
    }
    // The VM a child of this process serves, from its command line.
    let vm_of = |pid: u32| {
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        cmdline
            .split_once(prefix.as_str())
            .and_then(|(_, rest)| rest.split('/').next())
            .map(str::to_owned)
    };
    let mut vms: BTreeMap<String, Memory> = BTreeMap::new();
    for &pid in parent.keys() {
        // Up to the ancestor this process started.
        let mut top = pid;
        while let Some(&up) = parent.get(&top) {
            if up == me || up <= 1 {
                break;
            }
            top = up;
        }
        if parent.get(&top) != Some(&me) || zombies.contains(&pid) {
            continue;
        }
        let Some(vm) = vm_of(top) else {
            continue;
        };
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        let (pss, shmem) = pss_kib(pid);
        let m = vms.entry(vm).or_default();
        m.other += pss - shmem;
        if comm.trim() == "sm-vmm" {
            m.vmm_pss += pss;
            m.ram += memfd_kib(pid);
        } else {
            m.backends_pss += pss;
            m.backends += 1;
        }
    }
    vms
}

/// The median of each figure over `vms`, in MiB, and their sum of PSS.
fn memory_row(label: &str, vms: &BTreeMap<String, Memory>) {
    let mem: Vec<Memory> = vms.values().copied().collect();
    let median = |f: fn(&Memory) -> u64| median_u64(mem.iter().map(f).collect()) as f64 / 1024.0;
    println!(
        "{label:<34} {:>4} {:>9.1} {:>9.1} {:>8.1} {:>9.1} {:>9.1} {:>10.1}",
        mem.len(),
        median(|m| m.vmm_pss),
        median(|m| m.backends_pss),
        median(Memory::pss),
        median(|m| m.ram),
        median(Memory::total),
        mem.iter().map(Memory::pss).sum::<u64>() as f64 / 1024.0,
    );
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return; // cargo bench --list / test discovery.
    }
    let began = *BEGAN.get_or_init(Instant::now);
    let acquires: usize = env_or("SM_BENCH_ACQUIRES", 100).max(1);
    let cli_runs = (acquires / 8).max(3);
    let fresh_samples = (acquires / 4).max(1);

    let runtime = tempfile::tempdir().expect("tempdir");
    // The library and sm find their runtime directory and tools here.
    std::env::set_var("XDG_RUNTIME_DIR", runtime.path());
    std::env::set_var("SM_BIN_DIR", bin_dir());
    let root = runtime.path().join("sm");
    watch_progress(began, root.clone(), Duration::from_secs(240));
    let data = tempfile::tempdir().expect("tempdir");
    let store = data.path().join("snapshots");
    let volume = data.path().join("cache.img");
    let store_arg = store.to_str().expect("UTF-8 path");
    let mem_arg = MEM_MIB.to_string();

    eprintln!("baking");
    let t = Instant::now();
    let image = sm_integration::warm::build(NAME, None, MEM_MIB, &store, &volume);
    let bake = t.elapsed();
    assert!(!image.was_cached(), "a fresh store: the first build bakes");
    let t = Instant::now();
    let cached = sm_integration::warm::build(NAME, None, MEM_MIB, &store, &volume);
    let bake_cached = t.elapsed();
    assert!(cached.was_cached(), "unchanged inputs: a hit");
    // The same bake without a network device: what passt and sm-vhost-user-net cost a clone.
    let offline_volume = data.path().join("cache-offline.img");
    sm_integration::warm::build_with_network(
        OFFLINE,
        None,
        MEM_MIB,
        &store,
        &offline_volume,
        sm::Network::None,
    );

    // The pool that hands a released VM out again: filled first, 8 VMs never handed out.
    eprintln!("filling the reuse pool ({:?} so far)", began.elapsed());
    let t = Instant::now();
    let reuse = pool(&image, false);
    wait_ready(&reuse, POOL_MAX);
    let fill = t.elapsed();
    let mem_fresh = pooled_memory(&root);

    // Cold runs, runs of the snapshot and pool cycles from one caller, interleaved.
    let (mut cold, mut snap) = (vec![], vec![]);
    let (mut cold_offline, mut snap_offline) = (vec![], vec![]);
    let mut reuse_cycles: BTreeMap<usize, Vec<Cycle>> = BTreeMap::new();
    let per_round = acquires.div_ceil(cli_runs);
    for run in 0..cli_runs {
        eprintln!(
            "round {}/{cli_runs} ({:?} so far)",
            run + 1,
            began.elapsed()
        );
        cold.push(sm_cli(&["run", "--mem", &mem_arg, "--", "true"]));
        cold_offline.push(sm_cli(&[
            "run", "--mem", &mem_arg, "--net", "none", "--", "true",
        ]));
        for (name, runs) in [(NAME, &mut snap), (OFFLINE, &mut snap_offline)] {
            runs.push(sm_cli(&[
                "run",
                "--snapshot",
                name,
                "--snapshots-dir",
                store_arg,
                "--",
                "true",
            ]));
        }
        let want = per_round.min(acquires - reuse_cycles.get(&1).map_or(0, Vec::len));
        reuse_cycles
            .entry(1)
            .or_default()
            .extend((0..want).map(|_| cycle(&reuse)));
    }
    for n in [4, 8] {
        eprintln!("{n} callers at once, reuse ({:?} so far)", began.elapsed());
        reuse_cycles.insert(n, cycles_at_once(&reuse, n, acquires.div_ceil(n)));
    }
    wait_ready(&reuse, POOL_MAX);
    let mem_used = pooled_memory(&root);
    reuse.shutdown();

    // The pool that replaces every released VM with a fresh clone: rounds of n callers
    // at once, each round once all 8 are ready again.
    eprintln!(
        "filling the fresh-clone pool ({:?} so far)",
        began.elapsed()
    );
    let fresh = pool(&image, true);
    let mut fresh_cycles: BTreeMap<usize, Vec<Cycle>> = BTreeMap::new();
    let mut refill = vec![];
    let mut before = None;
    for n in CALLERS {
        let rounds = fresh_samples.div_ceil(n);
        for round in 0..rounds {
            eprintln!(
                "{n} callers at once, fresh clones, round {}/{rounds} ({:?} so far)",
                round + 1,
                began.elapsed()
            );
            let waited = wait_ready(&fresh, POOL_MAX);
            if let Some(b) = before {
                refill.push((b, waited));
            }
            before = Some(n);
            fresh_cycles
                .entry(n)
                .or_default()
                .extend(cycles_at_once(&fresh, n, 1));
        }
    }
    fresh.shutdown();
    let total = began.elapsed();

    let cold_p50 = percentile(&cold, 0.5);
    println!(
        "bake and pools against a cold `sm run` (one run: {cli_runs} `sm run`s of each kind, \
         each taking seconds, interleaved with the 1-caller reuse cycles; VMs of \
         {MEM_MIB} MiB, 1 vCPU, guest's minimal root; baked: `sleep 100000`, a 64 MiB volume \
         filled by the warm-up)"
    );
    println!(
        "bake (boot, workload, warm-up, snapshot): {:.1} s; a cached build (same inputs): \
         {:.0} ms; filling a pool of {POOL_MAX} (restores in the background): {:.1} s",
        bake.as_secs_f64(),
        ms(bake_cached),
        fill.as_secs_f64()
    );
    println!();
    println!(
        "{:<42} {:>5} {:>9} {:>9} {:>8} {:>10} {:>10}",
        "start -> first exec of `true`",
        "runs",
        "p50 ms",
        "p99 ms",
        "x cold",
        "acq p50",
        "2nd exec"
    );
    let row = |label: &str, v: &[Duration], more: Option<(f64, f64)>| {
        let p50 = percentile(v, 0.5);
        let more = more.map_or(String::new(), |(a, e)| format!(" {a:>10.1} {e:>10.1}"));
        println!(
            "{label:<42} {:>5} {:>9.1} {:>9.1} {:>8.4}{more}",
            v.len(),
            p50,
            percentile(v, 0.99),
            p50 / cold_p50
        );
    };
    row("sm run --mem 256 -- true (cold, to exit)", &cold, None);
    row("sm run --net none -- true (cold)", &cold_offline, None);
    row("sm run --snapshot -- true (to exit)", &snap, None);
    row("sm run --snapshot, baked --net none", &snap_offline, None);
    let of = |c: &[Cycle], f: fn(&Cycle) -> Duration| c.iter().map(f).collect::<Vec<_>>();
    for (kind, cycles) in [("reuse", &reuse_cycles), ("fresh", &fresh_cycles)] {
        for (n, c) in cycles {
            row(
                &format!("pool acquire -> exec, {kind}, {n} caller(s)"),
                &of(c, |c| c.first),
                Some((
                    percentile(&of(c, |c| c.acquire), 0.5),
                    percentile(&of(c, |c| c.second), 0.5),
                )),
            );
        }
    }
    let goal = percentile(&of(&reuse_cycles[&1], |c| c.first), 0.5) / cold_p50;
    let goal_fresh = percentile(&of(&fresh_cycles[&1], |c| c.first), 0.5) / cold_p50;
    println!("(acq p50: acquire() alone; 2nd exec: p50 of another exec of `true` in the same VM)");
    println!(
        "goal: pool acquire -> first exec p50 <= 0.03x cold sm run p50, 1 caller: reuse \
         {goal:.4}x ({}), fresh {goal_fresh:.4}x ({})",
        if goal <= 0.03 { "met" } else { "NOT met" },
        if goal_fresh <= 0.03 { "met" } else { "NOT met" }
    );
    println!();
    println!(
        "{:<42} {:>5} {:>9} {:>9}",
        "release() blocks its caller", "runs", "p50 ms", "p99 ms"
    );
    for (kind, cycles) in [("reuse", &reuse_cycles), ("fresh", &fresh_cycles)] {
        for (n, c) in cycles {
            let r = of(c, |c| c.release);
            println!(
                "{:<42} {:>5} {:>9.3} {:>9.3}",
                format!("{kind}, {n} caller(s)"),
                r.len(),
                percentile(&r, 0.5),
                percentile(&r, 0.99)
            );
        }
    }
    if !refill.is_empty() {
        let waits: Vec<String> = refill
            .iter()
            .map(|(n, w)| format!("{n}:{:.1}", w.as_secs_f64()))
            .collect();
        println!(
            "fresh pool: seconds until all {POOL_MAX} were ready again before each round \
             (callers of the round before: s): {}",
            waits.join(" ")
        );
    }
    println!();
    println!(
        "{:<34} {:>4} {:>9} {:>9} {:>8} {:>9} {:>9} {:>10}",
        "memory per pooled VM, MiB (median)",
        "VMs",
        "vmm PSS",
        "bkd PSS",
        "PSS",
        "guest RAM",
        "total",
        "sum of PSS"
    );
    memory_row("8 ready, never handed out", &mem_fresh);
    memory_row("8 ready, after the reuse cycles", &mem_used);
    let backends = median_u64(mem_fresh.values().map(|m| m.backends).collect());
    println!(
        "(PSS: sm-vmm plus its {backends} backend processes (supervisors, sandboxed servers, passt); guest RAM: pages in sm-vmm's memfd, \
         mapped or not; total: guest RAM plus every process's PSS without shared memory)"
    );
    println!("whole run: {:.0} s", total.as_secs_f64());
}

//! The Node.js binding (`node/`): its `node --test` suite and every example
//! (`node examples/X.js`) run against real guests booted from an OCI image the test builds, each with its own runtime directory and
//! snapshot store; each must exit 0 and leave no VM process behind. Node.js and the built
//! addon (`node/build.sh`, which `scripts/build.sh` runs) are required: their absence fails
//! the module, it does not skip it.

use crate::clone::processes_mentioning;
use crate::common::*;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The package directory.
fn package() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../node")
}

/// Fails loudly unless `node` runs and the addon is built.
fn require_node() {
    let out = Command::new("node").arg("--version").output().expect(
        "node is not installed: the Node.js binding's tests need it (apt-get install nodejs)",
    );
    assert!(out.status.success(), "node --version failed");
    eprintln!("node {}", String::from_utf8_lossy(&out.stdout).trim());
    let addon = package().join("sm.node");
    assert!(
        addon.exists(),
        "{} is missing: build it with node/build.sh (scripts/build.sh does)",
        addon.display()
    );
}

/// Runs `node ARGS` in the package directory with its output going straight to the
/// console (a long run keeps the test VM's stall watchdog fed); asserts exit 0 within
/// `limit` (with `retry_stall`, a run whose guests stalled goes once more) and that no VM
/// process outlives it.
fn node(args: &[&str], limit: Duration, retry_stall: bool) {
    require_kvm();
    require_node();
    let runtime = tempfile::tempdir().unwrap();
    let data = tempfile::tempdir().unwrap();
    let rt = runtime.path().to_str().unwrap().to_owned();
    // The image the run bakes: one the test builds (busybox, as an OCI layout).
    let layout = data.path().join("layout");
    crate::image::build_layout(&layout, None);
    let image = format!("oci-layout:{}:latest", layout.display());
    eprintln!(
        "=== node {} (in {}, image {image})",
        args.join(" "),
        package().display()
    );
    let t = Instant::now();
    let spawn = || {
        Command::new("node")
            .args(args)
            .current_dir(package())
            .env("XDG_RUNTIME_DIR", &rt)
            .env("SM_BIN_DIR", sm_integration::bin_dir())
            .env("SM_EXAMPLE_SNAPSHOTS", data.path().join("snapshots"))
            .env("SM_NODE_TEST_DATA", data.path())
            .env("SM_EXAMPLE_REF", &image)
            .env("TMPDIR", data.path())
            .stdin(Stdio::null())
            .process_group(0)
            .spawn()
            .expect("spawn node")
    };
    let mut child = spawn();
    let mut status = sm_test_support::process::wait_timeout(&mut child, limit);
    if status.is_none() && retry_stall {
        // Every guest of the run halted waiting for an interrupt: the nested emulation's
        // stall (README, "Where guests run"), so the run goes once more.
        let explained = processes();
        if stop_hung(&mut child) {
            eprintln!(
                "RETRY: node {} hung after {limit:?} with its guests' vCPUs halted; running it once more\n{explained}",
                args.join(" ")
            );
            child = spawn();
            status = sm_test_support::process::wait_timeout(&mut child, limit);
        }
    }
    let status = match status {
        Some(status) => status,
        None => {
            eprintln!(
                "node {} still running after {limit:?}; processes at the hang:\n{}",
                args.join(" "),
                processes()
            );
            stop_hung(&mut child);
            child.wait().expect("wait for node")
        }
    };
    eprintln!(
        "=== node {}: {status} after {:.1} s",
        args.join(" "),
        t.elapsed().as_secs_f64()
    );
    if !status.success() {
        // What the VMs of the run were doing: each one's sm.log, as far as it got.
        for d in std::fs::read_dir(runtime.path().join("sm"))
            .into_iter()
            .flatten()
            .flatten()
        {
            let log = std::fs::read_to_string(d.path().join("sm.log")).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(25).collect();
            eprintln!("--- {}/sm.log (end):", d.path().display());
            for l in tail.iter().rev() {
                eprintln!("{l}");
            }
        }
        panic!("node {}: {status}", args.join(" "));
    }
    // Everything was shut down: no sm-vmm or backend of this run is left.
    let start = Instant::now();
    let mut left = processes_mentioning(&rt);
    while !left.is_empty() && start.elapsed() < Duration::from_secs(20) {
        std::thread::sleep(Duration::from_millis(200));
        left = processes_mentioning(&rt);
    }
    assert!(
        left.is_empty(),
        "node {} left processes: {left:?}",
        args.join(" ")
    );
}

/// The examples, by file name (helpers start with `_`).
fn examples() -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(package().join("examples"))
        .expect("node/examples")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".js") && !n.starts_with('_'))
        .collect();
    names.sort();
    assert!(!names.is_empty(), "no examples in node/examples");
    names
}

#[test]
fn node_test_suite_passes() {
    let mut files: Vec<String> = std::fs::read_dir(package().join("test"))
        .expect("node/test")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".test.js"))
        .map(|n| format!("test/{n}"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no tests in node/test");
    let mut args = vec!["--test", "--test-concurrency=1"];
    args.extend(files.iter().map(String::as_str));
    node(&args, Duration::from_secs(1500), false);
}

#[test]
fn every_example_runs() {
    for name in examples() {
        // Each takes well under a minute; a hang fails (with what was running) before the
        // test VM's stall watchdog (300 s without output) would stop everything.
        node(
            &[&format!("examples/{name}")],
            Duration::from_secs(240),
            true,
        );
    }
    assert!(Path::new(&package().join("README.md")).exists());
}

/// What the calling thread used, from its `/proc/thread-self` counters: CPU time and time
/// spent waiting for a CPU (ms, `schedstat`), and how often it slept and how often it was
/// preempted (`status`). `node/bench/pool.js` reads the same for the JS thread.
fn thread_use() -> [f64; 4] {
    let stat = std::fs::read_to_string("/proc/thread-self/schedstat").unwrap_or_default();
    let ns: Vec<f64> = stat
        .split_whitespace()
        .map(|n| n.parse().unwrap_or(f64::NAN))
        .collect();
    let status = std::fs::read_to_string("/proc/thread-self/status").unwrap_or_default();
    let count = |name: &str| -> f64 {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or(f64::NAN)
    };
    [
        ns.first().copied().unwrap_or(f64::NAN) / 1e6,
        ns.get(1).copied().unwrap_or(f64::NAN) / 1e6,
        count("voluntary_ctxt_switches:"),
        count("nonvoluntary_ctxt_switches:"),
    ]
}

/// p50 and p99 of `samples` (ms).
fn quantiles(samples: &[f64]) -> (f64, f64) {
    let mut s = samples.to_vec();
    s.sort_by(f64::total_cmp);
    let q = |p: f64| s[((p * s.len() as f64) as usize).min(s.len() - 1)];
    (q(0.5), q(0.99))
}

/// The binding's cost: pool cycles (acquire -> exec `true` -> release, in a pool of one VM
/// handed out again as left) through the Rust library and through JS
/// (`node/bench/pool.js`), on the same snapshot, alternating cycle by cycle (a pool on each
/// side, both kept) so that the machine's drift falls on both alike, each cycle starting
/// once both pools have parked their VM again; prints p50 and p99 of each. A benchmark of a
/// minute or two, run by hand:
/// `... sm-testvm ... -- <guest test binary> --test-threads=1 --ignored --nocapture node::binding_overhead`
/// (`SM_BENCH_CYCLES`, default 400 per side).
#[test]
#[ignore = "a benchmark, run by hand"]
fn binding_overhead() {
    use std::io::{BufRead, BufReader, Write};
    require_kvm();
    require_node();
    let runtime = tempfile::tempdir().unwrap();
    let data = tempfile::tempdir().unwrap();
    // The library finds its runtime directory here; this module's tests run one at a time.
    std::env::set_var("XDG_RUNTIME_DIR", runtime.path());
    std::env::set_var("SM_BIN_DIR", sm_integration::bin_dir());
    let cycles: usize = std::env::var("SM_BENCH_CYCLES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(400);
    let image = sm::Image::build(sm::BuildOptions {
        name: "bench".into(),
        mem_mib: 256,
        cmd: vec!["sleep".into(), "100000".into()],
        store: Some(sm::store::SnapshotStore::at(data.path().join("snapshots"))),
        ..Default::default()
    })
    .expect("bake");
    let pool = image
        .pool(sm::PoolOptions {
            min: 1,
            max: 1,
            restore_on_release: false,
            acquire_timeout: Duration::from_secs(300),
            idle_timeout: Duration::from_secs(600),
            egress: None,
        })
        .unwrap();
    // One cycle's times in ms (total, acquire, exec, release), then what the calling thread
    // used meanwhile (see `thread_use`).
    let rust_cycle = || {
        let used = thread_use();
        let t0 = Instant::now();
        let vm = pool.acquire().unwrap();
        let t1 = Instant::now();
        let out = vm.exec(&["true"]).output().unwrap();
        assert_eq!(out.exit.code, Some(0));
        let t2 = Instant::now();
        vm.release();
        let t3 = Instant::now();
        // The pause the release started finishes before the next cycle (either side's):
        // otherwise it runs, untimed here, in the other side's cycle.
        let now = thread_use();
        while pool.counts() != (1, 0, 0) {
            std::thread::sleep(Duration::from_millis(1));
        }
        let times = [t3 - t0, t1 - t0, t2 - t1, t3 - t2].map(|d| d.as_secs_f64() * 1000.0);
        let mut cycle = [0.0; 8];
        cycle[..4].copy_from_slice(&times);
        for (i, (a, b)) in used.iter().zip(now).enumerate() {
            cycle[4 + i] = b - a;
        }
        cycle
    };
    let mut node = Command::new("node")
        .arg("bench/pool.js")
        .current_dir(package())
        .env("SM_BENCH_SNAPSHOT", image.snapshot())
        .env("SM_BENCH_STEPPED", "1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("node bench/pool.js");
    let mut to_js = node.stdin.take().unwrap();
    let mut from_js = BufReader::new(node.stdout.take().unwrap());
    let mut js_cycle = || {
        writeln!(to_js, "cycle").expect("to bench/pool.js");
        let mut line = String::new();
        from_js.read_line(&mut line).expect("from bench/pool.js");
        let times: Vec<f64> = line
            .split_whitespace()
            .map(|t| t.parse().unwrap_or(f64::NAN))
            .collect();
        <[f64; 8]>::try_from(times)
            .ok()
            .filter(|t| t.iter().all(|ms| ms.is_finite()))
            .unwrap_or_else(|| panic!("bench/pool.js said {line:?}"))
    };
    for _ in 0..10 {
        rust_cycle();
        js_cycle();
    }
    // R J J R R J ...: neither side always runs right after the other's release.
    let (mut rust, mut js) = (vec![], vec![]);
    for i in 0..cycles {
        if i % 2 == 0 {
            rust.push(rust_cycle());
            js.push(js_cycle());
        } else {
            js.push(js_cycle());
            rust.push(rust_cycle());
        }
    }
    drop(to_js);
    assert!(node.wait().unwrap().success(), "node bench/pool.js failed");
    pool.shutdown();
    let column = |v: &[[f64; 8]], i: usize| v.iter().map(|t| t[i]).collect::<Vec<_>>();
    // Per side: runs, (p50, p99) of the whole cycle, and the p50 of each step.
    let rows = [("Rust library", &rust), ("Node.js", &js)].map(|(name, v)| {
        let steps = [1, 2, 3].map(|i| quantiles(&column(v, i)).0);
        (name, v.len(), quantiles(&column(v, 0)), steps)
    });
    println!("pool cycle (acquire -> exec `true` -> release, reuse, 1 caller), ms");
    println!("through        runs    p50 ms    p99 ms   acquire p50  exec p50  release p50");
    for (name, runs, (p50, p99), [acquire, exec, release]) in rows {
        println!(
            "{name:<13} {runs:>5} {p50:>9.2} {p99:>9.2} {acquire:>13.2} {exec:>9.2} {release:>12.2}"
        );
    }
    // Where the cost lands: the calling (JS) thread's CPU, its waits for a CPU that
    // another thread held, and its sleeps and preemptions.
    println!(
        "calling thread, per cycle: CPU ms p50, waiting for a CPU ms p50, sleeps, preemptions"
    );
    for (name, v) in [("Rust library", &rust), ("Node.js", &js)] {
        let mean = |i| column(v, i).iter().sum::<f64>() / v.len() as f64;
        println!(
            "{name:<13} {:>11.2} {:>12.2} {:>10.2} {:>12.2}",
            quantiles(&column(v, 4)).0,
            quantiles(&column(v, 5)).0,
            mean(6),
            mean(7)
        );
    }
    let ((r50, r99), (j50, j99)) = (rows[0].2, rows[1].2);
    println!(
        "binding overhead: p50 {:+.1}%, p99 {:+.1}% (goal: at most +10%)",
        (j50 / r50 - 1.0) * 100.0,
        (j99 / r99 - 1.0) * 100.0
    );
}

//! Agent latency: exec round trips of `true` on a running VM (p50 and p99 over 1,000 runs),
//! against the floor of the same transport (a `read_file` of a 1-byte file: connection,
//! handshake and one reply, no process), and `sm run -- true` end to end. Needs
//! hardware-style KVM: `scripts/bench` runs it inside the test VM where the host's KVM is PVM.
//!
//! Environment: `SM_BENCH_EXECS` (default 1000), `SM_BENCH_RUNS` (`sm run` runs, default 5).

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use sm::{Vm, VmConfig};
use sm_integration::bench::{env_or, percentile};

fn timed(n: usize, mut f: impl FnMut()) -> Vec<Duration> {
    let mut t: Vec<Duration> = (0..n)
        .map(|_| {
            let start = Instant::now();
            f();
            start.elapsed()
        })
        .collect();
    t.sort();
    t
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let execs = env_or("SM_BENCH_EXECS", 1000);
    let runs = env_or("SM_BENCH_RUNS", 5);
    let vm = Vm::start(&VmConfig::default()).expect("starting a VM");
    vm.write_file("/tmp/one", b"x", 0o644).expect("write_file");
    // The agent's own view: from its spawn of the command to the exit status.
    let mut in_guest = Vec::with_capacity(execs);
    let exec = timed(execs, || {
        let out = vm.exec(&["true"]).output().expect("exec");
        assert_eq!(out.exit.code, Some(0));
        in_guest.push(Duration::from_micros(out.exit.duration_us));
    });
    in_guest.sort();
    let floor = timed(execs, || {
        vm.read_file("/tmp/one", 16).expect("read_file");
    });
    vm.stop();
    let sm = sm_integration::bin_dir().join("sm");
    let run = timed(runs, || {
        let st = Command::new(&sm)
            .args(["run", "--", "true"])
            .stdin(Stdio::null())
            .status()
            .expect("sm run");
        assert!(st.success());
    });
    println!("agent round trips on one running VM (1 vCPU, 512 MiB), ms");
    println!("{:<28} {:>6} {:>8} {:>8}", "", "runs", "p50", "p99");
    for (name, t) in [
        ("exec `true`", &exec),
        ("  of which spawn to exit", &in_guest),
        ("read_file 1 byte (floor)", &floor),
    ] {
        println!(
            "{name:<28} {:>6} {:>8.2} {:>8.2}",
            t.len(),
            percentile(t, 0.5),
            percentile(t, 0.99)
        );
    }
    println!(
        "{:<28} {:>6} {:>8.0} {:>8.0}",
        "sm run -- true (end to end)",
        run.len(),
        percentile(&run, 0.5),
        percentile(&run, 0.99)
    );
    println!(
        "exec p50 / transport floor p50: {:.2}",
        percentile(&exec, 0.5) / percentile(&floor, 0.5)
    );
}

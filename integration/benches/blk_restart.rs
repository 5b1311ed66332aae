//! The guest's I/O across a restart of its volume's backend (issue 13, item 9). One VM runs
//! detached under `sm run -d` with a 256 MiB volume; `sm`'s supervisor restarts the volume's
//! sm-vhost-user-blk when it is killed (`killpg` SIGKILL of its process group, as a crash),
//! and sm-vmm reconnects and replays the rings. Measured with the guest's fio (4 KiB
//! randwrite, direct, libaio, time-based) on a file of the volume:
//! - stall: a 4 s job at iodepth 1, killed 1.5 s in; its longest I/O (fio's total latency
//!   maximum, `lat` max, submission to completion, terse v3 field 80) is that kill's stall.
//!   Against the same job with no kill, run between the kill jobs. Each kill comes once the
//!   backend has served for the supervisor's `reset_after`, so no restart backoff is in it.
//! - throughput: a 30 s job at iodepth 16, with no kill and with a kill every 10 s (5, 15
//!   and 25 s in: the supervisor's backoff for restarts in a row applies, as it would for a
//!   backend crashing that often), interleaved over rounds.
//!
//! Every fio must end with no error. Needs hardware-style KVM: `scripts/bench blk_restart`
//! runs it inside the test VM where the host's KVM is PVM.
//!
//! Environment: `SM_BENCH_KILLS` (stall kills, default 20), `SM_BENCH_RUNS` (throughput
//! rounds, default 2; the table shows each and their mean).

use std::io::{BufRead, BufReader, Read};
use std::process::{Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use sm::vm::restart::RestartPolicy;
use sm::vm::service::State;
use sm::vm::supervisor::PROCESSES_FILE;
use sm::vm::ProcessInfo;
use sm_integration::bench::{env_or, percentile};
use sm_integration::bin_dir;
use sm_test_support::process::wait_timeout;

/// The VM's name.
const NAME: &str = "b";
/// The stall job's length, and when into it the backend is killed.
const STALL_RUNTIME: Duration = Duration::from_secs(4);
const STALL_KILL_AT: Duration = Duration::from_millis(1500);
/// The throughput job's length, and when into it the backend is killed.
const THROUGHPUT_RUNTIME: Duration = Duration::from_secs(30);
const THROUGHPUT_KILLS_AT: [Duration; 3] = [
    Duration::from_secs(5),
    Duration::from_secs(15),
    Duration::from_secs(25),
];
/// How long a command may take beyond its job (the test VM runs nested guests slowly).
const SLACK: Duration = Duration::from_secs(120);
/// How long a restart may take before the bench gives up on it.
const RESTART_LIMIT: Duration = Duration::from_secs(60);

/// What one fio job gave.
struct Run {
    /// The longest write, submission to completion.
    lat_max: Duration,
    iops: f64,
    /// For each kill: from the kill until the supervisor saw the new backend ready.
    restarts: Vec<Duration>,
}

/// One detached VM with its own runtime directory, stopped when dropped.
struct Bench {
    runtime: tempfile::TempDir,
    /// Where the volume's image lives.
    data: tempfile::TempDir,
    /// When the volume's backend was last seen ready after a restart.
    last_ready: Option<Instant>,
}

impl Bench {
    fn sm(&self) -> Command {
        let mut c = Command::new(bin_dir().join("sm"));
        c.env("XDG_RUNTIME_DIR", self.runtime.path())
            .env("SM_BIN_DIR", bin_dir())
            .stdin(Stdio::null());
        c
    }

    fn start() -> Bench {
        let runtime = tempfile::tempdir().expect("tempdir");
        let data = tempfile::tempdir().expect("tempdir");
        let bench = Bench {
            runtime,
            data,
            last_ready: None,
        };
        let volume = format!(
            "{}:/data:size=256M",
            bench.data.path().join("v.img").display()
        );
        let out = output(
            bench.sm().args([
                "run", "--detach", "--name", NAME, "--volume", &volume, "--", "sleep", "100000",
            ]),
            SLACK,
        );
        assert!(out.status.success(), "sm run -d: {}", text(&out.stderr));
        bench
    }

    /// The volume's backend as the supervisor last recorded it.
    fn backend(&self) -> ProcessInfo {
        let path = self
            .runtime
            .path()
            .join("sm")
            .join(NAME)
            .join(PROCESSES_FILE);
        let all: Vec<ProcessInfo> = std::fs::read(&path)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        all.into_iter()
            .find(|p| p.name.starts_with("volume "))
            .unwrap_or_else(|| panic!("no volume backend in {}", path.display()))
    }

    /// Kills the volume's backend group and waits until the supervisor has a new one ready:
    /// how long that took.
    fn kill_backend(&mut self) -> Duration {
        let before = self.backend();
        assert_eq!(
            before.state,
            State::Running,
            "killing a backend that serves"
        );
        let pid = before.pid.expect("the backend's PID");
        let killed = Instant::now();
        killpg(Pid::from_raw(pid), Signal::SIGKILL).expect("killpg of the volume's backend");
        loop {
            let now = self.backend();
            if now.pid.is_some_and(|p| p != pid)
                && now.state == State::Running
                && now.restarts > before.restarts
            {
                break;
            }
            assert!(
                killed.elapsed() < RESTART_LIMIT,
                "the backend was not back within {RESTART_LIMIT:?}: {now:?}"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        let ready = Instant::now();
        self.last_ready = Some(ready);
        ready - killed
    }

    /// Waits until the backend has served long enough that the supervisor's backoff for
    /// restarts in a row is reset.
    fn settle(&self) {
        let Some(ready) = self.last_ready else {
            return;
        };
        let due = ready + RestartPolicy::default().reset_after + Duration::from_millis(500);
        std::thread::sleep(due.saturating_duration_since(Instant::now()));
    }

    /// Runs a 4 KiB randwrite fio job in the guest, killing the backend `kills` into it.
    fn fio(&mut self, iodepth: u32, runtime: Duration, kills: &[Duration]) -> Run {
        if !kills.is_empty() {
            self.settle();
        }
        let job = format!(
            "echo go; exec fio --name=j --filename=/data/f --size=64M --direct=1 \
             --ioengine=libaio --iodepth={iodepth} --rw=randwrite --bs=4k --time_based \
             --runtime={} --output-format=terse --terse-version=3",
            runtime.as_secs()
        );
        let mut child = self
            .sm()
            .args(["exec", NAME, "--", "sh", "-c", &job])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("sm exec");
        let (tx, lines) = mpsc::channel();
        let stdout = child.stdout.take().expect("stdout");
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send((Instant::now(), line));
            }
        });
        let mut stderr = child.stderr.take().expect("stderr");
        let err = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = stderr.read_to_string(&mut s);
            s
        });
        let (go, first) = lines.recv_timeout(SLACK).expect("the guest's go line");
        assert_eq!(first, "go");
        let restarts: Vec<Duration> = kills
            .iter()
            .map(|at| {
                std::thread::sleep((go + *at).saturating_duration_since(Instant::now()));
                self.kill_backend()
            })
            .collect();
        let status = wait_timeout(&mut child, runtime + SLACK);
        let Some(status) = status else {
            let _ = child.kill();
            panic!("fio did not finish within {:?}", runtime + SLACK);
        };
        reader.join().expect("stdout reader");
        let err = err.join().expect("stderr reader");
        let rest: Vec<(Instant, String)> = lines.try_iter().collect();
        let all: Vec<&str> = rest.iter().map(|(_, l)| l.as_str()).collect();
        assert!(status.success(), "fio: {status}\n{}\n{err}", all.join("\n"));
        let (done, terse) = rest
            .iter()
            .find(|(_, l)| l.starts_with("3;"))
            .unwrap_or_else(|| panic!("no terse line: {}\n{err}", all.join("\n")));
        // Every kill landed while the job ran (its line comes once it ends).
        let last_kill = go + kills.last().copied().unwrap_or_default();
        assert!(
            kills.is_empty() || last_kill < *done,
            "a kill after fio ended"
        );
        let f: Vec<&str> = terse.split(';').collect();
        // Terse v3, 0-based: 4 errors, 48 write IOPS, 79 write total latency max (usec).
        assert_eq!(
            f.get(4),
            Some(&"0"),
            "fio reported an error: {terse}\n{err}"
        );
        let num = |i: usize| -> f64 {
            f.get(i)
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("terse field {i}: {terse}"))
        };
        Run {
            lat_max: Duration::from_secs_f64(num(79) / 1e6),
            iops: num(48),
            restarts,
        }
    }
}

impl Drop for Bench {
    fn drop(&mut self) {
        let _ = output(self.sm().args(["stop", NAME]), SLACK);
    }
}

/// Runs `cmd` to its end, or kills it after `limit`.
fn output(cmd: &mut Command, limit: Duration) -> Output {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn sm");
    let (mut o, mut e) = (child.stdout.take(), child.stderr.take());
    let out = std::thread::spawn(move || {
        let mut v = vec![];
        if let Some(p) = o.as_mut() {
            let _ = p.read_to_end(&mut v);
        }
        v
    });
    let err = std::thread::spawn(move || {
        let mut v = vec![];
        if let Some(p) = e.as_mut() {
            let _ = p.read_to_end(&mut v);
        }
        v
    });
    let Some(status) = wait_timeout(&mut child, limit) else {
        let _ = child.kill();
        panic!("{cmd:?} did not finish within {limit:?}");
    };
    Output {
        status,
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
    }
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// p50, p99 and max of `v`, ms.
fn spread(v: &[Duration]) -> [f64; 3] {
    [percentile(v, 0.5), percentile(v, 0.99), percentile(v, 1.0)]
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return; // cargo bench --list / test discovery.
    }
    let kills: usize = env_or("SM_BENCH_KILLS", 20);
    let rounds: usize = env_or("SM_BENCH_RUNS", 2);
    assert!(
        kills > 0 && rounds > 0,
        "SM_BENCH_KILLS and SM_BENCH_RUNS must be > 0"
    );
    let mut bench = Bench::start();
    // The file written once in full, so every job overwrites allocated blocks.
    let prep = "fio --name=prep --filename=/data/f --size=64M --direct=1 --rw=write --bs=1M \
                --output-format=terse --terse-version=3";
    let out = output(
        bench.sm().args(["exec", NAME, "--", "sh", "-c", prep]),
        SLACK,
    );
    assert!(out.status.success(), "fio prep: {}", text(&out.stderr));

    let (mut base, mut stall, mut restart) = (vec![], vec![], vec![]);
    for k in 0..kills {
        eprintln!("stall: kill {}/{kills}", k + 1);
        base.push(bench.fio(1, STALL_RUNTIME, &[]).lat_max);
        let run = bench.fio(1, STALL_RUNTIME, &[STALL_KILL_AT]);
        stall.push(run.lat_max);
        restart.extend(run.restarts);
    }
    let (mut calm, mut killed, mut tp_restart) = (vec![], vec![], vec![]);
    for r in 0..rounds {
        eprintln!("throughput: round {}/{rounds}", r + 1);
        calm.push(bench.fio(16, THROUGHPUT_RUNTIME, &[]).iops);
        let run = bench.fio(16, THROUGHPUT_RUNTIME, &THROUGHPUT_KILLS_AT);
        killed.push(run.iops);
        tp_restart.extend(run.restarts);
    }
    // Nothing the guest's kernel saw as an I/O error, and no restart but ours.
    let out = output(
        bench.sm().args([
            "exec",
            NAME,
            "--",
            "sh",
            "-c",
            "dmesg | grep -ci 'i/o error'; true",
        ]),
        SLACK,
    );
    assert_eq!(text(&out.stdout), "0\n", "I/O errors in the guest's log");
    let total = kills + rounds * THROUGHPUT_KILLS_AT.len();
    let backend = bench.backend();
    assert_eq!(backend.restarts as usize, total, "restarts: {backend:?}");

    println!(
        "blk backend killed (killpg SIGKILL) under `sm run -d`, restarted by sm's supervisor; \
         guest fio 4k randwrite, direct, libaio, on a 256 MiB volume"
    );
    println!(
        "stall: longest write (fio lat max) of a {} s iodepth-1 job, killed {} ms in, ms \
         (p99 is the nearest rank: the max below 100 kills)",
        STALL_RUNTIME.as_secs(),
        STALL_KILL_AT.as_millis()
    );
    println!(
        "{:<34} {:>5} {:>9} {:>9} {:>9}",
        "", "runs", "p50", "p99", "max"
    );
    let rows = [
        ("no kill (baseline, interleaved)", spread(&base)),
        ("one kill", spread(&stall)),
        ("restart (kill to ready in sm ps)", spread(&restart)),
    ];
    for (name, [p50, p99, max]) in rows {
        println!("{name:<34} {kills:>5} {p50:>9.1} {p99:>9.1} {max:>9.1}");
    }
    let ([b50, b99, bmax], [s50, s99, smax]) = (spread(&base), spread(&stall));
    println!(
        "{:<34} {:>5} {:>9.1} {:>9.1} {:>9.1}",
        "ratio one kill / no kill",
        "",
        s50 / b50,
        s99 / b99,
        smax / bmax
    );
    println!(
        "throughput: {} s iodepth-16 jobs, interleaved rounds, IOPS",
        THROUGHPUT_RUNTIME.as_secs()
    );
    println!(
        "{:<34} {:>9} {:>9} {:>9}",
        "", "no kill", "kill/10s", "ratio"
    );
    for (r, (c, k)) in calm.iter().zip(&killed).enumerate() {
        println!(
            "{:<34} {c:>9.0} {k:>9.0} {:>9.2}",
            format!("round {}", r + 1),
            k / c
        );
    }
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    let (c, k) = (mean(&calm), mean(&killed));
    println!(
        "{:<34} {c:>9.0} {k:>9.0} {:>9.2}",
        format!("mean of {rounds}"),
        k / c
    );
    println!(
        "restarts in the kill/10s jobs (kill to ready in sm ps): p50 {:.0} ms, max {:.0} ms \
         (the supervisor's backoff for restarts in a row applies)",
        percentile(&tp_restart, 0.5),
        percentile(&tp_restart, 1.0)
    );
    println!("every fio: 0 errors; guest kernel log: 0 I/O errors; backend restarts {total}");
}

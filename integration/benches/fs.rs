//! File-system throughput: the same guest workload on a virtio-fs mount served by
//! sm-vhost-user-fs and by virtiofsd behind the same sm-vmm, interleaved over rounds:
//! (a) 1 MiB sequential reads of a large file, (b) 4 KiB random reads of it (fio, direct=1,
//! so every read reaches the backend; both after one full pass over the file, which is
//! reported too: under DAX that pass maps the file into the window), and (c) a small-file tree: create 10,000 files of
//! 1 KiB in 100 directories, stat all, read all, delete all (the guest's caches dropped
//! between phases), after an untimed warm-up run on each. Both backends run with their
//! defaults (sandboxed, cache auto); a third contender is sm-vhost-user-fs with a DAX window
//! twice as large as the file, mounted `-o dax=always`, so reads are loads from the host's
//! page cache. Needs
//! hardware-style KVM: `scripts/bench fs` runs it inside the test VM where the host's KVM
//! is PVM.
//!
//! Environment: `SM_BENCH_DIR` (where the shared directory lives; default the temp dir),
//! `SM_BENCH_RUNS` (rounds, default 3), `SM_FIO_RUNTIME` (seconds per fio job, default 5),
//! `SM_BENCH_FS_MIB` (size of the large file, default 1024), `SM_BENCH_GUEST_TIMEOUT`
//! (seconds one guest run may take, default 1200).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use sm_integration::bench::{env_or, median};
use sm_integration::bin_dir;
use sm_test_support::process::{spawn_listening, wait_timeout};

/// Labels of the figures one guest run produces, in order, and their units.
const FIGURES: [(&str, &str); 8] = [
    ("first pass 1M", "MB/s"),
    ("seq read 1M", "MB/s"),
    ("rand read 4k", "IOPS"),
    ("tree: create 10k", "s"),
    ("tree: stat all", "s"),
    ("tree: read all", "s"),
    ("tree: delete all", "s"),
    ("tree: total", "s"),
];

/// The contenders: sm-vhost-user-fs, virtiofsd, and sm-vhost-user-fs with DAX.
const NAMES: [&str; 3] = ["sm-vhost-user-fs", "virtiofsd", "sm DAX"];
/// Index of the DAX contender.
const DAX: usize = 2;

/// Mounting and the fio jobs on the large file: one untimed-by-clock pass over the whole
/// file (`first`: under DAX this maps it into the window), then `runtime` seconds each of
/// sequential 1 MiB and random 4 KiB reads; one `fio` terse line per job.
fn fio_script(mib: u64, runtime: u64, dax: bool, first: bool) -> String {
    let fio = |name: &str, rw: &str, bs: &str, timed: bool| {
        let time = if timed {
            format!("--time_based --runtime={runtime} --ramp_time=1")
        } else {
            String::new()
        };
        format!(
            "fio --name={name} --filename=/mnt/big.bin --size={mib}M --rw={rw} --bs={bs} \
             --ioengine=psync --direct=1 {time} --output-format=terse --terse-version=3 \
             || exit 1; "
        )
    };
    format!(
        "set -e; mount -t virtiofs {opts} bench /mnt; {first}{seq}{rand}",
        opts = if dax { "-o dax=always" } else { "" },
        first = if first {
            fio("first", "read", "1M", false)
        } else {
            String::new()
        },
        seq = fio("seq", "read", "1M", true),
        rand = fio("rand", "randread", "4k", true),
    )
}

/// The guest's script: [`fio_script`], then the small-file tree, printing `fio` terse lines
/// and `phase SECONDS` lines.
fn guest_script(mib: u64, runtime: u64, dax: bool) -> String {
    format!(
        "{fio} up() {{ cut -d' ' -f1 /proc/uptime; }}; \
         phase() {{ echo \"phase $(awk -v a=$1 -v b=$(up) 'BEGIN{{print b-a}}')\"; }}; \
         kb=$(head -c 1023 /dev/zero | tr '\\0' x); \
         drop() {{ sync; echo 3 > /proc/sys/vm/drop_caches; }}; \
         drop; t=$(up); mkdir /mnt/tree; \
         for d in $(seq 100); do mkdir /mnt/tree/d$d; \
           for f in $(seq 100); do echo \"$kb\" > /mnt/tree/d$d/f$f; done; done; \
         sync; phase $t; drop; t=$(up); ls -lR /mnt/tree > /dev/null; phase $t; \
         drop; t=$(up); for d in $(seq 100); do cat /mnt/tree/d$d/* > /dev/null; done; phase $t; \
         drop; t=$(up); for d in $(seq 100); do rm /mnt/tree/d$d/*; rmdir /mnt/tree/d$d; done; \
         rmdir /mnt/tree; sync; phase $t",
        fio = fio_script(mib, runtime, dax, true),
    )
}

/// Parses one guest run's output into the [`FIGURES`] values.
fn parse(out: &str) -> Vec<f64> {
    let fio: Vec<Vec<&str>> = out
        .lines()
        .filter(|l| l.starts_with("3;"))
        .map(|l| l.split(';').collect())
        .collect();
    assert_eq!(fio.len(), 3, "fio output:\n{out}");
    for f in &fio {
        assert_eq!(f[4], "0", "a fio job reported an error: {}", f.join(";"));
    }
    let num = |s: &str| -> f64 { s.parse().expect("a number") };
    let mb_s = |f: &[&str]| num(f[6]) * 1024.0 / 1e6;
    let mut v = vec![mb_s(&fio[0]), mb_s(&fio[1]), num(fio[2][7])];
    let phases: Vec<f64> = out
        .lines()
        .filter_map(|l| l.strip_prefix("phase "))
        .map(num)
        .collect();
    assert_eq!(phases.len(), 4, "guest output:\n{out}");
    v.extend(&phases);
    v.push(phases.iter().sum());
    v
}

fn backend(which: usize, shared: &Path, socket: &Path, mib: u64) -> Child {
    let mut cmd = if which != 1 {
        let mut c = Command::new(bin_dir().join("sm-vhost-user-fs"));
        c.arg("--socket").arg(socket).args(["--tag", "bench"]);
        if which == DAX {
            // Twice the file: the Linux driver starts reclaiming ranges when a fifth of the
            // window is left, and the whole file should stay mapped once read.
            c.arg("--dax-window-mib")
                .arg((2 * mib).next_multiple_of(2).to_string());
        }
        c
    } else {
        let mut c = Command::new("virtiofsd");
        c.arg("--socket-path").arg(socket);
        c
    };
    cmd.arg("--shared-dir").arg(shared);
    spawn_listening(cmd.stdout(Stdio::null()), socket)
}

/// The untimed warm-up: both fio jobs for a second. The first VM a test VM runs pays for
/// translating the nested-virtualisation paths (QEMU TCG), which would otherwise count
/// against whichever contender goes first.
fn warm_up_script(mib: u64, dax: bool) -> String {
    fio_script(mib, 1, dax, false)
}

/// Runs `script` in a guest on the backend listening at `socket` and returns its stdout;
/// a guest that fails, or is still running after `limit` seconds, is an error carrying the
/// end of its kernel log (sm-vmm runs with `--verbose`, into a file).
fn guest_run(socket: &Path, script: &str, limit: u64) -> Result<String, String> {
    // The guest prints only at the end and a run takes minutes here: say it is alive, so
    // the test VM's stall watch (which counts silence) does not stop it.
    let (done_tx, done) = std::sync::mpsc::channel::<()>();
    let ticker = std::thread::spawn(move || {
        let start = std::time::Instant::now();
        while done
            .recv_timeout(std::time::Duration::from_secs(60))
            .is_err()
        {
            eprintln!("    ... {} s", start.elapsed().as_secs());
        }
    });
    let log = tempfile::NamedTempFile::new().expect("a log file");
    let mut vmm = Command::new(bin_dir().join("sm-vmm"))
        .args(["--verbose", "--mem", "512", "--fs-socket"])
        .arg(format!("bench={}", socket.display()))
        .args(["--", "sh", "-c", script])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(log.reopen().expect("the log file"))
        .spawn()
        .expect("running sm-vmm");
    let timed_out = wait_timeout(&mut vmm, std::time::Duration::from_secs(limit)).is_none();
    if timed_out {
        let _ = vmm.kill();
    }
    let out = vmm.wait_with_output().expect("sm-vmm output");
    let _ = done_tx.send(());
    let _ = ticker.join();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    if out.status.success() && !timed_out {
        return Ok(text);
    }
    let log = std::fs::read_to_string(log.path()).unwrap_or_default();
    let tail: Vec<&str> = log.lines().rev().take(30).collect();
    let what = if timed_out {
        format!("did not finish in {limit} s (SM_BENCH_GUEST_TIMEOUT)")
    } else {
        format!("failed ({})", out.status)
    };
    Err(format!(
        "the guest workload {what}; its output:\n{text}\nend of its log:\n{}",
        tail.into_iter().rev().collect::<Vec<_>>().join("\n")
    ))
}

/// Runs `script` on contender `c` (a fresh backend each time). A failed guest is run once
/// more, loudly: the nested emulator this runs in stops a guest now and then.
fn measure(c: usize, shared: &Path, socket: &Path, mib: u64, script: &str, limit: u64) -> String {
    let attempt = || {
        let mut b = backend(c, shared, socket, mib);
        let r = guest_run(socket, script, limit);
        let _ = b.kill();
        let _ = b.wait();
        r
    };
    attempt().unwrap_or_else(|e| {
        eprintln!("RETRY: {}: {e}", NAMES[c]);
        attempt().unwrap_or_else(|e| panic!("{}, twice: {e}", NAMES[c]))
    })
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return; // cargo bench --list / test discovery.
    }
    let runs: usize = env_or("SM_BENCH_RUNS", 3);
    let runtime: u64 = env_or("SM_FIO_RUNTIME", 5);
    let mib: u64 = env_or("SM_BENCH_FS_MIB", 1024);
    let limit: u64 = env_or("SM_BENCH_GUEST_TIMEOUT", 1200);
    let base = std::env::var_os("SM_BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    let work = tempfile::tempdir_in(&base).expect("tempdir");
    let shared = work.path().join("shared");
    std::fs::create_dir(&shared).expect("shared dir");
    let chunk: Vec<u8> = (0..1u64 << 20).map(|i| (i * 31 + i / 4096) as u8).collect();
    {
        use std::io::Write;
        let mut f = std::fs::File::create(shared.join("big.bin")).expect("big.bin");
        for _ in 0..mib {
            f.write_all(&chunk).expect("writing big.bin");
        }
    }
    let socket = work.path().join("fs.sock");
    let scripts = [false, false, true].map(|dax| guest_script(mib, runtime, dax));

    eprintln!("warm-up");
    for (c, name) in NAMES.iter().enumerate() {
        measure(
            c,
            &shared,
            &socket,
            mib,
            &warm_up_script(mib, c == DAX),
            limit,
        );
        eprintln!("  {name}: warmed up");
    }
    // results[contender][figure] = one value per round.
    let mut results = vec![vec![Vec::<f64>::new(); FIGURES.len()]; NAMES.len()];
    for round in 0..runs {
        eprintln!("round {}/{runs}", round + 1);
        // Each round starts with the next contender, so none always runs first.
        for c in (0..NAMES.len()).map(|i| (i + round) % NAMES.len()) {
            let figures = parse(&measure(c, &shared, &socket, mib, &scripts[c], limit));
            eprintln!("  {}: {figures:.2?}", NAMES[c]);
            for (i, f) in figures.into_iter().enumerate() {
                results[c][i].push(f);
            }
        }
    }

    println!(
        "virtio-fs, shared dir in {} ({mib} MiB file), fio psync direct=1 {runtime} s per job, \
         median of {runs} interleaved rounds (each starting with the next contender); guest: \
         1 vCPU, 512 MiB; backends default (sandboxed, cache auto); sm DAX: {} MiB window, \
         mount -o dax=always",
        base.display(),
        2 * mib
    );
    println!(
        "{:<18} {:>18} {:>18} {:>18} {:>12} {:>8}",
        "", NAMES[0], NAMES[1], NAMES[2], "sm/virtiofsd", "DAX/sm"
    );
    for (i, (label, unit)) in FIGURES.iter().enumerate() {
        let [ours, peer, dax] = [0, 1, 2].map(|c| median(results[c][i].clone()));
        // Higher is better for rates, lower for times: a ratio is always "how many times
        // the second one's performance", so > 1 means the first is ahead.
        let ratio = |a: f64, b: f64| if *unit == "s" { b / a } else { a / b };
        println!(
            "{label:<18} {ours:>13.2} {unit:<4} {peer:>13.2} {unit:<4} {dax:>13.2} {unit:<4} {:>12.2} {:>8.2}",
            ratio(ours, peer),
            ratio(dax, ours)
        );
    }
}

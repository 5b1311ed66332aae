//! Block throughput: the same fio jobs (1 MiB sequential write and read, 4 KiB random read
//! and write, libaio, iodepth 32, direct=1) in a guest whose /dev/vda is served by
//! sm-vhost-user-blk, by qemu-storage-daemon behind the same sm-vmm, and host-native on the
//! image file itself (the limit of the storage under both). Contenders are interleaved over
//! rounds; the table shows medians and the ratios. Needs hardware-style KVM: `scripts/bench`
//! runs it inside the test VM where the host's KVM is PVM.
//!
//! Environment: `SM_FIO` (the static fio the guest image carries; required), `SM_BENCH_DIR`
//! (where the image lives; default the temp dir), `SM_BENCH_RUNS` (rounds, default 3),
//! `SM_FIO_RUNTIME` (seconds per job, default 5).

use std::fs::OpenOptions;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use sm_integration::bench::{env_or, median};
use sm_integration::bin_dir;
use sm_test_support::process::spawn_listening;

/// Image size: the region every job works on.
const SIZE_MIB: u64 = 256;
/// (label, fio rw mode, block size) in the order they run.
const JOBS: [(&str, &str, &str); 4] = [
    ("seq write 1M", "write", "1M"),
    ("rand read 4k", "randread", "4k"),
    ("rand write 4k", "randwrite", "4k"),
    ("seq read 1M", "read", "1M"),
];

/// One fio job's result.
#[derive(Clone, Copy, Debug, Default)]
struct Figures {
    iops: f64,
    mb_s: f64,
}

/// The fio command line for all jobs on `filename`, one terse line per job.
fn fio_args(filename: &str, direct: bool, runtime: u64) -> Vec<String> {
    let mut args = vec![
        format!("--filename={filename}"),
        "--ioengine=libaio".into(),
        "--iodepth=32".into(),
        format!("--direct={}", u8::from(direct)),
        format!("--size={SIZE_MIB}M"),
        "--time_based".into(),
        format!("--runtime={runtime}"),
        "--ramp_time=1".into(),
        "--output-format=terse".into(),
        "--terse-version=3".into(),
    ];
    for (i, (_, rw, bs)) in JOBS.iter().enumerate() {
        args.extend([
            format!("--name=j{i}"),
            format!("--rw={rw}"),
            format!("--bs={bs}"),
            "--stonewall".into(),
        ]);
    }
    args
}

/// Parses fio's terse v3 lines: read bandwidth/IOPS are fields 7/8, write 48/49 (1-based).
fn parse_terse(out: &str) -> Vec<Figures> {
    let lines: Vec<&str> = out.lines().filter(|l| l.starts_with("3;")).collect();
    assert_eq!(lines.len(), JOBS.len(), "fio output:\n{out}");
    lines
        .iter()
        .zip(JOBS)
        .map(|(line, (label, rw, _))| {
            let f: Vec<&str> = line.split(';').collect();
            assert_eq!(f[4], "0", "fio job {label} reported an error: {line}");
            let (bw, iops) = if rw.contains("read") {
                (6, 7)
            } else {
                (47, 48)
            };
            let num = |i: usize| -> f64 { f[i].parse().expect("fio number") };
            Figures {
                iops: num(iops),
                mb_s: num(bw) * 1024.0 / 1e6,
            }
        })
        .collect()
}

/// Whether files in `dir` can be opened with O_DIRECT (tmpfs cannot).
fn supports_direct(dir: &Path) -> bool {
    let probe = dir.join(".direct-probe");
    let ok = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .custom_flags(libc::O_DIRECT)
        .open(&probe)
        .is_ok();
    let _ = std::fs::remove_file(&probe);
    ok
}

fn sm_backend(image: &Path, socket: &Path) -> Child {
    let mut cmd = Command::new(bin_dir().join("sm-vhost-user-blk"));
    cmd.arg("--socket").arg(socket).arg("--file").arg(image);
    spawn_listening(cmd.stdout(Stdio::null()), socket)
}

fn qsd_backend(image: &Path, socket: &Path) -> Child {
    let mut cmd = Command::new("qemu-storage-daemon");
    cmd.arg("--blockdev")
        .arg(format!("file,filename={},node-name=d", image.display()))
        .arg("--export")
        .arg(format!(
            "type=vhost-user-blk,id=e,node-name=d,addr.type=unix,addr.path={},writable=on",
            socket.display()
        ));
    spawn_listening(cmd.stdout(Stdio::null()), socket)
}

/// Runs the jobs in a guest on the backend listening at `socket`.
fn guest_run(socket: &Path, runtime: u64) -> Vec<Figures> {
    let out = Command::new(bin_dir().join("sm-vmm"))
        .args(["--mem", "512", "--blk-socket"])
        .arg(socket)
        .args(["--", "fio"])
        .args(fio_args("/dev/vda", true, runtime))
        .stdin(Stdio::null())
        .output()
        .expect("running sm-vmm");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "guest fio failed: {}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    parse_terse(&text)
}

fn host_run(fio: &Path, image: &Path, direct: bool, runtime: u64) -> Vec<Figures> {
    let out = Command::new(fio)
        .args(fio_args(
            image.to_str().expect("UTF-8 path"),
            direct,
            runtime,
        ))
        .output()
        .expect("running fio");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "host fio failed: {}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    parse_terse(&text)
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return; // cargo bench --list / test discovery.
    }
    let fio = PathBuf::from(
        std::env::var_os("SM_FIO")
            .expect("SM_FIO must name the static fio of the guest image (scripts/bench sets it)"),
    );
    let runs: usize = env_or("SM_BENCH_RUNS", 3);
    let runtime: u64 = env_or("SM_FIO_RUNTIME", 5);
    let base = std::env::var_os("SM_BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    let work = tempfile::tempdir_in(&base).expect("tempdir");
    let image = work.path().join("bench.img");
    let socket = work.path().join("blk.sock");
    // Written in full first, so reads never hit holes.
    let fill: Vec<u8> = (0..SIZE_MIB << 20)
        .map(|i| (i * 31 + i / 4096) as u8)
        .collect();
    std::fs::write(&image, &fill).expect("writing the image");
    drop(fill);
    let direct = supports_direct(work.path());

    let names = ["sm-vhost-user-blk", "qemu-storage-daemon", "host-native"];
    // results[contender][job] = one Figures per round.
    let mut results = vec![vec![Vec::<Figures>::new(); JOBS.len()]; names.len()];
    for round in 0..runs {
        eprintln!("round {}/{runs}", round + 1);
        for (c, name) in names.iter().enumerate() {
            let figures = match c {
                0 | 1 => {
                    let mut backend = if c == 0 {
                        sm_backend(&image, &socket)
                    } else {
                        qsd_backend(&image, &socket)
                    };
                    let f = guest_run(&socket, runtime);
                    let _ = backend.kill();
                    let _ = backend.wait();
                    f
                }
                _ => host_run(&fio, &image, direct, runtime),
            };
            eprintln!("  {name} done");
            for (j, f) in figures.into_iter().enumerate() {
                results[c][j].push(f);
            }
        }
    }

    println!(
        "fio, {SIZE_MIB} MiB image in {}, libaio iodepth 32, {runtime} s per job, median of {runs} \
         interleaved rounds; guest: 1 vCPU, 512 MiB, direct=1; host-native direct={}",
        base.display(),
        u8::from(direct)
    );
    print!("{:<15}", "");
    for name in names {
        print!(" {name:>21}");
    }
    println!(" {:>10} {:>10}", "sm/qsd", "sm/host");
    for (j, (label, _, bs)) in JOBS.iter().enumerate() {
        let med: Vec<Figures> = (0..names.len())
            .map(|c| Figures {
                iops: median(results[c][j].iter().map(|f| f.iops).collect()),
                mb_s: median(results[c][j].iter().map(|f| f.mb_s).collect()),
            })
            .collect();
        let (unit, pick): (&str, fn(&Figures) -> f64) = if *bs == "4k" {
            ("IOPS", |f| f.iops)
        } else {
            ("MB/s", |f| f.mb_s)
        };
        print!("{label:<15}");
        for m in &med {
            print!(" {:>16.0} {unit}", pick(m));
        }
        println!(
            " {:>10.2} {:>10.2}",
            pick(&med[0]) / pick(&med[1]),
            pick(&med[0]) / pick(&med[2])
        );
    }
}

//! Guest networking: guest-to-host TCP throughput, host-to-guest download throughput and
//! connection set-up time through `sm run` (sm-vhost-user-net + passt) against QEMU's
//! user-mode network (`-netdev user`, libslirp) on the same kernel, initramfs and guest
//! script, interleaved, `SM_BENCH_RUNS` (default 3) runs each. Both stacks map 10.0.2.2 to
//! the host's loopback, where the servers run. Prints medians and the ratio sm / QEMU.
//! Needs hardware-style KVM: `scripts/bench net` runs it inside the test VM.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sm_integration::bench::{env_or, median};
use sm_integration::bin_dir;
use sm_vmm::initcfg::InitConfig;

/// Bytes the guest sends (and downloads).
const BYTES: usize = 64 << 20;
/// Connections the guest opens one after another.
const CONNECTS: usize = 50;
const MEM_MIB: &str = "512";

/// What the host's servers saw during one run.
#[derive(Default)]
struct Seen {
    /// The upload: first byte to last byte.
    upload: Option<Duration>,
    /// Accept times of the connection loop.
    accepts: Vec<Instant>,
}

/// Starts the three servers; returns their ports (upload sink, download source, connect).
fn servers(seen: Arc<Mutex<Seen>>) -> (u16, u16, u16) {
    let sink = TcpListener::bind("127.0.0.1:0").unwrap();
    let source = TcpListener::bind("127.0.0.1:0").unwrap();
    let connect = TcpListener::bind("127.0.0.1:0").unwrap();
    let ports = (
        sink.local_addr().unwrap().port(),
        source.local_addr().unwrap().port(),
        connect.local_addr().unwrap().port(),
    );
    let s = seen.clone();
    std::thread::spawn(move || {
        for mut conn in sink.incoming().flatten() {
            let mut buf = vec![0u8; 1 << 16];
            let (mut got, mut first) = (0, None);
            while got < BYTES {
                match conn.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        first.get_or_insert_with(Instant::now);
                        got += n;
                    }
                }
            }
            if got == BYTES {
                s.lock().unwrap().upload = first.map(|f| f.elapsed());
            }
        }
    });
    std::thread::spawn(move || {
        let body = vec![0x5au8; BYTES];
        for conn in source.incoming().flatten() {
            // Read the whole request first: closing with unread bytes would reset the
            // connection and drop the unsent rest of the body.
            let mut reader = BufReader::new(&conn);
            let mut line = String::new();
            while reader.read_line(&mut line).is_ok_and(|n| n > 0) && line.trim() != "" {
                line.clear();
            }
            let mut w = &conn;
            let _ = write!(w, "HTTP/1.0 200 OK\r\nContent-Length: {BYTES}\r\n\r\n");
            let _ = w.write_all(&body);
            let _ = conn.shutdown(std::net::Shutdown::Write);
            let _ = std::io::copy(&mut reader, &mut std::io::sink());
        }
    });
    std::thread::spawn(move || {
        for conn in connect.incoming().flatten() {
            seen.lock().unwrap().accepts.push(Instant::now());
            drop(conn);
        }
    });
    ports
}

/// The guest's side: the upload, the timed download (its seconds on stdout), the loop.
/// The download's nc keeps its stdin (a fifo) open until the server closes: passt resets a
/// connection the guest half-closed while host data is still queued, which would cut it short.
fn script((sink, source, connect): (u16, u16, u16)) -> String {
    format!(
        "dd if=/dev/zero bs=65536 count={} 2>/dev/null | nc 10.0.2.2 {sink}; \
         t0=$(cut -d' ' -f1 /proc/uptime); \
         mkfifo /tmp/req; (nc 10.0.2.2 {source} < /tmp/req | wc -c > /tmp/got) & nc=$!; exec 3> /tmp/req; \
         printf 'GET / HTTP/1.0\\r\\n\\r\\n' >&3; wait $nc; exec 3>&-; \
         t1=$(cut -d' ' -f1 /proc/uptime); echo \"download $t0 $t1 $(cat /tmp/got)\"; \
         i=0; while [ $i -lt {CONNECTS} ]; do nc 10.0.2.2 {connect} </dev/null; i=$((i+1)); done",
        BYTES / 65536
    )
}

/// QEMU `-M microvm` with `-netdev user` running `script` as the guest's command.
fn qemu(script: &str, work: &Path) -> Command {
    let data = sm_vmm::config::data_dir();
    let cfg = InitConfig {
        argv: Some(vec!["sh".into(), "-c".into(), script.into()]),
        env: vec![],
    };
    let initrd = work.join("initrd.img");
    let base = std::fs::read(data.join("guest/initramfs.img")).expect("initramfs");
    std::fs::write(
        &initrd,
        sm_vmm::boot::initrd_image(base, &cfg.to_cpio().expect("cpio")),
    )
    .unwrap();
    let net = sm::vm::network::kernel_arg();
    let cmdline = sm_vmm::boot::kernel_cmdline(false, Some(&net)).expect("cmdline");
    let mut c = Command::new("qemu-system-x86_64");
    // ACPI on: sm-init loads virtio_mmio as a module, which never sees the kernel command
    // line's `virtio_mmio.device=` that microvm writes with acpi=off (modprobe would pass it).
    c.args(["-M", "microvm", "-accel", "kvm", "-cpu", "host"])
        .args(["-m", MEM_MIB, "-smp", "1", "-nodefaults", "-no-user-config"])
        .args(["-nographic", "-no-reboot"])
        .args(["-chardev", "stdio,id=s0", "-chardev", "null,id=s1"])
        .args([
            "-device",
            "isa-serial,chardev=s0",
            "-device",
            "isa-serial,chardev=s1",
        ])
        .args(["-device", "isa-debug-exit,iobase=0xf4,iosize=1"])
        .args(["-netdev", "user,id=n0"])
        .args([
            "-device",
            "virtio-net-device,netdev=n0,mac=02:73:6d:00:00:01",
        ])
        .arg("-kernel")
        .arg(sm_vmm::config::default_kernel())
        .arg("-initrd")
        .arg(initrd)
        .args(["-append", &cmdline]);
    c
}

/// `sm run --egress allow=host -- sh -c script`.
fn sm_run(script: &str, runtime: &Path) -> Command {
    let mut c = Command::new(bin_dir().join("sm"));
    c.env("XDG_RUNTIME_DIR", runtime)
        .env("SM_BIN_DIR", bin_dir())
        .args(["run", "--mem", MEM_MIB, "--egress", "allow=host", "--"])
        .args(["sh", "-c", script]);
    c
}

/// One contender's figures over the runs.
#[derive(Default)]
struct Figures {
    upload_mbs: Vec<f64>,
    download_mbs: Vec<f64>,
    connect_ms: Vec<f64>,
}

fn run_once(name: &str, mut cmd: Command, seen: &Arc<Mutex<Seen>>, f: &mut Figures) {
    *seen.lock().unwrap() = Seen::default();
    let out = cmd.stdin(Stdio::null()).output().expect("spawn");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout
        .lines()
        .find_map(|l| l.trim_end_matches('\r').split_once("download "))
        .map(|(_, rest)| rest.to_owned())
        .unwrap_or_else(|| {
            panic!(
                "{name}: no download line (exit {:?}): {stdout}\n{}",
                out.status.code(),
                String::from_utf8_lossy(&out.stderr)
            )
        });
    let t: Vec<f64> = line
        .split_whitespace()
        .filter_map(|v| v.parse().ok())
        .collect();
    assert!(
        t.len() == 3 && t[2] as usize > BYTES,
        "{name}: the download was cut short: {line}"
    );
    let mib = BYTES as f64 / (1 << 20) as f64;
    f.download_mbs.push(mib / (t[1] - t[0]).max(0.01));
    let seen = seen.lock().unwrap();
    let upload = seen
        .upload
        .unwrap_or_else(|| panic!("{name}: the upload did not arrive"));
    f.upload_mbs.push(mib / upload.as_secs_f64());
    assert_eq!(seen.accepts.len(), CONNECTS, "{name}: connections");
    let span = *seen.accepts.last().unwrap() - seen.accepts[0];
    f.connect_ms
        .push(span.as_secs_f64() * 1000.0 / (CONNECTS - 1) as f64);
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return; // cargo bench --list / test discovery.
    }
    let seen = Arc::new(Mutex::new(Seen::default()));
    let script = script(servers(seen.clone()));
    let work = tempfile::tempdir().expect("tempdir");
    let runs: usize = env_or("SM_BENCH_RUNS", 3);
    let (mut sm, mut qemu_f) = (Figures::default(), Figures::default());
    for run in 0..runs {
        eprintln!("run {}/{runs}", run + 1);
        run_once("sm", sm_run(&script, work.path()), &seen, &mut sm);
        run_once("qemu", qemu(&script, work.path()), &seen, &mut qemu_f);
    }
    println!(
        "guest network, {} MiB each way, {CONNECTS} connections; medians of {runs} runs",
        BYTES >> 20
    );
    println!(
        "{:<34} {:>12} {:>14} {:>12}",
        "", "upload MB/s", "download MB/s", "connect ms"
    );
    let row = |name: &str, f: &Figures| {
        (
            median(f.upload_mbs.clone()),
            median(f.download_mbs.clone()),
            median(f.connect_ms.clone()),
            name.to_owned(),
        )
    };
    let rows = [
        row("sm (sm-vhost-user-net + passt)", &sm),
        row("qemu -netdev user (libslirp)", &qemu_f),
    ];
    for (up, down, conn, name) in &rows {
        println!("{name:<34} {up:>12.1} {down:>14.1} {conn:>12.2}");
    }
    println!(
        "ratio sm / qemu: upload {:.2}, download {:.2}, connect time {:.2}",
        rows[0].0 / rows[1].0,
        rows[0].1 / rows[1].1,
        rows[0].2 / rows[1].2
    );
}

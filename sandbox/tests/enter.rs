//! Enters the sandbox for real: each scenario re-runs this binary with `SM_SANDBOX_SCENARIO`
//! set, so the sandboxed process starts single-threaded, and checks how it ends.

use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use sm_sandbox::Policy;
use sm_test_support::process::signal_and_wait;

const SCENARIO: &str = "SM_SANDBOX_SCENARIO";
const DIR: &str = "SM_SANDBOX_DIR";

/// File-opening calls the `expose` scenario needs beyond the serving loop's list.
const FILE_SYSCALLS: &[libc::c_long] = &[
    libc::SYS_openat,
    libc::SYS_mkdirat,
    libc::SYS_getdents64,
    libc::SYS_readlink,
];

fn must(ok: bool, what: &str) {
    if !ok {
        eprintln!("scenario check failed: {what}");
        std::process::exit(3);
    }
}

/// Runs inside the re-executed binary.
fn scenario(name: &str) -> ! {
    let dir = std::env::var(DIR).unwrap_or_default();
    let policy = match name {
        "expose" => Policy::default()
            .allow_syscalls(FILE_SYSCALLS)
            .expose_read_only(Path::new(&dir).join("ro"))
            .expose_writable(Path::new(&dir).join("rw")),
        "proc" => Policy::default().allow_syscalls(FILE_SYSCALLS).mount_proc(),
        "chroot" => Policy::default()
            .allow_syscalls(FILE_SYSCALLS)
            .expose_writable(Path::new(&dir).join("rw")),
        // Workers narrowed to the queue worker list: no file opening.
        "worker_opens" | "worker_serves" => Policy::default()
            .allow_syscalls(FILE_SYSCALLS)
            .expose_read_only(Path::new(&dir).join("ro"))
            .worker_syscalls(&[]),
        _ => Policy::default().allow_syscalls(FILE_SYSCALLS),
    };
    let entered = if name == "chroot" {
        sm_sandbox::enter_chroot(&policy, &Path::new(&dir).join("rw"))
    } else {
        sm_sandbox::enter(&policy)
    };
    if let Err(e) = entered {
        eprintln!("enter: {e}");
        std::process::exit(2);
    }
    match name {
        "isolated" => {
            must(std::process::id() == 1, "PID 1 in a new PID namespace");
            must(
                std::fs::read("/etc/passwd").is_err(),
                "host files invisible",
            );
            must(
                std::fs::read_dir("/").is_err(),
                "Landlock denies even the root",
            );
            must(!Path::new("/proc/self").exists(), "no /proc");
        }
        "expose" => {
            let ro = Path::new(&dir).join("ro");
            let rw = Path::new(&dir).join("rw");
            must(
                std::fs::read(ro.join("f")).ok().as_deref() == Some(b"hello"),
                "read exposed file",
            );
            must(
                std::fs::write(ro.join("g"), b"x").is_err(),
                "read-only path refuses writes",
            );
            must(
                std::fs::write(rw.join("g"), b"written").is_ok(),
                "writable path takes writes",
            );
            must(
                std::fs::read(Path::new(&dir).join("outside")).is_err(),
                "siblings stay hidden",
            );
        }
        "proc" => {
            must(
                std::fs::read_link("/proc/self").ok().as_deref() == Some(Path::new("1")),
                "/proc shows this PID namespace",
            );
            must(
                Path::new("/proc/self/fd/0").exists(),
                "own descriptors visible",
            );
            must(!Path::new("/proc/sys").exists(), "only PIDs (subset=pid)");
            must(
                std::fs::read("/etc/passwd").is_err(),
                "host files still invisible",
            );
        }
        "chroot" => {
            must(
                std::fs::write("/chrooted", b"in").is_ok(),
                "the new root is the directory",
            );
            must(
                std::fs::read(Path::new(&dir).join("ro/f")).is_err(),
                "outside the root unreachable",
            );
        }
        "worker_opens" => {
            let f = Path::new(&dir).join("ro/f");
            must(std::fs::read(&f).is_ok(), "the main thread opens files");
            let worker = std::thread::spawn(move || {
                must(sm_sandbox::narrow_worker_thread().is_ok(), "narrowed");
                // Refused on this thread: the process ends with one line.
                let _ = std::fs::read(&f);
            });
            let _ = worker.join();
            must(false, "the worker's open was refused");
        }
        "worker_serves" => {
            let f = Path::new(&dir).join("ro/f");
            let worker = std::thread::spawn(|| {
                must(sm_sandbox::narrow_worker_thread().is_ok(), "narrowed");
                must(sm_sandbox::narrow_worker_thread().is_ok(), "twice is once");
                // A stop signal sent to the process goes to a thread whose filter lets its
                // handler run (a backend's sends a notification): never to this one.
                let mask = nix::sys::signal::SigSet::thread_get_mask();
                must(
                    mask.is_ok_and(|m| m.contains(nix::sys::signal::Signal::SIGTERM)),
                    "SIGTERM blocked on the narrowed thread",
                );
                // What a queue worker does: allocate, log, wait, and end.
                let v: Vec<u8> = vec![7; 4 << 20];
                eprintln!("worker served {} bytes", v.len());
                std::thread::sleep(Duration::from_millis(5));
                v.len()
            });
            must(
                worker.join().ok() == Some(4 << 20),
                "the worker ran and ended",
            );
            must(
                std::fs::read(&f).ok().as_deref() == Some(b"hello"),
                "the main thread still opens files",
            );
        }
        "threads" => {
            let t = std::thread::spawn(|| 6 * 7);
            must(t.join().ok() == Some(42), "threads still start");
        }
        // SAFETY: plain system calls with integer arguments; the filter should stop them.
        "socket" => unsafe {
            libc::socket(libc::AF_UNIX, libc::SOCK_STREAM, 0);
        },
        // SAFETY: as above; a new process must be refused (clone without CLONE_THREAD).
        "fork" => unsafe {
            libc::fork();
        },
        "exit7" => std::process::exit(7),
        "wait" => std::thread::sleep(Duration::from_secs(30)),
        other => {
            eprintln!("unknown scenario {other}");
            std::process::exit(4);
        }
    }
    std::process::exit(0)
}

fn run(name: &str, dir: &Path, wrap: &[&str]) -> Output {
    let exe = std::env::current_exe().unwrap();
    let mut cmd = match wrap.split_first() {
        Some((first, rest)) => {
            let mut c = Command::new(first);
            c.args(rest).arg(exe);
            c
        }
        None => Command::new(exe),
    };
    cmd.env(SCENARIO, name).env(DIR, dir).stdin(Stdio::null());
    cmd.output().unwrap()
}

fn expect_ok(out: &Output) -> Result<(), String> {
    match out.status.code() {
        Some(0) => Ok(()),
        _ => Err(format!(
            "{:?}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        )),
    }
}

fn expect_blocked(out: &Output, nr: libc::c_long) -> Result<(), String> {
    let stderr = String::from_utf8_lossy(&out.stderr);
    let line = format!("sm-sandbox: seccomp blocked system call {nr}\n");
    if out.status.code() == Some(159) && stderr.contains(&line) {
        Ok(())
    } else {
        Err(format!("{:?}: {stderr}", out.status))
    }
}

/// SIGTERM to the supervisor reaches the sandboxed child, and the supervisor dies of it.
fn signal_forwarding(dir: &Path) -> Result<(), String> {
    let exe = std::env::current_exe().unwrap();
    let mut child = Command::new(exe)
        .env(SCENARIO, "wait")
        .env(DIR, dir)
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let pid = child.id() as i32;
    // Wait until the sandboxed grandchild exists and is under seccomp.
    let start = Instant::now();
    let children = format!("/proc/{pid}/task/{pid}/children");
    loop {
        let grandchild = std::fs::read_to_string(&children).unwrap_or_default();
        let status = std::fs::read_to_string(format!("/proc/{}/status", grandchild.trim()))
            .unwrap_or_default();
        if status.contains("Seccomp:\t2") {
            break;
        }
        if start.elapsed() > Duration::from_secs(10) {
            let _ = child.kill();
            let _ = child.wait();
            return Err("sandboxed child never appeared".into());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let stopped = signal_and_wait(&mut child, libc::SIGTERM, Duration::from_secs(10));
    if !stopped.in_time {
        return Err("the supervisor ignored SIGTERM for 10 s".into());
    }
    let status = stopped.status;
    match status.signal() {
        Some(libc::SIGTERM) => Ok(()),
        _ => Err(format!("supervisor ended with {status:?}")),
    }
}

fn main() {
    if let Ok(name) = std::env::var(SCENARIO) {
        scenario(&name);
    }
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    for sub in ["ro", "rw"] {
        std::fs::create_dir(dir.join(sub)).unwrap();
    }
    std::fs::write(dir.join("ro/f"), b"hello").unwrap();
    std::fs::write(dir.join("outside"), b"secret").unwrap();

    let mut checks: Vec<(&str, Result<(), String>)> = vec![
        ("isolated", expect_ok(&run("isolated", dir, &[]))),
        ("expose", expect_ok(&run("expose", dir, &[]))),
        ("threads", expect_ok(&run("threads", dir, &[]))),
        ("proc", expect_ok(&run("proc", dir, &[]))),
        (
            "socket_blocked",
            expect_blocked(&run("socket", dir, &[]), libc::SYS_socket),
        ),
        (
            "worker_open_blocked",
            expect_blocked(&run("worker_opens", dir, &[]), libc::SYS_openat),
        ),
        ("worker_serves", expect_ok(&run("worker_serves", dir, &[]))),
        (
            "fork_blocked",
            expect_blocked(&run("fork", dir, &[]), libc::SYS_clone),
        ),
        ("exit_status_passes_through", {
            let out = run("exit7", dir, &[]);
            match out.status.code() {
                Some(7) => Ok(()),
                _ => Err(format!("{:?}", out.status)),
            }
        }),
        ("signal_forwarding", signal_forwarding(dir)),
    ];
    if sm_test_support::require(
        sm_test_support::is_root(),
        "root, for the chroot and chroot_write_reached_host checks",
    ) {
        checks.push(("chroot", expect_ok(&run("chroot", dir, &[]))));
        if std::fs::read(dir.join("rw/chrooted")).ok().as_deref() != Some(b"in") {
            checks.push((
                "chroot_write_reached_host",
                Err("rw/chrooted missing".into()),
            ));
        }
    }
    if std::fs::read_to_string(dir.join("rw/g")).ok().as_deref() != Some("written") {
        checks.push((
            "expose_write_reached_host",
            Err("rw/g missing on the host".into()),
        ));
    }
    // Unprivileged: the same isolation through a user namespace.
    if sm_test_support::require(
        sm_test_support::is_root() && Path::new("/usr/bin/setpriv").exists(),
        "root and setpriv (util-linux), for the isolated_unprivileged and proc_unprivileged checks",
    ) {
        let wrap = [
            "setpriv",
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=-all",
        ];
        checks.push((
            "isolated_unprivileged",
            expect_ok(&run("isolated", dir, &wrap)),
        ));
        checks.push(("proc_unprivileged", expect_ok(&run("proc", dir, &wrap))));
    }
    let failed: Vec<_> = checks.iter().filter(|(_, r)| r.is_err()).collect();
    for (name, r) in &checks {
        match r {
            Ok(()) => println!("test {name} ... ok"),
            Err(e) => println!("test {name} ... FAILED: {e}"),
        }
    }
    println!(
        "{} passed, {} failed",
        checks.len() - failed.len(),
        failed.len()
    );
    let failed = !failed.is_empty();
    drop(tmp); // `exit` would skip removing it.
    if failed {
        std::process::exit(1);
    }
}

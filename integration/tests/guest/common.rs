//! Shared helpers for tests that boot real guests with sm-vmm.

use sm_integration::bin_dir;
use sm_test_support::process::{signal_and_wait, spawn_listening, wait_timeout};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Fails loudly unless this machine has a /dev/kvm that boots stock kernels.
pub fn require_kvm() {
    assert!(
        !sm_integration::host_kvm_is_pvm_only(),
        "this host's /dev/kvm is PVM and cannot boot the guest kernel: run these tests inside the \
         test VM (scripts/test does: sm-testvm -- <test binary>)"
    );
    assert!(
        std::path::Path::new("/dev/kvm").exists(),
        "no /dev/kvm: these tests need KVM (or sm-testvm)"
    );
}

/// `sm-vmm` from the workspace build, KVM checked first.
pub fn sm_vmm() -> Command {
    require_kvm();
    let bin = bin_dir().join("sm-vmm");
    assert!(
        bin.exists(),
        "{} not built (cargo build --release)",
        bin.display()
    );
    let mut cmd = Command::new(bin);
    cmd.stdin(Stdio::null());
    cmd
}

/// `sm-vmm` without the KVM check, for argument errors reported before KVM is touched.
pub fn sm_vmm_nokvm() -> Command {
    let mut cmd = Command::new(bin_dir().join("sm-vmm"));
    cmd.stdin(Stdio::null());
    cmd
}

/// Runs `cmd` to completion with a deadline; a hang is a test failure, not a stuck suite.
pub fn run_with_timeout(cmd: &mut Command, limit: Duration) -> Output {
    let child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn sm-vmm");
    wait_with_timeout(child, limit)
}

/// Waits for `child` with a deadline, collecting whatever of its stdout/stderr pipes the
/// caller has not taken; kills it and fails the test on a hang.
pub fn wait_with_timeout(child: Child, limit: Duration) -> Output {
    wait_with_timeout_explained(child, limit, processes)
}

/// The test VM's processes with their state, CPU time and wait channel: what a hang
/// leaves to look at (a spinning leftover, a backend blocked in a call, an idle vCPU).
pub fn processes() -> String {
    Command::new("ps")
        .args(["-eo", "pid,ppid,stat,time,etime,wchan:24,args", "--forest"])
        .output()
        .map(|o| {
            format!(
                "processes at the hang:\n{}{}",
                String::from_utf8_lossy(&o.stdout),
                hung_vmms()
            )
        })
        .unwrap_or_else(|e| format!("ps: {e}"))
}

/// For each running sm-vmm: its threads' kernel stacks (an idle guest's vCPUs sit in
/// `kvm_vcpu_block`), and, when `SM_TEST_HUNG_DIR` is set and it has an API socket, a
/// snapshot of it there (vCPU, LAPIC, IOAPIC and timer state to read after the run).
fn hung_vmms() -> String {
    let mut report = String::new();
    let procs = std::fs::read_dir("/proc").into_iter().flatten().flatten();
    for p in procs {
        let Ok(cmdline) = std::fs::read(p.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<String> = cmdline
            .split(|b| *b == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        if !args.first().is_some_and(|a| a.ends_with("sm-vmm")) {
            continue;
        }
        let pid = p.file_name().to_string_lossy().into_owned();
        report += &format!("---- sm-vmm {pid} threads ----\n");
        for t in threads(&pid) {
            let top: Vec<&str> = t.stack.lines().take(4).collect();
            report += &format!("{} {}: {}\n", t.tid, t.comm, top.join(" < "));
        }
        let api = args.iter().enumerate().find_map(|(i, a)| {
            a.strip_prefix("--api-socket=")
                .map(str::to_owned)
                .or_else(|| {
                    (a == "--api-socket")
                        .then(|| args.get(i + 1).cloned())
                        .flatten()
                })
        });
        let (Some(api), Some(dir)) = (api, std::env::var_os("SM_TEST_HUNG_DIR")) else {
            continue;
        };
        let client = sm_snapshot::api::ApiClient::new(&api);
        let dest = Path::new(&dir).join(format!("hung-{pid}-{}", std::process::id()));
        let status = client
            .status()
            .map(|v| v.to_string())
            .unwrap_or_else(|e| e.to_string());
        let saved = client
            .pause()
            .and_then(|()| client.snapshot(&dest, &[]))
            .map(|()| format!("saved in {}", dest.display()))
            .unwrap_or_else(|e| format!("snapshot failed: {e}"));
        let _ = client.resume();
        report += &format!("status {status}; {saved}\n");
    }
    report
}

/// [`wait_with_timeout`], with `explain` run before a hung child is stopped (SIGTERM, then
/// SIGKILL after 10 s) and its words added to the failure.
pub fn wait_with_timeout_explained(
    mut child: Child,
    limit: Duration,
    explain: impl FnOnce() -> String,
) -> Output {
    let o = drain(child.stdout.take().map(|p| Box::new(p) as _));
    let e = drain(child.stderr.take().map(|p| Box::new(p) as _));
    let Some(status) = wait_timeout(&mut child, limit) else {
        let explained = explain();
        signal_and_wait(&mut child, libc::SIGTERM, Duration::from_secs(10));
        panic!(
            "the command (pid {}) did not finish within {limit:?}; stderr so far: {}\n{explained}",
            child.id(),
            // Only what was written so far: a detached child may keep the pipe open.
            String::from_utf8_lossy(&e.so_far())
        );
    };
    Output {
        status,
        stdout: o.all(),
        stderr: e.all(),
    }
}

/// Boots a guest running `args` (after `--`) with extra sm-vmm flags; 120 s deadline
/// (the test VM runs nested under software emulation), booted once more if the guest
/// stalled ([`run_retrying_stall`]).
pub fn boot(flags: &[&str], args: &[&str]) -> Output {
    boot_with(flags, args, |_| {})
}

/// [`boot`], calling `before(attempt)` before each boot (from 1): a retry after a stall
/// restarts there what the stopped attempt used up (a backend that serves one frontend).
pub fn boot_with(flags: &[&str], args: &[&str], mut before: impl FnMut(u32)) -> Output {
    let mut attempt = 0;
    run_retrying_stall(
        || {
            attempt += 1;
            before(attempt);
            let mut cmd = sm_vmm();
            cmd.args(flags).arg("--").args(args);
            cmd
        },
        Duration::from_secs(120),
    )
}

/// Runs the command `make` builds (in its own process group) with a deadline. A hang where
/// every vCPU of every guest the command started sits halted waiting for an interrupt is the
/// nested emulation's stall (README, "Where guests run"), not the command's: the whole
/// group is stopped and the command runs once more, with a loud `RETRY:` line. Any other
/// hang, or a second stall, fails the test with what was running.
pub fn run_retrying_stall(make: impl FnMut() -> Command, limit: Duration) -> Output {
    run_retrying_stall_explained(make, limit, String::new)
}

/// [`run_retrying_stall`], with `explain` adding what to look at (logs) to a hang's report.
pub fn run_retrying_stall_explained(
    mut make: impl FnMut() -> Command,
    limit: Duration,
    explain: impl Fn() -> String,
) -> Output {
    use std::os::unix::process::CommandExt;
    for attempt in 1.. {
        let mut cmd = make();
        cmd.process_group(0)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn");
        let (o, e) = (
            drain(child.stdout.take().map(|p| Box::new(p) as _)),
            drain(child.stderr.take().map(|p| Box::new(p) as _)),
        );
        if let Some(status) = wait_timeout(&mut child, limit) {
            return Output {
                status,
                stdout: o.all(),
                stderr: e.all(),
            };
        }
        let stalled = guests_stalled(child.id());
        let explained = format!("{}{}", explain(), processes());
        // Listed before the group stops: its backends and sm-vmm lead groups of their own,
        // and once orphaned they would keep what a retry needs (a volume's lock).
        let started = descendants(child.id());
        stop_group(&mut child);
        kill_all(&started);
        // Only what was written so far: a process outside the group may keep the pipe open.
        let stderr = String::from_utf8_lossy(&e.so_far()).into_owned();
        if stalled && attempt == 1 {
            eprintln!(
                "RETRY: {cmd:?} hung after {limit:?} with its guest's vCPUs halted waiting for \
                 an interrupt (the nested emulation's stall); running it once more\n{explained}"
            );
            continue;
        }
        panic!(
            "the command (pid {}) did not finish within {limit:?}{}; stderr so far: {stderr}\n{explained}",
            child.id(),
            if stalled { ", its guest stalled twice" } else { "" }
        );
    }
    unreachable!()
}

/// A pipe read to its end on a thread of its own, whose contents so far can be taken
/// without waiting for the end (a process that escaped a stopped group may hold it open).
struct Drained {
    bytes: std::sync::Arc<std::sync::Mutex<Vec<u8>>>,
    thread: std::thread::JoinHandle<()>,
}

impl Drained {
    /// All of it, once every writer closed the pipe.
    fn all(self) -> Vec<u8> {
        let Drained { bytes, thread } = self;
        let _ = thread.join();
        let all = bytes.lock().unwrap_or_else(|e| e.into_inner()).clone();
        all
    }

    /// What has been read until now.
    fn so_far(&self) -> Vec<u8> {
        self.bytes.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// Starts reading `pipe` (nothing if it is `None`).
fn drain(pipe: Option<Box<dyn std::io::Read + Send>>) -> Drained {
    let bytes = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let sink = bytes.clone();
    let thread = std::thread::spawn(move || {
        let Some(mut p) = pipe else { return };
        let mut buf = [0u8; 8192];
        while let Ok(n) = p.read(&mut buf) {
            if n == 0 {
                break;
            }
            sink.lock()
                .unwrap_or_else(|e| e.into_inner())
                .extend_from_slice(&buf[..n]);
        }
    });
    Drained { bytes, thread }
}

/// Asserts that fio's terse (version 3) line reports no error and a verify pass that read
/// `kib` KiB (field 5 is the error count, field 6 the read KiB).
pub fn assert_fio_verified(terse: &str, kib: u64) {
    let fields: Vec<&str> = terse.trim().split(';').collect();
    assert_eq!(fields.get(4), Some(&"0"), "fio errors: {terse}");
    assert_eq!(
        fields.get(5),
        Some(&kib.to_string().as_str()),
        "verified KiB: {terse}"
    );
}

/// After a command (started in its own process group) hung: whether its guests stalled
/// (see [`run_retrying_stall`]); either way the command, its group and every process it
/// started are stopped.
pub fn stop_hung(child: &mut Child) -> bool {
    let stalled = guests_stalled(child.id());
    let started = descendants(child.id());
    stop_group(child);
    kill_all(&started);
    stalled
}

/// Stops `child`'s process group (SIGTERM, then SIGKILL after 10 s) and reaps `child`.
fn stop_group(child: &mut Child) {
    let group = child.id() as libc::pid_t;
    // SAFETY: kill() of the process group our unreaped child leads; it exists until we reap
    // the child below, so the ID cannot name anything else.
    unsafe { libc::kill(-group, libc::SIGTERM) };
    if wait_timeout(child, Duration::from_secs(10)).is_none() {
        // SAFETY: as above; the child is still not reaped.
        unsafe { libc::kill(-group, libc::SIGKILL) };
        let _ = child.wait();
    }
    // SAFETY: SIGKILL to whatever of the group is left (processes that ignored SIGTERM); an
    // empty group makes this fail with ESRCH, which is fine.
    unsafe { libc::kill(-group, libc::SIGKILL) };
}

/// SIGKILLs each of `pids` still running and waits (10 s at most) until none runs.
fn kill_all(pids: &[u32]) {
    // A zombie holds nothing.
    let running = |pid: &u32| sm::vm::process::alive(nix::unistd::Pid::from_raw(*pid as i32));
    for pid in pids.iter().filter(|p| running(p)) {
        // SAFETY: kill() with a PID listed moments ago as a descendant of our child; at
        // worst it names a process that already ended.
        unsafe { libc::kill(*pid as libc::pid_t, libc::SIGKILL) };
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while pids.iter().any(running) && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// How many looks [`guests_stalled`] takes, 100 ms apart.
const STALL_LOOKS: usize = 10;

/// Whether `root` is or started at least one sm-vmm and every vCPU thread of each sits halted in
/// KVM (`kvm_vcpu_block`/`kvm_vcpu_halt`), in any of [`STALL_LOOKS`] looks 100 ms apart: a
/// stalled guest still wakes for its timers now and then, and one look can land on such a
/// moment.
pub fn guests_stalled(root: u32) -> bool {
    let halted = (0..STALL_LOOKS)
        .filter(|&look| {
            if look > 0 {
                std::thread::sleep(Duration::from_millis(100));
            }
            all_vcpus_halted(root)
        })
        .count();
    eprintln!("hang: every vCPU halted in {halted} of {STALL_LOOKS} looks 100 ms apart");
    halted > 0
}

/// One look for [`guests_stalled`].
fn all_vcpus_halted(root: u32) -> bool {
    // `root` itself too: for `boot`, the command is sm-vmm (its absence from the list made
    // every direct boot's stall look like a hang of sm's own).
    let vmms: Vec<u32> = std::iter::once(root)
        .chain(descendants(root))
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == "sm-vmm")
        })
        .collect();
    !vmms.is_empty()
        && vmms.iter().all(|pid| {
            let vcpus: Vec<Thread> = threads(&pid.to_string())
                .into_iter()
                .filter(|t| t.comm.starts_with("vcpu"))
                .collect();
            !vcpus.is_empty()
                && vcpus.iter().all(|t| {
                    t.stack.contains("kvm_vcpu_block") || t.stack.contains("kvm_vcpu_halt")
                })
        })
}

/// One thread of a process, as /proc shows it.
struct Thread {
    tid: String,
    comm: String,
    /// Its kernel stack, innermost frame first.
    stack: String,
}

/// The threads of process `pid` (none if it is gone).
fn threads(pid: &str) -> Vec<Thread> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task"))
        .into_iter()
        .flatten()
        .flatten();
    tasks
        .map(|t| {
            let read = |f: &str| std::fs::read_to_string(t.path().join(f)).unwrap_or_default();
            Thread {
                tid: t.file_name().to_string_lossy().into_owned(),
                comm: read("comm").trim().to_owned(),
                stack: read("stack"),
            }
        })
        .collect()
}

/// Every process below `root` (children, their children, ...).
fn descendants(root: u32) -> Vec<u32> {
    let parents: Vec<(u32, u32)> = std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|p| {
            let pid: u32 = p.file_name().to_str()?.parse().ok()?;
            let stat = std::fs::read_to_string(p.path().join("stat")).ok()?;
            // The parent is the second field after the command name's closing parenthesis.
            let ppid = stat
                .rsplit_once(')')?
                .1
                .split_whitespace()
                .nth(1)?
                .parse()
                .ok()?;
            Some((pid, ppid))
        })
        .collect();
    let mut found = vec![root];
    let mut i = 0;
    while i < found.len() {
        let parent = found[i];
        found.extend(
            parents
                .iter()
                .filter(|(_, pp)| *pp == parent)
                .map(|(p, _)| *p),
        );
        i += 1;
    }
    found.remove(0);
    found
}

/// Lossy stdout, for messages.
pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Lossy stderr, for messages.
pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A vhost-user backend process (a peer such as qemu-storage-daemon or virtiofsd), ready
/// once its socket exists; killed when dropped.
pub struct Backend {
    child: std::process::Child,
    /// The vhost-user socket it listens on.
    pub socket: std::path::PathBuf,
}

impl Backend {
    /// Starts `cmd` and waits (bounded) for it to create `socket`.
    pub fn start(mut cmd: Command, socket: &std::path::Path) -> Self {
        let child = spawn_listening(cmd.stdout(Stdio::null()).stderr(Stdio::null()), socket);
        Backend {
            child,
            socket: socket.to_path_buf(),
        }
    }

    /// Stops this backend and starts `cmd` on the same socket in its place.
    pub fn restart(&mut self, cmd: Command) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        *self = Backend::start(cmd, &self.socket.clone());
    }

    /// The socket path as a string, for sm-vmm's flags.
    pub fn socket_str(&self) -> &str {
        self.socket.to_str().expect("UTF-8 socket path")
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A qemu-storage-daemon exporting one raw file as vhost-user-blk.
pub fn storage_daemon(
    image: &std::path::Path,
    socket: &std::path::Path,
    writable: bool,
) -> Backend {
    let mut cmd = Command::new("qemu-storage-daemon");
    cmd.arg("--blockdev")
        .arg(format!("file,filename={},node-name=d", image.display()))
        .arg("--export")
        .arg(format!(
            "type=vhost-user-blk,id=e,node-name=d,addr.type=unix,addr.path={},writable={}",
            socket.display(),
            if writable { "on" } else { "off" }
        ));
    Backend::start(cmd, socket)
}

/// Kills process `pid` if the guard is still alive after `limit`, so a test that talks to
/// a VM interactively fails (its reads see end of file) instead of hanging the suite.
pub struct KillAfter(std::sync::Arc<std::sync::atomic::AtomicBool>);

/// Arms a [`KillAfter`] for `pid`.
pub fn kill_after(pid: u32, limit: Duration) -> KillAfter {
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = done.clone();
    std::thread::spawn(move || {
        let start = Instant::now();
        while start.elapsed() < limit {
            if flag.load(std::sync::atomic::Ordering::SeqCst) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        eprintln!(
            "killing pid {pid}: still running after {limit:?}; {}",
            processes()
        );
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGKILL,
        );
    });
    KillAfter(done)
}

impl Drop for KillAfter {
    fn drop(&mut self) {
        self.0.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

/// One request through curl: the HTTP status and the body.
pub fn curl(socket: &Path, method: &str, path: &str, body: Option<&str>) -> (u16, String) {
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "--max-time", "30", "--unix-socket"])
        .arg(socket)
        .args(["-X", method, "-o", "-", "-w", "\n%{http_code}"]);
    if let Some(body) = body {
        cmd.args([
            "-H",
            "Content-Type: application/json",
            "--data-binary",
            body,
        ]);
    }
    let out = cmd
        .arg(format!("http://localhost{path}"))
        .output()
        .expect("run curl");
    assert!(
        out.status.success(),
        "curl -X {method} {path}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).expect("UTF-8 response");
    let (body, code) = text.rsplit_once('\n').expect("curl's status line");
    (code.parse().expect("HTTP status"), body.to_string())
}

/// Asserts an error answer: `status`, and a body that is `{"error": "..."}` with one line
/// containing `words`.
pub fn assert_error(answer: (u16, String), status: u16, words: &str) {
    let (code, body) = answer;
    assert_eq!(code, status, "body: {body}");
    let v: serde_json::Value = serde_json::from_str(&body).expect("JSON error body");
    let message = v["error"].as_str().unwrap_or_else(|| panic!("{body}"));
    assert_eq!(v.as_object().map(|o| o.len()), Some(1), "{body}");
    assert!(
        message.contains(words) && !message.contains('\n'),
        "{message:?} should say {words:?}"
    );
}

/// Waits (bounded) until `done`; a timeout fails the test naming `what`.
pub fn wait_until(limit: Duration, what: &str, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < limit, "{what}: not within {limit:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

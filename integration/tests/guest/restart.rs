//! A backend that dies is replaced while the guest runs: sm-vmm notices the hang-up,
//! connects to the new backend on the same socket and replays the device's set-up, and the
//! guest's requests that were in flight complete with no error.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;

use crate::blk::allocated;
use crate::clone::sm;
use crate::common::*;
use crate::run::run_sm;
use ::sm::vm::process::group_alive;

/// Our block backend in its own process group (its sandbox forks a child), serving `image`.
fn start_blk(image: &Path, socket: &Path) -> Child {
    let _ = std::fs::remove_file(socket);
    let child = Command::new(sm_integration::bin_dir().join("sm-vhost-user-blk"))
        .arg("--socket")
        .arg(socket)
        .arg("--file")
        .arg(image)
        .args(["--size-mib", "64"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
        .expect("start sm-vhost-user-blk");
    wait_until(Duration::from_secs(30), "the backend's socket", || {
        socket.exists()
    });
    child
}

/// Kills the backend's whole process group and waits until none of it is left (so the
/// image's lock is free for the next one).
fn kill_group(child: &mut Child) {
    let group = Pid::from_raw(child.id() as i32);
    let _ = killpg(group, Signal::SIGKILL);
    let _ = child.wait();
    wait_until(
        Duration::from_secs(10),
        "the backend's group to be gone",
        || !group_alive(group),
    );
}

/// What the killer thread did.
struct Kills {
    /// When each kill happened, from the test's start.
    at: Vec<Duration>,
    /// The backend serving when the guest finished.
    last: Child,
}

#[test]
fn a_block_backend_killed_during_fio_is_replaced_and_nothing_is_lost() {
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("vol.img");
    let socket: PathBuf = dir.path().join("vol.sock");
    let first = start_blk(&image, &socket);
    let t0 = Instant::now();
    let (img, sock) = (image.clone(), socket.clone());
    let killer = std::thread::spawn(move || {
        let mut serving = first;
        let mut at = Vec::new();
        // fio has started writing once the sparse image has blocks.
        let deadline = Instant::now() + Duration::from_secs(240);
        while allocated(&img) == 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
        }
        for _ in 0..3 {
            std::thread::sleep(Duration::from_millis(1500));
            kill_group(&mut serving);
            at.push(t0.elapsed());
            serving = start_blk(&img, &sock);
        }
        Kills { at, last: serving }
    });
    let job = "fio --name=v --filename=/dev/vda --direct=1 --ioengine=libaio --iodepth=16 \
               --rw=randwrite --bs=4k --size=48M --verify=crc32c --verify_fatal=1 \
               --output-format=terse --terse-version=3 && dmesg | grep -ci 'i/o error' ; true";
    let out = run_retrying_stall(
        || {
            let mut cmd = sm_vmm();
            cmd.env("SM_LOG", "sm_vmm=info")
                .args(["--blk-socket", socket.to_str().unwrap()])
                .args(["--", "sh", "-c", job]);
            cmd
        },
        Duration::from_secs(300),
    );
    let finished = t0.elapsed();
    let mut kills = killer.join().expect("the killer thread");
    let log = stderr(&out);
    assert_eq!(
        out.status.code(),
        Some(0),
        "stdout: {}\nstderr: {log}",
        stdout(&out)
    );
    assert_eq!(kills.at.len(), 3);
    assert!(
        kills.at.iter().all(|k| *k < finished),
        "every kill must land while the guest runs (kills at {:?}, guest done at {finished:?}): make the job longer",
        kills.at
    );
    assert_eq!(
        log.matches("hung up").count(),
        3,
        "sm-vmm saw each hang-up: {log}"
    );
    assert_eq!(log.matches("is back").count(), 3, "and each return: {log}");
    // fio's terse line, then the guest's count of I/O errors in its kernel log.
    let text = stdout(&out);
    let mut lines = text.lines();
    assert_fio_verified(lines.next().unwrap_or_default(), 49152);
    assert_eq!(
        lines.next(),
        Some("0"),
        "I/O errors in the guest's log: {text}"
    );
    kill_group(&mut kills.last);
}

#[test]
fn a_file_system_backend_that_dies_stops_the_vm_with_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let share = dir.path().join("share");
    std::fs::create_dir(&share).unwrap();
    let socket = dir.path().join("fs.sock");
    let mut backend = {
        let _ = std::fs::remove_file(&socket);
        let child = Command::new(sm_integration::bin_dir().join("sm-vhost-user-fs"))
            .arg("--socket")
            .arg(&socket)
            .arg("--shared-dir")
            .arg(&share)
            .args(["--tag", "m0"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .expect("start sm-vhost-user-fs");
        wait_until(Duration::from_secs(30), "the backend's socket", || {
            socket.exists()
        });
        child
    };
    let marker = share.join("running");
    let fs_socket = format!("m0={}", socket.display());
    let killed = std::thread::scope(|s| {
        let killer = s.spawn(|| {
            wait_until(Duration::from_secs(240), "the guest to write", || {
                marker.exists()
            });
            kill_group(&mut backend);
            Instant::now()
        });
        let guest = "mkdir /m && mount -t virtiofs m0 /m && touch /m/running && \
                     while :; do ls /m >/dev/null; done";
        let out = run_retrying_stall(
            || {
                let mut cmd = sm_vmm();
                cmd.args(["--fs-socket", &fs_socket])
                    .args(["--", "sh", "-c", guest]);
                cmd
            },
            Duration::from_secs(300),
        );
        (
            killer.join().expect("the killer thread"),
            out,
            Instant::now(),
        )
    });
    let (at, out, ended) = killed;
    let log = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "stderr: {log}");
    let lines: Vec<&str> = log.lines().collect();
    assert_eq!(lines.len(), 1, "one line: {log}");
    assert!(
        lines[0].starts_with("sm-vmm: virtio-fs backend at ") && lines[0].contains("hung up"),
        "{log}"
    );
    assert!(
        ended.duration_since(at) < Duration::from_secs(30),
        "the VM stopped {:?} after the kill",
        ended.duration_since(at)
    );
}

/// The PID of the one running process whose command line contains all of `words`.
pub(crate) fn pid_of(words: &[&str]) -> Option<i32> {
    let mut found = vec![];
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        if let Ok(cmd) = std::fs::read(entry.path().join("cmdline")) {
            let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
            if words.iter().all(|w| cmd.contains(w)) {
                found.push(pid);
            }
        }
    }
    // The sandbox forks: the group leader is the lowest PID of the two.
    found.into_iter().min()
}

#[test]
fn sm_restarts_a_killed_volume_backend_and_the_guest_sees_no_error() {
    fio_while_the_backend_fails(Signal::SIGKILL, 3);
}

#[test]
fn a_stopped_volume_backend_misses_its_watchdog_and_is_replaced() {
    // SIGSTOP: the backend still holds its socket, only the watchdog (10 s) can tell.
    fio_while_the_backend_fails(Signal::SIGSTOP, 1);
}

/// A detached VM runs fio with verify on a volume while its backend's process group gets
/// `signal`, `times` times: sm restarts it each time, fio finishes with no error and every
/// block verifies, the guest's log has no I/O error, `sm ps` counts the restarts.
fn fio_while_the_backend_fails(signal: Signal, times: usize) {
    require_kvm();
    let runtime = tempfile::tempdir().unwrap();
    let data = tempfile::tempdir().unwrap();
    let image = data.path().join("pg.img");
    let volume = format!("{}:/data:size=256M", image.display());
    // Retried once if the guest stalls while booting; a hang shows every log of the VM.
    let out = run_sm(
        sm(runtime.path(), &[]).args([
            "run", "--detach", "--name", "db", "--volume", &volume, "--", "sleep", "100000",
        ]),
        runtime.path(),
    );
    assert_eq!(out.status.code(), Some(0), "stderr: {}", stderr(&out));
    let img = image.display().to_string();
    let backend = || pid_of(&["sm-vhost-user-blk", &img]);
    assert!(backend().is_some(), "the volume's backend runs");

    let fio = "fio --name=v --filename=/data/f --size=48M --direct=1 --ioengine=libaio \
               --iodepth=16 --rw=randwrite --bs=4k --verify=crc32c --verify_fatal=1 \
               --output-format=terse --terse-version=3";
    let mut exec = sm(runtime.path(), &[]);
    exec.args(["exec", "db", "--", "sh", "-c", fio])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let started = Instant::now();
    let child = exec.spawn().expect("sm exec");
    let mut kills = vec![];
    while kills.len() < times && started.elapsed() < Duration::from_secs(200) {
        std::thread::sleep(Duration::from_millis(2500));
        if let Some(pid) = backend() {
            let _ = killpg(Pid::from_raw(pid), signal);
            kills.push(started.elapsed());
            // Back under a new PID before the next kill.
            wait_until(Duration::from_secs(30), "the backend's restart", || {
                backend().is_some_and(|p| p != pid)
            });
        }
    }
    let out = wait_with_timeout(child, Duration::from_secs(300));
    let finished = started.elapsed();
    assert_eq!(
        out.status.code(),
        Some(0),
        "stdout: {}\nstderr: {}",
        stdout(&out),
        stderr(&out)
    );
    assert!(
        kills.len() == times && kills.iter().all(|k| *k < finished),
        "{times} x {signal} while fio ran (at {kills:?}, fio done at {finished:?})"
    );
    assert_fio_verified(&stdout(&out), 49152);

    let out = run_with_timeout(sm(runtime.path(), &[]).arg("ps"), Duration::from_secs(30));
    let ps = stdout(&out);
    assert!(
        ps.lines().any(|l| l.contains("pg.img")
            && l.contains("running")
            && l.contains(&format!("restarts {times}"))),
        "sm ps shows the volume's backend running after {times} restarts:\n{ps}"
    );
    let out = run_with_timeout(
        sm(runtime.path(), &[]).args([
            "exec",
            "db",
            "--",
            "sh",
            "-c",
            "dmesg | grep -ci 'i/o error'; true",
        ]),
        Duration::from_secs(60),
    );
    assert_eq!(stdout(&out), "0\n", "I/O errors in the guest's log");
    let out = run_with_timeout(
        sm(runtime.path(), &[]).args(["stop", "db"]),
        Duration::from_secs(90),
    );
    assert_eq!(out.status.code(), Some(0), "stderr: {}", stderr(&out));
    assert!(backend().is_none(), "no backend left");
}

/// Runs `cmd` (an `sm run` in the foreground); once `ready` holds, kills the process group
/// of the backend whose command line has all of `words`. Returns sm's output and how long
/// after the kill it ended.
/// A guest that never gets there stalled (README, "Where guests run") or hung: `reset`
/// undoes what the first run left and `cmd` runs once more; a second time fails the test.
fn kill_under_sm_run(
    mut cmd: Command,
    ready: impl Fn() -> bool,
    reset: impl Fn(),
    words: &[&str],
) -> (std::process::Output, Duration) {
    cmd.stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    let mut child = cmd.spawn().expect("sm run");
    let until = Instant::now() + Duration::from_secs(150);
    while !ready() && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(100));
    }
    if !ready() {
        let stalled = stop_hung(&mut child);
        eprintln!("RETRY: {cmd:?}: the guest did not start within 150 s (stalled: {stalled}); running it once more");
        reset();
        child = cmd.spawn().expect("sm run");
        wait_until(Duration::from_secs(150), "the guest to start", ready);
    }
    let pid = pid_of(words).expect("the backend runs");
    killpg(Pid::from_raw(pid), Signal::SIGKILL).expect("kill the backend");
    let killed = Instant::now();
    let out = wait_with_timeout(child, Duration::from_secs(120));
    (out, killed.elapsed())
}

#[test]
fn a_volume_backend_that_keeps_crashing_stops_sm_run_with_one_line() {
    backend_that_keeps_crashing_stops_sm_run("sm-vhost-user-blk", "vol.img");
}

/// Where the journal cannot help (the backend cannot start at all), the VM stops with one
/// line naming the backend, and never hangs.
#[test]
fn a_mount_backend_that_keeps_crashing_stops_sm_run_with_one_line() {
    backend_that_keeps_crashing_stops_sm_run("sm-vhost-user-fs", "share");
}

/// `sm run` with a volume and a mount, where `program` runs for real the first time and
/// fails at once on every later start; the backend whose command line has `word` (`vol.img`
/// or `share`) is then killed: sm gives up after its burst limit, with one line naming it.
fn backend_that_keeps_crashing_stops_sm_run(program: &str, word: &str) {
    require_kvm();
    let runtime = tempfile::tempdir().unwrap();
    let data = tempfile::tempdir().unwrap();
    // sm finds its programs in SM_BIN_DIR first (then beside itself): a wrapper that runs
    // the real one the first time and fails at once on every later start.
    let bin = data.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    let real = sm_integration::bin_dir().join(program);
    let wrapper = bin.join(program);
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\n[ -e \"$0.ran\" ] && {{ echo 'cannot start' >&2; exit 1; }}\ntouch \"$0.ran\"\nexec {} \"$@\"\n",
            real.display()
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).unwrap();
    let image = data.path().join("vol.img");
    let volume = format!("{}:/data:size=64M", image.display());
    let shared = data.path().join("share");
    std::fs::create_dir(&shared).unwrap();
    let marker = shared.join("guest-ran");
    let share = format!("{}:/host", shared.display());
    let target = if word == "share" {
        shared.display().to_string()
    } else {
        image.display().to_string()
    };
    let mut cmd = sm(runtime.path(), &[]);
    cmd.env("SM_BIN_DIR", &bin)
        .args(["run", "--volume", &volume, "--mount", &share, "--"])
        .args(["sh", "-c", "touch /host/guest-ran; sleep 1000"]);
    let (out, after) = kill_under_sm_run(
        cmd,
        || marker.exists(),
        || drop(std::fs::remove_file(bin.join(format!("{program}.ran")))),
        &[program, &target],
    );
    let log = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "stderr: {log}");
    let lines: Vec<&str> = log.lines().collect();
    assert_eq!(lines.len(), 1, "one line: {log}");
    assert!(
        lines[0].starts_with("sm: ")
            && lines[0].contains(&target)
            && lines[0].contains("stopping the VM"),
        "{log}"
    );
    assert!(
        after < Duration::from_secs(60),
        "stopped {after:?} after the kill"
    );
    assert!(pid_of(&[&target]).is_none(), "nothing of the VM is left");
}

/// A detached VM reads and writes through files it opened on a mount (and works in a
/// directory it changed into) while the mount's backend is killed three times, then every
/// backend gets a planned restart (`sm upgrade`): sm starts each again (the mount's with the
/// journal it keeps), sm-vmm replays the queues, and the guest sees every read and write
/// succeed with the right data: no EBADF, no error, nothing lost or doubled.
#[test]
fn sm_restarts_a_killed_mount_backend_and_the_guests_open_files_keep_working() {
    require_kvm();
    let runtime = tempfile::tempdir().unwrap();
    let share = tempfile::tempdir().unwrap();
    let dir = share.path().display().to_string();
    let lines: String = (0..ITERATIONS).map(|i| format!("line {i}\n")).collect();
    std::fs::write(share.path().join("data"), lines).unwrap();
    std::fs::create_dir(share.path().join("sub")).unwrap();
    std::fs::write(share.path().join("sub/log"), b"").unwrap();
    let mount = format!("{dir}:/host");
    let volumes = tempfile::tempdir().unwrap();
    let volume = format!("{}:/data:size=16M", volumes.path().join("v.img").display());
    let out = run_sm(
        sm(runtime.path(), &[]).args([
            "run", "--detach", "--name", "web", "--mount", &mount, "--volume", &volume, "--",
            "sleep", "100000",
        ]),
        runtime.path(),
    );
    assert_eq!(out.status.code(), Some(0), "stderr: {}", stderr(&out));
    let backend = || pid_of(&["sm-vhost-user-fs", &dir]);
    assert!(backend().is_some(), "the mount's backend runs");

    // Each round drops the guest's page cache, so every read is a FUSE READ through fd 3's
    // handle; every write is a FUSE WRITE through fd 4's (at its offset: a replay rewrites
    // the same bytes); `ls .` lists the directory by the node ID the shell's cwd holds.
    let script = format!(
        "exec 3</host/data 4<>/host/sub/log; cd /host/sub || exit 1; i=0; \
         while [ $i -lt {ITERATIONS} ]; do \
           echo 3 > /proc/sys/vm/drop_caches; \
           read -r l <&3 || {{ echo \"read failed at $i\"; exit 1; }}; \
           [ \"$l\" = \"line $i\" ] || {{ echo \"read '$l' at $i\"; exit 1; }}; \
           echo \"$i $l\" >&4 || exit 1; \
           ls . >/dev/null || exit 1; \
           sleep 0.2; i=$((i+1)); \
         done; echo done $i"
    );
    let mut exec = sm(runtime.path(), &[]);
    exec.args(["exec", "web", "--", "sh", "-c", &script])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let started = Instant::now();
    let child = exec.spawn().expect("sm exec");
    let mut kills = vec![];
    while kills.len() < 3 && started.elapsed() < Duration::from_secs(200) {
        std::thread::sleep(Duration::from_millis(2500));
        if let Some(pid) = backend() {
            let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
            kills.push(started.elapsed());
            wait_until(Duration::from_secs(30), "the backend's restart", || {
                backend().is_some_and(|p| p != pid)
            });
        }
    }
    let before = backend();
    let upgrade = run_with_timeout(
        sm(runtime.path(), &[]).args(["upgrade", "web"]),
        Duration::from_secs(120),
    );
    let upgraded = started.elapsed();
    assert_eq!(
        upgrade.status.code(),
        Some(0),
        "sm upgrade: {}",
        stderr(&upgrade)
    );
    let said = stdout(&upgrade);
    assert!(
        said.lines()
            .any(|l| l.contains(&dir) && l.contains("restarted"))
            && said
                .lines()
                .any(|l| l.contains("v.img") && l.contains("restarted")),
        "sm upgrade restarts the mount's and the volume's backends:\n{said}"
    );
    assert_ne!(
        backend(),
        before,
        "the mount's backend runs under a new PID"
    );
    let out = wait_with_timeout(child, Duration::from_secs(300));
    let finished = started.elapsed();
    assert!(
        upgraded < finished,
        "the upgrade came while the guest worked"
    );
    assert_eq!(
        (out.status.code(), stdout(&out).trim()),
        (Some(0), format!("done {ITERATIONS}").as_str()),
        "stderr: {}",
        stderr(&out)
    );
    assert!(
        kills.len() == 3 && kills.iter().all(|k| *k < finished),
        "3 kills while the guest worked (at {kills:?}, done at {finished:?})"
    );
    let log = std::fs::read_to_string(share.path().join("sub/log")).unwrap();
    let expected: String = (0..ITERATIONS).map(|i| format!("{i} line {i}\n")).collect();
    assert_eq!(log, expected, "every write landed once, in place");

    let out = run_with_timeout(sm(runtime.path(), &[]).arg("ps"), Duration::from_secs(30));
    let ps = stdout(&out);
    assert!(
        ps.lines()
            .any(|l| l.contains(&dir) && l.contains("running") && l.contains("restarts 4")),
        "sm ps shows the mount's backend running after 3 kills and an upgrade:\n{ps}"
    );
    // Each new backend said what it took over from the journal sm kept.
    let said: String = std::fs::read_dir(runtime.path().join("sm/web"))
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("backend-"))
        .map(|e| std::fs::read_to_string(e.path()).unwrap_or_default())
        .collect();
    let took: Vec<&str> = said.lines().filter(|l| l.contains("took over")).collect();
    eprintln!("{}", took.join("\n"));
    assert_eq!(took.len(), 4, "four take-overs:\n{said}");
    let out = run_with_timeout(
        sm(runtime.path(), &[]).args(["stop", "web"]),
        Duration::from_secs(90),
    );
    assert_eq!(out.status.code(), Some(0), "stderr: {}", stderr(&out));
    assert!(backend().is_none(), "no backend left");
}

/// Rounds of the open-files test.
const ITERATIONS: usize = 120;

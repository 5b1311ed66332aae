//! `sm run`, the front door: every backend and sm-vmm started and stopped for the user,
//! mounts and volumes end to end, forwarded ports, the exit code, and nothing left behind.

use crate::common::*;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// `sm` with its own runtime directory (so leftovers are this test's).
pub(crate) fn sm(runtime: &Path) -> Command {
    require_kvm();
    let mut c = Command::new(sm_integration::bin_dir().join("sm"));
    c.env("XDG_RUNTIME_DIR", runtime)
        .env("SM_BIN_DIR", sm_integration::bin_dir())
        .stdin(Stdio::null());
    c
}

/// Processes whose command line mentions `needle` (other than this test).
pub(crate) fn processes_mentioning(needle: &str) -> Vec<String> {
    let mut found = vec![];
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        if entry.file_name().to_string_lossy().parse::<u32>().is_err() {
            continue;
        }
        if let Ok(cmd) = std::fs::read(entry.path().join("cmdline")) {
            let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
            if cmd.contains(needle) {
                found.push(cmd);
            }
        }
    }
    found
}

/// Runs an `sm` command with a 120 s deadline; a hang fails with every log of the VM
/// (sm's steps, sm-vmm's and the backends' output) and the processes still running.
pub(crate) fn run_sm(cmd: &mut Command, runtime: &Path) -> std::process::Output {
    run_sm_within(cmd, runtime, Duration::from_secs(120))
}

/// [`run_sm`] with a deadline of `limit`. A guest that stalls is stopped and the command
/// runs once more, after what the stopped attempt left under `runtime` is removed (the
/// VMs there before stay).
pub(crate) fn run_sm_within(
    cmd: &mut Command,
    runtime: &Path,
    limit: Duration,
) -> std::process::Output {
    let sm_dir = runtime.join("sm");
    let (program, args) = (
        cmd.get_program().to_owned(),
        cmd.get_args().map(|a| a.to_owned()).collect::<Vec<_>>(),
    );
    let envs: Vec<_> = cmd
        .get_envs()
        .map(|(k, v)| (k.to_owned(), v.map(|v| v.to_owned())))
        .collect();
    let dir = cmd.get_current_dir().map(Path::to_path_buf);
    // The VMs there before: a retry removes what the stopped attempt left, not those.
    let vm_dirs = || -> Vec<std::path::PathBuf> {
        let dirs = std::fs::read_dir(&sm_dir).into_iter().flatten().flatten();
        dirs.map(|d| d.path()).collect()
    };
    let before = vm_dirs();
    let mut attempts = 0;
    // The same command again for a retry (a Command cannot be cloned).
    let remake = || {
        attempts += 1;
        if attempts > 1 {
            for left in vm_dirs().into_iter().filter(|d| !before.contains(d)) {
                let _ = std::fs::remove_dir_all(&left).or_else(|_| std::fs::remove_file(&left));
            }
        }
        let mut c = Command::new(&program);
        c.args(&args).stdin(Stdio::null());
        if let Some(dir) = &dir {
            c.current_dir(dir);
        }
        for (k, v) in &envs {
            match v {
                Some(v) => c.env(k, v),
                None => c.env_remove(k),
            };
        }
        c
    };
    run_retrying_stall_explained(remake, limit, || vm_logs(runtime))
}

/// The end of every log of the VMs under `runtime` (sm's steps, sm-vmm's and the
/// backends' output) and the processes still running, for a hang's report.
pub(crate) fn vm_logs(runtime: &Path) -> String {
    let sm_dir = runtime.join("sm");
    let mut report = String::new();
    let entries = || std::fs::read_dir(&sm_dir).into_iter().flatten().flatten();
    // Each VM's own logs, and each detached VM's supervisor log (`NAME.log` beside them).
    let logs = entries()
        .flat_map(|vm| std::fs::read_dir(vm.path()).into_iter().flatten().flatten())
        .chain(entries());
    for log in logs {
        if log.path().extension().is_some_and(|e| e == "log") {
            let text = std::fs::read_to_string(log.path()).unwrap_or_default();
            let tail: Vec<_> = text.lines().rev().take(40).collect();
            report += &format!("---- {} ----\n", log.path().display());
            for line in tail.into_iter().rev() {
                report += line;
                report.push('\n');
            }
        }
    }
    report += &format!(
        "---- processes ----\n{}",
        processes_mentioning(&sm_dir.to_string_lossy()).join("\n")
    );
    report
}

pub(crate) fn assert_nothing_left(runtime: &Path) {
    let sm_dir = runtime.join("sm");
    let left: Vec<_> = std::fs::read_dir(&sm_dir)
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "runtime files left behind: {left:?}");
    let procs = processes_mentioning(&sm_dir.to_string_lossy());
    assert!(procs.is_empty(), "processes left behind: {procs:?}");
}

#[test]
fn sm_run_returns_the_command_code_and_leaves_nothing() {
    let runtime = tempfile::tempdir().unwrap();
    let mut cmd = sm(runtime.path());
    cmd.args([
        "run",
        "--",
        "sh",
        "-c",
        "uname -sr; echo to-stderr >&2; exit 7",
    ]);
    let out = run_sm(&mut cmd, runtime.path());
    assert_eq!(out.status.code(), Some(7), "stderr: {}", stderr(&out));
    let uname = stdout(&out);
    assert!(
        uname.starts_with("Linux 6.1.") && uname.contains("-sm\n"),
        "sm's kernel: {uname}"
    );
    assert_eq!(stderr(&out), "to-stderr\n");
    assert_nothing_left(runtime.path());
}

#[test]
fn mounts_and_volumes_reach_the_host_and_persist() {
    let runtime = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    std::fs::write(work.path().join("greeting"), "hello from the host\n").unwrap();
    let volume = work.path().join("cache.img");
    let mount = format!("{}:/work", work.path().display());
    let vol = format!("{}:/work/node_modules:size=64M", volume.display());
    let mut cmd = sm(runtime.path());
    cmd.args([
        "run",
        "--mount",
        &mount,
        "--volume",
        &vol,
        "-w",
        "/work",
        "-e",
        "WHO=guest",
        "--",
    ])
    .args([
        "sh",
        "-c",
        "cat greeting && echo \"written by the $WHO\" > from-guest && echo kept > node_modules/x",
    ]);
    let out = run_sm(&mut cmd, runtime.path());
    assert_eq!(out.status.code(), Some(0), "stderr: {}", stderr(&out));
    assert_eq!(stdout(&out), "hello from the host\n");
    assert_eq!(
        std::fs::read_to_string(work.path().join("from-guest")).unwrap(),
        "written by the guest\n"
    );
    assert_eq!(std::fs::metadata(&volume).unwrap().len(), 64 << 20);
    assert_nothing_left(runtime.path());

    // The volume is kept: a second run sees what the first wrote.
    let vol = format!("{}:/data", volume.display());
    let mut cmd = sm(runtime.path());
    cmd.args(["run", "--volume", &vol, "--", "cat", "/data/x"]);
    let out = run_sm(&mut cmd, runtime.path());
    assert_eq!(out.status.code(), Some(0), "stderr: {}", stderr(&out));
    assert_eq!(stdout(&out), "kept\n");
    assert_nothing_left(runtime.path());
}

#[test]
fn mount_symlink_policies_hold_through_sm_run() {
    let runtime = tempfile::tempdir().unwrap();
    let share = tempfile::tempdir().unwrap();
    let outside = tempfile::tempdir().unwrap();
    std::fs::write(outside.path().join("secret"), "outside the share\n").unwrap();
    std::os::unix::fs::symlink(outside.path(), share.path().join("cache")).unwrap();

    // follow: a host symlink out of the share (a cache, a toolchain) shows its target,
    // read-only: the sandboxed backend sees the host tree but writes only in the share.
    let mount = format!("{}:/w:symlinks=follow", share.path().display());
    let mut cmd = sm(runtime.path());
    cmd.args(["run", "--mount", &mount, "--", "sh", "-c"]).arg(
        "cat /w/cache/secret; ls /w/cache; \
         if echo x > /w/cache/new; then echo WROTE; else echo refused; fi; \
         echo in-share > /w/mine && cat /w/mine",
    );
    let out = run_sm(&mut cmd, runtime.path());
    assert_eq!(out.status.code(), Some(0), "stderr: {}", stderr(&out));
    assert_eq!(
        stdout(&out),
        "outside the share\nsecret\nrefused\nin-share\n"
    );
    assert!(
        !outside.path().join("new").exists(),
        "a write left the share"
    );
    assert_nothing_left(runtime.path());

    // opaque (the default): every symlink is visible as one and keeps its bytes, whatever
    // its target; the backend never follows one, so the guest resolves it in its own tree.
    let mount = format!("{}:/w", share.path().display());
    let mut cmd = sm(runtime.path());
    cmd.args(["run", "--mount", &mount, "--", "sh", "-c"]).arg(
        "ln -s /etc/passwd /w/escape && readlink /w/escape && test -L /w/escape && \
         mkdir -p /w/venv/bin && ln -s /bin/busybox /w/venv/bin/true && \
         /w/venv/bin/true && echo runs && readlink /w/cache && \
         if cat /w/cache/secret 2>/dev/null; then echo FOLLOWED; else echo not-followed; fi",
    );
    let out = run_sm(&mut cmd, runtime.path());
    assert_eq!(out.status.code(), Some(0), "stderr: {}", stderr(&out));
    assert_eq!(
        stdout(&out),
        format!(
            "/etc/passwd\nruns\n{}\nnot-followed\n",
            outside.path().display()
        )
    );
    assert_eq!(
        std::fs::read_link(share.path().join("escape")).unwrap(),
        Path::new("/etc/passwd")
    );
    assert_nothing_left(runtime.path());
}

/// `uidmap=`/`gidmap=`: the guest's root is not the host's. What it creates belongs to the
/// mapped host IDs, a chown inside the range lands shifted, and host files outside the range
/// show as `nobody`; without the option IDs pass unchanged.
#[test]
fn a_mount_with_an_id_map_keeps_the_guests_root_off_the_hosts() {
    use std::os::unix::fs::MetadataExt;
    let runtime = tempfile::tempdir().unwrap();
    let share = tempfile::tempdir().unwrap();
    std::fs::write(share.path().join("host-file"), "by host root\n").unwrap();
    let mount = format!(
        "{}:/w:uidmap=0-100000-65536:gidmap=0-200000-65536",
        share.path().display()
    );
    let mut cmd = sm(runtime.path());
    cmd.args(["run", "--mount", &mount, "--", "sh", "-c"]).arg(
        "echo x > /w/made && mkdir /w/dir && touch /w/given && chown 1000:1000 /w/given && \
         stat -c '%u:%g' /w/made /w/host-file",
    );
    let out = run_sm(&mut cmd, runtime.path());
    assert_eq!(out.status.code(), Some(0), "stderr: {}", stderr(&out));
    // The guest sees its own IDs for what it made, nobody for the host's root.
    assert_eq!(stdout(&out), "0:0\n65534:65534\n");
    let owner = |name: &str| {
        let m = std::fs::metadata(share.path().join(name)).unwrap();
        (m.uid(), m.gid())
    };
    assert_eq!(owner("made"), (100000, 200000));
    assert_eq!(owner("dir"), (100000, 200000));
    assert_eq!(owner("given"), (101000, 201000));
    assert_eq!(owner("host-file"), (0, 0), "the host's file is untouched");
    assert_nothing_left(runtime.path());

    // Without a map the guest's root is the backend's caller: root here.
    let mount = format!("{}:/w", share.path().display());
    let mut cmd = sm(runtime.path());
    cmd.args(["run", "--mount", &mount, "--", "touch", "/w/plain"]);
    let out = run_sm(&mut cmd, runtime.path());
    assert_eq!(out.status.code(), Some(0), "stderr: {}", stderr(&out));
    assert_eq!(owner("plain"), (0, 0));
    assert_nothing_left(runtime.path());
}

#[test]
fn a_published_port_serves_curl_and_ctrl_c_cleans_up() {
    let runtime = tempfile::tempdir().unwrap();
    let site = tempfile::tempdir().unwrap();
    std::fs::write(site.path().join("index.html"), "served from the guest\n").unwrap();
    // Read-only and DAX: httpd reads the page through the host's page cache.
    let mount = format!("{}:/srv:ro:dax", site.path().display());
    let (child, body) = (1..)
        .find_map(|attempt| {
            use std::os::unix::process::CommandExt;
            let mut child = sm(runtime.path())
                .args(["run", "-p", "18080:80", "--mount", &mount, "--"])
                .args(["httpd", "-f", "-p", "80", "-h", "/srv"])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .process_group(0)
                .spawn()
                .unwrap();
            let start = Instant::now();
            loop {
                let out = Command::new("curl")
                    .args([
                        "-sf",
                        "--max-time",
                        "10",
                        "http://127.0.0.1:18080/index.html",
                    ])
                    .output()
                    .expect("curl");
                if out.status.success() {
                    return Some((child, String::from_utf8_lossy(&out.stdout).into_owned()));
                }
                if start.elapsed() > Duration::from_secs(120) || child.try_wait().unwrap().is_some()
                {
                    let logs = vm_logs(runtime.path());
                    let stalled = stop_hung(&mut child);
                    if stalled && attempt == 1 {
                        eprintln!("RETRY: sm run -p never served, its guest stalled\n{logs}");
                        // What the stopped run left is not what the retry is judged by.
                        let _ = std::fs::remove_dir_all(runtime.path().join("sm"));
                        return None;
                    }
                    let out = child.wait_with_output().unwrap();
                    panic!("never served; sm stderr: {}\n{logs}", stderr(&out));
                }
                std::thread::sleep(Duration::from_millis(200));
            }
        })
        .unwrap();
    assert_eq!(body, "served from the guest\n");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
    let out = wait_with_timeout(child, Duration::from_secs(60));
    assert_eq!(out.status.code(), Some(130), "stderr: {}", stderr(&out));
    assert_nothing_left(runtime.path());
}

#[test]
fn a_detached_vm_serves_until_sm_stop() {
    let runtime = tempfile::tempdir().unwrap();
    let site = tempfile::tempdir().unwrap();
    std::fs::write(site.path().join("index.html"), "detached\n").unwrap();
    let mount = format!("{}:/srv:ro", site.path().display());
    let mut cmd = sm(runtime.path());
    cmd.args([
        "run", "--detach", "--name", "web", "-p", "18081:80", "--mount", &mount, "--",
    ])
    .args(["httpd", "-f", "-p", "80", "-h", "/srv"]);
    // Retried once if the guest stalls while booting; a hang shows every log of the VM.
    let out = run_sm(&mut cmd, runtime.path());
    assert_eq!(out.status.code(), Some(0), "stderr: {}", stderr(&out));
    assert_eq!(stdout(&out), "web\n");

    let page = Command::new("curl")
        .args([
            "-sf",
            "--max-time",
            "20",
            "http://127.0.0.1:18081/index.html",
        ])
        .output()
        .expect("curl");
    assert_eq!(String::from_utf8_lossy(&page.stdout), "detached\n");

    let out = run_with_timeout(sm(runtime.path()).arg("ps"), Duration::from_secs(30));
    assert!(
        stdout(&out).lines().any(|l| l.starts_with("web ")),
        "{}",
        stdout(&out)
    );
    let out = run_with_timeout(
        sm(runtime.path()).args([
            "exec",
            "web",
            "--",
            "sh",
            "-c",
            "cat /srv/index.html; exit 5",
        ]),
        Duration::from_secs(60),
    );
    assert_eq!(out.status.code(), Some(5), "stderr: {}", stderr(&out));
    assert_eq!(stdout(&out), "detached\n");

    let out = run_with_timeout(
        sm(runtime.path()).args(["stop", "web"]),
        Duration::from_secs(90),
    );
    assert_eq!(out.status.code(), Some(0), "stderr: {}", stderr(&out));
    assert_nothing_left(runtime.path());
    let out = run_with_timeout(
        sm(runtime.path()).args(["exec", "web", "--", "true"]),
        Duration::from_secs(30),
    );
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(stderr(&out), "sm: no running VM named web\n");
}

#[test]
fn a_terminal_on_stdin_gives_the_command_a_tty_of_its_size() {
    let runtime = tempfile::tempdir().unwrap();
    let sm_bin = sm_integration::bin_dir().join("sm");
    // script(1) runs sm on a pseudo-terminal, as a user's shell would.
    let line = format!(
        "stty rows 30 cols 100; exec {} run -- sh -c 'tty; stty size; exit 3'",
        sm_bin.display()
    );
    require_kvm();
    let mut cmd = Command::new("script");
    cmd.args(["-qec", &line, "/dev/null"])
        .env("XDG_RUNTIME_DIR", runtime.path())
        .env("SM_BIN_DIR", sm_integration::bin_dir())
        .stdin(Stdio::null());
    let out = run_sm(&mut cmd, runtime.path());
    let shown = stdout(&out);
    assert_eq!(out.status.code(), Some(3), "{shown:?} {}", stderr(&out));
    assert!(shown.contains("/dev/pts/"), "{shown:?}");
    assert!(shown.contains("30 100"), "{shown:?}");
    assert_nothing_left(runtime.path());
}

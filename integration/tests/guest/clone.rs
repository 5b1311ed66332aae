//! `sm snapshot` and `sm restore`, the front door for clones: a detached VM with a live
//! mount and a volume is snapshotted and keeps running; two clones restored at once have
//! its RAM (a tmpfs file), the live mount, a volume each (independent of each other), and
//! different random state; `sm restore -- CMD` exits with the command's status; bad input
//! (a volume in use, a name in use, an altered or truncated snapshot) is one line and
//! leaves nothing running.

use crate::common::*;
use crate::run::run_sm_within;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

/// `sm` with its own runtime directory (so leftovers are this test's).
pub(crate) fn sm(runtime: &Path, args: &[&str]) -> Command {
    require_kvm();
    let mut c = Command::new(sm_integration::bin_dir().join("sm"));
    c.args(args)
        .env("XDG_RUNTIME_DIR", runtime)
        .env("SM_BIN_DIR", sm_integration::bin_dir())
        .stdin(Stdio::null());
    c
}

/// Runs `sm ARGS` (240 s deadline), with every log of the runtime directory in the message
/// if it hangs; a stalled guest's attempt is removed and the command runs once more
/// ([`run_sm_within`]).
pub(crate) fn run(runtime: &Path, args: &[&str]) -> Output {
    run_sm_within(&mut sm(runtime, args), runtime, Duration::from_secs(240))
}

/// The logs under the runtime directory (sm's steps, sm-vmm's and the backends' output).
pub(crate) fn logs(sm_dir: &Path) -> String {
    let mut report = String::new();
    let vms = std::fs::read_dir(sm_dir).into_iter().flatten().flatten();
    for entry in vms {
        let files: Vec<_> = if entry.path().is_dir() {
            std::fs::read_dir(entry.path())
                .into_iter()
                .flatten()
                .flatten()
                .map(|e| e.path())
                .collect()
        } else {
            vec![entry.path()]
        };
        for f in files
            .into_iter()
            .filter(|f| f.extension().is_some_and(|e| e == "log"))
        {
            let text = std::fs::read_to_string(&f).unwrap_or_default();
            let tail: Vec<_> = text.lines().rev().take(30).collect();
            report += &format!("---- {} ----\n", f.display());
            for line in tail.into_iter().rev() {
                report += line;
                report.push('\n');
            }
        }
    }
    report
}

/// Asserts `sm ARGS` succeeds and returns its stdout.
pub(crate) fn ok(runtime: &Path, args: &[&str]) -> String {
    let out = run(runtime, args);
    assert_eq!(
        out.status.code(),
        Some(0),
        "sm {args:?}: stderr: {}\n{}",
        stderr(&out),
        logs(&runtime.join("sm"))
    );
    stdout(&out)
}

/// Processes whose command line mentions `needle`.
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

/// Asserts `sm ARGS` fails with one `sm: ...` line containing `needle`, and that nothing
/// of a VM named `name` (if any) is left (runtime directory, processes).
fn refused(runtime: &Path, args: &[&str], needle: &str, name: Option<&str>) {
    let out = run(runtime, args);
    let e = stderr(&out);
    assert!(
        !out.status.success(),
        "sm {args:?} succeeded; stdout: {}",
        stdout(&out)
    );
    assert_eq!(e.lines().count(), 1, "sm {args:?}: want one line, got: {e}");
    assert!(
        e.starts_with("sm: ") && e.contains(needle),
        "sm {args:?}: want {needle:?} in: {e}"
    );
    let Some(name) = name else { return };
    let dir = runtime.join("sm").join(name);
    assert!(!dir.exists(), "sm {args:?} left {}", dir.display());
    let procs = processes_mentioning(&dir.to_string_lossy());
    assert!(procs.is_empty(), "sm {args:?} left processes: {procs:?}");
}

#[test]
fn clones_share_the_snapshot_and_nothing_else() {
    let runtime = tempfile::tempdir().unwrap();
    let rt = runtime.path();
    let work = tempfile::tempdir().unwrap();
    let data = tempfile::tempdir().unwrap();
    let volume = data.path().join("cache.img");
    let snap = data.path().join("snap");
    let snap_s = snap.to_str().unwrap();
    let mount = format!("{}:/w", work.path().display());
    let vol = format!("{}:/cache:size=64M", volume.display());

    // For scale: a cold boot of the same shape.
    let booting = std::time::Instant::now();
    ok(rt, &["run", "--mem", "256", "--", "true"]);
    eprintln!("cold sm run -- true took {:?}", booting.elapsed());

    assert_eq!(
        ok(
            rt,
            &[
                "run",
                "-d",
                "--name",
                "a",
                "--mem",
                "256",
                "--mount",
                &mount,
                "--volume",
                &vol,
                "--",
                "sleep",
                "2147483647"
            ]
        ),
        "a\n"
    );
    ok(
        rt,
        &[
            "exec",
            "a",
            "--",
            "sh",
            "-c",
            "echo in-a-ram > /tmp/state && echo a-vol > /cache/x",
        ],
    );

    assert_eq!(ok(rt, &["snapshot", "a", snap_s]), format!("{snap_s}\n"));
    ok(rt, &["exec", "a", "--", "true"]);
    let verify = Command::new(sm_integration::bin_dir().join("sm-snapshot"))
        .args(["verify", snap_s])
        .output()
        .unwrap();
    assert!(verify.status.success(), "{}", stderr(&verify));

    // Two clones at once.
    let restoring = std::time::Instant::now();
    let mut starting: Vec<_> = ["b", "c"]
        .iter()
        .map(|n| {
            sm(rt, &["restore", snap_s, "--name", n, "-d"])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for (n, child) in ["b", "c"].iter().zip(starting.drain(..)) {
        let out = wait_with_timeout(child, Duration::from_secs(240));
        assert_eq!(
            out.status.code(),
            Some(0),
            "restore {n}: {}\n{}",
            stderr(&out),
            logs(&rt.join("sm"))
        );
        assert_eq!(stdout(&out), format!("{n}\n"));
    }
    eprintln!(
        "two clones restored at once (sm restore -d, both up) in {:?}",
        restoring.elapsed()
    );
    let ps = ok(rt, &["ps"]);
    for n in ["a", "b", "c"] {
        assert!(ps.lines().any(|l| l.starts_with(&format!("{n} "))), "{ps}");
    }

    // What a had in RAM, and its volume as it was at the snapshot.
    for n in ["b", "c"] {
        assert_eq!(
            ok(rt, &["exec", n, "--", "cat", "/tmp/state"]),
            "in-a-ram\n",
            "{n}"
        );
        assert_eq!(
            ok(rt, &["exec", n, "--", "cat", "/cache/x"]),
            "a-vol\n",
            "{n}"
        );
    }
    // The mount is live in a clone.
    std::fs::write(
        work.path().join("live"),
        "written on the host after the snapshot\n",
    )
    .unwrap();
    assert_eq!(
        ok(rt, &["exec", "b", "--", "cat", "/w/live"]),
        "written on the host after the snapshot\n"
    );
    // Each clone's volume is its own.
    for n in ["b", "c"] {
        ok(
            rt,
            &[
                "exec",
                n,
                "--",
                "sh",
                "-c",
                &format!("echo {n}-vol > /cache/x && sync"),
            ],
        );
    }
    for n in ["b", "c"] {
        assert_eq!(
            ok(rt, &["exec", n, "--", "cat", "/cache/x"]),
            format!("{n}-vol\n")
        );
    }
    assert_eq!(ok(rt, &["exec", "a", "--", "cat", "/cache/x"]), "a-vol\n");
    // Different random state.
    let uuid = |n: &str| {
        ok(
            rt,
            &["exec", n, "--", "cat", "/proc/sys/kernel/random/uuid"],
        )
    };
    let (ub, uc) = (uuid("b"), uuid("c"));
    assert_ne!(ub, uc);
    assert_eq!(ub.trim().len(), 36, "{ub}");

    // A restore with a command exits with its status and leaves nothing.
    let restoring = std::time::Instant::now();
    let out = run(
        rt,
        &[
            "restore",
            snap_s,
            "--name",
            "d",
            "--",
            "sh",
            "-c",
            "cat /tmp/state /cache/x; exit 3",
        ],
    );
    assert_eq!(out.status.code(), Some(3), "stderr: {}", stderr(&out));
    assert_eq!(stdout(&out), "in-a-ram\na-vol\n");
    eprintln!(
        "sm restore -- CMD (restore, reseed, command, stop) took {:?}",
        restoring.elapsed()
    );
    assert!(!rt.join("sm").join("d").exists());

    // --volume: a new file becomes a copy of the snapshot's volume and is kept.
    let kept = data.path().join("e.img");
    let e_vol = format!("{}:/cache", kept.display());
    let out = run(
        rt,
        &[
            "restore",
            snap_s,
            "--name",
            "e",
            "--volume",
            &e_vol,
            "--",
            "sh",
            "-c",
            "cat /cache/x; echo e-vol > /cache/x; sync",
        ],
    );
    assert_eq!(out.status.code(), Some(0), "stderr: {}", stderr(&out));
    assert_eq!(stdout(&out), "a-vol\n");
    assert!(kept.is_file());

    // Bad input: one line each, nothing of the clone left.
    let a_vol = format!("{}:/cache", volume.display());
    refused(
        rt,
        &["restore", snap_s, "--name", "f", "-d", "--volume", &a_vol],
        "in use by the running VM a",
        Some("f"),
    );
    refused(
        rt,
        &["restore", snap_s, "--name", "b", "-d"],
        "a VM named b is already running",
        None,
    );
    // A copy of the snapshot, damaged by `damage`.
    let damaged = |name: &str, damage: &dyn Fn(&Path)| {
        let copy = data.path().join(name);
        let cp = Command::new("cp")
            .args(["-r", "--sparse=always", snap_s, copy.to_str().unwrap()])
            .status()
            .unwrap();
        assert!(cp.success());
        damage(&copy);
        copy.to_str().unwrap().to_owned()
    };
    let altered = damaged("altered", &|d| {
        use std::os::unix::fs::FileExt;
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(d.join("memory"))
            .unwrap();
        let mut b = [0u8; 1];
        f.read_exact_at(&mut b, 4096).unwrap();
        f.write_all_at(&[b[0] ^ 0xff], 4096).unwrap();
    });
    refused(
        rt,
        &["restore", &altered, "--name", "g", "-d"],
        "sha256 does not match",
        Some("g"),
    );
    refused(
        rt,
        &["restore", &altered, "--name", "g", "--", "true"],
        "sha256 does not match",
        Some("g"),
    );
    let truncated = damaged("truncated", &|d| {
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(d.join("memory"))
            .unwrap();
        f.set_len(f.metadata().unwrap().len() / 2).unwrap();
    });
    refused(
        rt,
        &["restore", &truncated, "--name", "g", "-d"],
        "truncated",
        Some("g"),
    );
    let missing = damaged("missing", &|d| {
        std::fs::remove_file(d.join("sm.json")).unwrap()
    });
    refused(
        rt,
        &["restore", &missing, "--name", "g", "-d"],
        "missing",
        Some("g"),
    );
    refused(rt, &["snapshot", "a", snap_s], "already exists", None);

    for n in ["b", "c", "a"] {
        ok(rt, &["stop", n]);
    }
    let left: Vec<_> = std::fs::read_dir(rt.join("sm"))
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "left behind: {left:?}");
    let procs = processes_mentioning(&rt.join("sm").to_string_lossy());
    assert!(procs.is_empty(), "processes left behind: {procs:?}");
}

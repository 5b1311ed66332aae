//! `sm bake`, `sm run --snapshot`, `sm snapshots` and `sm rmsnap`: in an OCI image the test
//! builds, a workload, an extra file and a warm-up that fills a volume with thousands of
//! files are baked once; clones see the files and the running workload at once without
//! re-running the warm-up, and write to the user's volume file (what one writes, the next
//! sees); unchanged inputs are a cache hit that boots nothing (also for two bakes at once),
//! an edited extra file or a new tag bakes again; a workload that ends or a warm-up that
//! fails stores nothing and leaves nothing running.

use crate::clone::{logs, ok, processes_mentioning, run, sm};
use crate::common::*;
use std::path::Path;
use std::time::{Duration, Instant};

/// What a warm-up writes: 2000 files in the volume, the extra file copied beside them.
/// Also an npm-style link in the live mount (`node_modules/x -> ../packages/x`).
const WARMUP: &str =
    "set -e; i=0; while [ $i -lt 2000 ]; do echo $i > /cache/f$i; i=$((i+1)); done; \
                      cp /etc/app.conf /cache/conf; \
                      mkdir -p /src/packages/x /src/node_modules; \
                      ln -sfn ../packages/x /src/node_modules/x; echo warmed";

/// What the test bakes from: `sm bake` flag values.
struct Inputs {
    image: String,
    store: String,
    mount: String,
    vol: String,
    extra: String,
}

impl Inputs {
    /// `sm bake` of `app` with these inputs and `tag`.
    fn args(&self, tag: &str) -> Vec<String> {
        let flags = [
            "bake",
            &self.image,
            "--name",
            "app",
            "--snapshots-dir",
            &self.store,
            "--mem",
            "256",
            "--mount",
            &self.mount,
            "--volume",
            &self.vol,
            "--extra-file",
            &self.extra,
            "--warmup",
            WARMUP,
            "--warmup-tag",
            tag,
            "--kernel-args",
            "sm.test=baked",
            "--",
            "sleep",
            "100000",
        ];
        flags.iter().map(|s| s.to_string()).collect()
    }

    /// Bakes with `tag`; returns (stdout, stderr).
    fn bake(&self, rt: &Path, tag: &str) -> (String, String) {
        let args = self.args(tag);
        let out = run(rt, &args.iter().map(String::as_str).collect::<Vec<_>>());
        assert_eq!(
            out.status.code(),
            Some(0),
            "sm bake: {}\n{}",
            stderr(&out),
            logs(&rt.join("sm"))
        );
        (stdout(&out), stderr(&out))
    }

    /// The output of `argv` in a clone of `app` (`sm run --snapshot`), checked to succeed.
    fn in_clone(&self, rt: &Path, argv: &[&str]) -> String {
        let mut args = vec![
            "run",
            "--snapshot",
            "app",
            "--snapshots-dir",
            &self.store,
            "--",
        ];
        args.extend_from_slice(argv);
        ok(rt, &args)
    }
}

/// Asserts `sm ARGS` fails, its last stderr line an `sm: ` error naming `needle`, and that
/// no VM is left (runtime directory, processes).
fn fails(rt: &Path, args: &[&str], needle: &str) {
    let out = run(rt, args);
    let e = stderr(&out);
    assert!(!out.status.success(), "sm {args:?} succeeded");
    let last = e.lines().last().unwrap_or_default();
    assert!(
        last.starts_with("sm: ") && last.contains(needle),
        "sm {args:?}: want {needle:?} in the last line of: {e}"
    );
    assert_eq!(
        e.lines().filter(|l| l.starts_with("sm: ")).count(),
        1,
        "one error line: {e}"
    );
    let left: Vec<_> = std::fs::read_dir(rt.join("sm"))
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.path().is_dir())
        .collect();
    assert!(left.is_empty(), "sm {args:?} left {left:?}");
    let procs = processes_mentioning(&rt.to_string_lossy());
    assert!(procs.is_empty(), "sm {args:?} left processes: {procs:?}");
}

#[test]
fn a_bake_is_cached_restored_with_its_warm_volume_and_baked_again_on_change() {
    let runtime = tempfile::tempdir().unwrap();
    let rt = runtime.path();
    let data = tempfile::tempdir().unwrap();
    let store = data.path().join("snapshots");
    let store_s = store.to_str().unwrap();
    let volume = data.path().join("cache.img");
    let vol = format!("{}:/cache:size=64M", volume.display());
    let conf = data.path().join("app.conf");
    std::fs::write(&conf, "version one\n").unwrap();
    let extra = format!("{}:/etc/app.conf", conf.display());
    let app = data.path().join("app");
    std::fs::create_dir(&app).unwrap();
    let mount = format!("{}:/src", app.display());
    let layout = data.path().join("layout");
    crate::image::build_layout(&layout, None);
    let image = format!("oci-layout:{}:latest", layout.display());
    let inputs = Inputs {
        image,
        store: store_s.to_owned(),
        mount,
        vol,
        extra,
    };

    let t = Instant::now();
    let (path, err) = inputs.bake(rt, "v1");
    eprintln!("bake took {:?}", t.elapsed());
    assert_eq!(
        path.trim(),
        store.join("app/snapshot").to_str().unwrap(),
        "{err}"
    );
    assert!(err.contains("baked in") && err.contains("warmed"), "{err}");
    // The guest's npm-style link reached the host verbatim (the default policy: opaque).
    assert_eq!(
        std::fs::read_link(app.join("node_modules/x")).unwrap(),
        Path::new("../packages/x")
    );

    // Unchanged inputs: a hit, nothing booted.
    let t = Instant::now();
    let (again, err) = inputs.bake(rt, "v1");
    eprintln!("cached bake took {:?}", t.elapsed());
    assert_eq!(again, path);
    assert!(
        err.contains("cached") && !err.contains("booting"),
        "want a cache hit: {err}"
    );

    // A clone sees the warm volume, the extra file and the workload at once.
    let probe =
        "ls /cache | grep -c '^f'; cat /cache/conf; pidof sleep >/dev/null && echo workload; \
                 grep -o sm.test=baked /proc/cmdline; readlink /src/node_modules/x; \
                 rm /cache/f1; sync";
    let t = Instant::now();
    let out = inputs.in_clone(rt, &["sh", "-c", probe]);
    eprintln!("sm run --snapshot took {:?}", t.elapsed());
    assert_eq!(
        out,
        "2000\nversion one\nworkload\nsm.test=baked\n../packages/x\n"
    );
    // The bake unmounted the volume before its snapshot, so the clone used the user's file
    // (nobody else did): its write persists, and the next clone sees it.
    let out = inputs.in_clone(
        rt,
        &[
            "sh",
            "-c",
            "test -e /cache/f1 && echo f1 || echo gone; cat /cache/f2",
        ],
    );
    assert_eq!(out, "gone\n2\n");

    // An edited extra file bakes again, and clones see the new contents.
    std::fs::write(&conf, "version two\n").unwrap();
    let (_, err) = inputs.bake(rt, "v1");
    assert!(
        err.contains("baked in"),
        "an edited extra file must re-bake: {err}"
    );
    let out = inputs.in_clone(rt, &["cat", "/cache/conf"]);
    assert_eq!(out, "version two\n");

    // A new tag bakes again; two bakes of it at once bake once (the other waits, then hits).
    let spawn = || {
        let args = inputs.args("v2");
        let mut c = sm(rt, &args.iter().map(String::as_str).collect::<Vec<_>>());
        c.stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    let (a, b) = (spawn(), spawn());
    let (a, b) = (
        wait_with_timeout(a, Duration::from_secs(300)),
        wait_with_timeout(b, Duration::from_secs(300)),
    );
    let (ea, eb) = (stderr(&a), stderr(&b));
    assert!(a.status.success() && b.status.success(), "{ea}\n{eb}");
    let baked = [&ea, &eb].iter().filter(|e| e.contains("baked in")).count();
    let cached = [&ea, &eb].iter().filter(|e| e.contains("cached")).count();
    assert_eq!((baked, cached), (1, 1), "one bakes, one hits:\n{ea}\n{eb}");

    let list = ok(rt, &["snapshots", "--snapshots-dir", store_s]);
    assert!(
        list.lines()
            .any(|l| l.starts_with("app ") && l.contains("v2")),
        "{list}"
    );
    assert_eq!(
        ok(rt, &["rmsnap", "app", "--snapshots-dir", store_s]),
        "app\n"
    );
    fails(
        rt,
        &[
            "run",
            "--snapshot",
            "app",
            "--snapshots-dir",
            store_s,
            "--",
            "true",
        ],
        "no snapshot named app",
    );
}

#[test]
fn a_failed_bake_stores_nothing_and_leaves_nothing_running() {
    let runtime = tempfile::tempdir().unwrap();
    let rt = runtime.path();
    let data = tempfile::tempdir().unwrap();
    let store = data.path().join("snapshots");
    let store_s = store.to_str().unwrap();
    let base = [
        "bake",
        "--name",
        "bad",
        "--snapshots-dir",
        store_s,
        "--mem",
        "256",
    ];
    let with =
        |extra: &[&'static str]| -> Vec<&str> { base.iter().chain(extra).copied().collect() };
    // A workload that ends is not a workload.
    fails(rt, &with(&["--", "true"]), "ended before the snapshot");
    // A failing warm-up.
    fails(
        rt,
        &with(&["--warmup", "echo no; exit 3", "--", "sleep", "100000"]),
        "warm-up failed (exit code 3)",
    );
    // Bad names and missing extra files are refused before anything boots.
    fails(
        rt,
        &["bake", "--name", "../x", "--snapshots-dir", store_s],
        "is not a snapshot name",
    );
    fails(
        rt,
        &with(&["--extra-file", "/nonexistent:/etc/x"]),
        "extra file /nonexistent",
    );
    let list = ok(rt, &["snapshots", "--snapshots-dir", store_s]);
    assert_eq!(list.lines().count(), 1, "only the header: {list}");
    let staged: Vec<_> = std::fs::read_dir(&store)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.path().is_dir())
        .collect();
    assert!(staged.is_empty(), "a failed bake left {staged:?}");
}

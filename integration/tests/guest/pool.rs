//! The library's pools (`sm::Image::build`, `image.pool`, `pool.acquire`, `vm.release`):
//! an OCI image the test builds, baked with a warm-up written as code (a cache hit the
//! second time), hands out restored clones that see the warm volume and the running workload at once, never share
//! a writable volume (the first has the user's file, and what it writes there persists;
//! the others copies), lose what the previous user wrote to tmpfs when `restore_on_release`
//! is set and keep it when not; an acquire beyond `max` fails after its timeout; a
//! shut-down pool leaves nothing running.

use crate::clone::processes_mentioning;
use crate::common::*;
use std::time::{Duration, Instant};

/// Output of `sh -c script` in a pooled VM, checked to have succeeded.
fn sh(vm: &sm::PooledVm, script: &str) -> String {
    let out = vm
        .exec(&["sh", "-c", script])
        .timeout(Duration::from_secs(60))
        .output()
        .expect("exec in a pooled VM");
    assert_eq!(
        out.exit.code,
        Some(0),
        "{script}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// The file `path` inside the ext4 image `volume`, read on the host (debugfs, read-only).
fn in_volume(volume: &std::path::Path, path: &str) -> String {
    let out = std::process::Command::new("debugfs")
        .args(["-R", &format!("cat {path}")])
        .arg(volume)
        .output()
        .expect("debugfs (e2fsprogs)");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn a_pool_hands_out_warm_clones_and_resets_them_on_release() {
    require_kvm();
    let runtime = tempfile::tempdir().unwrap();
    // The library finds its runtime directory here; this module's tests run one at a time.
    std::env::set_var("XDG_RUNTIME_DIR", runtime.path());
    std::env::set_var("SM_BIN_DIR", sm_integration::bin_dir());
    let data = tempfile::tempdir().unwrap();
    let store = data.path().join("snapshots");
    let volume = data.path().join("cache.img");
    let layout = data.path().join("layout");
    crate::image::build_layout(&layout, None);
    let reference = format!("oci-layout:{}:latest", layout.display());
    let build = || sm_integration::warm::build("pooltest", Some(&reference), 256, &store, &volume);

    let t = Instant::now();
    let image = build();
    eprintln!("bake took {:?}", t.elapsed());
    assert!(!image.was_cached());
    let t = Instant::now();
    assert!(build().was_cached(), "unchanged inputs: a hit");
    eprintln!("a cached build took {:?}", t.elapsed());

    let pool = image
        .pool(sm::PoolOptions {
            min: 2,
            max: 3,
            restore_on_release: true,
            acquire_timeout: Duration::from_secs(3),
            idle_timeout: Duration::from_secs(600),
            egress: None,
        })
        .unwrap();
    wait_until(Duration::from_secs(180), "two ready VMs", || {
        pool.counts().0 >= 2
    });

    let t = Instant::now();
    let a = pool.acquire().unwrap();
    let first = sh(
        &a,
        "ls /cache | grep -c '^f'; pidof sleep >/dev/null && echo workload",
    );
    eprintln!("acquire -> first exec output took {:?}", t.elapsed());
    assert_eq!(first, "500\nworkload\n");
    sh(&a, "echo a > /tmp/mark; echo a > /cache/mine; sync");
    // Files written and read through the library are where the image's commands see them.
    a.write_file("/tmp/from-host", b"host\n", 0o600).unwrap();
    assert_eq!(sh(&a, "cat /tmp/from-host"), "host\n");
    assert_eq!(a.read_file("/tmp/mark", 64).unwrap(), b"a\n");
    // The first VM has the user's own volume file: its write is there on the host.
    assert_eq!(in_volume(&volume, "/mine"), "a\n");

    // Another VM at the same time has its own copy of the volume as baked.
    let b = pool.acquire().unwrap();
    assert_eq!(
        sh(&b, "cat /cache/mine 2>/dev/null; ls /cache | grep -c '^f'"),
        "500\n"
    );
    // max is 3: a third at once is fine, a fourth times out.
    let c = pool.acquire().unwrap();
    let t = Instant::now();
    match pool.acquire() {
        Err(sm::pool::PoolError::Timeout(..)) => {}
        Err(e) => panic!("a fourth acquire beyond max: want a timeout, got {e}"),
        Ok(_) => panic!("a fourth acquire beyond max 3 succeeded"),
    }
    assert!(t.elapsed() >= Duration::from_secs(3));

    let t = Instant::now();
    a.release();
    eprintln!("release returned after {:?}", t.elapsed());
    // The next VM is a fresh clone: nothing of a's in its RAM, but the user's volume file,
    // free again, with what a wrote to it.
    let d = pool.acquire_within(Duration::from_secs(180)).unwrap();
    assert_eq!(
        sh(&d, "cat /tmp/mark /cache/mine 2>/dev/null; echo ok"),
        "a\nok\n"
    );
    drop((b, c, d));
    pool.shutdown();

    // Without restore_on_release, a VM comes back as it was left.
    let pool = image
        .pool(sm::PoolOptions {
            min: 1,
            max: 1,
            restore_on_release: false,
            acquire_timeout: Duration::from_secs(180),
            idle_timeout: Duration::from_secs(600),
            egress: None,
        })
        .unwrap();
    let a = pool.acquire().unwrap();
    sh(&a, "echo kept > /tmp/mark");
    a.release();
    let a = pool.acquire().unwrap();
    assert_eq!(sh(&a, "cat /tmp/mark"), "kept\n");
    // A running VM snapshots too, and pools from that snapshot see its state.
    let mid = data.path().join("mid");
    a.snapshot(&mid).unwrap();
    assert_eq!(sh(&a, "cat /tmp/mark"), "kept\n", "the VM runs on");
    drop(a);
    pool.shutdown();
    let pool = sm::Image::from_snapshot(&mid)
        .unwrap()
        .pool(sm::PoolOptions {
            min: 0,
            max: 1,
            acquire_timeout: Duration::from_secs(180),
            ..Default::default()
        })
        .unwrap();
    let m = pool.acquire().unwrap();
    assert_eq!(
        sh(&m, "cat /tmp/mark; ls /cache | grep -c '^f'"),
        "kept\n500\n"
    );
    drop(m);
    pool.shutdown();

    let left: Vec<_> = std::fs::read_dir(runtime.path().join("sm"))
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.path().is_dir())
        .collect();
    assert!(left.is_empty(), "a shut-down pool left {left:?}");
    let procs = processes_mentioning(&runtime.path().to_string_lossy());
    assert!(
        procs.is_empty(),
        "a shut-down pool left processes: {procs:?}"
    );
}

//! The Node.js binding (`node/`): its `node --test` suite and every example
//! (`node examples/X.js`) run against real guests, each with its own runtime directory and
//! snapshot store; each must exit 0 and leave no VM process behind. Node.js and the built
//! addon (`node/build.sh`, which `scripts/build.sh` runs) are required: their absence fails
//! the module, it does not skip it.

use crate::clone::processes_mentioning;
use crate::common::*;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The package directory.
fn package() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../node")
}

/// Fails loudly unless `node` runs and the addon is built.
fn require_node() {
    let out = Command::new("node").arg("--version").output().expect(
        "node is not installed: the Node.js binding's tests need it (apt-get install nodejs)",
    );
    assert!(out.status.success(), "node --version failed");
    eprintln!("node {}", String::from_utf8_lossy(&out.stdout).trim());
    let addon = package().join("sm.node");
    assert!(
        addon.exists(),
        "{} is missing: build it with node/build.sh (scripts/build.sh does)",
        addon.display()
    );
}

/// Runs `node ARGS` in the package directory with its output going straight to the
/// console (a long run keeps the test VM's stall watchdog fed); asserts exit 0 within
/// `limit` and that no VM process outlives it.
fn node(args: &[&str], limit: Duration) {
    require_kvm();
    require_node();
    let runtime = tempfile::tempdir().unwrap();
    let data = tempfile::tempdir().unwrap();
    let rt = runtime.path().to_str().unwrap().to_owned();
    eprintln!("=== node {} (in {})", args.join(" "), package().display());
    let t = Instant::now();
    let mut child = Command::new("node")
        .args(args)
        .current_dir(package())
        .env("XDG_RUNTIME_DIR", &rt)
        .env("SM_BIN_DIR", sm_integration::bin_dir())
        .env("SM_EXAMPLE_SNAPSHOTS", data.path().join("snapshots"))
        .env("SM_NODE_TEST_DATA", data.path())
        .env("TMPDIR", data.path())
        .stdin(Stdio::null())
        .spawn()
        .expect("spawn node");
    let guard = kill_after(child.id(), limit);
    let status = child.wait().expect("wait for node");
    drop(guard);
    eprintln!(
        "=== node {}: {status} after {:.1} s",
        args.join(" "),
        t.elapsed().as_secs_f64()
    );
    assert!(status.success(), "node {}: {status}", args.join(" "));
    // Everything was shut down: no sm-vmm or backend of this run is left.
    let start = Instant::now();
    let mut left = processes_mentioning(&rt);
    while !left.is_empty() && start.elapsed() < Duration::from_secs(20) {
        std::thread::sleep(Duration::from_millis(200));
        left = processes_mentioning(&rt);
    }
    assert!(
        left.is_empty(),
        "node {} left processes: {left:?}",
        args.join(" ")
    );
}

/// The examples, by file name (helpers start with `_`).
fn examples() -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(package().join("examples"))
        .expect("node/examples")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".js") && !n.starts_with('_'))
        .collect();
    names.sort();
    assert!(!names.is_empty(), "no examples in node/examples");
    names
}

#[test]
fn node_test_suite_passes() {
    node(
        &["--test", "--test-concurrency=1"],
        Duration::from_secs(1500),
    );
}

#[test]
fn every_example_runs() {
    for name in examples() {
        node(&[&format!("examples/{name}")], Duration::from_secs(600));
    }
    assert!(Path::new(&package().join("README.md")).exists());
}

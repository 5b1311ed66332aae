//! What the VM benchmarks share: settings from the environment, medians, and starting a
//! vhost-user backend to measure.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The environment variable `name` parsed, or `default` when unset or unparsable.
pub fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The median of `v` (the upper one of an even count).
pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// Starts a backend (stdout discarded, stderr shown) and waits up to 30 s for `socket`;
/// panics if it exits first or never listens.
pub fn start_backend(mut cmd: Command, socket: &Path) -> Child {
    let _ = std::fs::remove_file(socket);
    let mut child = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("starting a backend");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !socket.exists() {
        assert!(child.try_wait().unwrap().is_none(), "backend exited early");
        assert!(Instant::now() < deadline, "backend never listened");
        std::thread::sleep(Duration::from_millis(20));
    }
    child
}

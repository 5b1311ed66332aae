//! What the VM benchmarks share: settings from the environment, medians and quantiles, and
//! how much guest RAM a VM holds. Backends are
//! started with `sm_test_support::process::spawn_listening`.

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

/// The `p` quantile (nearest rank) of `v`, in milliseconds.
pub fn percentile(v: &[std::time::Duration], p: f64) -> f64 {
    let mut v = v.to_vec();
    v.sort();
    v[((v.len() as f64 - 1.0) * p).round() as usize].as_secs_f64() * 1000.0
}

/// KiB allocated in the memfds process `pid` holds open (sm-vmm's guest RAM), mapped or not;
/// several descriptors of one memfd (sm-vmm holds one per mapped range) count once.
pub fn memfd_kib(pid: u32) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return 0;
    };
    fds.filter_map(Result::ok)
        .filter(|fd| {
            std::fs::read_link(fd.path())
                .is_ok_and(|target| target.to_string_lossy().starts_with("/memfd:"))
        })
        .filter_map(|fd| std::fs::metadata(fd.path()).ok())
        .map(|md| (md.ino(), md.blocks() / 2))
        .collect::<std::collections::BTreeMap<u64, u64>>()
        .values()
        .sum()
}

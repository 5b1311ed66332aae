//! Helpers for sm's real-guest integration tests and benchmarks (the test VM runner they
//! run in is the `sm-testvm` crate).

pub mod bench;
pub mod warm;

use std::path::{Path, PathBuf};

/// Directory holding the workspace's release binaries (`SM_BIN_DIR` overrides).
pub fn bin_dir() -> PathBuf {
    std::env::var_os("SM_BIN_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/release"))
}

/// Whether this host's KVM is PVM-only, so stock guest kernels must boot in the test VM.
pub fn host_kvm_is_pvm_only() -> bool {
    sm_vmm::kvm::is_pvm_only(Path::new("/sys/module"))
}

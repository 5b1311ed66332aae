//! Locates QEMU, the Rust virtiofsd, the L1 kernel and the test VM initramfs.

use crate::{Error, Result};
use std::env;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// Host programs and images a test VM run needs.
#[derive(Debug, Clone)]
pub struct Tools {
    /// `qemu-system-x86_64` (override: `SM_QEMU`).
    pub qemu: PathBuf,
    /// The Rust virtiofsd (override: `SM_VIRTIOFSD`).
    pub virtiofsd: PathBuf,
    /// The L1 kernel (override: `SM_TESTVM_KERNEL`; default `$SM_DATA_DIR/kernel/vmlinuz`).
    pub kernel: PathBuf,
    /// The L1 initramfs (override: `SM_TESTVM_INITRAMFS`).
    pub initramfs: PathBuf,
}

impl Tools {
    /// Finds everything or says which piece is missing and how to get it.
    pub fn locate() -> Result<Self> {
        let data = env::var_os("SM_DATA_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("/usr/local/share/sm"));
        let kernel = var_or("SM_TESTVM_KERNEL", data.join("kernel/vmlinuz"));
        if !kernel.is_file() {
            return Err(missing(
                &kernel,
                "L1 kernel",
                "guest/assets/fetch-kernel.sh",
            ));
        }
        let initramfs = var_or("SM_TESTVM_INITRAMFS", data.join("testvm/initramfs.img"));
        if !initramfs.is_file() {
            let script = "testvm/build-initramfs.sh";
            return Err(missing(&initramfs, "test VM initramfs", script));
        }
        let virtiofsd = program("SM_VIRTIOFSD", &["/usr/local/bin/virtiofsd"], "virtiofsd")
            .ok_or_else(|| {
                Error::new(
                    "the Rust virtiofsd is not installed (run the project setup: cargo install \
                     virtiofsd --version 1.14.0 --locked --root /usr/local)",
                )
            })?;
        let qemu = program("SM_QEMU", &[], "qemu-system-x86_64").ok_or_else(|| {
            Error::new("qemu-system-x86_64 is not installed (apt-get install qemu-system-x86)")
        })?;
        Ok(Tools {
            qemu,
            virtiofsd,
            kernel,
            initramfs,
        })
    }
}

fn missing(path: &Path, what: &str, script: &str) -> Error {
    Error::new(format!(
        "no {what} at {} (run the project setup: {script})",
        path.display()
    ))
}

fn var_or(var: &str, default: PathBuf) -> PathBuf {
    env::var_os(var).map(PathBuf::from).unwrap_or(default)
}

/// `$var` if set, else the first executable of `fixed`, else `name` on `$PATH`.
fn program(var: &str, fixed: &[&str], name: &str) -> Option<PathBuf> {
    if let Some(p) = env::var_os(var) {
        return Some(PathBuf::from(p)).filter(|p| is_executable(p));
    }
    let on_path = env::var_os("PATH")
        .map(|p| {
            env::split_paths(&p)
                .map(|d| d.join(name))
                .collect::<Vec<_>>()
        })
        .unwrap_or_default();
    fixed
        .iter()
        .map(PathBuf::from)
        .chain(on_path)
        .find(|p| is_executable(p))
}

fn is_executable(p: &Path) -> bool {
    p.metadata()
        .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

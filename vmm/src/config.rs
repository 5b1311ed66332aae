//! VM configuration and its validation: every bad value is refused here with one clear
//! message, before any KVM state exists.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

/// Smallest guest RAM sm-vmm accepts; the Debian kernel and initramfs need roughly this.
pub const MIN_MEM_MIB: u64 = 128;
/// Largest vCPU count the MADT's 8-bit APIC IDs allow here.
pub const MAX_VCPUS: u32 = 254;
/// Virtio devices fit in the IOAPIC pins between the legacy ones and the Generic Event
/// Device's (GSI 5-22).
pub const MAX_VIRTIO_DEVICES: usize =
    (crate::layout::GED_GSI - crate::layout::VIRTIO_GSI_START) as usize;

/// Errors in the configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// `--vcpus 0` or too many.
    #[error("--vcpus must be between 1 and {MAX_VCPUS}, not {0}")]
    Vcpus(u32),
    /// Below the floor.
    #[error("--mem {0} MiB is too small: the guest needs at least {MIN_MEM_MIB} MiB")]
    MemTooSmall(u64),
    /// More than the host has.
    #[error("--mem {0} MiB is more than this host's {1} MiB of memory")]
    MemTooLarge(u64, u64),
    /// `--fs-replay` names a tag no file system has.
    #[error("--fs-replay {0}: no --fs-socket has that tag")]
    ReplayTag(String),
    /// Two file systems with one tag.
    #[error("--fs-socket tag '{0}' is used twice")]
    DuplicateTag(String),
    /// A guest CID the vsock address space reserves.
    #[error("--cid {0} is reserved: guest CIDs are 3 to 4294967294")]
    Cid(u64),
    /// `--cid` without a vsock device.
    #[error("--cid needs --vsock-socket")]
    CidWithoutVsock,
    /// More devices than interrupt lines.
    #[error("at most {MAX_VIRTIO_DEVICES} virtio devices are supported, not {0}")]
    TooManyDevices(usize),
    /// A file that must exist does not.
    #[error("{what} {path} does not exist{hint}")]
    Missing {
        /// "kernel" or "initramfs".
        what: &'static str,
        /// The path tried.
        path: String,
        /// How to get it.
        hint: &'static str,
    },
}

/// Everything needed to boot one VM.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VmConfig {
    /// Number of vCPUs.
    pub vcpus: u32,
    /// Guest RAM in MiB.
    pub mem_mib: u64,
    /// bzImage kernel.
    pub kernel: PathBuf,
    /// Initramfs holding sm-init.
    pub initrd: PathBuf,
    /// Extra kernel command-line parameters.
    pub cmdline_append: Option<String>,
    /// Show the kernel's boot log (on stderr).
    pub verbose: bool,
    /// Command to run; `None` means an interactive shell on the console.
    pub command: Option<Vec<OsString>>,
    /// Extra environment for the command (`KEY=VALUE`).
    pub env: Vec<OsString>,
    /// vhost-user-blk backend sockets, in guest order (vda, vdb, ...).
    pub blk_sockets: Vec<PathBuf>,
    /// vhost-user-fs backends: (mount tag, socket).
    pub fs_sockets: Vec<(String, PathBuf)>,
    /// Tags of virtio-fs devices whose requests are replayed on a new backend after a
    /// hang-up (`--fs-replay`).
    pub fs_replay: Vec<String>,
    /// vhost-user-vsock backend socket.
    pub vsock_socket: Option<PathBuf>,
    /// The guest CID the vsock backend must serve (checked against its config space).
    pub cid: Option<u64>,
    /// The vhost-user-net backend's socket.
    pub net_socket: Option<PathBuf>,
    /// The network device's MAC address.
    pub mac: [u8; 6],
}

/// The guest's MAC address unless `--mac` says otherwise (locally administered, unicast).
pub const DEFAULT_MAC: [u8; 6] = [0x02, 0x73, 0x6d, 0x00, 0x00, 0x01];

/// Directory where the setup installs the guest kernel and initramfs.
pub fn data_dir() -> PathBuf {
    std::env::var_os("SM_DATA_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/local/share/sm"))
}

/// The kernel sm-vmm boots when `--kernel` is not given: sm's own (guest/kernel/sm.config),
/// an uncompressed vmlinux with every driver built in, booted through PVH.
pub fn default_kernel() -> PathBuf {
    data_dir().join("sm-kernel/vmlinux")
}

/// The Debian cloud kernel the setup also installs (a bzImage, with its modules in the
/// initramfs): what `--kernel` names to boot a distribution kernel.
pub fn debian_kernel() -> PathBuf {
    data_dir().join("kernel/vmlinuz")
}

/// The initramfs sm-vmm boots when `--initrd` is not given.
pub fn default_initrd() -> PathBuf {
    data_dir().join("guest/initramfs.img")
}

/// The host's total memory in MiB, from /proc/meminfo.
pub fn host_mem_mib() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = info.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024)
}

const SETUP_HINT: &str = " (run the setup from the README, or pass the path explicitly)";

impl VmConfig {
    /// Checks the configuration against limits and the host.
    pub fn validate(&self, host_mem_mib: Option<u64>) -> Result<(), ConfigError> {
        if self.vcpus == 0 || self.vcpus > MAX_VCPUS {
            return Err(ConfigError::Vcpus(self.vcpus));
        }
        if self.mem_mib < MIN_MEM_MIB {
            return Err(ConfigError::MemTooSmall(self.mem_mib));
        }
        if let Some(host) = host_mem_mib.filter(|h| self.mem_mib > *h) {
            return Err(ConfigError::MemTooLarge(self.mem_mib, host));
        }
        if let Some(cid) = self.cid {
            if self.vsock_socket.is_none() {
                return Err(ConfigError::CidWithoutVsock);
            }
            if !(3..u64::from(u32::MAX)).contains(&cid) {
                return Err(ConfigError::Cid(cid));
            }
        }
        let devices = self.blk_sockets.len()
            + self.fs_sockets.len()
            + usize::from(self.vsock_socket.is_some())
            + usize::from(self.net_socket.is_some());
        if devices > MAX_VIRTIO_DEVICES {
            return Err(ConfigError::TooManyDevices(devices));
        }
        let mut tags = std::collections::HashSet::new();
        for (tag, _) in &self.fs_sockets {
            if !tags.insert(tag) {
                return Err(ConfigError::DuplicateTag(tag.clone()));
            }
        }
        if let Some(tag) = self.fs_replay.iter().find(|t| !tags.contains(t)) {
            return Err(ConfigError::ReplayTag(tag.clone()));
        }
        for (what, path) in [("kernel", &self.kernel), ("initramfs", &self.initrd)] {
            if !Path::new(path).is_file() {
                let default = *path == default_kernel() || *path == default_initrd();
                let hint = if default { SETUP_HINT } else { "" };
                return Err(ConfigError::Missing {
                    what,
                    path: path.display().to_string(),
                    hint,
                });
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> VmConfig {
        let exe = std::env::current_exe().unwrap();
        VmConfig {
            vcpus: 1,
            mem_mib: 256,
            kernel: exe.clone(),
            initrd: exe,
            cmdline_append: None,
            verbose: false,
            command: None,
            env: vec![],
            blk_sockets: vec![],
            fs_sockets: vec![],
            fs_replay: vec![],
            vsock_socket: None,
            cid: None,
            net_socket: None,
            mac: DEFAULT_MAC,
        }
    }

    #[test]
    fn good_config_passes() {
        config().validate(Some(4096)).unwrap();
    }

    #[test]
    fn vcpu_limits() {
        for bad in [0, 255, 1000] {
            let c = VmConfig {
                vcpus: bad,
                ..config()
            };
            assert!(matches!(c.validate(None), Err(ConfigError::Vcpus(v)) if v == bad));
        }
        VmConfig {
            vcpus: 254,
            ..config()
        }
        .validate(None)
        .unwrap();
    }

    #[test]
    fn memory_limits() {
        let c = VmConfig {
            mem_mib: 64,
            ..config()
        };
        assert!(matches!(
            c.validate(None),
            Err(ConfigError::MemTooSmall(64))
        ));
        let c = VmConfig {
            mem_mib: 8192,
            ..config()
        };
        let err = c.validate(Some(4096)).unwrap_err();
        assert_eq!(
            err.to_string(),
            "--mem 8192 MiB is more than this host's 4096 MiB of memory"
        );
    }

    #[test]
    fn fs_tags_are_unique() {
        let c = VmConfig {
            fs_sockets: vec![("w".into(), "/a".into()), ("w".into(), "/b".into())],
            ..config()
        };
        assert_eq!(
            c.validate(None).unwrap_err().to_string(),
            "--fs-socket tag 'w' is used twice"
        );
    }

    #[test]
    fn missing_files_are_named() {
        let c = VmConfig {
            kernel: "/nonexistent/vmlinuz".into(),
            ..config()
        };
        let err = c.validate(None).unwrap_err().to_string();
        assert_eq!(err, "kernel /nonexistent/vmlinuz does not exist");
    }

    #[test]
    fn host_memory_is_read() {
        assert!(host_mem_mib().unwrap() > 0);
    }
}

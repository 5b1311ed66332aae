//! The manifest: what a snapshot directory holds, serialized as `manifest.json`.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, Read};
use std::path::Path;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The manifest's file name inside a snapshot directory.
pub const MANIFEST_FILE: &str = "manifest.json";

/// Version of the directory format; a reader refuses any other.
pub const MANIFEST_FORMAT_VERSION: u32 = 1;

/// Everything recorded about a snapshot directory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// [`MANIFEST_FORMAT_VERSION`] of the writer.
    pub format_version: u32,
    /// When the snapshot was completed, in seconds since the Unix epoch.
    pub created_unix_secs: u64,
    /// The host that took the snapshot.
    pub host: HostFingerprint,
    /// sha256 (hex) of the guest kernel the VM booted, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernel_sha256: Option<String>,
    /// sha256 (hex) of the initramfs the VM booted, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initramfs_sha256: Option<String>,
    /// Where guest RAM is and how it maps onto the memory file.
    pub memory: MemoryLayout,
    /// The VM's devices.
    pub devices: Vec<DeviceEntry>,
    /// Every file of the snapshot except the manifest itself.
    pub files: Vec<FileEntry>,
}

/// The host a snapshot was taken on, to tell a restore on a different host apart.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostFingerprint {
    /// CPU vendor (`vendor_id` in /proc/cpuinfo, e.g. `GenuineIntel`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_vendor: Option<String>,
    /// CPU model name (`model name` in /proc/cpuinfo).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_model: Option<String>,
    /// `KVM_GET_API_VERSION` of /dev/kvm.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kvm_api_version: Option<i32>,
    /// Anything else worth recording (free-form key and value).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub extra: BTreeMap<String, String>,
}

impl HostFingerprint {
    /// Reads this host's fingerprint; what cannot be read is left out.
    pub fn of_this_host() -> HostFingerprint {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let field = |name: &str| {
            cpuinfo.lines().find_map(|l| {
                let (key, value) = l.split_once(':')?;
                (key.trim() == name).then(|| value.trim().to_owned())
            })
        };
        HostFingerprint {
            cpu_vendor: field("vendor_id"),
            cpu_model: field("model name"),
            kvm_api_version: kvm_ioctls::Kvm::new().ok().map(|k| k.get_api_version()),
            extra: BTreeMap::new(),
        }
    }
}

/// Guest RAM: the memory file and the regions it holds.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemoryLayout {
    /// Name of the memory file in the snapshot directory (one of [`Manifest::files`]).
    pub file: String,
    /// The guest RAM regions stored in that file.
    pub regions: Vec<MemoryRegion>,
}

impl MemoryLayout {
    /// The first region that does not fit in a memory file of `file_size` bytes.
    pub fn region_beyond(&self, file_size: u64) -> Option<&MemoryRegion> {
        self.regions.iter().find(|r| {
            r.file_offset
                .checked_add(r.size)
                .is_none_or(|end| end > file_size)
        })
    }
}

/// The snapshot files that `memory` and `devices` name, each with the part of the manifest
/// that names it (`memory layout`, `devices`): every one must be a listed file.
pub fn referenced_files<'a>(
    memory: &'a MemoryLayout,
    devices: &'a [DeviceEntry],
) -> impl Iterator<Item = (&'a String, &'static str)> {
    std::iter::once((&memory.file, "memory layout"))
        .filter(|(name, _)| !name.is_empty())
        .chain(
            devices
                .iter()
                .filter_map(|d| d.state_file.as_ref().map(|f| (f, "devices"))),
        )
}

/// One region of guest RAM.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemoryRegion {
    /// Guest physical address of the region's first byte.
    pub guest_addr: u64,
    /// Size in bytes.
    pub size: u64,
    /// Offset of the region's first byte in the memory file (and in the VM's memfd).
    pub file_offset: u64,
}

/// What a device is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DeviceKind {
    /// virtio-fs (a host directory; served by a vhost-user-fs backend).
    VirtioFs,
    /// virtio-blk (a volume; served by a vhost-user-blk backend).
    VirtioBlk,
    /// virtio-vsock (the agent's channel; served by vhost-device-vsock).
    VirtioVsock,
    /// A 16550 UART.
    Serial,
    /// The CMOS real-time clock.
    Rtc,
}

/// One device of the VM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceEntry {
    /// What the device is.
    pub kind: DeviceKind,
    /// The guest-visible name: a virtio-fs tag, a volume's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
    /// Which backend socket the device is attached to (e.g. `fs0`), for vhost-user devices.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub socket_role: Option<String>,
    /// The backend program that served the device (e.g. `sm-vhost-user-fs`, `virtiofsd`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backend: Option<String>,
    /// The file of the snapshot holding the device's (or its backend's) state, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state_file: Option<String>,
}

/// One file of a snapshot directory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileEntry {
    /// Name inside the directory (one path component).
    pub name: String,
    /// Length in bytes (holes included).
    pub size: u64,
    /// sha256 of the whole content (holes read as zeros), lower-case hex.
    pub sha256: String,
}

/// Size and sha256 (hex) of a file's content, read once.
pub fn hash_file(path: &Path) -> io::Result<(u64, String)> {
    let mut file = File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut size = 0u64;
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        size += n as u64;
    }
    Ok((size, hex::encode(hasher.finalize())))
}

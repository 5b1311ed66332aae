//! The manifest: what a snapshot directory holds, serialized as `manifest.json`.

use std::collections::BTreeMap;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
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
    /// virtio-net (the guest's network; served by sm-vhost-user-net).
    VirtioNet,
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
    /// The file's content digest as [`hash_file`] computes it, lower-case hex.
    pub sha256: String,
}

/// Granularity of the content digest: 4 KiB blocks at 4 KiB-aligned offsets.
const BLOCK: u64 = 4096;

/// Size and content digest (hex) of a file: sha256 over the size (u64, little-endian) and
/// then, in offset order, every 4 KiB block that is not all zeros, each preceded by its offset
/// (u64, little-endian). Holes and all-zero blocks contribute nothing, so the digest depends on
/// the content alone (not on how a file system stores it), and checking a sparse file costs
/// what its data does: a 256 MiB guest's memory file with 40 MiB in use reads 40 MiB.
pub fn hash_file(path: &Path) -> io::Result<(u64, String)> {
    let file = File::open(path)?;
    let size = file.metadata()?.len();
    let mut hasher = Sha256::new();
    hasher.update(size.to_le_bytes());
    let mut buf = vec![0u8; 1 << 20];
    let mut pos = 0u64;
    while let Some((start, stop)) = data_extent(&file, pos, size)? {
        // Whole aligned blocks, so the digest does not depend on extent boundaries.
        let mut off = start - start % BLOCK;
        let stop = stop.next_multiple_of(BLOCK).min(size);
        while off < stop {
            let len = (stop - off).min(buf.len() as u64) as usize;
            file.read_exact_at(&mut buf[..len], off)?;
            for (i, block) in buf[..len].chunks(BLOCK as usize).enumerate() {
                if block.iter().any(|&b| b != 0) {
                    hasher.update((off + i as u64 * BLOCK).to_le_bytes());
                    hasher.update(block);
                }
            }
            off += len as u64;
        }
        pos = stop;
    }
    Ok((size, hex::encode(hasher.finalize())))
}

/// The next data extent `[start, end)` of `file` at or after `from`, clipped to `limit`
/// (`SEEK_DATA`/`SEEK_HOLE`; a file system without them reports the whole file as data).
fn data_extent(file: &File, from: u64, limit: u64) -> io::Result<Option<(u64, u64)>> {
    use nix::errno::Errno;
    use nix::unistd::{lseek, Whence};
    use std::os::fd::AsFd;
    if from >= limit {
        return Ok(None);
    }
    let start = match lseek(file.as_fd(), from as i64, Whence::SeekData) {
        Ok(s) => s as u64,
        Err(Errno::ENXIO) => return Ok(None),
        Err(e) => return Err(io::Error::from(e)),
    };
    if start >= limit {
        return Ok(None);
    }
    let end = lseek(file.as_fd(), start as i64, Whence::SeekHole).map_err(io::Error::from)?;
    Ok(Some((start, (end as u64).min(limit))))
}

#[cfg(test)]
mod digest_tests {
    use super::*;
    use std::io::Write;

    fn digest(bytes_at: &[(u64, &[u8])], size: u64) -> String {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let f = File::create(&path).unwrap();
        f.set_len(size).unwrap();
        for (off, b) in bytes_at {
            f.write_all_at(b, *off).unwrap();
        }
        hash_file(&path).unwrap().1
    }

    #[test]
    fn the_digest_follows_content_not_storage() {
        let size = 64 << 20;
        let sparse = digest(&[(10 << 20, b"data")], size);
        // The same content with the zeros written out as data.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("dense");
        let mut f = File::create(&path).unwrap();
        let mut all = vec![0u8; size as usize];
        all[10 << 20..(10 << 20) + 4].copy_from_slice(b"data");
        f.write_all(&all).unwrap();
        assert_eq!(hash_file(&path).unwrap(), (size, sparse.clone()));
        // One changed byte, a moved byte, another size: another digest.
        assert_ne!(digest(&[(10 << 20, b"dat!")], size), sparse);
        assert_ne!(digest(&[((10 << 20) + 4096, b"data")], size), sparse);
        assert_ne!(digest(&[(10 << 20, b"data")], size + 4096), sparse);
        // An all-zero file of one size is not one of another.
        assert_ne!(digest(&[], 4096), digest(&[], 8192));
    }

    #[test]
    fn a_tail_shorter_than_a_block_counts() {
        assert_ne!(digest(&[(5000, b"x")], 5001), digest(&[], 5001));
    }
}

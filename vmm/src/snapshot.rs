//! A whole VM as an sm-snapshot directory: its shape (`vm.json`), KVM state (`kvm.json`),
//! device state (`devices.json`) and guest RAM (`memory`, sparse), written atomically by
//! [`sm_snapshot::SnapshotWriter`] and read back after [`sm_snapshot::verify`].
//!
//! Only VMs without vhost-user devices are snapshotted for now: their backends would have to
//! hand over their state too.

use std::fs::File;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sm_snapshot::{
    DeviceEntry, DeviceKind, HostFingerprint, MemoryLayout, MemoryRegion, SnapshotInfo,
    SnapshotWriter, VerifyError, WriteError,
};

use crate::memory::ram_ranges;
use crate::persist::devices::{DeviceStateError, DeviceStates};
use crate::persist::{KvmSnapshot, PersistError, SNAPSHOT_FORMAT_VERSION};
use crate::vcpu::VcpuSaveError;

/// The VM's shape: what rebuilding it needs besides state and memory.
pub const SHAPE_FILE: &str = "vm.json";
/// KVM state of the VM and its vCPUs.
pub const KVM_FILE: &str = "kvm.json";
/// State of the emulated devices.
pub const DEVICES_FILE: &str = "devices.json";
/// Guest RAM, sparse.
pub const MEMORY_FILE: &str = "memory";

/// Errors taking or loading a snapshot; each maps to one HTTP status for the API.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// The vCPUs run.
    #[error("the VM must be paused before a snapshot (PUT /vm/pause)")]
    NotPaused,
    /// A vhost-user backend holds state sm-vmm cannot save yet.
    #[error("snapshot of vhost-user devices is not supported yet: {0}")]
    VhostUser(String),
    /// The destination directory could not be created or written.
    #[error(transparent)]
    Write(#[from] WriteError),
    /// Guest memory could not be saved or restored.
    #[error(transparent)]
    Memory(#[from] sm_snapshot::MemoryError),
    /// The vCPUs' state could not be saved.
    #[error(transparent)]
    Vcpus(#[from] VcpuSaveError),
    /// KVM refused to save or restore state.
    #[error(transparent)]
    Kvm(#[from] PersistError),
    /// The snapshot directory does not verify.
    #[error(transparent)]
    Verify(#[from] VerifyError),
    /// The device state file is unreadable.
    #[error(transparent)]
    Devices(#[from] DeviceStateError),
    /// A snapshot file could not be read.
    #[error("{0}: {1}")]
    Io(PathBuf, std::io::Error),
    /// The shape file is unreadable or of another version.
    #[error("{0}: not a VM shape sm-vmm reads: {1}")]
    Shape(PathBuf, String),
}

impl SnapshotError {
    /// The HTTP status for this error.
    pub fn status(&self) -> u16 {
        match self {
            SnapshotError::NotPaused => 409,
            SnapshotError::VhostUser(_)
            | SnapshotError::Write(
                WriteError::TargetExists(_) | WriteError::BadTarget(_) | WriteError::Io { .. },
            ) => 400,
            _ => 500,
        }
    }
}

/// What rebuilding the VM needs besides its state: the same vCPUs and RAM (and so the same
/// memory layout), and whether its console is interactive.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmShape {
    /// [`SNAPSHOT_FORMAT_VERSION`] of the writer.
    pub version: u32,
    /// Number of vCPUs.
    pub vcpus: u32,
    /// Guest RAM in MiB.
    pub mem_mib: u64,
    /// The guest runs an interactive shell (no command): the terminal goes raw.
    pub interactive: bool,
}

impl VmShape {
    /// The shape of a VM of `vcpus` and `mem_mib` MiB.
    pub fn new(vcpus: u32, mem_mib: u64, interactive: bool) -> VmShape {
        VmShape {
            version: SNAPSHOT_FORMAT_VERSION,
            vcpus,
            mem_mib,
            interactive,
        }
    }
}

/// The manifest's view of guest RAM: the memfd ranges, stored at their memfd offsets.
fn memory_layout(mem_mib: u64) -> MemoryLayout {
    MemoryLayout {
        file: MEMORY_FILE.into(),
        regions: ram_ranges(mem_mib << 20)
            .into_iter()
            .map(|(guest_addr, size, file_offset)| MemoryRegion {
                guest_addr,
                size,
                file_offset,
            })
            .collect(),
    }
}

fn device(kind: DeviceKind, tag: &str) -> DeviceEntry {
    DeviceEntry {
        kind,
        tag: Some(tag.into()),
        socket_role: None,
        backend: None,
        state_file: Some(DEVICES_FILE.into()),
    }
}

/// Writes a snapshot into `writer` (created on the destination, which it renames into place
/// when complete) from the state of a paused VM and its RAM `memfd`.
pub fn write(
    mut writer: SnapshotWriter,
    shape: &VmShape,
    kvm: &KvmSnapshot,
    devices: &DeviceStates,
    memfd: &File,
) -> Result<(), SnapshotError> {
    let shape_json = serde_json::to_vec_pretty(shape).expect("a shape always serializes");
    writer.write_file(SHAPE_FILE, &shape_json)?;
    writer.write_file(KVM_FILE, &kvm.to_bytes())?;
    writer.write_file(DEVICES_FILE, &devices.to_bytes())?;
    let layout = memory_layout(shape.mem_mib);
    let path = writer.file_path(MEMORY_FILE)?;
    let out = File::create(&path).map_err(|e| SnapshotError::Io(path.clone(), e))?;
    sm_snapshot::save_memory(memfd, &layout.regions, &out)?;
    drop(out);
    writer.add_file(MEMORY_FILE)?;
    writer.finish(SnapshotInfo {
        host: HostFingerprint::of_this_host(),
        kernel_sha256: None,
        initramfs_sha256: None,
        memory: layout,
        devices: vec![
            device(DeviceKind::Serial, "com1"),
            device(DeviceKind::Serial, "com2"),
            device(DeviceKind::Rtc, "rtc"),
        ],
    })?;
    Ok(())
}

/// A verified snapshot, read back: everything [`crate::vm::restore`] needs.
#[derive(Debug)]
pub struct LoadedSnapshot {
    /// The VM's shape.
    pub shape: VmShape,
    /// KVM state.
    pub kvm: KvmSnapshot,
    /// Device state.
    pub devices: DeviceStates,
    /// A fresh memfd holding guest RAM as it was.
    pub memory: File,
}

/// Verifies the snapshot at `dir` (every file against the manifest's sha256) and reads it,
/// filling a fresh memfd with its guest RAM.
pub fn load(dir: &Path) -> Result<LoadedSnapshot, SnapshotError> {
    sm_snapshot::verify(dir)?;
    let read = |name: &str| {
        let path = dir.join(name);
        std::fs::read(&path).map_err(|e| SnapshotError::Io(path, e))
    };
    let shape_path = dir.join(SHAPE_FILE);
    let shape: VmShape = serde_json::from_slice(&read(SHAPE_FILE)?)
        .map_err(|e| SnapshotError::Shape(shape_path.clone(), e.to_string()))?;
    if shape.version != SNAPSHOT_FORMAT_VERSION {
        return Err(SnapshotError::Shape(
            shape_path,
            format!(
                "format version {}, this sm-vmm reads only version {SNAPSHOT_FORMAT_VERSION}",
                shape.version
            ),
        ));
    }
    let kvm = KvmSnapshot::from_bytes(&read(KVM_FILE)?)?;
    if kvm.vcpus.len() != shape.vcpus as usize {
        return Err(SnapshotError::Shape(
            shape_path,
            format!(
                "{} vCPUs, but KVM state for {}",
                shape.vcpus,
                kvm.vcpus.len()
            ),
        ));
    }
    let devices = DeviceStates::from_bytes(&read(DEVICES_FILE)?)?;
    let mem_path = dir.join(MEMORY_FILE);
    let file = File::open(&mem_path).map_err(|e| SnapshotError::Io(mem_path.clone(), e))?;
    let memory = sm_snapshot::restore_memory(&file)?;
    let len = memory
        .metadata()
        .map_err(|e| SnapshotError::Io(mem_path.clone(), e))?
        .len();
    if len != shape.mem_mib << 20 {
        return Err(SnapshotError::Shape(
            shape_path,
            format!("{} MiB of RAM, but a {len}-byte memory file", shape.mem_mib),
        ));
    }
    Ok(LoadedSnapshot {
        shape,
        kvm,
        devices,
        memory,
    })
}

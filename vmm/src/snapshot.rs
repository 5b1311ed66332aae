//! A whole VM as an sm-snapshot directory: its shape (`vm.json`), KVM state (`kvm.json`),
//! device state (`devices.json`) and guest RAM (`memory`, sparse), written atomically by
//! [`sm_snapshot::SnapshotWriter`] and read back after [`sm_snapshot::verify`].
//!
//! vhost-user devices are part of it: where each ring stood and each backend's own state
//! (`backend-N.state`, N the device's place on the bus), handed over by
//! [`crate::vhost_user`]; files the caller asks to include (volume copies, its own records) are
//! copied in while the devices are stopped.

use std::fs::File;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sm_snapshot::{
    DeviceEntry, DeviceKind, HostFingerprint, MemoryLayout, MemoryRegion, SnapshotInfo,
    SnapshotWriter, VerifyError, WriteError,
};

use crate::config::VmConfig;
use crate::devices::virtio_mmio::DeviceHandover;
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
    /// A device or its backend cannot hand over its state, or failed to.
    #[error("{0}")]
    Device(String),
    /// The devices of the restoring VM are not the snapshotted VM's.
    #[error("{0}")]
    DeviceMismatch(String),
    /// A file to include could not be copied into the snapshot.
    #[error("cannot include {0} in the snapshot: {1}")]
    Include(PathBuf, String),
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
            SnapshotError::Device(_)
            | SnapshotError::Include(..)
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
    /// The vhost-user devices in bus order (a restore must attach the same ones).
    #[serde(default)]
    pub devices: Vec<DeviceShape>,
}

/// One vhost-user device of the VM as a restore must attach it again.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceShape {
    /// What the device is.
    pub kind: DeviceKind,
    /// The virtio-fs tag.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
}

impl std::fmt::Display for DeviceShape {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (&self.kind, &self.tag) {
            (DeviceKind::VirtioBlk, _) => write!(f, "--blk-socket"),
            (DeviceKind::VirtioFs, Some(tag)) => write!(f, "--fs-socket {tag}=..."),
            (DeviceKind::VirtioVsock, _) => write!(f, "--vsock-socket"),
            (DeviceKind::VirtioNet, _) => write!(f, "--net-socket"),
            (kind, _) => write!(f, "{kind:?}"),
        }
    }
}

/// The vhost-user devices `config` attaches, in the order sm-vmm puts them on the bus.
pub fn device_shapes(config: &VmConfig) -> Vec<DeviceShape> {
    let blk = config.blk_sockets.iter().map(|_| DeviceShape {
        kind: DeviceKind::VirtioBlk,
        tag: None,
    });
    let fs = config.fs_sockets.iter().map(|(tag, _)| DeviceShape {
        kind: DeviceKind::VirtioFs,
        tag: Some(tag.clone()),
    });
    let vsock = config.vsock_socket.iter().map(|_| DeviceShape {
        kind: DeviceKind::VirtioVsock,
        tag: None,
    });
    let net = config.net_socket.iter().map(|_| DeviceShape {
        kind: DeviceKind::VirtioNet,
        tag: None,
    });
    blk.chain(fs).chain(vsock).chain(net).collect()
}

/// Refuses restoring a VM whose devices are not the snapshotted ones, in one line.
pub fn check_devices(saved: &[DeviceShape], given: &[DeviceShape]) -> Result<(), SnapshotError> {
    if saved == given {
        return Ok(());
    }
    let list = |d: &[DeviceShape]| {
        if d.is_empty() {
            "none".to_string()
        } else {
            d.iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(" ")
        }
    };
    Err(SnapshotError::DeviceMismatch(format!(
        "the snapshot's VM had the devices [{}], the restore gives [{}]: give the same device flags in the same order",
        list(saved),
        list(given)
    )))
}

impl VmShape {
    /// The shape of a VM of `vcpus` and `mem_mib` MiB with `devices`.
    pub fn new(vcpus: u32, mem_mib: u64, interactive: bool, devices: Vec<DeviceShape>) -> VmShape {
        VmShape {
            version: SNAPSHOT_FORMAT_VERSION,
            vcpus,
            mem_mib,
            interactive,
            devices,
        }
    }
}

/// A host file the caller wants in the snapshot (a volume as it was, its own records).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IncludeFile {
    /// Its name in the snapshot directory (a plain file name).
    pub name: String,
    /// The host file to copy.
    pub path: PathBuf,
}

/// The sha256 of the kernel and initramfs the guest booted (when known), for the manifest.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BootHashes {
    /// sha256 (hex) of the kernel.
    pub kernel: Option<String>,
    /// sha256 (hex) of the initramfs (without the command sm-vmm appends).
    pub initramfs: Option<String>,
}

impl BootHashes {
    /// Hashes the files as they are now; one that cannot be read is left out.
    pub fn of_files(kernel: &Path, initramfs: &Path) -> BootHashes {
        let hash = |p: &Path| sm_snapshot::manifest::hash_file(p).ok().map(|(_, h)| h);
        BootHashes {
            kernel: hash(kernel),
            initramfs: hash(initramfs),
        }
    }
}

/// The name of the file holding the backend state of the device at bus place `index`.
pub fn backend_state_file(index: usize) -> String {
    format!("backend-{index}.state")
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

/// Copies every file of `include` into `writer` (a reflink where the file system can). Done
/// while the devices are stopped, so a volume is copied as the guest last wrote it.
pub fn include_files(
    writer: &mut SnapshotWriter,
    include: &[IncludeFile],
) -> Result<(), SnapshotError> {
    for file in include {
        let reserved = [
            SHAPE_FILE,
            KVM_FILE,
            DEVICES_FILE,
            MEMORY_FILE,
            "manifest.json",
        ];
        if reserved.contains(&file.name.as_str()) || file.name.starts_with("backend-") {
            return Err(SnapshotError::Include(
                file.path.clone(),
                format!("the name {} is sm-vmm's own", file.name),
            ));
        }
        let dst = writer.file_path(&file.name)?;
        sm_snapshot::clone_file(&file.path, &dst)
            .map_err(|e| SnapshotError::Include(file.path.clone(), e.to_string()))?;
        writer.add_file(&file.name)?;
    }
    Ok(())
}

/// Writes a snapshot into `writer` (created on the destination, which it renames into place
/// when complete) from the state of a paused VM, its backends' states (file name and bytes)
/// and its RAM `memfd`.
pub fn write(
    mut writer: SnapshotWriter,
    shape: &VmShape,
    kvm: &KvmSnapshot,
    devices: &DeviceStates,
    backend_states: &[(String, Vec<u8>)],
    boot: &BootHashes,
    memfd: &File,
) -> Result<(), SnapshotError> {
    let shape_json = serde_json::to_vec_pretty(shape).expect("a shape always serializes");
    writer.write_file(SHAPE_FILE, &shape_json)?;
    writer.write_file(KVM_FILE, &kvm.to_bytes())?;
    writer.write_file(DEVICES_FILE, &devices.to_bytes())?;
    for (name, bytes) in backend_states {
        writer.write_file(name, bytes)?;
    }
    let layout = memory_layout(shape.mem_mib);
    let path = writer.file_path(MEMORY_FILE)?;
    let out = File::create(&path).map_err(|e| SnapshotError::Io(path.clone(), e))?;
    sm_snapshot::save_memory(memfd, &layout.regions, &out)?;
    drop(out);
    writer.add_file(MEMORY_FILE)?;
    writer.finish(SnapshotInfo {
        host: HostFingerprint::of_this_host(),
        kernel_sha256: boot.kernel.clone(),
        initramfs_sha256: boot.initramfs.clone(),
        memory: layout,
        devices: [
            device(DeviceKind::Serial, "com1"),
            device(DeviceKind::Serial, "com2"),
            device(DeviceKind::Rtc, "rtc"),
        ]
        .into_iter()
        .chain(shape.devices.iter().zip(&devices.virtio).map(|(d, slot)| {
            DeviceEntry {
                kind: d.kind,
                tag: d.tag.clone(),
                socket_role: None,
                backend: None,
                state_file: slot
                    .backend
                    .as_ref()
                    .and_then(|b| b.state_file.clone())
                    .or(Some(DEVICES_FILE.into())),
            }
        }))
        .collect(),
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
    /// What each virtio-mmio device's backend handed over (bus order; None: not started).
    pub handovers: Vec<Option<DeviceHandover>>,
    /// The kernel and initramfs the guest booted, as the manifest records them.
    pub boot: BootHashes,
}

/// Verifies the snapshot at `dir` (every file against the manifest's digest, or its seal) and reads it,
/// filling a fresh memfd with its guest RAM.
pub fn load(dir: &Path) -> Result<LoadedSnapshot, SnapshotError> {
    let started = std::time::Instant::now();
    // The first restore of a snapshot hashes every file; later ones trust its seal.
    let manifest = sm_snapshot::verify_sealed(dir)?;
    tracing::debug!("restore: snapshot verified in {:?}", started.elapsed());
    let boot = BootHashes {
        kernel: manifest.kernel_sha256,
        initramfs: manifest.initramfs_sha256,
    };
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
    if devices.virtio.len() != shape.devices.len() {
        return Err(SnapshotError::Shape(
            shape_path,
            format!(
                "{} vhost-user devices, but state for {}",
                shape.devices.len(),
                devices.virtio.len()
            ),
        ));
    }
    let mut handovers = Vec::new();
    for slot in &devices.virtio {
        let Some(record) = &slot.backend else {
            handovers.push(None);
            continue;
        };
        let backend_state = match &record.state_file {
            Some(name) if !name.contains('/') => Some(read(name)?),
            Some(name) => {
                return Err(SnapshotError::Shape(
                    dir.join(DEVICES_FILE),
                    format!("backend state file {name} is not a plain file name"),
                ))
            }
            None => None,
        };
        handovers.push(Some(DeviceHandover {
            vring_bases: record
                .vring_bases
                .iter()
                .map(|b| (b.queue, b.next_avail))
                .collect(),
            backend_state,
        }));
    }
    let mem_path = dir.join(MEMORY_FILE);
    let file = File::open(&mem_path).map_err(|e| SnapshotError::Io(mem_path.clone(), e))?;
    let filling = std::time::Instant::now();
    let memory = sm_snapshot::restore_memory(&file)?;
    tracing::debug!("restore: memfd filled in {:?}", filling.elapsed());
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
        handovers,
        boot,
    })
}

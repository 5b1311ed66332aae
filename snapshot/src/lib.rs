//! sm-snapshot: the on-disk form of a microVM snapshot.
//!
//! A snapshot is one directory. [`manifest::Manifest`] (`manifest.json`, written last) lists
//! every other file with its size and sha256, the guest memory layout, the devices and a
//! fingerprint of the host that took it. [`writer::SnapshotWriter`] builds the directory
//! beside its target and renames it into place only once it is complete, so a directory at the
//! target is either a whole snapshot or absent. [`verify::verify`] checks a directory against
//! its manifest. [`memory`] saves guest RAM (a memfd) as a sparse file holding only the
//! populated pages and restores it into a fresh memfd per clone. [`api::ApiClient`] drives
//! sm-vmm's control API; [`clone::clone_file`] copies a volume file for a snapshot or a clone.

pub mod api;
pub mod clone;
pub mod manifest;
pub mod memory;
pub mod verify;
pub mod writer;

pub use clone::{clone_file, CloneError, CloneKind};
pub use manifest::{
    DeviceEntry, DeviceKind, FileEntry, HostFingerprint, Manifest, MemoryLayout, MemoryRegion,
    MANIFEST_FILE, MANIFEST_FORMAT_VERSION,
};
pub use memory::{restore_memory, save_memory, MemoryError};
pub use verify::{read_manifest, seal_dir, verify, verify_sealed, VerifyError};
pub use writer::{SnapshotInfo, SnapshotWriter, WriteError};

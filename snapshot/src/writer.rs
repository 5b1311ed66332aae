//! Atomic writing of a snapshot directory.
//!
//! Files go into `.NAME.partial-<pid>` beside the target. [`SnapshotWriter::finish`] fsyncs
//! the manifest (written last, after every file was fsynced as it was added), then renames the
//! directory into place with `RENAME_NOREPLACE`. An error or a dropped writer removes the
//! partial directory; a crash leaves at most a hidden `.partial-` directory, never a directory
//! at the target.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Component, Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use nix::fcntl::{renameat2, RenameFlags};

use crate::manifest::{
    hash_file, referenced_files, DeviceEntry, FileEntry, HostFingerprint, Manifest, MemoryLayout,
    MANIFEST_FILE, MANIFEST_FORMAT_VERSION,
};

/// Why a snapshot directory could not be written.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    /// The target already exists; a snapshot never replaces one.
    #[error("{0}: already exists; remove it or choose another directory")]
    TargetExists(PathBuf),
    /// The target has no final name (e.g. `/` or `..`).
    #[error("{0}: not a directory name a snapshot can be written to")]
    BadTarget(PathBuf),
    /// A file name is not one plain path component, or is the manifest's.
    #[error(
        "{0:?}: a snapshot file name must be one plain path component other than manifest.json"
    )]
    BadFileName(String),
    /// A file name was added twice.
    #[error("{0}: added to the snapshot twice")]
    DuplicateFile(String),
    /// The memory layout or a device names a file that was not added.
    #[error("{0}: named as the memory file or a device's state file but not one of the snapshot's files")]
    UnknownFile(String),
    /// A memory region ends beyond the memory file.
    #[error("{file}: memory region at guest {guest_addr:#x} ends beyond the file")]
    RegionOutsideFile {
        /// The memory file.
        file: String,
        /// The region's guest address.
        guest_addr: u64,
    },
    /// An I/O operation on a path failed.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> WriteError + '_ {
    move |source| WriteError::Io {
        path: path.to_owned(),
        source,
    }
}

/// What the caller knows about a snapshot besides its files.
#[derive(Debug, Clone, Default)]
pub struct SnapshotInfo {
    /// The host taking the snapshot.
    pub host: HostFingerprint,
    /// sha256 (hex) of the guest kernel, when known.
    pub kernel_sha256: Option<String>,
    /// sha256 (hex) of the initramfs, when known.
    pub initramfs_sha256: Option<String>,
    /// Guest RAM layout.
    pub memory: MemoryLayout,
    /// The VM's devices.
    pub devices: Vec<DeviceEntry>,
}

/// Builds a snapshot directory beside its target and moves it into place when complete.
#[derive(Debug)]
pub struct SnapshotWriter {
    target: PathBuf,
    partial: PathBuf,
    files: Vec<FileEntry>,
    /// Set once the partial directory has been renamed to the target.
    done: bool,
}

impl SnapshotWriter {
    /// Starts a snapshot at `target`, which must not exist; its parent must.
    pub fn create(target: &Path) -> Result<SnapshotWriter, WriteError> {
        let name = match target.components().next_back() {
            Some(Component::Normal(n)) => n.to_owned(),
            _ => return Err(WriteError::BadTarget(target.to_owned())),
        };
        if fs::symlink_metadata(target).is_ok() {
            return Err(WriteError::TargetExists(target.to_owned()));
        }
        let mut partial_name = std::ffi::OsString::from(".");
        partial_name.push(&name);
        partial_name.push(format!(".partial-{}", std::process::id()));
        let partial = target.with_file_name(partial_name);
        fs::create_dir(&partial).map_err(|source| match source.kind() {
            // Name what is missing: the target's parent, not the hidden partial directory.
            io::ErrorKind::NotFound => WriteError::Io {
                path: partial.parent().unwrap_or(Path::new(".")).to_owned(),
                source,
            },
            _ => WriteError::Io {
                path: partial.clone(),
                source,
            },
        })?;
        Ok(SnapshotWriter {
            target: target.to_owned(),
            partial,
            files: Vec::new(),
            done: false,
        })
    }

    /// The directory files are written into until [`SnapshotWriter::finish`].
    pub fn partial_dir(&self) -> &Path {
        &self.partial
    }

    /// Path in the partial directory for a new file `name`, checked but not yet created.
    pub fn file_path(&self, name: &str) -> Result<PathBuf, WriteError> {
        let mut components = Path::new(name).components();
        let plain = matches!(
            (components.next(), components.next()),
            (Some(Component::Normal(_)), None)
        );
        if !plain || name == MANIFEST_FILE || name.contains('/') {
            return Err(WriteError::BadFileName(name.to_owned()));
        }
        if self.files.iter().any(|f| f.name == name) {
            return Err(WriteError::DuplicateFile(name.to_owned()));
        }
        Ok(self.partial.join(name))
    }

    /// Writes `bytes` as file `name` and records it.
    pub fn write_file(&mut self, name: &str, bytes: &[u8]) -> Result<(), WriteError> {
        let path = self.file_path(name)?;
        fs::write(&path, bytes).map_err(io_err(&path))?;
        self.add_file(name)
    }

    /// Records file `name`, which the caller wrote into [`SnapshotWriter::partial_dir`]
    /// (e.g. with [`crate::save_memory`]): fsyncs it and takes its size and sha256.
    pub fn add_file(&mut self, name: &str) -> Result<(), WriteError> {
        let path = self.file_path(name)?;
        File::open(&path)
            .and_then(|f| f.sync_all())
            .map_err(io_err(&path))?;
        let (size, sha256) = hash_file(&path).map_err(io_err(&path))?;
        self.files.push(FileEntry {
            name: name.to_owned(),
            size,
            sha256,
        });
        Ok(())
    }

    /// Writes the manifest, fsyncs it and the directory, and renames the directory to the
    /// target. Returns the manifest written.
    pub fn finish(mut self, info: SnapshotInfo) -> Result<Manifest, WriteError> {
        // What verify checks, checked here too: a snapshot written is a snapshot that verifies.
        for (name, _) in referenced_files(&info.memory, &info.devices) {
            if !self.files.iter().any(|f| &f.name == name) {
                return Err(WriteError::UnknownFile(name.clone()));
            }
        }
        if let Some(mem) = self.files.iter().find(|f| f.name == info.memory.file) {
            if let Some(region) = info.memory.region_beyond(mem.size) {
                return Err(WriteError::RegionOutsideFile {
                    file: mem.name.clone(),
                    guest_addr: region.guest_addr,
                });
            }
        }
        let manifest = Manifest {
            format_version: MANIFEST_FORMAT_VERSION,
            created_unix_secs: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            host: info.host,
            kernel_sha256: info.kernel_sha256,
            initramfs_sha256: info.initramfs_sha256,
            memory: info.memory,
            devices: info.devices,
            files: std::mem::take(&mut self.files),
        };
        let path = self.partial.join(MANIFEST_FILE);
        let json = serde_json::to_vec_pretty(&manifest).expect("a manifest always serializes");
        let mut file = File::create(&path).map_err(io_err(&path))?;
        file.write_all(&json)
            .and_then(|()| file.sync_all())
            .map_err(io_err(&path))?;
        File::open(&self.partial)
            .and_then(|d| d.sync_all())
            .map_err(io_err(&self.partial))?;
        // RENAME_NOREPLACE: a target created meanwhile is refused, not replaced (a plain
        // rename would replace an empty directory).
        renameat2(
            nix::fcntl::AT_FDCWD,
            &self.partial,
            nix::fcntl::AT_FDCWD,
            &self.target,
            RenameFlags::RENAME_NOREPLACE,
        )
        .map_err(|e| match e {
            nix::errno::Errno::EEXIST => WriteError::TargetExists(self.target.clone()),
            e => WriteError::Io {
                path: self.target.clone(),
                source: e.into(),
            },
        })?;
        self.done = true;
        // The rename is durable once the parent directory is synced.
        let parent = match self.target.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
            _ => PathBuf::from("."),
        };
        File::open(&parent)
            .and_then(|d| d.sync_all())
            .map_err(io_err(&parent))?;
        Ok(manifest)
    }
}

impl Drop for SnapshotWriter {
    fn drop(&mut self) {
        if !self.done {
            let _ = fs::remove_dir_all(&self.partial);
        }
    }
}

//! Checking a snapshot directory against its manifest.

use std::collections::BTreeSet;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use crate::manifest::{
    hash_file, referenced_files, Manifest, MANIFEST_FILE, MANIFEST_FORMAT_VERSION,
};

/// Why a snapshot directory is not a valid snapshot.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    /// The directory has no manifest (not a snapshot, or one still being written).
    #[error("{0}: no manifest.json (not a snapshot, or an incomplete one)")]
    MissingManifest(PathBuf),
    /// The manifest is not valid JSON of the expected shape.
    #[error("{path}: not a valid manifest: {reason}")]
    BadManifest {
        /// The manifest file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The manifest was written in another format version.
    #[error("{path}: snapshot format version {found}, this sm-snapshot reads version {expected}")]
    Version {
        /// The manifest file.
        path: PathBuf,
        /// The version the manifest records.
        found: u64,
        /// The version this build reads.
        expected: u32,
    },
    /// A file the manifest lists is absent.
    #[error("{0}: listed in the manifest but missing")]
    MissingFile(PathBuf),
    /// A file's length differs from the manifest's.
    #[error("{path}: size {actual} bytes, the manifest says {expected} (truncated or altered)")]
    Size {
        /// The file.
        path: PathBuf,
        /// The manifest's size.
        expected: u64,
        /// The size on disk.
        actual: u64,
    },
    /// A file's content differs from the manifest's sha256.
    #[error("{0}: sha256 does not match the manifest (altered or corrupt)")]
    Checksum(PathBuf),
    /// The directory holds a file the manifest does not list.
    #[error("{0}: not listed in the manifest (a snapshot holds exactly the files it lists)")]
    Unlisted(PathBuf),
    /// A listed name is a directory, symlink or device rather than a regular file.
    #[error("{0}: not a regular file")]
    NotAFile(PathBuf),
    /// The memory layout or a device names a file the manifest does not list.
    #[error("{0:?}: named in the manifest's {1} but not one of its files")]
    UnknownReference(String, &'static str),
    /// A memory region lies (partly) beyond the end of the memory file.
    #[error("{path}: memory region at guest {guest_addr:#x} ends beyond the file's {size} bytes")]
    RegionOutsideFile {
        /// The memory file.
        path: PathBuf,
        /// The region's guest address.
        guest_addr: u64,
        /// The memory file's size.
        size: u64,
    },
    /// A listed name is not one plain path component.
    #[error("{0:?}: the manifest lists a file name outside the snapshot directory")]
    BadFileName(String),
    /// An I/O operation on a path failed.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
}

/// Reads and parses `dir`'s manifest, refusing any format version but this one.
pub fn read_manifest(dir: &Path) -> Result<Manifest, VerifyError> {
    let path = dir.join(MANIFEST_FILE);
    let text = match fs::read(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(VerifyError::MissingManifest(dir.to_owned()))
        }
        Err(source) => return Err(VerifyError::Io { path, source }),
    };
    let bad = |e: serde_json::Error| VerifyError::BadManifest {
        path: path.clone(),
        reason: e.to_string(),
    };
    // The version is checked before the shape: another version may have other fields.
    let value: serde_json::Value = serde_json::from_slice(&text).map_err(bad)?;
    let found = value.get("format_version").and_then(|v| v.as_u64());
    match found {
        Some(v) if v == u64::from(MANIFEST_FORMAT_VERSION) => {}
        Some(found) => {
            return Err(VerifyError::Version {
                path,
                found,
                expected: MANIFEST_FORMAT_VERSION,
            })
        }
        None => {
            return Err(VerifyError::BadManifest {
                path,
                reason: "no numeric format_version".to_owned(),
            })
        }
    }
    serde_json::from_value(value).map_err(bad)
}

/// Checks that `dir` is a complete, unaltered snapshot: the manifest has this format version,
/// every listed file exists with its size and sha256, no other file is present, the memory
/// file and device state files are listed, and every memory region lies within the memory file.
pub fn verify(dir: &Path) -> Result<Manifest, VerifyError> {
    verify_with(dir, true)
}

/// [`verify`], reading the files' contents only if this exact set of files (same device, inode,
/// size, modification and change times) has not been verified before; a successful full check
/// leaves a seal in [`seal_dir`]. Any change to a file changes its change time (which no
/// unprivileged process can set back), so a sealed snapshot is one nobody has touched since it
/// was hashed. Restores use it: the first restore of a snapshot reads all of it, the next ones
/// only its metadata.
pub fn verify_sealed(dir: &Path) -> Result<Manifest, VerifyError> {
    let manifest = read_manifest(dir)?;
    let (Some(seals), Some(stamp)) = (seal_dir(), stamp(dir, &manifest)) else {
        return verify(dir);
    };
    let seal = seals.join(stamp);
    if seal.exists() {
        return verify_with(dir, false);
    }
    let manifest = verify(dir)?;
    // A seal that cannot be written only means the next restore hashes again.
    let _ = fs::write(&seal, b"");
    Ok(manifest)
}

/// The directory of verification seals: `$XDG_RUNTIME_DIR/sm-snapshot`, or
/// `/run/sm-snapshot` for root; only one this user owns and nobody else may write is used.
pub fn seal_dir() -> Option<std::path::PathBuf> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt};
    let base = match std::env::var_os("XDG_RUNTIME_DIR") {
        Some(d) if !d.is_empty() => std::path::PathBuf::from(d),
        _ if nix::unistd::geteuid().is_root() => std::path::PathBuf::from("/run"),
        _ => return None,
    };
    let dir = base.join("sm-snapshot");
    let _ = fs::DirBuilder::new().mode(0o700).create(&dir);
    let meta = fs::symlink_metadata(&dir).ok()?;
    let private =
        meta.is_dir() && meta.uid() == nix::unistd::geteuid().as_raw() && meta.mode() & 0o077 == 0;
    private.then_some(dir)
}

/// A name for the exact state of `dir`'s files: sha256 over the directory's canonical path and
/// each file's name, device, inode, size, modification and change times. None if a file is
/// missing (the full check then says which).
fn stamp(dir: &Path, manifest: &Manifest) -> Option<String> {
    use sha2::{Digest, Sha256};
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::fs::MetadataExt;
    let mut h = Sha256::new();
    h.update(fs::canonicalize(dir).ok()?.as_os_str().as_bytes());
    let names =
        std::iter::once(MANIFEST_FILE).chain(manifest.files.iter().map(|f| f.name.as_str()));
    for name in names {
        let m = fs::symlink_metadata(dir.join(name)).ok()?;
        h.update(name.as_bytes());
        h.update([0]);
        for v in [
            m.dev(),
            m.ino(),
            m.size(),
            m.mtime() as u64,
            m.mtime_nsec() as u64,
            m.ctime() as u64,
            m.ctime_nsec() as u64,
        ] {
            h.update(v.to_le_bytes());
        }
    }
    Some(hex::encode(h.finalize()))
}

/// [`verify`], hashing the files' contents only when `digests` is set.
fn verify_with(dir: &Path, digests: bool) -> Result<Manifest, VerifyError> {
    let manifest = read_manifest(dir)?;
    let mut listed = BTreeSet::new();
    for entry in &manifest.files {
        let plain = !entry.name.contains('/')
            && entry.name != "."
            && entry.name != ".."
            && !entry.name.is_empty();
        if !plain {
            return Err(VerifyError::BadFileName(entry.name.clone()));
        }
        listed.insert(entry.name.as_str());
        let path = dir.join(&entry.name);
        // Not followed: a symlink could point anywhere (even at an endless /dev/zero).
        let actual = match fs::symlink_metadata(&path) {
            Ok(m) if m.is_file() => m.len(),
            Ok(_) => return Err(VerifyError::NotAFile(path)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(VerifyError::MissingFile(path))
            }
            Err(source) => return Err(VerifyError::Io { path, source }),
        };
        if actual != entry.size {
            return Err(VerifyError::Size {
                path,
                expected: entry.size,
                actual,
            });
        }
        if !digests {
            continue;
        }
        let (_, sha256) = hash_file(&path).map_err(|source| VerifyError::Io {
            path: path.clone(),
            source,
        })?;
        if sha256 != entry.sha256 {
            return Err(VerifyError::Checksum(path));
        }
    }
    let references = referenced_files(&manifest.memory, &manifest.devices);
    for (name, place) in references {
        if !listed.contains(name.as_str()) {
            return Err(VerifyError::UnknownReference(name.clone(), place));
        }
    }
    if let Some(mem) = manifest
        .files
        .iter()
        .find(|f| f.name == manifest.memory.file)
    {
        if let Some(region) = manifest.memory.region_beyond(mem.size) {
            return Err(VerifyError::RegionOutsideFile {
                path: dir.join(&mem.name),
                guest_addr: region.guest_addr,
                size: mem.size,
            });
        }
    }
    let entries = fs::read_dir(dir).map_err(|source| VerifyError::Io {
        path: dir.to_owned(),
        source,
    })?;
    for entry in entries {
        let entry = entry.map_err(|source| VerifyError::Io {
            path: dir.to_owned(),
            source,
        })?;
        let name = entry.file_name();
        let known = name
            .to_str()
            .is_some_and(|n| n == MANIFEST_FILE || listed.contains(n));
        if !known {
            return Err(VerifyError::Unlisted(entry.path()));
        }
    }
    Ok(manifest)
}

//! The refs index: one JSON record per pulled reference under `refs/` (file name: sha256 of
//! the reference), written atomically, and garbage collection of everything no record uses.

use std::collections::HashSet;
use std::fs;
use std::io;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::blob::{sync_dir, write_atomic};
use crate::cache::{io_err, Cache, CacheError};
use crate::digest::Digest;
use crate::platform::Platform;

/// One pulled image, as recorded in the refs index.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ImageRecord {
    /// The reference it was pulled as (the index key).
    pub reference: String,
    /// Digest of the image manifest.
    pub manifest: Digest,
    /// Digest of the index the manifest was chosen from, if any.
    #[serde(default)]
    pub index: Option<Digest>,
    /// Digest of the image config.
    pub config: Digest,
    /// Layer digests, lowest first.
    pub layers: Vec<Digest>,
    /// Sum of manifest, config and layer sizes (bytes, compressed).
    pub size: u64,
    /// The platform of the image.
    #[serde(default)]
    pub platform: Option<Platform>,
    /// For an archive, the identity of the file it was imported from, to notice a rebuild.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<SourceStamp>,
}

/// Which file, in which state, an archive was imported from: a rewritten or replaced file
/// changes at least one of these, so an unchanged stamp means there is nothing new to read.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceStamp {
    /// Device of the file.
    pub dev: u64,
    /// Inode of the file.
    pub ino: u64,
    /// Size in bytes.
    pub size: u64,
    /// Modification time, nanoseconds since the epoch.
    pub mtime_ns: i128,
    /// Status change time, nanoseconds since the epoch.
    pub ctime_ns: i128,
}

impl SourceStamp {
    /// The stamp of the file at `path` (following symlinks, as the import does).
    pub fn of(path: &std::path::Path) -> io::Result<SourceStamp> {
        use std::os::unix::fs::MetadataExt;
        let m = fs::metadata(path)?;
        let ns = |s: i64, n: i64| i128::from(s) * 1_000_000_000 + i128::from(n);
        Ok(SourceStamp {
            dev: m.dev(),
            ino: m.ino(),
            size: m.size(),
            mtime_ns: ns(m.mtime(), m.mtime_nsec()),
            ctime_ns: ns(m.ctime(), m.ctime_nsec()),
        })
    }
}

impl ImageRecord {
    /// Every blob this record keeps alive.
    pub fn blobs(&self) -> impl Iterator<Item = &Digest> {
        [&self.manifest, &self.config]
            .into_iter()
            .chain(self.index.iter())
            .chain(self.layers.iter())
    }
}

/// What a garbage collection removed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GcStats {
    /// Files removed.
    pub files: u64,
    /// Bytes freed.
    pub bytes: u64,
}

impl Cache {
    fn ref_path(&self, key: &str) -> PathBuf {
        self.root()
            .join("refs")
            .join(format!("{}.json", Digest::of(key.as_bytes()).hex()))
    }

    /// Records (or replaces) an image in the refs index.
    pub fn put_record(&self, rec: &ImageRecord) -> Result<(), CacheError> {
        let json = serde_json::to_vec_pretty(rec).expect("record serializes");
        write_atomic(&self.tmp_path("ref"), &self.ref_path(&rec.reference), &json)
    }

    /// Looks an image up by reference key.
    pub fn record(&self, key: &str) -> Result<Option<ImageRecord>, CacheError> {
        let path = self.ref_path(key);
        match fs::read(&path) {
            Ok(b) => serde_json::from_slice(&b)
                .map(Some)
                .map_err(|e| CacheError::Record(path, e)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(CacheError::Io {
                what: "read",
                path,
                source: e,
            }),
        }
    }

    /// Every recorded image, sorted by reference.
    pub fn records(&self) -> Result<Vec<ImageRecord>, CacheError> {
        let dir = self.root().join("refs");
        let mut out = Vec::new();
        for e in fs::read_dir(&dir).map_err(io_err("list", &dir))? {
            let path = e.map_err(io_err("list", &dir))?.path();
            if path.extension().is_some_and(|x| x == "json") {
                let b = fs::read(&path).map_err(io_err("read", &path))?;
                out.push(
                    serde_json::from_slice::<ImageRecord>(&b)
                        .map_err(|e| CacheError::Record(path, e))?,
                );
            }
        }
        out.sort_by(|a, b| a.reference.cmp(&b.reference));
        Ok(out)
    }

    /// Removes a reference from the index; false when it was not there.
    pub fn remove_record(&self, key: &str) -> Result<bool, CacheError> {
        let path = self.ref_path(key);
        match fs::remove_file(&path) {
            Ok(()) => sync_dir(&self.root().join("refs")).map(|_| true),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(CacheError::Io {
                what: "remove",
                path,
                source: e,
            }),
        }
    }

    /// Removes every blob, partial download, root image and scratch file no record refers
    /// to. Takes the exclusive cache lock, so it waits for running pulls to finish.
    pub fn gc(&self) -> Result<GcStats, CacheError> {
        let _lock = self.lock(true)?;
        let records = self.records()?;
        let live: HashSet<String> = records
            .iter()
            .flat_map(|r| r.blobs().map(|d| d.hex().to_string()))
            .collect();
        let manifests: HashSet<String> = records
            .iter()
            .map(|r| r.manifest.hex().to_string())
            .collect();
        let mut stats = GcStats::default();
        let mut sweep = |dir: PathBuf, keep: &dyn Fn(&str) -> bool| -> Result<(), CacheError> {
            for e in fs::read_dir(&dir).map_err(io_err("list", &dir))? {
                let e = e.map_err(io_err("list", &dir))?;
                let name = e.file_name().to_string_lossy().into_owned();
                if keep(&name) {
                    continue;
                }
                let path = e.path();
                let meta = fs::symlink_metadata(&path).map_err(io_err("stat", &path))?;
                let r = if meta.is_dir() {
                    fs::remove_dir_all(&path)
                } else {
                    fs::remove_file(&path)
                };
                r.map_err(io_err("remove", &path))?;
                stats.files += 1;
                stats.bytes += meta.len();
            }
            Ok(())
        };
        sweep(self.blob_dir(), &|n| live.contains(n))?;
        sweep(self.rootfs_dir(), &|n| {
            n.strip_suffix(".erofs")
                .or_else(|| n.strip_suffix(".refused"))
                .is_some_and(|h| manifests.contains(h))
        })?;
        sweep(self.tmp_dir(), &|_| false)?;
        Ok(stats)
    }
}

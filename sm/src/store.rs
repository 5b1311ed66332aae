//! The snapshot store: named snapshots made by a bake, one directory each under
//! `$SM_HOME/snapshots` (or a directory the caller chooses) holding the bake's record
//! (`bake.json`: its cache key and inputs) and the snapshot itself (`snapshot/`, a
//! directory `sm-snapshot verify` checks, which admits no files it does not list). A per-name lock
//! keeps two bakes of one name from both baking, and a removal from pulling a snapshot
//! away from a bake that is replacing it.

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};

/// The store's directory inside sm's home.
pub const STORE_DIR: &str = "snapshots";
/// The bake record's file name inside an entry.
pub const BAKE_FILE: &str = "bake.json";
/// The snapshot directory's name inside an entry.
pub const SNAPSHOT_DIR: &str = "snapshot";

/// Why the store could not do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A name that cannot be a directory of its own.
    #[error("{0:?} is not a snapshot name (letters, digits, '.', '_', '-'; not starting with '.' or '-')")]
    BadName(String),
    /// No snapshot by that name.
    #[error("no snapshot named {0}")]
    NotFound(String),
    /// A file-system operation failed.
    #[error("{0}: {1}")]
    Io(PathBuf, std::io::Error),
}

/// What a bake left beside its snapshot: enough to tell a cache hit from a stale bake and
/// to list the store.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BakeRecord {
    /// The snapshot's name.
    pub name: String,
    /// sha256 (hex) of every input of the bake (see `bake::cache_key`).
    pub key: String,
    /// The image reference it was baked from, if any.
    pub image: Option<String>,
    /// The warm-up tag.
    pub warmup_tag: String,
    /// When the bake finished, seconds since the epoch.
    pub created: u64,
    /// How long the bake took, in seconds.
    pub seconds: f64,
}

/// A held per-name lock (released on drop).
pub struct NameLock(#[allow(dead_code)] Flock<File>);

/// A directory of named snapshots.
#[derive(Clone, Debug)]
pub struct SnapshotStore {
    dir: PathBuf,
}

impl SnapshotStore {
    /// The store in sm's home (`$SM_HOME/snapshots`, see `sm_oci::cache::home`).
    pub fn open_default() -> SnapshotStore {
        SnapshotStore::at(sm_oci::cache::home().join(STORE_DIR))
    }

    /// The store in `dir` (created when a bake first writes to it).
    pub fn at(dir: impl Into<PathBuf>) -> SnapshotStore {
        let dir = dir.into();
        SnapshotStore {
            dir: std::path::absolute(&dir).unwrap_or(dir),
        }
    }

    /// The store's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The entry of `name` (whether or not it exists).
    pub fn path(&self, name: &str) -> Result<PathBuf, StoreError> {
        check_name(name)?;
        Ok(self.dir.join(name))
    }

    /// The snapshot directory of `name`, which must exist.
    pub fn find(&self, name: &str) -> Result<PathBuf, StoreError> {
        let p = self.path(name)?;
        if !p.join(BAKE_FILE).is_file() {
            return Err(StoreError::NotFound(name.into()));
        }
        Ok(p.join(SNAPSHOT_DIR))
    }

    /// The bake record of `name`, if it has a readable one.
    pub fn record(&self, name: &str) -> Option<BakeRecord> {
        let p = self.path(name).ok()?.join(BAKE_FILE);
        serde_json::from_slice(&std::fs::read(p).ok()?).ok()
    }

    /// Every snapshot with a readable record, by name.
    pub fn list(&self) -> Result<Vec<BakeRecord>, StoreError> {
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(vec![]),
            Err(e) => return Err(StoreError::Io(self.dir.clone(), e)),
        };
        let mut out: Vec<BakeRecord> = entries
            .flatten()
            .filter_map(|e| self.record(e.file_name().to_str()?))
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    /// Takes `name`'s lock, waiting for whoever holds it (a bake of the same name).
    pub fn lock(&self, name: &str) -> Result<NameLock, StoreError> {
        check_name(name)?;
        std::fs::create_dir_all(&self.dir).map_err(|e| StoreError::Io(self.dir.clone(), e))?;
        let path = self.dir.join(format!(".{name}.lock"));
        let f = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| StoreError::Io(path.clone(), e))?;
        let f = match Flock::lock(f, FlockArg::LockExclusiveNonblock) {
            Ok(l) => return Ok(NameLock(l)),
            Err((f, _)) => f,
        };
        crate::trace::step(format_args!("waiting for another bake of {name}"));
        Flock::lock(f, FlockArg::LockExclusive)
            .map(NameLock)
            .map_err(|(_, e)| StoreError::Io(path, e.into()))
    }

    /// A fresh, unique entry in the store for a bake in progress (created; the snapshot
    /// goes into its [`SNAPSHOT_DIR`]); not a snapshot until [`SnapshotStore::install`]
    /// moves it into place.
    pub fn staging(&self, name: &str) -> Result<PathBuf, StoreError> {
        check_name(name)?;
        let p = self.dir.join(format!(
            ".{name}.new-{}-{}",
            std::process::id(),
            crate::vm::unique()
        ));
        std::fs::create_dir_all(&p).map_err(|e| StoreError::Io(p.clone(), e))?;
        Ok(p)
    }

    /// Makes the finished bake in `staged` the snapshot `name`, replacing the one before,
    /// with `record` written last (a directory without it is never taken for a snapshot).
    /// The caller holds `name`'s lock.
    pub fn install(
        &self,
        name: &str,
        staged: &Path,
        record: &BakeRecord,
    ) -> Result<PathBuf, StoreError> {
        let io = |p: &Path| {
            let p = p.to_owned();
            move |e| StoreError::Io(p, e)
        };
        let tmp = staged.join(format!("{BAKE_FILE}.tmp"));
        let json = serde_json::to_vec_pretty(record).expect("a bake record serializes");
        std::fs::write(&tmp, json).map_err(io(&tmp))?;
        std::fs::rename(&tmp, staged.join(BAKE_FILE)).map_err(io(staged))?;
        let target = self.path(name)?;
        let old = self.dir.join(format!(".{name}.old-{}", std::process::id()));
        if target.exists() {
            std::fs::rename(&target, &old).map_err(io(&target))?;
        }
        std::fs::rename(staged, &target).map_err(io(&target))?;
        let _ = std::fs::remove_dir_all(&old);
        Ok(target.join(SNAPSHOT_DIR))
    }

    /// Removes the snapshot `name` (waiting for a bake of it to finish).
    pub fn remove(&self, name: &str) -> Result<(), StoreError> {
        let _lock = self.lock(name)?;
        self.find(name)?;
        let p = self.path(name)?;
        // Its record goes first: a half-removed directory is no longer a snapshot.
        let rec = p.join(BAKE_FILE);
        std::fs::remove_file(&rec).map_err(|e| StoreError::Io(rec, e))?;
        std::fs::remove_dir_all(&p).map_err(|e| StoreError::Io(p, e))
    }
}

/// A name is one plain path component.
fn check_name(name: &str) -> Result<(), StoreError> {
    let ok = !name.is_empty()
        && name.len() <= 128
        && !name.starts_with(['.', '-'])
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if ok {
        Ok(())
    } else {
        Err(StoreError::BadName(name.into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(name: &str, key: &str) -> BakeRecord {
        BakeRecord {
            name: name.into(),
            key: key.into(),
            image: None,
            warmup_tag: String::new(),
            created: 0,
            seconds: 0.0,
        }
    }

    #[test]
    fn names_are_one_plain_component() {
        for ok in ["app", "node-20.v1", "a_b"] {
            check_name(ok).unwrap();
        }
        for bad in ["", ".hidden", "-x", "a/b", "..", "a b", "é"] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn an_installed_bake_replaces_the_old_one_and_is_listed_and_removed() {
        let d = tempfile::tempdir().unwrap();
        let store = SnapshotStore::at(d.path());
        assert!(store.list().unwrap().is_empty());
        for key in ["k1", "k2"] {
            let _lock = store.lock("app").unwrap();
            let staged = store.staging("app").unwrap();
            std::fs::create_dir_all(staged.join(SNAPSHOT_DIR)).unwrap();
            std::fs::write(staged.join(SNAPSHOT_DIR).join("memory"), key).unwrap();
            let p = store.install("app", &staged, &record("app", key)).unwrap();
            assert_eq!(std::fs::read_to_string(p.join("memory")).unwrap(), key);
            assert!(!staged.exists());
        }
        assert_eq!(store.record("app").unwrap().key, "k2");
        assert_eq!(store.list().unwrap().len(), 1);
        // A staging directory nobody installed is not a snapshot.
        store.staging("app").unwrap();
        assert_eq!(store.list().unwrap().len(), 1);
        store.remove("app").unwrap();
        assert!(matches!(store.find("app"), Err(StoreError::NotFound(_))));
        assert!(matches!(store.remove("app"), Err(StoreError::NotFound(_))));
    }
}

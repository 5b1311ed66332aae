//! The run record (`sm.json` in a VM's runtime directory): everything `sm restore` needs to
//! start a clone of the VM from a snapshot: its image root, mounts (with their policies),
//! volumes, ports, shape, and how commands run in it (environment, working directory, user,
//! guest root). `sm run -d` writes it; `sm snapshot` copies it into the snapshot.

use std::path::{Path, PathBuf};

use clap::ValueEnum;
use serde::{Deserialize, Serialize};

use super::network::NetworkRecord;
use super::spec::{IdRule, Mount, PortMap, Symlinks, Volume};
use super::VmConfig;

/// The record's file name, in a runtime directory and in a snapshot.
pub const RECORD_FILE: &str = "sm.json";

/// The name of volume `index`'s copy in a snapshot (`--volume` order).
pub fn volume_file_name(index: usize) -> String {
    format!("volume-{index}.img")
}

/// The record's format version.
pub const RECORD_VERSION: u32 = 1;

/// Why a run record could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    /// Reading or writing the file failed.
    #[error("{0}: {1}")]
    Io(PathBuf, std::io::Error),
    /// The file is not a run record this sm reads.
    #[error("{0}: not a run record sm reads: {1}")]
    Bad(PathBuf, String),
}

/// One `--mount`, as recorded.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MountRecord {
    /// Host directory (absolute).
    pub host: PathBuf,
    /// Guest path.
    pub guest: String,
    /// Read-only.
    pub read_only: bool,
    /// Symlink policy: `deny`, `opaque` or `follow`.
    pub symlinks: String,
    /// A DAX window.
    pub dax: bool,
    /// Device nodes allowed.
    pub devices: bool,
    /// Setuid and setgid bits kept (absent in records made before `:suid`: cleared).
    #[serde(default)]
    pub suid: bool,
    /// User ID rules, in the backend's syntax (absent in older records: none).
    #[serde(default)]
    pub uid_map: Vec<String>,
    /// Group ID rules, in the backend's syntax (absent in older records: none).
    #[serde(default)]
    pub gid_map: Vec<String>,
}

/// One `--volume`, as recorded.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeRecord {
    /// Host image file (absolute).
    pub file: PathBuf,
    /// Guest path.
    pub guest: String,
    /// Read-only (sm's volumes are writable today; kept so a read-only one is never copied).
    #[serde(default)]
    pub read_only: bool,
    /// Unmounted in the guest when the snapshot was taken (a bake does that): a clone mounts
    /// it after the restore, so any file holding the volume's file system can back it (the
    /// user's own, whose bytes then persist across restores). A volume still mounted in the
    /// snapshot is in the guest's RAM as it was, so only a copy of the snapshot's fits.
    #[serde(default)]
    pub detached: bool,
}

/// What `sm restore` needs to know about a VM.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunRecord {
    /// [`RECORD_VERSION`].
    pub version: u32,
    /// The image reference the VM was started from, if any (for people reading it).
    pub image: Option<String>,
    /// The image's root file system (erofs), if any.
    pub root_image: Option<PathBuf>,
    /// Where commands run in the guest (the image's assembled root), if not `/`.
    pub guest_root: Option<String>,
    /// Guest memory in MiB.
    pub mem_mib: u64,
    /// Virtual CPUs.
    pub vcpus: u32,
    /// Live host directories, in device order.
    pub mounts: Vec<MountRecord>,
    /// Block volumes, in device order.
    pub volumes: Vec<VolumeRecord>,
    /// Forwarded ports: (host, guest).
    pub ports: Vec<(u16, u16)>,
    /// The environment commands run with.
    pub env: Vec<(String, String)>,
    /// The working directory commands run in.
    pub workdir: Option<String>,
    /// The user commands run as (uid, gid).
    pub user: Option<(u32, u32)>,
    /// The guest's network (a record without one describes a VM without a network device).
    #[serde(default)]
    pub network: NetworkRecord,
}

/// `p` made absolute against the working directory.
/// ID rules read back from a record.
fn id_rules(rules: &[String]) -> Result<Vec<IdRule>, String> {
    rules
        .iter()
        .map(|r| r.parse().map_err(|e| format!("ID rule {r:?}: {e}")))
        .collect()
}

fn absolute(p: &Path) -> PathBuf {
    std::path::absolute(p).unwrap_or_else(|_| p.to_owned())
}

impl RunRecord {
    /// The record of a VM started from `config` (paths made absolute).
    pub fn new(config: &VmConfig) -> RunRecord {
        RunRecord {
            version: RECORD_VERSION,
            image: None,
            root_image: config.root_image.as_deref().map(absolute),
            guest_root: None,
            mem_mib: config.mem_mib,
            vcpus: config.vcpus,
            mounts: config
                .mounts
                .iter()
                .map(|m| MountRecord {
                    host: absolute(&m.host),
                    guest: m.guest.clone(),
                    read_only: m.read_only,
                    symlinks: m
                        .symlinks
                        .to_possible_value()
                        .map(|v| v.get_name().to_owned())
                        .unwrap_or_default(),
                    dax: m.dax,
                    devices: m.devices,
                    suid: m.suid,
                    uid_map: m.uid_map.iter().map(ToString::to_string).collect(),
                    gid_map: m.gid_map.iter().map(ToString::to_string).collect(),
                })
                .collect(),
            volumes: config
                .volumes
                .iter()
                .map(|v| VolumeRecord {
                    file: absolute(&v.file),
                    guest: v.guest.clone(),
                    read_only: false,
                    detached: false,
                })
                .collect(),
            ports: config.ports.iter().map(|p| (p.host, p.guest)).collect(),
            env: vec![],
            workdir: None,
            user: None,
            network: NetworkRecord::new(&config.network),
        }
    }

    /// The VM configuration the record describes, under `name`.
    pub fn config(&self, name: Option<String>) -> Result<VmConfig, String> {
        let mounts = self
            .mounts
            .iter()
            .map(|m| {
                Ok(Mount {
                    host: m.host.clone(),
                    guest: m.guest.clone(),
                    read_only: m.read_only,
                    symlinks: Symlinks::from_str(&m.symlinks, false)
                        .map_err(|_| format!("unknown symlink policy {:?}", m.symlinks))?,
                    dax: m.dax,
                    devices: m.devices,
                    suid: m.suid,
                    uid_map: id_rules(&m.uid_map)?,
                    gid_map: id_rules(&m.gid_map)?,
                })
            })
            .collect::<Result<_, String>>()?;
        Ok(VmConfig {
            name,
            mem_mib: self.mem_mib,
            vcpus: self.vcpus,
            mounts,
            volumes: self
                .volumes
                .iter()
                .map(|v| Volume {
                    file: v.file.clone(),
                    guest: v.guest.clone(),
                    size_mib: 0,
                })
                .collect(),
            ports: self
                .ports
                .iter()
                .map(|&(host, guest)| PortMap { host, guest })
                .collect(),
            root_image: self.root_image.clone(),
            kernel_args: None,
            backend_watchdog: super::BACKEND_WATCHDOG,
            network: self.network.network()?,
        })
    }

    /// Reads the record at `path`.
    pub fn read(path: &Path) -> Result<RunRecord, RecordError> {
        let bytes = std::fs::read(path).map_err(|e| RecordError::Io(path.into(), e))?;
        let r: RunRecord = serde_json::from_slice(&bytes)
            .map_err(|e| RecordError::Bad(path.into(), e.to_string()))?;
        if r.version != RECORD_VERSION {
            return Err(RecordError::Bad(
                path.into(),
                format!(
                    "version {}, this sm reads version {RECORD_VERSION}",
                    r.version
                ),
            ));
        }
        Ok(r)
    }

    /// Writes the record to `path` (through a temporary file renamed into place).
    pub fn write(&self, path: &Path) -> Result<(), RecordError> {
        let json = serde_json::to_vec_pretty(self)
            .map_err(|e| RecordError::Bad(path.into(), e.to_string()))?;
        let tmp = path.with_extension("json.tmp");
        std::fs::write(&tmp, json).map_err(|e| RecordError::Io(tmp.clone(), e))?;
        std::fs::rename(&tmp, path).map_err(|e| RecordError::Io(path.into(), e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_round_trips_through_its_file_and_gives_back_the_config() {
        let config = VmConfig {
            mem_mib: 768,
            vcpus: 2,
            mounts: vec!["/src:/w:ro:symlinks=deny:dax:devices:uidmap=0-100000-65536"
                .parse()
                .unwrap()],
            volumes: vec!["/c.img:/cache".parse().unwrap()],
            ports: vec!["8080:80".parse().unwrap()],
            root_image: Some("/i/root.erofs".into()),
            ..VmConfig::default()
        };
        let mut r = RunRecord::new(&config);
        r.env = vec![("A".into(), "b".into())];
        r.workdir = Some("/w".into());
        r.guest_root = Some("/sm/root".into());
        assert_eq!(r.mounts[0].symlinks, "deny");
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join(RECORD_FILE);
        r.write(&p).unwrap();
        let back = RunRecord::read(&p).unwrap();
        assert_eq!(back, r);
        let c = back.config(Some("b".into())).unwrap();
        assert_eq!(c.mounts, config.mounts);
        assert_eq!(c.ports, config.ports);
        assert_eq!(c.volumes[0].file, Path::new("/c.img"));
        assert_eq!((c.mem_mib, c.vcpus), (768, 2));
        assert_eq!(c.root_image, config.root_image);
    }

    #[test]
    fn another_version_or_garbage_is_refused_with_the_file_named() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join(RECORD_FILE);
        let mut r = RunRecord::new(&VmConfig::default());
        r.version = 99;
        r.write(&p).unwrap();
        let e = RunRecord::read(&p).unwrap_err().to_string();
        assert!(e.contains("version 99") && e.contains("sm.json"), "{e}");
        std::fs::write(&p, "{").unwrap();
        assert!(RunRecord::read(&p).is_err());
    }
}

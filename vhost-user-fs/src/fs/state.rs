//! What sm-vhost-user-fs hands over for a snapshot (vhost-user SET_DEVICE_STATE_FD), and
//! how a fresh backend process reopens it.
//!
//! The state is a versioned JSON document (sm-vhost-user-common's [`document`] around an
//! [`FsBody`]; [`FsState`] holds one as a value):
//!
//! ```json
//! {"format": "sm-vhost-user-fs", "version": 1,
//!  "config": {"symlinks": "deny", "read_only": false, "cache": "auto"},
//!  "fuse_options": 1234567,
//!  "next_inode": 9, "last_handle": 4,
//!  "inodes": [{"id": 2, "path": "d/f", "kind": "file", "lookups": 3, "host_ino": 1234}],
//!  "handles": [{"handle": 1, "inode": 2, "flags": 2}]}
//! ```
//!
//! **Carried over**: every node ID the guest holds (except the root, always the shared
//! directory) with its path relative to the shared directory, its file type and its kernel
//! lookup count; every open handle number with its node and open flags; the FUSE options
//! INIT agreed; the next node ID and handle number, so new ones never collide with old ones.
//! Guest-visible node IDs and handle numbers are the same after LOAD.
//!
//! **How paths are found**: at SAVE, from the kernel's name for each `O_PATH` descriptor
//! (`/proc/self/fd`), which follows renames; it must lie below the shared directory. A path
//! may be a JSON string, or an array of bytes where it is not UTF-8.
//!
//! **How LOAD reopens**: each path is walked from the shared directory one component at a
//! time with LOOKUP's own code (name checks, `RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS`, the
//! `--symlinks` policy), never by opening a joined host path. An entry that no longer exists,
//! whose path now leaves the shared directory (a component replaced by an escaping symlink
//! under `deny`, or any symlink on the way under `deny`/`opaque`), or whose file type
//! changed fails the whole LOAD with one line naming it. Handles are reopened from their
//! node (`/proc/self/fd`, as OPEN does), without `O_TRUNC`.
//!
//! **Dropped, with a warning**: a node that had no name inside the shared directory at SAVE
//! (unlinked but still open or looked up, the name it was found under removed, or moved out
//! of the share on the host) is saved with `"path": null`; LOAD drops it and its handles, and
//! the guest gets EBADF on them. (Its data exists nowhere a new process could reopen it.)
//!
//! **Not carried over**: directory read-ahead (a READDIR continues by seeking to its offset),
//! byte-range and flock locks, DAX window mappings (a backend with a DAX window refuses
//! SET_DEVICE_STATE_FD), and the FUSE protocol minor version (fuse-backend-rs keeps its own 7.33 default,
//! right for every kernel that negotiates 7.33 or later). The host inode number is recorded
//! but only compared: a file replaced on the host under the same name is reopened with a
//! warning, as a later LOOKUP would find it too.

use std::ffi::CString;
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};

use fuse_backend_rs::api::filesystem::ROOT_ID;
use serde::{Deserialize, Serialize};
use sm_vhost_user_common::document::{self, DeviceState, Document, DocumentError};
use tracing::warn;

use super::files::open_flags;
use super::SharedFs;
use crate::inode::InodeData;
use crate::journal::{Record, Tables};
use crate::policy::{self, CacheMode, SymlinkPolicy};
use crate::sys;

/// The whole state of the shared file system, as saved, in its envelope.
pub type FsState = Document<FsBody>;

/// The whole state of the shared file system: the document's body.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FsBody {
    /// The flags the state was saved under; LOAD needs the same.
    pub config: ConfigState,
    /// `FsOptions` bits FUSE INIT agreed, or `null` before INIT.
    pub fuse_options: Option<u64>,
    /// The next node ID the backend would hand out.
    pub next_inode: u64,
    /// The last handle number handed out.
    pub last_handle: u64,
    /// Every node but the root, by node ID.
    pub inodes: Vec<InodeState>,
    /// Every open handle, by handle number.
    pub handles: Vec<HandleState>,
}

impl DeviceState for FsBody {
    const FORMAT: &'static str = "sm-vhost-user-fs";
    const VERSION: u32 = 1;
}

/// The flags that change what the guest sees.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigState {
    /// `--symlinks`: `deny`, `opaque` or `follow`.
    pub symlinks: String,
    /// `--read-only`.
    pub read_only: bool,
    /// `--cache`: `auto`, `always` or `never`.
    pub cache: String,
}

/// One node the guest holds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InodeState {
    /// The guest-visible node ID.
    pub id: u64,
    /// Path relative to the shared directory (`null`: it had none at SAVE).
    pub path: Option<HostPath>,
    /// File type: `file`, `dir`, `symlink`, `fifo`, `socket`, `char` or `block`.
    pub kind: String,
    /// The kernel's lookup count (what FORGET will give back).
    pub lookups: u64,
    /// The host inode number at SAVE (compared only).
    pub host_ino: u64,
}

/// One open file or directory.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HandleState {
    /// The guest-visible handle number.
    pub handle: u64,
    /// The node it was opened from.
    pub inode: u64,
    /// Its open flags (`O_ACCMODE`, `O_APPEND`, ...; ignored for directories).
    pub flags: i32,
}

/// A relative host path: text when it is UTF-8, else its bytes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum HostPath {
    /// A UTF-8 path.
    Text(String),
    /// Any other path, byte for byte.
    Bytes(Vec<u8>),
}

impl HostPath {
    fn from_bytes(b: Vec<u8>) -> HostPath {
        match String::from_utf8(b) {
            Ok(s) => HostPath::Text(s),
            Err(e) => HostPath::Bytes(e.into_bytes()),
        }
    }

    fn as_bytes(&self) -> &[u8] {
        match self {
            HostPath::Text(s) => s.as_bytes(),
            HostPath::Bytes(b) => b,
        }
    }

    /// The path for messages.
    fn display(&self) -> String {
        String::from_utf8_lossy(self.as_bytes()).into_owned()
    }
}

/// Why a state could not be saved or loaded; each is one line naming the cause.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// Not this backend's document, format or version.
    #[error(transparent)]
    Document(#[from] DocumentError),
    /// The backend runs with other flags than the saving one.
    #[error("state was saved with {saved:?}, this backend runs with {actual:?}")]
    Config {
        /// Flags in the state.
        saved: ConfigState,
        /// Flags now.
        actual: ConfigState,
    },
    /// INIT agreed to options this backend would never ask for.
    #[error("state has FUSE options {saved:#x} this backend would not agree to ({wanted:#x})")]
    Options {
        /// Options in the state.
        saved: u64,
        /// Options this backend asks for.
        wanted: u64,
    },
    /// The document contradicts itself.
    #[error("inconsistent state: {0}")]
    Invalid(String),
    /// A node could not be reopened.
    #[error("inode {id} ({path}): {reason}")]
    Reopen {
        /// Its node ID.
        id: u64,
        /// Its saved path.
        path: String,
        /// Why not.
        reason: String,
    },
    /// A handle could not be reopened.
    #[error("handle {handle} of inode {inode}: cannot reopen: {source}")]
    Handle {
        /// The handle number.
        handle: u64,
        /// Its node ID.
        inode: u64,
        /// Why not.
        source: io::Error,
    },
    /// A host call failed while saving.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// Why it failed.
        source: io::Error,
    },
}

/// A file type's name in the state.
fn kind_name(kind: u32) -> &'static str {
    match kind {
        libc::S_IFREG => "file",
        libc::S_IFDIR => "dir",
        libc::S_IFLNK => "symlink",
        libc::S_IFIFO => "fifo",
        libc::S_IFSOCK => "socket",
        libc::S_IFCHR => "char",
        libc::S_IFBLK => "block",
        _ => "unknown",
    }
}

/// `--symlinks` as written on the command line.
fn symlinks_name(p: SymlinkPolicy) -> &'static str {
    match p {
        SymlinkPolicy::Deny => "deny",
        SymlinkPolicy::Opaque => "opaque",
        SymlinkPolicy::Follow => "follow",
    }
}

/// `--cache` as written on the command line.
fn cache_name(c: CacheMode) -> &'static str {
    match c {
        CacheMode::Auto => "auto",
        CacheMode::Always => "always",
        CacheMode::Never => "never",
    }
}

fn io_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> StateError {
    let what = what.into();
    move |source| StateError::Io { what, source }
}

impl SharedFs {
    /// The flags that must match between SAVE and LOAD.
    fn config_state(&self) -> ConfigState {
        ConfigState {
            symlinks: symlinks_name(self.cfg.symlinks).to_owned(),
            read_only: self.cfg.read_only,
            cache: cache_name(self.cfg.cache).to_owned(),
        }
    }

    /// The path of `fd` relative to the shared directory (whose host path is `root`), or
    /// `None` when it has no name there (unlinked, or moved out of the share).
    fn relative_path(
        &self,
        fd: std::os::fd::BorrowedFd<'_>,
        root: &[u8],
    ) -> io::Result<Option<Vec<u8>>> {
        if sys::fstat(fd)?.st_nlink == 0 {
            return Ok(None);
        }
        let path = self.proc.path_of(fd)?;
        let prefix_len = if root == b"/" { 0 } else { root.len() };
        if !path.starts_with(root) || path.get(prefix_len) != Some(&b'/') {
            return Ok(None);
        }
        let rel = &path[prefix_len + 1..];
        if rel.is_empty() || rel.ends_with(b" (deleted)") {
            return Ok(None);
        }
        Ok(Some(rel.to_vec()))
    }

    /// The state of every node and handle the guest holds (the rings must be stopped).
    pub fn save_state(&self) -> Result<FsState, StateError> {
        let root = self
            .proc
            .path_of(self.root.as_fd())
            .map_err(io_err("cannot find the shared directory's path"))?;
        let (entries, next_inode) = self.inodes.entries();
        let mut inodes = Vec::with_capacity(entries.len());
        for (id, data, lookups) in entries {
            let path = self
                .relative_path(data.fd(), &root)
                .map_err(io_err(format!("inode {id}: cannot find its path")))?;
            inodes.push(InodeState {
                id,
                path: path.map(HostPath::from_bytes),
                kind: kind_name(data.kind).to_owned(),
                lookups,
                host_ino: data.key.1,
            });
        }
        let (open, last_handle) = self.handles.entries();
        let mut handles = Vec::with_capacity(open.len());
        for (handle, data) in open {
            // SAFETY: F_GETFL only reads the flags of a descriptor the handle owns.
            let flags = unsafe { libc::fcntl(data.file().as_raw_fd(), libc::F_GETFL) };
            if flags < 0 {
                let e = io::Error::last_os_error();
                return Err(io_err(format!("handle {handle}: cannot read its flags"))(e));
            }
            handles.push(HandleState {
                handle,
                inode: data.inode,
                flags: open_flags(flags as u32),
            });
        }
        Ok(Document::new(FsBody {
            config: self.config_state(),
            fuse_options: *self.fuse_options.lock().unwrap_or_else(|e| e.into_inner()),
            next_inode,
            last_handle,
            inodes,
            handles,
        }))
    }

    /// The state as JSON bytes.
    pub fn save_state_bytes(&self) -> Result<Vec<u8>, StateError> {
        Ok(document::save(&self.save_state()?.body)?)
    }

    /// Parses `bytes` and [loads](SharedFs::load_state) them.
    pub fn load_state_bytes(&self, bytes: &[u8]) -> Result<(), StateError> {
        let body = document::load(bytes)?;
        self.restore(&body, false)?;
        self.journal_loaded(&body);
        Ok(())
    }

    /// Walks `path` from the shared directory one component at a time, as LOOKUPs would.
    fn walk(&self, path: &[u8]) -> Result<InodeData, String> {
        let st = sys::fstat(self.root.as_fd()).map_err(|e| e.to_string())?;
        let root = self.root.try_clone().map_err(|e| e.to_string())?;
        let mut cur = InodeData::new(root, &st);
        let mut walked = String::new();
        for comp in path.split(|&b| b == b'/') {
            let shown = String::from_utf8_lossy(comp);
            policy::validate_name(comp)
                .map_err(|_| format!("{shown:?} is not a plain name (path not below the share)"))?;
            if !cur.is_dir() {
                return Err(format!("{walked:?} is no longer a directory"));
            }
            if !walked.is_empty() {
                walked.push('/');
            }
            walked.push_str(&shown);
            let name = CString::new(comp).map_err(|e| e.to_string())?;
            let (fd, st) = self
                .resolve_in(&cur, &name)
                .map_err(|e| match e.raw_os_error() {
                    Some(libc::ENOENT) => format!("{walked:?} no longer exists"),
                    Some(libc::EACCES) if self.cfg.symlinks.hides_escaping_symlinks() => format!(
                        "{walked:?} is a symlink leaving the shared directory (--symlinks deny)"
                    ),
                    Some(libc::ELOOP) | Some(libc::EXDEV) => {
                        format!("{walked:?} would leave the shared directory: {e}")
                    }
                    _ => format!("cannot look up {walked:?}: {e}"),
                })?;
            cur = InodeData::new(fd, &st);
        }
        Ok(cur)
    }

    /// Replaces every node and handle with `state`'s, each reopened from its path under
    /// this backend's policy; on any error nothing changes.
    pub fn load_state(&self, state: &FsState) -> Result<(), StateError> {
        state.check()?;
        self.restore(state, false)?;
        self.journal_loaded(state);
        Ok(())
    }

    /// Records a loaded snapshot's tables in the journal, if there is one. The snapshot
    /// names nodes by path: a node whose parent directory is a node too gets that parent
    /// (so renaming the directory moves it); any other is named by its whole path.
    fn journal_loaded(&self, state: &FsBody) {
        let Some(journal) = &self.journal else {
            return;
        };
        let by_path: std::collections::HashMap<&[u8], u64> = state
            .inodes
            .iter()
            .filter_map(|n| Some((n.path.as_ref()?.as_bytes(), n.id)))
            .collect();
        let mut records = vec![
            Record::Session {
                options: state.fuse_options,
            },
            Record::Counters {
                next_inode: state.next_inode,
                last_handle: state.last_handle,
            },
        ];
        let live = |id| self.inodes.get(id).is_ok();
        for n in &state.inodes {
            // What LOAD dropped (no name, or gone) is not recorded.
            let (Some(path), Ok(data)) = (&n.path, self.inodes.get(n.id)) else {
                continue;
            };
            let path = path.as_bytes();
            let (parent, name) = match path.iter().rposition(|&b| b == b'/') {
                Some(i) => match by_path.get(&path[..i]) {
                    Some(&p) if live(p) => (p, &path[i + 1..]),
                    _ => (ROOT_ID, path),
                },
                None => (ROOT_ID, path),
            };
            records.push(Record::Node {
                id: n.id,
                parent,
                name: name.to_vec(),
                kind: data.kind,
                ino: n.host_ino,
                n: n.lookups,
            });
        }
        for h in state
            .handles
            .iter()
            .filter(|h| self.has_handle(h.handle, h.inode))
        {
            records.push(Record::Open {
                h: h.handle,
                id: h.inode,
                flags: h.flags,
            });
        }
        if let Err(e) = journal.replace(&records) {
            warn!("state journal: cannot record the loaded tables: {e}");
        }
    }

    /// Takes over the tables a crashed backend left in its journal: each node reopened from
    /// the path its recorded names give, each handle from its node. Unlike a snapshot's
    /// LOAD, a node that cannot be reopened (gone from the host, moved behind the guest's
    /// back, its type changed) is dropped with a warning, as are its handles: the guest
    /// gets EBADF on those alone. Returns how many nodes and handles were dropped.
    pub fn recover(&self, tables: &Tables) -> Result<(usize, usize), StateError> {
        let mut inodes: Vec<InodeState> = tables
            .nodes
            .iter()
            .map(|(&id, n)| InodeState {
                id,
                path: tables.path(id).map(HostPath::from_bytes),
                kind: kind_name(n.kind).to_owned(),
                lookups: n.lookups,
                host_ino: n.ino,
            })
            .collect();
        inodes.sort_by_key(|n| n.id);
        let mut handles: Vec<HandleState> = tables
            .handles
            .iter()
            .map(|(&handle, &(inode, flags))| HandleState {
                handle,
                inode,
                flags,
            })
            .collect();
        handles.sort_by_key(|h| h.handle);
        let body = FsBody {
            config: self.config_state(),
            fuse_options: tables.options,
            next_inode: tables.next_inode.max(ROOT_ID + 1),
            last_handle: tables.last_handle,
            inodes,
            handles,
        };
        let (nodes, handles) = (body.inodes.len(), body.handles.len());
        self.restore(&body, true)?;
        let kept_nodes = self.inodes.count() - 1;
        let kept_handles = self.handles.entries().0.len();
        Ok((nodes - kept_nodes, handles - kept_handles))
    }

    /// [`SharedFs::load_state`] of a body whose envelope was checked; `lenient` drops what
    /// cannot be reopened instead of failing.
    fn restore(&self, state: &FsBody, lenient: bool) -> Result<(), StateError> {
        let actual = self.config_state();
        if state.config != actual {
            return Err(StateError::Config {
                saved: state.config.clone(),
                actual,
            });
        }
        let wanted = self.wanted().bits();
        if let Some(saved) = state.fuse_options {
            if saved & !wanted != 0 {
                return Err(StateError::Options { saved, wanted });
            }
        }
        let mut seen = std::collections::HashSet::new();
        let mut dropped = std::collections::HashSet::new();
        let mut nodes: Vec<(u64, InodeData, u64)> = Vec::new();
        for node in &state.inodes {
            if node.id <= ROOT_ID || node.id >= state.next_inode || !seen.insert(node.id) {
                return Err(StateError::Invalid(format!(
                    "inode {} repeated or outside 2..{}",
                    node.id, state.next_inode
                )));
            }
            let Some(path) = &node.path else {
                warn!(
                    "inode {} had no name in the shared directory at the snapshot (unlinked); dropped",
                    node.id
                );
                dropped.insert(node.id);
                continue;
            };
            let reopen_err = |reason: String| StateError::Reopen {
                id: node.id,
                path: path.display(),
                reason,
            };
            let walked = self.walk(path.as_bytes()).and_then(|data| {
                if kind_name(data.kind) != node.kind {
                    return Err(format!(
                        "was a {}, is now a {}",
                        node.kind,
                        kind_name(data.kind)
                    ));
                }
                Ok(data)
            });
            let data = match walked {
                Ok(data) => data,
                Err(reason) if lenient => {
                    warn!("{}; dropped", reopen_err(reason));
                    dropped.insert(node.id);
                    continue;
                }
                Err(reason) => return Err(reopen_err(reason)),
            };
            if data.key.1 != node.host_ino {
                warn!(
                    "inode {} ({}) is another host file than at the snapshot (host inode {} then, {} now)",
                    node.id,
                    path.display(),
                    node.host_ino,
                    data.key.1
                );
            }
            nodes.push((node.id, data, node.lookups));
        }
        let mut handles: Vec<(u64, u64, File)> = Vec::new();
        let mut handle_ids = std::collections::HashSet::new();
        for h in &state.handles {
            if h.handle == 0 || h.handle > state.last_handle || !handle_ids.insert(h.handle) {
                return Err(StateError::Invalid(format!(
                    "handle {} repeated or outside 1..={}",
                    h.handle, state.last_handle
                )));
            }
            if dropped.contains(&h.inode) {
                warn!("handle {} of dropped inode {} dropped", h.handle, h.inode);
                continue;
            }
            let data = if h.inode == ROOT_ID {
                None
            } else {
                match nodes.iter().find(|n| n.0 == h.inode) {
                    Some(n) => Some(&n.1),
                    None => {
                        return Err(StateError::Invalid(format!(
                            "handle {} refers to unknown inode {}",
                            h.handle, h.inode
                        )))
                    }
                }
            };
            let handle_err = |source| StateError::Handle {
                handle: h.handle,
                inode: h.inode,
                source,
            };
            let (fd, is_dir, is_file) = match data {
                Some(d) => (d.fd(), d.is_dir(), d.is_file()),
                None => (self.root.as_fd(), true, false),
            };
            let reopened: io::Result<OwnedFd> = if is_dir {
                sys::open_dir(fd)
            } else if is_file {
                let flags = open_flags(h.flags as u32) & !libc::O_TRUNC;
                if flags & libc::O_ACCMODE != libc::O_RDONLY {
                    self.writable().and_then(|()| self.proc.reopen(fd, flags))
                } else {
                    self.proc.reopen(fd, flags)
                }
            } else {
                Err(io::Error::from_raw_os_error(libc::EINVAL))
            };
            let file = match reopened {
                Ok(file) => file,
                Err(e) if lenient => {
                    warn!("{}; dropped", handle_err(e));
                    continue;
                }
                Err(e) => return Err(handle_err(e)),
            };
            handles.push((h.handle, h.inode, File::from(file)));
        }
        let root = self
            .root
            .try_clone()
            .map_err(io_err("cannot reopen the shared directory"))?;
        let st = sys::fstat(root.as_fd()).map_err(io_err("cannot stat the shared directory"))?;
        self.inodes.restore(root, &st, nodes, state.next_inode);
        self.handles.restore(handles, state.last_handle);
        self.depths
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
        *self.fuse_options.lock().unwrap_or_else(|e| e.into_inner()) = state.fuse_options;
        Ok(())
    }

    /// What the last FUSE INIT agreed (or LOAD restored), as `FsOptions` bits.
    pub fn fuse_options(&self) -> Option<u64> {
        *self.fuse_options.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether `handle` of `inode` is open.
    pub fn has_handle(&self, handle: u64, inode: u64) -> bool {
        self.handles.get(handle, inode).is_ok()
    }

    /// How many nodes are known (root included).
    pub fn inode_count(&self) -> usize {
        self.inodes.count()
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::ffi::OsStrExt;

    use fuse_backend_rs::api::filesystem::FileSystem;

    use super::super::FsConfig;
    use super::*;

    /// A document written before the envelope moved to sm-vhost-user-common: d, d/f and a
    /// non-UTF-8 name looked up, f open for appending, d open, an unlinked file still open.
    const SAVED: &[u8] = br#"{"format":"sm-vhost-user-fs","version":1,"config":{"symlinks":"opaque","read_only":false,"cache":"auto"},"fuse_options":4517929,"next_inode":6,"last_handle":3,"inodes":[{"id":2,"path":"d","kind":"dir","lookups":1,"host_ino":10264689},{"id":3,"path":"d/f","kind":"file","lookups":1,"host_ino":10264943},{"id":4,"path":[110,255],"kind":"file","lookups":1,"host_ino":10264946},{"id":5,"path":null,"kind":"file","lookups":1,"host_ino":10264961}],"handles":[{"handle":1,"inode":3,"flags":1025},{"handle":2,"inode":2,"flags":0},{"handle":3,"inode":5,"flags":0}]}"#;

    /// A file system with default flags on `dir`.
    fn open_fs(dir: &std::path::Path) -> SharedFs {
        SharedFs::open_dir(dir, FsConfig::default()).unwrap()
    }

    /// The current format loads into a fresh file system with the same IDs and handles, and
    /// is written back byte for byte.
    #[test]
    fn loads_and_writes_the_current_format() {
        let tmp = tempfile::tempdir().unwrap();
        let shared = tmp.path();
        std::fs::create_dir(shared.join("d")).unwrap();
        std::fs::write(shared.join("d/f"), b"f").unwrap();
        std::fs::write(shared.join(std::ffi::OsStr::from_bytes(b"n\xff")), b"n").unwrap();
        let fs = open_fs(shared);
        fs.load_state_bytes(SAVED).unwrap();
        assert_eq!(
            fs.inode_count(),
            4,
            "root, d, d/f, n\\xff; the unlinked one dropped"
        );
        assert!(fs.has_handle(1, 3) && fs.has_handle(2, 2));
        assert!(!fs.has_handle(3, 5));
        assert_eq!(fs.fuse_options(), Some(4517929));
        let ctx = fuse_backend_rs::api::filesystem::Context::new();
        let found = fs.lookup(&ctx, 2, c"f").unwrap().inode;
        assert_eq!(found, 3, "LOOKUP finds the saved node");

        let body: FsBody = document::load(SAVED).unwrap();
        assert_eq!(body.inodes[2].path, Some(HostPath::Bytes(vec![b'n', 0xff])));
        assert_eq!(document::save(&body).unwrap(), SAVED);
    }

    /// Another backend's document and an unknown field are refused, naming why.
    #[test]
    fn refuses_another_backends_format_and_unknown_fields() {
        let tmp = tempfile::tempdir().unwrap();
        let fs = open_fs(tmp.path());
        let refuse = |bytes: &[u8]| fs.load_state_bytes(bytes).unwrap_err().to_string();
        let net = br#"{"format":"sm-vhost-user-net","version":1,"acked_features":5100273696}"#;
        assert_eq!(
            refuse(net),
            r#"state is "sm-vhost-user-net" version 1, this backend reads "sm-vhost-user-fs" version 1"#
        );
        let text = std::str::from_utf8(SAVED).unwrap();
        let extra = text.replace(r#""next_inode""#, r#""dax":true,"next_inode""#);
        let e = refuse(extra.as_bytes());
        assert!(
            e.starts_with("not an sm-vhost-user-fs state document: unknown field `dax`"),
            "{e}"
        );
        let nested = text.replace(r#""lookups":1,"#, r#""lookups":1,"locks":0,"#);
        let e = refuse(nested.as_bytes());
        assert!(e.contains("unknown field `locks`"), "{e}");
        assert_eq!(fs.inode_count(), 1, "a refused LOAD changes nothing");
    }
}

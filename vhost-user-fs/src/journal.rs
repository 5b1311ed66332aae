//! The crash journal: every change to the inode and handle tables, appended to a memfd the
//! supervisor keeps open (`--state-fd`), so a backend started after a crash takes over the
//! guest's node IDs and open files instead of failing them with EBADF.
//!
//! **Layout.** Bytes 0..16 hold a magic and the offset of the active region (4 KiB or
//! 1 TiB into the sparse memfd). A region is newline-separated JSON records; reading stops
//! at the first NUL byte (a hole), at the end of the file, or at a record that does not
//! parse (the last one, cut short when the process died while writing it).
//!
//! **Why it is enough.** A record is written before the reply that makes its change visible
//! to the guest, so the journal never lacks a node or handle the guest holds. A crash
//! between the record and the reply leaves at most an extra lookup or an extra open file,
//! which costs memory, not correctness. Names are tracked as (parent node, name) and moved
//! by RENAME, so paths follow the guest's own renames; a change the host makes behind the
//! guest's back shows at replay as a path that no longer leads to the file.
//!
//! **Compaction.** When the active region passes [`COMPACT_AT`] and twice what the last
//! compaction wrote (so large live tables are not rewritten on every record), the live
//! tables are written to the other region as ordinary records, then the header flips to it
//! (one 8-byte write), then the old region is punched out. A crash at any point leaves one
//! complete region in the header.

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::sync::Mutex;

use fuse_backend_rs::api::filesystem::ROOT_ID;
use serde::{Deserialize, Serialize};

/// First bytes of a journal.
const MAGIC: &[u8; 8] = b"smfsjrn1";
/// Where the first region starts.
const REGION_A: u64 = 4096;
/// Where the second region starts (the memfd is sparse: the gap costs nothing).
const REGION_B: u64 = 1 << 40;
/// Active region size that triggers compaction, at the least (the memfd is memory).
pub const COMPACT_AT: u64 = 8 << 20;
/// Deepest path a node's parent chain may have.
const MAX_DEPTH: usize = 4096;

/// One change to the tables.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Record {
    /// FUSE INIT (`Some`: the options agreed) or DESTROY (`None`): the tables start over.
    Session {
        /// `FsOptions` bits.
        options: Option<u64>,
    },
    /// `n` more kernel references to node `id`, found as `name` in `parent`.
    Node {
        /// Node ID.
        id: u64,
        /// Node ID of the directory it was found in.
        parent: u64,
        /// Its name there.
        name: Vec<u8>,
        /// `S_IFMT` bits.
        kind: u32,
        /// Host inode number (compared only).
        ino: u64,
        /// References added.
        n: u64,
    },
    /// FORGET: `n` references to `id` dropped.
    Forget {
        /// Node ID.
        id: u64,
        /// References dropped.
        n: u64,
    },
    /// OPEN, OPENDIR or CREATE: handle `h` of node `id`.
    Open {
        /// Handle number.
        h: u64,
        /// Node ID.
        id: u64,
        /// Open flags.
        flags: i32,
    },
    /// RELEASE or RELEASEDIR.
    Close {
        /// Handle number.
        h: u64,
    },
    /// RENAME of `old_name` in `old_dir` to `new_name` in `new_dir`.
    Rename {
        /// Source directory.
        old_dir: u64,
        /// Source name.
        old_name: Vec<u8>,
        /// Target directory.
        new_dir: u64,
        /// Target name.
        new_name: Vec<u8>,
        /// RENAME_EXCHANGE: the two swapped.
        exchange: bool,
    },
    /// UNLINK or RMDIR of `name` in `dir`.
    Remove {
        /// Directory.
        dir: u64,
        /// Name removed.
        name: Vec<u8>,
    },
    /// The next node ID and last handle number (kept across compaction: IDs never repeat).
    Counters {
        /// Next node ID.
        next_inode: u64,
        /// Last handle number.
        last_handle: u64,
    },
}

/// A node as the journal knows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeRecord {
    /// Its names as (directory node, name), the one last looked up last (hard links have
    /// several; empty: removed or replaced).
    pub names: Vec<(u64, Vec<u8>)>,
    /// `S_IFMT` bits.
    pub kind: u32,
    /// Host inode number.
    pub ino: u64,
    /// Kernel references.
    pub lookups: u64,
}

/// The tables the records add up to.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Tables {
    /// What INIT agreed; `None` before INIT or after DESTROY.
    pub options: Option<u64>,
    /// Every node but the root.
    pub nodes: HashMap<u64, NodeRecord>,
    /// Open handles: handle number to (node ID, open flags).
    pub handles: HashMap<u64, (u64, i32)>,
    /// The next node ID.
    pub next_inode: u64,
    /// The last handle number.
    pub last_handle: u64,
    names: HashMap<(u64, Vec<u8>), u64>,
}

impl Tables {
    /// Applies one record.
    pub fn apply(&mut self, rec: &Record) {
        match rec {
            Record::Session { options } => {
                self.options = *options;
                self.nodes.clear();
                self.names.clear();
                self.handles.clear();
                self.next_inode = ROOT_ID + 1;
            }
            Record::Node {
                id,
                parent,
                name,
                kind,
                ino,
                n,
            } => {
                if *id == ROOT_ID {
                    return;
                }
                self.next_inode = self.next_inode.max(id + 1);
                let node = self.nodes.entry(*id).or_insert(NodeRecord {
                    names: Vec::new(),
                    kind: *kind,
                    ino: *ino,
                    lookups: 0,
                });
                node.lookups = node.lookups.saturating_add(*n);
                self.give_name(*id, (*parent, name.clone()));
            }
            Record::Forget { id, n } => {
                let Some(node) = self.nodes.get_mut(id) else {
                    return;
                };
                node.lookups = node.lookups.saturating_sub(*n);
                if node.lookups == 0 {
                    for key in std::mem::take(&mut node.names) {
                        if self.names.get(&key) == Some(id) {
                            self.names.remove(&key);
                        }
                    }
                    self.nodes.remove(id);
                }
            }
            Record::Open { h, id, flags } => {
                self.handles.insert(*h, (*id, *flags));
                self.last_handle = self.last_handle.max(*h);
            }
            Record::Close { h } => {
                self.handles.remove(h);
            }
            Record::Rename {
                old_dir,
                old_name,
                new_dir,
                new_name,
                exchange,
            } => {
                let from = (*old_dir, old_name.clone());
                let to = (*new_dir, new_name.clone());
                let moved = self.take_name(&from);
                let replaced = self.take_name(&to);
                if let Some(id) = moved {
                    self.give_name(id, to.clone());
                }
                if let (Some(id), true) = (replaced, *exchange) {
                    self.give_name(id, from);
                }
            }
            Record::Remove { dir, name } => {
                self.take_name(&(*dir, name.clone()));
            }
            Record::Counters {
                next_inode,
                last_handle,
            } => {
                self.next_inode = self.next_inode.max(*next_inode);
                self.last_handle = self.last_handle.max(*last_handle);
            }
        }
    }

    /// Node `id` is (now) also `key`, its primary name; whatever had that name loses it.
    fn give_name(&mut self, id: u64, key: (u64, Vec<u8>)) {
        if self.names.get(&key).is_some_and(|&other| other != id) {
            self.take_name(&key);
        }
        if let Some(node) = self.nodes.get_mut(&id) {
            node.names.retain(|k| *k != key);
            node.names.push(key.clone());
            self.names.insert(key, id);
        }
    }

    /// The name `key` is gone; returns the node that had it.
    fn take_name(&mut self, key: &(u64, Vec<u8>)) -> Option<u64> {
        let id = self.names.remove(key)?;
        if let Some(node) = self.nodes.get_mut(&id) {
            node.names.retain(|k| k != key);
        }
        Some(id)
    }

    /// The path of node `id` relative to the shared directory, following its parents;
    /// `None` when some node on the way has no name (removed, replaced, or forgotten).
    pub fn path(&self, mut id: u64) -> Option<Vec<u8>> {
        let mut parts: Vec<&[u8]> = Vec::new();
        for _ in 0..MAX_DEPTH {
            if id == ROOT_ID {
                parts.reverse();
                return Some(parts.join(&b'/'));
            }
            let (parent, name) = self.nodes.get(&id)?.names.last()?;
            parts.push(name);
            id = *parent;
        }
        None
    }

    /// The records that rebuild these tables from nothing.
    fn records(&self) -> Vec<Record> {
        let mut out = vec![Record::Session {
            options: self.options,
        }];
        out.push(Record::Counters {
            next_inode: self.next_inode,
            last_handle: self.last_handle,
        });
        // Parents before children, so a replayed name finds its directory.
        let mut ids: Vec<&u64> = self.nodes.keys().collect();
        ids.sort();
        for id in ids {
            let node = &self.nodes[id];
            let node_record = |(parent, name): (u64, Vec<u8>), n| Record::Node {
                id: *id,
                parent,
                name,
                kind: node.kind,
                ino: node.ino,
                n,
            };
            if node.names.is_empty() {
                // A nameless node stays nameless: a placeholder name, then its removal.
                out.push(node_record((0, Vec::new()), node.lookups));
                out.push(Record::Remove {
                    dir: 0,
                    name: Vec::new(),
                });
            }
            // Every name, the primary one last; the references come with the first.
            for (i, key) in node.names.iter().enumerate() {
                out.push(node_record(
                    key.clone(),
                    if i == 0 { node.lookups } else { 0 },
                ));
            }
        }
        let mut hs: Vec<_> = self.handles.iter().collect();
        hs.sort();
        for (h, (id, flags)) in hs {
            out.push(Record::Open {
                h: *h,
                id: *id,
                flags: *flags,
            });
        }
        out
    }
}

/// Why a journal could not be used.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    /// Reading or writing the memfd failed.
    #[error("state journal: {0}")]
    Io(#[from] io::Error),
    /// The descriptor holds something else.
    #[error("state journal: the descriptor holds no journal (bad magic)")]
    Magic,
}

struct Writer {
    file: File,
    region: u64,
    end: u64,
    tables: Tables,
    /// Bytes the last compaction wrote.
    compacted: u64,
}

/// The journal of one backend's tables.
pub struct Journal {
    inner: Mutex<Writer>,
}

/// Reads one region's records; stops at a hole, the end or a cut-off record.
fn read_region(file: &File, start: u64) -> io::Result<(Vec<Record>, u64)> {
    let mut records = Vec::new();
    let mut pos = start;
    let mut buf = vec![0u8; 1 << 16];
    let mut line: Vec<u8> = Vec::new();
    loop {
        let n = file.read_at(&mut buf, pos)?;
        if n == 0 {
            return Ok((records, pos - line.len() as u64));
        }
        for (i, &b) in buf[..n].iter().enumerate() {
            match b {
                0 => return Ok((records, pos + i as u64 - line.len() as u64)),
                b'\n' => {
                    match serde_json::from_slice::<Record>(&line) {
                        Ok(r) => records.push(r),
                        Err(_) => return Ok((records, pos + i as u64 - line.len() as u64)),
                    }
                    line.clear();
                }
                _ => line.push(b),
            }
        }
        pos += n as u64;
    }
}

impl Journal {
    /// Takes over the memfd `file`: an empty one becomes a new journal; one that holds a
    /// journal is read, and its tables are returned with it.
    pub fn open(file: File) -> Result<(Journal, Tables), JournalError> {
        let mut head = [0u8; 16];
        let n = file.read_at(&mut head, 0)?;
        let (region, records, end) = if n == 0 {
            let mut head = MAGIC.to_vec();
            head.extend_from_slice(&REGION_A.to_le_bytes());
            file.write_all_at(&head, 0)?;
            (REGION_A, Vec::new(), REGION_A)
        } else {
            if n < 16 || &head[..8] != MAGIC {
                return Err(JournalError::Magic);
            }
            let region = u64::from_le_bytes(head[8..16].try_into().expect("8 bytes"));
            if region != REGION_A && region != REGION_B {
                return Err(JournalError::Magic);
            }
            let (records, end) = read_region(&file, region)?;
            (region, records, end)
        };
        let mut tables = Tables::default();
        for r in &records {
            tables.apply(r);
        }
        // Whatever follows a cut-off record is dropped, so new records follow the good ones.
        punch(&file, end, region_len(region).saturating_sub(end - region))?;
        let journal = Journal {
            inner: Mutex::new(Writer {
                file,
                region,
                end,
                tables: tables.clone(),
                compacted: 0,
            }),
        };
        Ok((journal, tables))
    }

    /// Appends `rec` (before the reply that makes its change visible).
    pub fn record(&self, rec: Record) {
        let mut w = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        w.tables.apply(&rec);
        if let Err(e) = w.append(&rec) {
            // The guest's open files will not survive a crash; the backend itself goes on.
            tracing::error!("state journal: cannot append: {e}");
        }
        if w.end - w.region > COMPACT_AT.max(2 * w.compacted) {
            if let Err(e) = w.compact() {
                tracing::error!("state journal: cannot compact: {e}");
            }
        }
    }

    /// Starts over with the tables `records` build (a snapshot's tables, loaded), written
    /// as one compacted region.
    pub fn replace(&self, records: &[Record]) -> io::Result<()> {
        let mut w = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        w.tables = Tables::default();
        for r in records {
            w.tables.apply(r);
        }
        w.compact()
    }

    /// The tables as recorded so far.
    pub fn tables(&self) -> Tables {
        self.inner
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .tables
            .clone()
    }
}

/// How far a region may reach.
fn region_len(region: u64) -> u64 {
    if region == REGION_A {
        REGION_B - REGION_A
    } else {
        REGION_B
    }
}

/// Frees `len` bytes at `offset` (they read as zeros, the end marker).
fn punch(file: &File, offset: u64, len: u64) -> io::Result<()> {
    use std::os::fd::AsFd;
    let size = file.metadata()?.len();
    let len = len.min(size.saturating_sub(offset));
    if len == 0 {
        return Ok(());
    }
    crate::sys::fallocate(
        file.as_fd(),
        libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
        offset as i64,
        len as i64,
    )
}

impl Writer {
    fn append(&mut self, rec: &Record) -> io::Result<()> {
        let mut line = serde_json::to_vec(rec).map_err(io::Error::other)?;
        line.push(b'\n');
        self.file.write_all_at(&line, self.end)?;
        self.end += line.len() as u64;
        Ok(())
    }

    fn compact(&mut self) -> io::Result<()> {
        let other = if self.region == REGION_A {
            REGION_B
        } else {
            REGION_A
        };
        punch(&self.file, other, region_len(other))?;
        let mut buf = Vec::new();
        for r in self.tables.records() {
            serde_json::to_writer(&mut buf, &r).map_err(io::Error::other)?;
            buf.push(b'\n');
        }
        self.file.write_all_at(&buf, other)?;
        self.file.write_all_at(&other.to_le_bytes(), 8)?;
        let old = self.region;
        self.region = other;
        self.end = other + buf.len() as u64;
        self.compacted = buf.len() as u64;
        punch(&self.file, old, region_len(old))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn memfd() -> File {
        // SAFETY: memfd_create takes a valid C string and flags; the result is checked.
        let fd = unsafe { libc::memfd_create(c"journal-test".as_ptr(), libc::MFD_CLOEXEC) };
        assert!(fd >= 0);
        // SAFETY: `fd` was just created and is owned by nothing else.
        unsafe { <File as std::os::fd::FromRawFd>::from_raw_fd(fd) }
    }

    fn node(id: u64, parent: u64, name: &str) -> Record {
        Record::Node {
            id,
            parent,
            name: name.into(),
            kind: libc::S_IFREG,
            ino: 100 + id,
            n: 1,
        }
    }

    fn session() -> Record {
        Record::Session { options: Some(7) }
    }

    #[test]
    fn paths_follow_renames_and_removals() {
        let mut t = Tables::default();
        for r in [
            session(),
            node(2, 1, "d"),
            node(3, 2, "f"),
            node(4, 1, "g"),
            Record::Rename {
                old_dir: 1,
                old_name: b"d".to_vec(),
                new_dir: 1,
                new_name: b"e".to_vec(),
                exchange: false,
            },
        ] {
            t.apply(&r);
        }
        assert_eq!(
            t.path(3).as_deref(),
            Some(&b"e/f"[..]),
            "a directory rename moves its child"
        );
        t.apply(&Record::Rename {
            old_dir: 1,
            old_name: b"g".to_vec(),
            new_dir: 2,
            new_name: b"f".to_vec(),
            exchange: false,
        });
        assert_eq!(t.path(4).as_deref(), Some(&b"e/f"[..]));
        assert_eq!(t.path(3), None, "the replaced file has no name");
        t.apply(&Record::Rename {
            old_dir: 2,
            old_name: b"f".to_vec(),
            new_dir: 1,
            new_name: b"e".to_vec(),
            exchange: true,
        });
        assert_eq!(t.path(4).as_deref(), Some(&b"e"[..]));
        assert_eq!(
            t.path(2),
            None,
            "exchanged into a child of itself: no path back"
        );
        t.apply(&Record::Remove {
            dir: 1,
            name: b"e".to_vec(),
        });
        assert_eq!(t.path(4), None);
        t.apply(&Record::Forget { id: 4, n: 1 });
        assert!(!t.nodes.contains_key(&4));
        assert_eq!(t.next_inode, 5, "IDs are never reused");
    }

    #[test]
    fn a_hard_link_keeps_its_other_name() {
        let mut t = Tables::default();
        for r in [session(), node(2, 1, "a"), node(2, 1, "b")] {
            t.apply(&r);
        }
        assert_eq!(
            t.path(2).as_deref(),
            Some(&b"b"[..]),
            "the last name looked up"
        );
        t.apply(&Record::Remove {
            dir: 1,
            name: b"b".to_vec(),
        });
        assert_eq!(
            t.path(2).as_deref(),
            Some(&b"a"[..]),
            "the link that is left"
        );
        // A name another node takes is no longer this one's.
        t.apply(&node(3, 1, "a"));
        assert_eq!(t.path(2), None);
        assert_eq!(t.path(3).as_deref(), Some(&b"a"[..]));
        let mut again = Tables::default();
        for r in t.records() {
            again.apply(&r);
        }
        assert_eq!(again, t, "compaction's records rebuild the same tables");
    }

    #[test]
    fn lookups_and_handles_add_up() {
        let mut t = Tables::default();
        for r in [
            session(),
            node(2, 1, "f"),
            node(2, 1, "f"),
            Record::Forget { id: 2, n: 1 },
            Record::Open {
                h: 5,
                id: 2,
                flags: 2,
            },
            Record::Open {
                h: 6,
                id: 2,
                flags: 0,
            },
            Record::Close { h: 5 },
        ] {
            t.apply(&r);
        }
        assert_eq!(t.nodes[&2].lookups, 1);
        assert_eq!(t.handles, HashMap::from([(6, (2, 0))]));
        assert_eq!(t.last_handle, 6);
        t.apply(&Record::Session { options: None });
        assert!(t.nodes.is_empty() && t.handles.is_empty() && t.options.is_none());
        assert_eq!(t.last_handle, 6, "handle numbers are never reused");
    }

    #[test]
    fn a_reopened_journal_holds_what_was_recorded_and_ignores_a_cut_record() {
        let file = memfd();
        let (j, t) = Journal::open(file.try_clone().unwrap()).unwrap();
        assert_eq!(t, Tables::default());
        for r in [session(), node(2, 1, "a"), node(3, 2, "b")] {
            j.record(r);
        }
        let expected = j.tables();
        drop(j);
        // A record cut short by the crash, as a write stopped by SIGKILL leaves it.
        let end = file.metadata().unwrap().len();
        file.write_all_at(br#"{"op":"forget","id":3,"#, end)
            .unwrap();
        let (j, t) = Journal::open(file.try_clone().unwrap()).unwrap();
        assert_eq!(t, expected);
        assert_eq!(t.path(3).as_deref(), Some(&b"a/b"[..]));
        // New records follow the good ones, over the cut one.
        j.record(Record::Forget { id: 3, n: 1 });
        drop(j);
        let (_, t) = Journal::open(file).unwrap();
        assert!(!t.nodes.contains_key(&3) && t.nodes.contains_key(&2));
    }

    #[test]
    fn compaction_keeps_the_tables_and_flips_regions() {
        let file = memfd();
        let (j, _) = Journal::open(file.try_clone().unwrap()).unwrap();
        j.record(session());
        for i in 0..50 {
            j.record(node(2 + i, 1, &format!("n{i}")));
            if i % 2 == 0 {
                j.record(Record::Forget { id: 2 + i, n: 1 });
            }
        }
        j.record(Record::Remove {
            dir: 1,
            name: b"n1".to_vec(),
        });
        j.record(Record::Open {
            h: 9,
            id: 3,
            flags: 1,
        });
        let before = j.tables();
        for _ in 0..2 {
            j.inner.lock().unwrap().compact().unwrap();
            let (_, t) = Journal::open(file.try_clone().unwrap()).unwrap();
            assert_eq!(t, before);
            assert_eq!(t.nodes.len(), 25);
            assert_eq!(t.path(3), None, "a removed name stays removed");
            assert_eq!(t.next_inode, 52);
        }
    }

    #[test]
    fn something_else_in_the_descriptor_is_refused() {
        let file = memfd();
        file.write_all_at(b"not a journal at all", 0).unwrap();
        assert!(matches!(Journal::open(file), Err(JournalError::Magic)));
    }
}

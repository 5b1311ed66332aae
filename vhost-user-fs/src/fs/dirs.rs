//! Directory listing: OPENDIR reopens the directory with `.` relative to its `O_PATH`
//! descriptor, READDIR runs getdents64 from the guest's offset and, under `--symlinks deny`,
//! hides symlinks whose target leaves the tree. READDIRPLUS lists the same names and
//! adds to each what LOOKUP would answer for it.

use std::ffi::{CStr, CString};
use std::fs::File;
use std::io;
use std::os::fd::AsFd;

use fuse_backend_rs::api::filesystem::{DirEntry, Entry, ROOT_ID};

use super::{errno, SharedFs};
use crate::inode::InodeData;
use crate::journal::Record;
use crate::{policy, sys};

/// Bytes of getdents64 output read at a time.
const DIRENT_BUF: usize = 8192;

/// One record of getdents64 output.
struct Dirent<'a> {
    /// Where the record starts in the buffer.
    start: usize,
    ino: u64,
    off: u64,
    kind: u8,
    name: &'a [u8],
}

/// Splits getdents64 output into records; stops at anything malformed.
fn parse(buf: &[u8]) -> Vec<Dirent<'_>> {
    let mut out = Vec::new();
    let mut pos = 0usize;
    while let Some(rec) = buf.get(pos..) {
        if rec.len() < 19 {
            break;
        }
        let u64_at = |i: usize| u64::from_ne_bytes(rec[i..i + 8].try_into().unwrap_or([0; 8]));
        let reclen = u16::from_ne_bytes([rec[16], rec[17]]) as usize;
        let Some(body) = rec.get(19..reclen) else {
            break;
        };
        let name_len = body.iter().position(|b| *b == 0).unwrap_or(body.len());
        out.push(Dirent {
            start: pos,
            ino: u64_at(0),
            off: u64_at(8),
            kind: rec[18],
            name: &body[..name_len],
        });
        pos += reclen.max(1);
    }
    out
}

impl SharedFs {
    /// OPENDIR.
    pub(super) fn do_opendir(&self, inode: u64) -> io::Result<u64> {
        let node = self.dir(inode)?;
        let fd = sys::open_dir(node.fd())?;
        let handle = self.handles.insert(inode, File::from(fd));
        self.note(|| Record::Open {
            h: handle,
            id: inode,
            flags: 0,
        });
        Ok(handle)
    }

    /// Whether the entry `name` of `dir` is a symlink the policy hides.
    fn hidden(&self, dir: &InodeData, name: &[u8], depth: Option<usize>) -> bool {
        let Ok(cname) = CStr::from_bytes_with_nul(&[name, b"\0"].concat()).map(CStr::to_owned)
        else {
            return true;
        };
        let Ok(fd) = sys::open_path(dir.fd(), &cname, false) else {
            return false; // Gone meanwhile: LOOKUP will say so.
        };
        match sys::readlink(std::os::fd::AsFd::as_fd(&fd)) {
            Ok(target) => !depth.is_some_and(|d| crate::policy::target_stays_inside(d, &target)),
            Err(_) => false, // Replaced by a non-symlink meanwhile.
        }
    }

    /// READDIR from `offset` (0, or an offset this call handed out before).
    pub(super) fn do_readdir(
        &self,
        inode: u64,
        handle: u64,
        offset: u64,
        add_entry: &mut dyn FnMut(DirEntry) -> io::Result<usize>,
    ) -> io::Result<()> {
        self.list(inode, handle, offset, &mut |_, d| add_entry(d))
    }

    /// READDIRPLUS from `offset`: READDIR's names, each with LOOKUP's answer for it. A name
    /// LOOKUP refuses, `.` and `..` get node ID 0 (the kernel instantiates nothing, and a
    /// later LOOKUP meets the policy); every other node ID is one kernel reference, taken back
    /// here if the entry does not reach the guest.
    pub(super) fn do_readdirplus(
        &self,
        inode: u64,
        handle: u64,
        offset: u64,
        add_entry: &mut dyn FnMut(DirEntry, Entry) -> io::Result<usize>,
    ) -> io::Result<()> {
        // Node IDs in the reply so far: an error reply delivers none of them.
        let mut given = Vec::new();
        let r = self.list(inode, handle, offset, &mut |dir, d| {
            let entry = self.plus_entry(inode, dir, d.name);
            let id = entry.inode;
            let added = add_entry(d, entry);
            if id != 0 {
                match added {
                    Ok(n) if n > 0 => given.push(id),
                    _ => self.forget_node(id, 1), // Did not fit, or failed.
                }
            }
            added
        });
        if r.is_err() {
            for id in given {
                self.forget_node(id, 1);
            }
        }
        r
    }

    /// What READDIRPLUS says about `name` in `dir`: LOOKUP's entry, or one with node ID 0.
    fn plus_entry(&self, parent: u64, dir: &InodeData, name: &[u8]) -> Entry {
        if name == b"." || name == b".." {
            return Entry::default(); // Never looked up: the kernel ignores them.
        }
        let looked = policy::validate_name(name)
            .and_then(|()| CString::new(name).map_err(|_| errno(libc::EINVAL)))
            .and_then(|name| self.lookup_in(parent, dir, &name));
        match looked {
            // The kernel refuses the root's ID here (EIO); the table never drops the root, so
            // that reference needs no FORGET (`--symlinks follow` and `up -> ..`).
            Ok(entry) if entry.inode != ROOT_ID => entry,
            _ => Entry::default(),
        }
    }

    /// Lists directory `inode` from `offset` through its handle, giving `emit` each entry
    /// READDIR shows until `emit` reports the guest's buffer full (0). Records read but not
    /// delivered stay in the handle's cursor for the READDIR that continues from here.
    fn list(
        &self,
        inode: u64,
        handle: u64,
        offset: u64,
        emit: &mut dyn FnMut(&InodeData, DirEntry) -> io::Result<usize>,
    ) -> io::Result<()> {
        let h = self.handles.get(handle, inode)?;
        let dir = self.dir(inode)?;
        let off = i64::try_from(offset).map_err(|_| errno(libc::EINVAL))?;
        let mut cursor = h.lock_position();
        let fd = h.file().as_fd();
        let mut buf = if cursor.at.take() == Some(offset) {
            std::mem::take(&mut cursor.pending)
        } else {
            cursor.pending.clear();
            sys::lseek(fd, off, libc::SEEK_SET)?;
            Vec::new()
        };
        let filter = self.cfg.symlinks.hides_escaping_symlinks();
        let mut depth = None;
        // The offset of the last entry delivered: where the next READDIR continues.
        let mut delivered = offset;
        loop {
            if buf.is_empty() {
                buf.resize(DIRENT_BUF, 0);
                let n = sys::getdents64(fd, &mut buf)?;
                buf.truncate(n);
                if n == 0 {
                    cursor.at = Some(delivered);
                    return Ok(());
                }
            }
            for d in parse(&buf) {
                if filter && d.kind == libc::DT_LNK {
                    let depth = *depth.get_or_insert_with(|| self.depth(&dir));
                    if self.hidden(&dir, d.name, depth) {
                        continue;
                    }
                }
                let added = emit(
                    &dir,
                    DirEntry {
                        ino: d.ino,
                        offset: d.off,
                        type_: d.kind.into(),
                        name: d.name,
                    },
                )?;
                if added == 0 {
                    // The guest's buffer is full: keep this record and the rest.
                    cursor.pending = buf[d.start..].to_vec();
                    cursor.at = Some(delivered);
                    return Ok(());
                }
                delivered = d.off;
            }
            buf.clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fs::FsConfig;
    use crate::policy::SymlinkPolicy;
    use crate::sys::ProcFds;
    use fuse_backend_rs::api::filesystem::{Context, FileSystem};

    fn open_fs(dir: &std::path::Path, symlinks: SymlinkPolicy) -> SharedFs {
        let root = std::fs::File::open(dir).unwrap().into();
        let proc = ProcFds::open(c"/proc/self/fd").unwrap();
        let cfg = FsConfig {
            symlinks,
            ..FsConfig::default()
        };
        SharedFs::new(root, proc, cfg).unwrap()
    }

    /// READDIRPLUS of `dir` with a guest buffer taking `room` entries (`fail` fails the one
    /// after): the call's result and the (name, node ID) pairs the guest got.
    fn plus(
        fs: &SharedFs,
        dir: u64,
        room: usize,
        fail: bool,
    ) -> (io::Result<()>, Vec<(Vec<u8>, u64)>) {
        let ctx = Context::new();
        let h = fs.opendir(&ctx, dir, 0).unwrap().0.unwrap();
        let mut got = Vec::new();
        let r = fs.readdirplus(&ctx, dir, h, 4096, 0, &mut |d, e| {
            if got.len() == room {
                return if fail { Err(errno(libc::EIO)) } else { Ok(0) };
            }
            got.push((d.name.to_vec(), e.inode));
            Ok(1)
        });
        fs.releasedir(&ctx, dir, 0, h).unwrap();
        (r, got)
    }

    /// `rm -r`'s pattern: read a page of names, unlink them, read on from the last offset.
    /// No name is skipped, also where offsets are positions (tmpfs before Linux 6.6: /dev/shm
    /// when there is one), because the listing continues without seeking back. The guest
    /// suite's `rm -r` on the test VM's tmpfs covers this on any host kernel.
    #[test]
    fn a_listing_continued_after_unlinks_misses_no_name() {
        let shm = std::path::Path::new("/dev/shm");
        let tmp = if shm.is_dir() {
            tempfile::tempdir_in(shm)
        } else {
            tempfile::tempdir()
        }
        .unwrap();
        for i in 0..300 {
            std::fs::write(tmp.path().join(format!("file-{i:03}")), b"x").unwrap();
        }
        let fs = open_fs(tmp.path(), SymlinkPolicy::Opaque);
        let ctx = Context::new();
        let h = fs.opendir(&ctx, ROOT_ID, 0).unwrap().0.unwrap();
        let (mut offset, mut removed) = (0, 0);
        loop {
            let mut page = Vec::new();
            fs.readdir(&ctx, ROOT_ID, h, 4096, offset, &mut |d| {
                if page.len() == 25 {
                    return Ok(0);
                }
                page.push((d.name.to_vec(), d.offset));
                Ok(1)
            })
            .unwrap();
            let Some((_, last)) = page.last() else { break };
            offset = *last;
            for (name, _) in page.iter().filter(|(n, _)| n.starts_with(b"file-")) {
                let name = CString::new(name.clone()).unwrap();
                fs.unlink(&ctx, ROOT_ID, &name).unwrap();
                removed += 1;
            }
        }
        fs.releasedir(&ctx, ROOT_ID, 0, h).unwrap();
        assert_eq!(removed, 300, "names skipped by the continued listing");
        assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 0);
    }

    /// Every node ID READDIRPLUS hands out is one reference that one FORGET undoes; one that
    /// never reaches the guest (buffer full, or an error reply) is none; `.`, `..` and the
    /// root are never handed out.
    #[test]
    fn readdirplus_references_balance() {
        let tmp = tempfile::tempdir().unwrap();
        let shared = tmp.path().join("shared");
        std::fs::create_dir_all(shared.join("d/sub")).unwrap();
        std::fs::write(tmp.path().join("outside"), b"x").unwrap();
        std::fs::write(shared.join("f"), b"x").unwrap();
        std::fs::hard_link(shared.join("f"), shared.join("hard")).unwrap();
        std::os::unix::fs::symlink("f", shared.join("in")).unwrap();
        std::os::unix::fs::symlink("../outside", shared.join("out")).unwrap();
        std::os::unix::fs::symlink("..", shared.join("d/up")).unwrap();
        let ctx = Context::new();
        for policy in [
            SymlinkPolicy::Deny,
            SymlinkPolicy::Opaque,
            SymlinkPolicy::Follow,
        ] {
            let fs = open_fs(&shared, policy);
            let forget_all = |got: &[(Vec<u8>, u64)]| {
                for (_, id) in got.iter().filter(|(_, id)| *id != 0) {
                    fs.forget(&ctx, *id, 1);
                }
            };
            assert_eq!(fs.inodes.count(), 1);
            let (r, got) = plus(&fs, ROOT_ID, usize::MAX, false);
            r.unwrap();
            let mut names: Vec<_> = got.iter().map(|(n, _)| n.as_slice()).collect();
            names.sort();
            let mut want = vec![&b"."[..], b"..", b"d", b"f", b"hard", b"in"];
            if !policy.hides_escaping_symlinks() {
                want.push(b"out");
            }
            assert_eq!(names, want, "{policy:?}");
            for (name, id) in &got {
                assert_eq!(
                    *id == 0,
                    name == b"." || name == b"..",
                    "{policy:?} {name:?}"
                );
            }
            let mut ids: Vec<_> = got
                .iter()
                .map(|(_, id)| *id)
                .filter(|id| *id != 0)
                .collect();
            ids.sort();
            ids.dedup();
            assert_eq!(fs.inodes.count(), 1 + ids.len(), "{policy:?}");
            forget_all(&got);
            assert_eq!(fs.inodes.count(), 1, "{policy:?}: one FORGET each");

            // A LOOKUP's own reference outlives the listing's.
            let f = fs.lookup(&ctx, ROOT_ID, c"f").unwrap().inode;
            let (r, got) = plus(&fs, ROOT_ID, usize::MAX, false);
            r.unwrap();
            forget_all(&got);
            assert_eq!(fs.inodes.count(), 2);
            fs.forget(&ctx, f, 1);
            assert_eq!(fs.inodes.count(), 1);

            // The guest's buffer fills after 3 entries: the 4th was looked up, then undone.
            let (r, got) = plus(&fs, ROOT_ID, 3, false);
            r.unwrap();
            assert_eq!(got.len(), 3);
            forget_all(&got);
            assert_eq!(fs.inodes.count(), 1, "{policy:?}: full buffer");

            // An error reply delivers nothing, so nothing is left referenced.
            let (r, got) = plus(&fs, ROOT_ID, 4, true);
            assert_eq!(r.unwrap_err().raw_os_error(), Some(libc::EIO));
            assert_eq!(got.len(), 4);
            assert_eq!(fs.inodes.count(), 1, "{policy:?}: error reply");

            // `d` holds `.`, `..`, `sub` and `up -> ..` (the root itself when followed).
            let d = fs.lookup(&ctx, ROOT_ID, c"d").unwrap().inode;
            let (r, got) = plus(&fs, d, usize::MAX, false);
            r.unwrap();
            for (name, id) in &got {
                let none = matches!(&name[..], b"." | b"..") || (policy.follows() && name == b"up");
                assert_eq!(*id == 0, none, "{policy:?} {name:?}");
            }
            assert_eq!(got.len(), 4, "{policy:?}");
            forget_all(&got);
            assert_eq!(fs.inodes.count(), 2, "{policy:?}: only `d` is left");
            let sub = fs.lookup(&ctx, d, c"sub").unwrap().inode;
            let (r, got) = plus(&fs, sub, usize::MAX, false);
            r.unwrap();
            assert!(got.iter().all(|(_, id)| *id == 0));
            assert_eq!(
                fs.inodes.count(),
                3,
                "{policy:?}: `.` and `..` take nothing"
            );
        }
    }

    fn record(ino: u64, off: u64, kind: u8, name: &[u8]) -> Vec<u8> {
        let len = (19 + name.len() + 1).next_multiple_of(8);
        let mut r = vec![0u8; len];
        r[0..8].copy_from_slice(&ino.to_ne_bytes());
        r[8..16].copy_from_slice(&off.to_ne_bytes());
        r[16..18].copy_from_slice(&(len as u16).to_ne_bytes());
        r[18] = kind;
        r[19..19 + name.len()].copy_from_slice(name);
        r
    }

    #[test]
    fn parses_records_and_stops_at_garbage() {
        let mut buf = record(5, 1, libc::DT_REG, b"a");
        buf.extend(record(6, 2, libc::DT_LNK, b"link-name"));
        let got = parse(&buf);
        assert_eq!(got.len(), 2);
        assert_eq!((got[1].ino, got[1].off, got[1].kind), (6, 2, libc::DT_LNK));
        assert_eq!(got[1].name, b"link-name");
        // A record claiming more than the buffer holds, and one claiming length 0.
        let mut bad = record(7, 3, libc::DT_REG, b"x");
        bad[16..18].copy_from_slice(&500u16.to_ne_bytes());
        assert!(parse(&bad).is_empty());
        let mut zero = record(7, 3, libc::DT_REG, b"x");
        zero[16..18].copy_from_slice(&0u16.to_ne_bytes());
        assert!(parse(&zero).is_empty());
        assert!(parse(&[1, 2, 3]).is_empty());
    }
}

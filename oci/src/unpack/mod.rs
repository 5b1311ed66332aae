//! Applying image layers to a directory, safely. Every host operation is relative to a
//! directory fd: parents are opened with `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)`,
//! new entries are created with `O_EXCL | O_NOFOLLOW` (or `*at` calls that never follow the
//! final component), so a layer can neither follow a symlink nor write outside the root.
//! Entries with `..`, absolute paths, paths through a symlink and hard links that leave the
//! root are refused. Whiteouts (`.wh.NAME`) delete lower entries; `.wh..wh..opq` empties a
//! directory of everything lower layers put there.

use std::collections::HashSet;
use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::AtFlags;
use nix::fcntl::{openat, openat2, OFlag, OpenHow, ResolveFlag};
use nix::sys::stat::{
    fchmodat, fstatat, futimens, makedev, mkdirat, mknodat, utimensat, FchmodatFlags, Mode, SFlag,
    UtimensatFlags,
};
use nix::sys::time::TimeSpec;
use nix::unistd::{linkat, symlinkat};

mod meta;
mod tree;

use meta::{chown_nofollow, pax_xattrs, set_meta, Xattr};
use tree::{clear_dir, remove};

/// Prefix of a whiteout file.
const WHITEOUT: &str = ".wh.";
/// Name of the opaque-directory marker.
const OPAQUE: &str = ".wh..wh..opq";
/// Size of the buffer file contents are copied through.
const COPY_BUF: usize = 1 << 20;

/// Errors from applying a layer.
#[derive(Debug, thiserror::Error)]
pub enum UnpackError {
    /// An entry that would escape the root or go through a symlink.
    #[error("unsafe layer entry {path:?} refused: {reason}")]
    Unsafe {
        /// The entry's path as written in the layer.
        path: PathBuf,
        /// Why it is refused.
        reason: &'static str,
    },
    /// A file operation on an entry failed.
    #[error("layer entry {path:?}: {op}: {source}")]
    Fs {
        /// The entry's path.
        path: PathBuf,
        /// What was being done.
        op: &'static str,
        /// The OS error.
        source: Errno,
    },
    /// The layer stream is not a valid tar or could not be read.
    #[error("reading layer: {}", one_line(.0))]
    Read(#[from] io::Error),
}

/// `e` as one line: the tar reader quotes header bytes (an entry's path) in its messages,
/// and a layer may put newlines and other control characters there.
fn one_line(e: &io::Error) -> String {
    e.to_string()
        .chars()
        .map(|c| {
            if c.is_control() {
                c.escape_default().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

/// A directory that layers are applied to.
pub struct Unpacker {
    root: OwnedFd,
}

/// An entry's path, split into checked components.
struct EntryPath {
    raw: PathBuf,
    parent: PathBuf,
    name: OsString,
}

impl Unpacker {
    /// Opens `root` (an existing directory) as the target.
    pub fn new(root: &Path) -> Result<Unpacker, UnpackError> {
        let fd = nix::fcntl::open(
            root,
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(|source| UnpackError::Fs {
            path: root.into(),
            op: "open root",
            source,
        })?;
        Ok(Unpacker { root: fd })
    }

    /// Applies one uncompressed layer tar on top of what is there.
    pub fn apply_layer(&self, layer: impl Read) -> Result<(), UnpackError> {
        let mut ar = tar::Archive::new(layer);
        let mut this_layer: HashSet<PathBuf> = HashSet::new();
        let mut buf = vec![0u8; COPY_BUF];
        for entry in ar.entries()? {
            let mut entry = entry?;
            let raw = entry.path()?.into_owned();
            let xattrs = pax_xattrs(&mut entry)?;
            let Some(p) = split(&raw)? else {
                if entry.header().entry_type().is_dir() {
                    set_meta(self.root.as_fd(), &raw, entry.header(), &xattrs)?;
                }
                continue;
            };
            let name = p.name.as_bytes();
            if name == OPAQUE.as_bytes() {
                let dir = self.open_dir(&p.parent, true, &raw)?;
                clear_dir(dir.as_fd(), &p.parent, &this_layer, &raw)?;
                continue;
            }
            if let Some(target) = name.strip_prefix(WHITEOUT.as_bytes()) {
                self.apply_whiteout(&p, OsStr::from_bytes(target), &this_layer)?;
                continue;
            }
            let dir = self.open_dir(&p.parent, true, &raw)?;
            this_layer.insert(p.parent.join(&p.name));
            self.apply_entry(dir.as_fd(), &p, &mut entry, &xattrs, &mut buf)?;
        }
        Ok(())
    }

    /// `PARENT/.wh.TARGET`: removes TARGET as lower layers left it (never an entry of this
    /// layer, whose paths are in `this_layer`).
    fn apply_whiteout(
        &self,
        p: &EntryPath,
        target: &OsStr,
        this_layer: &HashSet<PathBuf>,
    ) -> Result<(), UnpackError> {
        let t = target.as_bytes();
        if t.is_empty() || t == b"." || t == b".." || t.contains(&b'/') {
            return Err(UnpackError::Unsafe {
                path: p.raw.clone(),
                reason: "malformed whiteout",
            });
        }
        if this_layer.contains(&p.parent.join(target)) {
            return Ok(());
        }
        match self.open_dir(&p.parent, false, &p.raw) {
            Ok(dir) => remove(dir.as_fd(), target, &p.raw),
            Err(UnpackError::Fs {
                source: Errno::ENOENT,
                ..
            }) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Creates one entry (not a whiteout) named `p.name` in its parent `dir`, replacing
    /// what lower layers put there.
    fn apply_entry<R: Read>(
        &self,
        dir: BorrowedFd<'_>,
        p: &EntryPath,
        entry: &mut tar::Entry<'_, R>,
        xattrs: &[Xattr],
        buf: &mut [u8],
    ) -> Result<(), UnpackError> {
        match entry.header().entry_type() {
            tar::EntryType::Directory => make_dir(dir, p, entry.header(), xattrs),
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                write_file(dir, p, entry, xattrs, buf)
            }
            tar::EntryType::Symlink => make_symlink(dir, p, entry),
            tar::EntryType::Link => self.make_hard_link(dir, p, entry),
            kind @ (tar::EntryType::Char | tar::EntryType::Block | tar::EntryType::Fifo) => {
                make_node(dir, p, kind, entry.header())
            }
            _ => Ok(()),
        }
    }

    /// A hard link to an entry already beneath the root; a link to itself is a no-op.
    fn make_hard_link<R: Read>(
        &self,
        dir: BorrowedFd<'_>,
        p: &EntryPath,
        entry: &tar::Entry<'_, R>,
    ) -> Result<(), UnpackError> {
        let target = entry.link_name()?.ok_or(UnpackError::Unsafe {
            path: p.raw.clone(),
            reason: "hard link without target",
        })?;
        let t = match split(&target) {
            Ok(Some(t)) => t,
            _ => {
                return Err(UnpackError::Unsafe {
                    path: p.raw.clone(),
                    reason: "hard link target outside the root",
                })
            }
        };
        if t.parent == p.parent && t.name == p.name {
            return Ok(());
        }
        let tdir = self.open_dir(&t.parent, false, &p.raw)?;
        remove(dir, &p.name, &p.raw)?;
        linkat(
            tdir.as_fd(),
            t.name.as_os_str(),
            dir,
            p.name.as_os_str(),
            AtFlags::empty(),
        )
        .map_err(fs_err(p, "hard link"))
    }

    /// Opens the directory `rel` beneath the root without following any symlink, creating
    /// missing components (mode 0755) when `create` is set.
    fn open_dir(&self, rel: &Path, create: bool, raw: &Path) -> Result<OwnedFd, UnpackError> {
        let fs = |op| {
            move |source| UnpackError::Fs {
                path: raw.to_path_buf(),
                op,
                source,
            }
        };
        if rel.as_os_str().is_empty() {
            return self
                .root
                .try_clone()
                .map_err(|e| fs("dup")(Errno::from_raw(e.raw_os_error().unwrap_or(0))));
        }
        let how = OpenHow::new()
            .flags(OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC)
            .resolve(
                ResolveFlag::RESOLVE_BENEATH
                    | ResolveFlag::RESOLVE_NO_SYMLINKS
                    | ResolveFlag::RESOLVE_NO_MAGICLINKS,
            );
        match openat2(&self.root, rel, how) {
            Ok(fd) => Ok(fd),
            Err(Errno::ELOOP) => Err(UnpackError::Unsafe {
                path: raw.to_path_buf(),
                reason: "path goes through a symlink",
            }),
            Err(Errno::EXDEV) => Err(UnpackError::Unsafe {
                path: raw.to_path_buf(),
                reason: "path leaves the root",
            }),
            Err(Errno::ENOENT) if create => {
                let mut fd = self
                    .root
                    .try_clone()
                    .map_err(|e| fs("dup")(Errno::from_raw(e.raw_os_error().unwrap_or(0))))?;
                for c in rel.components() {
                    let c = c.as_os_str();
                    let flags =
                        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
                    fd = match openat(&fd, c, flags, Mode::empty()) {
                        Ok(next) => next,
                        Err(Errno::ENOENT) => {
                            mkdirat(&fd, c, Mode::from_bits_truncate(0o755))
                                .map_err(fs("mkdir"))?;
                            openat(&fd, c, flags, Mode::empty()).map_err(fs("open directory"))?
                        }
                        Err(Errno::ELOOP) => {
                            return Err(UnpackError::Unsafe {
                                path: raw.to_path_buf(),
                                reason: "path goes through a symlink",
                            })
                        }
                        Err(e) => return Err(fs("open directory")(e)),
                    };
                }
                Ok(fd)
            }
            Err(e) => Err(fs("open directory")(e)),
        }
    }
}

/// Maps an OS error on entry `p` during `op` to [`UnpackError::Fs`].
fn fs_err<'a>(p: &'a EntryPath, op: &'static str) -> impl FnOnce(Errno) -> UnpackError + 'a {
    move |source| UnpackError::Fs {
        path: p.raw.clone(),
        op,
        source,
    }
}

/// A directory: an existing one is kept (its lower contents stay), anything else in its
/// place is replaced; then its metadata is set.
fn make_dir(
    dir: BorrowedFd<'_>,
    p: &EntryPath,
    header: &tar::Header,
    xattrs: &[Xattr],
) -> Result<(), UnpackError> {
    let name = p.name.as_os_str();
    match fstatat(dir, name, AtFlags::AT_SYMLINK_NOFOLLOW) {
        Ok(st) if SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT == SFlag::S_IFDIR => {}
        Ok(_) => {
            remove(dir, name, &p.raw)?;
            mkdirat(dir, name, Mode::from_bits_truncate(0o700)).map_err(fs_err(p, "mkdir"))?;
        }
        Err(Errno::ENOENT) => {
            mkdirat(dir, name, Mode::from_bits_truncate(0o700)).map_err(fs_err(p, "mkdir"))?
        }
        Err(e) => return Err(fs_err(p, "stat")(e)),
    }
    let fd = openat(
        dir,
        name,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(fs_err(p, "open directory"))?;
    set_meta(fd.as_fd(), &p.raw, header, xattrs)
}

/// A regular file, created afresh (`O_EXCL | O_NOFOLLOW`) and filled from the entry.
fn write_file<R: Read>(
    dir: BorrowedFd<'_>,
    p: &EntryPath,
    entry: &mut tar::Entry<'_, R>,
    xattrs: &[Xattr],
    buf: &mut [u8],
) -> Result<(), UnpackError> {
    remove(dir, &p.name, &p.raw)?;
    let fd = openat(
        dir,
        p.name.as_os_str(),
        OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::from_bits_truncate(0o600),
    )
    .map_err(fs_err(p, "create"))?;
    let mut f = File::from(fd);
    loop {
        let n = entry.read(buf)?;
        if n == 0 {
            break;
        }
        f.write_all(&buf[..n])?;
    }
    set_meta(f.as_fd(), &p.raw, entry.header(), xattrs)?;
    if let Ok(mtime) = entry.header().mtime() {
        let t = TimeSpec::new(mtime as i64, 0);
        futimens(&f, &t, &t).map_err(fs_err(p, "set times"))?;
    }
    Ok(())
}

/// A symlink, stored as written (never followed while unpacking).
fn make_symlink<R: Read>(
    dir: BorrowedFd<'_>,
    p: &EntryPath,
    entry: &tar::Entry<'_, R>,
) -> Result<(), UnpackError> {
    let name = p.name.as_os_str();
    let target = entry.link_name()?.ok_or(UnpackError::Unsafe {
        path: p.raw.clone(),
        reason: "symlink without target",
    })?;
    remove(dir, name, &p.raw)?;
    symlinkat(target.as_ref(), dir, name).map_err(fs_err(p, "symlink"))?;
    chown_nofollow(dir, name, entry.header()).map_err(fs_err(p, "chown"))?;
    if let Ok(mtime) = entry.header().mtime() {
        let t = TimeSpec::new(mtime as i64, 0);
        utimensat(dir, name, &t, &t, UtimensatFlags::NoFollowSymlink)
            .map_err(fs_err(p, "set times"))?;
    }
    Ok(())
}

/// A character or block device node or a FIFO, with the entry's owner and mode.
fn make_node(
    dir: BorrowedFd<'_>,
    p: &EntryPath,
    kind: tar::EntryType,
    h: &tar::Header,
) -> Result<(), UnpackError> {
    let name = p.name.as_os_str();
    let sflag = match kind {
        tar::EntryType::Char => SFlag::S_IFCHR,
        tar::EntryType::Block => SFlag::S_IFBLK,
        _ => SFlag::S_IFIFO,
    };
    let dev = makedev(
        h.device_major()?.unwrap_or(0).into(),
        h.device_minor()?.unwrap_or(0).into(),
    );
    remove(dir, name, &p.raw)?;
    mknodat(dir, name, sflag, Mode::from_bits_truncate(0o600), dev).map_err(fs_err(p, "mknod"))?;
    chown_nofollow(dir, name, h).map_err(fs_err(p, "chown"))?;
    let mode = Mode::from_bits_truncate(h.mode()? & 0o7777);
    fchmodat(dir, name, mode, FchmodatFlags::FollowSymlink).map_err(fs_err(p, "chmod"))
}

/// Splits an entry path into checked parent and name; `None` for the root itself.
fn split(raw: &Path) -> Result<Option<EntryPath>, UnpackError> {
    let mut parts: Vec<&OsStr> = Vec::new();
    for c in raw.components() {
        match c {
            Component::Normal(n) => parts.push(n),
            Component::CurDir => {}
            Component::RootDir | Component::Prefix(_) => {
                return Err(UnpackError::Unsafe {
                    path: raw.into(),
                    reason: "absolute path",
                });
            }
            Component::ParentDir => {
                return Err(UnpackError::Unsafe {
                    path: raw.into(),
                    reason: "path contains `..`",
                })
            }
        }
    }
    let Some((name, parent)) = parts.split_last() else {
        return Ok(None);
    };
    Ok(Some(EntryPath {
        raw: raw.into(),
        parent: parent.iter().collect(),
        name: name.to_os_string(),
    }))
}

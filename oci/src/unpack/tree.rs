//! Removing entries beneath a directory fd without following symlinks (whiteouts, opaque
//! directories, replaced entries).

use std::collections::HashSet;
use std::ffi::{OsStr, OsString};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{openat, AtFlags, OFlag};
use nix::sys::stat::{fstatat, Mode, SFlag};
use nix::unistd::{unlinkat, UnlinkatFlags};

use super::UnpackError;

/// Removes `name` in `dir` (a whole tree if it is a directory); missing is fine.
pub(super) fn remove(dir: BorrowedFd<'_>, name: &OsStr, raw: &Path) -> Result<(), UnpackError> {
    let fs = |op| {
        move |source| UnpackError::Fs {
            path: raw.to_path_buf(),
            op,
            source,
        }
    };
    let st = match fstatat(dir, name, AtFlags::AT_SYMLINK_NOFOLLOW) {
        Ok(st) => st,
        Err(Errno::ENOENT) => return Ok(()),
        Err(e) => return Err(fs("stat")(e)),
    };
    if SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT == SFlag::S_IFDIR {
        let child = openat(
            dir,
            name,
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(fs("open directory"))?;
        for n in list(child.as_fd(), raw)? {
            remove(child.as_fd(), &n, raw)?;
        }
        unlinkat(dir, name, UnlinkatFlags::RemoveDir).map_err(fs("remove directory"))
    } else {
        unlinkat(dir, name, UnlinkatFlags::NoRemoveDir).map_err(fs("remove"))
    }
}

/// Removes everything in `dir` that the current layer did not create.
pub(super) fn clear_dir(
    dir: BorrowedFd<'_>,
    rel: &Path,
    this_layer: &HashSet<PathBuf>,
    raw: &Path,
) -> Result<(), UnpackError> {
    for n in list(dir, raw)? {
        if !this_layer.contains(&rel.join(&n)) {
            remove(dir, &n, raw)?;
        }
    }
    Ok(())
}

/// The names in a directory (without `.` and `..`).
pub(super) fn list(dir: BorrowedFd<'_>, raw: &Path) -> Result<Vec<OsString>, UnpackError> {
    let fs = |op| {
        move |source| UnpackError::Fs {
            path: raw.to_path_buf(),
            op,
            source,
        }
    };
    let fd = openat(
        dir,
        ".",
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(fs("open directory"))?;
    let mut d = nix::dir::Dir::from_fd(fd).map_err(fs("read directory"))?;
    let mut out = Vec::new();
    for e in d.iter() {
        let e = e.map_err(fs("read directory"))?;
        let n = e.file_name().to_bytes();
        if n != b"." && n != b".." {
            out.push(OsStr::from_bytes(n).to_os_string());
        }
    }
    Ok(out)
}

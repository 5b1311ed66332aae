//! Entry metadata: owner, mode and extended attributes (from `SCHILY.xattr.*` PAX records).

use std::ffi::CString;
use std::io::Read;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::path::Path;

use nix::errno::Errno;
use nix::sys::stat::{fchmod, Mode};
use nix::unistd::{fchown, Gid, Uid};

use super::UnpackError;

/// One extended attribute: name and value.
pub(super) type Xattr = (CString, Vec<u8>);

/// Owner, mode (after chown, which clears set-id bits) and xattrs of an open entry.
pub(super) fn set_meta(
    fd: BorrowedFd<'_>,
    raw: &Path,
    h: &tar::Header,
    xattrs: &[Xattr],
) -> Result<(), UnpackError> {
    let fs = |op| {
        move |source| UnpackError::Fs {
            path: raw.to_path_buf(),
            op,
            source,
        }
    };
    let (uid, gid) = owner(h);
    fchown(fd, Some(uid), Some(gid)).map_err(fs("chown"))?;
    let mode = h.mode()? & 0o7777;
    fchmod(fd, Mode::from_bits_truncate(mode)).map_err(fs("chmod"))?;
    for (key, value) in xattrs {
        set_xattr(fd, key, value).map_err(fs("set xattr"))?;
    }
    Ok(())
}

/// The owner recorded in a tar header.
pub(super) fn owner(h: &tar::Header) -> (Uid, Gid) {
    (
        Uid::from_raw(h.uid().unwrap_or(0) as u32),
        Gid::from_raw(h.gid().unwrap_or(0) as u32),
    )
}

/// Gives the entry `name` in `dir` (never followed if a symlink) the owner in `h`.
pub(super) fn chown_nofollow(
    dir: BorrowedFd<'_>,
    name: &std::ffi::OsStr,
    h: &tar::Header,
) -> nix::Result<()> {
    let (uid, gid) = owner(h);
    nix::unistd::fchownat(
        dir,
        name,
        Some(uid),
        Some(gid),
        nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
    )
}

/// `SCHILY.xattr.*` PAX records of an entry.
pub(super) fn pax_xattrs<R: Read>(
    entry: &mut tar::Entry<'_, R>,
) -> Result<Vec<Xattr>, UnpackError> {
    let mut out = Vec::new();
    if let Some(exts) = entry.pax_extensions()? {
        for ext in exts {
            let ext = ext?;
            if let Some(name) = ext.key_bytes().strip_prefix(b"SCHILY.xattr.") {
                if let Ok(c) = CString::new(name) {
                    out.push((c, ext.value_bytes().to_vec()));
                }
            }
        }
    }
    Ok(out)
}

/// Sets one xattr on an open file; a file system without xattr support is not an error.
fn set_xattr(fd: BorrowedFd<'_>, key: &CString, value: &[u8]) -> Result<(), Errno> {
    // SAFETY: `fd` is a valid open descriptor for the duration of the call, `key` is a
    // NUL-terminated string and `value` points to `value.len()` readable bytes.
    let r = unsafe {
        libc::fsetxattr(
            fd.as_raw_fd(),
            key.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    match r {
        0 => Ok(()),
        _ => match Errno::last() {
            Errno::ENOTSUP => Ok(()),
            e => Err(e),
        },
    }
}

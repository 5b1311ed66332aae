//! Extended attributes, on regular files and directories (reopened read-only for the
//! f*xattr calls); symlinks and special files have none here (ENOTSUP).

use std::ffi::CStr;
use std::io;
use std::os::fd::{AsFd, OwnedFd};

use fuse_backend_rs::api::filesystem::{GetxattrReply, ListxattrReply};

use super::{errno, SharedFs};
use crate::idmap::is_acl_xattr;
use crate::sys;

/// Largest value or name list a guest can ask for (the kernel's own XATTR_SIZE_MAX).
const XATTR_MAX: u32 = 65536;

impl SharedFs {
    /// A readable descriptor of `inode` for the f*xattr calls.
    fn xattr_fd(&self, inode: u64) -> io::Result<OwnedFd> {
        let node = self.inodes.get(inode)?;
        if node.is_dir() {
            sys::open_dir(node.fd())
        } else if node.is_file() {
            self.proc
                .reopen(node.fd(), libc::O_RDONLY | libc::O_NONBLOCK)
        } else {
            Err(errno(libc::ENOTSUP))
        }
    }

    /// GETXATTR (`size` 0 asks for the length).
    pub(super) fn do_getxattr(
        &self,
        inode: u64,
        name: &CStr,
        size: u32,
    ) -> io::Result<GetxattrReply> {
        let fd = self.xattr_fd(inode)?;
        let mut buf = vec![0u8; size.min(XATTR_MAX) as usize];
        let n = sys::fgetxattr(fd.as_fd(), name, &mut buf)?;
        if size == 0 {
            return Ok(GetxattrReply::Count(n as u32));
        }
        buf.truncate(n);
        if is_acl_xattr(name.to_bytes()) {
            // A POSIX ACL names users and groups: the guest sees its own IDs (same length).
            buf = self.ids.acl_to_guest(&buf);
        }
        Ok(GetxattrReply::Value(buf))
    }

    /// LISTXATTR (`size` 0 asks for the length).
    pub(super) fn do_listxattr(&self, inode: u64, size: u32) -> io::Result<ListxattrReply> {
        let fd = self.xattr_fd(inode)?;
        let mut buf = vec![0u8; size.min(XATTR_MAX) as usize];
        let n = sys::flistxattr(fd.as_fd(), &mut buf)?;
        if size == 0 {
            return Ok(ListxattrReply::Count(n as u32));
        }
        buf.truncate(n);
        Ok(ListxattrReply::Names(buf))
    }

    /// SETXATTR.
    pub(super) fn do_setxattr(
        &self,
        inode: u64,
        name: &CStr,
        value: &[u8],
        flags: u32,
    ) -> io::Result<()> {
        // File capabilities are setuid's finer-grained twin (`nosuid` makes them inert
        // too): without `--allow-setuid` a guest cannot grant them to a host file.
        if !self.cfg.allow_setuid && name.to_bytes() == b"security.capability" {
            return Err(errno(libc::EPERM));
        }
        let fd = self.xattr_fd(inode)?;
        if is_acl_xattr(name.to_bytes()) {
            let value = self
                .ids
                .acl_to_host(value)
                .ok_or_else(|| errno(libc::EPERM))?;
            return sys::fsetxattr(fd.as_fd(), name, &value, flags as i32);
        }
        sys::fsetxattr(fd.as_fd(), name, value, flags as i32)
    }

    /// REMOVEXATTR.
    pub(super) fn do_removexattr(&self, inode: u64, name: &CStr) -> io::Result<()> {
        let fd = self.xattr_fd(inode)?;
        sys::fremovexattr(fd.as_fd(), name)
    }
}

//! The rules, as pure functions: which names a guest may use, what each `--symlinks` policy
//! allows, and whether a symlink's target stays inside the shared directory.
//!
//! Nothing here touches the host; [`crate::fs`] asks these functions before it acts.

use std::io;

/// What the backend does with symbolic links (`--symlinks`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum SymlinkPolicy {
    /// No new symlinks or hard links from the guest; escaping host symlinks are hidden.
    Deny,
    /// Symlinks are stored and returned byte for byte but never followed on the host; every
    /// one is visible as a symlink, whatever its target (the guest's kernel resolves it in
    /// the guest's own namespace).
    #[default]
    Opaque,
    /// Symlinks are followed on the host (trusted single tenant only).
    Follow,
}

/// How long the guest may cache names and attributes (`--cache`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum CacheMode {
    /// Short timeouts: host changes show up in the guest within [`AUTO_TIMEOUT_MS`].
    #[default]
    Auto,
    /// Long timeouts and kept page cache: for trees only the guest changes.
    Always,
    /// No caching at all: zero timeouts and direct I/O.
    Never,
}

/// Entry and attribute timeout under `--cache auto`, in milliseconds.
pub const AUTO_TIMEOUT_MS: u64 = 500;
/// Entry and attribute timeout under `--cache always`, in seconds.
pub const ALWAYS_TIMEOUT_SECS: u64 = 86_400;
/// Longest name accepted in one path component.
pub const NAME_MAX: usize = 255;

/// The error a policy refusal becomes.
fn errno(e: i32) -> io::Error {
    io::Error::from_raw_os_error(e)
}

/// Checks one path component from the guest: not empty, not `.` or `..`, no `/` (a `CStr`
/// has no NUL), at most [`NAME_MAX`] bytes.
pub fn validate_name(name: &[u8]) -> io::Result<()> {
    if name.len() > NAME_MAX {
        return Err(errno(libc::ENAMETOOLONG));
    }
    if name.is_empty() || name == b"." || name == b".." || name.contains(&b'/') || name.contains(&0)
    {
        return Err(errno(libc::EINVAL));
    }
    Ok(())
}

/// Whether a symlink with `target`, stored in a directory `dir_depth` levels below the
/// shared directory's root, resolves (lexically) to a path inside the shared directory.
/// Absolute and empty targets never do; `..` may not climb above the root at any point.
pub fn target_stays_inside(dir_depth: usize, target: &[u8]) -> bool {
    if target.is_empty() || target.first() == Some(&b'/') {
        return false;
    }
    let mut depth = dir_depth;
    for component in target.split(|b| *b == b'/') {
        match component {
            b"" | b"." => {}
            b".." => match depth.checked_sub(1) {
                Some(d) => depth = d,
                None => return false,
            },
            _ => depth += 1,
        }
    }
    true
}

impl SymlinkPolicy {
    /// Whether the guest may create a symlink (`symlink(2)`): EPERM under `deny`.
    pub fn check_create_symlink(self) -> io::Result<()> {
        match self {
            SymlinkPolicy::Deny => Err(errno(libc::EPERM)),
            SymlinkPolicy::Opaque | SymlinkPolicy::Follow => Ok(()),
        }
    }

    /// Whether the guest may create a hard link (`link(2)`): EPERM under `deny`.
    pub fn check_create_link(self) -> io::Result<()> {
        self.check_create_symlink()
    }

    /// Whether LOOKUP and READDIR hide host symlinks whose target leaves the shared
    /// directory: only under `deny`. `opaque` never follows a symlink on the host, so showing
    /// one is safe; under `follow` LOOKUP never meets one (it follows it).
    pub fn hides_escaping_symlinks(self) -> bool {
        self == SymlinkPolicy::Deny
    }

    /// Whether LOOKUP reports a symlink found on the host: EACCES under `deny` for one whose
    /// target leaves the shared directory, else it is reported as the symlink it is.
    pub fn check_lookup_symlink(self, inside: bool) -> io::Result<()> {
        if self.hides_escaping_symlinks() && !inside {
            Err(errno(libc::EACCES))
        } else {
            Ok(())
        }
    }

    /// Whether LOOKUP follows symlinks on the host.
    pub fn follows(self) -> bool {
        self == SymlinkPolicy::Follow
    }
}

/// The mode bits a guest may set on a node of type `kind` (`S_IFDIR`, `S_IFREG`, ...):
/// `mode & 0o7777` with `allow_setuid`; otherwise without the setuid bit, and without the
/// setgid bit except on a directory, where it only makes new entries inherit the
/// directory's group (what a `nosuid` mount leaves working).
pub fn strip_privilege(mode: u32, kind: u32, allow_setuid: bool) -> u32 {
    let mode = mode & 0o7777;
    if allow_setuid {
        return mode;
    }
    let sgid = if kind & libc::S_IFMT == libc::S_IFDIR {
        0
    } else {
        libc::S_ISGID
    };
    mode & !(libc::S_ISUID | sgid)
}

/// The permission bits a regular file keeps when its data changes, if any must go: the
/// kernel clears setuid, and setgid on a group-executable file, when a process without
/// CAP_FSETID writes or truncates (`should_remove_suid`). `None`: nothing to clear.
pub fn kill_privilege_on_write(st_mode: u32) -> Option<u32> {
    if st_mode & libc::S_IFMT != libc::S_IFREG {
        return None;
    }
    let mut kill = st_mode & libc::S_ISUID;
    if st_mode & (libc::S_ISGID | libc::S_IXGRP) == libc::S_ISGID | libc::S_IXGRP {
        kill |= libc::S_ISGID;
    }
    (kill != 0).then_some(st_mode & 0o7777 & !kill)
}

/// Whether a request that changes the file system may run: EROFS when read-only.
pub fn check_writable(read_only: bool) -> io::Result<()> {
    if read_only {
        Err(errno(libc::EROFS))
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code(r: io::Result<()>) -> Option<i32> {
        r.err().and_then(|e| e.raw_os_error())
    }

    #[test]
    fn names() {
        for ok in [
            &b"a"[..],
            b"...",
            b"node_modules",
            b".hidden",
            &[0xff, 0xfe],
            &[b'x'; 255],
        ] {
            assert!(validate_name(ok).is_ok(), "{ok:?}");
        }
        for bad in [&b""[..], b".", b"..", b"a/b", b"/", b"../x", b"a\0b"] {
            assert_eq!(code(validate_name(bad)), Some(libc::EINVAL), "{bad:?}");
        }
        assert_eq!(code(validate_name(&[b'x'; 256])), Some(libc::ENAMETOOLONG));
    }

    #[test]
    fn targets() {
        // npm workspaces: node_modules/x -> ../packages/x, one level down.
        assert!(target_stays_inside(1, b"../packages/x"));
        assert!(target_stays_inside(0, b"packages/x"));
        assert!(target_stays_inside(0, b"./a/../b"));
        assert!(target_stays_inside(2, b"../../a//b/"));
        assert!(!target_stays_inside(0, b"../x"));
        assert!(!target_stays_inside(1, b"../../x"));
        assert!(!target_stays_inside(3, b"/etc/passwd"));
        assert!(!target_stays_inside(3, b""));
        // Climbing out and back in is still out: the host path would leave the tree.
        assert!(!target_stays_inside(0, b"../shared/x"));
        assert!(!target_stays_inside(1, b"a/../../../b/c/d"));
    }

    #[test]
    fn policy_decisions() {
        use SymlinkPolicy::*;
        assert_eq!(code(Deny.check_create_symlink()), Some(libc::EPERM));
        assert_eq!(code(Deny.check_create_link()), Some(libc::EPERM));
        for p in [Opaque, Follow] {
            assert!(p.check_create_symlink().is_ok());
            assert!(p.check_create_link().is_ok());
        }
        for p in [Deny, Opaque] {
            assert!(p.check_lookup_symlink(true).is_ok());
            assert!(!p.follows());
        }
        // Only `deny` hides escaping symlinks; `opaque` shows them (never following them).
        assert_eq!(code(Deny.check_lookup_symlink(false)), Some(libc::EACCES));
        assert!(Deny.hides_escaping_symlinks());
        for p in [Opaque, Follow] {
            assert!(p.check_lookup_symlink(false).is_ok());
            assert!(!p.hides_escaping_symlinks());
        }
        assert!(Follow.follows());
        assert_eq!(SymlinkPolicy::default(), Opaque);
        assert_eq!(code(check_writable(true)), Some(libc::EROFS));
        assert!(check_writable(false).is_ok());
    }

    #[test]
    fn setuid_and_setgid_are_stripped_unless_allowed() {
        let (reg, dir) = (libc::S_IFREG, libc::S_IFDIR);
        assert_eq!(strip_privilege(0o4755, reg, false), 0o755);
        assert_eq!(strip_privilege(0o6755, reg, false), 0o755);
        assert_eq!(strip_privilege(0o2755, reg, false), 0o755);
        assert_eq!(strip_privilege(0o1777, dir, false), 0o1777);
        assert_eq!(strip_privilege(0o6775, dir, false), 0o2775);
        assert_eq!(strip_privilege(0o6755, reg, true), 0o6755);
        assert_eq!(strip_privilege(libc::S_IFREG | 0o644, reg, false), 0o644);

        assert_eq!(kill_privilege_on_write(reg | 0o644), None);
        assert_eq!(kill_privilege_on_write(reg | 0o4755), Some(0o755));
        assert_eq!(kill_privilege_on_write(reg | 0o6755), Some(0o755));
        // setgid without group execute marks mandatory locking, not privilege.
        assert_eq!(kill_privilege_on_write(reg | 0o2644), None);
        assert_eq!(kill_privilege_on_write(reg | 0o6744), Some(0o2744));
        assert_eq!(kill_privilege_on_write(dir | 0o2775), None);
    }
}

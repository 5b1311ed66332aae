//! `no_new_privs` and the capability drop.
//!
//! The bounding set is emptied first (that needs CAP_SETPCAP, which goes next), then the
//! ambient and inheritable sets are cleared and the effective and permitted sets cut down to
//! the policy's list. Capability sets are per thread: this runs before any thread exists, so
//! every later thread inherits the result.

use caps::{CapSet, Capability, CapsHashSet};

/// Errors dropping privileges.
#[derive(Debug, thiserror::Error)]
pub enum PrivilegeError {
    /// `prctl(PR_SET_NO_NEW_PRIVS)` failed.
    #[error("cannot set no_new_privs: {0}")]
    NoNewPrivs(std::io::Error),
    /// A capability set could not be changed.
    #[error("cannot drop capabilities: {0}")]
    Caps(#[from] caps::errors::CapsError),
    /// Emptying the bounding set failed.
    #[error("cannot drop capability {cap} from the bounding set: {source}")]
    Bounding {
        /// The capability number.
        cap: u32,
        /// The error from prctl(2).
        source: std::io::Error,
    },
}

/// Sets `no_new_privs`: nothing this process executes can gain privileges.
pub fn set_no_new_privs() -> Result<(), PrivilegeError> {
    // SAFETY: prctl with integer arguments only.
    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
        return Err(PrivilegeError::NoNewPrivs(std::io::Error::last_os_error()));
    }
    Ok(())
}

/// Drops every capability except `keep` from all sets of the calling thread.
pub fn drop_capabilities(keep: &[Capability]) -> Result<(), PrivilegeError> {
    drop_bounding_set()?;
    caps::clear(None, CapSet::Ambient)?;
    caps::clear(None, CapSet::Inheritable)?;
    let kept: CapsHashSet = keep.iter().copied().collect();
    let effective: CapsHashSet = caps::read(None, CapSet::Effective)?
        .intersection(&kept)
        .copied()
        .collect();
    caps::set(None, CapSet::Effective, &effective)?;
    caps::set(None, CapSet::Permitted, &effective)?;
    Ok(())
}

/// Empties the bounding set, including capabilities newer than the `caps` crate knows.
fn drop_bounding_set() -> Result<(), PrivilegeError> {
    for cap in 0..64u32 {
        // SAFETY: prctl with integer arguments only.
        let held = unsafe { libc::prctl(libc::PR_CAPBSET_READ, cap, 0, 0, 0) };
        if held != 1 {
            continue; // 0: already dropped; -1 (EINVAL): past the kernel's last capability.
        }
        // SAFETY: as above.
        if unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap, 0, 0, 0) } != 0 {
            return Err(PrivilegeError::Bounding {
                cap,
                source: std::io::Error::last_os_error(),
            });
        }
    }
    Ok(())
}

/// Best-effort full drop for the supervisor, which only waits and forwards signals.
pub fn drop_all_quietly() {
    let _ = set_no_new_privs();
    let _ = drop_capabilities(&[]);
}

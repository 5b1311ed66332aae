//! Reseed: mixes the host's bytes into the kernel's input pool (RNDADDENTROPY, credited)
//! and forces the CRNG to rekey from it (RNDRESEEDCRNG), so a clone restored from a
//! snapshot stops producing the random numbers its siblings produce.

use std::fs::File;
use std::os::fd::AsRawFd;

use sm_agent::message::{Response, SEED_BYTES};

/// `RNDADDENTROPY`: `_IOW('R', 0x03, int[2])` from `<linux/random.h>`.
const RNDADDENTROPY: libc::c_ulong = nix::request_code_write!(b'R', 0x03, 8) as libc::c_ulong;
/// `RNDRESEEDCRNG`: `_IO('R', 0x07)` from `<linux/random.h>`.
const RNDRESEEDCRNG: libc::c_ulong = nix::request_code_none!(b'R', 0x07) as libc::c_ulong;

/// `struct rand_pool_info` with its flexible buffer sized for one seed.
#[repr(C)]
struct PoolInfo {
    /// Bits of entropy to credit.
    entropy_count: libc::c_int,
    /// Bytes in `buf`.
    buf_size: libc::c_int,
    /// The bytes (a `__u32` array in the header, hence the alignment).
    buf: [u32; SEED_BYTES / 4],
}

/// Mixes `seed` into the input pool and reseeds the CRNG; answers only after both ioctls
/// succeeded.
pub fn reseed(seed: &[u8]) -> Response {
    if seed.len() != SEED_BYTES {
        return Response::Failed(format!(
            "reseed: the seed is {} bytes, not {SEED_BYTES}",
            seed.len()
        ));
    }
    match add_and_reseed(seed) {
        Ok(()) => Response::Reseeded,
        Err(e) => Response::Failed(format!("reseed: {e}")),
    }
}

fn add_and_reseed(seed: &[u8]) -> Result<(), String> {
    let urandom = File::options()
        .write(true)
        .open("/dev/urandom")
        .map_err(|e| format!("opening /dev/urandom: {e}"))?;
    let mut info = PoolInfo {
        entropy_count: (SEED_BYTES * 8) as libc::c_int,
        buf_size: SEED_BYTES as libc::c_int,
        buf: [0; SEED_BYTES / 4],
    };
    for (word, bytes) in info.buf.iter_mut().zip(seed.chunks_exact(4)) {
        *word = u32::from_ne_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
    }
    // SAFETY: `info` is a live `rand_pool_info` whose `buf_size` matches the bytes that
    // follow its header; the kernel only reads it during the call.
    let r = unsafe { libc::ioctl(urandom.as_raw_fd(), RNDADDENTROPY as _, &info) };
    if r < 0 {
        return Err(format!(
            "RNDADDENTROPY: {}",
            std::io::Error::last_os_error()
        ));
    }
    // SAFETY: RNDRESEEDCRNG takes no argument and touches no user memory.
    let r = unsafe { libc::ioctl(urandom.as_raw_fd(), RNDRESEEDCRNG as _) };
    if r < 0 {
        return Err(format!(
            "RNDRESEEDCRNG: {}",
            std::io::Error::last_os_error()
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ioctl_numbers_are_the_kernel_headers() {
        assert_eq!(RNDADDENTROPY, 0x4008_5203);
        assert_eq!(RNDRESEEDCRNG, 0x5207);
        assert_eq!(std::mem::size_of::<PoolInfo>(), 8 + SEED_BYTES);
    }

    #[test]
    fn a_seed_of_the_wrong_size_is_one_line() {
        assert_eq!(
            reseed(&[1, 2, 3]),
            Response::Failed("reseed: the seed is 3 bytes, not 64".into())
        );
    }
}

//! The agent protocol between the host and `sm-init` inside an sm guest, over vsock: a
//! versioned, length-prefixed framing with hard limits ([`frame`]), the messages
//! ([`message`]), and the host-side client ([`client`]) that reaches the guest through a
//! hybrid-vsock Unix socket (vhost-device-vsock's `CONNECT <port>` handshake). Every
//! request runs on its own connection, so any number run at once.

pub mod child;
pub mod client;
pub mod exchange;
pub mod frame;
pub mod message;

/// The vsock port `sm-init` serves the agent on.
pub const AGENT_PORT: u32 = 1024;
/// The host port the agent connects to once it listens (hybrid vsock delivers it to the
/// Unix socket `<uds>_<port>`): host-initiated connections made while the guest's vsock
/// driver is still starting can stall the backend, so the host waits for this instead.
pub const READY_PORT: u32 = 1025;
/// What the agent writes on the ready connection.
pub const READY_LINE: &[u8] = b"sm-agent ready\n";
/// `PATH` for commands run without an environment of their own.
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// The protocol version this crate speaks (sent in both `Hello`s).
pub const PROTOCOL_VERSION: u32 = 2;

/// [`message::SEED_BYTES`] fresh bytes from the host kernel's getrandom, for
/// [`client::Agent::reseed`]. Blocks only while the host's own CRNG is not yet initialised.
///
/// # Panics
///
/// If the kernel has no getrandom system call (Linux before 3.17, which KVM hosts of
/// this stack never run).
pub fn fresh_seed() -> [u8; message::SEED_BYTES] {
    let mut seed = [0u8; message::SEED_BYTES];
    let mut filled = 0;
    while filled < seed.len() {
        let rest = &mut seed[filled..];
        // SAFETY: the pointer and length describe `rest`, a live, writable slice that the
        // kernel fills with at most `rest.len()` bytes; flags 0 is the blocking urandom source.
        let n = unsafe { libc::getrandom(rest.as_mut_ptr().cast(), rest.len(), 0) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            assert!(
                e.kind() == std::io::ErrorKind::Interrupted,
                "getrandom failed: {e}"
            );
        } else {
            filled += n as usize;
        }
    }
    seed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fresh_seeds_differ_and_are_not_zero() {
        let (a, b) = (fresh_seed(), fresh_seed());
        assert_ne!(a, b);
        assert_ne!(a, [0u8; message::SEED_BYTES]);
    }
}

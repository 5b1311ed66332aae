//! The agent protocol between the host and `sm-init` inside an sm guest, over vsock: a
//! versioned, length-prefixed framing with hard limits ([`frame`]), the messages
//! ([`message`]), and the host-side client ([`client`]) that reaches the guest through a
//! hybrid-vsock Unix socket (vhost-device-vsock's `CONNECT <port>` handshake). Every
//! request runs on its own connection, so any number run at once.

pub mod child;
pub mod client;
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

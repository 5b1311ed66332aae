//! The agent's messages (JSON bodies of control frames).

use serde::{Deserialize, Serialize};

/// First frame each way: the protocol version the sender speaks.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// [`crate::PROTOCOL_VERSION`] of the sender.
    pub version: u32,
}

/// A command to run in the guest.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecRequest {
    /// Program and arguments (the program is looked up in `PATH`).
    pub argv: Vec<String>,
    /// Environment: exactly these variables when `Some`, the agent's own when `None`.
    pub env: Option<Vec<(String, String)>>,
    /// Working directory (default `/`).
    pub cwd: Option<String>,
    /// User ID to run as (default root).
    pub uid: Option<u32>,
    /// Group ID to run as (default root).
    pub gid: Option<u32>,
    /// Milliseconds after which the command is killed with SIGKILL.
    pub timeout_ms: Option<u64>,
    /// Whether the host sends stdin frames; otherwise stdin is `/dev/null`.
    pub stdin: bool,
    /// Run chrooted into this guest directory (an image's root); `cwd` is inside it.
    #[serde(default)]
    pub root: Option<String>,
    /// Run on a new pseudo-terminal of this size (stdin, stdout and stderr all on it, so
    /// the output comes back as stdout only); `None` uses pipes.
    #[serde(default)]
    pub tty: Option<WindowSize>,
}

/// A terminal's size in character cells.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WindowSize {
    /// Rows.
    pub rows: u16,
    /// Columns.
    pub cols: u16,
}

/// What the host asks for; one per connection.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Request {
    /// Run a command, streaming its stdout and stderr back.
    Exec(ExecRequest),
    /// Replace `path` atomically (temp file + rename) with `size` bytes sent as data frames.
    WriteFile {
        /// Absolute guest path.
        path: String,
        /// Permission bits of the new file.
        mode: u32,
        /// Exact number of bytes that follow.
        size: u64,
        /// Create missing parent directories.
        create_parents: bool,
    },
    /// Send the file at `path` back as data frames, if it is at most `max_bytes` long.
    ReadFile {
        /// Absolute guest path.
        path: String,
        /// Refuse files larger than this.
        max_bytes: u64,
    },
    /// Connect to guest TCP `port` on 127.0.0.1 and splice the connection with it.
    ConnectTcp {
        /// Guest port.
        port: u16,
    },
    /// Mix `seed` into the guest kernel's input pool (credited as entropy) and reseed its
    /// CRNG, so everything random the guest reads after the answer (getrandom,
    /// `/dev/urandom`, `/proc/sys/kernel/random/uuid`) comes from a new key: what a clone
    /// restored from a snapshot needs before it runs anything.
    Reseed {
        /// Exactly [`SEED_BYTES`] bytes from the host's getrandom.
        seed: Vec<u8>,
    },
}

/// How many bytes a [`Request::Reseed`] carries.
pub const SEED_BYTES: usize = 64;

/// Signals and stdin control for a running command.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Control {
    /// Send this signal number to the command.
    Signal(i32),
    /// Resize the command's terminal (it gets SIGWINCH); ignored without a tty.
    Resize(WindowSize),
}

/// How a request ended; the guest's last frame on the connection.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Response {
    /// The command ended.
    Exited(ExitInfo),
    /// The file was written.
    Written {
        /// Bytes written.
        bytes: u64,
    },
    /// The file was sent.
    Read {
        /// Bytes sent.
        bytes: u64,
    },
    /// The TCP connection is established; data frames follow both ways from here on, an
    /// empty one ending its direction.
    Connected,
    /// The seed was mixed in and the guest's CRNG reseeded.
    Reseeded,
    /// The request failed; one line saying why.
    Failed(String),
}

/// How a command ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExitInfo {
    /// Exit code, if it exited.
    pub code: Option<i32>,
    /// Signal number, if a signal ended it.
    pub signal: Option<i32>,
    /// Whether the agent killed it because its timeout passed.
    pub timed_out: bool,
    /// Microseconds from start to end.
    pub duration_us: u64,
}

impl ExitInfo {
    /// The exit status a shell would report: the code, 128 + N if signal N ended it, or
    /// 255 if neither is known.
    pub fn shell_code(&self) -> u8 {
        match (self.code, self.signal) {
            (Some(c), _) => c as u8,
            (None, Some(s)) => 128u8.wrapping_add(s as u8),
            _ => 255,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::{read_frame, write_json, Kind};

    #[test]
    fn a_reseed_request_carries_its_64_bytes_through_a_frame() {
        let seed: Vec<u8> = (0..SEED_BYTES as u8).map(|b| b.wrapping_mul(37)).collect();
        let mut buf = Vec::new();
        write_json(
            &mut buf,
            Kind::Request,
            &Request::Reseed { seed: seed.clone() },
        )
        .unwrap();
        let f = read_frame(&mut &buf[..]).unwrap();
        assert_eq!(f.kind, Kind::Request);
        assert_eq!(f.json::<Request>().unwrap(), Request::Reseed { seed });
    }

    #[test]
    fn the_reseed_messages_have_a_stable_wire_form() {
        let req = Request::Reseed { seed: vec![0, 255] };
        assert_eq!(
            serde_json::to_string(&req).unwrap(),
            r#"{"Reseed":{"seed":[0,255]}}"#
        );
        assert_eq!(
            serde_json::to_string(&Response::Reseeded).unwrap(),
            r#""Reseeded""#
        );
        let back: Response = serde_json::from_str(r#""Reseeded""#).unwrap();
        assert_eq!(back, Response::Reseeded);
    }
}

//! sm-vhost-user-blk's flags as a type: the binary parses them, and `sm` builds the backend's
//! command line from a value of it ([`sm_launch::CommandLine`]).

use std::ffi::OsString;
use std::path::PathBuf;

use clap::{Parser, ValueEnum};
use sm_launch::{ArgWriter, CommandLine};
use sm_vhost_user_common::startup::ListenArgs;

/// Size of a new image when `--size-mib` is not given.
pub const DEFAULT_SIZE_MIB: u64 = 1024;

/// Serve one raw image file as a virtio-blk device over vhost-user.
#[derive(Parser, Clone, Debug, PartialEq, Eq)]
#[command(name = "sm-vhost-user-blk", version)]
pub struct BlkArgs {
    /// vhost-user socket to listen on (created; a stale socket is replaced). Exactly one of
    /// --socket, --fd and socket activation (LISTEN_FDS) gives the socket.
    #[arg(long, value_name = "PATH")]
    pub socket: Option<PathBuf>,
    /// Serve on this inherited listening socket instead of binding one (virtiofsd's flag).
    #[arg(long, value_name = "N")]
    pub fd: Option<i32>,
    /// Raw image file; created sparse when missing.
    #[arg(long)]
    pub file: PathBuf,
    /// Size of a new image in MiB [default: 1024]; an existing image larger than this is an error.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=1 << 40))]
    pub size_mib: Option<u64>,
    /// Offer the device read-only (VIRTIO_BLK_F_RO) and take a shared lock.
    #[arg(long)]
    pub read_only: bool,
    /// Number of request queues.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=64))]
    pub num_queues: u16,
    /// Process isolation: `namespace` (default) or `none` (debugging only).
    #[arg(long, value_enum, default_value_t = SandboxMode::Namespace)]
    pub sandbox: SandboxMode,
}

/// The `--sandbox` choices.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum SandboxMode {
    /// Namespaces, empty root, no capabilities, Landlock, seccomp.
    Namespace,
    /// No isolation at all.
    None,
}

impl BlkArgs {
    /// Flags serving `file` on `socket`, everything else at its default.
    pub fn new(socket: impl Into<PathBuf>, file: impl Into<PathBuf>) -> BlkArgs {
        BlkArgs {
            socket: Some(socket.into()),
            fd: None,
            file: file.into(),
            size_mib: None,
            read_only: false,
            num_queues: 1,
            sandbox: SandboxMode::Namespace,
        }
    }
}

impl ListenArgs for BlkArgs {
    fn socket(&self) -> Option<&std::path::Path> {
        self.socket.as_deref()
    }

    fn fd(&self) -> Option<i32> {
        self.fd
    }
}

impl CommandLine for BlkArgs {
    fn to_args(&self) -> Vec<OsString> {
        let BlkArgs {
            socket,
            fd,
            file,
            size_mib,
            read_only,
            num_queues,
            sandbox,
        } = self;
        ArgWriter::new::<BlkArgs>()
            .option("socket", socket.as_ref())
            .option("fd", fd.map(|f| f.to_string()))
            .value("file", file)
            .option("size_mib", size_mib.map(|s| s.to_string()))
            .switch("read_only", *read_only)
            .value("num_queues", num_queues.to_string())
            .choice("sandbox", sandbox)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_round_trip() {
        let mut a = BlkArgs::new("/r/blk-0.sock", "/v/vol.img");
        sm_launch::assert_round_trip(&a);
        a.size_mib = Some(2048);
        a.read_only = true;
        a.num_queues = 4;
        a.sandbox = SandboxMode::None;
        sm_launch::assert_round_trip(&a);
        a.socket = None;
        a.fd = Some(3);
        sm_launch::assert_round_trip(&a);
    }
}

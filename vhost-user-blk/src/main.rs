//! `sm-vhost-user-blk`: parses flags, opens and locks the image, binds the vhost-user socket,
//! enters the sandbox, then serves frontends until killed. Errors are one line on stderr and
//! a non-zero exit; stdout stays silent.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, ValueEnum};
use sm_vhost_user_blk::image::{Image, ImageError, ImageOptions, IMAGE_SYSCALLS};
use sm_vhost_user_blk::serve::{self, ServeError};
use tracing::{info, warn};

/// Size of a new image when `--size-mib` is not given.
const DEFAULT_SIZE_MIB: u64 = 1024;

/// Serve one raw image file as a virtio-blk device over vhost-user.
#[derive(Parser, Debug)]
#[command(name = "sm-vhost-user-blk", version)]
struct Args {
    /// vhost-user socket to listen on (created; a stale socket is replaced).
    #[arg(long)]
    socket: PathBuf,
    /// Raw image file; created sparse when missing.
    #[arg(long)]
    file: PathBuf,
    /// Size of a new image in MiB [default: 1024]; an existing image larger than this is an error.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=1 << 40))]
    size_mib: Option<u64>,
    /// Offer the device read-only (VIRTIO_BLK_F_RO) and take a shared lock.
    #[arg(long)]
    read_only: bool,
    /// Number of request queues.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=64))]
    num_queues: u16,
    /// Process isolation: `namespace` (default) or `none` (debugging only).
    #[arg(long, value_enum, default_value_t = SandboxMode::Namespace)]
    sandbox: SandboxMode,
}

/// The `--sandbox` choices.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum SandboxMode {
    /// Namespaces, empty root, no capabilities, Landlock, seccomp.
    Namespace,
    /// No isolation at all.
    None,
}

/// Everything that stops the backend.
#[derive(Debug, thiserror::Error)]
enum MainError {
    #[error(transparent)]
    Image(#[from] ImageError),
    #[error(transparent)]
    Serve(#[from] ServeError),
    #[error("sandbox: {0} (--sandbox none runs without isolation, for debugging)")]
    Sandbox(#[from] sm_sandbox::SandboxError),
}

fn run(args: Args) -> Result<(), MainError> {
    let image = Arc::new(Image::open(&ImageOptions {
        path: args.file.clone(),
        size_mib: args.size_mib,
        default_size_mib: DEFAULT_SIZE_MIB,
        read_only: args.read_only,
    })?);
    let listener = serve::bind(&args.socket)?;
    info!(
        "serving {} ({} MiB{}, {} queue(s)) on {}",
        args.file.display(),
        image.capacity() >> 20,
        if image.read_only() { ", read-only" } else { "" },
        args.num_queues,
        args.socket.display()
    );
    match args.sandbox {
        SandboxMode::Namespace => {
            sm_sandbox::enter(&sm_sandbox::Policy::default().allow_syscalls(IMAGE_SYSCALLS))?
        }
        SandboxMode::None => warn!(
            "--sandbox none: NOT SANDBOXED. This process keeps the host file system, \
             network and all its privileges; a guest exploiting it owns them too"
        ),
    }
    serve::serve(listener, image, args.num_queues)?;
    Ok(())
}

fn main() -> ExitCode {
    sm_vhost_user_common::startup::main("sm-vhost-user-blk", "info", run)
}

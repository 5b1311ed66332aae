//! `sm-vhost-user-blk`: parses flags, opens and locks the image, binds the vhost-user socket
//! (or takes it over: `--fd N`, `LISTEN_FDS`), enters the sandbox, then serves frontends until
//! killed, telling systemd how it goes (`NOTIFY_SOCKET`). Errors are one line on stderr and
//! a non-zero exit; stdout stays silent.

use std::process::ExitCode;
use std::sync::Arc;

use sm_vhost_user_blk::cli::{BlkArgs, SandboxMode, DEFAULT_SIZE_MIB};
use sm_vhost_user_blk::image::{Image, ImageError, ImageOptions, IMAGE_SYSCALLS};
use sm_vhost_user_blk::serve::{self, ServeError};
use sm_vhost_user_common::serve::ListenSource;
use tracing::{info, warn};

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

fn run(args: BlkArgs, source: ListenSource) -> Result<(), MainError> {
    let image = Arc::new(Image::open(&ImageOptions {
        path: args.file.clone(),
        size_mib: args.size_mib,
        default_size_mib: DEFAULT_SIZE_MIB,
        read_only: args.read_only,
    })?);
    let listener = source.listen()?;
    info!(
        "serving {} ({} MiB{}, {} queue(s)) on {}",
        args.file.display(),
        image.capacity() >> 20,
        if image.read_only() { ", read-only" } else { "" },
        args.num_queues,
        source
    );
    match args.sandbox {
        SandboxMode::Namespace => sm_sandbox::enter(
            &sm_sandbox::Policy::default()
                .allow_syscalls(IMAGE_SYSCALLS)
                .worker_syscalls(IMAGE_SYSCALLS),
        )?,
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

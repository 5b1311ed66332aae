//! `sm-vhost-user-fs`: parses flags, binds the vhost-user socket, enters the sandbox, opens
//! the shared directory from inside it, then serves frontends until killed. Errors are one
//! line on stderr and a non-zero exit; stdout stays silent.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, ValueEnum};
use sm_vhost_user_fs::config::{ConfigError, DeviceConfig};
use sm_vhost_user_fs::confine::{
    check_isolation, confine, raise_fd_limit, ConfineError, Confined, Isolation,
};
use sm_vhost_user_fs::fs::FsConfig;
use sm_vhost_user_fs::policy::{CacheMode, SymlinkPolicy};
use sm_vhost_user_fs::serve::{self, ServeError, Share};
use tracing::info;

/// Share a host directory with a guest as a virtio-fs device over vhost-user.
#[derive(Parser, Debug)]
#[command(name = "sm-vhost-user-fs", version)]
struct Args {
    /// vhost-user socket to listen on (created; a stale socket is replaced).
    #[arg(long)]
    socket: PathBuf,
    /// Directory to share; the guest sees nothing outside it.
    #[arg(long)]
    shared_dir: PathBuf,
    /// Tag announced in the device config (frontends such as QEMU bring their own).
    #[arg(long)]
    tag: Option<String>,
    /// Symlink policy.
    #[arg(long, value_enum, default_value_t = Symlinks::Opaque)]
    symlinks: Symlinks,
    /// Refuse every change (EROFS).
    #[arg(long)]
    read_only: bool,
    /// Guest caching: `auto` (host changes visible within 1 s), `always`, `never`.
    #[arg(long, value_enum, default_value_t = Cache::Auto)]
    cache: Cache,
    /// Process isolation.
    #[arg(long, value_enum, default_value_t = SandboxMode::Namespace)]
    sandbox: SandboxMode,
    /// Let the guest make character and block device nodes (mknod) in the share; refused
    /// by default, as a guest-made device node on a host directory is a host escalation.
    /// For trusted guests only; the backend must run as root.
    #[arg(long)]
    allow_devices: bool,
    /// Size of the DAX window in MiB (0: no DAX), a multiple of 2: the guest can then mount
    /// with `-o dax=always` and map the host's page cache directly.
    #[arg(long, default_value_t = 0)]
    dax_window_mib: u64,
    /// Worker threads per request queue (0: requests run on the queue's own thread).
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u16).range(0..=64))]
    thread_pool_size: u16,
}

/// The `--symlinks` choices.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Symlinks {
    /// The guest may not create symlinks or hard links; escaping host symlinks are hidden.
    Deny,
    /// Symlinks are stored byte for byte, all visible, and never followed on the host.
    Opaque,
    /// Host symlinks are followed on the host (trusted single tenant).
    Follow,
}

/// The `--cache` choices.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Cache {
    /// Short timeouts; host changes show within a second.
    Auto,
    /// Long timeouts; for trees only the guest changes.
    Always,
    /// No caching, direct I/O.
    Never,
}

/// The `--sandbox` choices.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum SandboxMode {
    /// Namespaces, the shared directory as the only tree, Landlock, seccomp, few capabilities.
    Namespace,
    /// chroot into the shared directory, Landlock, seccomp, few capabilities.
    Chroot,
    /// No isolation at all.
    None,
}

/// Everything that stops the backend.
#[derive(Debug, thiserror::Error)]
enum MainError {
    #[error("--shared-dir {path}: {source}")]
    SharedDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("--shared-dir {0}: not a directory")]
    NotADir(PathBuf),
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Serve(#[from] ServeError),
    #[error(transparent)]
    Confine(#[from] ConfineError),
}

fn run(args: Args) -> Result<(), MainError> {
    let shared = args
        .shared_dir
        .canonicalize()
        .map_err(|source| MainError::SharedDir {
            path: args.shared_dir.clone(),
            source,
        })?;
    if !shared.is_dir() {
        return Err(MainError::NotADir(args.shared_dir));
    }
    let device = DeviceConfig::new(args.tag.as_deref())?.with_dax_window(args.dax_window_mib)?;
    // SAFETY: geteuid has no arguments and cannot fail.
    let root_user = unsafe { libc::geteuid() } == 0;
    let fs = FsConfig {
        symlinks: match args.symlinks {
            Symlinks::Deny => SymlinkPolicy::Deny,
            Symlinks::Opaque => SymlinkPolicy::Opaque,
            Symlinks::Follow => SymlinkPolicy::Follow,
        },
        read_only: args.read_only,
        cache: match args.cache {
            Cache::Auto => CacheMode::Auto,
            Cache::Always => CacheMode::Always,
            Cache::Never => CacheMode::Never,
        },
        chown_new: root_user,
        allow_devices: args.allow_devices,
    };
    let isolation = match args.sandbox {
        SandboxMode::Namespace => Isolation::Namespace,
        SandboxMode::Chroot => Isolation::Chroot,
        SandboxMode::None => Isolation::None,
    };
    check_isolation(isolation, &fs)?;
    let listener = serve::bind(&args.socket)?;
    raise_fd_limit();
    info!(
        "serving {} ({:?} symlinks{}, cache {:?}) on {}",
        shared.display(),
        args.symlinks,
        if args.read_only { ", read-only" } else { "" },
        args.cache,
        args.socket.display()
    );
    let Confined { root, proc } = confine(isolation, &shared, &fs)?;
    serve::serve(
        listener,
        Share {
            root,
            proc,
            fs,
            device,
            pool_size: args.thread_pool_size.into(),
            // inotify names directories through /proc/self/fd, which a chroot does not hold.
            watch: args.sandbox != SandboxMode::Chroot,
        },
    )?;
    Ok(())
}

fn main() -> ExitCode {
    // fuse-backend-rs logs every FUSE INIT over several lines at info.
    sm_vhost_user_common::startup::main("sm-vhost-user-fs", "info,fuse_backend_rs=warn", run)
}

//! `sm-vhost-user-fs`: parses flags, binds the vhost-user socket (or takes it over: `--fd N`,
//! `LISTEN_FDS`), enters the sandbox, opens the shared directory from inside it, then serves
//! frontends until killed, telling systemd how it goes (`NOTIFY_SOCKET`). Errors are one
//! line on stderr and a non-zero exit; stdout stays silent.

use std::fs::File;
use std::os::fd::{AsFd, FromRawFd};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use sm_vhost_user_common::notify;
use sm_vhost_user_common::serve::{activated_state_fd, ListenSource, STATE_FD_NAME};
use sm_vhost_user_fs::cli::FsArgs;
use sm_vhost_user_fs::config::{ConfigError, DeviceConfig};
use sm_vhost_user_fs::confine::{
    check_isolation, confine, raise_fd_limit, ConfineError, Confined, Isolation,
};
use sm_vhost_user_fs::fs::FsConfig;
use sm_vhost_user_fs::idmap::{IdMap, IdMapError, IdMaps};
use sm_vhost_user_fs::journal::{Journal, JournalError, Tables};
use sm_vhost_user_fs::serve::{self, ServeError, Share};
use tracing::info;

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
    #[error("--translate-{0}: {1}")]
    IdMap(&'static str, IdMapError),
    #[error(transparent)]
    Serve(#[from] ServeError),
    #[error(transparent)]
    Confine(#[from] ConfineError),
    #[error("{source}: {error}", source = journal_source(*.0), error = .1)]
    Journal(i32, JournalError),
}

/// Where the journal came from, for messages (-1: the service manager's store).
fn journal_source(fd: i32) -> String {
    if fd < 0 {
        "the file-descriptor store".into()
    } else {
        format!("--state-fd {fd}")
    }
}

/// Whether a service manager keeps descriptors for this service (systemd sets `FDSTORE`
/// to the store's size when the unit has `FileDescriptorStoreMax=`).
fn fd_store_offered() -> bool {
    std::env::var("FDSTORE")
        .ok()
        .and_then(|v| v.parse::<u32>().ok())
        .is_some_and(|n| n > 0)
}

/// A new journal memfd, handed to the service manager's store (`FDNAME=state`) so the next
/// run of this service gets it back in `LISTEN_FDS`.
fn stored_journal() -> Result<(Arc<Journal>, Tables), MainError> {
    let bad = |e| MainError::Journal(-1, JournalError::Io(e));
    // SAFETY: memfd_create takes a C string and flags; the result is checked.
    let fd = unsafe { libc::memfd_create(c"sm-fs-journal".as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(bad(std::io::Error::last_os_error()));
    }
    // SAFETY: `fd` was just created and nothing else owns it.
    let file = unsafe { File::from_raw_fd(fd) };
    notify::store_fd(STATE_FD_NAME, file.as_fd()).map_err(bad)?;
    let (journal, tables) = Journal::open(file).map_err(|e| MainError::Journal(-1, e))?;
    info!("state journal: a new memfd, kept in the service manager's store");
    Ok((Arc::new(journal), tables))
}

/// Takes over the inherited journal memfd `fd`.
fn open_journal(fd: i32) -> Result<(Arc<Journal>, Tables), MainError> {
    let bad = |e| MainError::Journal(fd, e);
    // SAFETY: F_GETFD only asks whether `fd` is open.
    if fd < 3 || unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
        return Err(bad(JournalError::Io(std::io::Error::from_raw_os_error(
            libc::EBADF,
        ))));
    }
    // SAFETY: `fd` is open (checked above), inherited for this purpose and kept open by
    // start-up; nothing else in the process owns it.
    let file = unsafe { File::from_raw_fd(fd) };
    let (journal, tables) = Journal::open(file).map_err(bad)?;
    Ok((Arc::new(journal), tables))
}

fn run(args: FsArgs, source: ListenSource) -> Result<(), MainError> {
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
        symlinks: args.symlinks,
        read_only: args.read_only,
        cache: args.cache,
        chown_new: root_user,
        allow_devices: args.allow_devices,
        allow_setuid: args.allow_setuid,
        // Not yet with a DAX window: one benchmark run there ended in a KVM_RUN EFAULT
        // (docs/architecture.md, Planned).
        no_open: !args.open_requests && args.dax_window_mib == 0,
    };
    let ids = IdMaps {
        uids: IdMap::new(&args.translate_uid).map_err(|e| MainError::IdMap("uid", e))?,
        gids: IdMap::new(&args.translate_gid).map_err(|e| MainError::IdMap("gid", e))?,
    };
    // A pool completes out of order, so nothing could be replayed: no journal then (an
    // explicit --state-fd with a pool is refused by the flags already).
    let in_order = args.thread_pool_size == 0;
    let journal = match args.state_fd.or_else(activated_state_fd) {
        Some(fd) if in_order => Some(open_journal(fd)?),
        None if in_order && fd_store_offered() => Some(stored_journal()?),
        _ => None,
    };
    if let Some((_, t)) = &journal {
        if t.options.is_some() {
            info!(
                "state journal holds a session: {} nodes, {} open files to take over",
                t.nodes.len(),
                t.handles.len()
            );
        }
    }
    let isolation = args.sandbox;
    check_isolation(isolation, &fs)?;
    let listener = source.listen()?;
    raise_fd_limit();
    info!(
        "serving {} ({:?} symlinks{}, cache {:?}) on {}",
        shared.display(),
        args.symlinks,
        if args.read_only { ", read-only" } else { "" },
        args.cache,
        source
    );
    let Confined { root, proc } = confine(isolation, &shared, &fs)?;
    serve::serve(
        listener,
        Share {
            root,
            proc,
            fs,
            ids,
            device,
            pool_size: args.thread_pool_size.into(),
            // inotify names directories through /proc/self/fd, which a chroot does not hold.
            watch: isolation != Isolation::Chroot,
            journal,
        },
    )?;
    Ok(())
}

fn main() -> ExitCode {
    // fuse-backend-rs logs every FUSE INIT over several lines at info.
    sm_vhost_user_common::startup::main("sm-vhost-user-fs", "info,fuse_backend_rs=warn", run)
}

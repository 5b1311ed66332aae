//! The vhost-user socket: binding it (before the sandbox, so frontends can connect at once)
//! and serving frontends one connection at a time, each with a fresh file system state.

use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tracing::{info, warn};
use vhost::vhost_user::{Error as VhostUserError, Listener};
use vhost_user_backend::VhostUserDaemon;
use vm_memory::{GuestMemoryAtomic, GuestMemoryMmap};

use crate::backend::FsBackend;
use crate::config::DeviceConfig;
use crate::fs::{FsConfig, SharedFs};
use crate::sys::ProcFds;
use crate::watch::Watcher;

/// Errors binding or serving the vhost-user socket.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The socket could not be created.
    #[error("cannot listen on {path}: {source}")]
    Bind {
        /// The socket path.
        path: PathBuf,
        /// The error from bind(2) or listen(2).
        source: io::Error,
    },
    /// Something other than a stale socket is in the way.
    #[error("cannot listen on {0}: it exists and is not a socket")]
    NotASocket(PathBuf),
    /// The shared directory could not be opened for a connection.
    #[error("shared directory: {0}")]
    Root(io::Error),
    /// The vhost-user library failed outside any one connection.
    #[error("vhost-user: {0}")]
    Daemon(String),
}

/// Binds and listens on `path`, replacing a stale socket left by an earlier run.
pub fn bind(path: &Path) -> Result<UnixListener, ServeError> {
    let bind_err = |source| ServeError::Bind {
        path: path.to_owned(),
        source,
    };
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_socket() => std::fs::remove_file(path).map_err(bind_err)?,
        Ok(_) => return Err(ServeError::NotASocket(path.to_owned())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(bind_err(e)),
    }
    UnixListener::bind(path).map_err(bind_err)
}

/// What every connection's file system is built from.
pub struct Share {
    /// `O_PATH` descriptor of the shared directory.
    pub root: OwnedFd,
    /// This process's `/proc/self/fd`.
    pub proc: ProcFds,
    /// The file system's behaviour.
    pub fs: FsConfig,
    /// What the device announces.
    pub device: DeviceConfig,
    /// Worker threads for the request queue (0: none).
    pub pool_size: usize,
    /// Watch host directories with inotify (needs `/proc/self/fd` in this process's view).
    pub watch: bool,
}

/// Serves frontends on `listener`, one at a time, until an unrecoverable error.
pub fn serve(listener: UnixListener, share: Share) -> Result<(), ServeError> {
    let mut listener = Listener::from(listener);
    loop {
        let fs = SharedFs::new(
            share.root.try_clone().map_err(ServeError::Root)?,
            share.proc.try_clone().map_err(ServeError::Root)?,
            share.fs,
        )
        .map_err(ServeError::Root)?;
        let fs = match share.watch.then(Watcher::new) {
            Some(Ok(w)) => fs.with_watcher(w),
            Some(Err(e)) => {
                warn!("no inotify ({e}): symlink checks walk the tree every time");
                fs
            }
            None => fs,
        };
        let backend = FsBackend::new(Arc::new(fs), share.device.clone(), share.pool_size)
            .map_err(|e| ServeError::Daemon(format!("cannot start worker threads: {e}")))?;
        let backend = Arc::new(backend);
        let mem = GuestMemoryAtomic::new(GuestMemoryMmap::new());
        let mut daemon = VhostUserDaemon::new("sm-vhost-user-fs".into(), backend.clone(), mem)
            .map_err(|e| ServeError::Daemon(e.to_string()))?;
        daemon
            .start(&mut listener)
            .map_err(|e| ServeError::Daemon(e.to_string()))?;
        info!("frontend connected");
        match daemon.wait() {
            Ok(())
            | Err(vhost_user_backend::Error::HandleRequest(
                VhostUserError::Disconnected | VhostUserError::PartialMessage,
            )) => info!("frontend disconnected"),
            Err(e) => warn!("frontend connection ended: {e}"),
        }
        drop(daemon);
        backend.close_exit_events();
    }
}

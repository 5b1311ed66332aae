//! The vhost-user socket: binding it (before the sandbox, so frontends can connect at once)
//! and serving frontends one connection at a time, each with fresh device state.

use std::io;
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tracing::{info, warn};
use vhost::vhost_user::{Error as VhostUserError, Listener};
use vhost_user_backend::VhostUserDaemon;
use vm_memory::{GuestMemoryAtomic, GuestMemoryMmap};

use crate::backend::BlkBackend;
use crate::image::Image;

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

/// Serves frontends on `listener`, one at a time, until an unrecoverable error.
pub fn serve(listener: UnixListener, image: Arc<Image>, num_queues: u16) -> Result<(), ServeError> {
    let mut listener = Listener::from(listener);
    loop {
        let backend = Arc::new(BlkBackend::new(image.clone(), num_queues));
        let mem = GuestMemoryAtomic::new(GuestMemoryMmap::new());
        let mut daemon = VhostUserDaemon::new("sm-vhost-user-blk".into(), backend.clone(), mem)
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
        // Dropping the daemon stops and joins its queue threads before the next frontend.
        drop(daemon);
        backend.close_exit_events();
    }
}

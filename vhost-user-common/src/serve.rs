//! The vhost-user socket: binding it (before the sandbox, so frontends can connect at once)
//! and serving frontends one connection at a time, each with fresh device state.

use std::io;
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tracing::{info, warn};
use vhost::vhost_user::{Error as VhostUserError, Listener};
use vhost_user_backend::{VhostUserBackend, VhostUserDaemon};
use vm_memory::{GuestMemoryAtomic, GuestMemoryMmap};

use crate::queue::{QueueState, Vring};

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
    /// A connection's device state could not be set up.
    #[error("{what}: {source}")]
    Setup {
        /// What could not be set up.
        what: &'static str,
        /// Why.
        source: io::Error,
    },
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

/// A device that [`serve`] can run: a vhost-user backend whose queue threads' exit events
/// come from its own [`QueueState`].
pub trait ServedBackend: VhostUserBackend<Bitmap = (), Vring = Vring> + 'static {
    /// The device's queue state, whose exit events are closed after each connection.
    fn queue_state(&self) -> &QueueState;
}

/// Serves frontends on `listener`, one at a time, until an unrecoverable error; each
/// connection gets a fresh device from `new_backend`. `name` names the daemon's threads.
pub fn serve<B: ServedBackend>(
    listener: UnixListener,
    name: &str,
    mut new_backend: impl FnMut() -> Result<B, ServeError>,
) -> Result<(), ServeError> {
    let mut listener = Listener::from(listener);
    loop {
        let backend = Arc::new(new_backend()?);
        let mem = GuestMemoryAtomic::new(GuestMemoryMmap::new());
        let mut daemon = VhostUserDaemon::new(name.into(), backend.clone(), mem)
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
        backend.queue_state().exit_events().close_all();
    }
}

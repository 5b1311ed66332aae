//! The vhost-user socket: binding it or taking it over from the service manager (before
//! the sandbox, so frontends can connect at once) and serving frontends one connection at a
//! time, each with fresh device state, telling the service manager how it goes
//! ([`crate::notify`]).

use std::io;
use std::os::fd::{FromRawFd, RawFd};
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tracing::{info, warn};
use vhost::vhost_user::{Error as VhostUserError, Listener};
use vhost_user_backend::{VhostUserBackend, VhostUserDaemon};
use vm_memory::{GuestMemoryAtomic, GuestMemoryMmap};
use vmm_sys_util::epoll::EventSet;

use crate::notify;
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
    /// A descriptor handed over (`--fd N`, `LISTEN_FDS`) is not a listening Unix socket.
    #[error("{0}: {1}")]
    HandedOver(String, String),
}

/// Where the listening socket comes from: exactly one of `--socket PATH` (bound here),
/// `--fd N` (virtiofsd's convention) and socket activation (`LISTEN_FDS=1` with `LISTEN_PID`
/// naming this process: systemd's convention, the socket at descriptor 3).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ListenSource {
    /// Bind this path.
    Path(PathBuf),
    /// Accept on this inherited descriptor; `from` says who handed it over.
    Fd {
        /// The descriptor.
        fd: RawFd,
        /// `--fd N` or `LISTEN_FDS`.
        from: String,
    },
}

/// The name under which a backend's state memfd comes back from a service manager's
/// file-descriptor store (`FDNAME=state`, then `LISTEN_FDNAMES`).
pub const STATE_FD_NAME: &str = "state";

/// The descriptors socket activation passed (`LISTEN_FDS`, for this process), with their
/// `LISTEN_FDNAMES` names.
pub fn activated_fds() -> Result<Vec<(RawFd, String)>, String> {
    sd_notify::listen_fds_with_names()
        .map(|fds| fds.collect())
        .map_err(|e| format!("LISTEN_FDS: {e}"))
}

/// The state memfd a service manager's store passed back, if any.
pub fn activated_state_fd() -> Option<RawFd> {
    activated_fds()
        .ok()?
        .into_iter()
        .find(|(_, name)| name == STATE_FD_NAME)
        .map(|(fd, _)| fd)
}

impl ListenSource {
    /// The one source among `socket`, `fd` and the environment's `LISTEN_FDS`; an error
    /// (one line) when there is none or more than one.
    pub fn resolve(socket: Option<&Path>, fd: Option<RawFd>) -> Result<ListenSource, String> {
        let activated: Vec<RawFd> = activated_fds()?
            .into_iter()
            .filter(|(_, name)| name != STATE_FD_NAME)
            .map(|(fd, _)| fd)
            .collect();
        let activated = match activated[..] {
            [] => None,
            [fd] => Some(fd),
            _ => {
                return Err(format!(
                "LISTEN_FDS={}: expected one listening socket (and a stored \"{STATE_FD_NAME}\")",
                activated.len()
            ))
            }
        };
        let mut sources = Vec::new();
        if let Some(p) = socket {
            sources.push(ListenSource::Path(p.to_owned()));
        }
        if let Some(fd) = fd {
            sources.push(ListenSource::Fd {
                fd,
                from: format!("--fd {fd}"),
            });
        }
        if let Some(fd) = activated {
            sources.push(ListenSource::Fd {
                fd,
                from: "LISTEN_FDS".into(),
            });
        }
        match sources.len() {
            0 => Err(
                "no socket: give --socket PATH or --fd N, or start socket-activated \
                      (LISTEN_FDS)"
                    .into(),
            ),
            1 => Ok(sources.remove(0)),
            _ => Err(format!(
                "give exactly one of --socket PATH, --fd N and LISTEN_FDS (got {})",
                sources
                    .iter()
                    .map(|s| match s {
                        ListenSource::Path(_) => "--socket",
                        ListenSource::Fd { from, .. } if from == "LISTEN_FDS" => "LISTEN_FDS",
                        ListenSource::Fd { .. } => "--fd",
                    })
                    .collect::<Vec<_>>()
                    .join(" and ")
            )),
        }
    }

    /// The inherited descriptor to keep open, if any.
    pub fn inherited_fd(&self) -> Option<RawFd> {
        match self {
            ListenSource::Path(_) => None,
            ListenSource::Fd { fd, .. } => Some(*fd),
        }
    }

    /// The listening socket: bound at the path, or taken over from the descriptor once it is
    /// checked to be a listening Unix stream socket. Call once.
    pub fn listen(&self) -> Result<UnixListener, ServeError> {
        match self {
            ListenSource::Path(p) => bind(p),
            ListenSource::Fd { fd, from } => {
                let fd = *fd;
                check_listening(fd).map_err(|e| ServeError::HandedOver(from.clone(), e))?;
                // SAFETY: `fd` is an open listening Unix socket (checked above) that this
                // process inherited to serve on; nothing else in it owns the descriptor.
                let listener = unsafe { UnixListener::from_raw_fd(fd) };
                // SAFETY: F_SETFD with an integer argument on a descriptor we own.
                unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
                Ok(listener)
            }
        }
    }
}

impl std::fmt::Display for ListenSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ListenSource::Path(p) => write!(f, "{}", p.display()),
            ListenSource::Fd { from, .. } => write!(f, "the socket of {from}"),
        }
    }
}

/// Checks that `fd` is a Unix stream socket in the listening state.
fn check_listening(fd: RawFd) -> Result<(), String> {
    let int_opt = |opt| {
        let mut value: libc::c_int = 0;
        let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: getsockopt writes at most `len` bytes into `value`, which is that big.
        let r = unsafe {
            libc::getsockopt(
                fd,
                libc::SOL_SOCKET,
                opt,
                (&mut value as *mut libc::c_int).cast(),
                &mut len,
            )
        };
        if r == 0 {
            Ok(value)
        } else {
            Err(io::Error::last_os_error())
        }
    };
    let domain = int_opt(libc::SO_DOMAIN).map_err(|e| match e.raw_os_error() {
        Some(libc::EBADF) => "no such open descriptor".to_string(),
        Some(libc::ENOTSOCK) => "not a socket".to_string(),
        _ => e.to_string(),
    })?;
    if domain != libc::AF_UNIX {
        return Err("not a Unix socket".into());
    }
    if int_opt(libc::SO_TYPE).map_err(|e| e.to_string())? != libc::SOCK_STREAM {
        return Err("not a stream socket".into());
    }
    if int_opt(libc::SO_ACCEPTCONN).map_err(|e| e.to_string())? == 0 {
        return Err("not a listening socket".into());
    }
    Ok(())
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

    /// Descriptors of the device's own (not queues') that each queue thread polls: the fd,
    /// the events and the device event id `handle_event` gets (sm-vhost-user-net: passt's
    /// socket). None by default.
    fn own_listeners(&self) -> Vec<(std::os::fd::RawFd, EventSet, u64)> {
        Vec::new()
    }
}

/// Serves frontends on `listener`, one at a time, until an unrecoverable error; each
/// connection gets a fresh device from `new_backend`. `name` names the daemon's threads.
///
/// Call it once the sandbox is entered. It sends `READY=1` once the first device's queue
/// threads run and the socket accepts, a `STATUS=` line as frontends come and go, and feeds
/// the watchdog from the queue threads; a stop signal sends `STOPPING=1`.
pub fn serve<B: ServedBackend>(
    listener: UnixListener,
    name: &str,
    mut new_backend: impl FnMut() -> Result<B, ServeError>,
) -> Result<(), ServeError> {
    let mut listener = Listener::from(listener);
    let setup = |what| move |source| ServeError::Setup { what, source };
    notify::stop_on_signals().map_err(setup("stop signal handlers"))?;
    let mut first = true;
    loop {
        let backend = Arc::new(new_backend()?);
        let mem = GuestMemoryAtomic::new(GuestMemoryMmap::new());
        let mut daemon = VhostUserDaemon::new(name.into(), backend.clone(), mem)
            .map_err(|e| ServeError::Daemon(e.to_string()))?;
        let handlers = daemon.get_epoll_handlers();
        for (fd, events, id) in backend.own_listeners() {
            for handler in &handlers {
                handler
                    .register_listener(fd, events, id)
                    .map_err(setup("the device's own descriptors"))?;
            }
        }
        if let Some(ticks) =
            notify::watchdog_ticks(handlers.len()).map_err(setup("watchdog ticks"))?
        {
            for (handler, fd) in handlers.iter().zip(ticks) {
                handler
                    .register_listener(fd, EventSet::IN, notify::WATCHDOG_EVENT.into())
                    .map_err(setup("watchdog ticks"))?;
            }
        }
        if first {
            notify::ready("waiting for the frontend");
            first = false;
        } else {
            notify::status("frontend disconnected; waiting for the frontend");
        }
        daemon
            .start(&mut listener)
            .map_err(|e| ServeError::Daemon(e.to_string()))?;
        info!("frontend connected");
        notify::status("serving");
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

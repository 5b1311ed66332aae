//! Serving frontends, one connection at a time, each with a fresh device on the same passt
//! link. This is sm-vhost-user-common's serve loop plus one step it has no hook for: passt's
//! socket is registered (edge-triggered) with each connection's worker epoll. A thread
//! watches the socket for passt's end and ends the backend then, with or without a frontend.

use std::os::fd::AsRawFd;
use std::os::unix::net::UnixListener;
use std::sync::Arc;

use sm_vhost_user_common::notify;
use sm_vhost_user_common::serve::ServedBackend;
pub use sm_vhost_user_common::serve::{bind, ServeError};
use tracing::{info, warn};
use vhost::vhost_user::{Error as VhostUserError, Listener};
use vhost_user_backend::VhostUserDaemon;
use vm_memory::{GuestMemoryAtomic, GuestMemoryMmap};
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};

use crate::backend::{Link, NetBackend, PASST_EVENT};
use crate::passt::{self, PasstError};

const NAME: &str = "sm-vhost-user-net";

fn setup(what: &'static str) -> impl Fn(std::io::Error) -> ServeError {
    move |source| ServeError::Setup { what, source }
}

/// Serves frontends on `listener`, one at a time, until an unrecoverable error or passt's
/// end. Call it once the sandbox is entered.
pub fn serve(listener: UnixListener, link: Arc<Link>) -> Result<(), ServeError> {
    watch_passt(link.clone()).map_err(setup("passt watcher"))?;
    let mut listener = Listener::from(listener);
    notify::stop_on_signals().map_err(setup("stop signal handlers"))?;
    let mut first = true;
    loop {
        let backend = Arc::new(NetBackend::new(link.clone()));
        let mem = GuestMemoryAtomic::new(GuestMemoryMmap::new());
        let mut daemon = VhostUserDaemon::new(NAME.into(), backend.clone(), mem)
            .map_err(|e| ServeError::Daemon(e.to_string()))?;
        let handlers = daemon.get_epoll_handlers();
        for handler in &handlers {
            handler
                .register_listener(
                    link.stream().as_raw_fd(),
                    EventSet::IN | EventSet::EDGE_TRIGGERED,
                    PASST_EVENT.into(),
                )
                .map_err(setup("passt's socket in the queue thread"))?;
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
        // Dropping the daemon stops and joins its queue thread before the next frontend.
        drop(daemon);
        backend.queue_state().exit_events().close_all();
    }
}

/// A thread that ends the backend when passt closes its end of the socket.
fn watch_passt(link: Arc<Link>) -> std::io::Result<()> {
    let epoll = Epoll::new()?;
    epoll.ctl(
        ControlOperation::Add,
        link.stream().as_raw_fd(),
        EpollEvent::new(EventSet::READ_HANG_UP, 0),
    )?;
    std::thread::Builder::new()
        .name("passt-watch".into())
        .spawn(move || {
            let mut events = [EpollEvent::default(); 1];
            loop {
                match epoll.wait(-1, &mut events) {
                    Ok(n) if n > 0 => passt::gone(&PasstError::Closed),
                    Ok(_) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(e) => {
                        warn!("cannot watch passt's socket: {e}");
                        return;
                    }
                }
                // Keep `link` (and so the socket) alive as long as the watch.
                let _ = &link;
            }
        })?;
    Ok(())
}

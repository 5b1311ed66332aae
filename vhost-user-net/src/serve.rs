//! Serving frontends, one connection at a time, each with a fresh device on the same passt
//! link (sm-vhost-user-common's serve loop; the device registers passt's socket with each
//! connection's queue thread). A thread watches the socket for passt's end and ends the
//! backend then, with or without a frontend.

use std::os::fd::AsRawFd;
use std::os::unix::net::UnixListener;
use std::sync::Arc;

pub use sm_vhost_user_common::serve::{bind, ServeError};
use tracing::warn;
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};

use crate::backend::{Link, NetBackend};
use crate::passt::{self, PasstError};

const NAME: &str = "sm-vhost-user-net";

/// Serves frontends on `listener`, one at a time, until an unrecoverable error or passt's
/// end. Call it once the sandbox is entered.
pub fn serve(listener: UnixListener, link: Arc<Link>) -> Result<(), ServeError> {
    watch_passt(link.clone()).map_err(|source| ServeError::Setup {
        what: "passt watcher",
        source,
    })?;
    sm_vhost_user_common::serve::serve(listener, NAME, || Ok(NetBackend::new(link.clone())))
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

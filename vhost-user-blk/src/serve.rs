//! The vhost-user socket: binding it (before the sandbox, so frontends can connect at once)
//! and serving frontends one connection at a time, each with fresh device state. The loop
//! itself is sm-vhost-user-common's.

use std::os::unix::net::UnixListener;
use std::sync::Arc;

pub use sm_vhost_user_common::serve::{bind, ServeError};

use crate::backend::BlkBackend;
use crate::image::Image;

/// Serves frontends on `listener`, one at a time, until an unrecoverable error.
pub fn serve(listener: UnixListener, image: Arc<Image>, num_queues: u16) -> Result<(), ServeError> {
    sm_vhost_user_common::serve::serve(listener, "sm-vhost-user-blk", || {
        Ok(BlkBackend::new(image.clone(), num_queues))
    })
}

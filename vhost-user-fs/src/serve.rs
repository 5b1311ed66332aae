//! The vhost-user socket: binding it (before the sandbox, so frontends can connect at once)
//! and serving frontends one connection at a time, each with a fresh file system state. The
//! loop itself is sm-vhost-user-common's.

use std::os::fd::OwnedFd;
use std::os::unix::net::UnixListener;
use std::sync::Arc;

pub use sm_vhost_user_common::serve::{bind, ServeError};
use tracing::{info, warn};

use crate::backend::FsBackend;
use crate::config::DeviceConfig;
use crate::fs::{FsConfig, SharedFs};
use crate::idmap::IdMaps;
use crate::journal::{Journal, Tables};
use crate::sys::ProcFds;
use crate::watch::Watcher;

/// What every connection's file system is built from.
pub struct Share {
    /// `O_PATH` descriptor of the shared directory.
    pub root: OwnedFd,
    /// This process's `/proc/self/fd`.
    pub proc: ProcFds,
    /// The file system's behaviour.
    pub fs: FsConfig,
    /// Guest/host ID translation.
    pub ids: IdMaps,
    /// What the device announces.
    pub device: DeviceConfig,
    /// Worker threads for the request queue (0: none).
    pub pool_size: usize,
    /// Watch host directories with inotify (needs `/proc/self/fd` in this process's view).
    pub watch: bool,
    /// `--state-fd`: the crash journal, and the tables it held at start.
    pub journal: Option<(Arc<Journal>, Tables)>,
}

/// Serves frontends on `listener`, one at a time, until an unrecoverable error.
pub fn serve(listener: UnixListener, mut share: Share) -> Result<(), ServeError> {
    // Only the first frontend can be the crashed backend's: a later one starts a new session.
    let mut recovered = share
        .journal
        .as_mut()
        .map(|(_, t)| std::mem::take(t))
        .filter(|t| t.options.is_some());
    let root_err = |source| ServeError::Setup {
        what: "shared directory",
        source,
    };
    sm_vhost_user_common::serve::serve(listener, "sm-vhost-user-fs", || {
        let fs = SharedFs::new(
            share.root.try_clone().map_err(root_err)?,
            share.proc.try_clone().map_err(root_err)?,
            share.fs,
        )
        .map_err(root_err)?
        .with_id_maps(share.ids.clone());
        let fs = match share.watch.then(Watcher::new) {
            Some(Ok(w)) => fs.with_watcher(w),
            Some(Err(e)) => {
                warn!("no inotify ({e}): symlink checks walk the tree every time");
                fs
            }
            None => fs,
        };
        let fs = match &share.journal {
            Some((journal, _)) => fs.with_journal(journal.clone()),
            None => fs,
        };
        if let Some(tables) = recovered.take() {
            let (nodes, handles) = (tables.nodes.len(), tables.handles.len());
            let (lost_nodes, lost_handles) = fs.recover(&tables).map_err(|e| {
                ServeError::Daemon(format!(
                    "cannot take over the guest's files from the state journal: {e}"
                ))
            })?;
            info!(
                "took over {} nodes and {} open files from the state journal ({lost_nodes} nodes and {lost_handles} files could not be reopened)",
                nodes - lost_nodes,
                handles - lost_handles
            );
        }
        FsBackend::new(Arc::new(fs), share.device.clone(), share.pool_size)
            .map_err(|e| ServeError::Daemon(format!("cannot start worker threads: {e}")))
    })
}

//! The DAX window: virtio-fs shared memory region 0, into which the guest asks (FUSE
//! SETUPMAPPING / REMOVEMAPPING) for file ranges to be mapped so it reads and writes the
//! host's page cache directly. The backend cannot map into the guest itself; it sends the
//! file descriptor and the range to the frontend (vhost-user SHMEM_MAP / SHMEM_UNMAP on the
//! backend-request channel), which maps it over its reservation for the window.

use std::io;
use std::os::fd::RawFd;
use std::sync::{Arc, Mutex};

use fuse_backend_rs::abi::virtio_fs::{RemovemappingOne, SetupmappingFlags};
use fuse_backend_rs::transport::FsCacheReqHandler;
use tracing::warn;
use vhost::vhost_user::message::{VhostUserMMap, VhostUserMMapFlags, VhostUserShMemConfig};
use vhost::vhost_user::{Backend, VhostUserFrontendReqHandler};

/// Shared memory region ID of the virtio-fs DAX window (`VIRTIO_FS_SHMCAP_ID_CACHE`).
pub const DAX_SHMID: u8 = 0;
/// Granule the Linux driver maps in (`FUSE_DAX_SZ`); the window is a multiple of it.
pub const DAX_GRANULE: u64 = 2 << 20;

/// The window's size and, once the frontend has opened it, the channel map requests go
/// through. Shared by every queue thread.
#[derive(Clone)]
pub struct DaxWindow {
    size: u64,
    channel: Arc<Mutex<Option<Backend>>>,
}

impl DaxWindow {
    /// A window of `size` bytes (a multiple of [`DAX_GRANULE`]) with no channel yet.
    pub fn new(size: u64) -> DaxWindow {
        DaxWindow {
            size,
            channel: Arc::new(Mutex::new(None)),
        }
    }

    /// The region sizes for GET_SHMEM_CONFIG: one region, the window.
    pub fn shmem_config(&self) -> VhostUserShMemConfig {
        VhostUserShMemConfig::new(1, &[self.size])
    }

    /// Keeps the frontend's backend-request channel (SET_BACKEND_REQ_FD).
    pub fn set_channel(&self, backend: Backend) {
        *self.channel.lock().unwrap_or_else(|e| e.into_inner()) = Some(backend);
    }

    /// A handle for one FUSE request, or `None` while no frontend channel is open (the
    /// guest then gets EINVAL for SETUPMAPPING, as without a window).
    pub fn mapper(&self) -> Option<DaxMapper> {
        let channel = self.channel.lock().unwrap_or_else(|e| e.into_inner());
        channel.clone().map(|backend| DaxMapper {
            backend,
            size: self.size,
        })
    }
}

/// Forwards one request's map and unmap calls to the frontend.
pub struct DaxMapper {
    backend: Backend,
    size: u64,
}

impl DaxMapper {
    /// EINVAL unless `[moffset, moffset + len)` lies in the window.
    fn check(&self, moffset: u64, len: u64) -> io::Result<()> {
        match moffset.checked_add(len) {
            Some(end) if len > 0 && end <= self.size => Ok(()),
            _ => Err(io::Error::from_raw_os_error(libc::EINVAL)),
        }
    }

    fn frontend_error(what: &str, e: io::Error) -> io::Error {
        warn!("the frontend refused {what}: {e}");
        io::Error::from_raw_os_error(libc::EIO)
    }
}

impl FsCacheReqHandler for DaxMapper {
    fn map(
        &mut self,
        foffset: u64,
        moffset: u64,
        len: u64,
        flags: u64,
        fd: RawFd,
    ) -> io::Result<()> {
        self.check(moffset, len)?;
        let flags = if wants_write(flags) {
            VhostUserMMapFlags::WRITABLE
        } else {
            VhostUserMMapFlags::empty()
        };
        let req = VhostUserMMap {
            shmid: DAX_SHMID,
            fd_offset: foffset,
            shm_offset: moffset,
            len,
            flags: flags.bits(),
            ..Default::default()
        };
        self.backend
            .shmem_map(&req, &fd)
            .map(drop)
            .map_err(|e| Self::frontend_error("SHMEM_MAP", e))
    }

    fn unmap(&mut self, requests: Vec<RemovemappingOne>) -> io::Result<()> {
        for r in requests {
            // The driver may name the whole window from an offset with an all-ones length.
            let len = if r.len == u64::MAX {
                self.size.saturating_sub(r.moffset)
            } else {
                r.len
            };
            self.check(r.moffset, len)?;
            let req = VhostUserMMap {
                shmid: DAX_SHMID,
                shm_offset: r.moffset,
                len,
                ..Default::default()
            };
            self.backend
                .shmem_unmap(&req)
                .map_err(|e| Self::frontend_error("SHMEM_UNMAP", e))?;
        }
        Ok(())
    }
}

/// Whether a SETUPMAPPING asks for a writable mapping.
pub fn wants_write(flags: u64) -> bool {
    SetupmappingFlags::from_bits_truncate(flags).contains(SetupmappingFlags::WRITE)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixStream;
    use std::sync::mpsc;
    use vhost::vhost_user::{FrontendReqHandler, HandlerResult, VhostUserFrontendReqHandler};

    /// A frontend that records the (offset, length, flags) of each map and unmap.
    struct Recorder(Mutex<mpsc::Sender<(&'static str, u64, u64, u64)>>);

    impl VhostUserFrontendReqHandler for Recorder {
        fn shmem_map(
            &self,
            req: &VhostUserMMap,
            _fd: &dyn std::os::fd::AsRawFd,
        ) -> HandlerResult<u64> {
            let (o, l, f) = (req.shm_offset, req.len, req.flags);
            self.0.lock().unwrap().send(("map", o, l, f)).unwrap();
            Ok(0)
        }
        fn shmem_unmap(&self, req: &VhostUserMMap) -> HandlerResult<u64> {
            let (o, l) = (req.shm_offset, req.len);
            self.0.lock().unwrap().send(("unmap", o, l, 0)).unwrap();
            Ok(0)
        }
    }

    #[test]
    fn requests_inside_the_window_reach_the_frontend_and_others_do_not() {
        let (tx, rx) = mpsc::channel();
        let mut frontend = FrontendReqHandler::new(Arc::new(Recorder(Mutex::new(tx)))).unwrap();
        let ours = UnixStream::from(
            // SAFETY: the handler's socket stays open while `frontend` lives (this test).
            unsafe { std::os::fd::BorrowedFd::borrow_raw(frontend.get_tx_raw_fd()) }
                .try_clone_to_owned()
                .unwrap(),
        );
        std::thread::spawn(move || while frontend.handle_request().is_ok() {});
        let backend = Backend::from_stream(ours);
        backend.set_shmem_flag(true);
        let window = DaxWindow::new(8 * DAX_GRANULE);
        assert_eq!(window.shmem_config().memory_sizes[0], 8 * DAX_GRANULE);
        assert!(window.mapper().is_none(), "no channel yet");
        window.set_channel(backend);
        let mut m = window.mapper().unwrap();
        let file = tempfile::tempfile().unwrap();
        let fd = std::os::fd::AsRawFd::as_raw_fd(&file);
        let read_write = SetupmappingFlags::READ | SetupmappingFlags::WRITE;
        m.map(0, 2 * DAX_GRANULE, DAX_GRANULE, read_write.bits(), fd)
            .unwrap();
        assert_eq!(rx.recv().unwrap(), ("map", 2 * DAX_GRANULE, DAX_GRANULE, 1));
        m.map(0, 0, DAX_GRANULE, SetupmappingFlags::READ.bits(), fd)
            .unwrap();
        assert_eq!(rx.recv().unwrap(), ("map", 0, DAX_GRANULE, 0), "read-only");
        for (moffset, len) in [(7 * DAX_GRANULE, 2 * DAX_GRANULE), (u64::MAX, 2), (0, 0)] {
            let e = m
                .map(0, moffset, len, SetupmappingFlags::READ.bits(), fd)
                .unwrap_err();
            assert_eq!(
                e.raw_os_error(),
                Some(libc::EINVAL),
                "{moffset:#x}+{len:#x}"
            );
        }
        let whole = RemovemappingOne {
            moffset: DAX_GRANULE,
            len: u64::MAX,
        };
        m.unmap(vec![whole]).unwrap();
        assert_eq!(
            rx.recv().unwrap(),
            ("unmap", DAX_GRANULE, 7 * DAX_GRANULE, 0)
        );
        let outside = RemovemappingOne {
            moffset: 8 * DAX_GRANULE,
            len: DAX_GRANULE,
        };
        assert!(m.unmap(vec![outside]).is_err());
        assert!(rx.try_recv().is_err(), "nothing out of range was forwarded");
    }
}

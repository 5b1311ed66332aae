//! Device state transfer over vhost-user (`VHOST_USER_PROTOCOL_F_DEVICE_STATE`): the
//! plumbing both backends share for SET_DEVICE_STATE_FD and CHECK_DEVICE_STATE.
//!
//! SAVE runs the device's `save` on a thread, writes the bytes to the frontend's pipe and
//! closes it; LOAD reads the pipe to EOF on a thread and hands the bytes to `load`. The
//! vhost-user message handler never blocks on the pipe. CHECK_DEVICE_STATE waits for that
//! thread and reports its outcome; a failure is logged as one line naming the cause (the
//! protocol carries only "failed" to the frontend).

use std::fs::File;
use std::io::{self, Read, Write};
use std::sync::Mutex;
use std::thread::JoinHandle;

use tracing::{error, info, warn};
use vhost::vhost_user::message::{VhostTransferStateDirection, VhostTransferStatePhase};

/// The outcome of one transfer, as one line.
type Outcome = Result<(), String>;

/// The state transfer of one device: at most one running at a time.
#[derive(Debug, Default)]
pub struct StateTransfer {
    last: Mutex<Option<JoinHandle<Outcome>>>,
}

impl StateTransfer {
    /// No transfer yet.
    pub fn new() -> StateTransfer {
        StateTransfer::default()
    }

    /// The answer to SET_DEVICE_STATE_FD: starts a SAVE (`save` produces the bytes) or a
    /// LOAD (`load` takes them) on `file` in the background. Only the STOPPED phase exists.
    pub fn start<S, L, E>(
        &self,
        direction: VhostTransferStateDirection,
        phase: VhostTransferStatePhase,
        file: File,
        save: S,
        load: L,
    ) -> io::Result<Option<File>>
    where
        S: FnOnce() -> Result<Vec<u8>, E> + Send + 'static,
        L: FnOnce(Vec<u8>) -> Result<(), E> + Send + 'static,
        E: std::fmt::Display,
    {
        if phase != VhostTransferStatePhase::STOPPED {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                format!("state transfer phase {phase:?} is not supported"),
            ));
        }
        let work: Box<dyn FnOnce() -> Outcome + Send> = match direction {
            VhostTransferStateDirection::SAVE => Box::new(move || {
                let bytes = save().map_err(|e| format!("cannot save the device state: {e}"))?;
                write_all(file, &bytes)
                    .map_err(|e| format!("cannot write the device state: {e}"))?;
                info!("device state saved ({} bytes)", bytes.len());
                Ok(())
            }),
            VhostTransferStateDirection::LOAD => Box::new(move || {
                let bytes =
                    read_all(file).map_err(|e| format!("cannot read the device state: {e}"))?;
                let len = bytes.len();
                load(bytes).map_err(|e| format!("cannot load the device state: {e}"))?;
                info!("device state loaded ({len} bytes)");
                Ok(())
            }),
        };
        let handle = std::thread::Builder::new()
            .name("state-transfer".into())
            .spawn(work)?;
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        if last.replace(handle).is_some() {
            warn!("a new state transfer started before the last one was checked");
        }
        Ok(None)
    }

    /// The answer to CHECK_DEVICE_STATE: waits for the last transfer and reports whether it
    /// succeeded (an error when none was started).
    pub fn check(&self) -> io::Result<()> {
        let handle = self.last.lock().unwrap_or_else(|e| e.into_inner()).take();
        let outcome = match handle {
            None => Err("no device state transfer was started".to_owned()),
            Some(h) => h
                .join()
                .unwrap_or_else(|_| Err("the state transfer thread panicked".to_owned())),
        };
        outcome.map_err(|e| {
            error!("{e}");
            io::Error::other(e)
        })
    }
}

/// Writes `bytes` to the pipe and closes it (EOF for the frontend).
fn write_all(mut file: File, bytes: &[u8]) -> io::Result<()> {
    file.write_all(bytes)?;
    file.flush()
}

/// Reads the pipe until the frontend closes its end.
fn read_all(mut file: File) -> io::Result<Vec<u8>> {
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes)?;
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pipe() -> (File, File) {
        let mut fds = [0; 2];
        // SAFETY: pipe2 writes two new descriptors into `fds`; the result is checked.
        assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
        // SAFETY: both descriptors are new and owned by nothing else.
        unsafe {
            use std::os::fd::FromRawFd;
            (File::from_raw_fd(fds[0]), File::from_raw_fd(fds[1]))
        }
    }

    const STOPPED: VhostTransferStatePhase = VhostTransferStatePhase::STOPPED;

    /// SAVE writes the bytes and closes the pipe; LOAD gets them back; a failing load is
    /// reported by `check` with its message; `check` without a transfer fails.
    #[test]
    fn save_then_load_then_errors() {
        let t = StateTransfer::new();
        assert!(t.check().is_err(), "check without a transfer");
        let (mut r, w) = pipe();
        let save = || Ok::<_, String>(b"state".to_vec());
        let never = |_: Vec<u8>| -> Result<(), String> { unreachable!() };
        t.start(VhostTransferStateDirection::SAVE, STOPPED, w, save, never)
            .unwrap();
        let mut got = Vec::new();
        r.read_to_end(&mut got).unwrap();
        assert_eq!(got, b"state");
        t.check().unwrap();

        let (r, mut w) = pipe();
        let (tx, rx) = std::sync::mpsc::channel();
        let load = move |b: Vec<u8>| {
            tx.send(b).unwrap();
            Err::<(), _>("bad blob".to_owned())
        };
        let none = || -> Result<Vec<u8>, String> { unreachable!() };
        t.start(VhostTransferStateDirection::LOAD, STOPPED, r, none, load)
            .unwrap();
        w.write_all(b"loaded").unwrap();
        drop(w);
        let err = t.check().unwrap_err().to_string();
        assert_eq!(err, "cannot load the device state: bad blob");
        assert_eq!(rx.recv().unwrap(), b"loaded");
    }
}

//! Exit statuses of the agent's commands. PID 1 reaps every process (orphans included), so
//! a command the agent starts registers its PID while the registry is locked across the
//! spawn; the reaper then hands that PID's status over instead of dropping it.
//!
//! PID 1 only reaps with the registry locked, too: a spawn whose exec fails reaps that child
//! itself (std does, and panics if the child is already gone, which would take PID 1 down),
//! so PID 1 first peeks at an exited child without reaping it (`WNOWAIT`), then takes the
//! lock and reaps it only if it is still there.

use std::collections::HashMap;
use std::io;
use std::process::{Child, Command};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Mutex, MutexGuard};

use nix::errno::Errno;
use nix::sys::wait::{waitid, waitpid, Id, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

static WAITERS: Mutex<Option<HashMap<i32, Sender<WaitStatus>>>> = Mutex::new(None);

fn waiters() -> MutexGuard<'static, Option<HashMap<i32, Sender<WaitStatus>>>> {
    WAITERS.lock().unwrap_or_else(|e| e.into_inner())
}

/// Spawns `cmd` and returns it with a receiver for its exit status (never `Child::wait` it:
/// PID 1's reaper collects the status and sends it here).
pub fn spawn(cmd: &mut Command) -> io::Result<(Child, Receiver<WaitStatus>)> {
    // Held across spawn: the reaper cannot look the PID up before it is registered.
    let mut map = waiters();
    let child = cmd.spawn()?;
    let (tx, rx) = channel();
    map.get_or_insert_with(HashMap::new)
        .insert(child.id() as i32, tx);
    Ok((child, rx))
}

/// Waits for any child to exit and reaps it; returns its status, having handed it to
/// whoever registered its PID (an orphan's goes nowhere else). `Ok(None)` when the child was
/// reaped by its own spawn in the meantime.
pub fn reap_next() -> nix::Result<Option<WaitStatus>> {
    let peeked = waitid(Id::All, WaitPidFlag::WEXITED | WaitPidFlag::WNOWAIT)?;
    let Some(pid) = peeked.pid() else {
        return Ok(None);
    };
    let mut map = waiters();
    let status = match waitpid(Pid::from_raw(pid.as_raw()), Some(WaitPidFlag::WNOHANG)) {
        Ok(WaitStatus::StillAlive) | Err(Errno::ECHILD) => return Ok(None),
        Ok(status) => status,
        Err(e) => return Err(e),
    };
    if let Some(tx) = map.as_mut().and_then(|m| m.remove(&pid.as_raw())) {
        let _ = tx.send(status);
    }
    Ok(Some(status))
}

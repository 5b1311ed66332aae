//! Exit statuses of the agent's commands. PID 1 reaps every process (orphans included), so
//! a command the agent starts registers its PID while the registry is locked across the
//! spawn; the reaper then hands that PID's status over instead of dropping it.

use std::collections::HashMap;
use std::io;
use std::process::{Child, Command};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Mutex, MutexGuard};

use nix::sys::wait::WaitStatus;

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

/// Hands a reaped process's status to whoever registered it (an orphan's is dropped).
pub fn dispatch(status: WaitStatus) {
    let Some(pid) = status.pid() else { return };
    let tx = waiters().as_mut().and_then(|m| m.remove(&pid.as_raw()));
    if let Some(tx) = tx {
        let _ = tx.send(status);
    }
}

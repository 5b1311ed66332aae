//! `sm upgrade NAME`: a planned restart of a running VM's file system and volume backends,
//! one at a time, so each comes back on its binary as it now is on disk.
//!
//! For each backend: the VM is paused (through sm-vmm's API), sm waits until the backend's
//! device has no request in flight (`GET /vm` reads the rings), stops the backend's process
//! group with SIGTERM, and resumes the VM as soon as the group is gone. The supervisor
//! starts the backend again on the same socket (a file system backend with the journal sm
//! keeps: it takes over the guest's node IDs and open files), and sm-vmm replays the device
//! from the used index. So nothing the guest asked for runs twice or fails: its requests
//! made meanwhile wait in their rings, as across a crash, minus the crash's one request that
//! may have been cut in half. The vsock and network backends are left alone (a new one
//! would reset the guest's connections).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use sm::vm::layout::API_SOCKET;
use sm::vm::process::wait_group_gone;
use sm::vm::runtime_root;
use sm::vm::service::State;
use sm::vm::supervisor::ProcessInfo;
use sm_snapshot::api::ApiClient;
use sm_vmm::api::{DeviceStatus, VmStatus};

/// How long a device may take to finish its requests in flight.
const DRAIN_LIMIT: Duration = Duration::from_secs(10);
/// How long a stopped backend's process group may take to go.
const STOP_LIMIT: Duration = Duration::from_secs(10);
/// How long the supervisor may take to have the backend ready again.
const READY_LIMIT: Duration = Duration::from_secs(30);

/// `sm upgrade` flags.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The running VM's name.
    pub name: String,
}

/// Restarts each file system and volume backend; prints one line per backend.
pub fn run(a: Args) -> Result<(), String> {
    let rundir = runtime_root().join(&a.name);
    crate::detach::supervisor(&rundir).ok_or(format!("no running VM named {}", a.name))?;
    let api = ApiClient::new(rundir.join(API_SOCKET));
    let devices = devices(&api)?;
    let backends: Vec<(ProcessInfo, PathBuf)> = crate::detach::processes(&rundir)
        .into_iter()
        .filter_map(|p| {
            let socket = p.socket.clone()?;
            let d = devices.iter().find(|d| same_socket(d, &socket))?;
            (d.kind == "fs" || d.kind == "block").then_some((p, socket))
        })
        .collect();
    if backends.is_empty() {
        return Err(format!("{} has no file system or volume backend", a.name));
    }
    for (p, socket) in backends {
        let paused = restart(&api, &rundir, &p, &socket)?;
        println!(
            "{}: restarted (the VM paused {} ms)",
            p.name,
            paused.as_millis()
        );
    }
    Ok(())
}

/// Each device as `GET /vm` lists it.
fn devices(api: &ApiClient) -> Result<Vec<DeviceStatus>, String> {
    let status = api.status().map_err(|e| e.to_string())?;
    let status: VmStatus = serde_json::from_value(status)
        .map_err(|e| format!("{}: GET /vm: {e}", api.socket().display()))?;
    Ok(status.devices)
}

/// Whether `d`'s backend serves `socket`.
fn same_socket(d: &DeviceStatus, socket: &Path) -> bool {
    d.socket.as_deref().map(Path::new) == Some(socket)
}

/// The supervisor's record of the process named `name`, once `done` holds for it; an error
/// (`name` then `late`) after [`READY_LIMIT`], or at once when `failed` says so.
fn wait_for_process(
    rundir: &Path,
    name: &str,
    late: &str,
    done: impl Fn(&ProcessInfo) -> bool,
    failed: impl Fn(Option<&ProcessInfo>) -> Option<String>,
) -> Result<ProcessInfo, String> {
    let start = Instant::now();
    loop {
        let now = crate::detach::processes(rundir)
            .into_iter()
            .find(|q| q.name == name);
        match now {
            Some(q) if done(&q) => return Ok(q),
            now => {
                if let Some(e) = failed(now.as_ref()) {
                    return Err(e);
                }
            }
        }
        if start.elapsed() > READY_LIMIT {
            return Err(format!("{name} {late}"));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// One backend's planned restart; returns how long the VM was paused.
fn restart(
    api: &ApiClient,
    rundir: &Path,
    p: &ProcessInfo,
    socket: &Path,
) -> Result<Duration, String> {
    let running = |q: &ProcessInfo| q.state == State::Running && q.pid.is_some();
    // A backend that is starting (after a crash, say) is waited for.
    let now = wait_for_process(rundir, &p.name, "is not running", running, |_| None)?;
    let pid = now.pid.unwrap_or_default();
    api.pause().map_err(|e| e.to_string())?;
    let paused = Instant::now();
    let stopped = drain_and_stop(api, p, socket, Pid::from_raw(pid));
    let resumed = api.resume().map_err(|e| e.to_string());
    let paused = paused.elapsed();
    stopped?;
    resumed?;
    let late = format!("was not ready again within {READY_LIMIT:?}");
    wait_for_process(
        rundir,
        &p.name,
        &late,
        |q| running(q) && q.pid != Some(pid),
        |q| match q {
            None => Some(format!("{} is gone (the VM stopped?)", p.name)),
            Some(q) if q.state == State::Failed => Some(format!(
                "{} did not come back: {}",
                p.name,
                q.last_exit.clone().unwrap_or_default()
            )),
            Some(_) => None,
        },
    )?;
    Ok(paused)
}

/// With the VM paused: waits until the device on `socket` has nothing in flight, then
/// stops the backend's process group `pgid`.
fn drain_and_stop(
    api: &ApiClient,
    p: &ProcessInfo,
    socket: &Path,
    pgid: Pid,
) -> Result<(), String> {
    let start = Instant::now();
    loop {
        let in_flight = devices(api)?
            .iter()
            .find(|d| same_socket(d, socket))
            .map_or(0, |d| d.in_flight);
        if in_flight == 0 {
            break;
        }
        if start.elapsed() > DRAIN_LIMIT {
            return Err(format!(
                "{}: {in_flight} requests still in flight after {DRAIN_LIMIT:?}; not restarted",
                p.name
            ));
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    killpg(pgid, Signal::SIGTERM).map_err(|e| format!("{}: cannot stop it: {e}", p.name))?;
    if !wait_group_gone(pgid, STOP_LIMIT) {
        let _ = killpg(pgid, Signal::SIGKILL);
        return Err(format!(
            "{} did not stop within {STOP_LIMIT:?} of SIGTERM; killed",
            p.name
        ));
    }
    Ok(())
}

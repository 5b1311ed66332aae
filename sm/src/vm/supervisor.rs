//! sm as the service manager of one VM's backends: each is started with the socket sm bound
//! for it and waited for until ready ([`Supervisor::start`]); then a thread, `sm-supervisor`,
//! restarts one that exits or misses its watchdog (its process group killed and gone first),
//! with backoff and a burst limit ([`RestartPolicy`]). When it gives up it stores one line
//! ([`Supervisor::failure`]) and stops sm-vmm. Every change is written to
//! `<dir>/processes.json` for `sm ps`. The thread sleeps in poll(2) until a backend
//! notifies or exits, a deadline passes, or the owner wakes it: an idle VM costs no wake-ups.

use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};

use super::process::ProcessError;
use super::restart::{Decision, RestartPolicy};
use super::service::{Event, Failure, Service, ServiceSpec, State, UNWATCHED_LOOK};

/// The file `sm ps` reads, in the VM's runtime directory.
pub const PROCESSES_FILE: &str = "processes.json";

/// A look this much later than due means sm itself was not running.
const LATE: Duration = Duration::from_secs(1);

/// One process of a VM, as `sm ps` shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessInfo {
    /// What it is (`sm-vmm`, `volume ./pg.img`).
    pub name: String,
    /// Its current run's process ID.
    pub pid: Option<i32>,
    /// Its state.
    pub state: State,
    /// How often it was started again.
    pub restarts: u32,
    /// How its last run ended.
    pub last_exit: Option<String>,
    /// When (seconds since the Unix epoch).
    pub last_exit_at: Option<u64>,
    /// Its last `STATUS=` line.
    pub status: Option<String>,
    /// The vhost-user socket it serves (a backend).
    #[serde(default)]
    pub socket: Option<PathBuf>,
}

/// What the thread and the [`Supervisor`]'s owner share.
struct Shared {
    dir: PathBuf,
    services: Mutex<Vec<Service>>,
    stopping: AtomicBool,
    vmm: AtomicI32,
    failure: Mutex<Option<String>>,
    policy: RestartPolicy,
    watchdog: Duration,
}

/// The backends of one VM.
pub struct Supervisor {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
    /// The owner's end of the thread's wake-up socket.
    wake: Option<UnixDatagram>,
}

impl Supervisor {
    /// A supervisor with no backend yet, for the VM whose runtime directory is `dir`;
    /// `watchdog` is the interval asked of each backend that speaks sd_notify (zero: off).
    pub fn new(dir: &Path, watchdog: Duration) -> Supervisor {
        Supervisor {
            shared: Arc::new(Shared {
                dir: dir.to_owned(),
                services: Mutex::new(vec![]),
                stopping: AtomicBool::new(false),
                vmm: AtomicI32::new(0),
                failure: Mutex::new(None),
                policy: RestartPolicy::default(),
                watchdog,
            }),
            thread: None,
            wake: None,
        }
    }

    /// Starts `spec`'s backend and waits until it is ready (an exit first, or no readiness
    /// within 30 s, is an error; it is then kept for [`Supervisor::stop`] to clean up).
    pub fn start(&self, spec: ServiceSpec) -> Result<(), ProcessError> {
        self.start_all(vec![spec])
    }

    /// Starts every backend of `specs` at once and waits until all are ready: their
    /// start-ups (sandbox, namespaces, passt) overlap instead of adding up. The first
    /// failure is the error; every backend started is kept for [`Supervisor::stop`].
    pub fn start_all(&self, specs: Vec<ServiceSpec>) -> Result<(), ProcessError> {
        let index = self.shared.lock().len();
        let mut services = Vec::with_capacity(specs.len());
        for (i, spec) in specs.into_iter().enumerate() {
            services.push(Service::new(
                spec,
                &self.shared.dir,
                index + i,
                self.shared.watchdog,
            )?);
        }
        let mut result = Ok(());
        let mut waiting = Vec::with_capacity(services.len());
        for (i, svc) in services.iter_mut().enumerate() {
            crate::trace::step(format_args!("starting {}", svc.name()));
            match svc.spawn() {
                Ok(()) => waiting.push(i),
                Err(e) => {
                    result = Err(e);
                    break;
                }
            }
        }
        while !waiting.is_empty() {
            waiting.retain(|&i| {
                let svc = &mut services[i];
                match svc.check(Instant::now()) {
                    Some(Event::Ready) => false,
                    Some(Event::Failed(f)) => {
                        let e = start_error(svc, f);
                        if result.is_ok() {
                            result = Err(e);
                        }
                        false
                    }
                    _ => true,
                }
            });
            if result.is_err() {
                break;
            }
            if !waiting.is_empty() {
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        self.shared.lock().extend(services);
        self.shared.publish();
        self.wake();
        result
    }

    /// Starts the thread that restarts failed backends.
    pub fn watch(&mut self) -> std::io::Result<()> {
        if self.thread.is_none() {
            let (wake, woken) = UnixDatagram::pair()?;
            wake.set_nonblocking(true)?;
            woken.set_nonblocking(true)?;
            let shared = self.shared.clone();
            self.thread = Some(
                std::thread::Builder::new()
                    .name("sm-supervisor".into())
                    .spawn(move || shared.run(&woken))?,
            );
            self.wake = Some(wake);
        }
        Ok(())
    }

    /// sm-vmm's process ID: what a give-up stops.
    pub fn set_vmm(&self, pid: i32) {
        self.shared.vmm.store(pid, Ordering::SeqCst);
        self.shared.publish();
    }

    /// The line saying why the supervisor gave up, if it did.
    pub fn failure(&self) -> Option<String> {
        self.shared.failure_line()
    }

    /// Every process: sm-vmm (once set) and each backend.
    pub fn processes(&self) -> Vec<ProcessInfo> {
        self.shared.processes()
    }

    /// No restarts from now on (the VM stops).
    pub fn stopping(&self) {
        self.shared.stopping.store(true, Ordering::SeqCst);
        self.wake();
    }

    /// Makes the thread look again (a full queue means it has a wake-up pending already).
    fn wake(&self) {
        if let Some(w) = &self.wake {
            let _ = w.send(&[0]);
        }
    }

    /// Stops every backend, newest first: SIGTERM to its process group, 2 s, SIGKILL,
    /// until the group is gone.
    pub fn stop(&mut self) {
        self.stopping();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let mut services = self.shared.lock();
        for svc in services.iter_mut().rev() {
            svc.stop(Duration::from_secs(2));
        }
        drop(services);
        self.shared.publish();
    }
}

impl Drop for Supervisor {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The error of a first start that failed; the process is gone afterwards.
fn start_error(svc: &mut Service, f: Failure) -> ProcessError {
    let name = svc.name().to_owned();
    svc.kill(&f);
    svc.state = State::Failed;
    match f {
        Failure::Exited(status, log) => ProcessError::Died { name, status, log },
        Failure::NotReady => ProcessError::Timeout(name, super::service::READY_TIMEOUT),
        other => ProcessError::Spawn(name, std::io::Error::other(other.to_string())),
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Vec<Service>> {
        self.services.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn failure_line(&self) -> Option<String> {
        self.failure
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The thread: looks at each backend's notifications and process whenever [`Shared::wait`]
    /// returns.
    fn run(&self, woken: &UnixDatagram) {
        let mut last = Instant::now();
        let mut due: Option<Instant> = None;
        while !self.stopping.load(Ordering::SeqCst) {
            let changed = {
                let mut services = self.lock();
                let mut changed = false;
                // Waking up long after the deadline asked for means this thread was not
                // running either: deadlines that passed meanwhile say nothing about the
                // backends.
                let gap = last.elapsed();
                if due.is_some_and(|d| d.elapsed() > LATE) {
                    services.iter_mut().for_each(|s| s.postpone(gap));
                }
                for svc in services.iter_mut() {
                    changed |= self.step(svc, Instant::now());
                }
                changed
            };
            if changed {
                self.publish();
            }
            last = Instant::now();
            due = self.wait(woken);
        }
    }

    /// Blocks until a backend notifies or exits, `woken` is written to, or the earliest
    /// deadline passes; returns that deadline.
    fn wait(&self, woken: &UnixDatagram) -> Option<Instant> {
        let (fds, due) = {
            let services = self.lock();
            let now = Instant::now();
            let mut due = services.iter().filter_map(|s| s.deadline(now)).min();
            // Copies, so that the lock is not held while blocked (`sm ps`, a new backend).
            let fds = services
                .iter()
                .flat_map(Service::wait_fds)
                .map(|fd| fd.try_clone_to_owned())
                .collect::<std::io::Result<Vec<OwnedFd>>>()
                .unwrap_or_else(|_| {
                    // Out of descriptors: look again soon instead.
                    let soon = now + UNWATCHED_LOOK;
                    due = Some(due.map_or(soon, |d| d.min(soon)));
                    vec![]
                });
            (fds, due)
        };
        let mut polled: Vec<_> = std::iter::once(woken.as_fd())
            .chain(fds.iter().map(AsFd::as_fd))
            .map(|fd| PollFd::new(fd, PollFlags::POLLIN))
            .collect();
        let timeout = due.map_or(PollTimeout::NONE, |d| {
            let ns = d.saturating_duration_since(Instant::now()).as_nanos();
            PollTimeout::try_from(ns.div_ceil(1_000_000)).unwrap_or(PollTimeout::MAX)
        });
        match poll(&mut polled, timeout) {
            Ok(_) | Err(Errno::EINTR) => {}
            Err(_) => std::thread::sleep(UNWATCHED_LOOK),
        }
        while woken.recv(&mut [0; 8]).is_ok() {}
        due
    }

    /// Looks after one backend; true if its state changed.
    fn step(&self, svc: &mut Service, now: Instant) -> bool {
        match svc.state {
            State::Starting | State::Running => match svc.check(now) {
                Some(Event::Failed(f)) => {
                    self.failed(svc, f);
                    true
                }
                Some(_) => true,
                None => false,
            },
            State::Restarting if svc.next_start.is_some_and(|t| now >= t) => {
                if self.stopping.load(Ordering::SeqCst) {
                    return false;
                }
                if !svc.image_unchanged() {
                    let image = svc.spec.image.clone().unwrap_or_default();
                    let last = svc.last_exit.clone().map(|l| l.0).unwrap_or_default();
                    self.give_up(
                        svc,
                        format!(
                            "{} was replaced or removed while the backend was down (last: {last})",
                            image.display()
                        ),
                    );
                    return true;
                }
                svc.next_start = None;
                svc.restarts += 1;
                svc.history.restarted(now);
                crate::trace::step(format_args!("restarting {}", svc.name()));
                if let Err(e) = svc.spawn() {
                    self.failed(svc, Failure::Spawn(e.to_string()));
                }
                true
            }
            _ => false,
        }
    }

    /// A run ended (or must): its group is killed, then it is restarted or given up on.
    fn failed(&self, svc: &mut Service, f: Failure) {
        if let Failure::Watchdog(_) = f {
            crate::trace::step(format_args!("{}: {f}; killing it", svc.name()));
        }
        let ready_for = svc.kill(&f);
        let now = Instant::now();
        svc.history.failed(now, ready_for, &self.policy);
        if self.stopping.load(Ordering::SeqCst) {
            svc.state = State::Stopping;
            return;
        }
        match self.policy.decide(&svc.history, now) {
            Decision::RestartIn(d) => {
                crate::trace::step(format_args!("{}: {f}; restarting in {d:?}", svc.name()));
                svc.state = State::Restarting;
                svc.next_start = Some(now + d);
            }
            Decision::GiveUp => {
                let n = svc.history.failures_within(self.policy.window, now);
                let window = self.policy.window.as_secs();
                let why = format!("backend failed {n} times within {window} s (last: {f})");
                self.give_up(svc, why);
            }
        }
    }

    /// Gives up on `svc`: the one line, no more restarts, sm-vmm told to stop.
    fn give_up(&self, svc: &mut Service, why: String) {
        svc.state = State::Failed;
        svc.next_start = None;
        let line = format!("sm: {}: {why}; stopping the VM", svc.name());
        crate::trace::step(&line);
        self.failure
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get_or_insert(line);
        self.stopping.store(true, Ordering::SeqCst);
        let vmm = self.vmm.load(Ordering::SeqCst);
        if vmm > 0 {
            // No guest sync is possible without the device; what the guest saw
            // acknowledged is on the file already.
            let _ = kill(Pid::from_raw(vmm), Signal::SIGTERM);
        }
    }

    fn processes(&self) -> Vec<ProcessInfo> {
        let vmm = self.vmm.load(Ordering::SeqCst);
        let vmm = (vmm > 0).then(|| ProcessInfo {
            name: "sm-vmm".into(),
            pid: Some(vmm),
            state: if self.stopping.load(Ordering::SeqCst) {
                State::Stopping
            } else {
                State::Running
            },
            restarts: 0,
            last_exit: None,
            last_exit_at: None,
            status: None,
            socket: None,
        });
        let services = self.lock();
        vmm.into_iter()
            .chain(services.iter().map(|s| ProcessInfo {
                name: s.name().to_owned(),
                pid: s.pid(),
                state: s.state,
                restarts: s.restarts,
                last_exit: s.last_exit.as_ref().map(|l| l.0.clone()),
                last_exit_at: s.last_exit.as_ref().and_then(|l| {
                    l.1.duration_since(SystemTime::UNIX_EPOCH)
                        .ok()
                        .map(|d| d.as_secs())
                }),
                status: s.status.clone(),
                socket: Some(s.spec.socket.clone()),
            }))
            .collect()
    }

    /// Writes `processes.json` atomically (best effort: `sm ps` only reads it).
    fn publish(&self) {
        let Ok(json) = serde_json::to_vec_pretty(&self.processes()) else {
            return;
        };
        let path = self.dir.join(PROCESSES_FILE);
        let tmp = self.dir.join(format!("{PROCESSES_FILE}.new"));
        if std::fs::write(&tmp, json).is_ok() {
            let _ = std::fs::rename(&tmp, &path);
        }
    }
}

//! Pools of restored VMs: clones of one snapshot restored ahead of time and kept paused, so
//! that [`Pool::acquire`] hands one out by resuming it (milliseconds) instead of booting.
//! A background thread keeps `min` clones ready, never more than `max` at once, stops idle
//! ones above `min` after `idle_timeout`, and does every restore and stop off the caller's
//! path: [`PooledVm::release`] returns at once. Every clone has its own backends. A volume
//! the bake unmounted before its snapshot is the user's own file in one clone at a time
//! (the first restored while nobody else serves it; [`Pool::acquire`] hands that clone out
//! first), so what it writes there persists across restores; every other clone gets a
//! private copy of the volume as baked (a reflink where the file system can, else a sparse
//! copy), dropped with it. A volume still mounted in the snapshot is a copy in every clone.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use sm_snapshot::api::ApiClient;
use sm_vhost_user_net::policy::EgressRule;

use crate::vm::record::{RunRecord, RECORD_FILE};
use crate::vm::{runtime_root, volumes};
use crate::{Vm, VmError};

/// Why a pool could not do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    /// The snapshot cannot be used (not verified, no run record).
    #[error("{0}")]
    Snapshot(String),
    /// The options make no sense.
    #[error("pool options: {0}")]
    Options(String),
    /// No VM became free within the acquire timeout.
    #[error("no VM of the pool became free within {0:?} ({1} in use, max {2})")]
    Timeout(Duration, usize, usize),
    /// The last restore failed (the pool retries on the next acquire).
    #[error("restoring a VM of the pool: {0}")]
    Restore(String),
    /// The pool was shut down.
    #[error("the pool is shut down")]
    ShutDown,
    /// Resuming a ready VM failed.
    #[error(transparent)]
    Vm(#[from] VmError),
}

/// How a pool behaves.
#[derive(Clone, Debug)]
pub struct PoolOptions {
    /// VMs kept restored and paused, ready to hand out.
    pub min: usize,
    /// VMs at most at once (ready, handed out and being restored).
    pub max: usize,
    /// A released VM is stopped and replaced by a fresh restore (its guest state is thrown
    /// away); without it the VM is handed out again as it was left.
    pub restore_on_release: bool,
    /// How long [`Pool::acquire`] waits for a VM.
    pub acquire_timeout: Duration,
    /// Ready VMs above `min` that nobody acquired for this long are stopped.
    pub idle_timeout: Duration,
    /// The clones' egress rules, replacing the bake's (`None`: the bake's): a warm-up can
    /// fetch dependencies while the clones reach only what they need.
    pub egress: Option<Vec<EgressRule>>,
}

impl Default for PoolOptions {
    fn default() -> Self {
        PoolOptions {
            min: 1,
            max: 4,
            restore_on_release: true,
            acquire_timeout: Duration::from_secs(60),
            idle_timeout: Duration::from_secs(300),
            egress: None,
        }
    }
}

/// A restored clone and its own run record (where its volumes are).
struct Member {
    vm: Vm,
    record: RunRecord,
}

/// A ready VM and when it became ready.
struct Ready {
    member: Member,
    since: Instant,
}

/// What the pool's threads share, under one lock.
#[derive(Default)]
struct State {
    ready: VecDeque<Ready>,
    /// Handed out.
    in_use: usize,
    /// Restores under way.
    restoring: usize,
    /// Acquirers waiting.
    waiting: usize,
    /// VMs to stop (released with `restore_on_release`, idle, or at shutdown).
    to_stop: Vec<Vm>,
    /// Released VMs to pause and queue as ready again (without `restore_on_release`).
    to_park: Vec<Member>,
    /// The last restore's error, for a waiting acquirer.
    last_error: Option<String>,
    /// The VM that has the user's volume files, from its restore until it has stopped.
    user_volumes: Option<String>,
    /// That VM is on its way out: the next restore waits for the files rather than copy.
    user_volumes_leaving: bool,
    shut_down: bool,
}

impl State {
    fn total(&self) -> usize {
        self.ready.len() + self.in_use + self.restoring
    }

    /// Queues `vm` to be stopped.
    fn retire(&mut self, vm: Vm) {
        if self.user_volumes.as_deref() == Some(vm.name()) {
            self.user_volumes_leaving = true;
        }
        self.to_stop.push(vm);
    }

    /// `name` has stopped (or never started): whatever it held is free.
    fn gone(&mut self, name: &str) {
        if self.user_volumes.as_deref() == Some(name) {
            self.user_volumes = None;
            self.user_volumes_leaving = false;
        }
    }
}

struct Shared {
    snapshot: PathBuf,
    record: RunRecord,
    opts: PoolOptions,
    state: Mutex<State>,
    changed: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A pool of clones of one snapshot.
pub struct Pool {
    shared: Arc<Shared>,
    workers: Vec<std::thread::JoinHandle<()>>,
}

/// A VM handed out by a pool; derefs to [`Vm`]. Give it back with [`PooledVm::release`]
/// (dropping it releases it too).
pub struct PooledVm {
    member: Option<Member>,
    shared: Arc<Shared>,
}

/// A ready VM taken from its pool and not resumed yet (see [`Pool::take_ready`]); dropped
/// unresumed, it is stopped and replaced like one whose resume failed.
pub struct Resuming {
    member: Option<Member>,
    shared: Arc<Shared>,
}

impl Resuming {
    /// The VM's API socket, to send it `PUT /vm/resume`.
    pub fn api_socket(&self) -> PathBuf {
        self.member
            .as_ref()
            .expect("held until used")
            .vm
            .api_socket()
    }

    /// The VM, resumed: handed out.
    pub fn resumed(mut self) -> PooledVm {
        PooledVm {
            member: self.member.take(),
            shared: self.shared.clone(),
        }
    }

    /// The resume failed with `e`: the VM is stopped and replaced; the caller's error.
    pub fn failed(mut self, e: &dyn std::fmt::Display) -> PoolError {
        self.retire();
        PoolError::Restore(format!("resuming: {e}"))
    }

    fn retire(&mut self) {
        if let Some(member) = self.member.take() {
            let mut st = self.shared.lock();
            st.in_use -= 1;
            st.retire(member.vm);
            self.shared.changed.notify_all();
        }
    }
}

impl Drop for Resuming {
    fn drop(&mut self) {
        self.retire();
    }
}

impl Pool {
    /// A pool of clones of the (verified) snapshot in `snapshot`; starts restoring `min`.
    pub fn new(snapshot: &Path, opts: PoolOptions) -> Result<Pool, PoolError> {
        if opts.max == 0 || opts.min > opts.max {
            return Err(PoolError::Options(format!(
                "need 0 <= min <= max and max > 0 (min {}, max {})",
                opts.min, opts.max
            )));
        }
        let snapshot = std::path::absolute(snapshot)
            .map_err(|e| PoolError::Snapshot(format!("{}: {e}", snapshot.display())))?;
        sm_snapshot::verify_sealed(&snapshot).map_err(|e| PoolError::Snapshot(e.to_string()))?;
        let mut record = RunRecord::read(&snapshot.join(RECORD_FILE))
            .map_err(|e| PoolError::Snapshot(e.to_string()))?;
        record.network = record
            .network
            .with_policy(opts.egress.as_deref(), None)
            .map_err(PoolError::Options)?;
        let shared = Arc::new(Shared {
            snapshot,
            record,
            opts,
            state: Mutex::new(State::default()),
            changed: Condvar::new(),
        });
        // Restores run on their own threads (several at once when many are wanted); one
        // thread stops VMs, one keeps the count.
        let mut workers = vec![];
        for _ in 0..shared.opts.max.clamp(1, 4) {
            let s = shared.clone();
            workers.push(std::thread::spawn(move || restorer(&s)));
        }
        let s = shared.clone();
        workers.push(std::thread::spawn(move || stopper(&s)));
        Ok(Pool { shared, workers })
    }

    /// A ready VM, resumed; waits up to the acquire timeout for one.
    pub fn acquire(&self) -> Result<PooledVm, PoolError> {
        self.acquire_within(self.shared.opts.acquire_timeout)
    }

    /// [`Pool::acquire`] with its own timeout.
    pub fn acquire_within(&self, limit: Duration) -> Result<PooledVm, PoolError> {
        let deadline = Instant::now() + limit;
        let Some(taken) = self.take(Some(deadline))? else {
            unreachable!("a take with a deadline waits for a VM or fails");
        };
        let resumed = ApiClient::new(taken.api_socket()).resume();
        match resumed {
            Ok(()) => Ok(taken.resumed()),
            Err(e) => Err(taken.failed(&e)),
        }
    }

    /// A ready VM, still paused, if one is ready now (else `Ok(None)`, and
    /// [`Pool::acquire`] waits for one): for a caller that resumes it itself, as an event
    /// loop does with [`sm_snapshot::api::ApiClient::start_resume`] on
    /// [`Resuming::api_socket`], then calls [`Resuming::resumed`] or [`Resuming::failed`].
    pub fn take_ready(&self) -> Result<Option<Resuming>, PoolError> {
        self.take(None)
    }

    /// Takes a ready VM, waiting for one until `deadline` (none: not at all); `Ok(None)`
    /// when not waiting and none is ready.
    fn take(&self, deadline: Option<Instant>) -> Result<Option<Resuming>, PoolError> {
        let opts = &self.shared.opts;
        let mut st = self.shared.lock();
        // Counted (and the pool's thread told) only once it has to wait: a caller waiting
        // is what makes the pool restore more.
        let mut waiting = false;
        let ready = loop {
            if st.shut_down {
                st.waiting -= usize::from(waiting);
                return Err(PoolError::ShutDown);
            }
            // The clone with the user's volume files first: what it writes persists.
            let holder = st.user_volumes.as_deref();
            let pos = st
                .ready
                .iter()
                .position(|r| Some(r.member.vm.name()) == holder);
            if let Some(r) = st.ready.remove(pos.unwrap_or(0)) {
                break r;
            }
            let now = Instant::now();
            let Some(deadline) = deadline else {
                return Ok(None);
            };
            if now >= deadline {
                st.waiting -= usize::from(waiting);
                if let Some(e) = st.last_error.take() {
                    return Err(PoolError::Restore(e));
                }
                return Err(PoolError::Timeout(
                    opts.acquire_timeout,
                    st.in_use,
                    opts.max,
                ));
            }
            if !waiting {
                waiting = true;
                st.waiting += 1;
                self.shared.changed.notify_all();
            }
            st = self
                .shared
                .changed
                .wait_timeout(st, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        };
        st.waiting -= usize::from(waiting);
        st.in_use += 1;
        self.shared.changed.notify_all();
        Ok(Some(Resuming {
            member: Some(ready.member),
            shared: self.shared.clone(),
        }))
    }

    /// (ready, in use, being restored) right now.
    pub fn counts(&self) -> (usize, usize, usize) {
        let st = self.shared.lock();
        (st.ready.len(), st.in_use, st.restoring)
    }

    /// Stops every VM of the pool (handed-out ones as they are released) and its threads;
    /// leaves nothing behind.
    pub fn shutdown(mut self) {
        self.stop_all();
    }

    fn stop_all(&mut self) {
        {
            let mut st = self.shared.lock();
            st.shut_down = true;
            let ready: Vec<Vm> = st.ready.drain(..).map(|r| r.member.vm).collect();
            for vm in ready {
                st.retire(vm);
            }
            self.shared.changed.notify_all();
        }
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        self.stop_all();
    }
}

impl PooledVm {
    /// Gives the VM back and returns at once: with `restore_on_release` it is stopped and
    /// replaced by a fresh clone off the caller's path, else it is paused and handed out
    /// again as it is.
    pub fn release(mut self) {
        self.give_back();
    }

    fn give_back(&mut self) {
        let Some(member) = self.member.take() else {
            return;
        };
        let mut st = self.shared.lock();
        if st.shut_down {
            // The pool's threads are gone: stop it here.
            st.in_use -= 1;
            drop(st);
            let name = member.vm.name().to_owned();
            member.vm.stop();
            self.shared.lock().gone(&name);
            return;
        }
        // Either way the work (stop, or pause) is the stopper thread's, not the caller's.
        // A VM being parked still counts as in use, so `max` holds meanwhile.
        if self.shared.opts.restore_on_release {
            st.in_use -= 1;
            st.retire(member.vm);
        } else {
            st.to_park.push(member);
        }
        self.shared.changed.notify_all();
    }
}

impl PooledVm {
    /// A command to run in the VM with the snapshot's environment, working directory and
    /// user (the image's, as baked), like every command `sm run --snapshot` runs.
    pub fn exec<S: AsRef<str>>(&self, argv: &[S]) -> crate::ExecBuilder<'_> {
        let r = &self.shared.record;
        let mut e = Vm::exec(self, argv);
        for (k, v) in &r.env {
            e = e.env(k, v);
        }
        if let Some(d) = &r.workdir {
            e = e.cwd(d);
        }
        if let Some((uid, gid)) = r.user {
            e = e.user(uid, gid);
        }
        e
    }

    /// Saves this VM as it is now into the new directory `dir` (it runs on);
    /// [`crate::Image::from_snapshot`] pools from it.
    pub fn snapshot(&self, dir: &Path) -> Result<(), PoolError> {
        let mut record = self.member().record.clone();
        // Its volumes are mounted: clones of this snapshot get copies of them.
        for v in &mut record.volumes {
            v.detached = false;
        }
        let dir = std::path::absolute(dir)
            .map_err(|e| PoolError::Snapshot(format!("{}: {e}", dir.display())))?;
        crate::vm::snapshot::take(self.runtime_dir(), &record, &dir, false)
            .map_err(PoolError::Snapshot)
    }
}

impl PooledVm {
    fn member(&self) -> &Member {
        self.member
            .as_ref()
            .expect("a pooled VM is held until released")
    }
}

impl std::ops::Deref for PooledVm {
    type Target = Vm;
    fn deref(&self) -> &Vm {
        &self.member().vm
    }
}

impl Drop for PooledVm {
    fn drop(&mut self) {
        self.give_back();
    }
}

/// Restores clones while fewer than wanted are ready or coming.
fn restorer(shared: &Shared) {
    let mut n = 0u64;
    loop {
        {
            let mut st = shared.lock();
            loop {
                if st.shut_down {
                    return;
                }
                // Ready or coming: `min`, plus one per waiting acquirer, within `max`; not
                // while the user's volume files are about to come free.
                let coming = st.ready.len() + st.restoring;
                if coming < shared.opts.min + st.waiting
                    && st.total() < shared.opts.max
                    && !st.user_volumes_leaving
                {
                    st.restoring += 1;
                    break;
                }
                st = shared
                    .changed
                    .wait_timeout(st, Duration::from_secs(1))
                    .unwrap_or_else(|e| e.into_inner())
                    .0;
            }
        }
        n += 1;
        let result = restore_one(shared, n);
        let mut st = shared.lock();
        st.restoring -= 1;
        match result {
            Ok(member) if !st.shut_down => {
                st.last_error = None;
                st.ready.push_back(Ready {
                    member,
                    since: Instant::now(),
                });
            }
            Ok(member) => st.retire(member.vm),
            Err(e) => {
                crate::trace::step(format_args!("pool restore failed: {e}"));
                st.last_error = Some(e);
                drop(st);
                // Do not spin on a snapshot that cannot be restored.
                std::thread::sleep(Duration::from_secs(1));
                shared.changed.notify_all();
                continue;
            }
        }
        shared.changed.notify_all();
    }
}

/// Stops released, idle and leftover VMs and parks released ones, off everybody's path.
fn stopper(shared: &Shared) {
    loop {
        let parking = std::mem::take(&mut shared.lock().to_park);
        for member in parking {
            let paused = ApiClient::new(member.vm.api_socket()).pause().is_ok();
            let mut st = shared.lock();
            st.in_use -= 1;
            if paused && !st.shut_down {
                st.ready.push_back(Ready {
                    member,
                    since: Instant::now(),
                });
            } else {
                st.retire(member.vm);
            }
            shared.changed.notify_all();
        }
        let (batch, done) = {
            let mut st = shared.lock();
            let idle = shared.opts.idle_timeout;
            while st.ready.len() > shared.opts.min
                && st.ready.front().is_some_and(|r| r.since.elapsed() >= idle)
            {
                let r = st.ready.pop_front().expect("checked");
                st.retire(r.member.vm);
            }
            if st.to_stop.is_empty() && st.to_park.is_empty() && !st.shut_down {
                let _ = shared
                    .changed
                    .wait_timeout(st, Duration::from_millis(500))
                    .unwrap_or_else(|e| e.into_inner());
                continue;
            }
            // Handed-out VMs are stopped by their release once the pool is shut down.
            let done = st.shut_down && st.restoring == 0;
            (std::mem::take(&mut st.to_stop), done)
        };
        for vm in batch {
            let name = vm.name().to_owned();
            vm.stop();
            shared.lock().gone(&name);
        }
        shared.changed.notify_all();
        if done && shared.lock().to_stop.is_empty() {
            return;
        }
        if shared.lock().shut_down {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Restores clone number `n` with its volumes placed (the user's files if they are free,
/// else private copies in its runtime directory), then [`Vm::restore`], then paused until
/// acquired.
fn restore_one(shared: &Shared, n: u64) -> Result<Member, String> {
    let name = format!("pool-{}-{}-{n}", std::process::id(), crate::vm::unique());
    let dir = runtime_root().join(&name);
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let mut record = shared.record.clone();
    let user_files = {
        let mut st = shared.lock();
        let take = st.user_volumes.is_none() && record.volumes.iter().any(|v| v.detached);
        if take {
            st.user_volumes = Some(name.clone());
        }
        take
    };
    let result = start_clone(shared, &name, &dir, &mut record, user_files);
    if result.is_err() {
        // Vm::restore leaves nothing running; the copies go with the directory.
        let _ = std::fs::remove_dir_all(&dir);
        shared.lock().gone(&name);
    }
    result.map(|vm| Member { vm, record })
}

fn start_clone(
    shared: &Shared,
    name: &str,
    dir: &Path,
    record: &mut RunRecord,
    user_files: bool,
) -> Result<Vm, String> {
    let mut created = vec![];
    let snapshot = &shared.snapshot;
    volumes::place(
        record,
        snapshot,
        dir,
        |i, v| (user_files && volumes::user_file_fits(snapshot, i, v)).then(|| v.file.clone()),
        &mut created,
    )?;
    let baked = &shared.record.volumes;
    if user_files
        && !record
            .volumes
            .iter()
            .zip(baked)
            .any(|(v, b)| b.detached && v.file == b.file)
    {
        // None of the user's files was free after all: let a later clone try.
        shared.lock().gone(name);
    }
    let vm = Vm::restore(snapshot, record, Some(name.to_owned())).map_err(|e| e.to_string())?;
    // The clone mounted what the bake had unmounted: its record now says mounted.
    for v in &mut record.volumes {
        v.detached = false;
    }
    // One command before parking: the first exec in a fresh clone pays for the guest's first
    // touches of its memory and the agent's paths, which belongs here, off the acquirer's.
    // It runs in the guest's own root: an image need not have `true` (distroless has none).
    // Bounded on the host too: a clone whose guest does not answer is dropped, not waited on.
    let agent = vm.agent().clone().with_io_timeout(Duration::from_secs(35));
    crate::ExecBuilder::in_guest_root(&agent, &["true"])
        .timeout(Duration::from_secs(30))
        .output()
        .map_err(|e| format!("the clone's first command: {e}"))?;
    ApiClient::new(vm.api_socket())
        .pause()
        .map_err(|e| format!("pausing: {e}"))?;
    Ok(vm)
}

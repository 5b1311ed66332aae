//! A VM in JS: `exec`, `spawn`, files, `exposeTcp`, `snapshot`, `release`.

use super::*;
use sm_agent::client::ExecOutput;

/// What a JS VM object drives.
pub(crate) enum Target {
    /// A VM handed out by a pool, and that pool (empty once shut down).
    Pooled {
        vm: Box<sm::PooledVm>,
        pool: PoolCell,
    },
    /// The VM of a bake, during its warm-up (its agent and the image's root).
    Warmup { agent: Agent, root: Option<String> },
}

impl Target {
    pub(crate) fn agent(&self) -> &Agent {
        match self {
            Target::Pooled { vm, .. } => vm.agent(),
            Target::Warmup { agent, .. } => agent,
        }
    }

    pub(crate) fn root(&self) -> &str {
        match self {
            Target::Pooled { vm, .. } => vm.guest_root().unwrap_or(""),
            Target::Warmup { root, .. } => root.as_deref().unwrap_or(""),
        }
    }

    /// A command with the VM's defaults (a pooled VM: the snapshot's environment, working
    /// directory and user).
    pub(crate) fn exec(&self, argv: &[String]) -> sm::ExecBuilder<'_> {
        match self {
            Target::Pooled { vm, .. } => vm.exec(argv),
            Target::Warmup { agent, root } => sm::ExecBuilder::new(
                agent,
                ExecRequest {
                    argv: argv.to_vec(),
                    root: root.clone(),
                    ..Default::default()
                },
            ),
        }
    }
}

pub(crate) struct VmInner {
    target: RwLock<Option<Target>>,
    /// Why there is no target any more.
    gone: Mutex<&'static str>,
    forwarders: Mutex<Vec<Arc<Forward>>>,
    /// Calls the event loop drives that use the VM (they hold no lock while in flight).
    loop_calls: Mutex<usize>,
    /// Signalled when `loop_calls` drops to 0.
    loop_idle: Condvar,
}

/// Marks a VM in use by an event-loop call until dropped (see [`VmInner::invalidate`]).
pub(crate) struct Busy(Arc<VmInner>);

impl Drop for Busy {
    fn drop(&mut self) {
        let mut n = lock(&self.0.loop_calls);
        *n -= 1;
        if *n == 0 {
            self.0.loop_idle.notify_all();
        }
    }
}

impl VmInner {
    pub(crate) fn new(target: Target) -> VmInner {
        VmInner {
            target: RwLock::new(Some(target)),
            gone: Mutex::new("the VM was released"),
            forwarders: Mutex::new(vec![]),
            loop_calls: Mutex::new(0),
            loop_idle: Condvar::new(),
        }
    }

    /// On the JS thread: `f` with the target, the VM marked busy for as long as the
    /// returned [`Busy`] lives; `None` if a release on a thread holds the target (the
    /// caller then takes the thread path, which waits for it: the JS thread must not).
    pub(crate) fn try_with_busy<R>(
        self: &Arc<Self>,
        f: impl FnOnce(&Target) -> std::result::Result<R, Fail>,
    ) -> Option<std::result::Result<(R, Busy), Fail>> {
        let g = self.target.try_read().ok()?;
        let Some(t) = g.as_ref() else {
            return Some(Err(Fail::new("pool", *lock(&self.gone))));
        };
        *lock(&self.loop_calls) += 1;
        let busy = Busy(self.clone());
        Some(f(t).map(|r| (r, busy)))
    }

    /// `f` with the target, unless the VM is gone.
    pub(crate) fn with<R>(
        &self,
        f: impl FnOnce(&Target) -> std::result::Result<R, Fail>,
    ) -> std::result::Result<R, Fail> {
        let g = self.target.read().unwrap_or_else(|e| e.into_inner());
        match g.as_ref() {
            Some(t) => f(t),
            None => Err(Fail::new("pool", *lock(&self.gone))),
        }
    }

    /// Drops the target (a pooled VM goes back to its pool) and closes the forwarders.
    /// Waits for calls in flight, on threads and on the event loop (so never call it on
    /// the JS thread).
    pub(crate) fn invalidate(&self, why: &'static str) {
        *lock(&self.gone) = why;
        let target = loop {
            let mut calls = lock(&self.loop_calls);
            while *calls > 0 {
                calls = self
                    .loop_idle
                    .wait(calls)
                    .unwrap_or_else(|e| e.into_inner());
            }
            drop(calls);
            let mut g = self.target.write().unwrap_or_else(|e| e.into_inner());
            // No new loop call starts while the lock is held (they only try it).
            if *lock(&self.loop_calls) == 0 {
                break g.take();
            }
        };
        for f in lock(&self.forwarders).drain(..) {
            f.close();
        }
        give_back(target);
    }

    /// Releases the VM here and now (on the JS thread) if nothing in that can wait: no
    /// call in flight holds the VM, no forwarder is open (closing one joins its thread),
    /// and its pool still runs (the pool's own threads park or replace the VM; a shut-down
    /// pool's release stops it). A VM released already is left as it is, and true.
    /// Returns whether it did; if not, nothing changed.
    pub(crate) fn release_at_once(&self) -> bool {
        let Ok(mut target) = self.target.try_write() else {
            return false;
        };
        if !lock(&self.forwarders).is_empty() || *lock(&self.loop_calls) > 0 {
            return false;
        }
        let pool = match target.as_ref() {
            Some(Target::Pooled { pool, .. }) => Some(pool.clone()),
            _ => None,
        };
        // Held to the end, so the pool cannot shut down meanwhile.
        let running = pool.as_ref().map(|p| p.try_read());
        if matches!(&running, Some(Err(_))) || matches!(&running, Some(Ok(p)) if p.is_none()) {
            return false;
        }
        if target.is_some() {
            *lock(&self.gone) = "the VM was released";
            give_back(target.take());
        }
        true
    }
}

/// A pooled VM goes back to its pool; a warm-up's target has nothing to give back.
fn give_back(target: Option<Target>) {
    if let Some(Target::Pooled { vm, .. }) = target {
        (*vm).release();
    }
}

/// `vm.exec`'s and `vm.spawn`'s options (index.js turns `env` into `KEY=VALUE` strings).
#[napi(object)]
pub struct ExecOptions {
    /// The command and its arguments.
    pub argv: Vec<String>,
    /// `KEY=VALUE` (replacing the defaults except `PATH`).
    pub env: Option<Vec<String>>,
    /// Working directory.
    pub cwd: Option<String>,
    /// Bytes for stdin (exec only).
    pub stdin: Option<Buffer>,
    /// Kill the command (SIGKILL to its process group) after this; exec rejects with
    /// code `timeout`.
    pub timeout_ms: Option<f64>,
}

/// A finished command.
#[napi(object)]
pub struct ExecResult {
    /// Everything it wrote to stdout.
    pub stdout: Buffer,
    /// Everything it wrote to stderr.
    pub stderr: Buffer,
    /// Its exit code as a shell reports it (128 + N after signal N).
    pub exit_code: i32,
    /// The signal that ended it, or null.
    #[napi(ts_type = "number | null")]
    pub signal: Either<i32, Null>,
}

/// `vm.exposeTcp`'s options.
#[napi(object)]
pub struct ExposeOptions {
    /// The guest TCP port (on the guest's loopback).
    pub guest_port: u32,
    /// The host port on 127.0.0.1; 0 or none: any free one.
    pub host_port: Option<u32>,
}

/// Builds a command from `o` on `t`.
pub(crate) fn build_exec<'a>(
    t: &'a Target,
    argv: &[String],
    env: &[(String, String)],
    cwd: &Option<String>,
    timeout: Option<Duration>,
) -> sm::ExecBuilder<'a> {
    let mut e = t.exec(argv);
    for (k, v) in env {
        e = e.env(k, v);
    }
    if let Some(d) = cwd {
        e = e.cwd(d);
    }
    if let Some(t) = timeout {
        e = e.timeout(t);
    }
    e
}

/// An `exec`'s options, owned (for a thread, or a retry).
pub(crate) struct ExecArgs {
    argv: Vec<String>,
    vars: Vec<(String, String)>,
    cwd: Option<String>,
    timeout_ms: Option<f64>,
    stdin: Option<Vec<u8>>,
}

impl ExecArgs {
    fn of(o: ExecOptions) -> std::result::Result<ExecArgs, Fail> {
        Ok(ExecArgs {
            vars: env_pairs(o.env)?,
            stdin: o.stdin.as_ref().map(|b| b.to_vec()),
            argv: o.argv,
            cwd: o.cwd,
            timeout_ms: o.timeout_ms,
        })
    }

    fn builder<'a>(&self, t: &'a Target) -> sm::ExecBuilder<'a> {
        let timeout = self.timeout_ms.map(|ms| Duration::from_millis(ms as u64));
        build_exec(t, &self.argv, &self.vars, &self.cwd, timeout)
    }

    fn fail(&self, e: sm_agent::client::AgentError) -> Fail {
        Fail::new("exec", format!("{:?}: {e}", self.argv))
    }

    /// The JS result of a finished command; one the agent killed at its timeout fails.
    fn result(&self, out: ExecOutput) -> std::result::Result<ExecResult, Fail> {
        if out.exit.timed_out {
            let mut f = Fail::new(
                "timeout",
                format!(
                    "{:?} did not finish within {} ms (killed)",
                    self.argv,
                    self.timeout_ms.unwrap_or(0.0) as u64
                ),
            );
            f.output = Some((out.stdout, out.stderr));
            return Err(f);
        }
        Ok(ExecResult {
            exit_code: out.exit.shell_code().into(),
            signal: signal_or_null(out.exit.signal),
            stdout: out.stdout.into(),
            stderr: out.stderr.into(),
        })
    }
}

/// `exec` on a thread of its own, which waits for the VM if a release holds it.
fn exec_on_thread<'e>(env: &'e Env, inner: Arc<VmInner>, args: ExecArgs) -> Result<Object<'e>> {
    promise(
        env,
        move || {
            let out = inner.with(|t| {
                args.builder(t)
                    .output_with_stdin(args.stdin.as_deref())
                    .map_err(|e| args.fail(e))
            })?;
            args.result(out)
        },
        |_, r| Ok(r),
    )
}

/// `exec` driven by the event loop.
struct ExecCall {
    exchange: sm_agent::exchange::ExecExchange,
    /// The options (for the result, or a retry) and the VM marked busy; taken as the call
    /// settles, so that a release in the promise's reaction does not find the VM busy.
    pending: Option<(ExecArgs, Busy)>,
}

impl event_loop::Exchange for ExecCall {
    fn fd(&self) -> std::os::fd::RawFd {
        self.exchange.fd()
    }

    fn wants_write(&self) -> bool {
        self.exchange.wants_write()
    }

    fn deadline(&self) -> Option<std::time::Instant> {
        self.exchange.deadline()
    }

    fn advance(&mut self) -> std::task::Poll<event_loop::Settle> {
        let std::task::Poll::Ready(done) = self.exchange.advance() else {
            return std::task::Poll::Pending;
        };
        let (args, busy) = self.pending.take().expect("settled once");
        let inner = busy.0.clone();
        drop(busy);
        let refused = self.exchange.refused();
        std::task::Poll::Ready(Box::new(move |env: Env| match done {
            // The backend closed the connection before the agent saw it (a restored guest
            // can): the thread path tries again after a pause, as the library does.
            Err(_) if refused => Ok(exec_on_thread(&env, inner, args)?.raw()),
            Err(e) => Err(args.fail(e).into_js(env)),
            Ok(out) => match args.result(out) {
                // SAFETY: on the JS thread of `env`, inside the settling's handle scope.
                Ok(r) => unsafe { ExecResult::to_napi_value(env.raw(), r) },
                Err(f) => Err(f.into_js(env)),
            },
        }))
    }
}

/// A VM: handed out by `pool.acquire()`, or given to a warm-up.
#[napi]
pub struct Vm {
    /// Taken by `Drop`, which hands it to a thread (a release may wait).
    inner: Option<Arc<VmInner>>,
}

impl Vm {
    pub(crate) fn of(inner: Arc<VmInner>) -> Vm {
        Vm { inner: Some(inner) }
    }

    pub(crate) fn inner(&self) -> Arc<VmInner> {
        self.inner.clone().expect("held until dropped")
    }
}

impl Drop for Vm {
    /// Runs when JS collects the object, on the JS thread. A VM released already (the usual
    /// case) or one that can be released at once is dropped here: a thread start costs far
    /// more than that. Only a drop that may wait (a call in flight, an open forward, a shut-down
    /// pool) gets a thread.
    fn drop(&mut self) {
        if let Some(inner) = self.inner.take() {
            if inner.release_at_once() {
                return;
            }
            let _ = std::thread::Builder::new().spawn(move || drop(inner));
        }
    }
}

impl Drop for VmInner {
    fn drop(&mut self) {
        for f in lock(&self.forwarders).drain(..) {
            f.close();
        }
    }
}

#[napi]
impl Vm {
    /// Runs a command to its end: `{ stdout, stderr, exitCode, signal }`. Driven by the
    /// event loop (see `event_loop.rs`), or on a thread while a release holds the VM.
    #[napi(ts_return_type = "Promise<ExecResult>")]
    pub fn exec<'e>(&self, env: &'e Env, options: ExecOptions) -> Result<Object<'e>> {
        let inner = self.inner();
        let args = match ExecArgs::of(options) {
            Ok(a) => a,
            Err(f) => return rejected(env, f),
        };
        let started = inner.try_with_busy(|t| {
            args.builder(t)
                .start(args.stdin.as_deref())
                .map_err(|e| args.fail(e))
        });
        match started {
            Some(Ok((exchange, busy))) => event_loop::drive(
                env,
                Box::new(ExecCall {
                    exchange,
                    pending: Some((args, busy)),
                }),
            ),
            Some(Err(f)) => rejected(env, f),
            None => exec_on_thread(env, inner, args),
        }
    }

    /// Starts a command and returns at once with a child to drive it.
    #[napi(ts_return_type = "Promise<Child>")]
    pub fn spawn<'e>(&self, env: &'e Env, options: ExecOptions) -> Result<Object<'e>> {
        let inner = self.inner();
        let ExecOptions {
            argv,
            env: vars,
            cwd,
            timeout_ms,
            ..
        } = options;
        promise(
            env,
            move || {
                let vars = env_pairs(vars)?;
                let timeout = timeout_ms.map(|ms| Duration::from_millis(ms as u64));
                let child = inner.with(|t| {
                    build_exec(t, &argv, &vars, &cwd, timeout)
                        .stdin()
                        .spawn()
                        .map_err(|e| Fail::new("exec", format!("{argv:?}: {e}")))
                })?;
                Child::start(child)
            },
            |_, child| Ok(child),
        )
    }

    /// Writes `data` to the guest file `path` (atomically; parents created).
    #[napi(ts_return_type = "Promise<void>")]
    pub fn write_file<'e>(
        &self,
        env: &'e Env,
        path: String,
        data: Buffer,
        mode: Option<u32>,
    ) -> Result<Object<'e>> {
        let inner = self.inner();
        let data = data.to_vec();
        promise(
            env,
            move || {
                inner.with(|t| {
                    let full = format!("{}{path}", t.root());
                    t.agent()
                        .write_file(&full, &data, mode.unwrap_or(0o644))
                        .map(|_| ())
                        .map_err(|e| Fail::new("io", format!("writing {path}: {e}")))
                })
            },
            |_, ()| Ok(()),
        )
    }

    /// The contents of the guest file `path` (refused above `maxBytes`, default 256 MiB).
    #[napi(ts_return_type = "Promise<Buffer>")]
    pub fn read_file<'e>(
        &self,
        env: &'e Env,
        path: String,
        max_bytes: Option<f64>,
    ) -> Result<Object<'e>> {
        let inner = self.inner();
        promise(
            env,
            move || {
                inner.with(|t| {
                    let full = format!("{}{path}", t.root());
                    t.agent()
                        .read_file(&full, max_bytes.map_or(DEFAULT_READ_MAX, |m| m as u64))
                        .map_err(|e| Fail::new("io", format!("reading {path}: {e}")))
                })
            },
            |_, bytes| Ok(Buffer::from(bytes)),
        )
    }

    /// Forwards host 127.0.0.1:`hostPort` (any free port if 0 or none) to `guestPort`.
    #[napi(ts_return_type = "Promise<Forwarder>")]
    pub fn expose_tcp<'e>(&self, env: &'e Env, options: ExposeOptions) -> Result<Object<'e>> {
        let inner = self.inner();
        promise(
            env,
            move || {
                let guest = u16::try_from(options.guest_port)
                    .map_err(|_| Fail::new("args", format!("guestPort {}", options.guest_port)))?;
                let host = u16::try_from(options.host_port.unwrap_or(0))
                    .map_err(|_| Fail::new("args", "hostPort out of range"))?;
                let agent = inner.with(|t| Ok(t.agent().clone()))?;
                let f = Forward::start(agent, host, guest)
                    .map_err(|e| Fail::new("io", format!("listening on 127.0.0.1:{host}: {e}")))?;
                lock(&inner.forwarders).push(f.clone());
                Ok(f)
            },
            |_, f| Ok(Forwarder { inner: f }),
        )
    }

    /// Saves this VM as it is now into the new directory `dir` (it runs on).
    #[napi(ts_return_type = "Promise<void>")]
    pub fn snapshot<'e>(&self, env: &'e Env, dir: String) -> Result<Object<'e>> {
        let inner = self.inner();
        promise(
            env,
            move || {
                inner.with(|t| match t {
                    Target::Pooled { vm, .. } => vm
                        .snapshot(std::path::Path::new(&dir))
                        .map_err(|e| Fail::new("snapshot", e)),
                    Target::Warmup { .. } => Err(Fail::new(
                        "snapshot",
                        "a warm-up's VM is snapshotted by the bake itself",
                    )),
                })
            },
            |_, ()| Ok(()),
        )
    }

    /// Gives the VM back to its pool at once when that cannot wait (see
    /// `VmInner::release_at_once`): true if it did, else `release` is the way.
    #[napi]
    pub fn release_now(&self) -> bool {
        self.inner().release_at_once()
    }

    /// Gives the VM back to its pool (its forwarders close); later calls reject.
    #[napi(ts_return_type = "Promise<void>")]
    pub fn release<'e>(&self, env: &'e Env) -> Result<Object<'e>> {
        let inner = self.inner();
        promise(
            env,
            move || {
                inner.invalidate("the VM was released");
                Ok(())
            },
            |_, ()| Ok(()),
        )
    }
}

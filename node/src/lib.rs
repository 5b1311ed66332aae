//! The Node.js binding of sm (napi-rs): `Image.build`, `Image.fromSnapshot`, `image.pool`,
//! `pool.acquire`, and a VM's `exec`, `spawn`, `writeFile`, `readFile`, `exposeTcp`,
//! `snapshot` and `release`. Every call that waits runs on a thread of its own (never on
//! the JS thread, nor on libuv's small pool, so that many VMs can be driven at once) and
//! settles a promise; a failure rejects with an `Error` whose message is sm's one line and
//! whose `code` says what failed: `image`, `boot`, `timeout`, `exec`, `pool`, `snapshot`,
//! `io` or `args`. `index.js` beside this crate is the package's entry point.

use std::future::Future;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, RwLock};
use std::task::{Context, Poll, Wake};
use std::thread::JoinHandle;
use std::time::Duration;

use napi::bindgen_prelude::*;
use napi::threadsafe_function::{ThreadsafeFunction, ThreadsafeFunctionCallMode};
use napi_derive::napi;
use sm_agent::client::Agent;
use sm_agent::message::ExecRequest;

/// The default guest memory (MiB) of a build, as the seed product's.
const DEFAULT_MEMORY_MIB: u32 = 256;
/// The default cap of `readFile`.
const DEFAULT_READ_MAX: u64 = 256 << 20;

/// A failure on its way to JS: the `code`, sm's one line, and any output of a command
/// that timed out.
struct Fail {
    code: &'static str,
    message: String,
    output: Option<(Vec<u8>, Vec<u8>)>,
}

impl Fail {
    fn new(code: &'static str, message: impl std::fmt::Display) -> Fail {
        Fail {
            code,
            message: one_line(&message.to_string()),
            output: None,
        }
    }

    /// The JS error (on the JS thread): an `Error` with `code` (and `stdout`, `stderr`).
    fn into_js(self, env: Env) -> napi::Error {
        let made = (|| -> napi::Result<napi::Error> {
            let mut err =
                env.create_error(napi::Error::new(Status::GenericFailure, &self.message))?;
            err.set_named_property("code", self.code)?;
            if let Some((out, errout)) = self.output {
                err.set_named_property("stdout", Buffer::from(out))?;
                err.set_named_property("stderr", Buffer::from(errout))?;
            }
            Ok(napi::Error::from(err.to_unknown()))
        })();
        made.unwrap_or_else(|e| e)
    }
}

/// sm's messages are one line; keep them so.
fn one_line(s: &str) -> String {
    s.trim().replace('\n', "; ")
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Runs `work` on a thread of its own and returns a promise settled with `convert`'s value
/// (on the JS thread), or rejected with the failure.
fn promise<'e, T, D, W, C>(env: &'e Env, work: W, convert: C) -> Result<Object<'e>>
where
    T: Send + 'static,
    D: ToNapiValue + 'static,
    W: FnOnce() -> std::result::Result<T, Fail> + Send + 'static,
    C: FnOnce(Env, T) -> Result<D> + Send + 'static,
{
    let (deferred, promise) = env.create_deferred()?;
    std::thread::Builder::new()
        .name("sm-node".into())
        .spawn(move || {
            let result = work();
            deferred.resolve(move |env| match result {
                Ok(v) => convert(env, v),
                Err(f) => Err(f.into_js(env)),
            });
        })
        .map_err(|e| napi::Error::from_reason(format!("starting a thread: {e}")))?;
    Ok(promise)
}

/// Wakes a thread parked in [`block_on`].
struct ThreadWaker(std::thread::Thread);

impl Wake for ThreadWaker {
    fn wake(self: Arc<Self>) {
        self.0.unpark();
    }
}

/// Waits on this (non-JS) thread for `f`: a JS promise settled on the JS thread.
fn block_on<F: Future>(f: F) -> F::Output {
    let mut f = std::pin::pin!(f);
    let waker = Arc::new(ThreadWaker(std::thread::current())).into();
    let mut cx = Context::from_waker(&waker);
    loop {
        if let Poll::Ready(v) = f.as_mut().poll(&mut cx) {
            return v;
        }
        std::thread::park();
    }
}

/// `K=V` strings (index.js turns env objects into these, keeping their order).
fn env_pairs(env: Option<Vec<String>>) -> std::result::Result<Vec<(String, String)>, Fail> {
    env.unwrap_or_default()
        .into_iter()
        .map(|kv| match kv.split_once('=') {
            Some((k, v)) if !k.is_empty() => Ok((k.to_owned(), v.to_owned())),
            _ => Err(Fail::new("args", format!("env {kv:?} is not KEY=VALUE"))),
        })
        .collect()
}

// ---------------------------------------------------------------------------------------
// Image.build, Image.fromSnapshot

/// A live host directory in the guest.
#[napi(object)]
pub struct MountOptions {
    /// The host directory.
    pub host_path: String,
    /// Where the guest sees it (absolute); default `/mnt/<guestTag>`.
    pub guest_path: Option<String>,
    /// The share's name; with no `guestPath` it is mounted at `/mnt/<guestTag>`.
    pub guest_tag: Option<String>,
    /// `opaque` (default: links are kept verbatim, as npm makes them), `deny` or `follow`.
    pub symlinks: Option<String>,
    /// Read-only in the guest.
    pub read_only: Option<bool>,
}

/// A block volume (ext4, created sparse if missing; its contents after the warm-up are
/// baked into the snapshot).
#[napi(object)]
pub struct VolumeOptions {
    /// The host image file.
    pub host_path: String,
    /// Where the guest mounts it (absolute).
    pub guest_path: String,
    /// The size of a new volume (MiB); default 1024.
    pub size_mib: Option<u32>,
}

/// A host file copied into the guest before the warm-up.
#[napi(object)]
pub struct ExtraFileOptions {
    /// The host file.
    pub host_path: String,
    /// The guest path (absolute).
    pub guest_path: String,
    /// Permission bits (default 0o644).
    pub mode: Option<u32>,
}

/// `Image.build`'s options (index.js moves a `warmup` function out and env objects into
/// `KEY=VALUE` strings).
#[napi(object)]
pub struct BuildOptions {
    /// A registry reference, `oci-layout:DIR`, `oci-archive:FILE` or `docker-archive:FILE`;
    /// none: the guest's own minimal root.
    #[napi(js_name = "ref")]
    pub image_ref: Option<String>,
    /// The snapshot's name.
    pub name: String,
    /// Guest memory (MiB), default 256.
    pub memory_mib: Option<u32>,
    /// Virtual CPUs, default 1.
    pub vcpus: Option<u32>,
    /// The workload: keeps running in the snapshot and every clone.
    pub cmd: Option<Vec<String>>,
    /// `KEY=VALUE` for the workload, the warm-up and later commands.
    pub env: Option<Vec<String>>,
    /// Working directory (default: the image's).
    pub cwd: Option<String>,
    /// Live host directories.
    pub mounts: Option<Vec<MountOptions>>,
    /// Block volumes.
    pub volumes: Option<Vec<VolumeOptions>>,
    /// Host files copied in before the warm-up.
    pub extra_files: Option<Vec<ExtraFileOptions>>,
    /// Kernel command-line parameters added after sm's.
    pub extra_kernel_args: Option<String>,
    /// A shell warm-up (`/bin/sh -c`), when `warmup` was a string.
    pub warmup_shell: Option<String>,
    /// Bump to bake again with otherwise unchanged inputs.
    pub warmup_tag: Option<String>,
    /// Wait until the workload listens on `guestPort` before the warm-up.
    pub listener_required: Option<bool>,
    /// The workload's guest TCP port.
    pub guest_port: Option<u32>,
    /// Where snapshots go (default: the store in sm's home).
    pub snapshots_dir: Option<String>,
}

/// The warm-up function: called with the booting VM, its promise awaited by the bake.
type WarmupFn = ThreadsafeFunction<Vm, Promise<()>, Vm, Status, false>;

fn bake_options(
    o: BuildOptions,
    warmup: Option<WarmupFn>,
) -> std::result::Result<sm::BuildOptions, Fail> {
    let mut mounts = vec![];
    for m in o.mounts.unwrap_or_default() {
        let guest = match (m.guest_path, m.guest_tag) {
            (Some(p), _) => p,
            (None, Some(t)) if !t.is_empty() && !t.contains('/') => format!("/mnt/{t}"),
            _ => {
                return Err(Fail::new(
                    "args",
                    format!("mount {}: give guestPath or guestTag", m.host_path),
                ))
            }
        };
        let mut spec = format!("{}:{guest}", m.host_path);
        if m.read_only == Some(true) {
            spec.push_str(":ro");
        }
        if let Some(s) = m.symlinks {
            spec.push_str(&format!(":symlinks={s}"));
        }
        mounts.push(
            spec.parse::<sm::Mount>()
                .map_err(|e| Fail::new("args", e))?,
        );
    }
    let volumes = o
        .volumes
        .unwrap_or_default()
        .into_iter()
        .map(|v| sm::Volume {
            file: v.host_path.into(),
            guest: v.guest_path,
            size_mib: v.size_mib.unwrap_or(1024).into(),
        })
        .collect();
    let extra_files = o
        .extra_files
        .unwrap_or_default()
        .into_iter()
        .map(|f| sm::ExtraFile {
            host: f.host_path.into(),
            guest: f.guest_path,
            mode: f.mode.unwrap_or(0o644),
        })
        .collect();
    let listen_port = match (o.listener_required.unwrap_or(false), o.guest_port) {
        (false, _) => None,
        (true, Some(p)) => {
            Some(u16::try_from(p).map_err(|_| Fail::new("args", format!("guestPort {p}")))?)
        }
        (true, None) => return Err(Fail::new("args", "listenerRequired needs guestPort")),
    };
    let warmup = match (warmup, o.warmup_shell) {
        (Some(f), _) => Some(sm::Warmup::Callback(Box::new(move |vm: &sm::Vm| {
            run_warmup(&f, vm)
        }))),
        (None, Some(line)) => Some(sm::Warmup::Shell(line)),
        (None, None) => None,
    };
    Ok(sm::BuildOptions {
        name: o.name,
        image: o.image_ref,
        mem_mib: o.memory_mib.unwrap_or(DEFAULT_MEMORY_MIB).into(),
        vcpus: o.vcpus.unwrap_or(1),
        cmd: o.cmd.unwrap_or_default(),
        env: env_pairs(o.env)?,
        workdir: o.cwd,
        mounts,
        volumes,
        extra_files,
        warmup,
        warmup_tag: o.warmup_tag.unwrap_or_default(),
        extra_kernel_args: o.extra_kernel_args,
        listen_port,
        store: o.snapshots_dir.map(sm::store::SnapshotStore::at),
        ..Default::default()
    })
}

/// On the bake's thread: calls the JS warm-up with a VM object and waits for its promise.
fn run_warmup(f: &WarmupFn, vm: &sm::Vm) -> std::result::Result<(), String> {
    let inner = Arc::new(VmInner::new(Target::Warmup {
        agent: vm.agent().clone(),
        root: vm.guest_root().map(str::to_owned),
    }));
    let (tx, rx) = std::sync::mpsc::channel();
    let status = f.call_with_return_value(
        Vm::of(inner.clone()),
        ThreadsafeFunctionCallMode::Blocking,
        move |ret: Result<Promise<()>>, _env| {
            let _ = tx.send(ret);
            Ok(())
        },
    );
    if status != Status::Ok {
        return Err(format!("failed: calling the warm-up function: {status}"));
    }
    let result = match rx.recv() {
        Ok(Ok(p)) => block_on(p),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(napi::Error::from_reason(
            "the warm-up function was not called",
        )),
    };
    // The VM is snapshotted and stopped next: the JS object is of no use after this.
    inner.invalidate("the warm-up is over: this VM was snapshotted");
    result.map_err(|e| format!("failed: {}", one_line(&e.reason)))
}

fn bake_fail(e: sm::bake::BakeError) -> Fail {
    use sm::bake::BakeError as B;
    let code = match &e {
        B::Store(_) | B::ExtraFile(..) => "io",
        B::Image(_) => "image",
        B::Vm(_) | B::Workload(_) => "boot",
        B::Warmup(_) => "exec",
        B::Snapshot(_) => "snapshot",
    };
    Fail::new(code, e)
}

fn pool_fail(e: sm::pool::PoolError) -> Fail {
    use sm::pool::PoolError as P;
    let code = match &e {
        P::Snapshot(_) => "snapshot",
        P::Options(_) | P::ShutDown => "pool",
        P::Timeout(..) => "timeout",
        P::Restore(_) | P::Vm(_) => "boot",
    };
    Fail::new(code, e)
}

/// A baked snapshot to start VMs from.
#[napi]
pub struct Image {
    inner: sm::Image,
}

#[napi]
impl Image {
    /// Bakes (boot, workload, warm-up, snapshot), or finds the snapshot an identical bake
    /// made. index.js passes a `warmup` function separately.
    #[napi(ts_return_type = "Promise<Image>")]
    pub fn build<'e>(
        env: &'e Env,
        options: BuildOptions,
        warmup: Option<WarmupFn>,
    ) -> Result<Object<'e>> {
        let opts = bake_options(options, warmup);
        promise(
            env,
            move || sm::Image::build(opts?).map_err(bake_fail),
            |_, inner| Ok(Image { inner }),
        )
    }

    /// The snapshot in `dir` (verified).
    #[napi(ts_return_type = "Promise<Image>")]
    pub fn from_snapshot<'e>(env: &'e Env, dir: String) -> Result<Object<'e>> {
        promise(
            env,
            move || sm::Image::from_snapshot(std::path::Path::new(&dir)).map_err(pool_fail),
            |_, inner| Ok(Image { inner }),
        )
    }

    /// The snapshot directory.
    #[napi(getter)]
    pub fn snapshot(&self) -> String {
        self.inner.snapshot().to_string_lossy().into_owned()
    }

    /// Whether the build was a cache hit (nothing booted).
    #[napi(getter)]
    pub fn was_cached(&self) -> bool {
        self.inner.was_cached()
    }

    /// A pool of restored clones of this image.
    #[napi(ts_return_type = "Promise<Pool>")]
    pub fn pool<'e>(&self, env: &'e Env, options: Option<PoolOptions>) -> Result<Object<'e>> {
        let image = self.inner.clone();
        let o = options.unwrap_or(PoolOptions {
            min: None,
            max: None,
            restore_on_release: None,
            idle_timeout_ms: None,
            acquire_timeout_ms: None,
        });
        let d = sm::PoolOptions::default();
        let ms = |v: Option<f64>, d: Duration| v.map_or(d, |v| Duration::from_millis(v as u64));
        let opts = sm::PoolOptions {
            min: o.min.map_or(d.min, |v| v as usize),
            max: o.max.map_or(d.max, |v| v as usize),
            restore_on_release: o.restore_on_release.unwrap_or(d.restore_on_release),
            acquire_timeout: ms(o.acquire_timeout_ms, d.acquire_timeout),
            idle_timeout: ms(o.idle_timeout_ms, d.idle_timeout),
        };
        promise(
            env,
            move || image.pool(opts).map_err(pool_fail),
            |_, pool| {
                Ok(Pool {
                    inner: Some(Arc::new(RwLock::new(Some(pool)))),
                })
            },
        )
    }
}

// ---------------------------------------------------------------------------------------
// Pools

/// `image.pool`'s options (defaults: sm's `PoolOptions`).
#[napi(object)]
pub struct PoolOptions {
    /// VMs kept restored and paused, ready to hand out (default 1).
    pub min: Option<u32>,
    /// VMs at most at once (default 4).
    pub max: Option<u32>,
    /// A released VM is replaced by a fresh clone (default true).
    pub restore_on_release: Option<bool>,
    /// Ready VMs above `min` idle this long are stopped (default 300000).
    pub idle_timeout_ms: Option<f64>,
    /// How long `acquire` waits for a VM (default 60000).
    pub acquire_timeout_ms: Option<f64>,
}

type PoolCell = Arc<RwLock<Option<sm::Pool>>>;

/// A pool of restored clones of one image.
#[napi]
pub struct Pool {
    /// Taken by `Drop`, which hands it to a thread (a pool's teardown waits).
    inner: Option<PoolCell>,
}

impl Pool {
    fn cell(&self) -> PoolCell {
        self.inner.clone().expect("held until dropped")
    }
}

#[napi]
impl Pool {
    /// A ready VM, resumed.
    #[napi(ts_return_type = "Promise<Vm>")]
    pub fn acquire<'e>(&self, env: &'e Env) -> Result<Object<'e>> {
        let cell = self.cell();
        promise(
            env,
            move || {
                let g = cell.read().unwrap_or_else(|e| e.into_inner());
                let pool = g
                    .as_ref()
                    .ok_or_else(|| Fail::new("pool", "the pool is shut down"))?;
                pool.acquire().map_err(pool_fail)
            },
            |_, vm| Ok(Vm::of(Arc::new(VmInner::new(Target::Pooled(Box::new(vm)))))),
        )
    }

    /// `{ ready, inUse, restoring }` right now.
    #[napi]
    pub fn counts(&self) -> PoolCounts {
        let cell = self.cell();
        let g = cell.read().unwrap_or_else(|e| e.into_inner());
        let (ready, in_use, restoring) = g.as_ref().map_or((0, 0, 0), sm::Pool::counts);
        PoolCounts {
            ready: ready as u32,
            in_use: in_use as u32,
            restoring: restoring as u32,
        }
    }

    /// Stops every VM of the pool (handed-out ones as they are released).
    #[napi(ts_return_type = "Promise<void>")]
    pub fn shutdown<'e>(&self, env: &'e Env) -> Result<Object<'e>> {
        let cell = self.cell();
        promise(
            env,
            move || {
                let pool = cell.write().unwrap_or_else(|e| e.into_inner()).take();
                if let Some(p) = pool {
                    p.shutdown();
                }
                Ok(())
            },
            |_, ()| Ok(()),
        )
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        if let Some(cell) = self.inner.take() {
            let _ = std::thread::Builder::new().spawn(move || drop(cell));
        }
    }
}

/// How many VMs a pool has.
#[napi(object)]
pub struct PoolCounts {
    /// Restored and paused, ready to hand out.
    pub ready: u32,
    /// Handed out.
    pub in_use: u32,
    /// Being restored.
    pub restoring: u32,
}

// ---------------------------------------------------------------------------------------
// VMs

/// What a JS VM object drives.
enum Target {
    /// A VM handed out by a pool.
    Pooled(Box<sm::PooledVm>),
    /// The VM of a bake, during its warm-up (its agent and the image's root).
    Warmup { agent: Agent, root: Option<String> },
}

impl Target {
    fn agent(&self) -> &Agent {
        match self {
            Target::Pooled(vm) => vm.agent(),
            Target::Warmup { agent, .. } => agent,
        }
    }

    fn root(&self) -> &str {
        match self {
            Target::Pooled(vm) => vm.guest_root().unwrap_or(""),
            Target::Warmup { root, .. } => root.as_deref().unwrap_or(""),
        }
    }

    /// A command with the VM's defaults (a pooled VM: the snapshot's environment, working
    /// directory and user).
    fn exec(&self, argv: &[String]) -> sm::ExecBuilder<'_> {
        match self {
            Target::Pooled(vm) => vm.exec(argv),
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

struct VmInner {
    target: RwLock<Option<Target>>,
    /// Why there is no target any more.
    gone: Mutex<&'static str>,
    forwarders: Mutex<Vec<Arc<Forward>>>,
}

impl VmInner {
    fn new(target: Target) -> VmInner {
        VmInner {
            target: RwLock::new(Some(target)),
            gone: Mutex::new("the VM was released"),
            forwarders: Mutex::new(vec![]),
        }
    }

    /// `f` with the target, unless the VM is gone.
    fn with<R>(
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
    fn invalidate(&self, why: &'static str) {
        *lock(&self.gone) = why;
        let target = self
            .target
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        for f in lock(&self.forwarders).drain(..) {
            f.close();
        }
        if let Some(Target::Pooled(vm)) = target {
            (*vm).release();
        }
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
    /// The signal that ended it, if one did.
    pub signal: Option<i32>,
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
fn build_exec<'a>(
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

/// A VM: handed out by `pool.acquire()`, or given to a warm-up.
#[napi]
pub struct Vm {
    /// Taken by `Drop`, which hands it to a thread (a release may wait).
    inner: Option<Arc<VmInner>>,
}

impl Vm {
    fn of(inner: Arc<VmInner>) -> Vm {
        Vm { inner: Some(inner) }
    }

    fn inner(&self) -> Arc<VmInner> {
        self.inner.clone().expect("held until dropped")
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        if let Some(inner) = self.inner.take() {
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
    /// Runs a command to its end: `{ stdout, stderr, exitCode, signal }`.
    #[napi(ts_return_type = "Promise<ExecResult>")]
    pub fn exec<'e>(&self, env: &'e Env, options: ExecOptions) -> Result<Object<'e>> {
        let inner = self.inner();
        let stdin = options.stdin.as_ref().map(|b| b.to_vec());
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
                let out = inner.with(|t| {
                    build_exec(t, &argv, &vars, &cwd, timeout)
                        .output_with_stdin(stdin.as_deref())
                        .map_err(|e| Fail::new("exec", format!("{argv:?}: {e}")))
                })?;
                if out.exit.timed_out {
                    let mut f = Fail::new(
                        "timeout",
                        format!(
                            "{argv:?} did not finish within {} ms (killed)",
                            timeout_ms.unwrap_or(0.0) as u64
                        ),
                    );
                    f.output = Some((out.stdout, out.stderr));
                    return Err(f);
                }
                Ok(out)
            },
            |_, out| {
                Ok(ExecResult {
                    exit_code: out.exit.shell_code().into(),
                    signal: out.exit.signal,
                    stdout: out.stdout.into(),
                    stderr: out.stderr.into(),
                })
            },
        )
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
                    Target::Pooled(vm) => vm
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

// ---------------------------------------------------------------------------------------
// Spawned commands

/// Output read from a child by a pump thread, waiting for JS to take it.
#[derive(Default)]
struct Pipe {
    state: Mutex<(Vec<u8>, bool)>,
    changed: Condvar,
}

impl Pipe {
    /// Copies `from` in until its end.
    fn pump(self: Arc<Self>, mut from: impl Read + Send + 'static) {
        let _ = std::thread::Builder::new()
            .name("sm-node-pipe".into())
            .spawn(move || {
                let mut buf = vec![0u8; 64 << 10];
                loop {
                    let n = from.read(&mut buf).unwrap_or(0);
                    let mut st = lock(&self.state);
                    if n == 0 {
                        st.1 = true;
                    } else {
                        st.0.extend_from_slice(&buf[..n]);
                    }
                    self.changed.notify_all();
                    if n == 0 {
                        return;
                    }
                }
            });
    }

    /// Up to `max` bytes once there are some; `None` at the end.
    fn read(&self, max: usize) -> Option<Vec<u8>> {
        let mut st = lock(&self.state);
        while st.0.is_empty() && !st.1 {
            st = self.changed.wait(st).unwrap_or_else(|e| e.into_inner());
        }
        if st.0.is_empty() {
            return None;
        }
        let n = max.min(st.0.len());
        Some(st.0.drain(..n).collect())
    }
}

struct ChildInner {
    child: Mutex<sm::Child>,
    stdin: Mutex<Option<sm::ChildStdin>>,
    control: sm::ChildControl,
    stdout: Arc<Pipe>,
    stderr: Arc<Pipe>,
}

/// A command running in the guest.
#[napi]
pub struct Child {
    inner: Arc<ChildInner>,
}

/// How a command ended.
#[napi(object)]
pub struct ExitStatus {
    /// Its exit code as a shell reports it (128 + N after signal N).
    pub exit_code: i32,
    /// The signal that ended it, if one did.
    pub signal: Option<i32>,
    /// Whether its timeout killed it.
    pub timed_out: bool,
}

impl Child {
    /// Takes the streams out of `child` (output is read as it comes, so an unread stream
    /// never stalls the command).
    fn start(mut child: sm::Child) -> std::result::Result<Child, Fail> {
        let control = child.control().map_err(|e| Fail::new("exec", e))?;
        let stdout = Arc::new(Pipe::default());
        let stderr = Arc::new(Pipe::default());
        if let Some(o) = child.stdout.take() {
            stdout.clone().pump(o);
        }
        if let Some(o) = child.stderr.take() {
            stderr.clone().pump(o);
        }
        Ok(Child {
            inner: Arc::new(ChildInner {
                stdin: Mutex::new(child.stdin.take()),
                child: Mutex::new(child),
                control,
                stdout,
                stderr,
            }),
        })
    }

    fn read<'e>(&self, env: &'e Env, err: bool, max: Option<u32>) -> Result<Object<'e>> {
        let inner = self.inner.clone();
        let max = max.map_or(64 << 10, |m| m.max(1) as usize);
        promise(
            env,
            move || {
                let pipe = if err { &inner.stderr } else { &inner.stdout };
                Ok(pipe.read(max))
            },
            |_, bytes| Ok(bytes.map(Buffer::from)),
        )
    }
}

#[napi]
impl Child {
    /// Writes to the command's stdin.
    #[napi(ts_return_type = "Promise<void>")]
    pub fn write_stdin<'e>(&self, env: &'e Env, data: Buffer) -> Result<Object<'e>> {
        let inner = self.inner.clone();
        let data = data.to_vec();
        promise(
            env,
            move || {
                let mut g = lock(&inner.stdin);
                let stdin = g
                    .as_mut()
                    .ok_or_else(|| Fail::new("exec", "stdin is closed"))?;
                stdin
                    .write_all(&data)
                    .map_err(|e| Fail::new("exec", format!("writing stdin: {e}")))
            },
            |_, ()| Ok(()),
        )
    }

    /// Closes the command's stdin (it reads end of file).
    #[napi(ts_return_type = "Promise<void>")]
    pub fn close_stdin<'e>(&self, env: &'e Env) -> Result<Object<'e>> {
        let inner = self.inner.clone();
        promise(
            env,
            move || match lock(&inner.stdin).take() {
                Some(s) => s
                    .close()
                    .map_err(|e| Fail::new("exec", format!("closing stdin: {e}"))),
                None => Ok(()),
            },
            |_, ()| Ok(()),
        )
    }

    /// The next bytes of stdout (up to `maxBytes`, default 64 KiB), or `null` at its end.
    #[napi(ts_return_type = "Promise<Buffer | null>")]
    pub fn read_stdout<'e>(&self, env: &'e Env, max_bytes: Option<u32>) -> Result<Object<'e>> {
        self.read(env, false, max_bytes)
    }

    /// The next bytes of stderr, or `null` at its end.
    #[napi(ts_return_type = "Promise<Buffer | null>")]
    pub fn read_stderr<'e>(&self, env: &'e Env, max_bytes: Option<u32>) -> Result<Object<'e>> {
        self.read(env, true, max_bytes)
    }

    /// Sends signal number `signal` (default 15, SIGTERM) to the command.
    #[napi(ts_return_type = "Promise<void>")]
    pub fn kill<'e>(&self, env: &'e Env, signal: Option<i32>) -> Result<Object<'e>> {
        let inner = self.inner.clone();
        promise(
            env,
            move || {
                inner
                    .control
                    .signal(signal.unwrap_or(15))
                    .map_err(|e| Fail::new("exec", format!("signalling: {e}")))
            },
            |_, ()| Ok(()),
        )
    }

    /// Waits for the end (closing stdin if still open): `{ exitCode, signal, timedOut }`.
    #[napi(ts_return_type = "Promise<ExitStatus>")]
    pub fn wait<'e>(&self, env: &'e Env) -> Result<Object<'e>> {
        let inner = self.inner.clone();
        promise(
            env,
            move || {
                drop(lock(&inner.stdin).take());
                lock(&inner.child)
                    .wait()
                    .map_err(|e| Fail::new("exec", format!("waiting: {e}")))
            },
            |_, exit| {
                Ok(ExitStatus {
                    exit_code: exit.shell_code().into(),
                    signal: exit.signal,
                    timed_out: exit.timed_out,
                })
            },
        )
    }
}

// ---------------------------------------------------------------------------------------
// Port forwarding

/// sm's `Vm::expose_tcp` needs `&mut Vm` (a pooled VM derefs only to `&Vm`) and does not
/// tell the port it bound: the binding forwards itself, the same way, through the agent.
struct Forward {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl Forward {
    fn start(agent: Agent, host: u16, guest: u16) -> std::io::Result<Arc<Forward>> {
        let listener = TcpListener::bind(("127.0.0.1", host))?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name("sm-node-forward".into())
            .spawn(move || {
                while !flag.load(Ordering::Relaxed) {
                    match listener.accept() {
                        Ok((tcp, _)) => {
                            let agent = agent.clone();
                            std::thread::spawn(move || {
                                if tcp.set_nonblocking(false).is_err() {
                                    return;
                                }
                                // A refused guest port closes the host connection.
                                if let Ok(tunnel) = agent.connect_tcp(guest) {
                                    let _ = tunnel.splice(tcp);
                                }
                            });
                        }
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                            std::thread::sleep(Duration::from_millis(5))
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(50)),
                    }
                }
            })?;
        Ok(Arc::new(Forward {
            addr,
            stop,
            thread: Mutex::new(Some(thread)),
        }))
    }

    fn close(&self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = lock(&self.thread).take() {
            let _ = t.join();
        }
    }
}

/// A host port forwarded to a guest port.
#[napi]
pub struct Forwarder {
    inner: Arc<Forward>,
}

#[napi]
impl Forwarder {
    /// `127.0.0.1:PORT`.
    #[napi(getter)]
    pub fn address(&self) -> String {
        self.inner.addr.to_string()
    }

    /// The host address (`127.0.0.1`).
    #[napi(getter)]
    pub fn host(&self) -> String {
        self.inner.addr.ip().to_string()
    }

    /// The host port.
    #[napi(getter)]
    pub fn port(&self) -> u32 {
        self.inner.addr.port().into()
    }

    /// Stops accepting connections (open ones finish on their own).
    #[napi(ts_return_type = "Promise<void>")]
    pub fn close<'e>(&self, env: &'e Env) -> Result<Object<'e>> {
        let inner = self.inner.clone();
        promise(
            env,
            move || {
                inner.close();
                Ok(())
            },
            |_, ()| Ok(()),
        )
    }
}

/// The binding's version.
#[napi]
pub fn version() -> String {
    env!("CARGO_PKG_VERSION").to_owned()
}

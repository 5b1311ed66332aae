//! The Node.js binding of sm (napi-rs): `Image.build`, `Image.fromSnapshot`, `image.pool`,
//! `pool.acquire`, and a VM's `exec`, `spawn`, `writeFile`, `readFile`, `exposeTcp`,
//! `snapshot` and `release`. No call blocks the JS thread, and any number of VMs are driven
//! at once: `exec` and the `acquire` of a ready VM are driven by the JS thread's own event
//! loop (their non-blocking sockets polled by libuv: `event_loop.rs`); every other call that
//! waits runs on a thread of its own (never on libuv's small pool); a `release` that cannot
//! wait is done on the JS thread. Each settles a promise; a failure rejects with an `Error`
//! whose message is sm's one line and whose `code` says what failed: `image`, `boot`,
//! `timeout`, `exec`, `pool`, `snapshot`, `io` or `args`. `index.js` beside this crate is
//! the package's entry point.

use std::future::Future;
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, RwLock};
use std::task::{Context, Poll, Wake};
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
    workers::run(Box::new(move || {
        let result = work();
        deferred.resolve(move |env| match result {
            Ok(v) => convert(env, v),
            Err(f) => Err(f.into_js(env)),
        });
    }))
    .map_err(|e| napi::Error::from_reason(format!("starting a thread: {e}")))?;
    Ok(promise)
}

/// A promise rejected with `f`.
pub(crate) fn rejected<'e>(env: &'e Env, f: Fail) -> Result<Object<'e>> {
    promise(env, move || Err::<(), _>(f), |_, ()| Ok(()))
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

/// A signal number, or JS `null` when none ended the command.
fn signal_or_null(signal: Option<i32>) -> Either<i32, Null> {
    signal.map_or(Either::B(Null), Either::A)
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

mod child;
mod event_loop;
mod forward;
mod image;
mod pool;
mod vm;
mod workers;

pub use child::*;
pub use forward::*;
pub use image::*;
pub use pool::*;
pub use vm::*;

/// The binding's version.
#[napi]
pub fn version() -> String {
    env!("CARGO_PKG_VERSION").to_owned()
}

//! Calls driven by the JS thread's own event loop (libuv): the call's non-blocking socket
//! is polled by the loop, its protocol advanced in the loop's callbacks, and its promise
//! settled there. A call through a thread of its own costs two thread switches (to the
//! worker and, through a threadsafe function, back), each a wait for a CPU that a busy
//! guest's vCPU thread may hold; here the JS thread wakes once, when the answer arrives, as
//! a thread blocked in the Rust library does.
//!
//! Node exports libuv to addons; a handle's memory is ours from `uv_*_init` until its close
//! callback, and the call's socket stays open until then (libuv must not poll a closed fd).

use std::alloc::Layout;
use std::cell::Cell;
use std::ffi::{c_int, c_void};
use std::os::fd::RawFd;
use std::ptr::null_mut;
use std::task::Poll;
use std::time::Instant;

use napi::bindgen_prelude::*;
use napi::sys;

/// What settles a call's promise, on the JS thread: its value, or the error to reject with.
pub(crate) type Settle = Box<dyn FnOnce(Env) -> Result<sys::napi_value>>;

/// A call the event loop drives: a socket to poll and a step to take when it is ready.
pub(crate) trait Exchange {
    /// The socket (open until the call is dropped).
    fn fd(&self) -> RawFd;
    /// Whether to poll for writability too.
    fn wants_write(&self) -> bool;
    /// When to take a step even if the socket stays quiet (the call's timeout).
    fn deadline(&self) -> Option<Instant>;
    /// Takes the protocol as far as the socket allows: `Ready` once the call is done.
    fn advance(&mut self) -> Poll<Settle>;
}

// libuv's ABI (uv.h): handle types and poll events.
const UV_POLL: c_int = 8;
const UV_TIMER: c_int = 13;
const UV_READABLE: c_int = 1;
const UV_WRITABLE: c_int = 2;

type Handle = *mut c_void;

extern "C" {
    fn uv_handle_size(kind: c_int) -> usize;
    fn uv_handle_set_data(handle: Handle, data: *mut c_void);
    fn uv_handle_get_data(handle: Handle) -> *mut c_void;
    fn uv_poll_init(event_loop: *mut sys::uv_loop_s, handle: Handle, fd: c_int) -> c_int;
    fn uv_poll_start(
        handle: Handle,
        events: c_int,
        cb: unsafe extern "C" fn(Handle, c_int, c_int),
    ) -> c_int;
    fn uv_timer_init(event_loop: *mut sys::uv_loop_s, handle: Handle) -> c_int;
    fn uv_timer_start(
        handle: Handle,
        cb: unsafe extern "C" fn(Handle),
        timeout_ms: u64,
        repeat_ms: u64,
    ) -> c_int;
    fn uv_timer_stop(handle: Handle) -> c_int;
    fn uv_close(handle: Handle, cb: unsafe extern "C" fn(Handle));
}

/// One call in flight: owned by its handles (freed when both are closed).
struct Call {
    exchange: Box<dyn Exchange>,
    env: sys::napi_env,
    /// Null once settled.
    deferred: sys::napi_deferred,
    poll: Handle,
    timer: Handle,
    /// The events polled for now.
    events: c_int,
    /// Handles not yet closed.
    open: u8,
}

fn handle_layout(kind: c_int) -> Layout {
    // SAFETY: uv_handle_size only reads a table of libuv's struct sizes.
    let size = unsafe { uv_handle_size(kind) };
    Layout::from_size_align(size.max(1), 16).expect("a handle's size")
}

fn new_handle(kind: c_int) -> Handle {
    let layout = handle_layout(kind);
    // SAFETY: the layout has a non-zero size.
    let h = unsafe { std::alloc::alloc_zeroed(layout) };
    if h.is_null() {
        std::alloc::handle_alloc_error(layout);
    }
    h.cast()
}

fn check(status: sys::napi_status, what: &str) -> Result<()> {
    if status == sys::Status::napi_ok {
        Ok(())
    } else {
        Err(Error::from_reason(format!(
            "{what} failed (napi status {status})"
        )))
    }
}

/// Starts driving `exchange` on `env`'s event loop; returns the promise it settles.
pub(crate) fn drive<'e>(env: &'e Env, exchange: Box<dyn Exchange>) -> Result<Object<'e>> {
    let raw = env.raw();
    let mut event_loop = null_mut();
    // SAFETY: `raw` is the live env of this (JS) thread; the out pointer is valid.
    let status = unsafe { sys::napi_get_uv_event_loop(raw, &mut event_loop) };
    check(status, "napi_get_uv_event_loop")?;
    let poll = new_handle(UV_POLL);
    // SAFETY: `poll` is fresh memory of a poll handle's size; the loop is this thread's.
    let rc = unsafe { uv_poll_init(event_loop, poll, exchange.fd()) };
    if rc != 0 {
        // SAFETY: not initialised, so libuv holds no reference to it.
        unsafe { std::alloc::dealloc(poll.cast(), handle_layout(UV_POLL)) };
        return Err(Error::from_reason(format!("uv_poll_init failed ({rc})")));
    }
    let timer = new_handle(UV_TIMER);
    // SAFETY: as for the poll handle (uv_timer_init cannot fail).
    unsafe { uv_timer_init(event_loop, timer) };
    let (mut deferred, mut promise) = (null_mut(), null_mut());
    // SAFETY: live env, valid out pointers.
    let status = unsafe { sys::napi_create_promise(raw, &mut deferred, &mut promise) };
    let created = check(status, "napi_create_promise");
    let call = Box::into_raw(Box::new(Call {
        exchange,
        env: raw,
        deferred,
        poll,
        timer,
        events: 0,
        open: 2,
    }));
    // SAFETY: both handles are initialised; `call` lives until both are closed.
    unsafe {
        uv_handle_set_data(poll, call.cast());
        uv_handle_set_data(timer, call.cast());
    }
    if let Err(e) = created {
        // SAFETY: `call` and its handles are live; close frees them.
        unsafe { close(call) };
        return Err(e);
    }
    // SAFETY: as above; settled calls are not touched again but for their close.
    unsafe {
        sys::napi_add_env_cleanup_hook(raw, Some(on_env_teardown), call.cast());
        arm(call);
        Object::from_napi_value(raw, promise)
    }
}

/// Polls for what the exchange waits on and sets the timer to its deadline.
///
/// # Safety
/// `call` is live and not settled.
unsafe fn arm(call: *mut Call) {
    // SAFETY: the caller's contract.
    let c = unsafe { &mut *call };
    let events = UV_READABLE
        | if c.exchange.wants_write() {
            UV_WRITABLE
        } else {
            0
        };
    if events != c.events {
        // SAFETY: an initialised poll handle; restarting replaces the events.
        unsafe { uv_poll_start(c.poll, events, on_poll) };
        c.events = events;
    }
    match c.exchange.deadline() {
        Some(at) => {
            let ms = at.saturating_duration_since(Instant::now()).as_millis() as u64 + 1;
            // SAFETY: an initialised timer handle.
            unsafe { uv_timer_start(c.timer, on_timer, ms, 0) };
        }
        // SAFETY: as above.
        None => unsafe {
            uv_timer_stop(c.timer);
        },
    }
}

unsafe extern "C" fn on_poll(handle: Handle, _status: c_int, _events: c_int) {
    // SAFETY: the data pointer was set to the live call in `drive`; callbacks stop at close.
    unsafe { step(uv_handle_get_data(handle).cast()) }
}

unsafe extern "C" fn on_timer(handle: Handle) {
    // SAFETY: as in `on_poll`.
    unsafe { step(uv_handle_get_data(handle).cast()) }
}

/// Advances the call, and settles it once done.
///
/// # Safety
/// `call` is live; called on the JS thread from a loop callback.
unsafe fn step(call: *mut Call) {
    // SAFETY: the caller's contract.
    let c = unsafe { &mut *call };
    if c.deferred.is_null() {
        return;
    }
    match c.exchange.advance() {
        // SAFETY: live and unsettled.
        Poll::Pending => unsafe { arm(call) },
        Poll::Ready(settle) => {
            let (env, deferred) = (c.env, std::mem::replace(&mut c.deferred, null_mut()));
            // SAFETY: live; settling below does not touch the call.
            unsafe {
                sys::napi_remove_env_cleanup_hook(env, Some(on_env_teardown), call.cast());
                close(call);
                settle_promise(env, deferred, settle);
            }
        }
    }
}

/// Resolves or rejects `deferred` inside a callback scope, as a native callback from
/// the loop must: closing the scope runs the microtasks the settling queued.
///
/// # Safety
/// On the JS thread of `env`, from a loop callback (no JS on the stack).
unsafe fn settle_promise(env: sys::napi_env, deferred: sys::napi_deferred, settle: Settle) {
    let mut handles = null_mut();
    let mut scope = null_mut();
    let mut resource = null_mut();
    // SAFETY: live env, valid out pointers; the scopes close in reverse order below. The
    // async context outlives the env (made once per thread, never destroyed).
    unsafe {
        sys::napi_open_handle_scope(env, &mut handles);
        sys::napi_create_object(env, &mut resource);
        sys::napi_open_callback_scope(env, resource, async_context(env), &mut scope);
        match settle(Env::from_raw(env)) {
            Ok(v) => sys::napi_resolve_deferred(env, deferred, v),
            Err(e) => sys::napi_reject_deferred(env, deferred, JsError::from(e).into_value(env)),
        };
        sys::napi_close_callback_scope(env, scope);
        sys::napi_close_handle_scope(env, handles);
    }
}

thread_local! {
    /// The async context the loop's settlings run in, per JS thread (one env each).
    static CONTEXT: Cell<(sys::napi_env, sys::napi_async_context)> =
        const { Cell::new((null_mut(), null_mut())) };
}

/// This thread's async context for `env`, made on first use.
///
/// # Safety
/// On the JS thread of `env`, inside a handle scope.
unsafe fn async_context(env: sys::napi_env) -> sys::napi_async_context {
    let (known, ctx) = CONTEXT.get();
    if known == env && !ctx.is_null() {
        return ctx;
    }
    let (mut name, mut ctx) = (null_mut(), null_mut());
    let label = "sm";
    // SAFETY: live env; the label's pointer and length describe UTF-8 bytes.
    unsafe {
        sys::napi_create_string_utf8(env, label.as_ptr().cast(), label.len() as isize, &mut name);
        sys::napi_async_init(env, null_mut(), name, &mut ctx);
    }
    CONTEXT.set((env, ctx));
    ctx
}

/// Closes the call's handles; the last close callback frees the call.
///
/// # Safety
/// `call` is live and its handles not closed yet.
unsafe fn close(call: *mut Call) {
    // SAFETY: the caller's contract; closing stops a handle first.
    unsafe {
        let c = &*call;
        uv_close(c.poll, on_closed);
        uv_close(c.timer, on_closed);
    }
}

unsafe extern "C" fn on_closed(handle: Handle) {
    // SAFETY: the data pointer is the call (live until its last handle closes here).
    unsafe {
        let call: *mut Call = uv_handle_get_data(handle).cast();
        let kind = if handle == (*call).poll {
            UV_POLL
        } else {
            UV_TIMER
        };
        std::alloc::dealloc(handle.cast(), handle_layout(kind));
        (*call).open -= 1;
        if (*call).open == 0 {
            drop(Box::from_raw(call));
        }
    }
}

/// The env ends (a worker thread stops) with the call in flight: its handles close so the
/// loop can; the promise is gone with the env.
unsafe extern "C" fn on_env_teardown(arg: *mut c_void) {
    let call: *mut Call = arg.cast();
    // SAFETY: the hook is removed when the call settles, so the call is live and unsettled.
    unsafe {
        (*call).deferred = null_mut();
        close(call);
    }
}

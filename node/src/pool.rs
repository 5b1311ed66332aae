//! `image.pool(...)`, `pool.acquire()`, `pool.shutdown()`.

use super::*;
use sm_snapshot::api::{ApiClient, ApiExchange};

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
    /// The clones' egress rules, replacing the image's (default: the image's).
    pub egress: Option<Vec<String>>,
}

pub(crate) type PoolCell = Arc<RwLock<Option<sm::Pool>>>;

/// A pool of restored clones of one image.
#[napi]
pub struct Pool {
    /// Taken by `Drop`, which hands it to a thread (a pool's teardown waits).
    pub(crate) inner: Option<PoolCell>,
}

impl Pool {
    pub(crate) fn cell(&self) -> PoolCell {
        self.inner.clone().expect("held until dropped")
    }
}

#[napi]
impl Pool {
    /// A ready VM, resumed. A VM ready now is resumed by the event loop (see
    /// `event_loop.rs`); otherwise a thread waits for one.
    #[napi(ts_return_type = "Promise<Vm>")]
    pub fn acquire<'e>(&self, env: &'e Env) -> Result<Object<'e>> {
        let cell = self.cell();
        // A shutdown holds the lock while it stops VMs: never wait for it here.
        let taken = match cell.try_read() {
            Ok(g) => match g.as_ref() {
                Some(pool) => pool.take_ready(),
                None => Err(sm::pool::PoolError::ShutDown),
            },
            Err(_) => Ok(None),
        };
        let resuming = match taken {
            Ok(Some(r)) => r,
            Ok(None) => return acquire_on_thread(env, cell),
            Err(e) => return rejected(env, pool_fail(e)),
        };
        match ApiClient::new(resuming.api_socket()).start_resume() {
            Ok(exchange) => event_loop::drive(
                env,
                Box::new(AcquireCall {
                    exchange,
                    resuming: Some(resuming),
                    pool: cell,
                }),
            ),
            Err(e) => rejected(env, pool_fail(resuming.failed(&e))),
        }
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

/// `acquire` on a thread of its own, which waits for a ready VM.
fn acquire_on_thread<'e>(env: &'e Env, cell: PoolCell) -> Result<Object<'e>> {
    let kept = cell.clone();
    promise(
        env,
        move || {
            let g = cell.read().unwrap_or_else(|e| e.into_inner());
            let pool = g
                .as_ref()
                .ok_or_else(|| Fail::new("pool", "the pool is shut down"))?;
            pool.acquire().map_err(pool_fail)
        },
        move |_, vm| Ok(pooled_vm(vm, kept)),
    )
}

/// The JS VM of a VM handed out by `pool`.
fn pooled_vm(vm: sm::PooledVm, pool: PoolCell) -> Vm {
    Vm::of(Arc::new(VmInner::new(Target::Pooled {
        vm: Box::new(vm),
        pool,
    })))
}

/// `acquire` resuming a ready VM on the event loop.
struct AcquireCall {
    exchange: ApiExchange,
    /// Taken by the settling.
    resuming: Option<sm::Resuming>,
    pool: PoolCell,
}

impl event_loop::Exchange for AcquireCall {
    fn fd(&self) -> std::os::fd::RawFd {
        self.exchange.fd()
    }

    fn wants_write(&self) -> bool {
        self.exchange.wants_write()
    }

    fn deadline(&self) -> Option<std::time::Instant> {
        Some(self.exchange.deadline())
    }

    fn advance(&mut self) -> std::task::Poll<event_loop::Settle> {
        let std::task::Poll::Ready(answer) = self.exchange.advance() else {
            return std::task::Poll::Pending;
        };
        let resuming = self.resuming.take().expect("settled once");
        let settled = match answer {
            Ok(_) => Ok(pooled_vm(resuming.resumed(), self.pool.clone())),
            Err(e) => Err(pool_fail(resuming.failed(&e))),
        };
        std::task::Poll::Ready(Box::new(move |env: Env| match settled {
            // SAFETY: on the JS thread of `env`, inside the settling's handle scope.
            Ok(vm) => unsafe { Vm::to_napi_value(env.raw(), vm) },
            Err(f) => Err(f.into_js(env)),
        }))
    }
}

//! `image.pool(...)`, `pool.acquire()`, `pool.shutdown()`.

use super::*;

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
    /// A ready VM, resumed.
    #[napi(ts_return_type = "Promise<Vm>")]
    pub fn acquire<'e>(&self, env: &'e Env) -> Result<Object<'e>> {
        let cell = self.cell();
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
            move |_, vm| {
                Ok(Vm::of(Arc::new(VmInner::new(Target::Pooled {
                    vm: Box::new(vm),
                    pool: kept,
                }))))
            },
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

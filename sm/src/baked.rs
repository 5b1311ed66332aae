//! A baked image as programs use it: built once (a cached bake), then VMs handed out from
//! pools of clones, as in `Image::build(..)?.pool(..)?.acquire()?`.

use std::path::{Path, PathBuf};

use crate::bake::{bake, BakeError, BakeOptions, Baked};
use crate::pool::{Pool, PoolError, PoolOptions};

/// A snapshot to start VMs from: made by [`Image::build`] or taken from a directory.
#[derive(Clone, Debug)]
pub struct Image {
    snapshot: PathBuf,
    cached: bool,
}

impl Image {
    /// Bakes `opts` (boot, workload, warm-up, snapshot), or finds the snapshot an
    /// identical bake made; steps are traced (`SM_LOG=info`).
    pub fn build(opts: BakeOptions) -> Result<Image, BakeError> {
        let mut progress = |step: &str| crate::trace::step(format_args!("bake: {step}"));
        let baked = bake(opts, &mut progress)?;
        Ok(Image {
            cached: matches!(baked, Baked::Cached(_)),
            snapshot: baked.path().to_owned(),
        })
    }

    /// The snapshot in `dir` (one `PUT /vm/snapshot`, `sm snapshot` or a bake wrote),
    /// verified.
    pub fn from_snapshot(dir: &Path) -> Result<Image, PoolError> {
        sm_snapshot::verify_sealed(dir).map_err(|e| PoolError::Snapshot(e.to_string()))?;
        Ok(Image {
            snapshot: std::path::absolute(dir).unwrap_or_else(|_| dir.to_owned()),
            cached: true,
        })
    }

    /// The snapshot directory.
    pub fn snapshot(&self) -> &Path {
        &self.snapshot
    }

    /// Whether the build was a cache hit (nothing booted).
    pub fn was_cached(&self) -> bool {
        self.cached
    }

    /// A pool of clones of this image.
    pub fn pool(&self, opts: PoolOptions) -> Result<Pool, PoolError> {
        Pool::new(&self.snapshot, opts)
    }
}

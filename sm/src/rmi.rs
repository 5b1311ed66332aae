//! `sm rmi REF`: forgets a reference, then garbage-collects unreferenced blobs and images.

use sm_oci::reference::ReferenceError;
use sm_oci::{Cache, ImageRef};

/// Flags of `sm rmi`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Image reference, as given to `sm pull`.
    reference: String,
}

/// Why `sm rmi` failed.
#[derive(Debug, thiserror::Error)]
pub enum RmiError {
    /// Bad reference.
    #[error(transparent)]
    Reference(#[from] ReferenceError),
    /// The reference is not in the cache.
    #[error("no such image: {0}")]
    NotFound(String),
    /// The cache failed.
    #[error(transparent)]
    Cache(#[from] sm_oci::cache::CacheError),
}

/// Runs `sm rmi`.
pub fn run(a: Args) -> Result<(), RmiError> {
    let image = ImageRef::parse(&a.reference)?;
    let cache = Cache::open_default()?;
    if !cache.remove_record(&image.key())? {
        return Err(RmiError::NotFound(image.to_string()));
    }
    let stats = cache.gc()?;
    println!("Untagged: {image}");
    println!("Deleted {} files, {} bytes", stats.files, stats.bytes);
    Ok(())
}

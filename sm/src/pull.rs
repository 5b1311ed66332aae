//! `sm pull [--platform os/arch[/variant]] [--insecure] REF`: prints the manifest digest.

use sm_oci::platform::PlatformError;
use sm_oci::progress::Progress;
use sm_oci::reference::ReferenceError;
use sm_oci::{Cache, ImageRef, Platform, PullOptions};

/// Flags of `sm pull`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Platform to pick from a multi-platform image.
    #[arg(long, default_value = "linux/amd64")]
    platform: String,
    /// Allow plain HTTP to a registry that is not on a loopback address.
    #[arg(long)]
    insecure: bool,
    /// Image reference.
    reference: String,
}

/// Why `sm pull` failed.
#[derive(Debug, thiserror::Error)]
pub enum PullCmdError {
    /// Bad reference.
    #[error(transparent)]
    Reference(#[from] ReferenceError),
    /// Bad platform.
    #[error(transparent)]
    Platform(#[from] PlatformError),
    /// The cache cannot be opened.
    #[error(transparent)]
    Cache(#[from] sm_oci::cache::CacheError),
    /// The pull itself failed.
    #[error(transparent)]
    Pull(#[from] sm_oci::PullError),
}

/// Runs `sm pull`.
pub fn run(a: Args) -> Result<(), PullCmdError> {
    let image = ImageRef::parse(&a.reference)?;
    let platform: Platform = a.platform.parse()?;
    let cache = Cache::open_default()?;
    let rec = sm_oci::pull(
        &cache,
        &image,
        &PullOptions {
            platform,
            insecure: a.insecure,
        },
        &Progress::auto(),
    )?;
    println!("{}", rec.manifest);
    Ok(())
}

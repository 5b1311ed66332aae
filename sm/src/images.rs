//! `sm images`: a table of pulled images (reference, short digest, size); an image whose
//! layers were refused when its root was built ends its row with `unusable: WHY`.

use sm_oci::Cache;

/// Flags of `sm images` (none yet).
#[derive(clap::Args, Debug)]
pub struct Args {}

/// Why `sm images` failed.
#[derive(Debug, thiserror::Error)]
pub enum ImagesError {
    /// The cache cannot be read.
    #[error(transparent)]
    Cache(#[from] sm_oci::cache::CacheError),
}

/// Runs `sm images`.
pub fn run(_: Args) -> Result<(), ImagesError> {
    let cache = Cache::open_default()?;
    let recs = cache.records()?;
    let width = recs
        .iter()
        .map(|r| r.reference.len())
        .max()
        .unwrap_or(0)
        .max("REFERENCE".len());
    println!("{:<width$}  {:<12}  {:>9}", "REFERENCE", "DIGEST", "SIZE");
    for r in recs {
        let row = format!(
            "{:<width$}  {:<12}  {:>9}",
            r.reference,
            r.manifest.short(),
            human(r.size)
        );
        match cache.refusal(&r.manifest) {
            Some(why) => println!("{row}  unusable: {why}"),
            None => println!("{row}"),
        }
    }
    Ok(())
}

/// Sizes as `docker images` shows them (decimal units).
fn human(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "kB", "MB", "GB", "TB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1000.0 && u < UNITS.len() - 1 {
        v /= 1000.0;
        u += 1;
    }
    if u == 0 {
        format!("{n}B")
    } else {
        format!("{v:.1}{}", UNITS[u])
    }
}

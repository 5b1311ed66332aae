//! `sm snapshots` (a table of the snapshot store) and `sm rmsnap NAME`.

use std::path::PathBuf;

use sm::store::SnapshotStore;

/// `sm snapshots` flags.
#[derive(clap::Args, Debug)]
pub struct ListArgs {
    /// The snapshot store (default: $SM_HOME/snapshots).
    #[arg(long, value_name = "DIR")]
    snapshots_dir: Option<PathBuf>,
}

/// `sm rmsnap` flags.
#[derive(clap::Args, Debug)]
pub struct RemoveArgs {
    /// The snapshots to remove.
    #[arg(required = true, value_name = "NAME")]
    names: Vec<String>,
    /// The snapshot store (default: $SM_HOME/snapshots).
    #[arg(long, value_name = "DIR")]
    snapshots_dir: Option<PathBuf>,
}

fn store(dir: Option<PathBuf>) -> SnapshotStore {
    dir.map(SnapshotStore::at)
        .unwrap_or_else(SnapshotStore::open_default)
}

/// Runs `sm snapshots`: name, image, warm-up tag, age, bake time, short key.
pub fn list(a: ListArgs) -> Result<(), String> {
    let recs = store(a.snapshots_dir).list().map_err(|e| e.to_string())?;
    let width = recs
        .iter()
        .map(|r| r.name.len())
        .chain(["NAME".len()])
        .max()
        .unwrap_or(4);
    let iwidth = recs
        .iter()
        .map(|r| r.image.as_deref().unwrap_or("-").len())
        .chain(["IMAGE".len()])
        .max()
        .unwrap_or(5);
    println!(
        "{:<width$}  {:<iwidth$}  {:<10}  {:>8}  {:>7}  KEY",
        "NAME", "IMAGE", "TAG", "AGE", "BAKE"
    );
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    for r in recs {
        println!(
            "{:<width$}  {:<iwidth$}  {:<10}  {:>8}  {:>6.1}s  {}",
            r.name,
            r.image.as_deref().unwrap_or("-"),
            if r.warmup_tag.is_empty() {
                "-"
            } else {
                &r.warmup_tag
            },
            age(now.saturating_sub(r.created)),
            r.seconds,
            &r.key[..12.min(r.key.len())]
        );
    }
    Ok(())
}

/// Runs `sm rmsnap`.
pub fn remove(a: RemoveArgs) -> Result<(), String> {
    let store = store(a.snapshots_dir);
    for name in &a.names {
        store.remove(name).map_err(|e| e.to_string())?;
        println!("{name}");
    }
    Ok(())
}

/// An age as `docker ps` shows it, roughly.
fn age(secs: u64) -> String {
    match secs {
        s if s < 120 => format!("{s}s"),
        s if s < 7200 => format!("{}m", s / 60),
        s if s < 172_800 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86_400),
    }
}

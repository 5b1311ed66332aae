//! `sm snapshot NAME DIR [--stop]`: a detached VM saved into a new snapshot directory
//! through sm-vmm's control API, with a copy of each writable volume (taken while the
//! devices are stopped) and the VM's run record (`sm.json`), so `sm restore` can start
//! clones of it. The VM keeps running unless `--stop` is given.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use sm::vm::record::{RunRecord, RECORD_FILE};
use sm::vm::runtime_root;

/// `sm snapshot` flags.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The running VM's name.
    pub name: String,
    /// The snapshot directory to create (must not exist).
    pub dir: PathBuf,
    /// Stop the VM after the snapshot instead of letting it run on.
    #[arg(long)]
    pub stop: bool,
}

/// Takes the snapshot; prints the snapshot directory.
pub fn run(a: Args) -> Result<(), String> {
    let rundir = runtime_root().join(&a.name);
    let pid =
        crate::detach::supervisor(&rundir).ok_or(format!("no running VM named {}", a.name))?;
    let record = RunRecord::read(&rundir.join(RECORD_FILE)).map_err(|e| e.to_string())?;
    let out = std::path::absolute(&a.dir).map_err(|e| format!("{}: {e}", a.dir.display()))?;
    sm::vm::snapshot::take(&rundir, &record, &out, a.stop)?;
    if a.stop {
        // sm-vmm powers off; its supervisor then stops the backends and cleans up.
        let start = Instant::now();
        while sm::vm::process::alive(pid) {
            if start.elapsed() > Duration::from_secs(60) {
                return Err(format!("{} did not stop within 60 s", a.name));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = std::fs::remove_file(runtime_root().join(format!("{}.log", a.name)));
    }
    println!("{}", out.display());
    Ok(())
}

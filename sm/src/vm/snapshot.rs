//! Saving a running VM into a new snapshot directory through sm-vmm's control API, with a
//! copy of each writable volume (taken while the devices are stopped) and the VM's run
//! record (`sm.json`), so clones of it can be started (`sm restore`, pools).

use std::path::Path;

use sm_snapshot::api::{ApiClient, Include};

use super::layout::API_SOCKET;
use super::record::{volume_file_name, RunRecord, RECORD_FILE};

/// Snapshots the VM whose runtime directory is `rundir` into `out` (which must not exist);
/// `record` describes it. With `stop` the VM powers off after the snapshot, else it runs on.
pub fn take(rundir: &Path, record: &RunRecord, out: &Path, stop: bool) -> Result<(), String> {
    if out.symlink_metadata().is_ok() {
        return Err(format!("{}: already exists", out.display()));
    }
    // The record goes in as a file of its own (sm-vmm copies files, it does not write
    // them): a private copy, so a VM that stops meanwhile cannot take it away.
    let tmp = rundir.join(format!("{RECORD_FILE}.snapshot-{}", std::process::id()));
    record.write(&tmp).map_err(|e| e.to_string())?;
    let mut include: Vec<Include> = record
        .volumes
        .iter()
        .enumerate()
        .filter(|(_, v)| !v.read_only)
        .map(|(i, v)| Include {
            name: volume_file_name(i),
            path: v.file.clone(),
        })
        .collect();
    include.push(Include {
        name: RECORD_FILE.into(),
        path: tmp.clone(),
    });
    let api = ApiClient::new(rundir.join(API_SOCKET));
    let result = api.pause_snapshot_resume(out, &include, stop);
    let _ = std::fs::remove_file(&tmp);
    result.map_err(|e| e.to_string())
}

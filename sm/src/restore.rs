//! `sm restore DIR [--name N] [-d] [--volume HOST:GUEST]... [-- CMD]`: a clone of the VM
//! in a snapshot, with its own backends, its own copy of each writable volume (or the
//! user's file of a volume the bake unmounted, when no VM uses it: `sm::vm::volumes`), the
//! mounts and ports the VM had (from the snapshot's `sm.json`), and fresh random state.
//! With `-- CMD` the command runs in the clone and `sm` exits with its status; with `-d`
//! the clone keeps running under its name (`sm exec/ps/stop`).

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::Duration;

use sm::vm::record::{RunRecord, RECORD_FILE};
use sm::vm::runtime_root;
use sm::vm::volumes;
use sm::Vm;
use sm_agent::message::ExecRequest;
use sm_vhost_user_net::policy::EgressRule;

use crate::run::{STOPPED_BY, VMM_PID};

/// `sm restore` flags.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The snapshot directory (`sm snapshot NAME DIR`).
    dir: PathBuf,
    /// A name for the clone (its runtime directory); `sm exec/stop NAME` use it.
    #[arg(long)]
    name: Option<String>,
    /// Leave the clone running in the background and print its name.
    #[arg(short = 'd', long)]
    detach: bool,
    /// Internal: the background half of `--detach`.
    #[arg(long, hide = true)]
    supervise: bool,
    /// Give the clone's volume at GUEST the host file HOST instead of a private copy in its
    /// runtime directory: a missing HOST is created as a copy of the snapshot's volume (and
    /// kept); an existing one is used as it is, and refused while a running VM uses it.
    #[arg(long = "volume", value_name = "HOST:GUEST", value_parser = parse_volume)]
    volumes: Vec<(PathBuf, String)>,
    /// The clone's egress rules, replacing the snapshot's (repeatable; as for `sm run`,
    /// after the defaults allow=any deny=host): bake with the network a warm-up needs,
    /// then lock the clones down.
    #[arg(long = "egress", value_name = "RULE")]
    egress: Vec<EgressRule>,
    /// The host resolver the clone's DNS queries go to, replacing the snapshot's.
    #[arg(long, value_name = "ADDR")]
    dns: Option<std::net::IpAddr>,
    /// A command to run in the clone; sm exits with its status and stops the clone.
    #[arg(last = true, value_name = "CMD")]
    command: Vec<String>,
}

impl Args {
    /// The restore `sm run --snapshot` makes: a clone of `dir` (a store's snapshot) running
    /// `command`, or supervised in the background (the half of `sm run -d` that stays).
    pub fn of_snapshot(
        dir: PathBuf,
        name: Option<String>,
        supervise: bool,
        network: (Vec<EgressRule>, Option<std::net::IpAddr>),
        command: Vec<String>,
    ) -> Args {
        Args {
            dir,
            name,
            detach: false,
            supervise,
            volumes: vec![],
            egress: network.0,
            dns: network.1,
            command,
        }
    }
}

fn parse_volume(v: &str) -> Result<(PathBuf, String), String> {
    match v.split_once(':') {
        Some((host, guest)) if !host.is_empty() && guest.starts_with('/') => {
            Ok((PathBuf::from(host), guest.to_owned()))
        }
        _ => Err(format!("{v:?} is not HOST:GUEST (an absolute guest path)")),
    }
}

/// What the checks found: the snapshot's record and where each volume comes from.
struct Plan {
    /// The snapshot (absolute).
    snapshot: PathBuf,
    /// Its run record.
    record: RunRecord,
    /// Per recorded volume: a `--volume` host file, or `None` for a private copy.
    hosts: Vec<Option<PathBuf>>,
}

/// Checks everything that can be checked before anything starts.
fn check(a: &Args, verify: bool) -> Result<Plan, String> {
    if a.command.is_empty() && !a.detach && !a.supervise {
        return Err("give -d to leave the clone running, or -- CMD to run a command in it".into());
    }
    let snapshot = std::path::absolute(&a.dir).map_err(|e| format!("{}: {e}", a.dir.display()))?;
    if verify {
        sm_snapshot::verify_sealed(&snapshot).map_err(|e| e.to_string())?;
    }
    let mut record = RunRecord::read(&snapshot.join(RECORD_FILE)).map_err(|e| e.to_string())?;
    let egress = (!a.egress.is_empty()).then_some(a.egress.as_slice());
    record.network = record.network.with_policy(egress, a.dns)?;
    if let Some(name) = &a.name {
        if runtime_root().join(name).join("vm.vsock").exists() {
            return Err(format!(
                "a VM named {name} is already running (sm stop {name})"
            ));
        }
    }
    let mut hosts = vec![None; record.volumes.len()];
    for (host, guest) in &a.volumes {
        let i = record
            .volumes
            .iter()
            .position(|v| &v.guest == guest)
            .ok_or_else(|| {
                format!(
                    "--volume {}:{guest}: the snapshot has no volume at {guest}",
                    host.display()
                )
            })?;
        let host = std::path::absolute(host).map_err(|e| format!("{}: {e}", host.display()))?;
        if let Some(user) = in_use(&host) {
            return Err(format!("--volume {}: in use by {user}", host.display()));
        }
        hosts[i] = Some(host);
    }
    Ok(Plan {
        snapshot,
        record,
        hosts,
    })
}

/// Who uses the volume file `path`, if anyone: a running sm VM whose run record names it,
/// else any process holding the write lock sm-vhost-user-blk takes on every volume it
/// serves (an OFD lock, probed with F_OFD_GETLK, which takes nothing).
fn in_use(path: &Path) -> Option<String> {
    let canonical = path.canonicalize().ok()?;
    if let Ok(entries) = std::fs::read_dir(runtime_root()) {
        for e in entries.flatten() {
            if crate::detach::supervisor(&e.path()).is_none() {
                continue;
            }
            let Ok(r) = RunRecord::read(&e.path().join(RECORD_FILE)) else {
                continue;
            };
            if r.volumes
                .iter()
                .any(|v| v.file.canonicalize().ok().as_deref() == Some(&canonical))
            {
                return Some(format!(
                    "the running VM {}",
                    e.file_name().to_string_lossy()
                ));
            }
        }
    }
    sm::vm::volumes::served(&canonical)
        .then(|| "another process (it holds the volume's lock)".into())
}

/// Runs `sm restore`; returns the exit code.
pub fn run(a: Args) -> Result<u8, String> {
    if a.detach && !a.supervise {
        // Every check in the foreground, so bad input is one line here, not in a log.
        check(&a, true)?;
        return crate::detach::start();
    }
    // The supervisor's foreground half has verified the snapshot already.
    let plan = check(&a, !a.supervise)?;
    crate::run::watch_stop_signals()?;
    let name = a
        .name
        .clone()
        .unwrap_or_else(|| format!("vm-{}", std::process::id()));
    let rundir = runtime_root().join(&name);
    std::fs::create_dir_all(&rundir).map_err(|e| format!("{}: {e}", rundir.display()))?;
    let mut created: Vec<PathBuf> = vec![];
    let result = start(&plan, &name, &rundir, &mut created);
    let (vm, record) = match result {
        Ok(v) => v,
        Err(e) => {
            // Vm::restore stopped whatever it had started; the copies go too.
            for f in created {
                let _ = std::fs::remove_file(f);
            }
            let _ = std::fs::remove_dir_all(&rundir);
            return Err(e);
        }
    };
    let mut vm = vm;
    if let Some(pid) = vm.vmm_pid() {
        VMM_PID.store(pid, Ordering::SeqCst);
    }
    if a.supervise {
        crate::detach::announce(&vm, &record)?;
    }
    let stopped = || STOPPED_BY.load(Ordering::SeqCst);
    let result = if a.command.is_empty() {
        // Detached without a command: run until `sm stop` or the guest powers off.
        while stopped() == 0 && vm.running() {
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(0)
    } else {
        run_command(&vm, &record, a.command.clone(), a.supervise)
    };
    let sig = stopped();
    // Read before the stop (see run.rs): a backend that kept failing ended the clone.
    let failure = vm.failure();
    vm.stop();
    if sig != 0 {
        return Ok(128 + sig as u8);
    }
    if let Some(line) = failure {
        eprintln!("{line}");
        return Ok(1);
    }
    result
}

/// Copies the volumes and starts the clone; returns it with its own run record.
fn start(
    plan: &Plan,
    name: &str,
    rundir: &Path,
    created: &mut Vec<PathBuf>,
) -> Result<(Vm, RunRecord), String> {
    let mut record = plan.record.clone();
    // A --volume file in place; else the user's own file of a volume the bake unmounted,
    // if no VM uses it now; else a private copy in the runtime directory.
    let own = |i: usize, v: &sm::vm::record::VolumeRecord| match &plan.hosts[i] {
        Some(host) => Some(host.clone()),
        None if volumes::user_file_fits(&plan.snapshot, i, v) && in_use(&v.file).is_none() => {
            Some(v.file.clone())
        }
        None => None,
    };
    volumes::place(&mut record, &plan.snapshot, rundir, own, created)?;
    // Copies in the runtime directory go with it; only files outside it are kept.
    created.retain(|f| !f.starts_with(rundir));
    let vm =
        Vm::restore(&plan.snapshot, &record, Some(name.to_owned())).map_err(|e| e.to_string())?;
    // The clone mounted what the bake had unmounted: its record (`sm snapshot` copies it
    // into a snapshot of this clone) now says mounted.
    for v in &mut record.volumes {
        v.detached = false;
    }
    Ok((vm, record))
}

/// Runs `argv` in the clone as `sm exec` would, with the recorded environment, working
/// directory and user; returns its exit code.
fn run_command(
    vm: &Vm,
    record: &RunRecord,
    argv: Vec<String>,
    supervise: bool,
) -> Result<u8, String> {
    let req = ExecRequest {
        argv,
        cwd: record.workdir.clone(),
        root: record.guest_root.clone(),
        uid: record.user.map(|u| u.0),
        gid: record.user.map(|u| u.1),
        ..Default::default()
    };
    let mut exec = sm::ExecBuilder::new(vm.agent(), req);
    for (k, v) in &record.env {
        exec = exec.env(k, v);
    }
    let (mut out, mut err) = (std::io::stdout(), std::io::stderr());
    let exit = if supervise {
        exec.stream(None, &mut out, &mut err)
            .map_err(|e| e.to_string())?
    } else if crate::terminal::attached() {
        crate::terminal::run(exec)?
    } else {
        exec.stream(Some(Box::new(std::io::stdin())), &mut out, &mut err)
            .map_err(|e| e.to_string())?
    };
    Ok(exit.shell_code())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_volume_override_is_host_colon_absolute_guest() {
        assert_eq!(
            parse_volume("./b.img:/cache").unwrap(),
            (PathBuf::from("./b.img"), "/cache".to_owned())
        );
        for bad in ["b.img", ":/cache", "b.img:cache"] {
            assert!(parse_volume(bad).is_err(), "{bad}");
        }
    }
}

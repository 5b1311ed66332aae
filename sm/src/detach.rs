//! Detached VMs: `sm run --detach` re-runs itself in the background (`--supervise`) and
//! returns once the VM is up; the supervisor owns the VM until its command ends or
//! `sm stop` signals it. `sm exec`, `sm ps` and `sm stop` find VMs by name under the
//! runtime directory (`supervisor.pid`, `ready`, `guest-root`).

use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use sm::vm::process::{alive, kill_group, last_line};
use sm::vm::record::{RunRecord, RECORD_FILE};
use sm::vm::supervisor::PROCESSES_FILE;
use sm::vm::{runtime_root, ProcessInfo};
use sm::Vm;
use sm_agent::message::ExecRequest;

/// How long a detached VM may take to come up.
const START_TIMEOUT: Duration = Duration::from_secs(180);

/// Starts the supervisor with this process's arguments and waits until the VM is up.
pub fn start() -> Result<u8, String> {
    let all: Vec<String> = std::env::args().skip(1).collect();
    // Only flags before `--` are sm's; the command after it is passed on untouched.
    let split = all.iter().position(|a| a == "--").unwrap_or(all.len());
    let (mut args, command) = (all[..split].to_vec(), all[split..].to_vec());
    // `--root DIR` before `run` would shift the inserts below; SM_HOME (set from it by
    // main) carries it to the supervisor instead.
    if let Some(i) = args.iter().position(|a| a == "--root") {
        args.drain(i..(i + 2).min(args.len()));
    }
    args.retain(|a| !a.starts_with("--root="));
    let name = match args.iter().position(|a| a == "--name") {
        Some(i) => args.get(i + 1).cloned().ok_or("--name needs a value")?,
        None => {
            let n = format!("vm-{}", std::process::id());
            args.insert(1, n.clone());
            args.insert(1, "--name".into());
            n
        }
    };
    args.retain(|a| a != "--detach" && a != "-d");
    args.insert(1, "--supervise".into());
    args.extend(command);
    let dir = runtime_root().join(&name);
    if dir.join("vm.vsock").exists() {
        return Err(format!(
            "a VM named {name} is already running (sm stop {name})"
        ));
    }
    std::fs::create_dir_all(runtime_root())
        .map_err(|e| format!("creating the runtime dir: {e}"))?;
    let log_path = runtime_root().join(format!("{name}.log"));
    let log =
        std::fs::File::create(&log_path).map_err(|e| format!("{}: {e}", log_path.display()))?;
    let exe = std::env::current_exe().map_err(|e| format!("finding sm: {e}"))?;
    let mut child = Command::new(exe)
        .args(&args)
        .stdin(Stdio::null())
        .stdout(log.try_clone().map_err(|e| e.to_string())?)
        .stderr(log)
        .process_group(0)
        .spawn()
        .map_err(|e| format!("starting the supervisor: {e}"))?;
    let start = Instant::now();
    loop {
        if dir.join("ready").exists() {
            println!("{name}");
            return Ok(0);
        }
        if let Ok(Some(status)) = child.try_wait() {
            let last = last_line(&log_path).unwrap_or_default();
            let _ = std::fs::remove_file(&log_path);
            return Err(format!("the VM did not start ({status}): {last}"));
        }
        if start.elapsed() > START_TIMEOUT {
            let last = give_up(&mut child, &dir, &log_path, GIVE_UP_GRACE);
            return Err(format!(
                "the VM did not start within {START_TIMEOUT:?}; stopped it: {last}"
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// How long a supervisor told to stop may take before it and its processes are killed.
const GIVE_UP_GRACE: Duration = Duration::from_secs(10);

/// Stops a supervisor whose VM did not come up, and everything it started: SIGTERM, then
/// after `grace` ([`GIVE_UP_GRACE`]) SIGKILL to it and to the process group of each process it
/// recorded (sm-vmm and the backends lead groups of their own, so killing the supervisor
/// alone would leave them running). The VM's directory goes too, so the name is free
/// again. Returns the last line the supervisor logged.
fn give_up(
    child: &mut std::process::Child,
    dir: &Path,
    log_path: &Path,
    grace: Duration,
) -> String {
    let recorded = processes(dir);
    let supervisor = Pid::from_raw(child.id() as i32);
    let _ = kill(supervisor, Signal::SIGTERM);
    let start = Instant::now();
    while start.elapsed() < grace && matches!(child.try_wait(), Ok(None)) {
        std::thread::sleep(Duration::from_millis(50));
    }
    // Its group: it leads one (see `start`), and a helper it ran would live on.
    kill_group(supervisor);
    let _ = child.wait();
    // What it recorded before the stop and since (a restart has a new process ID).
    let mut pids: Vec<i32> = recorded
        .iter()
        .chain(&processes(dir))
        .filter_map(|p| p.pid)
        .collect();
    pids.sort_unstable();
    pids.dedup();
    for pgid in pids.into_iter().map(Pid::from_raw) {
        kill_group(pgid);
    }
    let _ = std::fs::remove_dir_all(dir);
    let last = last_line(log_path).unwrap_or_else(|| "no output".into());
    let _ = std::fs::remove_file(log_path);
    last
}

/// Called by the supervisor once the VM is up: records who owns it and what it runs
/// (`sm.json`, for `sm snapshot` and `sm restore`), then signals ready.
pub fn announce(vm: &Vm, record: &RunRecord) -> Result<(), String> {
    let dir = vm.runtime_dir();
    let io = |e: std::io::Error| format!("{}: {e}", dir.display());
    std::fs::write(dir.join("supervisor.pid"), std::process::id().to_string()).map_err(io)?;
    std::fs::write(dir.join("guest-root"), vm.guest_root().unwrap_or("")).map_err(io)?;
    record
        .write(&dir.join(RECORD_FILE))
        .map_err(|e| e.to_string())?;
    std::fs::write(dir.join("ready"), "").map_err(io)
}

/// `sm exec NAME -- CMD`.
#[derive(clap::Args, Debug)]
pub struct ExecArgs {
    /// An environment variable: KEY=VALUE (repeatable).
    #[arg(short = 'e', long = "env", value_name = "KEY=VALUE")]
    env: Vec<String>,
    /// Working directory in the guest.
    #[arg(short = 'w', long = "workdir")]
    workdir: Option<String>,
    /// The VM's name.
    name: String,
    /// The command and its arguments.
    #[arg(last = true, required = true, value_name = "CMD")]
    command: Vec<String>,
}

/// Runs a command in a running VM with stdin, stdout and stderr attached.
pub fn exec(a: ExecArgs) -> Result<u8, String> {
    let (agent, root) = Vm::attach(&a.name).ok_or(format!("no running VM named {}", a.name))?;
    let tty = crate::terminal::attached();
    if tty {
        crate::terminal::watch_window_changes()?;
    }
    let req = ExecRequest {
        argv: a.command,
        cwd: a.workdir,
        root,
        ..Default::default()
    };
    let mut exec = sm::ExecBuilder::new(&agent, req);
    for kv in &a.env {
        let (k, v) = kv
            .split_once('=')
            .ok_or(format!("-e {kv:?} is not KEY=VALUE"))?;
        exec = exec.env(k, v);
    }
    let exit = if tty {
        crate::terminal::run(exec)?
    } else {
        let (mut out, mut err) = (std::io::stdout(), std::io::stderr());
        exec.stream(Some(Box::new(std::io::stdin())), &mut out, &mut err)
            .map_err(|e| e.to_string())?
    };
    Ok(exit.shell_code())
}

/// The supervisor PID of a VM directory, if it is alive.
pub fn supervisor(dir: &Path) -> Option<Pid> {
    let pid: i32 = std::fs::read_to_string(dir.join("supervisor.pid"))
        .ok()?
        .trim()
        .parse()
        .ok()?;
    let pid = Pid::from_raw(pid);
    alive(pid).then_some(pid)
}

/// `sm ps`: the running detached VMs, each followed by a row per process (name, PID,
/// state, restarts, how and when its last run ended).
pub fn ps() -> Result<(), String> {
    println!("{:<24} {:>8}", "NAME", "PID");
    let Ok(entries) = std::fs::read_dir(runtime_root()) else {
        return Ok(());
    };
    let mut rows: Vec<(String, i32)> = entries
        .flatten()
        .filter_map(|e| {
            let pid = supervisor(&e.path())?;
            Some((e.file_name().to_string_lossy().into_owned(), pid.as_raw()))
        })
        .collect();
    rows.sort();
    for (name, pid) in rows {
        println!("{name:<24} {pid:>8}");
        for p in processes(&runtime_root().join(&name)) {
            println!("  {}", process_row(&p));
        }
    }
    Ok(())
}

/// The processes a VM's supervisor last recorded (none if it recorded nothing readable).
pub(crate) fn processes(dir: &Path) -> Vec<ProcessInfo> {
    std::fs::read(dir.join(PROCESSES_FILE))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default()
}

/// `volume ./pg.img  4577  running  restarts 2  last: killed by SIGKILL 16:02:11`.
fn process_row(p: &ProcessInfo) -> String {
    let pid = p.pid.map_or("-".into(), |p| p.to_string());
    let state = serde_json::to_value(p.state)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default();
    let mut row = format!(
        "{:<32} {pid:>8}  {state:<10}  restarts {}",
        p.name, p.restarts
    );
    if let Some(last) = &p.last_exit {
        row.push_str(&format!("  last: {last}"));
        if let Some(at) = p.last_exit_at {
            let t = at % 86_400;
            row.push_str(&format!(
                " {:02}:{:02}:{:02} UTC",
                t / 3600,
                t / 60 % 60,
                t % 60
            ));
        }
    }
    row
}

/// `sm stop NAME`.
#[derive(clap::Args, Debug)]
pub struct StopArgs {
    /// The VM's name.
    name: String,
}

/// Stops a detached VM and waits until everything it started is gone.
pub fn stop(a: StopArgs) -> Result<(), String> {
    let dir = runtime_root().join(&a.name);
    let pid = supervisor(&dir).ok_or(format!("no running VM named {}", a.name))?;
    kill(pid, Signal::SIGTERM).map_err(|e| format!("stopping {}: {e}", a.name))?;
    let start = Instant::now();
    while alive(pid) {
        if start.elapsed() > Duration::from_secs(60) {
            return Err(format!("{} did not stop within 60 s", a.name));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = std::fs::remove_file(runtime_root().join(format!("{}.log", a.name)));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use sm::vm::service::State;

    /// A supervisor stuck past the start timeout (here: one that ignores SIGTERM) is
    /// killed together with the processes it recorded, each in its own group, and the
    /// VM's directory is removed.
    #[test]
    fn giving_up_on_a_start_leaves_no_process_and_frees_the_name() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("web");
        std::fs::create_dir(&dir).unwrap();
        let log = root.path().join("web.log");
        std::fs::write(&log, "starting\nwaiting for the guest agent\n").unwrap();
        let mut backend = Command::new("sleep")
            .arg("1000")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .unwrap();
        let bpid = backend.id() as i32;
        let info = ProcessInfo {
            name: "volume ./pg.img".into(),
            pid: Some(bpid),
            state: State::Running,
            restarts: 0,
            last_exit: None,
            last_exit_at: None,
            status: None,
            socket: None,
        };
        std::fs::write(
            dir.join(PROCESSES_FILE),
            serde_json::to_vec(&[info]).unwrap(),
        )
        .unwrap();
        let armed = root.path().join("armed");
        let mut supervisor = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "trap '' TERM; touch {}; sleep 1000 & wait",
                armed.display()
            ))
            .process_group(0)
            .spawn()
            .unwrap();
        while !armed.exists() {
            std::thread::sleep(Duration::from_millis(10));
        }
        let started = Instant::now();
        let last = give_up(&mut supervisor, &dir, &log, Duration::from_secs(1));
        assert!(
            started.elapsed() >= Duration::from_secs(1),
            "SIGTERM was ignored"
        );
        assert_eq!(last, "waiting for the guest agent");
        assert!(matches!(supervisor.try_wait(), Ok(Some(_))));
        let group = Pid::from_raw(supervisor.id() as i32);
        assert!(
            !sm::vm::process::group_alive(group),
            "the supervisor's helper lives on"
        );
        assert!(!sm::vm::process::group_alive(Pid::from_raw(bpid)));
        let _ = backend.wait();
        assert!(!dir.exists() && !log.exists());
    }

    #[test]
    fn a_process_row_says_state_restarts_and_the_last_exit() {
        let mut p = ProcessInfo {
            name: "volume ./pg.img".into(),
            pid: Some(4577),
            state: State::Running,
            restarts: 2,
            last_exit: Some("killed by SIGKILL".into()),
            last_exit_at: Some(86_400 * 20_000 + 16 * 3600 + 2 * 60 + 11),
            status: None,
            socket: None,
        };
        let row = process_row(&p);
        let words: Vec<_> = row.split_whitespace().collect();
        assert_eq!(
            words,
            [
                "volume", "./pg.img", "4577", "running", "restarts", "2", "last:", "killed", "by",
                "SIGKILL", "16:02:11", "UTC"
            ]
        );
        p.last_exit = None;
        p.pid = None;
        p.state = State::Restarting;
        let words: Vec<_> = process_row(&p)
            .split_whitespace()
            .map(str::to_owned)
            .collect();
        assert_eq!(
            words,
            ["volume", "./pg.img", "-", "restarting", "restarts", "2"]
        );
    }
}

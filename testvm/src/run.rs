//! One test VM run: start the virtiofsd instances and QEMU, relay the command's output,
//! wait for the guest to power off and return the command's exit code.

use crate::guest_files::{mounts_file, nonce, run_script};
use crate::run_dir;
use crate::shares::{default_share, plan};
use crate::signals::Signals;
use crate::tools::Tools;
use crate::virtiofsd::{Mode, Virtiofsd};
use crate::vm::Vm;
use crate::watch::{End, Watch};
use crate::{Context, Error, Result};
use nix::sys::signal::Signal;
use std::env;
use std::ffi::OsString;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::time::{Duration, Instant, SystemTime};

/// What to run, and how big a test VM to run it in.
#[derive(Debug, Clone)]
pub struct Options {
    /// Virtual CPUs.
    pub cpus: u32,
    /// Memory in MiB.
    pub mem_mib: u64,
    /// Writable shares besides the caller's workspace.
    pub shares: Vec<PathBuf>,
    /// Show the L1 console and timings on stderr.
    pub verbose: bool,
    /// How long the guest may take to start the command.
    pub boot_timeout: Duration,
    /// How long the command may write nothing before the test VM counts as stalled.
    pub stall_timeout: Duration,
    /// How long the test VM's heartbeat may stop before it counts as frozen (stalled).
    pub freeze_timeout: Duration,
    /// The command and its arguments.
    pub command: Vec<OsString>,
}

/// How a run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The command exited with this code (128+N if killed by signal N).
    Exited(u8),
    /// The runner was asked to stop by this signal and stopped the test VM.
    Interrupted(Signal),
    /// The command wrote nothing, or the test VM's heartbeat stopped, for `idle`; the test
    /// VM was stopped. `console` is the end of the L1 kernel console (empty with --verbose,
    /// where it was shown as it came).
    Stalled {
        /// Which of the two stopped.
        what: crate::watch::Stall,
        /// For how long.
        idle: Duration,
        /// The last lines of the L1 kernel console.
        console: String,
        /// What QEMU's monitor said of the test VM then (empty if it did not answer).
        monitor: String,
    },
}

/// How long virtiofsd may take to listen.
const FSD_START: Duration = Duration::from_secs(10);

/// Runs `opts.command` in a fresh test VM with the caller's cwd and environment.
pub fn run(opts: &Options) -> Result<Outcome> {
    let launched = (Instant::now(), SystemTime::now());
    let tools = Tools::locate()?;
    let cwd = env::current_dir().context(|| "reading the current directory".to_string())?;
    let shares = plan(default_share(&cwd).into_iter().chain(opts.shares.clone()))?;
    let signals = Signals::block()?;
    let run_dir = run_dir::create()?;
    let ctl = run_dir.path().join("ctl");
    let nonce = nonce()?;
    let env: Vec<_> = env::vars_os().collect();
    fs::create_dir(&ctl)
        .and_then(|()| {
            fs::write(
                ctl.join("run.sh"),
                run_script(&cwd, umask(), &env, &opts.command),
            )
        })
        .and_then(|()| fs::write(ctl.join("mounts"), mounts_file(&shares)))
        .context(|| format!("writing {}", ctl.display()))?;

    let bin = &tools.virtiofsd;
    let mut fsds = vec![
        Virtiofsd::spawn(
            bin,
            "root",
            Path::new("/"),
            Mode::ReadOnlyRoot,
            run_dir.path(),
        )?,
        Virtiofsd::spawn(bin, "ctl", &ctl, Mode::Writable, run_dir.path())?,
    ];
    for s in &shares {
        fsds.push(Virtiofsd::spawn(
            bin,
            &s.tag,
            &s.path,
            Mode::Writable,
            run_dir.path(),
        )?);
    }
    let deadline = Instant::now() + FSD_START;
    for f in &mut fsds {
        f.wait_ready(deadline)?;
    }

    let mut vm = Vm::start(&tools, opts, &fsds, &nonce, run_dir.path())?;
    let watch = Watch {
        started: ctl.join(format!("started-{nonce}")),
        alive: ctl.join(format!("alive-{nonce}")),
        launched,
        opts,
    };
    let status = match watch.until_exit(&signals, &mut vm, &mut fsds)? {
        End::Exited(status) => status,
        End::Stopped(sig) => return Ok(Outcome::Interrupted(sig)),
        End::Stalled(what, idle) => {
            let console = vm
                .console_log
                .as_ref()
                .and_then(|p| fs::read(p).ok())
                .map(|b| tail(&String::from_utf8_lossy(&b), 40))
                .unwrap_or_default();
            return Ok(Outcome::Stalled {
                what,
                idle,
                console,
                monitor: monitor_report(&vm.monitor),
            });
        }
    };
    vm.finish();
    result(&ctl, &nonce, status, &vm.log)
}

/// The command's exit code, or why there is none.
fn result(ctl: &Path, nonce: &str, qemu: ExitStatus, qemu_log: &Path) -> Result<Outcome> {
    if let Ok(code) = fs::read_to_string(ctl.join(format!("exit-{nonce}"))) {
        let code = code.trim();
        return code
            .parse()
            .map(Outcome::Exited)
            .map_err(|_| Error::new(format!("the test VM reported a bad exit code {code:?}")));
    }
    if let Ok(msg) = fs::read_to_string(ctl.join(format!("error-{nonce}"))) {
        return Err(Error::new(format!("test VM setup failed: {}", msg.trim())));
    }
    if !qemu.success() {
        let log = fs::read_to_string(qemu_log).unwrap_or_default();
        let last = log.lines().rev().find(|l| !l.trim().is_empty());
        return Err(Error::new(format!(
            "qemu failed ({qemu}): {}",
            last.unwrap_or("see --verbose")
        )));
    }
    Err(Error::new(
        "the test VM stopped without reporting the command's exit code \
         (L1 kernel or init failed; rerun with --verbose)",
    ))
}

/// The last `n` lines of `text`.
fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// The caller's umask (read by setting it and setting it back).
fn umask() -> u32 {
    use nix::sys::stat::{umask, Mode};
    let old = umask(Mode::from_bits_truncate(0o022));
    umask(old);
    old.bits()
}

/// What QEMU says of a stalled test VM: whether its vCPUs are halted and where, their local
/// APICs (a halted vCPU with no timer armed waits for ever) and the legacy interrupt
/// controllers.
fn monitor_report(socket: &Path) -> String {
    crate::monitor::Monitor::connect(socket)
        .map(|mut m| m.report(crate::monitor::CPU_STATE))
        .unwrap_or_default()
}

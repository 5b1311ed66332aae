//! sm-testvm: runs one host command inside the test VM (L1), a QEMU TCG guest whose
//! `kvm_amd` gives a hardware-style `/dev/kvm`. Also usable as a cargo test runner.

use clap::Parser;
use sm_testvm::stall::{stalled_line, STALLED_EXIT};
use sm_testvm::{run, Options, Outcome};
use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

/// Exit code for the runner's own failures.
const RUNNER_FAILED: u8 = 125;

#[derive(Parser, Debug)]
#[command(
    name = "sm-testvm",
    about = "Run a host command inside the test VM, which has a hardware-style /dev/kvm",
    long_about = "Run a host command inside the test VM (QEMU TCG with SVM+NPT, kvm_amd loaded). \
                  The guest sees the host's / read-only (writes go to a tmpfs overlay), the \
                  caller's workspace and --share directories writable at their host paths, and \
                  runs the command with the caller's cwd and environment. Its stdout and stderr \
                  come back as they are written; its exit code becomes ours (125 if the runner \
                  itself fails)."
)]
struct Cli {
    /// Virtual CPUs of the test VM.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=64))]
    cpus: u32,
    /// Memory of the test VM in MiB.
    #[arg(long, default_value_t = 4096, value_parser = clap::value_parser!(u64).range(256..))]
    mem: u64,
    /// Another writable host directory, mounted at the same path in the guest (repeatable).
    #[arg(long = "share", value_name = "DIR")]
    shares: Vec<PathBuf>,
    /// Show the test VM's kernel console and boot timing on stderr.
    #[arg(long, short)]
    verbose: bool,
    /// Seconds the test VM may take to start the command.
    #[arg(long, value_name = "SECS", default_value_t = 120)]
    boot_timeout: u64,
    /// Seconds the command may write nothing to stdout or stderr before the test VM counts as
    /// stalled and is stopped (exit code 124).
    #[arg(long, value_name = "SECS", default_value_t = 600)]
    stall_timeout: u64,
    /// Seconds the test VM's heartbeat (its userspace writes one every 2 s) may stop
    /// before the test VM counts as frozen and is stopped (exit code 124).
    #[arg(long, value_name = "SECS", default_value_t = 60)]
    freeze_timeout: u64,
    /// The command to run and its arguments.
    #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true)]
    command: Vec<OsString>,
}

fn main() -> ExitCode {
    let cli = match sm_launch::parse_args::<Cli>("sm-testvm") {
        Ok(c) => c,
        Err(code) => return ExitCode::from(code),
    };
    let opts = Options {
        cpus: cli.cpus,
        mem_mib: cli.mem,
        shares: cli.shares,
        verbose: cli.verbose,
        boot_timeout: Duration::from_secs(cli.boot_timeout),
        stall_timeout: Duration::from_secs(cli.stall_timeout),
        freeze_timeout: Duration::from_secs(cli.freeze_timeout),
        command: cli.command,
    };
    match run(&opts) {
        Ok(Outcome::Exited(code)) => ExitCode::from(code),
        Ok(Outcome::Interrupted(sig)) => {
            eprintln!("sm-testvm: stopped the test VM on {sig}");
            ExitCode::from(128 + sig as u8)
        }
        Ok(Outcome::Stalled {
            what,
            idle,
            console,
            monitor,
        }) => {
            eprintln!("{}", stalled_line(what, idle.as_secs()));
            if !console.is_empty() {
                eprintln!("sm-testvm: end of the test VM's kernel console:\n{console}");
            }
            if !monitor.is_empty() {
                eprintln!("sm-testvm: what QEMU's monitor says of the test VM:\n{monitor}");
            }
            ExitCode::from(STALLED_EXIT)
        }
        Err(e) => {
            eprintln!("sm-testvm: {e}");
            ExitCode::from(RUNNER_FAILED)
        }
    }
}

//! `sm-vmm`: boot a Linux guest on KVM and run one command in it (or an interactive shell),
//! exiting with the command's exit status; under a service manager (`NOTIFY_SOCKET`) it says
//! when the VM runs and stops, and feeds the watchdog ([`sm_vmm::notify`]).

use std::process::ExitCode;

use sm_vmm::api::ApiSocket;
use sm_vmm::cli::VmmArgs;
use sm_vmm::config;
use sm_vmm::devices::GuestStop;
use sm_vmm::snapshot;
use sm_vmm::vm::{self, VmOutcome};

fn main() -> ExitCode {
    let args = match sm_launch::parse_args::<VmmArgs>("sm-vmm") {
        Ok(a) => a,
        Err(code) => return ExitCode::from(code),
    };
    sm_launch::init_logging("error");
    if let Err(e) = sm_vmm::notify::init() {
        tracing::warn!("no service manager notifications: {e}");
    }
    let api_socket = args.api_socket.clone();
    let bind_api = || match api_socket.as_deref().map(ApiSocket::bind).transpose() {
        Ok(api) => Ok(api),
        Err(e) => {
            eprintln!("sm-vmm: {e}");
            Err(ExitCode::from(2))
        }
    };
    if let Some(dir) = &args.restore {
        let snapshot = match snapshot::load(dir) {
            Ok(s) => s,
            Err(e) => {
                eprintln!("sm-vmm: {e}");
                return ExitCode::from(2);
            }
        };
        let interactive = snapshot.shape.interactive;
        let api = match bind_api() {
            Ok(api) => api,
            Err(code) => return code,
        };
        // Only the device flags count: vCPUs, memory and the console come from the snapshot.
        let devices = args.into_config();
        return exit_code(vm::restore(snapshot, &devices, api), interactive);
    }
    let interactive = args.command.is_empty();
    let config = args.into_config();
    if let Err(e) = config.validate(config::host_mem_mib()) {
        eprintln!("sm-vmm: {e}");
        return ExitCode::from(2);
    }
    let api = match bind_api() {
        Ok(api) => api,
        Err(code) => return code,
    };
    exit_code(vm::run(&config, api), interactive)
}

/// The exit status for how the VM ended: the command's, or one saying why there is none.
/// Tells the service manager the VM is stopping (`STOPPING=1`).
fn exit_code(outcome: Result<VmOutcome, vm::VmError>, interactive: bool) -> ExitCode {
    sm_vmm::notify::stopping(match &outcome {
        Ok(VmOutcome::Stopped { .. }) => "the guest stopped",
        Ok(VmOutcome::Signalled(_)) => "stopping on a signal",
        Ok(VmOutcome::Quit) => "the console quit",
        Err(_) => "the VM failed",
    });
    match outcome {
        Ok(VmOutcome::Stopped {
            status: Some(s), ..
        }) => ExitCode::from(s),
        // A guest that powers off on its own (`poweroff -f`, an interactive shell) ends cleanly.
        Ok(VmOutcome::Stopped {
            stop: GuestStop::PowerOff,
            status: None,
        }) => ExitCode::SUCCESS,
        Ok(VmOutcome::Stopped {
            stop: GuestStop::Reset,
            status: None,
        }) if interactive => ExitCode::SUCCESS,
        Ok(VmOutcome::Stopped {
            stop: GuestStop::Reset,
            status: None,
        }) => {
            eprintln!("sm-vmm: the guest reset (reboot or kernel panic) before the command finished; rerun with --verbose to see its log");
            ExitCode::from(1)
        }
        Ok(VmOutcome::Signalled(sig)) => ExitCode::from(128 + sig as u8),
        Ok(VmOutcome::Quit) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sm-vmm: {e}");
            ExitCode::from(1)
        }
    }
}

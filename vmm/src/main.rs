//! `sm-vmm`: boot a Linux guest on KVM and run one command in it (or an interactive shell),
//! exiting with the command's exit status.

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use sm_vmm::config::{self, VmConfig};
use sm_vmm::devices::GuestStop;
use sm_vmm::vm::{self, VmOutcome};

/// Boot a Linux guest on KVM and run COMMAND in it, exiting with its status.
/// Without COMMAND, an interactive shell on the serial console (Ctrl-A x quits).
#[derive(Parser, Debug)]
#[command(name = "sm-vmm", version)]
struct Args {
    /// Number of vCPUs.
    #[arg(long, default_value_t = 1)]
    vcpus: u32,
    /// Guest memory in MiB.
    #[arg(long, default_value_t = 256)]
    mem: u64,
    /// bzImage kernel [default: $SM_DATA_DIR/kernel/vmlinuz, SM_DATA_DIR=/usr/local/share/sm].
    #[arg(long)]
    kernel: Option<PathBuf>,
    /// Initramfs with sm-init [default: $SM_DATA_DIR/guest/initramfs.img].
    #[arg(long)]
    initrd: Option<PathBuf>,
    /// Extra kernel command-line parameters.
    #[arg(long, value_name = "PARAMS")]
    cmdline_append: Option<String>,
    /// Environment for the command, KEY=VALUE (repeatable).
    #[arg(short = 'e', long = "env", value_name = "KEY=VALUE")]
    env: Vec<OsString>,
    /// A vhost-user-blk backend socket (repeatable: vda, vdb, ... in order).
    #[arg(long = "blk-socket", value_name = "PATH")]
    blk_socket: Vec<PathBuf>,
    /// A vhost-user-fs backend: mount TAG in the guest with `mount -t virtiofs TAG DIR`
    /// (repeatable).
    #[arg(long = "fs-socket", value_name = "TAG=PATH", value_parser = parse_fs_socket)]
    fs_socket: Vec<(String, PathBuf)>,
    /// A vhost-user-vsock backend (e.g. vhost-device-vsock) for host-guest sockets.
    #[arg(long = "vsock-socket", value_name = "PATH")]
    vsock_socket: Option<PathBuf>,
    /// The guest's vsock CID; must match what the vsock backend serves (default: its CID).
    #[arg(long, value_name = "N", requires = "vsock_socket")]
    cid: Option<u64>,
    /// Show the kernel boot log and sm-init's messages on stderr.
    #[arg(long)]
    verbose: bool,
    /// The command to run in the guest.
    #[arg(last = true, value_name = "COMMAND")]
    command: Vec<OsString>,
}

/// Parses `TAG=PATH`: a non-empty tag of at most 36 bytes (the virtio-fs config field).
fn parse_fs_socket(v: &str) -> Result<(String, PathBuf), String> {
    let (tag, path) = v.split_once('=').ok_or("expected TAG=PATH")?;
    if tag.is_empty() || tag.len() > sm_vmm::vhost_user::FS_TAG_MAX || tag.contains('\0') {
        return Err(format!(
            "tag '{tag}' must be 1 to {} bytes",
            sm_vmm::vhost_user::FS_TAG_MAX
        ));
    }
    if path.is_empty() {
        return Err("expected TAG=PATH".into());
    }
    Ok((tag.to_string(), PathBuf::from(path)))
}

fn main() -> ExitCode {
    let args = match Args::try_parse() {
        Ok(a) => a,
        Err(e) if !e.use_stderr() => {
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            let msg = e.to_string();
            let first = msg.lines().next().unwrap_or("invalid arguments");
            eprintln!("sm-vmm: {}", first.trim_start_matches("error: "));
            return ExitCode::from(2);
        }
    };
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(tracing_subscriber::EnvFilter::from_env("SM_LOG"))
        .init();
    let interactive = args.command.is_empty();
    let config = VmConfig {
        vcpus: args.vcpus,
        mem_mib: args.mem,
        kernel: args.kernel.unwrap_or_else(config::default_kernel),
        initrd: args.initrd.unwrap_or_else(config::default_initrd),
        cmdline_append: args.cmdline_append,
        verbose: args.verbose,
        command: (!interactive).then_some(args.command),
        env: args.env,
        blk_sockets: args.blk_socket,
        fs_sockets: args.fs_socket,
        vsock_socket: args.vsock_socket,
        cid: args.cid,
    };
    if let Err(e) = config.validate(config::host_mem_mib()) {
        eprintln!("sm-vmm: {e}");
        return ExitCode::from(2);
    }
    match vm::run(&config) {
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

//! `sm run`: start a VM with its mounts, volumes and ports, run one command in it with
//! stdin, stdout and stderr attached, exit with the command's code and leave nothing
//! behind, also when interrupted.

use std::sync::atomic::{AtomicI32, Ordering};

use nix::sys::signal::{kill, SigSet, Signal};
use nix::unistd::Pid;
use sm::vm::record::RunRecord;
use sm::vm::{Mount, Network, NetworkMode, PortMap, Volume};
use sm::{Vm, VmConfig};
use sm_vhost_user_net::policy::EgressRule;

/// `sm run` flags.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Guest memory in MiB.
    #[arg(long, default_value_t = 512)]
    mem: u64,
    /// Virtual CPUs.
    #[arg(long, default_value_t = 1)]
    vcpus: u32,
    /// A live host directory:
    /// HOST:GUEST[:ro][:symlinks=deny|opaque|follow][:dax][:devices][:suid][:uidmap=G-H-N][:gidmap=G-H-N] (repeatable).
    #[arg(long = "mount", value_name = "HOST:GUEST[:OPTS]")]
    mounts: Vec<Mount>,
    /// A block volume: FILE:GUEST[:size=N] (created and formatted ext4 on first use).
    #[arg(long = "volume", value_name = "FILE:GUEST[:size=N]")]
    volumes: Vec<Volume>,
    /// Forward host 127.0.0.1:HOSTPORT to the guest's GUESTPORT (repeatable).
    #[arg(short = 'p', long = "publish", value_name = "HOSTPORT:GUESTPORT")]
    ports: Vec<PortMap>,
    /// The guest's network.
    #[command(flatten)]
    network: NetworkArgs,
    /// An environment variable for the command: KEY=VALUE (repeatable).
    #[arg(short = 'e', long = "env", value_name = "KEY=VALUE", value_parser = parse_env)]
    env: Vec<(String, String)>,
    /// The command's working directory in the guest.
    #[arg(short = 'w', long = "workdir", value_name = "DIR")]
    workdir: Option<String>,
    /// A name for the VM (its runtime directory); `sm exec/stop NAME` use it.
    #[arg(long)]
    name: Option<String>,
    /// Start in the background and print the VM's name; the VM stops when the command ends
    /// or on `sm stop NAME`.
    #[arg(short = 'd', long)]
    detach: bool,
    /// Internal: the background half of `--detach`.
    #[arg(long, hide = true)]
    supervise: bool,
    /// Plain HTTP to a registry that is not on a loopback address (when pulling IMAGE).
    #[arg(long)]
    insecure: bool,
    /// When to pull IMAGE: always, missing (registry images not in the store; local
    /// layouts and archives also when they changed) or never.
    #[arg(long, value_name = "POLICY", default_value = "missing")]
    pull: sm_oci::PullPolicy,
    /// Start a clone of this named snapshot (`sm bake`) instead of booting: its image,
    /// mounts, volumes (a private copy of each), ports, environment, network and workload
    /// come from the snapshot (--egress and --dns replace its rules and resolver).
    #[arg(
        long,
        value_name = "NAME",
        conflicts_with_all = ["image", "mounts", "volumes", "ports", "env", "workdir", "mem", "vcpus", "net"]
    )]
    snapshot: Option<String>,
    /// The snapshot store for --snapshot (default: $SM_HOME/snapshots).
    #[arg(long, value_name = "DIR", requires = "snapshot")]
    snapshots_dir: Option<std::path::PathBuf>,
    /// An image to run (pulled if needed): a registry reference, oci-layout:PATH[:TAG],
    /// oci-archive:PATH or docker-archive:PATH. Without it the command runs in the guest's
    /// own minimal root.
    #[arg(value_name = "IMAGE")]
    image: Option<String>,
    /// The command and its arguments (default: the image's Entrypoint and Cmd, or a shell).
    #[arg(last = true, value_name = "CMD")]
    command: Vec<String>,
}

/// `-e KEY=VALUE`, as `sm run` and `sm bake` take it.
pub(crate) fn parse_env(v: &str) -> Result<(String, String), String> {
    match v.split_once('=') {
        Some((k, val)) if !k.is_empty() => Ok((k.into(), val.into())),
        _ => Err(format!("{v:?} is not KEY=VALUE")),
    }
}

/// sm-vmm's PID once the VM runs, for the signal thread.
pub static VMM_PID: AtomicI32 = AtomicI32::new(0);
/// The stop signal that arrived, if any.
pub static STOPPED_BY: AtomicI32 = AtomicI32::new(0);

/// Runs the command; returns its exit code (128 + N if signal N ended it).
pub fn run(args: Args) -> Result<u8, String> {
    if args.detach {
        return crate::detach::start();
    }
    if let Some(snapshot) = &args.snapshot {
        let store = args
            .snapshots_dir
            .clone()
            .map(sm::store::SnapshotStore::at)
            .unwrap_or_else(sm::store::SnapshotStore::open_default);
        let dir = store.find(snapshot).map_err(|e| e.to_string())?;
        return crate::restore::run(crate::restore::Args::of_snapshot(
            dir,
            args.name,
            args.supervise,
            (args.network.egress, args.network.dns),
            args.command,
        ));
    }
    watch_stop_signals()?;
    let image = match &args.image {
        Some(r) => Some(sm::image::resolve(r, args.insecure, args.pull)?),
        None => None,
    };
    let config = VmConfig {
        name: args.name,
        mem_mib: args.mem,
        vcpus: args.vcpus,
        mounts: args.mounts,
        volumes: args.volumes,
        ports: args.ports,
        root_image: image.as_ref().map(|i| i.rootfs.clone()),
        kernel_args: None,
        backend_watchdog: sm::vm::BACKEND_WATCHDOG,
        network: args.network.network()?,
    };
    let vm = Vm::start(&config).map_err(|e| e.to_string())?;
    if let Some(pid) = vm.vmm_pid() {
        VMM_PID.store(pid, Ordering::SeqCst);
    }
    if STOPPED_BY.load(Ordering::SeqCst) != 0 {
        vm.stop();
        return Ok(128 + STOPPED_BY.load(Ordering::SeqCst) as u8);
    }
    let plan = sm::image::plan(image.as_ref(), args.command, &vm)?;
    let mut exec = vm.exec(&plan.argv);
    for (k, v) in plan.env.iter().chain(&args.env) {
        exec = exec.env(k, v);
    }
    if let Some(dir) = args.workdir.as_ref().or(plan.workdir.as_ref()) {
        exec = exec.cwd(dir);
    }
    if let Some((uid, gid)) = plan.user {
        exec = exec.user(uid, gid);
    }
    sm::trace::step(format_args!("running {:?}", plan.argv));
    let result = if args.supervise {
        let mut record = RunRecord::new(&config);
        record.image = args.image.clone();
        record.guest_root = vm.guest_root().map(str::to_owned);
        record.env = plan.env.iter().chain(&args.env).cloned().collect();
        record.workdir = args.workdir.clone().or(plan.workdir.clone());
        record.user = plan.user;
        crate::detach::announce(&vm, &record)?;
        let (mut out, mut err) = (std::io::stdout(), std::io::stderr());
        exec.stream(None, &mut out, &mut err)
            .map_err(|e| e.to_string())
    } else if crate::terminal::attached() {
        crate::terminal::run(exec)
    } else {
        let stdin: Box<dyn std::io::Read + Send> = Box::new(std::io::stdin());
        let (mut out, mut err) = (std::io::stdout(), std::io::stderr());
        exec.stream(Some(stdin), &mut out, &mut err)
            .map_err(|e| e.to_string())
    };
    sm::trace::step(format_args!("the command ended: {result:?}"));
    let stopped = STOPPED_BY.load(Ordering::SeqCst);
    // Read before the stop: a backend that kept failing stopped sm-vmm, which ended the
    // command; its line says why, instead of the broken connection's.
    let failure = vm.failure();
    vm.stop();
    if stopped != 0 {
        return Ok(128 + stopped as u8);
    }
    if let Some(line) = failure {
        eprintln!("{line}");
        return Ok(1);
    }
    let exit = result?;
    Ok(exit.shell_code())
}

/// Takes SIGINT, SIGTERM and SIGHUP on a thread: the VM is stopped (sm-vmm first), which
/// ends the command, and `run` then cleans up as usual and exits 128 + signal.
pub fn watch_stop_signals() -> Result<(), String> {
    let mut set = SigSet::empty();
    for s in [
        Signal::SIGINT,
        Signal::SIGTERM,
        Signal::SIGHUP,
        Signal::SIGWINCH,
    ] {
        set.add(s);
    }
    // Blocked here, before any thread exists, so every thread inherits it; children get
    // an empty mask (std resets it) and their own process group.
    set.thread_block()
        .map_err(|e| format!("blocking signals: {e}"))?;
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || loop {
            let Ok(sig) = set.wait() else { continue };
            if sig == Signal::SIGWINCH {
                crate::terminal::window_changed();
                continue;
            }
            STOPPED_BY.store(sig as i32, Ordering::SeqCst);
            let pid = VMM_PID.load(Ordering::SeqCst);
            if pid > 0 {
                let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
            }
        })
        .map_err(|e| format!("starting the signal thread: {e}"))?;
    Ok(())
}

/// The network flags `sm run` and `sm bake` share.
#[derive(clap::Args, Debug)]
pub struct NetworkArgs {
    /// The guest's network: `user` (outbound through passt; the host itself only by an
    /// --egress rule) or `none` (loopback only).
    #[arg(long = "net", value_enum, value_name = "MODE", default_value = "user")]
    pub net: NetworkMode,
    /// An egress rule, allow=SPEC or deny=SPEC; SPEC is `host`, `any`, a CIDR or an address,
    /// with an optional :PORT or :LO-HI (repeatable; after the defaults allow=any deny=host,
    /// the last matching rule wins).
    #[arg(long = "egress", value_name = "RULE")]
    pub egress: Vec<EgressRule>,
    /// The host resolver the guest's DNS queries go to (default: the host's).
    #[arg(long, value_name = "ADDR")]
    pub dns: Option<std::net::IpAddr>,
}

impl NetworkArgs {
    /// The network these flags ask for; rules or a resolver with `--net none` are refused.
    pub fn network(self) -> Result<Network, String> {
        Network::from_flags(self.net, self.egress, self.dns)
    }
}

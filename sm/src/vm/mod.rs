//! A running microVM and everything behind it: one sm-vhost-user-fs per mount, one
//! sm-vhost-user-blk per volume, vhost-device-vsock for the agent, and sm-vmm, all under
//! one runtime directory; the guest agent mounts what was asked, runs commands, moves
//! files and forwards ports. Dropping a [`Vm`] stops every process and removes the directory.

pub mod exec;
pub mod layout;
pub mod network;
pub mod ports;
pub mod process;
pub mod record;
pub mod restart;
pub mod service;
pub mod snapshot;
pub mod spec;
pub mod supervisor;
pub mod volumes;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use sm_agent::client::{Agent, AgentError, ReadySignal};
use sm_agent::message::ExecRequest;

pub use exec::ExecBuilder;
use layout::{DeviceLayout, DiskRole};
pub use network::{Network, NetworkMode, UserNetwork};
pub use ports::PortForwarder;
use process::{tool, Proc, ProcessError};
use sm_launch::CommandLine;
pub use spec::{Mount, PortMap, SpecError, Symlinks, Volume};
pub use supervisor::{ProcessInfo, Supervisor};

/// How long the guest may take to boot and start its agent.
const BOOT_TIMEOUT: Duration = Duration::from_secs(120);
/// When the agent's own port is first tried while no ready signal has come, and how often.
const READY_PROBE_AFTER: Duration = Duration::from_secs(5);
const READY_PROBE_EVERY: Duration = Duration::from_secs(2);

/// Errors starting or driving a VM.
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    /// A mount, volume or port value is malformed.
    #[error(transparent)]
    Spec(#[from] SpecError),
    /// A backend or sm-vmm failed.
    #[error(transparent)]
    Process(#[from] ProcessError),
    /// The guest agent failed.
    #[error(transparent)]
    Agent(#[from] AgentError),
    /// A host file operation failed.
    #[error("{0}: {1}")]
    Io(String, std::io::Error),
    /// Something asked of the guest failed (one line saying what).
    #[error("{0}")]
    Guest(String),
    /// The VM's name is taken by a running VM.
    #[error("a VM named {0} is already running (sm stop {0})")]
    NameTaken(String),
}

/// What to start.
#[derive(Clone, Debug)]
pub struct VmConfig {
    /// Name (the runtime directory's); a unique one is made up when `None`.
    pub name: Option<String>,
    /// Guest memory in MiB.
    pub mem_mib: u64,
    /// Virtual CPUs.
    pub vcpus: u32,
    /// Host directories shared live.
    pub mounts: Vec<Mount>,
    /// Block volumes.
    pub volumes: Vec<Volume>,
    /// Host ports forwarded to guest ports.
    pub ports: Vec<PortMap>,
    /// A read-only root file system image (erofs) to run commands in, under a writable
    /// tmpfs overlay; `None` runs them in the guest's own initramfs root.
    pub root_image: Option<PathBuf>,
    /// Kernel command-line parameters appended after sm-vmm's own (a boot only; a restored
    /// guest keeps the command line it booted with).
    pub kernel_args: Option<String>,
    /// The watchdog interval asked of each backend (`WATCHDOG_USEC`); one that sends no
    /// `WATCHDOG=1` for this long is killed and restarted. Zero: no watchdog.
    pub backend_watchdog: Duration,
    /// The guest's network (default: user-mode, outbound allowed, the host's loopback denied).
    pub network: Network,
}

/// The default [`VmConfig::backend_watchdog`].
pub const BACKEND_WATCHDOG: Duration = Duration::from_secs(10);

impl Default for VmConfig {
    fn default() -> Self {
        VmConfig {
            name: None,
            mem_mib: 512,
            vcpus: 1,
            mounts: vec![],
            volumes: vec![],
            ports: vec![],
            root_image: None,
            kernel_args: None,
            backend_watchdog: BACKEND_WATCHDOG,
            network: Network::default(),
        }
    }
}

/// Where the guest assembles an image's root (erofs lower, tmpfs upper).
const GUEST_ROOT: &str = "/sm/root";
/// Sets up [`GUEST_ROOT`] from the image on `$1`, with /proc, /sys and /dev inside.
const ROOT_SCRIPT: &str = "set -e; mkdir -p /sm/ro /sm/rw /sm/root; \
    mount -t erofs -o ro \"$1\" /sm/ro; mount -t tmpfs -o mode=0755 tmpfs /sm/rw; \
    mkdir -p /sm/rw/upper /sm/rw/work; \
    mount -t overlay overlay -o lowerdir=/sm/ro,upperdir=/sm/rw/upper,workdir=/sm/rw/work /sm/root; \
    for d in proc sys dev tmp; do mkdir -p /sm/root/$d; done; \
    mount -t proc proc /sm/root/proc; mount -t sysfs sysfs /sm/root/sys; \
    mount -o rbind /dev /sm/root/dev; mount -t tmpfs -o mode=1777 tmpfs /sm/root/tmp; \
    if [ -f /etc/resolv.conf ]; then mkdir -p /sm/root/etc; rm -f /sm/root/etc/resolv.conf; \
    cp /etc/resolv.conf /sm/root/etc/resolv.conf; fi";

/// Where sm keeps its running VMs: `$XDG_RUNTIME_DIR/sm`, else `/run/sm`.
pub fn runtime_root() -> PathBuf {
    std::env::var_os("XDG_RUNTIME_DIR")
        .map(|d| PathBuf::from(d).join("sm"))
        .unwrap_or_else(|| PathBuf::from("/run/sm"))
}

/// A running VM.
pub struct Vm {
    name: String,
    dir: PathBuf,
    vmm: Option<Proc>,
    supervisor: Supervisor,
    agent: Agent,
    forwarders: Vec<PortForwarder>,
    volume_mounts: Vec<String>,
    root: Option<String>,
}

/// How long a restored guest's agent may take to answer the reseed.
const RESEED_TIMEOUT: Duration = Duration::from_secs(30);

/// How long the guest may take to unmount volumes and sync at stop.
const SYNC_TIMEOUT: Duration = Duration::from_secs(30);
/// How much longer than a command's own timeout the host waits for the guest's answer.
const STOP_MARGIN: Duration = Duration::from_secs(5);

impl Vm {
    /// Starts the backends and sm-vmm, waits for the guest agent, mounts the mounts and
    /// volumes and opens the port forwards.
    pub fn start(config: &VmConfig) -> Result<Vm, VmError> {
        let mut vm = Vm::with_runtime_dir(config)?;
        crate::trace::step(format_args!("starting VM {}", vm.name));
        vm.boot(config)?;
        Ok(vm)
    }

    /// A VM with nothing started yet: its name (`config`'s, else a unique one) and its
    /// runtime directory, created, with sm's log in it; a name a running VM has is refused.
    fn with_runtime_dir(config: &VmConfig) -> Result<Vm, VmError> {
        let name = config
            .name
            .clone()
            .unwrap_or_else(|| format!("vm-{}-{}", std::process::id(), unique()));
        let dir = runtime_root().join(&name);
        if dir.join("vm.vsock").exists() {
            return Err(VmError::NameTaken(name));
        }
        std::fs::create_dir_all(&dir)
            .map_err(|e| VmError::Io(format!("creating {}", dir.display()), e))?;
        crate::trace::log_to(&dir.join("sm.log"));
        Ok(Vm {
            name,
            agent: Agent::new(dir.join("vm.vsock")),
            supervisor: Supervisor::new(&dir, config.backend_watchdog),
            dir,
            vmm: None,
            forwarders: vec![],
            volume_mounts: vec![],
            root: None,
        })
    }

    /// Starts a clone, named `name`, of the VM snapshotted in `snapshot` (a verified
    /// directory) and described by `record` (the snapshot's, with each writable volume
    /// pointing at the clone's file: [`volumes::place`]): fresh backends for its devices,
    /// then `sm-vmm --restore`; waits for the guest agent, reseeds the guest's random state,
    /// mounts the volumes the snapshot was taken without, and re-opens the port forwards.
    /// The guest's mounts and other volumes are still mounted (they are in its RAM);
    /// commands run under the recorded guest root. Nothing is left running on failure.
    pub fn restore(
        snapshot: &Path,
        record: &record::RunRecord,
        name: Option<String>,
    ) -> Result<Vm, VmError> {
        let config = &record.config(name).map_err(VmError::Guest)?;
        let mut vm = Vm::with_runtime_dir(config)?;
        crate::trace::step(format_args!(
            "restoring VM {} from {}",
            vm.name,
            snapshot.display()
        ));
        let layout = DeviceLayout::new(config, &vm.dir);
        vm.start_backends(&layout)?;
        let args = layout.restore_args(config, snapshot, crate::trace::enabled());
        crate::trace::step("backends ready; starting sm-vmm --restore");
        let cmd = args.to_command(tool("sm-vmm"));
        let vmm = vm
            .vmm
            .insert(Proc::spawn("sm-vmm", cmd, vm.dir.join("sm-vmm.log"))?);
        vm.supervisor.set_vmm(vmm.pid().as_raw());
        let start = Instant::now();
        // The API answers once the VM runs again: only then is the guest's vsock device
        // back (connections made while it is being restored can stall the vsock backend).
        let api = sm_snapshot::api::ApiClient::new(&layout.api);
        while !layout.api.exists() || api.status().is_err() {
            vmm.check_alive()?;
            if start.elapsed() > BOOT_TIMEOUT {
                return Err(ProcessError::Timeout("sm-vmm --restore".into(), BOOT_TIMEOUT).into());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        crate::trace::step("the restored VM runs");
        while let Err(e) = vm.agent.wait_ready(Duration::from_millis(200)) {
            vmm.check_alive()?;
            if start.elapsed() > BOOT_TIMEOUT {
                return Err(VmError::Guest(format!(
                    "the restored guest's agent did not answer within {BOOT_TIMEOUT:?}: {e}"
                )));
            }
        }
        crate::trace::step("the guest agent answers; reseeding");
        // Before anything else runs: a clone must not share random state with its siblings.
        // The restored vsock device resets the connections it had, which can also cut the
        // first new ones while the guest processes the reset: retry, bounded.
        let reseeding = Instant::now();
        while let Err(e) = vm.agent.reseed(&sm_agent::fresh_seed()) {
            vm.vmm.as_mut().map_or(Ok(()), Proc::check_alive)?;
            if reseeding.elapsed() > RESEED_TIMEOUT {
                return Err(e.into());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        crate::trace::step("reseeded");
        vm.root = record.guest_root.clone();
        let prefix = vm.root.clone().unwrap_or_default();
        for ((disk, v), r) in layout.volume_disks().zip(&record.volumes) {
            let target = format!("{prefix}{}", v.guest);
            if r.detached {
                vm.guest_mount(&target, &["-t", "ext4", &disk.guest_dev])?;
            }
            vm.volume_mounts.push(target);
        }
        for p in &config.ports {
            vm.expose_tcp(*p)?;
        }
        crate::trace::step("the clone is up");
        Ok(vm)
    }

    /// Whether sm-vmm still runs (a guest that powered off, or a killed sm-vmm, ends it).
    pub fn running(&mut self) -> bool {
        self.vmm.as_mut().is_some_and(|v| v.check_alive().is_ok())
    }

    /// The one line saying why the VM was stopped from the host side (a backend that kept
    /// failing, or one sm-vmm could not take back), if it was.
    pub fn failure(&self) -> Option<String> {
        self.supervisor.failure().or_else(|| self.vmm_failure())
    }

    /// sm-vmm's own one-line error, if it stopped the VM with one (a backend it lost for
    /// good): sm-vmm prints `sm-vmm: ...` only as it exits with an error.
    fn vmm_failure(&self) -> Option<String> {
        let last = process::last_line(&self.dir.join("sm-vmm.log"))?;
        last.strip_prefix("sm-vmm: ")
            .map(|why| format!("sm: {why}"))
    }

    /// sm-vmm and every backend: process ID, state, restarts and last exit.
    pub fn processes(&self) -> Vec<ProcessInfo> {
        self.supervisor.processes()
    }

    /// sm-vmm's control API socket.
    pub fn api_socket(&self) -> PathBuf {
        self.dir.join(layout::API_SOCKET)
    }

    /// Starts every process of `config`'s layout, waits for the guest agent, then sets up
    /// what the guest sees: the image's root, the mounts, the volumes and the ports.
    fn boot(&mut self, config: &VmConfig) -> Result<(), VmError> {
        let layout = DeviceLayout::new(config, &self.dir);
        self.start_backends(&layout)?;
        self.start_vmm(&layout, config)?;
        if let Some(root) = layout.root_disk() {
            self.assemble_root(&root.guest_dev)?;
        }
        let prefix = self.root.clone().unwrap_or_default();
        for share in &layout.shares {
            let m = &share.mount;
            let mut opts = String::from(if m.read_only { "ro" } else { "rw" });
            if m.dax {
                opts.push_str(",dax=always");
            }
            let target = format!("{prefix}{}", m.guest);
            self.guest_mount(&target, &["-t", "virtiofs", "-o", &opts, &share.tag])?;
        }
        for (disk, v) in layout.volume_disks() {
            let target = format!("{prefix}{}", v.guest);
            self.guest_mount(&target, &["-t", "ext4", &disk.guest_dev])?;
            self.volume_mounts.push(target);
        }
        for p in &config.ports {
            self.expose_tcp(*p)?;
        }
        crate::trace::step("mounts, volumes and ports are set up");
        Ok(())
    }

    /// Starts one backend per share and disk, vhost-device-vsock and the net backend, all
    /// at once, waits until each is ready, then starts the thread that restarts them.
    fn start_backends(&mut self, layout: &DeviceLayout) -> Result<(), VmError> {
        let mut specs = vec![];
        for share in &layout.shares {
            let host = &share.mount.host;
            if !host.is_dir() {
                return Err(VmError::Guest(format!(
                    "--mount: {} is not a directory",
                    host.display()
                )));
            }
            specs.push(share.service());
        }
        for disk in &layout.disks {
            let (name, size) = match &disk.role {
                DiskRole::Root(image) => (format!("root image {}", image.display()), None),
                DiskRole::Volume(v) => (
                    format!("volume {}", v.file.display()),
                    Some(prepare_volume(v)?),
                ),
            };
            specs.push(disk.service(name, size));
        }
        specs.push(layout::vsock_service(layout));
        if let Some(net) = &layout.net {
            specs.push(net.service());
        }
        self.supervisor.start_all(specs)?;
        self.supervisor
            .watch()
            .map_err(|e| VmError::Io("starting the supervisor thread".into(), e))
    }

    /// Starts sm-vmm and waits for the guest agent's ready signal.
    fn start_vmm(&mut self, layout: &DeviceLayout, config: &VmConfig) -> Result<(), VmError> {
        let ready = ReadySignal::bind(self.agent.socket())?;
        let args = layout.vmm_args(config, crate::trace::enabled());
        crate::trace::step("backends ready; starting sm-vmm");
        let cmd = args.to_command(tool("sm-vmm"));
        let vmm = self
            .vmm
            .insert(Proc::spawn("sm-vmm", cmd, self.dir.join("sm-vmm.log"))?);
        self.supervisor.set_vmm(vmm.pid().as_raw());
        let start = Instant::now();
        let mut probed = start;
        while ready.wait(Duration::from_millis(100)).is_err() {
            vmm.check_alive()?;
            // The ready signal is one vsock connection: should it be lost, the agent
            // still answers its own port, so ask it now and then.
            if start.elapsed() > READY_PROBE_AFTER && probed.elapsed() > READY_PROBE_EVERY {
                probed = Instant::now();
                if self.agent.wait_ready(Duration::ZERO).is_ok() {
                    crate::trace::step("the guest agent answers (its ready signal never came)");
                    break;
                }
            }
            if start.elapsed() > BOOT_TIMEOUT {
                keep_hung(&self.dir, &self.name);
                return Err(ProcessError::Timeout("the guest agent".into(), BOOT_TIMEOUT).into());
            }
        }
        crate::trace::step("the guest agent is ready");
        Ok(())
    }

    /// Assembles the image's root in the guest from the erofs disk `dev`.
    fn assemble_root(&mut self, dev: &str) -> Result<(), VmError> {
        let out = self.exec(&["sh", "-c", ROOT_SCRIPT, "sh", dev]).output()?;
        if out.exit.code != Some(0) {
            return Err(VmError::Guest(format!(
                "assembling the image's root in the guest failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        self.root = Some(GUEST_ROOT.into());
        Ok(())
    }

    /// Mounts in the guest: `mount ARGS... TARGET` after creating TARGET.
    fn guest_mount(&self, target: &str, args: &[&str]) -> Result<(), VmError> {
        let mut argv = vec![
            "sh",
            "-c",
            "t=$1; shift; mkdir -p \"$t\" && mount \"$@\" \"$t\"",
            "sh",
            target,
        ];
        argv.extend_from_slice(args);
        crate::trace::step(format_args!("mounting {target} in the guest"));
        // In the guest's own root, not the image's: `target` is a full guest path and the
        // image may have no `mount` at all.
        let out = ExecBuilder::in_guest_root(&self.agent, &argv).output()?;
        if out.exit.code != Some(0) {
            return Err(VmError::Guest(format!(
                "mounting {target} in the guest failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        Ok(())
    }

    /// The agent of the running VM called `name` (started by another `sm` process), and the
    /// guest root its commands run in.
    pub fn attach(name: &str) -> Option<(Agent, Option<String>)> {
        let dir = runtime_root().join(name);
        let uds = dir.join("vm.vsock");
        if !uds.exists() {
            return None;
        }
        let root = std::fs::read_to_string(dir.join("guest-root")).ok();
        Some((Agent::new(uds), root.filter(|r| !r.is_empty())))
    }

    /// The VM's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The VM's runtime directory (sockets and logs).
    pub fn runtime_dir(&self) -> &Path {
        &self.dir
    }

    /// The guest agent.
    pub fn agent(&self) -> &Agent {
        &self.agent
    }

    /// sm-vmm's process ID.
    pub fn vmm_pid(&self) -> Option<i32> {
        self.vmm.as_ref().map(|p| p.pid().as_raw())
    }

    /// A command to run in the guest (inside the image's root when there is one).
    pub fn exec<S: AsRef<str>>(&self, argv: &[S]) -> ExecBuilder<'_> {
        ExecBuilder::new(
            &self.agent,
            ExecRequest {
                argv: argv.iter().map(|s| s.as_ref().to_owned()).collect(),
                root: self.root.clone(),
                ..Default::default()
            },
        )
    }

    /// Starts `argv` in the guest with a stdin to write to and returns at once (for
    /// options such as a tty, use [`Vm::exec`] and [`ExecBuilder::spawn`]).
    pub fn spawn<S: AsRef<str>>(&self, argv: &[S]) -> Result<crate::Child, VmError> {
        Ok(self.exec(argv).stdin().spawn()?)
    }

    /// The guest path of the image's root, if the VM runs an image.
    pub fn guest_root(&self) -> Option<&str> {
        self.root.as_deref()
    }

    /// Where a path of the VM's file system is in the guest: under the image's root when the
    /// VM runs an image (where its commands run), else the guest's own.
    fn in_root(&self, path: &str) -> String {
        format!("{}{path}", self.root.as_deref().unwrap_or(""))
    }

    /// Writes `data` to `path` (atomically; parents created), in the image's root when the VM
    /// runs an image, as its commands see it.
    pub fn write_file(&self, path: &str, data: &[u8], mode: u32) -> Result<(), VmError> {
        self.agent.write_file(&self.in_root(path), data, mode)?;
        Ok(())
    }

    /// Reads the file at `path` (in the image's root when the VM runs an image), refusing
    /// files over `max_bytes`.
    pub fn read_file(&self, path: &str, max_bytes: u64) -> Result<Vec<u8>, VmError> {
        Ok(self.agent.read_file(&self.in_root(path), max_bytes)?)
    }

    /// Forwards host 127.0.0.1:`map.host` (any free port if 0) to guest port `map.guest`
    /// until the returned forwarder is dropped; its `local_addr` is the bound address.
    pub fn forward_tcp(&self, map: PortMap) -> Result<PortForwarder, VmError> {
        PortForwarder::start(self.agent.clone(), map).map_err(|e| {
            VmError::Io(
                format!(
                    "-p {}:{}: listening on 127.0.0.1:{}",
                    map.host, map.guest, map.host
                ),
                e,
            )
        })
    }

    /// Forwards host 127.0.0.1:`map.host` to guest port `map.guest` for the VM's life.
    pub fn expose_tcp(&mut self, map: PortMap) -> Result<(), VmError> {
        let f = self.forward_tcp(map)?;
        self.forwarders.push(f);
        Ok(())
    }

    /// Stops the VM: no more restarts; the guest unmounts its volumes and syncs; sm-vmm
    /// (the guest powers off), then the backends, newest first.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        if self.vmm.is_none() && !self.dir.exists() {
            return; // Already stopped (stop, then drop).
        }
        crate::trace::step("stopping the VM");
        self.supervisor.stopping();
        self.forwarders.clear();
        if self.vmm.as_mut().is_some_and(|v| v.check_alive().is_ok()) {
            // Volumes are ext4 in the guest: unmount them (newest first) so that everything
            // written reaches the backends before the VM goes away.
            let script = "for t in \"$@\"; do umount \"$t\" 2>/dev/null; done; sync";
            let mut argv = vec!["sh", "-c", script, "sh"];
            argv.extend(self.volume_mounts.iter().rev().map(String::as_str));
            // Bounded on the host too: a guest that stopped answering must not hold up the
            // stop (its own timeout only works while it runs).
            let agent = self
                .agent
                .clone()
                .with_io_timeout(SYNC_TIMEOUT + STOP_MARGIN);
            let _ = ExecBuilder::in_guest_root(&agent, &argv)
                .timeout(SYNC_TIMEOUT)
                .output();
        }
        crate::trace::step("stopping sm-vmm");
        if let Some(mut vmm) = self.vmm.take() {
            vmm.stop(Duration::from_secs(5));
        }
        self.supervisor.stop();
        crate::trace::step("backends stopped");
        crate::trace::dump_logs(&self.dir);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// With `SM_KEEP_HUNG=DIR` set, a guest that did not come up is paused and snapshotted into
/// `DIR/NAME-PID` before it is stopped, so its vCPU, interrupt controller and timer state
/// can be read afterwards (a debugging aid; best effort, outcome traced).
fn keep_hung(rundir: &Path, name: &str) {
    let Some(dir) = std::env::var_os("SM_KEEP_HUNG") else {
        return;
    };
    let dest = Path::new(&dir).join(format!("{name}-{}", std::process::id()));
    let api = sm_snapshot::api::ApiClient::new(rundir.join(layout::API_SOCKET));
    let saved = api.pause().and_then(|()| api.snapshot(&dest, &[]));
    crate::trace::step(format_args!(
        "SM_KEEP_HUNG: snapshot of the hung guest in {}: {saved:?}",
        dest.display()
    ));
    eprintln!("sm: SM_KEEP_HUNG: {}: {saved:?}", dest.display());
}

/// Creates a missing volume sparse and formats it ext4 (kept afterwards); returns the size
/// in MiB to serve (an existing file keeps its own size).
fn prepare_volume(v: &Volume) -> Result<u64, VmError> {
    let what = || format!("--volume {}", v.file.display());
    match std::fs::metadata(&v.file) {
        Ok(m) => return Ok(m.len().div_ceil(1 << 20).max(1)),
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(VmError::Io(what(), e)),
        Err(_) => {}
    }
    let tmp = v.file.with_extension("sm-new");
    let f = std::fs::File::create(&tmp).map_err(|e| VmError::Io(what(), e))?;
    f.set_len(v.size_mib << 20)
        .map_err(|e| VmError::Io(what(), e))?;
    let out = Command::new("mkfs.ext4")
        .args(["-q", "-F", "-E", "nodiscard"])
        .arg(&tmp)
        .output()
        .map_err(|e| VmError::Io("running mkfs.ext4 (apt-get install e2fsprogs)".into(), e))?;
    if !out.status.success() {
        let _ = std::fs::remove_file(&tmp);
        return Err(VmError::Guest(format!(
            "mkfs.ext4 {}: {}",
            v.file.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    std::fs::rename(&tmp, &v.file).map_err(|e| VmError::Io(what(), e))?;
    Ok(v.size_mib)
}

/// A short unique suffix (time-based).
pub(crate) fn unique() -> String {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("{:x}", t & 0xffff_ffff)
}

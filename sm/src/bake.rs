//! Bake: boot an image once, start its workload, warm it up (install dependencies, fill a
//! cache volume), and save the running VM as a named snapshot in the [`SnapshotStore`],
//! from which clones start in a fraction of a boot. A bake is cached by a hash of
//! everything that went into it ([`cache_key`]): the same inputs boot nothing, an edited
//! extra file or a new warm-up tag bakes again.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde::Serialize;
use sha2::{Digest as _, Sha256};
use sm_oci::PullPolicy;

use crate::image::{self, PulledImage};
use crate::store::{BakeRecord, SnapshotStore, StoreError};
use crate::vm::record::RunRecord;
use crate::vm::{Mount, Network, Volume};
use crate::{Vm, VmConfig, VmError};

/// Bumped whenever baking changes in a way that makes older snapshots stale (2: volumes
/// unmounted before the snapshot; the guest zeroes freed pages).
const BAKE_FORMAT: u32 = 2;

/// Kernel parameters every baked guest boots with, before the user's: pages the guest
/// frees are zeroed, so the snapshot (which skips all-zero pages) and every clone's memory
/// hold only what the guest still uses, not the garbage of what it freed (measured: the
/// memory file of an idle 256 MiB guest, 103 MiB without, 60 MiB with).
const BAKE_KERNEL_ARGS: &str = "init_on_free=1";

/// How long a workload must run before the bake goes on (one that ends sooner fails it).
const WORKLOAD_SETTLE: Duration = Duration::from_secs(1);

/// How long a bake waits for the workload's listener.
const LISTEN_TIMEOUT: Duration = Duration::from_secs(300);

/// Why a bake failed. Nothing is left in the store by a failed bake.
#[derive(Debug, thiserror::Error)]
pub enum BakeError {
    /// The snapshot store refused.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The image could not be pulled or read.
    #[error("{0}")]
    Image(String),
    /// The VM could not be started or driven.
    #[error(transparent)]
    Vm(#[from] VmError),
    /// An extra file could not be read.
    #[error("extra file {0}: {1}")]
    ExtraFile(PathBuf, std::io::Error),
    /// The workload failed to start, or ended before the snapshot.
    #[error("the command {0}")]
    Workload(String),
    /// The warm-up failed.
    #[error("the warm-up {0}")]
    Warmup(String),
    /// The snapshot could not be taken.
    #[error("snapshot: {0}")]
    Snapshot(String),
}

/// A host file copied into the guest before the warm-up.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExtraFile {
    /// The host file (its contents are part of the cache key).
    pub host: PathBuf,
    /// Absolute path in the guest (inside the image's root).
    pub guest: String,
    /// Permission bits.
    pub mode: u32,
}

impl std::str::FromStr for ExtraFile {
    type Err = String;
    fn from_str(v: &str) -> Result<Self, String> {
        match v.split_once(':') {
            Some((host, guest)) if !host.is_empty() && guest.starts_with('/') => Ok(ExtraFile {
                host: host.into(),
                guest: guest.into(),
                mode: 0o644,
            }),
            _ => Err(format!("{v:?} is not HOST:GUEST (an absolute guest path)")),
        }
    }
}

/// A warm-up written as code: given the VM, it execs and writes files; an error is one line.
pub type WarmupFn = Box<dyn FnOnce(&Vm) -> Result<(), String> + Send>;

/// What a bake runs after the workload started (and listens, when asked).
pub enum Warmup {
    /// A shell command line (`/bin/sh -c`), with the workload's environment, working
    /// directory and user; its output goes to sm's stderr. Part of the cache key.
    Shell(String),
    /// Code given the VM (exec, files); only the warm-up tag stands for it in the key.
    Callback(WarmupFn),
}

/// Everything a bake is made of.
pub struct BakeOptions {
    /// The snapshot's name in the store.
    pub name: String,
    /// An image reference (registry, `oci-layout:`, `oci-archive:`, `docker-archive:`);
    /// `None` bakes the guest's own minimal root.
    pub image: Option<String>,
    /// Plain HTTP to a registry that is not on a loopback address.
    pub insecure: bool,
    /// When to pull the image.
    pub pull: PullPolicy,
    /// Guest memory in MiB.
    pub mem_mib: u64,
    /// Virtual CPUs.
    pub vcpus: u32,
    /// The workload, started before the warm-up and running in every clone; empty: none
    /// (the guest idles until commands are run in it).
    pub cmd: Vec<String>,
    /// Environment for the workload, the warm-up and later commands (after the image's).
    pub env: Vec<(String, String)>,
    /// Working directory (default: the image's).
    pub workdir: Option<String>,
    /// Live host directories.
    pub mounts: Vec<Mount>,
    /// Block volumes (created if missing); their bytes after the warm-up are baked in.
    pub volumes: Vec<Volume>,
    /// Host files staged into the guest before the warm-up.
    pub extra_files: Vec<ExtraFile>,
    /// The warm-up, if any.
    pub warmup: Option<Warmup>,
    /// Bump to bake again with otherwise unchanged inputs.
    pub warmup_tag: String,
    /// Kernel command-line parameters appended after sm's own.
    pub extra_kernel_args: Option<String>,
    /// Wait until the workload listens on this guest TCP port before the warm-up.
    pub listen_port: Option<u16>,
    /// The guest's network during the warm-up and in every clone (default: user-mode,
    /// outbound allowed, the host's loopback denied), so a warm-up can `npm install`.
    pub network: Network,
    /// Where the snapshot goes (default: the store in sm's home).
    pub store: Option<SnapshotStore>,
}

impl Default for BakeOptions {
    fn default() -> Self {
        let vm = VmConfig::default();
        BakeOptions {
            name: String::new(),
            image: None,
            insecure: false,
            pull: PullPolicy::Missing,
            mem_mib: vm.mem_mib,
            vcpus: vm.vcpus,
            cmd: vec![],
            env: vec![],
            workdir: None,
            mounts: vec![],
            volumes: vec![],
            extra_files: vec![],
            warmup: None,
            warmup_tag: String::new(),
            extra_kernel_args: None,
            listen_port: None,
            network: vm.network,
            store: None,
        }
    }
}

/// What a bake did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Baked {
    /// The store already held a snapshot of these inputs; nothing was booted.
    Cached(PathBuf),
    /// A new snapshot was made.
    New(PathBuf),
}

impl Baked {
    /// The snapshot directory.
    pub fn path(&self) -> &std::path::Path {
        match self {
            Baked::Cached(p) | Baked::New(p) => p,
        }
    }
}

/// The inputs of a bake as they are hashed.
#[derive(Serialize)]
struct KeyInputs<'a> {
    format: u32,
    sm: &'static str,
    image: Option<String>,
    shape: &'a RunRecord,
    volume_sizes: Vec<u64>,
    cmd: &'a [String],
    env: &'a [(String, String)],
    workdir: &'a Option<String>,
    extra_files: Vec<(String, u32, String)>,
    warmup: Option<&'a str>,
    warmup_tag: &'a str,
    listen_port: Option<u16>,
    kernel_args: &'a Option<String>,
    kernel: Option<String>,
    initramfs: Option<String>,
}

/// The cache key of a bake: sha256 over the image's manifest digest, every option, the
/// contents of the extra files, the guest kernel and initramfs, and the warm-up tag.
/// `store` remembers the kernel's and initramfs's digests by file identity.
pub fn cache_key(
    opts: &BakeOptions,
    image: Option<&PulledImage>,
    config: &VmConfig,
    store: &SnapshotStore,
) -> Result<String, BakeError> {
    let mut extra_files = vec![];
    for f in &opts.extra_files {
        let bytes = std::fs::read(&f.host).map_err(|e| BakeError::ExtraFile(f.host.clone(), e))?;
        extra_files.push((f.guest.clone(), f.mode, hex::encode(Sha256::digest(&bytes))));
    }
    let kernel = remembered_hash(store, &sm_vmm::config::default_kernel());
    let initramfs = remembered_hash(store, &sm_vmm::config::default_initrd());
    let inputs = KeyInputs {
        format: BAKE_FORMAT,
        sm: env!("CARGO_PKG_VERSION"),
        image: image.map(|i| i.manifest.to_string()),
        shape: &RunRecord::new(config),
        volume_sizes: config.volumes.iter().map(|v| v.size_mib).collect(),
        cmd: &opts.cmd,
        env: &opts.env,
        workdir: &opts.workdir,
        extra_files,
        warmup: opts.warmup.as_ref().map(|w| match w {
            Warmup::Shell(s) => s.as_str(),
            Warmup::Callback(_) => "(callback)",
        }),
        warmup_tag: &opts.warmup_tag,
        listen_port: opts.listen_port,
        kernel_args: &config.kernel_args,
        kernel,
        initramfs,
    };
    let json = serde_json::to_vec(&inputs).expect("bake inputs serialize");
    Ok(hex::encode(Sha256::digest(json)))
}

/// Bakes `opts` into the store, or finds the snapshot an identical bake made.
/// `progress` is told each step as it starts.
pub fn bake(mut opts: BakeOptions, progress: &mut dyn FnMut(&str)) -> Result<Baked, BakeError> {
    let store = opts
        .store
        .clone()
        .unwrap_or_else(SnapshotStore::open_default);
    store.path(&opts.name)?;
    let started = Instant::now();
    let image = match &opts.image {
        Some(r) => {
            progress(&format!("image {r}"));
            Some(image::resolve(r, opts.insecure, opts.pull).map_err(BakeError::Image)?)
        }
        None => None,
    };
    let config = VmConfig {
        name: Some(format!(
            "bake-{}-{}-{}",
            opts.name,
            std::process::id(),
            crate::vm::unique()
        )),
        mem_mib: opts.mem_mib,
        vcpus: opts.vcpus,
        mounts: opts.mounts.clone(),
        volumes: opts.volumes.clone(),
        ports: vec![],
        root_image: image.as_ref().map(|i| i.rootfs.clone()),
        kernel_args: Some(match &opts.extra_kernel_args {
            Some(extra) => format!("{BAKE_KERNEL_ARGS} {extra}"),
            None => BAKE_KERNEL_ARGS.into(),
        }),
        backend_watchdog: crate::vm::BACKEND_WATCHDOG,
        network: opts.network.clone(),
    };
    let key = cache_key(&opts, image.as_ref(), &config, &store)?;
    let _lock = store.lock(&opts.name)?;
    if store.record(&opts.name).is_some_and(|r| r.key == key) {
        let dir = store.find(&opts.name)?;
        if sm_snapshot::verify_sealed(&dir).is_ok() {
            return Ok(Baked::Cached(dir));
        }
    }
    progress("booting");
    let vm = Vm::start(&config)?;
    let staged = store.staging(&opts.name)?;
    let snapshot = staged.join(crate::store::SNAPSHOT_DIR);
    let result = run_and_save(&mut opts, image.as_ref(), &config, &vm, &snapshot, progress);
    vm.stop();
    if let Err(e) = result {
        let _ = std::fs::remove_dir_all(&staged);
        return Err(e);
    }
    let record = BakeRecord {
        name: opts.name.clone(),
        key,
        image: opts.image.clone(),
        warmup_tag: opts.warmup_tag.clone(),
        created: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
        seconds: started.elapsed().as_secs_f64(),
    };
    let installed = store.install(&opts.name, &staged, &record);
    if installed.is_err() {
        let _ = std::fs::remove_dir_all(&staged);
    }
    let dir = installed?;
    // Hashed once here, on the slow path: every later hit and restore reads metadata only.
    progress("sealing");
    sm_snapshot::verify_sealed(&dir).map_err(|e| BakeError::Snapshot(e.to_string()))?;
    Ok(Baked::New(dir))
}

/// Unmounts each volume in the guest and syncs, so the snapshot holds no state of them
/// (clones mount them again, and may then use the user's own file) and their files on the
/// host, copied into the snapshot, are complete. A volume something still holds open stays
/// mounted (clones then get copies of it as baked). Returns, per volume, whether it was
/// unmounted.
fn unmount_volumes(
    vm: &Vm,
    config: &VmConfig,
    progress: &mut dyn FnMut(&str),
) -> Result<Vec<bool>, BakeError> {
    let guest = |argv: Vec<String>| {
        crate::ExecBuilder::in_guest_root(vm.agent(), &argv)
            .timeout(Duration::from_secs(60))
            .output()
    };
    let prefix = vm.guest_root().unwrap_or("");
    let mut detached = vec![];
    for v in &config.volumes {
        let target = format!("{prefix}{}", v.guest);
        let out = guest(vec!["umount".into(), target])
            .map_err(|e| BakeError::Snapshot(format!("unmounting {}: {e}", v.guest)))?;
        let done = out.exit.code == Some(0);
        if !done {
            progress(&format!(
                "volume {} stays mounted ({}): clones get copies of it as baked",
                v.guest,
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        detached.push(done);
    }
    guest(vec!["sync".into()]).map_err(|e| BakeError::Snapshot(format!("sync: {e}")))?;
    Ok(detached)
}

/// In the booted VM: extra files, workload, listener, warm-up, sync, snapshot (the VM
/// powers off after it).
fn run_and_save(
    opts: &mut BakeOptions,
    image: Option<&PulledImage>,
    config: &VmConfig,
    vm: &Vm,
    staged: &std::path::Path,
    progress: &mut dyn FnMut(&str),
) -> Result<(), BakeError> {
    for f in &opts.extra_files {
        let bytes = std::fs::read(&f.host).map_err(|e| BakeError::ExtraFile(f.host.clone(), e))?;
        vm.write_file(&f.guest, &bytes, f.mode)?;
    }
    // The image's environment, working directory and user, as `sm run` uses them; the
    // command only when one was given (no command: no workload).
    let command = if opts.cmd.is_empty() {
        vec!["true".into()] // only for the plan's environment, directory and user
    } else {
        opts.cmd.clone()
    };
    let plan = image::plan(image, command, vm).map_err(BakeError::Workload)?;
    let env: Vec<(String, String)> = plan.env.iter().chain(&opts.env).cloned().collect();
    let workdir = opts.workdir.clone().or(plan.workdir.clone());
    let exec = |argv: &[String]| {
        let mut e = vm.exec(argv);
        for (k, v) in &env {
            e = e.env(k, v);
        }
        if let Some(d) = &workdir {
            e = e.cwd(d);
        }
        if let Some((uid, gid)) = plan.user {
            e = e.user(uid, gid);
        }
        e
    };
    let mut workload = None;
    if !opts.cmd.is_empty() {
        progress(&format!("starting {:?}", plan.argv));
        let mut child = exec(&plan.argv)
            .spawn()
            .map_err(|e| BakeError::Workload(format!("{:?}: {e}", plan.argv)))?;
        // A workload that cannot start (not found, bad configuration) usually ends at once.
        if let Ok(Some(exit)) = child.wait_timeout(WORKLOAD_SETTLE) {
            return Err(ended(&plan.argv, &exit));
        }
        workload = Some(child);
    }
    let still_running = |w: &mut Option<crate::Child>| -> Result<(), BakeError> {
        if let Some(child) = w.as_mut() {
            if let Ok(Some(exit)) = child.try_wait() {
                return Err(ended(&plan.argv, &exit));
            }
        }
        Ok(())
    };
    if let Some(port) = opts.listen_port {
        progress(&format!("waiting for a listener on guest port {port}"));
        let start = Instant::now();
        while vm.agent().connect_tcp(port).is_err() {
            still_running(&mut workload)?;
            if start.elapsed() > LISTEN_TIMEOUT {
                return Err(BakeError::Workload(format!(
                    "{:?} did not listen on guest port {port} within {LISTEN_TIMEOUT:?}",
                    plan.argv
                )));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    match opts.warmup.take() {
        Some(Warmup::Shell(line)) => {
            progress(&format!("warm-up: {line}"));
            let argv = ["/bin/sh".to_owned(), "-c".to_owned(), line];
            let (mut out, mut err) = (std::io::stderr(), std::io::stderr());
            let exit = exec(&argv)
                .stream(None, &mut out, &mut err)
                .map_err(|e| BakeError::Warmup(e.to_string()))?;
            if exit.shell_code() != 0 {
                return Err(BakeError::Warmup(format!("failed ({})", describe(&exit))));
            }
        }
        Some(Warmup::Callback(f)) => {
            progress("warm-up");
            f(vm).map_err(BakeError::Warmup)?;
        }
        None => {}
    }
    still_running(&mut workload)?;
    progress("unmounting volumes, sync");
    let detached = unmount_volumes(vm, config, progress)?;
    progress("snapshot");
    let mut record = RunRecord::new(config);
    for (v, d) in record.volumes.iter_mut().zip(detached) {
        v.detached = d;
    }
    record.image = opts.image.clone();
    record.guest_root = vm.guest_root().map(str::to_owned);
    record.env = env.clone();
    record.workdir = workdir.clone();
    record.user = plan.user;
    crate::vm::snapshot::take(vm.runtime_dir(), &record, staged, true)
        .map_err(BakeError::Snapshot)?;
    // The workload's connection ends with the VM; in clones it runs on without it.
    drop(workload);
    Ok(())
}

/// The error of a workload that ended before the snapshot.
fn ended(argv: &[String], exit: &crate::ExitInfo) -> BakeError {
    BakeError::Workload(format!(
        "{argv:?} ended before the snapshot ({}): a workload must keep running",
        describe(exit)
    ))
}

/// How a command ended, in words.
fn describe(exit: &crate::ExitInfo) -> String {
    match (exit.code, exit.signal) {
        (Some(c), _) => format!("exit code {c}"),
        (None, Some(s)) => format!("killed by signal {s}"),
        _ => "status unknown".into(),
    }
}

/// A file's identity: any change to its contents changes at least one of these (the change
/// time cannot be set back by an unprivileged process).
#[derive(serde::Deserialize, Serialize, PartialEq, Eq)]
struct FileIdentity {
    dev: u64,
    ino: u64,
    size: u64,
    mtime_ns: i128,
    ctime_ns: i128,
}

impl FileIdentity {
    fn of(path: &std::path::Path) -> Option<FileIdentity> {
        use std::os::unix::fs::MetadataExt;
        let m = std::fs::metadata(path).ok()?;
        Some(FileIdentity {
            dev: m.dev(),
            ino: m.ino(),
            size: m.size(),
            mtime_ns: i128::from(m.mtime()) * 1_000_000_000 + i128::from(m.mtime_nsec()),
            ctime_ns: i128::from(m.ctime()) * 1_000_000_000 + i128::from(m.ctime_nsec()),
        })
    }
}

/// The content digest of `path` (as snapshots record the kernel and initramfs), remembered
/// in the store by the file's identity, so that a cache hit does not read them again.
fn remembered_hash(store: &SnapshotStore, path: &std::path::Path) -> Option<String> {
    type Remembered = std::collections::BTreeMap<String, (FileIdentity, String)>;
    let file = store.dir().join(".file-hashes.json");
    let mut known: Remembered = std::fs::read(&file)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default();
    let key = path.to_string_lossy().into_owned();
    let identity = FileIdentity::of(path)?;
    if let Some((id, hash)) = known.get(&key) {
        if *id == identity {
            return Some(hash.clone());
        }
    }
    let (_, hash) = sm_snapshot::manifest::hash_file(path).ok()?;
    // Only if nothing changed while it was read.
    if FileIdentity::of(path).as_ref() == Some(&identity) {
        known.insert(key, (identity, hash.clone()));
        let tmp = store
            .dir()
            .join(format!(".file-hashes.json.{}", std::process::id()));
        if std::fs::create_dir_all(store.dir()).is_ok()
            && std::fs::write(&tmp, serde_json::to_vec(&known).unwrap_or_default()).is_ok()
        {
            let _ = std::fs::rename(&tmp, &file);
        }
    }
    Some(hash)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_remembered_hash_follows_the_file_and_is_not_read_again_when_unchanged() {
        let d = tempfile::tempdir().unwrap();
        let store = SnapshotStore::at(d.path().join("store"));
        let f = d.path().join("kernel");
        std::fs::write(&f, b"one").unwrap();
        let first = remembered_hash(&store, &f).unwrap();
        assert_eq!(remembered_hash(&store, &f).unwrap(), first);
        // Remembered: a forged entry with the file's identity is what comes back.
        let file = store.dir().join(".file-hashes.json");
        let forged = std::fs::read_to_string(&file)
            .unwrap()
            .replace(&first, "feed");
        std::fs::write(&file, forged).unwrap();
        assert_eq!(remembered_hash(&store, &f).unwrap(), "feed");
        // A rewritten file is hashed again.
        std::thread::sleep(std::time::Duration::from_millis(10));
        std::fs::write(&f, b"two").unwrap();
        let second = remembered_hash(&store, &f).unwrap();
        assert_ne!(second, first);
        assert_ne!(second, "feed");
        assert_eq!(remembered_hash(&store, &d.path().join("missing")), None);
    }
}

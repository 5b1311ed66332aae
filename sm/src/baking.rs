//! `sm bake [IMAGE] --name N [--warmup CMD] [--warmup-tag T] ... [-- CMD]`: boot, start
//! CMD, warm up, snapshot into the snapshot store; an unchanged bake is a cache hit that
//! boots nothing. Prints the snapshot directory; steps and their times go to stderr.

use std::path::PathBuf;
use std::time::Instant;

use sm::bake::{BakeOptions, Baked, ExtraFile, Warmup};
use sm::store::SnapshotStore;
use sm::vm::{Mount, Volume};

/// `sm bake` flags.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The snapshot's name (`sm run --snapshot NAME`, `sm snapshots`, `sm rmsnap NAME`).
    #[arg(long)]
    name: String,
    /// Guest memory in MiB.
    #[arg(long, default_value_t = 512)]
    mem: u64,
    /// Virtual CPUs.
    #[arg(long, default_value_t = 1)]
    vcpus: u32,
    /// A live host directory, as for `sm run` (repeatable).
    #[arg(long = "mount", value_name = "HOST:GUEST[:OPTS]")]
    mounts: Vec<Mount>,
    /// A block volume, as for `sm run`; what the warm-up writes to it is baked in.
    #[arg(long = "volume", value_name = "FILE:GUEST[:size=N]")]
    volumes: Vec<Volume>,
    /// An environment variable: KEY=VALUE (repeatable).
    #[arg(short = 'e', long = "env", value_name = "KEY=VALUE", value_parser = crate::run::parse_env)]
    env: Vec<(String, String)>,
    /// The working directory in the guest.
    #[arg(short = 'w', long = "workdir", value_name = "DIR")]
    workdir: Option<String>,
    /// A host file copied into the guest before the warm-up (its contents are part of
    /// the cache key; repeatable).
    #[arg(long = "extra-file", value_name = "HOST:GUEST")]
    extra_files: Vec<ExtraFile>,
    /// A shell command line run in the guest after CMD started (e.g. `npm install`).
    #[arg(long, value_name = "CMD")]
    warmup: Option<String>,
    /// Change it to bake again with otherwise unchanged inputs.
    #[arg(long, value_name = "TAG", default_value = "")]
    warmup_tag: String,
    /// Kernel command-line parameters appended after sm's own.
    #[arg(long, value_name = "PARAMS")]
    kernel_args: Option<String>,
    /// Wait until CMD listens on this guest TCP port before the warm-up.
    #[arg(long, value_name = "PORT")]
    listen: Option<u16>,
    /// The network of the warm-up and of every clone (`sm run --snapshot --egress` and
    /// `sm restore --egress` replace the rules per clone).
    #[command(flatten)]
    network: crate::run::NetworkArgs,
    /// The snapshot store (default: $SM_HOME/snapshots).
    #[arg(long, value_name = "DIR")]
    snapshots_dir: Option<PathBuf>,
    /// Plain HTTP to a registry that is not on a loopback address.
    #[arg(long)]
    insecure: bool,
    /// When to pull IMAGE: always, missing or never.
    #[arg(long, value_name = "POLICY", default_value = "missing")]
    pull: sm_oci::PullPolicy,
    /// The image (as for `sm run`); without it the guest's own minimal root.
    #[arg(value_name = "IMAGE")]
    image: Option<String>,
    /// The workload: started before the warm-up, running in every clone (none: the guest
    /// idles until commands are run in it).
    #[arg(last = true, value_name = "CMD")]
    command: Vec<String>,
}

/// Runs `sm bake`.
pub fn run(a: Args) -> Result<(), String> {
    let start = Instant::now();
    let name = a.name.clone();
    let opts = BakeOptions {
        name: a.name,
        image: a.image,
        insecure: a.insecure,
        pull: a.pull,
        mem_mib: a.mem,
        vcpus: a.vcpus,
        cmd: a.command,
        env: a.env,
        workdir: a.workdir,
        mounts: a.mounts,
        volumes: a.volumes,
        extra_files: a.extra_files,
        warmup: a.warmup.map(Warmup::Shell),
        warmup_tag: a.warmup_tag,
        extra_kernel_args: a.kernel_args,
        listen_port: a.listen,
        network: a.network.network()?,
        store: a.snapshots_dir.map(SnapshotStore::at),
    };
    let mut progress = |step: &str| {
        eprintln!("sm bake: [{:6.1} s] {step}", start.elapsed().as_secs_f64());
    };
    let baked = sm::bake::bake(opts, &mut progress).map_err(|e| format!("bake {name}: {e}"))?;
    match &baked {
        Baked::Cached(_) => eprintln!("sm bake: {name}: cached (nothing booted)"),
        Baked::New(_) => eprintln!(
            "sm bake: {name}: baked in {:.1} s",
            start.elapsed().as_secs_f64()
        ),
    }
    println!("{}", baked.path().display());
    Ok(())
}

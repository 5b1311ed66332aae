//! `sm`: the front door. One module per subcommand; this file only parses flags, dispatches
//! and turns any error into one line on stderr and a non-zero exit.

mod baking;
mod detach;
mod images;
mod pull;
mod restore;
mod rmi;
mod run;
mod snapshot;
mod snapshots;
mod terminal;
mod upgrade;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Run any OCI/Docker image as a KVM microVM.
#[derive(Parser, Debug)]
#[command(name = "sm", version)]
struct Cli {
    /// Where sm keeps its images (default: /var/lib/sm for root, else
    /// $XDG_DATA_HOME/sm or ~/.local/share/sm); the same as setting SM_HOME.
    #[arg(long, global = true, value_name = "DIR")]
    root: Option<std::path::PathBuf>,
    #[command(subcommand)]
    command: Command,
}

/// The subcommands.
#[derive(Subcommand, Debug)]
enum Command {
    /// Pull an image (registry reference, oci-layout:PATH[:TAG], oci-archive:PATH, docker-archive:PATH).
    Pull(pull::Args),
    /// List pulled images.
    Images(images::Args),
    /// Remove an image reference and garbage-collect blobs nothing else uses.
    Rmi(rmi::Args),
    /// Run a command in a new microVM (with live mounts, volumes and forwarded ports).
    Run(run::Args),
    /// Run a command in a running (detached) VM.
    Exec(detach::ExecArgs),
    /// List running VMs.
    Ps,
    /// Stop a running VM.
    Stop(detach::StopArgs),
    /// Save a running (detached) VM into a new snapshot directory; it keeps running
    /// unless --stop.
    Snapshot(snapshot::Args),
    /// Start a clone of a snapshotted VM (its own backends and volume copies, fresh
    /// random state) and run a command in it, or leave it running with -d.
    Restore(restore::Args),
    /// Boot an image, start a command, warm it up and save it as a named snapshot
    /// (cached: unchanged inputs boot nothing).
    Bake(baking::Args),
    /// List the named snapshots bakes made.
    Snapshots(snapshots::ListArgs),
    /// Remove named snapshots.
    Rmsnap(snapshots::RemoveArgs),
    /// Restart a running VM's file system and volume backends one at a time, each on its
    /// binary as it is now on disk (a planned restart: the guest sees no error).
    Upgrade(upgrade::Args),
}

fn main() -> ExitCode {
    let cli = match sm_launch::parse_args::<Cli>("sm") {
        Ok(c) => c,
        Err(code) => return ExitCode::from(code),
    };
    sm_launch::init_logging(sm::trace::DEFAULT_FILTER);
    if let Some(root) = &cli.root {
        // Through the environment, so a detached supervisor (a child sm) uses it too.
        // Set before any thread exists.
        std::env::set_var(sm_oci::cache::HOME_ENV, root);
    }
    let res = match cli.command {
        Command::Pull(a) => pull::run(a).map_err(|e| e.to_string()),
        Command::Images(a) => images::run(a).map_err(|e| e.to_string()),
        Command::Rmi(a) => rmi::run(a).map_err(|e| e.to_string()),
        Command::Run(a) => match run::run(a) {
            Ok(code) => return ExitCode::from(code),
            Err(e) => Err(e),
        },
        Command::Exec(a) => match detach::exec(a) {
            Ok(code) => return ExitCode::from(code),
            Err(e) => Err(e),
        },
        Command::Ps => detach::ps(),
        Command::Stop(a) => detach::stop(a),
        Command::Snapshot(a) => snapshot::run(a),
        Command::Restore(a) => match restore::run(a) {
            Ok(code) => return ExitCode::from(code),
            Err(e) => Err(e),
        },
        Command::Bake(a) => baking::run(a),
        Command::Snapshots(a) => snapshots::list(a),
        Command::Rmsnap(a) => snapshots::remove(a),
        Command::Upgrade(a) => upgrade::run(a),
    };
    match res {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sm: {e}");
            ExitCode::FAILURE
        }
    }
}

//! `sm-snapshot`: create, restore, inspect and verify snapshot directories of sm microVMs.

use std::ffi::OsString;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use sm_snapshot::api::{ApiClient, Include};
use sm_snapshot::{read_manifest, verify, Manifest};

/// Create, restore, inspect and verify sm microVM snapshot directories.
#[derive(Debug, Parser)]
#[command(name = "sm-snapshot", version)]
struct Args {
    #[command(subcommand)]
    command: Command,
}

/// What to do.
#[derive(Debug, Subcommand)]
enum Command {
    /// Snapshot a running sm-vmm through its API socket: pause, save into a new directory,
    /// then resume it (or stop it with --stop). A failed snapshot resumes the VM.
    Create(CreateArgs),
    /// Verify a snapshot, then start it with `sm-vmm --restore DIR` and the given backend
    /// sockets (the same devices in the same order as the snapshotted VM had, each served
    /// by a fresh backend).
    Restore(RestoreArgs),
    /// Print a snapshot's manifest: version, files, memory regions, devices.
    Inspect {
        /// The snapshot directory.
        dir: PathBuf,
    },
    /// Check every file of a snapshot against its manifest (sizes, sha256, nothing missing or extra).
    Verify {
        /// The snapshot directory.
        dir: PathBuf,
    },
}

/// `sm-snapshot create` flags.
#[derive(Debug, clap::Args)]
struct CreateArgs {
    /// sm-vmm's control API socket (`sm-vmm --api-socket PATH`).
    #[arg(long, value_name = "PATH")]
    api_socket: PathBuf,
    /// The snapshot directory to create (must not exist; its parent must).
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
    /// Shut the VM down after the snapshot instead of resuming it.
    #[arg(long)]
    stop: bool,
    /// Copy a host file into the snapshot as NAME, while the devices are stopped
    /// (e.g. a volume's image; repeatable).
    #[arg(long = "include", value_name = "NAME=PATH", value_parser = parse_include)]
    include: Vec<Include>,
}

/// `sm-snapshot restore` flags: sm-vmm's device flags, passed on.
#[derive(Debug, clap::Args)]
struct RestoreArgs {
    /// The snapshot directory.
    dir: PathBuf,
    /// Serve the restored VM's control API on this Unix socket.
    #[arg(long, value_name = "PATH")]
    api_socket: Option<PathBuf>,
    /// A fresh vhost-user-blk backend's socket (repeatable, in the snapshotted VM's order).
    #[arg(long = "blk-socket", value_name = "PATH")]
    blk_socket: Vec<PathBuf>,
    /// A fresh vhost-user-fs backend's socket under its tag (repeatable, same tags and order).
    #[arg(long = "fs-socket", value_name = "TAG=PATH")]
    fs_socket: Vec<String>,
    /// A fresh vhost-user-vsock backend's socket.
    #[arg(long = "vsock-socket", value_name = "PATH")]
    vsock_socket: Option<PathBuf>,
    /// The guest's vsock CID (what the vsock backend serves).
    #[arg(long, value_name = "N")]
    cid: Option<u64>,
}

/// Parses `NAME=PATH`: a plain file name and a host file (made absolute).
fn parse_include(v: &str) -> Result<Include, String> {
    let (name, path) = v.split_once('=').ok_or("expected NAME=PATH")?;
    if name.is_empty() || name.contains('/') || name == "." || name == ".." {
        return Err(format!("{name:?} is not a plain file name"));
    }
    if path.is_empty() {
        return Err("expected NAME=PATH".into());
    }
    Ok(Include {
        name: name.into(),
        path: absolute(Path::new(path)).map_err(|e| format!("{path}: {e}"))?,
    })
}

/// `p` made absolute against the working directory (not resolved: it may not exist yet).
fn absolute(p: &Path) -> std::io::Result<PathBuf> {
    std::path::absolute(p)
}

/// `sm-snapshot create`.
fn create(a: &CreateArgs) -> Result<(), String> {
    let out = absolute(&a.out).map_err(|e| format!("{}: {e}", a.out.display()))?;
    ApiClient::new(&a.api_socket)
        .pause_snapshot_resume(&out, &a.include, a.stop)
        .map_err(|e| e.to_string())?;
    println!("{}", out.display());
    Ok(())
}

/// sm-vmm: `$SM_BIN_DIR`, beside this executable, then `PATH`.
fn sm_vmm() -> PathBuf {
    let dirs = std::env::var_os("SM_BIN_DIR")
        .map(PathBuf::from)
        .into_iter()
        .chain(
            std::env::current_exe()
                .ok()
                .and_then(|e| e.parent().map(Path::to_path_buf)),
        );
    for dir in dirs {
        let p = dir.join("sm-vmm");
        if p.is_file() {
            return p;
        }
    }
    PathBuf::from("sm-vmm")
}

/// sm-vmm's flags for `sm-snapshot restore`.
fn restore_args(a: &RestoreArgs, dir: &Path) -> Vec<OsString> {
    let mut v: Vec<OsString> = vec!["--restore".into(), dir.into()];
    if let Some(p) = &a.api_socket {
        v.extend(["--api-socket".into(), p.into()]);
    }
    for p in &a.blk_socket {
        v.extend(["--blk-socket".into(), p.into()]);
    }
    for f in &a.fs_socket {
        v.extend(["--fs-socket".into(), f.into()]);
    }
    if let Some(p) = &a.vsock_socket {
        v.extend(["--vsock-socket".into(), p.into()]);
    }
    if let Some(c) = a.cid {
        v.extend(["--cid".into(), c.to_string().into()]);
    }
    v
}

/// `sm-snapshot restore`: verify, then become sm-vmm (returns only on failure).
fn restore(a: &RestoreArgs) -> Result<(), String> {
    let dir = absolute(&a.dir).map_err(|e| format!("{}: {e}", a.dir.display()))?;
    verify(&dir).map_err(|e| e.to_string())?;
    let vmm = sm_vmm();
    let e = std::process::Command::new(&vmm)
        .args(restore_args(a, &dir))
        .exec();
    Err(format!("cannot start {}: {e}", vmm.display()))
}

fn main() -> ExitCode {
    let args = match sm_launch::parse_args::<Args>("sm-snapshot") {
        Ok(a) => a,
        Err(code) => return ExitCode::from(code),
    };
    sm_launch::init_logging("error");
    let result = match &args.command {
        Command::Create(a) => create(a),
        Command::Restore(a) => restore(a),
        Command::Inspect { dir } => read_manifest(dir)
            .map(|m| print!("{}", describe(dir, &m)))
            .map_err(|e| e.to_string()),
        Command::Verify { dir } => verify(dir)
            .map(|_| println!("{}: ok", dir.display()))
            .map_err(|e| e.to_string()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sm-snapshot: {e}");
            ExitCode::from(1)
        }
    }
}

/// The manifest in a readable form.
fn describe(dir: &Path, m: &Manifest) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    let _ = writeln!(s, "snapshot {}", dir.display());
    let _ = writeln!(s, "  format version  {}", m.format_version);
    let _ = writeln!(s, "  created         {}", utc(m.created_unix_secs));
    let host = &m.host;
    let unknown = || "unknown".to_owned();
    let _ = writeln!(
        s,
        "  host            {} / {} / KVM API {}",
        host.cpu_vendor.clone().unwrap_or_else(unknown),
        host.cpu_model.clone().unwrap_or_else(unknown),
        host.kvm_api_version.map_or_else(unknown, |v| v.to_string())
    );
    for (key, value) in &host.extra {
        let _ = writeln!(s, "  host {key:<10} {value}");
    }
    if let Some(k) = &m.kernel_sha256 {
        let _ = writeln!(s, "  kernel sha256   {k}");
    }
    if let Some(i) = &m.initramfs_sha256 {
        let _ = writeln!(s, "  initramfs sha256 {i}");
    }
    let _ = writeln!(s, "files:");
    for f in &m.files {
        let _ = writeln!(
            s,
            "  {:<24} {:>14} bytes  sha256 {}",
            f.name, f.size, f.sha256
        );
    }
    let _ = writeln!(s, "memory (file {}):", m.memory.file);
    for r in &m.memory.regions {
        let _ = writeln!(
            s,
            "  guest {:#014x}..{:#014x}  {:>6} MiB  at file offset {:#x}",
            r.guest_addr,
            r.guest_addr + r.size,
            r.size >> 20,
            r.file_offset
        );
    }
    let _ = writeln!(s, "devices:");
    for d in &m.devices {
        let kind = serde_json::to_value(d.kind)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default();
        let mut line = format!("  {kind:<13}");
        for (label, value) in [
            ("tag", &d.tag),
            ("socket", &d.socket_role),
            ("backend", &d.backend),
            ("state", &d.state_file),
        ] {
            if let Some(v) = value {
                let _ = write!(line, " {label}={v}");
            }
        }
        let _ = writeln!(s, "{}", line.trim_end());
    }
    s
}

/// `secs` since the epoch as `YYYY-MM-DD HH:MM:SS UTC` (civil-from-days, proleptic Gregorian).
fn utc(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02} UTC",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(argv: &[&str]) -> Args {
        Args::try_parse_from(std::iter::once("sm-snapshot").chain(argv.iter().copied())).unwrap()
    }

    #[test]
    fn create_takes_the_socket_the_target_stop_and_includes() {
        let a = parse(&[
            "create",
            "--api-socket",
            "/r/api.sock",
            "--out",
            "/s/snap",
            "--stop",
            "--include",
            "volume-0.img=/v/c.img",
        ]);
        let Command::Create(c) = a.command else {
            panic!("{a:?}")
        };
        assert_eq!(c.api_socket, Path::new("/r/api.sock"));
        assert!(c.stop);
        assert_eq!(
            c.include,
            [Include {
                name: "volume-0.img".into(),
                path: "/v/c.img".into()
            }]
        );
    }

    #[test]
    fn an_include_name_must_be_a_plain_file_name() {
        for bad in ["a/b=/x", "=/x", "..=/x", "name"] {
            assert!(parse_include(bad).is_err(), "{bad}");
        }
        let rel = parse_include("v.img=rel/c.img").unwrap();
        assert!(rel.path.is_absolute());
    }

    #[test]
    fn restore_passes_the_device_flags_on_to_sm_vmm_in_order() {
        // The same flags, in the same order, on both command lines.
        const DEVICES: [&str; 10] = [
            "--blk-socket",
            "/r/root.sock",
            "--blk-socket",
            "/r/blk-0.sock",
            "--fs-socket",
            "m0=/r/fs-0.sock",
            "--vsock-socket",
            "/r/vsock.sock",
            "--cid",
            "3",
        ];
        let a = parse(&[&["restore", "/s/snap"][..], &DEVICES].concat());
        let Command::Restore(r) = a.command else {
            panic!("{a:?}")
        };
        let v = restore_args(&r, Path::new("/s/snap"));
        let v: Vec<_> = v.iter().map(|s| s.to_str().unwrap()).collect();
        assert_eq!(v, [&["--restore", "/s/snap"][..], &DEVICES].concat());
    }
}

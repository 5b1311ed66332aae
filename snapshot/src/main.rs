//! `sm-snapshot`: inspect and verify snapshot directories of sm microVMs.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use sm_snapshot::{read_manifest, verify, Manifest};

/// Inspect and verify sm microVM snapshot directories.
#[derive(Debug, Parser)]
#[command(name = "sm-snapshot", version)]
struct Args {
    #[command(subcommand)]
    command: Command,
}

/// What to do.
#[derive(Debug, Subcommand)]
enum Command {
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

fn main() -> ExitCode {
    let args = match sm_launch::parse_args::<Args>("sm-snapshot") {
        Ok(a) => a,
        Err(code) => return ExitCode::from(code),
    };
    sm_launch::init_logging("error");
    let result = match &args.command {
        Command::Inspect { dir } => read_manifest(dir).map(|m| print!("{}", describe(dir, &m))),
        Command::Verify { dir } => verify(dir).map(|_| println!("{}: ok", dir.display())),
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

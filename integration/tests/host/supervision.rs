//! Supervision on the host (issue 13): the unit files in `systemd/` pass `systemd-analyze
//! verify` with the binaries of this build in place of `/usr/local/bin`, and say what the
//! backends and sm-vmm need from systemd; sm-vmm tells a service manager (`NOTIFY_SOCKET`)
//! how its VM went. The backends' own notification and socket activation tests are in their
//! crates (`tests/supervision.rs`).

use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::Command;

fn units_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../systemd")
}

/// The unit files, by name.
fn units() -> Vec<(String, String)> {
    let mut units: Vec<_> = std::fs::read_dir(units_dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            matches!(
                p.extension().and_then(|e| e.to_str()),
                Some("service" | "socket")
            )
        })
        .map(|p| {
            let name = p.file_name().unwrap().to_str().unwrap().to_owned();
            (name, std::fs::read_to_string(&p).unwrap())
        })
        .collect();
    units.sort();
    units
}

#[test]
fn unit_files_pass_systemd_analyze_verify() {
    let units = units();
    let names: Vec<&str> = units.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        [
            "sm-vhost-user-blk@.service",
            "sm-vhost-user-blk@.socket",
            "sm-vhost-user-fs@.service",
            "sm-vhost-user-fs@.socket",
            "sm-vmm@.service",
        ]
    );
    for (name, text) in &units {
        let has = |line: &str| text.lines().any(|l| l == line);
        if name.ends_with(".service") {
            for line in ["Type=notify", "Restart=on-failure", "NoNewPrivileges=yes"] {
                assert!(has(line), "{name}: no {line}");
            }
            assert!(text.contains("\nWatchdogSec="), "{name}: no WatchdogSec=");
            for line in ["ProtectSystem=strict", "PrivateNetwork=yes"] {
                assert!(has(line), "{name}: no {line}");
            }
        }
        if name.starts_with("sm-vhost-user-") && name.ends_with(".service") {
            // The sandboxed server is the main process's child.
            assert!(has("NotifyAccess=all"), "{name}");
            let socket = name.replace(".service", ".socket");
            assert!(names.contains(&socket.as_str()), "{name}: no {socket}");
            assert!(
                has(&format!("Requires={}", socket.replace("@.", "@%i."))),
                "{name}"
            );
        }
    }

    // systemd-analyze checks that ExecStart= names an executable: the built ones stand in
    // for the installed ones, nothing else changes.
    let bin = sm_integration::bin_dir()
        .canonicalize()
        .expect("the release binaries (scripts/build.sh)");
    for b in ["sm-vhost-user-blk", "sm-vhost-user-fs", "sm-vmm"] {
        assert!(bin.join(b).exists(), "{} not built", bin.join(b).display());
    }
    let dir = tempfile::tempdir().unwrap();
    for (name, text) in &units {
        let text = text.replace("/usr/local/bin/", &format!("{}/", bin.display()));
        std::fs::write(dir.path().join(name), text).unwrap();
    }
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .args(units.iter().map(|(n, _)| dir.path().join(n)))
        .output()
        .expect("systemd-analyze (scripts/install-deps.sh installs systemd)");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "systemd-analyze verify failed:\n{err}"
    );
    assert_eq!(err.trim(), "", "systemd-analyze verify warned");
}

/// sm-vmm with a NOTIFY_SOCKET and a watchdog: `READY=1` then `STOPPING=1` when the guest
/// boots here (hardware KVM); on a host whose KVM cannot boot it, `STOPPING=1` with the
/// failure and never `READY=1`.
#[test]
fn sm_vmm_tells_its_service_manager_how_the_vm_went() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notify.sock");
    let notify = UnixDatagram::bind(&path).unwrap();
    notify.set_nonblocking(true).unwrap();
    let out = Command::new(sm_integration::bin_dir().join("sm-vmm"))
        .args(["--", "true"])
        .env("NOTIFY_SOCKET", &path)
        .env("WATCHDOG_USEC", "100000")
        .output()
        .unwrap();
    let mut lines = Vec::new();
    let mut buf = [0u8; 4096];
    while let Ok(n) = notify.recv(&mut buf) {
        lines.extend(
            String::from_utf8_lossy(&buf[..n])
                .lines()
                .map(str::to_owned),
        );
    }
    let err = String::from_utf8_lossy(&out.stderr);
    let has = |l: &str| lines.iter().any(|x| x == l);
    assert!(has("STOPPING=1"), "{lines:?}\n{err}");
    if out.status.success() {
        assert!(has("READY=1") && has("STATUS=running"), "{lines:?}");
        assert!(has("STATUS=the guest stopped"), "{lines:?}");
        let ready = lines.iter().position(|l| l == "READY=1").unwrap();
        let stopping = lines.iter().position(|l| l == "STOPPING=1").unwrap();
        assert!(ready < stopping, "{lines:?}");
    } else {
        assert!(!has("READY=1"), "{lines:?}");
        assert!(has("STATUS=the VM failed"), "{lines:?}\n{err}");
    }
}

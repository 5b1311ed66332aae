//! Real-guest tests of sm-vmm's control API (`--api-socket`): status, pause, resume and
//! shutdown of a guest that prints a counter, and the API's errors, all through
//! `curl --unix-socket` as a user would call them.

use crate::common::*;
use sm_test_support::process::wait_timeout;
use std::io::{BufRead, BufReader, Read};
use std::os::unix::net::UnixListener;
use std::path::Path;
use std::process::Stdio;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Prints 1, 2, 3, ... every 100 ms, forever.
const COUNTER: &str = "i=0; while :; do i=$((i+1)); echo $i; sleep 0.1; done";

/// `GET /vm`, checked to be 200 with a JSON body.
fn status(socket: &Path) -> serde_json::Value {
    let (code, body) = curl(socket, "GET", "/vm", None);
    assert_eq!(code, 200, "GET /vm: {body}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("GET /vm: {e}: {body}"))
}

#[test]
fn pause_resume_and_shutdown_through_the_api_socket() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("api.sock");
    // What a killed sm-vmm leaves behind: a socket nobody listens on. It is replaced.
    drop(UnixListener::bind(&socket).unwrap());
    let mut child = sm_vmm()
        .arg("--api-socket")
        .arg(&socket)
        .args(["--vcpus", "2", "--", "sh", "-c", COUNTER])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn sm-vmm");
    let _kill = kill_after(child.id(), Duration::from_secs(200));
    let lines = Arc::new(AtomicUsize::new(0));
    let seen = lines.clone();
    let stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for _ in BufReader::new(stdout).lines().map_while(Result::ok) {
            seen.fetch_add(1, Ordering::SeqCst);
        }
    });
    let mut stderr = child.stderr.take().unwrap();
    let errors = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    let count = || lines.load(Ordering::SeqCst);
    let booting = Instant::now();
    while count() < 3 {
        if booting.elapsed() > Duration::from_secs(120) {
            // Tell a guest that never got going (nested emulation has stalled guests here)
            // from an sm-vmm whose API or vCPU loop hangs.
            let alive = child.try_wait().unwrap().is_none();
            let vm = std::process::Command::new("curl")
                .args(["-sS", "--max-time", "10", "--unix-socket"])
                .arg(&socket)
                .arg("http://localhost/vm")
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).into_owned());
            panic!(
                "the guest's counter: {} lines in 120 s; sm-vmm {}; GET /vm answered {vm:?}",
                count(),
                if alive { "still runs" } else { "exited" }
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }

    let vm = status(&socket);
    let version = sm_vmm_nokvm().arg("--version").output().unwrap();
    let version = String::from_utf8_lossy(&version.stdout);
    assert_eq!(vm["state"], "running", "{vm}");
    assert_eq!(
        (vm["vcpus"].as_u64(), vm["memory_mib"].as_u64()),
        (Some(2), Some(256))
    );
    assert!(vm["uptime_ms"].as_u64().unwrap_or(0) > 0, "{vm}");
    assert_eq!(
        Some(version.trim()),
        vm["version"]
            .as_str()
            .map(|v| format!("sm-vmm {v}"))
            .as_deref(),
        "{vm}"
    );

    // Paused: the counter stops.
    let asked = Instant::now();
    assert_eq!(
        curl(&socket, "PUT", "/vm/pause", None),
        (204, String::new())
    );
    eprintln!(
        "PUT /vm/pause answered in {:?} (curl included)",
        asked.elapsed()
    );
    std::thread::sleep(Duration::from_millis(300)); // what was printed reaches the reader
    let before = count();
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(count(), before, "the guest printed while paused");
    assert_eq!(status(&socket)["state"], "paused");
    assert_error(
        curl(&socket, "PUT", "/vm/pause", None),
        409,
        "already paused",
    );

    // Resumed: it goes on.
    assert_eq!(
        curl(&socket, "PUT", "/vm/resume", Some("{}")),
        (204, String::new())
    );
    wait_until(Duration::from_secs(10), "the counter after resume", || {
        count() >= before + 3
    });
    assert_eq!(status(&socket)["state"], "running");
    assert_error(curl(&socket, "PUT", "/vm/resume", None), 409, "not paused");

    // Bad requests get their JSON errors and change nothing.
    assert_error(curl(&socket, "GET", "/nope", None), 404, "/nope");
    assert_error(curl(&socket, "DELETE", "/vm", None), 405, "use GET");
    assert_error(curl(&socket, "GET", "/vm/pause", None), 405, "use PUT");
    assert_error(
        curl(&socket, "PUT", "/vm/pause", Some("nonsense")),
        400,
        "takes no arguments",
    );
    assert_eq!(status(&socket)["state"], "running");

    // Shut down: sm-vmm exits 0 within seconds and its socket is gone.
    assert_eq!(
        curl(&socket, "PUT", "/vm/shutdown", None),
        (204, String::new())
    );
    let exit = wait_timeout(&mut child, Duration::from_secs(10))
        .expect("sm-vmm still running 10 s after PUT /vm/shutdown");
    let errors = errors.join().unwrap();
    assert_eq!(exit.code(), Some(0), "stderr: {errors}");
    assert!(errors.is_empty(), "stderr: {errors}");
    assert!(!socket.exists(), "the API socket outlived sm-vmm");
}

#[test]
fn a_file_that_is_not_a_socket_is_refused_in_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("api.sock");
    std::fs::write(&file, "mine").unwrap();
    let out = run_with_timeout(
        sm_vmm().arg("--api-socket").arg(&file).args(["--", "true"]),
        Duration::from_secs(120),
    );
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "stderr: {err}");
    assert_eq!(
        err,
        format!(
            "sm-vmm: --api-socket {}: not a socket (remove the file or choose another path)\n",
            file.display()
        )
    );
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "mine");
}

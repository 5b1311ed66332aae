//! The test VM runner itself: a command that goes silent is stopped as a stall, with a
//! distinct exit code, instead of hanging the suite (the nested emulation has livelocked).

use sm_testvm::stall::rerun_stalled;
use sm_testvm::Stall;
use std::path::PathBuf;
use std::process::{Command, Output};
use std::sync::Mutex;
use std::time::{Duration, Instant};

fn sm_testvm() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_sm-testvm"))
}

/// One test VM at a time: several nested emulations on a two-core host make the freeze
/// these tests tell apart from silence more likely.
static ONE_TEST_VM: Mutex<()> = Mutex::new(());

/// Runs sm-testvm with `args`; a test VM that froze when the test did not provoke it (the
/// nested emulation's livelock) is run again, loudly ([`rerun_stalled`]).
fn run_testvm(args: &[&str]) -> Output {
    let _one = ONE_TEST_VM.lock().unwrap_or_else(|e| e.into_inner());
    rerun_stalled(
        &format!("sm-testvm {args:?}"),
        |stall| stall == Stall::Frozen,
        || {
            Command::new(sm_testvm())
                .args(args)
                .output()
                .expect("running sm-testvm")
        },
    )
}

#[test]
fn a_silent_command_is_stopped_as_a_stall() {
    let started = Instant::now();
    let out = run_testvm(&[
        "--cpus",
        "1",
        "--stall-timeout",
        "5",
        "--",
        "sh",
        "-c",
        "echo before; sleep 600; echo after",
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(124), "stderr: {stderr}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "before\n");
    assert!(
        stderr.contains("the test VM stalled: the command wrote nothing for"),
        "stderr: {stderr}"
    );
    assert!(started.elapsed() < Duration::from_secs(300));
}

#[test]
fn the_boot_does_not_count_as_silence() {
    // The test VM boots in about 4 s, longer than this stall timeout: silence is counted
    // from the command's start, so the command still runs and prints before the stall.
    let out = run_testvm(&[
        "--cpus",
        "1",
        "--stall-timeout",
        "2",
        "--",
        "sh",
        "-c",
        "echo before; sleep 600",
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(124), "stderr: {stderr}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "before\n",
        "stderr: {stderr}"
    );
}

#[test]
fn output_keeps_a_slow_command_alive() {
    let out = run_testvm(&[
        "--cpus",
        "1",
        "--stall-timeout",
        "8",
        "--",
        "sh",
        "-c",
        "for i in 1 2 3 4; do sleep 4; echo $i >&2; done; exit 3",
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "stderr: {stderr}");
    assert_eq!(stderr, "1\n2\n3\n4\n");
}

#[test]
fn a_test_vm_whose_heartbeat_stops_is_stopped_as_frozen() {
    // Stopping the heartbeat process stands in for a livelocked test VM, where no
    // userspace runs at all; the command itself stays quiet but alive.
    // Provoked here, so the freeze is not run again.
    let _one = ONE_TEST_VM.lock().unwrap_or_else(|e| e.into_inner());
    let out = Command::new(sm_testvm())
        .args(["--cpus", "1", "--freeze-timeout", "8", "--"])
        .args([
            "sh",
            "-c",
            "kill -STOP $(cat /run/sm-testvm/heartbeat.pid) && echo paused; sleep 600",
        ])
        .output()
        .expect("running sm-testvm");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(124), "stderr: {stderr}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "paused\n");
    assert!(
        stderr.contains("the test VM stalled: the test VM froze (no heartbeat) for"),
        "stderr: {stderr}"
    );
    // QEMU's view comes with it: the vCPU's state and its local APIC (a lost timer
    // interrupt shows as the timer's vector in IRR).
    for part in [
        "what QEMU's monitor says of the test VM",
        "VM status: running",
        "HLT=",
        "LVTT",
        "IRR",
    ] {
        assert!(stderr.contains(part), "no {part:?} in stderr: {stderr}");
    }
}

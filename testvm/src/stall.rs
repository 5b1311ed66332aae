//! How sm-testvm reports a stalled test VM, and how a caller runs it again: the nested
//! emulation's livelock freezes a test VM now and then, through no fault of the command.

use crate::Stall;
use std::process::Output;

/// Exit code when the test VM stalled and was stopped (as timeout(1) reports a timeout).
pub const STALLED_EXIT: u8 = 124;

/// How many times a caller runs a command whose test VM stalled, the first run included.
pub const ATTEMPTS: u32 = 3;

/// The line sm-testvm prints when it stopped a stalled test VM.
pub fn stalled_line(what: Stall, idle_secs: u64) -> String {
    format!(
        "sm-testvm: the test VM stalled: {} for {idle_secs} s; stopped it",
        reason(what)
    )
}

/// Why a test VM counts as stalled, as [`stalled_line`] says it.
fn reason(what: Stall) -> &'static str {
    match what {
        Stall::Silent => "the command wrote nothing",
        Stall::Frozen => "the test VM froze (no heartbeat)",
    }
}

/// The stall sm-testvm reported in a finished run, if it reported one.
pub fn stall_of(out: &Output) -> Option<Stall> {
    if out.status.code() != Some(i32::from(STALLED_EXIT)) {
        return None;
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    [Stall::Frozen, Stall::Silent]
        .into_iter()
        .find(|&s| stderr.contains(&format!("the test VM stalled: {}", reason(s))))
}

/// Runs `run` (a command line that runs sm-testvm) and runs it again, loudly (`FLAKY:` with
/// its stderr), while the test VM stalled in a way `retry` accepts, at most [`ATTEMPTS`]
/// times in all. `what` names the command in the `FLAKY:` line.
pub fn rerun_stalled(
    what: &str,
    retry: impl Fn(Stall) -> bool,
    mut run: impl FnMut() -> Output,
) -> Output {
    let mut attempt = 1;
    loop {
        let out = run();
        match stall_of(&out) {
            Some(stall) if attempt < ATTEMPTS && retry(stall) => {
                eprintln!(
                    "FLAKY: {what}: the test VM stalled (attempt {attempt}); running it again\n{}",
                    String::from_utf8_lossy(&out.stderr)
                );
                attempt += 1;
            }
            _ => return out,
        }
    }
}

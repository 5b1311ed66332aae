//! sm-launch is the contract between `sm` and the processes it starts (sm-vmm and the
//! vhost-user backends). Each binary's flags are a clap `Parser` struct exported by its own
//! library; implementing [`CommandLine`] turns a value of that struct back into arguments, so
//! `sm` builds every command line from typed values and a renamed or removed flag is a
//! compile error (or, for a changed `long` name, a failed round-trip test) instead of a
//! process that refuses to start. It also holds what every binary does the same way: flag
//! errors as one line ([`one_line`]), the one logging switch ([`init_logging`]), how a
//! started process is waited for until it serves ([`readiness`]), and the service manager's
//! end of sd_notify ([`notify`]), and the signal mask a started process begins with
//! ([`clear_signal_mask`]).

#![warn(missing_docs)]

mod args;
mod logging;
pub mod notify;
pub mod readiness;

pub use args::{assert_round_trip, ArgWriter, CommandLine};
pub use logging::{init_logging, log_filter, DEBUG_VAR, LOG_VAR};

/// For a `pre_exec` hook: empties the signal mask, which survives exec. A parent that
/// blocks signals to wait for them on a thread (as `sm` does) would otherwise hand the mask
/// to programs that never unblock them (vhost-device-vsock, passt), which then ignore
/// SIGTERM. Async-signal-safe: only `sigemptyset` and `pthread_sigmask` on a set on the stack.
pub fn clear_signal_mask() -> std::io::Result<()> {
    // SAFETY: a sigset_t is plain data, initialised by sigemptyset before pthread_sigmask
    // reads it; no old set is written back.
    let e = unsafe {
        let mut none: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut none);
        libc::pthread_sigmask(libc::SIG_SETMASK, &none, std::ptr::null_mut())
    };
    match e {
        0 => Ok(()),
        e => Err(std::io::Error::from_raw_os_error(e)),
    }
}

/// clap's message spans lines (details, then usage): keeps the part before the first blank
/// line, joined into one, without clap's `error: ` prefix.
pub fn one_line(msg: &str) -> String {
    let summary: Vec<&str> = msg
        .lines()
        .take_while(|l| !l.trim().is_empty())
        .map(str::trim)
        .collect();
    summary.join(" ").trim_start_matches("error: ").to_owned()
}

/// Parses `A` from the process's arguments the way every sm binary does: `--help` and
/// `--version` print and exit 0; a usage error is one stderr line `NAME: what` and `Err(2)`.
pub fn parse_args<A: clap::Parser>(name: &str) -> Result<A, u8> {
    match A::try_parse() {
        Ok(a) => Ok(a),
        Err(e) if !e.use_stderr() => {
            let _ = e.print();
            std::process::exit(0)
        }
        Err(e) => {
            eprintln!("{name}: {}", one_line(&e.to_string()));
            Err(2)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::one_line;

    #[test]
    fn clap_errors_become_one_line() {
        let msg = "error: unexpected argument '--bogus' found\n\n  tip: ...\n\nUsage: x\n";
        assert_eq!(one_line(msg), "unexpected argument '--bogus' found");
        assert_eq!(one_line("error: a\n  b\n\nUsage"), "a b");
    }
}

//! What a backend's `main` does around its own work: close inherited descriptors, parse
//! flags with errors as one stderr line, log to stderr, and turn the outcome into an exit code.

use std::fmt::Display;
use std::process::ExitCode;

use clap::Parser;

/// Runs a backend binary called `name`: closes inherited descriptors, parses `A` from the
/// command line (a usage error is one stderr line and exit status 2), logs to stderr with
/// `default_filter` unless `SM_LOG` or `SM_DEBUG` says otherwise, then calls `run`; its
/// error is one stderr line and exit status 1. Stdout stays silent.
pub fn main<A: Parser, E: Display>(
    name: &str,
    default_filter: &str,
    run: impl FnOnce(A) -> Result<(), E>,
) -> ExitCode {
    sm_sandbox::close_inherited_fds();
    let args = match sm_launch::parse_args::<A>(name) {
        Ok(a) => a,
        Err(code) => return ExitCode::from(code),
    };
    sm_launch::init_logging(default_filter);
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{name}: {e}");
            ExitCode::FAILURE
        }
    }
}

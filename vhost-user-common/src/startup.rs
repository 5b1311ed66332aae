//! What a backend's `main` does around its own work: close inherited descriptors, parse
//! flags with errors as one stderr line, log to stderr, and turn the outcome into an exit code.

use std::fmt::Display;
use std::io::IsTerminal;
use std::process::ExitCode;

use clap::Parser;

/// Runs a backend binary called `name`: closes inherited descriptors, parses `A` from the
/// command line (a usage error is one stderr line and exit status 2), logs to stderr with
/// `default_filter` unless `RUST_LOG` is set, then calls `run`; its error is one stderr line
/// and exit status 1. Stdout stays silent.
pub fn main<A: Parser, E: Display>(
    name: &str,
    default_filter: &str,
    run: impl FnOnce(A) -> Result<(), E>,
) -> ExitCode {
    sm_sandbox::close_inherited_fds();
    let args = match A::try_parse() {
        Ok(a) => a,
        Err(e) if !e.use_stderr() => e.exit(), // --help, --version
        Err(e) => {
            eprintln!("{name}: {}", one_line(&e.to_string()));
            return ExitCode::from(2);
        }
    };
    init_logging(default_filter);
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{name}: {e}");
            ExitCode::FAILURE
        }
    }
}

/// clap's message spans lines (details, then usage): keeps the part before the first blank
/// line, joined into one, without clap's `error: ` prefix.
fn one_line(msg: &str) -> String {
    let summary: Vec<&str> = msg
        .lines()
        .take_while(|l| !l.trim().is_empty())
        .map(str::trim)
        .collect();
    summary.join(" ").trim_start_matches("error: ").to_owned()
}

/// Logs to stderr (colour only on a terminal) with `default_filter` unless `RUST_LOG` is set.
pub fn init_logging(default_filter: &str) {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_filter)),
        )
        .init();
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

//! Tests that cannot run their real check (not root, a tool missing, a mount refused) never
//! pass quietly: under `CI=true` they fail saying what is missing; elsewhere they print a
//! loud `SKIPPED:` line and return.

use std::io::Write;

/// Whether this is a CI run (`CI=true`, as CI services set it).
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
}

/// Reports that the calling test cannot run its check because of `missing`: panics under
/// `CI=true`, else prints `SKIPPED: <test>: <missing>` to stderr; the test then returns.
pub fn skip_or_fail(missing: &str) {
    let thread = std::thread::current();
    let test = thread.name().unwrap_or("a test");
    if in_ci() {
        panic!("{test} cannot run its check under CI: {missing}");
    }
    // Straight to fd 2, not eprintln!: libtest captures (and hides) a passing test's output.
    let _ = writeln!(std::io::stderr(), "SKIPPED: {test}: {missing}");
}

/// `true` when `cond` holds; otherwise [`skip_or_fail`] with `missing` and `false`, so a
/// test reads `if !require(cond, "root") { return; }`.
pub fn require(cond: bool, missing: &str) -> bool {
    if !cond {
        skip_or_fail(missing);
    }
    cond
}

/// Whether the tests run as root (many sandbox and mount checks need it).
pub fn is_root() -> bool {
    // SAFETY: geteuid has no arguments and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

#[cfg(test)]
mod tests {
    use std::process::{Command, Output};

    const INNER: &str = "skip::tests::needs_what_this_host_lacks";

    /// Run only by the two tests below, in a child process with and without `CI=true`.
    #[test]
    #[ignore = "run by the tests below in a child process"]
    fn needs_what_this_host_lacks() {
        if !super::require(false, "a tool this host lacks") {
            return;
        }
        unreachable!("require(false) returned true");
    }

    fn run_inner(ci: bool) -> Output {
        let mut c = Command::new(std::env::current_exe().unwrap());
        c.args([INNER, "--exact", "--include-ignored", "--test-threads=1"])
            .env_remove("CI");
        if ci {
            c.env("CI", "true");
        }
        c.output().unwrap()
    }

    #[test]
    fn under_ci_a_skip_fails_and_says_what_is_missing() {
        let out = run_inner(true);
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(!out.status.success(), "{text}");
        assert!(
            text.contains(&format!(
                "{INNER} cannot run its check under CI: a tool this host lacks"
            )),
            "{text}"
        );
    }

    #[test]
    fn elsewhere_a_skip_passes_with_a_loud_line() {
        let out = run_inner(false);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{stderr}");
        assert!(
            stderr.contains(&format!("SKIPPED: {INNER}: a tool this host lacks\n")),
            "{stderr}"
        );
    }
}

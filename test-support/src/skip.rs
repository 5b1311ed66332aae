//! Tests that cannot run their real check (not root, a tool missing, a mount refused) never
//! pass quietly: under `CI=true` they fail saying what is missing; elsewhere they print a
//! loud `SKIPPED:` line and return.

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
    eprintln!("SKIPPED: {test}: {missing}");
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

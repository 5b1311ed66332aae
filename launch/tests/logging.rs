//! The logging switch as a user sets it: this test binary runs itself as a child with
//! `SM_LOG` / `SM_DEBUG` set and reads what the child printed on stderr.

use std::process::Command;

/// Set in the child: it then logs one line per level and exits.
const CHILD: &str = "SM_LAUNCH_LOGGING_CHILD";

/// The child's stderr with `env` set (and nothing inherited from this process's switches).
fn child_stderr(env: &[(&str, &str)]) -> String {
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.args(["--exact", "child", "--nocapture", "--test-threads=1"])
        .env(CHILD, "1")
        .env_remove("SM_LOG")
        .env_remove("SM_DEBUG");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "{out:?}");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn child() {
    if std::env::var_os(CHILD).is_none() {
        return; // Only meaningful as the child of the tests below.
    }
    sm_launch::init_logging("info");
    tracing::debug!("a debug line");
    tracing::info!("an info line");
    tracing::warn!("a warning line");
}

#[test]
fn the_default_filter_applies_without_a_switch() {
    let err = child_stderr(&[]);
    assert!(
        err.contains("an info line") && !err.contains("a debug line"),
        "{err}"
    );
}

#[test]
fn sm_log_sets_the_filter() {
    let err = child_stderr(&[("SM_LOG", "warn")]);
    assert!(
        err.contains("a warning line") && !err.contains("an info line"),
        "{err}"
    );
    let err = child_stderr(&[("SM_LOG", "debug"), ("SM_DEBUG", "0")]);
    assert!(err.contains("a debug line"), "{err}");
}

#[test]
fn sm_debug_is_the_shortcut_for_debug() {
    let err = child_stderr(&[("SM_DEBUG", "1")]);
    assert!(err.contains("a debug line"), "{err}");
}

#[test]
fn a_bad_filter_is_reported_once_and_the_default_used() {
    let err = child_stderr(&[("SM_LOG", "[[nonsense")]);
    let complaints = err
        .lines()
        .filter(|l| l.contains("SM_LOG=[[nonsense"))
        .count();
    assert_eq!(complaints, 1, "{err}");
    assert!(err.contains("an info line"), "{err}");
}

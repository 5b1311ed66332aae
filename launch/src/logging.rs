//! One logging switch for every sm binary: `SM_LOG` in tracing's env-filter syntax
//! (`debug`, `sm_vmm=trace,info`), with `SM_DEBUG=1` as the shortcut for `debug`. Children
//! inherit the environment, so one setting reaches `sm`, sm-vmm and every backend.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

/// The variable holding the filter.
pub const LOG_VAR: &str = "SM_LOG";
/// The shortcut: any non-empty value other than `0` means `debug`.
pub const DEBUG_VAR: &str = "SM_DEBUG";

/// The filter in force: `SM_LOG` when set, else `debug` under `SM_DEBUG`, else `default`.
pub fn log_filter(default: &str) -> String {
    choose(
        std::env::var(LOG_VAR).ok(),
        std::env::var(DEBUG_VAR).ok(),
        default,
    )
}

/// [`log_filter`] given the two variables' values.
fn choose(log: Option<String>, debug: Option<String>, default: &str) -> String {
    if let Some(v) = log.filter(|v| !v.is_empty()) {
        return v;
    }
    match debug {
        Some(v) if !v.is_empty() && v != "0" => "debug".into(),
        _ => default.into(),
    }
}

/// Logs to stderr (colour only on a terminal) with [`log_filter`]. A filter that does not
/// parse is reported once and `default` is used instead.
pub fn init_logging(default: &str) {
    let wanted = log_filter(default);
    let filter = EnvFilter::try_new(&wanted).unwrap_or_else(|e| {
        eprintln!("{LOG_VAR}={wanted}: {e}; logging with '{default}'");
        EnvFilter::new(default)
    });
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_env_filter(filter)
        .try_init();
}

#[cfg(test)]
mod tests {
    use super::choose;

    #[test]
    fn sm_log_wins_then_sm_debug_then_the_default() {
        let s = |v: &str| Some(v.to_string());
        assert_eq!(choose(s("sm_vmm=trace"), s("1"), "info"), "sm_vmm=trace");
        assert_eq!(choose(None, s("1"), "info"), "debug");
        assert_eq!(choose(s(""), s("1"), "info"), "debug");
        assert_eq!(choose(None, s("0"), "info"), "info");
        assert_eq!(choose(None, None, "warn"), "warn");
    }
}

//! Progress bars on stderr when it is a terminal; silence otherwise.

use std::io::IsTerminal;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

/// A set of per-blob progress bars.
#[derive(Clone)]
pub struct Progress {
    multi: MultiProgress,
}

impl Progress {
    /// Bars on stderr if it is a terminal, hidden otherwise.
    pub fn auto() -> Progress {
        if std::io::stderr().is_terminal() {
            Progress {
                multi: MultiProgress::new(),
            }
        } else {
            Progress::hidden()
        }
    }

    /// No output at all.
    pub fn hidden() -> Progress {
        Progress {
            multi: MultiProgress::with_draw_target(ProgressDrawTarget::hidden()),
        }
    }

    /// A byte-count bar for one blob.
    pub fn bar(&self, label: &str, total: u64) -> ProgressBar {
        let style = ProgressStyle::with_template(
            "{prefix:>12} [{bar:30}] {bytes:>10}/{total_bytes:<10} {bytes_per_sec}",
        )
        .expect("valid template")
        .progress_chars("=> ");
        self.multi.add(
            ProgressBar::new(total)
                .with_style(style)
                .with_prefix(label.to_string()),
        )
    }
}

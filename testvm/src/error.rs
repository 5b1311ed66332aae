//! The runner's error: one line of text, ready for stderr.

use std::fmt;

/// A failure of the test VM runner, described in one line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error(String);

impl Error {
    /// Makes an error from a message.
    pub fn new(msg: impl Into<String>) -> Self {
        Error(msg.into())
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Error {}

/// Result of the test VM runner.
pub type Result<T> = std::result::Result<T, Error>;

/// Turns any displayable error into an [`Error`] prefixed with what was being done.
pub trait Context<T> {
    /// Prefixes the error with `what()`, as in "`what`: `error`".
    fn context(self, what: impl FnOnce() -> String) -> Result<T>;
}

impl<T, E: fmt::Display> Context<T> for std::result::Result<T, E> {
    fn context(self, what: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|e| Error(format!("{}: {e}", what())))
    }
}

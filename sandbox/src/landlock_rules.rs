//! Landlock: no file system access except beneath the policy's paths, no TCP bind or
//! connect, no abstract Unix sockets or signals reaching outside the sandbox.
//!
//! This is a second wall behind the empty root. It never affects descriptors opened before
//! it (the image, the listening socket). Kernels without Landlock (or without some of its
//! newer rights) get what they support, and the log says so.

use landlock::{
    path_beneath_rules, Access, AccessFs, AccessNet, Ruleset, RulesetAttr, RulesetCreatedAttr,
    RulesetStatus, Scope, ABI,
};

use crate::PathRule;

/// The newest Landlock ABI whose rights this module handles (6: signal and socket scopes).
const TARGET_ABI: ABI = ABI::V6;

/// Errors applying the Landlock ruleset.
#[derive(Debug, thiserror::Error)]
pub enum LandlockError {
    /// Building or enforcing the ruleset failed.
    #[error("landlock: {0}")]
    Ruleset(#[from] landlock::RulesetError),
}

/// Restricts the calling thread (and its future threads); returns how well it was enforced.
pub fn restrict(paths: &[PathRule]) -> Result<&'static str, LandlockError> {
    let writable = paths.iter().filter(|r| r.writable).map(|r| &r.path);
    let read_only = paths.iter().filter(|r| !r.writable).map(|r| &r.path);
    let status = Ruleset::default()
        .handle_access(AccessFs::from_all(TARGET_ABI))?
        .handle_access(AccessNet::from_all(TARGET_ABI))?
        .scope(Scope::from_all(TARGET_ABI))?
        .create()?
        .add_rules(path_beneath_rules(writable, AccessFs::from_all(TARGET_ABI)))?
        .add_rules(path_beneath_rules(
            read_only,
            AccessFs::from_read(TARGET_ABI),
        ))?
        .restrict_self()?;
    Ok(match status.ruleset {
        RulesetStatus::FullyEnforced => "fully enforced",
        RulesetStatus::PartiallyEnforced => "partially enforced (older kernel)",
        RulesetStatus::NotEnforced => {
            tracing::warn!("Landlock is not available in this kernel: relying on the empty root");
            "not enforced (kernel lacks it)"
        }
    })
}

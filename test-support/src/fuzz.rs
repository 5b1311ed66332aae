//! Settings shared by the property-based fuzz tests (`tests/fuzz*.rs` of sm-agent, sm-oci,
//! sm-vmm and the vhost-user backends).

use proptest::prelude::ProptestConfig;

/// Cases per property: `PROPTEST_CASES` when set (scripts/fuzz), else `default`. Failures are
/// not persisted to a regressions file.
pub fn config(default: u32) -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default);
    ProptestConfig {
        cases,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

//! Test VM runner and helpers for sm's real-guest integration tests.

pub mod testvm;

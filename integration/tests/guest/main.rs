//! The real-guest test suite, one binary so one test VM boot serves all of it:
//! `scripts/test` runs it directly on hardware KVM or through `sm-testvm` elsewhere.

mod agent;
mod api;
mod args;
mod bake;
mod blk;
mod boot;
mod clone;
mod common;
mod escape;
mod fs;
mod image;
mod net;
mod node;
mod pjdfstest;
mod pool;
mod readme;
mod restart;
mod run;
mod snapshot;

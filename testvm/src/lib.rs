//! sm-testvm: the test VM ("L1"), a QEMU TCG guest with SVM+NPT whose `kvm_amd` gives a
//! hardware-style `/dev/kvm`, running one host command over the host's root (read-only overlay)
//! and writable shares at their host paths. See docs/architecture.md, "Where VMs run on these machines".

mod error;
pub mod guest_files;
pub mod monitor;
pub mod process;
pub mod qemu;
pub mod relay;
mod run;
mod run_dir;
pub mod shares;
pub mod signals;
pub mod stall;
pub mod tick;
pub mod tools;
pub mod virtiofsd;
mod vm;
mod watch;

pub use error::{Context, Error, Result};
pub use run::{run, Options, Outcome};
pub use watch::Stall;

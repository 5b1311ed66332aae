//! The front door of sm as a library: start a microVM with live host mounts, block
//! volumes and forwarded ports ([`vm::Vm`]), run commands in it, move files in and out,
//! and stop it; bake an image once into a snapshot ([`Image::build`]) and hand out
//! restored clones of it from a [`Pool`] in milliseconds. The `sm` command is a thin layer
//! over this.

pub mod bake;
pub mod baked;
pub mod image;
pub mod pool;
pub mod store;
pub mod trace;
pub mod vm;

pub use bake::{BakeOptions as BuildOptions, ExtraFile, Warmup};
pub use baked::Image;
pub use pool::{Pool, PoolOptions, PooledVm, Resuming};
pub use sm_agent::child::{Child, ChildControl, ChildOutput, ChildStdin};
pub use sm_agent::client::{AgentError, ExecOutput};
pub use sm_agent::message::{ExitInfo, WindowSize};
pub use sm_vhost_user_net::policy::EgressRule;
pub use vm::{ExecBuilder, Mount, Network, UserNetwork, Vm, VmConfig, VmError, Volume};

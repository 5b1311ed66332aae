//! The front door of sm as a library: start a microVM with live host mounts, block
//! volumes and forwarded ports ([`vm::Vm`]), run commands in it, move files in and out,
//! and stop it. The `sm` command is a thin layer over this.

pub mod trace;
pub mod vm;

pub use sm_agent::child::{Child, ChildControl, ChildOutput, ChildStdin};
pub use sm_agent::client::{AgentError, ExecOutput};
pub use sm_agent::message::{ExitInfo, WindowSize};
pub use vm::{ExecBuilder, Vm, VmConfig, VmError};
